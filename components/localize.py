"""localize_source / localize_edited: the edit region on each side (BPM_SPEC §3)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import IMAGE


@dsl.component(base_image=IMAGE)
def localize_source(evalset: Input[Dataset], parsed: Input[Dataset], preset: str, localizer: str,
                    batch_size: int, source_loc: Output[Dataset]):
    """Source side: once per sample, shared by every candidate."""
    from bpm_lib.runner.steps import localize_source_step

    meta = localize_source_step(evalset.path, parsed.path, source_loc.path, preset=preset,
                                localizer=localizer or None, batch_size=batch_size)
    source_loc.metadata.update({"cached": meta["cached"], "stats": meta.get("stats", {})})


@dsl.component(base_image=IMAGE)
def localize_edited(evalset: Input[Dataset], parsed: Input[Dataset], source_loc: Input[Dataset],
                    editset: Input[Dataset], preset: str, localizer: str, batch_size: int,
                    edited_loc: Output[Dataset]):
    """Edited side of one candidate."""
    from bpm_lib.runner.steps import localize_edited_step

    meta = localize_edited_step(evalset.path, parsed.path, source_loc.path, editset.path, edited_loc.path,
                                preset=preset, localizer=localizer or None, batch_size=batch_size)
    edited_loc.metadata.update({"cached": meta["cached"], "candidate": meta.get("candidate", "")})
