"""The bpm-eval benchmark suite (``python -m benchmarks``; ``make bench``).

Each module ``benchmarks/bench_<name>.py`` of the suite has ``run(quick: bool) -> list[Figure]``;
:mod:`benchmarks.__main__` runs them and prints one table. The older single-purpose
scripts (``bench_preservation.py``, ``bench_embedder.py``, ``bench_loaders.py``,
``bench_ip2p.py``) still run on their own; the suite reuses their measuring code.

The machine this runs on is usually shared, so figures are ratios measured within one
run (interleaved passes, best of several), and throughput is measured on the process's
CPU clock where wall time would mostly measure the neighbours. Counted figures (model
calls, image decodes) are exact and are what ``tests/test_benchmarks_smoke.py`` asserts.

This module holds what the benchmarks share: :class:`Figure` (one row of the table), a
generated scoring set (:func:`make_scoring_set`), a decode counter and timing helpers.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "INSTRUCTIONS",
    "LOCAL_INSTRUCTIONS",
    "DecodeCounter",
    "Figure",
    "ScoringSet",
    "best_rates",
    "count_decodes",
    "figure_table",
    "make_scoring_set",
]

# Instructions the offline rules parser reads, one of each kind of edit (BPM_SPEC §2).
LOCAL_INSTRUCTIONS: tuple[str, ...] = (
    "Replace the ball with a box.",
    "Make the ball blue.",
    "Remove the car.",
    "make the flower bigger",
    "let the tie be yellow",
    "replace the cat with a dog",
)
INSTRUCTIONS: tuple[str, ...] = (
    *LOCAL_INSTRUCTIONS,
    "put a bird on top of the tower",  # addition with an anchor
    "Change the image to a cartoon style.",  # global edit
)


@dataclass(frozen=True)
class Figure:
    """One measured figure: a row of the suite's table and of its ``--json`` output.

    ``target`` is the goal in words (e.g. ``">= 3x"``) and ``met`` whether the value
    reaches it (``None``: no target, the figure is informative). ``detail`` says how it
    was measured or why a target is missed.
    """

    bench: str
    name: str
    value: float
    unit: str
    target: str | None = None
    met: bool | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt_value(value: float) -> str:
    if value == int(value) and abs(value) < 1e9:
        return str(int(value))
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def figure_table(figures: Sequence[Figure]) -> str:
    """The figures as one plain-text table."""
    header = ("bench", "figure", "value", "unit", "target", "status")
    rows = []
    for f in figures:
        status = "-" if f.met is None else ("met" if f.met else "MISSED")
        rows.append((f.bench, f.name, _fmt_value(f.value), f.unit, f.target or "-", status))
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    return "\n".join(lines)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ScoringSet:
    """A generated evaluation set: samples, every candidate's edited images, a manifest.

    ``manifest`` is a ``bpm score`` / ``jsonl:`` dataset manifest (paths relative to its
    folder) whose lines pair each sample with the first candidate's edit
    (``edited_image``); ``edits`` maps candidate → sample_id → absolute path; each
    candidate's edits are also a precomputed-editor folder
    (``candidate_dirs[c]/<sample_id>.png``).
    """

    root: Path
    samples: list[Any]
    edits: dict[str, dict[str, str]]
    manifest: Path
    candidate_dirs: dict[str, Path]

    @property
    def n(self) -> int:
        return len(self.samples)


def _image(i: int, size: tuple[int, int]) -> np.ndarray:
    """Noise on a gradient: incompressible enough that retained images show in the RSS."""
    w, h = size
    rng = np.random.default_rng(i)
    x = np.linspace(0, 160, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 80, h, dtype=np.float32)[:, None, None]
    noise = rng.integers(0, 96, (h, w, 3)).astype(np.float32)
    return np.clip(x + y + noise, 0, 255).astype(np.uint8)


def _region(i: int, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    mask = np.zeros((h, w), dtype=bool)
    x0, y0 = (7 * i) % max(1, w // 2), (5 * i) % max(1, h // 2)
    mask[y0 : y0 + max(2, h // 3), x0 : x0 + max(2, w // 3)] = True
    return mask


def make_scoring_set(
    root: Path,
    n: int,
    *,
    candidates: Sequence[str] = ("cand0",),
    size: tuple[int, int] = (128, 96),
    instructions: Sequence[str] = INSTRUCTIONS,
    with_masks: bool = True,
) -> ScoringSet:
    """Write ``n`` samples (source PNG, reference mask, one edit per candidate) under ``root``.

    Sample ``i`` gets ``instructions[i % len(instructions)]``; candidate ``c`` inverts the
    colours of a region that grows with ``c``, so candidates differ. Images are written
    one at a time (nothing of the whole set is held in memory).
    """
    from PIL import Image

    from bpm_lib.types import Sample

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not candidates:
        raise ValueError("candidates must name at least one candidate")
    root = Path(root)
    (root / "img").mkdir(parents=True, exist_ok=True)
    dirs = {c: root / "candidates" / c for c in candidates}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    samples: list[Sample] = []
    edits: dict[str, dict[str, str]] = {c: {} for c in candidates}
    manifest = root / "manifest.jsonl"
    with manifest.open("w", encoding="utf-8") as fh:
        for i in range(n):
            sid = f"s{i:05d}"
            src = _image(i, size)
            mask = _region(i, size)
            src_path = root / "img" / f"{sid}.png"
            Image.fromarray(src).save(src_path)
            mask_path = root / "img" / f"{sid}_mask.png"
            if with_masks:
                Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
            for c, cand in enumerate(candidates):
                edited = src.copy()
                grown = np.roll(mask, c, axis=1) | mask
                edited[grown] = 255 - edited[grown]
                path = dirs[cand] / f"{sid}.png"
                Image.fromarray(edited).save(path)
                edits[cand][sid] = str(path)
            sample = Sample(sid, instructions[i % len(instructions)], str(src_path),
                            reference_mask=str(mask_path) if with_masks else None)
            samples.append(sample)
            line = {"sample_id": sid, "instruction": sample.instruction, "source_image": f"img/{sid}.png",
                    "edited_image": f"candidates/{candidates[0]}/{sid}.png"}
            if with_masks:
                line["reference_mask"] = f"img/{sid}_mask.png"
            fh.write(json.dumps(line) + "\n")
    return ScoringSet(root, samples, edits, manifest, dirs)


# --------------------------------------------------------------------------- counting


@dataclass
class DecodeCounter:
    """Image files decoded while :func:`count_decodes` was active, by ``what`` kind."""

    images: int = 0
    masks: int = 0

    @property
    def total(self) -> int:
        return self.images + self.masks


@contextlib.contextmanager
def count_decodes() -> Iterator[DecodeCounter]:
    """Count every image file decoded through :mod:`bpm_lib.io.images` inside the block:
    ``load_rgb`` and ``load_mask`` both open files through its ``_open``, whose caller
    tells a mask from an image."""
    from bpm_lib.io import images

    counter = DecodeCounter()
    original_open = images._open

    def counting_open(*args: Any, **kwargs: Any) -> Any:
        if sys._getframe(1).f_code.co_name == "load_mask":
            counter.masks += 1
        else:
            counter.images += 1
        return original_open(*args, **kwargs)

    images._open = counting_open  # type: ignore[assignment]
    try:
        yield counter
    finally:
        images._open = original_open  # type: ignore[assignment]


# --------------------------------------------------------------------------- timing


def best_rates(
    runs: dict[str, Callable[[], int]],
    repeats: int,
    *,
    clock: str = "cpu",
) -> dict[str, float]:
    """Items per second of each ``runs[name]()`` (which returns how many items it did),
    best of ``repeats`` passes; the passes of the different runs are interleaved, so
    a burst of load from the neighbours hits them alike. ``clock="cpu"`` divides by the
    process CPU time (use with one torch thread), ``"wall"`` by elapsed time."""
    if clock not in ("cpu", "wall"):
        raise ValueError(f"clock must be 'cpu' or 'wall', got {clock!r}")
    timer = time.process_time if clock == "cpu" else time.perf_counter
    best = dict.fromkeys(runs, 0.0)
    for _ in range(max(1, repeats)):
        for name, fn in runs.items():
            start = timer()
            done = fn()
            elapsed = max(timer() - start, 1e-9)
            best[name] = max(best[name], done / elapsed)
    return best
