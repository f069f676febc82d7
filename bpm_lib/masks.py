"""Binary masks as JSON: run-length encoding over the row-major flattened mask.

``{"size": [H, W], "counts": [n0, n1, n2, ...]}`` where runs alternate starting with
False (``n0`` may be 0). Exact round trip, no external dependency.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode a boolean H×W mask."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be 2-D (H×W), got shape {arr.shape}")
    flat = arr.astype(bool).ravel()
    if flat.size == 0:
        return {"size": [int(arr.shape[0]), int(arr.shape[1])], "counts": []}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    return {"size": [int(arr.shape[0]), int(arr.shape[1])], "counts": [int(r) for r in runs]}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decode :func:`encode_rle` output back to a boolean H×W mask."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = [int(c) for c in rle["counts"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"mask RLE must have 'size' [H, W] and integer 'counts', got {rle!r:.200}") from e
    if h < 0 or w < 0 or any(c < 0 for c in counts):
        raise ValueError("mask RLE has negative size or counts")
    if sum(counts) != h * w:
        raise ValueError(f"mask RLE counts sum to {sum(counts)}, expected H*W = {h * w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape(h, w)


def mask_boxes(mask: np.ndarray, min_pixels: int = 1) -> list[tuple[float, float, float, float]]:
    """Pixel boxes ``(x0, y0, x1, y1)`` of the 8-connected components of ``mask``,
    largest component first (x1/y1 exclusive, like detector boxes)."""
    from scipy import ndimage

    arr = np.asarray(mask, dtype=bool)
    if arr.ndim != 2:
        raise ValueError(f"mask must be 2-D (H×W), got shape {arr.shape}")
    labels, n = ndimage.label(arr, structure=np.ones((3, 3), dtype=int))
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    slices = ndimage.find_objects(labels)
    out = []
    for idx in np.argsort(-sizes, kind="stable"):
        if sizes[idx] < min_pixels:
            continue
        sy, sx = slices[idx]
        out.append((float(sx.start), float(sy.start), float(sx.stop), float(sy.stop)))
    return out
