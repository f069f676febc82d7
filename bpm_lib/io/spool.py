"""Results that could not be logged to MLflow, kept on disk until the server answers again.

When :func:`bpm_lib.runner.campaign.log_results` cannot log a campaign (the server is down,
or fails mid-way, after the bounded retries of :mod:`bpm_lib.io.tracking`), it writes a
spool entry instead of losing the work::

    <spool dir>/<log id>/entry.json    kind, results folder, log_campaign arguments (JSON),
                                       the last error, attempts so far

The spool dir is ``$BPM_SPOOL_DIR``, else ``.bpm/spool``. The results folder itself is
referenced, not copied: it must still exist when the entry is replayed. Arguments hold
no credentials: params pass through :func:`~bpm_lib.io.tracking.safe_params` first and
nothing from the environment is stored; a ``user:password`` in the tracking URI is
replaced by ``***`` (``flush`` then takes the URI from ``--tracking-uri`` or
``$MLFLOW_TRACKING_URI``).

:func:`flush` (``bpm tracking flush``) replays every entry: it first looks for runs
tagged with the entry's log id, so a campaign that did get logged is not logged twice and
the partial runs of an interrupted attempt are deleted before the replay; an entry is
removed once its campaign is logged. Entries are locked while replayed (``flock``), so two
flushes never log the same entry twice.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bpm_lib.errors import BpmError, DataError, TrackingError
from bpm_lib.io.jsonl import write_json_atomic

log = logging.getLogger(__name__)

SPOOL_ENV = "BPM_SPOOL_DIR"
ENTRY_FILE = "entry.json"
LOCK_FILE = ".lock"
KIND_LOG_CAMPAIGN = "log_campaign"
ENTRY_VERSION = 1
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
REDACTED = "***@"  # what redact_uri puts in place of user:password


class SpoolBusy(BpmError):
    """Another process is replaying this spool entry right now."""


def default_spool_dir() -> Path:
    """``$BPM_SPOOL_DIR``, else ``.bpm/spool`` (beside the local MLflow server's folder)."""
    env = os.environ.get(SPOOL_ENV)
    return Path(env) if env else Path(".bpm") / "spool"


def new_log_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class SpoolEntry:
    """One spooled call: ``arguments`` are the JSON form of the call's keyword arguments."""

    id: str
    path: Path
    kind: str
    results_dir: str
    arguments: dict[str, Any]
    error: str
    created: str
    attempts: int = 1
    history: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"version": ENTRY_VERSION, "id": self.id, "kind": self.kind, "results_dir": self.results_dir,
                "arguments": self.arguments, "error": self.error, "created": self.created,
                "attempts": self.attempts, "history": list(self.history)}


def _check_id(entry_id: str) -> str:
    if not isinstance(entry_id, str) or not _ID.match(entry_id):
        raise ValueError(f"entry_id must be 1-64 letters, digits, '-' or '_', got {entry_id!r}")
    return entry_id


def write_entry(kind: str, arguments: Mapping[str, Any], *, results_dir: str | os.PathLike[str], error: str,
                entry_id: str | None = None, spool_dir: str | os.PathLike[str] | None = None) -> SpoolEntry:
    """Spool one call: ``<spool dir>/<id>/entry.json``, written atomically (a crash leaves
    either no entry or a complete one). ``arguments`` must be JSON-serialisable."""
    if kind != KIND_LOG_CAMPAIGN:
        raise ValueError(f"kind must be {KIND_LOG_CAMPAIGN!r}, got {kind!r}")
    entry_id = _check_id(entry_id or new_log_id())
    root = Path(spool_dir) if spool_dir is not None else default_spool_dir()
    folder = root / entry_id
    entry = SpoolEntry(entry_id, folder.resolve(), kind, str(Path(results_dir).resolve()), json.loads(
        json.dumps(dict(arguments), allow_nan=False)), error,
        datetime.now(timezone.utc).isoformat(timespec="seconds"))
    tmp = root / f".tmp-{entry_id}-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    write_json_atomic(tmp / ENTRY_FILE, entry.to_dict())
    if folder.exists():  # the same attempt spooled again: keep one entry, the latest
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    log.warning("spooled %s for later logging: %s", kind, folder)
    return entry


