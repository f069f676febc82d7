"""End to end: a real MLflow server delivers ``model_version.created`` over HTTP to
``bpm trigger serve`` (a real process), which evaluates the new InstructPix2Pix checkpoint
on the demo set in-process and reports back to MLflow.

* registering a tiny random InstructPix2Pix checkpoint → one evaluation: its MLflow
  campaign run exists, and the model version carries the ``bpm.trigger.*`` tags;
* the same delivery again, and a new delivery for the same version → nothing new runs;
* a version whose checkpoint cannot be loaded → a failed job, tagged with the error, and
  the service stays ready.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bpm_lib.cli import main
from bpm_lib.io.model_uri import checkpoint_digest
from bpm_lib.trigger.state import Job, TriggerState
from bpm_lib.trigger.webhooks import DELIVERY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.fixtures.servers import MlflowServer, free_port, mlflow_server, wait_http

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SECRET_ENV = "BPM_E2E_WEBHOOK_SECRET"
JOB_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def webhook_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """An MLflow server of its own: a fixed key for stored webhook secrets, and no webhook
    list cached from other tests' registry events."""
    from cryptography.fernet import Fernet

    env = {"MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    with mlflow_server(tmp_path_factory.mktemp("mlflow-webhooks"), extra_env=env) as server:
        yield server


def _http(url: str, method: str = "GET", body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _wait_job(state_path: Path, model: str, version: str, proc: subprocess.Popen[Any], log: Path) -> Job:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"bpm trigger serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if state_path.exists():
            with TriggerState(state_path, lock=False) as state:
                jobs = [j for j in state.jobs() if (j.model, j.version) == (model, version)]
            if jobs and jobs[0].status in ("succeeded", "failed", "submitted"):
                return jobs[0]
        time.sleep(1)
    raise AssertionError(f"no finished job for {model} v{version} after {JOB_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")


def test_mlflow_webhook_evaluates_a_new_checkpoint_once(webhook_mlflow: MlflowServer, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    from tests.fixtures.tiny_ip2p import save_tiny_ip2p

    secret = uuid.uuid4().hex
    url = webhook_mlflow.url
    monkeypatch.setenv(SECRET_ENV, secret)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("BPM_CACHE_DIR", str(tmp_path / "cache"))
    model = f"ip2p-e2e-{uuid.uuid4().hex[:6]}"
    port = free_port()
    state_path = tmp_path / "trigger" / "state.db"
    config = {
        "host": "127.0.0.1", "port": port, "state": str(state_path), "secret_env": SECRET_ENV,
        "models": [model], "events": ["model_version.created"],
        "submit": {"mode": "local", "in_process": True, "root": str(tmp_path / "root")},
        "campaign": {"name": "e2e", "dataset": {"source": "demo", "limit": 3}, "preset": "tiny-random",
                     "tracking": {"uri": url, "experiment": "bpm-trigger-e2e"}},
        "candidate": {"editor": "ip2p", "settings": {"num_inference_steps": 2, "max_side": 64}},
    }
    config_path = tmp_path / "trigger.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = tmp_path / "serve.log"
    with log.open("wb") as log_fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from bpm_lib.cli import main; sys.exit(main(sys.argv[1:]))",
             "-v", "trigger", "serve", "--config", str(config_path)],
            cwd=REPO, env=dict(os.environ), stdout=log_fh, stderr=subprocess.STDOUT)
    service = f"http://127.0.0.1:{port}"
    try:
        wait_http(service + "/healthz", timeout=60, proc=proc)
        assert _http(service + "/readyz")[0] == 200

        assert main(["trigger", "register-webhook", "--tracking-uri", url, "--url", service + "/webhook",
                     "--secret-env", SECRET_ENV, "--name", "bpm-e2e"]) == 0
        hook = json.loads(capsys.readouterr().out)
        assert hook["events"] == ["model_version.created"] and hook["url"] == service + "/webhook"

        client = MlflowClient(tracking_uri=url)
        ckpt = save_tiny_ip2p(tmp_path / "tiny-ip2p")
        exp_id = client.create_experiment("checkpoints")
        run = client.create_run(exp_id)
        client.log_artifacts(run.info.run_id, str(ckpt), artifact_path="checkpoint")
        client.create_registered_model(model)
        t0 = time.perf_counter()
        mv = client.create_model_version(model, source=f"runs:/{run.info.run_id}/checkpoint", run_id=run.info.run_id)
        job = _wait_job(state_path, model, str(mv.version), proc, log)
        e2e_s = time.perf_counter() - t0
        print(f"\ne2e: model version created → evaluation logged in {e2e_s:.1f} s")
        assert job.status == "succeeded", f"{job.error}\n{log.read_text()[-4000:]}"
        assert job.digest == checkpoint_digest(ckpt) and job.attempts == 1 and job.origin == "webhook"

        # The campaign's MLflow runs: the parent (job.run_id) and the candidate's child run.
        parent = client.get_run(str(job.run_id))
        assert parent.info.status == "FINISHED" and parent.data.tags["bpm.kind"] == "campaign"
        experiment = client.get_experiment_by_name("bpm-trigger-e2e")
        children = client.search_runs([experiment.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        (child,) = children
        assert child.data.params["checkpoint_uri"] == f"models:/{model}/{mv.version}"
        assert child.data.params["checkpoint_digest"] == job.digest
        assert child.data.params["model_version"] == str(mv.version)
        assert "bpm/mean" in child.data.metrics

        tags = client.get_model_version(model, mv.version).tags
        assert tags["bpm.trigger.status"] == "succeeded"
        assert tags["bpm.trigger.run_id"] == parent.info.run_id
        assert tags["bpm.trigger.digest"] == job.digest
        assert "bpm.trigger.error" not in tags
        assert tags["bpm.run_id"] == child.info.run_id  # the campaign's own result tags

        # MLflow's delivery, sent again (same id), and re-announced (new id): nothing new runs.
        with TriggerState(state_path, lock=False) as state:
            (delivery,) = state.deliveries()
            payload = state.delivery_payload(delivery.id)
        assert (delivery.event, delivery.origin, delivery.status) == ("model_version.created", "webhook", "done")
        assert payload is not None and json.loads(payload)["data"]["name"] == model
        runs_before = len(client.search_runs([experiment.experiment_id]))
        for delivery_id, expected in ((delivery.id, (200, "duplicate")), (str(uuid.uuid4()), (202, "accepted"))):
            ts = str(int(time.time()))
            status, answer = _http(service + "/webhook", "POST", payload, {
                "Content-Type": "application/json", DELIVERY_ID_HEADER: delivery_id, TIMESTAMP_HEADER: ts,
                SIGNATURE_HEADER: sign(secret, delivery_id, ts, payload)})
            assert (status, answer["status"]) == expected
        time.sleep(2)
        with TriggerState(state_path, lock=False) as state:
            assert [d.status for d in state.deliveries()] == ["done", "exists"]
            assert len(state.jobs()) == 1
        assert len(client.search_runs([experiment.experiment_id])) == runs_before

        # A version whose checkpoint cannot be loaded: recorded, tagged, the service carries on.
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "model_index.json").write_text('{"_class_name": "StableDiffusionInstructPix2PixPipeline"}')
        client.log_artifacts(run.info.run_id, str(broken), artifact_path="broken")
        bad = client.create_model_version(model, source=f"runs:/{run.info.run_id}/broken", run_id=run.info.run_id)
        failed = _wait_job(state_path, model, str(bad.version), proc, log)
        assert failed.status == "failed" and "cannot be loaded" in (failed.error or ""), failed.error
        bad_tags = client.get_model_version(model, bad.version).tags
        assert bad_tags["bpm.trigger.status"] == "failed" and "cannot be loaded" in bad_tags["bpm.trigger.error"]
        assert _http(service + "/readyz")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()[-4000:]
