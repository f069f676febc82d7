"""The trigger service: every new checkpoint is evaluated once, automatically.

Deliveries come from MLflow model-registry webhooks (``POST /webhook``, HMAC-signed, see
:mod:`bpm_lib.trigger.webhooks`) or from pollers (:mod:`bpm_lib.trigger.pollers`); both
go through :meth:`TriggerService.offer` into the same durable inbox
(:mod:`bpm_lib.trigger.state`). One worker thread resolves each delivery's checkpoint to
its content digest, creates the job of ``(model, version, digest)`` exactly once, builds
the campaign from the configured template and hands it to the submitter (``local`` or
``kfp``, :mod:`bpm_lib.trigger.submitters`). Registered model versions are tagged
``bpm.trigger.status`` = submitted | succeeded | failed, ``bpm.trigger.run_id``,
``bpm.trigger.error`` and ``bpm.trigger.digest``.

HTTP answers of ``POST /webhook``:

====  =====================================================================
202   accepted: recorded, queued for the worker
200   ``duplicate`` (delivery id seen before: no new work) or ``ignored``
      (event or model not watched; recorded with the reason)
400   malformed headers, body, or length
401   missing/wrong signature, or timestamp outside ``max_timestamp_skew_s``
413   body larger than ``max_body_bytes``
503   the queue is full (``queue_size``) or the service is stopping: retry
====  =====================================================================

``GET /healthz`` answers 200 while the process serves; ``GET /readyz`` 200 when the
state DB answers, the worker is alive and the tracking server is reachable, else 503.
The HTTP server is the standard library's ``ThreadingHTTPServer`` on 127.0.0.1 by default.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Protocol, cast

from bpm_lib.config import _build
from bpm_lib.errors import BpmError, ConfigError, ModelLoadError
from bpm_lib.trigger.pollers import ORIGIN_REGISTRY, poller_for
from bpm_lib.trigger.state import TriggerState
from bpm_lib.trigger.submitters import (
    SUBMITTERS,
    EvaluationRequest,
    Submitter,
    build_run_config,
    validate_templates,
)
from bpm_lib.trigger.webhooks import (
    EVALUABLE_EVENTS,
    WebhookRejected,
    decide,
    parse_payload,
    verify_delivery,
)

log = logging.getLogger(__name__)

ORIGIN_WEBHOOK = "webhook"
# Origins whose model/version is a registered MLflow model version (so it can be tagged).
REGISTRY_ORIGINS = frozenset({ORIGIN_WEBHOOK, ORIGIN_REGISTRY})

TAG_STATUS = "bpm.trigger.status"
TAG_RUN_ID = "bpm.trigger.run_id"
TAG_ERROR = "bpm.trigger.error"
TAG_DIGEST = "bpm.trigger.digest"
MAX_TAG_CHARS = 1000


class ServiceError(BpmError):
    """The trigger service cannot start (e.g. its address is in use)."""


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SubmitConfig:
    """``mode``: a SUBMITTERS name. ``local``: ``root``, ``in_process``, ``tracking``;
    ``kfp``: ``kfp_host``, ``namespace``. ``max_attempts`` bounds retries of a failed job."""

    mode: str = "local"
    root: str = ".bpm"
    in_process: bool = True
    tracking: bool = True
    kfp_host: str | None = None
    namespace: str | None = None
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.mode not in SUBMITTERS:
            SUBMITTERS.get(self.mode)  # raises with "did you mean"
        if self.mode == "kfp" and not self.kfp_host:
            raise ConfigError("trigger config: submit.kfp_host is required when submit.mode is kfp")
        if self.max_attempts < 1:
            raise ConfigError(f"trigger config: submit.max_attempts must be >= 1, got {self.max_attempts}")

    def submitter_options(self) -> dict[str, Any]:
        if self.mode == "kfp":
            return {"host": self.kfp_host, "namespace": self.namespace}
        if self.mode == "local":
            return {"root": self.root, "in_process": self.in_process, "tracking": self.tracking}
        return {}


@dataclass(frozen=True)
class CandidateTemplate:
    """How a new checkpoint is run: the editor and its settings (``CandidateConfig`` minus
    name and checkpoint)."""

    editor: str = "ip2p"
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    mask_guidance: bool = False


@dataclass(frozen=True)
class PollConfig:
    """A poller run inside ``bpm trigger serve`` (``uri``: ``s3://bucket/prefix`` or
    ``models:/NAME``)."""

    uri: str
    interval_s: float = 60.0
    min_age_s: float = 60.0
    require_file: str | None = None

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            raise ConfigError(f"trigger config: poll.interval_s must be > 0, got {self.interval_s}")
        if self.min_age_s < 0:
            raise ConfigError(f"trigger config: poll.min_age_s must be >= 0, got {self.min_age_s}")


@dataclass(frozen=True)
class TriggerConfig:
    """``bpm trigger`` configuration (YAML, strict keys; see ``examples/trigger.yaml``).

    ``campaign`` is a run config (``bpm run`` format) without ``candidates``: its ``name``
    prefixes each run; ``candidate`` says how the new checkpoint is edited with. The
    webhook secret is read from the environment variable named ``secret_env``, never from
    the file. ``models`` lists the registered models whose webhook events are evaluated
    (empty: every model); other models are answered 200 ``ignored`` and recorded.
    """

    campaign: dict[str, Any]
    candidate: CandidateTemplate = CandidateTemplate()
    host: str = "127.0.0.1"
    port: int = 8787
    state: str = ".bpm/trigger/state.db"
    secret_env: str = "BPM_WEBHOOK_SECRET"
    max_timestamp_skew_s: float = 300.0
    queue_size: int = 64
    max_body_bytes: int = 1 << 20
    events: tuple[str, ...] = ("model_version.created",)
    models: tuple[str, ...] = ()
    submit: SubmitConfig = SubmitConfig()
    tag_model_versions: bool = True
    poll: tuple[PollConfig, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"trigger config: port must be in [0, 65535], got {self.port}")
        if self.queue_size < 1:
            raise ConfigError(f"trigger config: queue_size must be >= 1, got {self.queue_size}")
        if self.max_timestamp_skew_s <= 0:
            raise ConfigError(f"trigger config: max_timestamp_skew_s must be > 0, got {self.max_timestamp_skew_s}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"trigger config: max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if not self.secret_env or not self.secret_env.replace("_", "").isalnum():
            raise ConfigError(f"trigger config: secret_env must name an environment variable, got {self.secret_env!r}")
        bad = sorted(set(self.events) - EVALUABLE_EVENTS)
        if bad or not self.events:
            raise ConfigError(f"trigger config: events must be among {sorted(EVALUABLE_EVENTS)}, got {list(self.events)}")
        validate_templates(self.campaign, self.candidate_dict())

    def candidate_dict(self) -> dict[str, Any]:
        c = self.candidate
        return {"editor": c.editor, "settings": dict(c.settings), "seed": c.seed, "mask_guidance": c.mask_guidance}

    @property
    def tracking_uri(self) -> str | None:
        tracking = self.campaign.get("tracking") or {}
        uri = tracking.get("uri") if isinstance(tracking, Mapping) else None
        return str(uri) if uri else None


def parse_trigger_config(data: Any) -> TriggerConfig:
    """A :class:`TriggerConfig` from parsed YAML; :class:`ConfigError` names the bad key."""
    return cast(TriggerConfig, _build(TriggerConfig, data, ""))


def load_trigger_config(path: str | os.PathLike[str]) -> TriggerConfig:
    from bpm_lib.config import read_yaml_file

    return parse_trigger_config(read_yaml_file(path, "trigger config"))


# ----------------------------------------------------------------------------- tags


class Tagger(Protocol):
    """Writes tags on a registered model version (a value of None deletes the tag)."""

    def tag(self, model: str, version: str, tags: Mapping[str, str | None]) -> None: ...


class MlflowTagger:
    """Tags model versions through ``MlflowClient`` at ``tracking_uri``."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._client: Any = None

    def tag(self, model: str, version: str, tags: Mapping[str, str | None]) -> None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        for key, value in tags.items():
            if value is None:
                try:
                    self._client.delete_model_version_tag(model, version, key)
                except MlflowException:
                    log.debug("tag %s was not set on %s/%s", key, model, version)
            else:
                self._client.set_model_version_tag(model, version, key, value[:MAX_TAG_CHARS])


