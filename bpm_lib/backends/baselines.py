"""Baseline metrics people compare BPM against (BPM_SPEC §8, paper Tab. 1/2/4).

Each baseline has ``name``, ``higher_is_better``, ``identity()`` and
``compute(source_images, edited_images, texts=None, *, source_texts=None) -> list[float]``
(one value per pair, computed in batches). The pixel maths is pure functions over uint8
arrays (``l1_distance``, ``l2_distance``, ``cosine``) with thin classes around them, as
torchmetrics does it.

==================  =====  ===========================================================
name                 best   value
==================  =====  ===========================================================
``l1``               low    mean |a − b| / 255 over the 500×500 frames (float maths)
``l2``               low    mean (a − b)² / 255² over the 500×500 frames (MSE on [0, 1])
``lpips``            low    LPIPS (``lpips`` package; AlexNet trunk by default)
``clip-score``       high   100 · max(cos(E(edited), E(text)), 0) (torchmetrics'
                            CLIPScore convention); ``raw=True`` gives the plain cosine
``clip-i``           high   cos(E(source), E(edited)), image embeddings
``dino``             high   cos of the DINO ViT CLS features of source and edited
``directional-clip`` high   cos(E(edited) − E(source), T(target) − T(source caption)),
                            whole images (InstructPix2Pix's directional similarity)
==================  =====  ===========================================================

``E``/``T`` are the raw image/text features of any :class:`~bpm_lib.backends.base.Embedder`.
"""

from __future__ import annotations

import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

import bpm_lib.backends.clip  # noqa: F401 - registers the built-in embedders (cheap: no torch)
from bpm_lib.backends.base import EMBEDDERS, Embedder
from bpm_lib.errors import ModelLoadError
from bpm_lib.io.images import FRAME, to_frame
from bpm_lib.registry import Registry

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

MEANINGLESS_NOTE = "random weights: scores are meaningless for real evaluation"

# ---------------------------------------------------------------------------------------
# pure functions
# ---------------------------------------------------------------------------------------


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    for name, arr in (("a", a), ("b", b)):
        if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8:
            got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
            raise TypeError(f"{name} must be a uint8 numpy array, got {got}")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("a and b must not be empty")
    # float maths: uint8 subtraction would wrap around (10 − 20 → 246)
    return a.astype(np.float64), b.astype(np.float64)


def l1_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images, on the [0, 1] scale."""
    fa, fb = _check_pair(a, b)
    return float(np.mean(np.abs(fa - fb)) / 255.0)


def l2_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared difference of two uint8 images, on the [0, 1] scale (MSE)."""
    fa, fb = _check_pair(a, b)
    return float(np.mean(((fa - fb) / 255.0) ** 2))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two feature vectors (float64 maths); 0.0 when either is the zero vector."""
    va = np.asarray(a, dtype=np.float64).reshape(-1)
    vb = np.asarray(b, dtype=np.float64).reshape(-1)
    if va.shape != vb.shape:
        raise ValueError(f"a and b must have the same length, got {va.shape[0]} and {vb.shape[0]}")
    if not (np.all(np.isfinite(va)) and np.all(np.isfinite(vb))):
        raise ValueError("a and b must be finite")
    na, nb = float(np.linalg.norm(va)), float(np.linalg.norm(vb))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(va, vb) / (na * nb))


def clip_score_value(image_emb: np.ndarray, text_emb: np.ndarray, *, raw: bool = False) -> float:
    """torchmetrics' CLIPScore: 100 · max(cos, 0); ``raw=True``: the plain cosine."""
    cos = cosine(image_emb, text_emb)
    return cos if raw else 100.0 * max(cos, 0.0)


# ---------------------------------------------------------------------------------------
# protocol, registry, input checks
# ---------------------------------------------------------------------------------------


@runtime_checkable
class Baseline(Protocol):
    """A whole-image metric over (source, edited[, text]) pairs."""

    name: str
    higher_is_better: bool

    def identity(self) -> dict[str, Any]: ...

    def compute(
        self,
        source_images: Sequence[Image.Image],
        edited_images: Sequence[Image.Image],
        texts: Sequence[str] | None = None,
        *,
        source_texts: Sequence[str] | None = None,
    ) -> list[float]: ...


class BaselineRegistry(Registry[Baseline]):
    """:class:`Registry` of baselines that also reads like a dict: ``BASELINES[name]`` is
    the class (unknown names answer "did you mean …")."""

    def __getitem__(self, name: str) -> type[Baseline]:
        return self.get(name).factory  # type: ignore[return-value]

    def __iter__(self) -> Any:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def keys(self) -> list[str]:
        return self.names()


