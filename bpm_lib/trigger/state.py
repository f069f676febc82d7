"""The trigger's durable state: an SQLite database (WAL) of deliveries and jobs.

* ``deliveries`` — the inbox. One row per delivery id (a webhook's
  ``X-MLflow-Delivery-Id``, or a poller's ``poll:…`` id): when it arrived, its event, the
  sha256 and bytes of its payload, the model version / checkpoint it names and its status
  ``queued`` → ``done`` (a job was created or re-queued) | ``exists`` (the checkpoint
  already has a job) | ``ignored`` | ``failed`` (its checkpoint could not be resolved).
* ``jobs`` — one evaluation per ``(model, version, digest)`` (UNIQUE): ``pending`` →
  ``running`` → ``submitted`` (handed to KFP) | ``succeeded`` (a local run finished) |
  ``failed``. A failed job goes back to ``pending`` when a new delivery names the same
  checkpoint and it has attempts left; a submitted or succeeded job never runs again.

Every transition is one ``BEGIN IMMEDIATE`` transaction guarded by the expected current
status, so two workers can never both claim a job. A delivery is committed (synchronous
FULL) before it is acknowledged, so what was accepted survives a crash:
:meth:`TriggerState.recover` puts ``running`` jobs back to ``pending`` (or fails them
when out of attempts) and the service then works through queued deliveries and pending
jobs. One process owns a state file at a time (an exclusive ``flock`` on ``<db>.lock``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from bpm_lib.errors import BpmError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_ERROR_CHARS = 2000

DeliveryStatus = Literal["queued", "done", "exists", "ignored", "failed"]
JobStatus = Literal["pending", "running", "submitted", "succeeded", "failed"]
DELIVERY_STATUSES: tuple[str, ...] = ("queued", "done", "exists", "ignored", "failed")
JOB_STATUSES: tuple[str, ...] = ("pending", "running", "submitted", "succeeded", "failed")
FINAL_JOB_STATUSES = frozenset({"submitted", "succeeded", "failed"})

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    origin TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in JOB_STATUSES)})),
    run_id TEXT,
    mlflow_run_id TEXT,
    results TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (model, version, digest)
);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    event TEXT NOT NULL,
    origin TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    payload BLOB,
    model TEXT,
    version TEXT,
    checkpoint TEXT,
    digest TEXT,
    status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in DELIVERY_STATUSES)})),
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    job_id INTEGER REFERENCES jobs(id),
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (status, received_at);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, id);
"""


class StateError(BpmError):
    """The state database cannot be opened, is owned by another process, or is corrupt."""


@dataclass(frozen=True)
class Delivery:
    id: str
    received_at: float
    event: str
    origin: str
    payload_sha256: str
    model: str | None
    version: str | None
    checkpoint: str | None
    digest: str | None
    status: str
    reason: str | None
    attempts: int
    job_id: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Job:
    id: int
    model: str
    version: str
    digest: str
    checkpoint: str
    origin: str
    status: str
    run_id: str | None
    mlflow_run_id: str | None
    results: str | None
    error: str | None
    attempts: int
    created_at: float
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Attachment:
    """What :meth:`TriggerState.attach_job` did: the job, and whether it must run now."""

    job: Job
    outcome: Literal["created", "requeued", "exists"]

    @property
    def runnable(self) -> bool:
        return self.outcome in ("created", "requeued")


@dataclass(frozen=True)
class Recovery:
    queued_deliveries: tuple[str, ...]
    pending_jobs: tuple[int, ...]
    interrupted: tuple[int, ...]
    failed_interrupted: tuple[int, ...]


_DELIVERY_COLUMNS = ("id, received_at, event, origin, payload_sha256, model, version, checkpoint, digest, "
                     "status, reason, attempts, job_id")
_JOB_COLUMNS = ("id, model, version, digest, checkpoint, origin, status, run_id, mlflow_run_id, results, error, "
                "attempts, created_at, updated_at")


def payload_sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _clip(text: str | None) -> str | None:
    if text is None:
        return None
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


