"""The run configuration of ``bpm run`` / ``bpm submit`` (YAML), validated before anything runs.

Unknown keys and wrong types are rejected with the dotted key named, e.g.
``config: candidates[1].editor: expected a string, got 3``. YAML is read with
``yaml.safe_load`` only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bpm_lib.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_CONFIG_VALUES = 100_000  # after expanding YAML aliases: a larger config is an alias bomb


@dataclass(frozen=True)
class DatasetConfig:
    """Where the evaluation set comes from (``bpm data fetch`` SOURCE forms)."""

    source: str = "demo"
    limit: int | None = None
    seed: int = 0
    stratify: str | None = None


@dataclass(frozen=True)
class CandidateConfig:
    """One checkpoint to evaluate.

    ``checkpoint``: local dir, hub id, ``s3://…``, ``models:/name/version``,
    ``models:/name@alias``, ``runs:/…``, or ``evalset:PATH`` (a folder inside the fetched
    EvalSet, e.g. the demo's precomputed candidates).
    """

    name: str
    editor: str = "precomputed"
    checkpoint: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    mask_guidance: bool = False


@dataclass(frozen=True)
class TrackingConfig:
    uri: str | None = None
    experiment: str = "bpm-eval"
    register_tags: bool = True


@dataclass(frozen=True)
class RunConfig:
    name: str
    candidates: tuple[CandidateConfig, ...]
    dataset: DatasetConfig = DatasetConfig()
    preset: str = "tiny-random"
    parser: str | None = None
    localizer: str | None = None
    embedder: str | None = None
    alpha: float = 0.7
    calibration: str | None = None
    batch_size: int = 16
    pipeline: str = "compare_checkpoints"
    tracking: TrackingConfig = TrackingConfig()
    gpu: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"config: name must match {_NAME.pattern}, got {self.name!r}")
        if not self.candidates:
            raise ConfigError("config: candidates: at least one candidate is required")
        names = [c.name for c in self.candidates]
        for i, c in enumerate(self.candidates):
            if not _NAME.match(c.name):
                raise ConfigError(f"config: candidates[{i}].name must match {_NAME.pattern}, got {c.name!r}")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"config: candidates: duplicate names {dupes}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"config: alpha must be in [0, 1], got {self.alpha}")
        if self.batch_size < 1:
            raise ConfigError(f"config: batch_size must be >= 1, got {self.batch_size}")
        if self.pipeline not in ("compare_checkpoints", "checkpoint_eval"):
            raise ConfigError(
                f"config: pipeline must be 'compare_checkpoints' or 'checkpoint_eval', got {self.pipeline!r}"
            )
        if self.pipeline == "checkpoint_eval" and len(self.candidates) != 1:
            raise ConfigError("config: pipeline checkpoint_eval takes exactly one candidate")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _convert(non_none[0], value, where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):  # tuple: RunConfig.to_dict() read back
            raise ConfigError(f"config: {where}: expected a list, got {type(value).__name__}")
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config: {where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config: {where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config: {where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config: {where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config: {where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"config: {where}: unsupported type {tp}")


def _build(cls: Any, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config: {where or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known), key=str)  # YAML keys need not be strings
    if unknown:
        import difflib

        key = unknown[0]
        hint = difflib.get_close_matches(str(key), known, n=1)
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"config: unknown key {prefix}{key}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    kwargs = {}
    for name, f in known.items():
        sub = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"config: missing required key {sub}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config: {where or 'top level'}: {e}") from e


def _check_size(data: Any, limit: int = MAX_CONFIG_VALUES) -> None:
    """Refuse a structure with more than ``limit`` values once YAML aliases are expanded:
    a few lines of nested aliases ("billion laughs") would otherwise make every later
    traversal (digest, asdict, JSON) take forever."""
    count = 0
    stack = [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            raise ConfigError(f"config: more than {limit} values once YAML aliases are expanded "
                              "(an alias bomb?); refusing it")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def parse_config(data: Any) -> RunConfig:
    _check_size(data)
    return typing.cast(RunConfig, _build(RunConfig, data, ""))


def read_yaml_file(path: str | os.PathLike[str], what: str = "config") -> Any:
    """``yaml.safe_load`` of a file; every way it can be unreadable is a :class:`ConfigError`
    naming the file (missing, a folder, not UTF-8, not YAML, nested too deeply)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"{what} file not found: {p}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {p}: not UTF-8 text ({e})") from e
    except OSError as e:  # a folder, no permission, …
        raise ConfigError(f"{what} {p}: cannot read: {e}") from e
    return read_yaml_text(text, f"{what} {p}")


def read_yaml_text(text: str, where: str) -> Any:
    """``yaml.safe_load`` of ``text``; errors are :class:`ConfigError` naming ``where``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from e
    except RecursionError as e:
        raise ConfigError(f"{where}: not valid YAML: nested too deeply") from e


def load_config(path: str | Path) -> RunConfig:
    return parse_config(read_yaml_file(path, "config"))


def demo_config(name: str = "bpm-demo") -> RunConfig:
    """The demo campaign: the bundled demo set, tiny-random preset, its three candidates."""
    from bpm_lib.io.datasets.demo import DEMO_CANDIDATES

    return RunConfig(
        name=name,
        dataset=DatasetConfig(source="demo"),
        preset="tiny-random",
        candidates=tuple(
            CandidateConfig(name=c, editor="precomputed", checkpoint=f"evalset:candidates/{c}")
            for c in DEMO_CANDIDATES
        ),
    )
