"""Seconds per edit of the tiny random InstructPix2Pix pipeline through the ``ip2p`` editor.

Builds the test fixture pipeline (tests/fixtures/tiny_ip2p.py) in a temporary folder,
loads it through :class:`bpm_lib.backends.editors.InstructPix2PixEditor` (the same path
users take), warms up once, then times ``--repeats`` edits per step count and prints a
table. The numbers measure the editing machinery (pre/post-processing, scheduler loop,
UNet/VAE/text-encoder calls), not a real model's cost.

    python benchmarks/bench_ip2p.py                       # steps 2 and 10, 64×64, CPU
    python benchmarks/bench_ip2p.py --steps 2 10 20 --size 128 --threads 1 --device auto
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 10], help="step counts to time (default 2 10)")
    parser.add_argument("--size", type=int, default=64, help="square source image side in pixels (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed edits per step count (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto (default cpu)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from bpm_lib.backends.editors import InstructPix2PixEditor
    from bpm_lib.types import Sample
    from tests.fixtures.tiny_ip2p import save_tiny_ip2p

    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8), mode="RGB")
    sample = Sample("bench", "make the sky purple", "unused.png")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_tiny_ip2p(Path(tmp) / "ckpt")
        for steps in args.steps:
            t0 = time.perf_counter()
            editor = InstructPix2PixEditor(str(ckpt), num_inference_steps=steps, device=args.device)
            load_s = time.perf_counter() - t0
            editor.edit(sample, image, seed=0)  # warm-up
            times = []
            for i in range(args.repeats):
                t0 = time.perf_counter()
                editor.edit(sample, image, seed=i + 1)
                times.append(time.perf_counter() - t0)
            rows.append((steps, load_s, statistics.mean(times), min(times), max(times)))
        device = editor.identity()["device"]

    print(f"tiny ip2p, {args.size}x{args.size} source, device={device}, torch threads={torch.get_num_threads()}, "
          f"repeats={args.repeats}")
    print(f"{'steps':>5} | {'load s':>7} | {'s/edit mean':>11} | {'min':>7} | {'max':>7} | {'s/step':>7}")
    print("-" * 60)
    for steps, load_s, mean, lo, hi in rows:
        print(f"{steps:>5} | {load_s:7.3f} | {mean:11.4f} | {lo:7.4f} | {hi:7.4f} | {mean / steps:7.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
