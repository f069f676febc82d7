"""MLflow: where results land (DESIGN.md "MLflow").

* :func:`resolve_tracking_uri` — ``MLFLOW_TRACKING_URI`` when set (the MLflow
  convention), else the config's URI, else a local server started (or reused) on
  127.0.0.1 with SQLite and a local artifact folder under ``./.bpm/``.
* :func:`check_reachable` fails fast, naming the URI.
* :func:`log_campaign` — one parent run per pipeline run (the campaign), one child run
  per candidate: params, metrics (overall and per edit type), the per-sample table with
  images, the HTML report, plots, the dataset (``log_inputs``) and the calibration JSON;
  the parent also holds a comparison table and chart of all candidates. Registered model
  versions that were evaluated get tags with their latest BPM result.
* Every client call of :func:`log_campaign` goes through :class:`RetryingClient`: a bounded
  number of attempts (``BPM_TRACKING_MAX_ATTEMPTS``, default 4) with exponential backoff on
  connection errors, timeouts, 5xx and 429 answers; a 4xx answer is not retried. Whatever
  still fails becomes a :class:`~bpm_lib.errors.TrackingError` naming the call, which
  :func:`bpm_lib.runner.campaign.log_results` turns into a spool entry
  (:mod:`bpm_lib.io.spool`) replayed by ``bpm tracking flush``. MLflow's own HTTP retries
  (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_TIMEOUT``) run inside each attempt.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bpm_lib.envvars import env_int
from bpm_lib.errors import TrackingError

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path(".bpm")
SECRET_PATTERN = re.compile(r"(key|secret|token|password|credential)", re.IGNORECASE)
LOG_ID_TAG = "bpm.log_id"  # one id per log_campaign attempt chain: spool replays find partial runs by it
DEFAULT_MAX_ATTEMPTS = 4
RETRY_BASE_SECONDS = 0.5  # backoff before retry n is RETRY_BASE_SECONDS * 2**(n-1), capped
RETRY_MAX_SECONDS = 8.0


_URL_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]+@")


def redact_text(text: str) -> str:
    """``text`` with the user:password of every URL in it replaced (error messages of
    MLflow and requests quote the URL they called)."""
    return _URL_CREDENTIALS.sub(r"\1***@", text)


def redact_uri(uri: str) -> str:
    """``uri`` without user:password (a tracking URI may carry basic-auth credentials)."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, "***@" + host, parts.path, parts.query, parts.fragment))


