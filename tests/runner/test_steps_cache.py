"""Pipeline steps over artifact folders and their content cache (bpm_lib.runner.steps /
cache / campaign): hits and misses, resume after a killed step, aggregation."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

import bpm_lib.runner.steps as steps
from bpm_lib.config import CandidateConfig
from bpm_lib.runner.cache import META, StageCache, artifact_digest, read_meta, stage_key
from bpm_lib.runner.campaign import results_metrics
from bpm_lib.runner.stages import SOURCE_FILE, scores_file

PRESET = "tiny-random"
LOCALIZER = "reference-mask"  # real preservation numbers, no detector/segmenter to load
STAGES = ("fetch_data", "parse_instructions", "localize_source", "generate_edits", "localize_edited", "judge")


def _candidate(name: str) -> str:
    return json.dumps(asdict(CandidateConfig(name=name, checkpoint=f"evalset:candidates/{name}")))


@dataclass
class Chain:
    root: Path
    meta: dict[str, dict[str, Any]]


def run_chain(root: Path, candidate: str, cache: StageCache, limit: int = 4) -> Chain:
    """Every per-candidate step of compare_checkpoints, as the components call them."""
    ev, parsed, src = root / "evalset", root / "parsed", root / "source"
    es, el, jd = root / "editset", root / "edited", root / "judged"
    meta = {
        "fetch_data": steps.fetch_step("demo", ev, limit=limit, seed=0, cache=cache),
        "parse_instructions": steps.parse_step(ev, parsed, preset=PRESET, cache=cache),
        "localize_source": steps.localize_source_step(ev, parsed, src, preset=PRESET, localizer=LOCALIZER,
                                                      cache=cache),
        "generate_edits": steps.generate_step(ev, _candidate(candidate), es, cache=cache),
    }
    meta["localize_edited"] = steps.localize_edited_step(ev, parsed, src, es, el, preset=PRESET, localizer=LOCALIZER,
                                                         cache=cache)
    meta["judge"] = steps.judge_step(ev, parsed, src, el, es, jd, preset=PRESET, cache=cache)
    return Chain(root, meta)


@dataclass
class Runs:
    cache: StageCache
    first: Chain
    again: Chain
    other: Chain
    events: dict[str, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("steps")
    cache = StageCache(root / "cache" / "stages")
    phases: dict[str, list[dict[str, Any]]] = {}

    def phase(name: str, chain: Chain) -> Chain:
        seen = sum(len(v) for v in phases.values())
        phases[name] = list(cache.events())[seen:]
        return chain

    first = phase("first", run_chain(root / "first", "well_edited", cache))
    again = phase("again", run_chain(root / "again", "well_edited", cache))
    other = phase("other", run_chain(root / "other", "over_preserved", cache))
    return Runs(cache, first, again, other, phases)


def _hits(events: list[dict[str, Any]]) -> dict[str, bool]:
    return {e["stage"]: e["hit"] for e in events}


def test_first_run_computes_every_stage(runs: Runs) -> None:
    assert _hits(runs.events["first"]) == dict.fromkeys(STAGES, False)
    assert all(not m["cached"] for m in runs.first.meta.values())
    judge = runs.first.meta["judge"]
    assert judge["candidate"] == "well_edited" and judge["stats"]["computed"] + judge["stats"]["failed"] == 4
    assert runs.first.meta["localize_source"]["backend"]["name"] == LOCALIZER
    assert runs.first.meta["generate_edits"]["checkpoint"] == "evalset:candidates/well_edited"
    # Every stage's output records what produced it.
    for name, folder in (("parse_instructions", "parsed"), ("judge", "judged")):
        recorded = read_meta(runs.first.root / folder)
        assert recorded["stage"] == name and recorded["key"] == runs.first.meta[name]["key"]


def test_same_inputs_are_served_from_the_cache(runs: Runs) -> None:
    assert _hits(runs.events["again"]) == dict.fromkeys(STAGES, True)
    assert all(m["cached"] for m in runs.again.meta.values())
    for stage in STAGES:
        assert runs.again.meta[stage]["key"] == runs.first.meta[stage]["key"]
    name = scores_file("well_edited")
    assert (runs.again.root / "judged" / name).read_text() == (runs.first.root / "judged" / name).read_text()
    assert (runs.again.root / "source" / SOURCE_FILE).read_bytes() == (runs.first.root / "source" / SOURCE_FILE).read_bytes()


def test_another_candidate_reuses_only_the_source_side(runs: Runs) -> None:
    assert _hits(runs.events["other"]) == {
        "fetch_data": True, "parse_instructions": True, "localize_source": True,
        "generate_edits": False, "localize_edited": False, "judge": False,
    }
    assert runs.other.meta["judge"]["candidate"] == "over_preserved"


def test_a_changed_setting_misses(runs: Runs, tmp_path: Path) -> None:
    ev = runs.first.root / "evalset"
    meta = steps.parse_step(ev, tmp_path / "p", preset=PRESET, cache=runs.cache)
    assert meta["cached"] is True
    meta = steps.parse_step(ev, tmp_path / "p2", preset=PRESET, parser="rules", cache=runs.cache)
    # The preset's parser *is* rules with no arguments: the same spec, the same key.
    assert meta["cached"] is True
    meta = steps.fetch_step("demo", tmp_path / "ev3", limit=3, seed=0, cache=runs.cache)
    assert meta["cached"] is False and meta["count"] == 3


def test_a_killed_step_resumes_where_it_stopped(runs: Runs, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cache = StageCache(tmp_path / "cache" / "stages")
    ev, parsed = runs.first.root / "evalset", runs.first.root / "parsed"
    real = steps.run_localize_source

    def killed_after_two(samples, parsed_map, backend, work, **kw):  # type: ignore[no-untyped-def]
        real(samples[:2], parsed_map, backend, work, **kw)
        raise KeyboardInterrupt  # the process dies mid-stage

    monkeypatch.setattr(steps, "run_localize_source", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        steps.localize_source_step(ev, parsed, tmp_path / "out", preset=PRESET, localizer=LOCALIZER, cache=cache)
    assert not (tmp_path / "out" / META).exists()  # nothing half-finished is published
    monkeypatch.setattr(steps, "run_localize_source", real)
    meta = steps.localize_source_step(ev, parsed, tmp_path / "out", preset=PRESET, localizer=LOCALIZER, cache=cache)
    assert meta["cached"] is False
    assert (meta["stats"]["reused"], meta["stats"]["computed"]) == (2, 2)
    assert [e["hit"] for e in cache.events()] == [False, False]
    again = steps.localize_source_step(ev, parsed, tmp_path / "out2", preset=PRESET, localizer=LOCALIZER,
                                       cache=cache)
    assert again["cached"] is True and again["key"] == meta["key"]


def test_stage_cache_entries_and_events(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / "stages")
    out = tmp_path / "out"
    assert cache.restore("s", "k1", out) is False and not out.exists()
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "sub" / "a.txt").write_text("a")
    (work / META).write_text(json.dumps({"digest": "k1"}))
    cache.store("s", "k1", work)
    (work / "sub" / "a.txt").write_text("changed")
    cache.store("s", "k1", work)  # an existing entry is never overwritten
    assert cache.restore("s", "k1", out) is True
    assert (out / "sub" / "a.txt").read_text() == "a"
    assert [(e["stage"], e["key"], e["hit"]) for e in cache.events()] == [("s", "k1", False), ("s", "k1", True)]
    assert not list((tmp_path / "stages" / "s").glob(".k1.*"))  # no temp entry left behind

    off = StageCache(tmp_path / "off", enabled=False)
    off.store("s", "k1", work)
    assert off.restore("s", "k1", tmp_path / "o2") is False and list(off.events()) == []


def test_keys_and_digests() -> None:
    base = stage_key("judge", {"a": 1}, {"x": "d1"})
    assert base == stage_key("judge", {"a": 1}, {"x": "d1"}) and len(base) == 24
    assert base != stage_key("judge", {"a": 2}, {"x": "d1"})
    assert base != stage_key("judge", {"a": 1}, {"x": "d2"})
    assert base != stage_key("parse", {"a": 1}, {"x": "d1"})


def test_foreign_folders_are_digested_by_content(tmp_path: Path) -> None:
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "x.txt").write_text("one")
    d1 = artifact_digest(tmp_path / "f")
    assert d1 == artifact_digest(tmp_path / "f")
    (tmp_path / "f" / "x.txt").write_text("three")
    assert artifact_digest(tmp_path / "f") != d1
    (tmp_path / "f" / META).write_text(json.dumps({"digest": "recorded"}))
    assert artifact_digest(tmp_path / "f") == "recorded"  # a producing step's own digest wins


def test_aggregate_step(runs: Runs, tmp_path: Path) -> None:
    ev = runs.first.root / "evalset"
    judged = [runs.first.root / "judged", runs.other.root / "judged"]
    editsets = [runs.first.root / "editset", runs.other.root / "editset"]
    meta = steps.aggregate_step(ev, judged, editsets, tmp_path / "direct", alpha=0.7, preset=PRESET, cache=runs.cache)
    assert meta["candidates"] == ["well_edited", "over_preserved"] and meta["calibration_id"]
    summary = json.loads((tmp_path / "direct" / "summary.json").read_text())
    assert set(summary["candidates"]) == {"well_edited", "over_preserved"}
    assert summary["calibration"]["mode"] == "pool"
    for name in ("report.html", "scores.jsonl", "calibration.json", "plots/distributions.png",
                 "plots/bpm_by_edit_type.png", "plots/comparison.png"):
        assert (tmp_path / "direct" / name).stat().st_size > 0, name
    means = {c: s["means"] for c, s in summary["candidates"].items()}
    assert means["over_preserved"]["s_preserve"] == 0.0  # an unchanged copy preserves everything
    assert means["well_edited"]["s_preserve"] > 0.0  # resampling to the 500 frame blends the region border outward

    again = steps.aggregate_step(ev, judged, editsets, tmp_path / "again", alpha=0.7, preset=PRESET,
                                 cache=runs.cache)
    assert meta["cached"] is False and again["cached"] is True and again["key"] == meta["key"]
    assert (tmp_path / "again" / "summary.json").read_bytes() == (tmp_path / "direct" / "summary.json").read_bytes()
    other = steps.aggregate_step(ev, judged, editsets, tmp_path / "other", alpha=0.5, preset=PRESET,
                                 cache=runs.cache)
    assert other["cached"] is False  # another alpha: recomputed
    metrics = results_metrics(tmp_path / "direct")
    assert metrics["over_preserved.s_preserve_mean"] == 0.0 and metrics["well_edited.samples_scored"] == 4.0
    assert metrics["well_edited.bpm_mean"] == summary["candidates"]["well_edited"]["means"]["bpm"]

