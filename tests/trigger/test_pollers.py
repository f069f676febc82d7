"""Pollers on real servers: an S3 prefix on moto_server and the MLflow model registry.

They share the webhook's inbox and exactly-once jobs; the evaluation is a recording test
double passed through the API (the CLI test uses the real ``kfp`` submitter against an
endpoint that is down, which must be recorded as a failure)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from bpm_lib.cli import main
from bpm_lib.io.model_uri import checkpoint_digest
from bpm_lib.trigger.pollers import (
    RegistryPoller,
    S3Object,
    S3Poller,
    folder_digest,
    group_folders,
    poller_for,
)
from bpm_lib.trigger.service import TriggerService, parse_trigger_config
from bpm_lib.trigger.submitters import EvaluationRequest, Submission
from bpm_lib.trigger.webhooks import DELIVERY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.fixtures.s3 import MotoS3, moto_s3_endpoint  # noqa: F401 - fixture

SECRET = "poll-secret"


class RecordingSubmitter:
    name = "recording"

    def __init__(self) -> None:
        self.requests: list[EvaluationRequest] = []

    def submit(self, request: EvaluationRequest, config: Any) -> Submission:
        self.requests.append(request)
        return Submission("submitted", f"run-{request.job_id}")


def no_resolver(uri: str) -> Any:
    raise AssertionError(f"S3 findings carry their digest; nothing should resolve {uri}")


def config_data(tmp: Path, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "state": str(tmp / "state.db"), "port": 0, "submit": {"mode": "local", "root": str(tmp / "root")},
        "campaign": {"name": "poll", "dataset": {"source": "demo", "limit": 2}, "preset": "tiny-random"},
        "candidate": {"editor": "ip2p", "settings": {"num_inference_steps": 2}},
    }
    data.update(over)
    return data


# ------------------------------------------------------------------------------ pure


def test_folder_digest_is_order_independent_and_sees_every_change() -> None:
    a = [("model_index.json", 2, '"e1"'), ("unet/w.bin", 4, '"e2"')]
    assert folder_digest(a) == folder_digest(list(reversed(a)))
    assert folder_digest(a) == folder_digest([("model_index.json", 2, "e1"), ("unet/w.bin", 4, "e2")])
    assert folder_digest(a).startswith("s3-etag:")
    for changed in ([("model_index.json", 2, '"e1"'), ("unet/w.bin", 4, '"e3"')],
                    [("model_index.json", 2, '"e1"'), ("unet/w.bin", 5, '"e2"')],
                    [("model_index.json", 2, '"e1"'), ("vae/w.bin", 4, '"e2"')],
                    a[:1]):
        assert folder_digest(changed) != folder_digest(a)


def test_group_folders_keeps_only_files_inside_folders_under_the_prefix() -> None:
    objs = [S3Object(k, 1, "e", 0.0) for k in (
        "ckpts/a/model_index.json", "ckpts/a/unet/w.bin", "ckpts/b/x", "ckpts/readme.txt", "ckpts/.tmp/x",
        "ckpts/c/", "ckptsX/d/x", "other/e/x")]
    groups = group_folders("ckpts", objs)
    assert {k: [o.key for o in v] for k, v in groups.items()} == {
        "a": ["ckpts/a/model_index.json", "ckpts/a/unet/w.bin"], "b": ["ckpts/b/x"]}
    assert set(group_folders("", objs)) == {"ckpts", "ckptsX", "other"}


def test_poller_for_validates_its_uri() -> None:
    assert isinstance(poller_for("s3://bucket/prefix"), S3Poller)
    assert isinstance(poller_for("models:/ip2p"), RegistryPoller)
    for bad in ("gs://b/p", "models:/ip2p/3", "models:/ip2p@champion", "models:/"):
        with pytest.raises(ValueError, match="uri must be"):
            poller_for(bad)
    with pytest.raises(ValueError, match="min_age_s"):
        S3Poller("s3://bucket/p", min_age_s=-1)


# ------------------------------------------------------------------------------- S3


@pytest.fixture()
def s3_service(tmp_path: Path) -> Iterator[tuple[TriggerService, RecordingSubmitter]]:
    sub = RecordingSubmitter()
    svc = TriggerService(parse_trigger_config(config_data(tmp_path)), submitter=sub, resolver=no_resolver,
                         serve_http=False)
    svc.start()
    yield svc, sub
    svc.stop()


def test_s3_poller_offers_each_ready_checkpoint_folder_once(moto_s3_endpoint: MotoS3, s3_service: Any) -> None:  # noqa: F811
    s3 = moto_s3_endpoint
    svc, sub = s3_service
    bucket = s3.bucket()
    s3.put(bucket, "ckpts/a/model_index.json", "{}")
    s3.put(bucket, "ckpts/a/unet/diffusion_pytorch_model.safetensors", b"1234")
    s3.put(bucket, "ckpts/b/unet/diffusion_pytorch_model.safetensors", b"99")  # still uploading
    s3.put(bucket, "ckpts/readme.txt", "not a checkpoint")
    s3.put(bucket, "ckptsX/c/model_index.json", "{}")  # a sibling prefix
    prefix = f"s3://{bucket}/ckpts"
    poller = S3Poller(prefix + "/", min_age_s=0, require_file="model_index.json")

    first = poller.poll(svc)
    assert (first.found, first.accepted, first.known, first.waiting) == (1, 1, 0, 1)
    assert svc.wait_idle(20)
    (req,) = sub.requests
    assert (req.model, req.version, req.checkpoint, req.origin) == (prefix, "a", f"{prefix}/a", "poll:s3")
    listing = s3.client().list_objects_v2(Bucket=bucket, Prefix="ckpts/a/")["Contents"]
    assert req.digest == folder_digest((o["Key"][len("ckpts/a/"):], o["Size"], o["ETag"]) for o in listing)

    again = poller.poll(svc)
    assert (again.accepted, again.known) == (0, 1)

    s3.put(bucket, "ckpts/b/model_index.json", "{}")  # b's upload completes
    s3.put(bucket, "ckpts/a/unet/diffusion_pytorch_model.safetensors", b"new weights")  # a is overwritten
    third = poller.poll(svc)
    assert (third.found, third.accepted, third.waiting) == (2, 2, 0)
    assert svc.wait_idle(20)
    assert sorted((r.version, r.digest != req.digest) for r in sub.requests) == [("a", False), ("a", True), ("b", True)]
    state = svc.state
    assert state is not None and len(state.jobs()) == 3 and {j.status for j in state.jobs()} == {"submitted"}
    assert poller.poll(svc).accepted == 0


def test_s3_poller_waits_until_folders_are_old_enough(moto_s3_endpoint: MotoS3, s3_service: Any) -> None:  # noqa: F811
    s3 = moto_s3_endpoint
    svc, sub = s3_service
    bucket = s3.bucket()
    s3.put(bucket, "runs/step-100/model_index.json", "{}")
    fresh = S3Poller(f"s3://{bucket}/runs", min_age_s=3600).poll(svc)
    assert (fresh.found, fresh.waiting) == (0, 1)
    later = S3Poller(f"s3://{bucket}/runs", min_age_s=3600, clock=lambda: time.time() + 7200).poll(svc)
    assert (later.found, later.accepted) == (1, 1)
    assert svc.wait_idle(20) and [r.version for r in sub.requests] == ["step-100"]
    empty = S3Poller(f"s3://{bucket}/nothing-here", min_age_s=0).poll(svc)
    assert (empty.found, empty.waiting) == (0, 0)


def test_cli_poll_s3_once(moto_s3_endpoint: MotoS3, tmp_path: Path,  # noqa: F811
                          capsys: pytest.CaptureFixture[str]) -> None:
    from tests.fixtures.servers import free_port

    s3 = moto_s3_endpoint
    bucket = s3.bucket()
    s3.put(bucket, "ckpts/run-1/model_index.json", "{}")
    s3.put(bucket, "ckpts/run-2/unet/w.bin", "partial upload")
    # The KFP endpoint is down: the submission fails, is recorded, and the command still ends.
    config = config_data(tmp_path, submit={"mode": "kfp", "kfp_host": f"http://127.0.0.1:{free_port()}"},
                         tag_model_versions=False)
    path = tmp_path / "trigger.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = ["trigger", "poll", f"s3://{bucket}/ckpts", "--config", str(path), "--once", "--min-age", "0",
            "--require-file", "model_index.json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1]) == {"deliveries": {"done": 1}, "jobs": {"failed": 1}}
    report = json.loads(err.strip().splitlines()[-1])
    assert (report["found"], report["accepted"], report["waiting"]) == (1, 1, 1)
    assert main(["trigger", "jobs", "--config", str(path)]) == 0
    listing = capsys.readouterr().out
    assert f"s3://{bucket}/ckpts / run-1" in listing and "failed" in listing
    assert main(argv) == 0  # polling again: nothing new
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["jobs"] == {"failed": 1}


# ------------------------------------------------------------------------- registry


@pytest.fixture()
def registry(mlflow_tracking: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """A fresh registered model on the session's MLflow server, and a helper to add versions."""
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("BPM_CACHE_DIR", str(tmp_path / "cache"))
    client = MlflowClient(tracking_uri=mlflow_tracking.url)
    name = f"trigger-poll-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    exp = client.get_experiment_by_name("bpm-trigger-tests") or client.get_experiment(
        client.create_experiment("bpm-trigger-tests"))
    run = client.create_run(exp.experiment_id)

    def add_version(files: dict[str, bytes] | None) -> tuple[str, Path | None]:
        """Register a version; ``files`` its checkpoint (None: a source with no artifacts)."""
        folder_name = f"ckpt-{uuid.uuid4().hex[:6]}"
        local: Path | None = None
        if files is not None:
            local = tmp_path / folder_name
            for rel, data in files.items():
                (local / rel).parent.mkdir(parents=True, exist_ok=True)
                (local / rel).write_bytes(data)
            client.log_artifacts(run.info.run_id, str(local), artifact_path=folder_name)
        mv = client.create_model_version(name, source=f"runs:/{run.info.run_id}/{folder_name}",
                                         run_id=run.info.run_id)
        return str(mv.version), local

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_tracking.url)
    yield SimpleNamespace(name=name, client=client, url=mlflow_tracking.url, add=add_version)
    mlflow.set_tracking_uri(previous)


