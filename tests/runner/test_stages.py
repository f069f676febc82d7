"""The batch engine of each stage (bpm_lib.runner.stages): source work once, batching,
resume after a kill, failures isolated to their sample, hand-computed sub-scores."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import bpm_lib.backends  # noqa: F401 - registers the built-in backends
from bpm_lib.backends.base import PARSERS
from bpm_lib.backends.localizers import ReferenceMaskLocalizer
from bpm_lib.masks import decode_rle
from bpm_lib.runner.imagecache import ImageCache
from bpm_lib.runner.stages import (
    PARSED_FILE,
    SOURCE_FILE,
    batched,
    edited_file,
    load_localizations,
    load_parsed,
    load_scores,
    run_judge,
    run_localize_edited,
    run_localize_source,
    run_parse,
    scores_file,
)
from bpm_lib.types import ParsedInstruction, Sample

SIZE = 500  # the judging frame: images of this size are not resampled, so values are exact
BOX = (100, 150, 300, 350)  # x0, y0, x1, y1 of the edit region of every sample


class CountingParser:
    """The rules parser, counting the instructions it was asked to read."""

    def __init__(self, version: str = "1") -> None:
        self.inner = PARSERS.create("rules")
        self.version = version
        self.calls: list[str] = []

    def identity(self) -> dict[str, Any]:
        return {"name": "counting-rules", "version": self.version}

    def parse(self, instruction: str) -> ParsedInstruction:
        self.calls.append(instruction)
        return self.inner.parse(instruction)


@dataclass
class ColourEmbedder:
    """A deterministic Embedder: an image's mean colour, a text's hash (test double)."""

    fail_on_red: bool = False
    image_calls: list[int] = field(default_factory=list)
    text_calls: list[int] = field(default_factory=list)

    def identity(self) -> dict[str, Any]:
        return {"name": "colour-test", "meaningless": False}

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.image_calls.append(len(images))
        out = []
        for img in images:
            mean = np.asarray(img, dtype=np.float64).reshape(-1, 3).mean(axis=0)
            if self.fail_on_red and mean[0] > 200 and mean[1] < 50:
                raise RuntimeError("cannot embed red images")
            out.append(np.concatenate([mean / 255.0, [1.0]]))
        return np.asarray(out)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.text_calls.append(len(texts))
        out = []
        for t in texts:
            digest = hashlib.sha256(t.encode()).digest()
            out.append(np.frombuffer(digest[:4], dtype=np.uint8).astype(np.float64) / 255.0)
        return np.asarray(out)


def _save(path: Path, arr: np.ndarray) -> str:
    Image.fromarray(arr).save(path)
    return str(path)


def _mask(size: int = SIZE) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    x0, y0, x1, y1 = (int(v * size / SIZE) for v in BOX)
    m[y0:y1, x0:x1] = True
    return m


@dataclass
class Scene:
    samples: list[Sample]
    edits: dict[str, str]
    expected_preserve: dict[str, float]


def make_scene(root: Path, n: int = 5, shift: int = 10) -> Scene:
    """``n`` samples: a grey source; the edit paints the box red and shifts every other
    pixel by ``shift`` (sample i: shift·i), so S_preserve = shift·i/255 exactly."""
    root.mkdir(parents=True, exist_ok=True)
    mask = _mask()
    _save(root / "mask.png", (mask * 255).astype(np.uint8))
    samples, edits, expected = [], {}, {}
    instructions = ["Replace the ball with a box.", "Make the ball blue.", "Replace the ball with a box.",
                    "Remove the car.", "Make the ball blue."]
    for i in range(n):
        src = np.full((SIZE, SIZE, 3), 100, dtype=np.uint8)
        edited = src + np.uint8(shift * i)
        edited[mask] = (230, 20, 20)
        sid = f"s{i}"
        samples.append(Sample(sid, instructions[i % len(instructions)], _save(root / f"{sid}.png", src),
                              reference_mask=str(root / "mask.png")))
        edits[sid] = _save(root / f"{sid}-edit.png", edited)
        expected[sid] = shift * i / 255.0
    return Scene(samples, edits, expected)


def test_batched() -> None:
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched([], 2)) == []
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        list(batched([1], 0))


def test_file_names_of_candidates_never_collide() -> None:
    assert edited_file("well_edited") == "localize_edited.well_edited.jsonl"
    assert scores_file("a/b") != scores_file("a_b") and "/" not in scores_file("a/b")
    assert edited_file("a b") != edited_file("a_b")


def test_parse_reads_each_instruction_once_and_resumes(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "img")
    bad = Sample("bad", "qwerty zxcv", scene.samples[0].source_image)
    samples = [*scene.samples, bad]
    parser = CountingParser()
    results, stats = run_parse(samples, parser, tmp_path / "out")
    assert sorted(parser.calls) == sorted({s.instruction for s in samples})  # 3 unique + the bad one
    assert (stats.computed, stats.failed, stats.reused) == (5, 1, 0)
    assert stats.extra["unique_instructions"] == 4
    assert isinstance(results["s0"], ParsedInstruction) and results["s0"].source_object == "ball"
    assert isinstance(results["bad"], str) and results["bad"].startswith("parse: cannot parse instruction")
    stored = load_parsed(tmp_path / "out")
    assert stored["s3"] == results["s3"] and stored["bad"].startswith("parse: cannot parse")

    parser.calls.clear()
    _, again = run_parse(samples, parser, tmp_path / "out")
    assert (again.reused, again.computed, again.failed) == (5, 0, 1)
    assert parser.calls == ["qwerty zxcv"]  # only the failure is retried

    other = CountingParser(version="2")  # another parser identity: nothing is reused
    _, redo = run_parse(samples, other, tmp_path / "out")
    assert (redo.reused, redo.computed) == (0, 5)
    # First run 6 lines; the retried failure wrote the same record again (not repeated);
    # the new parser rewrote all 6. The last record of each key wins.
    assert len((tmp_path / "out" / PARSED_FILE).read_text().splitlines()) == 6 + 6
    assert load_parsed(tmp_path / "out").keys() == {s.sample_id for s in samples}


def test_source_localization_isolates_bad_samples(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "img")
    small = _save(tmp_path / "small-mask.png", (_mask(250) * 255).astype(np.uint8))
    samples = [
        *scene.samples,
        Sample("wrong-size-mask", "Make the ball blue.", scene.samples[0].source_image, reference_mask=small),
        Sample("missing-image", "Make the ball blue.", str(tmp_path / "absent.png"),
               reference_mask=scene.samples[0].reference_mask),
        Sample("no-mask", "Make the ball blue.", scene.samples[0].source_image),
    ]
    parsed: dict[str, ParsedInstruction | str] = {s.sample_id: PARSERS.create("rules").parse(s.instruction)
                                                  for s in samples}
    parsed["parse-failed"] = "parse: cannot parse instruction"
    samples.append(Sample("parse-failed", "??", scene.samples[0].source_image))
    loc = ReferenceMaskLocalizer()
    results, stats = run_localize_source(samples, parsed, loc, tmp_path / "out", batch_size=4)
    assert (stats.computed, stats.failed) == (5, 3)
    assert "reference_mask" in str(results["wrong-size-mask"]) and "localize source" in str(results["wrong-size-mask"])
    assert "absent.png" in str(results["missing-image"])
    assert "has no reference_mask" in str(results["no-mask"])
    assert results["parse-failed"] == "parse: cannot parse instruction"  # earlier errors propagate
    ok = results["s1"]
    assert not isinstance(ok, str)
    assert ok.boxes_500 == [tuple(float(v) for v in BOX)]
    assert np.array_equal(decode_rle(ok.mask), _mask())

    _, again = run_localize_source(samples, parsed, loc, tmp_path / "out", batch_size=4)
    assert (again.reused, again.computed, again.failed) == (5, 0, 3)
    assert loc.calls["reference_masks_loaded"] == 5  # finished samples are not localized again
    assert set(load_localizations(tmp_path / "out" / SOURCE_FILE)) == {s.sample_id for s in samples} - {"parse-failed"}


def test_a_killed_stage_resumes_without_redoing_finished_samples(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "img")
    parsed = {s.sample_id: PARSERS.create("rules").parse(s.instruction) for s in scene.samples}
    loc = ReferenceMaskLocalizer()
    run_localize_source(scene.samples[:2], parsed, loc, tmp_path / "out")  # "killed" after two samples
    with (tmp_path / "out" / SOURCE_FILE).open("a") as fh:
        fh.write('{"sample_id": "s2", "status": "ok", "locali')  # torn line of the interrupted write
    _, stats = run_localize_source(scene.samples, parsed, loc, tmp_path / "out")
    assert (stats.reused, stats.computed) == (2, 3)
    lines = (tmp_path / "out" / SOURCE_FILE).read_text().splitlines()
    assert len(lines) == 5 and all(line.endswith("}") for line in lines)


def test_edited_side_and_judge_give_hand_computed_scores(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "img")
    parser, loc, emb = CountingParser(), ReferenceMaskLocalizer(), ColourEmbedder()
    images = ImageCache()
    parsed, _ = run_parse(scene.samples, parser, tmp_path / "w")
    source, _ = run_localize_source(scene.samples, parsed, loc, tmp_path / "w", images=images)
    edits = dict(scene.edits)
    edits.pop("s4")  # no edited image for this candidate
    edited, st = run_localize_edited(scene.samples, parsed, source, edits, loc, tmp_path / "w", candidate="cand",
                                     images=images)
    assert (st.computed, st.failed) == (4, 0)
    assert edited["s4"] == "no edited image for candidate 'cand'"
    scores, js = run_judge(scene.samples, parsed, source, edited, edits, emb, tmp_path / "w", candidate="cand",
                           batch_size=3, images=images)
    assert [s.sample_id for s in scores] == ["s0", "s1", "s2", "s3", "s4"]
    assert (js.computed, js.failed) == (4, 1)
    by_id = {s.sample_id: s for s in scores}
    for sid in ("s0", "s1", "s2", "s3"):
        s = by_id[sid]
        assert s.ok and s.case == "standard" and s.candidate == "cand"
        assert s.s_preserve == pytest.approx(scene.expected_preserve[sid], abs=1e-6)
        assert (s.s_size, s.s_position, s.s_region) == (1.0, 1.0, 2.0)  # reference masks: geometry not judged
        assert -1.0 <= s.s_modify <= 1.0 and s.bpm is None  # BPM needs the aggregation
        assert np.array_equal(decode_rle(s.extra["edit_mask"]), _mask())
    assert by_id["s0"].s_preserve == 0.0
    assert by_id["s4"].status == "error" and "no edited image" in (by_id["s4"].error or "")
    # One image call per batch of 3 (two crops each), one text call per batch.
    assert emb.image_calls == [6, 2] and len(emb.text_calls) == 2
    assert images.decodes == 5 + 4  # each source and each edit decoded once across the stages
    stored = {s.sample_id: s for s in load_scores(tmp_path / "w" / scores_file("cand"))}
    assert stored == by_id

    _, again = run_judge(scene.samples, parsed, source, edited, edits, emb, tmp_path / "w", candidate="cand")
    assert (again.reused, again.computed, again.failed) == (4, 0, 1)
    assert emb.image_calls == [6, 2]  # nothing re-embedded


def test_judge_isolates_an_embedder_failure_and_a_corrupt_edit(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "img", n=4)
    parsed = {s.sample_id: PARSERS.create("rules").parse(s.instruction) for s in scene.samples}
    loc = ReferenceMaskLocalizer()
    source, _ = run_localize_source(scene.samples, parsed, loc, tmp_path / "w")
    edits = dict(scene.edits)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    edits["s2"] = str(corrupt)
    edited, st = run_localize_edited(scene.samples, parsed, source, edits, loc, tmp_path / "w", candidate="c",
                                     batch_size=4)
    assert st.failed == 1 and isinstance(edited["s2"], str) and "localize edited" in edited["s2"]
    # s3's edit is a uniform red crop in its box and nowhere else … make it the only one
    # the embedder refuses: a full-red edit whose crop and whole image are red.
    red = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    red[...] = (240, 10, 10)
    edits["s3"] = _save(tmp_path / "red.png", red)
    edited, _ = run_localize_edited(scene.samples, parsed, source, edits, loc, tmp_path / "w", candidate="c")
    emb = ColourEmbedder(fail_on_red=True)
    scores, js = run_judge(scene.samples, parsed, source, edited, edits, emb, tmp_path / "w", candidate="c",
                           batch_size=4)
    by_id = {s.sample_id: s for s in scores}
    assert by_id["s2"].status == "error" and "localize edited" in (by_id["s2"].error or "")
    assert by_id["s3"].status == "error" and "cannot embed red images" in (by_id["s3"].error or "")
    assert by_id["s0"].ok and by_id["s1"].ok
    assert (js.computed, js.failed) == (2, 2)
