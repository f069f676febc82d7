"""One small Protocol per swappable role, and the registry of each role.

Backends take decoded RGB ``PIL.Image.Image`` objects and plain strings, return plain
Python/numpy values, and keep their heavy imports (torch, transformers, …) inside their
own modules so that importing :mod:`bpm_lib` stays cheap.

Each backend exposes ``identity()``: a JSON-able dict naming the backend, the model id
and revision and any setting that changes its output. Artifacts record it and caches
key on it. A backend whose outputs are meaningless for real scoring (random weights)
sets ``"meaningless": True`` there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from bpm_lib.registry import Registry
from bpm_lib.types import Box, Detection, Localization, ParsedInstruction, Sample

if TYPE_CHECKING:
    from PIL import Image


@runtime_checkable
class InstructionParser(Protocol):
    """Instruction text → :class:`ParsedInstruction` (BPM_SPEC §2).

    ``parse`` raises :class:`bpm_lib.errors.ParseError` for an instruction it cannot
    read; it never returns a silent default.
    """

    name: str
    prompt_version: str

    def identity(self) -> dict[str, Any]: ...

    def parse(self, instruction: str) -> ParsedInstruction: ...


@runtime_checkable
class Detector(Protocol):
    """Open-vocabulary detector: one phrase per image → detections, best first."""

    name: str

    def identity(self) -> dict[str, Any]: ...

    def detect(self, images: Sequence[Image.Image], phrases: Sequence[str]) -> list[list[Detection]]: ...


@runtime_checkable
class Segmenter(Protocol):
    """Promptable segmenter: pixel boxes per image → one boolean H×W mask per image
    (the union of the masks of that image's boxes; all False for no boxes)."""

    name: str

    def identity(self) -> dict[str, Any]: ...

    def segment(self, images: Sequence[Image.Image], boxes: Sequence[Sequence[Box]]) -> list[np.ndarray]: ...


@runtime_checkable
class Embedder(Protocol):
    """CLIP-style joint embedder. Returns raw, unnormalised float32 features [N, D]."""

    name: str

    def identity(self) -> dict[str, Any]: ...

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class Localizer(Protocol):
    """Finds the edit region of a sample on both sides (BPM_SPEC §3).

    ``localize_source`` depends only on the sample; ``localize_edited`` gets the source
    side's result so it can prompt the segmenter with the source boxes (parity), and the
    decoded source images (for additions the source-image mask needs the edited boxes).
    """

    name: str

    def identity(self) -> dict[str, Any]: ...

    def localize_source(
        self, samples: Sequence[Sample], parsed: Sequence[ParsedInstruction], images: Sequence[Image.Image]
    ) -> list[Localization]: ...

    def localize_edited(
        self,
        samples: Sequence[Sample],
        parsed: Sequence[ParsedInstruction],
        images: Sequence[Image.Image],
        source: Sequence[Localization],
        candidate: str,
        *,
        source_images: Sequence[Image.Image] | None = None,
    ) -> list[Localization]: ...


@runtime_checkable
class Editor(Protocol):
    """Instruction-based image editor (one candidate checkpoint).

    ``accepts_mask``: whether ``edit`` uses a mask (True = edit region) handed to it —
    the mask-aware guidance of BPM_SPEC §9; other editors ignore it.
    """

    name: str
    accepts_mask: bool

    def identity(self) -> dict[str, Any]: ...

    def edit(self, sample: Sample, image: Image.Image, *, seed: int, mask: np.ndarray | None = None) -> Image.Image: ...


PARSERS: Registry[InstructionParser] = Registry("parser")
DETECTORS: Registry[Detector] = Registry("detector")
SEGMENTERS: Registry[Segmenter] = Registry("segmenter")
EMBEDDERS: Registry[Embedder] = Registry("embedder")
LOCALIZERS: Registry[Localizer] = Registry("localizer")
EDITORS: Registry[Editor] = Registry("editor")

ROLES: dict[str, Registry[Any]] = {
    "parser": PARSERS,
    "detector": DETECTORS,
    "segmenter": SEGMENTERS,
    "embedder": EMBEDDERS,
    "localizer": LOCALIZERS,
    "editor": EDITORS,
}
