"""``bpm`` command line: one module per verb under :mod:`bpm_lib.cli`.

Each verb module defines ``register(subparsers)`` that adds its sub-parser and sets
``func`` (``args -> int``). :func:`main` takes ``argv`` so tests call it directly.
Logs go to stderr, results to files/stdout; the exit code is non-zero on failure.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
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


def print_help_and_fail(parser: argparse.ArgumentParser) -> int:
    """What a verb with sub-commands does when none is given: its help on stderr, exit 2."""
    parser.print_help(sys.stderr)
    return 2


class RedactSecrets(logging.Filter):
    """Replace the values of credential environment variables (names with key, secret,
    token, password or credential) in every log record: with ``-vv`` third-party debug
    logs (botocore prints request headers, e.g. ``X-Amz-Security-Token``) would show them."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        super().__init__()
        from bpm_lib.io.tracking import SECRET_PATTERN

        env = os.environ if environ is None else environ
        self.secrets = sorted({v for k, v in env.items() if SECRET_PATTERN.search(k) and len(v) >= 8},
                              key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        if any(secret in message for secret in self.secrets):
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


def _install_redaction() -> None:
    redact = RedactSecrets()  # the secrets of this run's environment
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactSecrets)]:
            handler.removeFilter(old)
        handler.addFilter(redact)


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
    _install_redaction()
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