class TriggerState:
    """Deliveries and jobs in one SQLite file (see the module docstring).

    Thread-safe: one connection, every call serialised by a lock. Use as a context
    manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str], *, lock: bool = True) -> None:
        self.path = Path(path)
        self._mutex = threading.Lock()
        self._lock_fd: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StateError(f"state {self.path}: cannot create its folder: {e}") from e
        if lock:
            self._acquire_file_lock()
        try:
            self._db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise StateError(f"state {self.path}: schema version {row[0]}, this code reads {SCHEMA_VERSION}")
        except sqlite3.Error as e:
            self._release_file_lock()
            raise StateError(f"state {self.path}: cannot open: {e}") from e
        except StateError:
            self._release_file_lock()
            raise
        self._closed = False

    # ----------------------------------------------------------------- lifecycle

    def _acquire_file_lock(self) -> None:
        import fcntl

        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            owner = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            raise StateError(f"state {self.path} is in use by {owner} (one trigger process per state file)") from e
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self._lock_fd = fd

    def _release_file_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            self._db.close()
            self._release_file_lock()

    def __enter__(self) -> TriggerState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self) -> bool:
        """True when the database answers a query (for readiness probes)."""
        try:
            with self._mutex:
                if self._closed:
                    return False
                self._db.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()
            return True
        except sqlite3.Error:
            return False

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            if self._closed:
                raise StateError(f"state {self.path} is closed")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._mutex:
            if self._closed:
                raise StateError(f"state {self.path} is closed")
            return list(self._db.execute(sql, args).fetchall())

    # ----------------------------------------------------------------- deliveries

    def add_delivery(
        self,
        delivery_id: str,
        *,
        event: str,
        origin: str,
        payload: bytes,
        status: DeliveryStatus = "queued",
        model: str | None = None,
        version: str | None = None,
        checkpoint: str | None = None,
        digest: str | None = None,
        reason: str | None = None,
        received_at: float | None = None,
    ) -> bool:
        """Record a new delivery; False (nothing written) when the id is already known."""
        if not delivery_id:
            raise ValueError(f"delivery_id must be non-empty, got {delivery_id!r}")
        if status not in DELIVERY_STATUSES:
            raise ValueError(f"status must be one of {DELIVERY_STATUSES}, got {status!r}")
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO deliveries (id, received_at, event, origin, payload_sha256, payload, model, "
                "version, checkpoint, digest, status, reason, attempts, job_id, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, ?)",
                (delivery_id, received_at if received_at is not None else now, event, origin,
                 payload_sha256(payload), payload, model, version, checkpoint, digest, status, _clip(reason), now),
            )
            return cur.rowcount == 1

    def requeue_delivery(self, delivery_id: str, max_attempts: int) -> bool:
        """A failed delivery with attempts left goes back to ``queued``; True when it did."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE deliveries SET status='queued', reason=NULL, updated_at=? "
                "WHERE id=? AND status='failed' AND attempts < ?",
                (time.time(), delivery_id, max_attempts),
            )
            return cur.rowcount == 1

    def delivery(self, delivery_id: str) -> Delivery | None:
        rows = self._query(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE id=?", (delivery_id,))
        return Delivery(*rows[0]) if rows else None

    def delivery_payload(self, delivery_id: str) -> bytes | None:
        rows = self._query("SELECT payload FROM deliveries WHERE id=?", (delivery_id,))
        return bytes(rows[0][0]) if rows and rows[0][0] is not None else None

    def deliveries(self, status: str | None = None) -> list[Delivery]:
        if status is None:
            rows = self._query(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries ORDER BY received_at, id")
        else:
            rows = self._query(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE status=? ORDER BY received_at, id",
                               (status,))
        return [Delivery(*r) for r in rows]

    def fail_delivery(self, delivery_id: str, reason: str) -> bool:
        """``queued`` → ``failed`` (counts an attempt); True when it did."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE deliveries SET status='failed', reason=?, attempts=attempts+1, updated_at=? "
                "WHERE id=? AND status='queued'",
                (_clip(reason), time.time(), delivery_id),
            )
            return cur.rowcount == 1

    # ----------------------------------------------------------------------- jobs

    def attach_job(self, delivery_id: str, *, digest: str, max_attempts: int) -> Attachment:
        """For a queued delivery whose checkpoint digest is now known: create the job of
        its ``(model, version, digest)``, or find the existing one (re-queued when it
        failed with attempts left), and close the delivery — in one transaction."""
        if not digest:
            raise ValueError(f"digest must be non-empty, got {digest!r}")
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT model, version, checkpoint, origin, status FROM deliveries WHERE id=?", (delivery_id,)
            ).fetchone()
            if row is None:
                raise StateError(f"delivery {delivery_id!r} does not exist")
            model, version, checkpoint, origin, status = row
            if status != "queued":
                raise StateError(f"delivery {delivery_id!r} is {status}, not queued")
            if model is None or version is None or checkpoint is None:
                raise StateError(f"delivery {delivery_id!r} names no model version/checkpoint")
            known = db.execute("SELECT id FROM jobs WHERE model=? AND version=? AND digest=?",
                               (model, version, digest)).fetchone()
            outcome: Literal["created", "requeued", "exists"]
            if known is None:  # the UNIQUE key backs this up; checking first keeps job ids dense
                db.execute(
                    "INSERT INTO jobs (model, version, digest, checkpoint, origin, status, attempts, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
                    (model, version, digest, checkpoint, origin, now, now),
                )
                outcome = "created"
            else:
                requeued = db.execute(
                    "UPDATE jobs SET status='pending', updated_at=? WHERE model=? AND version=? AND digest=? "
                    "AND status='failed' AND attempts < ?",
                    (now, model, version, digest, max_attempts),
                )
                outcome = "requeued" if requeued.rowcount == 1 else "exists"
            job_row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE model=? AND version=? AND digest=?",
                                 (model, version, digest)).fetchone()
            job = Job(*job_row)
            db.execute(
                "UPDATE deliveries SET status=?, digest=?, job_id=?, reason=?, updated_at=? WHERE id=?",
                ("exists" if outcome == "exists" else "done", digest, job.id,
                 f"job {job.id} is {job.status}" if outcome == "exists" else None, now, delivery_id),
            )
        return Attachment(job, outcome)

    def claim_job(self, job_id: int) -> Job | None:
        """``pending`` → ``running`` (counts an attempt); None when the job is not pending."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET status='running', attempts=attempts+1, error=NULL, updated_at=? "
                "WHERE id=? AND status='pending'",
                (time.time(), job_id),
            )
            if cur.rowcount != 1:
                return None
            return Job(*db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone())

    def finish_job(
        self,
        job_id: int,
        status: JobStatus,
        *,
        run_id: str | None = None,
        mlflow_run_id: str | None = None,
        results: str | None = None,
        error: str | None = None,
    ) -> Job:
        """``running`` → ``submitted`` | ``succeeded`` | ``failed``."""
        if status not in FINAL_JOB_STATUSES:
            raise ValueError(f"status must be one of {sorted(FINAL_JOB_STATUSES)}, got {status!r}")
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET status=?, run_id=?, mlflow_run_id=?, results=?, error=?, updated_at=? "
                "WHERE id=? AND status='running'",
                (status, run_id, mlflow_run_id, results, _clip(error), time.time(), job_id),
            )
            if cur.rowcount != 1:
                raise StateError(f"job {job_id} is not running; cannot mark it {status}")
            return Job(*db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone())

    def job(self, job_id: int) -> Job | None:
        rows = self._query(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id=?", (job_id,))
        return Job(*rows[0]) if rows else None

    def jobs(self, status: str | None = None) -> list[Job]:
        if status is None:
            rows = self._query(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY id")
        else:
            rows = self._query(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status=? ORDER BY id", (status,))
        return [Job(*r) for r in rows]

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {"deliveries": {}, "jobs": {}}
        for status, n in self._query("SELECT status, COUNT(*) FROM deliveries GROUP BY status"):
            out["deliveries"][status] = int(n)
        for status, n in self._query("SELECT status, COUNT(*) FROM jobs GROUP BY status"):
            out["jobs"][status] = int(n)
        return out

    # ------------------------------------------------------------------- recovery

    def recover(self, max_attempts: int) -> Recovery:
        """After a restart: ``running`` jobs (their process died) go back to ``pending``,
        or to ``failed`` when out of attempts; returns what is left to do, oldest first."""
        now = time.time()
        with self._tx() as db:
            running = [int(r[0]) for r in db.execute("SELECT id FROM jobs WHERE status='running' ORDER BY id")]
            exhausted = [int(r[0]) for r in db.execute(
                "SELECT id FROM jobs WHERE status='running' AND attempts >= ? ORDER BY id", (max_attempts,))]
            db.execute(
                "UPDATE jobs SET status='failed', error=?, updated_at=? WHERE status='running' AND attempts >= ?",
                (f"interrupted (the trigger process stopped) after {max_attempts} attempt(s)", now, max_attempts),
            )
            db.execute("UPDATE jobs SET status='pending', updated_at=? WHERE status='running'", (now,))
            queued = tuple(str(r[0]) for r in db.execute(
                "SELECT id FROM deliveries WHERE status='queued' ORDER BY received_at, id"))
            pending = tuple(int(r[0]) for r in db.execute("SELECT id FROM jobs WHERE status='pending' ORDER BY id"))
        interrupted = tuple(j for j in running if j not in exhausted)
        if running:
            log.warning("state %s: %d job(s) were running when the last process stopped: %s",
                        self.path, len(running), running)
        return Recovery(queued, pending, interrupted, tuple(exhausted))
