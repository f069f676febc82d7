"""checkpoint_eval: score one candidate checkpoint on one EvalSet (e.g. per new checkpoint).

``candidate`` is a CandidateConfig as JSON (see :mod:`components.generate`).
"""

from kfp import dsl
from kfp.dsl import Dataset

from components.aggregate import aggregate_one
from components.data import fetch_data
from components.generate import generate_edits
from components.judge import judge
from components.localize import localize_edited, localize_source
from components.parse import parse_instructions
from pipelines._wiring import cpu_task, gpu_task


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
    data = cpu_task(fetch_data(source=dataset_source, limit=dataset_limit, seed=dataset_seed,
                               stratify=dataset_stratify))
    parsed = cpu_task(parse_instructions(evalset=data.outputs["evalset"], preset=preset, parser=parser))
    source = gpu_task(localize_source(evalset=data.outputs["evalset"], parsed=parsed.outputs["parsed"],
                                      preset=preset, localizer=localizer, batch_size=batch_size))
    edits = gpu_task(generate_edits(evalset=data.outputs["evalset"], candidate=candidate,
                                        tracking_uri=tracking_uri))
    edited = gpu_task(localize_edited(evalset=data.outputs["evalset"], parsed=parsed.outputs["parsed"],
                                      source_loc=source.outputs["source_loc"], editset=edits.outputs["editset"],
                                      preset=preset, localizer=localizer, batch_size=batch_size))
    judged = gpu_task(judge(evalset=data.outputs["evalset"], parsed=parsed.outputs["parsed"],
                            source_loc=source.outputs["source_loc"], edited_loc=edited.outputs["edited_loc"],
                            editset=edits.outputs["editset"], preset=preset, embedder=embedder,
                            batch_size=batch_size))
    agg = cpu_task(aggregate_one(evalset=data.outputs["evalset"], judged=judged.outputs["judged"],
                                 editset=edits.outputs["editset"], alpha=alpha, calibration=calibration,
                             preset=preset, campaign=campaign, tracking_uri=tracking_uri, experiment=experiment,
                             params=params, pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER))
    agg.set_caching_options(False)
    return agg.outputs["results"]
