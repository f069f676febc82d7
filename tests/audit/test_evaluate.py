"""Pure rule evaluation: every rule kind, pass and fail, against hand-computed values."""

from __future__ import annotations

from typing import Any

import pytest

from bpm_lib.audit.evaluate import (
    AUDIT_SET,
    Baseline,
    RuleResult,
    SubjectResult,
    check_bound,
    check_data_digest,
    check_failed,
    check_regression,
    evaluate_rules,
    overall_verdict,
    regression,
    subject_verdicts,
)
from bpm_lib.audit.policy import FailedSamplesPolicy, RegressionPolicy, RulesPolicy

CHAMP = SubjectResult(
    alias="champion", version="3",
    means={"bpm": 1.20, "s_modify": 0.30, "s_preserve": 0.05, "s_region": 1.9},
    means_by_edit_type={"add": {"bpm": 1.10, "s_preserve": 0.04}, "remove": {"bpm": 1.30, "s_preserve": None}},
    samples_total=10, samples_scored=9, samples_failed=1,
)
CHALL = SubjectResult(
    alias="challenger", version="4",
    means={"bpm": 1.05, "s_modify": 0.35, "s_preserve": 0.09, "s_region": None},
    means_by_edit_type={"add": {"bpm": 0.70}},
    samples_total=10, samples_scored=7, samples_failed=3,
)


