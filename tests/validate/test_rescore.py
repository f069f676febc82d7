"""Re-scoring BPM reference files with the runner stages (tiny-random preset) and baselines."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from bpm_lib.cli import main
from bpm_lib.errors import DataError
from bpm_lib.io.images import load_rgb, to_frame
from bpm_lib.masks import decode_rle
from bpm_lib.runner.rescore import (
    BASELINE_COLUMNS,
    evalset_items,
    parse_baseline_options,
    parse_baselines,
    place_images,
    rescore_evalset,
    rescore_file,
    rescore_items,
)
from bpm_lib.runner.stages import load_scores, scores_file
from tests.validate import fixtures as fx

ALL_BASELINES = "l1,l2,lpips,clip_score,clip_i,dino,directional_clip"
# small LPIPS settings keep the random-trunk network cheap on CPU
FAST_OPTIONS = {"lpips": {"net": "squeeze", "frame": 64}}
SUB_SCORES = ("preservation", "edit_quality", "position", "size")
LEARNED = ("lpips", "clip_score", "clip_i", "dino", "clip_directional")


def _snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), os.stat(path).st_mtime_ns


@pytest.fixture(scope="module")
def backends() -> Any:
    from bpm_lib.runner.backends import build_backends

    return build_backends("tiny-random")


@pytest.fixture(scope="module")
def rescored(tmp_path_factory: pytest.TempPathFactory, backends: Any) -> SimpleNamespace:
    """One rescore of two items (a replacement, a global edit) with every baseline; the
    file of item 1 / candidate 2 is corrupt. Written into another folder than the input."""
    root = tmp_path_factory.mktemp("rescore")
    src = fx.make_image_set(root / "in", 2, kinds=(0, 2), corrupt=(1, 2))
    before = _snapshot(src)
    out = root / "out" / "rescored.json"
    info = rescore_file(src, out, backends=backends, baselines=ALL_BASELINES, baseline_options=FAST_OPTIONS,
                        work_dir=root / "work", batch_size=4)
    return SimpleNamespace(root=root, src=src, out=out, info=info, before=before,
                           items=json.loads(out.read_text()), original=json.loads(src.read_text()))


# --------------------------------------------------------------------------- parsing, no models


def test_parse_baselines_and_options() -> None:
    cols = parse_baselines(ALL_BASELINES)
    assert [c.key for c in cols] == ["l1", "l2", "lpips", "clip_score", "clip_i", "dino", "clip_directional"]
    assert [c.baseline for c in cols] == ["l1", "l2", "lpips", "clip-score", "clip-i", "dino", "directional-clip"]
    assert parse_baselines("clip-score, directional-clip") == (BASELINE_COLUMNS[3], BASELINE_COLUMNS[6])
    assert parse_baselines("") == () and parse_baselines(None) == ()
    with pytest.raises(ValueError, match="did you mean 'lpips'"):
        parse_baselines("lpip")
    with pytest.raises(ValueError, match="more than once"):
        parse_baselines("clip_i,clip-i")
    opts = parse_baseline_options(["dino.model=/models/dino", 'lpips.net="vgg"', "lpips.frame=64"],
                                  parse_baselines("lpips,dino"))
    assert opts == {"dino": {"model": "/models/dino"}, "lpips": {"net": "vgg", "frame": 64}}
    with pytest.raises(ValueError, match=r"NAME\.KEY=VALUE"):
        parse_baseline_options(["dino=x"], parse_baselines("dino"))
    with pytest.raises(ValueError, match="not among the baselines computed"):
        parse_baseline_options(["dino.model=x"], parse_baselines("l1"))


def test_rescore_refuses_to_write_its_input(tmp_path: Path) -> None:
    src = fx.write_metadata(tmp_path / "m.json", fx.alignment_items())
    before = _snapshot(src)
    with pytest.raises(ValueError, match="not the input metadata"):
        rescore_file(src, tmp_path / "." / "m.json", preset="tiny-random")
    with pytest.raises(ValueError, match="folder"):
        rescore_file(src, tmp_path, preset="tiny-random")
    assert _snapshot(src) == before


def test_place_images_never_overwrites(tmp_path: Path) -> None:
    src = fx.make_image_set(tmp_path / "a", 1)
    items = json.loads(src.read_text())
    assert place_images(items, src.parent, tmp_path / "b") == 4  # source + 3 candidates
    assert (tmp_path / "b" / "cand3" / "0.png").read_bytes() == (src.parent / "cand3" / "0.png").read_bytes()
    assert place_images(items, src.parent, tmp_path / "b") == 0  # identical files: nothing to do
    (tmp_path / "b" / "cand3" / "0.png").unlink()
    (tmp_path / "b" / "cand3" / "0.png").write_bytes(b"other")
    with pytest.raises(DataError, match="refusing to overwrite"):
        place_images(items, src.parent, tmp_path / "b")


def test_evalset_items_restore_extra_keys(tmp_path: Path) -> None:
    from bpm_lib.io.datasets import fetch

    src = fx.make_image_set(tmp_path / "a", 2)
    raw = json.loads(src.read_text())
    raw[1]["is_global"] = True
    fx.write_metadata(src, raw)
    fetch(f"bpm-json:{src}", tmp_path / "ev")
    items = evalset_items(tmp_path / "ev")
    assert [it["index"] for it in items] == [0, 1]
    assert items[1]["is_global"] is True and items[0]["source_caption"] == "a photo number 0"
    assert items[0]["edited_image3"]["user_overall_quality"] == 5
    assert items[0]["edited_image3"]["image_path"] == "candidates/3/0.png"
    # the published values pass through untouched when nothing is re-scored
    info = rescore_evalset(tmp_path / "ev", tmp_path / "out", preset=None)
    assert info.entries == 6 and info.failed == 0 and info.preset is None
    written = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert written[0]["edited_image2"]["preservation"] == fx.PUBLISHED[2][0]
    assert (tmp_path / "out" / "candidates" / "3" / "1.png").is_file()
    assert json.loads((tmp_path / "out" / "_bpm.json").read_text())["rescored"] is False
    with pytest.raises(ValueError, match="baselines need a preset"):
        rescore_evalset(tmp_path / "ev", tmp_path / "out2", preset=None, baselines="l1")


def test_directional_clip_needs_captions(tmp_path: Path, backends: Any) -> None:
    src = fx.make_image_set(tmp_path / "a", 1, captions=False)
    with pytest.raises(DataError, match=r"directional_clip needs a source caption .* item index 0"):
        rescore_items(json.loads(src.read_text()), src.parent, backends, tmp_path / "w",
                      baselines=parse_baselines("directional_clip"))


def test_bad_baseline_option_is_named(tmp_path: Path, backends: Any) -> None:
    src = fx.make_image_set(tmp_path / "a", 1)
    with pytest.raises(ValueError, match=r"baseline 'l1': bad option in \['colour'\]"):
        rescore_items(json.loads(src.read_text()), src.parent, backends, tmp_path / "w",
                      baselines=parse_baselines("l1"), baseline_options={"l1": {"colour": 1}})


# --------------------------------------------------------------------------- one real rescore


def test_rescore_writes_a_new_file_and_copies_images(rescored: SimpleNamespace) -> None:
    assert _snapshot(rescored.src) == rescored.before  # the input is never written
    assert json.loads(rescored.src.read_text()) == rescored.original
    out_dir = rescored.out.parent
    for rel in ("src/0.png", "src/1.png", "cand1/0.png", "cand3/1.png", "cand2/1.png"):
        assert (out_dir / rel).read_bytes() == (rescored.src.parent / rel).read_bytes()
    info = rescored.info
    assert info.items == 2 and info.entries == 6 and info.scored == 5 and info.failed == 1
    assert list(info.errors) == ["1/edited_image2"] and "not a readable image" in info.errors["1/edited_image2"]
    assert info.preset == "tiny-random"
    # the new file reads back as a BPM reference dataset (the item with the corrupt image is skipped)
    from bpm_lib.io.datasets import fetch

    ev = fetch(f"bpm-json:{rescored.out}", rescored.root / "refetched")
    assert ev.count == 1 and [s["id"] for s in ev.skipped] == ["1"]


def test_sub_scores_are_the_judged_values(rescored: SimpleNamespace) -> None:
    items = {it["index"]: it for it in rescored.items}
    work = rescored.root / "work"
    for cand in ("1", "2", "3"):
        for score in load_scores(work / scores_file(cand)):
            entry = items[int(score.sample_id)][f"edited_image{cand}"]
            if not score.ok:
                continue
            expected_p = 0.0 if score.s_preserve is None else -score.s_preserve
            assert entry["preservation"] == pytest.approx(expected_p, abs=0)
            assert (entry["edit_quality"], entry["position"], entry["size"], entry["case"]) == (
                score.s_modify, score.s_position, score.s_size, score.case)
            assert entry["published"] == {"preservation": fx.PUBLISHED[int(cand)][0],
                                          "edit_quality": fx.PUBLISHED[int(cand)][1], "position": 1, "size": 1}
    local, glob = items[0], items[1]
    # candidate 1 is the source itself: nothing outside any mask changed, d = 0
    assert local["edited_image1"]["preservation"] == 0.0
    # candidate 3 differs from the source only in a block: −d from its stored mask, by hand
    (score3,) = [s for s in load_scores(work / scores_file("3")) if s.sample_id == "0"]
    mask = decode_rle(score3.extra["edit_mask"])
    a = to_frame(load_rgb(rescored.src.parent / "src/0.png")).astype(np.float64)
    b = to_frame(load_rgb(rescored.src.parent / "cand3/0.png")).astype(np.float64)
    d = np.sqrt(((a - b) ** 2).mean(axis=2))[~mask].mean() / 255.0
    assert local["edited_image3"]["preservation"] == pytest.approx(-d, rel=1e-9)
    assert local["is_global"] is False
    # a global edit: preservation not applicable (stored as 0), region scores 1
    assert glob["is_global"] is True
    for k in (1, 3):  # candidate 2's file is corrupt
        e = glob[f"edited_image{k}"]
        assert (e["preservation"], e["position"], e["size"], e["case"]) == (0.0, 1.0, 1.0, "global")
        assert -1.0 <= e["edit_quality"] <= 1.0


def test_failed_candidate_has_no_stale_values(rescored: SimpleNamespace) -> None:
    entry = rescored.items[1]["edited_image2"]
    assert "not a readable image" in entry["rescore_error"]
    for key in (*SUB_SCORES, "case", "l1", "lpips", "dino"):
        assert key not in entry
    assert entry["published"]["preservation"] == fx.PUBLISHED[2][0]
    assert entry["user_overall_quality"] == fx.RATINGS[2]


def test_baselines_and_meaningless_labels(rescored: SimpleNamespace) -> None:
    items = rescored.items
    ident = items[0]["edited_image1"]  # identical to its source
    assert ident["l1"] == 0.0 and ident["l2"] == 0.0
    assert ident["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert ident["clip_i"] == pytest.approx(1.0, abs=1e-5) and ident["dino"] == pytest.approx(1.0, abs=1e-5)
    noisy = items[0]["edited_image2"]
    a = to_frame(load_rgb(rescored.src.parent / "src/0.png")).astype(np.float64)
    b = to_frame(load_rgb(rescored.src.parent / "cand2/0.png")).astype(np.float64)
    assert noisy["l1"] == pytest.approx(np.abs(a - b).mean() / 255.0, rel=1e-12)
    assert noisy["l2"] == pytest.approx((((a - b) / 255.0) ** 2).mean(), rel=1e-12)
    assert noisy["lpips"] > 1e-4 and noisy["clip_i"] < 1.0
    for it in items:
        for k in (1, 2, 3):
            e = it[f"edited_image{k}"]
            if "rescore_error" in e:
                continue
            assert 0.0 <= e["clip_score"] <= 100.0 and -1.0 <= e["clip_directional"] <= 1.0
        label = it["rescore"]
        assert label["preset"] == "tiny-random"
        assert set(label["meaningless"]) == {*SUB_SCORES, *LEARNED}  # l1/l2 need no weights
        assert label["keys"] == [*SUB_SCORES, "l1", "l2", *LEARNED]
    assert set(rescored.info.meaningless) == {*SUB_SCORES, *LEARNED}
    assert rescored.info.backends["baselines"]["lpips"]["meaningless"] is True
    assert rescored.info.backends["baselines"]["dino"]["meaningless"] is True


def test_validate_the_rescored_file(rescored: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["validate", "human-alignment", "--metadata", str(rescored.out), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "1 candidate entry with a rescore_error left out: 1/edited_image2" in err
    obj = json.loads(out)
    assert obj["samples"] == 2 and set(obj["pairs"]) == {"1-2", "1-3", "2-3"}
    # item 1 lacks candidate 2 now, so pairs 1-2 and 2-3 rest on item 0 alone
    assert all(v is None or 0.0 <= v <= 1.0 for v in obj["pairs"].values())
    code = main(["validate", "report", "--metadata", str(rescored.out), "--out", str(rescored.root / "report")])
    capsys.readouterr()
    assert code == 0
    v = json.loads((rescored.root / "report" / "validation.json").read_text())
    assert [r["metric"] for r in v["alignment"]] == ["bpm", "lpips", "l1", "l2", "clip_score", "clip_i", "dino",
                                                      "clip_directional"]
    assert v["excluded_entries"] == {"1/edited_image2": rescored.items[1]["edited_image2"]["rescore_error"]}
    assert [r["metric"] for r in v["alignment"] if not r["meaningless"]] == ["l1", "l2"]


def test_rescore_cli(rescored: SimpleNamespace, backends: Any, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> None:
    import bpm_lib.runner.rescore as rescore_mod

    asked: list[Any] = []

    def fake_build(preset: str | None, **overrides: Any) -> Any:
        asked.append((preset, overrides))
        return backends  # built once for the module; same work folder → stage records reused

    monkeypatch.setattr(rescore_mod, "build_backends", fake_build)
    out = rescored.root / "cli" / "new.json"
    argv = ["validate", "rescore", "--metadata", str(rescored.src), "--out", str(out), "--preset", "tiny-random",
            "--baselines", "l1", "--work-dir", str(rescored.root / "work"), "--batch-size", "4"]
    code = main(argv)
    stdout, err = capsys.readouterr()
    assert code == 1  # one candidate could not be scored
    assert "1 candidate(s) could not be scored" in err and "meaningless" in err
    assert asked == [("tiny-random", {"parser": None, "localizer": None, "embedder": None})]
    report = json.loads(stdout)
    assert report["failed"] == 1 and report["keys"] == [*SUB_SCORES, "l1"]
    new = json.loads(out.read_text())
    old = rescored.items
    assert new[0]["edited_image3"]["edit_quality"] == old[0]["edited_image3"]["edit_quality"]
    assert "lpips" not in new[0]["edited_image3"]
    assert main([*argv, "--allow-errors"]) == 0
    capsys.readouterr()
    assert main(["validate", "rescore", "--metadata", str(rescored.src), "--out", str(out), "--baselines",
                 "lpip"]) == 2
    assert "did you mean 'lpips'" in capsys.readouterr().err
    assert main(["validate", "rescore", "--metadata", str(rescored.src), "--out", str(rescored.src)]) == 2
    assert "not the input metadata" in capsys.readouterr().err
    assert main(["validate", "rescore", "--metadata", str(rescored.src), "--out", str(out), "--baselines", "l1",
                 "--baseline-option", "dino.model=x"]) == 2
    assert "not among the baselines computed" in capsys.readouterr().err
    assert _snapshot(rescored.src) == rescored.before


@pytest.mark.slow
def test_pipeline_steps_end_to_end_with_tiny_random(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """fetch → rescore (real preset build, the CLI path) → report, as the pipeline runs them."""
    from bpm_lib.io.datasets import fetch
    from bpm_lib.validation_report import report_step

    src = fx.make_image_set(tmp_path / "a", 1, kinds=(0,))
    code = main(["validate", "rescore", "--metadata", str(src), "--out", str(tmp_path / "b" / "new.json"),
                 "--preset", "tiny-random", "--baselines", "l2,clip_i"])
    assert code == 0, capsys.readouterr().err
    fetch(f"bpm-json:{src}", tmp_path / "ev")
    info = rescore_evalset(tmp_path / "ev", tmp_path / "rescored", preset="tiny-random", baselines="l2")
    assert info.failed == 0 and info.entries == 3 and "preservation" in info.meaningless
    metrics = report_step(tmp_path / "rescored", tmp_path / "report", alpha=0.7, pairs="")
    assert set(metrics) >= {"alignment/bpm/mean", "alignment/l2/mean", "gt_test/bpm/ties"}
    saved = json.loads((tmp_path / "report" / "validation.json").read_text())
    assert saved["source"]["rescore"]["preset"] == "tiny-random" and saved["meaningless"]


def test_rescoring_decodes_every_image_once_across_chunks(tmp_path: Path, backends: Any) -> None:
    """12 items x 3 candidates at batch size 2 (chunks of 4 items): each source image is
    decoded once for all three candidates, each candidate image once; the same values
    as one chunk holding every item."""
    from benchmarks import count_decodes

    src = fx.make_image_set(tmp_path / "in", 12)
    with count_decodes() as decodes:
        rescore_file(src, tmp_path / "a.json", backends=backends, baselines="", work_dir=tmp_path / "wa",
                     batch_size=2)
    assert decodes.images == 12 + 12 * 3
    rescore_file(src, tmp_path / "b.json", backends=backends, baselines="", work_dir=tmp_path / "wb",
                 batch_size=64)
    chunked, whole = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("a", "b"))
    assert len(chunked) == len(whole) == 12
    for a, b in zip(chunked, whole, strict=True):
        for k in (1, 2, 3):
            x, y = a[f"edited_image{k}"], b[f"edited_image{k}"]
            assert x.keys() == y.keys() and x["case"] == y["case"]
            for key in SUB_SCORES:  # batch 2 vs 64: the embedder's float rounding only
                assert x[key] == pytest.approx(y[key], abs=1e-5)
