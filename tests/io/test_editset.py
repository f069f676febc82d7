"""EditSet artifact: writing, resuming, safe file names, reading precomputed folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from bpm_lib.errors import ConfigError, DataError
from bpm_lib.io.editset import (
    EDITS_JSONL,
    EDITSET_JSON,
    EditRecord,
    EditSet,
    EditSetWriter,
    safe_stem,
)

IDENTITY = {"name": "test-editor", "checkpoint": "/ckpt", "digest": "sha256:abc", "steps": 2}
SETTINGS = {"run_seed": 0, "mask_guidance": None}


def _img(seed: int, size: tuple[int, int] = (24, 16)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), mode="RGB")


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_writer_then_open_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "es"
    with EditSetWriter(out, "cand-a", IDENTITY, SETTINGS) as w:
        w.add("s1", _img(1), seed=11, seconds=0.5, settings={"resolution": [64, 64]})
        w.add("s2", _img(2), seed=22, seconds=0.25)
        w.add_error("s3", "RuntimeError: boom", seed=33, seconds=0.1)

    meta = json.loads((out / EDITSET_JSON).read_text())
    assert set(meta) == {"candidate", "editor", "settings", "created_at", "code_version"}
    assert meta["candidate"] == "cand-a"
    assert meta["editor"] == IDENTITY
    assert meta["settings"] == SETTINGS

    es = EditSet.open(out)
    assert es.candidate == "cand-a"
    assert len(es) == 3
    by_id = {r["sample_id"]: r for r in es.records()}
    assert by_id["s1"]["status"] == "ok" and by_id["s1"]["seed"] == 11
    assert by_id["s1"]["image"] == "images/s1.png"
    assert by_id["s1"]["settings"] == {**SETTINGS, "resolution": [64, 64]}
    assert by_id["s3"] == {
        "sample_id": "s3", "status": "error", "image": None, "seed": 33,
        "settings": SETTINGS, "error": "RuntimeError: boom", "seconds": 0.1,
    }
    np.testing.assert_array_equal(_pixels(es.image_path("s1")), np.asarray(_img(1)))
    np.testing.assert_array_equal(np.asarray(es.load_image("s2")), np.asarray(_img(2)))
    assert es.image_path("s3") is None
    assert es.error("s3") == "RuntimeError: boom"
    assert es.image_path("unknown") is None
    with pytest.raises(DataError, match="the edit failed: RuntimeError: boom"):
        es.load_image("s3")
    with pytest.raises(DataError, match="no edited image"):
        es.load_image("unknown")
    assert "s1" in es and "s3" not in es
    assert [e.sample_id for e in es.entries()] == ["s1", "s2", "s3"]


def test_resume_skips_done_and_retries_errors(tmp_path: Path) -> None:
    out = tmp_path / "es"
    with EditSetWriter(out, "c", IDENTITY, SETTINGS) as w:
        w.add("s1", _img(1), seed=1, seconds=0.1)
        w.add_error("s2", "ValueError: transient", seed=2)

    with EditSetWriter(out, "c", dict(reversed(list(IDENTITY.items()))), SETTINGS) as w:
        assert w.done("s1")
        assert not w.done("s2")  # errors are retried
        assert not w.done("s3")
        w.add("s2", _img(2), seed=2, seconds=0.1)  # the retry succeeds
        w.add("s3", _img(3), seed=3, seconds=0.1)

    es = EditSet.open(out)
    assert sorted(es.sample_ids()) == ["s1", "s2", "s3"]
    assert es.image_path("s2") is not None and es.error("s2") is None
    assert sorted(p.name for p in (out / "images").iterdir()) == ["s1.png", "s2.png", "s3.png"]


@pytest.mark.parametrize(
    "change",
    [
        {"candidate": "other"},
        {"identity": {**IDENTITY, "steps": 3}},
        {"settings": {**SETTINGS, "run_seed": 1}},
    ],
)
def test_resume_refuses_a_differently_made_editset(tmp_path: Path, change: dict) -> None:
    out = tmp_path / "es"
    with EditSetWriter(out, "c", IDENTITY, SETTINGS) as w:
        w.add("s1", _img(1), seed=1, seconds=0.1)
    with pytest.raises(ConfigError, match="already holds an EditSet made differently"):
        EditSetWriter(
            out, change.get("candidate", "c"), change.get("identity", IDENTITY), change.get("settings", SETTINGS)
        )


def test_torn_last_line_is_dropped_and_resumed(tmp_path: Path) -> None:
    out = tmp_path / "es"
    with EditSetWriter(out, "c", IDENTITY, SETTINGS) as w:
        w.add("s1", _img(1), seed=1, seconds=0.1)
    with (out / EDITS_JSONL).open("a") as fh:
        fh.write('{"sample_id": "s2", "status": "o')  # killed mid-write
    assert EditSet.open(out).sample_ids() == ["s1"]
    with EditSetWriter(out, "c", IDENTITY, SETTINGS) as w:
        assert w.done("s1") and not w.done("s2")
        w.add("s2", _img(2), seed=2, seconds=0.1)
    lines = (out / EDITS_JSONL).read_text().splitlines()
    assert [json.loads(line)["sample_id"] for line in lines] == ["s1", "s2"]


def test_unsafe_sample_ids_get_distinct_files_inside_images(tmp_path: Path) -> None:
    ids = ["a/b", "a_b", "../evil", ".hidden", "A", "a", "ünï côdé", "x" * 300, "con", "a b"]
    out = tmp_path / "es"
    with EditSetWriter(out, "c", IDENTITY, SETTINGS) as w:
        for i, sid in enumerate(ids):
            w.add(sid, _img(i), seed=i, seconds=0.0)
    es = EditSet.open(out)
    paths = [es.image_path(sid) for sid in ids]
    assert all(p is not None for p in paths)
    names = [p.name for p in paths if p is not None]
    assert len({n.lower() for n in names}) == len(ids)  # distinct even on case-insensitive disks
    images = (out / "images").resolve()
    for i, p in enumerate(paths):
        assert p is not None and p.resolve().parent == images
        assert not p.name.startswith(".")
        assert len(p.name) < 130
        np.testing.assert_array_equal(_pixels(p), np.asarray(_img(i)))
    assert not (tmp_path / "evil.png").exists()


def test_case_collision_found_in_an_existing_editset_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "es"
    with EditSetWriter(out, "c", IDENTITY, SETTINGS) as w:
        w.add("Cat", _img(1), seed=1, seconds=0.0)
    with EditSetWriter(out, "c", IDENTITY, SETTINGS) as w:
        w.add("cat", _img(2), seed=2, seconds=0.0)
    es = EditSet.open(out)
    assert es.image_path("Cat") != es.image_path("cat")
    np.testing.assert_array_equal(np.asarray(es.load_image("Cat")), np.asarray(_img(1)))
    np.testing.assert_array_equal(np.asarray(es.load_image("cat")), np.asarray(_img(2)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=150), min_size=1, max_size=8, unique=True))
def test_safe_stem_is_a_safe_injective_file_name(ids: list[str]) -> None:
    stems = [safe_stem(sid) for sid in ids]
    for stem in stems:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", stem)
        assert not stem.startswith(".")
        assert len(stem) <= 96 + 9
    assert len(set(stems)) == len(stems)


def test_safe_stem_keeps_safe_ids() -> None:
    assert safe_stem("327726_1-edit.v2") == "327726_1-edit.v2"
    assert safe_stem("a/b") != safe_stem("a_b")
    with pytest.raises(ValueError, match="sample_id"):
        safe_stem("")


def test_open_refuses_a_record_pointing_outside_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "es"
    with EditSetWriter(out, "c", IDENTITY, SETTINGS) as w:
        w.add("s1", _img(1), seed=1, seconds=0.0)
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    bad = EditRecord("s2", "ok", image="../outside.png").to_dict()
    with (out / EDITS_JSONL).open("a") as fh:
        fh.write(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match="escapes"):
        EditSet.open(out)


def test_missing_image_file_of_an_ok_record_is_an_error(tmp_path: Path) -> None:
    out = tmp_path / "es"
    with EditSetWriter(out, "c", IDENTITY, SETTINGS) as w:
        w.add("s1", _img(1), seed=1, seconds=0.0)
    (out / "images" / "s1.png").unlink()
    with pytest.raises(DataError, match="missing"):
        EditSet.open(out).image_path("s1")


def test_malformed_record_is_reported_with_its_line(tmp_path: Path) -> None:
    out = tmp_path / "es"
    with EditSetWriter(out, "c", IDENTITY, SETTINGS) as w:
        w.add("s1", _img(1), seed=1, seconds=0.0)
    with (out / EDITS_JSONL).open("a") as fh:
        fh.write(json.dumps({"sample_id": "s2", "status": "ok"}) + "\n")  # ok without an image
    with pytest.raises(DataError, match="record 2 is malformed"):
        EditSet.open(out)


def test_from_folder_reads_the_precomputed_layout(tmp_path: Path) -> None:
    folder = tmp_path / "candidates" / "model-x"
    (folder / "nested").mkdir(parents=True)
    _img(1).save(folder / "s1.png")
    _img(2).save(folder / "nested" / "s2.png")
    _img(3).save(folder / "s3.png")
    _img(4).save(folder / "s3.webp")
    _img(5).save(folder / f"{safe_stem('a b')}.png")
    _img(6).save(folder / ".hidden.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / EDITSET_JSON).write_text(
        json.dumps({"candidate": "model-x", "editor": "precomputed", "description": "demo"})
    )

    es = EditSet.from_folder(folder)
    assert es.candidate == "model-x"
    assert es.meta["description"] == "demo"
    np.testing.assert_array_equal(np.asarray(es.load_image("s1")), np.asarray(_img(1)))
    np.testing.assert_array_equal(np.asarray(es.load_image("nested/s2")), np.asarray(_img(2)))
    np.testing.assert_array_equal(np.asarray(es.load_image("a b")), np.asarray(_img(5)))
    assert es.image_path("missing") is None
    assert es.image_path(".hidden") is None
    with pytest.raises(DataError, match="several edited images"):
        es.image_path("s3")
    assert EditSet.from_folder(folder, "renamed").candidate == "renamed"
    # open() on a folder with editset.json but no edits.jsonl reads it the same way
    opened = EditSet.open(folder)
    assert opened.candidate == "model-x" and opened.image_path("s1") == es.image_path("s1")


def test_from_folder_without_metadata_uses_the_folder_name(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    _img(1).save(folder / "s1.jpg", quality=95)
    es = EditSet.from_folder(folder)
    assert es.candidate == "my-model"
    assert es.load_image("s1").size == (24, 16)
    with pytest.raises(DataError, match="not an EditSet"):
        EditSet.open(folder)
    with pytest.raises(DataError, match="not found"):
        EditSet.from_folder(tmp_path / "nope")


def test_edit_record_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="status"):
        EditRecord("s", "done", image="images/s.png")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must say why"):
        EditRecord("s", "error")
    with pytest.raises(ValueError, match="unknown keys"):
        EditRecord.from_dict({"sample_id": "s", "status": "error", "error": "x", "extra": 1})
    with pytest.raises(ValueError, match="candidate"):
        EditSetWriter(tmp_path / "es", "", IDENTITY, SETTINGS)
