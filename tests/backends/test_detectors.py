"""GroundingDINO detector on tiny random weights, loaded from disk like a real checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bpm_lib.backends.base import DETECTORS, Detector
from bpm_lib.backends.grounding_dino import (
    GroundingDinoDetector,
    TinyRandomGroundingDinoDetector,
    build_tiny_grounding_dino,
    normalize_phrase,
    tiny_char_vocab,
)
from bpm_lib.backends.model_source import read_packaged_config
from tests.fixtures.tiny_models import tiny_grounding_dino_dir  # noqa: F401


def _images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.fixture(scope="module")
def detector(tiny_grounding_dino_dir: Path) -> GroundingDinoDetector:  # noqa: F811
    return GroundingDinoDetector(
        str(tiny_grounding_dino_dir), box_threshold=0.0, text_threshold=0.0, device="cpu", meaningless=True
    )


def test_normalize_phrase() -> None:
    assert normalize_phrase("  Red   CAR ") == "red car."
    assert normalize_phrase("the cat.") == "the cat."
    assert normalize_phrase("screen of the laptop ..") == "screen of the laptop."
    with pytest.raises(ValueError, match="phrase"):
        normalize_phrase(" . ")
    with pytest.raises(TypeError, match="phrase"):
        normalize_phrase(None)  # type: ignore[arg-type]


def test_tiny_vocab_has_the_ids_grounding_dino_hard_codes() -> None:
    vocab = tiny_char_vocab("abc", ".,")
    assert vocab["[CLS]"] == 101 and vocab["[SEP]"] == 102 and vocab["."] == 1012 and vocab["?"] == 1029
    assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 100
    assert {"a", "##a", ","} <= set(vocab)
    assert sorted(vocab.values()) == list(range(len(vocab)))


def test_loaded_from_disk_equals_the_built_model(detector: GroundingDinoDetector) -> None:
    built, _ = build_tiny_grounding_dino()
    loaded = detector.model.state_dict()
    for name, tensor in built.state_dict().items():
        assert torch.equal(tensor, loaded[name]), name
    assert isinstance(detector, Detector)


def test_zero_thresholds_give_valid_sorted_boxes_in_both_frames(detector: GroundingDinoDetector) -> None:
    sizes = [(80, 50), (60, 90), (123, 77)]
    images = _images(sizes)
    results = detector.detect(images, ["a red car", "Dog", "the hat on the table"])
    num_queries = detector.model.config.num_queries
    assert len(results) == 3
    for (w, h), dets, phrase in zip(sizes, results, ["a red car", "dog", "the hat on the table"], strict=True):
        assert 1 <= len(dets) <= num_queries
        scores = [d.score for d in dets]
        assert scores == sorted(scores, reverse=True)
        for d in dets:
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            assert d.box_500 == pytest.approx((x0 * 500 / w, y0 * 500 / h, x1 * 500 / w, y1 * 500 / h))
            assert 0.0 <= d.score <= 1.0
            # text_threshold 0 keeps every token of the phrase as the label
            assert d.phrase == phrase


def test_threshold_one_finds_nothing(tiny_grounding_dino_dir: Path) -> None:  # noqa: F811
    det = GroundingDinoDetector(str(tiny_grounding_dino_dir), box_threshold=1.0, device="cpu", meaningless=True)
    assert det.detect(_images([(64, 64), (40, 70)]), ["cat", "dog"]) == [[], []]


def test_empty_label_falls_back_to_the_input_phrase(tiny_grounding_dino_dir: Path) -> None:  # noqa: F811
    det = GroundingDinoDetector(
        str(tiny_grounding_dino_dir), box_threshold=0.0, text_threshold=1.0, device="cpu", meaningless=True
    )
    (dets,) = det.detect(_images([(64, 48)]), ["  Yellow Tie "])
    assert dets and {d.phrase for d in dets} == {"Yellow Tie"}


def test_batching_with_padded_text_matches_single_images(tiny_grounding_dino_dir: Path) -> None:  # noqa: F811
    images = _images([(64, 64)] * 3, seed=3)
    phrases = ["cat", "screen of the laptop", "red bike"]
    one = GroundingDinoDetector(
        str(tiny_grounding_dino_dir), box_threshold=0.0, text_threshold=0.0, batch_size=1, device="cpu"
    )
    three = GroundingDinoDetector(
        str(tiny_grounding_dino_dir), box_threshold=0.0, text_threshold=0.0, batch_size=3, device="cpu"
    )
    a, b = one.detect(images, phrases), three.detect(images, phrases)
    assert one.forward_calls == 3 and three.forward_calls == 1
    for da, db in zip(a, b, strict=True):
        assert len(da) == len(db)
        for x, y in zip(da, db, strict=True):
            assert x.box == pytest.approx(y.box, abs=1e-3)
            assert x.score == pytest.approx(y.score, abs=1e-4)
            assert x.phrase == y.phrase


def test_phrase_matters(detector: GroundingDinoDetector) -> None:
    image = _images([(64, 64)], seed=5)[0]
    cat, bike = detector.detect([image, image], ["cat", "bike"])
    assert [d.score for d in cat] != [d.score for d in bike]


def test_input_validation(detector: GroundingDinoDetector, tiny_grounding_dino_dir: Path) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="same length"):
        detector.detect(_images([(32, 32)]), ["a", "b"])
    assert detector.detect([], []) == []
    with pytest.raises(ValueError, match="box_threshold"):
        GroundingDinoDetector(str(tiny_grounding_dino_dir), box_threshold=1.5, device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        GroundingDinoDetector(str(tiny_grounding_dino_dir), batch_size=0, device="cpu")
    model, _ = build_tiny_grounding_dino()
    with pytest.raises(ValueError, match="processor"):
        GroundingDinoDetector(model, device="cpu")


def test_identity(detector: GroundingDinoDetector, tiny_grounding_dino_dir: Path) -> None:  # noqa: F811
    ident = detector.identity()
    assert ident == {
        "name": "grounding-dino",
        "model": str(tiny_grounding_dino_dir),
        "revision": None,
        "box_threshold": 0.0,
        "text_threshold": 0.0,
        "dtype": "float32",
        "meaningless": True,
    }


def test_grayscale_and_rgba_images_are_accepted(detector: GroundingDinoDetector) -> None:
    grey = Image.new("L", (50, 40), 128)
    rgba = Image.new("RGBA", (30, 60), (10, 20, 30, 128))
    res = detector.detect([grey, rgba], ["cat", "dog"])
    assert all(0 <= d.box[2] <= 50 for d in res[0]) and all(0 <= d.box[3] <= 60 for d in res[1])


def test_tiny_random_registered_deterministic_and_mixed() -> None:
    assert {"grounding-dino", "tiny-random"} <= set(DETECTORS.names())
    a = DETECTORS.create("tiny-random", device="cpu")
    b = TinyRandomGroundingDinoDetector(device="cpu")
    defaults = read_packaged_config("tiny_grounding_dino.json")["defaults"]
    ident = a.identity()
    assert ident["meaningless"] is True and ident["name"] == "tiny-random"
    assert ident["box_threshold"] == defaults["box_threshold"] and ident["seed"] == 0
    assert ident["model"].startswith("tiny-random:tiny_grounding_dino.json@")
    rng = np.random.default_rng(11)
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(12)]
    phrases = ["cat", "dog", "red car", "hat", "bike", "bear"] * 2
    ra, rb = a.detect(images, phrases), b.detect(images, phrases)
    assert [[d.to_dict() for d in r] for r in ra] == [[d.to_dict() for d in r] for r in rb]
    found = sum(bool(r) for r in ra)
    assert 0 < found < len(images), f"defaults should give a mix of found/not found, got {found}/{len(images)}"
    other_seed = TinyRandomGroundingDinoDetector(seed=1, device="cpu")
    assert other_seed.identity()["seed"] == 1
    assert [[d.to_dict() for d in r] for r in other_seed.detect(images[:4], phrases[:4])] != [
        [d.to_dict() for d in r] for r in ra[:4]
    ]


def test_half_precision_path() -> None:
    """bfloat16 weights (the CUDA default) run and still give valid float detections."""
    det = TinyRandomGroundingDinoDetector(device="cpu", dtype="bfloat16", box_threshold=0.0)
    assert det.identity()["dtype"] == "bfloat16"
    (dets,) = det.detect(_images([(70, 50)]), ["cat"])
    assert dets and all(0 <= d.box[2] <= 70 and 0 <= d.box[3] <= 50 and 0 <= d.score <= 1 for d in dets)
