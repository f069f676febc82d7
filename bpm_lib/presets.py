"""Presets: which backend plays each role, with which settings. Presets are data.

A preset is a JSON file (built-ins in ``bpm_lib/presets/``: ``paper``, ``fast``,
``tiny-random``)::

    {"name": "paper", "description": "...",
     "parser":    {"name": "openai", "kwargs": {...}, "fallback": {"name": "rules", "kwargs": {}}},
     "localizer": {"name": "detect-segment", "kwargs": {
                       "detector":  {"name": "grounding-dino", "kwargs": {"model": ..., "revision": "main", ...}},
                       "segmenter": {"name": "sam", "kwargs": {...}},
                       "edited_mask_boxes": "source"}},
     "embedder":  {"name": "open-clip", "kwargs": {"model_name": "ViT-L-14", "pretrained": "openai"}},
     "alpha": 0.7, "meaningless": false, "notes": ["..."]}

Unknown keys are rejected naming the key. A component's ``kwargs`` may hold nested
components (``{"name", "kwargs"}`` under a key ``k``); :meth:`Preset.component` passes
them to the factory as ``k=<name>, k_kwargs=<kwargs>`` and also answers for the nested
roles (``component("detector")``). Model revisions are explicit ``"main"`` (commit
hashes cannot be resolved offline): pin them with :func:`override`, e.g.
``override(p, **{"localizer.kwargs.detector.kwargs.revision": "<sha>"})``.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from bpm_lib.errors import ConfigError

log = logging.getLogger(__name__)

ROLES = ("parser", "localizer", "embedder")
"""Roles a preset names directly."""

_PRESET_KEYS = ("name", "description", "parser", "localizer", "embedder", "alpha", "meaningless", "notes")
_COMPONENT_KEYS = ("name", "kwargs", "fallback")
_NESTED_KEYS = frozenset({"name", "kwargs"})


def _is_nested_component(value: Any) -> bool:
    """An object with a string ``name`` inside kwargs is a nested component spec."""
    return isinstance(value, Mapping) and isinstance(value.get("name"), str)


def _check_json_value(value: Any, where: str) -> None:
    """Kwargs must be plain JSON (so presets round-trip and hash stably)."""
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json_value(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where} keys must be strings, got {key!r}")
            _check_json_value(item, f"{where}.{key}")
        return
    raise ConfigError(f"{where} must be JSON data (str, number, bool, null, list, object), got {type(value).__name__}")


def _only_keys(data: Any, allowed: tuple[str, ...], where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{where}: unknown key {key!r}{suggestion} (allowed: {', '.join(allowed)})")
    return data


@dataclass(frozen=True)
class ComponentSpec:
    """One role's backend: registry ``name``, constructor ``kwargs`` and an optional
    ``fallback`` spec (used when the primary cannot run, e.g. no LLM endpoint)."""

    name: str
    kwargs_json: str = "{}"  # canonical JSON: keeps the frozen dataclass truly immutable
    fallback: ComponentSpec | None = None

    @property
    def kwargs(self) -> dict[str, Any]:
        """A fresh copy of the kwargs (nested components left as ``{"name", "kwargs"}``)."""
        return dict(json.loads(self.kwargs_json))

    @classmethod
    def create(cls, name: str, kwargs: Mapping[str, Any] | None = None, fallback: ComponentSpec | None = None) -> ComponentSpec:
        return cls.from_dict(
            {"name": name, "kwargs": dict(kwargs or {}), **({"fallback": fallback.to_dict()} if fallback else {})},
            "component",
        )

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ComponentSpec:
        data = _only_keys(data, _COMPONENT_KEYS, where)
        name = data.get("name")
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ConfigError(f"{where}.name must be a non-empty trimmed string, got {name!r}")
        kwargs = data.get("kwargs", {})
        if not isinstance(kwargs, Mapping):
            raise ConfigError(f"{where}.kwargs must be a JSON object, got {type(kwargs).__name__}")
        _check_json_value(kwargs, f"{where}.kwargs")
        for key, value in kwargs.items():
            if _is_nested_component(value):
                _only_keys(value, tuple(sorted(_NESTED_KEYS)), f"{where}.kwargs.{key}")
                cls.from_dict(value, f"{where}.kwargs.{key}")  # validates the nested spec
                if f"{key}_kwargs" in kwargs:
                    raise ConfigError(
                        f"{where}.kwargs: {key!r} is a nested component, so {key + '_kwargs'!r} must not be set too"
                    )
        fallback_data = data.get("fallback")
        fallback = None if fallback_data is None else cls.from_dict(fallback_data, f"{where}.fallback")
        if fallback is not None and fallback.fallback is not None:
            raise ConfigError(f"{where}.fallback must not have a fallback of its own")
        return cls(name=name, kwargs_json=json.dumps(kwargs, sort_keys=True), fallback=fallback)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kwargs": self.kwargs}
        if self.fallback is not None:
            out["fallback"] = self.fallback.to_dict()
        return out

    def factory_kwargs(self) -> dict[str, Any]:
        """Kwargs for the registry factory: a nested component under ``k`` becomes
        ``k=<name>, k_kwargs=<kwargs>``."""
        out: dict[str, Any] = {}
        for key, value in self.kwargs.items():
            if _is_nested_component(value):
                out[key] = value["name"]
                out[f"{key}_kwargs"] = dict(value.get("kwargs", {}))
            else:
                out[key] = value
        return out

    def nested(self) -> dict[str, ComponentSpec]:
        """Nested components by their key (``{"detector": ..., "segmenter": ...}``)."""
        return {
            key: ComponentSpec.from_dict(value, key)
            for key, value in self.kwargs.items()
            if _is_nested_component(value)
        }


@dataclass(frozen=True)
class Preset:
    """A validated preset; build one with :func:`load_preset` or :meth:`from_dict`."""

    name: str
    description: str
    parser: ComponentSpec
    localizer: ComponentSpec
    embedder: ComponentSpec
    alpha: float = 0.7
    meaningless: bool = False
    notes: tuple[str, ...] = ()
    source: str | None = field(default=None, compare=False)
    """Where the preset was read from (a file path), for messages only."""

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> Preset:
        where = f"preset {source}" if source else "preset"
        data = _only_keys(data, _PRESET_KEYS, where)
        for key in ("name", "description", *ROLES):
            if key not in data:
                raise ConfigError(f"{where}: missing key {key!r}")
        name = data["name"]
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ConfigError(f"{where}: name must be a non-empty trimmed string, got {name!r}")
        description = data["description"]
        if not isinstance(description, str):
            raise ConfigError(f"{where}: description must be a string, got {type(description).__name__}")
        alpha = data.get("alpha", 0.7)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
            raise ConfigError(f"{where}: alpha must be a number in [0, 1], got {alpha!r}")
        meaningless = data.get("meaningless", False)
        if not isinstance(meaningless, bool):
            raise ConfigError(f"{where}: meaningless must be true or false, got {meaningless!r}")
        notes = data.get("notes", [])
        if not isinstance(notes, (list, tuple)) or not all(isinstance(n, str) for n in notes):
            raise ConfigError(f"{where}: notes must be a list of strings, got {notes!r}")
        specs = {role: ComponentSpec.from_dict(data[role], f"{where}: {role}") for role in ROLES}
        return cls(
            name=name,
            description=description,
            alpha=float(alpha),
            meaningless=meaningless,
            notes=tuple(notes),
            source=source,
            **specs,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``load_preset`` of a file holding it gives an equal preset)."""
        return {
            "name": self.name,
            "description": self.description,
            "parser": self.parser.to_dict(),
            "localizer": self.localizer.to_dict(),
            "embedder": self.embedder.to_dict(),
            "alpha": self.alpha,
            "meaningless": self.meaningless,
            "notes": list(self.notes),
        }

    def digest(self) -> str:
        """sha256 of the canonical JSON form: names exactly what a run was configured with."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def spec(self, role: str, *, fallback: bool = False) -> ComponentSpec:
        """The :class:`ComponentSpec` of ``role``: parser, localizer, embedder, or a
        component nested in one of them (``detector``, ``segmenter``)."""
        if role in ROLES:
            spec: ComponentSpec = getattr(self, role)
        else:
            found = [s.nested()[role] for s in (self.parser, self.localizer, self.embedder) if role in s.nested()]
            if not found:
                known = sorted({*ROLES, *(k for s in (self.parser, self.localizer, self.embedder) for k in s.nested())})
                hint = difflib.get_close_matches(role, known, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ValueError(f"role {role!r} is not in preset {self.name!r}{suggestion} Known: {', '.join(known)}")
            spec = found[0]
        if fallback:
            if spec.fallback is None:
                raise ValueError(f"preset {self.name!r} has no fallback for role {role!r}")
            return spec.fallback
        return spec

    def component(self, role: str, *, fallback: bool = False) -> tuple[str, dict[str, Any]]:
        """(registry name, factory kwargs) of ``role``; the kwargs are a fresh copy."""
        spec = self.spec(role, fallback=fallback)
        return spec.name, spec.factory_kwargs()

    def build(self, role: str, *, fallback: bool = False, **overrides: Any) -> Any:
        """Build ``role``'s backend from its registry, ``overrides`` on top of the kwargs."""
        import bpm_lib.backends  # noqa: F401 - registers the built-in backends
        from bpm_lib.backends.base import ROLES as REGISTRIES

        if role not in REGISTRIES:
            raise ValueError(f"role must be one of {sorted(REGISTRIES)}, got {role!r}")
        name, kwargs = self.component(role, fallback=fallback)
        return REGISTRIES[role].create(name, **{**kwargs, **overrides})

    def build_embedder(self, **overrides: Any) -> Any:
        """The preset's embedder (e.g. ``build_embedder(device="cpu")``)."""
        return self.build("embedder", **overrides)

    def check_registered(self) -> None:
        """Raise :class:`ConfigError` if a component names a backend that is not registered."""
        import bpm_lib.backends  # noqa: F401 - registers the built-in backends
        from bpm_lib.backends.base import ROLES as REGISTRIES

        problems = []
        for role in (*ROLES, *(k for s in (self.parser, self.localizer, self.embedder) for k in s.nested())):
            spec = self.spec(role)
            for candidate in (spec, spec.fallback):
                if candidate is None or role not in REGISTRIES:
                    continue
                try:
                    REGISTRIES[role].get(candidate.name)
                except ValueError as e:
                    problems.append(str(e))
        if problems:
            raise ConfigError(f"preset {self.name!r}: " + "; ".join(problems))


