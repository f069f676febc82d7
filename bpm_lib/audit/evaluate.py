"""Applying an audit policy's rules to evaluation results: pure functions, no I/O.

Every rule gives one :class:`RuleResult` per subject (an audited alias) — ``{rule,
subject, metric, edit_type, value, threshold, verdict, detail}`` — so a report can show
exactly which bound failed, by how much. A bound on a value that could not be measured
(no scored sample, BPM not computed) fails: an audit passes only on evidence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from bpm_lib.aggregate import HIGHER_IS_BETTER
from bpm_lib.audit.policy import RulesPolicy

Verdict = Literal["pass", "fail"]
AUDIT_SET = "audit_set"  # subject of the rules about the data rather than a model


@dataclass(frozen=True)
class SubjectResult:
    """One audited alias: the model version behind it and its evaluation summary
    (the ``RunSummary`` fields that rules read)."""

    alias: str
    version: str
    means: Mapping[str, float | None]
    means_by_edit_type: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)
    samples_total: int = 0
    samples_scored: int = 0
    samples_failed: int = 0

    @classmethod
    def from_summary(cls, alias: str, version: str, summary: Mapping[str, Any]) -> SubjectResult:
        """From a ``RunSummary.to_dict()`` (``summary.json`` of an evaluation)."""
        return cls(alias=alias, version=str(version), means=dict(summary.get("means") or {}),
                   means_by_edit_type={k: dict(v or {}) for k, v in (summary.get("means_by_edit_type") or {}).items()},
                   samples_total=int(summary.get("samples_total", 0)),
                   samples_scored=int(summary.get("samples_scored", 0)),
                   samples_failed=int(summary.get("samples_failed", 0)))


@dataclass(frozen=True)
class Baseline:
    """What an earlier audit measured for a subject (for regression rules)."""

    run_id: str
    version: str
    means: Mapping[str, float | None]
    date: str | None = None
    alias: str | None = None

    def describe(self) -> str:
        when = f" of {self.date}" if self.date else ""
        who = f"{self.alias} v{self.version}" if self.alias else f"v{self.version}"
        return f"previous audit {self.run_id}{when} ({who})"


@dataclass(frozen=True)
class RuleResult:
    rule: str
    subject: str
    value: float | str | None
    threshold: float | str | None
    verdict: Verdict
    detail: str
    metric: str | None = None
    edit_type: str | None = None

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    @property
    def label(self) -> str:
        """``min bpm``, ``min bpm [add]``, ``regression vs previous bpm``, ``min samples``."""
        parts = [self.rule.replace("_", " ")]
        if self.metric:
            parts.append(self.metric)
        if self.edit_type:
            parts.append(f"[{self.edit_type}]")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or math.isinf(f) else f


def _verdict(ok: bool) -> Verdict:
    return "pass" if ok else "fail"


def check_bound(kind: Literal["min", "max"], subject: str, metric: str, value: Any, threshold: float, *,
                edit_type: str | None = None) -> RuleResult:
    """``min``: value ≥ threshold; ``max``: value ≤ threshold; a missing value fails."""
    if kind not in ("min", "max"):
        raise ValueError(f"kind must be 'min' or 'max', got {kind!r}")
    rule = kind if edit_type is None else f"{kind}_by_edit_type"
    where = f" on {edit_type} edits" if edit_type else ""
    v = _finite(value)
    if v is None:
        return RuleResult(rule, subject, None, threshold, "fail",
                          f"no {metric} value{where} (no scored sample or BPM not computed)", metric, edit_type)
    ok = v >= threshold if kind == "min" else v <= threshold
    op = ">=" if kind == "min" else "<="
    detail = f"{metric}{where} {v:.4f} {op if ok else 'violates ' + op} {threshold:g}"
    return RuleResult(rule, subject, v, threshold, _verdict(ok), detail, metric, edit_type)


def regression(metric: str, value: float, baseline: float) -> float:
    """How much worse ``value`` is than ``baseline`` (negative: better), in the metric's units."""
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"metric must be one of {sorted(HIGHER_IS_BETTER)}, got {metric!r}")
    return baseline - value if HIGHER_IS_BETTER[metric] else value - baseline


def check_regression(against: Literal["previous", "champion"], subject: str, metric: str, value: Any,
                     baseline_value: Any, allowed: float, baseline_desc: str) -> RuleResult:
    """Worsening of ``value`` against ``baseline_value`` must not exceed ``allowed``."""
    if against not in ("previous", "champion"):
        raise ValueError(f"against must be 'previous' or 'champion', got {against!r}")
    rule = f"regression_vs_{against}"
    v, b = _finite(value), _finite(baseline_value)
    if v is None:
        return RuleResult(rule, subject, None, allowed, "fail", f"no {metric} value to compare with {baseline_desc}",
                          metric)
    if b is None:
        return RuleResult(rule, subject, None, allowed, "fail", f"{baseline_desc} has no {metric} value", metric)
    worse = regression(metric, v, b)
    ok = worse <= allowed + 1e-12
    direction = "worse" if worse > 0 else "better or equal"
    detail = (f"{metric} {v:.4f} vs {b:.4f} of {baseline_desc}: {abs(worse):.4f} {direction}"
              f"{'' if ok else f', more than the allowed {allowed:g}'}")
    return RuleResult(rule, subject, worse, allowed, _verdict(ok), detail, metric)


