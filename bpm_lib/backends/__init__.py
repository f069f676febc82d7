"""Swappable model backends. Importing this package registers the built-in ones.

Every backend module keeps torch/transformers/open_clip/diffusers imports inside its
classes, so registering them costs nothing until one is built.
"""

from bpm_lib.backends import (  # noqa: F401 - imported for their registrations
    clip,
    editors,
    grounding_dino,
    llm_parsers,
    localizers,
    rules,
    sam,
)
from bpm_lib.backends.base import (
    DETECTORS,
    EDITORS,
    EMBEDDERS,
    LOCALIZERS,
    PARSERS,
    ROLES,
    SEGMENTERS,
)

__all__ = ["DETECTORS", "EDITORS", "EMBEDDERS", "LOCALIZERS", "PARSERS", "ROLES", "SEGMENTERS"]
