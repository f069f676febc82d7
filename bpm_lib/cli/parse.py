"""``bpm parse``: instruction → the structured fields of BPM_SPEC §2, one JSON line each."""

from __future__ import annotations

import argparse
import json
import sys

from bpm_lib.types import ParsedInstruction


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "parse",
        help="parse edit instructions into source/target objects, edit type and relations",
        description=(
            "Parse each INSTRUCTION and print one JSON object per line with the keys "
            + ", ".join(ParsedInstruction.KEYS)
            + ". An instruction that cannot be parsed prints an object with an 'error' key "
            "and makes the exit code non-zero."
        ),
    )
    p.add_argument("instructions", nargs="+", metavar="INSTRUCTION")
    p.add_argument("--parser", default="rules", help="parser backend (see `bpm backends`; default: rules)")
    p.add_argument("--cache-dir", default=None, help="reuse/store parses in this on-disk cache")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import bpm_lib.backends  # noqa: F401 - registers backends
    from bpm_lib.backends.base import PARSERS

    parser = PARSERS.create(args.parser)
    if args.cache_dir:
        from bpm_lib.io.parse_cache import CachedParser, ParseCache

        parser = CachedParser(parser, ParseCache(args.cache_dir))
    failed = 0
    for text in args.instructions:
        try:
            obj: dict[str, object] = parser.parse(text).to_dict()
        except Exception as e:  # noqa: BLE001 - reported per instruction
            failed += 1
            obj = {"instruction": text, "error": str(e) or type(e).__name__}
        print(json.dumps(obj, ensure_ascii=False), flush=True)
    if failed:
        print(f"bpm parse: {failed} of {len(args.instructions)} instructions could not be parsed", file=sys.stderr)
    return 1 if failed else 0
