"""Datasets → EvalSet: ``fetch(SOURCE, out)`` writes ``out/manifest.jsonl``, the images
and ``out/evalset.json``.

SOURCE is ``NAME:PATH`` with NAME a registered dataset (:data:`DATASETS`:
``magicbrush``, ``pie-bench``, ``bpm-json``, ``jsonl``), ``demo`` (the bundled synthetic
set), or an ``s3://`` URI / local path whose layout is detected (:func:`detect_layout`).
PATH may itself be an ``s3://`` URI: it is downloaded once into the cache first.

EvalSet folder written by :func:`fetch`::

    manifest.jsonl                    one Sample a line (paths relative to this folder)
    evalset.json                      EvalSetInfo: count, digest, edit kinds, skipped records
    images/<sample_id>/source.<ext>   source image, original bytes
    images/<sample_id>/mask.png       reference mask, 8-bit grey, 255 = edit region
    images/<sample_id>/reference_edit.<ext>, edited.<ext>
    candidates/<name>/<sample_id>.png rated/precomputed candidate edits (bpm-json, demo),
    candidates/<name>/editset.json    {"candidate", "editor": "precomputed", "description"}

Records stream from the loaders one at a time; with ``limit`` a first, metadata-only
pass ranks records by ``sha256(seed, sample_id)`` and keeps the best ``limit`` (per
stratum when ``stratify="edit-type"``, then balanced round-robin over strata), so memory
is bounded by ``limit`` and the subset does not depend on the record order. A record
that cannot be read (missing or corrupt image, wrong-size mask, duplicate id, path
escape) is skipped, logged and listed in ``EvalSetInfo.skipped``; the whole fetch fails
with :class:`DataError` only when no record at all could be written. The EvalSet is
built in a temporary sibling folder and moved into place at the end.
"""

from __future__ import annotations

import hashlib
import heapq
import importlib
import io
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TextIO, runtime_checkable

from bpm_lib.errors import DataError, ParseError
from bpm_lib.io import storage
from bpm_lib.io.manifest import (
    EVALSET_INFO_NAME,
    MANIFEST_NAME,
    DigestBuilder,
    EvalSetInfo,
    check_sample_id,
    sample_paths,
    write_evalset_info,
)
from bpm_lib.registry import Registry

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

STRATIFY_CHOICES = ("edit-type",)
EDITSET_INFO_NAME = "editset.json"
_NAME_PREFIX = re.compile(r"^([a-z][a-z0-9-]*):(.*)$", re.DOTALL)
_SKIP_ERRORS = (DataError, ValueError, TypeError, OSError)


# --------------------------------------------------------------------------- record types


@dataclass(frozen=True)
class ImageRef:
    """An image a record refers to: bytes already in memory or a local file to read."""

    what: str
    data: bytes | None = None
    path: Path | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.path is None:
            raise DataError(f"{self.what}: no image data")
        try:
            return self.path.read_bytes()
        except FileNotFoundError as e:
            raise DataError(f"{self.what}: file not found: {self.path}") from e
        except IsADirectoryError as e:
            raise DataError(f"{self.what}: is a folder, not an image: {self.path}") from e
        except OSError as e:
            raise DataError(f"{self.what}: cannot read {self.path}: {e}") from e


