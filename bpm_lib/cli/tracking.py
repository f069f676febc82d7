"""``bpm tracking``: the spool of campaigns MLflow could not take (``list``, ``flush``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tracking",
        help="list or replay campaigns spooled while MLflow was unreachable",
        description=(
            "When a campaign cannot be logged to MLflow (server down or failing after the bounded "
            "retries), its results stay on disk and the logging call is spooled under "
            "$BPM_SPOOL_DIR (default .bpm/spool). 'list' shows the spool; 'flush' logs every entry "
            "and removes the ones that got logged."
        ),
    )
    verbs = p.add_subparsers(dest="tracking_verb", metavar="ACTION")
    for name, help_text, func in (
        ("list", "show the spooled campaigns", cmd_list),
        ("flush", "log every spooled campaign to MLflow; exit 1 if any entry still fails", cmd_flush),
    ):
        v = verbs.add_parser(name, help=help_text, description=help_text)
        v.add_argument("--spool-dir", type=Path, default=None,
                       help="spool folder (default: $BPM_SPOOL_DIR, else .bpm/spool)")
        v.add_argument("--json", action="store_true", help="one JSON object per entry on stdout")
        if name == "flush":
            v.add_argument("--tracking-uri", default=None,
                           help="log to this MLflow server instead of the one each entry was meant for")
        v.set_defaults(func=func)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def cmd_list(args: argparse.Namespace) -> int:
    from bpm_lib.errors import DataError
    from bpm_lib.io.spool import entries

    items = entries(args.spool_dir)
    for item in items:
        row: dict[str, Any]
        if isinstance(item, DataError):
            row = {"status": "unreadable", "error": str(item)}
        else:
            row = {"id": item.id, "status": "spooled", "campaign": item.arguments.get("campaign"),
                   "created": item.created, "attempts": item.attempts, "results_dir": item.results_dir,
                   "path": str(item.path), "error": item.error}
        if args.json:
            print(json.dumps(row, sort_keys=True))
        else:
            print("  ".join(str(row.get(k, "")) for k in ("id", "status", "campaign", "created", "attempts", "path")))
    if not items:
        print("bpm tracking: the spool is empty", file=sys.stderr)
    return 0


def cmd_flush(args: argparse.Namespace) -> int:
    from bpm_lib.io.spool import flush

    # MLflow prints "View run …" lines; stdout is for this command's results.
    with contextlib.redirect_stdout(sys.stderr):
        outcomes = flush(args.spool_dir, tracking_uri=args.tracking_uri)
    for o in outcomes:
        if args.json:
            print(json.dumps(o.to_dict(), sort_keys=True))
        else:
            detail = o.parent_run_id or o.error or ""
            print(f"{o.entry}  {o.status}  {detail}")
    left = [o for o in outcomes if o.status not in ("logged", "already_logged")]
    if not outcomes:
        print("bpm tracking: the spool is empty", file=sys.stderr)
    elif left:
        print(f"bpm tracking: {len(left)} of {len(outcomes)} spooled campaign(s) are still not logged",
              file=sys.stderr)
    return 1 if left else 0
