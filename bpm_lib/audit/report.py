"""The audit report: a self-contained HTML page and a short text verdict table, both
rendered from the audit record (``audit.json``, built by :func:`bpm_lib.audit.run.finish_audit`).
Pure string building: no I/O."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f4f4f4}.pass{color:#116611;font-weight:bold}.fail{color:#aa1111;font-weight:bold}
.banner{padding:.6em 1em;border-radius:4px;display:inline-block;font-size:1.3em}
.banner.pass{background:#e3f6e3}.banner.fail{background:#fbe3e3}code{background:#f6f6f6;padding:0 3px}
.note{color:#7a4b00}
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _short(value: Any, width: int = 24) -> str:
    text = _fmt(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _esc(value: Any) -> str:
    return html.escape(_fmt(value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _kv(pairs: Sequence[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{_esc(v)}</td></tr>" for k, v in pairs) + "</table>"


def rule_label(rule: Mapping[str, Any]) -> str:
    parts = [str(rule["rule"]).replace("_", " ")]
    if rule.get("metric"):
        parts.append(str(rule["metric"]))
    if rule.get("edit_type"):
        parts.append(f"[{rule['edit_type']}]")
    return " ".join(parts)


def render_html(record: Mapping[str, Any]) -> str:
    """The audit report page: verdict, who/what/when, data and calibration provenance,
    code version, per-alias results, and every rule with its value and verdict."""
    verdict = str(record["verdict"])
    what, data, cal, code = record["what"], record["data"], record["calibration"], record["code"]
    ev = record.get("evaluation") or {}
    mlflow = record.get("mlflow") or {}
    policy = record.get("policy") or {}
    title = f"BPM audit {policy.get('name', '')}: {what['model']} — {verdict.upper()}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<div class='banner {html.escape(verdict)}'>{html.escape(verdict.upper())}: "
             f"{sum(r['verdict'] == 'fail' for r in record['rules'])} of {len(record['rules'])} rules failed</div>"]
    if ev.get("meaningless"):
        parts.append("<p class='note'>Random-weight backends (tiny-random preset): the numbers exercise the "
                     "machinery and are meaningless as an evaluation.</p>")
    parts.append("<h2>Audit</h2>")
    parts.append(_kv([
        ("who", f"{record['who'].get('user')}@{record['who'].get('host')}"),
        ("started", record["when"].get("started")), ("finished", record["when"].get("finished")),
        ("policy", f"{policy.get('name')} ({policy.get('source') or 'inline'}, {policy.get('digest')})"),
        ("model", what["model"]),
        ("code", f"bpm-eval {code.get('bpm_eval')} (commit {code.get('git_commit') or 'unknown'})"),
        ("audit run", mlflow.get("audit_run_id")), ("tracking", mlflow.get("tracking_uri")),
        ("evaluation campaign run", ev.get("campaign_run_id")), ("pipeline run", ev.get("pipeline_run_id")),
    ]))
    parts.append("<h2>Frozen inputs</h2>")
    parts.append(_kv([
        ("audit set", f"{data.get('source')} (limit {_fmt(data.get('limit'))}, seed {_fmt(data.get('seed'))})"),
        ("samples", data.get("count")), ("data digest", data.get("digest")),
        ("expected digest", data.get("expected_digest")),
        ("calibration", f"{cal.get('id')} ({cal.get('mode')}, α {_fmt(cal.get('alpha'))})"),
        ("calibration file digest", cal.get("digest")), ("calibration source", cal.get("source")),
        ("preset", ev.get("preset")), ("editor", json.dumps(ev.get("editor"), sort_keys=True)),
        ("evaluation key", ev.get("evaluation_key")),
    ]))
    parts.append("<h2>Audited versions</h2>")
    metrics = ("bpm", "s_modify", "s_preserve", "s_region")
    rows = [[s["alias"], s["version"], s["status"], s.get("samples_scored"), s.get("samples_failed"),
             *[(s.get("means") or {}).get(m) for m in metrics], s.get("checkpoint_digest")]
            for s in what["subjects"]]
    parts.append(_table(["alias", "version", "status", "scored", "failed", *metrics, "checkpoint digest"], rows,
                        [s["status"] for s in what["subjects"]]))
    parts.append("<h2>Rules</h2>")
    rule_rows = [[r["subject"], rule_label(r), r.get("value"), r.get("threshold"), r["verdict"], r.get("detail")]
                 for r in record["rules"]]
    parts.append(_table(["subject", "rule", "value", "threshold", "verdict", "detail"], rule_rows,
                        [r["verdict"] for r in record["rules"]]))
    baselines = record.get("baselines") or {}
    if baselines:
        parts.append("<h2>Previous audits compared with</h2>")
        parts.append(_table(["alias", "run", "version", "date", "bpm"], [
            [a, (b or {}).get("run_id"), (b or {}).get("version"), (b or {}).get("date"),
             ((b or {}).get("means") or {}).get("bpm")] for a, b in baselines.items()]))
    parts.append("</body></html>")
    return "\n".join(parts)


def verdict_table(record: Mapping[str, Any]) -> str:
    """A short plain-text table for the terminal: one line per rule, then the verdict."""
    rows = [(str(r["subject"]), rule_label(r), _short(r.get("value")), _short(r.get("threshold")),
             str(r["verdict"]).upper()) for r in record["rules"]]
    headers = ("subject", "rule", "value", "threshold", "verdict")
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    versions = ", ".join(f"{s['alias']}=v{s['version']} {s['status'].upper()}" for s in record["what"]["subjects"])
    failed = sum(r["verdict"] == "fail" for r in record["rules"])
    lines.append("")
    lines.append(f"audit {record['verdict'].upper()}: {record['what']['model']} ({versions}); "
                 f"{failed} of {len(record['rules'])} rules failed")
    return "\n".join(lines)
