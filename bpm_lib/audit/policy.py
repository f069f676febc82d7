"""The audit policy (YAML): what to audit, on which frozen data and calibration, and the
rules a model version must meet.

Read with ``yaml.safe_load``; unknown keys, wrong types and out-of-range values are
:class:`~bpm_lib.errors.ConfigError` naming the dotted key (``policy: rules.min.bmp:
unknown metric 'bmp' (did you mean 'bpm'?)``). Relative paths (calibration, a local audit
set) are resolved against the policy file's folder. See ``examples/audit_policy.yaml``.

Rule semantics (applied by :mod:`bpm_lib.audit.evaluate`):

* ``min`` / ``max``: bound on a metric's mean over the scored samples of each audited
  alias (``s_preserve`` is a distance: a ``max`` bound is the natural one);
* ``min_by_edit_type`` / ``max_by_edit_type``: the same per edit type; an edit type
  without scored samples fails (the audit cannot show the bound holds);
* ``max_regression.vs_previous``: largest allowed worsening against the latest earlier
  comparable audit (same model, audit-set digest, calibration and evaluation settings)
  of the same alias (``baseline: alias``) or the same model version (``baseline:
  version``); worsening is a drop for higher-is-better metrics and a rise for
  ``s_preserve``, in the metric's own units; no earlier audit → passes, saying so;
* ``max_regression.vs_champion``: the same against the champion alias of this audit;
* ``min_samples``: least scored samples per alias;
* ``max_failed_samples``: most failed samples per alias, as a ``count`` and/or a
  ``fraction`` of the samples.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bpm_lib.aggregate import SCORE_KEYS
from bpm_lib.errors import BpmError, ConfigError
from bpm_lib.types import EDIT_TYPES

METRICS: tuple[str, ...] = tuple(SCORE_KEYS)
BASELINES = ("alias", "version")
DEFAULT_EXPERIMENT = "bpm-audits"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# MLflow alias names: letters, digits, '_' and '-' ("latest" and "vN" are reserved there).
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class AuditError(BpmError):
    """An audit could not be carried out (unknown alias, calibration mismatch, …)."""


class AuditViolation(AuditError):
    """The audited model versions violate the policy (raised by the pipeline's last step)."""


# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class AuditSetPolicy:
    """The frozen audit set: a dataset SOURCE (as ``bpm data fetch``) or a fetched EvalSet
    folder, the subset (``limit``/``seed``/``stratify``) and the digest it must have."""

    source: str
    digest: str
    limit: int | None = None
    seed: int = 0
    stratify: str | None = None


@dataclass(frozen=True)
class CalibrationPolicy:
    """The frozen calibration file (local path or ``s3://``) and, optionally, its expected id."""

    path: str
    id: str | None = None


@dataclass(frozen=True)
class EditorPolicy:
    """How every audited version edits: a registered editor and its settings."""

    name: str = "ip2p"
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    mask_guidance: bool = False


@dataclass(frozen=True)
class RegressionPolicy:
    vs_previous: dict[str, float] = field(default_factory=dict)
    vs_champion: dict[str, float] = field(default_factory=dict)
    baseline: Literal["alias", "version"] = "alias"


@dataclass(frozen=True)
class FailedSamplesPolicy:
    count: int | None = None
    fraction: float | None = None


@dataclass(frozen=True)
class RulesPolicy:
    min: dict[str, float] = field(default_factory=dict)
    max: dict[str, float] = field(default_factory=dict)
    min_by_edit_type: dict[str, dict[str, float]] = field(default_factory=dict)
    max_by_edit_type: dict[str, dict[str, float]] = field(default_factory=dict)
    max_regression: RegressionPolicy = RegressionPolicy()
    min_samples: int | None = None
    max_failed_samples: FailedSamplesPolicy | None = None

    @property
    def empty(self) -> bool:
        return not (self.min or self.max or self.min_by_edit_type or self.max_by_edit_type
                    or self.max_regression.vs_previous or self.max_regression.vs_champion
                    or self.min_samples is not None or self.max_failed_samples is not None)


@dataclass(frozen=True)
class AuditTracking:
    uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    evaluation_experiment: str = DEFAULT_EXPERIMENT


@dataclass(frozen=True)
class AuditPolicy:
    name: str
    model: str
    aliases: tuple[str, ...]
    audit_set: AuditSetPolicy
    calibration: CalibrationPolicy
    rules: RulesPolicy
    editor: EditorPolicy = EditorPolicy()
    champion: str = "champion"
    preset: str = "tiny-random"
    parser: str | None = None
    localizer: str | None = None
    embedder: str | None = None
    batch_size: int = 16
    tracking: AuditTracking = AuditTracking()
    source_path: str | None = None  # the file it was read from (not a YAML key)
    text_digest: str | None = None  # sha256 of the YAML text (not a YAML key)

    def to_dict(self) -> dict[str, Any]:
        """The policy as YAML-ready data (what :func:`parse_policy` reads back)."""
        rules = self.rules
        out: dict[str, Any] = {
            "name": self.name,
            "model": self.model,
            "aliases": list(self.aliases),
            "champion": self.champion,
            "audit_set": {"source": self.audit_set.source, "digest": self.audit_set.digest,
                          "limit": self.audit_set.limit, "seed": self.audit_set.seed,
                          "stratify": self.audit_set.stratify},
            "calibration": {"path": self.calibration.path, "id": self.calibration.id},
            "preset": self.preset,
            "parser": self.parser,
            "localizer": self.localizer,
            "embedder": self.embedder,
            "batch_size": self.batch_size,
            "editor": {"name": self.editor.name, "settings": dict(self.editor.settings),
                       "seed": self.editor.seed, "mask_guidance": self.editor.mask_guidance},
            "rules": {
                "min": dict(rules.min),
                "max": dict(rules.max),
                "min_by_edit_type": {k: dict(v) for k, v in rules.min_by_edit_type.items()},
                "max_by_edit_type": {k: dict(v) for k, v in rules.max_by_edit_type.items()},
                "max_regression": {"vs_previous": dict(rules.max_regression.vs_previous),
                                   "vs_champion": dict(rules.max_regression.vs_champion),
                                   "baseline": rules.max_regression.baseline},
                "min_samples": rules.min_samples,
                "max_failed_samples": None if rules.max_failed_samples is None else {
                    "count": rules.max_failed_samples.count, "fraction": rules.max_failed_samples.fraction},
            },
            "tracking": {"uri": self.tracking.uri, "experiment": self.tracking.experiment,
                         "evaluation_experiment": self.tracking.evaluation_experiment},
        }
        return out


# --------------------------------------------------------------------------- parsing


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"policy: {where}: {message}" if where else f"policy: {message}")


