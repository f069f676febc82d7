"""``bpm audit``: governance audits of registered model versions (``run``, ``schedule``).

Exit codes of ``bpm audit run``: 0 every rule passed; 3 the policy is violated (CI gates
on non-zero); 1 the audit could not be carried out (invalid policy, missing alias,
unreachable MLflow, calibration mismatch, …); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from pathlib import Path

from bpm_lib.cli import print_help_and_fail

EXIT_VIOLATION = 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="governance audits: evaluate aliased model versions against a policy",
        description=(
            "Audit the versions behind a registered model's aliases (champion, challenger, …) on a "
            "frozen audit set with a frozen calibration, against the thresholds of a policy file."
        ),
    )
    verbs = p.add_subparsers(dest="audit_verb", metavar="ACTION")

    r = verbs.add_parser(
        "run",
        help="run an audit now and exit non-zero on any violation",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Resolve each alias of the policy's model to its version, evaluate the versions on the\n"
            "frozen audit set with the frozen calibration (pipeline steps in this process, or the\n"
            "Kubeflow local runner with --kfp-local), apply the policy's rules, write audit.json and\n"
            "audit.html to an MLflow audit run (experiment tracking.experiment, default bpm-audits;\n"
            "tag bpm.kind=audit) and tag every audited version with audit.status/date/bpm/run_id.\n\n"
            "Tracking: --tracking-uri, else MLFLOW_TRACKING_URI, else the policy's tracking.uri, else\n"
            "the local server under --root.\n\n"
            "Exit codes: 0 pass; 3 policy violated; 1 the audit could not run (invalid policy, missing\n"
            "alias, unreachable MLflow, calibration mismatch); 2 bad arguments."
        ),
    )
    r.add_argument("--policy", required=True, type=Path, help="audit policy (YAML); see examples/audit_policy.yaml")
    r.add_argument("--tracking-uri", default=None, help="MLflow tracking server (overrides env and policy)")
    r.add_argument("--root", type=Path, default=Path(".bpm"), help="local state folder (default ./.bpm)")
    r.add_argument("--kfp-local", action="store_true",
                   help="evaluate through the Kubeflow local runner instead of in this process")
    r.add_argument("--out", type=Path, default=None, help="also copy audit.json and audit.html into this folder")
    r.add_argument("--json", action="store_true", help="print the audit record as JSON instead of the table")
    r.set_defaults(func=cmd_run)

    s = verbs.add_parser(
        "schedule",
        help="register the audit as a Kubeflow recurring run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Compile the governance_audit pipeline and register it at --host as a recurring run\n"
            "(kfp.Client.create_recurring_run) with the policy file and its frozen calibration as\n"
            "parameters; one run at a time, no catch-up of missed runs.\n\n"
            "--cron takes 5 fields (minute hour day-of-month month day-of-week, as in crontab) or 6\n"
            "(seconds first, Kubeflow's own format); 5 fields get '0' seconds prepended:\n"
            "'30 2 * * 1' becomes '0 30 2 * * 1' (Mondays 02:30). @daily/@weekly/... are accepted.\n\n"
            "On a single machine, let cron call `bpm audit run` instead (see examples/audit_policy.yaml)."
        ),
    )
    s.add_argument("--cron", required=True, help="cron expression (5 or 6 fields)")
    s.add_argument("--policy", required=True, type=Path, help="audit policy (YAML)")
    s.add_argument("--host", required=True, help="Kubeflow Pipelines API endpoint, e.g. http://ml-pipeline.kubeflow:8888")
    s.add_argument("--name", default=None, help="recurring run name (default bpm-audit-<policy name>)")
    s.add_argument("--namespace", default=None, help="Kubeflow namespace (multi-user deployments)")
    s.add_argument("--experiment", default=None, help="KFP experiment (default: the policy's tracking.experiment)")
    s.add_argument("--tracking-uri", default=None,
                   help="MLflow URI as the cluster's pods reach it (default: the policy's tracking.uri)")
    s.set_defaults(func=cmd_schedule)

    p.set_defaults(func=lambda _args: print_help_and_fail(p))


def cmd_run(args: argparse.Namespace) -> int:
    from bpm_lib.audit.report import verdict_table
    from bpm_lib.audit.run import run_audit

    # MLflow and kfp.local print progress to stdout; stdout is for the verdict (and --json).
    with contextlib.redirect_stdout(sys.stderr):
        outcome = run_audit(args.policy, tracking_uri=args.tracking_uri, root=args.root,
                            runner="kfp-local" if args.kfp_local else "in-process")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for path in (outcome.json_path, outcome.html_path):
            shutil.copy2(path, args.out / path.name)
    if args.json:
        print(json.dumps(outcome.record, indent=2, sort_keys=True))
    else:
        print(verdict_table(outcome.record))
        print(f"\nreport: {outcome.html_path}")
        print(f"MLflow audit run: {outcome.audit_run_id} ({outcome.record['mlflow']['tracking_uri']})")
    if outcome.record.get("evaluation", {}).get("meaningless"):
        print("NOTE: random-weight backends (tiny-random preset): the audit numbers are meaningless.",
              file=sys.stderr)
    if outcome.verdict != "pass":
        print(f"bpm audit: policy {outcome.record['policy']['name']!r} violated "
              f"({len(outcome.violations)} rule(s) failed)", file=sys.stderr)
        return EXIT_VIOLATION
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from bpm_lib.audit.run import schedule_audit

    scheduled = schedule_audit(args.policy, cron=args.cron, host=args.host, name=args.name,
                               tracking_uri=args.tracking_uri, namespace=args.namespace,
                               experiment=args.experiment)
    print(json.dumps({"recurring_run_id": scheduled.recurring_run_id, "experiment_id": scheduled.experiment_id,
                      "name": scheduled.name, "cron": scheduled.cron}))
    return 0
