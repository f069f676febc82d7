"""The Kubeflow pipeline through ``kfp.local`` against the same steps in one process.

On the same campaign (the bundled demo set, 12 samples × 3 candidates; full mode also a
generated 96 × 2 set), tracking and every cache off, each run a fresh ``bpm run``
process, as a user runs it:

* ``bpm run`` (:func:`bpm_lib.runner.local.run_local`: ``kfp.local.SubprocessRunner``,
  one new Python process per task) vs ``bpm run --in-process``
  (:func:`~bpm_lib.runner.local.run_in_process`: the same steps, one process). The ratio
  of their wall times is the orchestration overhead; target at most 1.5×. Runs alternate
  and the best of each is kept.
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


def run(quick: bool = False) -> list[Figure]:
    rounds = 1 if quick else 2
    figures = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        base = Path(tmp)
        demo = write_config(campaign(quick), base / "demo.yaml")
        campaigns = [("demo" + (" (4 samples, 1 candidate)" if quick else " (12 samples x 3)"), demo)]
        if not quick:
            generated = generated_campaign(base / "generated-set", 96, 2)
            campaigns.append(("generated (96 samples x 2)", write_config(generated, base / "generated.yaml")))
        for label, config in campaigns:
            res = compare(config, base / config.stem, rounds)
            ratio = res["kfp-local"] / res["in-process"]
            figures += [
                Figure("pipeline", f"bpm run --in-process, {label}", res["in-process"], "s",
                       detail=f"scored {res['scored']['in-process']}", extra=res),
                Figure("pipeline", f"bpm run (kfp.local), {label}", res["kfp-local"], "s",
                       detail=f"scored {res['scored']['kfp-local']}"),
                Figure("pipeline", f"kfp.local / in-process, {label}", ratio, "x", f"<= {OVERHEAD_TARGET:g}x",
                       ratio <= OVERHEAD_TARGET,
                       f"fresh processes, tracking off, caches off, best of {rounds}; every kfp.local task is a "
                       "new Python process that imports kfp, torch, transformers/open_clip and builds its "
                       "models again, which the in-process run does once"),
            ]
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