def read_entry(folder: str | os.PathLike[str]) -> SpoolEntry:
    """The entry in ``folder``; :class:`DataError` naming the file when it is unreadable."""
    path = Path(folder) / ENTRY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"{path}: spool entry not found") from e
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable spool entry: {e}") from e
    try:
        if not isinstance(data, dict) or data.get("version") != ENTRY_VERSION:
            raise ValueError(f"expected a version-{ENTRY_VERSION} entry object")
        if data.get("kind") != KIND_LOG_CAMPAIGN or not isinstance(data.get("arguments"), dict):
            raise ValueError(f"kind must be {KIND_LOG_CAMPAIGN!r} with an arguments object")
        return SpoolEntry(_check_id(data["id"]), Path(folder).resolve(), data["kind"], str(data["results_dir"]),
                          data["arguments"], str(data.get("error", "")), str(data.get("created", "")),
                          int(data.get("attempts", 1)), tuple(str(h) for h in data.get("history", ())))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: malformed spool entry: {e}") from e


def entries(spool_dir: str | os.PathLike[str] | None = None) -> list[SpoolEntry | DataError]:
    """Every entry of the spool, oldest first; an unreadable one is returned as its error."""
    root = Path(spool_dir) if spool_dir is not None else default_spool_dir()
    if not root.is_dir():
        return []
    found: list[SpoolEntry | DataError] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            found.append(read_entry(folder))
        except DataError as e:
            found.append(e)
    return sorted(found, key=lambda e: (e.created, e.id) if isinstance(e, SpoolEntry) else ("", str(e)))


def _record_failure(entry: SpoolEntry, error: str) -> SpoolEntry:
    updated = SpoolEntry(entry.id, entry.path, entry.kind, entry.results_dir, entry.arguments, error,
                         entry.created, entry.attempts + 1, (*entry.history, entry.error)[-10:])
    write_json_atomic(entry.path / ENTRY_FILE, updated.to_dict())
    return updated


