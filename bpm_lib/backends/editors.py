"""Instruction-based image editors (one candidate checkpoint each), registered in EDITORS.

* ``ip2p``: diffusers ``StableDiffusionInstructPix2PixPipeline`` from any checkpoint URI
  :func:`bpm_lib.io.model_uri.resolve_checkpoint` understands (local folder, hub id,
  ``s3://``, ``models:/``, ``runs:/``).
* ``openai``: the OpenAI images edit API (or any server speaking it) through the official
  client; optionally mask-aware.
* ``precomputed``: a folder (or ``s3://`` prefix, or MLflow URI) of finished outputs named
  by sample id: how users bring any model.

Every editor takes the checkpoint (or model name, or folder) as ``checkpoint`` and returns
an RGB image of the source image's size (except ``precomputed``, which returns the file
as it is). Seeds come from the caller (:func:`bpm_lib.runner.generate.derive_seed`).

Mask guidance (BPM_SPEC §9) lives here too: :func:`blend_with_mask` pastes the edit
back into the source outside the dilated edit mask; :func:`mask_to_openai_png` turns a
mask into the images API's convention for mask-aware editing.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bpm_lib.backends.base import EDITORS
from bpm_lib.errors import ConfigError, DataError, EditError, ModelLoadError
from bpm_lib.registry import Registry

if TYPE_CHECKING:
    from PIL import Image

    from bpm_lib.io.model_uri import ResolvedCheckpoint
    from bpm_lib.types import Sample

log = logging.getLogger(__name__)




# --------------------------------------------------------------------------- mask guidance


def dilate_mask(mask: np.ndarray, dilate_px: int) -> np.ndarray:
    """Grow a boolean H×W mask by ``dilate_px`` pixels in every direction, diagonals
    included (``scipy.ndimage.binary_dilation`` with a 3×3 square, ``dilate_px`` times:
    a pixel joins when its chessboard distance to the mask is at most ``dilate_px``)."""
    from scipy import ndimage

    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be 2-D (H×W), got shape {arr.shape}")
    if isinstance(dilate_px, bool) or not isinstance(dilate_px, int | np.integer) or dilate_px < 0:
        raise ValueError(f"dilate_px must be a non-negative integer, got {dilate_px!r}")
    out = arr.astype(bool)
    if dilate_px == 0 or not out.any():
        return out
    return np.asarray(ndimage.binary_dilation(out, structure=np.ones((3, 3), dtype=bool), iterations=int(dilate_px)))


def blend_with_mask(source: Image.Image, edited: Image.Image, mask: np.ndarray, dilate_px: int) -> Image.Image:
    """The edited image inside the dilated ``mask`` and the source, pixel for pixel,
    everywhere else (BPM_SPEC §9). ``mask`` is boolean H×W of the source's size (True =
    edit region); ``edited`` is resized to the source's size first if it differs."""
    from PIL import Image as PILImage

    src = np.asarray(source.convert("RGB"))
    arr = np.asarray(mask)
    if arr.shape != src.shape[:2]:
        raise ValueError(
            f"mask shape {arr.shape} does not match the source image (H×W = {src.shape[0]}×{src.shape[1]})"
        )
    ed_img = edited.convert("RGB")
    if ed_img.size != source.size:
        ed_img = ed_img.resize(source.size, PILImage.Resampling.BICUBIC)
    grown = dilate_mask(arr, dilate_px)
    out = np.where(grown[..., None], np.asarray(ed_img), src)
    return PILImage.fromarray(out.astype(np.uint8), mode="RGB")


