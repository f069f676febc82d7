"""Metric validation: re-score a human-annotated set, build the validation report, log it."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE)
def rescore_metadata(evalset: Input[Dataset], preset: str, baselines: str, baseline_options: str, batch_size: int,
                     rescored: Output[Dataset]):
    """Re-score every rated candidate of an EvalSet fetched from a bpm-json source.

    ``preset`` "" keeps the published scores (nothing is re-scored); ``baselines``:
    comma-separated names ("" none); ``baseline_options``: JSON {name: {key: value}} or "".
    """
    import json

    from bpm_lib.runner.rescore import rescore_evalset

    info = rescore_evalset(evalset.path, rescored.path, preset=preset or None, baselines=baselines,
                           baseline_options=json.loads(baseline_options) if baseline_options else None,
                           batch_size=batch_size)
    rescored.metadata.update({"items": info.items, "entries": info.entries, "failed": info.failed,
                              "preset": info.preset or "", "meaningless": list(info.meaningless)})


@dsl.component(base_image=IMAGE)
def validation_report(rescored: Input[Dataset], alpha: float, pairs: str, report: Output[Dataset],
                      metrics: Output[Metrics], html: Output[HTML]):
    """Human alignment, ground-truth test and alpha sweep of BPM and each baseline.
    ``pairs``: "" (all), "reference" or "1-2,1-3,..."."""
    from bpm_lib.validation_report import report_step

    values = report_step(rescored.path, report.path, html.path, alpha=alpha, pairs=pairs)
    for name, value in values.items():
        metrics.log_metric(name, value)


@dsl.component(base_image=IMAGE)
def log_validation(report: Input[Dataset], tracking_uri: str, experiment: str, run_name: str, params: dict,
                   pipeline_run_id: str) -> str:
    """One MLflow run in ``experiment`` with the tables and plots; ``tracking_uri`` "" skips
    logging. Returns the run id ("" when skipped)."""
    from bpm_lib.validation_report import log_step

    return log_step(report.path, tracking_uri=tracking_uri, experiment=experiment, run_name=run_name,
                    params=params, pipeline_run_id=pipeline_run_id)
