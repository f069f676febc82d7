"""Presets (data files, validation, overrides) and the `bpm backends` verb."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bpm_lib.errors import ConfigError
from bpm_lib.presets import ComponentSpec, Preset, list_presets, load_preset, override


def _walk_components(spec: dict[str, Any]) -> list[dict[str, Any]]:
    out = [spec]
    for value in spec.get("kwargs", {}).values():
        if isinstance(value, dict) and "name" in value:
            out += _walk_components(value)
    return out


def test_builtin_presets_load_and_name_registered_backends() -> None:
    assert list_presets() == ["fast", "paper", "tiny-random"]
    for name in list_presets():
        preset = load_preset(name)
        assert preset.name == name and preset.description
        preset.check_registered()


def test_paper_preset_is_the_paper_setup() -> None:
    p = load_preset("paper")
    assert p.alpha == 0.7 and p.meaningless is False
    assert p.component("detector") == (
        "grounding-dino",
        {"model": "IDEA-Research/grounding-dino-tiny", "revision": "main", "box_threshold": 0.3, "text_threshold": 0.25},
    )
    assert p.component("segmenter") == ("sam", {"model": "facebook/sam-vit-huge", "revision": "main"})
    assert p.component("embedder") == ("open-clip", {"model_name": "ViT-L-14", "pretrained": "openai", "revision": "main"})
    assert p.component("parser")[0] == "openai"
    assert p.component("parser", fallback=True) == ("rules", {})
    # every model component pins an explicit revision
    for role in ("localizer", "embedder"):
        for spec in _walk_components(p.spec(role).to_dict()):
            if "model" in spec["kwargs"] or "model_name" in spec["kwargs"]:
                assert spec["kwargs"]["revision"] == "main", spec


def test_fast_and_tiny_random_presets() -> None:
    fast = load_preset("fast")
    assert fast.component("segmenter")[1]["model"] == "facebook/sam-vit-base"
    assert fast.component("embedder")[1]["model_name"] == "ViT-B-32"
    tiny = load_preset("tiny-random")
    assert tiny.meaningless is True
    assert tiny.component("parser") == ("rules", {})
    assert tiny.component("detector")[0] == "tiny-random"
    assert tiny.component("segmenter")[0] == "tiny-random"
    assert tiny.component("embedder")[0] == "tiny-random"
    with pytest.raises(ValueError, match="no fallback"):
        tiny.component("parser", fallback=True)


def test_component_flattens_nested_components_and_returns_copies() -> None:
    p = load_preset("paper")
    name, kwargs = p.component("localizer")
    assert name == "detect-segment"
    assert kwargs["detector"] == "grounding-dino" and kwargs["segmenter"] == "sam"
    assert kwargs["detector_kwargs"]["box_threshold"] == 0.3
    assert kwargs["segmenter_kwargs"]["model"] == "facebook/sam-vit-huge"
    assert kwargs["edited_mask_boxes"] == "source"
    kwargs["detector_kwargs"]["box_threshold"] = 0.9
    assert p.component("detector")[1]["box_threshold"] == 0.3
    with pytest.raises(ValueError, match="did you mean 'detector'"):
        p.component("detecter")


def test_preset_kwargs_fit_the_registered_constructors() -> None:
    import inspect

    import bpm_lib.backends  # noqa: F401 - registers the built-in backends
    from bpm_lib.backends.base import ROLES

    for preset_name in list_presets():
        preset = load_preset(preset_name)
        for role in ("parser", "localizer", "embedder", "detector", "segmenter"):
            name, kwargs = preset.component(role)
            inspect.signature(ROLES[role].get(name).factory).bind(**kwargs)


def test_tiny_random_preset_builds_its_embedder() -> None:
    emb = load_preset("tiny-random").build_embedder(device="cpu", batch_size=4)
    assert emb.identity()["meaningless"] is True and emb.batch_size == 4
    assert emb.encode_texts(["a cat"]).shape == (1, 32)


def test_tiny_random_preset_builds_its_localizer() -> None:
    localizer = load_preset("tiny-random").build("localizer")
    assert localizer.identity()["name"] == "detect-segment"


def test_unknown_name_and_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="did you mean 'paper'"):
        load_preset("papr")
    data = load_preset("paper").to_dict()

    def write(d: dict[str, Any]) -> Path:
        path = tmp_path / "p.json"
        path.write_text(json.dumps(d), encoding="utf-8")
        return path

    with pytest.raises(ConfigError, match="unknown key 'alpah'; did you mean 'alpha'"):
        load_preset(write({**data, "alpah": 0.5}))
    with pytest.raises(ConfigError, match="embedder: unknown key 'kwarg'"):
        load_preset(write({**data, "embedder": {"name": "open-clip", "kwarg": {}}}))
    bad_nested = json.loads(json.dumps(data))
    bad_nested["localizer"]["kwargs"]["detector"]["revison"] = "x"
    with pytest.raises(ConfigError, match="detector: unknown key 'revison'"):
        load_preset(write(bad_nested))
    with pytest.raises(ConfigError, match="missing key 'embedder'"):
        load_preset(write({k: v for k, v in data.items() if k != "embedder"}))
    with pytest.raises(ConfigError, match="alpha"):
        load_preset(write({**data, "alpha": 1.5}))
    with pytest.raises(ConfigError, match="meaningless"):
        load_preset(write({**data, "meaningless": "no"}))
    (tmp_path / "broken.json").write_text('{"name": ', encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid JSON at line 1"):
        load_preset(str(tmp_path / "broken.json"))
    with pytest.raises(ConfigError, match="not found"):
        load_preset(str(tmp_path / "missing.json"))


def test_file_round_trip_and_digest(tmp_path: Path) -> None:
    paper = load_preset("paper")
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(paper.to_dict()), encoding="utf-8")
    again = load_preset(path)
    assert again == paper and again.digest() == paper.digest()
    assert load_preset(str(path)) == paper
    assert load_preset("tiny-random").digest() != paper.digest()


def test_override() -> None:
    paper = load_preset("paper")
    changed = override(
        paper,
        alpha=1.0,
        **{
            "localizer.kwargs.detector.kwargs.revision": "0123abcd",
            "embedder.kwargs.batch_size": 8,
        },
    )
    assert changed.alpha == 1.0
    assert changed.component("detector")[1]["revision"] == "0123abcd"
    assert changed.component("embedder")[1]["batch_size"] == 8
    assert paper.component("detector")[1]["revision"] == "main"  # the original is untouched
    assert changed.digest() != paper.digest()

    swapped = override(paper, embedder=ComponentSpec.create("tiny-random", {"seed": 1}))
    assert swapped.component("embedder") == ("tiny-random", {"seed": 1})
    assert override(paper, embedder={"name": "hf-clip", "kwargs": {}}).component("embedder") == ("hf-clip", {})

    with pytest.raises(ValueError, match="did you mean 'alpha'"):
        override(paper, alpa=0.5)
    with pytest.raises(ValueError, match=r"'localizer\.kwargs\.detectr' does not exist"):
        override(paper, **{"localizer.kwargs.detectr.kwargs.revision": "x"})
    with pytest.raises(ValueError, match="'color' does not exist"):
        override(paper, **{"localizer.color": "x"})
    with pytest.raises(ConfigError, match="alpha"):
        override(paper, alpha=-0.1)


def test_preset_is_immutable() -> None:
    p = load_preset("paper")
    with pytest.raises(AttributeError):
        p.alpha = 0.5  # type: ignore[misc]
    p.embedder.kwargs["pretrained"] = "tampered"
    assert p.component("embedder")[1]["pretrained"] == "openai"
    assert isinstance(Preset.from_dict(p.to_dict()), Preset)


# --- bpm backends ------------------------------------------------------------------------


def test_bpm_backends_text(capsys: pytest.CaptureFixture[str]) -> None:
    from bpm_lib.backends.base import ROLES
    from bpm_lib.cli import main

    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    for role, registry in ROLES.items():
        assert f"{role}:" in out
        for name in registry.names():
            assert name in out
    for name in ("open-clip", "hf-clip", "tiny-random", "paper", "fast", "lpips", "clip-score"):
        assert name in out
    assert "[meaningless]" in out.split("presets:")[1].split("baselines:")[0]


def test_bpm_backends_json(capsys: pytest.CaptureFixture[str]) -> None:
    from bpm_lib.backends.base import ROLES
    from bpm_lib.cli import main

    assert main(["backends", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["roles"]) == set(ROLES)
    embedders = {e["name"]: e["description"] for e in data["roles"]["embedder"]}
    assert {"open-clip", "hf-clip", "tiny-random"} <= set(embedders)
    assert all(embedders.values())
    presets = {p["name"]: p for p in data["presets"]}
    assert set(presets) == {"paper", "fast", "tiny-random"}
    assert presets["tiny-random"]["meaningless"] is True and presets["paper"]["meaningless"] is False
    baselines = {b["name"]: b["higher_is_better"] for b in data["baselines"]}
    assert baselines["l1"] is False and baselines["clip-score"] is True
