"""Pipeline steps over artifact folders: what each Kubeflow component calls.

A step reads its input folders, runs one stage of :mod:`bpm_lib.runner.stages` and
writes its output folder with a ``_bpm.json`` record (stage, cache key, digest,
counts, backend identity). Steps are content-cached (:class:`StageCache`): the same
stage over the same inputs and settings is restored, not recomputed. Work happens in a
per-key work folder, so a step killed mid-way resumes where it stopped when re-run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bpm_lib.io.jsonl import write_json_atomic
from bpm_lib.runner.backends import build_role, role_spec
from bpm_lib.runner.cache import META, StageCache, artifact_digest, read_meta, stage_key
from bpm_lib.runner.stages import (
    SOURCE_FILE,
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
from bpm_lib.types import Sample

log = logging.getLogger(__name__)


def _cached_step(
    stage: str,
    settings: Mapping[str, Any],
    inputs: Mapping[str, str | Path],
    out: str | Path,
    compute: Callable[[Path], dict[str, Any]],
    cache: StageCache | None,
) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = cache if cache is not None else StageCache()
    key = stage_key(stage, dict(settings), {k: artifact_digest(v) for k, v in inputs.items()})
    if cache.restore(stage, key, out):
        meta = read_meta(out)
        meta["cached"] = True
        write_json_atomic(out / META, meta)
        log.info("%s: served from cache (%s)", stage, key)
        return meta
    work = cache.root.parent / "work" / stage / key if cache.enabled else out
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    info = compute(work)
    meta = {"stage": stage, "key": key, "digest": key, "cached": False, "settings": dict(settings),
            "seconds": round(time.perf_counter() - t0, 4), **info}
    write_json_atomic(work / META, meta)
    if work != out:
        # _bpm.json last: a step killed while publishing never leaves an output that looks done.
        for item in sorted(work.iterdir(), key=lambda p: p.name == META):
            target = out / item.name
            if item.is_dir():
                shutil.copytree(item, target, dirs_exist_ok=True)
            elif item.name == META:
                write_json_atomic(target, meta)
            else:
                shutil.copy2(item, target)
        cache.store(stage, key, work)
        shutil.rmtree(work, ignore_errors=True)
    return meta


def load_samples(evalset: str | Path) -> list[Sample]:
    from bpm_lib.io.manifest import read_manifest

    return list(read_manifest(Path(evalset) / "manifest.jsonl"))


def edits_of(editset: str | Path) -> dict[str, str]:
    from bpm_lib.io.editset import EditSet

    es = EditSet.open(editset)
    out = {}
    for rec in es.records():
        path = es.image_path(rec["sample_id"])
        if path is not None:
            out[rec["sample_id"]] = str(path)
    return out


def candidate_of(editset: str | Path) -> str:
    from bpm_lib.io.editset import EditSet

    return EditSet.open(editset).candidate


# ----------------------------------------------------------------------- steps


def fetch_step(source: str, out: str | Path, *, limit: int | None = None, seed: int = 0,
               stratify: str | None = None, cache: StageCache | None = None) -> dict[str, Any]:
    from bpm_lib.io.datasets import fetch

    settings = {"source": source, "limit": limit, "seed": seed, "stratify": stratify}
    inputs: dict[str, str | Path] = {}
    if not (source == "demo" or source.startswith("s3://")):
        local = source.split(":", 1)[1] if ":" in source and not os.path.exists(source) else source
        if os.path.exists(local):
            inputs["source"] = local

    def compute(work: Path) -> dict[str, Any]:
        info = fetch(source, work, limit=limit, seed=seed, stratify=stratify)
        return {"count": info.count, "dataset": info.name, "dataset_digest": info.digest}

    if source.startswith("s3://"):
        cache = StageCache(enabled=False)
    return _cached_step("fetch_data", settings, inputs, out, compute, cache)


def parse_step(evalset: str | Path, out: str | Path, *, preset: str | None, parser: str | None = None,
               cache: StageCache | None = None) -> dict[str, Any]:
    spec = role_spec("parser", preset, parser)

    def compute(work: Path) -> dict[str, Any]:
        backend = build_role("parser", preset, parser)
        _, stats = run_parse(load_samples(evalset), backend, work)
        return {"stats": stats.to_dict(), "backend": backend.identity()}

    return _cached_step("parse_instructions", {"parser": spec}, {"evalset": evalset}, out, compute, cache)


def localize_source_step(evalset: str | Path, parsed: str | Path, out: str | Path, *, preset: str | None,
                         localizer: str | None = None, batch_size: int = 8,
                         cache: StageCache | None = None) -> dict[str, Any]:
    spec = role_spec("localizer", preset, localizer)

    def compute(work: Path) -> dict[str, Any]:
        backend = build_role("localizer", preset, localizer)
        _, stats = run_localize_source(load_samples(evalset), load_parsed(Path(parsed)), backend, work,
                                       batch_size=batch_size)
        return {"stats": stats.to_dict(), "backend": backend.identity(), "side": "source"}

    return _cached_step("localize_source", {"localizer": spec}, {"evalset": evalset, "parsed": parsed},
                        out, compute, cache)


def generate_step(evalset: str | Path, candidate_json: str, out: str | Path,
                  cache: StageCache | None = None, *, tracking_uri: str | None = None) -> dict[str, Any]:
    """Produce one candidate's EditSet. ``candidate_json``: a CandidateConfig as JSON.
    ``tracking_uri``: the MLflow server that resolves ``models:/``/``runs:/`` checkpoints
    (default: ``MLFLOW_TRACKING_URI``)."""
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # one step per process (a KFP pod)
    from bpm_lib.config import CandidateConfig, _build

    cand: CandidateConfig = _build(CandidateConfig, json.loads(candidate_json), "candidate")
    checkpoint = cand.checkpoint
    if checkpoint.startswith("evalset:"):
        from bpm_lib.io.storage import safe_join

        checkpoint = str(safe_join(Path(evalset), checkpoint[len("evalset:"):], what="candidate checkpoint"))
    from bpm_lib.io.model_uri import resolve_checkpoint

    # Resolve first, so the cache key is the checkpoint's *content*: a moved alias
    # (models:/m@champion) or another tracking server never serves someone else's edits.
    resolved = resolve_checkpoint(checkpoint)
    settings = {"candidate": cand.name, "editor": cand.editor, "checkpoint": cand.checkpoint,
                "checkpoint_digest": resolved.digest or str(resolved.local_path),
                "settings": cand.settings, "seed": cand.seed, "mask_guidance": cand.mask_guidance}
    inputs: dict[str, str | Path] = {"evalset": evalset}

    def compute(work: Path) -> dict[str, Any]:
        from bpm_lib.backends.base import EDITORS
        from bpm_lib.runner.generate import generate_edits

        editor = EDITORS.create(cand.editor, checkpoint=resolved, **cand.settings)
        summary = generate_edits(load_samples(evalset), editor, work, candidate=cand.name, run_seed=cand.seed,
                                 mask_guidance=cand.mask_guidance, progress=False)
        return {"candidate": cand.name, "checkpoint": cand.checkpoint, "checkpoint_digest": resolved.digest,
                "model_name": resolved.model_name, "model_version": resolved.model_version,
                "summary": summary.to_dict() if hasattr(summary, "to_dict") else str(summary)}

    return _cached_step("generate_edits", settings, inputs, out, compute, cache)


def localize_edited_step(evalset: str | Path, parsed: str | Path, source_loc: str | Path, editset: str | Path,
                         out: str | Path, *, preset: str | None, localizer: str | None = None,
                         batch_size: int = 8, cache: StageCache | None = None) -> dict[str, Any]:
    spec = role_spec("localizer", preset, localizer)
    candidate = candidate_of(editset)

    def compute(work: Path) -> dict[str, Any]:
        backend = build_role("localizer", preset, localizer)
        _, stats = run_localize_edited(
            load_samples(evalset), load_parsed(Path(parsed)), load_localizations(Path(source_loc) / SOURCE_FILE),
            edits_of(editset), backend, work, candidate=candidate, batch_size=batch_size,
        )
        return {"stats": stats.to_dict(), "backend": backend.identity(), "side": "edited", "candidate": candidate}

    return _cached_step("localize_edited", {"localizer": spec, "candidate": candidate},
                        {"evalset": evalset, "parsed": parsed, "source": source_loc, "editset": editset},
                        out, compute, cache)


def judge_step(evalset: str | Path, parsed: str | Path, source_loc: str | Path, edited_loc: str | Path,
               editset: str | Path, out: str | Path, *, preset: str | None, embedder: str | None = None,
               batch_size: int = 16, cache: StageCache | None = None) -> dict[str, Any]:
    spec = role_spec("embedder", preset, embedder)
    candidate = candidate_of(editset)

    def compute(work: Path) -> dict[str, Any]:
        backend = build_role("embedder", preset, embedder)
        _, stats = run_judge(
            load_samples(evalset), load_parsed(Path(parsed)), load_localizations(Path(source_loc) / SOURCE_FILE),
            load_localizations(Path(edited_loc) / edited_file(candidate)), edits_of(editset), backend, work,
            candidate=candidate, batch_size=batch_size,
        )
        return {"stats": stats.to_dict(), "backend": backend.identity(), "candidate": candidate,
                "editset_meta": read_meta(editset)}

    return _cached_step("judge", {"embedder": spec, "candidate": candidate},
                        {"evalset": evalset, "parsed": parsed, "source": source_loc, "edited": edited_loc,
                         "editset": editset}, out, compute, cache)


def aggregate_step(evalset: str | Path, judged: Sequence[str | Path], editsets: Sequence[str | Path],
                   out: str | Path, *, alpha: float = 0.7, calibration: str | None = None,
                   preset: str | None = None, cache: StageCache | None = None) -> dict[str, Any]:
    """Pool or frozen calibration over every candidate, final scores, report and plots.

    Content-cached like the other steps (key: the judged/edit/eval artifacts' digests,
    alpha, preset and the calibration file's bytes): the report and plots took ~97 % of
    an unchanged campaign's re-run (benchmarks/bench_pipeline.py). MLflow logging is done
    by the caller on the output, so it is never skipped by the cache."""
    import hashlib

    from bpm_lib.io.storage import fetch_to_local

    local_cal = fetch_to_local(calibration) if calibration else None
    settings: dict[str, Any] = {"alpha": alpha, "preset": preset, "calibration": None}
    if local_cal is not None:
        try:
            settings["calibration"] = hashlib.sha256(Path(local_cal).read_bytes()).hexdigest()
        except OSError:
            cache = StageCache(enabled=False)  # unreadable: let the computation report it
    inputs: dict[str, str | Path] = {"evalset": evalset}
    inputs.update({f"judged{i}": folder for i, folder in enumerate(judged)})
    inputs.update({f"editset{i}": folder for i, folder in enumerate(editsets)})

    def compute(work: Path) -> dict[str, Any]:
        return _aggregate(evalset, judged, editsets, work, alpha=alpha, calibration=local_cal, preset=preset)

    return _cached_step("aggregate", settings, inputs, out, compute, cache)


def _aggregate(evalset: str | Path, judged: Sequence[str | Path], editsets: Sequence[str | Path], out: Path, *,
               alpha: float, calibration: str | Path | None, preset: str | None) -> dict[str, Any]:
    from bpm_lib.aggregate import load_calibration
    from bpm_lib.report import plot_by_edit_type, plot_comparison, plot_distributions, render_report
    from bpm_lib.runner.score import finalize, write_results

    raw = {}
    backends: dict[str, Any] = {}
    for folder in judged:
        meta = read_meta(folder)
        cand = meta["candidate"]
        raw[cand] = load_scores(Path(folder) / scores_file(cand))
        backends[cand] = meta.get("backend")
    cal = load_calibration(calibration) if calibration else None
    result = finalize(raw, calibration=cal, alpha=alpha, preset=preset, backends={"embedder": backends})
    write_results(result, out)
    samples = {s.sample_id: s for s in load_samples(evalset)}
    edits = {candidate_of(e): edits_of(e) for e in editsets}
    notes = []
    if any(s.meaningless for s in result.summaries.values()):
        notes.append("Random-weight backends (tiny-random): these scores only show that the machinery works; "
                     "they are meaningless as an evaluation.")
    if result.calibration_error:
        notes.append(f"BPM not computed: {result.calibration_error}")
    all_scores = [s for c in result.scores.values() for s in c]
    html = render_report(f"BPM report — {', '.join(result.scores)}", samples, all_scores, edits,
                         list(result.summaries.values()), notes=notes)
    (out / "report.html").write_text(html, encoding="utf-8")
    plots = out / "plots"
    plot_distributions(result.scores, plots / "distributions.png")
    plot_by_edit_type(list(result.summaries.values()), plots / "bpm_by_edit_type.png")
    plot_comparison(list(result.summaries.values()), plots / "comparison.png")
    editset_meta = {candidate_of(e): read_meta(e) for e in editsets}
    # _cached_step records this in the folder's _bpm.json (with stage, key and digest).
    return {"candidates": list(result.scores), "editsets": editset_meta,
            "evalset": read_meta(evalset) or {"digest": artifact_digest(evalset)},
            "calibration_id": result.calibration.id if result.calibration else None}
