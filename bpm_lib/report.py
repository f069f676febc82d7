"""Human-readable results: a self-contained HTML report and matplotlib plots.

The report shows, per sample, source / edited / edit-mask overlay side by side with the
sub-scores, in a table sortable by any column (BPM by default). Images are embedded as
small base64 thumbnails so the single HTML file can be opened from MLflow or a disk.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from bpm_lib.io.images import load_rgb, to_frame
from bpm_lib.masks import decode_rle
from bpm_lib.types import RunSummary, Sample, SampleScore

THUMB = 160


def _b64_png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def thumbnail(img: Image.Image, size: int = THUMB) -> Image.Image:
    out = img.copy()
    out.thumbnail((size, size))
    return out


def overlay(edited_500: np.ndarray, score: SampleScore) -> Image.Image:
    """The edited image with the edit mask tinted red and the boxes drawn (500 frame)."""
    base = edited_500.astype(np.float32)
    rle = score.extra.get("edit_mask") if score.extra else None
    if rle:
        mask = decode_rle(rle)
        if mask.shape == base.shape[:2]:
            tint = np.array([255.0, 0.0, 0.0], dtype=np.float32)
            base[mask] = 0.55 * base[mask] + 0.45 * tint
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for boxes, colour in ((score.source_boxes, (0, 160, 255)), (score.edited_boxes, (255, 220, 0))):
        for b in boxes or []:
            draw.rectangle([float(v) for v in b], outline=colour, width=3)
    return img


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4f}"
    return html.escape(str(v))


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 6px;vertical-align:middle}
th{background:#f0f0f0;cursor:pointer;position:sticky;top:0}
th.sorted-desc::after{content:" \\25BC"} th.sorted-asc::after{content:" \\25B2"}
tr.error td{background:#fff0f0}
img.thumb{display:block;width:160px;height:auto}
.note{background:#fff7d6;border:1px solid #e5c100;padding:.6em;margin:.8em 0}
.summary td,.summary th{font-size:14px}
"""

_SCRIPT = """
function sortTable(table, col, numeric) {
  const body = table.tBodies[0];
  const th = table.tHead.rows[0].cells[col];
  const desc = !th.classList.contains('sorted-desc');
  for (const c of table.tHead.rows[0].cells) c.classList.remove('sorted-desc','sorted-asc');
  th.classList.add(desc ? 'sorted-desc' : 'sorted-asc');
  const rows = Array.from(body.rows);
  const key = r => { const v = r.cells[col].dataset.v ?? r.cells[col].innerText;
    if (!numeric) return v; const n = parseFloat(v); return isNaN(n) ? -Infinity : n; };
  rows.sort((a,b) => { const x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : 0) * (desc ? -1 : 1); });
  rows.forEach(r => body.appendChild(r));
}
document.querySelectorAll('table.sortable').forEach(t => {
  Array.from(t.tHead.rows[0].cells).forEach((th, i) =>
    th.addEventListener('click', () => sortTable(t, i, th.dataset.numeric === '1')));
  const first = t.querySelector('th[data-default-sort]');
  if (first) sortTable(t, first.cellIndex, true);
});
"""

COLUMNS = (
    ("candidate", False), ("sample", False), ("instruction", False), ("edit type", False), ("case", False),
    ("source", False), ("edited", False), ("mask overlay", False), ("bpm", True), ("s_modify", True),
    ("s_preserve", True), ("s_region", True), ("status", False),
)


