"""``bpm data``: build EvalSets (``fetch``) and the bundled demo set (``demo``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bpm_lib.cli import print_help_and_fail


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="fetch datasets into EvalSets; write the demo set",
        description="Turn a dataset into an EvalSet folder (manifest.jsonl + images + evalset.json).",
    )
    verbs = p.add_subparsers(dest="data_verb", metavar="ACTION")

    f = verbs.add_parser(
        "fetch",
        help="fetch SOURCE into an EvalSet folder",
        description=(
            "Fetch SOURCE into the EvalSet folder --out and print its EvalSetInfo as JSON. SOURCE is "
            "NAME:PATH with NAME one of magicbrush, pie-bench, bpm-json, jsonl; 'demo'; or an s3:// URI "
            "or local path whose layout is detected. PATH may be an s3:// URI (downloaded once into "
            "$BPM_CACHE_DIR). Bad records are skipped and listed under 'skipped'; the exit code is "
            "non-zero only when nothing could be fetched."
        ),
    )
    f.add_argument("source", metavar="SOURCE", help="NAME:PATH, demo, or an s3:// URI / path to detect")
    f.add_argument("--out", required=True, type=Path, help="EvalSet folder to write (replaced if it is one)")
    f.add_argument("--limit", type=int, default=None, help="keep at most N samples (deterministic subset)")
    f.add_argument("--seed", type=int, default=0, help="seed of the subset choice (default 0)")
    f.add_argument("--stratify", choices=["edit-type"], default=None,
                   help="balance the --limit subset over edit types")
    f.add_argument("--name", default=None, help="EvalSet name (default: the dataset name)")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.set_defaults(func=run_fetch)

    d = verbs.add_parser(
        "demo",
        help="write the bundled synthetic demo set",
        description=(
            "Write the 12-scene synthetic demo EvalSet into --out, with three precomputed candidates "
            "(well_edited, over_preserved, over_modified) under --out/candidates/<name>/."
        ),
    )
    d.add_argument("--out", required=True, type=Path, help="folder to write")
    d.set_defaults(func=run_demo)

    p.set_defaults(func=lambda _args: print_help_and_fail(p))


def run_fetch(args: argparse.Namespace) -> int:
    from bpm_lib.io.datasets import fetch

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive integer, got {args.limit}")
    info = fetch(
        args.source,
        args.out,
        limit=args.limit,
        seed=args.seed,
        stratify=args.stratify,
        name=args.name,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    print(json.dumps(info.to_dict(), indent=2, sort_keys=True))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from bpm_lib.io.datasets.demo import write_demo

    demo = write_demo(args.out)
    result = demo.info.to_dict()
    result["candidates"] = {name: str(path) for name, path in demo.candidates.items()}
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0
