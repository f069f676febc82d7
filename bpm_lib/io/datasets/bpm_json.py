"""The BPM reference data format (BPM_SPEC §7), read and written.

A JSON list of items::

    {"index": 0, "instruction": "...", "source_image_path": "src/0.png",
     "edited_image1": {"image_path": "m1/0.png", "user_overall_quality": 4,
                       "preservation": -0.02, "edit_quality": 0.31, "position": 1, "size": 1},
     "edited_image2": {...}, ...}

Image paths are relative to the JSON file's folder. The EvalSet keeps every candidate:
its image is written to ``candidates/<k>/<sample_id>.png`` (a precomputed EditSet per
candidate) and its other fields (ratings, published scores) to
``origin.candidates["<k>"]``, so published annotations can be re-scored. Unknown item
keys are kept in ``origin.extra``; an optional ``edit_kind`` (local/global) is honoured.
"""

from __future__ import annotations

import os
import re
from collections.abc import Container, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from bpm_lib.errors import DataError
from bpm_lib.io.datasets import (
    CandidateData,
    ImageRef,
    RecordData,
    SkippedRecord,
    SourceRecord,
    iter_json_array,
)
from bpm_lib.io.jsonl import write_json_atomic
from bpm_lib.io.manifest import check_sample_id, read_manifest, relativize_path
from bpm_lib.io.storage import safe_join

CANDIDATE_KEY = re.compile(r"^edited_image([1-9][0-9]*)$")
ITEM_KEYS = ("index", "instruction", "source_image_path")
SCORE_KEYS = ("preservation", "edit_quality", "position", "size")


