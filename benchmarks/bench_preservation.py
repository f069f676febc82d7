"""Throughput of :func:`bpm_lib.judges.preservation_distance` on 500×500 image pairs.

Compares the library function with a straightforward float64 numpy version of the same
formula and checks that both agree. Run from the repository root::

    .venv/bin/python benchmarks/bench_preservation.py [--seconds 2] [--pairs 8]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from bpm_lib.judges import preservation_distance

FRAME = 500


def baseline_distance(
    source: np.ndarray, edited: np.ndarray, edit_mask: np.ndarray | None
) -> float:
    """The formula written plainly: float64 difference, channel mean, sqrt, masked mean."""
    diff = source.astype(np.float64) - edited.astype(np.float64)
    per_pixel = np.sqrt((diff**2).mean(axis=-1))
    keep = np.ones(per_pixel.shape, dtype=bool) if edit_mask is None else ~edit_mask
    return float(per_pixel[keep].mean() / 255.0)


def _rate(
    fn: Callable[..., float],
    pairs: list[tuple[np.ndarray, np.ndarray]],
    mask: np.ndarray | None,
    seconds: float,
) -> float:
    fn(pairs[0][0], pairs[0][1], mask)  # warm-up
    done = 0
    start = time.perf_counter()
    while True:
        for a, b in pairs:
            fn(a, b, mask)
        done += len(pairs)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="time per measurement (default 2)"
    )
    parser.add_argument(
        "--pairs", type=int, default=8, help="distinct random pairs cycled through (default 8)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    pairs = [
        (
            rng.integers(0, 256, (FRAME, FRAME, 3), dtype=np.uint8),
            rng.integers(0, 256, (FRAME, FRAME, 3), dtype=np.uint8),
        )
        for _ in range(args.pairs)
    ]
    masks: dict[str, np.ndarray | None] = {"no mask": None}
    box = np.zeros((FRAME, FRAME), dtype=bool)
    box[100:300, 150:400] = True  # 20 % of the frame
    masks["box mask (20 %)"] = box
    masks["random mask (50 %)"] = rng.random((FRAME, FRAME)) < 0.5

    print(f"preservation_distance on {FRAME}x{FRAME} uint8 pairs, {args.seconds:.1f} s per cell")
    print(
        f"{'mask':<20} {'bpm_lib pairs/s':>16} {'float64 pairs/s':>16} {'speed-up':>9} {'max |diff|':>11}"
    )
    for name, mask in masks.items():
        worst = max(
            abs(preservation_distance(a, b, mask) - baseline_distance(a, b, mask)) for a, b in pairs
        )
        fast = _rate(preservation_distance, pairs, mask, args.seconds)
        slow = _rate(baseline_distance, pairs, mask, args.seconds)
        print(f"{name:<20} {fast:>16.1f} {slow:>16.1f} {fast / slow:>8.2f}x {worst:>11.2e}")


if __name__ == "__main__":
    main()