# ------------------------------------------------------------------ the server


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingError` naming ``uri`` unless its MLflow server answers."""
    if not uri.startswith(("http://", "https://")):
        return  # file:/sqlite: stores need no server
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            if resp.status == 200:
                return
            raise TrackingError(f"MLflow server {redact_uri(uri)} answered {resp.status} on /health")
    except urllib.error.HTTPError as e:
        raise TrackingError(f"MLflow server {redact_uri(uri)} answered {e.code} on /health") from e
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise TrackingError(f"MLflow server {redact_uri(uri)} is unreachable: {redact_text(str(e))}") from e


@dataclass(frozen=True)
class LocalServer:
    url: str
    pid: int
    root: Path
    started: bool


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (OSError, ValueError, OverflowError):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: trust kill(pid, 0)


def ensure_local_server(root: Path = DEFAULT_ROOT, port: int | None = None, timeout: float = 120.0) -> LocalServer:
    """Start (or reuse) an MLflow server on 127.0.0.1 with SQLite under ``root/mlflow``.

    The server runs detached so it outlives the command; its address and pid are kept
    in ``root/mlflow/server.json`` and reused while it answers.
    """
    base = (Path(root) / "mlflow").resolve()
    base.mkdir(parents=True, exist_ok=True)
    state = base / "server.json"
    if state.exists():
        try:
            info = json.loads(state.read_text())
            url, pid = str(info["url"]), int(info["pid"])
            # A live server on a busy machine can take more than a moment to answer: wait for
            # it rather than start a second server on the same SQLite store.
            deadline = time.monotonic() + (timeout if _alive(pid) else 0.0)
            while True:
                try:
                    check_reachable(url, timeout=2)
                    return LocalServer(url, pid, base, started=False)
                except TrackingError:
                    if time.monotonic() >= deadline or not _alive(pid):
                        raise
                    time.sleep(0.5)
        except (TrackingError, KeyError, ValueError, TypeError):
            log.info("stale local MLflow server record; starting a new server")
    if port is None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}",
        "--artifacts-destination", str(base / "artifacts"), "--workers", "1",
    ]
    logfile = (base / "server.log").open("ab")
    proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise TrackingError(f"local MLflow server exited with code {proc.returncode}; see {base / 'server.log'}")
        try:
            check_reachable(url, timeout=2)
            break
        except TrackingError:
            if time.monotonic() > deadline:
                proc.kill()
                raise TrackingError(f"local MLflow server at {url} did not start within {timeout}s") from None
            time.sleep(0.3)
    state.write_text(json.dumps({"url": url, "pid": proc.pid}))
    return LocalServer(url, proc.pid, base, started=True)


def resolve_tracking_uri(configured: str | None = None, root: Path = DEFAULT_ROOT) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if configured:
        return configured
    return ensure_local_server(root).url


# ------------------------------------------------------------------- retries


def max_attempts() -> int:
    """``BPM_TRACKING_MAX_ATTEMPTS`` (default 4): attempts per MLflow call, at least 1."""
    return env_int("BPM_TRACKING_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, minimum=1)


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status
    getter = getattr(exc, "get_http_status_code", None)  # MlflowException
    if callable(getter):
        try:
            return int(getter())
        except (TypeError, ValueError):
            return None
    return None


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: no connection, a timeout, a 5xx or 429 answer.

    MLflow reports a connection failure as an ``MlflowException`` with error code
    ``INTERNAL_ERROR`` (HTTP 500), so it counts as transient; a 4xx answer (bad request,
    permission denied, not found) does not.
    """
    if isinstance(exc, TrackingError):
        return True  # raised by check_reachable: the server did not answer
    status = _http_status(exc)
    if status is not None:
        return status >= 500 or status == 429
    import requests

    return isinstance(exc, requests.exceptions.RequestException | ConnectionError | TimeoutError)


def _is_client_failure(exc: BaseException) -> bool:
    """An error that comes from talking to the server (as opposed to a bug or local I/O)."""
    import requests
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException | requests.exceptions.RequestException | ConnectionError | TimeoutError
                      | TrackingError)


def call_with_retries(fn: Callable[[], Any], what: str, *, uri: str = "") -> Any:
    """``fn()`` with bounded retries and exponential backoff on transient failures.

    A failure that remains (attempts exhausted, or a permanent answer such as 403) raises
    :class:`TrackingError` naming ``what``; errors that do not come from the server
    (a missing local file, a bug) propagate unchanged.
    """
    attempts = max_attempts()
    where = f"MLflow {redact_uri(uri)}" if uri else "MLflow"
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:
            if not _is_client_failure(e):
                raise
            text = redact_text(str(e).splitlines()[0])[:300] if str(e) else type(e).__name__
            if is_transient(e) and attempt < attempts:
                delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (attempt - 1))
                log.warning("%s: %s failed (%s: %s); retry %d/%d in %.2fs",
                            where, what, type(e).__name__, text, attempt, attempts - 1, delay)
                time.sleep(delay)
                continue
            tried = f" after {attempt} attempts" if attempt > 1 else ""
            kind = "failed" if is_transient(e) else "was rejected"
            raise TrackingError(f"{where}: {what} {kind}{tried}: {type(e).__name__}: {text}") from e
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


class RetryingClient:
    """An ``MlflowClient`` whose every method call goes through :func:`call_with_retries`."""

    def __init__(self, client: Any, uri: str = "") -> None:
        self._client = client
        self._uri = uri

    @property
    def raw(self) -> Any:
        """The wrapped client (for best-effort calls that must not wait on retries)."""
        return self._client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return call_with_retries(lambda: attr(*args, **kwargs), name, uri=self._uri)

        return call


# ------------------------------------------------------------------- logging


def _metric_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", text).replace(" ", "_")


def _flatten(prefix: str, obj: Any, out: dict[str, str]) -> None:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif obj is not None and not isinstance(obj, (list, tuple)):
        out[prefix] = str(obj)[:500]


def safe_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Flatten and drop anything that looks like a credential: keys never reach MLflow."""
    flat: dict[str, str] = {}
    _flatten("", params, flat)
    return {k[:250]: v for k, v in flat.items() if not SECRET_PATTERN.search(k.rsplit(".", 1)[-1])}


@dataclass
class CandidateInfo:
    name: str
    checkpoint: str | None = None
    checkpoint_digest: str | None = None
    model_name: str | None = None
    model_version: str | None = None


@dataclass
class CampaignRuns:
    parent_run_id: str
    child_run_ids: dict[str, str] = field(default_factory=dict)
    experiment_id: str | None = None
    tracking_uri: str | None = None


def _summary_metrics(summary: Mapping[str, Any], seconds: float | None) -> dict[str, float]:
    m: dict[str, float] = {}
    for key, value in (summary.get("means") or {}).items():
        if value is not None:
            m[f"{key}/mean"] = float(value)
    for etype, means in (summary.get("means_by_edit_type") or {}).items():
        for key, value in (means or {}).items():
            if value is not None:
                m[f"{key}/mean/{_metric_name(etype)}"] = float(value)
    m["samples/total"] = float(summary.get("samples_total", 0))
    m["samples/scored"] = float(summary.get("samples_scored", 0))
    m["samples/failed"] = float(summary.get("samples_failed", 0))
    for case, n in (summary.get("cases") or {}).items():
        m[f"cases/{_metric_name(case)}"] = float(n)
    if seconds:
        m["throughput/samples_per_s"] = float(summary.get("samples_total", 0)) / seconds
    return m


def _sample_table(scores: Sequence[Mapping[str, Any]], samples: Mapping[str, Any],
                  edits: Mapping[str, str]) -> dict[str, list[Any]]:
    from PIL import Image

    from bpm_lib.io.images import load_rgb
    from bpm_lib.report import thumbnail

    def thumb(path: str | None) -> Any:
        if not path:
            return None
        try:
            return thumbnail(load_rgb(path), 128)
        except Exception:
            return None

    cols: dict[str, list[Any]] = {k: [] for k in (
        "sample_id", "instruction", "edit_type", "case", "status", "error", "bpm", "s_modify", "s_preserve",
        "s_region", "s_size", "s_position", "source", "edited")}
    for s in scores:
        sample = samples.get(s["sample_id"])
        for key in ("sample_id", "edit_type", "case", "status", "error", "bpm", "s_modify", "s_preserve",
                    "s_region", "s_size", "s_position"):
            cols[key].append(s.get(key))
        cols["instruction"].append(getattr(sample, "instruction", None))
        src, ed = thumb(getattr(sample, "source_image", None)), thumb(edits.get(s["sample_id"]))
        cols["source"].append(src if isinstance(src, Image.Image) else None)
        cols["edited"].append(ed if isinstance(ed, Image.Image) else None)
    # MLflow refuses a column mixing images and non-images: a missing image (a failed
    # sample) becomes a small grey placeholder; a column without any image is dropped.
    for key in ("source", "edited"):
        if all(v is None for v in cols[key]):
            cols.pop(key)
        else:
            cols[key] = [v if v is not None else Image.new("RGB", (32, 32), (200, 200, 200)) for v in cols[key]]
    return cols


def log_campaign(
    results_dir: Path,
    *,
    tracking_uri: str,
    experiment: str,
    campaign: str,
    candidates: Sequence[CandidateInfo],
    dataset: Mapping[str, Any],
    params: Mapping[str, Any],
    samples: Mapping[str, Any],
    edits: Mapping[str, Mapping[str, str]],
    pipeline_run_id: str | None = None,
    pipeline_spec: Path | None = None,
    tag_model_versions: bool = True,
    extra_tags: Mapping[str, str] | None = None,
) -> CampaignRuns:
    """Log a finished aggregation (``results_dir`` from the aggregate step) to MLflow.

    ``extra_tags`` go on the parent and every child run (``bpm.log_id`` lets a spool replay
    find the runs of an earlier, interrupted attempt). A call that still fails after its
    retries raises :class:`TrackingError`; the runs created so far are marked FAILED when
    the server still answers.
    """
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource  # type: ignore[attr-defined]
    from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag

    results_dir = Path(results_dir)
    summary = json.loads((results_dir / "summary.json").read_text())
    scores = [json.loads(line) for line in (results_dir / "scores.jsonl").read_text().splitlines() if line]
    call_with_retries(lambda: check_reachable(tracking_uri), "health check", uri=tracking_uri)
    client = RetryingClient(MlflowClient(tracking_uri=tracking_uri), tracking_uri)
    run_tags = {str(k): str(v) for k, v in (extra_tags or {}).items()}
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    calibration = summary.get("calibration") or {}
    cal_id = calibration.get("id") or "none"
    now = int(time.time() * 1000)
    source = LocalArtifactDatasetSource(str(dataset.get("uri", "")))
    ds = MetaDataset(source, name=str(dataset.get("name", "dataset")),  # type: ignore[abstract]
                     digest=str(dataset.get("digest", ""))[:36] or None)
    ds_input = DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "evaluation")])

    parent_tags = {**run_tags, "bpm.kind": "campaign", "bpm.campaign": campaign, "mlflow.runName": campaign}
    if pipeline_run_id:
        parent_tags["bpm.pipeline_run_id"] = pipeline_run_id
    parent = client.create_run(exp_id, run_name=campaign, tags=parent_tags)
    pid = parent.info.run_id
    runs = CampaignRuns(pid, experiment_id=exp_id, tracking_uri=tracking_uri)
    try:
        base_params = {**params, "calibration_id": cal_id, "dataset": dataset.get("name"),
                       "dataset_digest": dataset.get("digest"), "pipeline_run_id": pipeline_run_id}
        client.log_batch(pid, params=[Param(k, v) for k, v in safe_params(base_params).items()])
        client.log_inputs(pid, datasets=[ds_input])
        comparison: dict[str, list[Any]] = {"candidate": [], "checkpoint": [], "bpm": [], "s_modify": [],
                                            "s_preserve": [], "s_region": [], "scored": [], "failed": []}
        for cand in candidates:
            csum = summary["candidates"].get(cand.name)
            if csum is None:
                continue
            child = client.create_run(exp_id, run_name=cand.name, tags={
                **run_tags, "mlflow.parentRunId": pid, "bpm.kind": "candidate", "bpm.candidate": cand.name,
                "bpm.campaign": campaign, **({"bpm.pipeline_run_id": pipeline_run_id} if pipeline_run_id else {}),
            })
            cid = child.info.run_id
            runs.child_run_ids[cand.name] = cid
            cparams = {**base_params, "candidate": cand.name, "checkpoint_uri": cand.checkpoint,
                       "checkpoint_digest": cand.checkpoint_digest, "model_name": cand.model_name,
                       "model_version": cand.model_version, "preset": csum.get("preset"),
                       "alpha": csum.get("alpha"), "backends": csum.get("backends")}
            metrics = _summary_metrics(csum, csum.get("seconds"))
            client.log_batch(cid, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                             params=[Param(k, v) for k, v in safe_params(cparams).items()],
                             tags=[RunTag("bpm.calibration_id", cal_id),
                                   RunTag("bpm.meaningless", str(bool(csum.get("meaningless"))).lower())])
            client.log_inputs(cid, datasets=[ds_input])
            cand_scores = [s for s in scores if s["candidate"] == cand.name]
            client.log_table(cid, data=pd.DataFrame(_sample_table(cand_scores, samples, edits.get(cand.name, {}))),
                             artifact_file="samples/table.json")
            client.log_artifact(cid, str(results_dir / "report.html"))
            if (results_dir / "calibration.json").exists():
                client.log_artifact(cid, str(results_dir / "calibration.json"))
            client.set_terminated(cid, "FINISHED")
            for key, col in (("candidate", cand.name), ("checkpoint", cand.checkpoint),
                             ("scored", csum.get("samples_scored")), ("failed", csum.get("samples_failed"))):
                comparison[key].append(col)
            for key in ("bpm", "s_modify", "s_preserve", "s_region"):
                comparison[key].append((csum.get("means") or {}).get(key))
            if tag_model_versions and cand.model_name and cand.model_version:
                tag_model_version(client, cand.model_name, cand.model_version, csum, cid, cal_id)
        client.log_table(pid, data=pd.DataFrame(comparison), artifact_file="comparison/candidates.json")
        for name in ("report.html", "summary.json", "scores.jsonl", "calibration.json"):
            if (results_dir / name).exists():
                client.log_artifact(pid, str(results_dir / name))
        if (results_dir / "plots").is_dir():
            client.log_artifacts(pid, str(results_dir / "plots"), artifact_path="plots")
        if pipeline_spec is not None and Path(pipeline_spec).exists():
            client.log_artifact(pid, str(pipeline_spec), artifact_path="pipeline")
        best = max((c for c in comparison["bpm"] if c is not None), default=None)
        if best is not None:
            client.log_metric(pid, "bpm/best_mean", float(best), now, 0)
        client.set_terminated(pid, "FINISHED")
    except Exception:
        _mark_failed(client.raw, tracking_uri, [pid, *runs.child_run_ids.values()])
        raise
    return runs


def _mark_failed(client: Any, tracking_uri: str, run_ids: Sequence[str]) -> None:
    """Best effort, without our retries, and skipped when the server is down (the reason we
    are here, often): MLflow's own retries would otherwise wait minutes per run."""
    try:
        check_reachable(tracking_uri, timeout=2.0)
    except TrackingError:
        log.debug("not marking runs %s failed: the server does not answer", list(run_ids))
        return
    for run_id in run_ids:
        try:
            client.set_terminated(run_id, "FAILED")
        except Exception:
            log.debug("could not mark run %s failed", run_id)


def find_campaign_runs(tracking_uri: str, experiment: str, log_id: str) -> tuple[str | None, list[str]]:
    """Runs tagged ``bpm.log_id = log_id``: (the FINISHED campaign parent run or None,
    ids of every other active run with that tag, i.e. leftovers of interrupted attempts)."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    if not re.fullmatch(r"[A-Za-z0-9_-]+", log_id):
        raise ValueError(f"log_id must be alphanumeric, got {log_id!r}")
    client = RetryingClient(MlflowClient(tracking_uri=tracking_uri), tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None, []
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{LOG_ID_TAG}` = '{log_id}'",
                              run_view_type=ViewType.ACTIVE_ONLY, max_results=1000)
    finished = [r.info.run_id for r in runs
                if r.data.tags.get("bpm.kind") == "campaign" and r.info.status == "FINISHED"]
    parent = finished[0] if finished else None
    others = [r.info.run_id for r in runs if r.info.run_id != parent]
    if parent is not None:  # the children of a finished campaign are part of it
        others = [rid for rid in others if not _child_of(runs, rid, parent)]
    return parent, others


