"""SAM segmenters on tiny random weights: transformers SAM and official segment_anything."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bpm_lib.backends.base import SEGMENTERS, Segmenter
from bpm_lib.backends.sam import (
    OfficialSamSegmenter,
    SamSegmenter,
    TinyRandomSamSegmenter,
    build_tiny_sam,
    load_official_sam,
)
from bpm_lib.errors import ModelLoadError
from tests.fixtures.tiny_models import (  # noqa: F401
    build_tiny_official_sam,
    tiny_official_sam_pth,
    tiny_sam_dir,
)


def _images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.fixture(scope="module")
def sam(tiny_sam_dir: Path) -> SamSegmenter:  # noqa: F811
    return SamSegmenter(str(tiny_sam_dir), device="cpu", batch_size=4, meaningless=True)


@pytest.fixture(scope="module")
def official(tiny_official_sam_pth: Path) -> OfficialSamSegmenter:  # noqa: F811
    return OfficialSamSegmenter(str(tiny_official_sam_pth), model_type="tiny", builder=build_tiny_official_sam, device="cpu")


# -- transformers SAM -------------------------------------------------------------------


def test_loaded_from_disk_equals_the_built_model(sam: SamSegmenter) -> None:
    built, _ = build_tiny_sam()
    loaded = sam.model.state_dict()
    for name, tensor in built.state_dict().items():
        assert torch.equal(tensor, loaded[name]), name
    assert isinstance(sam, Segmenter)


def test_masks_have_each_image_shape(sam: SamSegmenter) -> None:
    sizes = [(80, 50), (60, 90), (33, 33)]
    masks = sam.segment(_images(sizes), [[(10, 10, 40, 30)], [(0, 0, 60, 90), (5, 5, 20, 20)], [(1, 2, 3, 4)]])
    assert [m.shape for m in masks] == [(50, 80), (90, 60), (33, 33)]
    assert all(m.dtype == np.bool_ for m in masks)
    assert sam.forward_calls >= 1


def test_no_boxes_gives_all_false_without_a_model_call(tiny_sam_dir: Path) -> None:  # noqa: F811
    seg = SamSegmenter(str(tiny_sam_dir), device="cpu")
    masks = seg.segment(_images([(20, 10), (7, 9)]), [[], []])
    assert seg.forward_calls == 0
    assert [m.shape for m in masks] == [(10, 20), (9, 7)] and not any(m.any() for m in masks)
    mixed = seg.segment(_images([(40, 30), (20, 10), (30, 40)]), [[(0, 0, 20, 20)], [], [(5, 5, 25, 35)]])
    assert seg.forward_calls == 1  # both images with boxes in one batch
    assert not mixed[1].any() and mixed[1].shape == (10, 20)


def test_union_of_boxes_and_batch_padding(sam: SamSegmenter) -> None:
    image = _images([(64, 48)], seed=2)[0]
    a, b = (2, 3, 30, 20), (20, 10, 60, 45)
    single_a, single_b = sam.segment([image, image], [[a], [b]])
    (both,) = sam.segment([image], [[a, b]])
    np.testing.assert_array_equal(both, single_a | single_b)
    # In one batch with an image holding two boxes, the one-box image is padded: its mask is unchanged.
    padded_a, both_again = sam.segment([image, image], [[a], [a, b]])
    np.testing.assert_array_equal(padded_a, single_a)
    np.testing.assert_array_equal(both_again, both)


def test_batch_size_does_not_change_masks(tiny_sam_dir: Path, sam: SamSegmenter) -> None:  # noqa: F811
    images = _images([(50, 40), (64, 64), (30, 70)], seed=4)
    boxes = [[(5, 5, 30, 30)], [(10, 10, 50, 50)], [(0, 0, 30, 20), (3, 30, 25, 60)]]
    one = SamSegmenter(str(tiny_sam_dir), device="cpu", batch_size=1)
    for x, y in zip(one.segment(images, boxes), sam.segment(images, boxes), strict=True):
        np.testing.assert_array_equal(x, y)
    assert one.forward_calls == 3


def test_input_validation(sam: SamSegmenter) -> None:
    img = _images([(10, 10)])
    with pytest.raises(ValueError, match="same length"):
        sam.segment(img, [[], []])
    with pytest.raises(ValueError, match="negative size"):
        sam.segment(img, [[(5, 5, 1, 1)]])
    with pytest.raises(ValueError, match="4 finite"):
        sam.segment(img, [[(0, 0, float("nan"), 1)]])
    model, _ = build_tiny_sam()
    with pytest.raises(ValueError, match="model_id"):
        SamSegmenter(model, processor=object(), device="cpu")


def test_identity(sam: SamSegmenter, tiny_sam_dir: Path) -> None:  # noqa: F811
    ident = sam.identity()
    assert ident["name"] == "sam" and ident["model"] == str(tiny_sam_dir)
    assert ident["multimask_output"] is False and ident["dtype"] == "float32" and ident["meaningless"] is True


def test_tiny_random_registered_and_deterministic() -> None:
    assert {"sam", "sam-official", "tiny-random"} <= set(SEGMENTERS.names())
    a = SEGMENTERS.create("tiny-random", device="cpu")
    b = TinyRandomSamSegmenter(device="cpu")
    assert a.identity()["meaningless"] is True and a.identity()["name"] == "tiny-random"
    images = _images([(50, 40), (40, 50)], seed=9)
    boxes = [[(5, 5, 30, 30)], [(1, 1, 39, 49)]]
    for x, y in zip(a.segment(images, boxes), b.segment(images, boxes), strict=True):
        np.testing.assert_array_equal(x, y)
        assert 0 < x.sum() < x.size  # random weights still give a partial mask


def test_half_precision_path() -> None:
    """bfloat16 weights (the CUDA default) run; masks come back boolean at the image size."""
    seg = TinyRandomSamSegmenter(device="cpu", dtype="bfloat16")
    assert seg.identity()["dtype"] == "bfloat16"
    (mask,) = seg.segment(_images([(70, 50)]), [[(5, 5, 40, 30)]])
    assert mask.shape == (50, 70) and mask.dtype == np.bool_


# -- official segment_anything checkpoints ----------------------------------------------


def test_official_masks(official: OfficialSamSegmenter) -> None:
    images = _images([(80, 50), (20, 30)], seed=1)
    before = official.forward_calls
    masks = official.segment(images, [[(10, 10, 40, 30), (50, 5, 79, 45)], []])
    assert [m.shape for m in masks] == [(50, 80), (30, 20)]
    assert masks[0].dtype == np.bool_ and not masks[1].any()
    assert official.forward_calls == before + 1
    a, b = official.segment([images[0], images[0]], [[(10, 10, 40, 30)], [(50, 5, 79, 45)]])
    np.testing.assert_array_equal(masks[0], a | b)


def test_official_identity_has_checkpoint_digest(official: OfficialSamSegmenter, tiny_official_sam_pth: Path) -> None:  # noqa: F811
    import hashlib

    ident = official.identity()
    assert ident["name"] == "sam-official" and ident["model_type"] == "tiny"
    assert ident["sha256"] == hashlib.sha256(tiny_official_sam_pth.read_bytes()).hexdigest()


def test_official_weights_round_trip(official: OfficialSamSegmenter) -> None:
    built = build_tiny_official_sam()
    loaded = official.model.state_dict()
    for name, tensor in built.state_dict().items():
        assert torch.equal(tensor, loaded[name]), name


class _Boom:
    """Unpickling this runs code: torch.load(weights_only=True) must refuse it."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path(_Boom.target),))

    target = ""


