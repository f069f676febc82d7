"""``python -m benchmarks``: run the benchmark suite and print one table (``make bench``).

Suites (``--only NAME``, repeatable):

  runner        source-side work = N for N samples x K candidates, image decodes, resumed re-run
  judge         judge-stage and embedder throughput at batch 1, 16, 32
  preservation  preservation_distance pairs/s against plain numpy
  memory        peak RSS of ``bpm score`` on 50 vs 500 samples
  pipeline      kfp.local vs in-process campaign, cached re-run
  gpu           the paper's architectures (random weights): throughput and fraction of
                bf16 peak; runs by default only where CUDA is available (elsewhere
                ``--only gpu`` runs the tiny CPU smoke path, whose numbers mean nothing)

``--quick`` uses tiny sizes and one pass (a smoke run, about a minute or two);
``--json FILE`` also writes every figure with its details. Exit status 1 when a suite
failed to run; a missed target is shown in the table but is not a failure (``--check``
makes it one).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import Figure, figure_table

log = logging.getLogger("benchmarks")

Suite = Callable[[bool], list[Figure]]


def _runner(quick: bool) -> list[Figure]:
    from benchmarks.bench_runner import run_counts

    return run_counts(quick)


def _judge(quick: bool) -> list[Figure]:
    from benchmarks.bench_runner import run_throughput

    return run_throughput(quick)


def _preservation(quick: bool) -> list[Figure]:
    from benchmarks.bench_runner import run_preservation

    return run_preservation(quick)


def _memory(quick: bool) -> list[Figure]:
    from benchmarks.bench_memory import run

    return run(quick)


def _pipeline(quick: bool) -> list[Figure]:
    from benchmarks.bench_pipeline import run

    return run(quick)


def _gpu(quick: bool) -> list[Figure]:
    from benchmarks.bench_gpu import suite_figures

    return suite_figures(quick)


SUITES: dict[str, Suite] = {
    "runner": _runner,
    "judge": _judge,
    "preservation": _preservation,
    "memory": _memory,
    "pipeline": _pipeline,
    "gpu": _gpu,
}


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def default_suites() -> list[str]:
    names = [n for n in SUITES if n != "gpu"]
    return [*names, "gpu"] if _cuda_available() else names


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "load_average": list(load) if load else None, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one pass (smoke run)")
    parser.add_argument("--only", action="append", choices=list(SUITES), metavar="NAME",
                        help=f"run only this suite (repeatable): {', '.join(SUITES)}")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    names = args.only or default_suites()
    figures: list[Figure] = []
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    for name in names:
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            figures.extend(SUITES[name](args.quick))
        except Exception as e:  # one broken suite must not hide the others' figures
            errors[name] = f"{type(e).__name__}: {e}"
            traceback.print_exc(file=sys.stderr)
        timings[name] = round(time.perf_counter() - t0, 2)
    print("\n" + figure_table(figures))  # a fresh line: kfp.local may leave its progress line open
    for name, error in errors.items():
        print(f"suite {name} FAILED: {error}")
    if args.json:
        payload = {"quick": args.quick, "suites": names, "seconds": timings, "errors": errors,
                   "machine": machine(), "figures": [f.to_dict() for f in figures]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    if errors:
        return 1
    if args.check and any(f.met is False for f in figures):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
