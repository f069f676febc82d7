"""PIE-Bench: ``mapping_file.json`` + ``annotation_images/``.

Each entry (key = sample id) has ``image_path`` (relative to ``annotation_images/``),
``original_prompt``, ``editing_prompt`` (edited words marked with ``[ ]``),
``editing_instruction``, ``editing_type_id`` (``"0"``–``"9"``), ``blended_word`` and
``mask``: a flat list of ``(start, length)`` pairs over the row-major 512×512 image
(absolute starts; a run is clipped at the end of the image, as the benchmark's decoder
does). After decoding, the first and last rows and columns are set to edit region
(benchmark convention: annotation errors at the border). Type ``"9"`` (change style)
is a global edit; every other type is local.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bpm_lib.errors import DataError
from bpm_lib.io.datasets import ImageRef, RecordData, SkippedRecord, SourceRecord, iter_json_object
from bpm_lib.io.manifest import check_sample_id
from bpm_lib.io.storage import safe_join

MAPPING_FILE = "mapping_file.json"
IMAGES_DIR = "annotation_images"
MASK_SIZE = (512, 512)  # (height, width) of every PIE-Bench mask
GLOBAL_TYPE_ID = "9"

EDITING_TYPES = {
    "0": "random",
    "1": "change object",
    "2": "add object",
    "3": "delete object",
    "4": "change attribute content",
    "5": "change attribute pose",
    "6": "change attribute color",
    "7": "change attribute material",
    "8": "change background",
    "9": "change style",
}

_MARKERS = re.compile(r"[\[\]]")


def strip_markers(prompt: str) -> str:
    """``"a [red] car"`` → ``"a red car"`` (PIE-Bench marks edited words with brackets)."""
    return re.sub(r"\s+", " ", _MARKERS.sub("", prompt)).strip()


def decode_mask(encoded: Sequence[int], shape: tuple[int, int] = MASK_SIZE, *, border: bool = True) -> np.ndarray:
    """Decode a PIE-Bench mask (flat ``start, length`` pairs) to a boolean H×W array.

    Raises :class:`DataError` for an odd-length list, non-integers, negative values or a
    start outside the image. With ``border`` the outermost rows and columns are set True.
    """
    if not isinstance(encoded, list | tuple):
        raise DataError(f"mask must be a list of (start, length) pairs, got {type(encoded).__name__}")
    if len(encoded) % 2:
        raise DataError(f"mask must have an even number of values (start, length pairs), got {len(encoded)}")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in encoded):
        raise DataError("mask values must be integers")
    h, w = shape
    total = h * w
    flat = np.zeros(total, dtype=bool)
    arr = np.asarray(encoded, dtype=np.int64).reshape(-1, 2)
    if arr.size and (arr < 0).any():
        raise DataError("mask has a negative start or length")
    for start, length in arr:
        if start >= total:
            raise DataError(f"mask run starts at {int(start)}, outside the {h}x{w} image")
        flat[start : min(start + length, total)] = True
    mask = flat.reshape(h, w)
    if border:
        mask[0, :] = True
        mask[-1, :] = True
        mask[:, 0] = True
        mask[:, -1] = True
    return mask


def encode_mask(mask: np.ndarray) -> list[int]:
    """Inverse of :func:`decode_mask` without the border: flat ``start, length`` pairs."""
    flat = np.asarray(mask, dtype=bool).ravel()
    padded = np.concatenate(([False], flat, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    out: list[int] = []
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        out.extend((int(start), int(stop - start)))
    return out


def _type_id(value: Any, where: str) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or text not in EDITING_TYPES:
        raise DataError(f"{where}: unknown editing_type_id {value!r} (expected '0'..'9')")
    return text


def _text(entry: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    value = entry.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise DataError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


class _Entry:
    def __init__(self, root: Path, key: str, entry: dict[str, Any], type_id: str) -> None:
        self.root, self.key, self.entry, self.type_id = root, key, entry, type_id

    def __call__(self) -> RecordData:
        where = f"{MAPPING_FILE} {self.key}"
        image_path = _text(self.entry, "image_path", where)
        source = ImageRef(f"{where} image_path",
                          path=safe_join(self.root / IMAGES_DIR, image_path, what=f"{where} image_path"))
        if "mask" not in self.entry:
            raise DataError(f"{where}: mask is missing")
        try:
            mask = decode_mask(self.entry["mask"])
        except DataError as e:
            raise DataError(f"{where} mask: {e}") from e
        origin = {
            "dataset": "pie-bench",
            "id": self.key,
            "editing_type_id": self.type_id,
            "edit_type": EDITING_TYPES[self.type_id],
            "image_path": image_path,
            "original_prompt": strip_markers(_text(self.entry, "original_prompt", where, required=False)),
            "editing_prompt": strip_markers(_text(self.entry, "editing_prompt", where, required=False)),
            "blended_word": _text(self.entry, "blended_word", where, required=False),
        }
        return RecordData(source=source, reference_mask=mask, origin=origin)


class PieBenchLoader:
    """PIE-Bench mapping file + annotation images."""

    name = "pie-bench"

    def records(self, path: Path, wanted: Container[str] | None = None) -> Iterator[SourceRecord | SkippedRecord]:
        path = Path(path)
        root = path.parent if path.is_file() else path
        mapping = path if path.is_file() else path / MAPPING_FILE
        if not mapping.is_file():
            raise DataError(f"{root}: no {MAPPING_FILE} (not a PIE-Bench folder)")
        for key, entry in iter_json_object(mapping):
            where = f"{MAPPING_FILE} {key}"
            try:
                sid = check_sample_id(key, what=f"{where} key")
                if not isinstance(entry, dict):
                    raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
                type_id = _type_id(entry.get("editing_type_id"), where)
                instruction = _text(entry, "editing_instruction", where).strip()
            except DataError as e:
                yield SkippedRecord(str(key), str(e))
                continue
            yield SourceRecord(
                sample_id=sid,
                instruction=instruction,
                edit_kind="global" if type_id == GLOBAL_TYPE_ID else "local",
                edit_type=EDITING_TYPES[type_id],
                load=_Entry(root, sid, entry, type_id),
            )