def _builtin_dir() -> Any:
    return resources.files("bpm_lib").joinpath("presets")


def list_presets() -> list[str]:
    """Names of the built-in presets."""
    return sorted(
        entry.name.removesuffix(".json")
        for entry in _builtin_dir().iterdir()
        if entry.name.endswith(".json") and entry.is_file()
    )


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"preset {source}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e


def load_preset(name_or_path: str | os.PathLike[str]) -> Preset:
    """A built-in preset by name (``paper``, ``fast``, ``tiny-random``) or a JSON file.

    A ``PathLike``, an existing file, or a string ending in ``.json`` is read as a file;
    any other string must be a built-in name (else ``ValueError`` with "did you mean").
    """
    if isinstance(name_or_path, os.PathLike) or (
        isinstance(name_or_path, str) and (name_or_path.endswith(".json") or os.path.isfile(name_or_path))
    ):
        path = Path(name_or_path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as e:
            raise ConfigError(f"preset file not found: {path}") from e
        except OSError as e:
            raise ConfigError(f"cannot read preset file {path}: {e}") from e
        return Preset.from_dict(_parse_json(text, str(path)), source=str(path))
    if not isinstance(name_or_path, str):
        raise TypeError(f"name_or_path must be a preset name or a path, got {type(name_or_path).__name__}")
    known = list_presets()
    if name_or_path not in known:
        hint = difflib.get_close_matches(name_or_path, known, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(
            f"unknown preset {name_or_path!r}{suggestion} Known presets: {', '.join(known)} "
            "(or pass a path to a preset JSON file)"
        )
    ref = _builtin_dir().joinpath(f"{name_or_path}.json")
    preset = Preset.from_dict(_parse_json(ref.read_text(encoding="utf-8"), f"{name_or_path}.json"), source=f"{name_or_path}.json")
    if preset.name != name_or_path:
        raise ConfigError(f"built-in preset file {name_or_path}.json names itself {preset.name!r}")
    return preset


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if any(not p for p in parts):
        raise ValueError(f"override key {dotted!r} has an empty part")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(parts[: depth + 1])
            raise ValueError(f"override key {dotted!r}: {where!r} does not exist in the preset")
        node = node[part]
    last = parts[-1]
    if not isinstance(node, dict):
        raise ValueError(f"override key {dotted!r}: {'.'.join(parts[:-1])!r} is not an object")
    # New keys are allowed only inside a kwargs object (a new constructor argument).
    if last not in node and (len(parts) < 2 or parts[-2] != "kwargs"):
        raise ValueError(f"override key {dotted!r}: {last!r} does not exist in the preset")
    node[last] = copy.deepcopy(value)


def override(preset: Preset, /, **changes: Any) -> Preset:
    """A new preset with ``changes`` applied and validated again.

    Keys are field names (``alpha=1.0``, ``embedder={"name": ..., "kwargs": {...}}``,
    a :class:`ComponentSpec` is accepted too) or dotted paths into the JSON form, passed
    with ``**{...}``: ``override(p, **{"embedder.kwargs.pretrained": "/w/clip.safetensors"})``.
    """
    if not isinstance(preset, Preset):
        raise TypeError(f"preset must be a Preset, got {type(preset).__name__}")
    data = preset.to_dict()
    field_names = {f.name for f in fields(Preset)} - {"source"}
    for key, value in changes.items():
        if isinstance(value, ComponentSpec):
            value = value.to_dict()
        elif isinstance(value, tuple) and key == "notes":
            value = list(value)
        head = key.split(".", 1)[0]
        if head not in field_names:
            hint = difflib.get_close_matches(head, sorted(field_names), n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ValueError(f"override key {key!r}: unknown preset field {head!r}{suggestion}")
        _set_path(data, key, value)
    return Preset.from_dict(data, source=preset.source)
