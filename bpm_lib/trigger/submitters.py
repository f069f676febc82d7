"""How the trigger starts an evaluation: one :class:`Submitter` per mode, in ``SUBMITTERS``.

* ``local`` — the campaign runs on this machine, synchronously: the steps in-process
  (:func:`bpm_lib.runner.local.run_in_process`, default) or the pipeline through
  ``kfp.local`` (:func:`bpm_lib.runner.local.run_local`). Result status ``succeeded``,
  run id = the MLflow parent run.
* ``kfp`` — the pipeline is submitted to a Kubeflow Pipelines endpoint
  (:func:`bpm_lib.runner.submit.submit`). Result status ``submitted``, run id = the
  KFP run id; the pipeline's aggregate step logs to MLflow when it finishes.

:func:`build_run_config` turns the configured campaign template plus one new checkpoint
into the :class:`~bpm_lib.config.RunConfig` a submitter runs. Any object with the
``name`` attribute and ``submit`` method of :class:`Submitter` can be passed to the
service instead of a registered mode (tests use a fast recording double).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from bpm_lib.config import RunConfig, parse_config
from bpm_lib.errors import ConfigError
from bpm_lib.registry import Registry

log = logging.getLogger(__name__)

_NAME_MAX = 63
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class EvaluationRequest:
    """One checkpoint to evaluate (a job of the state DB)."""

    job_id: int
    model: str
    version: str
    checkpoint: str
    digest: str
    origin: str


@dataclass(frozen=True)
class Submission:
    """What a submitter did: ``submitted`` (handed over, runs elsewhere) or ``succeeded``
    (ran to completion here)."""

    status: Literal["submitted", "succeeded"]
    run_id: str | None
    mlflow_run_id: str | None = None
    results: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Submitter(Protocol):
    """Starts the evaluation of one request; raises on failure."""

    name: str

    def submit(self, request: EvaluationRequest, config: RunConfig) -> Submission: ...


SUBMITTERS: Registry[Submitter] = Registry("submitter")


def _safe_name(text: str, limit: int = _NAME_MAX) -> str:
    """A RunConfig-safe name (``[A-Za-z0-9][A-Za-z0-9_.-]{0,62}``); long names keep a hash
    suffix so two different inputs do not collapse to the same name."""
    cleaned = _UNSAFE.sub("-", text).strip("-._") or "x"
    if len(cleaned) <= limit:
        return cleaned
    suffix = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return f"{cleaned[: limit - 9].rstrip('-._')}-{suffix}"


def candidate_name(model: str, version: str) -> str:
    """The candidate name of a checkpoint: ``<model>-v<version>``, made safe."""
    return _safe_name(f"{model}-v{version}")


def build_run_config(campaign: Mapping[str, Any], candidate: Mapping[str, Any], request: EvaluationRequest) -> RunConfig:
    """The RunConfig evaluating ``request``: the ``campaign`` template (a RunConfig
    mapping without ``candidates``; its ``name`` is a prefix) with one candidate built
    from the ``candidate`` template (editor, settings, seed, mask_guidance) whose
    checkpoint is the request's."""
    if "candidates" in campaign:
        raise ConfigError("trigger config: campaign.candidates is not allowed: the candidate is the new checkpoint "
                          "(configure its editor under candidate:)")
    unknown = sorted(set(candidate) - {"editor", "settings", "seed", "mask_guidance"})
    if unknown:
        raise ConfigError(f"trigger config: unknown key candidate.{unknown[0]}")
    data = dict(campaign)
    prefix = str(data.get("name") or "bpm-trigger")
    data["name"] = _safe_name(f"{prefix}-{request.model}-v{request.version}")
    data.setdefault("pipeline", "checkpoint_eval")
    data["candidates"] = [{**candidate, "name": candidate_name(request.model, request.version),
                           "checkpoint": request.checkpoint}]
    return parse_config(data)


def validate_templates(campaign: Mapping[str, Any], candidate: Mapping[str, Any]) -> RunConfig:
    """Fail early (:class:`ConfigError`) on a template that could never build a RunConfig."""
    probe = EvaluationRequest(0, "model", "1", "models:/model/1", "sha256:" + "0" * 64, "check")
    try:
        return build_run_config(campaign, candidate, probe)
    except ConfigError as e:
        raise ConfigError(f"trigger config: campaign/candidate template: {e}") from e


# --------------------------------------------------------------------------- local


class LocalSubmitter:
    """Runs the campaign on this machine and waits for it (see the module docstring)."""

    name = "local"

    def __init__(self, *, root: str | Path = ".bpm", in_process: bool = True, tracking: bool = True) -> None:
        self.root = Path(root)
        self.in_process = bool(in_process)
        self.tracking = bool(tracking)

    def submit(self, request: EvaluationRequest, config: RunConfig) -> Submission:
        from bpm_lib.runner.local import run_in_process, run_local

        runner = run_in_process if self.in_process else run_local
        log.info("job %d: running %s locally (%s)", request.job_id, config.name,
                 "in-process" if self.in_process else "kfp.local")
        result = runner(config, root=self.root, tracking=self.tracking)
        return Submission(
            status="succeeded",
            run_id=result.parent_run_id or str(result.results_dir),
            mlflow_run_id=result.parent_run_id,
            results=str(result.results_dir),
            details={"mode": result.mode, "seconds": round(result.seconds, 2),
                     "child_run_ids": dict(result.child_run_ids)},
        )


# ----------------------------------------------------------------------------- kfp


class KfpSubmitter:
    """Submits the campaign's pipeline to Kubeflow Pipelines at ``host``."""

    name = "kfp"

    def __init__(self, *, host: str, namespace: str | None = None, client: object | None = None) -> None:
        if not isinstance(host, str) or not host.startswith(("http://", "https://")):
            raise ValueError(f"host must be the KFP API URL (http[s]://…), got {host!r}")
        self.host = host
        self.namespace = namespace
        self._client = client

    def submit(self, request: EvaluationRequest, config: RunConfig) -> Submission:
        from bpm_lib.runner.submit import submit

        run_id, url = submit(config, host=self.host, namespace=self.namespace, client=self._client)
        log.info("job %d: submitted KFP run %s (%s)", request.job_id, run_id, url)
        return Submission(status="submitted", run_id=run_id, details={"url": url})


def _local(**kwargs: Any) -> Submitter:
    return LocalSubmitter(**kwargs)


def _kfp(**kwargs: Any) -> Submitter:
    return KfpSubmitter(**kwargs)


SUBMITTERS.add("local", _local, "run the campaign on this machine (in-process or kfp.local) and wait for it")
SUBMITTERS.add("kfp", _kfp, "submit the campaign's pipeline to a Kubeflow Pipelines endpoint")