def _one(results: list[RuleResult], **match: Any) -> RuleResult:
    found = [r for r in results if all(getattr(r, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


@pytest.mark.parametrize(
    ("kind", "value", "threshold", "verdict"),
    [("min", 1.0, 0.9, "pass"), ("min", 0.9, 0.9, "pass"), ("min", 0.89, 0.9, "fail"),
     ("max", 0.05, 0.08, "pass"), ("max", 0.08, 0.08, "pass"), ("max", 0.081, 0.08, "fail"),
     ("min", None, 0.9, "fail"), ("max", float("nan"), 1.0, "fail")],
)
def test_check_bound(kind: Any, value: Any, threshold: float, verdict: str) -> None:
    r = check_bound(kind, "champion", "bpm", value, threshold)
    assert (r.rule, r.verdict, r.threshold, r.metric) == (kind, verdict, threshold, "bpm")
    assert r.value == (None if value is None or value != value else value)
    if value is None:
        assert "no bpm value" in r.detail


def test_check_bound_per_edit_type_and_bad_kind() -> None:
    r = check_bound("max", "c", "s_preserve", 0.1, 0.08, edit_type="add")
    assert (r.rule, r.edit_type, r.verdict, r.label) == ("max_by_edit_type", "add", "fail", "max by edit type s_preserve [add]")
    assert "on add edits" in r.detail
    with pytest.raises(ValueError, match="kind must be 'min' or 'max', got 'avg'"):
        check_bound("avg", "c", "bpm", 1.0, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("metric", "value", "baseline", "expected"),
    [("bpm", 1.0, 1.2, 0.2), ("bpm", 1.3, 1.2, -0.1), ("s_modify", 0.2, 0.2, 0.0),
     ("s_preserve", 0.09, 0.05, 0.04), ("s_preserve", 0.03, 0.05, -0.02)],
)
def test_regression_direction(metric: str, value: float, baseline: float, expected: float) -> None:
    assert regression(metric, value, baseline) == pytest.approx(expected)


def test_regression_unknown_metric() -> None:
    with pytest.raises(ValueError, match="metric must be one of"):
        regression("lpips", 1.0, 1.0)


def test_check_regression_pass_fail_and_missing() -> None:
    ok = check_regression("previous", "champion", "bpm", 1.15, 1.20, 0.05, "run x")
    assert ok.verdict == "pass" and ok.value == pytest.approx(0.05) and ok.rule == "regression_vs_previous"
    bad = check_regression("champion", "challenger", "bpm", 1.05, 1.20, 0.10, "champion")
    assert bad.verdict == "fail" and bad.value == pytest.approx(0.15) and "more than the allowed 0.1" in bad.detail
    better = check_regression("previous", "c", "s_preserve", 0.03, 0.05, 0.0, "run x")
    assert better.verdict == "pass" and better.value == pytest.approx(-0.02)
    assert check_regression("previous", "c", "bpm", None, 1.0, 1.0, "x").verdict == "fail"
    assert check_regression("previous", "c", "bpm", 1.0, None, 1.0, "x").verdict == "fail"
    with pytest.raises(ValueError, match="against must be"):
        check_regression("last", "c", "bpm", 1.0, 1.0, 0.0, "x")  # type: ignore[arg-type]


def test_min_samples_and_failed_samples() -> None:
    rules = RulesPolicy(min_samples=8, max_failed_samples=FailedSamplesPolicy(count=2, fraction=0.2))
    results = evaluate_rules(rules, [CHAMP, CHALL])
    assert _one(results, rule="min_samples", subject="champion").verdict == "pass"  # 9 >= 8
    assert _one(results, rule="min_samples", subject="challenger").verdict == "fail"  # 7 < 8
    assert _one(results, rule="max_failed_count", subject="champion").verdict == "pass"  # 1 <= 2
    assert _one(results, rule="max_failed_count", subject="challenger").value == 3.0
    assert _one(results, rule="max_failed_count", subject="challenger").verdict == "fail"
    frac = _one(results, rule="max_failed_fraction", subject="champion")
    assert (frac.value, frac.verdict) == (pytest.approx(0.1), "pass")
    frac = _one(results, rule="max_failed_fraction", subject="challenger")
    assert (frac.value, frac.verdict) == (pytest.approx(0.3), "fail")
    # fraction exactly at the bound passes; nothing evaluated fails
    edge = SubjectResult("x", "1", {}, samples_total=10, samples_failed=2)
    assert check_failed(edge, count=None, fraction=0.2)[0].verdict == "pass"
    empty = SubjectResult("x", "1", {}, samples_total=0)
    assert check_failed(empty, count=None, fraction=0.5)[0].verdict == "fail"
    assert check_failed(empty, count=0, fraction=None)[0].verdict == "pass"


def test_min_max_overall_and_by_edit_type() -> None:
    rules = RulesPolicy(
        min={"bpm": 1.1, "s_region": 1.0},
        max={"s_preserve": 0.08},
        min_by_edit_type={"add": {"bpm": 1.0}, "change color": {"bpm": 0.5}},
        max_by_edit_type={"remove": {"s_preserve": 0.1}},
    )
    results = evaluate_rules(rules, [CHAMP, CHALL])
    assert _one(results, rule="min", metric="bpm", subject="champion").verdict == "pass"
    assert _one(results, rule="min", metric="bpm", subject="challenger").verdict == "fail"
    region = _one(results, rule="min", metric="s_region", subject="challenger")  # value missing
    assert region.verdict == "fail" and region.value is None
    assert _one(results, rule="max", metric="s_preserve", subject="champion").verdict == "pass"
    assert _one(results, rule="max", metric="s_preserve", subject="challenger").verdict == "fail"
    assert _one(results, rule="min_by_edit_type", edit_type="add", subject="champion").verdict == "pass"
    add = _one(results, rule="min_by_edit_type", edit_type="add", subject="challenger")
    assert (add.value, add.verdict) == (0.70, "fail")
    # an edit type without scored samples fails: the bound is not shown to hold
    color = _one(results, rule="min_by_edit_type", edit_type="change color", subject="champion")
    assert color.verdict == "fail" and "no bpm value on change color edits" in color.detail
    # remove has a sample but no preservation value (e.g. global-like) → fail, no value
    assert _one(results, rule="max_by_edit_type", edit_type="remove", subject="champion").verdict == "fail"
    assert len(results) == 2 * (2 + 1 + 2 + 1)


def test_regression_vs_previous_and_champion() -> None:
    rules = RulesPolicy(max_regression=RegressionPolicy(vs_previous={"bpm": 0.05, "s_preserve": 0.01},
                                                        vs_champion={"bpm": 0.10, "s_modify": 0.0}))
    previous = {
        "champion": Baseline(run_id="r1", version="3", means={"bpm": 1.22, "s_preserve": 0.045}, date="2025-01-01"),
        "challenger": None,
    }
    results = evaluate_rules(rules, [CHAMP, CHALL], champion="champion", previous=previous)
    prev_bpm = _one(results, rule="regression_vs_previous", subject="champion", metric="bpm")
    assert prev_bpm.verdict == "pass" and prev_bpm.value == pytest.approx(0.02) and "r1" in prev_bpm.detail
    prev_pres = _one(results, rule="regression_vs_previous", subject="champion", metric="s_preserve")
    assert prev_pres.verdict == "pass" and prev_pres.value == pytest.approx(0.005)
    first = _one(results, rule="regression_vs_previous", subject="challenger", metric="bpm")
    assert first.verdict == "pass" and first.value is None and "no earlier comparable audit" in first.detail
    vs_champ = _one(results, rule="regression_vs_champion", subject="challenger", metric="bpm")
    assert vs_champ.verdict == "fail" and vs_champ.value == pytest.approx(0.15)
    modify = _one(results, rule="regression_vs_champion", subject="challenger", metric="s_modify")
    assert modify.verdict == "pass" and modify.value == pytest.approx(-0.05)  # challenger modifies more
    assert not [r for r in results if r.rule == "regression_vs_champion" and r.subject == "champion"]
    # a previous audit that regressed past the bound fails
    worse = {"champion": Baseline("r0", "2", {"bpm": 1.40, "s_preserve": 0.03})}
    res2 = evaluate_rules(rules, [CHAMP, CHALL], champion="champion", previous=worse)
    assert _one(res2, rule="regression_vs_previous", subject="champion", metric="bpm").verdict == "fail"
    assert _one(res2, rule="regression_vs_previous", subject="champion", metric="s_preserve").verdict == "fail"


def test_champion_must_be_a_subject_for_champion_rules() -> None:
    rules = RulesPolicy(max_regression=RegressionPolicy(vs_champion={"bpm": 0.1}))
    with pytest.raises(ValueError, match="champion must name one of the subjects"):
        evaluate_rules(rules, [CHALL], champion="champion")


def test_data_digest_rule_and_verdicts() -> None:
    assert check_data_digest("sha256:a", "sha256:a").verdict == "pass"
    bad = check_data_digest("sha256:a", "sha256:b")
    assert bad.verdict == "fail" and bad.subject == AUDIT_SET and "the data changed" in bad.detail
    assert check_data_digest("sha256:a", None).verdict == "fail"
    rules = RulesPolicy(min={"bpm": 1.0})
    ok = evaluate_rules(rules, [CHAMP, CHALL], expected_digest="sha256:a", actual_digest="sha256:a")
    assert overall_verdict(ok) == "pass"
    assert subject_verdicts(ok, ["champion", "challenger"]) == {"champion": "pass", "challenger": "pass"}
    changed = evaluate_rules(rules, [CHAMP, CHALL], expected_digest="sha256:a", actual_digest="sha256:b")
    assert overall_verdict(changed) == "fail"
    # data that is not the frozen set fails every subject
    assert subject_verdicts(changed, ["champion", "challenger"]) == {"champion": "fail", "challenger": "fail"}
    one_bad = evaluate_rules(RulesPolicy(min={"bpm": 1.1}), [CHAMP, CHALL])
    assert subject_verdicts(one_bad, ["champion", "challenger"]) == {"champion": "pass", "challenger": "fail"}


def test_subject_from_summary_and_type_checks() -> None:
    summary = {"means": {"bpm": 1.0}, "means_by_edit_type": {"add": {"bpm": 0.5}}, "samples_total": 4,
               "samples_scored": 3, "samples_failed": 1}
    s = SubjectResult.from_summary("champion", 7, summary)  # type: ignore[arg-type]
    assert (s.version, s.means["bpm"], s.means_by_edit_type["add"]["bpm"], s.samples_failed) == ("7", 1.0, 0.5, 1)
    with pytest.raises(TypeError, match="rules must be a RulesPolicy"):
        evaluate_rules({"min": {"bpm": 1}}, [s])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"subjects\[0\] must be a SubjectResult"):
        evaluate_rules(RulesPolicy(min={"bpm": 1}), [summary])  # type: ignore[list-item]


def test_rule_result_to_dict_has_the_report_fields() -> None:
    r = check_bound("min", "champion", "bpm", 1.0, 0.9)
    d = r.to_dict()
    assert {"rule", "subject", "value", "threshold", "verdict", "detail"} <= set(d)
    assert d["verdict"] == "pass" and r.passed
