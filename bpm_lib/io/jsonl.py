"""JSONL files that survive being killed mid-write.

:class:`KeyedJsonl` appends one record per line, flushes and fsyncs each line, and on
open reads back what is already there (a torn last line from a crash is dropped and
truncated away), so a stage can resume without recomputing or duplicating a key.
:func:`write_jsonl_atomic` writes a whole file through temp file + rename.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from bpm_lib.errors import DataError


def dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def read_jsonl(path: str | os.PathLike[str], *, strict: bool = True) -> Iterator[dict[str, Any]]:
    """Stream the objects of a JSONL file. A malformed line raises :class:`DataError`
    naming file and line (``strict``) or is skipped when it is the torn last line."""
    p = Path(path)
    try:
        fh = p.open("r", encoding="utf-8")
    except FileNotFoundError as e:
        raise DataError(f"{p}: file not found") from e
    with fh:
        pending: tuple[int, str] | None = None
        for lineno, line in enumerate(fh, 1):
            if pending is not None:
                raise DataError(f"{p}:{pending[0]}: not a JSON object: {pending[1][:120]!r}")
            text = line.strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                if strict or line.endswith("\n"):
                    pending = (lineno, text)
                continue
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield obj
        if pending is not None and strict:
            raise DataError(f"{p}:{pending[0]}: not a JSON object: {pending[1][:120]!r}")


def write_jsonl_atomic(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(dumps(rec) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    return out


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=indent, sort_keys=True, ensure_ascii=False, allow_nan=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    return out


class KeyedJsonl:
    """An append-only JSONL file of records identified by ``key_fn(record)``.

    Opening an existing file loads its records (last write of a key wins) and cuts off a
    torn final line, so appending after a crash never leaves a broken line in the middle.
    """

    def __init__(self, path: str | os.PathLike[str], key_fn: Callable[[Mapping[str, Any]], Any]) -> None:
        self.path = Path(path)
        self.key_fn = key_fn
        self._records: dict[Any, dict[str, Any]] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._recover()
        self._fh = self.path.open("a", encoding="utf-8")

    def _recover(self) -> None:
        data = self.path.read_bytes()
        good_end = 0
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:
                break  # torn last line: no newline was written
            line = data[pos:nl].strip()
            if line:
                try:
                    obj = json.loads(line)
                except (ValueError, RecursionError):  # not JSON, not UTF-8: torn or corrupt from here on
                    break
                if isinstance(obj, dict):
                    self._records[self.key_fn(obj)] = obj
            pos = nl + 1
            good_end = pos
        if good_end != len(data):
            with self.path.open("r+b") as fh:
                fh.truncate(good_end)

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: Any) -> dict[str, Any] | None:
        return self._records.get(key)

    def records(self) -> list[dict[str, Any]]:
        return list(self._records.values())

    def append(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` (fsync'd). Writing the record its key already holds is a no-op,
        so a resumed stage that redoes a deterministic failure never repeats a key."""
        self.append_many([record])

    def append_many(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Write ``records`` with one flush and one fsync for all of them (a batch of a
        stage is durable together: a kill loses at most the batch being written, whose
        torn last line is dropped on reopen). Records equal to what their key already
        holds are skipped; returns how many lines were written."""
        lines: list[str] = []
        written: dict[Any, dict[str, Any]] = {}
        for record in records:
            key = self.key_fn(record)
            line = dumps(record)
            old = written.get(key, self._records.get(key))
            if old is not None and dumps(old) == line:
                continue
            lines.append(line + "\n")
            written[key] = dict(record)
        if lines:
            self._fh.write("".join(lines))
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._records.update(written)
        return len(lines)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> KeyedJsonl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