BASELINES = BaselineRegistry("baseline")


def _check_images(images: Sequence[Image.Image], name: str) -> list[Image.Image]:
    from PIL import Image as PILImage

    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise TypeError(f"{name} must be a sequence of PIL images, got {type(images).__name__}")
    out = list(images)
    for i, img in enumerate(out):
        if not isinstance(img, PILImage.Image):
            raise TypeError(f"{name}[{i}] must be a PIL image, got {type(img).__name__}")
    return out


def _check_inputs(
    source_images: Sequence[Image.Image], edited_images: Sequence[Image.Image]
) -> tuple[list[Image.Image], list[Image.Image]]:
    src = _check_images(source_images, "source_images")
    edt = _check_images(edited_images, "edited_images")
    if len(src) != len(edt):
        raise ValueError(f"source_images and edited_images must have the same length, got {len(src)} and {len(edt)}")
    return src, edt


def _check_texts(texts: Sequence[str] | None, n: int, name: str, needed_by: str) -> list[str]:
    if texts is None:
        raise ValueError(f"{name} is required by {needed_by}, got None")
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a sequence of strings, got {type(texts).__name__}")
    out = list(texts)
    if len(out) != n:
        raise ValueError(f"{name} must have one text per image pair ({n}), got {len(out)}")
    for i, text in enumerate(out):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{name}[{i}] must be a non-empty string, got {text!r}")
    return out


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


# ---------------------------------------------------------------------------------------
# pixel baselines
# ---------------------------------------------------------------------------------------


class _PixelDistance(ABC):
    higher_is_better: bool = False
    name: str = ""

    def __init__(self, frame: int = FRAME) -> None:
        self.frame = _positive_int(frame, "frame")

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "frame": self.frame}

    @abstractmethod
    def _distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """The distance of two uint8 frames (a subclass's definition)."""

    def compute(
        self,
        source_images: Sequence[Image.Image],
        edited_images: Sequence[Image.Image],
        texts: Sequence[str] | None = None,
        *,
        source_texts: Sequence[str] | None = None,
    ) -> list[float]:
        src, edt = _check_inputs(source_images, edited_images)
        return [self._distance(to_frame(a, self.frame), to_frame(b, self.frame)) for a, b in zip(src, edt, strict=True)]


class L1(_PixelDistance):
    """Whole-image L1: mean |source − edited| on the [0, 1] scale, both resized to the frame."""

    name = "l1"

    def _distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return l1_distance(a, b)


class L2(_PixelDistance):
    """Whole-image L2: mean squared difference on the [0, 1] scale, both resized to the frame."""

    name = "l2"

    def _distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return l2_distance(a, b)


# ---------------------------------------------------------------------------------------
# learned baselines
# ---------------------------------------------------------------------------------------


