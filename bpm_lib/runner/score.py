"""In-process scoring of samples end to end: parse → localize → judge → aggregate.

This is what ``bpm score`` runs and what the pipeline components run stage by stage;
both call the same stage functions of :mod:`bpm_lib.runner.stages`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpm_lib import aggregate
from bpm_lib.io.jsonl import write_json_atomic, write_jsonl_atomic
from bpm_lib.runner.backends import Backends
from bpm_lib.runner.imagecache import ImageCache, default_workers
from bpm_lib.runner.stages import (
    OpenStores,
    StageStats,
    batched,
    run_judge,
    run_localize_edited,
    run_localize_source,
    run_parse,
)
from bpm_lib.types import Calibration, RunSummary, Sample, SampleScore

log = logging.getLogger(__name__)


@dataclass
class ScoreResult:
    """Final scores of every candidate, their summaries and the calibration used."""

    scores: dict[str, list[SampleScore]]
    summaries: dict[str, RunSummary]
    calibration: Calibration | None
    stages: list[StageStats] = field(default_factory=list)
    calibration_error: str | None = None

    @property
    def failed(self) -> int:
        return sum(s.samples_failed for s in self.summaries.values())


MAX_IMAGES = 256  # the most decoded images (and, separately, frames) kept in memory


def chunk_plan(candidates: int, batch_size: int) -> tuple[int, int]:
    """(samples per chunk, image-cache capacity) for scoring ``candidates`` candidates.

    Every image of a chunk must stay cached until the chunk's last candidate is judged:
    the chunk's sources plus one candidate's edits (and the next batch being decoded in
    the background) at a time. Two batches per chunk, so each stage call has a batch to
    decode ahead; fewer samples when many candidates would exceed :data:`MAX_IMAGES`."""
    chunk = max(1, min(2 * batch_size, MAX_IMAGES // (candidates + 2)))
    return chunk, min(MAX_IMAGES, chunk * (candidates + 2))


def score_candidates(
    samples: Sequence[Sample],
    edits: Mapping[str, Mapping[str, str]],
    backends: Backends,
    work_dir: Path,
    *,
    alpha: float | None = None,
    calibration: Calibration | None = None,
    batch_size: int = 16,
    progress: bool = False,
    failures: Mapping[str, Sequence[SampleScore]] | None = None,
) -> ScoreResult:
    """Score every candidate (``edits``: candidate → sample_id → edited image path).

    Source-side work runs once for all candidates. Pool calibration (``calibration`` None)
    is fitted over every candidate's scores together, as the reference does.

    The samples go through the stages chunk by chunk (:func:`chunk_plan`): a chunk's
    source images are decoded and resized once and reused by every candidate, however
    many samples there are (stage by stage over the whole set, an image cache of any
    fixed size would evict them before the next candidate, and every source would be
    decoded once per candidate again: ``python -m benchmarks --only runner``). Records
    and resume are the same as stage by stage: one JSONL file per stage and candidate.
    """
    t0 = time.perf_counter()
    raw, stages = judge_candidates(samples, edits, backends, work_dir, batch_size=batch_size, progress=progress)
    for candidate in raw:
        raw[candidate].extend((failures or {}).get(candidate, ()))
    result = finalize(raw, calibration=calibration, alpha=alpha, preset=backends.preset_name,
                      backends=backends.identity(), seconds=time.perf_counter() - t0)
    result.stages = stages
    return result


def judge_candidates(
    samples: Sequence[Sample],
    edits: Mapping[str, Mapping[str, str]],
    backends: Backends,
    work_dir: Path,
    *,
    batch_size: int = 16,
    progress: bool = False,
    only_edited: bool = False,
) -> tuple[dict[str, list[SampleScore]], list[StageStats]]:
    """Parse, localize and judge every candidate, chunk by chunk (:func:`chunk_plan`):
    judged (not aggregated) scores per candidate in sample order, and each stage's stats
    summed over the chunks. ``only_edited``: a candidate is judged only on the samples it
    has an edit for (else those get an error score saying so)."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    chunk, capacity = chunk_plan(len(edits), batch_size)
    stages: dict[tuple[str, str], StageStats] = {}

    def merge(st: StageStats, candidate: str = "") -> None:
        total = stages.setdefault((st.stage, candidate), StageStats(st.stage, extra=dict(st.extra)))
        total.computed += st.computed
        total.reused += st.reused
        total.failed += st.failed
        total.seconds += st.seconds

    parsed, st = run_parse(samples, backends.parser, work_dir, progress=progress)
    merge(st)
    raw: dict[str, list[SampleScore]] = {candidate: [] for candidate in edits}
    chunks: Iterable[list[Sample]] = batched(samples, chunk)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, total=-(-len(samples) // chunk), desc="score", unit="chunk", leave=False)
    with ImageCache(capacity=capacity, workers=default_workers()) as images, OpenStores() as stores:
        for part in chunks:
            source, st = run_localize_source(part, parsed, backends.localizer, work_dir, batch_size=batch_size,
                                             images=images, stores=stores)
            merge(st)
            for candidate, cand_edits in edits.items():
                subset = [s for s in part if s.sample_id in cand_edits] if only_edited else part
                if not subset:
                    continue
                edited, st = run_localize_edited(subset, parsed, source, cand_edits, backends.localizer, work_dir,
                                                 candidate=candidate, batch_size=batch_size, images=images,
                                                 stores=stores)
                merge(st, candidate)
                judged, st = run_judge(subset, parsed, source, edited, cand_edits, backends.embedder, work_dir,
                                       candidate=candidate, batch_size=batch_size, images=images, stores=stores)
                merge(st, candidate)
                raw[candidate].extend(judged)
    return raw, list(stages.values())


def finalize(
    raw: Mapping[str, Sequence[SampleScore]],
    *,
    calibration: Calibration | None,
    alpha: float | None,
    preset: str | None,
    backends: dict[str, Any] | None = None,
    seconds: float | None = None,
) -> ScoreResult:
    """Aggregate judged scores of all candidates into BPM with one calibration.

    A degenerate pool (e.g. a single sample) cannot be normalised: the sub-scores are
    still reported, ``bpm`` stays empty and ``calibration_error`` says why.
    """
    pool = [s for scores in raw.values() for s in scores]
    cal_error = None
    try:
        final, cal = aggregate.score_pool(pool, calibration=calibration, alpha=alpha)
    except aggregate.CalibrationError as e:
        log.warning("BPM not computed: %s", e)
        final, cal, cal_error = list(pool), None, str(e)
    by_key = {s.key: s for s in final}
    scores = {c: [by_key[s.key] for s in cand] for c, cand in raw.items()}
    summaries = {
        c: aggregate.summarize(cand, cal, candidate=c, preset=preset, backends=backends, seconds=seconds)
        for c, cand in scores.items()
    }
    return ScoreResult(scores, summaries, cal, calibration_error=cal_error)


def write_results(result: ScoreResult, out_dir: Path) -> None:
    """``scores.jsonl`` (one line per sample and candidate) + ``summary.json``."""
    out_dir = Path(out_dir)
    write_jsonl_atomic(out_dir / "scores.jsonl", (s.to_dict() for c in result.scores.values() for s in c))
    summary = {
        "candidates": {c: s.to_dict() for c, s in result.summaries.items()},
        "calibration": result.calibration.to_dict() if result.calibration else None,
        "calibration_error": result.calibration_error,
        "stages": [st.to_dict() for st in result.stages],
    }
    write_json_atomic(out_dir / "summary.json", summary)
    if result.calibration is not None:
        write_json_atomic(out_dir / "calibration.json", result.calibration.to_dict())
