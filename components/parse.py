"""parse_instructions: every instruction → ParsedInstruction (once per sample)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import IMAGE


@dsl.component(base_image=IMAGE)
def parse_instructions(evalset: Input[Dataset], preset: str, parser: str, parsed: Output[Dataset]):
    """``parser`` "" uses the preset's parser."""
    from bpm_lib.runner.steps import parse_step

    meta = parse_step(evalset.path, parsed.path, preset=preset, parser=parser or None)
    parsed.metadata.update({"cached": meta["cached"], "stats": meta.get("stats", {})})