def test_official_checkpoint_with_pickled_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    _Boom.target = str(marker)
    evil = tmp_path / "evil.pth"
    with evil.open("wb") as fh:
        pickle.dump({"image_encoder.weight": _Boom()}, fh, protocol=2)
    with pytest.raises(ModelLoadError, match="weights_only"):
        load_official_sam(evil, "tiny", build_tiny_official_sam)
    assert not marker.exists()


def test_official_missing_or_mismatched_checkpoint(tmp_path: Path, tiny_official_sam_pth: Path) -> None:  # noqa: F811
    with pytest.raises(ModelLoadError, match="does not exist"):
        OfficialSamSegmenter(str(tmp_path / "sam_vit_h_4b8939.pth"), device="cpu")
    with pytest.raises(ModelLoadError, match="is not a file"):
        load_official_sam(tmp_path, "vit_b")
    with pytest.raises(ValueError, match="model_type"):
        load_official_sam(tiny_official_sam_pth, "vit_x")
    # The tiny state dict does not fit the official vit_b architecture.
    with pytest.raises(ModelLoadError, match="does not match the 'vit_b' architecture"):
        load_official_sam(tiny_official_sam_pth, "vit_b")


@pytest.mark.slow
def test_official_vit_b_builder_round_trip(tmp_path: Path) -> None:
    """The real vit_b architecture (random weights) through torch.save → weights_only load."""
    from segment_anything import sam_model_registry

    model = sam_model_registry["vit_b"](checkpoint=None)
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(model.state_dict(), path)
    loaded = load_official_sam(path, "vit_b")
    name = "image_encoder.patch_embed.proj.weight"
    assert torch.equal(loaded.state_dict()[name], model.state_dict()[name])
