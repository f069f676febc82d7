"""The batch engine of each stage (DESIGN.md "Stages and the artifacts between them").

Every stage function
* takes already-built backends (models load once per process, by the caller),
* streams its samples in batches and writes one JSONL record per sample as soon as it is
  done (:class:`~bpm_lib.io.jsonl.KeyedJsonl`: fsync'd, torn lines recovered), so a
  stage killed mid-run resumes without recomputing or duplicating finished samples,
* keys each record by sample id and a *fingerprint* of everything that determines it
  (backend identity, inputs); a record whose fingerprint no longer matches is redone,
* isolates failures: a sample that fails gets ``status: error`` with the reason and the
  run goes on; earlier-stage errors propagate as errors of that sample.

Source-side work (parsing, source localization) depends only on the sample and is
computed once, whatever the number of candidates.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast, overload

import numpy as np
from PIL import Image

from bpm_lib import judges
from bpm_lib.backends.base import Embedder, InstructionParser, Localizer
from bpm_lib.errors import BpmError
from bpm_lib.io.jsonl import KeyedJsonl
from bpm_lib.masks import encode_rle
from bpm_lib.runner.imagecache import ImageCache, default_workers
from bpm_lib.types import Localization, ParsedInstruction, Sample, SampleScore

log = logging.getLogger(__name__)

T = TypeVar("T")

PARSED_FILE = "parsed.jsonl"
SOURCE_FILE = "localize_source.jsonl"


def edited_file(candidate: str) -> str:
    return f"localize_edited.{_safe(candidate)}.jsonl"


def scores_file(candidate: str) -> str:
    return f"judged.{_safe(candidate)}.jsonl"


def _safe(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    if keep != name:
        keep += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return keep


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _error_text(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if isinstance(e, BpmError) else f"{type(e).__name__}: {text}"


@dataclass
class StageStats:
    """What one stage call did: used for logs, metrics and the "source work = N" checks."""

    stage: str
    computed: int = 0
    reused: int = 0
    failed: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "computed": self.computed, "reused": self.reused,
                "failed": self.failed, "seconds": round(self.seconds, 4), **self.extra}


def _progress(iterable: Iterable[T], total: int | None, desc: str, enabled: bool) -> Iterable[T]:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)


# --------------------------------------------------------------------------- parse


def run_parse(
    samples: Sequence[Sample],
    parser: InstructionParser,
    out_dir: Path,
    *,
    progress: bool = False,
) -> tuple[dict[str, ParsedInstruction | str], StageStats]:
    """Parse every sample's instruction once. Returns sample_id → parse or error text."""
    stats = StageStats("parse")
    t0 = time.perf_counter()
    identity = parser.identity()
    results: dict[str, ParsedInstruction | str] = {}
    by_text: dict[str, ParsedInstruction | str] = {}
    with KeyedJsonl(Path(out_dir) / PARSED_FILE, lambda r: r["sample_id"]) as store:
        for sample in _progress(samples, len(samples), "parse", progress):
            fp = fingerprint(identity, getattr(parser, "prompt_version", None), sample.instruction)
            old = store.get(sample.sample_id)
            if old is not None and old.get("fingerprint") == fp and old["status"] == "ok":
                results[sample.sample_id] = ParsedInstruction.from_dict(old["parsed"])
                stats.reused += 1
                continue
            outcome = by_text.get(sample.instruction)
            if outcome is None:
                try:
                    outcome = parser.parse(sample.instruction)
                except Exception as e:  # noqa: BLE001 - one bad instruction fails one sample
                    outcome = _error_text(e)
                by_text[sample.instruction] = outcome
            record: dict[str, Any] = {"sample_id": sample.sample_id, "instruction": sample.instruction,
                                      "fingerprint": fp, "parser": identity}
            if isinstance(outcome, ParsedInstruction):
                record.update(status="ok", parsed=outcome.to_dict(), error=None)
                stats.computed += 1
            else:
                record.update(status="error", parsed=None, error=f"parse: {outcome}")
                stats.failed += 1
                outcome = record["error"]  # the same text load_parsed() gives later stages
            store.append(record)
            results[sample.sample_id] = outcome
    stats.seconds = time.perf_counter() - t0
    stats.extra["unique_instructions"] = len(by_text)
    return results, stats


def load_parsed(out_dir: Path) -> dict[str, ParsedInstruction | str]:
    with KeyedJsonl(Path(out_dir) / PARSED_FILE, lambda r: r["sample_id"]) as store:
        return {
            r["sample_id"]: ParsedInstruction.from_dict(r["parsed"]) if r["status"] == "ok" else r["error"]
            for r in store.records()
        }


