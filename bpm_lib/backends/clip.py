"""CLIP-style embedders: open_clip, transformers CLIP, and a tiny random open_clip model.

Every embedder returns raw, unnormalised float32 features ``[N, D]`` (BPM_SPEC §5 uses
raw CLIP features), works in batches of ``batch_size``, loads its model once (on first
use, or explicitly with :meth:`load`), and keeps text features in an in-memory LRU cache
keyed by the text (instructions and object phrases repeat across samples and candidates).

Checkpoint safety: open_clip 3.3's ``load_state_dict`` calls ``torch.load(...,
weights_only=True)`` but retries with a plain ``torch.load`` (which, depending on the
torch version and ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``, may unpickle arbitrary code) when
the first call raises ``TypeError``. So this module never hands a checkpoint file to
open_clip: it resolves the file itself, reads ``.safetensors`` with safetensors and any
other file with ``torch.load(weights_only=True)`` only (no fallback), and then applies
open_clip's own state-dict conversions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bpm_lib.backends.base import EMBEDDERS
from bpm_lib.errors import ModelLoadError

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

TINY_CLIP_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny_clip.json"
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
MEANINGLESS_NOTE = "random weights: scores are meaningless for real evaluation"

# open_clip's "fp16"/"bf16" precision keeps OpenAI's mixed precision (LayerNorm in fp32).
_OPEN_CLIP_PRECISION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class CacheInfo:
    """Text-feature cache statistics (like :func:`functools.lru_cache`'s ``cache_info``)."""

    hits: int
    misses: int
    size: int
    maxsize: int


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _resolve_device_dtype(device: str, dtype: str) -> tuple[str, str]:
    """Resolve ``"auto"`` device/dtype (CUDA + half precision when present, else CPU fp32)."""
    from bpm_lib.backends.device import dtype_name, pick_device, pick_dtype

    resolved = pick_device(device)
    return resolved, dtype_name(pick_dtype(resolved, dtype))


def _check_images(images: Sequence[Image.Image]) -> list[Image.Image]:
    from PIL import Image as PILImage

    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a sequence of PIL images, got {type(images).__name__}")
    out = list(images)
    for i, img in enumerate(out):
        if not isinstance(img, PILImage.Image):
            raise TypeError(f"images[{i}] must be a PIL image, got {type(img).__name__}")
        if img.mode != "RGB":
            raise ValueError(
                f"images[{i}] must be RGB, got mode {img.mode!r} (decode with bpm_lib.io.images.load_rgb)"
            )
    return out


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a sequence of strings, got {type(texts).__name__}")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a string, got {type(text).__name__}")
    return out


