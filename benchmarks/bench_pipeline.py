"""The Kubeflow pipeline through ``kfp.local`` against the same steps in one process.

On the same campaign (the bundled demo set, 12 samples × 3 candidates; full mode also
generated 48 × 2 and 240 × 2 sets), tracking and every cache off, each run a fresh ``bpm run``
process, as a user runs it:

* ``bpm run`` (:func:`bpm_lib.runner.local.run_local`: ``kfp.local.SubprocessRunner``,
  one new Python process per task) vs ``bpm run --in-process``
  (:func:`~bpm_lib.runner.local.run_in_process`: the same steps, one process). The ratio
  of their wall times is the orchestration overhead; target at most 1.5×. Runs alternate
  and the best of each is kept.
* Fixed and per-sample cost: two generated sets (48 and 240 samples × 2 candidates)
  give each mode's time as fixed + per-sample; the per-sample ratio is what the pipeline
  adds as the data grows (target at most 1.5×), and the sample count from which the
  whole run is within 1.5× follows from both.
* A cached re-run: the same command twice on one ``--root`` with the caches on; the
  second run must take at most 10 % of the first.

``--quick`` runs the single-candidate ``checkpoint_eval`` pipeline on 4 demo samples,
once each, and only the in-process re-run. Run on its own:
``python -m benchmarks.bench_pipeline [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import Figure, figure_table

ROOT = Path(__file__).resolve().parents[1]

OVERHEAD_TARGET = 1.5
RERUN_TARGET = 0.10
SIZES = (48, 240)  # generated sets (x 2 candidates) for the fixed + per-sample split


def campaign(quick: bool) -> Any:
    """The demo campaign; quick: one candidate on 4 samples (checkpoint_eval pipeline)."""
    from bpm_lib.config import DatasetConfig, demo_config

    config = demo_config("bench-pipeline")
    if quick:
        config = replace(config, dataset=DatasetConfig(source="demo", limit=4), candidates=config.candidates[:1],
                         pipeline="checkpoint_eval")
    return config


def generated_campaign(root: Path, n: int, k: int) -> Any:
    """A campaign over a generated ``jsonl:`` set of ``n`` samples and ``k`` precomputed
    candidates (tiny-random preset): per-task start-up is the same as on the demo, the
    work grows with ``n``."""
    from benchmarks import make_scoring_set
    from bpm_lib.config import CandidateConfig, DatasetConfig, RunConfig

    data = make_scoring_set(root, n, candidates=[f"cand{c}" for c in range(k)], size=(256, 192))
    return RunConfig(
        name=f"bench-generated-{n}", dataset=DatasetConfig(source=f"jsonl:{data.manifest}"), preset="tiny-random",
        candidates=tuple(CandidateConfig(name=c, editor="precomputed", checkpoint=str(folder))
                         for c, folder in data.candidate_dirs.items()),
    )


def write_config(config: Any, path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(json.loads(json.dumps(config.to_dict())), sort_keys=False), encoding="utf-8")
    return path


def bpm_run(config: Path, root: Path, *, in_process: bool, cache: bool) -> tuple[float, dict[str, Any]]:
    """Wall seconds of a fresh ``bpm run CONFIG`` process (tracking off) and its --json result."""
    from benchmarks.bench_memory import bpm_command

    args = [*bpm_command(), "run", str(config), "--root", str(root), "--no-tracking", "--json"]
    args += ["--in-process"] if in_process else []
    args += [] if cache else ["--no-cache"]
    env = {k: v for k, v in os.environ.items() if k != "BPM_CACHE_DIR"}  # caches under --root
    env["HF_HUB_OFFLINE"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[-7:])} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    start = proc.stdout.find('{\n  "results"')  # kfp.local may print before the JSON
    result, _ = json.JSONDecoder().raw_decode(proc.stdout[start:] if start >= 0 else proc.stdout)
    return seconds, result


def _scored(result: dict[str, Any]) -> int:
    return sum(int(c.get("samples_scored", 0)) for c in result["summary"]["candidates"].values())


def compare(config: Path, base: Path, rounds: int) -> dict[str, Any]:
    """Best wall time of ``bpm run --in-process`` and ``bpm run`` (kfp.local), each a fresh
    process, tracking and caches off, alternating."""
    times: dict[str, list[float]] = {"in-process": [], "kfp-local": []}
    scored: dict[str, int] = {}
    for r in range(rounds):
        for mode in ("in-process", "kfp-local"):
            seconds, result = bpm_run(config, base / f"{mode}-{r}", in_process=mode == "in-process", cache=False)
            times[mode].append(seconds)
            scored[mode] = _scored(result)
    return {"in-process": min(times["in-process"]), "kfp-local": min(times["kfp-local"]), "scored": scored,
            "times": times}


def task_count(config: Any) -> int:
    """KFP tasks of a campaign: fetch, parse, localize(source), generate + localize(edited)
    + judge per candidate, aggregate."""
    return 3 + 3 * len(config.candidates) + 1


def fixed_and_marginal(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(fixed seconds, seconds per sample) of the line through the smallest and the
    largest (samples, seconds) point."""
    (n0, t0), (n1, t1) = min(points), max(points)
    slope = (t1 - t0) / (n1 - n0)
    return t0 - slope * n0, slope


