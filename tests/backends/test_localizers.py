"""Localizers: detect-segment (fake and tiny real backends) and reference-mask."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

from bpm_lib.backends.base import LOCALIZERS, Localizer
from bpm_lib.backends.localizers import (
    DetectSegmentLocalizer,
    ReferenceMaskLocalizer,
    map_box,
    resize_mask,
)
from bpm_lib.errors import DataError
from bpm_lib.io.images import mask_to_frame
from bpm_lib.masks import decode_rle
from bpm_lib.types import Box, Detection, Localization, ParsedInstruction, Sample
from tests.fixtures.tiny_models import tiny_grounding_dino_dir, tiny_sam_dir  # noqa: F401

SRC_SIZE = (200, 100)
EDIT_SIZE = (100, 50)

REPLACE = ParsedInstruction("cat", "dog", "replace")
ADD = ParsedInstruction("none", "hat", "add", anchor_object="table", added_object="hat", position_relation="above")
REMOVE = ParsedInstruction("bike", "none", "remove")
GLOBAL = ParsedInstruction("all", "all", "global")
MISSING = ParsedInstruction("unicorn", "dog", "replace")


class FakeDetector:
    """Boxes as fractions of the image per phrase; records every call."""

    name = "fake-detector"
    BOXES: ClassVar[dict[str, list[tuple[float, float, float, float, float]]]] = {
        "cat": [(0.1, 0.2, 0.5, 0.6, 0.9)],
        "dog": [(0.5, 0.5, 0.9, 0.9, 0.8), (0.0, 0.0, 0.1, 0.1, 0.95)],
        "table": [(0.2, 0.5, 0.8, 1.0, 0.7)],
        "hat": [(0.4, 0.1, 0.6, 0.3, 0.6)],
        "bike": [(0.6, 0.2, 0.9, 0.8, 0.85)],
    }

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "meaningless": False}

    def detect(self, images: Sequence[Image.Image], phrases: Sequence[str]) -> list[list[Detection]]:
        self.calls.append(list(phrases))
        out = []
        for img, phrase in zip(images, phrases, strict=True):
            w, h = img.size
            dets = [
                Detection.from_pixels((x0 * w, y0 * h, x1 * w, y1 * h), s, phrase, w, h)
                for x0, y0, x1, y1, s in self.BOXES.get(phrase, [])
            ]
            out.append(dets)  # unsorted on purpose: the localizer orders by score
        return out


class FakeSegmenter:
    """Fills each box; a bright image (the source, in these tests) also gets its top two rows."""

    name = "fake-segmenter"

    def __init__(self) -> None:
        self.calls: list[list[tuple[tuple[int, int], list[Box]]]] = []

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "meaningless": True}

    def segment(self, images: Sequence[Image.Image], boxes: Sequence[Sequence[Box]]) -> list[np.ndarray]:
        self.calls.append([(img.size, list(b)) for img, b in zip(images, boxes, strict=True)])
        out = []
        for img, bxs in zip(images, boxes, strict=True):
            mask = np.zeros((img.height, img.width), dtype=bool)
            for x0, y0, x1, y1 in bxs:
                mask[int(y0):math.ceil(y1), int(x0):math.ceil(x1)] = True
            if bxs and np.asarray(img).mean() > 128:
                mask[:2, :] = True
            out.append(mask)
        return out


def rect(size: tuple[int, int], box: Sequence[float]) -> np.ndarray:
    w, h = size
    mask = np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = box
    mask[int(y0):math.ceil(y1), int(x0):math.ceil(x1)] = True
    return mask


def sample(sid: str, source_image: str = "unused.png", **kw: Any) -> Sample:
    return Sample(sample_id=sid, instruction="edit", source_image=source_image, **kw)


SOURCE_IMG = Image.new("RGB", SRC_SIZE, (200, 200, 200))  # bright
EDITED_IMG = Image.new("RGB", EDIT_SIZE, (20, 20, 20))  # dark


def make(**kw: Any) -> tuple[DetectSegmentLocalizer, FakeDetector, FakeSegmenter]:
    det, seg = FakeDetector(), FakeSegmenter()
    return DetectSegmentLocalizer(det, seg, **kw), det, seg


def test_protocol_and_registry() -> None:
    loc, _, _ = make()
    assert isinstance(loc, Localizer) and isinstance(ReferenceMaskLocalizer(), Localizer)
    assert {"detect-segment", "reference-mask"} <= set(LOCALIZERS.names())
    built = LOCALIZERS.create("detect-segment", detector=FakeDetector(), segmenter=FakeSegmenter())
    assert built.identity() == {
        "name": "detect-segment",
        "detector": {"name": "fake-detector", "meaningless": False},
        "segmenter": {"name": "fake-segmenter", "meaningless": True},
        "edited_mask_boxes": "source",
        "meaningless": True,
    }


def test_replace_source_side() -> None:
    loc, _, seg = make()
    (src,) = loc.localize_source([sample("s1")], [REPLACE], [SOURCE_IMG])
    assert src.side == "source" and src.phrase == "cat" and (src.width, src.height) == SRC_SIZE
    assert [d.box for d in src.detections] == [(20.0, 20.0, 100.0, 60.0)]
    assert src.detections[0].box_500 == pytest.approx((50.0, 100.0, 250.0, 300.0))
    expected = rect(SRC_SIZE, (20, 20, 100, 60))
    expected[:2, :] = True
    np.testing.assert_array_equal(decode_rle(src.mask or {}), expected)
    assert seg.calls == [[(SRC_SIZE, [(20.0, 20.0, 100.0, 60.0)])]]


def test_replace_edited_side_uses_source_boxes_by_default() -> None:
    loc, _, seg = make()
    src = loc.localize_source([sample("s1")], [REPLACE], [SOURCE_IMG])
    (ed,) = loc.localize_edited([sample("s1")], [REPLACE], [EDITED_IMG], src, "ckpt-a")
    assert ed.side == "edited" and ed.candidate == "ckpt-a" and ed.phrase == "dog"
    assert [d.score for d in ed.detections] == [0.95, 0.8]  # ordered by score
    mapped = (10.0, 10.0, 50.0, 30.0)  # the source box at the edited image's size
    assert seg.calls[-1] == [(EDIT_SIZE, [mapped])]
    np.testing.assert_array_equal(decode_rle(ed.mask or {}), rect(EDIT_SIZE, mapped))
    assert ed.backend == {"mask_boxes": "source", "mask_includes_source_image": False}


def test_replace_edited_side_with_edited_boxes_option() -> None:
    loc, _, seg = make(edited_mask_boxes="edited")
    src = loc.localize_source([sample("s1")], [REPLACE], [SOURCE_IMG])
    (ed,) = loc.localize_edited([sample("s1")], [REPLACE], [EDITED_IMG], src, "ckpt-a")
    assert seg.calls[-1] == [(EDIT_SIZE, [(0.0, 0.0, 10.0, 5.0), (50.0, 25.0, 90.0, 45.0)])]
    assert ed.backend["mask_boxes"] == "edited"


@pytest.mark.parametrize("pass_source_images", [True, False])
def test_addition_merges_the_source_image_mask_from_edited_boxes(tmp_path: Path, pass_source_images: bool) -> None:
    path = tmp_path / "src.png"
    SOURCE_IMG.save(path)
    smp = sample("add1", source_image=str(path))
    loc, det, seg = make()
    (src,) = loc.localize_source([smp], [ADD], [SOURCE_IMG])
    assert src.phrase == "table" and src.found  # the anchor
    assert src.mask is None and src.backend == {"mask_from_edited_boxes": True}
    assert seg.calls == []  # nothing to segment before the edited-side boxes exist
    kwargs = {"source_images": [SOURCE_IMG]} if pass_source_images else {}
    (ed,) = loc.localize_edited([smp], [ADD], [EDITED_IMG], [src], "c1", **kwargs)
    assert det.calls == [["table"], ["hat"]]
    hat_edited = (40.0, 5.0, 60.0, 15.0)
    hat_source = (80.0, 10.0, 120.0, 30.0)
    assert seg.calls == [[(EDIT_SIZE, [hat_edited])], [(SRC_SIZE, [hat_source])]]
    # union: the edited-image mask plus the source-image mask (its top rows) at the edited size
    expected = rect(EDIT_SIZE, hat_edited)
    expected[0, :] = True  # 2 rows of the 100-row source are 1 row of the 50-row edited image
    np.testing.assert_array_equal(decode_rle(ed.mask or {}), expected)
    assert ed.backend == {"mask_boxes": "edited", "mask_includes_source_image": True}
    assert loc.calls == {"detector_source": 1, "detector_edited": 1, "segmenter_source": 1, "segmenter_edited": 1}


def test_addition_source_size_mismatch_is_data_error() -> None:
    loc, _, _ = make()
    src = loc.localize_source([sample("a")], [ADD], [SOURCE_IMG])
    with pytest.raises(DataError, match="'a'"):
        loc.localize_edited([sample("a")], [ADD], [EDITED_IMG], src, "c", source_images=[EDITED_IMG])


@pytest.mark.parametrize("option", ["source", "edited"])
def test_removal_segments_the_edited_image_with_source_boxes(option: str) -> None:
    loc, det, seg = make(edited_mask_boxes=option)
    src = loc.localize_source([sample("r")], [REMOVE], [SOURCE_IMG])
    (ed,) = loc.localize_edited([sample("r")], [REMOVE], [EDITED_IMG], src, "c")
    assert det.calls == [["bike"]]  # nothing to detect on the edited side
    assert ed.phrase is None and not ed.found
    assert seg.calls[-1] == [(EDIT_SIZE, [(60.0, 10.0, 90.0, 40.0)])]
    assert ed.backend["mask_boxes"] == "source"


def test_global_edit_costs_nothing() -> None:
    loc, det, seg = make()
    src = loc.localize_source([sample("g")], [GLOBAL], [SOURCE_IMG])
    (ed,) = loc.localize_edited([sample("g")], [GLOBAL], [EDITED_IMG], src, "c")
    assert det.calls == [] and seg.calls == []
    assert src[0].mask is None and ed.mask is None and not src[0].found and not ed.found


def test_source_not_found_gives_an_empty_mask_without_segmenting() -> None:
    loc, _, seg = make()
    (src,) = loc.localize_source([sample("m")], [MISSING], [SOURCE_IMG])
    assert not src.found and src.phrase == "unicorn"
    assert src.mask is not None and not decode_rle(src.mask).any()
    (ed,) = loc.localize_edited([sample("m")], [MISSING], [EDITED_IMG], [src], "c")
    assert ed.found and ed.mask is not None and not decode_rle(ed.mask).any()
    assert seg.calls == [] and loc.calls["segmenter_source"] == 0


def test_source_work_happens_once_per_sample_and_batches() -> None:
    samples = [sample("r1"), sample("a1"), sample("x1"), sample("g1")]
    parsed = [REPLACE, ADD, REMOVE, GLOBAL]
    loc, det, seg = make(batch_size=2)
    src = loc.localize_source(samples, parsed, [SOURCE_IMG] * 4)
    assert [len(c) for c in det.calls] == [2, 1]  # 3 phrases, batches of 2
    for cand in ("c1", "c2"):
        loc.localize_edited(samples, parsed, [EDITED_IMG] * 4, src, cand, source_images=[SOURCE_IMG] * 4)
    assert loc.calls == {
        "detector_source": 3,  # once per sample with a phrase, not per candidate
        "detector_edited": 4,  # replace + add, per candidate
        "segmenter_source": 2 + 2,  # replace and remove once; the addition's source mask per candidate
        "segmenter_edited": 6,  # replace, add, remove per candidate
    }
    assert [len(c) for c in seg.calls] == [2, 2, 1, 1, 2, 1, 1]


def test_judge_union_of_both_sides_covers_the_edit() -> None:
    """edit mask = source.mask ∪ edited.mask in the 500 frame, for every kind of edit."""
    loc, _, _ = make()
    samples = [sample("r"), sample("a")]
    src = loc.localize_source(samples, [REPLACE, ADD], [SOURCE_IMG] * 2)
    eds = loc.localize_edited(samples, [REPLACE, ADD], [EDITED_IMG] * 2, src, "c", source_images=[SOURCE_IMG] * 2)
    for s, e in zip(src, eds, strict=True):
        union = np.zeros((500, 500), dtype=bool)
        for side in (s, e):
            if side.mask is not None:
                union |= mask_to_frame(decode_rle(side.mask))
        assert union[0, :].all()  # the source-image part is in the union
        assert union.sum() < 500 * 500


def test_validation() -> None:
    loc, _, _ = make()
    with pytest.raises(ValueError, match="parsed"):
        loc.localize_source([sample("a")], [], [SOURCE_IMG])
    with pytest.raises(ValueError, match="images"):
        loc.localize_source([sample("a")], [REPLACE], [])
    src = loc.localize_source([sample("a")], [REPLACE], [SOURCE_IMG])
    with pytest.raises(ValueError, match="source-side Localization of 'b'"):
        loc.localize_edited([sample("b")], [REPLACE], [EDITED_IMG], src, "c")
    with pytest.raises(ValueError, match="candidate"):
        loc.localize_edited([sample("a")], [REPLACE], [EDITED_IMG], src, "")
    with pytest.raises(ValueError, match="edited_mask_boxes"):
        DetectSegmentLocalizer(FakeDetector(), FakeSegmenter(), edited_mask_boxes="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="detector_kwargs"):
        DetectSegmentLocalizer(FakeDetector(), FakeSegmenter(), detector_kwargs={"device": "cpu"})
    with pytest.raises(ValueError, match="unknown detector 'grounding-dno'; did you mean 'grounding-dino'"):
        DetectSegmentLocalizer("grounding-dno", FakeSegmenter())


def test_map_box_and_resize_mask() -> None:
    assert map_box((10, 20, 30, 40), (100, 100), (50, 200)) == (5.0, 40.0, 15.0, 80.0)
    assert map_box((-5, -5, 300, 300), (100, 100), (100, 100)) == (0.0, 0.0, 100.0, 100.0)
    with pytest.raises(ValueError, match="positive"):
        map_box((0, 0, 1, 1), (0, 10), (10, 10))
    m = np.zeros((2, 4), dtype=bool)
    m[:, :2] = True
    assert resize_mask(m, (8, 4)).tolist() == [[True] * 4 + [False] * 4] * 4


# -- with tiny real models ----------------------------------------------------------------


def test_with_tiny_models_loaded_through_the_registry(tiny_grounding_dino_dir: Path, tiny_sam_dir: Path) -> None:  # noqa: F811
    loc = LOCALIZERS.create(
        "detect-segment",
        detector="grounding-dino",
        segmenter="sam",
        detector_kwargs={"model": str(tiny_grounding_dino_dir), "box_threshold": 0.0, "device": "cpu", "meaningless": True},
        segmenter_kwargs={"model": str(tiny_sam_dir), "device": "cpu", "meaningless": True},
    )
    assert isinstance(loc, DetectSegmentLocalizer)
    rng = np.random.default_rng(0)
    src_imgs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(80, 60), (64, 96)]]
    ed_imgs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(40, 30), (64, 96)]]
    samples, parsed = [sample("t1"), sample("t2")], [REPLACE, ADD]
    src = loc.localize_source(samples, parsed, src_imgs)
    assert src[0].found and src[0].mask is not None and decode_rle(src[0].mask).shape == (60, 80)
    assert src[1].mask is None
    eds = loc.localize_edited(samples, parsed, ed_imgs, src, "tiny", source_images=src_imgs)
    assert [decode_rle(e.mask or {}).shape for e in eds] == [(30, 40), (96, 64)]
    assert all(isinstance(e, Localization) and e.found for e in eds)
    assert loc.identity()["meaningless"] is True
    assert loc.calls == {"detector_source": 2, "detector_edited": 2, "segmenter_source": 2, "segmenter_edited": 2}


def test_tiny_random_preset_backends() -> None:
    loc = DetectSegmentLocalizer("tiny-random", "tiny-random", detector_kwargs={"device": "cpu"}, segmenter_kwargs={"device": "cpu"})
    img = Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 80, 3), dtype=np.uint8))
    src = loc.localize_source([sample("p")], [REPLACE], [img])
    again = loc.localize_source([sample("p")], [REPLACE], [img])
    assert src == again  # deterministic
    ident = loc.identity()
    assert ident["detector"]["name"] == "tiny-random" and ident["segmenter"]["name"] == "tiny-random"
    assert ident["meaningless"] is True


# -- reference-mask ---------------------------------------------------------------------


def _reference(tmp_path: Path, size: tuple[int, int] = (60, 40)) -> tuple[Path, np.ndarray]:
    w, h = size
    mask = np.zeros((h, w), dtype=bool)
    mask[10:30, 5:25] = True  # big component
    mask[2:6, 40:45] = True  # small component
    path = tmp_path / "mask.png"
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path, mask


def test_reference_mask_both_sides(tmp_path: Path) -> None:
    path, mask = _reference(tmp_path)
    smp = sample("ref", reference_mask=str(path))
    loc = ReferenceMaskLocalizer()
    (src,) = loc.localize_source([smp], [REPLACE], [Image.new("RGB", (60, 40))])
    assert src.method == "reference-mask" and src.phrase == "cat"
    assert [d.box for d in src.detections] == [(5.0, 10.0, 25.0, 30.0), (40.0, 2.0, 45.0, 6.0)]
    assert all(d.score == 1.0 and d.phrase == "cat" for d in src.detections)
    np.testing.assert_array_equal(decode_rle(src.mask or {}), mask)
    (ed,) = loc.localize_edited([smp], [REPLACE], [Image.new("RGB", (120, 80))], [src], "c")
    assert ed.mask is None and ed.method == "reference-mask" and ed.phrase == "dog"
    assert [d.box for d in ed.detections] == [(10.0, 20.0, 50.0, 60.0), (80.0, 4.0, 90.0, 12.0)]
    assert [d.box_500 for d in ed.detections] == [d.box_500 for d in src.detections]
    assert loc.calls["reference_masks_loaded"] == 1 and loc.calls["detector_source"] == 0


def test_reference_mask_phrase_defaults(tmp_path: Path) -> None:
    path, _ = _reference(tmp_path)
    smp = sample("g", reference_mask=str(path))
    loc = ReferenceMaskLocalizer(min_pixels=25)
    (src,) = loc.localize_source([smp], [GLOBAL], [Image.new("RGB", (60, 40))])
    assert src.phrase == "reference mask" and len(src.detections) == 1  # the 20-pixel component is dropped
    (ed,) = loc.localize_edited([smp], [REMOVE], [Image.new("RGB", (60, 40))], [src], "c")
    assert ed.phrase == "reference mask"


def test_reference_mask_errors(tmp_path: Path) -> None:
    loc = ReferenceMaskLocalizer()
    with pytest.raises(DataError, match=r"'nomask'.*no reference_mask"):
        loc.localize_source([sample("nomask")], [REPLACE], [Image.new("RGB", (60, 40))])
    path, _ = _reference(tmp_path)
    with pytest.raises(DataError, match="does not match the image size"):
        loc.localize_source([sample("big", reference_mask=str(path))], [REPLACE], [Image.new("RGB", (61, 40))])
    with pytest.raises(DataError, match="not found"):
        loc.localize_source([sample("gone", reference_mask=str(tmp_path / "x.png"))], [REPLACE], [Image.new("RGB", (6, 4))])
    with pytest.raises(ValueError, match="min_pixels"):
        ReferenceMaskLocalizer(min_pixels=0)
