"""A tiny LRU of decoded images, so one process never decodes the same file twice
while it is still in use (source images are shared by every candidate)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from bpm_lib.io.images import load_rgb, to_frame


class ImageCache:
    def __init__(self, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._rgb: OrderedDict[str, Image.Image] = OrderedDict()
        self._frame: OrderedDict[str, np.ndarray] = OrderedDict()
        self.decodes = 0

    def _touch(self, store: OrderedDict, key: str, value: object) -> None:
        store[key] = value
        store.move_to_end(key)
        while len(store) > self.capacity:
            store.popitem(last=False)

    def rgb(self, path: str | Path, what: str = "image") -> Image.Image:
        key = str(path)
        hit = self._rgb.get(key)
        if hit is not None:
            self._rgb.move_to_end(key)
            return hit
        img = load_rgb(key, what)
        self.decodes += 1
        self._touch(self._rgb, key, img)
        return img

    def frame(self, path: str | Path, what: str = "image") -> np.ndarray:
        """The image resized to the 500×500 judging frame (computed once per file)."""
        key = str(path)
        hit = self._frame.get(key)
        if hit is not None:
            self._frame.move_to_end(key)
            return hit
        arr = to_frame(self.rgb(key, what))
        self._touch(self._frame, key, arr)
        return arr
