"""Localizers: where the edit is, on both sides of a sample (BPM_SPEC §3).

* ``detect-segment`` (:class:`DetectSegmentLocalizer`): an open-vocabulary detector finds
  the phrase's boxes, a promptable segmenter turns boxes into a mask.
* ``reference-mask`` (:class:`ReferenceMaskLocalizer`): the dataset's own edit mask
  (``Sample.reference_mask``) gives the region; its connected components give the boxes.

Masks and the judge: the edit mask of BPM_SPEC §3 is the union of a source-image mask and
an edited-image mask. Each :class:`Localization` stores the mask of *its own* image, at its
own pixel size, and the judge takes ``edit mask = source.mask ∪ edited.mask`` (each mapped
to the 500 frame; a ``None`` mask contributes nothing). For additions the source-image mask
depends on the edited-side boxes (so on the candidate): the source Localization then has
``mask=None`` and the edited Localization's mask already holds the union of both images'
masks (the source-image part resized to the edited image's size), with
``backend["mask_includes_source_image"] = True``. The judge's union is right either way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

# Imported for their registrations, so that detector/segmenter names resolve.
from bpm_lib.backends import grounding_dino as _grounding_dino  # noqa: F401
from bpm_lib.backends import sam as _sam  # noqa: F401
from bpm_lib.backends.base import DETECTORS, LOCALIZERS, SEGMENTERS, Detector, Segmenter
from bpm_lib.errors import DataError
from bpm_lib.masks import encode_rle, mask_boxes
from bpm_lib.types import Box, Detection, Localization, ParsedInstruction, Sample

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

REFERENCE_PHRASE = "reference mask"
EDITED_MASK_BOXES = ("source", "edited")


def map_box(box: Sequence[float], src_size: tuple[int, int], dst_size: tuple[int, int]) -> Box:
    """Scale a pixel box of an image of size ``src_size`` (W, H) to one of ``dst_size``,
    clipped to the destination image."""
    sw, sh = src_size
    dw, dh = dst_size
    if min(sw, sh, dw, dh) <= 0:
        raise ValueError(f"image sizes must be positive, got {src_size} and {dst_size}")
    fx, fy = dw / sw, dh / sh
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = min(max(x0 * fx, 0.0), dw), min(max(x1 * fx, 0.0), dw)
    y0, y1 = min(max(y0 * fy, 0.0), dh), min(max(y1 * fy, 0.0), dh)
    return (x0, y0, max(x0, x1), max(y0, y1))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a boolean mask to ``size`` (W, H)."""
    from PIL import Image

    arr = np.asarray(mask, dtype=bool)
    if (arr.shape[1], arr.shape[0]) == tuple(size):
        return arr
    img = Image.fromarray(arr.astype(np.uint8) * 255, mode="L").resize(size, Image.Resampling.NEAREST)
    return np.asarray(img) >= 128


def _check_lengths(samples: Sequence[Sample], **others: Sequence[Any]) -> None:
    for name, seq in others.items():
        if len(seq) != len(samples):
            raise ValueError(f"{name} must have one entry per sample ({len(samples)}), got {len(seq)}")


def _check_source(samples: Sequence[Sample], source: Sequence[Localization]) -> None:
    for sample, loc in zip(samples, source, strict=True):
        if not isinstance(loc, Localization) or loc.side != "source" or loc.sample_id != sample.sample_id:
            got = f"{loc.side}/{loc.sample_id}" if isinstance(loc, Localization) else type(loc).__name__
            raise ValueError(f"source must hold the source-side Localization of {sample.sample_id!r}, got {got}")


def _size(img: Image.Image) -> tuple[int, int]:
    return (int(img.width), int(img.height))