def check_min_samples(subject: SubjectResult, minimum: int) -> RuleResult:
    ok = subject.samples_scored >= minimum
    return RuleResult("min_samples", subject.alias, float(subject.samples_scored), float(minimum), _verdict(ok),
                      f"{subject.samples_scored} of {subject.samples_total} samples scored"
                      f"{'' if ok else f', fewer than {minimum}'}")


def check_failed(subject: SubjectResult, *, count: int | None, fraction: float | None) -> list[RuleResult]:
    out = []
    failed, total = subject.samples_failed, subject.samples_total
    if count is not None:
        ok = failed <= count
        out.append(RuleResult("max_failed_count", subject.alias, float(failed), float(count), _verdict(ok),
                              f"{failed} of {total} samples failed{'' if ok else f', more than {count}'}"))
    if fraction is not None:
        if total == 0:
            out.append(RuleResult("max_failed_fraction", subject.alias, None, fraction, "fail",
                                  "no sample was evaluated"))
        else:
            share = failed / total
            ok = share <= fraction + 1e-12
            out.append(RuleResult("max_failed_fraction", subject.alias, share, fraction, _verdict(ok),
                                  f"{failed}/{total} = {share:.3f} of the samples failed"
                                  f"{'' if ok else f', more than {fraction:g}'}"))
    return out


def check_data_digest(expected: str, actual: str | None) -> RuleResult:
    """The evaluated audit set must be the frozen one."""
    ok = actual == expected
    detail = ("audit set digest matches the policy" if ok else
              f"audit set digest {actual or '(unknown)'} differs from the frozen {expected}: the data changed")
    return RuleResult("data_digest", AUDIT_SET, actual, expected, _verdict(ok), detail)


def evaluate_rules(
    rules: RulesPolicy,
    subjects: Sequence[SubjectResult],
    *,
    champion: str | None = None,
    previous: Mapping[str, Baseline | None] | None = None,
    expected_digest: str | None = None,
    actual_digest: str | None = None,
) -> list[RuleResult]:
    """Every rule of ``rules`` applied to every subject, in a stable order.

    ``previous``: alias → the earlier comparable audit's values (None: there is none);
    ``champion``: the alias regression-vs-champion rules compare against (it must be one of
    the subjects when such rules exist); ``expected_digest``: the frozen audit-set digest
    (checked against ``actual_digest`` when given).
    """
    if not isinstance(rules, RulesPolicy):
        raise TypeError(f"rules must be a RulesPolicy, got {type(rules).__name__}")
    subjects = list(subjects)
    for i, s in enumerate(subjects):
        if not isinstance(s, SubjectResult):
            raise TypeError(f"subjects[{i}] must be a SubjectResult, got {type(s).__name__}")
    by_alias = {s.alias: s for s in subjects}
    previous = previous or {}
    results: list[RuleResult] = []
    if expected_digest is not None:
        results.append(check_data_digest(expected_digest, actual_digest))
    champ = None
    if rules.max_regression.vs_champion:
        if champion is None or champion not in by_alias:
            raise ValueError(f"champion must name one of the subjects {sorted(by_alias)}, got {champion!r}")
        champ = by_alias[champion]
    for s in subjects:
        if rules.min_samples is not None:
            results.append(check_min_samples(s, rules.min_samples))
        if rules.max_failed_samples is not None:
            results.extend(check_failed(s, count=rules.max_failed_samples.count,
                                        fraction=rules.max_failed_samples.fraction))
        for metric, bound in rules.min.items():
            results.append(check_bound("min", s.alias, metric, s.means.get(metric), bound))
        for metric, bound in rules.max.items():
            results.append(check_bound("max", s.alias, metric, s.means.get(metric), bound))
        for kind, table in (("min", rules.min_by_edit_type), ("max", rules.max_by_edit_type)):
            for etype, bounds in table.items():
                means = s.means_by_edit_type.get(etype) or {}
                for metric, bound in bounds.items():
                    results.append(check_bound(kind, s.alias, metric, means.get(metric), bound,  # type: ignore[arg-type]
                                               edit_type=etype))
        if rules.max_regression.vs_previous:
            base = previous.get(s.alias)
            for metric, allowed in rules.max_regression.vs_previous.items():
                if base is None:
                    results.append(RuleResult(
                        "regression_vs_previous", s.alias, None, allowed, "pass",
                        f"no earlier comparable audit of this {rules.max_regression.baseline} "
                        "(same model, audit set, calibration and evaluation settings): nothing to regress from",
                        metric))
                else:
                    results.append(check_regression("previous", s.alias, metric, s.means.get(metric),
                                                    base.means.get(metric), allowed, base.describe()))
        if champ is not None and s.alias != champ.alias:
            for metric, allowed in rules.max_regression.vs_champion.items():
                results.append(check_regression("champion", s.alias, metric, s.means.get(metric),
                                                champ.means.get(metric), allowed,
                                                f"champion {champ.alias} (v{champ.version})"))
    return results


def overall_verdict(results: Iterable[RuleResult]) -> Verdict:
    return "pass" if all(r.passed for r in results) else "fail"


def subject_verdicts(results: Sequence[RuleResult], subjects: Iterable[str]) -> dict[str, Verdict]:
    """Per alias: fail when a rule about it failed, or a rule about the audit set did."""
    data_ok = all(r.passed for r in results if r.subject == AUDIT_SET)
    return {a: _verdict(data_ok and all(r.passed for r in results if r.subject == a)) for a in subjects}