def _child_of(runs: Sequence[Any], run_id: str, parent: str) -> bool:
    return any(r.info.run_id == run_id and r.data.tags.get("mlflow.parentRunId") == parent for r in runs)


def delete_runs(tracking_uri: str, run_ids: Sequence[str]) -> None:
    """Soft-delete runs (MLflow keeps them restorable); used to drop partial attempts."""
    from mlflow import MlflowClient

    client = RetryingClient(MlflowClient(tracking_uri=tracking_uri), tracking_uri)
    for run_id in run_ids:
        client.delete_run(run_id)


def tag_model_version(client: Any, name: str, version: str, summary: Mapping[str, Any], run_id: str,
                      calibration_id: str) -> None:
    """Tag a registered model version with its latest BPM result."""
    means = summary.get("means") or {}
    tags = {
        "bpm.bpm_mean": means.get("bpm"),
        "bpm.s_modify_mean": means.get("s_modify"),
        "bpm.s_preserve_mean": means.get("s_preserve"),
        "bpm.samples_scored": summary.get("samples_scored"),
        "bpm.samples_failed": summary.get("samples_failed"),
        "bpm.run_id": run_id,
        "bpm.calibration_id": calibration_id,
        "bpm.date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for key, value in tags.items():
        if value is not None:
            client.set_model_version_tag(name, str(version), key, str(value))
