"""Decoding images and masks safely and the same way everywhere.

* A pixel limit guards against decompression bombs (``BPM_MAX_IMAGE_PIXELS``, default
  64 MP): larger images are refused with a clear :class:`DataError`, never decoded.
* EXIF orientation is applied, so what is judged is what a person sees.
* Every mode (palette, CMYK, 16-bit, alpha, grey) becomes 8-bit RGB; alpha is composited
  over white (an edited PNG with transparency is shown over white by every viewer).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bpm_lib.envvars import env_int
from bpm_lib.errors import DataError

DEFAULT_MAX_PIXELS = 64_000_000
FRAME = 500


def max_pixels() -> int:
    """``BPM_MAX_IMAGE_PIXELS`` (default 64 million): larger images are refused."""
    return env_int("BPM_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS, minimum=1)


def _open(source: str | os.PathLike[str] | bytes, what: str) -> Image.Image:
    limit = max_pixels()
    name = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    except FileNotFoundError as e:
        raise DataError(f"{what}: file not found: {name}") from e
    except OSError as e:
        raise DataError(f"{what}: cannot open {name}: {e}") from e
    with fp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                old = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None  # we enforce our own limit below, before decoding
                try:
                    img = Image.open(fp)
                finally:
                    Image.MAX_IMAGE_PIXELS = old
            w, h = img.size
            if w <= 0 or h <= 0:
                raise DataError(f"{what}: {name} has zero size ({w}x{h})")
            if w * h > limit:
                raise DataError(
                    f"{what}: {name} has {w}x{h} = {w * h} pixels, over the limit of {limit} "
                    "(decompression-bomb guard; raise BPM_MAX_IMAGE_PIXELS if this is intended)"
                )
            img.load()
        except DataError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{what}: {name} is not a readable image ({type(e).__name__}: {e})") from e
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * (255.0 if arr.max(initial=0) <= 1 else 1.0), 0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(source: str | os.PathLike[str] | bytes, what: str = "image") -> Image.Image:
    """Decode ``source`` (path or bytes) to an 8-bit RGB image; :class:`DataError` if it cannot."""
    return _to_rgb(_open(source, what))


def load_mask(
    source: str | os.PathLike[str] | bytes,
    size: tuple[int, int] | None = None,
    what: str = "mask",
) -> np.ndarray:
    """Decode a mask image to a boolean H×W array (True = edit region).

    A mask with an alpha channel that is not fully opaque uses the alpha channel (MagicBrush
    exports transparent = edit region); otherwise a pixel is edit region when its grey
    value is ≥ 128. ``size`` = (width, height) it must have, else :class:`DataError`.
    """
    img = _open(source, what)
    img = ImageOps.exif_transpose(img) or img
    if size is not None and img.size != tuple(size):
        raise DataError(f"{what}: size {img.size[0]}x{img.size[1]} does not match the image size {size[0]}x{size[1]}")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        alpha = np.asarray(img.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            return alpha < 128
    grey = np.asarray(_to_rgb(img).convert("L"))
    return grey >= 128


def to_frame(img: Image.Image, frame: int = FRAME) -> np.ndarray:
    """Resize to frame×frame (bicubic, as the reference) and return uint8 H×W×3."""
    if img.size == (frame, frame):
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    return np.asarray(img.convert("RGB").resize((frame, frame), Image.Resampling.BICUBIC), dtype=np.uint8)


def mask_to_frame(mask: np.ndarray, frame: int = FRAME) -> np.ndarray:
    """Resize a boolean mask to frame×frame (nearest neighbour)."""
    arr = np.asarray(mask, dtype=bool)
    if arr.shape == (frame, frame):
        return arr
    img = Image.fromarray(arr.astype(np.uint8) * 255, mode="L").resize((frame, frame), Image.Resampling.NEAREST)
    return np.asarray(img) >= 128


def save_png(img: Image.Image | np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a PNG atomically (temp file + rename)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(img, np.ndarray):
        arr = img.astype(np.uint8) * 255 if img.dtype == bool else img
        img = Image.fromarray(arr)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    img.save(tmp, format="PNG")
    os.replace(tmp, out)
    return out