def mask_to_openai_png(mask: np.ndarray) -> bytes:
    """A mask as the images edit API wants it: an RGBA PNG of the image's size whose
    fully transparent pixels (alpha 0) are the area to edit; everything else opaque."""
    from PIL import Image as PILImage

    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be 2-D (H×W), got shape {arr.shape}")
    rgba = np.zeros((*arr.shape, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(arr.astype(bool), 0, 255)
    buf = io.BytesIO()
    PILImage.fromarray(rgba, mode="RGBA").save(buf, format="PNG")
    return buf.getvalue()


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- ip2p


def ip2p_resolution(width: int, height: int, max_side: int = 512, multiple: int = 64) -> tuple[int, int]:
    """The size an image is edited at: scaled down (never up) so its longer side is at
    most ``max_side``, keeping the aspect ratio, then each side rounded to the nearest
    multiple of ``multiple`` (at least one multiple)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if multiple <= 0:
        raise ValueError(f"multiple must be positive, got {multiple}")
    if max_side < multiple or max_side % multiple:
        raise ValueError(f"max_side must be a positive multiple of {multiple}, got {max_side}")
    scale = min(1.0, max_side / max(width, height))

    def snap(side: int) -> int:
        return min(max_side, max(multiple, int(side * scale / multiple + 0.5) * multiple))

    return snap(width), snap(height)


def _scheduler_factory(class_name: str) -> Callable[..., Any]:
    def build(config: Mapping[str, Any]) -> Any:
        import diffusers

        return getattr(diffusers, class_name).from_config(config)

    build.__doc__ = f"diffusers {class_name}"
    return build


# Scheduler names accepted by the ip2p editor (data, not code: add a line to add one).
SCHEDULER_CLASSES = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "dpm_multistep": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "unipc": "UniPCMultistepScheduler",
}
SCHEDULERS: Registry[Any] = Registry("scheduler")
for _name, _cls in SCHEDULER_CLASSES.items():
    SCHEDULERS.add(_name, _scheduler_factory(_cls), f"diffusers {_cls}")


def _resolve(checkpoint: str | ResolvedCheckpoint, cache_dir: str | os.PathLike[str] | None) -> ResolvedCheckpoint:
    from bpm_lib.io.model_uri import ResolvedCheckpoint, resolve_checkpoint

    if isinstance(checkpoint, ResolvedCheckpoint):
        return checkpoint
    if not isinstance(checkpoint, str | os.PathLike):
        raise TypeError(f"checkpoint must be a URI string or a ResolvedCheckpoint, got {type(checkpoint).__name__}")
    return resolve_checkpoint(checkpoint, cache_dir=cache_dir)


def _dtype_keyword() -> str:
    """``dtype`` for diffusers releases that deprecated ``torch_dtype``, else ``torch_dtype``."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def _has_safetensors(path: Path) -> bool:
    return path.is_dir() and any(path.rglob("*.safetensors"))


class InstructPix2PixEditor:
    """diffusers InstructPix2Pix.

    The source image is resized by :func:`ip2p_resolution` (``max_side``, default 512),
    edited, and the output resized back to the source size (Lanczos). A local checkpoint
    with safetensors weights is loaded with ``use_safetensors=True`` (no pickle is ever
    unpickled from it). The safety checker is not loaded: a blacked-out output would be
    scored as a failed edit. ``device``/``dtype`` go through
    :func:`bpm_lib.backends.device.pick_device`/``pick_dtype`` (``auto``: CUDA with
    bf16/fp16 when available, else CPU fp32). The seed of each call seeds a
    ``torch.Generator`` on the pipeline's device, so the same seed, inputs, device and
    dtype give the same image.
    """

    name = "ip2p"
    accepts_mask = False

    def __init__(
        self,
        checkpoint: str | ResolvedCheckpoint,
        *,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        image_guidance_scale: float = 1.5,
        scheduler: str | None = None,
        max_side: int = 512,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: str | os.PathLike[str] | None = None,
        meaningless: bool = False,
    ) -> None:
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        if not guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale!r}")
        if not image_guidance_scale >= 1:
            raise ValueError(f"image_guidance_scale must be >= 1 (the pipeline requires it), got {image_guidance_scale!r}")
        ip2p_resolution(max_side, max_side, max_side)  # validates max_side
        scheduler_factory = SCHEDULERS.get(scheduler).factory if scheduler is not None else None

        import diffusers
        import torch
        from diffusers import StableDiffusionInstructPix2PixPipeline

        from bpm_lib.backends.device import dtype_name, pick_device, pick_dtype

        self.resolved = _resolve(checkpoint, cache_dir)
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        kwargs: dict[str, Any] = {
            _dtype_keyword(): self.dtype,
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }
        local = Path(self.resolved.local_path) if self.resolved.is_local else None
        if local is not None and _has_safetensors(local):
            kwargs["use_safetensors"] = True
        import pickle

        try:
            pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(self.resolved.local_path, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, pickle.UnpicklingError) as e:
            if local is None:
                from bpm_lib.backends.model_source import missing_model_hint

                raise ModelLoadError(f"{missing_model_hint(self.resolved.uri, 'InstructPix2Pix checkpoint')}. Cause: {e}") from e
            raise ModelLoadError(
                f"InstructPix2Pix checkpoint {self.resolved.uri!r} ({local}) cannot be loaded: "
                f"{type(e).__name__}: {e}. It must hold StableDiffusionInstructPix2PixPipeline save_pretrained output."
            ) from e
        if scheduler_factory is not None:
            pipe.scheduler = scheduler_factory(config=pipe.scheduler.config)
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self._pipe = pipe
        self._torch = torch
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = float(guidance_scale)
        self.image_guidance_scale = float(image_guidance_scale)
        self.max_side = max_side
        self.settings: dict[str, Any] = {
            "num_inference_steps": num_inference_steps,
            "guidance_scale": float(guidance_scale),
            "image_guidance_scale": float(image_guidance_scale),
            "scheduler": scheduler or type(pipe.scheduler).__name__,
            "max_side": max_side,
        }
        self._identity = {
            "name": self.name,
            "checkpoint": self.resolved.uri,
            "digest": self.resolved.digest,
            "model_name": self.resolved.model_name,
            "model_version": self.resolved.model_version,
            **self.settings,
            "device": self.device,
            "dtype": dtype_name(self.dtype),
            "diffusers": diffusers.__version__,
        }
        if meaningless:
            self._identity["meaningless"] = True
        log.info("ip2p editor ready: %s on %s/%s", self.resolved.uri, self.device, dtype_name(self.dtype))

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def sample_settings(self, image: Image.Image) -> dict[str, Any]:
        """Per-sample settings recorded in the EditSet: the resolution edited at."""
        return {"resolution": list(ip2p_resolution(*image.size, self.max_side))}

    def edit(self, sample: Sample, image: Image.Image, *, seed: int, mask: np.ndarray | None = None) -> Image.Image:
        from PIL import Image as PILImage

        if mask is not None:
            raise TypeError("the ip2p editor is not mask-aware; mask guidance blends its output instead")
        source = image.convert("RGB")
        size = source.size
        work_size = ip2p_resolution(*size, self.max_side)
        work = source if work_size == size else source.resize(work_size, PILImage.Resampling.LANCZOS)
        generator = self._torch.Generator(device=self.device).manual_seed(int(seed))
        with self._torch.inference_mode():
            result = self._pipe(
                prompt=sample.instruction,
                image=work,
                num_inference_steps=self.num_inference_steps,
                guidance_scale=self.guidance_scale,
                image_guidance_scale=self.image_guidance_scale,
                generator=generator,
                output_type="pil",
            )
        out = result.images[0].convert("RGB")
        if out.size != size:
            out = out.resize(size, PILImage.Resampling.LANCZOS)
        return out


# --------------------------------------------------------------------------- openai


class OpenAIImageEditor:
    """The OpenAI images edit endpoint (``client.images.edit``) or any server speaking it.

    ``checkpoint`` is the model name (``gpt-image-1``, ``dall-e-2``). The key comes from
    ``api_key`` or ``OPENAI_API_KEY`` and is never logged, recorded or echoed in errors;
    ``base_url`` (or ``OPENAI_BASE_URL``) points at another server. Rate limits (429),
    server errors (5xx), timeouts and connection failures are retried at most
    ``max_retries`` times with exponential backoff and jitter (``Retry-After`` honoured up
    to ``retry_max_seconds``); anything else fails the sample at once. The output is
    resized to the source size. The API takes no seed: outputs are not reproducible
    (``identity()["deterministic"]`` is False).
    """

    name = "openai"
    accepts_mask = True

    def __init__(
        self,
        checkpoint: str = "gpt-image-1",
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        size: str | None = None,
        quality: str | None = None,
        response_format: str | None = None,
        max_retries: int = 3,
        retry_base_seconds: float = 1.0,
        retry_max_seconds: float = 30.0,
        timeout: float = 120.0,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(checkpoint, str) or not checkpoint.strip():
            raise ValueError(f"checkpoint (the OpenAI model name) must be a non-empty string, got {checkpoint!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, got {max_retries!r}")
        if retry_base_seconds < 0 or retry_max_seconds < 0:
            raise ValueError(
                f"retry_base_seconds and retry_max_seconds must be >= 0, got {retry_base_seconds}, {retry_max_seconds}"
            )
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            raise ConfigError("the openai editor needs an API key: set OPENAI_API_KEY (or pass api_key)")
        import openai

        self.model = checkpoint.strip()
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self._key = key
        self.max_retries = max_retries
        self.retry_base_seconds = float(retry_base_seconds)
        self.retry_max_seconds = float(retry_max_seconds)
        self._options = {k: v for k, v in (("size", size), ("quality", quality), ("response_format", response_format)) if v}
        self._extra = dict(extra or {})
        # The client's own retry loop is off: ours is bounded, logged and testable.
        self._client = openai.OpenAI(api_key=key, base_url=self.base_url, max_retries=0, timeout=timeout)
        self._openai = openai

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "base_url": self.base_url or "https://api.openai.com/v1",
            **self._options,
            **({"extra": self._extra} if self._extra else {}),
            "deterministic": False,
        }

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _retry_delay(self, attempt: int, error: Exception) -> float:
        response = getattr(error, "response", None)
        header = response.headers.get("retry-after") if response is not None else None
        if header:
            try:
                return min(self.retry_max_seconds, max(0.0, float(header)))
            except ValueError:
                pass
        backoff = self.retry_base_seconds * 2 ** (attempt - 1)
        return min(self.retry_max_seconds, backoff * (0.5 + random.random() / 2))

    def _call(self, kwargs: dict[str, Any], what: str) -> Any:
        oa = self._openai
        retryable = (oa.RateLimitError, oa.InternalServerError, oa.APIConnectionError)
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return self._client.images.edit(**kwargs)
            except retryable as e:
                status = getattr(e, "status_code", None)
                detail = f"HTTP {status}" if status else type(e).__name__
                if attempt >= attempts:
                    raise EditError(
                        f"{what}: OpenAI images.edit failed after {attempts} attempt(s): {detail}: {self._redact(str(e))}"
                    ) from None
                delay = self._retry_delay(attempt, e)
                log.warning("%s: images.edit %s, retry %d/%d in %.2fs", what, detail, attempt, self.max_retries, delay)
                time.sleep(delay)
            except oa.APIStatusError as e:
                raise EditError(
                    f"{what}: OpenAI images.edit refused: HTTP {e.status_code}: {self._redact(str(e))}"
                ) from None
        raise EditError(f"{what}: OpenAI images.edit failed")  # pragma: no cover - loop returns or raises

    def edit(self, sample: Sample, image: Image.Image, *, seed: int, mask: np.ndarray | None = None) -> Image.Image:
        from PIL import Image as PILImage

        from bpm_lib.io.images import load_rgb

        what = f"sample {sample.sample_id!r}"
        source = image.convert("RGB")
        kwargs: dict[str, Any] = {
            "model": self.model,
            "image": ("image.png", _png_bytes(source), "image/png"),
            "prompt": sample.instruction,
            "n": 1,
            **self._options,
            **self._extra,
        }
        if mask is not None:
            arr = np.asarray(mask)
            if arr.shape != (source.height, source.width):
                raise ValueError(f"{what}: mask shape {arr.shape} does not match the image {source.height}×{source.width}")
            kwargs["mask"] = ("mask.png", mask_to_openai_png(arr), "image/png")
        response = self._call(kwargs, what)
        data = getattr(response, "data", None) or []
        if not data:
            raise EditError(f"{what}: OpenAI images.edit returned no image")
        item = data[0]
        if getattr(item, "b64_json", None):
            try:
                payload = base64.b64decode(item.b64_json, validate=True)
            except ValueError as e:
                raise EditError(f"{what}: OpenAI images.edit returned invalid base64: {e}") from e
        elif getattr(item, "url", None):
            payload = self._fetch_url(item.url, what)
        else:
            raise EditError(f"{what}: OpenAI images.edit answer has neither b64_json nor url")
        try:
            out = load_rgb(payload, what=f"OpenAI edit of {what}")
        except DataError as e:
            raise EditError(str(e)) from e
        if out.size != source.size:
            out = out.resize(source.size, PILImage.Resampling.LANCZOS)
        return out

    def _fetch_url(self, url: str, what: str) -> bytes:
        import httpx

        try:
            resp = httpx.get(url, timeout=60.0, follow_redirects=True)
            resp.raise_for_status()
        except httpx.HTTPError as e:
            raise EditError(f"{what}: cannot download the edited image from the returned URL: {e}") from e
        return resp.content


# --------------------------------------------------------------------------- precomputed


class PrecomputedEditor:
    """Finished outputs in a folder: ``<sample_id>.png|jpg|jpeg|webp`` (or an EditSet).

    ``checkpoint`` is the folder: a local path, an ``s3://`` prefix (downloaded once via
    :func:`bpm_lib.io.storage.fetch_to_local`) or an MLflow ``runs:/``/``models:/`` URI.
    A sample without an image is a :class:`DataError` for that sample only.
    """

    name = "precomputed"
    accepts_mask = False

    def __init__(self, checkpoint: str | ResolvedCheckpoint, *, cache_dir: str | os.PathLike[str] | None = None) -> None:
        from bpm_lib.io.editset import EDITS_JSONL, EditSet

        self.resolved = _resolve(checkpoint, cache_dir)
        folder = Path(self.resolved.local_path)
        if not self.resolved.is_local or not folder.is_dir():
            raise ModelLoadError(
                f"precomputed edits {self.resolved.uri!r} must be a folder (local, s3:// prefix or MLflow artifact folder)"
            )
        self._edits = EditSet.open(folder) if (folder / EDITS_JSONL).exists() else EditSet.from_folder(folder)
        log.info("precomputed editor: %d images in %s", len(self._edits), self.resolved.uri)

    @property
    def candidate(self) -> str:
        return self._edits.candidate

    def identity(self) -> dict[str, Any]:
        editor = self._edits.editor
        return {
            "name": self.name,
            "folder": self.resolved.uri,
            "digest": self.resolved.digest,
            "made_by": editor if editor != self.name else None,
        }

    def edit(self, sample: Sample, image: Image.Image, *, seed: int, mask: np.ndarray | None = None) -> Image.Image:
        return self._edits.load_image(sample.sample_id)


EDITORS.add("ip2p", InstructPix2PixEditor, "diffusers InstructPix2Pix (local, hub, s3://, models:/, runs:/ checkpoints)")
EDITORS.add("openai", OpenAIImageEditor, "OpenAI images edit API (or a compatible server); optionally mask-aware")
EDITORS.add("precomputed", PrecomputedEditor, "a folder of finished edits named by sample id")