class _BatchedEmbedder(ABC):
    """Batching, the text LRU cache and lazy one-time loading shared by every embedder.

    Subclasses implement :meth:`_load`, :meth:`_encode_image_batch` and
    :meth:`_encode_text_batch` (one batch in, float32 ``[n, D]`` out).
    """

    name: str = ""

    def __init__(self, *, device: str, dtype: str, batch_size: int, text_cache_size: int) -> None:
        self.batch_size = _positive_int(batch_size, "batch_size")
        if isinstance(text_cache_size, bool) or not isinstance(text_cache_size, int) or text_cache_size < 0:
            raise ValueError(f"text_cache_size must be a non-negative integer, got {text_cache_size!r}")
        self.text_cache_size = text_cache_size
        self.device, self.dtype = _resolve_device_dtype(device, dtype)
        self._loaded = False
        self._dim: int | None = None
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._hits = 0
        self._misses = 0

    # -- subclass hooks -------------------------------------------------------------
    @abstractmethod
    def _load(self) -> None:
        """Build or load the model (called once, on first use)."""

    @abstractmethod
    def _encode_image_batch(self, images: list[Image.Image]) -> np.ndarray:
        """One batch of images → float32 ``[n, D]``."""

    @abstractmethod
    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        """One batch of texts → float32 ``[n, D]``."""

    # -- public API ------------------------------------------------------------------
    def load(self) -> None:
        """Load the model now (otherwise it loads on first use); later calls do nothing."""
        if not self._loaded:
            self._load()
            self._loaded = True

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)  # type: ignore[no-any-return]

    def dim(self) -> int:
        """Feature dimension D (loads the model)."""
        if self._dim is None:
            self.load()
            self._dim = int(self._encode_text_batch([""]).shape[1])
        return self._dim

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Raw image features, float32 ``[len(images), D]``, computed ``batch_size`` at a time."""
        items = _check_images(images)
        if not items:
            return np.zeros((0, self.dim()), dtype=np.float32)
        self.load()
        chunks = [
            self._encode_image_batch(items[i : i + self.batch_size]) for i in range(0, len(items), self.batch_size)
        ]
        return self._finish(np.concatenate(chunks, axis=0), len(items), "image")

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Raw text features, float32 ``[len(texts), D]``; repeated texts come from the cache."""
        items = _check_texts(texts)
        if not items:
            return np.zeros((0, self.dim()), dtype=np.float32)
        found: dict[str, np.ndarray] = {}
        missing: list[str] = []
        seen: set[str] = set()
        for text in items:
            if text in seen:
                continue
            seen.add(text)
            cached = self._text_cache.get(text)
            if cached is None:
                missing.append(text)
            else:
                self._text_cache.move_to_end(text)
                found[text] = cached
        self._hits += len(items) - len(missing)
        self._misses += len(missing)
        if missing:
            self.load()
            for start in range(0, len(missing), self.batch_size):
                batch = missing[start : start + self.batch_size]
                feats = self._finish(self._encode_text_batch(batch), len(batch), "text")
                for text, row in zip(batch, feats, strict=True):
                    row.setflags(write=False)
                    found[text] = row
                    self._remember(text, row)
        return np.stack([found[text] for text in items]).astype(np.float32, copy=True)

    def cache_info(self) -> CacheInfo:
        """Hits and misses of the text-feature cache since construction (or :meth:`cache_clear`)."""
        return CacheInfo(self._hits, self._misses, len(self._text_cache), self.text_cache_size)

    def cache_clear(self) -> None:
        self._text_cache.clear()
        self._hits = self._misses = 0

    # -- helpers ---------------------------------------------------------------------
    def _remember(self, text: str, row: np.ndarray) -> None:
        if self.text_cache_size == 0:
            return
        self._text_cache[text] = row
        self._text_cache.move_to_end(text)
        while len(self._text_cache) > self.text_cache_size:
            self._text_cache.popitem(last=False)

    def _finish(self, feats: np.ndarray, n: int, what: str) -> np.ndarray:
        arr = np.asarray(feats, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] != n:
            raise ModelLoadError(f"{self.name}: {what} encoder returned shape {arr.shape}, expected ({n}, D)")
        if self._dim is None:
            self._dim = int(arr.shape[1])
        return arr


# ---------------------------------------------------------------------------------------
# open_clip
# ---------------------------------------------------------------------------------------