class DetectSegmentLocalizer:
    """Detector + segmenter localization (the reference's GroundingDINO + SAM).

    ``detector``/``segmenter`` are instances or registry names (built with
    ``detector_kwargs``/``segmenter_kwargs``). ``edited_mask_boxes`` chooses the boxes that
    prompt the segmenter on the edited image: ``"source"`` (parity with the reference:
    the source-side boxes mapped to the edited image's size; for additions the
    edited-side boxes) or ``"edited"`` (the edited-side boxes; for removals, which have
    no edited-side phrase, the source-side boxes). ``batch_size`` images go to the
    detector (and segmenter) per call.

    ``calls`` counts images processed per stage: ``detector_source``,
    ``detector_edited``, ``segmenter_source``, ``segmenter_edited``. Source-side work
    happens once per sample in :meth:`localize_source`, except the source-image mask of an
    addition, which needs the edited-side boxes and is made in :meth:`localize_edited`.
    """

    name = "detect-segment"

    def __init__(
        self,
        detector: str | Detector = "grounding-dino",
        segmenter: str | Segmenter = "sam",
        *,
        detector_kwargs: Mapping[str, Any] | None = None,
        segmenter_kwargs: Mapping[str, Any] | None = None,
        edited_mask_boxes: Literal["source", "edited"] = "source",
        batch_size: int = 16,
    ) -> None:
        if edited_mask_boxes not in EDITED_MASK_BOXES:
            raise ValueError(f"edited_mask_boxes must be one of {EDITED_MASK_BOXES}, got {edited_mask_boxes!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(detector, str) and detector_kwargs:
            raise ValueError("detector_kwargs only apply when detector is a registry name")
        if not isinstance(segmenter, str) and segmenter_kwargs:
            raise ValueError("segmenter_kwargs only apply when segmenter is a registry name")
        self.detector: Detector = DETECTORS.resolve(detector, **dict(detector_kwargs or {}))
        self.segmenter: Segmenter = SEGMENTERS.resolve(segmenter, **dict(segmenter_kwargs or {}))
        self.edited_mask_boxes = edited_mask_boxes
        self.batch_size = batch_size
        self.calls = {"detector_source": 0, "detector_edited": 0, "segmenter_source": 0, "segmenter_edited": 0}

    def identity(self) -> dict[str, Any]:
        det, seg = self.detector.identity(), self.segmenter.identity()
        return {
            "name": self.name,
            "detector": det,
            "segmenter": seg,
            "edited_mask_boxes": self.edited_mask_boxes,
            "meaningless": bool(det.get("meaningless") or seg.get("meaningless")),
        }

    # -- batched calls -------------------------------------------------------------------
    def _detect(self, images: list[Image.Image], phrases: list[str | None], counter: str) -> list[list[Detection]]:
        out: list[list[Detection]] = [[] for _ in images]
        todo = [i for i, p in enumerate(phrases) if p is not None]
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start:start + self.batch_size]
            found = self.detector.detect([images[i] for i in idx], [str(phrases[i]) for i in idx])
            if len(found) != len(idx):
                raise ValueError(f"detector {self.detector.name!r} returned {len(found)} results for {len(idx)} images")
            self.calls[counter] += len(idx)
            for i, dets in zip(idx, found, strict=True):
                out[i] = sorted(dets, key=lambda d: d.score, reverse=True)
        return out

    def _segment(self, images: list[Image.Image], boxes: list[list[Box] | None], counter: str) -> list[np.ndarray | None]:
        """Masks for the images whose box list is not None (all False without boxes)."""
        out: list[np.ndarray | None] = [None] * len(images)
        todo = []
        for i, bxs in enumerate(boxes):
            if bxs is None:
                continue
            if bxs:
                todo.append(i)
            else:
                out[i] = np.zeros((images[i].height, images[i].width), dtype=bool)
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start:start + self.batch_size]
            masks = self.segmenter.segment([images[i] for i in idx], [list(boxes[i] or []) for i in idx])
            if len(masks) != len(idx):
                raise ValueError(f"segmenter {self.segmenter.name!r} returned {len(masks)} masks for {len(idx)} images")
            self.calls[counter] += len(idx)
            for i, mask in zip(idx, masks, strict=True):
                arr = np.asarray(mask, dtype=bool)
                if arr.shape != (images[i].height, images[i].width):
                    raise ValueError(
                        f"segmenter {self.segmenter.name!r} returned a {arr.shape} mask for a "
                        f"{images[i].height}x{images[i].width} image"
                    )
                out[i] = arr
        return out

    # -- Localizer protocol --------------------------------------------------------------
    def localize_source(
        self, samples: Sequence[Sample], parsed: Sequence[ParsedInstruction], images: Sequence[Image.Image]
    ) -> list[Localization]:
        """Source side: detect ``parsed.source_phrase`` (source object; the anchor for
        additions) and segment the source image with those boxes. ``mask`` is ``None``
        when nothing is detected for lack of a phrase (global edits, additions without
        anchor) and for additions (their source-image mask is made per candidate)."""
        _check_lengths(samples, parsed=parsed, images=images)
        imgs = list(images)
        phrases = [p.source_phrase for p in parsed]
        detections = self._detect(imgs, phrases, "detector_source")
        boxes: list[list[Box] | None] = [
            None if phrase is None or p.is_addition else [d.box for d in dets]
            for p, phrase, dets in zip(parsed, phrases, detections, strict=True)
        ]
        masks = self._segment(imgs, boxes, "segmenter_source")
        out = []
        for sample, p, img, phrase, dets, mask in zip(samples, parsed, imgs, phrases, detections, masks, strict=True):
            w, h = _size(img)
            out.append(
                Localization(
                    sample_id=sample.sample_id,
                    side="source",
                    phrase=phrase,
                    width=w,
                    height=h,
                    detections=tuple(dets),
                    mask=None if mask is None else encode_rle(mask),
                    method=self.name,
                    backend={"mask_from_edited_boxes": p.is_addition and not p.is_global},
                )
            )
        return out

    def localize_edited(
        self,
        samples: Sequence[Sample],
        parsed: Sequence[ParsedInstruction],
        images: Sequence[Image.Image],
        source: Sequence[Localization],
        candidate: str,
        *,
        source_images: Sequence[Image.Image] | None = None,
    ) -> list[Localization]:
        """Edited side: detect ``parsed.edited_phrase`` in the edited image and segment it
        (boxes per ``edited_mask_boxes``). For additions the source image is also segmented
        with the edited-side boxes and merged into this mask (see the module docstring);
        that needs the source images: ``source_images`` if given, else each sample's
        ``source_image`` path is decoded (the caller resolves relative paths)."""
        _check_lengths(samples, parsed=parsed, images=images, source=source)
        _check_source(samples, source)
        if source_images is not None:
            _check_lengths(samples, source_images=source_images)
        if not isinstance(candidate, str) or not candidate:
            raise ValueError(f"candidate must be a non-empty string, got {candidate!r}")
        imgs = list(images)
        phrases = [p.edited_phrase for p in parsed]
        detections = self._detect(imgs, phrases, "detector_edited")

        edited_boxes: list[list[Box] | None] = []
        mask_boxes_used: list[str | None] = []
        for p, img, src, dets in zip(parsed, imgs, source, detections, strict=True):
            if p.is_global:
                edited_boxes.append(None)
                mask_boxes_used.append(None)
            elif p.is_addition or (self.edited_mask_boxes == "edited" and not p.is_removal):
                edited_boxes.append([d.box for d in dets])
                mask_boxes_used.append("edited")
            else:
                edited_boxes.append([map_box(d.box, (src.width, src.height), _size(img)) for d in src.detections])
                mask_boxes_used.append("source")
        edited_masks = self._segment(imgs, edited_boxes, "segmenter_edited")

        # Additions: the source image's mask from the edited-side boxes (BPM_SPEC §3).
        addition = [p.is_addition and not p.is_global for p in parsed]
        todo: list[int] = []
        src_imgs: list[Image.Image] = []
        src_boxes: list[list[Box] | None] = []
        for i, (sample, src, dets) in enumerate(zip(samples, source, detections, strict=True)):
            if not addition[i] or not dets:
                continue
            src_img = source_images[i] if source_images is not None else _load_source(sample)
            if _size(src_img) != (src.width, src.height):
                raise DataError(
                    f"sample {sample.sample_id!r}: source image is {src_img.width}x{src_img.height} but its "
                    f"source Localization says {src.width}x{src.height}"
                )
            todo.append(i)
            src_imgs.append(src_img)
            src_boxes.append([map_box(d.box, _size(imgs[i]), _size(src_img)) for d in dets])
        source_masks = self._segment(src_imgs, src_boxes, "segmenter_source")
        for i, smask in zip(todo, source_masks, strict=True):
            emask = edited_masks[i]
            if smask is not None and emask is not None:
                edited_masks[i] = emask | resize_mask(smask, _size(imgs[i]))

        out = []
        rows = zip(samples, imgs, phrases, detections, edited_masks, strict=True)
        for i, (sample, img, phrase, dets, mask) in enumerate(rows):
            w, h = _size(img)
            out.append(
                Localization(
                    sample_id=sample.sample_id,
                    side="edited",
                    phrase=phrase,
                    width=w,
                    height=h,
                    detections=tuple(dets),
                    mask=None if mask is None else encode_rle(mask),
                    method=self.name,
                    candidate=candidate,
                    backend={
                        "mask_boxes": mask_boxes_used[i],
                        "mask_includes_source_image": addition[i],
                    },
                )
            )
        return out


