"""The run configuration: what is accepted, and that anything else is rejected (with the
offending key named) before any work starts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from bpm_lib.cli import main
from bpm_lib.config import CandidateConfig, RunConfig, demo_config, load_config, parse_config
from bpm_lib.errors import ConfigError


def _cfg(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "campaign-1", "candidates": [{"name": "a", "checkpoint": "/ckpt/a"}]}
    base.update(over)
    return base


def test_minimal_config_gets_the_documented_defaults() -> None:
    cfg = parse_config(_cfg())
    assert cfg.name == "campaign-1"
    assert cfg.candidates == (CandidateConfig(name="a", checkpoint="/ckpt/a"),)
    assert cfg.candidates[0].editor == "precomputed" and cfg.candidates[0].settings == {}
    assert (cfg.preset, cfg.alpha, cfg.batch_size, cfg.pipeline) == ("tiny-random", 0.7, 16, "compare_checkpoints")
    assert cfg.dataset.source == "demo" and cfg.dataset.limit is None
    assert cfg.tracking.uri is None and cfg.tracking.experiment == "bpm-eval"


def test_full_config_round_trips_through_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: nightly\n"
        "preset: fast\n"
        "alpha: 1\n"  # an integer where a float is expected is fine
        "calibration: /cal/frozen.json\n"
        "dataset: {source: 'magicbrush:/data/mb', limit: 50, seed: 3, stratify: edit-type}\n"
        "tracking: {uri: 'http://mlflow:5000', experiment: exp}\n"
        "candidates:\n"
        "  - {name: ip2p-a, editor: instruct-pix2pix, checkpoint: 'models:/ip2p@champion',\n"
        "     settings: {num_inference_steps: 20, guidance_scale: 7.5}, seed: 4, mask_guidance: true}\n"
        "  - {name: ip2p-b, checkpoint: 's3://b/ckpt'}\n"
    )
    cfg = load_config(path)
    assert cfg.alpha == 1.0 and isinstance(cfg.alpha, float)
    assert cfg.dataset.limit == 50 and cfg.dataset.stratify == "edit-type"
    assert cfg.tracking.uri == "http://mlflow:5000"
    a, b = cfg.candidates
    assert a.settings == {"num_inference_steps": 20, "guidance_scale": 7.5} and a.mask_guidance and a.seed == 4
    assert b.editor == "precomputed"
    assert parse_config(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_cfg(presett="fast"), "unknown key presett (did you mean 'preset'?)"),
        (_cfg(dataset={"source": "demo", "limt": 3}), "unknown key dataset.limt (did you mean 'limit'?)"),
        (_cfg(candidates=[{"name": "a", "edtor": "x"}]), "unknown key candidates[0].edtor (did you mean 'editor'?)"),
        (_cfg(tracking={"url": "http://x"}), "unknown key tracking.url (did you mean 'uri'?)"),
        (_cfg(zzz=1), "unknown key zzz"),
    ],
)
def test_unknown_keys_are_named(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_cfg(alpha="high"), "alpha: expected a number, got 'high'"),
        (_cfg(alpha=True), "alpha: expected a number, got True"),
        (_cfg(batch_size=2.5), "batch_size: expected an integer, got 2.5"),
        (_cfg(batch_size=True), "batch_size: expected an integer, got True"),
        (_cfg(candidates=[{"name": "a"}, {"name": "b", "editor": 3}]), "candidates[1].editor: expected a string, got 3"),
        (_cfg(candidates=[{"name": "a", "settings": [1]}]), "candidates[0].settings: expected a mapping, got list"),
        (_cfg(candidates=[{"name": "a", "mask_guidance": "yes"}]), "candidates[0].mask_guidance: expected true/false"),
        (_cfg(candidates={"name": "a"}), "candidates: expected a list, got dict"),
        (_cfg(dataset="demo"), "dataset: expected a mapping, got str"),
        (_cfg(dataset={"limit": "10"}), "dataset.limit: expected an integer, got '10'"),
        (_cfg(tracking={"uri": 5000}), "tracking.uri: expected a string, got 5000"),
        (_cfg(candidates=["a"]), "candidates[0]: expected a mapping, got str"),
    ],
)
def test_wrong_types_are_named(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"candidates": [{"name": "a"}]}, "missing required key name"),
        (_cfg(candidates=[{"editor": "x"}]), "missing required key candidates[0].name"),
        (_cfg(candidates=[]), "at least one candidate is required"),
        (_cfg(candidates=[{"name": "a"}, {"name": "a"}]), "duplicate names ['a']"),
        (_cfg(name="bad name!"), "name must match"),
        (_cfg(candidates=[{"name": "../x"}]), "candidates[0].name must match"),
        (_cfg(alpha=1.5), "alpha must be in [0, 1], got 1.5"),
        (_cfg(batch_size=0), "batch_size must be >= 1, got 0"),
        (_cfg(pipeline="everything"), "pipeline must be 'compare_checkpoints' or 'checkpoint_eval'"),
        (_cfg(pipeline="checkpoint_eval", candidates=[{"name": "a"}, {"name": "b"}]), "exactly one candidate"),
        ([1, 2], "top level: expected a mapping, got list"),
        (None, "top level: expected a mapping, got NoneType"),
    ],
)
def test_invalid_values_are_rejected(data: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert message in str(err.value)


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("name: !!python/object/apply:os.system ['true']\ncandidates: [{name: a}]\n")
    with pytest.raises(ConfigError, match="not valid YAML"):  # safe_load refuses python tags
        load_config(unsafe)


def test_digest_is_stable_and_sensitive() -> None:
    a, b = parse_config(_cfg()), parse_config(_cfg())
    assert a.digest() == b.digest() and len(a.digest()) == 16
    assert parse_config(_cfg(alpha=0.5)).digest() != a.digest()
    assert parse_config(_cfg(candidates=[{"name": "a", "checkpoint": "/ckpt/b"}])).digest() != a.digest()


def test_demo_config_points_at_the_demo_candidates() -> None:
    cfg = demo_config()
    assert isinstance(cfg, RunConfig) and cfg.dataset.source == "demo" and cfg.preset == "tiny-random"
    assert [c.name for c in cfg.candidates] == ["well_edited", "over_preserved", "over_modified"]
    assert all(c.checkpoint == f"evalset:candidates/{c.name}" for c in cfg.candidates)
    assert parse_config(cfg.to_dict()) == cfg


def test_bpm_run_rejects_a_bad_config_before_doing_anything(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ncandidates: [{name: a, edtor: precomputed}]\n")
    root = tmp_path / "root"
    t0 = time.perf_counter()
    rc = main(["run", str(path), "--root", str(root)])
    assert rc == 1
    assert "unknown key candidates[0].edtor (did you mean 'editor'?)" in capsys.readouterr().err
    assert time.perf_counter() - t0 < 10
    assert not root.exists()  # no server started, no cache, no folders

    path.write_text("name: x\nalpha: lots\ncandidates: [{name: a}]\n")
    assert main(["submit", str(path), "--compile-only", str(tmp_path / "p.yaml")]) == 1
    assert "alpha: expected a number, got 'lots'" in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()
