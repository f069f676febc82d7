"""The trigger service over real HTTP on loopback: verification, answers, the worker,
exactly-once jobs, failures, the bounded queue, crash/restart, and a fuzzed endpoint.

The evaluation itself is a recording test double (a :class:`Submitter` passed through the
API); the real submitters are exercised in ``test_e2e_webhook.py`` (local) and below with
a fake KFP client (kfp)."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bpm_lib.config import RunConfig
from bpm_lib.errors import ConfigError, ModelLoadError
from bpm_lib.trigger.service import (
    ServiceError,
    TriggerService,
    load_trigger_config,
    parse_trigger_config,
)
from bpm_lib.trigger.state import TriggerState
from bpm_lib.trigger.submitters import (
    EvaluationRequest,
    KfpSubmitter,
    Submission,
    build_run_config,
    candidate_name,
)
from bpm_lib.trigger.webhooks import DELIVERY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

REPO = Path(__file__).resolve().parents[2]
SECRET = "test-secret-123"


# --------------------------------------------------------------------------- helpers


def config_data(tmp: Path, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "state": str(tmp / "state.db"), "port": 0, "secret_env": "BPM_TEST_WEBHOOK_SECRET", "queue_size": 16,
        "models": ["ip2p"], "submit": {"mode": "local", "root": str(tmp / "root")},
        "campaign": {"name": "trig", "dataset": {"source": "demo", "limit": 2}, "preset": "tiny-random",
                     "tracking": {"experiment": "bpm-trigger-test"}},
        "candidate": {"editor": "ip2p", "settings": {"num_inference_steps": 2}},
    }
    data.update(over)
    return data


def fake_resolver(uri: str) -> SimpleNamespace:
    """Stands in for resolve_checkpoint: a digest per URI, failing for version 99."""
    if uri.endswith("/99"):
        raise ModelLoadError(f"checkpoint {uri!r}: model version not found")
    return SimpleNamespace(digest="sha256:" + hashlib.sha256(uri.encode()).hexdigest())


class RecordingSubmitter:
    """Records requests; can block on a gate or fail chosen versions (once each)."""

    name = "recording"

    def __init__(self, gate: threading.Event | None = None, fail_once: set[str] | None = None) -> None:
        self.requests: list[EvaluationRequest] = []
        self.configs: list[RunConfig] = []
        self.gate = gate
        self.entered = threading.Event()
        self.fail_once = set(fail_once or ())

    def submit(self, request: EvaluationRequest, config: RunConfig) -> Submission:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        if request.version in self.fail_once:
            self.fail_once.discard(request.version)
            raise RuntimeError(f"KFP said no to version {request.version}")
        self.requests.append(request)
        self.configs.append(config)
        return Submission("submitted", f"run-{request.job_id}")


class RecordingTagger:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, str | None]]] = []

    def tag(self, model: str, version: str, tags: Any) -> None:
        self.calls.append((model, version, dict(tags)))

    def latest(self, model: str, version: str) -> dict[str, str | None]:
        merged: dict[str, str | None] = {}
        for m, v, tags in self.calls:
            if (m, v) == (model, version):
                merged.update(tags)
        return {k: v for k, v in merged.items() if v is not None}


def body_for(name: str = "ip2p", version: str = "3", entity: str = "model_version", action: str = "created") -> bytes:
    return json.dumps({"entity": entity, "action": action, "timestamp": "2026-01-01T00:00:00+00:00",
                       "data": {"name": name, "version": version, "source": f"runs:/r{version}/ckpt",
                                "run_id": f"r{version}", "tags": {}, "description": None}}).encode()


def signed(body: bytes, delivery_id: str | None = None, timestamp: int | None = None,
           secret: str = SECRET) -> dict[str, str]:
    delivery_id = delivery_id or str(uuid.uuid4())
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {"Content-Type": "application/json", DELIVERY_ID_HEADER: delivery_id, TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: sign(secret, delivery_id, ts, body)}


def request(url: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else {}
    finally:
        conn.close()


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    return request(url, "POST", "/webhook", body, headers)


def raw_http(url: str, payload: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture()
def make_service(tmp_path: Path) -> Iterator[Any]:
    started: list[TriggerService] = []

    def make(submitter: Any = None, tagger: Any = None, resolver: Any = fake_resolver, tracking_uri: str | None = None,
             **over: Any) -> TriggerService:
        config = parse_trigger_config(config_data(tmp_path, **over))
        svc = TriggerService(config, secret=SECRET, submitter=submitter or RecordingSubmitter(), resolver=resolver,
                             tagger=tagger or RecordingTagger(), tracking_uri=tracking_uri)
        started.append(svc.start())
        return svc

    yield make
    for svc in started:
        svc.stop(timeout=10)


# ------------------------------------------------------------------------- config


def test_config_is_strict_and_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"unknown key queue_sise \(did you mean 'queue_size'"):
        parse_trigger_config(config_data(tmp_path, queue_sise=3))
    with pytest.raises(ConfigError, match=r"campaign\.candidates is not allowed"):
        parse_trigger_config(config_data(tmp_path, campaign={"name": "x", "candidates": []}))
    with pytest.raises(ConfigError, match=r"unknown key dataset\.sourc"):
        parse_trigger_config(config_data(tmp_path, campaign={"name": "x", "dataset": {"sourc": "demo"}}))
    with pytest.raises(ConfigError, match=r"unknown key candidate\.checkpoint"):
        parse_trigger_config(config_data(tmp_path, candidate={"editor": "ip2p", "checkpoint": "x"}))
    with pytest.raises(ConfigError, match="events must be among"):
        parse_trigger_config(config_data(tmp_path, events=["model_version_tag.set"]))
    with pytest.raises(ConfigError, match="kfp_host is required"):
        parse_trigger_config(config_data(tmp_path, submit={"mode": "kfp"}))
    with pytest.raises(ConfigError, match="did you mean 'local'"):
        parse_trigger_config(config_data(tmp_path, submit={"mode": "locl"}))
    with pytest.raises(ConfigError, match="queue_size must be >= 1"):
        parse_trigger_config(config_data(tmp_path, queue_size=0))
    with pytest.raises(ConfigError, match="port"):
        parse_trigger_config(config_data(tmp_path, port=70000))
    with pytest.raises(ConfigError, match="expected an integer"):
        parse_trigger_config(config_data(tmp_path, port="80"))
    # The secret comes from the environment only.
    config = parse_trigger_config(config_data(tmp_path))
    monkeypatch.delenv("BPM_TEST_WEBHOOK_SECRET", raising=False)
    with pytest.raises(ConfigError, match="set the environment variable BPM_TEST_WEBHOOK_SECRET"):
        TriggerService(config, submitter=RecordingSubmitter())
    monkeypatch.setenv("BPM_TEST_WEBHOOK_SECRET", SECRET)
    TriggerService(config, submitter=RecordingSubmitter())  # reads it; nothing started
    # YAML round trip, and the shipped example parses.
    path = tmp_path / "trigger.yaml"
    path.write_text(yaml.safe_dump(config_data(tmp_path)))
    assert load_trigger_config(path) == config
    example = load_trigger_config(REPO / "examples" / "trigger.yaml")
    assert example.candidate.editor == "ip2p" and example.events == ("model_version.created",)
    with pytest.raises(ConfigError, match="not found"):
        load_trigger_config(tmp_path / "missing.yaml")


def test_build_run_config_evaluates_the_new_checkpoint_with_the_template() -> None:
    campaign = {"name": "nightly", "dataset": {"source": "demo", "limit": 3}, "preset": "tiny-random",
                "tracking": {"experiment": "e"}}
    req = EvaluationRequest(7, "ip2p", "12", "models:/ip2p/12", "sha256:ab", "webhook")
    cfg = build_run_config(campaign, {"editor": "ip2p", "settings": {"num_inference_steps": 2}}, req)
    assert cfg.name == "nightly-ip2p-v12" and cfg.pipeline == "checkpoint_eval"
    (cand,) = cfg.candidates
    assert (cand.name, cand.editor, cand.checkpoint, cand.settings) == (
        "ip2p-v12", "ip2p", "models:/ip2p/12", {"num_inference_steps": 2})
    assert (cfg.dataset.limit, cfg.tracking.experiment) == (3, "e")
    # S3 checkpoints have URI-like model names; long names keep a distinguishing hash.
    long_a = candidate_name("s3://bucket/" + "a" * 80, "ckpt-1")
    long_b = candidate_name("s3://bucket/" + "a" * 80 + "b", "ckpt-1")
    assert len(long_a) <= 63 and long_a != long_b
    assert candidate_name("s3://b/ckpts", "step 100") == "s3-b-ckpts-vstep-100"


def test_kfp_submitter_submits_the_checkpoint_eval_pipeline() -> None:
    class FakeKfpClient:
        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        def create_run_from_pipeline_func(self, func: Any, **kwargs: Any) -> Any:
            self.calls.append({"func": func, **kwargs})
            return SimpleNamespace(run_id="kfp-run-42")

    client = FakeKfpClient()
    sub = KfpSubmitter(host="http://kfp.example:8888", namespace="ml", client=client)
    req = EvaluationRequest(1, "ip2p", "4", "models:/ip2p/4", "sha256:cd", "webhook")
    cfg = build_run_config({"name": "t", "tracking": {"uri": "http://mlflow:5000"}}, {"editor": "ip2p"}, req)
    result = sub.submit(req, cfg)
    assert (result.status, result.run_id) == ("submitted", "kfp-run-42")
    assert result.details["url"] == "http://kfp.example:8888/#/runs/details/kfp-run-42"
    (call,) = client.calls
    assert call["func"].name == "bpm-checkpoint-eval"
    candidate = call["arguments"]["candidate"]  # the pipeline takes the CandidateConfig as JSON
    candidate = json.loads(candidate) if isinstance(candidate, str) else candidate
    assert (candidate["checkpoint"], candidate["editor"]) == ("models:/ip2p/4", "ip2p")
    assert call["arguments"]["tracking_uri"] == "http://mlflow:5000" and call["namespace"] == "ml"
    with pytest.raises(ValueError, match="host"):
        KfpSubmitter(host="kfp:8888")


# --------------------------------------------------------------------- the endpoint


def test_signed_delivery_is_evaluated_exactly_once(make_service: Any) -> None:
    sub, tags = RecordingSubmitter(), RecordingTagger()
    svc = make_service(submitter=sub, tagger=tags)
    body = body_for(version="3")
    headers = signed(body, delivery_id="del-1")
    assert post(svc.url, body, headers) == (202, {"status": "accepted", "delivery_id": "del-1"})
    assert svc.wait_idle(20)
    (req,) = sub.requests
    assert (req.model, req.version, req.checkpoint, req.origin) == ("ip2p", "3", "models:/ip2p/3", "webhook")
    assert req.digest == fake_resolver("models:/ip2p/3").digest
    (cfg,) = sub.configs
    assert cfg.candidates[0].checkpoint == "models:/ip2p/3" and cfg.candidates[0].settings == {"num_inference_steps": 2}
    assert tags.latest("ip2p", "3") == {"bpm.trigger.status": "submitted", "bpm.trigger.run_id": f"run-{req.job_id}",
                                         "bpm.trigger.digest": req.digest}
    # The same delivery again (a replay within the skew): no new work.
    assert post(svc.url, body, headers) == (200, {"status": "duplicate", "delivery_id": "del-1",
                                                  "reason": "delivery already done"})
    # A new delivery for the same version (e.g. re-sent by an operator): recorded, nothing runs.
    assert post(svc.url, body, signed(body, delivery_id="del-2"))[0] == 202
    assert svc.wait_idle(20)
    assert len(sub.requests) == 1
    state = svc.state
    assert state is not None
    assert [(d.id, d.status) for d in state.deliveries()] == [("del-1", "done"), ("del-2", "exists")]
    assert [(j.status, j.run_id, j.attempts) for j in state.jobs()] == [("submitted", f"run-{req.job_id}", 1)]
    assert state.delivery_payload("del-1") == body


def test_bad_deliveries_are_rejected_and_not_recorded(make_service: Any) -> None:
    svc = make_service()
    body = body_for()
    now = int(time.time())
    cases = {
        "wrong signature": (body, signed(body, secret="not-the-secret"), 401),
        "tampered body": (body + b" ", signed(body), 401),
        "missing signature": (body, {k: v for k, v in signed(body).items() if k != SIGNATURE_HEADER}, 401),
        "stale (replay)": (body, signed(body, timestamp=now - 301), 401),
        "future": (body, signed(body, timestamp=now + 3600), 401),
        "missing delivery id": (body, {k: v for k, v in signed(body).items() if k != DELIVERY_ID_HEADER}, 400),
        "malformed JSON": (b"{nope", signed(b"{nope"), 400),
        "not an object": (b"[]", signed(b"[]"), 400),
        "bad version": (body_for(version="latest"), signed(body_for(version="latest")), 400),
    }
    for what, (b, h, code) in cases.items():
        status, answer = post(svc.url, b, h)
        assert (status, answer["status"]) == (code, "rejected"), what
    assert request(svc.url, "POST", "/other", body, signed(body))[0] == 404
    assert request(svc.url, "GET", "/webhook")[0] == 404
    too_big = b"x" * (svc.config.max_body_bytes + 1)
    assert post(svc.url, too_big, signed(too_big))[0] == 413
    no_length = raw_http(svc.url, b"POST /webhook HTTP/1.1\r\nHost: x\r\n\r\n")
    assert no_length.startswith(b"HTTP/1.1 411")
    chunked = raw_http(svc.url, b"POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 411")
    short = raw_http(svc.url, b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{}")
    assert short.startswith(b"HTTP/1.1 400")
    assert b"400" in raw_http(svc.url, b"GET /a b c d\r\n\r\n")  # not HTTP at all
    assert svc.state is not None and svc.state.deliveries() == []
    assert request(svc.url, "GET", "/healthz") == (200, {"status": "ok"})


def test_unknown_event_and_unknown_model_are_ignored_and_recorded(make_service: Any) -> None:
    sub = RecordingSubmitter()
    svc = make_service(submitter=sub)
    tag_event = body_for(entity="model_version_tag", action="set")
    status, answer = post(svc.url, tag_event, signed(tag_event, delivery_id="ev-1"))
    assert (status, answer["status"]) == (200, "ignored") and "not watched" in answer["reason"]
    unknown = json.dumps({"entity": "spaceship", "action": "launched", "data": {"x": 1}}).encode()
    assert post(svc.url, unknown, signed(unknown, delivery_id="ev-2"))[1]["status"] == "ignored"
    other_model = body_for(name="someone-elses-model")
    status, answer = post(svc.url, other_model, signed(other_model, delivery_id="ev-3"))
    assert (status, answer["reason"]) == (200, "model 'someone-elses-model' is not watched")
    assert post(svc.url, other_model, signed(other_model, delivery_id="ev-3"))[1]["status"] == "duplicate"
    assert svc.wait_idle(10) and sub.requests == []
    state = svc.state
    assert state is not None
    assert [(d.id, d.event, d.status) for d in state.deliveries()] == [
        ("ev-1", "model_version_tag.set", "ignored"), ("ev-2", "spaceship.launched", "ignored"),
        ("ev-3", "model_version.created", "ignored")]
    assert state.jobs() == []


def test_full_queue_answers_503_and_the_senders_retry_is_accepted(make_service: Any) -> None:
    gate = threading.Event()
    sub = RecordingSubmitter(gate=gate)
    svc = make_service(submitter=sub, queue_size=2)
    bodies = {f"q-{v}": body_for(version=str(v)) for v in (1, 2, 3)}
    assert post(svc.url, bodies["q-1"], signed(bodies["q-1"], "q-1"))[0] == 202
    assert sub.entered.wait(10)  # the worker holds q-1 (blocked in submit)
    assert post(svc.url, bodies["q-2"], signed(bodies["q-2"], "q-2"))[0] == 202
    status, answer = post(svc.url, bodies["q-3"], signed(bodies["q-3"], "q-3"))
    assert (status, answer["status"]) == (503, "full")
    assert svc.state is not None and svc.state.delivery("q-3") is None  # not recorded: a retry is not a duplicate
    ready, checks = svc.readiness()
    assert ready and checks["queued"] == 2
    gate.set()
    assert svc.wait_idle(20)
    assert post(svc.url, bodies["q-3"], signed(bodies["q-3"], "q-3"))[0] == 202  # MLflow retries the same id
    assert svc.wait_idle(20)
    assert sorted(r.version for r in sub.requests) == ["1", "2", "3"]


def test_failures_are_recorded_tagged_and_the_service_continues(make_service: Any) -> None:
    sub, tags = RecordingSubmitter(fail_once={"5"}), RecordingTagger()
    svc = make_service(submitter=sub, tagger=tags)
    for delivery_id, version in (("f-1", "5"), ("f-2", "99"), ("f-3", "6")):
        b = body_for(version=version)
        assert post(svc.url, b, signed(b, delivery_id))[0] == 202
    assert svc.wait_idle(20)
    state = svc.state
    assert state is not None
    # version 5: the submitter failed → job failed, tagged with the error
    (job5,) = [j for j in state.jobs() if j.version == "5"]
    assert (job5.status, job5.attempts) == ("failed", 1) and "KFP said no to version 5" in (job5.error or "")
    assert tags.latest("ip2p", "5")["bpm.trigger.status"] == "failed"
    assert "KFP said no" in tags.latest("ip2p", "5")["bpm.trigger.error"]  # type: ignore[operator]
    # version 99: its checkpoint cannot be resolved → delivery failed, tagged, no job
    d99 = state.delivery("f-2")
    assert d99 is not None and d99.status == "failed" and "model version not found" in (d99.reason or "")
    assert tags.latest("ip2p", "99")["bpm.trigger.status"] == "failed"
    # version 6 was evaluated after both failures
    assert [r.version for r in sub.requests] == ["6"]
    assert svc.readiness()[0]
    # A new delivery naming version 5 retries its failed job (attempts left); it succeeds now.
    b5 = body_for(version="5")
    assert post(svc.url, b5, signed(b5, "f-4"))[0] == 202
    assert svc.wait_idle(20)
    job5 = state.job(job5.id)  # type: ignore[assignment]
    assert job5 is not None and (job5.status, job5.attempts, job5.error) == ("submitted", 2, None)
    assert tags.latest("ip2p", "5") == {"bpm.trigger.status": "submitted", "bpm.trigger.run_id": f"run-{job5.id}",
                                         "bpm.trigger.digest": job5.digest}
    # Re-sending the failed delivery f-2 retries its resolution (still failing: 2 attempts now).
    b99 = body_for(version="99")
    assert post(svc.url, b99, signed(b99, "f-2"))[1]["status"] == "accepted"
    assert svc.wait_idle(20)
    assert state.delivery("f-2").attempts == 2  # type: ignore[union-attr]


def test_healthz_and_readyz(make_service: Any, tmp_path: Path) -> None:
    from tests.fixtures.servers import free_port

    svc = make_service()
    assert request(svc.url, "GET", "/healthz") == (200, {"status": "ok"})
    status, answer = request(svc.url, "GET", "/readyz")
    assert status == 200 and answer["state"] and answer["worker"] and "tracking" not in answer
    dead = f"http://127.0.0.1:{free_port()}"
    other = make_service(tracking_uri=dead, state=str(tmp_path / "other.db"))
    status, answer = request(other.url, "GET", "/readyz")
    assert status == 503 and answer["tracking"] is False and dead in answer["tracking_error"]
    assert other.tracking_uri == dead and os.environ["MLFLOW_TRACKING_URI"] == dead  # exported while running
    other.stop()
    assert os.environ.get("MLFLOW_TRACKING_URI") != dead  # restored
    assert svc.readiness()[0]


def test_an_address_in_use_is_a_clear_error(make_service: Any, tmp_path: Path) -> None:
    first = make_service()
    port = int(first.url.rsplit(":", 1)[1])
    config = parse_trigger_config(config_data(tmp_path, port=port, state=str(tmp_path / "second.db")))
    second = TriggerService(config, secret=SECRET, submitter=RecordingSubmitter(), resolver=fake_resolver)
    with pytest.raises(ServiceError, match=f"cannot listen on 127.0.0.1:{port}"):
        second.start()
    assert not second.worker_alive()
    TriggerState(tmp_path / "second.db").close()  # start() released the state it had opened


# ------------------------------------------------------------------ crash / restart

CRASHING_SERVICE = r"""
import hashlib, json, sys, time, types
from pathlib import Path
from bpm_lib.trigger.service import TriggerService, parse_trigger_config
from bpm_lib.trigger.submitters import Submission