class Lpips:
    """LPIPS (Zhang et al. 2018) from the ``lpips`` package, on frame×frame images.

    The linear calibration layers ship with the package; the trunk (AlexNet by default)
    comes from torchvision's ImageNet weights, downloaded to ``$TORCH_HOME`` on first use.
    Offline without them, ``pretrained_backbone=False`` builds a seeded random trunk:
    the values are then meaningless (``identity()["meaningless"]``), good for tests only.
    """

    name = "lpips"
    higher_is_better = False
    NETS: ClassVar[tuple[str, ...]] = ("alex", "vgg", "squeeze")

    def __init__(
        self,
        net: str = "alex",
        *,
        pretrained_backbone: bool = True,
        seed: int = 0,
        frame: int = FRAME,
        batch_size: int = 8,
        device: str = "auto",
    ) -> None:
        if net not in self.NETS:
            raise ValueError(f"net must be one of {self.NETS}, got {net!r}")
        if not isinstance(pretrained_backbone, bool):
            raise TypeError(f"pretrained_backbone must be a bool, got {type(pretrained_backbone).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        from bpm_lib.backends.device import pick_device

        self.net = net
        self.pretrained_backbone = pretrained_backbone
        self.seed = seed
        self.frame = _positive_int(frame, "frame")
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.device = pick_device(device)
        self._model: Any = None

    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {
            "name": self.name,
            "net": self.net,
            "version": "0.1",
            "frame": self.frame,
            "pretrained_backbone": self.pretrained_backbone,
            "meaningless": not self.pretrained_backbone,
        }
        if not self.pretrained_backbone:
            ident["seed"] = self.seed
            ident["note"] = MEANINGLESS_NOTE
        return ident

    def load(self) -> None:
        if self._model is not None:
            return
        import lpips
        import torch

        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            # lpips calls torchvision's deprecated ``pretrained=`` argument
            warnings.simplefilter("ignore", UserWarning)
            torch.manual_seed(self.seed)
            try:
                model = lpips.LPIPS(net=self.net, pretrained=True, pnet_rand=not self.pretrained_backbone, verbose=False)
            except (OSError, RuntimeError) as e:  # URLError is an OSError
                raise ModelLoadError(
                    f"lpips: cannot load the {self.net} trunk's ImageNet weights ({e}). Put torchvision's "
                    "checkpoint in $TORCH_HOME/hub/checkpoints, or use pretrained_backbone=False "
                    "(random trunk: meaningless values, tests only)"
                ) from e
        self._model = model.to(self.device).eval()

    def compute(
        self,
        source_images: Sequence[Image.Image],
        edited_images: Sequence[Image.Image],
        texts: Sequence[str] | None = None,
        *,
        source_texts: Sequence[str] | None = None,
    ) -> list[float]:
        import torch

        src, edt = _check_inputs(source_images, edited_images)
        if not src:
            return []
        self.load()

        def batch(images: list[Image.Image]) -> torch.Tensor:
            arr = np.stack([to_frame(_rgb(img), self.frame) for img in images]).astype(np.float32)
            # [0, 255] → [−1, 1], NCHW
            return torch.from_numpy(arr / 127.5 - 1.0).permute(0, 3, 1, 2).to(self.device)

        out: list[float] = []
        for i in range(0, len(src), self.batch_size):
            with torch.inference_mode():
                dist = self._model(batch(src[i : i + self.batch_size]), batch(edt[i : i + self.batch_size]))
            out.extend(float(v) for v in dist.reshape(-1).cpu())
        return out


class DinoSimilarity:
    """Cosine of DINO ViT CLS features of source and edited (DreamBooth's DINO score).

    ``model``: any transformers ViT/DINOv2 checkpoint readable by ``AutoModel`` (Hub id,
    local ``save_pretrained`` folder or ``s3://`` prefix); default ``facebook/dino-vits16``.
    """

    name = "dino"
    higher_is_better = True

    def __init__(
        self,
        model: str = "facebook/dino-vits16",
        *,
        revision: str = "main",
        batch_size: int = 16,
        device: str = "auto",
        use_safetensors: bool | None = None,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be a Hub id, a local folder or an s3:// URI, got {model!r}")
        if not isinstance(revision, str) or not revision.strip():
            raise ValueError(f"revision must be a non-empty string, got {revision!r}")
        from bpm_lib.backends.device import pick_device

        self.model = model
        self.revision = revision
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.device = pick_device(device)
        self.use_safetensors = use_safetensors
        self._model: Any = None
        self._processor: Any = None

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "revision": self.revision}

    def load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoImageProcessor, AutoModel

        from bpm_lib.backends.model_source import load_pretrained

        what = "DINO baseline model"
        try:
            processor = load_pretrained(AutoImageProcessor.from_pretrained, self.model, what=what, revision=self.revision)
            model: Any = load_pretrained(
                AutoModel.from_pretrained,
                self.model,
                what=what,
                revision=self.revision,
                use_safetensors=self.use_safetensors,
            )
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{what}: cannot load {self.model!r} (revision {self.revision!r}): {e}") from e
        self._processor = processor
        self._model = model.to(self.device).eval()

    def features(self, images: Sequence[Image.Image]) -> np.ndarray:
        """CLS features, float32 ``[N, hidden]``."""
        import torch

        items = _check_images(images, "images")
        self.load()
        chunks = []
        for i in range(0, len(items), self.batch_size):
            pixels = self._processor(
                images=[_rgb(img) for img in items[i : i + self.batch_size]], return_tensors="pt"
            )["pixel_values"].to(self.device)
            with torch.inference_mode():
                hidden = self._model(pixel_values=pixels).last_hidden_state
            chunks.append(hidden[:, 0].float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)

    def compute(
        self,
        source_images: Sequence[Image.Image],
        edited_images: Sequence[Image.Image],
        texts: Sequence[str] | None = None,
        *,
        source_texts: Sequence[str] | None = None,
    ) -> list[float]:
        src, edt = _check_inputs(source_images, edited_images)
        if not src:
            return []
        feats = self.features(src + edt)
        n = len(src)
        return [cosine(feats[i], feats[n + i]) for i in range(n)]


class _EmbedderBaseline:
    higher_is_better: bool = True
    name: str = ""

    def __init__(self, embedder: str | Embedder = "open-clip", **embedder_kwargs: Any) -> None:
        self.embedder: Embedder = EMBEDDERS.resolve(embedder, **embedder_kwargs)

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "embedder": self.embedder.identity()}


