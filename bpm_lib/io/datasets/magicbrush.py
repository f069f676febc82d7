"""MagicBrush (local edits; every turn of an editing session is one sample).

Two layouts:

* HF parquet (``data/*.parquet``): columns ``img_id``, ``turn_index``, ``source_img``,
  ``mask_img``, ``instruction``, ``target_img``; image columns are structs
  ``{bytes, path}`` (``path`` alone is read relative to the parquet file's folder).
  Read one row group at a time; image columns only for the rows that are wanted.
* Test-set folder: ``edit_sessions.json`` = ``{img_id: [{"input", "mask", "output",
  "instruction"}, …]}`` with the files under ``images/<img_id>/``.

Masks: white = edit region; a mask with transparency uses its alpha channel
(transparent = edit region), as :func:`bpm_lib.io.images.load_mask` does.
Sample id ``<img_id>-<turn>`` (turn 1-based); the target image is kept as the reference edit.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterator
from pathlib import Path
from typing import Any

from bpm_lib.errors import DataError
from bpm_lib.io.datasets import (
    ImageRef,
    RecordData,
    SkippedRecord,
    SourceRecord,
    iter_json_object,
)
from bpm_lib.io.manifest import check_sample_id
from bpm_lib.io.storage import safe_join

log = logging.getLogger(__name__)

META_COLUMNS = ("img_id", "turn_index", "instruction")
IMAGE_COLUMNS = ("source_img", "mask_img", "target_img")
REQUIRED_COLUMNS = (*META_COLUMNS, "source_img", "mask_img")
SESSIONS_FILE = "edit_sessions.json"


def _sample_id(img_id: Any, turn: Any) -> str:
    if isinstance(img_id, bool) or not isinstance(img_id, str | int) or str(img_id) == "":
        raise DataError(f"img_id must be a non-empty string or integer, got {img_id!r}")
    if isinstance(turn, bool) or not isinstance(turn, int) or turn < 0:
        raise DataError(f"turn_index must be a non-negative integer, got {turn!r}")
    return check_sample_id(f"{img_id}-{turn}", what="sample id (img_id-turn_index)")


def _instruction(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{what}: instruction must be a non-empty string, got {value!r}")
    return value.strip()


class MagicBrushLoader:
    """MagicBrush parquet files or test-set folder."""

    name = "magicbrush"

    def records(self, path: Path, wanted: Container[str] | None = None) -> Iterator[SourceRecord | SkippedRecord]:
        path = Path(path)
        if path.is_file() and path.suffix == ".parquet":
            yield from self._parquet([path], wanted)
        elif path.is_file() and path.name == SESSIONS_FILE:
            yield from self._folder(path.parent, wanted)
        elif path.is_dir() and (path / SESSIONS_FILE).is_file():
            yield from self._folder(path, wanted)
        elif path.is_dir():
            files = sorted(path.rglob("*.parquet"))
            if not files:
                raise DataError(f"{path}: no *.parquet files and no {SESSIONS_FILE} (not a MagicBrush folder)")
            yield from self._parquet(files, wanted)
        else:
            raise DataError(f"{path}: not a MagicBrush parquet file or folder")

    def _folder(self, root: Path, wanted: Container[str] | None) -> Iterator[SourceRecord | SkippedRecord]:
        # Metadata is cheap here; images are read only by load(), so ``wanted`` needs no use.
        return _folder_records(root)

    # ------------------------------------------------------------------ parquet
    def _parquet(self, files: list[Path], wanted: Container[str] | None) -> Iterator[SourceRecord | SkippedRecord]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for file in files:
            try:
                pf = pq.ParquetFile(file)
            except (pa.ArrowException, OSError) as e:
                raise DataError(f"{file}: not a readable parquet file: {e}") from e
            names = set(pf.schema_arrow.names)
            missing = [c for c in REQUIRED_COLUMNS if c not in names]
            if missing:
                raise DataError(f"{file}: missing MagicBrush column(s) {missing}; has {sorted(names)}")
            image_cols = [c for c in IMAGE_COLUMNS if c in names]
            row0 = 0
            for group in range(pf.num_row_groups):
                try:
                    meta = pf.read_row_group(group, columns=list(META_COLUMNS)).to_pylist()
                except (pa.ArrowException, OSError) as e:
                    raise DataError(f"{file}: row group {group} is unreadable: {e}") from e
                ids: list[str | None] = []
                errors: list[str | None] = []
                for row in meta:
                    try:
                        ids.append(_sample_id(row["img_id"], row["turn_index"]))
                        errors.append(None)
                    except DataError as e:
                        ids.append(None)
                        errors.append(str(e))
                need = [j for j, sid in enumerate(ids) if sid is not None and (wanted is None or sid in wanted)]
                images: Any = None
                position: dict[int, int] = {}
                if need:
                    try:
                        table = pf.read_row_group(group, columns=image_cols)
                    except (pa.ArrowException, OSError) as e:
                        raise DataError(f"{file}: row group {group} is unreadable: {e}") from e
                    if len(need) < len(meta):
                        table = table.take(need)
                    images = table
                    position = {j: k for k, j in enumerate(need)}
                for j, row in enumerate(meta):
                    row_no = row0 + j
                    where = f"{file.name} row {row_no}"
                    sid = ids[j]
                    if sid is None:
                        yield SkippedRecord(where, f"{where}: {errors[j]}")
                        continue
                    try:
                        instruction = _instruction(row["instruction"], where)
                    except DataError as e:
                        yield SkippedRecord(sid, str(e))
                        continue
                    yield SourceRecord(
                        sample_id=sid,
                        instruction=instruction,
                        edit_kind="local",
                        load=_ParquetRow(file, images, position.get(j), row, row_no, sid),
                    )
                row0 += len(meta)
                del images


class _ParquetRow:
    """Lazily extracts the image cells of one parquet row (the row group is in memory)."""

    def __init__(self, file: Path, table: Any, index: int | None, meta: dict[str, Any], row_no: int, sid: str) -> None:
        self.file, self.table, self.index, self.meta, self.row_no, self.sid = file, table, index, meta, row_no, sid

    def _cell(self, column: str) -> ImageRef | None:
        what = f"{self.file.name} row {self.row_no} column {column}"
        if self.table is None or self.index is None:
            raise DataError(f"{what}: row was not read (not selected)")
        if column not in self.table.column_names:
            return None
        value = self.table.column(column)[self.index].as_py()
        if value is None:
            return None
        if isinstance(value, bytes | bytearray):
            return ImageRef(what, data=bytes(value))
        if isinstance(value, dict):
            if value.get("bytes"):
                return ImageRef(what, data=bytes(value["bytes"]))
            if value.get("path"):
                return ImageRef(what, path=safe_join(self.file.parent, str(value["path"]), what=f"{what}.path"))
            return None
        raise DataError(f"{what}: expected an image struct {{bytes, path}}, got {type(value).__name__}")

    def __call__(self) -> RecordData:
        source = self._cell("source_img")
        if source is None:
            raise DataError(f"{self.file.name} row {self.row_no} column source_img: no image")
        mask = self._cell("mask_img")
        if mask is None:
            raise DataError(f"{self.file.name} row {self.row_no} column mask_img: no image")
        origin = {
            "dataset": "magicbrush",
            "id": self.sid,
            "img_id": str(self.meta["img_id"]),
            "turn_index": int(self.meta["turn_index"]),
            "file": self.file.name,
            "row": self.row_no,
        }
        return RecordData(source=source, reference_mask=mask, reference_edit=self._cell("target_img"), origin=origin)


class _FolderTurn:
    def __init__(self, root: Path, img_id: str, turn: dict[str, Any], number: int, sid: str) -> None:
        self.root, self.img_id, self.turn, self.number, self.sid = root, img_id, turn, number, sid

    def _required(self, key: str) -> ImageRef:
        ref = self._file(key, required=True)
        if ref is None:  # pragma: no cover - _file raises for a missing required file
            raise DataError(f"{SESSIONS_FILE} {self.img_id} turn {self.number} {key}: missing")
        return ref

    def _file(self, key: str, required: bool) -> ImageRef | None:
        what = f"{SESSIONS_FILE} {self.img_id} turn {self.number} {key}"
        value = self.turn.get(key)
        if value in (None, ""):
            if required:
                raise DataError(f"{what}: missing")
            return None
        if not isinstance(value, str):
            raise DataError(f"{what}: expected a file name, got {value!r}")
        folder = safe_join(self.root / "images", self.img_id, what=f"{SESSIONS_FILE} img_id")
        return ImageRef(what, path=safe_join(folder, value, what=what))

    def __call__(self) -> RecordData:
        source = self._required("input")
        mask = self._required("mask")
        origin = {
            "dataset": "magicbrush",
            "id": self.sid,
            "img_id": self.img_id,
            "turn_index": self.number,
            "layout": "folder",
            "input": self.turn.get("input"),
        }
        return RecordData(source=source, reference_mask=mask, reference_edit=self._file("output", required=False),
                          origin=origin)


def _folder_records(root: Path) -> Iterator[SourceRecord | SkippedRecord]:
    for img_id, turns in iter_json_object(root / SESSIONS_FILE):
        if not isinstance(turns, list):
            yield SkippedRecord(str(img_id), f"{SESSIONS_FILE} {img_id}: expected a list of turns, got {type(turns).__name__}")
            continue
        for number, turn in enumerate(turns, 1):
            where = f"{SESSIONS_FILE} {img_id} turn {number}"
            try:
                if not isinstance(turn, dict):
                    raise DataError(f"{where}: expected an object, got {type(turn).__name__}")
                sid = _sample_id(img_id, number)
                instruction = _instruction(turn.get("instruction"), where)
            except DataError as e:
                yield SkippedRecord(where, str(e))
                continue
            yield SourceRecord(sample_id=sid, instruction=instruction, edit_kind="local",
                               load=_FolderTurn(root, str(img_id), turn, number, sid))