def candidate_keys(item: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``[("1", "edited_image1"), ...]`` ordered by candidate number."""
    found = [(m.group(1), key) for key in item if (m := CANDIDATE_KEY.match(key))]
    return sorted(found, key=lambda kv: int(kv[0]))


def _check_item(item: Any, where: str) -> tuple[str, str]:
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected an object, got {type(item).__name__}")
    missing = [k for k in ITEM_KEYS if item.get(k) in (None, "")]
    if missing:
        raise DataError(f"{where}: missing key(s) {missing}")
    index = item["index"]
    if isinstance(index, bool) or not isinstance(index, int | str):
        raise DataError(f"{where}: index must be an integer or string, got {index!r}")
    sid = check_sample_id(str(index), what=f"{where} index")
    instruction = item["instruction"]
    if not isinstance(instruction, str) or not instruction.strip():
        raise DataError(f"{where}: instruction must be a non-empty string, got {instruction!r}")
    if not isinstance(item["source_image_path"], str):
        raise DataError(f"{where}: source_image_path must be a string, got {item['source_image_path']!r}")
    for _, key in candidate_keys(item):
        cand = item[key]
        if not isinstance(cand, dict) or not isinstance(cand.get("image_path"), str) or not cand["image_path"]:
            raise DataError(f"{where}: {key} must be an object with an image_path string")
    return sid, instruction.strip()


def read_bpm_json(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read and validate a whole BPM reference JSON file (for writing back / inspection)."""
    items = []
    for position, item in enumerate(iter_json_array(Path(path))):
        _check_item(item, f"{path} item {position}")
        items.append(item)
    return items


def write_bpm_json(items: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write items in the BPM reference format atomically (validated first)."""
    out = []
    seen: set[str] = set()
    for position, item in enumerate(items):
        sid, _ = _check_item(dict(item), f"item {position}")
        if sid in seen:
            raise DataError(f"item {position}: duplicate index {item['index']!r}")
        seen.add(sid)
        out.append(dict(item))
    return write_json_atomic(path, out)


def bpm_items_from_evalset(
    manifest: str | os.PathLike[str],
    *,
    scores: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """BPM reference items of an EvalSet whose samples carry ``origin.candidates``.

    Paths are relative to the manifest's folder (write the JSON there). Candidates named
    by number keep their number; other names are numbered in sorted order and their name
    kept as ``candidate``. ``scores[(sample_id, candidate)]`` (e.g. ``preservation``,
    ``edit_quality``, ``position``, ``size``) are merged into the candidate entries.
    """
    base = Path(manifest).parent
    items = []
    for sample in read_manifest(manifest):
        origin = dict(sample.origin or {})
        cands = origin.pop("candidates", None) or {}
        index = origin.get("id", sample.sample_id) if origin.get("dataset") == "bpm-json" else sample.sample_id
        item: dict[str, Any] = {
            "index": index,
            "instruction": sample.instruction,
            "source_image_path": relativize_path(sample.source_image, base),
        }
        numbered = all(str(n).isdigit() and int(n) >= 1 for n in cands)
        names = sorted(cands, key=int) if numbered else sorted(cands)
        for position, name in enumerate(names, 1):
            entry = {k: v for k, v in cands[name].items() if k != "image"}
            entry["image_path"] = relativize_path(cands[name]["image"], base)
            if not numbered:
                entry["candidate"] = name
            if scores is not None and (sample.sample_id, name) in scores:
                entry.update(scores[(sample.sample_id, name)])
            item[f"edited_image{int(name) if numbered else position}"] = entry
        if sample.edit_kind is not None:
            item["edit_kind"] = sample.edit_kind
        items.append(item)
    return items


class _Item:
    def __init__(self, root: Path, item: dict[str, Any], sid: str, where: str) -> None:
        self.root, self.item, self.sid, self.where = root, item, sid, where

    def __call__(self) -> RecordData:
        src_rel = self.item["source_image_path"]
        source = ImageRef(f"{self.where} source_image_path",
                          path=safe_join(self.root, src_rel, what=f"{self.where} source_image_path"))
        candidates: dict[str, CandidateData] = {}
        for number, key in candidate_keys(self.item):
            cand = self.item[key]
            what = f"{self.where} {key}.image_path"
            image = ImageRef(what, path=safe_join(self.root, cand["image_path"], what=what))
            fields = {k: v for k, v in cand.items() if k != "image_path"}
            fields["image_path"] = cand["image_path"]  # as published, for traceability
            candidates[number] = CandidateData(image=image, fields=fields,
                                               description=f"edited_image{number} of the BPM reference JSON")
        known = {*ITEM_KEYS, "edit_kind", *(key for _, key in candidate_keys(self.item))}
        extra = {k: v for k, v in self.item.items() if k not in known}
        origin: dict[str, Any] = {
            "dataset": "bpm-json",
            "id": self.item["index"],
            "source_image_path": src_rel,
        }
        if extra:
            origin["extra"] = extra
        return RecordData(source=source, origin=origin, candidates=candidates)


class BpmJsonLoader:
    """BPM reference JSON (a file, or a folder with exactly one such file at the top)."""

    name = "bpm-json"

    def records(self, path: Path, wanted: Container[str] | None = None) -> Iterator[SourceRecord | SkippedRecord]:
        file = _find_json(Path(path))
        root = file.parent
        for position, item in enumerate(iter_json_array(file)):
            where = f"{file.name} item {position}"
            try:
                sid, instruction = _check_item(item, where)
                kind = item.get("edit_kind")
                if kind not in (None, "local", "global"):
                    raise DataError(f"{where}: edit_kind must be 'local' or 'global', got {kind!r}")
            except DataError as e:
                yield SkippedRecord(where, str(e))
                continue
            yield SourceRecord(sample_id=sid, instruction=instruction, edit_kind=kind,
                               load=_Item(root, item, sid, where))


def _find_json(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    found = []
    for candidate in sorted(path.glob("*.json")):
        try:
            first = next(iter(iter_json_array(candidate)), None)
        except DataError:
            continue
        if isinstance(first, dict) and "edited_image1" in first:
            found.append(candidate)
    if len(found) != 1:
        names = [p.name for p in found]
        raise DataError(f"{path}: expected exactly one BPM reference *.json file at the top level, found {names}; "
                        "give the file itself as PATH")
    return found[0]

