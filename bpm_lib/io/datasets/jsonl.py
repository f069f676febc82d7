"""A generic manifest (``manifest.jsonl``, see :mod:`bpm_lib.io.manifest`) copied into a
self-contained EvalSet: images are copied in, masks normalised to 8-bit PNG (255 = edit
region), ``origin.candidates`` images copied to ``candidates/<name>/``.

Absolute paths are refused (a fetched EvalSet must not read outside its source folder);
``s3://`` image URIs are downloaded. A bad line is skipped and reported.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from pathlib import Path
from typing import Any

from bpm_lib.errors import DataError
from bpm_lib.io import storage
from bpm_lib.io.datasets import CandidateData, ImageRef, RecordData, SkippedRecord, SourceRecord
from bpm_lib.io.manifest import MANIFEST_NAME, ManifestError, iter_manifest
from bpm_lib.types import Sample


def _ref(value: str | None, what: str) -> ImageRef | None:
    if value is None:
        return None
    if storage.is_s3(value):
        return ImageRef(what, data=storage.read_bytes(value))
    return ImageRef(what, path=Path(value))


class _Line:
    def __init__(self, sample: Sample, where: str) -> None:
        self.sample, self.where = sample, where

    def __call__(self) -> RecordData:
        s = self.sample
        source = _ref(s.source_image, f"{self.where} source_image")
        if source is None:  # pragma: no cover - Sample requires a source image
            raise DataError(f"{self.where}: no source_image")
        origin: dict[str, Any] = dict(s.origin or {})
        origin.setdefault("dataset", "jsonl")
        origin.setdefault("id", s.sample_id)
        candidates: dict[str, CandidateData] = {}
        for name, cand in (origin.pop("candidates", None) or {}).items():
            what = f"{self.where} origin.candidates.{name}.image"
            fields = {k: v for k, v in cand.items() if k != "image"}
            image = _ref(cand.get("image"), what)
            if image is None:
                raise DataError(f"{what}: missing")
            candidates[str(name)] = CandidateData(image=image, fields=fields,
                                                  description=f"candidate {name} of a copied manifest")
        return RecordData(
            source=source,
            reference_mask=_ref(s.reference_mask, f"{self.where} reference_mask"),
            reference_edit=_ref(s.reference_edit, f"{self.where} reference_edit"),
            edited_image=_ref(s.edited_image, f"{self.where} edited_image"),
            origin=origin,
            candidates=candidates,
        )


class JsonlLoader:
    """A manifest.jsonl file (or a folder holding one)."""

    name = "jsonl"

    def records(self, path: Path, wanted: Container[str] | None = None) -> Iterator[SourceRecord | SkippedRecord]:
        path = Path(path)
        manifest = path / MANIFEST_NAME if path.is_dir() else path
        if not manifest.is_file():
            raise DataError(f"{path}: no {MANIFEST_NAME} here")
        for item in iter_manifest(manifest, on_error="collect", allow_absolute=False):
            if isinstance(item, ManifestError):
                yield SkippedRecord(item.sample_id or f"line {item.line}", item.message)
                continue
            etype = (item.origin or {}).get("edit_type")
            yield SourceRecord(
                sample_id=item.sample_id,
                instruction=item.instruction,
                edit_kind=item.edit_kind,
                edit_type=etype if isinstance(etype, str) else None,
                load=_Line(item, f"{manifest.name} {item.sample_id}"),
            )