def render_report(
    title: str,
    samples: Mapping[str, Sample],
    scores: Sequence[SampleScore],
    edits: Mapping[str, Mapping[str, str]],
    summaries: Sequence[RunSummary] = (),
    *,
    notes: Sequence[str] = (),
    max_rows: int = 500,
) -> str:
    """The HTML report. ``edits``: candidate → sample_id → edited image path."""
    cache: dict[str, np.ndarray] = {}

    def frame(path: str) -> np.ndarray | None:
        if path not in cache:
            try:
                cache[path] = to_frame(load_rgb(path))
            except Exception:  # noqa: BLE001 - a missing image shows as an empty cell
                return None
        return cache[path]

    rows = []
    for score in list(scores)[:max_rows]:
        sample = samples.get(score.sample_id)
        src = frame(sample.source_image) if sample else None
        ed_path = edits.get(score.candidate, {}).get(score.sample_id)
        ed = frame(ed_path) if ed_path else None
        cells = [
            _fmt(score.candidate), _fmt(score.sample_id), _fmt(sample.instruction if sample else ""),
            _fmt(score.edit_type), _fmt(score.case),
        ]
        for img in (src, ed):
            cells.append(f'<img class="thumb" alt="" src="{_b64_png(thumbnail(Image.fromarray(img)))}">'
                         if img is not None else "")
        cells.append(f'<img class="thumb" alt="" src="{_b64_png(thumbnail(overlay(ed, score)))}">'
                     if ed is not None and score.ok else "")
        numeric = [score.bpm, score.s_modify, score.s_preserve, score.s_region]
        status = "ok" if score.ok else f"error: {score.error}"
        tds = "".join(f"<td>{c}</td>" for c in cells)
        tds += "".join(f'<td data-v="{"" if v is None else v}">{_fmt(v)}</td>' for v in numeric)
        tds += f"<td>{_fmt(status)}</td>"
        rows.append(f'<tr class="{"ok" if score.ok else "error"}">{tds}</tr>')
    head = "".join(
        f'<th data-numeric="{int(num)}"{" data-default-sort" if name == "bpm" else ""}>{html.escape(name)}</th>'
        for name, num in COLUMNS
    )
    summary_rows = "".join(
        "<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in (
            s.candidate, s.samples_total, s.samples_scored, s.samples_failed, s.means.get("bpm"),
            s.means.get("s_modify"), s.means.get("s_preserve"), s.means.get("s_region"), s.calibration_id,
        )) + "</tr>"
        for s in summaries
    )
    summary_table = (
        '<table class="summary"><thead><tr><th>candidate</th><th>samples</th><th>scored</th><th>failed</th>'
        "<th>bpm</th><th>s_modify</th><th>s_preserve (d, lower is better)</th><th>s_region</th>"
        f"<th>calibration</th></tr></thead><tbody>{summary_rows}</tbody></table>"
        if summaries else ""
    )
    note_html = "".join(f'<div class="note">{html.escape(n)}</div>' for n in notes)
    truncated = (f"<p>Showing the first {max_rows} of {len(scores)} rows.</p>" if len(scores) > max_rows else "")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{note_html}{summary_table}"
        "<h2>Samples</h2><p>Click a column to sort. Overlay: red = edit mask, blue = source boxes, "
        f"yellow = edited boxes.</p>{truncated}"
        f'<table class="sortable" id="samples"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
        f"<script>{_SCRIPT}</script></body></html>"
    )


# -------------------------------------------------------------------------- plots

METRICS = ("bpm", "s_modify", "s_preserve", "s_region")


def _figure():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_distributions(scores_by_candidate: Mapping[str, Sequence[SampleScore]], path: Path) -> Path:
    """Histograms of BPM and each sub-score, one colour per candidate."""
    plt = _figure()
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.2))
    for ax, metric in zip(axes, METRICS, strict=True):
        for cand, scores in scores_by_candidate.items():
            vals = [getattr(s, metric) for s in scores if s.ok and getattr(s, metric) is not None]
            if vals:
                ax.hist(vals, bins=12, alpha=0.5, label=cand)
        ax.set_title(metric)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_by_edit_type(summaries: Sequence[RunSummary], path: Path, metric: str = "bpm") -> Path:
    """Mean ``metric`` per edit type, grouped bars per candidate."""
    plt = _figure()
    types = sorted({t for s in summaries for t in s.means_by_edit_type})
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(types) + 2), 3.5))
    width = 0.8 / max(1, len(summaries))
    for i, s in enumerate(summaries):
        vals = [s.means_by_edit_type.get(t, {}).get(metric) or 0.0 for t in types]
        ax.bar(np.arange(len(types)) + i * width, vals, width, label=s.candidate)
    ax.set_xticks(np.arange(len(types)) + width * (len(summaries) - 1) / 2, types, rotation=20)
    ax.set_ylabel(f"mean {metric}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_comparison(summaries: Sequence[RunSummary], path: Path) -> Path:
    """Mean BPM and sub-scores per candidate: the campaign at a glance."""
    plt = _figure()
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.6 * len(METRICS), 3.2))
    names = [s.candidate for s in summaries]
    for ax, metric in zip(axes, METRICS, strict=True):
        vals = [s.means.get(metric) or 0.0 for s in summaries]
        ax.bar(range(len(names)), vals, color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set_title(metric + (" (lower is better)" if metric == "s_preserve" else ""), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