def _mapping(value: Any, where: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where or "top level", f"expected a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str) or key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            dotted = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"policy: unknown key {dotted}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else f"; known keys: {', '.join(allowed)}"))
    for key in required:
        if value.get(key) is None:
            raise ConfigError(f"policy: missing required key {where + '.' if where else ''}{key}")
    return value


def _str(value: Any, where: str, *, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"expected a non-empty string, got {value!r}")
    if pattern is not None and not pattern.match(value):
        raise _fail(where, f"must match {pattern.pattern}, got {value!r}")
    return value


def _opt_str(value: Any, where: str) -> str | None:
    return None if value is None else _str(value, where)


def _int(value: Any, where: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise _fail(where, f"must be >= {minimum}, got {value}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(where, f"expected a number, got {value!r}")
    f = float(value)
    if math.isnan(f) or math.isinf(f):
        raise _fail(where, f"must be finite, got {value!r}")
    return f


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, f"expected true/false, got {value!r}")
    return value


def _metric_bounds(value: Any, where: str, *, non_negative: bool = False) -> dict[str, float]:
    if value is None:
        return {}
    data = _mapping(value, where, METRICS)
    out: dict[str, float] = {}
    for metric, bound in data.items():
        number = _number(bound, f"{where}.{metric}")
        if non_negative and number < 0:
            raise _fail(f"{where}.{metric}", f"an allowed regression must be >= 0, got {number}")
        out[metric] = number
    return out


def _by_edit_type(value: Any, where: str) -> dict[str, dict[str, float]]:
    if value is None:
        return {}
    data = _mapping(value, where, EDIT_TYPES)
    return {etype: _metric_bounds(bounds, f"{where}.{etype}") for etype, bounds in data.items()}


def _audit_set(value: Any, base: Path | None) -> AuditSetPolicy:
    where = "audit_set"
    data = _mapping(value, where, ("source", "digest", "limit", "seed", "stratify"), ("source", "digest"))
    source = _resolve_source(_str(data["source"], f"{where}.source"), base)
    digest = _str(data["digest"], f"{where}.digest")
    if not _DIGEST.match(digest):
        raise _fail(f"{where}.digest", f"expected sha256:<64 hex> (the EvalSet digest of `bpm data fetch`), got {digest!r}")
    limit = None if data.get("limit") is None else _int(data["limit"], f"{where}.limit", minimum=1)
    stratify = _opt_str(data.get("stratify"), f"{where}.stratify")
    if stratify is not None and stratify != "edit-type":
        raise _fail(f"{where}.stratify", f"must be 'edit-type' or null, got {stratify!r}")
    return AuditSetPolicy(source=source, digest=digest, limit=limit,
                          seed=_int(data.get("seed", 0), f"{where}.seed"), stratify=stratify)


def _is_remote(path: str) -> bool:
    return "://" in path


def _resolve_path(path: str, base: Path | None) -> str:
    if base is None or _is_remote(path) or Path(path).expanduser().is_absolute():
        return str(Path(path).expanduser()) if not _is_remote(path) else path
    return str((base / path).resolve())


_SOURCE_PREFIX = re.compile(r"^([a-z][a-z0-9-]*):(.+)$", re.DOTALL)


def _resolve_source(source: str, base: Path | None) -> str:
    """``NAME:relative/path`` and ``relative/path`` are relative to the policy's folder."""
    if base is None or _is_remote(source):
        return source
    match = _SOURCE_PREFIX.match(source)
    if match:
        name, path = match.group(1), match.group(2)
        return f"{name}:{_resolve_path(path, base)}" if not _is_remote(path) else source
    candidate = base / source
    if not Path(source).is_absolute() and candidate.exists():
        return str(candidate.resolve())
    return source  # a dataset name such as ``demo``


def _calibration(value: Any, base: Path | None) -> CalibrationPolicy:
    where = "calibration"
    if isinstance(value, str):
        value = {"path": value}
    data = _mapping(value, where, ("path", "id"), ("path",))
    cal_id = _opt_str(data.get("id"), f"{where}.id")
    return CalibrationPolicy(path=_resolve_path(_str(data["path"], f"{where}.path"), base), id=cal_id)


def _editor(value: Any) -> EditorPolicy:
    where = "editor"
    if value is None:
        return EditorPolicy()
    data = _mapping(value, where, ("name", "settings", "seed", "mask_guidance"))
    settings = data.get("settings") or {}
    if not isinstance(settings, Mapping) or not all(isinstance(k, str) for k in settings):
        raise _fail(f"{where}.settings", f"expected a mapping of option names to values, got {settings!r}")
    return EditorPolicy(name=_str(data.get("name", "ip2p"), f"{where}.name"), settings=dict(settings),
                        seed=_int(data.get("seed", 0), f"{where}.seed"),
                        mask_guidance=_bool(data.get("mask_guidance", False), f"{where}.mask_guidance"))


def _rules(value: Any) -> RulesPolicy:
    where = "rules"
    data = _mapping(value, where, ("min", "max", "min_by_edit_type", "max_by_edit_type", "max_regression",
                                   "min_samples", "max_failed_samples"))
    reg_where = f"{where}.max_regression"
    reg_data = _mapping(data.get("max_regression") or {}, reg_where, ("vs_previous", "vs_champion", "baseline"))
    baseline = reg_data.get("baseline", "alias")
    if baseline not in BASELINES:
        raise _fail(f"{reg_where}.baseline", f"must be one of {BASELINES}, got {baseline!r}")
    regression = RegressionPolicy(
        vs_previous=_metric_bounds(reg_data.get("vs_previous"), f"{reg_where}.vs_previous", non_negative=True),
        vs_champion=_metric_bounds(reg_data.get("vs_champion"), f"{reg_where}.vs_champion", non_negative=True),
        baseline=baseline,
    )
    failed: FailedSamplesPolicy | None = None
    raw_failed = data.get("max_failed_samples")
    if raw_failed is not None:
        fw = f"{where}.max_failed_samples"
        fdata = _mapping(raw_failed, fw, ("count", "fraction"))
        count = None if fdata.get("count") is None else _int(fdata["count"], f"{fw}.count", minimum=0)
        fraction = None if fdata.get("fraction") is None else _number(fdata["fraction"], f"{fw}.fraction")
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise _fail(f"{fw}.fraction", f"must be in [0, 1], got {fraction}")
        if count is None and fraction is None:
            raise _fail(fw, "give count, fraction or both")
        failed = FailedSamplesPolicy(count=count, fraction=fraction)
    min_samples = data.get("min_samples")
    return RulesPolicy(
        min=_metric_bounds(data.get("min"), f"{where}.min"),
        max=_metric_bounds(data.get("max"), f"{where}.max"),
        min_by_edit_type=_by_edit_type(data.get("min_by_edit_type"), f"{where}.min_by_edit_type"),
        max_by_edit_type=_by_edit_type(data.get("max_by_edit_type"), f"{where}.max_by_edit_type"),
        max_regression=regression,
        min_samples=None if min_samples is None else _int(min_samples, f"{where}.min_samples", minimum=1),
        max_failed_samples=failed,
    )


def _tracking(value: Any) -> AuditTracking:
    if value is None:
        return AuditTracking()
    data = _mapping(value, "tracking", ("uri", "experiment", "evaluation_experiment"))
    experiment = _str(data.get("experiment", DEFAULT_EXPERIMENT), "tracking.experiment")
    return AuditTracking(uri=_opt_str(data.get("uri"), "tracking.uri"), experiment=experiment,
                         evaluation_experiment=_str(data.get("evaluation_experiment", experiment),
                                                    "tracking.evaluation_experiment"))


TOP_KEYS = ("name", "model", "aliases", "champion", "audit_set", "calibration", "preset", "parser", "localizer",
            "embedder", "batch_size", "editor", "rules", "tracking")


def parse_policy(data: Any, *, base: str | Path | None = None, source_path: str | None = None,
                 text_digest: str | None = None) -> AuditPolicy:
    """Validate ``data`` (the YAML document) into an :class:`AuditPolicy`.

    ``base``: folder that relative paths are resolved against (the policy file's folder).
    """
    base_path = Path(base).resolve() if base is not None else None
    top = _mapping(data, "", TOP_KEYS, ("name", "model", "aliases", "audit_set", "calibration", "rules"))
    aliases_raw = top["aliases"]
    if isinstance(aliases_raw, str):
        aliases_raw = [aliases_raw]
    if not isinstance(aliases_raw, list) or not aliases_raw:
        raise _fail("aliases", f"expected a non-empty list of registered-model aliases, got {aliases_raw!r}")
    aliases = tuple(_str(a, f"aliases[{i}]", pattern=_ALIAS) for i, a in enumerate(aliases_raw))
    dupes = sorted({a for a in aliases if aliases.count(a) > 1})
    if dupes:
        raise _fail("aliases", f"duplicate aliases {dupes}")
    rules = _rules(top["rules"])
    if rules.empty:
        raise _fail("rules", "no rule given: an audit needs at least one rule")
    champion = _str(top.get("champion", "champion"), "champion", pattern=_ALIAS)
    if rules.max_regression.vs_champion and champion not in aliases:
        raise _fail("rules.max_regression.vs_champion",
                    f"needs the champion alias {champion!r} among aliases {list(aliases)}")
    if rules.max_regression.vs_champion and len(aliases) < 2:
        raise _fail("rules.max_regression.vs_champion", "needs at least one alias besides the champion")
    preset = _str(top.get("preset", "tiny-random"), "preset")
    if preset.endswith(".json"):  # a preset file beside the policy
        preset = _resolve_path(preset, base_path)
    return AuditPolicy(
        name=_str(top["name"], "name", pattern=_NAME),
        model=_str(top["model"], "model"),
        aliases=aliases,
        audit_set=_audit_set(top["audit_set"], base_path),
        calibration=_calibration(top["calibration"], base_path),
        rules=rules,
        editor=_editor(top.get("editor")),
        champion=champion,
        preset=preset,
        parser=_opt_str(top.get("parser"), "parser"),
        localizer=_opt_str(top.get("localizer"), "localizer"),
        embedder=_opt_str(top.get("embedder"), "embedder"),
        batch_size=_int(top.get("batch_size", 16), "batch_size", minimum=1),
        tracking=_tracking(top.get("tracking")),
        source_path=source_path,
        text_digest=text_digest,
    )


def policy_from_text(text: str, *, base: str | Path | None = None, source_path: str | None = None) -> AuditPolicy:
    """Parse policy YAML text (``yaml.safe_load``)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    from bpm_lib.config import read_yaml_text

    data = read_yaml_text(text, f"policy {source_path or 'policy'}")
    digest = "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
    return parse_policy(data, base=base, source_path=source_path, text_digest=digest)


def load_policy(path: str | Path) -> AuditPolicy:
    """Read and validate the policy file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"policy file not found: {p}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"policy file {p} cannot be read: {e}") from e
    return policy_from_text(text, base=p.resolve().parent, source_path=str(p))
