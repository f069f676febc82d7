"""MLflow logging (bpm_lib.io.tracking) against a real MLflow server: one parent run per
campaign, one child per candidate, read back through MlflowClient; fail-fast checks."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bpm_lib.cli import main
from bpm_lib.errors import TrackingError
from bpm_lib.io.tracking import (
    CandidateInfo,
    check_reachable,
    ensure_local_server,
    log_campaign,
    resolve_tracking_uri,
    safe_params,
)
from bpm_lib.report import plot_by_edit_type, plot_comparison, plot_distributions, render_report
from bpm_lib.runner.score import finalize, write_results
from bpm_lib.types import Sample, SampleScore
from tests.fixtures.servers import MlflowServer, free_port

EDIT_TYPES = ("add", "replace", "change color", "add")


def _closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


def make_results(root: Path) -> tuple[Path, dict[str, Sample], dict[str, dict[str, str]]]:
    """A finished aggregation of two candidates × four samples with known sub-scores."""
    root.mkdir(parents=True, exist_ok=True)
    samples: dict[str, Sample] = {}
    edits: dict[str, dict[str, str]] = {"alpha-ckpt": {}, "beta-ckpt": {}}
    raw: dict[str, list[SampleScore]] = {"alpha-ckpt": [], "beta-ckpt": []}
    for i, etype in enumerate(EDIT_TYPES):
        sid = f"s{i}"
        src = root / f"{sid}.png"
        Image.fromarray(np.full((40, 60, 3), (20 * i, 200, 90), dtype=np.uint8)).save(src)
        samples[sid] = Sample(sid, f"instruction {i}", str(src))
        for c, cand in enumerate(raw):
            ed = root / f"{sid}-{cand}.png"
            Image.fromarray(np.full((40, 60, 3), (250, 30 * c, 10 * i), dtype=np.uint8)).save(ed)
            edits[cand][sid] = str(ed)
            raw[cand].append(SampleScore(sid, cand, case="standard", edit_type=etype, s_size=1.0, s_position=1.0,
                                         s_region=2.0, s_modify=0.1 * (i + 1) + 0.05 * c,
                                         s_preserve=0.02 * (i + 1) + 0.1 * c))
    raw["beta-ckpt"].append(SampleScore("s9", "beta-ckpt", status="error", error="judge: broken"))
    result = finalize(raw, calibration=None, alpha=0.7, preset="tiny-random", seconds=2.0)
    out = root / "results"
    write_results(result, out)
    scores = [s for c in result.scores.values() for s in c]
    (out / "report.html").write_text(render_report("t", samples, scores, edits, list(result.summaries.values())))
    plot_distributions(result.scores, out / "plots" / "distributions.png")
    plot_by_edit_type(list(result.summaries.values()), out / "plots" / "bpm_by_edit_type.png")
    plot_comparison(list(result.summaries.values()), out / "plots" / "comparison.png")
    return out, samples, edits


@pytest.fixture(scope="module")
def logged(mlflow_tracking: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("tracking")
    results, samples, edits = make_results(root)
    client = MlflowClient(mlflow_tracking.url)
    model = f"ip2p-{int(time.time() * 1000)}"
    client.create_registered_model(model)
    version = client.create_model_version(model, source="s3://bucket/ckpt", run_id=None).version
    runs = log_campaign(
        results, tracking_uri=mlflow_tracking.url, experiment="tracking-test", campaign="camp-1",
        candidates=[CandidateInfo("alpha-ckpt", checkpoint=f"models:/{model}/{version}", checkpoint_digest="d-alpha",
                                  model_name=model, model_version=str(version)),
                    CandidateInfo("beta-ckpt", checkpoint="/ckpt/beta", checkpoint_digest="d-beta")],
        dataset={"name": "demo", "digest": "sha256:abc", "uri": "demo"},
        params={"alpha": 0.7, "preset": "tiny-random", "openai": {"api_key": "sk-secret", "model": "m"},
                "aws_secret_access_key": "xyz"},
        samples=samples, edits=edits, pipeline_run_id="kfp-run-7",
    )
    summary = json.loads((results / "summary.json").read_text())
    return {"client": client, "runs": runs, "summary": summary, "model": model, "version": str(version),
            "results": results, "samples": samples, "edits": edits, "root": root}


def test_parent_and_one_child_per_candidate(logged: dict[str, Any]) -> None:
    client, runs = logged["client"], logged["runs"]
    parent = client.get_run(runs.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "camp-1"
    assert parent.data.tags["bpm.kind"] == "campaign" and parent.data.tags["bpm.pipeline_run_id"] == "kfp-run-7"
    assert set(runs.child_run_ids) == {"alpha-ckpt", "beta-ckpt"}
    children = client.search_runs([runs.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{runs.parent_run_id}'")
    assert {r.info.run_id for r in children} == set(runs.child_run_ids.values())
    assert all(r.info.status == "FINISHED" and r.data.tags["bpm.kind"] == "candidate" for r in children)


def test_child_metrics_and_params(logged: dict[str, Any]) -> None:
    client, runs, summary = logged["client"], logged["runs"], logged["summary"]
    for cand, run_id in runs.child_run_ids.items():
        run = client.get_run(run_id)
        m, p, s = run.data.metrics, run.data.params, summary["candidates"][cand]
        for key in ("bpm", "s_modify", "s_preserve", "s_region"):
            assert m[f"{key}/mean"] == pytest.approx(s["means"][key])
        assert m["bpm/mean/add"] == pytest.approx(s["means_by_edit_type"]["add"]["bpm"])
        assert m["s_preserve/mean/change_color"] == pytest.approx(s["means_by_edit_type"]["change color"]["s_preserve"])
        assert m["samples/scored"] == 4 and m["samples/failed"] == (1 if cand == "beta-ckpt" else 0)
        assert m["throughput/samples_per_s"] == pytest.approx(s["samples_total"] / 2.0)
        assert p["candidate"] == cand and p["preset"] == "tiny-random" and p["alpha"] == "0.7"
        assert p["dataset_digest"] == "sha256:abc" and p["calibration_id"] == summary["calibration"]["id"]
        assert p["pipeline_run_id"] == "kfp-run-7" and p["openai.model"] == "m"
        assert not any("api_key" in k or "secret" in k for k in p)  # credentials never reach MLflow
        assert run.data.tags["bpm.calibration_id"] == summary["calibration"]["id"]
        assert run.data.tags["bpm.meaningless"] == "false"
    alpha = client.get_run(runs.child_run_ids["alpha-ckpt"]).data.params
    assert alpha["checkpoint_uri"].startswith("models:/") and alpha["checkpoint_digest"] == "d-alpha"
    # The better candidate: alpha preserves better at a similar modification.
    assert summary["candidates"]["alpha-ckpt"]["means"]["bpm"] > summary["candidates"]["beta-ckpt"]["means"]["bpm"]


def test_artifacts_table_and_dataset(logged: dict[str, Any], tmp_path: Path) -> None:
    client, runs = logged["client"], logged["runs"]
    cid = runs.child_run_ids["beta-ckpt"]
    names = {a.path for a in client.list_artifacts(cid)}
    assert {"report.html", "calibration.json", "samples"} <= names
    table = json.loads(Path(client.download_artifacts(cid, "samples/table.json", str(tmp_path))).read_text())
    cols = table["columns"]
    rows = [dict(zip(cols, r, strict=True)) for r in table["data"]]
    assert len(rows) == 5 and {r["sample_id"] for r in rows} == {"s0", "s1", "s2", "s3", "s9"}
    broken = next(r for r in rows if r["sample_id"] == "s9")
    assert broken["status"] == "error" and broken["error"] == "judge: broken"
    s0 = next(r for r in rows if r["sample_id"] == "s0")
    assert s0["instruction"] == "instruction 0" and s0["edit_type"] == "add"
    assert s0["source"]["type"] == "image" and s0["edited"]["type"] == "image"  # images logged with the table
    img = client.download_artifacts(cid, s0["edited"]["filepath"], str(tmp_path / "img"))
    assert Image.open(img).convert("RGB").getpixel((5, 5)) == (250, 30, 0)

    run = client.get_run(cid)
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.name == "demo" and ds.dataset.digest == "sha256:abc"
    assert {t.key: t.value for t in ds.tags}["mlflow.data.context"] == "evaluation"

    parent = runs.parent_run_id
    pnames = {a.path for a in client.list_artifacts(parent)}
    assert {"report.html", "summary.json", "scores.jsonl", "calibration.json", "plots", "comparison"} <= pnames
    assert {a.path for a in client.list_artifacts(parent, "plots")} == {
        "plots/distributions.png", "plots/bpm_by_edit_type.png", "plots/comparison.png"}
    comparison = json.loads(Path(client.download_artifacts(parent, "comparison/candidates.json",
                                                           str(tmp_path / "cmp"))).read_text())
    rows = [dict(zip(comparison["columns"], r, strict=True)) for r in comparison["data"]]
    assert [r["candidate"] for r in rows] == ["alpha-ckpt", "beta-ckpt"]
    assert rows[1]["failed"] == 1 and rows[1]["checkpoint"] == "/ckpt/beta"
    best = client.get_run(parent).data.metrics["bpm/best_mean"]
    assert best == pytest.approx(max(r["bpm"] for r in rows))
    cal = json.loads(Path(client.download_artifacts(parent, "calibration.json", str(tmp_path / "cal"))).read_text())
    assert cal["id"] == logged["summary"]["calibration"]["id"] and cal["mode"] == "pool"


def test_registered_model_version_is_tagged(logged: dict[str, Any]) -> None:
    client = logged["client"]
    mv = client.get_model_version(logged["model"], logged["version"])
    summary = logged["summary"]["candidates"]["alpha-ckpt"]
    assert float(mv.tags["bpm.bpm_mean"]) == pytest.approx(summary["means"]["bpm"])
    assert mv.tags["bpm.run_id"] == logged["runs"].child_run_ids["alpha-ckpt"]
    assert mv.tags["bpm.calibration_id"] == logged["summary"]["calibration"]["id"]
    assert mv.tags["bpm.samples_failed"] == "0"


def test_a_failure_while_logging_marks_the_runs_failed(logged: dict[str, Any], mlflow_tracking: MlflowServer,
                                                       tmp_path: Path) -> None:
    results, samples, edits = make_results(tmp_path)
    (results / "report.html").unlink()
    with pytest.raises(Exception, match=r"report\.html"):
        log_campaign(results, tracking_uri=mlflow_tracking.url, experiment="tracking-test", campaign="camp-broken",
                     candidates=[CandidateInfo("alpha-ckpt")], dataset={"name": "d", "digest": "x"}, params={},
                     samples=samples, edits=edits)
    client = logged["client"]
    (parent,) = client.search_runs([logged["runs"].experiment_id], filter_string="tags.`bpm.campaign` = 'camp-broken' "
                                   "and tags.`bpm.kind` = 'campaign'")
    assert parent.info.status == "FAILED"
    (child,) = client.search_runs([logged["runs"].experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert child.info.status == "FAILED"


def test_safe_params_flattens_and_drops_credentials() -> None:
    flat = safe_params({"a": {"b": 1, "token": "t", "c": {"password": "p", "d": None}}, "x": [1, 2],
                        "long": "v" * 900, "AWS_SECRET_ACCESS_KEY": "k", "model": "m"})
    assert flat == {"a.b": "1", "long": "v" * 500, "model": "m"}


def test_check_reachable_names_the_uri_and_fails_fast() -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.perf_counter()
    with pytest.raises(TrackingError, match=f"MLflow server {uri} is unreachable"):
        check_reachable(uri)
    assert time.perf_counter() - t0 < 5
    check_reachable("file:///tmp/mlruns")  # stores without a server are not probed
    check_reachable("sqlite:///tmp/x.db")


def test_check_reachable_accepts_a_live_server(mlflow_tracking: MlflowServer) -> None:
    check_reachable(mlflow_tracking.url)
    check_reachable(mlflow_tracking.url + "/")


def test_resolve_tracking_uri_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    assert resolve_tracking_uri("http://from-config:5000", tmp_path) == "http://from-env:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri("http://from-config:5000", tmp_path) == "http://from-config:5000"
    assert not (tmp_path / "mlflow").exists()  # no local server was needed


def test_bpm_run_fails_fast_on_an_unreachable_tracking_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"http://127.0.0.1:{_closed_port()}"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: x\ntracking: {{uri: '{uri}'}}\ncandidates: [{{name: a, checkpoint: /nowhere}}]\n")
    for extra in ([], ["--in-process"]):
        t0 = time.perf_counter()
        rc = main(["run", str(cfg), "--root", str(tmp_path / "root"), *extra])
        elapsed = time.perf_counter() - t0
        err = capsys.readouterr().err
        assert rc == 1 and f"MLflow server {uri} is unreachable" in err, err
        assert elapsed < 10, elapsed
        assert not (tmp_path / "root" / "kfp").exists() and not (tmp_path / "root" / "cache").exists()


@pytest.mark.slow
def test_local_server_is_started_once_and_reused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = ensure_local_server(tmp_path / "root")
    try:
        assert first.started and first.url.startswith("http://127.0.0.1:")
        check_reachable(first.url)
        assert (tmp_path / "root" / "mlflow" / "mlflow.db").exists()
        again = ensure_local_server(tmp_path / "root")
        assert (again.url, again.pid, again.started) == (first.url, first.pid, False)
        assert resolve_tracking_uri(None, tmp_path / "root") == first.url
    finally:
        os.kill(first.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", int(first.url.rsplit(":", 1)[1]))) != 0:
                break
        time.sleep(0.3)
    # A stale record (the server is gone) starts a new server rather than failing.
    fresh = ensure_local_server(tmp_path / "root")
    try:
        assert fresh.started and fresh.pid != first.pid
    finally:
        os.kill(fresh.pid, signal.SIGTERM)
