"""Throughput of the ``paper`` architectures on a GPU, and the fraction of bf16 peak reached.

Builds GroundingDINO Swin-T (``GroundingDinoConfig()`` defaults), SAM ViT-H (``SamConfig``
with the vit_h sizes: hidden 1280, 32 layers, 16 heads, global attention at 7/15/23/31)
and CLIP ViT-L/14 (``open_clip.create_model("ViT-L-14", pretrained=None)``) from their
configs with **random weights** (nothing is downloaded; throughput does not depend on the
weights), casts them to bf16 and measures:

* model throughput per batch size (forward passes on device tensors of the real input
  sizes: 224² crops for CLIP, 800² for GroundingDINO with an 8-token phrase, 1024² with one
  box for SAM), with the FLOPs of one forward counted by
  ``torch.utils.flop_counter.FlopCounterMode`` and reported as achieved TFLOP/s and as a
  fraction of the H200's dense bf16 peak (989 TFLOP/s spec; ~790 measured achievable).
  FlopCounterMode counts matmuls, convolutions and (CUDA) attention kernels; one item is
  counted once per model. GroundingDINO's deformable attention sampling is not counted,
  so its fraction is a lower bound.
* the judge stage end to end (:func:`bpm_lib.runner.stages.run_judge` with the real
  :class:`~bpm_lib.backends.clip.OpenClipEmbedder` path: decode, 500×500 frames, crops,
  PIL preprocessing, CLIP, judges, JSONL records) on generated 512×512 samples, samples/s
  per judge batch size.

``--device cpu --tiny`` runs the same code on the tiny random configs of the
``tiny-random`` preset: a smoke test of the script (tests/test_benchmarks_smoke.py); its
numbers say nothing about a GPU. ``benchmarks/gpu.sh`` is the prepared entry point (≤ 8
minutes): ``bash benchmarks/gpu.sh`` on a CUDA machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import Figure, make_scoring_set

PEAK_TFLOPS = 989.0  # H200 SXM dense bf16, spec sheet
ACHIEVABLE_TFLOPS = 790.0  # what the lab measured as achievable on dense bf16 GEMMs
SAM_VIT_H = {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16,
             "global_attn_indexes": [7, 15, 23, 31], "output_channels": 256, "image_size": 1024,
             "patch_size": 16, "window_size": 14, "mlp_dim": 5120}
PHRASE_TOKENS = 8  # [CLS] + 6 word pieces + "." ... + [SEP]: a typical object phrase


@dataclass
class Row:
    """One (model, batch size) measurement."""

    model: str
    batch: int
    items_per_s: float | None = None
    flops_per_item: float | None = None
    tflops: float | None = None
    peak_fraction: float | None = None
    achievable_fraction: float | None = None
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Report:
    device: str
    dtype: str
    tiny: bool
    gpu_name: str | None
    models: list[Row] = field(default_factory=list)
    judge: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- models


@dataclass
class Bench:
    """A model to sweep: ``inputs(batch)`` makes device tensors, ``forward(inputs)`` runs it."""

    name: str
    item: str
    inputs: Callable[[int], Any]
    forward: Callable[[Any], Any]


def _clip(tiny: bool, device: str, dtype: Any) -> Bench:
    import open_clip
    import torch

    if tiny:
        from bpm_lib.backends.clip import load_tiny_clip_config

        cfg = load_tiny_clip_config()
        model = open_clip.CLIP(**cfg)
        size = int(cfg["vision_cfg"]["image_size"])
    else:
        model = open_clip.create_model("ViT-L-14", pretrained=None, device=device)
        size = 224
    model = model.to(device=device, dtype=dtype).eval()

    def inputs(batch: int) -> Any:
        return torch.randn(batch, 3, size, size, device=device, dtype=dtype)

    return Bench("clip-vit-l14 image" if not tiny else "tiny clip image", "crops",
                 inputs, lambda x: model.encode_image(x))


def _grounding_dino(tiny: bool, device: str, dtype: Any) -> Bench:
    import torch
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    if tiny:
        from bpm_lib.backends.grounding_dino import build_tiny_grounding_dino

        model, _ = build_tiny_grounding_dino()
        side = 64
    else:
        with torch.device(device):
            model = GroundingDinoForObjectDetection(GroundingDinoConfig())
        side = 800  # 512x512 sources resize to 800x800 (shortest edge 800)
    model = model.to(device=device, dtype=dtype).eval()
    vocab = int(model.config.text_config.vocab_size)
    # Ordinary word-piece ids: bert-base-uncased's, or those of the tiny character
    # vocabulary (after [MASK]=103, before "."=1012).
    low, high = (1999, 2999) if vocab > 3000 else (104, min(vocab, 1000))

    def inputs(batch: int) -> Any:
        # [CLS] words . [SEP], with bert-base-uncased's special ids that GroundingDINO expects.
        words = torch.randint(low, high, (batch, PHRASE_TOKENS - 3), device=device)
        ids = torch.cat([torch.full((batch, 1), 101, device=device), words,
                         torch.full((batch, 1), 1012, device=device), torch.full((batch, 1), 102, device=device)], 1)
        return {
            "pixel_values": torch.randn(batch, 3, side, side, device=device, dtype=dtype),
            "pixel_mask": torch.ones(batch, side, side, dtype=torch.long, device=device),
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids),
        }

    return Bench("grounding-dino swin-t" if not tiny else "tiny grounding-dino", "images",
                 inputs, lambda kw: model(**kw))


def _sam(tiny: bool, device: str, dtype: Any) -> Bench:
    import torch
    from transformers import SamConfig, SamModel

    if tiny:
        from bpm_lib.backends.sam import build_tiny_sam

        model, _ = build_tiny_sam()
    else:
        with torch.device(device):
            model = SamModel(SamConfig(vision_config=dict(SAM_VIT_H)))
    model = model.to(device=device, dtype=dtype).eval()
    side = int(model.config.vision_config.image_size)

    def inputs(batch: int) -> Any:
        box = torch.tensor([[[0.25 * side, 0.25 * side, 0.75 * side, 0.75 * side]]], device=device, dtype=dtype)
        return {"pixel_values": torch.randn(batch, 3, side, side, device=device, dtype=dtype),
                "input_boxes": box.expand(batch, 1, 4).contiguous()}

    return Bench("sam vit-h" if not tiny else "tiny sam", "images", inputs,
                 lambda kw: model(**kw, multimask_output=False))


BUILDERS: dict[str, Callable[[bool, str, Any], Bench]] = {
    "clip": _clip,
    "grounding-dino": _grounding_dino,
    "sam": _sam,
}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def count_flops(bench: Bench, batch: int = 1) -> float:
    """FLOPs of one forward pass on ``batch`` items (FlopCounterMode's count).

    Counted with autograd on: under ``no_grad``/``inference_mode`` ``nn.MultiheadAttention``
    (open_clip's attention) takes a fused fast path that FlopCounterMode does not see, and
    CLIP ViT-L/14 would count 104 instead of 162 GFLOP per image. The timed passes do use
    inference mode (and that fast path): the count is of the model's work, not of kernels.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = bench.inputs(batch)
    counter = FlopCounterMode(display=False)
    with torch.enable_grad(), counter:
        bench.forward(x)
    return float(counter.get_total_flops())


def time_forward(bench: Bench, batch: int, device: str, min_seconds: float, max_iters: int) -> tuple[float, int]:
    """(seconds, iterations) of repeated forwards after two warm-up passes."""
    import torch

    x = bench.inputs(batch)
    with torch.inference_mode():
        for _ in range(2):
            bench.forward(x)
        _sync(device)
        iters = 0
        t0 = time.perf_counter()
        while True:
            bench.forward(x)
            iters += 1
            if iters >= max_iters or (iters % 2 == 0 and _elapsed(t0, device) >= min_seconds):
                break
        _sync(device)
        return time.perf_counter() - t0, iters


def _elapsed(t0: float, device: str) -> float:
    _sync(device)
    return time.perf_counter() - t0


def sweep_model(name: str, batches: list[int], args: argparse.Namespace, dtype: Any, deadline: float) -> list[Row]:
    import torch

    rows: list[Row] = []
    t0 = time.perf_counter()
    try:
        bench = BUILDERS[name](args.tiny, args.device, dtype)
    except Exception as e:  # a model that cannot be built is reported, the others still run
        return [Row(name, 0, error=f"build: {type(e).__name__}: {e}", seconds=time.perf_counter() - t0)]
    print(f"[gpu-bench] built {bench.name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    flops_per_item: float | None = None
    for batch in batches:
        if time.perf_counter() > deadline:
            rows.append(Row(bench.name, batch, error="skipped: time budget spent"))
            continue
        row = Row(bench.name, batch)
        t1 = time.perf_counter()
        try:
            if flops_per_item is None:
                # One item, counted once: the work per item does not depend on the batch
                # (tests/test_benchmarks_smoke.py checks that), and autograd on a big
                # batch of SAM ViT-H would need the memory of its activations.
                flops_per_item = count_flops(bench, 1)
            seconds, iters = time_forward(bench, batch, args.device, args.min_seconds, args.max_iters)
            row.items_per_s = batch * iters / seconds
            row.flops_per_item = flops_per_item
            row.tflops = flops_per_item * row.items_per_s / 1e12
            row.peak_fraction = row.tflops / PEAK_TFLOPS
            row.achievable_fraction = row.tflops / ACHIEVABLE_TFLOPS
        except torch.cuda.OutOfMemoryError:
            row.error = "out of memory"
            rows.append(row)
            torch.cuda.empty_cache()
            break
        except Exception as e:  # record and go on with the next model
            row.error = f"{type(e).__name__}: {e}"[:300]
            rows.append(row)
            break
        row.seconds = time.perf_counter() - t1
        rows.append(row)
        print(f"[gpu-bench] {bench.name} batch {batch}: {row.items_per_s:.1f} {bench.item}/s, "
              f"{row.tflops:.2f} TFLOP/s", file=sys.stderr, flush=True)
    del bench
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- judge stage


def judge_stage(args: argparse.Namespace, batches: list[int], deadline: float) -> list[dict[str, Any]]:
    """Samples/s of run_judge with the real open_clip embedder path, per judge batch size."""
    import torch

    from bpm_lib.backends.clip import OpenClipEmbedder, TinyRandomEmbedder
    from bpm_lib.runner.backends import build_backends
    from bpm_lib.runner.imagecache import ImageCache
    from bpm_lib.runner.stages import run_judge, run_localize_edited, run_localize_source, run_parse

    n = args.judge_samples
    dtype_name = "float32" if args.dtype == "float32" else "bfloat16"
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpu-bench-judge-") as tmp:
        root = Path(tmp)
        size = (64, 48) if args.tiny else (512, 512)
        data = make_scoring_set(root / "data", n, size=size)
        edits = data.edits["cand0"]
        backends = build_backends("tiny-random", localizer="reference-mask")
        work = root / "work"
        parsed, _ = run_parse(data.samples, backends.parser, work)
        source, _ = run_localize_source(data.samples, parsed, backends.localizer, work)
        edited, _ = run_localize_edited(data.samples, parsed, source, edits, backends.localizer, work,
                                        candidate="cand0")
        embedder: Any
        if args.tiny:
            embedder = TinyRandomEmbedder(seed=0, device=args.device, dtype=dtype_name)
        else:
            embedder = OpenClipEmbedder("ViT-L-14", None, device=args.device, dtype=dtype_name, batch_size=64)
        embedder.load()
        embedder.encode_texts(["warm up"])
        for batch in batches:
            if time.perf_counter() > deadline:
                out.append({"batch": batch, "error": "skipped: time budget spent"})
                continue
            embedder.batch_size = max(2 * batch, 1)  # both crops of a batch in one forward
            embedder.cache_clear()
            try:
                run_judge(data.samples[: min(n, 2 * batch)], parsed, source, edited, edits, embedder,
                          root / f"warm-{batch}", candidate="cand0", batch_size=batch, images=ImageCache(64))
                _sync(args.device)
                t0 = time.perf_counter()
                _, stats = run_judge(data.samples, parsed, source, edited, edits, embedder, root / f"judge-{batch}",
                                     candidate="cand0", batch_size=batch,
                                     images=ImageCache(capacity=max(2 * batch, 32)))
                _sync(args.device)
                seconds = time.perf_counter() - t0
            except torch.cuda.OutOfMemoryError:
                out.append({"batch": batch, "error": "out of memory"})
                break
            row = {"batch": batch, "samples": n, "computed": stats.computed, "failed": stats.failed,
                   "seconds": seconds, "samples_per_s": n / seconds}
            out.append(row)
            print(f"[gpu-bench] judge stage batch {batch}: {row['samples_per_s']:.1f} samples/s",
                  file=sys.stderr, flush=True)
    return out


# --------------------------------------------------------------------------- main


def run_bench(args: argparse.Namespace) -> Report:
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: --device cuda but CUDA is not available (use --device cpu --tiny for a smoke run)")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, "float32" if args.dtype == "float32" else "bfloat16")
    gpu_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None
    report = Report(device=args.device, dtype=str(dtype).removeprefix("torch."), tiny=args.tiny, gpu_name=gpu_name)
    if args.tiny or not args.device.startswith("cuda"):
        report.notes.append("tiny models and/or CPU: a smoke run of the script; not GPU figures")
    report.notes.append("random weights: throughput only; FLOPs from FlopCounterMode (GroundingDINO's deformable "
                        "attention sampling is not counted, so its fraction is a lower bound)")
    t0 = time.perf_counter()
    deadline = t0 + args.budget_s
    batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    for name in args.models.split(","):
        name = name.strip()
        if name not in BUILDERS:
            raise SystemExit(f"bench_gpu: unknown model {name!r}; known: {', '.join(BUILDERS)}")
        model_batches = [b for b in batches if b <= args.max_batch.get(name, max(batches))]
        report.models.extend(sweep_model(name, model_batches, args, dtype, deadline))
    if args.judge_samples > 0:
        judge_batches = [int(b) for b in args.judge_batch_sizes.split(",") if b.strip()]
        report.judge = judge_stage(args, judge_batches, deadline)
    report.seconds = time.perf_counter() - t0
    return report


def print_report(report: Report) -> None:
    print(f"device {report.device} ({report.gpu_name or 'no GPU'}), dtype {report.dtype}, "
          f"{'tiny' if report.tiny else 'paper'} architectures, {report.seconds:.0f} s")
    for note in report.notes:
        print(f"note: {note}")
    print(f"{'model':<24}{'batch':>6}{'items/s':>11}{'GFLOP/item':>12}{'TFLOP/s':>10}{'% peak':>8}{'% achiev.':>10}")
    for r in report.models:
        if r.error:
            print(f"{r.model:<24}{r.batch:>6}  {r.error}")
            continue
        print(f"{r.model:<24}{r.batch:>6}{r.items_per_s or 0:>11.1f}{(r.flops_per_item or 0) / 1e9:>12.1f}"
              f"{r.tflops or 0:>10.2f}{100 * (r.peak_fraction or 0):>8.2f}{100 * (r.achievable_fraction or 0):>10.2f}")
    if report.judge:
        print(f"{'judge stage':<24}{'batch':>6}{'samples/s':>11}")
        for j in report.judge:
            if "error" in j:
                print(f"{'judge stage':<24}{j['batch']:>6}  {j['error']}")
            else:
                print(f"{'judge stage':<24}{j['batch']:>6}{j['samples_per_s']:>11.1f}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny random configs (smoke run)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                        help="default bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--models", default="clip,grounding-dino,sam", help="comma-separated: clip,grounding-dino,sam")
    parser.add_argument("--batch-sizes", default=None, help="model batch sizes (default 1,8,32,64; tiny: 1,2)")
    parser.add_argument("--judge-batch-sizes", default=None, help="judge batch sizes (default 1,16,64; tiny: 1,2)")
    parser.add_argument("--judge-samples", type=int, default=None, help="samples judged per pass (default 256; tiny 4)")
    parser.add_argument("--min-seconds", type=float, default=None, help="timed seconds per cell (default 2; tiny 0)")
    parser.add_argument("--max-iters", type=int, default=None, help="most timed forwards per cell (default 200; tiny 2)")
    parser.add_argument("--budget-s", type=float, default=400.0, help="skip what would start after this (default 400)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    args = parser.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    args.batch_sizes = args.batch_sizes or ("1,2" if args.tiny else "1,8,32,64")
    args.judge_batch_sizes = args.judge_batch_sizes or ("1,2" if args.tiny else "1,16,64")
    args.judge_samples = args.judge_samples if args.judge_samples is not None else (4 if args.tiny else 256)
    args.min_seconds = args.min_seconds if args.min_seconds is not None else (0.0 if args.tiny else 2.0)
    args.max_iters = args.max_iters if args.max_iters is not None else (2 if args.tiny else 200)
    # SAM ViT-H at 1024² is ~3 TFLOP per image; larger batches only cost memory and time.
    args.max_batch = {"sam": 64 if not args.tiny else 2}
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    report = run_bench(args)
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    failed = [r for r in report.models if r.error and not r.error.startswith("skipped")]
    return 1 if failed or any("error" in j and j["error"] != "skipped: time budget spent" for j in report.judge) else 0


def suite_figures(quick: bool) -> list[Figure]:
    """The suite's view (``python -m benchmarks --only gpu``): CUDA when available, else
    the tiny CPU smoke path (whose figures are labelled as such)."""
    import torch

    cuda = torch.cuda.is_available()
    argv = ["--device", "cuda"] if cuda else ["--device", "cpu", "--tiny", "--threads", "1"]
    if quick and cuda:
        argv += ["--batch-sizes", "1,8", "--judge-batch-sizes", "1,16", "--judge-samples", "64",
                 "--min-seconds", "0.5", "--budget-s", "120"]
    report = run_bench(parse_args(argv))
    label = "" if cuda else " (CPU tiny smoke, not GPU figures)"
    figures = []
    for model in dict.fromkeys(r.model for r in report.models):
        rows = [r for r in report.models if r.model == model and r.items_per_s]
        errors = [r.error for r in report.models if r.model == model and r.error]
        if not rows:
            figures.append(Figure("gpu", f"{model} items/s{label}", 0.0, "items/s", met=False,
                                  detail="; ".join(e for e in errors if e)))
            continue
        best = max(rows, key=lambda r: r.items_per_s or 0.0)
        figures.append(Figure("gpu", f"{model} items/s, batch {best.batch}{label}", best.items_per_s or 0.0,
                              "items/s", detail=f"{best.tflops:.3g} TFLOP/s",
                              extra={"rows": [asdict(r) for r in report.models if r.model == model]}))
        figures.append(Figure("gpu", f"{model} fraction of bf16 peak{label}", 100 * (best.peak_fraction or 0.0), "%",
                              detail=f"of {PEAK_TFLOPS:g} TFLOP/s; {100 * (best.achievable_fraction or 0.0):.3g} % "
                                     f"of the {ACHIEVABLE_TFLOPS:g} achievable"))
    judged = [j for j in report.judge if "samples_per_s" in j]
    if judged:
        best_j = max(judged, key=lambda j: j["samples_per_s"])
        figures.append(Figure("gpu", f"judge stage samples/s, batch {best_j['batch']}{label}", best_j["samples_per_s"],
                              "samples/s", extra={"rows": report.judge}))
    return figures


if __name__ == "__main__":
    sys.exit(main())