@pytest.mark.slow
def test_registry_poller_and_webhook_share_exactly_once_jobs(registry: Any, tmp_path: Path) -> None:
    v1, ckpt1 = registry.add({"model_index.json": b"{}", "unet/w.bin": b"one"})
    v2, ckpt2 = registry.add({"model_index.json": b"{}", "unet/w.bin": b"two"})
    v3, _ = registry.add(None)  # registered, but its checkpoint cannot be downloaded
    sub = RecordingSubmitter()
    config = parse_trigger_config(config_data(tmp_path, models=[registry.name]))
    svc = TriggerService(config, secret=SECRET, submitter=sub, tracking_uri=registry.url)  # real resolver + tags
    svc.start()
    try:
        report = RegistryPoller(f"models:/{registry.name}", tracking_uri=registry.url).poll(svc)
        assert (report.found, report.accepted) == (3, 3)
        assert svc.wait_idle(60)
        got = {r.version: r for r in sub.requests}
        assert sorted(got) == [v1, v2]
        assert got[v1].digest == checkpoint_digest(ckpt1) and got[v2].digest == checkpoint_digest(ckpt2)  # type: ignore[arg-type]
        assert got[v1].checkpoint == f"models:/{registry.name}/{v1}" and got[v1].origin == "poll:registry"
        tags = {v: registry.client.get_model_version(registry.name, v).tags for v in (v1, v2, v3)}
        assert tags[v1]["bpm.trigger.status"] == "submitted"
        assert tags[v1]["bpm.trigger.run_id"] == f"run-{got[v1].job_id}"
        assert tags[v1]["bpm.trigger.digest"] == got[v1].digest
        assert tags[v3]["bpm.trigger.status"] == "failed"
        assert "cannot be resolved" in tags[v3]["bpm.trigger.error"]
        state = svc.state
        assert state is not None
        failed = state.delivery(f"poll:models:/{registry.name}/{v3}")
        assert failed is not None and failed.status == "failed"

        # The same versions announced by a webhook: recorded, nothing new runs.
        body = json.dumps({"entity": "model_version", "action": "created", "data": {
            "name": registry.name, "version": v1, "source": "x", "run_id": None, "tags": {}}}).encode()
        ts = str(int(time.time()))
        headers = {DELIVERY_ID_HEADER.lower(): ["wh-1"], TIMESTAMP_HEADER.lower(): [ts],
                   SIGNATURE_HEADER.lower(): [sign(SECRET, "wh-1", ts, body)]}
        assert svc.handle_webhook(headers, body).status == 202
        # Polling again: known versions are duplicates; the failed one is retried (attempts left).
        again = RegistryPoller(f"models:/{registry.name}", tracking_uri=registry.url).poll(svc)
        assert (again.accepted, again.known) == (1, 2)
        assert svc.wait_idle(60)
        assert sorted(r.version for r in sub.requests) == [v1, v2]
        assert state.delivery("wh-1").status == "exists"  # type: ignore[union-attr]
        assert state.delivery(f"poll:models:/{registry.name}/{v3}").attempts == 2  # type: ignore[union-attr]
    finally:
        svc.stop()


@pytest.mark.slow
def test_cli_poll_once_records_a_failed_submission(registry: Any, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from tests.fixtures.servers import free_port

    version, _ = registry.add({"model_index.json": b"{}"})
    config = config_data(tmp_path, submit={"mode": "kfp", "kfp_host": f"http://127.0.0.1:{free_port()}"},
                         campaign={"name": "poll", "dataset": {"source": "demo"}, "tracking": {"uri": registry.url}})
    path = tmp_path / "trigger.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["trigger", "poll", f"models:/{registry.name}", "--config", str(path), "--once", "--timeout", "120"]) == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts == {"deliveries": {"done": 1}, "jobs": {"failed": 1}}
    tags = registry.client.get_model_version(registry.name, version).tags
    assert tags["bpm.trigger.status"] == "failed"
    assert "127.0.0.1" in tags["bpm.trigger.error"]  # the KFP endpoint that refused the connection
    assert main(["trigger", "jobs", "--config", str(path), "--json"]) == 0
    (job,) = json.loads(capsys.readouterr().out)["jobs"]
    assert (job["model"], job["version"], job["status"], job["attempts"]) == (registry.name, version, "failed", 1)
