"""``bpm run`` / ``bpm demo`` / ``bpm submit``: the main job, locally or on a cluster."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from bpm_lib.types import RunSummary


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run", help="run an evaluation campaign locally (Kubeflow local runner) and log it to MLflow",
        description=(
            "Run the pipeline of CONFIG.yaml on this machine through kfp.local's SubprocessRunner, "
            "with stage caching under ROOT/cache. Results are logged to MLFLOW_TRACKING_URI when set, "
            "else to tracking.uri of the config, else to a local MLflow server (SQLite, 127.0.0.1) that "
            "is started or reused under ROOT/mlflow."
        ),
    )
    run.add_argument("config", type=Path, help="campaign config (YAML)")
    _common(run)
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser(
        "demo", help="the demo campaign: bundled demo set, tiny-random preset, three candidates",
        description=(
            "Score the bundled synthetic demo set's three candidates (well_edited, over_preserved, "
            "over_modified) with the offline tiny-random preset and log the campaign to MLflow. "
            "Random weights: the numbers show the machinery, not a real evaluation."
        ),
    )
    _common(demo)
    demo.add_argument("--preset", default="tiny-random", help="preset (default tiny-random; 'paper' needs the hub)")
    demo.set_defaults(func=cmd_demo)

    submit = sub.add_parser(
        "submit", help="submit a campaign to a Kubeflow Pipelines endpoint",
        description="Compile the config's pipeline and submit it to KFP at --host (kfp.Client).",
    )
    submit.add_argument("config", type=Path)
    submit.add_argument("--host", default=None, help="KFP API endpoint, e.g. http://ml-pipeline.kubeflow.svc:8888")
    submit.add_argument("--namespace", default=None)
    submit.add_argument("--service-account", default="bpm-pipeline-runner",
                        help="Kubernetes service account of the pipeline pods (default bpm-pipeline-runner)")
    submit.add_argument("--compile-only", type=Path, default=None, metavar="FILE",
                        help="write the compiled pipeline YAML to FILE and submit nothing")
    submit.set_defaults(func=cmd_submit)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, default=Path(".bpm"), help="local state folder (default ./.bpm)")
    p.add_argument("--in-process", action="store_true",
                   help="call the pipeline's steps in this process instead of the KFP local runner")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--no-cache", action="store_true", help="recompute every stage (no task or stage cache)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _execute(config, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from bpm_lib.cli.score import print_table
    from bpm_lib.runner.local import run_in_process, run_local

    runner = run_in_process if args.in_process else run_local
    print(f"bpm: campaign {config.name!r}: {len(config.candidates)} candidate(s), preset {config.preset}, "
          f"{'in-process' if args.in_process else 'kfp local runner'}", file=sys.stderr)
    # MLflow prints "View run …" lines to stdout; stdout is for this command's results (--json).
    with contextlib.redirect_stdout(sys.stderr):
        result = runner(config, root=args.root, tracking=not args.no_tracking, cache=not args.no_cache)
    summary = result.summary()
    summaries = [RunSummary.from_dict(s) for s in summary["candidates"].values()]
    if args.json:
        print(json.dumps({"results": str(result.results_dir), "tracking_uri": result.tracking_uri,
                          "parent_run_id": result.parent_run_id, "child_run_ids": result.child_run_ids,
                          "seconds": round(result.seconds, 2), "summary": summary}, indent=2))
    else:
        print_table(summaries)
        print(f"\nresults: {result.results_dir}  ({result.seconds:.1f} s)")
        print(f"report:  {result.results_dir / 'report.html'}")
        if result.tracking_uri and result.parent_run_id:
            print(f"MLflow:  {ui_url(result.tracking_uri, result.parent_run_id)}")
    if any(s.meaningless for s in summaries):
        print("NOTE: tiny-random preset: random weights, the scores are meaningless as an evaluation.",
              file=sys.stderr)
    if summary.get("calibration_error"):
        print(f"bpm: BPM not computed: {summary['calibration_error']}", file=sys.stderr)
        return 1
    return 1 if any(s.samples_failed for s in summaries) else 0


def ui_url(tracking_uri: str, run_id: str) -> str:
    if not tracking_uri.startswith("http"):
        return f"{tracking_uri} (run {run_id})"
    from mlflow import MlflowClient

    exp = MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    return f"{tracking_uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"


def cmd_run(args: argparse.Namespace) -> int:
    from bpm_lib.config import load_config

    return _execute(load_config(args.config), args)


def cmd_demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from bpm_lib.config import demo_config

    return _execute(replace(demo_config(), preset=args.preset), args)


def cmd_submit(args: argparse.Namespace) -> int:
    from bpm_lib.config import load_config
    from bpm_lib.runner.submit import compile_pipeline, submit

    config = load_config(args.config)
    if args.compile_only:
        path = compile_pipeline(config, args.compile_only)
        print(f"bpm submit: compiled {config.pipeline} to {path}", file=sys.stderr)
        return 0
    if not args.host:
        raise ValueError("--host is required unless --compile-only is given")
    run_id, url = submit(config, host=args.host, namespace=args.namespace, service_account=args.service_account)
    print(json.dumps({"run_id": run_id, "url": url}))
    return 0