config = parse_trigger_config(json.loads(sys.argv[1]))
log = Path(sys.argv[2])

class SlowSubmitter:
    name = "slow"
    def submit(self, request, config):
        with log.open("a") as f:
            f.write(json.dumps(["start", request.version, request.job_id]) + "\n")
        time.sleep(120)  # killed before this ends
        return Submission("submitted", "never")

def resolver(uri):
    return types.SimpleNamespace(digest="sha256:" + hashlib.sha256(uri.encode()).hexdigest())

svc = TriggerService(config, secret=sys.argv[3], submitter=SlowSubmitter(), resolver=resolver).start()
print(svc.url, flush=True)
time.sleep(600)
"""


def test_accepted_deliveries_survive_a_crash_and_run_exactly_once(tmp_path: Path) -> None:
    data = config_data(tmp_path)
    log = tmp_path / "submits.log"
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_SERVICE, json.dumps(data), str(log), SECRET],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        for v in ("1", "2", "3", "4"):
            b = body_for(version=v)
            assert post(url, b, signed(b, f"crash-{v}"))[0] == 202
        deadline = time.monotonic() + 30
        while not (log.exists() and log.read_text()):
            assert time.monotonic() < deadline, "the worker never started job 1"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no cleanup, no graceful stop
        proc.wait(30)
    assert [json.loads(line)[:2] for line in log.read_text().splitlines()] == [["start", "1"]]
    with TriggerState(data["state"]) as state:  # the dead process's lock is gone
        assert [(j.version, j.status) for j in state.jobs()] == [("1", "running")]
        assert [d.id for d in state.deliveries("queued")] == ["crash-2", "crash-3", "crash-4"]

    sub = RecordingSubmitter()
    svc = TriggerService(parse_trigger_config(data), secret=SECRET, submitter=sub, resolver=fake_resolver,
                         tagger=RecordingTagger())
    svc.start()
    try:
        assert svc.wait_idle(30)
        assert sorted(r.version for r in sub.requests) == ["1", "2", "3", "4"]  # each once
        state = svc.state
        assert state is not None
        assert {j.version: (j.status, j.attempts) for j in state.jobs()} == {
            "1": ("submitted", 2), "2": ("submitted", 1), "3": ("submitted", 1), "4": ("submitted", 1)}
        for v in ("1", "2", "3", "4"):  # MLflow re-sending the deliveries changes nothing
            b = body_for(version=v)
            assert post(svc.url, b, signed(b, f"crash-{v}"))[1]["status"] == "duplicate"
    finally:
        svc.stop()
    again = RecordingSubmitter()
    with TriggerService(parse_trigger_config(data), secret=SECRET, submitter=again, resolver=fake_resolver) as svc2:
        assert svc2.wait_idle(10)
    assert again.requests == []  # a restart with nothing pending submits nothing


def test_graceful_stop_leaves_queued_work_for_the_next_start(make_service: Any, tmp_path: Path) -> None:
    gate = threading.Event()
    sub = RecordingSubmitter(gate=gate)
    svc = make_service(submitter=sub)
    for v in ("1", "2", "3"):
        b = body_for(version=v)
        assert post(svc.url, b, signed(b, f"g-{v}"))[0] == 202
    assert sub.entered.wait(10)
    threading.Timer(0.5, gate.set).start()
    assert svc.stop(timeout=20)  # finishes job 1, leaves g-2, g-3 queued
    assert [r.version for r in sub.requests] == ["1"]
    later = RecordingSubmitter()
    config = parse_trigger_config(config_data(tmp_path))
    with TriggerService(config, secret=SECRET, submitter=later, resolver=fake_resolver) as svc2:
        assert svc2.wait_idle(20)
    assert [r.version for r in later.requests] == ["2", "3"]


# -------------------------------------------------------------------------- fuzzing

HEADER_NAMES = [SIGNATURE_HEADER, DELIVERY_ID_HEADER, TIMESTAMP_HEADER, "Content-Type", "X-Other"]
header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.builds(body_for, name=st.sampled_from(["ip2p", "other"]), version=st.integers(1, 6).map(str)),
    st.binary(max_size=512),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({
        "entity": st.sampled_from(["model_version", "model_version", "model_version_alias", "x", ""]),
        "action": st.sampled_from(["created", "created", "deleted", "set"]),
        "data": st.fixed_dictionaries(
            {"name": st.sampled_from(["ip2p", "ip2p", "other", ""]) | st.integers(),
             "version": st.sampled_from(["1", "2", "3", "0", "x"]) | st.integers(min_value=-2, max_value=4)},
            optional={"source": st.text(max_size=30), "tags": json_values}),
    }, optional={"timestamp": json_values, "workspace": st.text(max_size=10)}).map(lambda v: json.dumps(v).encode()),
)


def test_fuzzed_deliveries_never_get_a_server_error(tmp_path: Path) -> None:
    sub = RecordingSubmitter()
    svc = TriggerService(parse_trigger_config(config_data(tmp_path, queue_size=1000)), secret=SECRET, submitter=sub,
                         resolver=fake_resolver, tagger=RecordingTagger())
    svc.start()

    # derandomize: a fixed seed, so the coverage check below always holds
    @settings(max_examples=150, deadline=None, derandomize=True, database=None)
    @given(body=bodies, headers=st.dictionaries(st.sampled_from(HEADER_NAMES), header_text, max_size=5),
           sign_it=st.booleans(), delivery_id=st.uuids())
    def deliver(body: bytes, headers: dict[str, str], sign_it: bool, delivery_id: uuid.UUID) -> None:
        if sign_it:  # authenticated: exercises the body parser and the intake
            headers = {**headers, **signed(body, str(delivery_id))}
        status, answer = post(svc.url, body, headers)
        assert status in (200, 202, 400, 401), (status, answer)
        assert answer["status"] in ("accepted", "duplicate", "ignored", "rejected")
        if not sign_it and SIGNATURE_HEADER not in headers:
            assert status == 401
        assert request(svc.url, "GET", "/healthz")[0] == 200

    try:
        deliver()
        assert svc.wait_idle(30)
        state = svc.state
        assert state is not None
        keys = [(r.model, r.version, r.digest) for r in sub.requests]
        assert len(keys) == len(set(keys))  # never twice
        assert {(j.model, j.version) for j in state.jobs()} == {(r.model, r.version) for r in sub.requests}
        assert all(j.model == "ip2p" for j in state.jobs())
        # The fuzzer reached every answer: rejected (both kinds), ignored and accepted.
        for answer in ("http_401_rejected", "http_400_rejected", "http_200_ignored", "http_202_accepted"):
            assert svc.stats[answer] > 0, dict(svc.stats)
        assert sub.requests and svc.readiness()[0]
    finally:
        svc.stop()


def test_a_client_that_resets_its_connection_is_a_debug_line(make_service: Any, capfd: pytest.CaptureFixture[str],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A webhook sender that dies mid-request (connection reset) must not print a
    traceback to the service's stderr; the service keeps serving."""
    import struct
    import time as _time

    svc = make_service()
    host, port = svc.url.removeprefix("http://").split(":")
    caplog.set_level(logging.DEBUG, logger="bpm_lib.trigger.service")
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    s.close()
    deadline = _time.monotonic() + 10
    while not any("went away" in r.getMessage() for r in caplog.records) and _time.monotonic() < deadline:
        _time.sleep(0.05)
    assert any("went away" in r.getMessage() for r in caplog.records)
    assert "Exception occurred during processing" not in capfd.readouterr().err
    assert request(svc.url, "GET", "/healthz")[0] == 200