class ClipScore(_EmbedderBaseline):
    """CLIPScore of the edited image against a text (the target caption or the instruction).

    Default: 100 · max(cos, 0) as torchmetrics' ``CLIPScore``; ``raw=True``: raw cosine.
    """

    name = "clip-score"

    def __init__(self, embedder: str | Embedder = "open-clip", *, raw: bool = False, **embedder_kwargs: Any) -> None:
        if not isinstance(raw, bool):
            raise TypeError(f"raw must be a bool, got {type(raw).__name__}")
        super().__init__(embedder, **embedder_kwargs)
        self.raw = raw

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "scale": "cosine" if self.raw else "100*max(cos,0)"}

    def compute(
        self,
        source_images: Sequence[Image.Image],
        edited_images: Sequence[Image.Image],
        texts: Sequence[str] | None = None,
        *,
        source_texts: Sequence[str] | None = None,
    ) -> list[float]:
        _, edt = _check_inputs(source_images, edited_images)
        txt = _check_texts(texts, len(edt), "texts", "clip-score")
        if not edt:
            return []
        image_emb = self.embedder.encode_images([_rgb(img) for img in edt])
        text_emb = self.embedder.encode_texts(txt)
        return [clip_score_value(image_emb[i], text_emb[i], raw=self.raw) for i in range(len(edt))]


class ClipI(_EmbedderBaseline):
    """CLIP-I: cosine of the image embeddings of source and edited."""

    name = "clip-i"

    def compute(
        self,
        source_images: Sequence[Image.Image],
        edited_images: Sequence[Image.Image],
        texts: Sequence[str] | None = None,
        *,
        source_texts: Sequence[str] | None = None,
    ) -> list[float]:
        src, edt = _check_inputs(source_images, edited_images)
        if not src:
            return []
        emb = self.embedder.encode_images([_rgb(img) for img in src + edt])
        n = len(src)
        return [cosine(emb[i], emb[n + i]) for i in range(n)]


class DirectionalClip(_EmbedderBaseline):
    """Whole-image directional CLIP similarity (InstructPix2Pix): cos(ΔI, ΔT) with
    ΔI = E(edited) − E(source) and ΔT = T(texts) − T(source_texts), ``texts`` being the
    captions of the intended results and ``source_texts`` those of the source images."""

    name = "directional-clip"

    def compute(
        self,
        source_images: Sequence[Image.Image],
        edited_images: Sequence[Image.Image],
        texts: Sequence[str] | None = None,
        *,
        source_texts: Sequence[str] | None = None,
    ) -> list[float]:
        from bpm_lib.judges import directional_similarity

        src, edt = _check_inputs(source_images, edited_images)
        target = _check_texts(texts, len(src), "texts", "directional-clip")
        source = _check_texts(source_texts, len(src), "source_texts", "directional-clip")
        if not src:
            return []
        image_emb = self.embedder.encode_images([_rgb(img) for img in src + edt])
        text_emb = self.embedder.encode_texts(source + target)
        n = len(src)
        return [
            float(directional_similarity(image_emb[i], image_emb[n + i], text_emb[i], text_emb[n + i]))
            for i in range(n)
        ]


BASELINES.add("l1", L1, "whole-image mean |a−b| on [0,1], 500×500 frames (lower is better)")
BASELINES.add("l2", L2, "whole-image mean (a−b)² on [0,1], 500×500 frames (lower is better)")
BASELINES.add("lpips", Lpips, "LPIPS, AlexNet trunk (lower is better)")
BASELINES.add("clip-score", ClipScore, "100·max(cos(edited image, text), 0) (higher is better)")
BASELINES.add("clip-i", ClipI, "cos of CLIP image embeddings, source vs edited (higher is better)")
BASELINES.add("dino", DinoSimilarity, "cos of DINO ViT CLS features, source vs edited (higher is better)")
BASELINES.add("directional-clip", DirectionalClip, "cos(ΔCLIP image, ΔCLIP caption), whole images (higher is better)")

_NEEDS_EMBEDDER = (ClipScore, ClipI, DirectionalClip)


