"""Validation protocols of the paper (BPM_SPEC §7), on data in the BPM reference format.

The reference format is a list of items::

    {"index": 0, "instruction": "...", "source_image_path": "...",
     "edited_image1": {"image_path": "...", "user_overall_quality": 4,
                       "preservation": -0.05,   # -d
                       "edit_quality": 0.21,    # S_modify
                       "position": 1, "size": 1,
                       ... other human criteria and baseline metric values},
     "edited_image2": {...}, ...}

Candidates are the ``edited_image<k>`` keys; ``k`` is the candidate number used in pair
names (``"1-2"``). An item is *global* when it has ``"is_global": true`` (or false, to
decide explicitly), otherwise when its preservation is exactly 0 for every candidate
(how the reference stores "not applicable").

Pure: nothing is read or written, and the input items are never modified.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import numpy as np

from bpm_lib.errors import CalibrationError, DataError

DEFAULT_ALPHA: Final = 0.7
REFERENCE_PAIRS: Final[list[tuple[int, int]]] = [(1, 2), (1, 3), (2, 3), (4, 3), (4, 2), (4, 1)]
HUMAN_KEY: Final = "user_overall_quality"
GLOBAL_FLAG: Final = "is_global"
_CANDIDATE_KEY = re.compile(r"^edited_image(\d+)$")
# p values the reference leaves out of the preservation bounds.
EXCLUDED_PRESERVATION: Final = (0.0, -1.0)

# Direction of metrics stored in candidate entries: True = higher is better.
BASELINE_DIRECTIONS: Final[dict[str, bool]] = {
    "bpm": True,
    "preservation": True,  # stored as -d
    "edit_quality": True,
    "position": True,
    "size": True,
    "lpips": False,
    "l1": False,
    "l2": False,
    "clip_score": True,
    "clip_i": True,
    "dino": True,
    "clip_directional": True,
}


# --------------------------------------------------------------------------- reading items


def _check_items(items: Any) -> list[Mapping[str, Any]]:
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise TypeError(
            f"items must be a list of reference items (dicts), got {type(items).__name__}"
        )
    out = list(items)
    for i, item in enumerate(out):
        if not isinstance(item, Mapping):
            raise DataError(f"items[{i}] must be an object, got {type(item).__name__}")
    if not out:
        raise ValueError("items must not be empty")
    return out


def _label(item: Mapping[str, Any], position: int) -> str:
    return f"item index={item['index']!r}" if "index" in item else f"items[{position}]"


def candidates_of(item: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    """Candidate number → entry for one item (``edited_image<k>`` keys), sorted."""
    out: dict[int, Mapping[str, Any]] = {}
    for key, value in item.items():
        m = _CANDIDATE_KEY.match(str(key))
        if m is None:
            continue
        if not isinstance(value, Mapping):
            raise DataError(f"{key} must be an object, got {type(value).__name__}")
        out[int(m.group(1))] = value
    return dict(sorted(out.items()))


def _number(entry: Mapping[str, Any], key: str, where: str) -> float:
    if key not in entry:
        raise DataError(f"{where}: missing {key!r}")
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise DataError(f"{where}: {key!r} must be a number, got {value!r}")
    f = float(value)
    if not math.isfinite(f):
        raise DataError(f"{where}: {key!r} must be finite, got {value!r}")
    return f


def is_global_item(item: Mapping[str, Any]) -> bool:
    """The item's ``is_global`` flag when present, else: every candidate's preservation is
    exactly 0 (the reference's "not applicable")."""
    if GLOBAL_FLAG in item:
        flag = item[GLOBAL_FLAG]
        if not isinstance(flag, bool):
            raise DataError(f"{GLOBAL_FLAG} must be true or false, got {flag!r}")
        return flag
    cands = candidates_of(item)
    if not cands:
        return False
    return all(entry.get("preservation") == 0 for entry in cands.values())


# --------------------------------------------------------------------------- BPM from sub-scores


def reference_normalization(items: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Bounds of the reference: ``preservation_min/max`` over every candidate's
    preservation other than exactly 0 and −1, ``edit_quality_min/max`` over all.
    :class:`CalibrationError` when a bound has no value or max == min (e.g. a file of
    global items only, whose preservation is all 0: pass ``normalization=`` explicitly)."""
    p_vals: list[float] = []
    m_vals: list[float] = []
    for pos, item in enumerate(_check_items(items)):
        for k, entry in candidates_of(item).items():
            where = f"{_label(item, pos)} edited_image{k}"
            p = _number(entry, "preservation", where)
            if p not in EXCLUDED_PRESERVATION:
                p_vals.append(p)
            m_vals.append(_number(entry, "edit_quality", where))
    out: dict[str, float] = {}
    for name, vals, rule in (
        ("preservation", p_vals, "values other than exactly 0 and -1"),
        ("edit_quality", m_vals, "all values"),
    ):
        if not vals:
            raise CalibrationError(
                f"cannot normalise {name}: no eligible values ({rule}) in {len(items)} items"
                + (
                    "; a file of global items only has no preservation to normalise"
                    if name == "preservation"
                    else ""
                )
            )
        lo, hi = min(vals), max(vals)
        if not hi > lo:
            raise CalibrationError(
                f"cannot normalise {name}: all {len(vals)} eligible values equal {lo!r} ({rule})"
            )
        out[f"{name}_min"], out[f"{name}_max"] = lo, hi
    return out


def _check_norm(norm: Any) -> dict[str, float]:
    if not isinstance(norm, Mapping):
        raise TypeError(f"norm must be a mapping of bounds, got {type(norm).__name__}")
    out = {}
    for key in ("preservation_min", "preservation_max", "edit_quality_min", "edit_quality_max"):
        out[key] = _number(norm, key, "norm")
    for name in ("preservation", "edit_quality"):
        if not out[f"{name}_max"] > out[f"{name}_min"]:
            raise ValueError(
                f"norm: {name}_max must exceed {name}_min, got {out[f'{name}_min']}..{out[f'{name}_max']}"
            )
    return out


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise TypeError(f"alpha must be a number in [0, 1], got {type(alpha).__name__}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return float(alpha)


def bpm_from_reference(
    candidate_entry: Mapping[str, Any],
    norm: Mapping[str, float],
    alpha: float = DEFAULT_ALPHA,
    is_global: bool = False,
) -> float:
    """BPM of one candidate entry: α·(p_n + m_n) + (1 − α)·(position + size), α = 1 for
    global items. Reference parity: the stored preservation is normalised as it is, even
    the 0 of a global item."""
    if not isinstance(candidate_entry, Mapping):
        raise TypeError(f"candidate_entry must be a mapping, got {type(candidate_entry).__name__}")
    n = _check_norm(norm)
    a = 1.0 if is_global else _check_alpha(alpha)
    p = _number(candidate_entry, "preservation", "candidate_entry")
    m = _number(candidate_entry, "edit_quality", "candidate_entry")
    p_n = (p - n["preservation_min"]) / (n["preservation_max"] - n["preservation_min"])
    m_n = (m - n["edit_quality_min"]) / (n["edit_quality_max"] - n["edit_quality_min"])
    if a == 1.0:
        return p_n + m_n  # position/size do not count (and need not be present)
    region = _number(candidate_entry, "position", "candidate_entry") + _number(
        candidate_entry, "size", "candidate_entry"
    )
    return a * (p_n + m_n) + (1.0 - a) * region


def reference_entry(score: Any) -> dict[str, float]:
    """The reference-format sub-scores of a judged :class:`~bpm_lib.types.SampleScore`
    (preservation = −d, 0 for global edits as the reference stores it)."""
    from bpm_lib.types import SampleScore

    if not isinstance(score, SampleScore):
        raise TypeError(f"score must be a SampleScore, got {type(score).__name__}")
    if not score.ok or score.s_modify is None or score.s_size is None or score.s_position is None:
        raise ValueError(
            f"score ({score.sample_id!r}, {score.candidate!r}) is not an ok, judged sample"
        )
    return {
        "preservation": 0.0 if score.s_preserve is None else -float(score.s_preserve),
        "edit_quality": float(score.s_modify),
        "position": float(score.s_position),
        "size": float(score.s_size),
    }


# --------------------------------------------------------------------------- protocols


def _direction(metric: str, higher_is_better: bool | None) -> bool:
    if higher_is_better is not None:
        return bool(higher_is_better)
    if metric not in BASELINE_DIRECTIONS:
        raise ValueError(
            f"metric {metric!r} has no known direction (known: {sorted(BASELINE_DIRECTIONS)}); "
            "pass higher_is_better=True/False"
        )
    return BASELINE_DIRECTIONS[metric]


def _item_scores(
    items: Sequence[Mapping[str, Any]],
    *,
    alpha: float,
    metric: str | None,
    norm: Mapping[str, float] | None,
    higher_is_better: bool | None,
) -> list[dict[int, float]]:
    """Per item: candidate number → score oriented so that higher is better."""
    sign = 1.0 if metric is None else (1.0 if _direction(metric, higher_is_better) else -1.0)
    out: list[dict[int, float]] = []
    for pos, item in enumerate(items):
        glob = is_global_item(item)
        scores: dict[int, float] = {}
        for k, entry in candidates_of(item).items():
            where = f"{_label(item, pos)} edited_image{k}"
            if metric is None:
                try:
                    scores[k] = bpm_from_reference(entry, norm or {}, alpha, glob)
                except DataError as e:
                    raise DataError(f"{where}: {e}") from e
            else:
                scores[k] = sign * _number(entry, metric, where)
        out.append(scores)
    return out


def _human_ratings(items: Sequence[Mapping[str, Any]], human_key: str) -> list[dict[int, float]]:
    out: list[dict[int, float]] = []
    for pos, item in enumerate(items):
        ratings = {}
        for k, entry in candidates_of(item).items():
            if human_key in entry:
                ratings[k] = _number(entry, human_key, f"{_label(item, pos)} edited_image{k}")
        out.append(ratings)
    return out


def _check_pairs(pairs: Any, present: Iterable[int]) -> list[tuple[int, int]]:
    if pairs is None:
        return list(itertools.combinations(sorted(set(present)), 2))
    out = []
    for pair in pairs:
        if (
            not isinstance(pair, (tuple, list))
            or len(pair) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
            or pair[0] == pair[1]
        ):
            raise ValueError(
                f"pairs must hold pairs (i, j) of two different candidate numbers, got {pair!r}"
            )
        out.append((int(pair[0]), int(pair[1])))
    if not out:
        raise ValueError("pairs must not be empty")
    return out


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _pair_agreement(
    scores: Sequence[Mapping[int, float]],
    humans: Sequence[Mapping[int, float]],
    pairs: Sequence[tuple[int, int]],
) -> tuple[dict[str, float | None], dict[str, dict[str, int]], float | None]:
    rates: dict[str, float | None] = {}
    counts: dict[str, dict[str, int]] = {}
    for i, j in pairs:
        agree = compared = 0
        for s, h in zip(scores, humans, strict=True):
            if i not in s or j not in s or i not in h or j not in h:
                continue
            human_sign = _sign(h[i] - h[j])
            if human_sign == 0:
                continue  # humans tie: no preference to agree with
            compared += 1
            if _sign(s[i] - s[j]) == human_sign:  # a score tie (0) never agrees
                agree += 1
        name = f"{i}-{j}"
        rates[name] = agree / compared if compared else None
        counts[name] = {"agree": agree, "compared": compared}
    valid = [r for r in rates.values() if r is not None]
    mean = math.fsum(valid) / len(valid) if valid else None
    return rates, counts, mean


def human_alignment(
    items: Sequence[Mapping[str, Any]],
    *,
    alpha: float = DEFAULT_ALPHA,
    pairs: Sequence[tuple[int, int]] | None = None,
    metric: str | None = None,
    higher_is_better: bool | None = None,
    normalization: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Pairwise agreement with human overall-quality ratings (paper Tab. 1/2).

    For each pair (i, j) over all items holding both: items whose human ratings tie are
    skipped; agreement when sign(score_i − score_j) == sign(human_i − human_j), a score
    tie counting as disagreement. A pair with no comparable item is None and left out of
    the mean. Default ``pairs``: every pair of candidate numbers present. ``metric``
    names another key of the entries (a baseline) to score instead of BPM; its direction
    comes from :data:`BASELINE_DIRECTIONS` or ``higher_is_better``. ``normalization``
    overrides the bounds fitted on ``items`` by :func:`reference_normalization`.
    """
    data = _check_items(items)
    a = _check_alpha(alpha)
    norm: dict[str, float] | None = None
    if metric is None:
        norm = (
            _check_norm(normalization)
            if normalization is not None
            else reference_normalization(data)
        )
    scores = _item_scores(
        data, alpha=a, metric=metric, norm=norm, higher_is_better=higher_is_better
    )
    humans = _human_ratings(data, HUMAN_KEY)
    present = {k for s in scores for k in s}
    checked_pairs = _check_pairs(pairs, present)
    rates, counts, mean = _pair_agreement(scores, humans, checked_pairs)
    return {
        "pairs": rates,
        "counts": counts,
        "mean": mean,
        "metric": metric or "bpm",
        "normalization": norm,
        "alpha": a,
        "samples": len(data),
    }


def gt_test(
    items: Sequence[Mapping[str, Any]],
    *,
    alpha: float = DEFAULT_ALPHA,
    metric: str | None = None,
    higher_is_better: bool | None = None,
    normalization: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Ground-truth test (paper Tab. 4): how often each candidate gets the top score.

    An item whose top score is shared by several candidates counts in ``ties``, not as a
    win. ``fractions`` divide wins by the number of items.
    """
    data = _check_items(items)
    a = _check_alpha(alpha)
    norm: dict[str, float] | None = None
    if metric is None:
        norm = (
            _check_norm(normalization)
            if normalization is not None
            else reference_normalization(data)
        )
    scores = _item_scores(
        data, alpha=a, metric=metric, norm=norm, higher_is_better=higher_is_better
    )
    wins = {str(k): 0 for k in sorted({k for s in scores for k in s})}
    ties = 0
    for s in scores:
        if not s:
            continue
        top = max(s.values())
        best = [k for k, v in s.items() if v == top]
        if len(best) == 1:
            wins[str(best[0])] += 1
        else:
            ties += 1
    return {
        "wins": wins,
        "ties": ties,
        "fractions": {k: v / len(data) for k, v in wins.items()},
        "metric": metric or "bpm",
        "alpha": a,
        "samples": len(data),
    }


def alpha_sweep(
    items: Sequence[Mapping[str, Any]],
    alphas: Iterable[float] | None = None,
    *,
    pairs: Sequence[tuple[int, int]] | None = None,
    normalization: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Human alignment of BPM for each α (default 0, 0.1, …, 1; the paper's ablation):
    ``[{"alpha": α, "mean": …, "pairs": {…}}, …]``."""
    data = _check_items(items)
    grid = np.linspace(0.0, 1.0, 11) if alphas is None else alphas
    norm = (
        _check_norm(normalization) if normalization is not None else reference_normalization(data)
    )
    out = []
    for alpha in grid:
        res = human_alignment(data, alpha=float(alpha), pairs=pairs, normalization=norm)
        out.append({"alpha": res["alpha"], "mean": res["mean"], "pairs": res["pairs"]})
    return out


def criterion_alignment(
    items: Sequence[Mapping[str, Any]],
    score_key: str,
    human_key: str,
    *,
    pairs: Sequence[tuple[int, int]] | None = None,
    higher_is_better: bool | None = None,
) -> dict[str, Any]:
    """Agreement of one sub-score (``score_key``, e.g. ``preservation``) with its matching
    human criterion (``human_key``), by the protocol of :func:`human_alignment`.
    Candidates lacking either key are left out of the comparisons."""
    data = _check_items(items)
    if not isinstance(score_key, str) or not score_key:
        raise ValueError(f"score_key must be a non-empty string, got {score_key!r}")
    if not isinstance(human_key, str) or not human_key:
        raise ValueError(f"human_key must be a non-empty string, got {human_key!r}")
    sign = 1.0 if _direction(score_key, higher_is_better) else -1.0
    scores: list[dict[int, float]] = []
    for pos, item in enumerate(data):
        scores.append(
            {
                k: sign * _number(entry, score_key, f"{_label(item, pos)} edited_image{k}")
                for k, entry in candidates_of(item).items()
                if score_key in entry
            }
        )
    humans = _human_ratings(data, human_key)
    present = {k for s in scores for k in s}
    rates, counts, mean = _pair_agreement(scores, humans, _check_pairs(pairs, present))
    return {
        "pairs": rates,
        "counts": counts,
        "mean": mean,
        "score_key": score_key,
        "human_key": human_key,
        "samples": len(data),
    }
