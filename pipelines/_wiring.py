"""Task settings shared by the pipelines: GPU requests, tolerations, secrets as env.

Only KFP / kfp-kubernetes calls; no logic of the metric lives here.
"""

from typing import Any

from kfp import kubernetes
from kfp.dsl import PipelineTask

# Kubernetes secrets (templates in manifests/base/secrets.yaml); optional so a cluster
# without an OpenAI key or S3 still runs the pipelines that do not need them.
SECRETS = {
    "bpm-s3-credentials": {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
                           "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"},
    "bpm-openai": {"OPENAI_API_KEY": "OPENAI_API_KEY", "OPENAI_BASE_URL": "OPENAI_BASE_URL"},
}


def with_secrets(task: PipelineTask) -> PipelineTask:
    for name, keys in SECRETS.items():
        kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=keys, optional=True)
    return task


def cpu_task(task: PipelineTask, memory: str = "4G") -> PipelineTask:
    task.set_cpu_request("1").set_memory_request(memory).set_memory_limit(memory)
    task.set_caching_options(True)
    return with_secrets(task)


def gpu_task(task: PipelineTask, memory: str = "32G") -> PipelineTask:
    """A stage that runs models: one NVIDIA GPU, tolerating GPU-node taints."""
    task.set_cpu_request("4").set_memory_request(memory).set_memory_limit(memory)
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    task.set_caching_options(True)
    return with_secrets(task)


def source_side(*, dataset_source: Any, dataset_limit: Any, dataset_seed: Any, dataset_stratify: Any,
                preset: Any, parser: Any, localizer: Any, batch_size: Any) -> tuple[PipelineTask, ...]:
    """fetch → parse → localize(source): the work shared by every candidate."""
    from components.data import fetch_data
    from components.localize import localize_source
    from components.parse import parse_instructions

    data = cpu_task(fetch_data(source=dataset_source, limit=dataset_limit, seed=dataset_seed,
                               stratify=dataset_stratify))
    parsed = cpu_task(parse_instructions(evalset=data.outputs["evalset"], preset=preset, parser=parser))
    source = gpu_task(localize_source(evalset=data.outputs["evalset"], parsed=parsed.outputs["parsed"],
                                      preset=preset, localizer=localizer, batch_size=batch_size))
    return data, parsed, source


def candidate_side(data: PipelineTask, parsed: PipelineTask, source: PipelineTask, *, candidate: Any,
                   tracking_uri: Any, preset: Any, localizer: Any, embedder: Any,
                   batch_size: Any) -> tuple[PipelineTask, PipelineTask]:
    """generate → localize(edited) → judge for one candidate; returns (edits, judged)."""
    from components.generate import generate_edits
    from components.judge import judge
    from components.localize import localize_edited

    edits = gpu_task(generate_edits(evalset=data.outputs["evalset"], candidate=candidate,
                                    tracking_uri=tracking_uri))
    edited = gpu_task(localize_edited(evalset=data.outputs["evalset"], parsed=parsed.outputs["parsed"],
                                      source_loc=source.outputs["source_loc"], editset=edits.outputs["editset"],
                                      preset=preset, localizer=localizer, batch_size=batch_size))
    judged = gpu_task(judge(evalset=data.outputs["evalset"], parsed=parsed.outputs["parsed"],
                            source_loc=source.outputs["source_loc"], edited_loc=edited.outputs["edited_loc"],
                            editset=edits.outputs["editset"], preset=preset, embedder=embedder,
                            batch_size=batch_size))
    return edits, judged