def load_state_dict_safely(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint without executing pickled code.

    ``.safetensors`` is read with safetensors; anything else with
    ``torch.load(weights_only=True)`` and no fallback. A TorchScript archive (OpenAI's
    original ``.pt``) is refused by ``weights_only`` and reported as such.
    """
    import pickle

    import torch

    file = Path(path)
    if not file.is_file():
        raise ModelLoadError(f"checkpoint file not found: {file}")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            checkpoint: Any = load_file(str(file), device="cpu")
        else:
            checkpoint = torch.load(str(file), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, TypeError, EOFError) as e:
        reason = str(e).strip().split(". ")[0][:200]
        raise ModelLoadError(
            f"cannot read checkpoint {file} as plain weights ({type(e).__name__}: {reason}); "
            "only safetensors files and weights-only torch checkpoints are accepted, never pickled code"
        ) from e
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ModelLoadError(f"checkpoint {file} does not hold a state dict (got {type(checkpoint).__name__})")
    if not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ModelLoadError(f"checkpoint {file}: state dict values must all be tensors")
    if next(iter(checkpoint)).startswith("module."):
        checkpoint = {k.removeprefix("module."): v for k, v in checkpoint.items()}
    return dict(checkpoint)


@contextlib.contextmanager
def _drop_root_log(prefix: str) -> Iterator[None]:
    """Drop records starting with ``prefix`` logged on the root logger inside the block."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _split_hub_path(value: str, name: str) -> tuple[str, str | None]:
    """``org/repo`` or ``org/repo/`` → (repo, None); ``org/repo/sub/file`` → (repo, "sub/file")."""
    parts = value.strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"{name} must name a Hub repo as 'org/repo[/file]', got {value!r}")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None


def _apply_open_clip_state_dict(model: Any, state_dict: dict[str, Any]) -> None:
    """open_clip's ``load_checkpoint`` conversions, applied to an already-read state dict."""
    import torch
    from open_clip.convert import convert_state_dict
    from open_clip.model import (
        convert_to_custom_text_state_dict,
        resize_pos_embed,
        resize_text_pos_embed,
    )

    state_dict = convert_state_dict(model, state_dict)
    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = convert_to_custom_text_state_dict(state_dict)
    for key in ("logit_scale", "logit_bias"):
        param = getattr(model, key, None)
        if key in state_dict and param is not None and param.ndim != state_dict[key].ndim:
            state_dict[key] = state_dict[key].reshape(param.shape)
    if "logit_bias" not in state_dict and getattr(model, "logit_bias", None) is not None:
        state_dict["logit_bias"] = torch.zeros_like(state_dict["logit_scale"])
    state_dict.pop("text.transformer.embeddings.position_ids", None)
    resize_pos_embed(state_dict, model)
    resize_text_pos_embed(state_dict, model)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"checkpoint does not match the architecture: {e}") from e


