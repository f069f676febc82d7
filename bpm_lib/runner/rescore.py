"""Re-score data in the BPM reference format (BPM_SPEC §7) with this project's stages.

Every candidate image of every item is scored by the runner stages (parse → localize →
judge; source-side work once per item), and optionally by baseline metrics
(:mod:`bpm_lib.backends.baselines`). The result is a NEW file in the same format:

* ``preservation`` (−d; 0 for global edits, as the reference stores it), ``edit_quality``
  (S_modify), ``position``, ``size`` and ``case`` (the special case of BPM_SPEC §5) on
  each candidate entry, plus one key per baseline (``l1``, ``l2``, ``lpips``,
  ``clip_score``, ``clip_i``, ``dino``, ``clip_directional``: the names
  :data:`bpm_lib.validate.BASELINE_DIRECTIONS` knows);
* ``published`` on an entry: the values the input held for the keys replaced (written by
  the first rescore only, so a re-rescored file still shows the original numbers);
* ``rescore_error`` on an entry that could not be scored; its replaced keys are removed,
  never left at stale values;
* ``is_global`` on items that had no such flag, from the parse;
* ``rescore`` on every item: ``{"preset", "keys", "meaningless", "bpm_eval"}`` where
  ``meaningless`` lists the keys computed with random weights (tiny-random preset).

The input file is only read. With a random-weight preset the learned baselines use
random weights too (LPIPS with a random trunk, a tiny random DINO ViT), so nothing is
downloaded, and they are listed as meaningless.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from bpm_lib import __version__
from bpm_lib.errors import DataError
from bpm_lib.runner.backends import Backends, build_backends, is_meaningless
from bpm_lib.types import Sample, SampleScore
from bpm_lib.validate import reference_entry

log = logging.getLogger(__name__)

SUB_SCORE_KEYS: Final = ("preservation", "edit_quality", "position", "size")
CASE_KEY: Final = "case"
ERROR_KEY: Final = "rescore_error"
PUBLISHED_KEY: Final = "published"
LABEL_KEY: Final = "rescore"
GLOBAL_FLAG: Final = "is_global"
RESCORED_NAME: Final = "metadata.json"
"""File name of the rescored metadata inside a rescore output folder (pipelines)."""

SOURCE_CAPTION_KEYS: Final = ("source_caption", "input_caption")
TARGET_CAPTION_KEYS: Final = ("target_caption", "output_caption")

TINY_DINO_CONFIG: Final[dict[str, Any]] = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "image_size": 32,
    "patch_size": 8,
}


@dataclass(frozen=True)
class BaselineColumn:
    """A baseline of :data:`~bpm_lib.backends.baselines.BASELINES` and the metadata key its
    values are stored under.

    ``random_kwargs``: constructor options used when the preset has random weights;
    ``tiny_random_vit``: with random weights, its ``model`` option is a tiny random ViT
    folder (:func:`tiny_random_dino`); ``uses_embedder``: it embeds with the preset's
    embedder; ``needs_captions``: it needs source and target captions on every item."""

    baseline: str
    key: str
    aliases: tuple[str, ...]
    random_kwargs: Mapping[str, Any] = field(default_factory=dict)
    tiny_random_vit: bool = False
    uses_embedder: bool = False
    needs_captions: bool = False


BASELINE_COLUMNS: Final[tuple[BaselineColumn, ...]] = (
    BaselineColumn("l1", "l1", ("l1",)),
    BaselineColumn("l2", "l2", ("l2",)),
    BaselineColumn("lpips", "lpips", ("lpips",), random_kwargs={"pretrained_backbone": False}),
    BaselineColumn("clip-score", "clip_score", ("clip_score", "clip-score"), uses_embedder=True),
    BaselineColumn("clip-i", "clip_i", ("clip_i", "clip-i"), uses_embedder=True),
    BaselineColumn("dino", "dino", ("dino",), tiny_random_vit=True),
    BaselineColumn("directional-clip", "clip_directional",
                   ("directional_clip", "clip_directional", "directional-clip"),
                   uses_embedder=True, needs_captions=True),
)
_BY_ALIAS: Final = {alias: col for col in BASELINE_COLUMNS for alias in col.aliases}


def parse_baselines(spec: str | Iterable[str | BaselineColumn] | None) -> tuple[BaselineColumn, ...]:
    """``"l1,lpips,directional_clip"`` (or a list of names/columns) → columns, in the order
    given. Unknown names raise ``ValueError`` with a did-you-mean; repeats are an error."""
    if spec is None:
        return ()
    tokens: list[str | BaselineColumn]
    if isinstance(spec, str):
        tokens = [t.strip() for t in spec.split(",") if t.strip()]
    else:
        tokens = list(spec)
    out: list[BaselineColumn] = []
    for token in tokens:
        if isinstance(token, BaselineColumn):
            col = token
        elif isinstance(token, str) and token in _BY_ALIAS:
            col = _BY_ALIAS[token]
        else:
            hint = difflib.get_close_matches(str(token), list(_BY_ALIAS), n=1)
            known = ", ".join(col.aliases[0] for col in BASELINE_COLUMNS)
            raise ValueError(
                f"unknown baseline {token!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                + f" Known baselines: {known}"
            )
        if col in out:
            raise ValueError(f"baseline {token!r} is listed more than once")
        out.append(col)
    return tuple(out)


_OPTION = re.compile(r"^([A-Za-z0-9_-]+)\.([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)


def parse_baseline_options(specs: Iterable[str], columns: Sequence[BaselineColumn]) -> dict[str, dict[str, Any]]:
    """``["dino.model=/m", "lpips.net=\\"vgg\\""]`` → ``{"dino": {"model": "/m"}, "lpips": {"net": "vgg"}}``
    (keyed by registry name). VALUE is read as JSON when it parses, else as text; NAME
    must be one of ``columns``."""
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        match = _OPTION.match(spec) if isinstance(spec, str) else None
        if match is None:
            raise ValueError(f"baseline option must look like NAME.KEY=VALUE (e.g. dino.model=/models/dino), got {spec!r}")
        name, key, raw = match.groups()
        col = _BY_ALIAS.get(name)
        if col is None or col not in columns:
            chosen = ", ".join(c.aliases[0] for c in columns) or "none"
            raise ValueError(f"baseline option {spec!r} names {name!r}, which is not among the baselines computed ({chosen})")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(col.baseline, {})[key] = value
    return out


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class RescoreInfo:
    """What one rescore did. ``errors``: ``"<index>/edited_image<k>"`` → why it failed."""

    out: str
    items: int
    entries: int
    scored: int
    failed: int
    errors: dict[str, str]
    keys: tuple[str, ...]
    meaningless: tuple[str, ...]
    preset: str | None
    backends: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["keys"] = list(self.keys)
        out["meaningless"] = list(self.meaningless)
        return out


@dataclass(frozen=True)
class _Pair:
    position: int  # item position
    number: str  # candidate number
    sample_id: str
    source: str
    edited: str


@dataclass
class _Built:
    column: BaselineColumn
    spec: Any  # registry name (embedder baselines, built inside compute_baselines) or instance
    meaningless: bool
    identity: dict[str, Any]
    kwargs: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- baselines


def tiny_random_dino(folder: str | os.PathLike[str], seed: int = 0) -> Path:
    """A tiny random-weight ViT (the DINO architecture) + image processor written with
    ``save_pretrained`` into ``folder`` (reused when already there), so the DINO baseline
    loads it through its normal loading path. Its values are meaningless."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    out = Path(folder)
    if (out / "config.json").is_file() and (out / "preprocessor_config.json").is_file():
        return out
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTModel(ViTConfig(**TINY_DINO_CONFIG))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    ViTImageProcessor(size={"height": TINY_DINO_CONFIG["image_size"], "width": TINY_DINO_CONFIG["image_size"]}
                      ).save_pretrained(out)
    return out