@dataclass(frozen=True)
class CandidateData:
    """One rated or precomputed candidate edit of a record (bpm-json, demo)."""

    image: ImageRef
    fields: dict[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class RecordData:
    """The heavy part of a record, read only for records that are written."""

    source: ImageRef
    reference_mask: ImageRef | np.ndarray | None = None
    reference_edit: ImageRef | None = None
    edited_image: ImageRef | None = None
    origin: dict[str, Any] = field(default_factory=dict)
    candidates: dict[str, CandidateData] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceRecord:
    """Metadata of one dataset record; ``load()`` reads its images."""

    sample_id: str
    instruction: str
    edit_kind: Literal["local", "global"] | None
    load: Callable[[], RecordData]
    edit_type: str | None = None


@dataclass(frozen=True)
class SkippedRecord:
    """A record the loader could not even describe (bad metadata)."""

    id: str
    error: str


@runtime_checkable
class DatasetLoader(Protocol):
    """Streams the records of one dataset layout.

    ``records(path, wanted)``: ``path`` is a local file or folder; ``wanted`` is ``None``
    (every record will be loaded) or the set of sample ids that will be loaded — a loader
    may skip the expensive reading of other records (``wanted=frozenset()`` asks for
    metadata only). ``load()`` of a yielded record is called, if at all, before the next
    record is requested.
    """

    name: str

    def records(self, path: Path, wanted: Container[str] | None = None) -> Iterator[SourceRecord | SkippedRecord]: ...


DATASETS: Registry[DatasetLoader] = Registry("dataset")


def _lazy(module: str, attr: str) -> Callable[..., DatasetLoader]:
    def factory(**kwargs: Any) -> DatasetLoader:
        cls = getattr(importlib.import_module(f"bpm_lib.io.datasets.{module}"), attr)
        loader: DatasetLoader = cls(**kwargs)
        return loader

    return factory


DATASETS.add("magicbrush", _lazy("magicbrush", "MagicBrushLoader"),
             "MagicBrush: HF parquet files (img_id, turn_index, source_img, mask_img, instruction, target_img) or the test-set folder (edit_sessions.json + images/)")
DATASETS.add("pie-bench", _lazy("piebench", "PieBenchLoader"),
             "PIE-Bench: mapping_file.json + annotation_images/ (RLE masks over 512x512, editing_type_id 0-9)")
DATASETS.add("bpm-json", _lazy("bpm_json", "BpmJsonLoader"),
             "BPM reference JSON: a list of {index, instruction, source_image_path, edited_image1..K}")
DATASETS.add("jsonl", _lazy("jsonl", "JsonlLoader"), "a generic manifest.jsonl (images copied in)")
DATASETS.add("demo", _lazy("demo", "DemoLoader"), "the bundled synthetic demo set (12 scenes, 3 candidates)")


# --------------------------------------------------------------------------- streaming JSON


class _JsonStream:
    """Incremental reader of one top-level JSON array or object (memory ~ one element)."""

    def __init__(self, fh: TextIO, name: str, chunk: int = 1 << 16) -> None:
        self.fh = fh
        self.name = name
        self.chunk = chunk
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.decoder = json.JSONDecoder()

    def _fill(self, at_least: int = 0) -> None:
        data = self.fh.read(max(self.chunk, at_least))
        if not data:
            self.eof = True
        self.buf = self.buf[self.pos:] + data
        self.pos = 0

    def peek(self) -> str | None:
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if self.eof:
                return None
            self._fill()

    def expect(self, chars: str) -> str:
        ch = self.peek()
        if ch is None or ch not in chars:
            raise DataError(f"{self.name}: malformed JSON: expected one of {chars!r}, found {ch!r}")
        self.pos += 1
        return ch

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                obj, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if self.eof:
                    raise DataError(f"{self.name}: malformed JSON: {e.msg}") from e
                # Read at least as much again as is pending: a value bigger than a chunk is
                # parsed in O(log) attempts, and the read size falls back to a chunk after it.
                self._fill(at_least=len(self.buf) - self.pos)
                continue
            if end >= len(self.buf) and not self.eof:
                self._fill(at_least=len(self.buf) - self.pos)  # a number may continue in the next chunk
                continue
            self.pos = end
            return obj


def _open_text(path: Path) -> TextIO:
    try:
        return path.open("r", encoding="utf-8-sig")
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from e


def iter_json_array(path: Path) -> Iterator[Any]:
    """Stream the items of a file holding one top-level JSON array."""
    with _open_text(path) as fh:
        stream = _JsonStream(fh, str(path))
        if stream.peek() != "[":
            raise DataError(f"{path}: expected a JSON list at the top level")
        stream.expect("[")
        if stream.peek() == "]":
            stream.expect("]")
            return
        while True:
            yield stream.value()
            if stream.expect(",]") == "]":
                break
        if stream.peek() is not None:
            raise DataError(f"{path}: malformed JSON: trailing data after the list")


def iter_json_object(path: Path) -> Iterator[tuple[str, Any]]:
    """Stream the ``(key, value)`` pairs of a file holding one top-level JSON object."""
    with _open_text(path) as fh:
        stream = _JsonStream(fh, str(path))
        if stream.peek() != "{":
            raise DataError(f"{path}: expected a JSON object at the top level")
        stream.expect("{")
        if stream.peek() == "}":
            stream.expect("}")
            return
        while True:
            if stream.peek() != '"':
                raise DataError(f"{path}: malformed JSON: expected a key string")
            key = stream.value()
            stream.expect(":")
            yield key, stream.value()
            if stream.expect(",}") == "}":
                break
        if stream.peek() is not None:
            raise DataError(f"{path}: malformed JSON: trailing data after the object")


# --------------------------------------------------------------------------- writing an EvalSet

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)