class OpenClipEmbedder(_BatchedEmbedder):
    """open_clip model (default ViT-L/14 with OpenAI weights, the paper's CLIP).

    ``model_name``: a built-in open_clip architecture (``open_clip.list_models()``), or
    ``hf-hub:org/repo`` / ``local-dir:/path`` (architecture and weights from there).
    ``pretrained`` (ignored with those prefixes): an open_clip tag (``openai``,
    ``laion2b_s32b_b82k``, …), a local checkpoint file (``.safetensors`` preferred;
    ``.bin``/``.pt``/``.pth`` read weights-only), ``hf-hub:org/repo[/file]`` for weights
    from the Hub, or ``None`` for random weights. ``revision`` pins the Hub revision of
    tag and ``hf-hub:`` downloads.
    """

    name = "open-clip"

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | None = "openai",
        *,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 32,
        text_cache_size: int = 4096,
        cache_dir: str | None = None,
        preprocess_workers: int | None = None,
    ) -> None:
        if not isinstance(model_name, str) or not model_name.strip():
            raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
        if pretrained is not None and (not isinstance(pretrained, str) or not pretrained.strip()):
            raise ValueError(f"pretrained must be a tag, a file path, 'hf-hub:<repo>' or None, got {pretrained!r}")
        if revision is not None and (not isinstance(revision, str) or not revision.strip()):
            raise ValueError(f"revision must be a non-empty string or None, got {revision!r}")
        super().__init__(device=device, dtype=dtype, batch_size=batch_size, text_cache_size=text_cache_size)
        self.model_name = model_name
        self.pretrained = pretrained
        self.revision = revision
        self.cache_dir = cache_dir
        # PIL resizing releases the GIL: a few threads keep a GPU fed at large batch sizes.
        self.preprocess_workers = (
            min(4, os.cpu_count() or 1)
            if preprocess_workers is None
            else _positive_int(preprocess_workers, "preprocess_workers")
        )
        self._model: Any = None
        self._preprocess: Callable[[Image.Image], Any] | None = None
        self._tokenizer: Callable[[list[str]], Any] | None = None

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model_name": self.model_name,
            "pretrained": self.pretrained,
            "revision": self.revision,
            "dtype": self.dtype,
            "meaningless": self.pretrained is None and not self._schema_source(),
        }

    def _schema_source(self) -> bool:
        return self.model_name.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX))

    # -- loading -------------------------------------------------------------------------
    def _resolve_checkpoint(self) -> tuple[str | None, dict[str, Any]]:
        """Return (checkpoint file or None, the open_clip pretrained config of a tag or {})."""
        import open_clip
        from open_clip.pretrained import download_pretrained_from_hf

        pretrained = self.pretrained
        if pretrained is None:
            return None, {}
        if pretrained.startswith(HF_HUB_PREFIX):
            repo_id, filename = _split_hub_path(pretrained.removeprefix(HF_HUB_PREFIX), "pretrained")
            path = download_pretrained_from_hf(
                repo_id, filename=filename, revision=self.revision, cache_dir=self.cache_dir
            )
            return str(path), {}
        tag_cfg = open_clip.get_pretrained_cfg(self.model_name, pretrained)
        if tag_cfg:
            if tag_cfg.get("hf_hub"):
                repo_id, filename = _split_hub_path(tag_cfg["hf_hub"], "hf_hub")
                path = download_pretrained_from_hf(
                    repo_id, filename=filename, revision=self.revision, cache_dir=self.cache_dir
                )
            else:
                path = open_clip.download_pretrained(tag_cfg, cache_dir=self.cache_dir)
            return str(path), dict(tag_cfg)
        if os.path.isfile(pretrained):
            return pretrained, {}
        known = open_clip.list_pretrained_tags_by_model(self.model_name)
        raise ValueError(
            f"pretrained must be an open_clip tag for {self.model_name!r} ({', '.join(known) or 'none known'}), "
            f"an existing checkpoint file, 'hf-hub:<repo>' or None; got {pretrained!r}"
        )

    def _build(self) -> tuple[Any, Callable[[Image.Image], Any], Callable[[list[str]], Any]]:
        """Build architecture and transforms with random weights, then load the checkpoint."""
        import open_clip
        from open_clip.factory import _find_checkpoint_in_dir
        from open_clip.pretrained import download_pretrained_from_hf

        if self._schema_source():
            checkpoint: str | None
            if self.model_name.startswith(LOCAL_DIR_PREFIX):
                checkpoint = _find_checkpoint_in_dir(Path(self.model_name.removeprefix(LOCAL_DIR_PREFIX)))
            else:
                checkpoint = download_pretrained_from_hf(
                    self.model_name.removeprefix(HF_HUB_PREFIX), revision=self.revision, cache_dir=self.cache_dir
                )
            if checkpoint is None:
                raise ModelLoadError(f"open-clip: no weights file (*.safetensors, *.bin, *.pth) in {self.model_name}")
            tag_cfg: dict[str, Any] = {}
        else:
            checkpoint, tag_cfg = self._resolve_checkpoint()
        # open_clip warns "initialized randomly" on the root logger because it does not
        # load the weights itself here; they are loaded right below.
        with _drop_root_log("No pretrained weights loaded"):
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model_name,
                pretrained=None,
                load_weights=False,
                precision=_OPEN_CLIP_PRECISION[self.dtype],
                device=self.device,
                # OpenAI's weights were trained with QuickGELU; the tag's config says so.
                force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                image_mean=tag_cfg.get("mean"),
                image_std=tag_cfg.get("std"),
                image_interpolation=tag_cfg.get("interpolation"),
                image_resize_mode=tag_cfg.get("resize_mode"),
                cache_dir=self.cache_dir,
            )
        if checkpoint is not None:
            _apply_open_clip_state_dict(model, load_state_dict_safely(checkpoint))
            log.info("open-clip %s: loaded weights from %s", self.model_name, checkpoint)
        else:
            log.warning("open-clip %s: random weights (pretrained=None)", self.model_name)
        tokenizer = open_clip.get_tokenizer(self.model_name, cache_dir=self.cache_dir)
        return model, preprocess, tokenizer

    def _load(self) -> None:
        try:
            model, preprocess, tokenizer = self._build()
        except ModelLoadError:
            raise
        except (RuntimeError, OSError, ValueError, KeyError) as e:
            raise ModelLoadError(
                f"open-clip: cannot load model_name={self.model_name!r} pretrained={self.pretrained!r}: {e}"
            ) from e
        model.eval()
        self._model, self._preprocess, self._tokenizer = model, preprocess, tokenizer

    # -- encoding ------------------------------------------------------------------------
    def _encode_image_batch(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        if self._preprocess is None:
            raise RuntimeError("open-clip: model not loaded")
        preprocess = self._preprocess
        workers = min(self.preprocess_workers, len(images))
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bpm-clip-preprocess") as pool:
                tensors = list(pool.map(preprocess, images))
        else:
            tensors = [preprocess(img) for img in images]
        pixels = torch.stack(tensors).to(self.device, dtype=self.torch_dtype)
        with torch.inference_mode():
            feats = self._model.encode_image(pixels, normalize=False)
        return feats.float().cpu().numpy()  # type: ignore[no-any-return]

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        if self._tokenizer is None:
            raise RuntimeError("open-clip: model not loaded")
        tokens = self._tokenizer(texts).to(self.device)
        with torch.inference_mode():
            feats = self._model.encode_text(tokens, normalize=False)
        return feats.float().cpu().numpy()  # type: ignore[no-any-return]


def load_tiny_clip_config(path: str | os.PathLike[str] = TINY_CLIP_CONFIG) -> dict[str, Any]:
    """The tiny open_clip architecture config (``bpm_lib/configs/tiny_clip.json``)."""
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "text_cfg" not in cfg:
        raise ModelLoadError(f"{path} is not an open_clip model config (needs vision_cfg and text_cfg)")
    return cfg


class TinyRandomEmbedder(OpenClipEmbedder):
    """Tiny open_clip model with seeded random weights, for tests and offline smoke runs.

    Same seed → same weights → same features, without touching the global torch RNG.
    Its scores are meaningless for real evaluation (``identity()["meaningless"]``).
    """

    name = "tiny-random"

    def __init__(
        self,
        seed: int = 0,
        *,
        config: str | os.PathLike[str] = TINY_CLIP_CONFIG,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 32,
        text_cache_size: int = 4096,
        preprocess_workers: int | None = None,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        super().__init__(
            "tiny-clip",
            None,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            text_cache_size=text_cache_size,
            preprocess_workers=preprocess_workers,
        )
        self.seed = seed
        self.config_path = Path(config)

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": self.config_path.name,
            "seed": self.seed,
            "dtype": self.dtype,
            "meaningless": True,
            "note": MEANINGLESS_NOTE,
        }

    def _build(self) -> tuple[Any, Callable[[Image.Image], Any], Callable[[list[str]], Any]]:
        import open_clip
        import torch
        from open_clip.transform import PreprocessCfg, image_transform_v2

        cfg = load_tiny_clip_config(self.config_path)
        # fork_rng restores the global CPU RNG afterwards; init happens on CPU.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = open_clip.CLIP(**cfg)
        model.to(device=self.device, dtype=self.torch_dtype)
        preprocess = image_transform_v2(PreprocessCfg(size=int(cfg["vision_cfg"]["image_size"])), is_train=False)
        tokenizer = open_clip.SimpleTokenizer(context_length=int(cfg["text_cfg"]["context_length"]))
        return model, preprocess, tokenizer


# ---------------------------------------------------------------------------------------
# transformers CLIP
# ---------------------------------------------------------------------------------------


def _pooled(output: Any) -> Any:
    """transformers 5 returns a model output whose ``pooler_output`` holds the projected
    features; older versions return the tensor itself."""
    pooled = getattr(output, "pooler_output", None)
    return output if pooled is None else pooled


class HfClipEmbedder(_BatchedEmbedder):
    """transformers ``CLIPModel`` + ``CLIPProcessor`` (default ``openai/clip-vit-large-patch14``).

    ``model`` is a Hub id, a local folder saved with ``save_pretrained`` or an
    ``s3://bucket/prefix`` holding one (see :mod:`bpm_lib.backends.model_source`). Weights
    load from safetensors when the repo has them (``use_safetensors=None``), else from
    the ``.bin`` file, which transformers 5 reads weights-only; ``use_safetensors=True``
    refuses ``.bin`` altogether.
    """

    name = "hf-clip"

    def __init__(
        self,
        model: str = "openai/clip-vit-large-patch14",
        *,
        revision: str = "main",
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 32,
        text_cache_size: int = 4096,
        use_safetensors: bool | None = None,
    ) -> None:
        if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
            raise ValueError(f"model must be a Hub id or a local folder, got {model!r}")
        if not isinstance(revision, str) or not revision.strip():
            raise ValueError(f"revision must be a non-empty string, got {revision!r}")
        super().__init__(device=device, dtype=dtype, batch_size=batch_size, text_cache_size=text_cache_size)
        self.model = str(model)
        self.revision = revision
        self.use_safetensors = use_safetensors
        self._model: Any = None
        self._processor: Any = None
        self._max_length = 77

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "revision": self.revision, "dtype": self.dtype}

    def _load(self) -> None:
        from transformers import CLIPModel, CLIPProcessor

        from bpm_lib.backends.model_source import load_pretrained

        what = "hf-clip embedder"
        try:
            processor: Any = load_pretrained(
                CLIPProcessor.from_pretrained, self.model, what=what, revision=self.revision
            )
            model: Any = load_pretrained(
                CLIPModel.from_pretrained,
                self.model,
                what=what,
                revision=self.revision,
                dtype=self.torch_dtype,
                use_safetensors=self.use_safetensors,
            )
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{what}: cannot load {self.model!r} (revision {self.revision!r}): {e}") from e
        model.to(self.device).eval()
        self._model, self._processor = model, processor
        self._max_length = int(model.config.text_config.max_position_embeddings)

    def _encode_image_batch(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        inputs = self._processor.image_processor(images=images, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, dtype=self.torch_dtype)
        with torch.inference_mode():
            feats = _pooled(self._model.get_image_features(pixel_values=pixels))
        return feats.float().cpu().numpy()  # type: ignore[no-any-return]

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        inputs = self._processor.tokenizer(
            texts, padding=True, truncation=True, max_length=self._max_length, return_tensors="pt"
        )
        with torch.inference_mode():
            feats = _pooled(
                self._model.get_text_features(
                    input_ids=inputs["input_ids"].to(self.device),
                    attention_mask=inputs["attention_mask"].to(self.device),
                )
            )
        return feats.float().cpu().numpy()  # type: ignore[no-any-return]


EMBEDDERS.add("open-clip", OpenClipEmbedder, "open_clip CLIP (default ViT-L-14, OpenAI weights: the paper's CLIP)")
EMBEDDERS.add("hf-clip", HfClipEmbedder, "transformers CLIPModel (default openai/clip-vit-large-patch14)")
EMBEDDERS.add("tiny-random", TinyRandomEmbedder, "tiny open_clip model with seeded random weights (meaningless scores)")