def build_baselines(
    columns: Sequence[BaselineColumn],
    *,
    embedder: Any,
    random_weights: bool,
    options: Mapping[str, Mapping[str, Any]] | None,
    work_dir: Path,
) -> list[_Built]:
    """Build each baseline once. With ``random_weights`` the learned ones get their
    random-weight settings (user ``options`` still win)."""
    from bpm_lib.backends.baselines import BASELINES

    opts = {k: dict(v) for k, v in (options or {}).items()}
    built = []
    for col in columns:
        kwargs: dict[str, Any] = dict(col.random_kwargs) if random_weights else {}
        kwargs.update(opts.get(col.baseline, {}))
        if col.uses_embedder:
            ident = {"name": col.baseline, "embedder": embedder.identity(), **kwargs}
            built.append(_Built(col, col.baseline, is_meaningless(ident), ident, kwargs))
            continue
        tiny = False
        if col.tiny_random_vit and random_weights and "model" not in kwargs:
            kwargs["model"] = str(tiny_random_dino(work_dir / f"tiny-random-{col.baseline}"))
            tiny = True
        try:
            instance = BASELINES[col.baseline](**kwargs)  # type: ignore[call-arg]
        except TypeError as e:  # an option the baseline does not take
            raise ValueError(f"baseline {col.aliases[0]!r}: bad option in {sorted(kwargs)}: {e}") from e
        ident = dict(instance.identity())
        if tiny:
            ident["meaningless"] = True
        built.append(_Built(col, instance, tiny or is_meaningless(ident), ident, kwargs))
    return built


