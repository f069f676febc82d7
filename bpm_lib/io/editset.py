"""The EditSet artifact: one candidate's edited image for every sample.

Layout of an EditSet folder::

    editset.json   {"candidate", "editor": identity dict, "settings", "created_at", "code_version"}
    edits.jsonl    one record per sample (see :class:`EditRecord`), appended as samples finish
    images/        <safe sample id>.png

``edits.jsonl`` is written through :class:`bpm_lib.io.jsonl.KeyedJsonl`, so a run that is
killed resumes where it stopped: samples with an ``ok`` record are skipped, samples that
failed are tried again. An image is written (atomically) before its record, so a record
always points at a complete file.

A *precomputed* folder (how users bring the outputs of any model) is simpler: images
named ``<sample_id>.png|jpg|jpeg|webp`` (nested folders for ids containing ``/``),
optionally with an ``editset.json`` such as ``{"candidate", "editor": "precomputed",
"description"}``. :meth:`EditSet.from_folder` reads that layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bpm_lib import __version__
from bpm_lib.errors import ConfigError, DataError
from bpm_lib.io.images import load_rgb, save_png
from bpm_lib.io.jsonl import KeyedJsonl, dumps, read_jsonl, write_json_atomic

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

EDITSET_JSON = "editset.json"
EDITS_JSONL = "edits.jsonl"
IMAGES_DIR = "images"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_STEM = 96


def safe_stem(sample_id: str) -> str:
    """A file-name stem for ``sample_id``: the id itself when it is already a safe name
    (letters, digits, ``._-``, no leading dot, at most 96 characters); otherwise the
    sanitised id plus ``-`` and 8 hex digits of its sha256, so two different ids never
    map to the same stem by sanitising (``a/b`` and ``a_b`` stay apart)."""
    if not isinstance(sample_id, str) or not sample_id:
        raise ValueError(f"sample_id must be a non-empty string, got {sample_id!r}")
    if _UNSAFE.search(sample_id) is None and not sample_id.startswith(".") and len(sample_id) <= _MAX_STEM:
        return sample_id
    cleaned = _UNSAFE.sub("_", sample_id).lstrip(".")[:_MAX_STEM] or "sample"
    return f"{cleaned}-{hashlib.sha256(sample_id.encode('utf-8')).hexdigest()[:8]}"


@dataclass(frozen=True)
class EditRecord:
    """One line of ``edits.jsonl``. ``image`` is relative to the EditSet folder
    (``images/<stem>.png``) and set only when ``status`` is ``ok``."""

    sample_id: str
    status: Literal["ok", "error"]
    image: str | None = None
    seed: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.status not in ("ok", "error"):
            raise ValueError(f"status must be 'ok' or 'error', got {self.status!r}")
        if self.status == "ok" and not self.image:
            raise ValueError(f"an ok edit record needs an image path (sample_id={self.sample_id!r})")
        if self.status == "error" and not self.error:
            raise ValueError(f"an error edit record must say why (sample_id={self.sample_id!r})")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EditRecord:
        if not isinstance(data, Mapping):
            raise TypeError(f"EditRecord.from_dict expects a mapping, got {type(data).__name__}")
        known = {"sample_id", "status", "image", "seed", "settings", "error", "seconds"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"EditRecord: unknown keys {unknown}")
        d = dict(data)
        d["settings"] = dict(d.get("settings") or {})
        return cls(**d)


def _normalise(obj: Any) -> Any:
    """JSON round trip, so tuples/lists and key order compare equal."""
    return json.loads(dumps({"v": obj}))["v"]


def _resolve_inside(root: Path, rel: str, what: str) -> Path:
    """``root/rel`` refusing absolute paths and ``..`` escapes (a tampered record)."""
    from bpm_lib.io.storage import safe_join

    return Path(safe_join(root, rel, what=what))


class EditSetWriter:
    """Writes (or resumes) an EditSet folder.

    Opening a folder that already holds an EditSet resumes it, provided the candidate,
    editor identity and settings are the same; otherwise :class:`ConfigError` (mixing
    outputs of different settings in one artifact would be silent corruption).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        candidate: str,
        editor_identity: Mapping[str, Any] | str,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(candidate, str) or not candidate.strip():
            raise ValueError(f"candidate must be a non-empty string, got {candidate!r}")
        self.directory = Path(directory)
        self.candidate = candidate
        self.editor = _normalise(dict(editor_identity) if isinstance(editor_identity, Mapping) else editor_identity)
        self.settings = _normalise(dict(settings or {}))
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / IMAGES_DIR).mkdir(exist_ok=True)
        meta_path = self.directory / EDITSET_JSON
        if meta_path.exists():
            self._check_compatible(meta_path)
        else:
            write_json_atomic(
                meta_path,
                {
                    "candidate": candidate,
                    "editor": self.editor,
                    "settings": self.settings,
                    "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "code_version": __version__,
                },
            )
        self._jsonl = KeyedJsonl(self.directory / EDITS_JSONL, key_fn=lambda r: r["sample_id"])
        # Stems in use, lower-cased: case-insensitive file systems must not merge two ids.
        self._stems: dict[str, str] = {}
        for rec in self._jsonl.records():
            if rec.get("image"):
                self._stems[Path(rec["image"]).stem.lower()] = rec["sample_id"]

    def _check_compatible(self, meta_path: Path) -> None:
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{meta_path}: unreadable EditSet metadata: {e}") from e
        mismatches = [
            key
            for key, mine in (("candidate", self.candidate), ("editor", self.editor), ("settings", self.settings))
            if _normalise(meta.get(key)) != mine
        ]
        if mismatches:
            detail = "; ".join(f"{k}: existing {meta.get(k)!r} vs new {getattr(self, k)!r}" for k in mismatches)
            raise ConfigError(
                f"{self.directory} already holds an EditSet made differently ({detail}); "
                "write to a new folder or delete the old one"
            )
        log.info("resuming EditSet %s (%d records)", self.directory, self._count_lines())

    def _count_lines(self) -> int:
        path = self.directory / EDITS_JSONL
        return sum(1 for _ in path.open("rb")) if path.exists() else 0

    def __enter__(self) -> EditSetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._jsonl.close()

    def done(self, sample_id: str) -> bool:
        """True when ``sample_id`` already has an ``ok`` record (errors are retried)."""
        rec = self._jsonl.get(sample_id)
        return rec is not None and rec.get("status") == "ok"

    def record(self, sample_id: str) -> EditRecord | None:
        rec = self._jsonl.get(sample_id)
        return None if rec is None else EditRecord.from_dict(rec)

    def _stem_for(self, sample_id: str) -> str:
        existing = self._jsonl.get(sample_id)
        if existing and existing.get("image"):
            return Path(existing["image"]).stem
        stem = safe_stem(sample_id)
        owner = self._stems.get(stem.lower())
        if owner is not None and owner != sample_id:
            stem = f"{stem}-{hashlib.sha256(sample_id.encode('utf-8')).hexdigest()[:16]}"
        return stem

    def add(
        self,
        sample_id: str,
        image: Image.Image,
        seed: int | None,
        seconds: float | None,
        settings: Mapping[str, Any] | None = None,
    ) -> EditRecord:
        """Write the edited image, then its ``ok`` record. ``settings`` are per-sample
        extras (e.g. the resolution actually used) merged over the EditSet settings."""
        stem = self._stem_for(sample_id)
        rel = f"{IMAGES_DIR}/{stem}.png"
        save_png(image, self.directory / rel)
        self._stems[stem.lower()] = sample_id
        rec = EditRecord(
            sample_id=sample_id,
            status="ok",
            image=rel,
            seed=None if seed is None else int(seed),
            settings=_normalise({**self.settings, **dict(settings or {})}),
            seconds=None if seconds is None else round(float(seconds), 6),
        )
        self._jsonl.append(rec.to_dict())
        return rec

    def add_error(
        self, sample_id: str, error: str, seed: int | None = None, seconds: float | None = None
    ) -> EditRecord:
        rec = EditRecord(
            sample_id=sample_id,
            status="error",
            seed=None if seed is None else int(seed),
            settings=self.settings,
            error=str(error) or "unknown error",
            seconds=None if seconds is None else round(float(seconds), 6),
        )
        self._jsonl.append(rec.to_dict())
        return rec


