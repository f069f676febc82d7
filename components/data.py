"""fetch_data: a dataset SOURCE → an EvalSet folder."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components import IMAGE


@dsl.component(base_image=IMAGE)
def fetch_data(source: str, limit: int, seed: int, stratify: str, evalset: Output[Dataset]):
    """Fetch SOURCE (demo, magicbrush:…, pie-bench:…, bpm-json:…, jsonl:…, s3://…) as an EvalSet.

    ``limit`` ≤ 0 means all samples; ``stratify`` "" means none.
    """
    from bpm_lib.runner.steps import fetch_step

    meta = fetch_step(source, evalset.path, limit=limit if limit > 0 else None, seed=seed,
                      stratify=stratify or None)
    evalset.metadata.update({"count": meta["count"], "digest": meta["digest"], "cached": meta["cached"],
                             "dataset": meta.get("dataset"), "dataset_digest": meta.get("dataset_digest")})
