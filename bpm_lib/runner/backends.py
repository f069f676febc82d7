"""Build the backends of a run once, from a preset plus explicit overrides.

Each role is built on its own (:func:`build_role`), so a stage loads only the models it
uses: the parse stage never loads CLIP, the judge stage never loads SAM.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from bpm_lib.backends.base import ROLES, Embedder, InstructionParser, Localizer

log = logging.getLogger(__name__)


def role_spec(role: str, preset: str | None, override: str | None = None,
              kwargs: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(registry name, kwargs) of ``role``: the override if given, else the preset's."""
    if override:
        return override, dict(kwargs or {})
    if not preset:
        raise ValueError(f"no preset given and no {role} chosen")
    from bpm_lib.presets import load_preset

    spec = load_preset(preset)
    name, preset_kwargs = spec.component(role)
    if not _available(role, name) and spec.spec(role).fallback is not None:
        fallback, fallback_kwargs = spec.component(role, fallback=True)
        log.warning("%s %r of preset %r is not available here (%s); using its fallback %r",
                    role, name, preset, _unavailable_reason(role, name), fallback)
        name, preset_kwargs = fallback, fallback_kwargs
    return name, {**preset_kwargs, **(kwargs or {})}


def _factory(role: str, name: str) -> Any:
    import bpm_lib.backends  # noqa: F401 - registers the built-in backends

    return ROLES[role].get(name).factory


def _available(role: str, name: str) -> bool:
    """A backend class may declare ``available() -> bool`` (e.g. an LLM endpoint is
    configured); backends that don't are assumed available."""
    check = getattr(_factory(role, name), "available", None)
    return bool(check()) if callable(check) else True


def _unavailable_reason(role: str, name: str) -> str:
    reason = getattr(_factory(role, name), "unavailable_reason", None)
    return str(reason()) if callable(reason) else "not configured"


def build_role(role: str, preset: str | None, override: Any = None, kwargs: dict[str, Any] | None = None) -> Any:
    """Build one role's backend. ``override`` may be a registry name or an instance."""
    import bpm_lib.backends  # noqa: F401 - registers the built-in backends

    if override is not None and not isinstance(override, str):
        return override
    name, kw = role_spec(role, preset, override, kwargs)
    return ROLES[role].create(name, **kw)


@dataclass
class Backends:
    """The three roles a scoring run needs, already built (models loaded once)."""

    parser: InstructionParser
    localizer: Localizer
    embedder: Embedder
    preset_name: str | None = None

    def identity(self) -> dict[str, Any]:
        return {
            "preset": self.preset_name,
            "parser": self.parser.identity(),
            "localizer": self.localizer.identity(),
            "embedder": self.embedder.identity(),
        }

    @property
    def meaningless(self) -> bool:
        ident = self.identity()
        return any(is_meaningless(ident[k]) for k in ("parser", "localizer", "embedder"))


def is_meaningless(identity: Any) -> bool:
    """True when any part of a backend identity says its weights are random."""
    if isinstance(identity, dict):
        return bool(identity.get("meaningless")) or any(is_meaningless(v) for v in identity.values())
    return False


def build_backends(
    preset: str | None = "tiny-random",
    *,
    parser: str | InstructionParser | None = None,
    localizer: str | Localizer | None = None,
    embedder: str | Embedder | None = None,
) -> Backends:
    """Backends of ``preset`` (a name or JSON path), each role overridable by a registry
    name or an instance."""
    return Backends(
        parser=build_role("parser", preset, parser),
        localizer=build_role("localizer", preset, localizer),
        embedder=build_role("embedder", preset, embedder),
        preset_name=preset,
    )
