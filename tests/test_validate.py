"""Validation protocols (BPM_SPEC §7) on hand-built reference metadata."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bpm_lib.errors import CalibrationError, DataError
from bpm_lib.types import SampleScore
from bpm_lib.validate import (
    REFERENCE_PAIRS,
    alpha_sweep,
    bpm_from_reference,
    candidates_of,
    criterion_alignment,
    gt_test,
    human_alignment,
    is_global_item,
    reference_entry,
    reference_normalization,
)


def entry(
    p: float, m: float, human: float, pos: float | None = 1, size: float | None = 1, **extra: Any
) -> dict:
    out: dict[str, Any] = {
        "image_path": "x.png",
        "user_overall_quality": human,
        "preservation": p,
        "edit_quality": m,
    }
    if pos is not None:
        out["position"] = pos
    if size is not None:
        out["size"] = size
    out.update(extra)
    return out


def item(index: int, *entries: dict, **extra: Any) -> dict:
    out: dict[str, Any] = {"index": index, "instruction": "i", "source_image_path": "s.png"}
    out.update({f"edited_image{k}": e for k, e in enumerate(entries, 1)})
    out.update(extra)
    return out


# Bounds: preservation -0.5..-0.1 (0 left out), edit_quality 0.1..0.3. BPM at α = 0.7:
ITEMS = [
    # c1: p_n 1, m_n 0 → 1.3 | c2: p_n 0, m_n 1 → 1.3 (tie) | c3: 0.5, 0.5, region 1 → 1.0
    item(
        0,
        entry(-0.1, 0.1, 5, lpips=0.1, human_preservation=5),
        entry(-0.5, 0.3, 3, lpips=0.5, human_preservation=1),
        entry(-0.3, 0.2, 1, pos=0, lpips=0.3, human_preservation=3),
    ),
    # c1: 1, 1 → 2.0 | c2: 0, 0 → 0.6 (humans tie with c1) | c3: 0.5, 0.5 → 1.3
    item(
        1,
        entry(-0.1, 0.3, 4, lpips=0.2, human_preservation=2),
        entry(-0.5, 0.1, 4, lpips=0.2, human_preservation=1),
        entry(-0.3, 0.2, 2, lpips=0.4),
    ),
    # global (preservation 0 everywhere), α = 1, p_n = 0.5 / 0.4 = 1.25: c1 2.25, c2 1.25, c3 1.75
    item(
        2,
        entry(0, 0.3, 1, pos=None, size=None, lpips=0.3),
        entry(0, 0.1, 2, pos=None, size=None, lpips=0.2),
        entry(0, 0.2, 3, pos=None, size=None, lpips=0.1),
    ),
]


def test_candidates_and_global_detection() -> None:
    assert list(candidates_of(ITEMS[0])) == [1, 2, 3]
    assert [is_global_item(it) for it in ITEMS] == [False, False, True]
    assert is_global_item(item(9, entry(-0.2, 0.1, 1), is_global=True))
    assert not is_global_item(item(9, entry(0, 0.1, 1), is_global=False))
    with pytest.raises(DataError, match="is_global"):
        is_global_item(item(9, entry(0, 0.1, 1), is_global="yes"))


def test_reference_normalization() -> None:
    assert reference_normalization(ITEMS) == {
        "preservation_min": -0.5,
        "preservation_max": -0.1,
        "edit_quality_min": 0.1,
        "edit_quality_max": 0.3,
    }
    # -1 is also left out of the preservation bounds
    with_minus_one = [*ITEMS, item(3, entry(-1, 0.2, 1), entry(-0.2, 0.2, 2))]
    assert reference_normalization(with_minus_one)["preservation_min"] == -0.5


def test_bpm_from_reference_hand_computed() -> None:
    norm = reference_normalization(ITEMS)
    c = candidates_of(ITEMS[0])
    assert bpm_from_reference(c[1], norm) == pytest.approx(1.3)
    assert bpm_from_reference(c[1], norm) == bpm_from_reference(c[2], norm)  # exact tie
    assert bpm_from_reference(c[3], norm) == pytest.approx(1.0)
    assert bpm_from_reference(c[3], norm, alpha=0.0) == pytest.approx(1.0)  # region only
    g = candidates_of(ITEMS[2])
    assert bpm_from_reference(g[1], norm, is_global=True) == pytest.approx(
        2.25
    )  # stored 0 used as is
    with pytest.raises(DataError, match="'position'"):
        bpm_from_reference(g[1], norm)  # a local item needs position and size
    with pytest.raises(DataError, match="'edit_quality' must be a number"):
        bpm_from_reference({**c[1], "edit_quality": "high"}, norm)
    with pytest.raises(ValueError, match="preservation_max must exceed"):
        bpm_from_reference(c[1], {**norm, "preservation_max": -0.5})


def test_human_alignment_hand_computed() -> None:
    before = copy.deepcopy(ITEMS)
    res = human_alignment(ITEMS)
    assert ITEMS == before  # never mutated
    # 1-2: item0 humans 5>3 but BPM tie → disagree; item1 humans tie → skipped; item2 1<2 vs 2.25>1.25
    # 1-3: agree, agree, disagree; 2-3: agree, disagree (0.6 < 1.3), agree (1.25 < 1.75)
    assert res["pairs"] == {"1-2": 0.0, "1-3": pytest.approx(2 / 3), "2-3": pytest.approx(2 / 3)}
    assert res["counts"]["1-2"] == {"agree": 0, "compared": 2}
    assert res["mean"] == pytest.approx(4 / 9)
    assert res["alpha"] == 0.7 and res["samples"] == 3 and res["metric"] == "bpm"
    assert res["normalization"] == reference_normalization(ITEMS)


def test_human_alignment_pairs_without_comparisons_are_none() -> None:
    res = human_alignment(ITEMS, pairs=[(1, 3), (1, 4)])
    assert res["pairs"] == {"1-3": pytest.approx(2 / 3), "1-4": None}
    assert res["mean"] == pytest.approx(2 / 3)  # None left out
    only_ties = [item(0, entry(-0.1, 0.1, 3), entry(-0.5, 0.3, 3))]
    res = human_alignment(only_ties)
    assert res["pairs"] == {"1-2": None} and res["mean"] is None
    with pytest.raises(ValueError, match="pairs"):
        human_alignment(ITEMS, pairs=[(1, 1)])


def test_human_alignment_reference_pairs_four_candidates() -> None:
    # BPM ranks 4 > 1 > 2 > 3 in both items; humans rank 4 > 3 > 2 > 1 in the first, 4 > 1 > 2 > 3 in the second
    rows = [(-0.1, 0.25), (-0.3, 0.2), (-0.5, 0.1), (-0.1, 0.3)]
    items = [
        item(0, *(entry(p, m, h) for (p, m), h in zip(rows, (1, 2, 3, 4), strict=True))),
        item(1, *(entry(p, m, h) for (p, m), h in zip(rows, (3, 2, 1, 4), strict=True))),
    ]
    res = human_alignment(items, pairs=REFERENCE_PAIRS)
    assert list(res["pairs"]) == ["1-2", "1-3", "2-3", "4-3", "4-2", "4-1"]
    assert res["pairs"] == {"1-2": 0.5, "1-3": 0.5, "2-3": 0.5, "4-3": 1.0, "4-2": 1.0, "4-1": 1.0}
    assert res["mean"] == pytest.approx(0.75)
    assert list(human_alignment(items)["pairs"]) == ["1-2", "1-3", "1-4", "2-3", "2-4", "3-4"]


def test_baseline_metric_direction() -> None:
    res = human_alignment(ITEMS, metric="lpips")  # lower is better
    # 1-2: agree (item0), skip (item1), agree (item2); 1-3: three agreements; 2-3: disagree, agree, agree
    assert res["pairs"] == {"1-2": 1.0, "1-3": 1.0, "2-3": pytest.approx(2 / 3)}
    assert res["mean"] == pytest.approx(8 / 9)
    assert res["normalization"] is None and res["metric"] == "lpips"
    flipped = human_alignment(ITEMS, metric="lpips", higher_is_better=True)
    assert flipped["pairs"]["1-3"] == 0.0
    with pytest.raises(ValueError, match="no known direction"):
        human_alignment(ITEMS, metric="sharpness")
    with pytest.raises(DataError, match=r"index=0 edited_image1: missing 'psnr'"):
        human_alignment(ITEMS, metric="psnr", higher_is_better=True)


def test_gt_test_counts_wins_and_ties() -> None:
    res = gt_test(ITEMS)
    # item0 tie at the top (1.3, 1.3); item1 c1; item2 c1
    assert res["wins"] == {"1": 2, "2": 0, "3": 0} and res["ties"] == 1
    assert res["fractions"]["1"] == pytest.approx(2 / 3) and res["alpha"] == 0.7
    lp = gt_test(ITEMS, metric="lpips")
    # item0 c1 (0.1); item1 c1 = c2 (0.2) tie; item2 c3 (0.1)
    assert lp["wins"] == {"1": 1, "2": 0, "3": 1} and lp["ties"] == 1


def test_gt_test_triplets_bpm_prefers_well_edited() -> None:
    # (excessively preserved, excessively modified, well edited)
    triplet = [
        entry(-0.01, -0.05, 1, lpips=0.01),
        entry(-0.5, 0.4, 1, lpips=0.6),
        entry(-0.05, 0.35, 1, lpips=0.1),
    ]
    items = [item(i, *triplet) for i in range(3)]
    assert gt_test(items)["wins"] == {"1": 0, "2": 0, "3": 3}
    assert gt_test(items, metric="lpips")["wins"] == {"1": 3, "2": 0, "3": 0}


def test_alpha_sweep() -> None:
    sweep = alpha_sweep(ITEMS)
    assert [round(r["alpha"], 10) for r in sweep] == [round(i / 10, 10) for i in range(11)]
    for row in sweep:
        assert row["mean"] == pytest.approx(human_alignment(ITEMS, alpha=row["alpha"])["mean"])
    # α = 0: local BPM = position + size; item0 2, 2, 1; item1 2, 2, 2; global item unchanged
    assert sweep[0]["pairs"] == {
        "1-2": 0.0,
        "1-3": pytest.approx(1 / 3),
        "2-3": pytest.approx(2 / 3),
    }
    assert sweep[0]["mean"] == pytest.approx(1 / 3)
    assert [r["alpha"] for r in alpha_sweep(ITEMS, [0.7])] == [0.7]


def test_criterion_alignment() -> None:
    res = criterion_alignment(ITEMS, "preservation", "human_preservation")
    # item0: 1 vs 2: -0.1 > -0.5, 5 > 1 agree; 1 vs 3: -0.1 > -0.3, 5 > 3 agree; 2 vs 3: -0.5 < -0.3, 1 < 3 agree
    # item1: 1 vs 2: -0.1 > -0.5, 2 > 1 agree; candidate 3 has no human_preservation; item2 has none
    assert res["pairs"] == {"1-2": 1.0, "1-3": 1.0, "2-3": 1.0}
    assert res["counts"]["1-2"] == {"agree": 2, "compared": 2}
    lp = criterion_alignment(ITEMS, "lpips", "human_preservation")  # lpips lower is better
    # 1-2: item0 0.1 < 0.5 and 5 > 1 agree; item1 lpips tie (0.2, 0.2) → disagreement
    assert lp["pairs"]["1-2"] == 0.5
    with pytest.raises(ValueError, match="no known direction"):
        criterion_alignment(ITEMS, "mystery", "human_preservation")


def test_global_only_and_degenerate_files_are_clear_errors() -> None:
    global_only = [ITEMS[2], item(5, entry(0, 0.1, 1), entry(0, 0.2, 2))]
    with pytest.raises(CalibrationError, match="global items only"):
        human_alignment(global_only)
    with pytest.raises(CalibrationError, match="global items only"):
        gt_test(global_only)
    # with explicit bounds (e.g. fitted on a mixed file) the protocol runs
    res = human_alignment(global_only, normalization=reference_normalization(ITEMS))
    # item2: c1 2.25 > c2 1.25 but humans 1 < 2; item5: 0.1 < 0.2 and humans 1 < 2
    assert res["pairs"]["1-2"] == 0.5
    same_quality = [item(0, entry(-0.1, 0.2, 1), entry(-0.3, 0.2, 2))]
    with pytest.raises(CalibrationError, match=r"edit_quality: all 2 eligible values equal 0\.2"):
        human_alignment(same_quality)
    with pytest.raises(ValueError, match="items must not be empty"):
        human_alignment([])
    with pytest.raises(TypeError, match="items must be a list"):
        human_alignment({"index": 0})  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"index=7 edited_image1: missing 'preservation'"):
        reference_normalization([item(7, {"user_overall_quality": 1, "edit_quality": 0.2})])
    with pytest.raises(DataError, match="must be finite"):
        reference_normalization([item(7, entry(float("nan"), 0.2, 1))])


def test_reference_entry_from_sample_score() -> None:
    score = SampleScore(
        "s", "c", s_size=1.0, s_position=0.5, s_region=1.5, s_modify=0.2, s_preserve=0.05
    )
    assert reference_entry(score) == {
        "preservation": -0.05,
        "edit_quality": 0.2,
        "position": 0.5,
        "size": 1.0,
    }
    glob = SampleScore(
        "s", "c", s_size=1.0, s_position=1.0, s_region=2.0, s_modify=0.3, s_preserve=None
    )
    assert reference_entry(glob)["preservation"] == 0.0
    with pytest.raises(ValueError, match="not an ok, judged sample"):
        reference_entry(SampleScore("s", "c", status="error", error="boom"))