class EditSet:
    """Read side of an EditSet (written by :class:`EditSetWriter`) or of a precomputed
    folder (:meth:`from_folder`)."""

    def __init__(
        self,
        directory: Path,
        candidate: str,
        editor: Mapping[str, Any] | str,
        settings: Mapping[str, Any],
        records: Mapping[str, EditRecord],
        meta: Mapping[str, Any] | None = None,
        ambiguous: Mapping[str, list[str]] | None = None,
    ) -> None:
        self.directory = directory
        self.candidate = candidate
        self.editor = editor
        self.settings = dict(settings)
        self.meta = dict(meta or {})
        self._records = dict(records)
        self._ambiguous = dict(ambiguous or {})

    @staticmethod
    def _read_meta(directory: Path) -> dict[str, Any] | None:
        path = directory / EDITSET_JSON
        if not path.exists():
            return None
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: unreadable EditSet metadata: {e}") from e
        if not isinstance(meta, dict):
            raise DataError(f"{path}: expected a JSON object, got {type(meta).__name__}")
        return meta

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> EditSet:
        """Open an EditSet folder. A folder with ``editset.json`` but no ``edits.jsonl``
        (a precomputed folder) is read as :meth:`from_folder`."""
        root = Path(directory)
        meta = cls._read_meta(root)
        if meta is None:
            raise DataError(f"{root}: not an EditSet (no {EDITSET_JSON})")
        if not (root / EDITS_JSONL).exists():
            return cls.from_folder(root, meta.get("candidate"))
        candidate = meta.get("candidate")
        if not isinstance(candidate, str) or not candidate:
            raise DataError(f"{root / EDITSET_JSON}: 'candidate' must be a non-empty string, got {candidate!r}")
        records: dict[str, EditRecord] = {}
        for lineno, raw in enumerate(read_jsonl(root / EDITS_JSONL, strict=False), 1):
            try:
                rec = EditRecord.from_dict(raw)
            except (TypeError, ValueError, KeyError) as e:
                raise DataError(f"{root / EDITS_JSONL}: record {lineno} is malformed: {e}") from e
            if rec.image is not None:
                _resolve_inside(root, rec.image, what=f"edited image of {rec.sample_id!r}")
            records[rec.sample_id] = rec  # last write of a key wins (a retried error)
        return cls(root, candidate, meta.get("editor", {}), meta.get("settings") or {}, records, meta)

    @classmethod
    def from_folder(cls, directory: str | os.PathLike[str], candidate: str | None = None) -> EditSet:
        """A plain folder of ``<sample_id>.<png|jpg|jpeg|webp>`` (ids with ``/`` as nested
        folders; sanitised names from :func:`safe_stem` are accepted too). ``candidate``
        defaults to ``editset.json``'s candidate, else the folder name."""
        root = Path(directory)
        if not root.is_dir():
            raise DataError(f"precomputed edits folder not found: {root}")
        meta = cls._read_meta(root) or {}
        name = candidate or meta.get("candidate") or root.name
        found: dict[str, list[str]] = {}
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
                continue
            rel = path.relative_to(root)
            if any(part.startswith(".") for part in rel.parts):
                continue
            key = rel.with_suffix("").as_posix()
            found.setdefault(key, []).append(rel.as_posix())
        records = {
            key: EditRecord(sample_id=key, status="ok", image=paths[0])
            for key, paths in found.items()
            if len(paths) == 1
        }
        ambiguous = {key: paths for key, paths in found.items() if len(paths) > 1}
        editor = meta.get("editor", "precomputed")
        return cls(root, str(name), editor, meta.get("settings") or {}, records, meta, ambiguous)

    def _lookup(self, sample_id: str) -> EditRecord | None:
        for key in (sample_id, safe_stem(sample_id)):
            if key in self._ambiguous:
                raise DataError(
                    f"{self.directory}: several edited images for sample {sample_id!r}: {self._ambiguous[key]}"
                )
            rec = self._records.get(key)
            if rec is not None:
                return rec
        return None

    def record(self, sample_id: str) -> EditRecord | None:
        return self._lookup(sample_id)

    def records(self) -> list[dict[str, Any]]:
        """Every record as its JSON dict (the ``edits.jsonl`` line), one per sample."""
        return [rec.to_dict() for rec in self._records.values()]

    def entries(self) -> list[EditRecord]:
        """Every record as an :class:`EditRecord`."""
        return list(self._records.values())

    def sample_ids(self) -> list[str]:
        return list(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, sample_id: object) -> bool:
        return isinstance(sample_id, str) and self.image_path(sample_id) is not None

    def image_path(self, sample_id: str) -> Path | None:
        """The edited image of ``sample_id``; ``None`` when there is none (missing, or
        the edit failed). A record whose file is gone raises :class:`DataError`."""
        rec = self._lookup(sample_id)
        if rec is None or not rec.ok or rec.image is None:
            return None
        path = _resolve_inside(self.directory, rec.image, what=f"edited image of {sample_id!r}")
        if not path.is_file():
            raise DataError(f"{self.directory}: edited image of {sample_id!r} is missing: {rec.image}")
        return path

    def error(self, sample_id: str) -> str | None:
        rec = self._lookup(sample_id)
        return rec.error if rec is not None and not rec.ok else None

    def load_image(self, sample_id: str) -> Image.Image:
        """The edited image as RGB; :class:`DataError` saying why when there is none."""
        path = self.image_path(sample_id)
        if path is None:
            reason = self.error(sample_id)
            detail = f"the edit failed: {reason}" if reason else "no edited image for this sample"
            raise DataError(f"candidate {self.candidate!r}, sample {sample_id!r}: {detail}")
        return load_rgb(path, what=f"edited image of {sample_id!r} ({self.candidate})")
