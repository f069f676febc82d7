"""Peak memory of ``bpm score`` as the number of samples grows (streaming check).

Generates two scoring sets (default 50 and 500 samples of 320×240 noise images with
reference masks), runs the real ``bpm score`` command on each in a fresh subprocess
(reference-mask localizer, tiny-random embedder) and reads that child's peak resident
set size (``ru_maxrss`` from ``os.wait4``). Images must not be retained and the image
cache is bounded, so the peak must not grow with the number of samples: the target is
at most 10 % growth from the small set to the large one. The per-sample records the
stages keep (scores, localizations) are small and are what growth remains.

Run on its own: ``python -m benchmarks.bench_memory [--quick] [--sizes 50 500]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import Figure, figure_table, make_scoring_set

GROWTH_TARGET = 0.10
ROOT = Path(__file__).resolve().parents[1]


def bpm_command() -> list[str]:
    """The installed ``bpm`` console script beside this interpreter, else the same entry
    point through ``python -c``."""
    script = Path(sys.executable).with_name("bpm")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from bpm_lib.cli import main_entry; main_entry()"]


def score_peak(n: int, tmp: Path, *, size: tuple[int, int], batch_size: int = 16) -> dict[str, Any]:
    """Run ``bpm score`` on ``n`` generated samples; return its peak RSS (MiB), time, counts."""
    data = make_scoring_set(tmp / f"set-{n}", n, size=size)
    out = tmp / f"out-{n}"
    args = [*bpm_command(), "score", "--manifest", str(data.manifest), "--out", str(out), "--preset", "tiny-random",
            "--localizer", "reference-mask", "--embedder", "tiny-random", "--batch-size", str(batch_size),
            "--no-progress", "--allow-errors"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BPM_CACHE_DIR": str(tmp / "cache")}
    log_path = tmp / f"score-{n}.log"
    t0 = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"bpm score on {n} samples exited {proc.returncode}:\n{log_path.read_text()[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    cand = next(iter(summary["candidates"].values()))
    shutil.rmtree(data.root, ignore_errors=True)
    return {"n": n, "maxrss_mib": usage.ru_maxrss / 1024.0, "seconds": seconds,
            "scored": cand["samples_scored"], "failed": cand["samples_failed"]}


def run(quick: bool = False, sizes: tuple[int, int] | None = None) -> list[Figure]:
    small, large = sizes or ((10, 40) if quick else (50, 500))
    size = (64, 48) if quick else (320, 240)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        a = score_peak(small, Path(tmp), size=size)
        b = score_peak(large, Path(tmp), size=size)
    growth = b["maxrss_mib"] / a["maxrss_mib"] - 1.0
    per_100 = (b["maxrss_mib"] - a["maxrss_mib"]) / (large - small) * 100
    detail = (f"bpm score, reference-mask + tiny-random, {size[0]}x{size[1]} images; "
              f"{b['scored']}/{large} scored in {b['seconds']:.1f} s; {per_100:+.2f} MiB per 100 samples")
    return [
        Figure("memory", f"peak RSS, {small} samples", a["maxrss_mib"], "MiB", detail=f"{a['seconds']:.1f} s",
               extra=a),
        Figure("memory", f"peak RSS, {large} samples", b["maxrss_mib"], "MiB", extra=b),
        Figure("memory", f"peak RSS growth {small} -> {large}", growth * 100, "%", f"<= {GROWTH_TARGET:.0%}",
               growth <= GROWTH_TARGET, detail),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 and 40 tiny samples")
    parser.add_argument("--sizes", type=int, nargs=2, metavar=("SMALL", "LARGE"), default=None)
    args = parser.parse_args(argv)
    print(figure_table(run(args.quick, tuple(args.sizes) if args.sizes else None)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