# ----------------------------------------------------------------------------- intake


@dataclass(frozen=True)
class Offer:
    """The answer to :meth:`TriggerService.offer`."""

    status: Literal["accepted", "duplicate", "ignored", "full", "unavailable"]
    delivery_id: str
    reason: str | None = None


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


Resolver = Callable[[str], Any]
"""checkpoint URI → an object with ``digest`` (:func:`bpm_lib.io.model_uri.resolve_checkpoint`)."""


class TriggerService:
    """Webhook endpoint + pollers + one worker over a :class:`TriggerState`.

    ``submitter``, ``resolver`` and ``tagger`` default to what ``config`` says (the
    registered submitter mode, :func:`~bpm_lib.io.model_uri.resolve_checkpoint` into
    the runner's cache, :class:`MlflowTagger`); pass objects to replace them.
    ``serve_http=False`` runs the worker (and pollers) without the HTTP endpoint, as
    ``bpm trigger poll`` does; then no secret is needed.
    """

    def __init__(
        self,
        config: TriggerConfig,
        *,
        secret: str | None = None,
        submitter: Submitter | None = None,
        resolver: Resolver | None = None,
        tagger: Tagger | None = None,
        tracking_uri: str | None = None,
        serve_http: bool = True,
        port: int | None = None,
    ) -> None:
        self.config = config
        self.serve_http = serve_http
        if serve_http:
            secret = secret if secret is not None else os.environ.get(config.secret_env)
            if not secret:
                raise ConfigError(f"the webhook secret is missing: set the environment variable {config.secret_env}")
        self._secret = secret or ""
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or config.tracking_uri
        self.submitter: Submitter = submitter if submitter is not None else SUBMITTERS.create(
            config.submit.mode, **config.submit.submitter_options())
        self._resolver = resolver
        if tagger is None and config.tag_model_versions and self.tracking_uri:
            tagger = MlflowTagger(self.tracking_uri)
        self.tagger = tagger if config.tag_model_versions else None
        self._port = config.port if port is None else port
        self.state: TriggerState | None = None
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._intake_lock = threading.Lock()
        self._inflight = 0  # queued deliveries not yet processed (bounded by queue_size)
        self._outstanding = 0  # every queued item, deliveries and jobs
        self._idle = threading.Condition()
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self._httpd: _Server | None = None
        self._http_thread: threading.Thread | None = None
        self._pollers: list[threading.Thread] = []
        self._env_restore: tuple[bool, str | None] | None = None

    # ------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the HTTP endpoint is not running (start() with serve_http=True)")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> TriggerService:
        if self.state is not None:
            raise RuntimeError("the trigger service is already started")
        self.state = TriggerState(self.config.state)
        try:
            if self.tracking_uri and os.environ.get("MLFLOW_TRACKING_URI") != self.tracking_uri:
                # models:/ checkpoints resolve against this server, here and in kfp.local subprocesses.
                self._env_restore = ("MLFLOW_TRACKING_URI" in os.environ, os.environ.get("MLFLOW_TRACKING_URI"))
                os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri
            recovery = self.state.recover(self.config.submit.max_attempts)
            for job_id in recovery.failed_interrupted:
                self._tag_job(job_id, "failed")
            with self._intake_lock:
                self._inflight += len(recovery.queued_deliveries)
            for delivery_id in recovery.queued_deliveries:
                self._enqueue("delivery", delivery_id)
            for job_id in recovery.pending_jobs:
                self._enqueue("job", job_id)
            if recovery.queued_deliveries or recovery.pending_jobs:
                log.info("resuming %d queued deliveries and %d pending jobs", len(recovery.queued_deliveries),
                         len(recovery.pending_jobs))
            self._worker = threading.Thread(target=self._work, name="bpm-trigger-worker", daemon=True)
            self._worker.start()
            if self.serve_http:
                try:
                    self._httpd = _Server((self.config.host, self._port), _Handler, self)
                except OSError as e:
                    raise ServiceError(f"cannot listen on {self.config.host}:{self._port}: {e}") from e
                self._http_thread = threading.Thread(target=self._httpd.serve_forever, name="bpm-trigger-http",
                                                     kwargs={"poll_interval": 0.2}, daemon=True)
                self._http_thread.start()
                log.info("bpm trigger listening on %s/webhook", self.url)
            for poll in self.config.poll:
                self.add_poller(poll)
        except BaseException:
            self.stop()
            raise
        return self

    def add_poller(self, poll: PollConfig) -> None:
        """Run a poller in a thread until :meth:`stop`."""
        poller = poller_for(poll.uri, min_age_s=poll.min_age_s, require_file=poll.require_file,
                            tracking_uri=self.tracking_uri)

        def loop() -> None:
            while not self._stopping.is_set():
                try:
                    poller.poll(self)
                except Exception:  # a failed poll cycle is logged and retried next interval
                    log.exception("poll of %s failed", poll.uri)
                self._stopping.wait(poll.interval_s)

        thread = threading.Thread(target=loop, name=f"bpm-trigger-poll-{len(self._pollers)}", daemon=True)
        self._pollers.append(thread)
        thread.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop taking deliveries, let the worker finish its current item (up to
        ``timeout`` s) and close the state; queued work stays queued for the next start.
        False when the worker was still busy after ``timeout`` (the state is then left
        open for it; its job is resumed at the next start)."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._http_thread is not None:
            self._http_thread.join(timeout)
        for t in self._pollers:
            t.join(timeout)
        self._queue.put(("stop", None))
        finished = True
        if self._worker is not None:
            self._worker.join(timeout)
            finished = not self._worker.is_alive()
        if finished and self.state is not None:
            self.state.close()
        elif not finished:
            log.warning("the worker is still busy after %.0fs; its job resumes at the next start", timeout)
        if self._env_restore is not None:
            had, old = self._env_restore
            if had and old is not None:
                os.environ["MLFLOW_TRACKING_URI"] = old
            else:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            self._env_restore = None
        return finished

    def __enter__(self) -> TriggerService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every queued delivery and job is processed; False on timeout or
        when the worker is not running."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._outstanding > 0:
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or not self.worker_alive():
                    return False
                self._idle.wait(1.0 if left is None else min(left, 1.0))
        return True

    def worker_alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def _require_state(self) -> TriggerState:
        if self.state is None:
            raise RuntimeError("the trigger service is not started")
        return self.state

    # ---------------------------------------------------------------- intake

    def _enqueue(self, kind: str, ident: Any) -> None:
        with self._idle:
            self._outstanding += 1
        self._queue.put((kind, ident))

    def offer(
        self,
        delivery_id: str,
        *,
        event: str,
        origin: str,
        payload: bytes,
        model: str,
        version: str,
        checkpoint: str,
        digest: str | None = None,
    ) -> Offer:
        """Record a delivery naming a checkpoint and queue it for the worker.

        ``duplicate``: the id is known (a failed one with attempts left is re-queued
        instead); ``full``: ``queue_size`` deliveries are waiting (nothing recorded, so
        the sender's retry is not a duplicate); ``unavailable``: the service is stopping.
        ``digest``, when the caller knows it, skips resolving the checkpoint.
        """
        state = self._require_state()
        with self._intake_lock:
            if self._stopping.is_set():
                return Offer("unavailable", delivery_id, "the service is stopping")
            existing = state.delivery(delivery_id)
            if existing is not None:
                if existing.status == "failed" and self._inflight < self.config.queue_size and \
                        state.requeue_delivery(delivery_id, self.config.submit.max_attempts):
                    self._inflight += 1
                    self._enqueue("delivery", delivery_id)
                    return Offer("accepted", delivery_id, "retrying a failed delivery")
                return Offer("duplicate", delivery_id, f"delivery already {existing.status}")
            if self._inflight >= self.config.queue_size:
                return Offer("full", delivery_id, f"{self._inflight} deliveries are queued (queue_size)")
            if not state.add_delivery(delivery_id, event=event, origin=origin, payload=payload, model=model,
                                      version=version, checkpoint=checkpoint, digest=digest):
                return Offer("duplicate", delivery_id, "delivery already recorded")
            self._inflight += 1
            self._enqueue("delivery", delivery_id)
        return Offer("accepted", delivery_id)

    def record_ignored(self, delivery_id: str, *, event: str, origin: str, payload: bytes, reason: str) -> Offer:
        """Record a delivery that starts nothing (unwatched event or model)."""
        state = self._require_state()
        if state.add_delivery(delivery_id, event=event, origin=origin, payload=payload, status="ignored",
                              reason=reason):
            return Offer("ignored", delivery_id, reason)
        return Offer("duplicate", delivery_id, "delivery already recorded")

    def handle_webhook(self, headers: Mapping[str, Sequence[str]], body: bytes) -> HttpAnswer:
        """Answer one ``POST /webhook`` (``headers``: lower-cased name → values)."""
        if self._stopping.is_set():
            return self._answer(503, "unavailable", None, "the service is stopping", {"Retry-After": "5"})
        try:
            meta = verify_delivery(self._secret, headers, body, now=time.time(),
                                   max_skew_s=self.config.max_timestamp_skew_s)
            state = self._require_state()
            existing = state.delivery(meta.delivery_id)
            if existing is not None and existing.status != "failed":
                return self._answer(200, "duplicate", meta.delivery_id, f"delivery already {existing.status}")
            payload = parse_payload(body)
            decision = decide(payload, events=self.config.events, models=self.config.models)
        except WebhookRejected as e:
            log.warning("webhook rejected (%d): %s", e.status, e)
            return self._answer(e.status, "rejected", None, str(e))
        if decision.ref is None:
            offer = self.record_ignored(meta.delivery_id, event=decision.event, origin=ORIGIN_WEBHOOK,
                                        payload=body, reason=decision.reason or "ignored")
        else:
            offer = self.offer(meta.delivery_id, event=decision.event, origin=ORIGIN_WEBHOOK, payload=body,
                               model=decision.ref.name, version=decision.ref.version, checkpoint=decision.ref.uri)
        status = {"accepted": 202, "duplicate": 200, "ignored": 200, "full": 503, "unavailable": 503}[offer.status]
        headers_out = {"Retry-After": "5"} if status == 503 else {}
        return self._answer(status, offer.status, offer.delivery_id, offer.reason, headers_out)

    def _answer(self, code: int, status: str, delivery_id: str | None, reason: str | None,
                headers: Mapping[str, str] | None = None) -> HttpAnswer:
        self._count(f"http_{code}_{status}")
        body: dict[str, Any] = {"status": status}
        if delivery_id is not None:
            body["delivery_id"] = delivery_id
        if reason:
            body["reason"] = reason
        return HttpAnswer(code, body, dict(headers or {}))

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, checks): state DB answers, worker alive, tracking server reachable."""
        from bpm_lib.errors import TrackingError
        from bpm_lib.io.tracking import check_reachable

        checks: dict[str, Any] = {
            "state": self.state is not None and self.state.ping(),
            "worker": self.worker_alive(),
            "stopping": self._stopping.is_set(),
        }
        if self.tracking_uri:
            try:
                check_reachable(self.tracking_uri, timeout=3)
                checks["tracking"] = True
            except TrackingError as e:
                checks["tracking"] = False
                checks["tracking_error"] = str(e)
        ready = bool(checks["state"] and checks["worker"] and not checks["stopping"] and checks.get("tracking", True))
        with self._intake_lock:
            checks["queued"] = self._inflight
        return ready, checks

    # ---------------------------------------------------------------- worker

    def _work(self) -> None:
        while True:
            kind, ident = self._queue.get()
            if kind == "stop":
                return
            try:
                if kind == "delivery":
                    self._process_delivery(str(ident))
                else:
                    self._run_job(int(ident))
            except Exception:  # one bad item must not stop the service
                log.exception("trigger worker: %s %s failed unexpectedly", kind, ident)
            finally:
                if kind == "delivery":
                    with self._intake_lock:
                        self._inflight -= 1
                with self._idle:
                    self._outstanding -= 1
                    self._idle.notify_all()
            if self._stopping.is_set():
                return

    def _resolve_digest(self, checkpoint: str) -> str:
        if self._resolver is not None:
            resolved = self._resolver(checkpoint)
        else:
            from bpm_lib.io.model_uri import resolve_checkpoint

            cache = os.environ.get("BPM_CACHE_DIR") or str(Path(self.config.submit.root) / "cache")
            resolved = resolve_checkpoint(checkpoint, cache_dir=cache)
        digest = getattr(resolved, "digest", None)
        if not digest:
            raise ModelLoadError(f"checkpoint {checkpoint!r} has no content digest (a hub id cannot be pinned)")
        return str(digest)

    def _process_delivery(self, delivery_id: str) -> None:
        state = self._require_state()
        d = state.delivery(delivery_id)
        if d is None or d.status != "queued" or d.checkpoint is None:
            return
        digest = d.digest
        if not digest:
            try:
                digest = self._resolve_digest(d.checkpoint)
            except Exception as e:  # any resolution failure is recorded on the delivery
                reason = f"checkpoint {d.checkpoint} cannot be resolved: {type(e).__name__}: {e}"
                log.error("delivery %s: %s", delivery_id, reason)
                state.fail_delivery(delivery_id, reason)
                self._count("deliveries_failed")
                if d.model and d.version:
                    self._tag(d.origin, d.model, d.version, {TAG_STATUS: "failed", TAG_ERROR: reason})
                return
        attachment = state.attach_job(delivery_id, digest=digest, max_attempts=self.config.submit.max_attempts)
        log.info("delivery %s → job %d (%s)", delivery_id, attachment.job.id, attachment.outcome)
        if attachment.runnable:
            self._run_job(attachment.job.id)

    def _run_job(self, job_id: int) -> None:
        state = self._require_state()
        job = state.claim_job(job_id)
        if job is None:
            return
        request = EvaluationRequest(job.id, job.model, job.version, job.checkpoint, job.digest, job.origin)
        self._tag(job.origin, job.model, job.version,
                  {TAG_STATUS: "submitted", TAG_DIGEST: job.digest, TAG_RUN_ID: None, TAG_ERROR: None})
        try:
            config = build_run_config(self.config.campaign, self.config.candidate_dict(), request)
            submission = self.submitter.submit(request, config)
        except Exception as e:  # a failed evaluation is recorded; the service continues
            error = f"{type(e).__name__}: {e}"
            log.error("job %d (%s v%s) failed: %s", job.id, job.model, job.version, error)
            state.finish_job(job.id, "failed", error=error)
            self._count("jobs_failed")
            self._tag(job.origin, job.model, job.version, {TAG_STATUS: "failed", TAG_ERROR: error})
            return
        state.finish_job(job.id, submission.status, run_id=submission.run_id, mlflow_run_id=submission.mlflow_run_id,
                         results=submission.results)
        self._count(f"jobs_{submission.status}")
        log.info("job %d (%s v%s) %s: run %s", job.id, job.model, job.version, submission.status, submission.run_id)
        self._tag(job.origin, job.model, job.version,
                  {TAG_STATUS: submission.status, TAG_RUN_ID: submission.run_id or ""})

    def _tag_job(self, job_id: int, status: str) -> None:
        job = self._require_state().job(job_id)
        if job is not None:
            self._tag(job.origin, job.model, job.version, {TAG_STATUS: status, TAG_ERROR: job.error})

    def _tag(self, origin: str, model: str, version: str, tags: Mapping[str, str | None]) -> None:
        if self.tagger is None or origin not in REGISTRY_ORIGINS:
            return
        try:
            self.tagger.tag(model, version, tags)
        except Exception as e:  # tags are a report; failing to write them must not fail the job
            log.warning("could not tag %s version %s: %s", model, version, e)


# ------------------------------------------------------------------------------ HTTP


DRAIN_LIMIT = 16 << 20  # bytes of a rejected body read and discarded before closing
DRAIN_SECONDS = 2.0  # the most a client may stall while they are


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # bursts of deliveries: do not drop connections at accept()

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 service: TriggerService) -> None:
        self.service = service
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up or stalls (a webhook sender restarted mid-request, a
        keep-alive connection reset) is routine for a service: a debug line, not a
        traceback on stderr (the standard library's default). Anything else is logged
        as an error with its traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("client %s went away: %s", client_address, exc)
            return
        log.error("error while serving %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "bpm-trigger"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 15  # seconds a client may take to send its request

    def log_message(self, format: str, *args: Any) -> None:  # the stdlib's signature
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, answer: HttpAnswer) -> None:
        data = json.dumps(answer.body, sort_keys=True).encode("utf-8")
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in answer.headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _reject(self, code: int, reason: str, *, unread: int = 0) -> None:
        """Answer ``code`` and close the connection. ``unread``: bytes of a request body
        still in flight (e.g. one too large to accept); after the answer they are read
        and discarded, up to :data:`DRAIN_LIMIT` bytes and :data:`DRAIN_SECONDS` ("lingering
        close"): closing a socket with unread data makes the kernel reset it, and a client
        still sending would get a broken pipe instead of the answer."""
        self.close_connection = True  # the body (if any) is not read: do not reuse the connection
        self._send(self.server.service._answer(code, "rejected", None, reason))
        if unread > 0:
            self._discard(min(unread, DRAIN_LIMIT))

    def _discard(self, count: int) -> None:
        try:
            self.wfile.flush()
            self.connection.settimeout(DRAIN_SECONDS)
            while count > 0:
                chunk = self.rfile.read(min(count, 1 << 16))
                if not chunk:
                    return
                count -= len(chunk)
        except (ConnectionError, TimeoutError, OSError) as e:
            log.debug("stopped discarding a rejected body from %s: %s", self.client_address, e)

    def do_GET(self) -> None:  # the stdlib's name
        service = self.server.service
        if self.path == "/healthz":
            self._send(HttpAnswer(200, {"status": "ok"}))
        elif self.path == "/readyz":
            ready, checks = service.readiness()
            self._send(HttpAnswer(200 if ready else 503, {"status": "ready" if ready else "not ready", **checks}))
        else:
            self._reject(404, f"no such path {self.path[:100]!r}")

    def do_POST(self) -> None:  # the stdlib's name
        service = self.server.service
        if self.path != "/webhook":
            self._reject(404, f"no such path {self.path[:100]!r}")
            return
        if self.headers.get("Transfer-Encoding") is not None:
            self._reject(411, "send the body with Content-Length, not Transfer-Encoding")
            return
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) != 1:
            self._reject(411 if not lengths else 400, "exactly one Content-Length header is required")
            return
        text = lengths[0].strip()
        if not text.isdigit() or len(text) > 12:
            self._reject(400, f"Content-Length must be a byte count, got {text[:40]!r}")
            return
        length = int(text)
        if length > service.config.max_body_bytes:
            self._reject(413, f"body of {length} bytes exceeds max_body_bytes={service.config.max_body_bytes}",
                         unread=length)
            return
        body = self.rfile.read(length)
        if len(body) != length:
            self._reject(400, f"body ended after {len(body)} of {length} bytes")
            return
        headers: dict[str, list[str]] = {}
        for key, value in self.headers.items():
            headers.setdefault(key.lower(), []).append(value)
        try:
            answer = service.handle_webhook(headers, body)
        except Exception:  # answer 500 rather than drop the connection
            log.exception("webhook delivery could not be handled")
            self.close_connection = True
            answer = service._answer(500, "error", None, "internal error (see the service log)")
        self._send(answer)
