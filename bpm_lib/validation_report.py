"""Metric validation report (paper Tab. 1/2/4 and the α ablation) over BPM reference data.

:func:`build_validation` runs the protocols of :mod:`bpm_lib.validate` for BPM and for
every baseline metric present in the data, side by side: human alignment per candidate
pair, the ground-truth test, an α sweep, and each sub-score against its matching human
criterion. It is pure (items in, a JSON-ready dict out). The rest renders that dict:
markdown and HTML tables (:func:`render_markdown`, :func:`render_html`), the α-sweep plot
(:func:`plot_alpha_sweep`), the report folder (:func:`write_validation_report`) and an
MLflow run (:func:`log_validation`).

Numbers in the dict are fractions in [0, 1]; the tables show percentages.
"""

from __future__ import annotations

import base64
import hashlib
import html
import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bpm_lib.errors import DataError
from bpm_lib.validate import (
    BASELINE_DIRECTIONS,
    DEFAULT_ALPHA,
    HUMAN_KEY,
    REFERENCE_PAIRS,
    alpha_sweep,
    candidates_of,
    criterion_alignment,
    gt_test,
    human_alignment,
    is_global_item,
    reference_normalization,
)

log = logging.getLogger(__name__)

REPORT_VERSION: Final = 1
VALIDATION_JSON: Final = "validation.json"
VALIDATION_MD: Final = "validation.md"
VALIDATION_HTML: Final = "validation.html"
ALPHA_SWEEP_PNG: Final = "alpha_sweep.png"
DEFAULT_EXPERIMENT: Final = "bpm-validation"

SUB_SCORES: Final = ("preservation", "edit_quality", "position", "size")
"""BPM's sub-scores as stored in reference entries (preservation = −d)."""

CRITERIA: Final[tuple[tuple[str, str], ...]] = (
    ("preservation", "user_preservation"),
    ("edit_quality", "user_edit_quality"),
)
"""(sub-score key, human criterion key) pairs, as named in the reference annotations."""

RESCORE_LABEL: Final = "rescore"
"""Item key written by :mod:`bpm_lib.runner.rescore`: ``{"meaningless": [keys], ...}``."""
RESCORE_ERROR: Final = "rescore_error"
"""Entry key written by :mod:`bpm_lib.runner.rescore` on a candidate it could not score."""

DISPLAY_NAMES: Final[dict[str, str]] = {
    "bpm": "BPM",
    "preservation": "preservation (−d)",
    "edit_quality": "edit quality (S_modify)",
    "position": "S_position",
    "size": "S_size",
    "l1": "L1",
    "l2": "L2",
    "lpips": "LPIPS",
    "clip_score": "CLIPScore",
    "clip_i": "CLIP-I",
    "dino": "DINO",
    "clip_directional": "Directional CLIP",
}

_PAIR_TOKEN = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
_ALL_PAIRS = ("", "all")
_REFERENCE = "reference"


# --------------------------------------------------------------------------- inputs


def parse_pairs(text: str | None) -> list[tuple[int, int]] | None:
    """``"1-2,1-3"`` → ``[(1, 2), (1, 3)]``; ``"reference"`` → the paper's six pairs for four
    candidates; ``None``, ``""`` or ``"all"`` → ``None`` (every pair of the data).

    ``ValueError`` naming the offending token for anything else: not ``I-J``, a number
    below 1, a candidate paired with itself, a pair listed twice (in either order).
    """
    if text is None:
        return None
    if not isinstance(text, str):
        raise TypeError(f"pairs must be a string like '1-2,1-3', got {type(text).__name__}")
    spec = text.strip()
    if spec in _ALL_PAIRS:
        return None
    if spec == _REFERENCE:
        return list(REFERENCE_PAIRS)
    out: list[tuple[int, int]] = []
    seen: dict[frozenset[int], str] = {}
    for token in spec.split(","):
        match = _PAIR_TOKEN.match(token)
        if match is None:
            raise ValueError(
                f"pairs must be 'reference', 'all' or comma-separated candidate pairs I-J like "
                f"'1-2,1-3'; got {token.strip()!r} in {text!r}"
            )
        i, j = int(match.group(1)), int(match.group(2))
        name = f"{i}-{j}"
        if i < 1 or j < 1:
            raise ValueError(f"pairs: candidate numbers start at 1, got {name!r} in {text!r}")
        if i == j:
            raise ValueError(f"pairs: a pair needs two different candidates, got {name!r} in {text!r}")
        key = frozenset((i, j))
        if key in seen:
            raise ValueError(f"pairs: {name!r} repeats {seen[key]!r} in {text!r}")
        seen[key] = name
        out.append((i, j))
    return out


