"""Golden test: the committed ``pipelines/*.yaml`` are exactly what the sources compile to;
``python -m pipelines.compile --check`` catches drift; ``bpm submit`` compiles and submits."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from bpm_lib.cli import main
from bpm_lib.config import demo_config
from bpm_lib.runner.local import pipeline_arguments
from bpm_lib.runner.submit import submit
from pipelines.compile import HERE, compile_all, pipeline_modules

REPO = HERE.parent


def _compile_cli(*args: str, image_env: str | None = "registry.invalid/other:tag") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if image_env:
        env["BPM_IMAGE"] = image_env  # must not leak into the compiled YAML
    return subprocess.run([sys.executable, "-m", "pipelines.compile", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compiled")
    proc = _compile_cli("--out-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_every_pipeline_module_has_its_compiled_yaml() -> None:
    modules = pipeline_modules()
    assert {"compare_checkpoints", "checkpoint_eval"} <= set(modules)
    assert "compile" not in modules and not any(m.startswith("_") for m in modules)
    assert sorted(p.stem for p in HERE.glob("*.yaml")) == modules


def test_committed_yaml_matches_a_fresh_compile(fresh: Path) -> None:
    drifted = [p.name for p in sorted(fresh.glob("*.yaml")) if p.read_bytes() != (HERE / p.name).read_bytes()]
    assert drifted == [], f"stale compiled pipelines {drifted}: run `python -m pipelines.compile` and commit"


def test_compiling_is_deterministic_across_processes(fresh: Path, tmp_path: Path) -> None:
    again = compile_all(tmp_path, ["compare_checkpoints", "checkpoint_eval"])
    for path in again:
        assert path.read_bytes() == (fresh / path.name).read_bytes(), path.name


def test_check_reports_drifted_and_stale_files(fresh: Path, tmp_path: Path) -> None:
    work = tmp_path / "committed"
    shutil.copytree(fresh, work)
    ok = _compile_cli("--check", "--out-dir", str(work))
    assert ok.returncode == 0, ok.stderr
    text = (work / "checkpoint_eval.yaml").read_text()
    (work / "checkpoint_eval.yaml").write_text(text.replace("bpm-checkpoint-eval", "bpm-checkpoint-evil", 1))
    (work / "compare_checkpoints.yaml").unlink()
    (work / "old_pipeline.yaml").write_text("{}\n")
    bad = _compile_cli("--check", "--out-dir", str(work))
    assert bad.returncode == 1
    assert f"drifted: {work / 'checkpoint_eval.yaml'}: differs" in bad.stderr and "bpm-checkpoint-evil" in bad.stderr
    assert f"drifted: {work / 'compare_checkpoints.yaml'}: missing" in bad.stderr
    assert f"drifted: {work / 'old_pipeline.yaml'}: no pipeline module produces it" in bad.stderr
    assert bad.stderr.count("drifted: ") == 3  # the untouched files are not reported


def test_compiled_compare_checkpoints_is_the_cluster_pipeline(fresh: Path) -> None:
    spec, platform = yaml.safe_load_all((fresh / "compare_checkpoints.yaml").read_text())
    assert spec["pipelineInfo"]["name"] == "bpm-compare-checkpoints"
    assert spec["root"]["inputDefinitions"]["parameters"]["candidates"]["parameterType"] == "LIST"
    loop = [t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t]
    assert len(loop) == 1 and loop[0]["iteratorPolicy"]["parallelismLimit"] == 2
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"ghcr.io/bpm-eval/bpm-eval:0.1.0"}  # BPM_IMAGE of the compiling shell is ignored
    gpu = [e["container"] for name, e in spec["deploymentSpec"]["executors"].items()
           if name in ("exec-localize-source", "exec-generate-edits", "exec-localize-edited", "exec-judge")]
    assert len(gpu) == 4 and all(c["resources"]["accelerator"]["resourceCount"] == "1" for c in gpu)
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all(s["secretName"] in ("bpm-s3-credentials", "bpm-openai") and s["optional"]
               for e in k8s.values() for s in e["secretAsEnv"])
    assert {e["tolerations"][0]["key"] for n, e in k8s.items() if "tolerations" in e} == {"nvidia.com/gpu"}


def test_bpm_submit_compile_only_writes_the_same_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: nightly\ncandidates: [{name: a, checkpoint: /ckpt/a}, {name: b, checkpoint: /ckpt/b}]\n")
    out = tmp_path / "deep" / "p.yaml"
    assert main(["submit", str(cfg), "--compile-only", str(out)]) == 0
    assert "compiled compare_checkpoints" in capsys.readouterr().err
    spec = next(yaml.safe_load_all(out.read_text()))
    assert spec["pipelineInfo"]["name"] == "bpm-compare-checkpoints" and "deploymentSpec" in spec
    assert out.read_bytes() == (HERE / "compare_checkpoints.yaml").read_bytes()
    import kfp.components

    loaded = kfp.components.load_component_from_file(str(out))  # KFP itself accepts it
    assert loaded.name == "bpm-compare-checkpoints"

    cfg.write_text("name: one\npipeline: checkpoint_eval\ncandidates: [{name: a, checkpoint: /ckpt/a}]\n")
    assert main(["submit", str(cfg), "--compile-only", str(out)]) == 0
    assert out.read_bytes() == (HERE / "checkpoint_eval.yaml").read_bytes()
    assert main(["submit", str(cfg)]) == 2
    assert "--host is required" in capsys.readouterr().err


@dataclass
class FakeRun:
    run_id: str


class FakeKfpClient:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def create_run_from_pipeline_func(self, pipeline_func: Any, **kwargs: Any) -> FakeRun:
        self.calls.append({"pipeline_func": pipeline_func, **kwargs})
        return FakeRun("run-123")


def test_submit_passes_the_config_to_the_kfp_client() -> None:
    from pipelines.checkpoint_eval import checkpoint_eval
    from pipelines.compare_checkpoints import compare_checkpoints

    config = replace(demo_config("nightly"), tracking=replace(demo_config().tracking, uri="http://mlflow.bpm:5000",
                                                              experiment="exp-1"))
    client = FakeKfpClient()
    run_id, url = submit(config, host="http://kfp.example:8888/", namespace="team-a", client=client)
    assert (run_id, url) == ("run-123", "http://kfp.example:8888/#/runs/details/run-123")
    (call,) = client.calls
    assert call["pipeline_func"] is compare_checkpoints
    assert call["arguments"] == pipeline_arguments(config, "http://mlflow.bpm:5000")
    assert call["arguments"]["tracking_uri"] == "http://mlflow.bpm:5000" and len(call["arguments"]["candidates"]) == 3
    assert call["experiment_name"] == "exp-1" and call["namespace"] == "team-a"
    assert call["service_account"] == "bpm-pipeline-runner"
    assert re.fullmatch(r"nightly-\d{8}-\d{6}", call["run_name"])

    single = replace(config, pipeline="checkpoint_eval", candidates=config.candidates[:1])
    submit(single, host="http://kfp", client=client)
    assert client.calls[1]["pipeline_func"] is checkpoint_eval
    assert isinstance(client.calls[1]["arguments"]["candidate"], str)  # CandidateConfig JSON
    assert client.calls[1]["namespace"] is None