class _ImageFeatureMemo:
    """Wraps an embedder so that each image object is encoded once per
    :func:`compute_baselines` call (clip-score, clip-i and directional-clip share them)."""

    def __init__(self, embedder: Embedder) -> None:
        self.inner = embedder
        self.name = embedder.name
        self._features: dict[int, np.ndarray] = {}
        self._alive: list[Image.Image] = []  # keeps ids valid while memoised

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.encode_texts(texts)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        items = list(images)
        todo: list[Image.Image] = []
        for img in items:
            if id(img) not in self._features and all(img is not t for t in todo):
                todo.append(img)
        if todo:
            feats = self.inner.encode_images(todo)
            for img, row in zip(todo, feats, strict=True):
                self._features[id(img)] = row
                self._alive.append(img)
        if not items:
            return self.inner.encode_images([])
        return np.stack([self._features[id(img)] for img in items]).astype(np.float32)


def compute_baselines(
    names: Sequence[str | Baseline],
    source_images: Sequence[Image.Image],
    edited_images: Sequence[Image.Image],
    instructions: Sequence[str],
    targets: Sequence[str | None] | None = None,
    *,
    embedder: str | Embedder | None = None,
    source_captions: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, float]]:
    """Every baseline in ``names`` for every (source, edited) pair → one dict per pair.

    ``targets``: the caption of the intended result per pair (None entries allowed):
    clip-score scores the edited image against it, or against the instruction where it
    is missing; directional-clip needs it for every pair, with ``source_captions``.
    ``embedder`` (a registered name or an instance) serves clip-score, clip-i and
    directional-clip; images are encoded once for all three. ``options`` maps a baseline
    name to constructor kwargs (e.g. ``{"lpips": {"pretrained_backbone": False}}``).
    Names may also be ready-built :class:`Baseline` instances.
    """
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ValueError(f"names must be a non-empty sequence of baseline names, got {names!r}")
    src, edt = _check_inputs(source_images, edited_images)
    n = len(src)
    instr = _check_texts(instructions, n, "instructions", "compute_baselines")
    if targets is None:
        tgt: list[str | None] = [None] * n
    else:
        if isinstance(targets, str) or not isinstance(targets, Sequence) or len(targets) != n:
            raise ValueError(f"targets must be a sequence with one entry per pair ({n}) or None, got {targets!r}")
        tgt = list(targets)
    opts = dict(options or {})
    unknown_opts = sorted(set(opts) - {nm for nm in names if isinstance(nm, str)})
    if unknown_opts:
        raise ValueError(f"options names baselines that are not computed: {unknown_opts}")

    shared: _ImageFeatureMemo | None = None
    baselines: list[Baseline] = []
    for entry in names:
        if not isinstance(entry, str):
            if not isinstance(entry, Baseline):
                raise TypeError(f"names entries must be baseline names or Baseline instances, got {entry!r}")
            baselines.append(entry)
            continue
        cls: Any = BASELINES[entry]
        kwargs = dict(opts.get(entry, {}))
        if cls in _NEEDS_EMBEDDER:
            if embedder is None:
                raise ValueError(f"baseline {entry!r} needs an embedder; pass embedder= (a name or an instance)")
            if shared is None:
                resolved = EMBEDDERS.resolve(embedder)
                shared = _ImageFeatureMemo(resolved)
            baselines.append(cls(embedder=shared, **kwargs))
        else:
            baselines.append(cls(**kwargs))
    seen = [b.name for b in baselines]
    duplicates = sorted({x for x in seen if seen.count(x) > 1})
    if duplicates:
        raise ValueError(f"names lists a baseline more than once: {duplicates}")

    rows: list[dict[str, float]] = [{} for _ in range(n)]
    for baseline in baselines:
        if isinstance(baseline, ClipScore):
            texts: list[str] | None = [t if t else i for t, i in zip(tgt, instr, strict=True)]
        elif isinstance(baseline, DirectionalClip):
            if source_captions is None:
                raise ValueError("directional-clip needs source_captions (the caption of each source image), got None")
            missing = [k for k, t in enumerate(tgt) if not t]
            if missing:
                raise ValueError(f"directional-clip needs a target caption for every pair; missing at {missing[:10]}")
            texts = [str(t) for t in tgt]
        else:
            texts = None
        values = baseline.compute(src, edt, texts, source_texts=source_captions)
        if len(values) != n:
            raise ValueError(f"baseline {baseline.name!r} returned {len(values)} values for {n} pairs")
        for row, value in zip(rows, values, strict=True):
            row[baseline.name] = float(value)
        log.debug("baseline %s computed for %d pairs", baseline.name, n)
    return rows
