"""Each Kubeflow component's ``python_func`` called directly on small inputs, with real
KFP artifact objects (Dataset / Metrics / HTML) pointing at temporary folders."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from kfp.dsl import HTML, Dataset, Metrics

from bpm_lib.config import CandidateConfig
from bpm_lib.runner.cache import read_meta
from bpm_lib.runner.stages import PARSED_FILE, SOURCE_FILE, edited_file, scores_file
from components.aggregate import aggregate, aggregate_one
from components.data import fetch_data
from components.generate import generate_edits
from components.judge import judge
from components.localize import localize_edited, localize_source
from components.parse import parse_instructions

PRESET = "tiny-random"
CANDIDATES = ("well_edited", "over_modified")


def _artifact(cls: type, root: Path, name: str) -> Any:
    return cls(name=name, uri=str(root / name), metadata={})


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("components")
    mp = pytest.MonkeyPatch()
    mp.setenv("BPM_CACHE_DIR", str(root / "cache"))
    try:
        out: dict[str, Any] = {"root": root}
        ev = _artifact(Dataset, root, "evalset")
        fetch_data.python_func(source="demo", limit=3, seed=1, stratify="", evalset=ev)
        parsed = _artifact(Dataset, root, "parsed")
        parse_instructions.python_func(evalset=ev, preset=PRESET, parser="", parsed=parsed)
        src = _artifact(Dataset, root, "source_loc")
        localize_source.python_func(evalset=ev, parsed=parsed, preset=PRESET, localizer="reference-mask",
                                    batch_size=2, source_loc=src)
        out.update(evalset=ev, parsed=parsed, source_loc=src, editsets=[], edited=[], judged=[])
        for name in CANDIDATES:
            es = _artifact(Dataset, root, f"editset-{name}")
            cand = CandidateConfig(name=name, checkpoint=f"evalset:candidates/{name}", seed=3)
            generate_edits.python_func(evalset=ev, candidate=json.dumps(asdict(cand)), tracking_uri="",
                                        editset=es)
            el = _artifact(Dataset, root, f"edited-{name}")
            localize_edited.python_func(evalset=ev, parsed=parsed, source_loc=src, editset=es, preset=PRESET,
                                        localizer="reference-mask", batch_size=2, edited_loc=el)
            jd = _artifact(Dataset, root, f"judged-{name}")
            judge.python_func(evalset=ev, parsed=parsed, source_loc=src, edited_loc=el, editset=es, preset=PRESET,
                              embedder="", batch_size=2, judged=jd)
            out["editsets"].append(es)
            out["edited"].append(el)
            out["judged"].append(jd)
        agg = (_artifact(Dataset, root, "results"), _artifact(Metrics, root, "metrics"), _artifact(HTML, root, "report"))
        aggregate.python_func(evalset=ev, judged=out["judged"], editsets=out["editsets"], results=agg[0],
                              metrics=agg[1], report=agg[2], **_agg_kwargs())
        out["aggregate"] = agg
        yield out
    finally:
        mp.undo()


def _agg_kwargs() -> dict[str, Any]:
    return {"alpha": 0.7, "calibration": "", "preset": PRESET, "campaign": "c", "tracking_uri": "",
            "experiment": "e", "params": {"k": 1}, "pipeline_run_id": "run-1"}


def test_fetch_data(outputs: dict[str, Any]) -> None:
    ev = outputs["evalset"]
    assert ev.metadata["count"] == 3 and ev.metadata["cached"] is False
    assert ev.metadata["dataset"] == "demo" and ev.metadata["dataset_digest"].startswith("sha256:")
    assert len((Path(ev.path) / "manifest.jsonl").read_text().splitlines()) == 3
    again = _artifact(Dataset, outputs["root"], "evalset-again")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BPM_CACHE_DIR", str(outputs["root"] / "cache"))
        fetch_data.python_func(source="demo", limit=3, seed=1, stratify="", evalset=again)
        assert again.metadata["cached"] is True and again.metadata["digest"] == ev.metadata["digest"]
        everything = _artifact(Dataset, outputs["root"], "evalset-all")
        fetch_data.python_func(source="demo", limit=0, seed=0, stratify="", evalset=everything)  # 0: no limit
    assert everything.metadata["count"] == 12


def test_parse_and_localize_source(outputs: dict[str, Any]) -> None:
    parsed, src = outputs["parsed"], outputs["source_loc"]
    assert parsed.metadata["cached"] is False and parsed.metadata["stats"]["computed"] == 3
    assert len((Path(parsed.path) / PARSED_FILE).read_text().splitlines()) == 3
    assert src.metadata["stats"]["computed"] == 3 and src.metadata["stats"]["failed"] == 0
    assert read_meta(src.path)["backend"]["name"] == "reference-mask"
    assert len((Path(src.path) / SOURCE_FILE).read_text().splitlines()) == 3


def test_candidate_components(outputs: dict[str, Any]) -> None:
    for name, es, el, jd in zip(CANDIDATES, outputs["editsets"], outputs["edited"], outputs["judged"], strict=True):
        assert es.metadata["candidate"] == name and es.metadata["cached"] is False
        assert read_meta(es.path)["settings"]["seed"] == 3  # an integer, as configured
        assert el.metadata["candidate"] == name and (Path(el.path) / edited_file(name)).exists()
        assert jd.metadata["candidate"] == name
        rows = [json.loads(x) for x in (Path(jd.path) / scores_file(name)).read_text().splitlines()]
        assert len(rows) == 3 and all(r["status"] == "ok" and r["candidate"] == name for r in rows)


def test_aggregate_over_all_candidates(outputs: dict[str, Any]) -> None:
    results, metrics, report = outputs["aggregate"]
    assert results.metadata["candidates"] == list(CANDIDATES) and results.metadata["calibration_id"]
    assert "mlflow_parent_run_id" not in results.metadata  # tracking_uri "" skips MLflow
    assert metrics.metadata["well_edited.samples_scored"] == 3.0
    assert set(metrics.metadata) >= {f"{c}.bpm_mean" for c in CANDIDATES}
    html = Path(report.path).read_text()
    assert html.startswith("<!DOCTYPE html>") and "well_edited" in html and "over_modified" in html
    summary = json.loads((Path(results.path) / "summary.json").read_text())
    assert set(summary["candidates"]) == set(CANDIDATES)


def test_aggregate_one(outputs: dict[str, Any]) -> None:
    root = outputs["root"]
    results, metrics, report = (_artifact(Dataset, root, "one"), _artifact(Metrics, root, "one-m"),
                                _artifact(HTML, root, "one-r"))
    aggregate_one.python_func(evalset=outputs["evalset"], judged=outputs["judged"][0], editset=outputs["editsets"][0],
                              results=results, metrics=metrics, report=report, **_agg_kwargs())
    assert results.metadata["candidates"] == ["well_edited"]
    assert set(json.loads((Path(results.path) / "summary.json").read_text())["candidates"]) == {"well_edited"}

    scores = [json.loads(x) for x in (Path(results.path) / "scores.jsonl").read_text().splitlines()]
    assert {r["candidate"] for r in scores} == {"well_edited"} and len(scores) == 3
    assert results.metadata["calibration_id"] != outputs["aggregate"][0].metadata["calibration_id"]  # its own pool


def test_component_bodies_stay_thin() -> None:
    """STYLE rule 5: a component reads its inputs, calls bpm_lib, writes its outputs."""
    import ast
    import inspect
    import textwrap

    for comp in (fetch_data, parse_instructions, localize_source, localize_edited, generate_edits, judge, aggregate,
                 aggregate_one):
        fn = ast.parse(textwrap.dedent(inspect.getsource(comp.python_func))).body[0]
        assert isinstance(fn, ast.FunctionDef)
        body = [n for n in fn.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        imports = [n for n in body if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert imports and all(isinstance(n, ast.ImportFrom) and (n.module or "").startswith("bpm_lib.")
                               for n in imports), comp.name
        assert len(body) <= 6, (comp.name, len(body))
