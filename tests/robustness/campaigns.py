"""A small finished campaign (demo set, tiny-random, reference-mask localizer, two
candidates) built through the pipeline steps, for the tracking, secrets and
fault-injection tests (the latter run it in a child process they kill)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import bpm_lib.runner.steps as steps
from bpm_lib.config import CandidateConfig
from bpm_lib.runner.cache import StageCache

CANDIDATES = ("well_edited", "over_preserved")


@dataclass(frozen=True)
class Campaign:
    results: Path
    evalset: Path
    editsets: tuple[Path, ...]


def build_campaign(root: Path, *, limit: int = 4, cache: StageCache | None = None,
                   aggregate: bool = True) -> Campaign:
    """Every step of compare_checkpoints over ``root``; ``cache`` None: no stage cache."""
    cache = cache if cache is not None else StageCache(enabled=False)
    ev, parsed, src = root / "evalset", root / "parsed", root / "source"
    steps.fetch_step("demo", ev, limit=limit, cache=cache)
    steps.parse_step(ev, parsed, preset="tiny-random", cache=cache)
    steps.localize_source_step(ev, parsed, src, preset="tiny-random", localizer="reference-mask", cache=cache)
    judged, editsets = [], []
    for name in CANDIDATES:
        es, el, jd = root / f"editset-{name}", root / f"edited-{name}", root / f"judged-{name}"
        cand = json.dumps(asdict(CandidateConfig(name=name, checkpoint=f"evalset:candidates/{name}")))
        steps.generate_step(ev, cand, es, cache=cache)
        steps.localize_edited_step(ev, parsed, src, es, el, preset="tiny-random", localizer="reference-mask",
                                   cache=cache)
        steps.judge_step(ev, parsed, src, el, es, jd, preset="tiny-random", cache=cache)
        judged.append(jd)
        editsets.append(es)
    if aggregate:
        steps.aggregate_step(ev, judged, editsets, root / "results", alpha=0.7, preset="tiny-random")
    return Campaign(root / "results", ev, tuple(editsets))


def expected_metrics(results: Path) -> dict[str, dict[str, float]]:
    """candidate → the mean metrics log_campaign logs for it (from summary.json)."""
    summary = json.loads((results / "summary.json").read_text())
    out: dict[str, dict[str, float]] = {}
    for cand, s in summary["candidates"].items():
        out[cand] = {f"{k}/mean": float(v) for k, v in (s.get("means") or {}).items() if v is not None}
        out[cand]["samples/scored"] = float(s["samples_scored"])
        out[cand]["samples/failed"] = float(s["samples_failed"])
    return out
