"""Aggregation and calibration (BPM_SPEC §6), against hand-computed values."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bpm_lib.aggregate import (
    HIGHER_IS_BETTER,
    apply_calibration,
    calibration_id,
    fit_calibration,
    load_calibration,
    save_calibration,
    score_pool,
    summarize,
)
from bpm_lib.errors import CalibrationError
from bpm_lib.types import Calibration, SampleScore


def ok(
    sample_id: str,
    d: float | None,
    m: float,
    region: float = 2.0,
    *,
    candidate: str = "A",
    edit_type: str = "replace",
    case: str = "standard",
    meaningless: bool = False,
) -> SampleScore:
    size = 1.0
    position = region - size
    return SampleScore(
        sample_id=sample_id,
        candidate=candidate,
        case="global" if d is None else case,
        edit_type="global" if d is None else edit_type,
        s_size=size,
        s_position=position,
        s_region=region,
        s_modify=m,
        s_preserve=d,
        meaningless=meaningless,
    )


def err(sample_id: str, candidate: str = "A") -> SampleScore:
    return SampleScore(
        sample_id=sample_id, candidate=candidate, status="error", error="detector failed"
    )


# p = -d: -0.1, -0.2, -0.4 eligible; d = 0 (p = 0) and d = 1 (p = -1) left out of the bounds
POOL = [
    ok("s1", 0.1, 0.3),
    ok("s2", 0.2, 0.1, region=1.0),
    ok("s3", 0.4, 0.5, region=0.5),
    ok("s4", 0.0, 0.2),
    ok("s5", 1.0, 0.2),
    ok("g1", None, 0.25),
    err("s6"),
]


def test_fit_calibration_reference_rules() -> None:
    cal = fit_calibration(POOL)
    assert cal.mode == "pool" and cal.alpha == 0.7
    assert (cal.preservation_min, cal.preservation_max) == (-0.4, -0.1)
    assert (cal.modify_min, cal.modify_max) == (0.1, 0.5)  # over every ok S_modify, global included
    assert cal.id.startswith("cal-") and len(cal.id) == 20
    int(cal.id[4:], 16)


def test_apply_calibration_hand_computed() -> None:
    cal = fit_calibration(POOL)
    scored = {s.sample_id: s for s in apply_calibration(POOL, cal)}
    # s2: p_n = (-0.2 + 0.4) / 0.3 = 2/3; m_n = 0; BPM = 0.7 * 2/3 + 0.3 * 1.0
    assert scored["s2"].bpm == pytest.approx(0.7 * 2 / 3 + 0.3)
    # s1: p_n = 1, m_n = 0.5; BPM = 0.7 * 1.5 + 0.3 * 2
    assert scored["s1"].bpm == pytest.approx(1.65)
    # s3: p_n = 0, m_n = 1, region 0.5
    assert scored["s3"].bpm == pytest.approx(0.7 + 0.15)
    # s4 (d = 0 left out of the bounds): p_n = 0.4 / 0.3 > 1, not clipped
    assert scored["s4"].bpm == pytest.approx(0.7 * (4 / 3 + 0.25) + 0.6)
    # s5 (d = 1): p_n = -0.6 / 0.3 = -2, not clipped
    assert scored["s5"].bpm == pytest.approx(0.7 * (-2 + 0.25) + 0.6)
    # global: α = 1, p_n = 1: BPM = 1 + m_n = 1 + 0.15 / 0.4
    assert scored["g1"].bpm == pytest.approx(1.375)
    assert scored["g1"].alpha == 1.0 and scored["s1"].alpha == 0.7
    assert all(s.calibration_id == cal.id for s in scored.values() if s.ok)
    assert scored["s6"] is POOL[-1]  # error samples untouched
    assert all(s.bpm is None for s in POOL)  # input unchanged


def test_apply_calibration_alpha_override() -> None:
    cal = fit_calibration(POOL)
    scored = {s.sample_id: s for s in apply_calibration(POOL, cal, alpha=0.0)}
    assert scored["s2"].bpm == pytest.approx(1.0)  # S_region only
    assert scored["g1"].bpm == pytest.approx(1.375)  # global keeps α = 1
    with pytest.raises(ValueError, match="alpha must be in"):
        apply_calibration(POOL, cal, alpha=1.5)


def test_degenerate_pools_are_clear_errors() -> None:
    with pytest.raises(CalibrationError, match="preservation bounds: no eligible values"):
        fit_calibration([ok("g1", None, 0.1), ok("g2", None, 0.3)])  # global only
    with pytest.raises(CalibrationError, match="preservation bounds: no eligible values"):
        fit_calibration([ok("a", 0.0, 0.1), ok("b", 1.0, 0.3)])  # only excluded values
    with pytest.raises(
        CalibrationError, match=r"preservation bounds: all 2 eligible values equal -0\.2"
    ):
        fit_calibration([ok("a", 0.2, 0.1), ok("b", 0.2, 0.3)])
    with pytest.raises(CalibrationError, match=r"modify bounds: all 2 eligible values equal 0\.3"):
        fit_calibration([ok("a", 0.2, 0.3), ok("b", 0.1, 0.3)])
    with pytest.raises(CalibrationError, match="no eligible values"):
        fit_calibration([err("a")])
    with pytest.raises(CalibrationError):
        score_pool([])


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="mode"):
        fit_calibration(POOL, mode="rolling")
    with pytest.raises(TypeError, match=r"scores\[0\] must be a SampleScore"):
        fit_calibration([{"sample_id": "x"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="lacks s_modify"):
        fit_calibration([SampleScore("a", "A", s_preserve=0.1)])
    with pytest.raises(TypeError, match="fitted_on"):
        fit_calibration(POOL, fitted_on={"when": object()})


def test_calibration_id_content_hash() -> None:
    a = fit_calibration(
        POOL, mode="frozen", fitted_on={"dataset": "magicbrush", "candidates": ["A"]}
    )
    b = fit_calibration(
        list(POOL), mode="frozen", fitted_on={"candidates": ["A"], "dataset": "magicbrush"}
    )
    assert a.id == b.id  # same content, key order irrelevant
    assert (
        fit_calibration(POOL, mode="frozen", created_at="2025-01-01T00:00:00Z").id
        == fit_calibration(POOL, mode="frozen").id
    )  # created_at is provenance, not content
    ids = {
        a.id,
        fit_calibration(POOL, mode="pool", fitted_on=a.fitted_on).id,
        fit_calibration(POOL, mode="frozen", alpha=0.5, fitted_on=a.fitted_on).id,
        fit_calibration(POOL, mode="frozen", fitted_on={"dataset": "pie"}).id,
        fit_calibration(POOL[1:], mode="frozen", fitted_on=a.fitted_on).id,  # other bounds
    }
    assert len(ids) == 5
    assert a.id == calibration_id(
        preservation_min=-0.4,
        preservation_max=-0.1,
        modify_min=0.1,
        modify_max=0.5,
        mode="frozen",
        alpha=0.7,
        fitted_on={"dataset": "magicbrush", "candidates": ["A"]},
    )


def test_save_load_round_trip_and_tampering(tmp_path: Path) -> None:
    cal = fit_calibration(
        POOL, mode="frozen", fitted_on={"dataset": "magicbrush"}, created_at="2025-01-01"
    )
    path = save_calibration(cal, tmp_path / "cal" / "calibration.json")
    loaded = load_calibration(path)
    assert loaded == cal
    data = json.loads(path.read_text())
    data["modify_max"] = 0.6
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="does not match its content hash"):
        load_calibration(path)
    with pytest.raises(CalibrationError, match="not found"):
        load_calibration(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="not a readable calibration"):
        load_calibration(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text(json.dumps({"id": "cal-x", "mode": "frozen"}))
    with pytest.raises(CalibrationError, match="invalid calibration"):
        load_calibration(tmp_path / "partial.json")
    with pytest.raises(CalibrationError, match="content hash"):
        save_calibration(replace(cal, id="cal-0000000000000000"), tmp_path / "x.json")


bound = st.floats(-5, 5, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(bound, bound, bound, bound, st.floats(0, 1), bound)
def test_calibration_round_trip_property(
    p0: float, p1: float, m0: float, m1: float, alpha: float, delta: float
) -> None:
    import tempfile

    assume(p0 != p1 and m0 != m1)
    fields: dict[str, Any] = {
        "preservation_min": min(p0, p1),
        "preservation_max": max(p0, p1),
        "modify_min": min(m0, m1),
        "modify_max": max(m0, m1),
    }
    cid = calibration_id(**fields, mode="frozen", alpha=alpha)
    cal = Calibration(id=cid, mode="frozen", alpha=alpha, **fields)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_calibration(save_calibration(cal, Path(tmp) / "c.json"))
    assert loaded.id == cid == cal.id
    moved = dict(fields, modify_max=fields["modify_max"] + abs(delta) + 1e-3)
    assert calibration_id(**moved, mode="frozen", alpha=alpha) != cid


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.001, 0.999),
            st.floats(-1, 1),
            st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0]),
            st.booleans(),
        ),
        min_size=2,
        max_size=12,
    ),
    st.floats(0, 1),
)
def test_bpm_within_bounds_for_in_pool_samples(rows: list, alpha: float) -> None:
    scores = [
        ok(f"s{i}", None if glob else d, m, region) for i, (d, m, region, glob) in enumerate(rows)
    ]
    try:
        scored, cal = score_pool(scores, alpha=alpha)
    except CalibrationError:
        return  # degenerate draws (one distinct value) are tested above
    for s in scored:
        assert s.bpm is not None and s.calibration_id == cal.id
        if s.s_preserve is None:
            assert 1.0 - 1e-9 <= s.bpm <= 2.0 + 1e-9
        else:
            assert -1e-9 <= s.bpm <= 2.0 + 1e-9


def test_score_pool_pool_vs_frozen() -> None:
    candidate_a = [ok("s1", 0.1, 0.3, candidate="A"), ok("s2", 0.3, 0.1, candidate="A")]
    candidate_b = [ok("s1", 0.5, 0.6, candidate="B"), ok("s2", 0.05, 0.0, candidate="B")]
    alone, pool_cal = score_pool(candidate_a)
    together, _ = score_pool(candidate_a + candidate_b)
    # pool mode: A's score changes when B joins the pool
    assert alone[0].bpm != pytest.approx(together[0].bpm)
    frozen = fit_calibration(candidate_a, mode="frozen", fitted_on={"dataset": "ref"})
    a_frozen, used = score_pool(candidate_a, calibration=frozen)
    both_frozen, _ = score_pool(candidate_a + candidate_b, calibration=frozen)
    assert used is frozen
    assert [s.bpm for s in a_frozen] == [
        s.bpm for s in both_frozen[:2]
    ]  # stable under frozen bounds
    assert pool_cal.mode == "pool" and pool_cal.id != frozen.id
    # the calibration's α is used unless overridden
    frozen_half = fit_calibration(candidate_a, mode="frozen", alpha=0.5)
    assert score_pool(candidate_a, calibration=frozen_half)[0][0].alpha == 0.5
    assert score_pool(candidate_a, calibration=frozen_half, alpha=0.9)[0][0].alpha == 0.9


def test_summarize() -> None:
    pool = [
        ok("s1", 0.1, 0.3, candidate="A", edit_type="replace"),
        ok("s2", 0.2, 0.1, region=1.0, candidate="A", edit_type="add"),
        ok("s3", 0.4, 0.5, region=0.5, candidate="A", edit_type="add", case="target_not_found"),
        ok("g1", None, 0.25, candidate="A", meaningless=True),
        err("s4", candidate="A"),
        ok("s1", 0.3, 0.2, candidate="B"),
    ]
    scored, cal = score_pool(pool)
    summary = summarize(
        scored, cal, candidate="A", preset="tiny-random", backends={"embedder": "x"}, seconds=1.5
    )
    assert (summary.samples_total, summary.samples_scored, summary.samples_failed) == (5, 4, 1)
    assert (
        summary.calibration_id == cal.id
        and summary.calibration_mode == "pool"
        and summary.alpha == 0.7
    )
    a_scores = [s for s in scored if s.candidate == "A" and s.ok]
    assert summary.means["bpm"] == pytest.approx(sum(s.bpm for s in a_scores) / 4)  # type: ignore[misc]
    assert summary.means["s_modify"] == pytest.approx((0.3 + 0.1 + 0.5 + 0.25) / 4)
    assert summary.means["s_preserve"] == pytest.approx((0.1 + 0.2 + 0.4) / 3)  # global has none
    assert summary.means["s_region"] == pytest.approx((2 + 1 + 0.5 + 2) / 4)
    assert set(summary.means) == {
        "bpm",
        "s_modify",
        "s_preserve",
        "s_region",
        "s_size",
        "s_position",
    }
    assert set(summary.means_by_edit_type) == {"replace", "add", "global"}
    assert summary.means_by_edit_type["add"]["s_modify"] == pytest.approx(0.3)
    assert summary.means_by_edit_type["global"]["s_preserve"] is None
    assert summary.cases == {
        "standard": 2,
        "global": 1,
        "source_not_found": 0,
        "target_not_found": 1,
    }
    assert summary.errors == {"s4": "detector failed"}
    assert summary.meaningless is True
    assert (
        summary.preset == "tiny-random"
        and summary.backends == {"embedder": "x"}
        and summary.seconds == 1.5
    )
    b = summarize(scored, cal, candidate="B")
    assert b.samples_total == 1 and b.meaningless is False
    json.dumps(summary.to_dict(), allow_nan=False)


def test_summarize_edge_cases() -> None:
    scored, cal = score_pool(POOL)
    only_errors = summarize([err("x", candidate="C")], cal, candidate="C")
    assert only_errors.samples_scored == 0 and all(v is None for v in only_errors.means.values())
    assert only_errors.alpha == cal.alpha
    with pytest.raises(CalibrationError, match="calibrated with None"):
        summarize(POOL, cal, candidate="A")  # not calibrated yet
    # a pool that could not be calibrated: sub-scores summarised, no BPM
    uncalibrated = summarize(POOL, None, candidate="A")
    assert uncalibrated.calibration_id == "none" and uncalibrated.calibration_mode == "none"
    assert uncalibrated.means["bpm"] is None
    assert uncalibrated.means["s_modify"] == pytest.approx((0.3 + 0.1 + 0.5 + 0.2 + 0.2 + 0.25) / 6)
    assert uncalibrated.samples_failed == 1
    with pytest.raises(CalibrationError, match="calibrated with 'cal-"):
        summarize(scored, None, candidate="A")
    other = fit_calibration(POOL, mode="frozen")
    with pytest.raises(CalibrationError, match="was calibrated with"):
        summarize(scored, other, candidate="A")


def test_higher_is_better_metadata() -> None:
    assert HIGHER_IS_BETTER["bpm"] is True and HIGHER_IS_BETTER["s_preserve"] is False
    assert set(HIGHER_IS_BETTER) == {
        "bpm",
        "s_modify",
        "s_preserve",
        "s_region",
        "s_size",
        "s_position",
    }


def test_import_stays_cheap() -> None:
    code = (
        "import sys, bpm_lib.judges, bpm_lib.aggregate, bpm_lib.validate\n"
        "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'open_clip', 'mlflow', 'boto3', 'PIL')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