def break_even(fixed: dict[str, float], slope: dict[str, float], target: float) -> float | None:
    """Smallest sample count from which kfp.local takes at most ``target`` × the
    in-process time (None if its per-sample cost alone is above the target)."""
    if slope["kfp-local"] >= target * slope["in-process"]:
        return None
    return max(0.0, (fixed["kfp-local"] - target * fixed["in-process"])
               / (target * slope["in-process"] - slope["kfp-local"]))


def run(quick: bool = False) -> list[Figure]:
    rounds = 1 if quick else 2
    figures = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        base = Path(tmp)
        demo_config = campaign(quick)
        demo = write_config(demo_config, base / "demo.yaml")
        campaigns = [("demo" + (" (4 samples, 1 candidate)" if quick else " (12 samples x 3)"), demo,
                      demo_config, None)]
        if not quick:
            for n in SIZES:
                generated = generated_campaign(base / f"generated-set-{n}", n, 2)
                campaigns.append((f"generated ({n} samples x 2)", write_config(generated, base / f"generated-{n}.yaml"),
                                  generated, n))
        sized: dict[str, list[tuple[int, float]]] = {"in-process": [], "kfp-local": []}
        for label, config, cfg, n in campaigns:
            res = compare(config, base / config.stem, rounds)
            ratio = res["kfp-local"] / res["in-process"]
            tasks = task_count(cfg)
            per_task = (res["kfp-local"] - res["in-process"]) / tasks
            figures += [
                Figure("pipeline", f"bpm run --in-process, {label}", res["in-process"], "s",
                       detail=f"scored {res['scored']['in-process']}", extra=res),
                Figure("pipeline", f"bpm run (kfp.local), {label}", res["kfp-local"], "s",
                       detail=f"scored {res['scored']['kfp-local']}; {tasks} tasks, "
                              f"{per_task:.2f} s more than in-process per task"),
                Figure("pipeline", f"kfp.local / in-process, {label}", ratio, "x", f"<= {OVERHEAD_TARGET:g}x",
                       ratio <= OVERHEAD_TARGET,
                       f"fresh processes, tracking off, caches off, best of {rounds}; every kfp.local task is a "
                       "new Python process that imports kfp and torch with transformers (GroundingDINO, SAM) "
                       "or open_clip (which imports torchvision) and builds its models again: 4-5 s a task "
                       "that the in-process run pays once, and does not grow with the data (next rows)",
                       extra={"tasks": tasks, "per_task_s": per_task}),
            ]
            if n is not None:
                for mode in sized:
                    sized[mode].append((n, res[mode]))
        if not quick:
            fixed, slope = {}, {}
            for mode, points in sized.items():
                fixed[mode], slope[mode] = fixed_and_marginal(points)
            marginal = slope["kfp-local"] / slope["in-process"]
            n_even = break_even(fixed, slope, OVERHEAD_TARGET)
            lo, hi = min(SIZES), max(SIZES)
            figures += [
                Figure("pipeline", "fixed cost (kfp.local - in-process), 2 candidates",
                       fixed["kfp-local"] - fixed["in-process"], "s",
                       detail=f"intercept of the time over {lo} and {hi} samples: in-process {fixed['in-process']:.1f} s, "
                              f"kfp.local {fixed['kfp-local']:.1f} s (process start, imports, model builds per task)"),
                Figure("pipeline", f"marginal kfp.local / in-process, {lo} -> {hi} samples x 2", marginal, "x",
                       f"<= {OVERHEAD_TARGET:g}x", marginal <= OVERHEAD_TARGET,
                       f"seconds per added sample: in-process {1000 * slope['in-process']:.0f} ms, kfp.local "
                       f"{1000 * slope['kfp-local']:.0f} ms: the pipeline adds no per-sample work (artifacts are "
                       "folders passed by path, each image decoded once per task)",
                       extra={"fixed": fixed, "slope": slope}),
            ]
            if n_even is not None:  # None: the per-sample ratio alone is above the target (the row above)
                figures.append(Figure(
                    "pipeline", "samples x 2 candidates from which kfp.local <= 1.5x in-process", n_even, "samples",
                    detail="from the fixed and per-sample costs above; below it the per-task start-up dominates"))
        cached = {}
        for mode in ("in-process",) if quick else ("in-process", "kfp-local"):
            root = base / f"cached-{mode}"
            first, _ = bpm_run(demo, root, in_process=mode == "in-process", cache=True)
            again, result = bpm_run(demo, root, in_process=mode == "in-process", cache=True)
            cached[mode] = (first, again, _scored(result))
    for mode, (first, again, n_scored) in cached.items():
        what = "stage cache" if mode == "in-process" else "KFP task cache + stage cache"
        figures.append(Figure("pipeline", f"cached re-run / first run ({mode})", again / first, "ratio",
                              f"<= {RERUN_TARGET:.2f}", again / first <= RERUN_TARGET,
                              f"demo, fresh processes, {what}: first {first:.1f} s, re-run {again:.1f} s; "
                              f"scored {n_scored}"))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="checkpoint_eval on 4 demo samples, one pass")
    args = parser.parse_args(argv)
    print(figure_table(run(args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
