"""The EvalSet contract: ``manifest.jsonl`` (one :class:`~bpm_lib.types.Sample` a line),
its images, and ``evalset.json`` (an :class:`EvalSetInfo`) beside it.

Manifest lines
    Keys are exactly the fields of :class:`~bpm_lib.types.Sample`; ``sample_id``,
    ``instruction`` and ``source_image`` are required; anything dataset-specific belongs
    in ``origin`` (an unknown top-level key is an error naming the line and the key).
    A sample id is used as a file name by later stages, so it may not contain ``/``,
    ``\\``, NUL or control characters, be ``.``/``..``, or be longer than 200 characters.

Paths
    Path fields are ``source_image``, ``reference_mask``, ``reference_edit``,
    ``edited_image`` and ``origin.candidates.<name>.image``. Relative paths are resolved
    against the manifest's folder (or ``root``) with :func:`~bpm_lib.io.storage.safe_join`,
    so they cannot climb out of it. ``s3://`` URIs are kept as is (keys with ``..`` are
    refused); relative paths of a manifest that itself lives on S3 become S3 URIs.
    Absolute local paths are refused unless ``allow_absolute=True``. Policy: fetched
    datasets (``bpm data fetch``) and EvalSets read by pipeline stages use the default
    ``False`` — an EvalSet is a self-contained folder and an absolute path in it is either
    a mistake or an attempt to read outside it; a manifest a user writes by hand and hands
    to ``bpm score`` may pass ``True`` (the user already has those files).

Reading streams one line at a time; only the set of sample ids seen so far is kept
(duplicates are reported naming both lines). :func:`iter_manifest` with
``on_error="collect"`` yields a :class:`ManifestError` for a bad line and goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any, Literal, overload

from bpm_lib.errors import DataError
from bpm_lib.io import storage
from bpm_lib.io.jsonl import dumps, write_json_atomic
from bpm_lib.types import Sample

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
EVALSET_INFO_NAME = "evalset.json"
EVALSET_INFO_VERSION = 1
DIGEST_PREFIX = "sha256:"
MAX_SAMPLE_ID_LENGTH = 200

SAMPLE_KEYS = tuple(f.name for f in fields(Sample))
REQUIRED_KEYS = ("sample_id", "instruction", "source_image")
PATH_FIELDS = ("source_image", "reference_mask", "reference_edit", "edited_image")
OPTIONAL_PATH_FIELDS = ("reference_mask", "reference_edit", "edited_image")


@dataclass(frozen=True)
class ManifestError:
    """One manifest line that could not be read (``on_error="collect"``)."""

    line: int
    sample_id: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "sample_id": self.sample_id, "message": self.message}


def check_sample_id(sample_id: Any, *, what: str = "sample_id") -> str:
    """Return ``sample_id`` if it is usable as a file name, else raise :class:`DataError`."""
    if not isinstance(sample_id, str) or not sample_id.strip():
        raise DataError(f"{what} must be a non-empty string, got {sample_id!r}")
    if sample_id != sample_id.strip():
        raise DataError(f"{what} has leading or trailing whitespace: {sample_id!r}")
    if len(sample_id) > MAX_SAMPLE_ID_LENGTH:
        raise DataError(f"{what} is longer than {MAX_SAMPLE_ID_LENGTH} characters: {sample_id[:60]!r}…")
    if sample_id in (".", "..") or any(c in sample_id for c in "/\\") or any(
        unicodedata.category(c) == "Cc" for c in sample_id
    ):
        raise DataError(
            f"{what} {sample_id!r} cannot be used as a file name (no '/', '\\', control characters, '.' or '..')"
        )
    return sample_id


# --------------------------------------------------------------------------- path resolution


def _is_absolute_local(text: str) -> bool:
    posix = text.replace("\\", "/")
    return posix.startswith("/") or (len(posix) > 1 and posix[1] == ":" and posix[0].isalpha())


def resolve_path(
    value: str, base: str | Path, *, what: str, allow_absolute: bool = False
) -> str:
    """Resolve one manifest path against ``base`` (a local folder or an ``s3://`` prefix)."""
    if not isinstance(value, str) or not value:
        raise DataError(f"{what}: path must be a non-empty string, got {value!r}")
    if storage.is_s3(value):
        try:
            storage.split_s3(value)  # validates: bucket, no '..' key segments
        except storage.StorageUriError as e:
            raise storage.StorageUriError(f"{what}: {e}") from e
        return value
    if "://" in value:
        raise DataError(f"{what}: unsupported URI scheme in {value!r} (local paths and s3:// only)")
    if _is_absolute_local(value):
        if not allow_absolute:
            raise DataError(
                f"{what}: absolute path {value!r} is not allowed in this manifest "
                "(paths are relative to the manifest folder; allow_absolute=True permits them)"
            )
        return str(Path(value))
    if isinstance(base, str) and storage.is_s3(base):
        bucket, prefix = storage.split_s3(base)
        check_root = Path("/__s3_root__")
        rel = storage.safe_join(check_root, value, what=what).relative_to(check_root)
        key = str(PurePosixPath(prefix) / rel.as_posix()) if prefix else rel.as_posix()
        return storage.join_s3(bucket, key)
    return str(storage.safe_join(base, value, what=what))


def relativize_path(value: str, base: Path) -> str:
    """Inverse of :func:`resolve_path` for writing: a path inside ``base`` becomes relative
    (POSIX separators); anything else (S3 URIs, paths elsewhere) is kept as is."""
    if storage.is_s3(value) or not _is_absolute_local(value):
        return value
    path = Path(value)
    try:
        rel = path.relative_to(base)
    except ValueError:
        try:
            rel = path.resolve().relative_to(base.resolve())
        except ValueError:
            return value
    return rel.as_posix()


def _map_paths(sample: Mapping[str, Any], fn: Any) -> dict[str, Any]:
    """Apply ``fn(value, what)`` to every path field of a manifest record."""
    out = dict(sample)
    for key in PATH_FIELDS:
        value = out.get(key)
        if value is not None:
            out[key] = fn(value, key)
    origin = out.get("origin")
    if isinstance(origin, Mapping) and isinstance(origin.get("candidates"), Mapping):
        new_origin = dict(origin)
        cands: dict[str, Any] = {}
        for name, cand in origin["candidates"].items():
            if isinstance(cand, Mapping) and cand.get("image") is not None:
                cand = dict(cand)
                cand["image"] = fn(cand["image"], f"origin.candidates.{name}.image")
            cands[name] = cand
        new_origin["candidates"] = cands
        out["origin"] = new_origin
    return out


def sample_paths(sample: Sample | Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(field, path)`` of every file a sample refers to, in a fixed order."""
    record = sample.to_dict() if isinstance(sample, Sample) else sample
    found: list[tuple[str, str]] = []
    for key in PATH_FIELDS:
        value = record.get(key)
        if isinstance(value, str):
            found.append((key, value))
    origin = record.get("origin")
    if isinstance(origin, Mapping) and isinstance(origin.get("candidates"), Mapping):
        for name in sorted(origin["candidates"]):
            cand = origin["candidates"][name]
            if isinstance(cand, Mapping) and isinstance(cand.get("image"), str):
                found.append((f"origin.candidates.{name}.image", cand["image"]))
    return found


# --------------------------------------------------------------------------- reading


def _validate_record(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(SAMPLE_KEYS))
    if unknown:
        raise DataError(f"unknown key(s) {unknown} (dataset-specific fields belong in 'origin')")
    missing = [k for k in REQUIRED_KEYS if obj.get(k) in (None, "")]
    if missing:
        raise DataError(f"missing required key(s) {missing}")
    check_sample_id(obj["sample_id"])
    if not isinstance(obj["instruction"], str) or not obj["instruction"].strip():
        raise DataError(f"instruction must be a non-empty string, got {obj['instruction']!r}")
    for key in PATH_FIELDS:
        if key in obj and obj[key] is not None and not isinstance(obj[key], str):
            raise DataError(f"{key} must be a path string or null, got {type(obj[key]).__name__}")
    if obj.get("edit_kind") not in (None, "local", "global"):
        raise DataError(f"edit_kind must be 'local', 'global' or null, got {obj.get('edit_kind')!r}")
    origin = obj.get("origin")
    if origin is not None and not isinstance(origin, dict):
        raise DataError(f"origin must be an object or null, got {type(origin).__name__}")
    if isinstance(origin, dict) and "candidates" in origin:
        cands = origin["candidates"]
        if not isinstance(cands, dict) or not all(isinstance(c, dict) for c in cands.values()):
            raise DataError("origin.candidates must be an object of objects")
    return obj


def _iter_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """Raw lines: each is decoded on its own, so one line that is not UTF-8 is one bad line."""
    if isinstance(path, str) and storage.is_s3(path):
        data = storage.read_bytes(path)
        yield from enumerate(data.splitlines(), 1)
        return
    p = Path(path)
    try:
        fh = p.open("rb")
    except FileNotFoundError as e:
        raise DataError(f"{p}: manifest not found") from e
    except IsADirectoryError as e:
        raise DataError(f"{p}: is a folder; expected a manifest.jsonl file") from e
    with fh:
        yield from enumerate(fh, 1)


def _as_location(value: str | os.PathLike[str]) -> str | Path:
    """S3 URIs stay strings; everything else becomes a local Path."""
    return value if isinstance(value, str) and storage.is_s3(value) else Path(value)


def _base_of(path: str | Path, root: str | Path | None) -> str | Path:
    if root is not None:
        return root
    if isinstance(path, str) and storage.is_s3(path):
        return path.rsplit("/", 1)[0] + "/"
    return Path(path).parent


@overload
def iter_manifest(
    path: str | os.PathLike[str],
    *,
    on_error: Literal["raise"] = ...,
    root: str | os.PathLike[str] | None = ...,
    allow_absolute: bool = ...,
    resolve: bool = ...,
) -> Iterator[Sample]: ...


@overload
def iter_manifest(
    path: str | os.PathLike[str],
    *,
    on_error: Literal["collect"],
    root: str | os.PathLike[str] | None = ...,
    allow_absolute: bool = ...,
    resolve: bool = ...,
) -> Iterator[Sample | ManifestError]: ...


def iter_manifest(
    path: str | os.PathLike[str],
    *,
    on_error: Literal["raise", "collect"] = "raise",
    root: str | os.PathLike[str] | None = None,
    allow_absolute: bool = False,
    resolve: bool = True,
) -> Iterator[Sample] | Iterator[Sample | ManifestError]:
    """Stream the samples of a manifest, validating each line.

    ``on_error="raise"``: the first bad line raises :class:`DataError` naming the file,
    the line and the problem. ``"collect"``: a bad line is yielded as a
    :class:`ManifestError` and reading goes on. ``resolve=False`` keeps paths as written
    (they are still checked). Blank lines are ignored.
    """
    if on_error not in ("raise", "collect"):
        raise ValueError(f"on_error must be 'raise' or 'collect', got {on_error!r}")
    src = _as_location(path)
    base = _base_of(src, None if root is None else _as_location(root))
    return _iter(src, base, on_error, allow_absolute, resolve)


def _iter(
    src: str | Path, base: str | Path, on_error: str, allow_absolute: bool, resolve: bool
) -> Iterator[Sample | ManifestError]:
    seen: dict[str, int] = {}
    for lineno, raw in _iter_lines(src):
        if not raw.strip():
            continue
        sample_id: str | None = None
        try:
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise DataError(f"not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})") from e
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"not valid JSON ({e.msg} at column {e.colno})") from e
            except RecursionError as e:
                raise DataError("not valid JSON (nested too deeply)") from e
            if isinstance(obj, dict) and isinstance(obj.get("sample_id"), str):
                sample_id = obj["sample_id"]
            record = _validate_record(obj)

            def fix(value: str, what: str) -> str:
                resolved = resolve_path(value, base, what=what, allow_absolute=allow_absolute)
                return resolved if resolve else value

            record = _map_paths(record, fix)
            if record["sample_id"] in seen:
                raise DataError(
                    f"duplicate sample_id {record['sample_id']!r} (first on line {seen[record['sample_id']]})"
                )
            sample = Sample.from_dict(record)
        except (DataError, ValueError, TypeError) as e:
            message = f"{src}:{lineno}: {e}"
            if on_error == "raise":
                raise DataError(message) from e
            log.warning("%s", message)
            yield ManifestError(lineno, sample_id, message)
            continue
        seen[sample.sample_id] = lineno
        yield sample


def read_manifest(
    path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    allow_absolute: bool = False,
    resolve: bool = True,
) -> Iterator[Sample]:
    """Stream the samples of a manifest; the first bad line raises :class:`DataError`.

    Paths come back resolved (local absolute paths or S3 URIs) unless ``resolve=False``.
    """
    return iter_manifest(path, on_error="raise", root=root, allow_absolute=allow_absolute, resolve=resolve)


# --------------------------------------------------------------------------- writing


def sample_record(sample: Sample, base: Path) -> dict[str, Any]:
    """The manifest line of ``sample`` with paths inside ``base`` made relative."""
    return _map_paths(sample.to_dict(), lambda value, _what: relativize_path(value, base))


def write_manifest(path: str | os.PathLike[str], samples: Iterable[Sample]) -> Path:
    """Write ``samples`` atomically (temp file + rename) as a manifest at ``path``.

    Paths inside the manifest's folder are written relative to it. Streams ``samples``;
    a duplicate sample id raises :class:`DataError` and leaves any existing file untouched.
    """
    out = Path(path)
    base = out.parent
    base.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    seen: set[str] = set()
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for sample in samples:
                if not isinstance(sample, Sample):
                    raise TypeError(f"samples must be Sample objects, got {type(sample).__name__}")
                check_sample_id(sample.sample_id)
                if sample.sample_id in seen:
                    raise DataError(f"write_manifest: duplicate sample_id {sample.sample_id!r}")
                seen.add(sample.sample_id)
                fh.write(dumps(sample_record(sample, base)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


# --------------------------------------------------------------------------- EvalSet info and digest


@dataclass(frozen=True)
class EvalSetInfo:
    """What an EvalSet folder holds: written as ``evalset.json`` beside the manifest.

    ``digest`` is :func:`manifest_digest` of the manifest (``sha256:<hex>``);
    ``edit_kinds`` / ``edit_types`` count samples per kind (``local``/``global``) and per
    dataset edit type (``origin.edit_type``, when the dataset has one); ``skipped`` lists
    the records that could not be fetched (``{"id", "error"}``).
    """

    name: str
    path: str
    count: int
    digest: str
    edit_kinds: dict[str, int] = field(default_factory=dict)
    edit_types: dict[str, int] = field(default_factory=dict)
    skipped: tuple[dict[str, str], ...] = ()
    source: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    version: int = EVALSET_INFO_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")
        if not (isinstance(self.digest, str) and self.digest.startswith(DIGEST_PREFIX)):
            raise ValueError(f"digest must start with {DIGEST_PREFIX!r}, got {self.digest!r}")
        object.__setattr__(self, "skipped", tuple(dict(s) for s in self.skipped))

    @property
    def manifest(self) -> Path:
        return Path(self.path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "count": self.count,
            "digest": self.digest,
            "edit_kinds": dict(self.edit_kinds),
            "edit_types": dict(self.edit_types),
            "skipped": [dict(s) for s in self.skipped],
            "source": self.source,
            "params": dict(self.params),
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalSetInfo:
        if not isinstance(data, Mapping):
            raise TypeError(f"EvalSetInfo.from_dict expects a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"EvalSetInfo: unknown keys {unknown}")
        d = dict(data)
        d["skipped"] = tuple(d.get("skipped") or ())
        return cls(**d)


class DigestBuilder:
    """Incremental :func:`manifest_digest`: feed each sample's files in manifest order,
    then the manifest bytes. Memory stays flat (files are hashed in chunks)."""

    def __init__(self) -> None:
        self._files = hashlib.sha256()

    def add_file(self, field_name: str, written_path: str, file_sha256: str) -> None:
        self._files.update(f"{field_name}\0{written_path}\0{file_sha256}\n".encode())

    def add_sample(self, record: Mapping[str, Any], base: str | Path, *, allow_absolute: bool = False) -> None:
        for what, value in sample_paths(record):
            resolved = resolve_path(value, base, what=what, allow_absolute=allow_absolute)
            self.add_file(what, value, _sha256_uri(resolved, what))

    def finish(self, manifest_sha256: str) -> str:
        h = hashlib.sha256()
        h.update(b"bpm-evalset-digest-v1\0")
        h.update(manifest_sha256.encode())
        h.update(b"\0")
        h.update(self._files.hexdigest().encode())
        return DIGEST_PREFIX + h.hexdigest()


def _sha256_uri(uri: str, what: str) -> str:
    if storage.is_s3(uri):
        return hashlib.sha256(storage.read_bytes(uri)).hexdigest()
    try:
        return storage.sha256_file(uri)
    except FileNotFoundError as e:
        raise DataError(f"{what}: file not found: {uri}") from e
    except OSError as e:
        raise DataError(f"{what}: cannot read {uri}: {e}") from e


def manifest_digest(path: str | os.PathLike[str], *, allow_absolute: bool = False) -> str:
    """Content digest of an EvalSet: sha256 over the manifest bytes and, in manifest order,
    each referenced file's path (as written) and sha256. Streamed; ``sha256:<hex>``."""
    p = Path(path)
    builder = DigestBuilder()
    for sample in read_manifest(p, allow_absolute=allow_absolute, resolve=False):
        builder.add_sample(sample.to_dict(), p.parent, allow_absolute=allow_absolute)
    return builder.finish(storage.sha256_file(p))


def count_kinds(samples: Iterable[Sample]) -> tuple[int, dict[str, int], dict[str, int]]:
    count = 0
    kinds: dict[str, int] = {}
    types: dict[str, int] = {}
    for s in samples:
        count += 1
        kind = s.edit_kind or "unknown"
        kinds[kind] = kinds.get(kind, 0) + 1
        etype = (s.origin or {}).get("edit_type")
        if isinstance(etype, str):
            types[etype] = types.get(etype, 0) + 1
    return count, dict(sorted(kinds.items())), dict(sorted(types.items()))


def describe_evalset(
    manifest: str | os.PathLike[str],
    *,
    name: str,
    source: str | None = None,
    params: Mapping[str, Any] | None = None,
    skipped: Iterable[Mapping[str, str]] = (),
    allow_absolute: bool = False,
    write: bool = True,
) -> EvalSetInfo:
    """Compute the :class:`EvalSetInfo` of a manifest (and write ``evalset.json`` beside it)."""
    p = Path(manifest)
    count, kinds, types = count_kinds(read_manifest(p, allow_absolute=allow_absolute, resolve=False))
    info = EvalSetInfo(
        name=name,
        path=str(p.resolve()),
        count=count,
        digest=manifest_digest(p, allow_absolute=allow_absolute),
        edit_kinds=kinds,
        edit_types=types,
        skipped=tuple(dict(s) for s in skipped),
        source=source,
        params=dict(params or {}),
    )
    if write:
        write_evalset_info(info)
    return info


def write_evalset_info(info: EvalSetInfo) -> Path:
    """Write ``evalset.json`` beside the manifest (its ``path`` stored relative)."""
    manifest = Path(info.path)
    data = info.to_dict()
    data["path"] = manifest.name
    return write_json_atomic(manifest.parent / EVALSET_INFO_NAME, data)


def read_evalset_info(folder_or_manifest: str | os.PathLike[str]) -> EvalSetInfo:
    """Read ``evalset.json`` of an EvalSet folder (or of the folder of a manifest path)."""
    p = Path(folder_or_manifest)
    folder = p if p.is_dir() else p.parent
    info_path = folder / EVALSET_INFO_NAME
    try:
        data = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"{info_path}: not found (not an EvalSet folder?)") from e
    except (OSError, ValueError) as e:
        raise DataError(f"{info_path}: cannot read: {e}") from e
    if not isinstance(data, dict):
        raise DataError(f"{info_path}: expected a JSON object")
    data["path"] = str((folder / str(data.get("path") or MANIFEST_NAME)).resolve())
    try:
        return EvalSetInfo.from_dict(data)
    except (TypeError, ValueError) as e:
        raise DataError(f"{info_path}: {e}") from e
