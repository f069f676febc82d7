"""Submitting a campaign to a Kubeflow Pipelines endpoint (kfp.Client)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from bpm_lib.config import RunConfig
from bpm_lib.runner.local import pipeline_arguments, pipeline_function


def experiment_name(config: RunConfig) -> str:
    return config.tracking.experiment


def run_name(config: RunConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{config.name}-{stamp}")


def compile_pipeline(config: RunConfig, path: str | Path) -> Path:
    from kfp import compiler

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_function(config), str(out))
    return out


DEFAULT_SERVICE_ACCOUNT = "bpm-pipeline-runner"  # manifests/base: least-privilege runner


def submit(config: RunConfig, *, host: str, namespace: str | None = None, client: object | None = None,
           service_account: str | None = DEFAULT_SERVICE_ACCOUNT) -> tuple[str, str]:
    """Submit the config's pipeline; returns (run id, run URL). On a cluster the tracking
    URI comes from the config (the in-cluster MLflow service)."""
    import kfp

    kfp_client: Any = client or kfp.Client(host=host, namespace=namespace)
    args = pipeline_arguments(config, config.tracking.uri)
    result = kfp_client.create_run_from_pipeline_func(
        pipeline_function(config), arguments=args, run_name=run_name(config),
        experiment_name=experiment_name(config), namespace=namespace, service_account=service_account,
    )
    run_id = result.run_id
    return run_id, f"{host.rstrip('/')}/#/runs/details/{run_id}"
