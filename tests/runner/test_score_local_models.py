"""`bpm score --preset FILE.json` with the real loaders: GroundingDINO, SAM and HF CLIP
saved as tiny random models to folders and loaded back through ``from_pretrained`` —
the code path users run with the paper's models, minus the download."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bpm_lib.cli import main
from bpm_lib.io.datasets.demo import write_demo
from tests.fixtures.tiny_clip import save_tiny_hf_clip
from tests.fixtures.tiny_models import save_tiny_grounding_dino, save_tiny_sam


@pytest.fixture(scope="module")
def local_preset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    dino = save_tiny_grounding_dino(root / "grounding-dino", seed=0)
    sam = save_tiny_sam(root / "sam", seed=0)
    clip = save_tiny_hf_clip(root / "clip", seed=0)
    preset = {
        "name": "local-tiny",
        "description": "paper-shaped preset whose models are tiny random folders",
        "parser": {"name": "rules", "kwargs": {}},
        "localizer": {"name": "detect-segment", "kwargs": {
            "detector": {"name": "grounding-dino", "kwargs": {
                "model": str(dino), "box_threshold": 0.8, "text_threshold": 0.0, "device": "cpu",
                "meaningless": True}},
            "segmenter": {"name": "sam", "kwargs": {"model": str(sam), "device": "cpu", "meaningless": True}},
        }},
        "embedder": {"name": "hf-clip", "kwargs": {"model": str(clip), "device": "cpu"}},
        "alpha": 0.7,
        "meaningless": True,
    }
    path = root / "preset.json"
    path.write_text(json.dumps(preset))
    return path


def test_score_with_models_loaded_from_folders(local_preset: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    demo = write_demo(tmp_path / "demo")
    manifest = tmp_path / "manifest.jsonl"
    lines = []
    for line in (demo.root / "manifest.jsonl").read_text().splitlines()[:6]:
        rec = json.loads(line)
        rec.pop("reference_mask", None)  # force the detector + segmenter path
        for key in ("source_image", "reference_edit"):
            if rec.get(key):
                rec[key] = str((demo.root / rec[key]).resolve())
        rec["edited_image"] = str((demo.root / "candidates" / "well_edited" / f"{rec['sample_id']}.png").resolve())
        lines.append(json.dumps(rec))
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"

    code = main(["score", "--manifest", str(manifest), "--out", str(out), "--preset", str(local_preset),
                 "--no-progress", "--allow-errors"])

    assert code == 0
    scores = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 6
    assert all(s["status"] == "ok" for s in scores), [s["error"] for s in scores if s["status"] != "ok"]
    assert {s["case"] for s in scores} <= {"standard", "global", "source_not_found", "target_not_found"}
    summary = json.loads((out / "summary.json").read_text())
    backends = summary["candidates"]["edits"]["backends"]
    text = json.dumps(backends)
    # The identities name the folders the models came from: provenance of every number.
    assert str(local_preset.parent / "grounding-dino") in text
    assert str(local_preset.parent / "clip") in text
    assert summary["candidates"]["edits"]["samples_scored"] == 6
    assert "edits" in capsys.readouterr().out
