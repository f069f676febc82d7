"""checkpoint_eval: score one candidate checkpoint on one EvalSet (e.g. per new checkpoint).

``candidate`` is a CandidateConfig as JSON (see :mod:`components.generate`).
"""

from kfp import dsl
from kfp.dsl import Dataset

from components.aggregate import aggregate_one
from pipelines._wiring import candidate_side, cpu_task, source_side


@dsl.pipeline(name="bpm-checkpoint-eval", description="BPM evaluation of one image-editing checkpoint")
def checkpoint_eval(
    candidate: str,
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
    campaign: str = "bpm-checkpoint",
    tracking_uri: str = "",
    experiment: str = "bpm-eval",
    params: dict = {},  # noqa: B006 - KFP pipeline parameter default
) -> Dataset:
    data, parsed, source = source_side(dataset_source=dataset_source, dataset_limit=dataset_limit,
                                       dataset_seed=dataset_seed, dataset_stratify=dataset_stratify,
                                       preset=preset, parser=parser, localizer=localizer, batch_size=batch_size)
    edits, judged = candidate_side(data, parsed, source, candidate=candidate, tracking_uri=tracking_uri,
                                   preset=preset, localizer=localizer, embedder=embedder, batch_size=batch_size)
    agg = cpu_task(aggregate_one(evalset=data.outputs["evalset"], judged=judged.outputs["judged"],
                                 editset=edits.outputs["editset"], alpha=alpha, calibration=calibration,
                             preset=preset, campaign=campaign, tracking_uri=tracking_uri, experiment=experiment,
                             params=params, pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER))
    agg.set_caching_options(False)
    return agg.outputs["results"]
