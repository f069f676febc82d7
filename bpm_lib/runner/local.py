"""Running a campaign on one machine: the Kubeflow pipeline through ``kfp.local``, or the
same steps in-process (``--in-process``; no KFP overhead, same artifacts and cache)."""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bpm_lib.config import RunConfig
from bpm_lib.errors import BpmError
from bpm_lib.io.tracking import DEFAULT_ROOT, check_reachable, resolve_tracking_uri

log = logging.getLogger(__name__)


class StageError(BpmError):
    """A pipeline task failed in a local run."""


@dataclass
class LocalRunResult:
    results_dir: Path
    tracking_uri: str | None
    parent_run_id: str | None
    child_run_ids: dict[str, str]
    seconds: float
    mode: str

    def summary(self) -> dict[str, Any]:
        return json.loads((self.results_dir / "summary.json").read_text())


def pipeline_arguments(config: RunConfig, tracking_uri: str | None) -> dict[str, Any]:
    """The pipeline parameters of a config (the same for local runs and cluster submits)."""
    args: dict[str, Any] = {
        "dataset_source": config.dataset.source,
        "dataset_limit": config.dataset.limit or 0,
        "dataset_seed": config.dataset.seed,
        "dataset_stratify": config.dataset.stratify or "",
        "preset": config.preset,
        "parser": config.parser or "",
        "localizer": config.localizer or "",
        "embedder": config.embedder or "",
        "alpha": config.alpha,
        "calibration": config.calibration or "",
        "batch_size": config.batch_size,
        "campaign": config.name,
        "tracking_uri": tracking_uri or "",
        "experiment": config.tracking.experiment,
    }
    params = {"config_digest": config.digest(), "preset": config.preset, "alpha": config.alpha,
              "dataset_source": config.dataset.source, "dataset_limit": config.dataset.limit}
    args["params"] = {k: v for k, v in params.items() if v is not None}  # KFP parameters cannot hold None
    # JSON strings, not dicts: KFP turns the integers of a dict parameter into floats.
    cands = [json.dumps(asdict(c), sort_keys=True) for c in config.candidates]
    if config.pipeline == "checkpoint_eval":
        args["candidate"] = cands[0]
    else:
        args["candidates"] = cands
    return args


def pipeline_function(config: RunConfig) -> Any:
    if config.pipeline == "checkpoint_eval":
        from pipelines.checkpoint_eval import checkpoint_eval

        return checkpoint_eval
    from pipelines.compare_checkpoints import compare_checkpoints

    return compare_checkpoints


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _tracking(config: RunConfig, root: Path, tracking: bool) -> str | None:
    if not tracking:
        return None
    uri = resolve_tracking_uri(config.tracking.uri, root)
    check_reachable(uri)
    return uri


def run_local(config: RunConfig, *, root: Path = DEFAULT_ROOT, tracking: bool = True,
              cache: bool = True) -> LocalRunResult:
    """The pipeline through ``kfp.local.SubprocessRunner`` (offline; ParallelFor needs kfp >= 2.17).

    Two cache layers: KFP's local task cache (a task with the same inputs is skipped) and
    bpm's content-addressed stage cache under ``BPM_CACHE_DIR`` (the same stage over the
    same input *content*; also what lets a killed stage resume). ``cache=False`` disables
    both. A failed task raises :class:`StageError` naming it; finished
    stages stay in the stage cache, so a re-run resumes after them."""
    from kfp import local

    root = Path(root).resolve()
    uri = _tracking(config, root, tracking)
    t0 = time.perf_counter()
    cache_dir = os.environ.get("BPM_CACHE_DIR") or str(root / "cache")
    with _env(BPM_CACHE_DIR=cache_dir, BPM_STAGE_CACHE="1" if cache else "0"):
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "kfp"),
                   raise_on_error=True, enable_caching=cache, cache_root=str(root / "kfp-cache"))
        pipeline, args = pipeline_function(config), pipeline_arguments(config, uri)
        # kfp.local prints task logs to stdout; ours is for results (``bpm run --json``).
        # kfp.local indents task output by swapping builtins.print per task; with tasks of a
        # ParallelFor running in threads the swaps interleave and can leave print indented
        # after the run. Put the real one back whatever happens.
        real_print = builtins.print
        try:
            with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
                # Expected locally: the cluster image and the GPU/memory requests do not apply here.
                warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
                warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*",
                                        category=UserWarning)
                task = pipeline(**args)
        except RuntimeError as e:  # kfp.local: "Pipeline 'x' finished with status FAILURE. Inner task failed: 'y'."
            raise StageError(f"campaign {config.name!r}: {e} (task logs above; finished stages are cached, "
                             "so a re-run resumes after them)") from e
        finally:
            builtins.print = real_print
    results = Path(task.output.path)
    return _result(results, uri, time.perf_counter() - t0, "kfp-local")


def run_in_process(config: RunConfig, *, root: Path = DEFAULT_ROOT, tracking: bool = True,
                   work: Path | None = None, cache: bool = True) -> LocalRunResult:
    """The same steps as the pipeline, called one after the other in this process."""
    from bpm_lib.runner.campaign import aggregate_and_log
    from bpm_lib.runner.steps import (
        fetch_step,
        generate_step,
        judge_step,
        localize_edited_step,
        localize_source_step,
        parse_step,
    )

    root = Path(root).resolve()
    uri = _tracking(config, root, tracking)
    t0 = time.perf_counter()
    cache_dir = os.environ.get("BPM_CACHE_DIR") or str(root / "cache")
    work = Path(work) if work else root / "inprocess" / f"{config.name}-{int(time.time() * 1000)}"
    args = pipeline_arguments(config, uri)
    with _env(BPM_CACHE_DIR=cache_dir, BPM_STAGE_CACHE="1" if cache else "0"):
        ev, parsed, src = work / "evalset", work / "parsed", work / "source_loc"
        fetch_step(config.dataset.source, ev, limit=config.dataset.limit, seed=config.dataset.seed,
                   stratify=config.dataset.stratify)
        parse_step(ev, parsed, preset=config.preset, parser=config.parser)
        localize_source_step(ev, parsed, src, preset=config.preset, localizer=config.localizer,
                             batch_size=config.batch_size)
        judged, editsets = [], []
        for cand in config.candidates:
            es, el, jd = work / f"editset-{cand.name}", work / f"edited-{cand.name}", work / f"judged-{cand.name}"
            generate_step(ev, json.dumps(asdict(cand), sort_keys=True), es)
            localize_edited_step(ev, parsed, src, es, el, preset=config.preset, localizer=config.localizer,
                                 batch_size=config.batch_size)
            judge_step(ev, parsed, src, el, es, jd, preset=config.preset, embedder=config.embedder,
                       batch_size=config.batch_size)
            judged.append(jd)
            editsets.append(es)
        results = work / "results"
        aggregate_and_log(ev, judged, editsets, results, alpha=config.alpha, calibration=config.calibration or "",
                          preset=config.preset, campaign=config.name, tracking_uri=uri or "",
                          experiment=config.tracking.experiment, params=args["params"])
    return _result(results, uri, time.perf_counter() - t0, "in-process")


def _result(results: Path, uri: str | None, seconds: float, mode: str) -> LocalRunResult:
    mlflow_info: dict[str, Any] = {}
    if (results / "mlflow.json").exists():
        mlflow_info = json.loads((results / "mlflow.json").read_text())
    return LocalRunResult(results, uri, mlflow_info.get("parent_run_id"), mlflow_info.get("child_run_ids", {}),
                          seconds, mode)
