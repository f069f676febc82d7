"""The bundled demo set: coverage, masks, candidate semantics, determinism, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bpm_lib.cli import main
from bpm_lib.io.datasets.demo import DEMO_CANDIDATES, SCENES, DemoSet, build_scene, write_demo
from bpm_lib.io.manifest import manifest_digest, read_evalset_info, read_manifest
from bpm_lib.types import ParsedInstruction


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoSet:
    return write_demo(tmp_path_factory.mktemp("demo") / "set")


def _rgb(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def test_demo_covers_the_edit_types(demo: DemoSet) -> None:
    samples = list(read_manifest(demo.manifest))
    assert len(samples) == 12 and demo.info.count == 12
    assert demo.info.edit_kinds == {"global": 2, "local": 10}
    types = [s.origin["edit_type"] for s in samples if s.origin]
    assert {"replace", "add", "remove", "change color", "change texture", "change size", "global"} == set(types)
    instructions = [s.instruction for s in samples]
    assert "Put a ball on top of the box." in instructions and "Make the ball blue." in instructions
    assert "Make the sun bigger." in instructions and "Make it a night scene." in instructions
    assert "Turn the image into a sketch." in instructions
    for s in samples:
        assert s.origin is not None
        parsed = ParsedInstruction.from_dict(s.origin["expected_parse"])  # a valid structured reading
        assert parsed.is_global == (s.edit_kind == "global")
        assert parsed.edit_type == s.origin["edit_type"]
    assert demo.info.digest == manifest_digest(demo.manifest) == read_evalset_info(demo.root).digest


def test_candidates_mean_what_they_say(demo: DemoSet) -> None:
    for s in read_manifest(demo.manifest):
        assert s.reference_mask is not None and s.origin is not None
        mask = np.asarray(Image.open(s.reference_mask)) == 255
        src = _rgb(s.source_image)
        assert src.shape == (256, 256, 3)
        cands = {name: _rgb(s.origin["candidates"][name]["image"]) for name in DEMO_CANDIDATES}
        assert Path(s.origin["candidates"]["well_edited"]["image"]) == demo.candidates["well_edited"] / f"{s.sample_id}.png"
        well, kept, over = cands["well_edited"], cands["over_preserved"], cands["over_modified"]
        assert np.array_equal(kept, src)
        if s.edit_kind == "global":
            assert mask.all()
        else:
            assert 0.005 < mask.mean() < 0.3, (s.sample_id, mask.mean())
            assert np.array_equal(well[~mask], src[~mask])  # nothing changes outside the region
            outside = np.abs(over[~mask] - src[~mask]).mean()
            assert outside > 20, (s.sample_id, outside)  # over_modified alters everything
        # The instructed change happened inside the region.
        changed = np.abs(well - src).sum(axis=2) > 0
        assert changed[mask].mean() > 0.3, (s.sample_id, changed[mask].mean())
        assert not changed[~mask].any()
        assert np.array_equal(_rgb(s.reference_edit or ""), well)
    for name in DEMO_CANDIDATES:
        editset = json.loads((demo.candidates[name] / "editset.json").read_text())
        assert editset["candidate"] == name and editset["editor"] == "precomputed" and editset["description"]
        assert len(list(demo.candidates[name].glob("*.png"))) == 12


def test_demo_is_byte_identical_across_runs(demo: DemoSet, tmp_path: Path) -> None:
    again = write_demo(tmp_path / "again")
    first = {p.relative_to(demo.root): p.read_bytes() for p in demo.root.rglob("*") if p.is_file()}
    second = {p.relative_to(again.root): p.read_bytes() for p in again.root.rglob("*") if p.is_file()}
    assert first.keys() == second.keys()
    assert [str(k) for k in first if first[k] != second[k]] == []  # evalset.json stores relative paths
    assert len([k for k in first if k.suffix == ".png"]) == 12 * 6  # source, mask, reference edit, 3 candidates
    # And the renderer itself is a pure function of the scene.
    a, b = build_scene(3, SCENES[3]), build_scene(3, SCENES[3])
    assert all(np.array_equal(a.candidates[n], b.candidates[n]) for n in DEMO_CANDIDATES)


def test_cli_demo_and_fetch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "demo", "--out", str(tmp_path / "d")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["count"] == 12 and set(printed["candidates"]) == set(DEMO_CANDIDATES)

    rc = main(["data", "fetch", "demo", "--out", str(tmp_path / "f"), "--limit", "7", "--seed", "5",
               "--stratify", "edit-type", "--no-progress"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 7 and info["params"] == {"dataset": "demo", "limit": 7, "seed": 5,
                                                      "stratify": "edit-type"}
    assert sorted(info["edit_types"].values()) == [1] * 7  # 7 distinct edit types, one each
    assert main(["data", "fetch", "nope:x", "--out", str(tmp_path / "g")]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    assert main(["data", "fetch", "demo", "--out", str(tmp_path / "h"), "--limit", "0"]) == 2
    assert main(["data"]) == 2
