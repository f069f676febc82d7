"""Images per second of the ``tiny-random`` embedder at batch size 1 vs 32.

Batching should pay: the target is at least 4× the batch-1 throughput at batch 32.
Two input sizes are timed: the model's own input size (32×32: preprocessing is nearly
free, so the table shows what batching does for the model) and 224×224 (preprocessing
with PIL's antialiased bicubic resize, which is per image and cannot batch, dominates a
model this small; ``preprocess_workers`` threads are what help there).

Run: ``.venv/bin/python benchmarks/bench_embedder.py [--images 256] [--sizes 32,224]``;
``--check`` exits 1 when the target is missed at the first size. Timings are the best of
``--repeats`` interleaved passes, which is robust on a shared machine; compare ratios,
not absolute numbers, across machines.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from PIL import Image


def make_images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB") for _ in range(n)]


def measure(
    batch_sizes: list[int],
    images: list[Image.Image],
    repeats: int,
    device: str,
    workers: int | None,
    clock: str = "wall",
) -> dict[int, float]:
    """Best images/s per batch size; passes alternate between batch sizes.

    ``clock="cpu"`` divides by the process's CPU time instead of wall time: robust on a
    busy machine, but it counts every thread, so use it with one torch thread and one
    preprocessing worker (it measures work done, not latency)."""
    from bpm_lib.backends.clip import TinyRandomEmbedder

    embedders = {
        bs: TinyRandomEmbedder(seed=0, device=device, batch_size=bs, preprocess_workers=workers) for bs in batch_sizes
    }
    for emb in embedders.values():
        emb.encode_images(images[: emb.batch_size])  # load + warm up
    timer = time.process_time if clock == "cpu" else time.perf_counter
    best = dict.fromkeys(batch_sizes, 0.0)
    for _ in range(repeats):
        for bs, emb in embedders.items():
            start = timer()
            emb.encode_images(images)
            best[bs] = max(best[bs], len(images) / max(timer() - start, 1e-9))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="images per timed pass (default 256)")
    parser.add_argument("--sizes", default="32,224", help="comma-separated input image sides (default 32,224)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per batch size; best is kept (default 5)")
    parser.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes (default 1,32)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument(
        "--workers", type=int, default=0, help="preprocessing threads per batch (default: the embedder's choice)"
    )
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="wall time, or process CPU time (busy machines)"
    )
    parser.add_argument("--target", type=float, default=4.0, help="speed-up wanted at the largest batch (default 4)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed at the first size")
    args = parser.parse_args(argv)

    import torch

    from bpm_lib.backends.device import pick_device

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    batch_sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    workers = args.workers or None
    print(
        f"tiny-random embedder: {args.images} images per pass, best of {args.repeats}, device={device}, "
        f"torch threads={torch.get_num_threads()}, preprocess workers={workers or 'auto'}, clock={args.clock}"
    )
    print(f"{'input':>8} {'batch':>6} {'images/s':>10} {'speed-up':>9}")
    speedups = []
    for size in sizes:
        rates = measure(batch_sizes, make_images(args.images, size), args.repeats, device, workers, args.clock)
        base = rates[batch_sizes[0]]
        for bs in batch_sizes:
            print(f"{size:>4}x{size:<3} {bs:>6} {rates[bs]:>10.1f} {rates[bs] / base:>8.2f}x")
        speedups.append(rates[batch_sizes[-1]] / base)
    for size, speedup in zip(sizes, speedups, strict=True):
        verdict = "met" if speedup >= args.target else "MISSED"
        print(f"target >= {args.target:g}x at batch {batch_sizes[-1]}, {size}x{size} input: {verdict} ({speedup:.2f}x)")
    return 0 if speedups[0] >= args.target or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
