"""SAM promptable segmenters: boxes → one boolean mask per image (BPM_SPEC §3).

* ``SamSegmenter`` ("sam"): transformers ``SamModel`` + ``SamProcessor`` from a hub id, a
  local ``save_pretrained`` folder or an ``s3://`` prefix, batched over images.
* ``OfficialSamSegmenter`` ("sam-official"): the official ``sam_vit_{h,l,b}_*.pth``
  checkpoints through ``segment_anything`` (the reference implementation's path), loaded
  with ``torch.load(weights_only=True)`` so no pickled code is ever executed.
* ``TinyRandomSamSegmenter`` ("tiny-random"): a tiny random-weight ``SamModel`` built in
  memory from ``bpm_lib/configs/tiny_sam.json`` (offline; outputs meaningless).

Every segmenter returns, per image, the union of the best mask of each box
(``multimask_output=False``) at the image's own size; an image without boxes gets an
all-False mask and costs no model call.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bpm_lib.backends.base import SEGMENTERS
from bpm_lib.backends.device import dtype_name, pick_device, pick_dtype
from bpm_lib.backends.model_source import (
    config_digest,
    load_model_and_processor,
    read_packaged_config,
    resolve_model_source,
)
from bpm_lib.errors import ModelLoadError
from bpm_lib.types import Box

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "facebook/sam-vit-huge"
TINY_CONFIG = "tiny_sam.json"
OFFICIAL_MODEL_TYPES = ("vit_h", "vit_l", "vit_b")


def check_boxes(images: Sequence[Image.Image], boxes: Sequence[Sequence[Box]]) -> list[list[Box]]:
    """Validate the per-image box lists: same count as images, 4 finite numbers each,
    x0 ≤ x1 and y0 ≤ y1."""
    if len(images) != len(boxes):
        raise ValueError(f"images and boxes must have the same length, got {len(images)} and {len(boxes)}")
    out: list[list[Box]] = []
    for i, image_boxes in enumerate(boxes):
        checked: list[Box] = []
        for j, box in enumerate(image_boxes):
            vals = tuple(float(v) for v in box)
            if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
                raise ValueError(f"boxes[{i}][{j}] must be 4 finite numbers [x0, y0, x1, y1], got {list(box)!r}")
            if vals[2] < vals[0] or vals[3] < vals[1]:
                raise ValueError(f"boxes[{i}][{j}] has negative size (x1 < x0 or y1 < y0): {list(vals)!r}")
            checked.append(vals)  # type: ignore[arg-type]
        out.append(checked)
    return out


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


class SamSegmenter:
    """SAM through transformers, box prompts, batched over images.

    ``model`` is a model source (hub id, local folder, ``s3://`` prefix) or an already
    built ``SamModel`` (then ``processor`` and ``model_id`` are required). Images of one
    batch with fewer boxes than the others are padded by repeating their first box; only
    the real boxes enter the union. ``cache_dir`` is where ``s3://`` sources are
    downloaded; ``device``/``dtype`` default to ``auto`` (:mod:`bpm_lib.backends.device`).
    """

    name = "sam"

    def __init__(
        self,
        model: str | Any = DEFAULT_MODEL,
        *,
        processor: Any | None = None,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 4,
        mask_threshold: float = 0.0,
        cache_dir: str | Path | None = None,
        meaningless: bool = False,
        model_id: str | None = None,
    ) -> None:
        self.batch_size = _check_batch_size(batch_size)
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.revision = revision
        self.mask_threshold = float(mask_threshold)
        self.meaningless = bool(meaningless)
        self.forward_calls = 0
        model_loader: Any = None
        processor_loader: Any = None
        if isinstance(model, str):
            from transformers import SamModel, SamProcessor

            model_loader, processor_loader = SamModel.from_pretrained, SamProcessor.from_pretrained
        loaded, self.processor, self.model_id = load_model_and_processor(
            model, processor, model_id, model_loader=model_loader, processor_loader=processor_loader,
            what="SAM segmenter", cache_dir=cache_dir, revision=revision, dtype=self.dtype,
        )
        self.model = loaded.to(device=self.device, dtype=self.dtype).eval()

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model_id,
            "revision": self.revision,
            "mask_threshold": self.mask_threshold,
            "multimask_output": False,
            "dtype": dtype_name(self.dtype),
            "meaningless": self.meaningless,
        }

    def segment(self, images: Sequence[Image.Image], boxes: Sequence[Sequence[Box]]) -> list[np.ndarray]:
        """One boolean H×W mask per image: the union of the masks of its pixel boxes."""
        checked = check_boxes(images, boxes)
        masks: list[np.ndarray | None] = [None] * len(images)
        todo = []
        for i, (img, bxs) in enumerate(zip(images, checked, strict=True)):
            if bxs:
                todo.append(i)
            else:
                masks[i] = np.zeros((img.height, img.width), dtype=bool)
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start:start + self.batch_size]
            batch_masks = self._segment_batch([images[i] for i in idx], [checked[i] for i in idx])
            for i, mask in zip(idx, batch_masks, strict=True):
                masks[i] = mask
        return [m for m in masks if m is not None]

    def _segment_batch(self, images: list[Image.Image], boxes: list[list[Box]]) -> list[np.ndarray]:
        import torch

        rgb = [img if img.mode == "RGB" else img.convert("RGB") for img in images]
        most = max(len(b) for b in boxes)
        padded = [[list(b) for b in bxs] + [list(bxs[0])] * (most - len(bxs)) for bxs in boxes]
        inputs = self.processor(images=rgb, input_boxes=padded, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
        input_boxes = inputs["input_boxes"].to(self.device, self.dtype)
        with torch.inference_mode():
            outputs = self.model(pixel_values=pixel_values, input_boxes=input_boxes, multimask_output=False)
        self.forward_calls += 1
        pred = outputs.pred_masks.float().cpu()  # [B, boxes, 1, h, w] logits
        full = self.processor.post_process_masks(
            list(pred),
            inputs["original_sizes"],
            inputs["reshaped_input_sizes"],
            mask_threshold=self.mask_threshold,
            binarize=True,
        )
        out = []
        for bxs, per_box in zip(boxes, full, strict=True):
            out.append(per_box[: len(bxs), 0].any(dim=0).numpy().astype(bool))
        return out


def build_tiny_sam(seed: int | None = None, config: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """Tiny random ``(SamModel, SamProcessor)`` from the packaged JSON config.

    Deterministic for a given ``seed`` (default: the config's); the global torch RNG
    state is left untouched.
    """
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    cfg = config if config is not None else read_packaged_config(TINY_CONFIG)
    seed = int(cfg.get("seed", 0)) if seed is None else int(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SamModel(SamConfig(**cfg["model"])).eval()
    processor = SamProcessor(image_processor=SamImageProcessor(**cfg["image_processor"]))
    return model, processor


class TinyRandomSamSegmenter(SamSegmenter):
    """Tiny random-weight SAM built in memory (offline; outputs meaningless)."""

    name = "tiny-random"

    def __init__(
        self,
        *,
        seed: int | None = None,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 4,
        mask_threshold: float = 0.0,
    ) -> None:
        cfg = read_packaged_config(TINY_CONFIG)
        self.seed = int(cfg.get("seed", 0)) if seed is None else int(seed)
        model, processor = build_tiny_sam(self.seed, cfg)
        super().__init__(
            model,
            processor=processor,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            mask_threshold=mask_threshold,
            meaningless=True,
            model_id=f"tiny-random:{TINY_CONFIG}@{config_digest(cfg)}",
        )

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "seed": self.seed}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_official_sam(checkpoint: str | Path, model_type: str = "vit_h", builder: Callable[[], Any] | None = None) -> Any:
    """Build the ``segment_anything`` architecture and load a local ``.pth`` state dict
    with ``torch.load(weights_only=True)`` (tensors only: a checkpoint that needs
    arbitrary unpickling is refused with :class:`ModelLoadError`).

    ``builder`` replaces ``sam_model_registry[model_type]`` for a custom architecture.
    """
    import pickle

    import torch

    path = Path(checkpoint)
    if builder is None:
        from segment_anything import sam_model_registry

        if model_type not in OFFICIAL_MODEL_TYPES:
            raise ValueError(f"model_type must be one of {OFFICIAL_MODEL_TYPES}, got {model_type!r}")
        build: Callable[[], Any] = lambda: sam_model_registry[model_type](checkpoint=None)  # noqa: E731
    else:
        build = builder
    if not path.is_file():
        raise ModelLoadError(
            f"official SAM checkpoint {str(path)!r} is not a file; download sam_vit_h_4b8939.pth "
            "(or the vit_l/vit_b one) and pass its local path or an s3:// URI"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise ModelLoadError(
            f"official SAM checkpoint {str(path)!r} cannot be loaded as plain tensors "
            f"(weights_only=True refuses pickled code): {e}"
        ) from e
    if not isinstance(state, dict):
        raise ModelLoadError(f"official SAM checkpoint {str(path)!r} is not a state dict (got {type(state).__name__})")
    model = build()
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelLoadError(
            f"official SAM checkpoint {str(path)!r} does not match the {model_type!r} architecture: {e}"
        ) from e
    return model.eval()


class OfficialSamSegmenter:
    """The official SAM (``segment_anything.SamPredictor``) with box prompts.

    ``checkpoint`` is a local ``.pth`` path or an ``s3://`` URI of one. ``model_type`` is
    ``vit_h`` (the paper's), ``vit_l`` or ``vit_b``; ``builder`` builds a custom
    architecture instead (``model_type`` then only labels it). Runs in float32, one image
    at a time with all of its boxes in one call, like the reference implementation.
    """

    name = "sam-official"

    def __init__(
        self,
        checkpoint: str,
        *,
        model_type: str = "vit_h",
        builder: Callable[[], Any] | None = None,
        device: str = "auto",
        cache_dir: str | Path | None = None,
        meaningless: bool = False,
    ) -> None:
        from segment_anything import SamPredictor

        if not isinstance(checkpoint, str) or not checkpoint:
            raise ValueError(f"checkpoint must be a path or s3:// URI of a SAM .pth file, got {checkpoint!r}")
        self.checkpoint = checkpoint
        self.model_type = model_type
        self.device = pick_device(device)
        self.meaningless = bool(meaningless)
        self.forward_calls = 0
        cache = Path(cache_dir) if cache_dir is not None else None
        local = Path(resolve_model_source(checkpoint, cache_dir=cache, what="official SAM checkpoint"))
        self.model = load_official_sam(local, model_type, builder).to(self.device)
        self.sha256 = _sha256_file(local)
        self.predictor = SamPredictor(self.model)

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "checkpoint": self.checkpoint,
            "model_type": self.model_type,
            "sha256": self.sha256,
            "multimask_output": False,
            "dtype": "float32",
            "meaningless": self.meaningless,
        }

    def segment(self, images: Sequence[Image.Image], boxes: Sequence[Sequence[Box]]) -> list[np.ndarray]:
        """One boolean H×W mask per image: the union of the masks of its pixel boxes."""
        import torch

        checked = check_boxes(images, boxes)
        out = []
        for img, bxs in zip(images, checked, strict=True):
            if not bxs:
                out.append(np.zeros((img.height, img.width), dtype=bool))
                continue
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
            self.predictor.set_image(arr)
            prompt = torch.as_tensor(bxs, dtype=torch.float32, device=self.predictor.device)
            prompt = self.predictor.transform.apply_boxes_torch(prompt, arr.shape[:2])
            masks, _, _ = self.predictor.predict_torch(None, None, boxes=prompt, multimask_output=False)
            self.forward_calls += 1
            out.append(masks[:, 0].any(dim=0).cpu().numpy().astype(bool))
        self.predictor.reset_image()
        return out


SEGMENTERS.add("sam", SamSegmenter, "SAM (transformers SamModel), default facebook/sam-vit-huge")
SEGMENTERS.add("sam-official", OfficialSamSegmenter, "official SAM .pth checkpoints via segment_anything")
SEGMENTERS.add("tiny-random", TinyRandomSamSegmenter, "tiny random-weight SAM (offline, meaningless)")
