"""aggregate: calibration, BPM, report and plots over all candidates; logs to MLflow."""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE)
def aggregate(evalset: Input[Dataset], judged: Input[List[Dataset]], editsets: Input[List[Dataset]],
              alpha: float, calibration: str, preset: str, campaign: str, tracking_uri: str, experiment: str,
              params: dict, pipeline_run_id: str, results: Output[Dataset], metrics: Output[Metrics],
              report: Output[HTML]):
    """All candidates of a ParallelFor. ``calibration`` "" normalises over this pool;
    ``tracking_uri`` "" skips MLflow."""
    from bpm_lib.runner.campaign import aggregate_and_log

    out = aggregate_and_log(evalset.path, [j.path for j in judged], [e.path for e in editsets], results.path,
                            report.path, alpha=alpha, calibration=calibration, preset=preset, campaign=campaign,
                            tracking_uri=tracking_uri, experiment=experiment, params=params,
                            pipeline_run_id=pipeline_run_id)
    for name, value in out.metrics.items():
        metrics.log_metric(name, value)
    results.metadata.update(out.metadata)


@dsl.component(base_image=IMAGE)
def aggregate_one(evalset: Input[Dataset], judged: Input[Dataset], editset: Input[Dataset], alpha: float,
                  calibration: str, preset: str, campaign: str, tracking_uri: str, experiment: str, params: dict,
                  pipeline_run_id: str, results: Output[Dataset], metrics: Output[Metrics], report: Output[HTML]):
    """One candidate (checkpoint_eval); same step as :func:`aggregate`."""
    from bpm_lib.runner.campaign import aggregate_and_log

    out = aggregate_and_log(evalset.path, [judged.path], [editset.path], results.path, report.path, alpha=alpha,
                            calibration=calibration, preset=preset, campaign=campaign, tracking_uri=tracking_uri,
                            experiment=experiment, params=params, pipeline_run_id=pipeline_run_id)
    for name, value in out.metrics.items():
        metrics.log_metric(name, value)
    results.metadata.update(out.metadata)

