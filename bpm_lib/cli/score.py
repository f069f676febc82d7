"""``bpm score``: score a manifest of (source, instruction, edited image) samples."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from bpm_lib.types import RunSummary


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score edited images of a manifest with BPM",
        description=(
            "Score every sample of a JSONL manifest. Each line has sample_id, instruction, "
            "source_image and edited_image (or the edit is found as <sample_id>.png in --edits), "
            "optionally reference_mask (PNG, 255 = edit region). Relative paths resolve against the "
            "manifest's folder. Writes OUT/scores.jsonl and OUT/summary.json and prints a table. "
            "Exits non-zero when any sample failed, unless --allow-errors."
        ),
    )
    p.add_argument("--manifest", required=True, type=Path, help="JSONL manifest")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--edits", type=Path, default=None, help="folder of edited images named <sample_id>.png")
    p.add_argument("--preset", default="paper",
                   help="backend preset: paper, fast or tiny-random (offline, meaningless scores); default paper")
    p.add_argument("--parser", default=None, help="override the preset's instruction parser")
    p.add_argument("--localizer", default=None,
                   help="override the localizer (default: reference-mask when every line has a reference_mask)")
    p.add_argument("--embedder", default=None, help="override the preset's embedder")
    p.add_argument("--alpha", type=float, default=None,
                   help="weight of the semantic score (default: the calibration's, 0.7 for a pool)")
    p.add_argument("--calibration", type=Path, default=None,
                   help="frozen calibration JSON (default: normalise over this run's pool)")
    p.add_argument("--candidate", default="edits", help="name of the candidate being scored")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--allow-errors", action="store_true", help="exit 0 even if some samples failed")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bpm_lib.aggregate import load_calibration
    from bpm_lib.runner.backends import build_backends
    from bpm_lib.runner.manifest_scoring import load_scoring_manifest
    from bpm_lib.runner.score import score_candidates, write_results

    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
    loaded = load_scoring_manifest(args.manifest, edits_dir=args.edits)
    localizer = args.localizer
    if localizer is None and loaded.samples and all(s.reference_mask for s in loaded.samples):
        localizer = "reference-mask"
    backends = build_backends(args.preset, parser=args.parser, localizer=localizer, embedder=args.embedder)
    calibration = load_calibration(args.calibration) if args.calibration else None
    result = score_candidates(
        loaded.samples, {args.candidate: loaded.edits}, backends, args.out / "work",
        alpha=args.alpha, calibration=calibration, batch_size=args.batch_size,
        progress=not args.no_progress and sys.stderr.isatty(),
        failures={args.candidate: loaded.failures(args.candidate)},
    )
    write_results(result, args.out)
    print_table(result.summaries.values(), file=sys.stdout)
    if backends.meaningless:
        print("NOTE: random-weight backends (tiny-random): these scores are meaningless for real "
              "evaluation; they only show the machinery works.", file=sys.stderr)
    if result.calibration_error:
        print(f"bpm score: BPM not computed: {result.calibration_error}", file=sys.stderr)
    failed = result.failed
    if failed:
        print(f"bpm score: {failed} sample(s) failed; see {args.out / 'scores.jsonl'}", file=sys.stderr)
    if result.calibration_error and not args.allow_errors:
        return 1
    return 1 if failed and not args.allow_errors else 0


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def print_table(summaries: Iterable[RunSummary], file: TextIO = sys.stdout) -> None:
    cols = ("candidate", "samples", "scored", "failed", "bpm", "s_modify", "s_preserve", "s_region", "calibration")
    rows = []
    for s in summaries:
        rows.append((s.candidate, str(s.samples_total), str(s.samples_scored), str(s.samples_failed),
                     _fmt(s.means.get("bpm")), _fmt(s.means.get("s_modify")), _fmt(s.means.get("s_preserve")),
                     _fmt(s.means.get("s_region")), s.calibration_id or "-"))
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)), file=file)
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)), file=file)
