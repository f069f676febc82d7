"""``bpm backends``: what can be plugged into each role, the presets, and the baselines."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backends",
        help="list the registered backends of every role, the presets and the baseline metrics",
        description=(
            "List every backend registered for each role (parser, detector, segmenter, embedder, "
            "localizer, editor) with a one-line description, the built-in presets (which "
            "backends a run uses; pass one to --preset or a JSON file of your own) and the "
            "baseline metrics. Presets marked 'meaningless' use random weights: for tests only."
        ),
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def collect() -> dict[str, Any]:
    """Roles → registered backends, presets and baselines, as JSON-able data."""
    import bpm_lib.backends  # noqa: F401 - registers the built-in backends
    from bpm_lib.backends.base import ROLES
    from bpm_lib.backends.baselines import BASELINES
    from bpm_lib.presets import list_presets, load_preset

    presets = []
    for name in list_presets():
        preset = load_preset(name)
        presets.append(
            {
                "name": preset.name,
                "description": preset.description,
                "meaningless": preset.meaningless,
                "alpha": preset.alpha,
            }
        )
    return {
        "roles": {
            role: [{"name": e.name, "description": e.description} for e in registry.entries()]
            for role, registry in ROLES.items()
        },
        "presets": presets,
        "baselines": [
            {
                "name": e.name,
                "description": e.description,
                "higher_is_better": bool(getattr(e.factory, "higher_is_better", False)),
            }
            for e in BASELINES.entries()
        ],
    }


def _table(title: str, rows: list[tuple[str, str]]) -> list[str]:
    lines = [f"{title}:"]
    if not rows:
        return [*lines, "  (none registered)"]
    width = max(len(name) for name, _ in rows)
    lines.extend(f"  {name.ljust(width)}  {text}".rstrip() for name, text in rows)
    return lines


def render_text(data: dict[str, Any]) -> str:
    lines: list[str] = []
    for role, entries in data["roles"].items():
        lines += _table(role, [(e["name"], e["description"]) for e in entries])
        lines.append("")
    lines += _table(
        "presets",
        [(p["name"], p["description"] + (" [meaningless]" if p["meaningless"] else "")) for p in data["presets"]],
    )
    lines.append("")
    lines += _table("baselines", [(b["name"], b["description"]) for b in data["baselines"]])
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    data = collect()
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(render_text(data))
    return 0