def _caption(item: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    for key in keys:
        value = item.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _compute_baselines(
    built: Sequence[_Built],
    items: Sequence[Mapping[str, Any]],
    pairs: Sequence[_Pair],
    *,
    embedder: Any,
    batch_size: int,
    progress: bool,
) -> tuple[dict[tuple[int, str], dict[str, float]], dict[tuple[int, str], str]]:
    """Baseline values per (item position, candidate number), keyed by metadata key, and
    the pairs whose images could not be read."""
    from bpm_lib.backends.baselines import compute_baselines
    from bpm_lib.runner.imagecache import ImageCache
    from bpm_lib.runner.stages import batched

    values: dict[tuple[int, str], dict[str, float]] = {}
    errors: dict[tuple[int, str], str] = {}
    if not built or not pairs:
        return values, errors
    needs_captions = any(b.column.needs_captions for b in built)
    specs = [b.spec for b in built]
    uses_embedder = any(b.column.uses_embedder for b in built)
    # options of the baselines compute_baselines builds itself (by name); the others are instances
    emb_options = {b.column.baseline: b.kwargs for b in built if b.column.uses_embedder and b.kwargs}
    key_of = {b.column.baseline: b.column.key for b in built}
    images = ImageCache(capacity=max(4 * batch_size, 32))
    chunks = list(batched(pairs, batch_size))
    iterator: Iterable[list[_Pair]] = chunks
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(chunks, desc="baselines", unit="batch", leave=False)
    for chunk in iterator:
        ready, src_imgs, edt_imgs = [], [], []
        for p in chunk:
            try:
                src_img = images.rgb(p.source, f"item {p.sample_id}: source image")
                edt_img = images.rgb(p.edited, f"item {p.sample_id}: edited_image{p.number}")
            except DataError as e:
                errors[(p.position, p.number)] = f"baselines: {e}"
                continue
            ready.append(p)
            src_imgs.append(src_img)
            edt_imgs.append(edt_img)
        if not ready:
            continue
        its = [items[p.position] for p in ready]
        rows = compute_baselines(
            specs, src_imgs, edt_imgs, [str(it["instruction"]).strip() for it in its],
            [_caption(it, TARGET_CAPTION_KEYS) for it in its],
            embedder=embedder if uses_embedder else None,
            source_captions=[_caption(it, SOURCE_CAPTION_KEYS) or "" for it in its] if needs_captions else None,
            options=emb_options or None,
        )
        for p, row in zip(ready, rows, strict=True):
            values[(p.position, p.number)] = {key_of[name]: float(v) for name, v in row.items()}
    return values, errors


# --------------------------------------------------------------------------- scoring


def _check_captions(columns: Sequence[BaselineColumn], items: Sequence[Mapping[str, Any]]) -> None:
    needing = [c.aliases[0] for c in columns if c.needs_captions]
    if not needing:
        return
    missing = [str(it.get("index")) for it in items
               if _caption(it, SOURCE_CAPTION_KEYS) is None or _caption(it, TARGET_CAPTION_KEYS) is None]
    if missing:
        raise DataError(
            f"{', '.join(needing)} needs a source caption ({' or '.join(SOURCE_CAPTION_KEYS)}) and a target "
            f"caption ({' or '.join(TARGET_CAPTION_KEYS)}) on every item; missing on item index "
            f"{', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}"
        )


def _collect(items: Sequence[Mapping[str, Any]], root: Path) -> tuple[list[Sample], dict[str, dict[str, str]], list[_Pair]]:
    from bpm_lib.io.datasets.bpm_json import candidate_keys
    from bpm_lib.io.manifest import check_sample_id
    from bpm_lib.io.storage import safe_join

    samples: list[Sample] = []
    edits: dict[str, dict[str, str]] = {}
    pairs: list[_Pair] = []
    seen: dict[str, int] = {}
    for pos, item in enumerate(items):
        where = f"item {pos}"
        for key in ("index", "instruction", "source_image_path"):
            if item.get(key) in (None, ""):
                raise DataError(f"{where}: missing {key!r}")
        sid = check_sample_id(str(item["index"]), what=f"{where} index")
        if sid in seen:
            raise DataError(f"{where}: index {item['index']!r} repeats item {seen[sid]}")
        seen[sid] = pos
        instruction = item["instruction"]
        if not isinstance(instruction, str) or not instruction.strip():
            raise DataError(f"{where}: instruction must be a non-empty string, got {instruction!r}")
        source = safe_join(root, str(item["source_image_path"]), what=f"{where} source_image_path")
        samples.append(Sample(sample_id=sid, instruction=instruction.strip(), source_image=str(source)))
        for number, key in candidate_keys(item):
            entry = item[key]
            if not isinstance(entry, Mapping) or not isinstance(entry.get("image_path"), str) or not entry["image_path"]:
                raise DataError(f"{where}: {key} must be an object with an image_path string")
            edited = safe_join(root, entry["image_path"], what=f"{where} {key}.image_path")
            edits.setdefault(number, {})[sid] = str(edited)
            pairs.append(_Pair(pos, number, sid, str(source), str(edited)))
    return samples, edits, pairs


def _score(samples: Sequence[Sample], edits: Mapping[str, Mapping[str, str]], backends: Backends, work_dir: Path, *,
           batch_size: int, progress: bool) -> dict[tuple[str, str], SampleScore]:
    """Judged (not aggregated) scores per (sample id, candidate number), chunk by chunk
    as :func:`bpm_lib.runner.score.score_candidates` does (each source image decoded once
    for all candidates); a candidate is judged only on the samples it has an edit for."""
    from bpm_lib.runner.score import judge_candidates

    ordered = {number: edits[number] for number in sorted(edits, key=int)}
    raw, _ = judge_candidates(samples, ordered, backends, work_dir, batch_size=batch_size, progress=progress,
                              only_edited=True)
    return {(score.sample_id, number): score for number, scores in raw.items() for score in scores}


@dataclass
class RescoredItems:
    items: list[dict[str, Any]]
    entries: int
    failed: int
    errors: dict[str, str]
    keys: tuple[str, ...]
    meaningless: tuple[str, ...]
    backends: dict[str, Any]


def rescore_items(
    items: Sequence[Mapping[str, Any]],
    root: str | os.PathLike[str],
    backends: Backends,
    work_dir: str | os.PathLike[str],
    *,
    baselines: Sequence[BaselineColumn] = (),
    baseline_options: Mapping[str, Mapping[str, Any]] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> RescoredItems:
    """New items (deep copies; the input is not modified) with every candidate re-scored.

    ``root``: the folder the items' image paths are relative to. ``backends``: built
    once by the caller (:func:`~bpm_lib.runner.backends.build_backends`). ``work_dir``
    holds the stage records (a re-run over the same folder resumes).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    columns = parse_baselines(baselines)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    samples, edits, pairs = _collect(items, Path(root))
    _check_captions(columns, items)  # before any model runs
    random_weights = backends.meaningless
    built = build_baselines(columns, embedder=backends.embedder, random_weights=random_weights,
                            options=baseline_options, work_dir=work)
    scores = _score(samples, edits, backends, work, batch_size=batch_size, progress=progress)
    base_values, base_errors = _compute_baselines(built, items, pairs, embedder=backends.embedder,
                                                  batch_size=batch_size, progress=progress)

    replaced = (*SUB_SCORE_KEYS, *(c.key for c in columns))
    meaningless = tuple([*SUB_SCORE_KEYS] if random_weights else []) + tuple(
        b.column.key for b in built if b.meaningless)
    label = {"preset": backends.preset_name, "keys": list(replaced), "meaningless": list(meaningless),
             "bpm_eval": __version__}
    out = [copy.deepcopy(dict(item)) for item in items]
    errors: dict[str, str] = {}
    failed = 0
    by_item: dict[int, list[_Pair]] = {}
    for p in pairs:
        by_item.setdefault(p.position, []).append(p)
    for pos, new in enumerate(out):
        cases: set[str] = set()
        for p in by_item.get(pos, []):
            key = f"edited_image{p.number}"
            entry: dict[str, Any] = new[key]
            if PUBLISHED_KEY not in entry:
                published = {k: entry[k] for k in replaced if k in entry}
                if published:
                    entry[PUBLISHED_KEY] = published
            for k in (*replaced, CASE_KEY, ERROR_KEY):
                entry.pop(k, None)
            problems = []
            score = scores.get((p.sample_id, p.number))
            if score is not None and score.ok:
                entry.update(reference_entry(score))
                entry[CASE_KEY] = score.case
                if score.case is not None:
                    cases.add(score.case)
            else:
                problems.append(score.error if score is not None and score.error else "not scored")
            if (pos, p.number) in base_values:
                entry.update(base_values[(pos, p.number)])
            elif (pos, p.number) in base_errors:
                problems.append(base_errors[(pos, p.number)])
            if problems:
                entry[ERROR_KEY] = "; ".join(problems)
                errors[f"{new['index']}/{key}"] = entry[ERROR_KEY]
                failed += 1
        if GLOBAL_FLAG not in new and cases:
            new[GLOBAL_FLAG] = "global" in cases
        new[LABEL_KEY] = copy.deepcopy(label)
    idents = {"backends": backends.identity(), "baselines": {b.column.key: b.identity for b in built}}
    return RescoredItems(out, len(pairs), failed, errors, replaced, meaningless, idents)


# --------------------------------------------------------------------------- files


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def place_images(items: Sequence[Mapping[str, Any]], src_root: str | os.PathLike[str],
                 dst_root: str | os.PathLike[str]) -> int:
    """Copy (hard-link when possible) every image the items name from ``src_root`` to the
    same relative path under ``dst_root``. An existing different file is never
    overwritten (:class:`DataError`); a missing source image is skipped (its entry
    already carries a ``rescore_error``). Returns the number of files placed."""
    from bpm_lib.io.datasets.bpm_json import candidate_keys
    from bpm_lib.io.storage import safe_join

    src_root, dst_root = Path(src_root), Path(dst_root)
    rels: list[tuple[str, str]] = []
    for pos, item in enumerate(items):
        rels.append((f"item {pos} source_image_path", str(item["source_image_path"])))
        rels += [(f"item {pos} {key}.image_path", str(item[key]["image_path"])) for _, key in candidate_keys(item)]
    placed = 0
    done: set[str] = set()
    for what, rel in rels:
        if rel in done:
            continue
        done.add(rel)
        src = safe_join(src_root, rel, what=what)
        dst = safe_join(dst_root, rel, what=what)
        if not src.is_file():
            log.warning("%s: %s not found; not copied", what, src)
            continue
        if dst.exists():
            if _same_file(src, dst) or _file_digest(src) == _file_digest(dst):
                continue
            raise DataError(f"{what}: {dst} already exists with other content; refusing to overwrite it")
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        placed += 1
    return placed


def rescore_file(
    metadata: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    preset: str | None = "paper",
    parser: str | None = None,
    localizer: str | None = None,
    embedder: str | None = None,
    backends: Backends | None = None,
    baselines: str | Sequence[str | BaselineColumn] = (),
    baseline_options: Mapping[str, Mapping[str, Any]] | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> RescoreInfo:
    """Re-score the BPM reference file ``metadata`` into the new file ``out`` (never the
    input). Images are copied next to ``out`` when it lives in another folder.
    ``backends`` (already built) takes precedence over ``preset`` and the overrides."""
    src, dst = Path(metadata), Path(out)
    if _same_file(src, dst):
        raise ValueError(f"out must be a new file, not the input metadata itself: {dst}")
    if dst.is_dir():
        raise ValueError(f"out must be a file path, got the folder {dst}")
    from bpm_lib.io.datasets.bpm_json import read_bpm_json, write_bpm_json

    columns = parse_baselines(baselines)
    t0 = time.perf_counter()
    items = read_bpm_json(src)
    if backends is None:
        backends = build_backends(preset, parser=parser, localizer=localizer, embedder=embedder)
    with tempfile.TemporaryDirectory(prefix="bpm-rescore-") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        result = rescore_items(items, src.parent, backends, work, baselines=columns,
                               baseline_options=baseline_options, batch_size=batch_size, progress=progress)
    if dst.parent.resolve() != src.parent.resolve():
        place_images(result.items, src.parent, dst.parent)
    write_bpm_json(result.items, dst)
    return _info(dst, result, backends.preset_name, time.perf_counter() - t0)


def _info(out: Path, result: RescoredItems, preset: str | None, seconds: float) -> RescoreInfo:
    return RescoreInfo(
        out=str(out), items=len(result.items), entries=result.entries, scored=result.entries - result.failed,
        failed=result.failed, errors=result.errors, keys=result.keys, meaningless=result.meaningless,
        preset=preset, backends=result.backends, seconds=round(seconds, 3),
    )


def evalset_items(evalset: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """BPM reference items of an EvalSet fetched from a ``bpm-json`` source (image paths
    relative to the EvalSet folder), with the items' extra keys (e.g. ``is_global``,
    captions) restored from ``origin.extra``."""
    from bpm_lib.io.datasets.bpm_json import bpm_items_from_evalset, candidate_keys
    from bpm_lib.io.manifest import read_manifest

    manifest = Path(evalset) / "manifest.jsonl"
    items = bpm_items_from_evalset(manifest)
    extras = [dict((s.origin or {}).get("extra") or {}) for s in read_manifest(manifest)]
    if len(extras) != len(items):  # pragma: no cover - both read the same manifest
        raise DataError(f"{manifest}: items and manifest lines disagree")
    out = []
    for item, extra in zip(items, extras, strict=True):
        if not candidate_keys(item):
            raise DataError(f"{manifest}: sample {item['index']!r} has no rated candidates; "
                            "fetch a BPM reference (bpm-json) source")
        out.append({**{k: v for k, v in extra.items() if k not in item}, **item})
    return out


def rescore_evalset(
    evalset: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    preset: str | None,
    baselines: str | Sequence[str | BaselineColumn] = (),
    baseline_options: Mapping[str, Mapping[str, Any]] | None = None,
    backends: Backends | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 16,
) -> RescoreInfo:
    """Pipeline step: the BPM reference items of an EvalSet (fetched from a bpm-json
    source), re-scored with ``preset``, written as ``out_dir/metadata.json`` with their
    images, plus ``out_dir/_bpm.json`` (what produced it). ``preset`` None (and no
    ``backends``) keeps the published values as they are (nothing is scored)."""
    from bpm_lib.io.datasets.bpm_json import candidate_keys, write_bpm_json
    from bpm_lib.io.jsonl import write_json_atomic
    from bpm_lib.runner.cache import META

    columns = parse_baselines(baselines)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    items = evalset_items(evalset)
    if preset is None and backends is None:
        if columns:
            raise ValueError("baselines need a preset to compute them with; got preset None")
        n = sum(len(candidate_keys(item)) for item in items)
        result = RescoredItems(items, n, 0, {}, (), (), {})
    else:
        if backends is None:
            backends = build_backends(preset)
        with tempfile.TemporaryDirectory(prefix="bpm-rescore-") as tmp:
            work = Path(work_dir) if work_dir is not None else Path(tmp)
            result = rescore_items(items, evalset, backends, work, baselines=columns,
                                   baseline_options=baseline_options, batch_size=batch_size)
    place_images(result.items, evalset, out)
    write_bpm_json(result.items, out / RESCORED_NAME)
    info = _info(out / RESCORED_NAME, result, backends.preset_name if backends else None, time.perf_counter() - t0)
    write_json_atomic(out / META, {"stage": "rescore", "rescored": backends is not None, **info.to_dict()})
    return info
