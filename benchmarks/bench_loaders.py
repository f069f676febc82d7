"""Throughput and peak memory of each dataset loader (``fetch`` into an EvalSet).

For each layout and each size (default 100 and 2,000 generated records, tiny images
except PIE-Bench, whose format fixes 512×512), the fixture generators of
``tests/fixtures/datasets.py`` write a dataset, then a fresh subprocess runs
:func:`bpm_lib.io.datasets.fetch` on it and reports wall time, rows/s and ``ru_maxrss``
the resident memory right before the fetch and its peak during the fetch (sampled every
5 ms; ``ru_maxrss`` alone is useless here because the imports set a higher mark). The
``Δ peak`` column is the growth caused by fetching: it must not grow with the number of
records.

    .venv/bin/python benchmarks/bench_loaders.py                 # all layouts, 100 and 2000
    .venv/bin/python benchmarks/bench_loaders.py --sizes 100 500 --layouts pie-bench
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZE = (64, 48)


def _makers() -> dict[str, Callable[[Path, int], str]]:
    from tests.fixtures import datasets as fx

    return {
        "magicbrush-parquet": lambda d, n: f"magicbrush:{fx.make_magicbrush_parquet(d / 'data' / 'x.parquet', n, size=SIZE)}",
        "magicbrush-folder": lambda d, n: f"magicbrush:{fx.make_magicbrush_folder(d, n, size=SIZE)}",
        "pie-bench": lambda d, n: f"pie-bench:{fx.make_piebench(d, n)}",
        "bpm-json": lambda d, n: f"bpm-json:{fx.make_bpm_json(d, n, k=4, size=SIZE)}",
        "jsonl": lambda d, n: f"jsonl:{fx.make_manifest(d, n, size=SIZE)}",
    }


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


class _RssSampler(threading.Thread):
    """Samples the current RSS every 5 ms: the peak *during* the fetch (ru_maxrss is a
    process-lifetime high-water mark that the imports may already have set)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _rss_mib()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.005):
            self.peak = max(self.peak, _rss_mib())

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return max(self.peak, _rss_mib())


def worker(source: str, out: str) -> None:
    """Runs in a fresh process: import everything, then fetch and report."""
    import numpy  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import tqdm  # noqa: F401
    from PIL import Image  # noqa: F401

    from bpm_lib.io.datasets import DATASETS, fetch, parse_source
    from bpm_lib.io.images import load_rgb  # noqa: F401

    name, _ = parse_source(source)
    DATASETS.create(name or "jsonl")  # imports the loader module before the baseline
    before = _rss_mib()
    sampler = _RssSampler()
    sampler.start()
    start = time.perf_counter()
    info = fetch(source, Path(out))
    seconds = time.perf_counter() - start
    peak = sampler.stop()
    print(json.dumps({"count": info.count, "skipped": len(info.skipped), "seconds": seconds,
                      "rss_before_mib": before, "rss_peak_mib": peak, "maxrss_mib": _maxrss_mib()}))


def measure(layout: str, n: int, tmp: Path) -> dict[str, float | int | str]:
    src_dir = tmp / f"{layout}-{n}"
    t0 = time.perf_counter()
    source = _makers()[layout](src_dir, n)
    gen_seconds = time.perf_counter() - t0
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", source, str(tmp / f"out-{layout}-{n}")],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{layout} n={n} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update({"layout": layout, "n": n, "gen_seconds": gen_seconds,
                   "rows_per_s": result["count"] / result["seconds"]})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 2000])
    parser.add_argument("--layouts", nargs="+", default=list(_makers()), choices=list(_makers()))
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--worker", nargs=2, metavar=("SOURCE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    rows = []
    header = f"{'layout':<20}{'n':>6}{'rows/s':>10}{'fetch s':>10}{'RSS before MiB':>16}{'RSS peak MiB':>14}{'Δ peak MiB':>12}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="bench-loaders-") as tmp:
        for layout in args.layouts:
            for n in args.sizes:
                r = measure(layout, n, Path(tmp))
                rows.append(r)
                delta = float(r["rss_peak_mib"]) - float(r["rss_before_mib"])
                print(f"{layout:<20}{n:>6}{r['rows_per_s']:>10.1f}{r['seconds']:>10.2f}"
                      f"{r['rss_before_mib']:>16.1f}{r['rss_peak_mib']:>14.1f}{delta:>12.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