# ------------------------------------------------------------------------ localize


def _by_sample(record: Mapping[str, Any]) -> str:
    return str(record["sample_id"])


def _loc_records(path: Path) -> KeyedJsonl:
    return KeyedJsonl(path, _by_sample)


class OpenStores:
    """The stages' JSONL record files kept open across calls, for a caller that runs the
    stages over the samples chunk by chunk (each :class:`KeyedJsonl` reads its whole
    file when opened; reopening it per chunk would read it once per chunk)."""

    def __init__(self) -> None:
        self._open: dict[Path, KeyedJsonl] = {}

    def get(self, path: Path) -> KeyedJsonl:
        key = Path(path).resolve()
        store = self._open.get(key)
        if store is None:
            store = self._open[key] = KeyedJsonl(key, _by_sample)
        return store

    def close(self) -> None:
        for store in self._open.values():
            store.close()
        self._open.clear()

    def __enter__(self) -> OpenStores:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _records(path: Path, stores: OpenStores | None) -> Iterator[KeyedJsonl]:
    """The record file at ``path``: from ``stores`` (left open), else opened for the call."""
    if stores is not None:
        yield stores.get(path)
        return
    with KeyedJsonl(path, _by_sample) as store:
        yield store


def run_localize_source(
    samples: Sequence[Sample],
    parsed: Mapping[str, ParsedInstruction | str],
    localizer: Localizer,
    out_dir: Path,
    *,
    batch_size: int = 8,
    images: ImageCache | None = None,
    progress: bool = False,
    stores: OpenStores | None = None,
) -> tuple[dict[str, Localization | str], StageStats]:
    """Localize the edit region on the source side: once per sample, shared by all candidates."""
    stats = StageStats("localize_source")
    t0 = time.perf_counter()
    identity = localizer.identity()
    results: dict[str, Localization | str] = {}
    with _images_for(images, batch_size) as images, _records(Path(out_dir) / SOURCE_FILE, stores) as store:
        todo: list[tuple[Sample, ParsedInstruction, str]] = []
        for sample in samples:
            p = parsed.get(sample.sample_id)
            if not isinstance(p, ParsedInstruction):
                results[sample.sample_id] = str(p or "parse: missing")
                continue
            fp = fingerprint(identity, p.to_dict(), sample.source_image, sample.reference_mask)
            old = store.get(sample.sample_id)
            if old is not None and old.get("fingerprint") == fp and old["status"] == "ok":
                results[sample.sample_id] = Localization.from_dict(old["localization"])
                stats.reused += 1
                continue
            todo.append((sample, p, fp))
        n_batches = -(-len(todo) // batch_size) if todo else 0
        batches = _prefetching(batched(todo, batch_size), images, "rgb",
                               lambda batch: [(s.source_image, f"{s.sample_id}: source_image") for s, _, _ in batch])
        for batch in _progress(batches, n_batches, "localize source", progress):
            outcomes = _isolate(
                batch,
                lambda items: localizer.localize_source(
                    [s for s, _, _ in items], [p for _, p, _ in items],
                    [images.rgb(s.source_image, f"{s.sample_id}: source_image") for s, _, _ in items],
                ),
            )
            _record_localizations(store, stats, "localize source", outcomes, results, [
                {"sample_id": sample.sample_id, "fingerprint": fp, "localizer": identity} for sample, _, fp in batch
            ])
    stats.seconds = time.perf_counter() - t0
    return results, stats


class LazyImages(Sequence[Image.Image]):
    """Images decoded (through the cache) only when indexed: the edited-side localizer
    needs the source image of additions only, so the others are never decoded there."""

    def __init__(self, items: Sequence[tuple[str, str]], images: ImageCache) -> None:
        self._items = list(items)  # (path, what) per image
        self._images = images

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> Image.Image: ...

    @overload
    def __getitem__(self, index: slice) -> list[Image.Image]: ...

    def __getitem__(self, index: int | slice) -> Image.Image | list[Image.Image]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        path, what = self._items[index]
        return self._images.rgb(path, what)


def run_localize_edited(
    samples: Sequence[Sample],
    parsed: Mapping[str, ParsedInstruction | str],
    source: Mapping[str, Localization | str],
    edits: Mapping[str, str],
    localizer: Localizer,
    out_dir: Path,
    *,
    candidate: str,
    batch_size: int = 8,
    images: ImageCache | None = None,
    progress: bool = False,
    stores: OpenStores | None = None,
) -> tuple[dict[str, Localization | str], StageStats]:
    """Localize the edit region in one candidate's edited images (``edits``: sample_id → path)."""
    stats = StageStats("localize_edited", extra={"candidate": candidate})
    t0 = time.perf_counter()
    identity = localizer.identity()
    results: dict[str, Localization | str] = {}
    with _images_for(images, batch_size) as images, \
            _records(Path(out_dir) / edited_file(candidate), stores) as store:
        todo: list[tuple[Sample, ParsedInstruction, Localization, str, str]] = []
        for sample in samples:
            p = parsed.get(sample.sample_id)
            src = source.get(sample.sample_id)
            edited_path = edits.get(sample.sample_id)
            if not isinstance(p, ParsedInstruction):
                results[sample.sample_id] = str(p or "parse: missing")
                continue
            if not isinstance(src, Localization):
                results[sample.sample_id] = str(src or "localize source: missing")
                continue
            if not edited_path:
                results[sample.sample_id] = f"no edited image for candidate {candidate!r}"
                continue
            fp = fingerprint(identity, p.to_dict(), src.to_dict(), edited_path, candidate)
            old = store.get(sample.sample_id)
            if old is not None and old.get("fingerprint") == fp and old["status"] == "ok":
                results[sample.sample_id] = Localization.from_dict(old["localization"])
                stats.reused += 1
                continue
            todo.append((sample, p, src, edited_path, fp))
        n_batches = -(-len(todo) // batch_size) if todo else 0
        batches = _prefetching(batched(todo, batch_size), images, "rgb",
                               lambda batch: [(it[3], f"{it[0].sample_id}: edited image") for it in batch])
        for batch in _progress(batches, n_batches, f"localize {candidate}", progress):
            outcomes = _isolate(
                batch,
                lambda items: localizer.localize_edited(
                    [it[0] for it in items], [it[1] for it in items],
                    [images.rgb(it[3], f"{it[0].sample_id}: edited image") for it in items],
                    [it[2] for it in items], candidate,
                    source_images=LazyImages(
                        [(it[0].source_image, f"{it[0].sample_id}: source_image") for it in items], images
                    ),
                ),
            )
            _record_localizations(store, stats, "localize edited", outcomes, results, [
                {"sample_id": it[0].sample_id, "candidate": candidate, "fingerprint": it[4], "localizer": identity}
                for it in batch
            ])
    stats.seconds = time.perf_counter() - t0
    return results, stats


def _record_localizations(store: KeyedJsonl, stats: StageStats, stage: str, outcomes: Sequence[Localization | str],
                          results: dict[str, Localization | str], records: list[dict[str, Any]]) -> None:
    """Complete a batch's records with each sample's localization (or its error), count
    them, keep in ``results`` what later stages get (the Localization or the error text)
    and write the batch with one fsync."""
    for outcome, record in zip(outcomes, records, strict=True):
        if isinstance(outcome, Localization):
            record.update(status="ok", localization=outcome.to_dict(), error=None)
            stats.computed += 1
            results[record["sample_id"]] = outcome
        else:
            record.update(status="error", localization=None, error=f"{stage}: {outcome}")
            stats.failed += 1
            results[record["sample_id"]] = str(record["error"])
    store.append_many(records)


@contextlib.contextmanager
def _images_for(images: ImageCache | None, batch_size: int) -> Iterator[ImageCache]:
    """The caller's image cache, or one of the stage's own with background decoding
    (closed when the stage ends)."""
    if images is not None:
        yield images
        return
    with ImageCache(capacity=max(2 * batch_size, 32), workers=default_workers()) as own:
        yield own


def _prefetching(batches: Iterable[list[T]], images: ImageCache, kind: str,
                 paths: Callable[[list[T]], list[tuple[str, str]]]) -> Iterator[list[T]]:
    """Yield ``batches`` one by one, asking ``images`` to decode the following batch's
    images in the background while the caller works on the current one (no-op for a
    cache without workers)."""
    it = iter(batches)
    current = next(it, None)
    if current is not None:
        images.prefetch(paths(current), kind)
    while current is not None:
        following = next(it, None)
        if following is not None:
            images.prefetch(paths(following), kind)
        yield current
        current = following


def load_localizations(path: Path) -> dict[str, Localization | str]:
    with _loc_records(path) as store:
        return {
            r["sample_id"]: Localization.from_dict(r["localization"]) if r["status"] == "ok" else r["error"]
            for r in store.records()
        }


def _isolate(batch: list[T], fn: Callable[[list[T]], list[Any]]) -> list[Any]:
    """Run ``fn`` on the batch; if it fails, run it per item so one bad item fails alone."""
    try:
        out = fn(batch)
        if len(out) != len(batch):
            raise RuntimeError(f"backend returned {len(out)} results for {len(batch)} inputs")
        return out
    except Exception as e:  # noqa: BLE001 - fall back to per-item isolation
        if len(batch) == 1:
            return [_error_text(e)]
        log.debug("batch of %d failed (%s); retrying item by item", len(batch), e)
    results: list[Any] = []
    for item in batch:
        try:
            results.append(fn([item])[0])
        except Exception as e:  # noqa: BLE001
            results.append(_error_text(e))
    return results


# --------------------------------------------------------------------------- judge


def _crop(frame: np.ndarray, box: tuple[float, float, float, float]) -> Image.Image:
    h, w = frame.shape[:2]
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    return Image.fromarray(frame[y0:y1, x0:x1])


@dataclass
class _JudgeItem:
    sample: Sample
    parsed: ParsedInstruction
    source: Localization
    edited: Localization
    edited_path: str
    fp: str
    plan: Any = None
    source_500: np.ndarray | None = None
    edited_500: np.ndarray | None = None
    inputs: dict[str, Image.Image] = field(default_factory=dict)

    def release(self) -> None:
        """Drop the images once judged: ``run_judge`` keeps every item of the run in its
        to-do list, and 1.5 MB of 500×500 frames per sample made the peak memory grow
        with the dataset (benchmarks/bench_memory.py: +90 % from 50 to 500 samples)."""
        self.source_500 = self.edited_500 = None
        self.inputs = {}


def run_judge(
    samples: Sequence[Sample],
    parsed: Mapping[str, ParsedInstruction | str],
    source: Mapping[str, Localization | str],
    edited: Mapping[str, Localization | str],
    edits: Mapping[str, str],
    embedder: Embedder,
    out_dir: Path,
    *,
    candidate: str,
    batch_size: int = 16,
    images: ImageCache | None = None,
    progress: bool = False,
    stores: OpenStores | None = None,
) -> tuple[list[SampleScore], StageStats]:
    """Region- and semantic-aware judges for one candidate (BPM_SPEC §4–§5), batched:
    one image-embedding call and one text-embedding call per batch of samples."""
    stats = StageStats("judge", extra={"candidate": candidate})
    t0 = time.perf_counter()
    identity = embedder.identity()
    meaningless = bool(identity.get("meaningless"))
    out: dict[str, SampleScore] = {}
    with _images_for(images, batch_size) as images, \
            _records(Path(out_dir) / scores_file(candidate), stores) as store:
        todo: list[_JudgeItem] = []
        for sample in samples:
            sid = sample.sample_id
            failure = None
            p, src, edt, path = parsed.get(sid), source.get(sid), edited.get(sid), edits.get(sid)
            if not isinstance(p, ParsedInstruction):
                failure = str(p or "parse: missing")
            elif not isinstance(src, Localization):
                failure = str(src or "localize source: missing")
            elif not isinstance(edt, Localization):
                failure = str(edt or "localize edited: missing")
            elif not path:
                failure = f"no edited image for candidate {candidate!r}"
            if failure is not None:
                score = SampleScore(sid, candidate, status="error", error=failure,
                                    parsed=p.to_dict() if isinstance(p, ParsedInstruction) else None)
                store.append(score.to_dict())
                out[sid] = score
                stats.failed += 1
                continue
            p, src, edt = cast(ParsedInstruction, p), cast(Localization, src), cast(Localization, edt)
            path = cast(str, path)
            fp = fingerprint(identity, p.to_dict(), src.to_dict(), edt.to_dict(), path, sample.instruction)
            old = store.get(sid)
            if old is not None and old.get("extra", {}).get("fingerprint") == fp and old["status"] == "ok":
                out[sid] = SampleScore.from_dict(old)
                stats.reused += 1
                continue
            todo.append(_JudgeItem(sample, p, src, edt, path, fp))
        n_batches = -(-len(todo) // batch_size) if todo else 0
        batches = _prefetching(batched(todo, batch_size), images, "frame", _frame_paths)
        for batch in _progress(batches, n_batches, f"judge {candidate}", progress):
            judged = _judge_batch(batch, embedder, images, candidate, meaningless)
            for it in batch:
                it.release()
            store.append_many(score.to_dict() for score in judged)
            for score in judged:
                out[score.sample_id] = score
                if score.ok:
                    stats.computed += 1
                else:
                    stats.failed += 1
    stats.seconds = time.perf_counter() - t0
    ordered = [out[s.sample_id] for s in samples if s.sample_id in out]
    return ordered, stats


def _frame_paths(batch: list[_JudgeItem]) -> list[tuple[str, str]]:
    return [p for it in batch for p in ((it.sample.source_image, f"{it.sample.sample_id}: source_image"),
                                        (it.edited_path, f"{it.sample.sample_id}: edited image"))]


def _judge_batch(
    batch: list[_JudgeItem], embedder: Embedder, images: ImageCache, candidate: str, meaningless: bool
) -> list[SampleScore]:
    ready: list[_JudgeItem] = []
    failed: dict[str, str] = {}
    for item in batch:
        try:
            item.plan = judges.plan_judgement(item.parsed, item.sample.instruction, item.source, item.edited)
            item.source_500 = images.frame(item.sample.source_image, f"{item.sample.sample_id}: source_image")
            item.edited_500 = images.frame(item.edited_path, f"{item.sample.sample_id}: edited image")
            for name in item.plan.image_inputs:
                if name == "source_crop":
                    item.inputs[name] = _crop(item.source_500, item.plan.crop_box)
                elif name == "edited_crop":
                    item.inputs[name] = _crop(item.edited_500, item.plan.crop_box)
                elif name == "edited_full":
                    item.inputs[name] = Image.fromarray(item.edited_500)
                else:
                    raise ValueError(f"unknown judge image input {name!r}")
            ready.append(item)
        except Exception as e:  # noqa: BLE001
            failed[item.sample.sample_id] = _error_text(e)

    image_embs: dict[tuple[str, str], np.ndarray] = {}
    text_embs: dict[str, np.ndarray] = {}
    try:
        flat = [(it.sample.sample_id, name, img) for it in ready for name, img in it.inputs.items()]
        if flat:
            feats = embedder.encode_images([img for _, _, img in flat])
            for (sid, name, _), vec in zip(flat, feats, strict=True):
                image_embs[(sid, name)] = vec
        texts = sorted({t for it in ready for t in it.plan.texts.values() if t is not None})
        if texts:
            for text, vec in zip(texts, embedder.encode_texts(texts), strict=True):
                text_embs[text] = vec
    except Exception as e:  # noqa: BLE001 - the embedder failed for the whole batch
        if len(ready) > 1:
            log.debug("embedding a batch of %d failed (%s); isolating", len(ready), e)
            results = []
            for it in batch:
                results.extend(_judge_batch([it], embedder, images, candidate, meaningless))
            return results
        for it in ready:
            failed[it.sample.sample_id] = f"embed: {_error_text(e)}"
        ready = []

    scores: dict[str, SampleScore] = {}
    for it in ready:
        sid = it.sample.sample_id
        try:
            if it.source_500 is None or it.edited_500 is None:
                raise RuntimeError("images were not decoded")  # unreachable: set with the plan
            mask = judges.edit_mask_500(it.source, it.edited)
            score = judges.judge(
                it.plan, sample_id=sid, candidate=candidate, parsed=it.parsed, source=it.source,
                edited=it.edited, source_500=it.source_500, edited_500=it.edited_500, edit_mask=mask,
                image_embs={name: image_embs[(sid, name)] for name in it.inputs},
                text_embs={role: text_embs[t] for role, t in it.plan.texts.items() if t is not None},
            )
            # The 500-frame edit mask travels with the score so reports can overlay it.
            extra = {**score.extra, "fingerprint": it.fp, "edit_mask": encode_rle(mask)}
            scores[sid] = _replace(score, extra=extra, meaningless=meaningless)
        except Exception as e:  # noqa: BLE001
            failed[sid] = _error_text(e)
    results = []
    for it in batch:
        sid = it.sample.sample_id
        if sid in scores:
            results.append(scores[sid])
        else:
            results.append(SampleScore(sid, candidate, status="error", error=f"judge: {failed.get(sid, 'unknown')}",
                                       parsed=it.parsed.to_dict(), meaningless=meaningless))
    return results


def _replace(score: SampleScore, **changes: Any) -> SampleScore:
    from dataclasses import replace

    return replace(score, **changes)


def load_scores(path: Path) -> list[SampleScore]:
    with KeyedJsonl(path, lambda r: r["sample_id"]) as store:
        return [SampleScore.from_dict(r) for r in store.records()]