def image_extension(data: bytes) -> str | None:
    """File extension for encoded image bytes from their magic number (None: unknown)."""
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return None


def _png_bytes(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _mask_png(mask: np.ndarray) -> bytes:
    import numpy as np
    from PIL import Image

    return _png_bytes(Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, mode="L"))


class EvalSetBuilder:
    """Writes an EvalSet into a staging folder and moves it to ``out`` on :meth:`finish`."""

    def __init__(self, out: Path, *, name: str, source: str | None, params: Mapping[str, Any]) -> None:
        self.out = Path(out)
        _check_out(self.out)
        self.stage = _stage_dir(self.out)
        self.name = name
        self.source = source
        self.params = dict(params)
        self.skipped: list[dict[str, str]] = []
        self.count = 0
        self.kinds: dict[str, int] = {}
        self.types: dict[str, int] = {}
        self.seen: dict[str, str] = {}
        self.candidate_descriptions: dict[str, str] = {}
        self.digest = DigestBuilder()
        self._manifest = (self.stage / MANIFEST_NAME).open("w", encoding="utf-8")
        self._manifest_sha = hashlib.sha256()

    # -- records
    def skip(self, record_id: str, error: str) -> None:
        log.warning("skipped record %s: %s", record_id, error)
        self.skipped.append({"id": record_id, "error": error})

    def duplicate_of(self, sample_id: str) -> str | None:
        return self.seen.get(sample_id)

    def add(self, record: SourceRecord, data: RecordData, where: str) -> None:
        """Validate every image of the record, then write them and its manifest line."""
        from bpm_lib.io.images import load_mask, load_rgb

        sid = check_sample_id(record.sample_id)
        folder = f"images/{sid}"
        files: dict[str, bytes] = {}  # relative path → bytes, written only if all are valid

        src_bytes = data.source.read()
        src_img = load_rgb(src_bytes, what=f"{data.source.what} (source_image)")
        size = src_img.size
        ext = image_extension(src_bytes)
        if ext is None:  # an exotic format: store the decoded pixels losslessly
            src_bytes, ext = _png_bytes(src_img), ".png"
        rel_source = f"{folder}/source{ext}"
        files[rel_source] = src_bytes

        rel_mask: str | None = None
        if data.reference_mask is not None:
            if isinstance(data.reference_mask, ImageRef):
                mask = load_mask(data.reference_mask.read(), size=size,
                                 what=f"{data.reference_mask.what} (reference_mask)")
            else:
                mask = data.reference_mask
                if mask.shape != (size[1], size[0]):
                    raise DataError(
                        f"reference_mask of {sid}: size {mask.shape[1]}x{mask.shape[0]} does not match "
                        f"the image size {size[0]}x{size[1]}"
                    )
            rel_mask = f"{folder}/mask.png"
            files[rel_mask] = _mask_png(mask)

        def copy_image(ref: ImageRef | None, stem: str, field_name: str) -> str | None:
            if ref is None:
                return None
            raw = ref.read()
            img = load_rgb(raw, what=f"{ref.what} ({field_name})")
            img_ext = image_extension(raw)
            if img_ext is None:
                raw, img_ext = _png_bytes(img), ".png"
            rel = f"{folder}/{stem}{img_ext}"
            files[rel] = raw
            return rel

        rel_ref_edit = copy_image(data.reference_edit, "reference_edit", "reference_edit")
        rel_edited = copy_image(data.edited_image, "edited", "edited_image")

        origin = dict(data.origin)
        if data.candidates:
            cands: dict[str, Any] = {}
            for cname, cand in data.candidates.items():
                _check_candidate_name(cname)
                raw = cand.image.read()
                img = load_rgb(raw, what=f"{cand.image.what} (candidate {cname})")
                rel = f"candidates/{cname}/{sid}.png"
                files[rel] = raw if image_extension(raw) == ".png" else _png_bytes(img)
                cands[cname] = {**cand.fields, "image": rel}
                if cname not in self.candidate_descriptions:
                    self.candidate_descriptions[cname] = cand.description
            origin["candidates"] = cands

        line: dict[str, Any] = {
            "sample_id": sid,
            "instruction": record.instruction,
            "source_image": rel_source,
            "reference_mask": rel_mask,
            "reference_edit": rel_ref_edit,
            "edited_image": rel_edited,
            "edit_kind": record.edit_kind,
            "origin": origin,
        }
        from bpm_lib.io.jsonl import dumps
        from bpm_lib.types import Sample

        Sample.from_dict(line)  # the contract every consumer reads
        text = dumps(line) + "\n"

        written: list[Path] = []
        made: set[Path] = set()
        try:
            for rel, payload in files.items():
                # rel is built from a checked sample id / candidate name: it stays in the stage.
                target = self.stage / rel
                if target.parent not in made:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    made.add(target.parent)
                target.write_bytes(payload)
                written.append(target)
        except OSError:
            for target in written:
                target.unlink(missing_ok=True)
            raise
        hashes = {rel: hashlib.sha256(payload).hexdigest() for rel, payload in files.items()}
        for what, rel in sample_paths(line):
            self.digest.add_file(what, rel, hashes[rel])
        self._manifest.write(text)
        self._manifest_sha.update(text.encode("utf-8"))
        self.seen[sid] = where
        self.count += 1
        kind = record.edit_kind or "unknown"
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        etype = origin.get("edit_type")
        if isinstance(etype, str):
            self.types[etype] = self.types.get(etype, 0) + 1

    # -- end
    def abort(self) -> None:
        if not self._manifest.closed:
            self._manifest.close()
        shutil.rmtree(self.stage, ignore_errors=True)

    def finish(self) -> EvalSetInfo:
        self._manifest.flush()
        os.fsync(self._manifest.fileno())
        self._manifest.close()
        for cname, description in sorted(self.candidate_descriptions.items()):
            editset = {"candidate": cname, "editor": "precomputed", "description": description}
            (self.stage / "candidates" / cname / EDITSET_INFO_NAME).write_text(
                json.dumps(editset, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        info = EvalSetInfo(
            name=self.name,
            path=str((self.out / MANIFEST_NAME).resolve()),
            count=self.count,
            digest=self.digest.finish(self._manifest_sha.hexdigest()),
            edit_kinds=dict(sorted(self.kinds.items())),
            edit_types=dict(sorted(self.types.items())),
            skipped=tuple(self.skipped),
            source=self.source,
            params=self.params,
        )
        staged = EvalSetInfo.from_dict({**info.to_dict(), "path": str(self.stage / MANIFEST_NAME)})
        write_evalset_info(staged)
        _replace_dir(self.stage, self.out)
        return info


def _check_candidate_name(name: str) -> None:
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", name):
        raise DataError(f"candidate name {name!r} cannot be used as a folder name")


def _check_out(out: Path) -> None:
    if out.is_file():
        raise ValueError(f"out must be a folder, got an existing file: {out}")
    if out.is_dir() and any(not p.name.startswith(".bpm-fetch-") for p in out.iterdir()):
        if not ((out / MANIFEST_NAME).exists() or (out / EVALSET_INFO_NAME).exists()):
            raise ValueError(
                f"out folder {out} exists and is not an EvalSet (no {MANIFEST_NAME}); refusing to overwrite it"
            )


def _stage_dir(out: Path) -> Path:
    """A fresh staging folder: beside ``out`` (so the final move is one rename), or inside
    ``out`` when its parent is not writable (e.g. ``out`` is a mounted output volume)."""
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if os.access(out.parent, os.W_OK):
        stage = out.parent / f".{out.name}.fetch-{tag}"
    else:
        out.mkdir(exist_ok=True)
        stage = out / f".bpm-fetch-{tag}"
    stage.mkdir()
    return stage


def _replace_dir(stage: Path, out: Path) -> None:
    """Put the staged EvalSet at ``out``: swap folders by rename when possible, else (``out``
    is a mount point, or the stage lives inside it) empty ``out`` and move the files in."""
    if stage.parent != out:
        old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            if out.exists():
                os.rename(out, old)
            os.rename(stage, out)
        except OSError as e:
            if old.exists() and not out.exists():
                os.rename(old, out)  # put the previous EvalSet back before the fallback
            log.debug("cannot swap %s by rename (%s); moving files into it", out, e)
        else:
            shutil.rmtree(old, ignore_errors=True)
            return
    out.mkdir(parents=True, exist_ok=True)
    for item in out.iterdir():
        if item == stage:
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()
    for item in stage.iterdir():
        shutil.move(str(item), str(out / item.name))
    stage.rmdir()


# --------------------------------------------------------------------------- source → loader


def parse_source(source: str) -> tuple[str | None, str | None]:
    """``NAME:PATH`` → (NAME, PATH); ``demo`` → ("demo", None); an ``s3://`` URI or a plain
    path → (None, path) (layout detected later). An unknown NAME raises ValueError with a
    did-you-mean."""
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source must be a non-empty string, got {source!r}")
    if storage.is_s3(source):
        return None, source
    match = _NAME_PREFIX.match(source)
    if match:
        name, path = match.group(1), match.group(2)
        DATASETS.get(name)  # unknown → ValueError with did-you-mean
        return name, (path or None)
    if source in DATASETS:
        return source, None
    if Path(source).exists():
        return None, source
    DATASETS.get(source)  # not a path either: answer as an unknown dataset name
    raise ValueError(f"source {source!r} is neither NAME:PATH nor an existing path")  # pragma: no cover


def _is_bpm_json(path: Path) -> bool:
    try:
        for item in iter_json_array(path):
            return isinstance(item, dict) and "edited_image1" in item
    except DataError:
        return False
    return False


def detect_layout(path: Path) -> str:
    """Which registered dataset reads the local file or folder ``path``.

    Folder: ``edit_sessions.json`` → magicbrush (test-set folder); ``mapping_file.json``
    → pie-bench; ``manifest.jsonl`` → jsonl; any ``*.parquet`` below → magicbrush; a
    top-level ``*.json`` list whose first item has ``edited_image1`` → bpm-json.
    File: ``*.parquet`` → magicbrush; ``*.jsonl`` → jsonl; a JSON list as above → bpm-json.
    """
    if path.is_file():
        if path.suffix == ".parquet":
            return "magicbrush"
        if path.suffix == ".jsonl":
            return "jsonl"
        if path.suffix == ".json" and _is_bpm_json(path):
            return "bpm-json"
        raise DataError(f"{path}: cannot tell which dataset this file is")
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    if (path / "edit_sessions.json").is_file():
        return "magicbrush"
    if (path / "mapping_file.json").is_file():
        return "pie-bench"
    if (path / MANIFEST_NAME).is_file():
        return "jsonl"
    if next(iter(sorted(path.rglob("*.parquet"))), None) is not None:
        return "magicbrush"
    for candidate in sorted(path.glob("*.json")):
        if _is_bpm_json(candidate):
            return "bpm-json"
    raise DataError(
        f"{path}: cannot tell which dataset this folder is (no edit_sessions.json, mapping_file.json, "
        f"{MANIFEST_NAME}, *.parquet or BPM reference *.json)"
    )


# --------------------------------------------------------------------------- strata and selection


def _rules_parser() -> Any | None:
    """The rules instruction parser, when this checkout has one."""
    try:
        importlib.import_module("bpm_lib.backends.rules")
    except ModuleNotFoundError as e:
        if e.name in ("bpm_lib.backends.rules",):
            return None
        raise
    from bpm_lib.backends.base import PARSERS

    if "rules" not in PARSERS:
        return None
    return PARSERS.create("rules")


class _Strata:
    """Edit-type stratum of a record: the dataset's own edit type, else the rules parser's
    edit type (when available), else the edit kind."""

    def __init__(self) -> None:
        self.parser = _rules_parser()

    def of(self, record: SourceRecord) -> str:
        if record.edit_type:
            return record.edit_type
        if self.parser is not None:
            try:
                return str(self.parser.parse(record.instruction).edit_type)
            except (ParseError, ValueError):
                return "unparsed"
        return record.edit_kind or "unknown"


def _rank(seed: int, sample_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{sample_id}".encode()).digest()


def select_ids(
    records: Iterator[SourceRecord | SkippedRecord],
    *,
    limit: int,
    seed: int,
    stratum: Callable[[SourceRecord], str] | None,
) -> list[str]:
    """The ``limit`` sample ids with the smallest ``sha256(seed, id)``; with ``stratum``,
    balanced over strata (round-robin, best-ranked first; a stratum with too few records
    leaves its share to the others). Memory: ``limit`` ids per stratum."""
    heaps: dict[str, list[tuple[bytes, str]]] = {}
    seen: set[str] = set()
    for rec in records:
        if isinstance(rec, SkippedRecord):
            continue
        if rec.sample_id in seen:
            continue
        key = stratum(rec) if stratum is not None else ""
        heap = heaps.setdefault(key, [])
        item = (_negate(_rank(seed, rec.sample_id)), rec.sample_id)
        if len(heap) < limit:
            heapq.heappush(heap, item)
            seen.add(rec.sample_id)
        elif item > heap[0]:
            dropped = heapq.heappushpop(heap, item)
            seen.discard(dropped[1])
            seen.add(rec.sample_id)
    ordered = {k: [sid for _, sid in sorted(h, reverse=True)] for k, h in heaps.items()}
    chosen: list[str] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(v) for v in ordered.values()):
        for key in sorted(ordered):
            if depth < len(ordered[key]) and len(chosen) < limit:
                chosen.append(ordered[key][depth])
        depth += 1
    return chosen


def _negate(digest: bytes) -> bytes:
    """Order-reversing map so a min-heap keeps the *smallest* ranks."""
    return bytes(255 - b for b in digest)


# --------------------------------------------------------------------------- fetch


def fetch(
    source: str,
    out: str | os.PathLike[str],
    *,
    limit: int | None = None,
    seed: int = 0,
    stratify: str | None = None,
    name: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> EvalSetInfo:
    """Fetch ``source`` into the EvalSet folder ``out`` and return its :class:`EvalSetInfo`.

    ``limit``/``seed`` pick a deterministic subset; ``stratify="edit-type"`` balances it
    over edit types. Raises :class:`DataError` when no record could be fetched.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if stratify is not None and stratify not in STRATIFY_CHOICES:
        raise ValueError(f"stratify must be one of {STRATIFY_CHOICES} or None, got {stratify!r}")
    dataset, location = parse_source(source)
    local: Path | None = None
    if location is not None:
        local = storage.fetch_to_local(location, cache_dir=cache_dir)
        if dataset is None:
            dataset = detect_layout(local)
            log.info("%s: detected the %s layout", source, dataset)
    if dataset is None:  # pragma: no cover - parse_source returns a name or a location
        raise ValueError(f"cannot tell which dataset {source!r} is")
    loader = DATASETS.create(dataset)
    path = local if local is not None else Path(".")
    if location is None and dataset != "demo":
        raise ValueError(f"source {source!r} needs a path: {dataset}:PATH")

    selected: set[str] | None = None
    if limit is not None:
        strata = _Strata() if stratify else None
        chosen = select_ids(loader.records(path, wanted=frozenset()), limit=limit, seed=seed,
                            stratum=strata.of if strata else None)
        selected = set(chosen)

    params = {"limit": limit, "seed": seed, "stratify": stratify, "dataset": dataset}
    builder = EvalSetBuilder(Path(out), name=name or dataset, source=source, params=params)
    try:
        _fill(builder, loader.records(path, wanted=selected), selected, progress)
        if builder.count == 0:
            first = "; ".join(f"{s['id']}: {s['error']}" for s in builder.skipped[:3])
            raise DataError(
                f"{source}: no record could be fetched ({len(builder.skipped)} skipped"
                + (f"; first: {first}" if first else "") + ")"
            )
        info = builder.finish()
    except BaseException:
        builder.abort()
        raise
    if info.skipped:
        log.warning("%s: fetched %d record(s), skipped %d", source, info.count, len(info.skipped))
    return info


def _fill(
    builder: EvalSetBuilder,
    records: Iterator[SourceRecord | SkippedRecord],
    selected: set[str] | None,
    progress: bool,
) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(selected) if selected is not None else None, disable=not progress,
               unit="sample", desc="fetch")
    with bar:
        for index, rec in enumerate(records):
            if isinstance(rec, SkippedRecord):
                builder.skip(rec.id, rec.error)
                continue
            if selected is not None and rec.sample_id not in selected:
                continue
            where = f"record {index + 1}"
            first = builder.duplicate_of(rec.sample_id)
            if first is not None:
                builder.skip(rec.sample_id, f"duplicate sample_id {rec.sample_id!r} ({where}; first at {first})")
                continue
            try:
                builder.add(rec, rec.load(), where)
            except _SKIP_ERRORS as e:
                builder.skip(rec.sample_id, str(e))
            finally:
                bar.update(1)
