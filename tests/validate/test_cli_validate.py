"""``bpm validate human-alignment`` / ``gt-test`` on hand-built metadata (see fixtures.py
for the arithmetic behind every expected number)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bpm_lib.cli import main
from tests.validate import fixtures as fx


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["validate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def align_file(tmp_path: Path) -> Path:
    return fx.write_metadata(tmp_path / "metadata.json", fx.alignment_items())


def test_human_alignment_json_all_pairs(align_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (align_file.read_bytes(), os.stat(align_file).st_mtime_ns)
    code, out, _ = _run(capsys, "human-alignment", "--metadata", str(align_file), "--json")
    assert code == 0
    assert len(out.strip().splitlines()) == 1  # exactly one JSON object
    obj = json.loads(out)
    assert list(obj) == ["pairs", "mean", "normalization", "alpha", "samples"]
    assert obj["pairs"] == pytest.approx(fx.EXPECTED_PAIRS)
    assert list(obj["pairs"]) == ["1-2", "1-3", "1-4", "2-3", "2-4", "3-4"]
    assert obj["mean"] == pytest.approx(fx.EXPECTED_MEAN)
    assert obj["normalization"] == fx.NORMALIZATION
    assert obj["alpha"] == 0.7 and obj["samples"] == 3
    # the input is never written to
    assert (align_file.read_bytes(), os.stat(align_file).st_mtime_ns) == before


def test_human_alignment_reference_and_explicit_pairs(align_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "human-alignment", "--metadata", str(align_file), "--pairs", "reference", "--json")
    assert code == 0
    obj = json.loads(out)
    assert list(obj["pairs"]) == ["1-2", "1-3", "2-3", "4-3", "4-2", "4-1"]
    assert obj["pairs"] == pytest.approx(fx.EXPECTED_REFERENCE)
    assert obj["mean"] == pytest.approx(13 / 18)

    code, out, _ = _run(capsys, "human-alignment", "--metadata", str(align_file), "--pairs", " 2-4 , 1-2", "--json")
    assert code == 0
    obj = json.loads(out)
    assert obj["pairs"] == pytest.approx({"2-4": 1.0, "1-2": 0.5})
    assert obj["mean"] == pytest.approx(0.75)


def test_human_alignment_alpha_changes_the_result(align_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # α = 0.5: pair 1-2 still 1/2 (2.5·0.5 − 1 > 0), pair 2-4 drops to 1/2 (1.75·0.5 − 1 < 0) → 23/36
    code, out, _ = _run(capsys, "human-alignment", "--metadata", str(align_file), "--alpha", "0.5", "--json")
    assert code == 0
    obj = json.loads(out)
    assert obj["pairs"]["2-4"] == pytest.approx(0.5)
    assert obj["mean"] == pytest.approx(23 / 36)
    assert obj["alpha"] == 0.5


def test_human_alignment_of_a_baseline(align_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "human-alignment", "--metadata", str(align_file), "--metric", "lpips", "--json")
    assert code == 0
    obj = json.loads(out)
    assert obj["pairs"] == pytest.approx(fx.EXPECTED_LPIPS_PAIRS)
    assert obj["mean"] == pytest.approx(fx.EXPECTED_LPIPS_MEAN)
    assert obj["normalization"] is None
    # the same key read the other way round is wrong exactly where it was right (no ties here
    # except the human ones, which are skipped either way): 1-2 goes from 2/2 to 0/2
    code, out, _ = _run(capsys, "human-alignment", "--metadata", str(align_file), "--metric", "lpips",
                        "--direction", "higher", "--json")
    assert json.loads(out)["pairs"]["1-2"] == 0.0


def test_human_alignment_table(align_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "human-alignment", "--metadata", str(align_file))
    assert code == 0
    lines = out.splitlines()
    assert "alpha 0.7" in lines[0] and "user_overall_quality" in lines[0]
    assert lines[1].split() == ["pair", "agree", "compared", "agreement", "%"]
    # 1-2: item 0 compared (BPM tie → disagree), item 1 agrees, item 2 human tie skipped
    assert lines[2].split() == ["1-2", "1", "2", "50.0"]
    assert lines[4].split() == ["1-4", "2", "3", "66.7"]
    assert lines[8].split() == ["mean", "72.2"]


def test_gt_test_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = fx.write_metadata(tmp_path / "gt.json", fx.gt_items())
    code, out, _ = _run(capsys, "gt-test", "--metadata", str(path), "--json")
    assert code == 0
    assert json.loads(out) == {"wins": {"1": 0, "2": 0, "3": 2}, "ties": 1, "alpha": 0.7}
    code, out, _ = _run(capsys, "gt-test", "--metadata", str(path), "--metric", "clip_score", "--json")
    assert json.loads(out)["wins"] == {"1": 0, "2": 3, "3": 0}
    code, out, _ = _run(capsys, "gt-test", "--metadata", str(path))
    assert code == 0
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert rows["3"] == ["2", "66.7"] and rows["ties"] == ["1", "33.3"]


def test_gt_test_with_ties_on_top(align_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # item 0's top BPM is shared by candidates 1 and 2: a tie, not a win for either
    code, out, _ = _run(capsys, "gt-test", "--metadata", str(align_file), "--json")
    assert code == 0
    assert json.loads(out) == {"wins": {"1": 0, "2": 0, "3": 1, "4": 1}, "ties": 1, "alpha": 0.7}


def test_global_only_file_needs_explicit_bounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = fx.write_metadata(tmp_path / "global.json", fx.global_items())
    code, out, err = _run(capsys, "human-alignment", "--metadata", str(path), "--json")
    assert code == 1 and out == ""
    assert "cannot normalise preservation" in err and "global" in err and "Traceback" not in err
    # bounds from another file (here: the --json output of a local set) make it computable
    bounds = tmp_path / "bounds.json"
    bounds.write_text(json.dumps({"pairs": {}, "normalization": fx.NORMALIZATION}))
    code, out, _ = _run(capsys, "human-alignment", "--metadata", str(path), "--normalization", str(bounds), "--json")
    assert code == 0
    obj = json.loads(out)
    assert obj["pairs"] == {"1-2": 0.5} and obj["normalization"] == fx.NORMALIZATION


def test_degenerate_pool_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = fx.write_metadata(tmp_path / "flat.json", fx.degenerate_items())
    for action in ("human-alignment", "gt-test"):
        code, out, err = _run(capsys, action, "--metadata", str(path), "--json")
        assert code == 1 and out == ""
        assert "cannot normalise edit_quality" in err and "equal 0.5" in err


def test_missing_ratings_and_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = fx.write_metadata(tmp_path / "unrated.json", fx.unrated_items())
    code, _, err = _run(capsys, "human-alignment", "--metadata", str(path))
    assert code == 1 and "user_overall_quality" in err
    code, _, err = _run(capsys, "human-alignment", "--metadata", str(tmp_path / "absent.json"))
    assert code == 1 and "absent.json" in err and "not found" in err
    (tmp_path / "obj.json").write_text('{"index": 0}')
    code, _, err = _run(capsys, "gt-test", "--metadata", str(tmp_path / "obj.json"))
    assert code == 1 and "JSON list" in err
    missing = fx.alignment_items()
    del missing[1]["edited_image2"]["edit_quality"]
    code, _, err = _run(capsys, "gt-test", "--metadata", str(fx.write_metadata(tmp_path / "m.json", missing)))
    assert code == 1 and "edit_quality" in err and "edited_image2" in err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("1-1", "two different candidates"),
        ("a-b", "'a-b'"),
        ("1-2-3", "'1-2-3'"),
        ("1-2,", "''"),
        ("0-1", "start at 1"),
        ("1-2,2-1", "'2-1' repeats '1-2'"),
        ("1-5", "candidate 5, which is not in the data"),
        ("referenc", "'referenc'"),
    ],
)
def test_pairs_parsing_errors(align_file: Path, capsys: pytest.CaptureFixture[str], spec: str, message: str) -> None:
    code, out, err = _run(capsys, "human-alignment", "--metadata", str(align_file), "--pairs", spec)
    assert code == 2 and out == ""
    assert err.startswith("bpm validate: error: --pairs") and message in err
    assert "Traceback" not in err


def test_reference_pairs_need_four_candidates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    three = [fx.item(i, *[e for k, e in it.items() if k.startswith("edited_image") and k != "edited_image4"])
             for i, it in enumerate(fx.alignment_items())]
    path = fx.write_metadata(tmp_path / "three.json", three)
    code, _, err = _run(capsys, "human-alignment", "--metadata", str(path), "--pairs", "reference")
    assert code == 2 and "candidate 4" in err


def test_argument_errors(align_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "human-alignment", "--metadata", str(align_file), "--alpha", "1.5")
    assert code == 2 and "alpha must be in [0, 1]" in err
    code, _, err = _run(capsys, "human-alignment", "--metadata", str(align_file), "--metric", "sharpness")
    assert code == 2 and "no known direction" in err
    code, _, err = _run(capsys, "human-alignment", "--metadata", str(align_file), "--direction", "lower")
    assert code == 2 and "--direction only applies together with --metric" in err
    code, _, err = _run(capsys, "human-alignment", "--metadata", str(align_file), "--metric", "sharpness",
                        "--direction", "higher")
    assert code == 1 and "missing 'sharpness'" in err
    bad = tmp_path / "bounds.json"
    bad.write_text('{"preservation_min": 0, "preservation_max": 0, "edit_quality_min": 0, "edit_quality_max": 1}')
    code, _, err = _run(capsys, "human-alignment", "--metadata", str(align_file), "--normalization", str(bad))
    assert code == 2 and "preservation_max must exceed preservation_min" in err
    bad.write_text("{not json")
    code, _, err = _run(capsys, "gt-test", "--metadata", str(align_file), "--normalization", str(bad))
    assert code == 2 and "not valid JSON" in err


def test_validate_without_action_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys)
    assert code == 2 and "human-alignment" in err and "rescore" in err
