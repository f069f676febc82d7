"""``bpm validate``: how well BPM (and the baselines) agree with human judgements.

Actions over a file in the BPM reference format (``--metadata``), which is only read:
``human-alignment`` (paper Tab. 1/2), ``gt-test`` (Tab. 4), ``report`` (every protocol,
every metric in the data, the α sweep) and ``rescore`` (recompute the sub-scores and
baselines of every candidate into a new file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bpm_lib.cli import print_help_and_fail

_FORMAT = (
    "FILE is a JSON list of items {index, instruction, source_image_path, edited_image1..K}; each "
    "edited_image<k> holds image_path, user_overall_quality (the human rating) and the sub-scores "
    "preservation (-d), edit_quality, position, size, plus any baseline values (l1, l2, lpips, "
    "clip_score, clip_i, dino, clip_directional). The file is never written to."
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="validate the metric against human ratings (alignment, ground-truth test, report, rescore)",
        description="Validate BPM against human judgements on data in the BPM reference format. " + _FORMAT,
    )
    verbs = p.add_subparsers(dest="validate_verb", metavar="ACTION")

    h = verbs.add_parser(
        "human-alignment",
        help="pairwise agreement of BPM (or a baseline) with the human overall-quality ratings",
        description=(
            "For each pair of candidates (i, j) over all items: items whose human ratings tie are "
            "skipped; the metric agrees when it orders i and j as the humans do (a metric tie counts "
            "as disagreement). Prints the agreement per pair and the mean over pairs. BPM is computed "
            "from the stored sub-scores, normalised over the whole file as the reference does. "
            + _FORMAT
        ),
    )
    _metadata_arg(h)
    _alpha_arg(h)
    h.add_argument("--pairs", default=None, metavar="SPEC",
                   help="candidate pairs: '1-2,1-3,...', 'reference' (the paper's (1,2) (1,3) (2,3) (4,3) "
                        "(4,2) (4,1) for four candidates) or 'all' (default: every pair in the data)")
    _metric_args(h)
    _normalization_arg(h)
    h.add_argument("--json", action="store_true",
                   help="print one JSON object {pairs, mean, normalization, alpha, samples}")
    h.set_defaults(func=run_human_alignment)

    g = verbs.add_parser(
        "gt-test",
        help="ground-truth test: how often each candidate gets the top score",
        description=(
            "For data of triplets (excessively preserved, excessively modified, well edited): count, per "
            "candidate, the items where it gets the strictly highest score; an item whose top score is "
            "shared counts as a tie. " + _FORMAT
        ),
    )
    _metadata_arg(g)
    _alpha_arg(g)
    _metric_args(g)
    _normalization_arg(g)
    g.add_argument("--json", action="store_true", help="print one JSON object {wins, ties, alpha}")
    g.set_defaults(func=run_gt_test)

    r = verbs.add_parser(
        "report",
        help="every protocol for BPM and each baseline in the data, the alpha sweep, tables and a plot",
        description=(
            "Write DIR/validation.json, DIR/validation.md, DIR/validation.html and DIR/alpha_sweep.png: "
            "human alignment of BPM and of every baseline present in all candidate entries (rows = "
            "metrics, columns = pairs + mean), the ground-truth test per metric, an alpha sweep 0..1, "
            "and each sub-score against its human criterion (user_preservation, user_edit_quality) "
            "when the data has one. " + _FORMAT
        ),
    )
    _metadata_arg(r)
    r.add_argument("--out", required=True, type=Path, metavar="DIR", help="report folder to write")
    _alpha_arg(r)
    r.add_argument("--pairs", default=None, metavar="SPEC", help="as for human-alignment")
    _normalization_arg(r)
    r.set_defaults(func=run_report)

    s = verbs.add_parser(
        "rescore",
        help="recompute sub-scores (and baselines) of every candidate into a NEW file",
        description=(
            "Score every candidate image of FILE with the BPM stages of --preset and write "
            "preservation (-d), edit_quality, position, size (and the --baselines) into NEWFILE, in the "
            "same format; the values they replace are kept under 'published'. FILE is never written. "
            "When NEWFILE is in another folder, the images are copied next to it so that its relative "
            "paths stay valid. Values from random-weight models are listed under each item's "
            "rescore.meaningless. Exits 1 when a candidate could not be scored, unless --allow-errors."
        ),
    )
    _metadata_arg(s)
    s.add_argument("--out", required=True, type=Path, metavar="NEWFILE", help="the new metadata file to write")
    s.add_argument("--preset", default="paper",
                   help="backend preset: paper, fast or tiny-random (offline, meaningless scores); default paper")
    s.add_argument("--parser", default=None, help="override the preset's instruction parser")
    s.add_argument("--localizer", default=None, help="override the preset's localizer")
    s.add_argument("--embedder", default=None, help="override the preset's embedder (also used by the CLIP baselines)")
    s.add_argument("--baselines", default="", metavar="NAMES",
                   help="comma-separated baselines to compute too: l1, l2, lpips, clip_score, clip_i, dino, "
                        "directional_clip (directional_clip needs source_caption and target_caption on every item)")
    s.add_argument("--baseline-option", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="constructor option of a baseline, VALUE as JSON or text (e.g. dino.model=/models/dino, "
                        "lpips.net=vgg); repeatable")
    s.add_argument("--work-dir", type=Path, default=None,
                   help="folder for the stage records (re-running resumes); default a temporary folder")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--allow-errors", action="store_true", help="exit 0 even if some candidates failed")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=run_rescore)

    p.set_defaults(func=lambda _args: print_help_and_fail(p))


def _metadata_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metadata", required=True, type=Path, metavar="FILE",
                   help="BPM reference JSON file (read only)")


def _alpha_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", type=float, default=0.7,
                   help="weight of the semantic score in BPM, in [0, 1] (default 0.7; global items use 1)")


def _metric_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", default=None, metavar="NAME",
                   help="score with this key of the candidate entries instead of BPM (e.g. lpips, clip_score)")
    p.add_argument("--direction", choices=("higher", "lower"), default=None,
                   help="which way --metric is better, for keys without a known direction")


def _normalization_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--normalization", type=Path, default=None, metavar="JSON",
                   help="BPM normalisation bounds to use instead of fitting them on FILE: a JSON object with "
                        "preservation_min/max and edit_quality_min/max (or the --json output of "
                        "human-alignment); needed for a file of global edits only")


# --------------------------------------------------------------------------- handlers


def _read(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The items of --metadata, without the entries a rescore could not score (noted)."""
    from bpm_lib.io.datasets.bpm_json import read_bpm_json
    from bpm_lib.validation_report import drop_failed_entries

    items, dropped = drop_failed_entries(read_bpm_json(args.metadata))
    if dropped:
        print(f"NOTE: {len(dropped)} candidate entr{'y' if len(dropped) == 1 else 'ies'} with a rescore_error "
              "left out: " + ", ".join(sorted(dropped)[:10]), file=sys.stderr)
    return items


