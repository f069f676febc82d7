"""Audit policy parsing: strict keys, types and ranges, each error naming its key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from bpm_lib.audit.policy import (
    AuditPolicy,
    load_policy,
    parse_policy,
    policy_from_text,
)
from bpm_lib.errors import ConfigError

DIGEST = "sha256:" + "ab" * 32
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "audit_policy.yaml"


def minimal() -> dict[str, Any]:
    return {
        "name": "release-audit",
        "model": "image-editor",
        "aliases": ["champion", "challenger"],
        "audit_set": {"source": "demo", "limit": 4, "digest": DIGEST},
        "calibration": {"path": "/cal/frozen.json"},
        "rules": {"min": {"bpm": 0.9}},
    }


def test_minimal_policy_defaults() -> None:
    p = parse_policy(minimal())
    assert isinstance(p, AuditPolicy)
    assert p.aliases == ("champion", "challenger")
    assert p.audit_set.limit == 4 and p.audit_set.seed == 0 and p.audit_set.stratify is None
    assert p.calibration.path == "/cal/frozen.json" and p.calibration.id is None
    assert p.editor.name == "ip2p" and p.editor.settings == {}
    assert p.rules.min == {"bpm": 0.9}
    assert p.rules.max_regression.baseline == "alias"
    assert p.tracking.experiment == "bpm-audits" == p.tracking.evaluation_experiment
    assert p.champion == "champion" and p.preset == "tiny-random"


def test_full_example_file_parses_and_round_trips() -> None:
    p = load_policy(EXAMPLE)
    assert p.model == "image-editor" and p.preset == "paper"
    assert p.rules.min_by_edit_type["add"] == {"bpm": 0.8}
    assert p.rules.max == {"s_preserve": 0.08}
    assert p.rules.max_regression.vs_previous == {"bpm": 0.05}
    assert p.rules.max_regression.vs_champion == {"bpm": 0.10}
    assert p.rules.max_failed_samples is not None and p.rules.max_failed_samples.count == 10
    assert p.rules.max_failed_samples.fraction == 0.05
    # relative calibration path → relative to the policy file; remote sources stay as they are
    assert p.calibration.path == str((EXAMPLE.parent / "calibration/frozen-2025-01.json").resolve())
    assert p.audit_set.source == "magicbrush:s3://bpm-eval-data/magicbrush/test"
    assert p.text_digest is not None and p.text_digest.startswith("sha256:")
    again = parse_policy(yaml.safe_load(yaml.safe_dump(p.to_dict())))
    assert again.to_dict() == p.to_dict()


def test_relative_audit_set_paths_resolve_against_the_policy_folder(tmp_path: Path) -> None:
    (tmp_path / "frozen_set").mkdir()
    data = minimal()
    data["audit_set"]["source"] = "frozen_set"
    data["calibration"] = "cal.json"  # the short form: just the path
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    p = load_policy(tmp_path / "p.yaml")
    assert p.audit_set.source == str((tmp_path / "frozen_set").resolve())
    assert p.calibration.path == str((tmp_path / "cal.json").resolve())
    data["preset"] = "presets/mine.json"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    assert load_policy(tmp_path / "p.yaml").preset == str((tmp_path / "presets/mine.json").resolve())
    data["audit_set"]["source"] = "jsonl:frozen_set/manifest.jsonl"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    assert load_policy(tmp_path / "p.yaml").audit_set.source == f"jsonl:{tmp_path.resolve()}/frozen_set/manifest.jsonl"


def _with(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(minimal())
    node = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_with("extra", 1), r"unknown key extra"),
        (_with("rules.mni", {"bpm": 1}), r"unknown key rules\.mni \(did you mean 'min'\?\)"),
        (_with("rules.min.bmp", 1), r"unknown key rules\.min\.bmp \(did you mean 'bpm'\?\)"),
        (_with("rules.min.bpm", "high"), r"rules\.min\.bpm: expected a number, got 'high'"),
        (_with("rules.min.bpm", float("nan")), r"rules\.min\.bpm: must be finite"),
        (_with("rules.min_by_edit_type", {"paint": {"bpm": 1}}), r"unknown key rules\.min_by_edit_type\.paint"),
        (_with("rules.max_by_edit_type", {"add": {"s_presrve": 1}}),
         r"rules\.max_by_edit_type\.add\.s_presrve \(did you mean 's_preserve'\?\)"),
        (_with("rules.max_regression", {"vs_previous": {"bpm": -0.1}}),
         r"rules\.max_regression\.vs_previous\.bpm: an allowed regression must be >= 0"),
        (_with("rules.max_regression", {"baseline": "run"}), r"rules\.max_regression\.baseline: must be one of"),
        (_with("rules.min_samples", 0), r"rules\.min_samples: must be >= 1, got 0"),
        (_with("rules.min_samples", True), r"rules\.min_samples: expected an integer, got True"),
        (_with("rules.max_failed_samples", {"fraction": 1.5}), r"rules\.max_failed_samples\.fraction: must be in \[0, 1\]"),
        (_with("rules.max_failed_samples", {"count": -1}), r"rules\.max_failed_samples\.count: must be >= 0"),
        (_with("rules.max_failed_samples", {}), r"rules\.max_failed_samples: give count, fraction or both"),
        (_with("rules", {}), r"rules: no rule given"),
        (_with("rules", [1]), r"rules: expected a mapping, got list"),
        (_with("aliases", []), r"aliases: expected a non-empty list"),
        (_with("aliases", ["champion", "champion"]), r"aliases: duplicate aliases \['champion'\]"),
        (_with("aliases", ["bad alias"]), r"aliases\[0\]: must match"),
        (_with("audit_set.digest", "abc"), r"audit_set\.digest: expected sha256:<64 hex>"),
        (_with("audit_set.limit", 0), r"audit_set\.limit: must be >= 1"),
        (_with("audit_set.stratify", "kind"), r"audit_set\.stratify: must be 'edit-type' or null"),
        (_with("audit_set.sauce", "demo"), r"unknown key audit_set\.sauce \(did you mean 'source'\?\)"),
        (_with("calibration", {"id": "cal-1"}), r"missing required key calibration\.path"),
        (_with("editor", {"name": "ip2p", "settings": [1]}), r"editor\.settings: expected a mapping"),
        (_with("editor", {"mask_guidance": "yes"}), r"editor\.mask_guidance: expected true/false"),
        (_with("batch_size", 0), r"batch_size: must be >= 1"),
        (_with("name", "has space"), r"name: must match"),
        (_with("tracking", {"experimnt": "x"}), r"unknown key tracking\.experimnt \(did you mean 'experiment'\?\)"),
        (_with("rules.max_regression", {"vs_champion": {"bpm": 0.1}}) | {"champion": "prod"},
         r"rules\.max_regression\.vs_champion: needs the champion alias 'prod'"),
        (_with("rules.max_regression", {"vs_champion": {"bpm": 0.1}}) | {"aliases": ["champion"]},
         r"needs at least one alias besides the champion"),
    ],
)
def test_invalid_policies_name_the_key(data: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_policy(data)


@pytest.mark.parametrize("missing", ["name", "model", "aliases", "audit_set", "calibration", "rules"])
def test_missing_required_top_level_keys(missing: str) -> None:
    data = minimal()
    del data[missing]
    with pytest.raises(ConfigError, match=rf"missing required key {missing}\b"):
        parse_policy(data)


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level: expected a mapping, got list"):
        parse_policy([1, 2])
    with pytest.raises(ConfigError, match="not valid YAML"):
        policy_from_text("name: [unclosed")
    with pytest.raises(ConfigError, match="policy file not found"):
        load_policy(tmp_path / "nope.yaml")
    with pytest.raises(TypeError, match="text must be a string"):
        policy_from_text(b"name: x")  # type: ignore[arg-type]


def test_safe_load_only(tmp_path: Path) -> None:
    text = yaml.safe_dump(minimal()) + "evil: !!python/object/apply:os.system ['true']\n"
    with pytest.raises(ConfigError, match="not valid YAML"):
        policy_from_text(text)


def test_text_digest_follows_the_text() -> None:
    a = policy_from_text(yaml.safe_dump(minimal()))
    b = policy_from_text(yaml.safe_dump(minimal()) + "# a comment\n")
    assert a.text_digest != b.text_digest
    assert a.to_dict() == b.to_dict()
