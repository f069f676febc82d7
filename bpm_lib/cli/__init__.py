"""``bpm`` command line: one module per verb under :mod:`bpm_lib.cli`.

Each verb module defines ``register(subparsers)`` that adds its sub-parser and sets
``func`` (``args -> int``). :func:`main` takes ``argv`` so tests call it directly.
Logs go to stderr, results to files/stdout; the exit code is non-zero on failure.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from bpm_lib import __version__
from bpm_lib.errors import BpmError

VERB_MODULES = (
    "parse",
    "score",
    "backends",
    "data",
    "edit",
    "validate",
    "run",
    "trigger",
    "audit",
    "tracking",
)

log = logging.getLogger("bpm_lib.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bpm",
        description=(
            "BPM: score instruction-based image edits by what they change inside the edit "
            "region and what they preserve outside it."
        ),
    )
    parser.add_argument("--version", action="version", version=f"bpm-eval {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(f"bpm_lib.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"bpm_lib.cli.{name}":
                continue  # verb not built in this checkout
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except BpmError as e:
        print(f"bpm {args.verb}: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"bpm {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bpm {args.verb}: interrupted", file=sys.stderr)
        return 130


def main_entry() -> None:
    sys.exit(main())
