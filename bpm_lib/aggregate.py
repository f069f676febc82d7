"""Aggregation of sub-scores into BPM (BPM_SPEC §6): normalisation bounds, calibration
artifacts, per-run summaries. Pure numpy/JSON except the two file helpers at the bottom.

Normalisation follows the reference: p = −d; p_min/p_max over the p values other than
exactly 0 and −1; m_min/m_max over every S_modify of the ok samples; p_n and m_n are
min–max scaled; BPM = α·(p_n + m_n) + (1 − α)·S_region.

* No clipping: a sample outside the bounds (another pool's sample under a frozen
  calibration, or a p of exactly 0 or −1, which the bounds ignore) gets p_n/m_n outside
  [0, 1]. Clipping would hide that a frozen calibration no longer fits the data.
* **Differs (global edits):** a global sample has no preservation (``s_preserve`` None);
  its p_n is 1.0 — nothing outside the region to preserve, so nothing was lost — and its
  α is 1.0 (semantic only, as the spec says). The reference stores preservation 0 there,
  which lands at or just above 1 after its normalisation.
* Every calibration has a content-hash id (:func:`calibration_id`); every calibrated
  score carries it, so a reported BPM always names the bounds it was computed with.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import numpy as np

from bpm_lib.errors import CalibrationError
from bpm_lib.types import CASES, Calibration, RunSummary, SampleScore

DEFAULT_ALPHA: Final = 0.7
GLOBAL_ALPHA: Final = 1.0
GLOBAL_PRESERVATION_NORM: Final = 1.0
CALIBRATION_VERSION: Final = 1
# p values the reference leaves out of the preservation bounds.
EXCLUDED_PRESERVATION: Final = (0.0, -1.0)

SCORE_KEYS: Final = ("bpm", "s_modify", "s_preserve", "s_region", "s_size", "s_position")

HIGHER_IS_BETTER: Final[dict[str, bool]] = {
    "bpm": True,
    "s_modify": True,
    "s_preserve": False,  # a distance
    "s_region": True,
    "s_size": True,
    "s_position": True,
}
higher_is_better = HIGHER_IS_BETTER  # torchmetrics-style name


def _check_alpha(alpha: Any, name: str = "alpha") -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(alpha).__name__}")
    value = float(alpha)
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {alpha!r}")
    return value


def _check_scores(scores: Iterable[SampleScore], name: str = "scores") -> list[SampleScore]:
    if isinstance(scores, (str, bytes, Mapping)):
        raise TypeError(f"{name} must be an iterable of SampleScore, got {type(scores).__name__}")
    out = list(scores)
    for i, s in enumerate(out):
        if not isinstance(s, SampleScore):
            raise TypeError(f"{name}[{i}] must be a SampleScore, got {type(s).__name__}")
        if s.ok and (s.s_modify is None or s.s_region is None):
            raise ValueError(
                f"{name}[{i}] ({s.sample_id!r}, {s.candidate!r}) is ok but lacks s_modify or s_region; "
                "judge it first"
            )
    return out


def canonical_json(obj: Any, name: str = "value") -> str:
    """Deterministic JSON (sorted keys, no spaces, no NaN) used for content hashes;
    ``TypeError`` naming ``name`` when ``obj`` is not plain, finite JSON."""
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} is not canonical JSON (plain, finite JSON types only): {e}") from e


def calibration_id(
    *,
    preservation_min: float,
    preservation_max: float,
    modify_min: float,
    modify_max: float,
    mode: str,
    alpha: float,
    version: int = CALIBRATION_VERSION,
    fitted_on: Mapping[str, Any] | None = None,
) -> str:
    """``"cal-" + sha256(canonical JSON of bounds, mode, alpha, version, fitted_on)[:16]``.

    ``created_at`` is not part of the hash: the same bounds fitted twice are the same
    calibration.
    """
    content = {
        "bounds": {
            "preservation_min": float(preservation_min),
            "preservation_max": float(preservation_max),
            "modify_min": float(modify_min),
            "modify_max": float(modify_max),
        },
        "mode": mode,
        "alpha": float(alpha),
        "version": int(version),
        "fitted_on": dict(fitted_on or {}),
    }
    return (
        "cal-"
        + hashlib.sha256(
            canonical_json(content, "calibration content").encode("utf-8")
        ).hexdigest()[:16]
    )


def _id_of(cal: Calibration) -> str:
    return calibration_id(
        preservation_min=cal.preservation_min,
        preservation_max=cal.preservation_max,
        modify_min=cal.modify_min,
        modify_max=cal.modify_max,
        mode=cal.mode,
        alpha=cal.alpha,
        version=cal.version,
        fitted_on=cal.fitted_on,
    )


def _bounds(values: Sequence[float], what: str, rule: str) -> tuple[float, float]:
    if not values:
        raise CalibrationError(f"cannot fit {what} bounds: no eligible values ({rule})")
    lo, hi = min(values), max(values)
    if not hi > lo:
        raise CalibrationError(
            f"cannot fit {what} bounds: all {len(values)} eligible values equal {lo!r} "
            f"(max == min, {rule}); a pool needs at least two different values"
        )
    return float(lo), float(hi)


def fit_calibration(
    scores: Iterable[SampleScore],
    *,
    mode: str = "pool",
    alpha: float = DEFAULT_ALPHA,
    fitted_on: Mapping[str, Any] | None = None,
    created_at: str | None = None,
) -> Calibration:
    """Fit normalisation bounds on the ok samples of ``scores`` (BPM_SPEC §6).

    ``mode`` ``pool`` is for scoring that very pool (paper parity); ``frozen`` makes an
    artifact to reuse on later runs (``fitted_on`` should then say what the reference
    pool was: dataset, candidates, digests). Raises :class:`CalibrationError` when a
    bound cannot be fitted (no eligible value, or max == min).
    """
    if mode not in ("pool", "frozen"):
        raise ValueError(f"mode must be 'pool' or 'frozen', got {mode!r}")
    alpha_f = _check_alpha(alpha)
    if fitted_on is not None and not isinstance(fitted_on, Mapping):
        raise TypeError(f"fitted_on must be a mapping or None, got {type(fitted_on).__name__}")
    fitted = dict(fitted_on or {})
    canonical_json(fitted, "fitted_on")  # fail early on values that cannot be hashed/stored
    ok = [s for s in _check_scores(scores) if s.ok]
    p_values = [-float(s.s_preserve) for s in ok if s.s_preserve is not None]
    eligible_p = [p for p in p_values if p not in EXCLUDED_PRESERVATION]
    m_values = [float(s.s_modify) for s in ok if s.s_modify is not None]
    rule_p = (
        f"p = -s_preserve of {len(p_values)} ok non-global samples, values exactly 0 and -1 left out; "
        f"{len(ok)} ok samples in all"
    )
    p_min, p_max = _bounds(eligible_p, "preservation", rule_p)
    m_min, m_max = _bounds(m_values, "modify", f"s_modify of {len(ok)} ok samples")
    cid = calibration_id(
        preservation_min=p_min,
        preservation_max=p_max,
        modify_min=m_min,
        modify_max=m_max,
        mode=mode,
        alpha=alpha_f,
        version=CALIBRATION_VERSION,
        fitted_on=fitted,
    )
    return Calibration(
        id=cid,
        mode=mode,  # type: ignore[arg-type]
        preservation_min=p_min,
        preservation_max=p_max,
        modify_min=m_min,
        modify_max=m_max,
        alpha=alpha_f,
        fitted_on=fitted,
        created_at=created_at,
        version=CALIBRATION_VERSION,
    )


def normalized_components(score: SampleScore, calibration: Calibration) -> tuple[float, float]:
    """``(p_n, m_n)`` of one ok sample under ``calibration`` (p_n = 1.0 for global)."""
    if not score.ok or score.s_modify is None:
        raise ValueError(
            f"score ({score.sample_id!r}, {score.candidate!r}) is not an ok, judged sample"
        )
    if score.s_preserve is None:
        p_n = GLOBAL_PRESERVATION_NORM
    else:
        p = -float(score.s_preserve)
        p_n = (p - calibration.preservation_min) / (
            calibration.preservation_max - calibration.preservation_min
        )
    m_n = (float(score.s_modify) - calibration.modify_min) / (
        calibration.modify_max - calibration.modify_min
    )
    return p_n, m_n


def bpm_value(p_n: float, m_n: float, s_region: float, alpha: float) -> float:
    """BPM = α·(p_n + m_n) + (1 − α)·S_region (BPM_SPEC §6)."""
    return alpha * (p_n + m_n) + (1.0 - alpha) * s_region


def apply_calibration(
    scores: Iterable[SampleScore],
    calibration: Calibration,
    alpha: float | None = None,
) -> list[SampleScore]:
    """New SampleScores with ``bpm``, ``alpha`` and ``calibration_id`` set on the ok ones.

    ``alpha`` overrides ``calibration.alpha`` for local edits; global edits (no
    ``s_preserve``) always use α = 1.0. Error samples are returned untouched. The input
    is not modified.
    """
    if not isinstance(calibration, Calibration):
        raise TypeError(f"calibration must be a Calibration, got {type(calibration).__name__}")
    local_alpha = calibration.alpha if alpha is None else _check_alpha(alpha)
    out: list[SampleScore] = []
    for s in _check_scores(scores):
        if not s.ok:
            out.append(s)
            continue
        a = GLOBAL_ALPHA if s.s_preserve is None else local_alpha
        p_n, m_n = normalized_components(s, calibration)
        value = bpm_value(p_n, m_n, float(s.s_region), a)  # type: ignore[arg-type]
        out.append(replace(s, bpm=value, alpha=a, calibration_id=calibration.id))
    return out


def score_pool(
    scores: Iterable[SampleScore],
    *,
    calibration: Calibration | None = None,
    alpha: float | None = None,
) -> tuple[list[SampleScore], Calibration]:
    """Score a pool: fit pool bounds on it when ``calibration`` is None, else apply the
    given (frozen) calibration. ``alpha`` defaults to the calibration's α (0.7 when
    fitting); passing it overrides."""
    items = _check_scores(scores)
    if calibration is None:
        calibration = fit_calibration(
            items, mode="pool", alpha=DEFAULT_ALPHA if alpha is None else alpha
        )
    return apply_calibration(items, calibration, alpha=alpha), calibration


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return float(math.fsum(vals) / len(vals))


def _means(scores: Sequence[SampleScore]) -> dict[str, float | None]:
    return {key: _mean(getattr(s, key) for s in scores) for key in SCORE_KEYS}


UNCALIBRATED: Final = "none"


def summarize(
    scores: Iterable[SampleScore],
    calibration: Calibration | None,
    *,
    candidate: str,
    preset: str | None = None,
    backends: Mapping[str, Any] | None = None,
    seconds: float | None = None,
) -> RunSummary:
    """Summary of ``candidate``'s calibrated scores (other candidates' are ignored).

    Means are over ok samples with a value (None when there is none); ``cases`` counts
    every case of :data:`bpm_lib.types.CASES` (0 included); ``errors`` maps sample id to
    the error of failed samples. Raises :class:`CalibrationError` when an ok sample was
    not calibrated with ``calibration``.

    ``calibration`` None is for a pool that could not be calibrated (degenerate): the
    sub-score means are still reported, the BPM mean is None and ``calibration_id`` /
    ``calibration_mode`` are ``"none"``; every ok score must then be uncalibrated.
    """
    if calibration is not None and not isinstance(calibration, Calibration):
        raise TypeError(
            f"calibration must be a Calibration or None, got {type(calibration).__name__}"
        )
    if not isinstance(candidate, str) or not candidate:
        raise ValueError(f"candidate must be a non-empty string, got {candidate!r}")
    mine = [s for s in _check_scores(scores) if s.candidate == candidate]
    ok = [s for s in mine if s.ok]
    expected_id = calibration.id if calibration is not None else None
    for s in ok:
        if s.calibration_id != expected_id:
            raise CalibrationError(
                f"sample {s.sample_id!r} of {candidate!r} was calibrated with {s.calibration_id!r}, "
                f"not {expected_id!r}; apply the calibration before summarising"
            )
    local_alphas = {float(s.alpha) for s in ok if s.s_preserve is not None and s.alpha is not None}
    if len(local_alphas) > 1:
        raise ValueError(
            f"scores of {candidate!r} mix several alpha values: {sorted(local_alphas)}"
        )
    default_alpha = calibration.alpha if calibration is not None else DEFAULT_ALPHA
    alpha = local_alphas.pop() if local_alphas else default_alpha

    by_type: dict[str, list[SampleScore]] = {}
    for s in ok:
        by_type.setdefault(s.edit_type or "unknown", []).append(s)
    cases = dict.fromkeys(CASES, 0)
    for s in ok:
        if s.case is not None:
            cases[s.case] += 1
    errors = {s.sample_id: str(s.error) for s in mine if not s.ok}
    return RunSummary(
        candidate=candidate,
        samples_total=len(mine),
        samples_scored=len(ok),
        samples_failed=len(mine) - len(ok),
        calibration_id=calibration.id if calibration is not None else UNCALIBRATED,
        calibration_mode=calibration.mode if calibration is not None else UNCALIBRATED,
        alpha=alpha,
        preset=preset,
        means=_means(ok),
        means_by_edit_type={k: _means(v) for k, v in sorted(by_type.items())},
        cases=cases,
        errors=errors,
        meaningless=any(s.meaningless for s in mine),
        backends=dict(backends or {}),
        seconds=seconds,
    )


# --------------------------------------------------------------------------- file I/O


def save_calibration(calibration: Calibration, path: str | os.PathLike[str]) -> Path:
    """Write ``calibration`` as JSON (atomically). Refuses one whose id is not its hash."""
    from bpm_lib.io.jsonl import write_json_atomic

    if not isinstance(calibration, Calibration):
        raise TypeError(f"calibration must be a Calibration, got {type(calibration).__name__}")
    expected = _id_of(calibration)
    if calibration.id != expected:
        raise CalibrationError(
            f"calibration id {calibration.id!r} does not match its content hash {expected!r}"
        )
    return write_json_atomic(path, calibration.to_dict())


def load_calibration(path: str | os.PathLike[str]) -> Calibration:
    """Read a calibration JSON written by :func:`save_calibration` and verify that its id
    is the hash of its content (:class:`CalibrationError` otherwise)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CalibrationError(f"{p}: calibration file not found") from e
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CalibrationError(f"{p}: not a readable calibration JSON ({e})") from e
    try:
        cal = Calibration.from_dict(data)
    except (TypeError, ValueError, KeyError) as e:
        raise CalibrationError(f"{p}: invalid calibration ({e})") from e
    expected = _id_of(cal)
    if cal.id != expected:
        raise CalibrationError(
            f"{p}: calibration id {cal.id!r} does not match its content hash {expected!r} "
            "(the file was edited or corrupted)"
        )
    return cal
