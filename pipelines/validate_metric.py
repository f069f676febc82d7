"""validate_metric: how well BPM agrees with humans on a human-annotated set.

fetch (a bpm-json source: the BPM reference format with user ratings) → rescore every
rated candidate with the preset's stages (and baselines) → validation report (human
alignment per pair for BPM and each baseline, ground-truth test, alpha sweep) → one MLflow
run in the ``bpm-validation`` experiment with the tables and plots.
"""

from kfp import dsl
from kfp.dsl import Dataset

from components.data import fetch_data
from components.validate import log_validation, rescore_metadata, validation_report
from pipelines._wiring import cpu_task, gpu_task


@dsl.pipeline(name="bpm-validate-metric",
              description="Validate BPM (and baselines) against human ratings on a human-annotated set")
def validate_metric(
    dataset_source: str,
    dataset_limit: int = 0,
    dataset_seed: int = 0,
    preset: str = "tiny-random",
    baselines: str = "",
    baseline_options: str = "",
    batch_size: int = 16,
    alpha: float = 0.7,
    pairs: str = "",
    tracking_uri: str = "",
    experiment: str = "bpm-validation",
    run_name: str = "bpm-validation",
    params: dict = {},  # noqa: B006 - KFP pipeline parameter default
) -> Dataset:
    """``dataset_source``: bpm-json:PATH or an s3:// URI of a BPM reference JSON; ``preset``
    "" validates the published scores as they are; ``tracking_uri`` "" skips MLflow."""
    data = cpu_task(fetch_data(source=dataset_source, limit=dataset_limit, seed=dataset_seed, stratify=""))
    rescored = gpu_task(rescore_metadata(evalset=data.outputs["evalset"], preset=preset, baselines=baselines,
                                         baseline_options=baseline_options, batch_size=batch_size))
    report = cpu_task(validation_report(rescored=rescored.outputs["rescored"], alpha=alpha, pairs=pairs))
    logged = cpu_task(log_validation(report=report.outputs["report"], tracking_uri=tracking_uri,
                                     experiment=experiment, run_name=run_name, params=params,
                                     pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER))
    logged.set_caching_options(False)  # a new MLflow run every time
    return report.outputs["report"]

