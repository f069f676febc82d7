"""Validation report: paper-style tables for BPM and baselines, α sweep, files, MLflow,
and the validate_metric components and pipeline (expected numbers: see fixtures.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from bpm_lib.cli import main
from bpm_lib.errors import CalibrationError, DataError
from bpm_lib.validation_report import (
    build_validation,
    parse_pairs,
    render_html,
    render_markdown,
    validation_metrics,
    write_validation_report,
)
from tests.validate import fixtures as fx

REPO = Path(__file__).resolve().parents[2]


def _items_with_partial_dino() -> list[dict]:
    items = fx.alignment_items()
    items[0]["edited_image1"]["dino"] = 0.9  # one entry only: left out, with a reason
    return items


def test_parse_pairs() -> None:
    assert parse_pairs(None) is None and parse_pairs("") is None and parse_pairs(" all ") is None
    assert parse_pairs("reference") == [(1, 2), (1, 3), (2, 3), (4, 3), (4, 2), (4, 1)]
    assert parse_pairs("1-2, 10-3") == [(1, 2), (10, 3)]
    with pytest.raises(ValueError, match="repeats"):
        parse_pairs("3-1,1-3")
    with pytest.raises(TypeError, match="pairs must be a string"):
        parse_pairs([(1, 2)])  # type: ignore[arg-type]


def test_build_validation_side_by_side() -> None:
    v = build_validation(_items_with_partial_dino())
    assert v["samples"] == 3 and v["global_items"] == 0 and v["candidates"] == [1, 2, 3, 4]
    assert v["rated_entries"] == 12 and v["pairs"] == ["1-2", "1-3", "1-4", "2-3", "2-4", "3-4"]
    assert v["normalization"] == fx.NORMALIZATION
    rows = {r["metric"]: r for r in v["alignment"]}
    assert list(rows) == ["bpm", "lpips"]  # BPM first, then the baselines present everywhere
    assert rows["bpm"]["pairs"] == pytest.approx(fx.EXPECTED_PAIRS)
    assert rows["bpm"]["mean"] == pytest.approx(13 / 18)
    assert rows["bpm"]["counts"]["1-2"] == {"agree": 1, "compared": 2}
    assert rows["lpips"]["pairs"] == pytest.approx(fx.EXPECTED_LPIPS_PAIRS)
    assert rows["lpips"]["mean"] == pytest.approx(2 / 3) and rows["lpips"]["higher_is_better"] is False
    gt = {r["metric"]: r for r in v["gt_test"]}
    assert gt["bpm"]["wins"] == {"1": 0, "2": 0, "3": 1, "4": 1} and gt["bpm"]["ties"] == 1
    assert gt["lpips"]["wins"] == {"1": 1, "2": 1, "3": 1, "4": 0} and gt["lpips"]["ties"] == 0
    sweep = {round(r["alpha"], 2): r["mean"] for r in v["alpha_sweep"]}
    assert list(sweep) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert sweep[0.0] == 0.0
    assert sweep[0.2] == pytest.approx(5 / 9) and sweep[0.5] == pytest.approx(23 / 36)
    assert sweep[0.7] == sweep[1.0] == pytest.approx(13 / 18)
    assert [round(a, 2) for a in v["best_alpha"]] == [0.6, 0.7, 0.8, 0.9, 1.0]
    (crit,) = v["criteria"]
    assert crit["score_key"] == "preservation" and crit["human_key"] == "user_preservation"
    assert crit["pairs"] == fx.EXPECTED_PRESERVATION_CRITERION and crit["mean"] == pytest.approx(0.6)
    assert v["skipped_metrics"] == {"dino": "a number in only 1 of 12 candidate entries"}
    assert v["meaningless"] == [] and v["notes"] == []
    json.dumps(v, allow_nan=False)  # JSON-ready


def test_build_validation_custom_pairs_sweep_and_bounds() -> None:
    v = build_validation(fx.alignment_items(), alpha=0.5, pairs=[(2, 4)], alphas=[0.5, 1.0],
                         normalization={"normalization": fx.NORMALIZATION})
    assert v["pairs"] == ["2-4"] and v["alignment"][0]["pairs"] == {"2-4": 0.5}
    assert [r["mean"] for r in v["alpha_sweep"]] == [0.5, 1.0] and v["best_alpha"] == [1.0]
    assert any("given explicitly" in n for n in v["notes"])
    with pytest.raises(ValueError, match="candidate 7"):
        build_validation(fx.alignment_items(), pairs=[(1, 7)])
    with pytest.raises(CalibrationError, match="edit_quality"):
        build_validation(fx.degenerate_items())
    with pytest.raises(DataError, match="user_overall_quality"):
        build_validation(fx.unrated_items())
    with pytest.raises(DataError, match="at least 2"):
        build_validation([fx.item(0, fx.entry(-0.5, 0.25, 1))], normalization=fx.NORMALIZATION)
    g = build_validation(fx.global_items(), normalization=fx.NORMALIZATION)
    assert g["global_items"] == 3 and g["alignment"][0]["pairs"] == {"1-2": 0.5}
    # every α gives the same: global items always use α = 1
    assert {r["mean"] for r in g["alpha_sweep"]} == {0.5}


def test_entries_a_rescore_could_not_score_are_left_out() -> None:
    items = fx.alignment_items()
    items[2]["edited_image4"] = {"image_path": "x.png", "user_overall_quality": 5, "rescore_error": "judge: boom"}
    v = build_validation(items)
    assert v["excluded_entries"] == {"2/edited_image4": "judge: boom"}
    assert "1 candidate entry that the rescore could not score" in v["notes"][0]
    # item 2 loses candidate 4 (its p = 0 and m = 0.5 were no bound): 1-4 keeps i0 ✓ i1 ✗ → 1/2,
    # 2-4 keeps i1 ✓ → 1, 3-4 keeps i0 ✓ i1 ✓ → 1; mean (1/2 + 2/3 + 1/2 + 1/2 + 1 + 1)/6 = 25/36
    bpm = v["alignment"][0]
    assert bpm["pairs"] == pytest.approx({**fx.EXPECTED_PAIRS, "1-4": 0.5})
    assert bpm["mean"] == pytest.approx(25 / 36)
    assert v["alignment"][1]["metric"] == "lpips"  # still in every remaining entry
    # item 2's top is now shared by candidates 2 and 3 (1.3 each)
    assert v["gt_test"][0]["wins"] == {"1": 0, "2": 0, "3": 1, "4": 0} and v["gt_test"][0]["ties"] == 2
    assert items[2]["edited_image4"]["rescore_error"] == "judge: boom"  # the input is not modified


def test_random_weight_values_are_flagged() -> None:
    items = fx.with_label(fx.alignment_items(), ["edit_quality", "lpips", "position", "preservation", "size"])
    v = build_validation(items)
    assert v["meaningless"] == ["edit_quality", "lpips", "position", "preservation", "size"]
    assert all(r["meaningless"] for r in v["alignment"]) and all(r["meaningless"] for r in v["gt_test"])
    assert v["criteria"][0]["meaningless"] is True
    assert "meaningless" in v["notes"][0]
    md = render_markdown(v)
    assert "**BPM** ↑ (random weights)" in md and "LPIPS ↓ (random weights)" in md
    assert "> **Note:** Random-weight backends" in md


def test_markdown_and_html_tables() -> None:
    v = build_validation(_items_with_partial_dino(), source={"path": "data/metadata.json", "sha256": "ab" * 32})
    md = render_markdown(v)
    assert "`data/metadata.json` (sha256 abababababab…): 3 items (0 global), candidates 1, 2, 3, 4" in md
    assert "| metric | 1-2 | 1-3 | 1-4 | 2-3 | 2-4 | 3-4 | mean |" in md
    assert "| **BPM** ↑ | 50.0 | 66.7 | 66.7 | 50.0 | 100.0 | 100.0 | 72.2 |" in md
    assert "| LPIPS ↓ | 100.0 | 66.7 | 66.7 | 50.0 | 50.0 | 66.7 | 66.7 |" in md
    assert "| metric | cand. 1 | cand. 2 | cand. 3 | cand. 4 | ties |" in md
    assert "| **BPM** ↑ | 0 (0.0) | 0 (0.0) | 1 (33.3) | 1 (33.3) | 1 (33.3) |" in md
    assert "| 0.50 | 63.9 | 50.0 | 66.7 | 66.7 | 50.0 | 50.0 | 100.0 |" in md
    assert "Best α: 0.6, 0.7, 0.8, 0.9, 1 (α used: 0.7)." in md
    assert "| preservation (−d) | user_preservation | 0.0 | 100.0 | – | 100.0 | 0.0 | 100.0 | 60.0 |" in md
    assert "- DINO: a number in only 1 of 12 candidate entries" in md
    assert "Items compared per pair (human ties left out): 1-2: 2, 1-3: 3" in md
    page = render_html(v, plot_png=b"\x89PNG fake")
    assert page.startswith("<!DOCTYPE html>") and "<td>BPM ↑</td>" in page
    assert '<td class=num>72.2</td>' in page and "data:image/png;base64," in page
    assert "<li>DINO: a number in only 1 of 12 candidate entries</li>" in page


def test_validation_metrics_names() -> None:
    m = validation_metrics(build_validation(fx.alignment_items()))
    assert m["alignment/bpm/mean"] == pytest.approx(13 / 18)
    assert m["alignment/lpips/1-2"] == 1.0 and m["alignment/bpm/2-4"] == 1.0
    assert m["gt_test/bpm/wins/3"] == 1.0 and m["gt_test/bpm/ties"] == 1.0
    assert m["criteria/preservation/mean"] == pytest.approx(0.6)
    assert m["alpha_sweep/mean_at_0.50"] == pytest.approx(23 / 36) and m["alpha_sweep/best_alpha"] == 0.6
    assert m["samples"] == 3.0


def test_report_cli_writes_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = fx.write_metadata(tmp_path / "in" / "metadata.json", _items_with_partial_dino())
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)
    out = tmp_path / "report"
    code = main(["validate", "report", "--metadata", str(path), "--out", str(out)])
    stdout, _ = capsys.readouterr()
    assert code == 0
    assert stdout.splitlines()[0] == "BPM human alignment (mean over 6 pairs): 72.2%; 1 baseline(s) compared"
    assert sorted(p.name for p in out.iterdir()) == ["alpha_sweep.png", "validation.html", "validation.json",
                                                    "validation.md"]
    saved = json.loads((out / "validation.json").read_text())
    assert saved["source"]["path"] == str(path) and len(saved["source"]["sha256"]) == 64
    expected = build_validation(_items_with_partial_dino(), source=saved["source"])
    assert saved == json.loads(json.dumps(expected))
    with Image.open(out / "alpha_sweep.png") as img:
        assert img.format == "PNG" and img.size[0] > 300
    assert "![α sweep](alpha_sweep.png)" in (out / "validation.md").read_text()
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before
    # --pairs reaches the report; a degenerate pool fails clearly; --out must be a folder
    assert main(["validate", "report", "--metadata", str(path), "--out", str(tmp_path / "r2"),
                 "--pairs", "reference"]) == 0
    assert json.loads((tmp_path / "r2" / "validation.json").read_text())["pairs"][3] == "4-3"
    flat = fx.write_metadata(tmp_path / "flat.json", fx.degenerate_items())
    capsys.readouterr()
    assert main(["validate", "report", "--metadata", str(flat), "--out", str(tmp_path / "r3")]) == 1
    assert "cannot normalise edit_quality" in capsys.readouterr().err
    assert main(["validate", "report", "--metadata", str(path), "--out", str(path)]) == 2
    assert "--out must be a folder" in capsys.readouterr().err
    assert main(["validate", "report", "--metadata", str(path), "--out", str(tmp_path / "r4"),
                 "--pairs", "1-9"]) == 2
    assert "--pairs: pair 1-9 names candidate 9" in capsys.readouterr().err


@pytest.mark.slow
def test_log_validation_to_mlflow(tmp_path: Path, mlflow_tracking) -> None:  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    from bpm_lib.validation_report import log_validation

    report = tmp_path / "report"
    write_validation_report(fx.with_label(fx.alignment_items(), ["lpips"]), report)
    run = log_validation(report, tracking_uri=mlflow_tracking.url, run_name="tab1",
                         params={"dataset": "hand-built", "api_key": "never-logged"})
    client = MlflowClient(tracking_uri=mlflow_tracking.url)
    got = client.get_run(run.run_id)
    assert client.get_experiment(got.info.experiment_id).name == "bpm-validation"
    assert got.info.status == "FINISHED" and got.info.run_name == "tab1"
    assert got.data.metrics["alignment/bpm/mean"] == pytest.approx(13 / 18)
    assert got.data.metrics["alignment/lpips/mean"] == pytest.approx(2 / 3)
    assert got.data.params["dataset"] == "hand-built" and "api_key" not in got.data.params
    assert got.data.params["pairs"] == "1-2,1-3,1-4,2-3,2-4,3-4"
    assert got.data.tags["bpm.kind"] == "validation" and got.data.tags["bpm.meaningless"] == "true"
    history = client.get_metric_history(run.run_id, "alpha_sweep/mean")
    assert sorted(h.step for h in history) == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert {h.step: h.value for h in history}[50] == pytest.approx(23 / 36)
    files = {f.path for f in client.list_artifacts(run.run_id, "report")}
    assert files == {"report/validation.json", "report/validation.md", "report/validation.html",
                     "report/alpha_sweep.png"}
    tables = {f.path for f in client.list_artifacts(run.run_id, "tables")}
    assert tables == {"tables/alignment.json", "tables/gt_test.json", "tables/alpha_sweep.json"}
    table = json.loads(Path(client.download_artifacts(run.run_id, "tables/alignment.json", str(tmp_path))).read_text())
    assert table["columns"][:7] == ["metric", "1-2", "1-3", "1-4", "2-3", "2-4", "3-4"]


# --------------------------------------------------------------------------- components and pipeline


def test_report_and_log_components(tmp_path: Path) -> None:
    from kfp import dsl

    from bpm_lib.io.datasets import fetch
    from components.validate import log_validation, rescore_metadata, validation_report

    src = fx.make_image_set(tmp_path / "annotated", 3)
    fetch(f"bpm-json:{src}", tmp_path / "evalset")
    rescored = dsl.Dataset(uri=str(tmp_path / "rescored"))
    # preset "": the published scores are validated as they are (no models needed)
    rescore_metadata.python_func(evalset=dsl.Dataset(uri=str(tmp_path / "evalset")), preset="", baselines="",
                                 baseline_options="", batch_size=4, rescored=rescored)
    assert rescored.metadata["entries"] == 9 and rescored.metadata["preset"] == ""
    report = dsl.Dataset(uri=str(tmp_path / "report"))
    metrics = dsl.Metrics(uri=str(tmp_path / "metrics"))
    page = dsl.HTML(uri=str(tmp_path / "page.html"))
    validation_report.python_func(rescored=rescored, alpha=0.7, pairs="", report=report, metrics=metrics, html=page)
    # published values order candidates 3 > 1 > 2 in every item, as the humans (5 > 2 > 1) do
    assert metrics.metadata["alignment/bpm/mean"] == 1.0
    assert metrics.metadata["gt_test/bpm/wins/3"] == 3.0
    assert (tmp_path / "page.html").read_text().startswith("<!DOCTYPE html>")
    saved = json.loads((tmp_path / "report" / "validation.json").read_text())
    assert saved["source"]["rescore"]["rescored"] is False
    assert log_validation.python_func(report=report, tracking_uri="", experiment="bpm-validation",
                                      run_name="x", params={}, pipeline_run_id="") == ""


@pytest.mark.slow
def test_pipeline_runs_locally_and_logs_to_mlflow(tmp_path: Path, mlflow_tracking,  # type: ignore[no-untyped-def]
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """kfp.local: fetch (bpm-json) → rescore (preset "": the published scores) → report → MLflow."""
    from kfp import local
    from kfp.local import config as local_config
    from mlflow import MlflowClient

    from pipelines.validate_metric import validate_metric

    monkeypatch.setenv("BPM_CACHE_DIR", str(tmp_path / "cache"))
    # kfp.local keeps a global session: undone after the test
    monkeypatch.setattr(local_config.LocalExecutionConfig, "instance", local_config.LocalExecutionConfig.instance)
    src = fx.make_image_set(tmp_path / "annotated", 3)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               workspace_root=str(tmp_path / "workspace"), raise_on_error=True)
    # the folder holding the one reference JSON file (the fetch step digests folders)
    task = validate_metric(dataset_source=f"bpm-json:{src.parent}", preset="", tracking_uri=mlflow_tracking.url,
                           run_name="local-run", params={"annotators": "hand-built"})
    report = Path(task.output.path)
    v = json.loads((report / "validation.json").read_text())
    assert v["samples"] == 3 and v["alignment"][0]["mean"] == 1.0  # published scores agree on every pair
    client = MlflowClient(tracking_uri=mlflow_tracking.url)
    exp = client.get_experiment_by_name("bpm-validation")
    runs = client.search_runs([exp.experiment_id], "attributes.run_name = 'local-run'")
    assert len(runs) == 1
    assert runs[0].data.metrics["alignment/bpm/mean"] == 1.0
    assert runs[0].data.params["annotators"] == "hand-built"
    assert runs[0].data.tags.get("bpm.pipeline_run_id")


def test_pipeline_compiles_to_the_committed_yaml(tmp_path: Path) -> None:
    import yaml
    from kfp import compiler

    from pipelines.validate_metric import validate_metric

    out = tmp_path / "validate_metric.yaml"
    compiler.Compiler().compile(validate_metric, str(out))
    committed = REPO / "pipelines" / "validate_metric.yaml"
    if os.environ.get("BPM_IMAGE"):
        pytest.skip("BPM_IMAGE changes the component image; the golden copy uses the default")
    assert out.read_text() == committed.read_text(), "run `python -m pipelines.compile` and commit the YAML"
    spec, platform = yaml.safe_load_all(out.read_text())  # pipeline spec + kubernetes platform spec
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"fetch-data", "rescore-metadata", "validation-report", "log-validation"}
    assert tasks["rescore-metadata"]["dependentTasks"] == ["fetch-data"]
    assert tasks["log-validation"]["dependentTasks"] == ["validation-report"]
    assert tasks["log-validation"]["cachingOptions"] == {}  # caching off: a new MLflow run each time
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["experiment"]["defaultValue"] == "bpm-validation"
    assert "defaultValue" not in params["dataset_source"]  # required
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-rescore-metadata"]["tolerations"][0]["key"] == "nvidia.com/gpu"  # runs models
    assert "tolerations" not in executors["exec-validation-report"]
