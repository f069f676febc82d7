"""judge: region- and semantic-aware judges for one candidate (BPM_SPEC §4–§5)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import IMAGE


@dsl.component(base_image=IMAGE)
def judge(evalset: Input[Dataset], parsed: Input[Dataset], source_loc: Input[Dataset],
          edited_loc: Input[Dataset], editset: Input[Dataset], preset: str, embedder: str, batch_size: int,
          judged: Output[Dataset]):
    from bpm_lib.runner.steps import judge_step

    meta = judge_step(evalset.path, parsed.path, source_loc.path, edited_loc.path, editset.path, judged.path,
                      preset=preset, embedder=embedder or None, batch_size=batch_size)
    judged.metadata.update({"cached": meta["cached"], "candidate": meta.get("candidate", "")})
