"""Baseline metrics on hand-made images and hand-made embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

from bpm_lib.backends.baselines import (
    BASELINES,
    L1,
    L2,
    Baseline,
    ClipI,
    ClipScore,
    DinoSimilarity,
    DirectionalClip,
    Lpips,
    clip_score_value,
    compute_baselines,
    cosine,
    l1_distance,
    l2_distance,
)
from tests.fixtures.tiny_clip import random_images, save_tiny_dino


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (500, 500)) -> Image.Image:
    return Image.new("RGB", size, rgb)


class ColourEmbedder:
    """Hand-made embedder: an image embeds as its top-left RGB, a text by a fixed table."""

    name = "colour"
    TEXTS: ClassVar[dict[str, list[float]]] = {
        "red": [1.0, 0.0, 0.0],
        "green": [0.0, 1.0, 0.0],
        "yellow": [1.0, 1.0, 0.0],
        "not red": [-1.0, 0.0, 0.0],
        "a red square": [1.0, 0.0, 0.0],
    }

    def __init__(self) -> None:
        self.images_encoded = 0
        self.texts_encoded = 0

    def identity(self) -> dict[str, Any]:
        return {"name": self.name}

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.images_encoded += len(images)
        return np.array([img.getpixel((0, 0)) for img in images], dtype=np.float32).reshape(-1, 3)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.texts_encoded += len(texts)
        return np.array([self.TEXTS[t] for t in texts], dtype=np.float32).reshape(-1, 3)


# --- pixel distances -------------------------------------------------------------------


def test_l1_l2_pure_functions_exact() -> None:
    a = np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8)
    b = np.array([[[255, 255, 255], [255, 255, 255]]], dtype=np.uint8)
    assert l1_distance(a, b) == pytest.approx(0.5)
    assert l2_distance(a, b) == pytest.approx(0.5)
    # float maths: 10 − 20 must not wrap around to 246
    c = np.full((2, 2, 3), 10, dtype=np.uint8)
    d = np.full((2, 2, 3), 20, dtype=np.uint8)
    assert l1_distance(c, d) == pytest.approx(10 / 255)
    assert l1_distance(d, c) == pytest.approx(10 / 255)
    assert l2_distance(c, d) == pytest.approx((10 / 255) ** 2)
    with pytest.raises(TypeError, match="uint8"):
        l1_distance(c.astype(np.float32), d)
    with pytest.raises(ValueError, match="same shape"):
        l2_distance(c, d[:1])


def test_l1_l2_on_images_use_the_500_frame() -> None:
    left_half = np.zeros((500, 500, 3), dtype=np.uint8)
    left_half[:, :250] = 200
    pairs_src = [solid((10, 10, 10)), solid((0, 0, 0)), solid((7, 7, 7), (120, 80))]
    pairs_edt = [solid((20, 20, 20)), Image.fromarray(left_half), solid((7, 7, 7), (64, 64))]
    l1 = L1().compute(pairs_src, pairs_edt)
    l2 = L2().compute(pairs_src, pairs_edt)
    assert l1 == pytest.approx([10 / 255, 100 / 255, 0.0])
    assert l2 == pytest.approx([(10 / 255) ** 2, 0.5 * (200 / 255) ** 2, 0.0])
    assert L1.higher_is_better is False and L2.higher_is_better is False
    with pytest.raises(ValueError, match="same length"):
        L1().compute(pairs_src, pairs_edt[:2])


def test_cosine_and_clip_score_convention() -> None:
    assert cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(2**-0.5)
    assert cosine(np.zeros(3), np.ones(3)) == 0.0
    assert clip_score_value(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(100 * 2**-0.5)
    assert clip_score_value(np.array([1.0, 0.0]), np.array([-1.0, 0.0])) == 0.0
    assert clip_score_value(np.array([1.0, 0.0]), np.array([-1.0, 0.0]), raw=True) == pytest.approx(-1.0)


# --- embedder baselines with hand-made embeddings --------------------------------------


def test_clip_score_clip_i_directional_hand_values() -> None:
    emb = ColourEmbedder()
    red, green, yellow = solid((255, 0, 0), (8, 8)), solid((0, 255, 0), (8, 8)), solid((255, 255, 0), (8, 8))
    score = ClipScore(emb)
    assert score.compute([red, red, red], [red, green, yellow], ["red", "red", "not red"]) == pytest.approx(
        [100.0, 0.0, 0.0]
    )
    assert ClipScore(emb, raw=True).compute([red], [yellow], ["not red"]) == pytest.approx([-(2**-0.5)])
    assert ClipI(emb).compute([red, red], [red, green]) == pytest.approx([1.0, 0.0])
    # ΔI = green − red ∝ (−1, 1, 0); ΔT = T(green) − T(red) = (−1, 1, 0) → 1; ΔT = 0 → 0
    direc = DirectionalClip(emb)
    values = direc.compute([red, red, red], [green, green, yellow], ["green", "red", "green"], source_texts=["red"] * 3)
    assert values == pytest.approx([1.0, 0.0, 2**-0.5])
    with pytest.raises(ValueError, match="source_texts"):
        direc.compute([red], [green], ["green"])
    with pytest.raises(ValueError, match="texts"):
        score.compute([red], [green], None)
    assert ClipScore.higher_is_better and ClipI.higher_is_better and DirectionalClip.higher_is_better


def test_compute_baselines_rows_texts_and_shared_image_features() -> None:
    emb = ColourEmbedder()
    red, green = solid((255, 0, 0), (500, 500)), solid((0, 255, 0), (500, 500))
    rows = compute_baselines(
        ["l1", "clip-score", "clip-i", "directional-clip"],
        [red, red],
        [green, red],
        instructions=["make it green", "keep it red"],
        targets=["green", "a red square"],
        embedder=emb,
        source_captions=["red", "red"],
    )
    assert [sorted(r) for r in rows] == [sorted(["l1", "clip-score", "clip-i", "directional-clip"])] * 2
    assert rows[0]["l1"] == pytest.approx(2 * 255 / 3 / 255)
    assert rows[0]["clip-score"] == pytest.approx(100.0) and rows[1]["clip-score"] == pytest.approx(100.0)
    assert rows[0]["clip-i"] == pytest.approx(0.0) and rows[1]["clip-i"] == pytest.approx(1.0)
    assert rows[0]["directional-clip"] == pytest.approx(1.0)
    assert rows[1]["directional-clip"] == pytest.approx(0.0)  # no image change: undefined direction → 0
    # every distinct image object is encoded once for all three embedder baselines
    # (``red`` is one object used three times, ``green`` another)
    assert emb.images_encoded == 2


def test_compute_baselines_falls_back_to_the_instruction_and_validates() -> None:
    emb = ColourEmbedder()
    red = solid((255, 0, 0), (8, 8))
    rows = compute_baselines(["clip-score"], [red], [red], ["red"], [None], embedder=emb)
    assert rows == [{"clip-score": pytest.approx(100.0)}]
    with pytest.raises(ValueError, match="embedder"):
        compute_baselines(["clip-i"], [red], [red], ["red"])
    with pytest.raises(ValueError, match="did you mean 'lpips'"):
        compute_baselines(["lpip"], [red], [red], ["red"])
    with pytest.raises(ValueError, match="target caption"):
        compute_baselines(["directional-clip"], [red], [red], ["red"], embedder=emb, source_captions=["red"])
    with pytest.raises(ValueError, match="source_captions"):
        compute_baselines(["directional-clip"], [red], [red], ["red"], ["red"], embedder=emb)
    with pytest.raises(ValueError, match="not computed"):
        compute_baselines(["l1"], [red], [red], ["red"], options={"lpips": {}})
    with pytest.raises(ValueError, match="more than once"):
        compute_baselines(["l1", L1()], [red], [red], ["red"])
    with pytest.raises(ValueError, match="instructions"):
        compute_baselines(["l1"], [red, red], [red, red], ["red"])


def test_registry_reads_like_a_dict() -> None:
    assert BASELINES["l1"] is L1 and BASELINES["lpips"] is Lpips and BASELINES["dino"] is DinoSimilarity
    assert set(BASELINES) == {"l1", "l2", "lpips", "clip-score", "clip-i", "dino", "directional-clip"}
    assert isinstance(L2(), Baseline)
    with pytest.raises(ValueError, match="did you mean 'clip-i'"):
        BASELINES["clip-j"]


# --- learned baselines with random / tiny weights --------------------------------------


def test_lpips_random_trunk_is_labelled_and_behaves() -> None:
    import torch

    state = torch.random.get_rng_state()
    metric = Lpips("squeeze", pretrained_backbone=False, frame=64, device="cpu", batch_size=2)
    ident = metric.identity()
    assert ident["meaningless"] is True and "meaningless" in ident["note"]
    a, b, c = random_images(3, seed=5, size=(80, 60))
    values = metric.compute([a, a, b], [a, b, c])
    assert torch.equal(state, torch.random.get_rng_state())
    assert values[0] == pytest.approx(0.0, abs=1e-6)
    assert values[1] > 1e-4 and values[2] > 1e-4
    again = Lpips("squeeze", pretrained_backbone=False, frame=64, device="cpu").compute([a, b], [b, c])
    assert again == pytest.approx(values[1:], rel=1e-5)
    assert Lpips.higher_is_better is False
    with pytest.raises(ValueError, match="net"):
        Lpips(net="resnet")


def test_dino_similarity_with_a_tiny_vit(tmp_path: Path) -> None:
    folder = save_tiny_dino(tmp_path / "dino")
    metric = DinoSimilarity(model=str(folder), device="cpu", batch_size=2)
    a, b, c = random_images(3, seed=9)
    values = metric.compute([a, a, b], [a, b, c])
    assert values[0] == pytest.approx(1.0, abs=1e-6)
    assert all(-1.0 <= v < 1.0 - 1e-6 for v in values[1:])
    assert metric.features([a, b, c]).shape == (3, 32)
    assert metric.identity() == {"name": "dino", "model": str(folder), "revision": "main"}


def test_compute_baselines_with_tiny_models(tmp_path: Path) -> None:
    from bpm_lib.backends.clip import TinyRandomEmbedder

    src = random_images(3, seed=11, size=(64, 64))
    edt = random_images(3, seed=12, size=(64, 64))
    rows = compute_baselines(
        list(BASELINES),
        src,
        edt,
        instructions=["make it red", "add a hat", "remove the cat"],
        targets=["a red photo", "a dog with a hat", "an empty sofa"],
        embedder=TinyRandomEmbedder(seed=0, device="cpu"),
        source_captions=["a photo", "a dog", "a cat on a sofa"],
        options={
            "lpips": {"net": "squeeze", "pretrained_backbone": False, "frame": 64, "device": "cpu"},
            "dino": {"model": str(save_tiny_dino(tmp_path / "dino")), "device": "cpu"},
        },
    )
    assert len(rows) == 3
    for row in rows:
        assert set(row) == set(BASELINES)
        assert all(np.isfinite(v) for v in row.values())
        assert 0.0 <= row["clip-score"] <= 100.0
        assert -1.0 <= row["clip-i"] <= 1.0 and -1.0 <= row["directional-clip"] <= 1.0
