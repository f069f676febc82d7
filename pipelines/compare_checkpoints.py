"""compare_checkpoints: score several candidate checkpoints on one EvalSet.

fetch → parse → localize(source) once; ParallelFor over candidates: generate →
localize(edited) → judge; aggregate sees every candidate (pool calibration, comparison,
MLflow parent + child runs). ``candidates`` is a list of CandidateConfig JSON strings
(see :mod:`components.generate`).
"""

from kfp import dsl
from kfp.dsl import Dataset

from components.aggregate import aggregate
from pipelines._wiring import candidate_side, cpu_task, source_side


@dsl.pipeline(name="bpm-compare-checkpoints",
              description="BPM evaluation of several image-editing checkpoints on one evaluation set")
def compare_checkpoints(
    candidates: list,
    dataset_source: str = "demo",
    dataset_limit: int = 0,
    dataset_seed: int = 0,
    dataset_stratify: str = "",
    preset: str = "tiny-random",
    parser: str = "",
    localizer: str = "",
    embedder: str = "",
    alpha: float = 0.7,
    calibration: str = "",
    batch_size: int = 16,
    campaign: str = "bpm-campaign",
    tracking_uri: str = "",
    experiment: str = "bpm-eval",
    params: dict = {},  # noqa: B006 - KFP pipeline parameter default
) -> Dataset:
    data, parsed, source = source_side(dataset_source=dataset_source, dataset_limit=dataset_limit,
                                       dataset_seed=dataset_seed, dataset_stratify=dataset_stratify,
                                       preset=preset, parser=parser, localizer=localizer, batch_size=batch_size)
    with dsl.ParallelFor(candidates, parallelism=2) as candidate:
        edits, judged = candidate_side(data, parsed, source, candidate=candidate, tracking_uri=tracking_uri,
                                       preset=preset, localizer=localizer, embedder=embedder,
                                       batch_size=batch_size)
    agg = cpu_task(aggregate(evalset=data.outputs["evalset"], judged=dsl.Collected(judged.outputs["judged"]),
                             editsets=dsl.Collected(edits.outputs["editset"]), alpha=alpha,
                             calibration=calibration, preset=preset, campaign=campaign,
                             tracking_uri=tracking_uri, experiment=experiment, params=params,
                             pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER))
    agg.set_caching_options(False)  # it logs a new MLflow campaign every run
    return agg.outputs["results"]

