"""A campaign: aggregate every candidate of a pipeline run and log it to MLflow.

The aggregate components call :func:`aggregate_and_log`; ``bpm run`` reads the same
results folder.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpm_lib.runner.cache import read_meta
from bpm_lib.runner.steps import aggregate_step, candidate_of, edits_of, load_samples

log = logging.getLogger(__name__)


@dataclass
class AggregateOutput:
    metrics: dict[str, float]
    metadata: dict[str, Any] = field(default_factory=dict)


def results_metrics(results_dir: str | Path) -> dict[str, float]:
    """Flat KFP metrics: ``<candidate>.bpm_mean`` etc. and sample counts."""
    summary = json.loads((Path(results_dir) / "summary.json").read_text())
    out: dict[str, float] = {}
    for cand, s in summary["candidates"].items():
        for key, value in (s.get("means") or {}).items():
            if value is not None:
                out[f"{cand}.{key}_mean"] = float(value)
        out[f"{cand}.samples_scored"] = float(s["samples_scored"])
        out[f"{cand}.samples_failed"] = float(s["samples_failed"])
    return out


def log_results(results_dir: str | Path, evalset: str | Path, editsets: Sequence[str | Path], *,
                tracking_uri: str, experiment: str, campaign: str, params: Mapping[str, Any] | None = None,
                pipeline_run_id: str | None = None, pipeline_spec: Path | None = None,
                spool_dir: str | Path | None = None) -> Any:
    """Log the campaign in ``results_dir`` to MLflow (:func:`~bpm_lib.io.tracking.log_campaign`).

    If MLflow cannot take it (down, or failing mid-way after the bounded retries), the call
    is spooled (:mod:`bpm_lib.io.spool`, ``spool_dir`` or ``$BPM_SPOOL_DIR`` or
    ``.bpm/spool``) and :class:`~bpm_lib.errors.TrackingError` names the spool entry;
    ``bpm tracking flush`` logs it later.
    """
    from bpm_lib.io.spool import campaign_arguments, log_campaign_or_spool, new_log_id
    from bpm_lib.io.tracking import CandidateInfo

    ev_meta = read_meta(evalset)
    dataset = {"name": ev_meta.get("dataset") or Path(evalset).name,
               "digest": ev_meta.get("dataset_digest") or ev_meta.get("digest"),
               "uri": str(ev_meta.get("settings", {}).get("source") or evalset)}
    infos = []
    edits: dict[str, dict[str, str]] = {}
    for e in editsets:
        meta = read_meta(e)
        name = candidate_of(e)
        edits[name] = edits_of(e)
        infos.append(CandidateInfo(name=name, checkpoint=meta.get("checkpoint"),
                                   checkpoint_digest=meta.get("checkpoint_digest"),
                                   model_name=meta.get("model_name"),
                                   model_version=str(meta["model_version"]) if meta.get("model_version") else None))
    samples = {s.sample_id: s for s in load_samples(evalset)}
    arguments = campaign_arguments(results_dir, tracking_uri=tracking_uri, experiment=experiment, campaign=campaign,
                                   candidates=infos, dataset=dataset, params=dict(params or {}), samples=samples,
                                   edits=edits, pipeline_run_id=pipeline_run_id, pipeline_spec=pipeline_spec,
                                   log_id=new_log_id())
    return log_campaign_or_spool(arguments, spool_dir=spool_dir)


def aggregate_and_log(evalset: str | Path, judged: Sequence[str | Path], editsets: Sequence[str | Path],
                      results_dir: str | Path, report_path: str | Path | None = None, *, alpha: float,
                      calibration: str, preset: str, campaign: str, tracking_uri: str, experiment: str,
                      params: Mapping[str, Any] | None = None, pipeline_run_id: str = "") -> AggregateOutput:
    meta = aggregate_step(evalset, judged, editsets, results_dir, alpha=alpha,
                          calibration=calibration or None, preset=preset)
    if report_path:
        shutil.copy(Path(results_dir) / "report.html", report_path)
    metadata: dict[str, Any] = {"calibration_id": meta.get("calibration_id") or "",
                                "candidates": [candidate_of(e) for e in editsets]}
    if tracking_uri:
        runs = log_results(results_dir, evalset, editsets, tracking_uri=tracking_uri, experiment=experiment,
                           campaign=campaign, params=params, pipeline_run_id=pipeline_run_id or None)
        metadata["mlflow_parent_run_id"] = runs.parent_run_id
        metadata["mlflow_child_run_ids"] = runs.child_run_ids
        from bpm_lib.io.tracking import redact_uri

        (Path(results_dir) / "mlflow.json").write_text(json.dumps({  # no user:password on disk
            "tracking_uri": redact_uri(tracking_uri), "parent_run_id": runs.parent_run_id,
            "child_run_ids": runs.child_run_ids, "experiment_id": runs.experiment_id}))
    return AggregateOutput(results_metrics(results_dir), metadata)
