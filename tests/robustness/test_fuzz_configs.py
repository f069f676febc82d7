"""Fuzzed configs and manifests: whatever structure or bytes a file holds, reading it gives
a result or the domain error that names the problem (ConfigError / DataError /
CalibrationError), never another exception."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpm_lib.aggregate import load_calibration
from bpm_lib.config import RunConfig, load_config, parse_config
from bpm_lib.errors import CalibrationError, ConfigError, DataError
from bpm_lib.io import spool
from bpm_lib.io.manifest import ManifestError, iter_manifest, read_evalset_info, read_manifest
from bpm_lib.runner.manifest_scoring import load_scoring_manifest
from bpm_lib.types import Sample

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30))
keys = st.one_of(st.text(max_size=12), st.integers(-5, 5), st.sampled_from(
    ["name", "candidates", "dataset", "preset", "alpha", "batch_size", "pipeline", "tracking", "source", "limit",
     "seed", "editor", "checkpoint", "settings", "mask_guidance", "uri", "experiment", "gpu", "calibration"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys, inner, max_size=5)), max_leaves=25)

# structures shaped like a config, with random values where the fields go
config_like = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["ok", "a.b-c_1", "", "../x", "x" * 70]), values)},
    optional={
        "candidates": st.one_of(
            st.lists(st.fixed_dictionaries({"name": st.one_of(st.sampled_from(["a", "b", "a b"]), values)},
                                           optional={"editor": values, "checkpoint": values, "settings": values,
                                                     "seed": values, "mask_guidance": values}), max_size=3),
            values),
        "dataset": st.one_of(st.fixed_dictionaries({}, optional={"source": values, "limit": values,
                                                                 "seed": values, "stratify": values}), values),
        "alpha": values, "batch_size": values, "pipeline": st.one_of(st.sampled_from(["checkpoint_eval"]), values),
        "tracking": values, "preset": values, "gpu": values, "calibration": values,
    },
)


def _write(text: str | bytes) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="bpm-fuzz-"))
    path = folder / "config.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


@FUZZ
@given(st.one_of(config_like, values))
def test_any_yaml_structure_is_a_config_or_a_config_error(data: Any) -> None:
    try:
        config = load_config(_write(_dump(data)))
    except ConfigError as e:
        assert str(e).startswith("config"), e
        return
    assert isinstance(config, RunConfig)
    assert 0 <= config.alpha <= 1 and config.batch_size >= 1 and config.candidates
    config.digest()  # a config that loads can be hashed (no alias bomb, no odd types)
    json.dumps(config.to_dict())


@FUZZ
@given(st.one_of(config_like, values))
def test_parse_config_of_any_structure(data: Any) -> None:
    try:
        parse_config(data)
    except ConfigError:
        pass


@FUZZ
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_any_text_or_bytes_as_a_config(raw: str | bytes) -> None:
    try:
        load_config(_write(raw))
    except ConfigError:
        pass


yaml_fragments = st.lists(st.sampled_from([
    "name: x\n", "candidates: [{name: a}]\n", "- ", "[", "]", "{", "}", ": ", "&a ", "*a ", "!!python/object:os.system ",
    "!!binary ", "? ", "|\n  ", ">\n  ", "'", '"', "\t", "\n", "---\n", "...\n", "%YAML 1.1\n", "<<: *a\n",
    "alpha: .nan\n", "batch_size: 1e999\n", "x: !!float inf\n", "dataset: {source: s3://b/../k}\n",
]), max_size=25).map("".join)


@FUZZ
@given(yaml_fragments)
def test_yaml_syntax_soup(text: str) -> None:
    try:
        load_config(_write(text))
    except ConfigError:
        pass


# --------------------------------------------------------------------------- manifests

sample_values = st.one_of(values, st.sampled_from(["ok.png", "../x.png", "/etc/passwd", "s3://b/../x", "a\x00b",
                                                   "s3://bucket-x/k.png", "http://x/y", "", " ", "..", "a/b"]))
manifest_objects = st.fixed_dictionaries(
    {},
    optional={"sample_id": sample_values, "instruction": sample_values, "source_image": sample_values,
              "reference_mask": sample_values, "reference_edit": sample_values, "edited_image": sample_values,
              "edit_kind": st.one_of(st.sampled_from(["local", "global"]), values), "origin": values,
              "extra": values},
)
lines = st.one_of(
    manifest_objects.map(lambda d: json.dumps(d, allow_nan=True).encode()),
    values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=80).filter(lambda b: b"\n" not in b and b"\r" not in b),
)


@FUZZ
@given(st.lists(lines, max_size=8))
def test_any_manifest_lines_are_samples_or_line_errors(raw_lines: list[bytes]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bpm-fuzz-"))
    (folder / "ok.png").write_bytes(b"not read here")
    path = folder / "manifest.jsonl"
    path.write_bytes(b"\n".join(raw_lines) + b"\n")
    expected = sum(1 for line in raw_lines if line.strip())
    items = list(iter_manifest(path, on_error="collect"))
    assert all(isinstance(i, Sample | ManifestError) for i in items)
    assert len(items) == expected
    for item in items:
        if isinstance(item, ManifestError):
            assert item.message.startswith(f"{path}:{item.line}: ")
        else:
            assert Path(item.source_image).resolve().is_relative_to(folder.resolve()) or item.source_image.startswith("s3://")
    try:
        read = list(read_manifest(path))
        assert len(read) == expected
    except DataError:
        assert any(isinstance(i, ManifestError) for i in items)
    loaded = load_scoring_manifest(path)
    assert len(loaded.samples) + len(loaded.errors) == expected
    keys = [s.sample_id for s in loaded.samples] + [sid for sid, _ in loaded.errors]
    assert len(keys) == len(set(keys)), "every line is reported under its own key"


# --------------------------------------------------------------------------- other files people hand us


@FUZZ
@given(st.one_of(values, st.fixed_dictionaries({}, optional={
    "id": values, "mode": st.one_of(st.sampled_from(["pool", "frozen"]), values), "bounds": values,
    "alpha": values, "version": values})))
def test_any_calibration_file_is_a_calibration_or_a_calibration_error(data: Any) -> None:
    path = _write(json.dumps(data, allow_nan=True))
    try:
        cal = load_calibration(path)
    except CalibrationError:
        return
    assert cal.id


@FUZZ
@given(values)
def test_any_evalset_info_is_read_or_a_data_error(data: Any) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bpm-fuzz-"))
    (folder / "evalset.json").write_text(json.dumps(data, allow_nan=True))
    try:
        info = read_evalset_info(folder)
    except DataError:
        return
    assert info.count >= 0


@FUZZ
@given(st.one_of(values, st.fixed_dictionaries({"version": st.just(spool.ENTRY_VERSION)}, optional={
    "id": values, "kind": st.one_of(st.just(spool.KIND_LOG_CAMPAIGN), values), "arguments": values,
    "results_dir": values, "attempts": values, "history": values, "created": values, "error": values})))
def test_any_spool_entry_is_read_or_a_data_error(data: Any) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bpm-fuzz-"))
    (folder / spool.ENTRY_FILE).write_text(json.dumps(data, allow_nan=True))
    try:
        entry = spool.read_entry(folder)
    except DataError:
        return
    assert entry.kind == spool.KIND_LOG_CAMPAIGN and isinstance(entry.arguments, dict)
    assert not math.isnan(float(entry.attempts))
