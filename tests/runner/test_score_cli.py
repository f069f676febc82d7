"""``bpm score`` end to end on a small generated set, bad inputs included, and ``bpm parse``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bpm_lib.cli import main
from bpm_lib.io.parse_cache import ParseCache

W, H = 64, 48  # non-square, so a transposed mask would be caught


def _png(path: Path, arr: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path.name if path.parent.name == "set" else f"{path.parent.name}/{path.name}"


def _source(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def _mask(w: int = W, h: int = H) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[h // 4 : h // 2, w // 4 : w // 2] = True
    return m


GOOD = {
    "good-replace": "Replace the ball with a box.",
    "good-color": "Make the ball blue.",
    "good-remove": "Remove the car.",
    "good-copy": "Make the ball red.",  # the edit is an unchanged copy: perfect preservation
}


def write_set(root: Path, *, bad: bool) -> Path:
    """A manifest whose good samples are identical in both variants; ``bad`` adds one
    sample per kind of broken input."""
    root.mkdir(parents=True, exist_ok=True)
    mask = _png(root / "mask.png", (_mask() * 255).astype(np.uint8))
    lines: list[dict[str, Any]] = []
    for i, (sid, text) in enumerate(GOOD.items()):
        src = _source(i)
        edited = src.copy()
        if sid != "good-copy":
            edited[_mask()] = 255 - edited[_mask()]
        lines.append({"sample_id": sid, "instruction": text, "source_image": _png(root / f"{sid}.png", src),
                      "reference_mask": mask})
        _png(root / "edits" / f"{sid}.png", edited)  # found through --edits
    if bad:
        src = _source(99)
        ok_edit = _png(root / "ok-edit.png", src)
        (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
        small = _png(root / "small-mask.png", (_mask(W // 2, H // 2) * 255).astype(np.uint8))
        lines += [
            {"sample_id": "bad-missing", "instruction": "Make the ball blue.", "source_image": "absent.png",
             "reference_mask": mask, "edited_image": ok_edit},
            {"sample_id": "bad-corrupt", "instruction": "Make the ball blue.", "source_image": "corrupt.png",
             "reference_mask": mask, "edited_image": ok_edit},
            {"sample_id": "bad-instruction", "instruction": "qwerty zxcv", "source_image": ok_edit,
             "reference_mask": mask, "edited_image": ok_edit},
            {"sample_id": "bad-mask-size", "instruction": "Make the ball blue.", "source_image": ok_edit,
             "reference_mask": small, "edited_image": ok_edit},
            {"sample_id": "bad-no-edit", "instruction": "Make the ball blue.", "source_image": ok_edit,
             "reference_mask": mask},
        ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n"
    if bad:
        text += '{"sample_id": "bad-json", "instruction": \n'  # a line that is not JSON
    (root / "manifest.jsonl").write_text(text)
    return root / "manifest.jsonl"


def _score(manifest: Path, out: Path, *extra: str) -> int:
    return main(["score", "--manifest", str(manifest), "--out", str(out), "--edits", str(manifest.parent / "edits"),
                 "--preset", "tiny-random", "--candidate", "cand", "--no-progress", *extra])


def _scores(out: Path) -> dict[str, dict[str, Any]]:
    return {r["sample_id"]: r for r in map(json.loads, (out / "scores.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("score")
    bad_manifest = write_set(root / "bad" / "set", bad=True)
    clean_manifest = write_set(root / "clean" / "set", bad=False)
    capture: dict[str, Any] = {"root": root, "bad_manifest": bad_manifest}
    capture["rc_bad"] = _score(bad_manifest, root / "out-bad")
    capture["rc_clean"] = _score(clean_manifest, root / "out-clean")
    return capture


def test_bad_samples_fail_alone_and_the_run_fails(scored: dict[str, Any]) -> None:
    assert scored["rc_bad"] == 1 and scored["rc_clean"] == 0
    scores = _scores(scored["root"] / "out-bad")
    errors = {sid: r["error"] for sid, r in scores.items() if r["status"] == "error"}
    assert set(errors) == {"bad-missing", "bad-corrupt", "bad-instruction", "bad-mask-size", "bad-no-edit",
                           f"line-{len(GOOD) + 6}"}
    assert "absent.png" in errors["bad-missing"]
    assert "corrupt.png" in errors["bad-corrupt"]
    assert errors["bad-instruction"].startswith("parse: cannot parse instruction 'qwerty zxcv'")
    assert "reference_mask" in errors["bad-mask-size"] and "32" in errors["bad-mask-size"]
    assert "no edited image" in errors["bad-no-edit"]
    assert errors[f"line-{len(GOOD) + 6}"].startswith(f"manifest line {len(GOOD) + 6}:")
    assert all(scores[sid]["status"] == "ok" and scores[sid]["bpm"] is not None for sid in GOOD)

    summary = json.loads((scored["root"] / "out-bad" / "summary.json").read_text())["candidates"]["cand"]
    assert (summary["samples_total"], summary["samples_scored"], summary["samples_failed"]) == (10, 4, 6)
    assert summary["errors"] == errors  # the summary names every failed sample and why
    assert summary["meaningless"] is True


def test_failures_do_not_change_the_good_samples(scored: dict[str, Any]) -> None:
    bad, clean = _scores(scored["root"] / "out-bad"), _scores(scored["root"] / "out-clean")
    assert set(clean) == set(GOOD)
    for sid in GOOD:
        for key in ("s_modify", "s_preserve", "s_region", "case", "edit_type"):
            assert bad[sid][key] == clean[sid][key], (sid, key)
    assert clean["good-copy"]["s_preserve"] == 0.0
    assert clean["good-replace"]["s_preserve"] > 0.0
    assert clean["good-color"]["case"] == "standard"


def test_allow_errors_and_output(scored: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = _score(scored["bad_manifest"], tmp_path / "o", "--allow-errors")
    captured = capsys.readouterr()
    assert rc == 0
    assert captured.out.splitlines()[0].split()[:5] == ["candidate", "samples", "scored", "failed", "bpm"]
    assert captured.out.splitlines()[1].split()[:4] == ["cand", "10", "4", "6"]
    assert "6 sample(s) failed" in captured.err and "meaningless" in captured.err
    assert _scores(tmp_path / "o").keys() == _scores(scored["root"] / "out-bad").keys()


def test_score_rejects_bad_arguments(scored: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _score(scored["bad_manifest"], tmp_path / "o", "--alpha", "2") == 2
    assert "--alpha must be in [0, 1], got 2.0" in capsys.readouterr().err
    assert _score(scored["bad_manifest"], tmp_path / "o", "--localizer", "reference-mask", "--embedder", "tiny-randm") == 2
    assert "did you mean 'tiny-random'" in capsys.readouterr().err
    assert not (tmp_path / "o" / "scores.jsonl").exists()


def test_bpm_parse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parse", "Replace the bike with bear.", "Add a toy on the table."]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["source_object"] == "bike" and lines[0]["target_object"] == "bear"
    assert lines[1] == {**lines[1], "source_object": "none", "target_object": "toy", "edit_type": "add",
                        "anchor_object": "table"}

    rc = main(["parse", "Remove the bike.", "qwerty zxcv", "--cache-dir", str(tmp_path / "pc")])
    captured = capsys.readouterr()
    assert rc == 1
    out = [json.loads(line) for line in captured.out.splitlines()]
    assert out[0]["target_object"] == "none" and out[1]["instruction"] == "qwerty zxcv" and "error" in out[1]
    assert "1 of 2 instructions could not be parsed" in captured.err
    assert len(ParseCache(tmp_path / "pc")) == 1  # the parse is cached, the failure is not

    assert main(["parse", "Remove the bike.", "--parser", "rulez"]) == 2
    assert "did you mean 'rules'" in capsys.readouterr().err