def _load_source(sample: Sample) -> Image.Image:
    from bpm_lib.io.images import load_rgb

    return load_rgb(sample.source_image, what=f"sample {sample.sample_id} source image")


class ReferenceMaskLocalizer:
    """The dataset's edit mask as the localization (MagicBrush-style masks).

    Source side: ``Sample.reference_mask`` (a PNG; the caller resolves relative paths) is
    decoded with :func:`bpm_lib.io.images.load_mask` and must match the source image's
    size; its 8-connected components (largest first, ``min_pixels`` and up) are the boxes,
    each with score 1.0; the mask is the reference mask. Edited side: the same boxes mapped
    to the edited image's size, and no mask of its own (the reference mask already is the
    edit region). Geometry between the two sides is then not independent evidence.
    """

    name = "reference-mask"

    def __init__(self, *, min_pixels: int = 1) -> None:
        if isinstance(min_pixels, bool) or not isinstance(min_pixels, int) or min_pixels < 1:
            raise ValueError(f"min_pixels must be a positive integer, got {min_pixels!r}")
        self.min_pixels = min_pixels
        self.calls = {
            "detector_source": 0,
            "detector_edited": 0,
            "segmenter_source": 0,
            "segmenter_edited": 0,
            "reference_masks_loaded": 0,
        }

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "min_pixels": self.min_pixels, "meaningless": False}

    def localize_source(
        self, samples: Sequence[Sample], parsed: Sequence[ParsedInstruction], images: Sequence[Image.Image]
    ) -> list[Localization]:
        from bpm_lib.io.images import load_mask

        _check_lengths(samples, parsed=parsed, images=images)
        out = []
        for sample, p, img in zip(samples, parsed, images, strict=True):
            if not sample.reference_mask:
                raise DataError(
                    f"sample {sample.sample_id!r} has no reference_mask; the reference-mask localizer needs one "
                    "(use the detect-segment localizer for samples without a mask)"
                )
            w, h = _size(img)
            mask = load_mask(sample.reference_mask, size=(w, h), what=f"sample {sample.sample_id} reference_mask")
            self.calls["reference_masks_loaded"] += 1
            phrase = p.source_phrase or REFERENCE_PHRASE
            dets = tuple(Detection.from_pixels(b, 1.0, phrase, w, h) for b in mask_boxes(mask, self.min_pixels))
            out.append(
                Localization(
                    sample_id=sample.sample_id,
                    side="source",
                    phrase=phrase,
                    width=w,
                    height=h,
                    detections=dets,
                    mask=encode_rle(mask),
                    method=self.name,
                    backend={"reference_mask": sample.reference_mask},
                )
            )
        return out

    def localize_edited(
        self,
        samples: Sequence[Sample],
        parsed: Sequence[ParsedInstruction],
        images: Sequence[Image.Image],
        source: Sequence[Localization],
        candidate: str,
        *,
        source_images: Sequence[Image.Image] | None = None,
    ) -> list[Localization]:
        _check_lengths(samples, parsed=parsed, images=images, source=source)
        _check_source(samples, source)
        if not isinstance(candidate, str) or not candidate:
            raise ValueError(f"candidate must be a non-empty string, got {candidate!r}")
        out = []
        for sample, p, img, src in zip(samples, parsed, images, source, strict=True):
            w, h = _size(img)
            phrase = p.edited_phrase or REFERENCE_PHRASE
            dets = tuple(
                Detection.from_pixels(map_box(d.box, (src.width, src.height), (w, h)), 1.0, phrase, w, h)
                for d in src.detections
            )
            out.append(
                Localization(
                    sample_id=sample.sample_id,
                    side="edited",
                    phrase=phrase,
                    width=w,
                    height=h,
                    detections=dets,
                    mask=None,
                    method=self.name,
                    candidate=candidate,
                    backend={"reference_mask": sample.reference_mask},
                )
            )
        return out


LOCALIZERS.add("detect-segment", DetectSegmentLocalizer, "open-vocabulary detector + promptable segmenter")
LOCALIZERS.add("reference-mask", ReferenceMaskLocalizer, "the dataset's reference edit mask (MagicBrush masks)")