def candidate_numbers(items: Iterable[Mapping[str, Any]]) -> list[int]:
    """Every candidate number (``edited_image<k>``) present in any item, sorted."""
    return sorted({k for item in items for k in candidates_of(item)})


def check_pairs(pairs: Sequence[tuple[int, int]] | None, items: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """The pairs to compare: ``pairs`` when every candidate they name is in the data
    (``ValueError`` naming the missing one otherwise), all pairs when ``None``."""
    present = candidate_numbers(items)
    if pairs is None:
        if len(present) < 2:
            raise DataError(
                f"the data has {len(present)} candidate(s) ({present}); pairwise validation needs at least 2"
            )
        return list(itertools.combinations(present, 2))
    for i, j in pairs:
        for k in (i, j):
            if k not in present:
                raise ValueError(
                    f"pairs: pair {i}-{j} names candidate {k}, which is not in the data "
                    f"(candidates: {', '.join(map(str, present)) or 'none'})"
                )
    return list(pairs)


def check_normalization(value: Any) -> dict[str, float]:
    """Normalisation bounds from a mapping: the four ``*_min/*_max`` keys, or an object with
    a ``normalization`` key holding them (e.g. the ``--json`` output of human-alignment)."""
    if isinstance(value, Mapping) and isinstance(value.get("normalization"), Mapping):
        value = value["normalization"]
    if not isinstance(value, Mapping):
        raise ValueError(f"normalization must be an object of bounds, got {type(value).__name__}")
    keys = ("preservation_min", "preservation_max", "edit_quality_min", "edit_quality_max")
    missing = [k for k in keys if k not in value]
    if missing:
        raise ValueError(f"normalization is missing {missing} (needs {list(keys)})")
    out: dict[str, float] = {}
    for k in keys:
        v = value[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise ValueError(f"normalization {k} must be a finite number, got {v!r}")
        out[k] = float(v)
    for name in ("preservation", "edit_quality"):
        if not out[f"{name}_max"] > out[f"{name}_min"]:
            raise ValueError(
                f"normalization {name}_max must exceed {name}_min, got {out[f'{name}_min']}..{out[f'{name}_max']}"
            )
    return out


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(float(value))


def rated_entries(items: Iterable[Mapping[str, Any]], human_key: str = HUMAN_KEY) -> int:
    """How many candidate entries carry a human rating ``human_key``."""
    return sum(1 for item in items for e in candidates_of(item).values() if human_key in e)


def require_ratings(items: Sequence[Mapping[str, Any]], human_key: str = HUMAN_KEY) -> int:
    n = rated_entries(items, human_key)
    if n == 0:
        raise DataError(
            f"no candidate entry has a human rating {human_key!r}: there is nothing to align with"
        )
    return n


def baseline_metrics(items: Sequence[Mapping[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """Baseline metrics (known keys of :data:`~bpm_lib.validate.BASELINE_DIRECTIONS` other
    than BPM and its sub-scores) with a number in every candidate entry, and the ones
    present only in some entries → why they are left out."""
    entries = [e for item in items for e in candidates_of(item).values()]
    present: list[str] = []
    skipped: dict[str, str] = {}
    for metric in BASELINE_DIRECTIONS:
        if metric == "bpm" or metric in SUB_SCORES:
            continue
        n = sum(1 for e in entries if _is_number(e.get(metric)))
        if n == 0:
            continue
        if n == len(entries):
            present.append(metric)
        else:
            skipped[metric] = f"a number in only {n} of {len(entries)} candidate entries"
    return present, skipped


def drop_failed_entries(items: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Copies of ``items`` without the candidate entries a rescore could not score (they
    carry ``rescore_error`` and no sub-scores), and ``"<index>/edited_image<k>"`` → error
    of each entry left out. Items are otherwise unchanged."""
    out: list[dict[str, Any]] = []
    dropped: dict[str, str] = {}
    for item in items:
        new = dict(item)
        for k, entry in candidates_of(item).items():
            if RESCORE_ERROR in entry:
                key = f"edited_image{k}"
                dropped[f"{item.get('index')}/{key}"] = str(entry[RESCORE_ERROR])
                del new[key]
        out.append(new)
    return out, dropped


def meaningless_keys(items: Iterable[Mapping[str, Any]]) -> list[str]:
    """Keys whose values were computed with random weights, per the items' rescore labels."""
    out: set[str] = set()
    for item in items:
        label = item.get(RESCORE_LABEL)
        if isinstance(label, Mapping):
            out.update(str(k) for k in label.get("meaningless") or ())
    return sorted(out)


# --------------------------------------------------------------------------- the report (pure)


def _sweep_grid(alphas: Iterable[float] | None) -> list[float]:
    if alphas is None:
        return [round(0.1 * i, 10) for i in range(11)]
    grid = [float(a) for a in alphas]
    if not grid:
        raise ValueError("alphas must not be empty")
    return grid


def build_validation(
    items: Sequence[Mapping[str, Any]],
    *,
    alpha: float = DEFAULT_ALPHA,
    pairs: Sequence[tuple[int, int]] | None = None,
    normalization: Mapping[str, Any] | None = None,
    alphas: Iterable[float] | None = None,
    source: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Every validation protocol for BPM and each baseline in the data (JSON-ready dict).

    Candidate entries a rescore could not score (``rescore_error``) are left out and
    listed under ``excluded_entries``.

    ``normalization`` overrides the bounds fitted on ``items`` (needed for a file of
    global items only); a degenerate pool raises :class:`~bpm_lib.errors.CalibrationError`.
    ``pairs`` default: every pair of candidates in the data. ``alphas``: the sweep grid
    (default 0, 0.1, …, 1). ``source`` (e.g. path and sha256 of the file) is recorded.
    """
    data, excluded = drop_failed_entries(items)
    if not data:
        raise ValueError("items must not be empty")
    norm = check_normalization(normalization) if normalization is not None else reference_normalization(data)
    checked = check_pairs(pairs, data)
    rated = require_ratings(data)
    metrics, skipped = baseline_metrics(data)
    random_keys = meaningless_keys(data)
    bpm_random = any(k in random_keys for k in SUB_SCORES)

    alignment = []
    gt_rows = []
    bpm_align = human_alignment(data, alpha=alpha, pairs=checked, normalization=norm)
    alignment.append(_alignment_row("bpm", True, bpm_align, bpm_random))
    gt_rows.append(_gt_row("bpm", True, gt_test(data, alpha=alpha, normalization=norm), bpm_random))
    for metric in metrics:
        direction = BASELINE_DIRECTIONS[metric]
        res = human_alignment(data, pairs=checked, metric=metric)
        alignment.append(_alignment_row(metric, direction, res, metric in random_keys))
        gt_rows.append(_gt_row(metric, direction, gt_test(data, metric=metric), metric in random_keys))

    sweep = alpha_sweep(data, _sweep_grid(alphas), pairs=checked, normalization=norm)
    valid = [row for row in sweep if row["mean"] is not None]
    top = max((row["mean"] for row in valid), default=None)
    best = [row["alpha"] for row in valid if top is not None and row["mean"] == top]

    criteria = []
    for score_key, human_key in CRITERIA:
        if rated_entries(data, human_key) == 0:
            continue
        if not any(score_key in e for item in data for e in candidates_of(item).values()):
            continue
        res = criterion_alignment(data, score_key, human_key, pairs=checked)
        criteria.append({
            "score_key": score_key,
            "human_key": human_key,
            "pairs": res["pairs"],
            "counts": res["counts"],
            "mean": res["mean"],
            "meaningless": score_key in random_keys,
        })

    notes = []
    if random_keys:
        notes.append(
            "Random-weight backends produced " + ", ".join(random_keys)
            + ": those rows only show that the machinery works; they are meaningless as a validation."
        )
    if normalization is not None:
        notes.append("BPM normalisation bounds were given explicitly, not fitted on this data.")
    if excluded:
        notes.append(f"{len(excluded)} candidate entr{'y' if len(excluded) == 1 else 'ies'} that the rescore "
                     "could not score (rescore_error) left out: " + ", ".join(sorted(excluded)[:10])
                     + (" …" if len(excluded) > 10 else ""))
    return {
        "version": REPORT_VERSION,
        "source": dict(source or {}),
        "samples": len(data),
        "global_items": sum(1 for item in data if is_global_item(item)),
        "candidates": candidate_numbers(data),
        "human_key": HUMAN_KEY,
        "rated_entries": rated,
        "alpha": float(alpha),
        "pairs": [f"{i}-{j}" for i, j in checked],
        "normalization": norm,
        "alignment": alignment,
        "gt_test": gt_rows,
        "alpha_sweep": [{"alpha": r["alpha"], "mean": r["mean"], "pairs": r["pairs"]} for r in sweep],
        "best_alpha": best,
        "criteria": criteria,
        "skipped_metrics": skipped,
        "excluded_entries": excluded,
        "meaningless": random_keys,
        "notes": notes,
    }


def _alignment_row(metric: str, higher: bool, res: Mapping[str, Any], meaningless: bool) -> dict[str, Any]:
    return {
        "metric": metric,
        "higher_is_better": higher,
        "pairs": dict(res["pairs"]),
        "counts": dict(res["counts"]),
        "mean": res["mean"],
        "meaningless": meaningless,
    }


def _gt_row(metric: str, higher: bool, res: Mapping[str, Any], meaningless: bool) -> dict[str, Any]:
    return {
        "metric": metric,
        "higher_is_better": higher,
        "wins": dict(res["wins"]),
        "ties": res["ties"],
        "fractions": dict(res["fractions"]),
        "meaningless": meaningless,
    }


def validation_metrics(validation: Mapping[str, Any]) -> dict[str, float]:
    """Flat metric names → values of a validation dict (for MLflow and KFP Metrics)."""
    out: dict[str, float] = {}
    for row in validation["alignment"]:
        m = row["metric"]
        if row["mean"] is not None:
            out[f"alignment/{m}/mean"] = float(row["mean"])
        for pair, rate in row["pairs"].items():
            if rate is not None:
                out[f"alignment/{m}/{pair}"] = float(rate)
    for row in validation["gt_test"]:
        m = row["metric"]
        for cand, wins in row["wins"].items():
            out[f"gt_test/{m}/wins/{cand}"] = float(wins)
        out[f"gt_test/{m}/ties"] = float(row["ties"])
    for row in validation["criteria"]:
        if row["mean"] is not None:
            out[f"criteria/{row['score_key']}/mean"] = float(row["mean"])
    for row in validation["alpha_sweep"]:
        if row["mean"] is not None:
            out[f"alpha_sweep/mean_at_{row['alpha']:.2f}"] = float(row["mean"])
    if validation["best_alpha"]:
        out["alpha_sweep/best_alpha"] = float(validation["best_alpha"][0])
    out["samples"] = float(validation["samples"])
    return out


# --------------------------------------------------------------------------- text, markdown, HTML


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:.1f}"


def metric_label(metric: str, higher_is_better: bool, *, markdown: bool = False) -> str:
    name = DISPLAY_NAMES.get(metric, metric)
    arrow = "↑" if higher_is_better else "↓"
    if metric == "bpm":
        name = f"**{name}**" if markdown else name
    return f"{name} {arrow}"


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def format_alignment_text(result: Mapping[str, Any]) -> str:
    """A readable table of one :func:`~bpm_lib.validate.human_alignment` result."""
    metric = result.get("metric") or "bpm"
    head = f"human alignment of {metric} with {HUMAN_KEY} ({result['samples']} items"
    if metric == "bpm":
        head += f", alpha {result['alpha']:g}"
        norm = result.get("normalization")
        if norm:
            head += (
                f"; preservation {norm['preservation_min']:.6g}..{norm['preservation_max']:.6g}, "
                f"edit_quality {norm['edit_quality_min']:.6g}..{norm['edit_quality_max']:.6g}"
            )
    head += ")"
    rows = []
    for pair, rate in result["pairs"].items():
        c = result["counts"][pair]
        rows.append((pair, str(c["agree"]), str(c["compared"]), _pct(rate)))
    rows.append(("mean", "", "", _pct(result["mean"])))
    table = _text_table(("pair", "agree", "compared", "agreement %"), rows)
    return f"{head}\n{table}\nItems whose human ratings tie are skipped; a score tie counts as disagreement."


def format_gt_text(result: Mapping[str, Any]) -> str:
    """A readable table of one :func:`~bpm_lib.validate.gt_test` result."""
    metric = result.get("metric") or "bpm"
    rows = [(k, str(v), _pct(result["fractions"][k])) for k, v in result["wins"].items()]
    rows.append(("ties", str(result["ties"]), _pct(result["ties"] / result["samples"]) if result["samples"] else "–"))
    head = f"ground-truth test of {metric}: which candidate gets the top score ({result['samples']} items"
    head += f", alpha {result['alpha']:g})" if metric == "bpm" else ")"
    return f"{head}\n{_text_table(('candidate', 'wins', '%'), rows)}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class _Tables:
    """The report's tables as header + rows of strings, shared by markdown and HTML."""

    alignment: tuple[list[str], list[list[str]]]
    gt: tuple[list[str], list[list[str]]]
    sweep: tuple[list[str], list[list[str]]]
    criteria: tuple[list[str], list[list[str]]] | None


def _tables(v: Mapping[str, Any], *, markdown: bool) -> _Tables:
    def label(row: Mapping[str, Any]) -> str:
        text = metric_label(row["metric"], row["higher_is_better"], markdown=markdown)
        return text + (" (random weights)" if row["meaningless"] else "")

    pairs = list(v["pairs"])
    align_rows = [[label(r), *(_pct(r["pairs"].get(p)) for p in pairs), _pct(r["mean"])] for r in v["alignment"]]
    cands = [str(c) for c in v["candidates"]]
    n = v["samples"]
    gt_rows = []
    for r in v["gt_test"]:
        cells = [f"{r['wins'].get(c, 0)} ({_pct(r['fractions'].get(c))})" for c in cands]
        gt_rows.append([label(r), *cells, f"{r['ties']} ({_pct(r['ties'] / n if n else None)})"])
    sweep_rows = [[f"{row['alpha']:.2f}", _pct(row["mean"]), *(_pct(row["pairs"].get(p)) for p in pairs)]
                  for row in v["alpha_sweep"]]
    criteria = None
    if v["criteria"]:
        criteria = (
            ["sub-score", "human criterion", *pairs, "mean"],
            [[DISPLAY_NAMES.get(r["score_key"], r["score_key"]) + (" (random weights)" if r["meaningless"] else ""),
              r["human_key"], *(_pct(r["pairs"].get(p)) for p in pairs), _pct(r["mean"])] for r in v["criteria"]],
        )
    return _Tables(
        alignment=(["metric", *pairs, "mean"], align_rows),
        gt=(["metric", *(f"cand. {c}" for c in cands), "ties"], gt_rows),
        sweep=(["α", "mean", *pairs], sweep_rows),
        criteria=criteria,
    )


def _summary_line(v: Mapping[str, Any]) -> str:
    src = v.get("source") or {}
    where = f"`{src['path']}`" if src.get("path") else "the given items"
    digest = f" (sha256 {str(src['sha256'])[:12]}…)" if src.get("sha256") else ""
    cands = ", ".join(str(c) for c in v["candidates"])
    norm = v["normalization"]
    return (
        f"Data: {where}{digest}: {v['samples']} items ({v['global_items']} global), candidates {cands}, "
        f"{v['rated_entries']} rated entries. BPM at α = {v['alpha']:g}; normalisation: preservation "
        f"{norm['preservation_min']:.6g}..{norm['preservation_max']:.6g}, edit_quality "
        f"{norm['edit_quality_min']:.6g}..{norm['edit_quality_max']:.6g}."
    )


_PROTOCOL_NOTE = (
    "Agreement (%) of each metric's pairwise ordering with the human overall-quality ratings "
    "(`{key}`): items whose human ratings tie are skipped, a metric tie counts as disagreement "
    "(paper Tab. 1/2). ↑ higher is better, ↓ lower is better."
)


def render_markdown(validation: Mapping[str, Any], *, plot_name: str | None = ALPHA_SWEEP_PNG) -> str:
    """The report as markdown: paper-style tables (rows = metrics, columns = pairs + mean)."""
    v = validation
    t = _tables(v, markdown=True)
    out = ["# BPM metric validation", "", _summary_line(v), ""]
    out += [f"> **Note:** {note}" for note in v["notes"]]
    if v["notes"]:
        out.append("")
    out += ["## Human alignment", "", _PROTOCOL_NOTE.format(key=v["human_key"]), ""]
    out += [_md_table(*t.alignment, ["---", *(["---:"] * (len(t.alignment[0]) - 1))]), ""]
    compared = ", ".join(f"{p}: {v['alignment'][0]['counts'][p]['compared']}" for p in v["pairs"])
    out += [f"Items compared per pair (human ties left out): {compared}.", ""]
    out += ["## Ground-truth test", "",
            "How often each candidate gets the top score (paper Tab. 4); a shared top score counts as a tie.", ""]
    out += [_md_table(*t.gt, ["---", *(["---:"] * (len(t.gt[0]) - 1))]), ""]
    out += ["## α sweep", "", "Mean human alignment of BPM for each α (global items always use α = 1).", ""]
    out += [_md_table(*t.sweep, ["---:"] * len(t.sweep[0])), ""]
    best = ", ".join(f"{a:g}" for a in v["best_alpha"]) or "–"
    out += [f"Best α: {best} (α used: {v['alpha']:g}).", ""]
    if plot_name:
        out += [f"![α sweep]({plot_name})", ""]
    if t.criteria is not None:
        out += ["## Sub-scores against human criteria", ""]
        out += [_md_table(*t.criteria, ["---", "---", *(["---:"] * (len(t.criteria[0]) - 2))]), ""]
    if v["skipped_metrics"]:
        out += ["## Metrics left out", ""]
        out += [f"- {DISPLAY_NAMES.get(m, m)}: {why}" for m, why in sorted(v["skipped_metrics"].items())]
        out.append("")
    return "\n".join(out)


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1100px}"
    "table{border-collapse:collapse;font-size:14px;margin:.5em 0 1em}"
    "th,td{border:1px solid #ccc;padding:4px 8px}td.num{text-align:right}th{background:#f0f0f0}"
    "tr.bpm td{font-weight:600}.note{background:#fff7d6;border:1px solid #e5c100;padding:.6em;margin:.8em 0}"
    "img{max-width:640px}"
)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], first_text_cols: int = 1,
                bold_first_row: bool = False) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for n, r in enumerate(rows):
        cells = "".join(
            f'<td{"" if i < first_text_cols else " class=num"}>{html.escape(c)}</td>' for i, c in enumerate(r)
        )
        cls = ' class="bpm"' if bold_first_row and n == 0 else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(validation: Mapping[str, Any], *, plot_png: bytes | None = None) -> str:
    """The report as one self-contained HTML page (the plot embedded as base64 PNG)."""
    v = validation
    t = _tables(v, markdown=False)
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>BPM metric validation</title>",
             f"<style>{_CSS}</style></head><body><h1>BPM metric validation</h1>",
             f"<p>{html.escape(_summary_line(v).replace('`', ''))}</p>"]
    parts += [f'<div class="note">{html.escape(n)}</div>' for n in v["notes"]]
    parts += ["<h2>Human alignment</h2>", f"<p>{html.escape(_PROTOCOL_NOTE.format(key=v['human_key']).replace('`', ''))}</p>",
              _html_table(*t.alignment, bold_first_row=True)]
    parts += ["<h2>Ground-truth test</h2><p>How often each candidate gets the top score (paper Tab. 4); "
              "a shared top score counts as a tie.</p>", _html_table(*t.gt, bold_first_row=True)]
    parts += ["<h2>α sweep</h2><p>Mean human alignment of BPM for each α (global items always use α = 1).</p>",
              _html_table(*t.sweep, first_text_cols=0)]
    best = ", ".join(f"{a:g}" for a in v["best_alpha"]) or "–"
    parts.append(f"<p>Best α: {html.escape(best)} (α used: {v['alpha']:g}).</p>")
    if plot_png is not None:
        parts.append(f'<img alt="alpha sweep" src="data:image/png;base64,{base64.b64encode(plot_png).decode()}">')
    if t.criteria is not None:
        parts += ["<h2>Sub-scores against human criteria</h2>", _html_table(*t.criteria, first_text_cols=2)]
    if v["skipped_metrics"]:
        parts.append("<h2>Metrics left out</h2><ul>" + "".join(
            f"<li>{html.escape(DISPLAY_NAMES.get(m, m))}: {html.escape(why)}</li>"
            for m, why in sorted(v["skipped_metrics"].items())) + "</ul>")
    parts.append("</body></html>")
    return "".join(parts)


# --------------------------------------------------------------------------- plot and files


def plot_alpha_sweep(validation: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Mean human alignment (%) against α, each pair faint, the α used marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = validation["alpha_sweep"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for pair in validation["pairs"]:
        pts = [(r["alpha"], 100 * r["pairs"][pair]) for r in sweep if r["pairs"].get(pair) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), lw=0.8, alpha=0.35, label=f"pair {pair}")
    pts = [(r["alpha"], 100 * r["mean"]) for r in sweep if r["mean"] is not None]
    if pts:
        ax.plot(*zip(*pts, strict=True), "o-", color="black", lw=2, label="mean")
    ax.axvline(validation["alpha"], color="C3", ls="--", lw=1, label=f"α used ({validation['alpha']:g})")
    ax.set_xlabel("α (weight of the semantic score)")
    ax.set_ylabel("human alignment (%)")
    ax.set_xlim(-0.02, 1.02)
    title = "BPM human alignment vs α"
    if validation["meaningless"]:
        title += " (random weights: meaningless)"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_validation_report(
    items: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    alpha: float = DEFAULT_ALPHA,
    pairs: Sequence[tuple[int, int]] | None = None,
    normalization: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the validation and write ``validation.json``, ``validation.md``,
    ``validation.html`` and ``alpha_sweep.png`` into ``out_dir``; returns the dict."""
    from bpm_lib.io.jsonl import write_json_atomic

    validation = build_validation(items, alpha=alpha, pairs=pairs, normalization=normalization, source=source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_alpha_sweep(validation, out / ALPHA_SWEEP_PNG)
    write_json_atomic(out / VALIDATION_JSON, validation)
    (out / VALIDATION_MD).write_text(render_markdown(validation), encoding="utf-8")
    (out / VALIDATION_HTML).write_text(render_html(validation, plot_png=png.read_bytes()), encoding="utf-8")
    log.info("validation report written to %s", out)
    return validation


def report_metadata_file(
    metadata: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    alpha: float = DEFAULT_ALPHA,
    pairs: str | Sequence[tuple[int, int]] | None = None,
    normalization: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """:func:`write_validation_report` for a BPM reference JSON file (read only).
    ``pairs`` may be a spec string for :func:`parse_pairs`."""
    from bpm_lib.io.datasets.bpm_json import read_bpm_json

    path = Path(metadata)
    items = read_bpm_json(path)
    checked = parse_pairs(pairs) if isinstance(pairs, str) else pairs
    source = {"path": str(path), "sha256": file_sha256(path)}
    return write_validation_report(items, out_dir, alpha=alpha, pairs=checked, normalization=normalization,
                                   source=source)


def report_step(
    rescored_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    html_path: str | os.PathLike[str] | None = None,
    *,
    alpha: float = DEFAULT_ALPHA,
    pairs: str = "",
) -> dict[str, float]:
    """Pipeline step: the report of a rescore output folder (its ``metadata.json``) into
    ``out_dir``, the HTML page also at ``html_path``; returns :func:`validation_metrics`.
    The rescore record (``_bpm.json``: preset, meaningless keys) is kept as the source."""
    import shutil

    from bpm_lib.io.datasets.bpm_json import read_bpm_json
    from bpm_lib.runner.cache import read_meta
    from bpm_lib.runner.rescore import RESCORED_NAME

    metadata = Path(rescored_dir) / RESCORED_NAME
    items = read_bpm_json(metadata)
    meta = read_meta(Path(rescored_dir))
    source = {"path": RESCORED_NAME, "sha256": file_sha256(metadata),
              "rescore": {k: meta.get(k) for k in ("preset", "rescored", "failed", "meaningless") if k in meta}}
    validation = write_validation_report(items, out_dir, alpha=alpha, pairs=parse_pairs(pairs),
                                         source=source)
    if html_path is not None:
        shutil.copyfile(Path(out_dir) / VALIDATION_HTML, html_path)
    return validation_metrics(validation)


def log_step(
    report_dir: str | os.PathLike[str],
    *,
    tracking_uri: str,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str = "validation",
    params: Mapping[str, Any] | None = None,
    pipeline_run_id: str = "",
) -> str:
    """Pipeline step: :func:`log_validation` of a report folder; the MLflow run id, or ""
    when ``tracking_uri`` is "" (logging switched off)."""
    if not tracking_uri:
        log.info("no tracking URI: the validation report is not logged to MLflow")
        return ""
    tags = {"bpm.pipeline_run_id": pipeline_run_id} if pipeline_run_id else None
    run = log_validation(report_dir, tracking_uri=tracking_uri, experiment=experiment, run_name=run_name,
                         params=params, tags=tags)
    return run.run_id


# --------------------------------------------------------------------------- MLflow


@dataclass(frozen=True)
class ValidationRun:
    run_id: str
    experiment_id: str
    tracking_uri: str


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, list[Any]]:
    return {c: [r.get(c) for r in rows] for c in columns}


def log_validation(
    report_dir: str | os.PathLike[str],
    *,
    tracking_uri: str,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str = "validation",
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> ValidationRun:
    """Log a report folder written by :func:`write_validation_report` as one MLflow run in
    ``experiment``: params, flat metrics (:func:`validation_metrics`; the α sweep also as
    a stepped metric ``alpha_sweep/mean``, step = 100·α), the alignment, ground-truth and
    α-sweep tables, and the JSON/markdown/HTML/PNG files."""
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from bpm_lib.io.tracking import check_reachable, safe_params

    folder = Path(report_dir)
    try:
        validation = json.loads((folder / VALIDATION_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"{folder}: no {VALIDATION_JSON}; write the report first") from e
    check_reachable(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run_tags = {"bpm.kind": "validation", "bpm.meaningless": str(bool(validation["meaningless"])).lower(),
                **dict(tags or {})}
    run = client.create_run(exp_id, run_name=run_name, tags=run_tags)
    rid = run.info.run_id
    try:
        base = {"alpha": validation["alpha"], "pairs": ",".join(validation["pairs"]),
                "samples": validation["samples"], "candidates": ",".join(map(str, validation["candidates"])),
                "source": validation.get("source", {}), **dict(params or {})}
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in validation_metrics(validation).items()]
        metrics += [Metric("alpha_sweep/mean", float(r["mean"]), now, round(100 * r["alpha"]))
                    for r in validation["alpha_sweep"] if r["mean"] is not None]
        params_list = [Param(k, v) for k, v in safe_params(base).items()]
        for start in range(0, max(len(metrics), 1), 900):  # MLflow caps a batch at 1000 metrics
            client.log_batch(rid, metrics=metrics[start:start + 900],
                             params=params_list if start == 0 else [], tags=[RunTag("bpm.report", VALIDATION_JSON)])
        pairs = validation["pairs"]
        align = [{"metric": r["metric"], "higher_is_better": r["higher_is_better"], "mean": r["mean"],
                  "meaningless": r["meaningless"], **{p: r["pairs"].get(p) for p in pairs}}
                 for r in validation["alignment"]]
        client.log_table(rid, data=pd.DataFrame(_table(align, ["metric", *pairs, "mean", "higher_is_better",
                                                               "meaningless"])),
                         artifact_file="tables/alignment.json")
        cands = [str(c) for c in validation["candidates"]]
        gt = [{"metric": r["metric"], "ties": r["ties"], **{f"wins_{c}": r["wins"].get(c, 0) for c in cands}}
              for r in validation["gt_test"]]
        client.log_table(rid, data=pd.DataFrame(_table(gt, ["metric", *(f"wins_{c}" for c in cands), "ties"])),
                         artifact_file="tables/gt_test.json")
        client.log_table(rid, data=pd.DataFrame(_table(validation["alpha_sweep"], ["alpha", "mean"])),
                         artifact_file="tables/alpha_sweep.json")
        for name in (VALIDATION_JSON, VALIDATION_MD, VALIDATION_HTML, ALPHA_SWEEP_PNG):
            if (folder / name).exists():
                client.log_artifact(rid, str(folder / name), artifact_path="report")
        client.set_terminated(rid, "FINISHED")
    except Exception:
        client.set_terminated(rid, "FAILED")
        raise
    return ValidationRun(rid, exp_id, tracking_uri)
