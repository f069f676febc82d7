"""generate_edits: one candidate checkpoint edits every sample of the EvalSet."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import IMAGE


@dsl.component(base_image=IMAGE)
def generate_edits(evalset: Input[Dataset], candidate: str, tracking_uri: str, editset: Output[Dataset]):
    """``candidate``: a CandidateConfig as JSON ({name, editor, checkpoint, settings, seed,
    mask_guidance}). A JSON string, not a dict: KFP passes dicts as protobuf Structs,
    which turn every integer into a float (seed 0 → 0.0). ``tracking_uri`` resolves
    ``models:/`` and ``runs:/`` checkpoints ("" keeps the pod's MLFLOW_TRACKING_URI)."""
    from bpm_lib.runner.steps import generate_step

    meta = generate_step(evalset.path, candidate, editset.path, tracking_uri=tracking_uri or None)
    editset.metadata.update({"candidate": meta["candidate"], "cached": meta["cached"],
                             "checkpoint_digest": meta.get("checkpoint_digest") or ""})
