"""KeyedJsonl: per-record and per-batch durable appends, dedup, torn-line recovery."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bpm_lib.io.jsonl import KeyedJsonl, read_jsonl


def _key(r: dict) -> str:
    return r["id"]


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_append_many_writes_a_batch_with_one_fsync(tmp_path: Path, fsyncs: list[int]) -> None:
    path = tmp_path / "r.jsonl"
    with KeyedJsonl(path, _key) as store:
        assert store.append_many([{"id": "a", "v": 1}, {"id": "b", "v": 2}, {"id": "c", "v": 3}]) == 3
        assert len(fsyncs) == 1
        store.append({"id": "d", "v": 4})
        assert len(fsyncs) == 2
        assert store.append_many([]) == 0 and len(fsyncs) == 2
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c", "d"]
    with KeyedJsonl(path, _key) as again:
        assert again.get("b") == {"id": "b", "v": 2} and len(again) == 4


def test_append_many_skips_records_equal_to_what_their_key_holds(tmp_path: Path, fsyncs: list[int]) -> None:
    path = tmp_path / "r.jsonl"
    with KeyedJsonl(path, _key) as store:
        store.append_many([{"id": "a", "v": 1}, {"id": "b", "v": 2}])
        # "a" unchanged (skipped), "b" changed (a new line wins on reload), "c" twice in one batch
        assert store.append_many([{"id": "a", "v": 1}, {"id": "b", "v": 5}, {"id": "c", "v": 0},
                                  {"id": "c", "v": 0}]) == 2
        assert store.append_many([{"id": "a", "v": 1}]) == 0
        assert len(fsyncs) == 2
        assert store.get("b") == {"id": "b", "v": 5}
    assert len(path.read_text().splitlines()) == 4
    with KeyedJsonl(path, _key) as again:
        assert {r["id"]: r["v"] for r in again.records()} == {"a": 1, "b": 5, "c": 0}


def test_a_batch_torn_by_a_kill_keeps_its_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with KeyedJsonl(path, _key) as store:
        store.append_many([{"id": "a", "v": 1}, {"id": "b", "v": 2}])
    with path.open("ab") as fh:  # what a kill in the middle of a batch's write leaves
        fh.write(b'{"id": "c", "v": 3}\n{"id": "d", "v"')
    with KeyedJsonl(path, _key) as store:
        assert [r["id"] for r in store.records()] == ["a", "b", "c"]
        store.append_many([{"id": "d", "v": 4}])
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c", "d"]


def test_the_store_is_unchanged_when_the_write_fails(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    store = KeyedJsonl(path, _key)
    store.append({"id": "a", "v": 1})
    store.close()
    with pytest.raises(ValueError):  # writing to a closed file
        store.append_many([{"id": "b", "v": 2}])
    assert "b" not in store and len(store) == 1
