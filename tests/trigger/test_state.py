"""The trigger state DB: exactly-once jobs, guarded transitions, recovery, one owner."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bpm_lib.trigger.state import StateError, TriggerState, payload_sha256


def _add(state: TriggerState, delivery_id: str, model: str = "m", version: str = "1", **kw: object) -> bool:
    return state.add_delivery(delivery_id, event="model_version.created", origin="webhook", payload=b"{}",
                              model=model, version=version, checkpoint=f"models:/{model}/{version}", **kw)  # type: ignore[arg-type]


def test_schema_wal_and_reopen(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "state.db"
    with TriggerState(db) as state:
        assert _add(state, "d1")
        assert state.ping()
    assert not state.ping()  # closed
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"deliveries", "jobs", "meta"} <= tables
    with TriggerState(db) as state:
        d = state.delivery("d1")
        assert d is not None and d.status == "queued" and d.payload_sha256 == payload_sha256(b"{}")
        assert state.delivery_payload("d1") == b"{}"


def test_delivery_ids_are_recorded_once(tmp_path: Path) -> None:
    with TriggerState(tmp_path / "s.db") as state:
        assert _add(state, "d1")
        assert not _add(state, "d1", version="2")  # same id, nothing written
        assert state.delivery("d1").version == "1"  # type: ignore[union-attr]
        assert state.add_delivery("i1", event="x.y", origin="webhook", payload=b"z", status="ignored", reason="r")
        assert [d.id for d in state.deliveries("ignored")] == ["i1"]
        with pytest.raises(ValueError, match="status"):
            state.add_delivery("bad", event="e", origin="o", payload=b"", status="weird")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="delivery_id"):
            state.add_delivery("", event="e", origin="o", payload=b"")


def test_one_job_per_model_version_digest(tmp_path: Path) -> None:
    with TriggerState(tmp_path / "s.db") as state:
        for d in ("d1", "d2", "d3"):
            _add(state, d)
        first = state.attach_job("d1", digest="sha256:aa", max_attempts=3)
        assert first.outcome == "created" and first.runnable and first.job.status == "pending"
        again = state.attach_job("d2", digest="sha256:aa", max_attempts=3)
        assert again.outcome == "exists" and not again.runnable and again.job.id == first.job.id
        changed = state.attach_job("d3", digest="sha256:bb", max_attempts=3)  # new content, same version
        assert changed.outcome == "created" and changed.job.id == first.job.id + 1
        assert [(d.id, d.status, d.job_id) for d in state.deliveries()] == [
            ("d1", "done", first.job.id), ("d2", "exists", first.job.id), ("d3", "done", changed.job.id)]
        with pytest.raises(StateError, match="not queued"):
            state.attach_job("d1", digest="sha256:aa", max_attempts=3)
        with pytest.raises(ValueError, match="digest"):
            state.attach_job("d1", digest="", max_attempts=3)


def test_job_transitions_are_guarded(tmp_path: Path) -> None:
    with TriggerState(tmp_path / "s.db") as state:
        _add(state, "d1")
        job = state.attach_job("d1", digest="sha256:aa", max_attempts=3).job
        with pytest.raises(StateError, match="not running"):
            state.finish_job(job.id, "submitted", run_id="r")
        claimed = state.claim_job(job.id)
        assert claimed is not None and claimed.status == "running" and claimed.attempts == 1
        assert state.claim_job(job.id) is None  # already running
        done = state.finish_job(job.id, "submitted", run_id="run-1")
        assert (done.status, done.run_id) == ("submitted", "run-1")
        assert state.claim_job(job.id) is None  # a submitted job never runs again
        with pytest.raises(ValueError, match="status"):
            state.finish_job(job.id, "pending")  # type: ignore[arg-type]


def test_failed_job_is_requeued_by_a_new_delivery_until_out_of_attempts(tmp_path: Path) -> None:
    with TriggerState(tmp_path / "s.db") as state:
        outcomes = []
        for i in range(4):
            _add(state, f"d{i}")
            att = state.attach_job(f"d{i}", digest="sha256:aa", max_attempts=2)
            outcomes.append(att.outcome)
            if att.runnable:
                state.claim_job(att.job.id)
                state.finish_job(att.job.id, "failed", error="x" * 5000)
        assert outcomes == ["created", "requeued", "exists", "exists"]
        job = state.jobs()[0]
        assert (job.status, job.attempts) == ("failed", 2)
        assert job.error is not None and len(job.error) == 2000  # clipped


def test_two_threads_never_claim_the_same_job(tmp_path: Path) -> None:
    with TriggerState(tmp_path / "s.db") as state:
        ids = []
        for i in range(50):
            _add(state, f"d{i}", version=str(i + 1))
            ids.append(state.attach_job(f"d{i}", digest="sha256:aa", max_attempts=3).job.id)
        claimed: list[int] = []
        lock = threading.Lock()

        def claim_all() -> None:
            for job_id in ids:
                if state.claim_job(job_id) is not None:
                    with lock:
                        claimed.append(job_id)

        threads = [threading.Thread(target=claim_all) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(claimed) == sorted(ids)  # each exactly once


def test_recover_resumes_running_jobs_and_fails_exhausted_ones(tmp_path: Path) -> None:
    with TriggerState(tmp_path / "s.db") as state:
        for i in range(3):
            _add(state, f"d{i}", version=str(i + 1))
        j1 = state.attach_job("d0", digest="sha256:a", max_attempts=3).job
        j2 = state.attach_job("d1", digest="sha256:b", max_attempts=3).job
        state.claim_job(j1.id)  # running when "the process died"
        for attempt in range(2):  # j2: two attempts used, then running again
            state.claim_job(j2.id)
            state.finish_job(j2.id, "failed", error="boom")
            _add(state, f"retry-{attempt}", version="2")
            state.attach_job(f"retry-{attempt}", digest="sha256:b", max_attempts=3)
        state.claim_job(j2.id)
        assert state.job(j2.id).attempts == 3  # type: ignore[union-attr]
        rec = state.recover(max_attempts=3)
        assert rec.interrupted == (j1.id,) and rec.failed_interrupted == (j2.id,)
        assert rec.pending_jobs == (j1.id,)
        assert rec.queued_deliveries == ("d2",)
        assert state.job(j1.id).status == "pending"  # type: ignore[union-attr]
        failed = state.job(j2.id)
        assert failed is not None and failed.status == "failed" and "interrupted" in (failed.error or "")


def test_fail_and_requeue_delivery(tmp_path: Path) -> None:
    with TriggerState(tmp_path / "s.db") as state:
        _add(state, "d1")
        assert state.fail_delivery("d1", "cannot resolve")
        assert not state.fail_delivery("d1", "again")  # not queued any more
        d = state.delivery("d1")
        assert d is not None and (d.status, d.reason, d.attempts) == ("failed", "cannot resolve", 1)
        assert state.requeue_delivery("d1", max_attempts=2)
        assert state.delivery("d1").status == "queued"  # type: ignore[union-attr]
        state.fail_delivery("d1", "still")
        assert not state.requeue_delivery("d1", max_attempts=2)  # out of attempts
        assert state.counts() == {"deliveries": {"failed": 1}, "jobs": {}}


def test_a_state_file_has_one_owner_process(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with TriggerState(db):
        with pytest.raises(StateError, match="in use by pid"):
            TriggerState(db)
        code = ("import sys; from bpm_lib.trigger.state import TriggerState, StateError\n"
                "try:\n    TriggerState(sys.argv[1])\nexcept StateError as e:\n    print(e); sys.exit(3)\n")
        proc = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 3 and "in use" in proc.stdout
        with TriggerState(db, lock=False) as reader:  # read-only listing (bpm trigger jobs) is allowed
            assert reader.jobs() == []
    TriggerState(db).close()  # released with the owner


def test_unreadable_state_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="cannot open"):
        TriggerState(db)
    TriggerState(tmp_path / "other.db").close()
    with sqlite3.connect(tmp_path / "other.db") as raw:
        raw.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(StateError, match="schema version 99"):
        TriggerState(tmp_path / "other.db")