def _normalization(args: argparse.Namespace) -> dict[str, float] | None:
    from bpm_lib.validation_report import check_normalization

    if args.normalization is None:
        return None
    try:
        data = json.loads(args.normalization.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"--normalization {args.normalization}: not valid JSON ({e})") from e
    try:
        return check_normalization(data)
    except ValueError as e:
        raise ValueError(f"--normalization {args.normalization}: {e}") from e


def _pairs(args: argparse.Namespace, items: list[dict[str, Any]] | None = None) -> list[tuple[int, int]] | None:
    """``--pairs`` parsed (and checked against the candidates of ``items``); errors name the flag."""
    from bpm_lib.validation_report import check_pairs, parse_pairs

    try:
        pairs = parse_pairs(args.pairs)
        return check_pairs(pairs, items) if items is not None else pairs
    except ValueError as e:
        text = str(e)
        text = text[len("pairs: "):] if text.startswith("pairs: ") else text
        raise ValueError(f"--pairs: {text}") from e


def _direction(args: argparse.Namespace) -> bool | None:
    if args.direction is None:
        return None
    if args.metric is None:
        raise ValueError("--direction only applies together with --metric")
    return bool(args.direction == "higher")


def run_human_alignment(args: argparse.Namespace) -> int:
    from bpm_lib.validate import human_alignment
    from bpm_lib.validation_report import format_alignment_text, require_ratings

    _pairs(args)  # a malformed spec fails before the file is read
    higher = _direction(args)
    norm = _normalization(args)
    items = _read(args)
    require_ratings(items)
    checked = _pairs(args, items)
    result = human_alignment(items, alpha=args.alpha, pairs=checked, metric=args.metric,
                             higher_is_better=higher, normalization=norm)
    if args.json:
        keys = ("pairs", "mean", "normalization", "alpha", "samples")
        print(json.dumps({k: result[k] for k in keys}, sort_keys=False))
    else:
        print(format_alignment_text(result))
    return 0


