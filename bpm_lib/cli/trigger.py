"""``bpm trigger``: evaluate every new checkpoint (webhook service, pollers, webhook setup)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bpm_lib.trigger.service import TriggerConfig

log = logging.getLogger(__name__)

DEFAULT_EVENTS = "model_version.created"


def register(sub: argparse._SubParsersAction) -> None:
    trigger = sub.add_parser(
        "trigger", help="evaluate new checkpoints automatically (MLflow webhooks, S3 / registry pollers)",
        description=(
            "Start one BPM evaluation per new checkpoint, exactly once per (model, version, checkpoint "
            "digest): 'serve' receives MLflow model-registry webhooks, 'poll' watches an S3 prefix or a "
            "registered model, 'register-webhook' points MLflow at the service, 'jobs' lists what was done."
        ),
    )
    verbs = trigger.add_subparsers(dest="trigger_verb", metavar="ACTION")

    serve = verbs.add_parser(
        "serve", help="run the webhook service (POST /webhook, GET /healthz, GET /readyz)",
        description=(
            "Serve MLflow webhooks on HOST:PORT of the config (127.0.0.1:8787 by default). Deliveries are "
            "verified with the secret from the environment variable named by secret_env, recorded in the "
            "state database and evaluated by a worker with the config's submit mode. Pollers listed under "
            "poll: run in the same process. Stops on Ctrl-C / SIGTERM; queued work resumes at the next start."
        ),
    )
    serve.add_argument("--config", type=Path, required=True, help="trigger config (YAML; see examples/trigger.yaml)")
    serve.add_argument("--host", default=None, help="override the config's host")
    serve.add_argument("--port", type=int, default=None, help="override the config's port (0: any free port)")
    serve.set_defaults(func=cmd_serve)

    poll = verbs.add_parser(
        "poll", help="poll an S3 prefix or a registered model for new checkpoints",
        description=(
            "SOURCE is s3://bucket/prefix (each folder under it is a checkpoint; digest from the listing's "
            "ETags) or models:/NAME (each READY registry version). New ones are evaluated through the same "
            "state and submit path as webhooks. --once polls one time and waits for the evaluations."
        ),
    )
    poll.add_argument("source", help="s3://bucket/prefix or models:/NAME")
    poll.add_argument("--config", type=Path, required=True, help="trigger config (YAML)")
    poll.add_argument("--once", action="store_true", help="poll once, wait for the evaluations, exit")
    poll.add_argument("--interval", type=float, default=60.0, metavar="S", help="seconds between polls (default 60)")
    poll.add_argument("--min-age", type=float, default=60.0, metavar="S",
                      help="S3: a folder is ready when its newest object is this old (default 60)")
    poll.add_argument("--require-file", default=None, metavar="NAME",
                      help="S3: a folder is ready only once it holds this file (e.g. model_index.json)")
    poll.add_argument("--timeout", type=float, default=None, metavar="S",
                      help="with --once: give up waiting for the evaluations after S seconds")
    poll.set_defaults(func=cmd_poll)

    hook = verbs.add_parser(
        "register-webhook", help="create the MLflow webhook that calls the service",
        description=(
            "Create an MLflow model-registry webhook (MlflowClient.create_webhook) for --url with the secret "
            "read from the environment variable --secret-env (the secret is never a command-line argument). "
            "MLflow signs every delivery with it; the service verifies the signature."
        ),
    )
    hook.add_argument("--tracking-uri", required=True, help="the MLflow server, e.g. http://mlflow:5000")
    hook.add_argument("--url", required=True, help="the service's webhook URL, e.g. http://bpm-trigger:8787/webhook")
    hook.add_argument("--secret-env", required=True, metavar="VAR", help="environment variable holding the secret")
    hook.add_argument("--events", default=DEFAULT_EVENTS,
                      help=f"comma-separated MLflow events (default {DEFAULT_EVENTS})")
    hook.add_argument("--name", default="bpm-trigger", help="webhook name (default bpm-trigger)")
    hook.set_defaults(func=cmd_register_webhook)

    jobs = verbs.add_parser("jobs", help="list the jobs of a trigger state database",
                            description="Print the jobs (and delivery counts) recorded in the config's state.")
    jobs.add_argument("--config", type=Path, required=True, help="trigger config (YAML)")
    jobs.add_argument("--json", action="store_true", help="print JSON")
    jobs.set_defaults(func=cmd_jobs)

    trigger.set_defaults(func=lambda args: _usage(trigger))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM/SIGINT (the previous handlers are restored after)."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _tracking_uri(config: TriggerConfig) -> str | None:
    """``MLFLOW_TRACKING_URI``, else the campaign's ``tracking.uri``; with neither, local
    runs that log get the embedded default (a local MLflow server, as ``bpm run``), and
    KFP submissions need none here."""
    from bpm_lib.io.tracking import resolve_tracking_uri

    uri = os.environ.get("MLFLOW_TRACKING_URI") or config.tracking_uri
    if uri or config.submit.mode != "local" or not config.submit.tracking:
        return uri
    return resolve_tracking_uri(None, Path(config.submit.root))


def cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from bpm_lib.trigger.service import TriggerService, load_trigger_config

    config = load_trigger_config(args.config)
    if args.host is not None:
        config = replace(config, host=args.host)
    uri = _tracking_uri(config)
    service = TriggerService(config, tracking_uri=uri, port=args.port)
    with _stop_on_signals() as stop:
        service.start()
        print(f"bpm trigger: serving {service.url}/webhook (state {config.state}, submit {config.submit.mode}, "
              f"tracking {uri})", file=sys.stderr)
        stop.wait()
    service.stop()
    return 0


def cmd_poll(args: argparse.Namespace) -> int:
    from bpm_lib.trigger.pollers import poller_for
    from bpm_lib.trigger.service import TriggerService, load_trigger_config

    if args.interval <= 0:
        raise ValueError(f"--interval must be > 0, got {args.interval}")
    config = load_trigger_config(args.config)
    uri = _tracking_uri(config)
    poller = poller_for(args.source, min_age_s=args.min_age, require_file=args.require_file, tracking_uri=uri)
    service = TriggerService(config, tracking_uri=uri, serve_http=False)
    with _stop_on_signals() as stop:
        service.start()
        try:
            while True:
                report = poller.poll(service)
                print(json.dumps(report.to_dict()), file=sys.stderr)
                if args.once:
                    if not service.wait_idle(args.timeout):
                        print("bpm trigger poll: evaluations still running after --timeout", file=sys.stderr)
                        return 1
                    break
                if stop.wait(args.interval):
                    break
            state = service.state
            counts = state.counts() if state is not None else {}
        finally:
            service.stop()
    print(json.dumps(counts, sort_keys=True))
    return 0


def cmd_register_webhook(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from bpm_lib.errors import TrackingError

    secret = os.environ.get(args.secret_env)
    if not secret:
        raise ValueError(f"--secret-env: the environment variable {args.secret_env} is not set or empty")
    events = [e.strip() for e in args.events.split(",") if e.strip()]
    if not events:
        raise ValueError(f"--events must name at least one event, got {args.events!r}")
    client = MlflowClient(tracking_uri=args.tracking_uri)
    try:
        hook = client.create_webhook(name=args.name, url=args.url, events=events, secret=secret,  # type: ignore[arg-type]
                                     description="bpm-eval trigger: evaluate new checkpoints")
    except MlflowException as e:
        raise TrackingError(f"creating the webhook at {args.tracking_uri} failed: {e}") from e
    print(json.dumps({"webhook_id": hook.webhook_id, "name": hook.name, "url": hook.url,
                      "events": [str(e) for e in hook.events]}))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from bpm_lib.trigger.service import load_trigger_config
    from bpm_lib.trigger.state import TriggerState

    config = load_trigger_config(args.config)
    if not Path(config.state).exists():
        raise FileNotFoundError(f"no trigger state at {config.state}")
    with TriggerState(config.state, lock=False) as state:
        jobs = state.jobs()
        counts = state.counts()
    if args.json:
        print(json.dumps({"jobs": [j.to_dict() for j in jobs], "counts": counts}, indent=2))
        return 0
    print(f"{'job':>5}  {'status':<10} {'attempts':>8}  model / version  run")
    for j in jobs:
        print(f"{j.id:>5}  {j.status:<10} {j.attempts:>8}  {j.model} / {j.version}  {j.run_id or ''}"
              + (f"  error: {j.error[:120]}" if j.error else ""))
    print(f"deliveries: {counts['deliveries']}", file=sys.stderr)
    return 0
