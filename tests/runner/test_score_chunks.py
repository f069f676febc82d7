"""score_candidates runs the stages chunk by chunk: the same records and scores as
stage by stage over the whole set, every image decoded once, and resumable."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import LOCAL_INSTRUCTIONS, count_decodes, make_scoring_set
from bpm_lib.runner.backends import build_backends
from bpm_lib.runner.imagecache import ImageCache
from bpm_lib.runner.score import MAX_IMAGES, chunk_plan, finalize, score_candidates
from bpm_lib.runner.stages import (
    edited_file,
    run_judge,
    run_localize_edited,
    run_localize_source,
    run_parse,
    scores_file,
)

N, K, BATCH = 21, 2, 4  # chunks of 8 samples: 3 chunks, the last one short


def _set(root: Path):  # type: ignore[no-untyped-def]
    return make_scoring_set(root, N, candidates=[f"cand{c}" for c in range(K)], size=(64, 48),
                            instructions=LOCAL_INSTRUCTIONS, with_masks=False)


def test_chunk_plan() -> None:
    assert chunk_plan(1, 16) == (32, 96)
    assert chunk_plan(3, 16) == (32, 160)
    chunk, capacity = chunk_plan(40, 16)  # many candidates: smaller chunks, bounded memory
    assert chunk == MAX_IMAGES // 42 and capacity <= MAX_IMAGES
    assert chunk_plan(300, 16) == (1, MAX_IMAGES)


def test_chunked_scores_equal_stage_by_stage(tmp_path: Path) -> None:
    data = _set(tmp_path / "data")
    backends = build_backends("tiny-random")
    with count_decodes() as decodes:
        chunked = score_candidates(data.samples, data.edits, backends, tmp_path / "chunked", batch_size=BATCH)
    assert decodes.images == N + N * K  # every source once for both candidates, every edit once

    # The same stages, each over the whole set (what the pipeline's steps do).
    work = tmp_path / "whole"
    with ImageCache() as images:
        parsed, _ = run_parse(data.samples, backends.parser, work)
        source, _ = run_localize_source(data.samples, parsed, backends.localizer, work, batch_size=BATCH,
                                        images=images)
        raw = {}
        for cand, edits in data.edits.items():
            edited, _ = run_localize_edited(data.samples, parsed, source, edits, backends.localizer, work,
                                            candidate=cand, batch_size=BATCH, images=images)
            raw[cand], _ = run_judge(data.samples, parsed, source, edited, edits, backends.embedder, work,
                                     candidate=cand, batch_size=BATCH, images=images)
    whole = finalize(raw, calibration=None, alpha=None, preset="tiny-random")
    for cand in data.edits:
        assert [s.to_dict() for s in chunked.scores[cand]] == [s.to_dict() for s in whole.scores[cand]]
        for name in (edited_file(cand), scores_file(cand)):
            assert sorted((tmp_path / "chunked" / name).read_text().splitlines()) == \
                sorted((work / name).read_text().splitlines())
    stats = {(st.stage, st.extra.get("candidate", "")): st for st in chunked.stages}
    assert [st.stage for st in chunked.stages] == ["parse", "localize_source", "localize_edited", "judge",
                                                   "localize_edited", "judge"]
    assert stats[("localize_source", "")].computed == N
    assert stats[("judge", "cand1")].computed + stats[("judge", "cand1")].failed == N


def test_chunked_rerun_reuses_every_record(tmp_path: Path) -> None:
    data = _set(tmp_path / "data")
    backends = build_backends("tiny-random")
    first = score_candidates(data.samples, data.edits, backends, tmp_path / "w", batch_size=BATCH)
    with count_decodes() as decodes:
        again = score_candidates(data.samples, data.edits, backends, tmp_path / "w", batch_size=BATCH)
    assert decodes.images == 0
    assert sum(st.computed for st in again.stages) == 0
    assert sum(st.reused for st in again.stages if st.stage != "parse") == N + 2 * N * K - sum(
        st.failed for st in again.stages if st.stage != "parse")
    for cand in data.edits:
        assert [s.to_dict() for s in again.scores[cand]] == [s.to_dict() for s in first.scores[cand]]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_decode_workers_do_not_change_scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str) -> None:
    data = _set(tmp_path / "data")
    monkeypatch.setenv("BPM_DECODE_WORKERS", workers)
    result = score_candidates(data.samples, data.edits, build_backends("tiny-random"), tmp_path / "w",
                              batch_size=BATCH)
    monkeypatch.setenv("BPM_DECODE_WORKERS", "0" if workers != "0" else "2")
    other = score_candidates(data.samples, data.edits, build_backends("tiny-random"), tmp_path / "w2",
                             batch_size=BATCH)
    for cand in data.edits:
        assert [s.to_dict() for s in result.scores[cand]] == [s.to_dict() for s in other.scores[cand]]
