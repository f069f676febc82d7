"""Task settings shared by the pipelines: GPU requests, tolerations, secrets as env.

Only KFP / kfp-kubernetes calls; no logic of the metric lives here.
"""

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