def run_gt_test(args: argparse.Namespace) -> int:
    from bpm_lib.validate import gt_test
    from bpm_lib.validation_report import format_gt_text

    higher = _direction(args)
    norm = _normalization(args)
    items = _read(args)
    result = gt_test(items, alpha=args.alpha, metric=args.metric, higher_is_better=higher, normalization=norm)
    if args.json:
        print(json.dumps({k: result[k] for k in ("wins", "ties", "alpha")}))
    else:
        print(format_gt_text(result))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from bpm_lib.io.datasets.bpm_json import read_bpm_json
    from bpm_lib.validation_report import (
        ALPHA_SWEEP_PNG,
        VALIDATION_JSON,
        VALIDATION_MD,
        drop_failed_entries,
        file_sha256,
        write_validation_report,
    )

    _pairs(args)
    norm = _normalization(args)
    items = read_bpm_json(args.metadata)  # build_validation leaves out and lists failed entries
    pairs = _pairs(args, drop_failed_entries(items)[0]) if args.pairs is not None else None
    if args.out.resolve() == args.metadata.resolve() or args.out.is_file():
        raise ValueError(f"--out must be a folder, got the file {args.out}")
    source = {"path": str(args.metadata), "sha256": file_sha256(args.metadata)}
    validation = write_validation_report(items, args.out, alpha=args.alpha, pairs=pairs, normalization=norm,
                                         source=source)
    bpm = validation["alignment"][0]
    mean = "–" if bpm["mean"] is None else f"{100 * bpm['mean']:.1f}%"
    print(f"BPM human alignment (mean over {len(validation['pairs'])} pairs): {mean}; "
          f"{len(validation['alignment']) - 1} baseline(s) compared")
    for name in (VALIDATION_JSON, VALIDATION_MD, ALPHA_SWEEP_PNG):
        print(args.out / name)
    for note in validation["notes"]:
        print(f"NOTE: {note}", file=sys.stderr)
    return 0


def run_rescore(args: argparse.Namespace) -> int:
    from bpm_lib.runner.rescore import parse_baseline_options, parse_baselines, rescore_file

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    columns = parse_baselines(args.baselines)
    options = parse_baseline_options(args.baseline_option, columns)
    info = rescore_file(
        args.metadata, args.out, preset=args.preset, parser=args.parser, localizer=args.localizer,
        embedder=args.embedder, baselines=columns, baseline_options=options, work_dir=args.work_dir,
        batch_size=args.batch_size, progress=not args.no_progress and sys.stderr.isatty(),
    )
    print(json.dumps(info.to_dict(), indent=2, sort_keys=True))
    if info.meaningless:
        print("NOTE: random-weight models produced " + ", ".join(info.meaningless)
              + ": these values are meaningless for real validation.", file=sys.stderr)
    if info.failed:
        print(f"bpm validate: {info.failed} candidate(s) could not be scored; see 'rescore_error' in {args.out}",
              file=sys.stderr)
        return 0 if args.allow_errors else 1
    return 0
