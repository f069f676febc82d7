"""End to end: the compare_checkpoints pipeline through ``kfp.local.SubprocessRunner``
against a real MLflow server (SQLite) whose artifacts live in S3 (moto_server); the
second run is served from the stage cache; a failed stage resumes; checkpoint_eval.

Slow (minutes): every task is a Python subprocess."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bpm_lib.config import CandidateConfig, DatasetConfig, RunConfig, TrackingConfig, demo_config
from bpm_lib.io.datasets.demo import write_demo
from bpm_lib.runner.cache import META, StageCache
from bpm_lib.runner.local import LocalRunResult, StageError, run_in_process, run_local
from tests.fixtures.servers import MlflowServer, S3Endpoint, mlflow_server

pytestmark = pytest.mark.slow

BUCKET = "bpm-e2e-artifacts"
STAGE_NAMES = ("fetch_data", "parse_instructions", "localize_source", "generate_edits", "localize_edited", "judge",
               "aggregate")
PER_CANDIDATE = ("generate_edits", "localize_edited", "judge")


@dataclass
class E2E:
    server: MlflowServer
    s3: S3Endpoint
    cache: StageCache
    config: RunConfig
    first: LocalRunResult
    second: LocalRunResult
    first_events: list[dict[str, Any]]
    second_events: list[dict[str, Any]]
    tmp: Path


def _outputs(run_root: Path) -> list[dict[str, Any]]:
    """The ``_bpm.json`` of every task output of the latest kfp.local run under ``run_root``."""
    (latest,) = sorted((run_root / "kfp").iterdir(), key=lambda p: p.stat().st_mtime)[-1:]
    return [json.loads(p.read_text()) for p in sorted(latest.rglob(META))]


@pytest.fixture(scope="module")
def e2e(s3_endpoint: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    tmp = tmp_path_factory.mktemp("e2e")
    s3_endpoint.client().create_bucket(Bucket=BUCKET)
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setenv("BPM_CACHE_DIR", str(tmp / "stage-cache"))
    try:
        with mlflow_server(tmp / "mlflow", artifacts_destination=f"s3://{BUCKET}/mlflow",
                           extra_env=s3_endpoint.env) as server:
            config = replace(
                demo_config("e2e-campaign"),
                dataset=DatasetConfig(source="demo", limit=7, stratify="edit-type"),  # one sample per edit type
                localizer="reference-mask",
                tracking=TrackingConfig(uri=server.url, experiment="bpm-e2e"),
            )
            cache = StageCache(tmp / "stage-cache" / "stages")
            first = run_local(config, root=tmp / "run1")
            n = len(list(cache.events()))
            # A fresh kfp root (so KFP's own task cache is empty): only the stage cache can help.
            second = run_local(config, root=tmp / "run2")
            events = list(cache.events())
            yield E2E(server, s3_endpoint, cache, config, first, second, events[:n], events[n:], tmp)
    finally:
        mp.undo()


def test_first_run_computes_every_stage_once(e2e: E2E) -> None:
    stages = [e["stage"] for e in e2e.first_events]
    assert all(not e["hit"] for e in e2e.first_events)
    # Source-side work and the aggregation once; candidate work once per candidate.
    once = [s for s in STAGE_NAMES if s not in PER_CANDIDATE]
    assert sorted(stages) == sorted([*once, *[s for s in PER_CANDIDATE for _ in range(3)]])
    summary = e2e.first.summary()
    assert set(summary["candidates"]) == {"well_edited", "over_preserved", "over_modified"}
    for s in summary["candidates"].values():
        assert (s["samples_total"], s["samples_scored"], s["samples_failed"]) == (7, 7, 0)


def test_second_run_is_served_from_the_cache(e2e: E2E) -> None:
    assert len(e2e.second_events) == len(e2e.first_events) == 13
    assert all(e["hit"] for e in e2e.second_events)  # stages recomputed: 0
    assert {(e["stage"], e["key"]) for e in e2e.second_events} == {(e["stage"], e["key"]) for e in e2e.first_events}
    metas = [m for m in _outputs(e2e.tmp / "run2") if m.get("stage") in STAGE_NAMES]
    assert len(metas) == 13 and all(m["cached"] for m in metas)
    assert not any(m["cached"] for m in _outputs(e2e.tmp / "run1") if m.get("stage") in STAGE_NAMES)
    first, second = e2e.first.summary()["candidates"], e2e.second.summary()["candidates"]
    assert {c: s["means"] for c, s in first.items()} == {c: s["means"] for c, s in second.items()}
    assert e2e.second.parent_run_id and e2e.second.parent_run_id != e2e.first.parent_run_id  # a new campaign


def test_in_process_gives_the_same_results(e2e: E2E) -> None:
    n = len(list(e2e.cache.events()))
    result = run_in_process(e2e.config, root=e2e.tmp / "inproc", tracking=False)
    assert all(e["hit"] for e in list(e2e.cache.events())[n:])
    kfp, inproc = e2e.first.summary(), result.summary()
    assert {c: s["means"] for c, s in kfp["candidates"].items()} == {
        c: s["means"] for c, s in inproc["candidates"].items()}
    assert kfp["calibration"]["id"] == inproc["calibration"]["id"]


def test_demo_ground_truth_on_preservation(e2e: E2E) -> None:
    """Random-weight CLIP makes BPM meaningless, but with reference masks S_preserve is not."""
    means = {c: s["means"]["s_preserve"] for c, s in e2e.first.summary()["candidates"].items()}
    assert means["over_preserved"] == 0.0
    assert means["over_modified"] > means["well_edited"] > means["over_preserved"]
    assert max(means, key=means.__getitem__) == "over_modified"
    scores = [json.loads(x) for x in (e2e.first.results_dir / "scores.jsonl").read_text().splitlines()]
    local = [s for s in scores if s["case"] != "global"]
    assert {s["s_preserve"] for s in local if s["candidate"] == "over_preserved"} == {0.0}
    assert all(s["s_preserve"] is None for s in scores if s["case"] == "global")  # not applicable


def test_mlflow_parent_and_children(e2e: E2E) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(e2e.server.url)
    parent = client.get_run(e2e.first.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "e2e-campaign"
    assert parent.data.tags["bpm.pipeline_run_id"]  # the KFP job id placeholder, resolved
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.info.run_name for r in children} == {"well_edited", "over_preserved", "over_modified"}
    assert {r.info.run_id for r in children} == set(e2e.first.child_run_ids.values())
    summary = e2e.first.summary()
    for run in children:
        cand, m, p = run.info.run_name, run.data.metrics, run.data.params
        s = summary["candidates"][cand]
        for key in ("bpm", "s_modify", "s_preserve", "s_region"):
            assert m[f"{key}/mean"] == pytest.approx(s["means"][key]), (cand, key)
        for etype in ("add", "remove", "replace", "change_color", "change_size", "change_texture", "global"):
            assert f"bpm/mean/{etype}" in m, (cand, etype)
        assert m["samples/scored"] == 7 and m["samples/failed"] == 0
        assert p["checkpoint_uri"] == f"evalset:candidates/{cand}"
        assert p["dataset_digest"].startswith("sha256:") and p["dataset"] == "demo"
        assert p["preset"] == "tiny-random" and float(p["alpha"]) == 0.7
        assert p["calibration_id"] == summary["calibration"]["id"] == run.data.tags["bpm.calibration_id"]
        (ds,) = run.inputs.dataset_inputs
        assert ds.dataset.name == "demo" and ds.dataset.digest == p["dataset_digest"][:36]


def test_mlflow_artifacts_are_in_s3(e2e: E2E, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(e2e.server.url)
    cid = e2e.first.child_run_ids["over_modified"]
    assert {"report.html", "calibration.json", "samples"} <= {a.path for a in client.list_artifacts(cid)}
    table = json.loads(Path(client.download_artifacts(cid, "samples/table.json", str(tmp_path))).read_text())
    rows = [dict(zip(table["columns"], r, strict=True)) for r in table["data"]]
    assert len(rows) == 7 and all(r["source"]["type"] == "image" and r["edited"]["type"] == "image" for r in rows)
    thumb = client.download_artifacts(cid, rows[0]["edited"]["filepath"], str(tmp_path / "t"))
    assert max(Image.open(thumb).size) == 128
    cal = json.loads(Path(client.download_artifacts(cid, "calibration.json", str(tmp_path / "c"))).read_text())
    assert cal["id"] == e2e.first.summary()["calibration"]["id"]

    pid = e2e.first.parent_run_id
    assert {a.path for a in client.list_artifacts(pid, "plots")} == {
        "plots/distributions.png", "plots/bpm_by_edit_type.png", "plots/comparison.png"}
    comparison = json.loads(Path(client.download_artifacts(pid, "comparison/candidates.json",
                                                           str(tmp_path / "cmp"))).read_text())
    assert sorted(r[0] for r in comparison["data"]) == ["over_modified", "over_preserved", "well_edited"]
    html = Path(client.download_artifacts(pid, "report.html", str(tmp_path / "r"))).read_text()
    assert "over_modified" in html and "data:image/png;base64," in html

    # The server stored them in the bucket, not on a local disk.
    keys = [o["Key"] for page in e2e.s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]
    run_keys = [k for k in keys if f"/{cid}/artifacts/" in k]
    assert any(k.endswith("samples/table.json") for k in run_keys)
    assert any(k.endswith("/report.html") for k in run_keys)
    assert any(k.endswith(f"{pid}/artifacts/plots/comparison.png") for k in keys)
    assert not (e2e.tmp / "mlflow" / "artifacts").exists()


def test_a_failed_stage_resumes_after_the_fix(e2e: E2E, tmp_path: Path) -> None:
    demo = write_demo(tmp_path / "demo")
    ckpt = tmp_path / "ckpt-late"  # does not exist yet: generating its edits fails
    config = RunConfig(
        name="e2e-resume",
        dataset=DatasetConfig(source="demo", limit=4, seed=11),  # keys of their own: nothing cached yet
        localizer="reference-mask",
        candidates=(CandidateConfig("well_edited", checkpoint="evalset:candidates/well_edited"),
                    CandidateConfig("late", checkpoint=str(ckpt))),
    )
    n0 = len(list(e2e.cache.events()))
    with pytest.raises(StageError, match="generate-edits"):
        run_local(config, root=tmp_path / "attempt1", tracking=False)
    failed_run = list(e2e.cache.events())[n0:]
    assert {e["stage"] for e in failed_run if not e["hit"]} >= {"fetch_data", "parse_instructions", "localize_source"}
    stored = {(e["stage"], e["key"]) for e in failed_run if (e2e.cache.root / e["stage"] / e["key"] / META).exists()}
    assert {s for s, _ in stored} >= {"fetch_data", "parse_instructions", "localize_source"}

    shutil.copytree(demo.candidates["over_modified"], ckpt)  # the fix: the checkpoint appears
    n1 = len(list(e2e.cache.events()))
    result = run_local(config, root=tmp_path / "attempt2", tracking=False)  # fresh kfp root: stage cache only
    rerun = list(e2e.cache.events())[n1:]
    assert all(e["hit"] for e in rerun if (e["stage"], e["key"]) in stored)  # finished work is reused
    assert {e["stage"] for e in rerun if e["hit"]} >= {"fetch_data", "parse_instructions", "localize_source"}
    recomputed = [e["stage"] for e in rerun if not e["hit"]]
    # Only the fixed candidate's stages, and the aggregation that now includes it.
    assert sorted(recomputed) == ["aggregate", "generate_edits", "judge", "localize_edited"]
    summary = result.summary()["candidates"]
    assert summary["late"]["samples_scored"] == 4 and summary["well_edited"]["samples_scored"] == 4


def test_checkpoint_eval_pipeline(e2e: E2E) -> None:
    from mlflow import MlflowClient

    config = replace(e2e.config, name="e2e-one", pipeline="checkpoint_eval", candidates=e2e.config.candidates[:1])
    n = len(list(e2e.cache.events()))
    result = run_local(config, root=e2e.tmp / "one")
    events = list(e2e.cache.events())[n:]
    assert all(e["hit"] for e in events if e["stage"] != "aggregate")  # the same stages as compare_checkpoints
    assert [e["hit"] for e in events if e["stage"] == "aggregate"] == [False]  # another pool: one candidate
    assert set(result.summary()["candidates"]) == {"well_edited"}
    client = MlflowClient(e2e.server.url)
    assert client.get_run(result.parent_run_id).info.run_name == "e2e-one"
    assert set(result.child_run_ids) == {"well_edited"}
    child = client.get_run(result.child_run_ids["well_edited"])
    assert child.data.tags["mlflow.parentRunId"] == result.parent_run_id
