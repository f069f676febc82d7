"""Embedders: tiny random open_clip, open_clip checkpoint loading, transformers CLIP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bpm_lib.backends.base import EMBEDDERS, Embedder
from bpm_lib.backends.clip import (
    TINY_CLIP_CONFIG,
    HfClipEmbedder,
    OpenClipEmbedder,
    TinyRandomEmbedder,
    load_state_dict_safely,
)
from bpm_lib.errors import ModelLoadError
from tests.fixtures.tiny_clip import (
    random_images,
    save_malicious_checkpoint,
    save_tiny_hf_clip,
    save_tiny_open_clip_checkpoint,
    save_tiny_open_clip_dir,
)

TEXTS = ["a cat", "a red bicycle", "replace the bike with a bear", "the sky", "", "a cat on a mat"]


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return random_images(8, seed=1)


@pytest.fixture(scope="module")
def tiny() -> TinyRandomEmbedder:
    return TinyRandomEmbedder(seed=0, device="cpu")


@pytest.fixture(scope="module")
def tiny_arch_name() -> str:
    """Registers the tiny architecture with open_clip so that it can be named like a built-in."""
    import open_clip

    open_clip.add_model_config(TINY_CLIP_CONFIG)
    return TINY_CLIP_CONFIG.stem


# --- tiny-random -----------------------------------------------------------------------


def test_tiny_random_features_shape_dtype_and_raw(tiny: TinyRandomEmbedder, images: list[Image.Image]) -> None:
    img = tiny.encode_images(images)
    txt = tiny.encode_texts(TEXTS)
    assert img.shape == (8, 32) and img.dtype == np.float32
    assert txt.shape == (len(TEXTS), 32) and txt.dtype == np.float32
    assert np.all(np.isfinite(img)) and np.all(np.isfinite(txt))
    # raw features: not unit-normalised
    assert not np.allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-3)
    # distinct inputs give distinct features
    assert np.abs(img[0] - img[1]).max() > 1e-3
    assert np.abs(txt[0] - txt[1]).max() > 1e-3
    assert isinstance(tiny, Embedder)


def test_tiny_random_is_deterministic_and_leaves_global_rng_alone(images: list[Image.Image]) -> None:
    import torch

    state = torch.random.get_rng_state()
    a = TinyRandomEmbedder(seed=3, device="cpu").encode_images(images[:2])
    b = TinyRandomEmbedder(seed=3, device="cpu").encode_images(images[:2])
    c = TinyRandomEmbedder(seed=4, device="cpu").encode_images(images[:2])
    assert torch.equal(state, torch.random.get_rng_state())
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-2


def test_batch_size_does_not_change_features(tiny: TinyRandomEmbedder, images: list[Image.Image]) -> None:
    one = TinyRandomEmbedder(seed=0, device="cpu", batch_size=1)
    three = TinyRandomEmbedder(seed=0, device="cpu", batch_size=3)
    full = tiny.encode_images(images)
    np.testing.assert_allclose(one.encode_images(images), full, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(three.encode_images(images), full, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(one.encode_texts(TEXTS), tiny.encode_texts(TEXTS), rtol=1e-4, atol=1e-5)


def test_text_cache_counts_hits_and_evicts_least_recent() -> None:
    emb = TinyRandomEmbedder(seed=0, device="cpu", text_cache_size=2)
    first = emb.encode_texts(["a", "b", "a"])
    info = emb.cache_info()
    assert (info.hits, info.misses, info.size, info.maxsize) == (1, 2, 2, 2)
    again = emb.encode_texts(["b", "a"])
    assert emb.cache_info().hits == 3 and emb.cache_info().misses == 2
    np.testing.assert_array_equal(again, first[[1, 0]])
    emb.encode_texts(["c"])  # evicts "b" (least recently used), keeps "a"
    emb.encode_texts(["a"])
    assert emb.cache_info().hits == 4
    emb.encode_texts(["b"])
    assert emb.cache_info().misses == 4
    # returned arrays are copies: changing them must not change later answers
    out = emb.encode_texts(["a"])
    out[:] = 0
    np.testing.assert_array_equal(emb.encode_texts(["a"]), first[:1])


def test_model_loads_once(tiny: TinyRandomEmbedder, images: list[Image.Image]) -> None:
    tiny.encode_images(images[:1])
    model = tiny._model
    tiny.encode_texts(["something new"])
    tiny.encode_images(images[1:2])
    assert tiny._model is model


def test_empty_inputs_and_bad_inputs(tiny: TinyRandomEmbedder) -> None:
    assert tiny.encode_images([]).shape == (0, 32)
    assert tiny.encode_texts([]).shape == (0, 32)
    with pytest.raises(TypeError, match="images"):
        tiny.encode_images(["not an image"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="mode 'L'"):
        tiny.encode_images([Image.new("L", (8, 8))])
    with pytest.raises(TypeError, match="texts"):
        tiny.encode_texts("a cat")
    with pytest.raises(ValueError, match="batch_size"):
        TinyRandomEmbedder(batch_size=0)
    with pytest.raises(ValueError, match="seed"):
        TinyRandomEmbedder(seed=-1)
    with pytest.raises(ValueError, match="preprocess_workers"):
        TinyRandomEmbedder(preprocess_workers=0)


def test_tiny_random_identity_and_registry() -> None:
    ident = EMBEDDERS.create("tiny-random", seed=2, device="cpu").identity()
    assert ident["meaningless"] is True
    assert ident["note"] == "random weights: scores are meaningless for real evaluation"
    assert ident["seed"] == 2 and ident["dtype"] == "float32"
    assert {"open-clip", "hf-clip", "tiny-random"} <= set(EMBEDDERS.names())
    with pytest.raises(ValueError, match="did you mean 'tiny-random'"):
        EMBEDDERS.get("tiny-randm")


# --- open-clip -------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_open_clip_loads_checkpoint_file(
    tmp_path: Path, suffix: str, tiny_arch_name: str, tiny: TinyRandomEmbedder, images: list[Image.Image]
) -> None:
    path = save_tiny_open_clip_checkpoint(tmp_path / f"weights{suffix}", seed=0)
    emb = OpenClipEmbedder(tiny_arch_name, pretrained=str(path), device="cpu")
    assert emb.identity()["meaningless"] is False
    np.testing.assert_allclose(emb.encode_images(images[:3]), tiny.encode_images(images[:3]), atol=1e-6)
    np.testing.assert_allclose(emb.encode_texts(TEXTS[:2]), tiny.encode_texts(TEXTS[:2]), atol=1e-6)


def test_open_clip_local_dir(tmp_path: Path, tiny: TinyRandomEmbedder, images: list[Image.Image]) -> None:
    folder = save_tiny_open_clip_dir(tmp_path / "clip", seed=0)
    emb = OpenClipEmbedder(f"local-dir:{folder}", pretrained=None, device="cpu")
    np.testing.assert_allclose(emb.encode_images(images[:2]), tiny.encode_images(images[:2]), atol=1e-6)
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights file"):
        OpenClipEmbedder(f"local-dir:{folder}", pretrained=None, device="cpu").load()


def test_open_clip_random_weights_are_flagged(tiny_arch_name: str) -> None:
    emb = OpenClipEmbedder(tiny_arch_name, pretrained=None, device="cpu")
    assert emb.identity()["meaningless"] is True
    assert emb.encode_texts(["x"]).shape == (1, 32)


def test_pickled_code_in_checkpoint_never_runs(tmp_path: Path, tiny_arch_name: str) -> None:
    marker = tmp_path / "code-ran"
    bad = save_malicious_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(ModelLoadError, match="weights-only"):
        load_state_dict_safely(bad)
    with pytest.raises(ModelLoadError, match="never pickled code"):
        OpenClipEmbedder(tiny_arch_name, pretrained=str(bad), device="cpu").load()
    assert not marker.exists()


def test_open_clip_unknown_pretrained_and_offline_tag(tmp_path: Path, tiny_arch_name: str) -> None:
    with pytest.raises(ModelLoadError, match="not-a-tag"):
        OpenClipEmbedder(tiny_arch_name, pretrained="not-a-tag", device="cpu").load()
    # a real tag, with an empty cache and HF_HUB_OFFLINE=1 (conftest): a clear load error
    with pytest.raises(ModelLoadError, match="ViT-B-32"):
        OpenClipEmbedder("ViT-B-32", pretrained="openai", device="cpu", cache_dir=str(tmp_path)).load()
    with pytest.raises(ModelLoadError, match="org/repo"):
        OpenClipEmbedder(tiny_arch_name, pretrained="hf-hub:org/repo", device="cpu", cache_dir=str(tmp_path)).load()
    with pytest.raises(ModelLoadError, match="'org/repo\\[/file\\]'"):
        OpenClipEmbedder(tiny_arch_name, pretrained="hf-hub:justone", device="cpu").load()
    with pytest.raises(ValueError, match="pretrained"):
        OpenClipEmbedder("ViT-B-32", pretrained="")


# --- hf-clip ---------------------------------------------------------------------------


def test_hf_clip_save_load_round_trip(tmp_path: Path, images: list[Image.Image]) -> None:
    import torch
    from transformers import CLIPModel, CLIPProcessor

    folder = save_tiny_hf_clip(tmp_path / "hf-clip", seed=0)
    emb = HfClipEmbedder(model=str(folder), device="cpu", batch_size=3)
    img = emb.encode_images(images)
    txt = emb.encode_texts(TEXTS)
    assert img.shape == (8, 16) and img.dtype == np.float32
    assert txt.shape == (len(TEXTS), 16) and txt.dtype == np.float32
    assert emb.identity() == {"name": "hf-clip", "model": str(folder), "revision": "main", "dtype": "float32"}

    # the same numbers as the saved model used directly, one item at a time
    model = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPProcessor.from_pretrained(folder)
    with torch.inference_mode():
        out = model.get_image_features(**processor.image_processor(images=images[:1], return_tensors="pt"))
        ref_img = getattr(out, "pooler_output", out)
        tok = processor.tokenizer([TEXTS[2]], return_tensors="pt")
        out = model.get_text_features(**tok)
        ref_txt = getattr(out, "pooler_output", out)
    np.testing.assert_allclose(img[:1], ref_img.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(txt[2:3], ref_txt.numpy(), rtol=1e-4, atol=1e-5)
    # padding in a batch does not change a text's features
    np.testing.assert_allclose(
        HfClipEmbedder(model=str(folder), device="cpu", batch_size=1).encode_texts(TEXTS), txt, rtol=1e-4, atol=1e-5
    )


def test_hf_clip_missing_model_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="hf-clip"):
        HfClipEmbedder(model=str(tmp_path / "nothing-here"), device="cpu").load()
    with pytest.raises(ModelLoadError, match="hf-clip"):
        HfClipEmbedder(model="openai/clip-vit-base-patch32", device="cpu").load()