@contextmanager
def _locked(entry: SpoolEntry) -> Iterator[None]:
    fd = os.open(entry.path / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise SpoolBusy(f"spool entry {entry.path} is being replayed by another process") from e
        yield
    finally:
        os.close(fd)  # closing releases the lock (also when the process dies)


# --------------------------------------------------------------------------- log_campaign


def campaign_arguments(results_dir: str | os.PathLike[str], *, tracking_uri: str, experiment: str,
                       campaign: str, candidates: Any, dataset: Mapping[str, Any], params: Mapping[str, Any],
                       samples: Mapping[str, Any], edits: Mapping[str, Mapping[str, str]],
                       pipeline_run_id: str | None, pipeline_spec: str | os.PathLike[str] | None,
                       log_id: str) -> dict[str, Any]:
    """The JSON form of :func:`~bpm_lib.io.tracking.log_campaign`'s arguments.

    ``candidates`` are :class:`~bpm_lib.io.tracking.CandidateInfo`, ``samples`` map
    sample ids to :class:`~bpm_lib.types.Sample`. Params are filtered by ``safe_params``
    (a credential never reaches the spool file).
    """
    from bpm_lib.io.tracking import safe_params

    return {
        "results_dir": str(Path(results_dir).resolve()),
        "tracking_uri": tracking_uri,
        "experiment": experiment,
        "campaign": campaign,
        "candidates": [asdict(c) for c in candidates],
        "dataset": {str(k): (None if v is None else str(v)) for k, v in dataset.items()},
        "params": safe_params(params),
        "samples": {sid: s.to_dict() for sid, s in samples.items()},
        "edits": {c: dict(e) for c, e in edits.items()},
        "pipeline_run_id": pipeline_run_id,
        "pipeline_spec": str(pipeline_spec) if pipeline_spec is not None else None,
        "log_id": _check_id(log_id),
    }


def _call_log_campaign(args: Mapping[str, Any], tracking_uri: str | None) -> Any:
    from bpm_lib.io.tracking import LOG_ID_TAG, CandidateInfo, log_campaign
    from bpm_lib.types import Sample

    results_dir = Path(args["results_dir"])
    if not (results_dir / "summary.json").is_file():
        raise DataError(f"spooled results folder {results_dir} is gone (no summary.json): cannot replay")
    return log_campaign(
        results_dir,
        tracking_uri=tracking_uri or args["tracking_uri"],
        experiment=args["experiment"],
        campaign=args["campaign"],
        candidates=[CandidateInfo(**c) for c in args["candidates"]],
        dataset=args["dataset"],
        params=args["params"],
        samples={sid: Sample.from_dict(s) for sid, s in args["samples"].items()},
        edits=args["edits"],
        pipeline_run_id=args["pipeline_run_id"],
        pipeline_spec=Path(args["pipeline_spec"]) if args.get("pipeline_spec") else None,
        extra_tags={LOG_ID_TAG: args["log_id"]},
    )


def log_campaign_or_spool(arguments: Mapping[str, Any], *, spool_dir: str | os.PathLike[str] | None = None) -> Any:
    """Log a campaign (``arguments`` from :func:`campaign_arguments`); if MLflow cannot take
    it, spool it and raise :class:`TrackingError` naming the spool entry."""
    from bpm_lib.io.tracking import redact_uri

    try:
        return _call_log_campaign(arguments, None)
    except TrackingError as e:
        # A user:password in the tracking URI is not written to disk (flush asks for the URI).
        stored = {**arguments, "tracking_uri": redact_uri(str(arguments["tracking_uri"]))}
        entry = write_entry(KIND_LOG_CAMPAIGN, stored, results_dir=arguments["results_dir"], error=str(e),
                            entry_id=arguments["log_id"], spool_dir=spool_dir)
        raise TrackingError(
            f"{e}. Nothing is lost: the results ({entry.results_dir}) are spooled at {entry.path}; "
            "run `bpm tracking flush` when the server is back"
        ) from e


@dataclass
class FlushOutcome:
    """What :func:`flush` did with one entry: ``logged``, ``already_logged``, ``failed`` or ``busy``."""

    entry: str
    status: str
    parent_run_id: str | None = None
    child_run_ids: dict[str, str] = field(default_factory=dict)
    deleted_partial_runs: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _replay(entry: SpoolEntry, tracking_uri: str | None) -> FlushOutcome:
    from bpm_lib.io.tracking import (
        call_with_retries,
        check_reachable,
        delete_runs,
        find_campaign_runs,
    )

    args = entry.arguments
    uri = tracking_uri or _env_uri_for(args["tracking_uri"]) or args["tracking_uri"]
    if REDACTED in uri:
        raise DataError(f"spool entry {entry.id}: its tracking URI {uri} held credentials, which are not stored; "
                        "pass --tracking-uri (or set MLFLOW_TRACKING_URI) to replay it")
    # fail fast (bounded, no MLflow-internal retries) while the server is still down
    call_with_retries(lambda: check_reachable(uri), "health check", uri=uri)
    finished, partial = find_campaign_runs(uri, args["experiment"], args["log_id"])
    if partial:
        delete_runs(uri, partial)
        log.info("%s: deleted %d run(s) of an interrupted attempt", entry.id, len(partial))
    if finished is not None:
        return FlushOutcome(entry.id, "already_logged", finished, deleted_partial_runs=partial)
    runs = _call_log_campaign(args, uri)
    _write_mlflow_json(Path(args["results_dir"]), uri, runs)
    return FlushOutcome(entry.id, "logged", runs.parent_run_id, dict(runs.child_run_ids),
                        deleted_partial_runs=partial)


def _env_uri_for(stored: str) -> str | None:
    """``$MLFLOW_TRACKING_URI`` when it is the stored URI with its credentials."""
    from bpm_lib.io.tracking import redact_uri

    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env and REDACTED in stored and redact_uri(env) == stored else None


def _write_mlflow_json(results_dir: Path, uri: str, runs: Any) -> None:
    from bpm_lib.io.tracking import redact_uri

    write_json_atomic(results_dir / "mlflow.json", {
        "tracking_uri": redact_uri(uri), "parent_run_id": runs.parent_run_id,
        "child_run_ids": dict(runs.child_run_ids), "experiment_id": runs.experiment_id})


def flush(spool_dir: str | os.PathLike[str] | None = None, *, tracking_uri: str | None = None) -> list[FlushOutcome]:
    """Replay every spool entry (oldest first); ``tracking_uri`` overrides the entries' URI.

    A logged (or already logged) entry is removed; a failed one stays, with its attempt
    count and error updated. Returns one :class:`FlushOutcome` per entry.
    """
    outcomes: list[FlushOutcome] = []
    for item in entries(spool_dir):
        if isinstance(item, DataError):
            outcomes.append(FlushOutcome(str(item).split(":", 1)[0], "failed", error=str(item)))
            continue
        try:
            with _locked(item):
                try:
                    outcome = _replay(item, tracking_uri)
                except (TrackingError, DataError) as e:
                    _record_failure(item, str(e))
                    outcomes.append(FlushOutcome(item.id, "failed", error=str(e)))
                    continue
                shutil.rmtree(item.path, ignore_errors=True)  # under the lock: never replayed twice
            outcomes.append(outcome)
        except SpoolBusy as e:
            outcomes.append(FlushOutcome(item.id, "busy", error=str(e)))
        except FileNotFoundError:
            # Another flush finished this entry and removed it while we listed the spool.
            outcomes.append(FlushOutcome(item.id, "already_logged"))
    return outcomes


def wait_seconds_since(entry: SpoolEntry) -> float:
    """How long ago the entry was spooled (for listings)."""
    try:
        created = datetime.fromisoformat(entry.created)
    except ValueError:
        return 0.0
    return max(0.0, time.time() - created.timestamp())
