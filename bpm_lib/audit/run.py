"""Governance audits: evaluate the aliased versions of a registered model on a frozen
audit set with a frozen calibration, apply the policy, report, tag, schedule.

Three stages, the same for ``bpm audit run`` (one process) and the
``governance_audit`` pipeline (one component each):

1. :func:`prepare_audit` — resolve each alias to its model version
   (``MlflowClient.get_model_version_by_alias``), load and verify the frozen calibration,
   write ``plan.json`` + ``calibration.json``. The evaluation pins the versions found here
   (``models:/NAME/VERSION``): the numbers, the report and the tags all name the same
   weights even if an alias moves during the audit.
2. the evaluation — :func:`evaluation_config` is a ``RunConfig`` (one candidate per
   alias) for :func:`bpm_lib.runner.local.run_in_process` / ``run_local``; the pipeline
   wires the same steps.
3. :func:`finish_audit` — read the results, find the previous comparable audit per
   alias in MLflow, apply the rules (:mod:`bpm_lib.audit.evaluate`), write
   ``audit.json`` + ``audit.html``, log the MLflow *audit run* (experiment
   ``bpm-audits`` by default, tag ``bpm.kind=audit``) and tag every audited version
   (``audit.status``, ``audit.date``, ``audit.bpm``, ``audit.run_id``).

:func:`schedule_audit` registers the pipeline as a Kubeflow recurring run.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bpm_lib import __version__
from bpm_lib.audit.evaluate import (
    Baseline,
    RuleResult,
    SubjectResult,
    Verdict,
    evaluate_rules,
    overall_verdict,
    subject_verdicts,
)
from bpm_lib.audit.policy import (
    AuditError,
    AuditPolicy,
    load_policy,
    parse_policy,
    policy_from_text,
)
from bpm_lib.errors import CalibrationError, ConfigError, DataError, TrackingError
from bpm_lib.io.jsonl import write_json_atomic

if TYPE_CHECKING:
    from bpm_lib.config import RunConfig
    from bpm_lib.types import Calibration

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
CALIBRATION_FILE = "calibration.json"
AUDIT_JSON = "audit.json"
AUDIT_HTML = "audit.html"
POLICY_FILE = "policy.yaml"
RECORD_VERSION = 1
Runner = Literal["in-process", "kfp-local"]


# --------------------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@contextmanager
def tracking_env(uri: str) -> Iterator[None]:
    """``MLFLOW_TRACKING_URI`` set to ``uri`` for the block: the evaluation's MLflow logging
    and the ``models:/`` downloads (also in kfp.local subprocesses) all use it."""
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


def who() -> dict[str, str]:
    """The account and machine running the audit (``USER``, else the login name)."""
    user = os.environ.get("USER") or os.environ.get("USERNAME")
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
    return {"user": user, "host": socket.gethostname()}


def code_version() -> dict[str, str | None]:
    """bpm-eval's version and, when known, the git commit (``BPM_GIT_COMMIT`` in images,
    else ``git rev-parse HEAD`` of the checkout the package runs from)."""
    commit = os.environ.get("BPM_GIT_COMMIT")
    if not commit:
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                 capture_output=True, text=True, timeout=5, check=False)
            commit = out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"bpm_eval": __version__, "git_commit": commit or None}


def resolve_audit_tracking_uri(policy: AuditPolicy, override: str | None = None, *,
                               root: Path | None = None) -> str:
    """``override`` (``--tracking-uri``), else ``MLFLOW_TRACKING_URI``, else the policy's
    ``tracking.uri``, else the local server under ``root``; :class:`TrackingError` naming
    the URI when its server does not answer."""
    from bpm_lib.io.tracking import DEFAULT_ROOT, check_reachable, ensure_local_server

    uri = override or os.environ.get("MLFLOW_TRACKING_URI") or policy.tracking.uri
    if not uri:
        uri = ensure_local_server(root or DEFAULT_ROOT).url
    check_reachable(uri)
    return uri


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class AuditSubject:
    """One alias of the audited model and the version it pointed to at the start."""

    alias: str
    model: str
    version: str
    source: str | None = None
    run_id: str | None = None

    @property
    def checkpoint(self) -> str:
        return f"models:/{self.model}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"alias": self.alias, "model": self.model, "version": self.version, "source": self.source,
                "run_id": self.run_id}


@dataclass(frozen=True)
class AuditPlan:
    """What will be audited, with what; written as ``plan.json`` beside ``calibration.json``."""

    policy: AuditPolicy
    policy_text: str
    subjects: tuple[AuditSubject, ...]
    calibration: Calibration
    calibration_path: str
    calibration_digest: str
    tracking_uri: str
    started_at: str
    who: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.to_dict(), "policy_text": self.policy_text,
                "policy_source": self.policy.source_path, "policy_digest": self.policy.text_digest,
                "subjects": [s.to_dict() for s in self.subjects], "calibration": self.calibration.to_dict(),
                "calibration_digest": self.calibration_digest, "tracking_uri": self.tracking_uri,
                "started_at": self.started_at, "who": dict(self.who)}


def write_plan(plan: AuditPlan, folder: str | Path) -> Path:
    return write_json_atomic(Path(folder) / PLAN_FILE, plan.to_dict())


def read_plan(folder: str | Path) -> AuditPlan:
    """The plan written by :func:`prepare_audit` in ``folder`` (calibration re-verified)."""
    from bpm_lib.aggregate import load_calibration

    folder = Path(folder)
    try:
        data = json.loads((folder / PLAN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise AuditError(f"{folder}: no {PLAN_FILE}; run the prepare step first") from e
    policy = parse_policy(data["policy"], source_path=data.get("policy_source"),
                          text_digest=data.get("policy_digest"))
    calibration = load_calibration(folder / CALIBRATION_FILE)
    return AuditPlan(policy=policy, policy_text=data["policy_text"],
                     subjects=tuple(AuditSubject(**s) for s in data["subjects"]), calibration=calibration,
                     calibration_path=str(folder / CALIBRATION_FILE), calibration_digest=data["calibration_digest"],
                     tracking_uri=data["tracking_uri"], started_at=data["started_at"], who=dict(data.get("who") or {}))


def load_frozen_calibration(policy: AuditPolicy, folder: str | Path,
                            text: str | None = None) -> tuple[Calibration, Path, str]:
    """Copy the policy's calibration (``text`` when given, else its file: local or
    ``s3://``) to ``folder/calibration.json`` and verify it: its id must be the hash of its
    content, it must be frozen, and it must be the id the policy names (if any).
    Returns (calibration, local path, sha256 of the file)."""
    from bpm_lib.aggregate import load_calibration
    from bpm_lib.io import storage

    where = policy.calibration.path
    if text is not None:
        data, where = text.encode("utf-8"), "the calibration parameter"
    else:
        try:
            data = storage.read_bytes(policy.calibration.path)
        except DataError as e:
            raise CalibrationError(f"frozen calibration {policy.calibration.path}: {e}") from e
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    local = folder / CALIBRATION_FILE
    local.write_bytes(data)
    try:
        cal = load_calibration(local)
    except CalibrationError as e:
        raise CalibrationError(f"frozen calibration from {where}: {e}") from e
    if cal.mode != "frozen":
        raise CalibrationError(
            f"calibration {cal.id} from {where} has mode {cal.mode!r}: an audit needs a frozen calibration "
            "(fit one with bpm_lib.aggregate.fit_calibration(..., mode='frozen') on a reference pool)")
    if policy.calibration.id is not None and cal.id != policy.calibration.id:
        raise CalibrationError(
            f"calibration mismatch: the policy expects {policy.calibration.id}, {where} holds {cal.id}")
    return cal, local, _sha256(data)


def resolve_subjects(policy: AuditPolicy, client: Any) -> tuple[AuditSubject, ...]:
    """Each alias of the policy → the model version it points to now.

    :class:`AuditError` names a missing model or alias (with the aliases that do exist);
    :class:`TrackingError` when the registry cannot be asked."""
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(policy.model)
    except MlflowException as e:
        if getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            raise AuditError(f"registered model {policy.model!r} does not exist at {client.tracking_uri}") from e
        raise TrackingError(f"MLflow at {client.tracking_uri}: cannot read model {policy.model!r}: {e}") from e
    existing = sorted((getattr(registered, "aliases", None) or {}).keys())
    subjects = []
    for alias in policy.aliases:
        try:
            mv = client.get_model_version_by_alias(policy.model, alias)
        except MlflowException as e:
            if getattr(e, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                raise AuditError(f"model {policy.model!r} has no alias {alias!r} "
                                 f"(its aliases: {', '.join(existing) or 'none'})") from e
            raise TrackingError(f"MLflow at {client.tracking_uri}: cannot resolve {policy.model}@{alias}: {e}") from e
        subjects.append(AuditSubject(alias=alias, model=policy.model, version=str(mv.version),
                                     source=getattr(mv, "source", None), run_id=getattr(mv, "run_id", None) or None))
    return tuple(subjects)


def check_backends(policy: AuditPolicy) -> None:
    """Fail before any work when the policy's preset or editor does not exist
    (:class:`ConfigError` naming the key, with "did you mean")."""
    from bpm_lib.backends import EDITORS
    from bpm_lib.presets import load_preset

    for key, check in (("preset", lambda: load_preset(policy.preset)),
                       ("editor.name", lambda: EDITORS.get(policy.editor.name))):
        try:
            check()
        except ValueError as e:  # ConfigError included
            raise ConfigError(f"policy: {key}: {e}") from e


def prepare_audit(policy: AuditPolicy, policy_text: str, *, tracking_uri: str, folder: str | Path,
                  calibration_text: str | None = None, client: Any = None) -> AuditPlan:
    """Stage 1: verify the calibration, resolve the aliases, write the plan to ``folder``."""
    from mlflow import MlflowClient

    from bpm_lib.io.tracking import check_reachable

    check_backends(policy)
    check_reachable(tracking_uri)
    folder = Path(folder)
    calibration, local, digest = load_frozen_calibration(policy, folder, calibration_text)
    client = client or MlflowClient(tracking_uri=tracking_uri)
    subjects = resolve_subjects(policy, client)
    plan = AuditPlan(policy=policy, policy_text=policy_text, subjects=subjects, calibration=calibration,
                     calibration_path=str(local), calibration_digest=digest, tracking_uri=tracking_uri,
                     started_at=_now(), who=who())
    write_plan(plan, folder)
    log.info("audit %s: %s", policy.name, ", ".join(f"{s.alias} → v{s.version}" for s in subjects))
    return plan


def candidate_dicts(plan: AuditPlan) -> list[dict[str, Any]]:
    """One ``CandidateConfig`` (as a dict) per alias, pinned to the resolved version."""
    editor = plan.policy.editor
    return [{"name": s.alias, "editor": editor.name, "checkpoint": s.checkpoint, "settings": dict(editor.settings),
             "seed": editor.seed, "mask_guidance": editor.mask_guidance} for s in plan.subjects]


def campaign_name(plan: AuditPlan) -> str:
    """The evaluation campaign's name (its MLflow parent run); the audit run is ``audit-<name>-<time>``."""
    return f"audit-{plan.policy.name}"[:52] + "-evaluation"


def evaluation_config(plan: AuditPlan) -> RunConfig:
    """The evaluation campaign of the plan (frozen calibration, its α)."""
    from bpm_lib.config import CandidateConfig, DatasetConfig, RunConfig, TrackingConfig

    p = plan.policy
    return RunConfig(
        name=campaign_name(plan),
        candidates=tuple(CandidateConfig(**c) for c in candidate_dicts(plan)),
        dataset=DatasetConfig(source=p.audit_set.source, limit=p.audit_set.limit, seed=p.audit_set.seed,
                              stratify=p.audit_set.stratify),
        preset=p.preset, parser=p.parser, localizer=p.localizer, embedder=p.embedder,
        alpha=plan.calibration.alpha, calibration=plan.calibration_path, batch_size=p.batch_size,
        tracking=TrackingConfig(uri=plan.tracking_uri, experiment=p.tracking.evaluation_experiment),
    )


def evaluation_key(plan: AuditPlan, data_digest: str | None) -> str:
    """Audits with the same key are comparable: same model, audit set, calibration,
    preset, backends and editor settings (not the bpm-eval version)."""
    p = plan.policy
    content = {"model": p.model, "data": data_digest, "calibration": plan.calibration.id, "preset": p.preset,
               "parser": p.parser, "localizer": p.localizer, "embedder": p.embedder,
               "editor": {"name": p.editor.name, "settings": p.editor.settings, "seed": p.editor.seed,
                          "mask_guidance": p.editor.mask_guidance}}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:24]


def pipeline_values(plan: AuditPlan) -> dict[str, Any]:
    """The evaluation settings the pipeline's prepare step hands to the evaluation steps
    (the ``compare_checkpoints`` parameter conventions: 0 / "" for none)."""
    from bpm_lib.runner.local import pipeline_arguments

    config = evaluation_config(plan)
    args = pipeline_arguments(config, plan.tracking_uri)
    return {"candidates": args["candidates"], "dataset_source": args["dataset_source"],
            "dataset_limit": args["dataset_limit"], "dataset_seed": args["dataset_seed"],
            "dataset_stratify": args["dataset_stratify"], "preset": args["preset"], "parser": args["parser"],
            "localizer": args["localizer"], "embedder": args["embedder"], "batch_size": args["batch_size"]}


def aggregate_for_audit(plan: AuditPlan, evalset: str | Path, judged: Sequence[str | Path],
                        editsets: Sequence[str | Path], results_dir: str | Path, report_path: str | Path | None = None,
                        *, pipeline_run_id: str = "") -> dict[str, float]:
    """The evaluation's aggregation with the plan's frozen calibration, logged as the
    audit's evaluation campaign; returns the flat metrics."""
    from bpm_lib.runner.campaign import aggregate_and_log
    from bpm_lib.runner.local import pipeline_arguments

    config = evaluation_config(plan)
    out = aggregate_and_log(evalset, judged, editsets, results_dir, report_path, alpha=plan.calibration.alpha,
                            calibration=plan.calibration_path, preset=plan.policy.preset, campaign=config.name,
                            tracking_uri=plan.tracking_uri, experiment=config.tracking.experiment,
                            params=pipeline_arguments(config, plan.tracking_uri)["params"],
                            pipeline_run_id=pipeline_run_id)
    return dict(out.metrics)


# --------------------------------------------------------------------------- MLflow audit runs


def _experiment_id(client: Any, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return str(exp.experiment_id) if exp else str(client.create_experiment(name))


def _metric_key(alias: str, metric: str) -> str:
    return f"{alias}/{metric}"


def find_previous_audits(client: Any, plan: AuditPlan, key: str, *, max_runs: int = 200) -> dict[str, Baseline | None]:
    """Per alias, the latest finished earlier audit run with the same evaluation key that
    measured the same alias (``baseline: alias``) or the same version (``baseline: version``)."""
    exp = client.get_experiment_by_name(plan.policy.tracking.experiment)
    out: dict[str, Baseline | None] = {s.alias: None for s in plan.subjects}
    if exp is None:
        return out
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`bpm.kind` = 'audit' AND tags.`audit.evaluation_key` = '{key}' "
                      "AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=max_runs,
    )
    by_version = plan.policy.rules.max_regression.baseline == "version"
    for subject in plan.subjects:
        for run in runs:
            tags, metrics = run.data.tags, run.data.metrics
            versions = {k[len("audit.version."):]: v for k, v in tags.items() if k.startswith("audit.version.")}
            if by_version:
                match = next((a for a, v in sorted(versions.items()) if v == subject.version), None)
            else:
                match = subject.alias if subject.alias in versions else None
            if match is None:
                continue
            means = {m: metrics.get(_metric_key(match, m)) for m in ("bpm", "s_modify", "s_preserve", "s_region",
                                                                     "s_size", "s_position")}
            out[subject.alias] = Baseline(run_id=run.info.run_id, version=versions[match], means=means,
                                          date=tags.get("audit.date"), alias=match)
            break
    return out


def _log_audit_run(client: Any, plan: AuditPlan, record: dict[str, Any], folder: Path) -> str:
    from mlflow.entities import Metric, Param, RunTag

    from bpm_lib.io.tracking import safe_params

    p = plan.policy
    exp_id = _experiment_id(client, p.tracking.experiment)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    tags = {"bpm.kind": "audit", "mlflow.runName": f"audit-{p.name}-{stamp}", "audit.policy": p.name,
            "audit.model": p.model, "audit.status": record["verdict"], "audit.date": record["when"]["finished"],
            "audit.evaluation_key": record["evaluation"]["evaluation_key"],
            "audit.calibration_id": plan.calibration.id, "audit.data_digest": str(record["data"]["digest"]),
            "audit.user": record["who"]["user"], "audit.host": record["who"]["host"],
            "audit.code_version": str(record["code"]["bpm_eval"]),
            "audit.aliases": ",".join(s.alias for s in plan.subjects)}
    if record["code"].get("git_commit"):
        tags["audit.git_commit"] = str(record["code"]["git_commit"])
    if record["evaluation"].get("campaign_run_id"):
        tags["audit.campaign_run_id"] = str(record["evaluation"]["campaign_run_id"])
    if record["evaluation"].get("pipeline_run_id"):
        tags["bpm.pipeline_run_id"] = str(record["evaluation"]["pipeline_run_id"])
    for s in record["what"]["subjects"]:
        tags[f"audit.version.{s['alias']}"] = str(s["version"])
        tags[f"audit.status.{s['alias']}"] = s["status"]
    run = client.create_run(exp_id, run_name=tags["mlflow.runName"], tags=tags)
    run_id = run.info.run_id
    try:
        record["mlflow"] = {"tracking_uri": plan.tracking_uri, "experiment": p.tracking.experiment,
                            "experiment_id": exp_id, "audit_run_id": run_id}
        write_json_atomic(folder / AUDIT_JSON, record)
        from bpm_lib.audit.report import render_html

        (folder / AUDIT_HTML).write_text(render_html(record), encoding="utf-8")
        now = int(time.time() * 1000)
        metrics = [Metric("rules/total", float(len(record["rules"])), now, 0),
                   Metric("rules/failed", float(sum(r["verdict"] == "fail" for r in record["rules"])), now, 0)]
        for s in record["what"]["subjects"]:
            for m, v in (s.get("means") or {}).items():
                if v is not None:
                    metrics.append(Metric(_metric_key(s["alias"], m), float(v), now, 0))
            for m in ("samples_scored", "samples_failed"):
                metrics.append(Metric(_metric_key(s["alias"], m), float(s[m]), now, 0))
        params = safe_params({"policy_digest": p.text_digest, "dataset_source": p.audit_set.source,
                              "dataset_limit": p.audit_set.limit, "dataset_seed": p.audit_set.seed,
                              "preset": p.preset, "editor": p.editor.name, "editor_settings": p.editor.settings,
                              "calibration_digest": plan.calibration_digest, "alpha": plan.calibration.alpha})
        client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                         tags=[RunTag("audit.rules_failed", str(metrics[1].value))])
        (folder / POLICY_FILE).write_text(plan.policy_text, encoding="utf-8")
        for name in (AUDIT_JSON, AUDIT_HTML, POLICY_FILE):
            client.log_artifact(run_id, str(folder / name), artifact_path="audit")
        client.log_artifact(run_id, plan.calibration_path, artifact_path="audit")
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return str(run_id)


def tag_versions(client: Any, plan: AuditPlan, record: Mapping[str, Any]) -> None:
    """``audit.status`` / ``audit.date`` / ``audit.bpm`` / ``audit.run_id`` (+ policy) on every
    audited version; a version behind two aliases gets the worse status."""
    statuses: dict[str, list[Mapping[str, Any]]] = {}
    for s in record["what"]["subjects"]:
        statuses.setdefault(str(s["version"]), []).append(s)
    for version, entries in statuses.items():
        status = "fail" if any(e["status"] == "fail" for e in entries) else "pass"
        bpm = (entries[0].get("means") or {}).get("bpm")
        tags = {"audit.status": status, "audit.date": record["when"]["finished"],
                "audit.run_id": record["mlflow"]["audit_run_id"], "audit.policy": plan.policy.name,
                "audit.aliases": ",".join(e["alias"] for e in entries)}
        if bpm is not None:
            tags["audit.bpm"] = f"{float(bpm):.6g}"
        for key, value in tags.items():
            client.set_model_version_tag(plan.policy.model, version, key, str(value))


# --------------------------------------------------------------------------- stage 3


@dataclass(frozen=True)
class AuditOutcome:
    verdict: Verdict
    rules: tuple[RuleResult, ...]
    record: dict[str, Any]
    audit_run_id: str
    folder: Path

    @property
    def json_path(self) -> Path:
        return self.folder / AUDIT_JSON

    @property
    def html_path(self) -> Path:
        return self.folder / AUDIT_HTML

    @property
    def violations(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.passed]


def _read_results(results_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from bpm_lib.runner.cache import read_meta

    try:
        summary = json.loads((results_dir / "summary.json").read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise AuditError(f"{results_dir}: no summary.json; the evaluation did not finish") from e
    return summary, read_meta(results_dir)


def finish_audit(plan: AuditPlan, results_dir: str | Path, folder: str | Path, *, client: Any = None,
                 runner: str = "in-process", pipeline_run_id: str | None = None,
                 campaign_run_id: str | None = None) -> AuditOutcome:
    """Stage 3: rules, report files in ``folder``, the MLflow audit run, version tags."""
    from mlflow import MlflowClient

    results_dir, folder = Path(results_dir), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary, meta = _read_results(results_dir)
    used = (summary.get("calibration") or {}).get("id")
    if used != plan.calibration.id:
        raise CalibrationError(f"the evaluation used calibration {used!r}, not the frozen {plan.calibration.id}")
    evalset = meta.get("evalset") or {}
    data_digest = evalset.get("dataset_digest")
    client = client or MlflowClient(tracking_uri=plan.tracking_uri)
    subjects = []
    for s in plan.subjects:
        cand = summary["candidates"].get(s.alias)
        if cand is None:
            raise AuditError(f"the evaluation has no result for alias {s.alias!r} (v{s.version})")
        subjects.append(SubjectResult.from_summary(s.alias, s.version, cand))
    key = evaluation_key(plan, data_digest)
    previous = find_previous_audits(client, plan, key) if plan.policy.rules.max_regression.vs_previous else {}
    rules = evaluate_rules(plan.policy.rules, subjects, champion=plan.policy.champion, previous=previous,
                           expected_digest=plan.policy.audit_set.digest, actual_digest=data_digest)
    verdict = overall_verdict(rules)
    per_subject = subject_verdicts(rules, [s.alias for s in plan.subjects])
    if campaign_run_id is None and (results_dir / "mlflow.json").exists():
        campaign_run_id = json.loads((results_dir / "mlflow.json").read_text()).get("parent_run_id")
    editsets = meta.get("editsets") or {}
    record: dict[str, Any] = {
        "kind": "bpm-audit",
        "version": RECORD_VERSION,
        "verdict": verdict,
        "policy": {"name": plan.policy.name, "source": plan.policy.source_path, "digest": plan.policy.text_digest,
                   "content": plan.policy.to_dict()},
        "who": dict(plan.who) or who(),
        "when": {"started": plan.started_at, "finished": _now()},
        "what": {"model": plan.policy.model, "subjects": [
            {**s.to_dict(), "status": per_subject[s.alias],
             "checkpoint": s.checkpoint,
             "checkpoint_digest": (editsets.get(s.alias) or {}).get("checkpoint_digest"),
             "means": dict(subj.means), "means_by_edit_type": {k: dict(v) for k, v in subj.means_by_edit_type.items()},
             "samples_total": subj.samples_total, "samples_scored": subj.samples_scored,
             "samples_failed": subj.samples_failed}
            for s, subj in zip(plan.subjects, subjects, strict=True)]},
        "data": {"source": plan.policy.audit_set.source, "limit": plan.policy.audit_set.limit,
                 "seed": plan.policy.audit_set.seed, "stratify": plan.policy.audit_set.stratify,
                 "expected_digest": plan.policy.audit_set.digest, "digest": data_digest,
                 "count": evalset.get("count"), "dataset": evalset.get("dataset")},
        "calibration": {"id": plan.calibration.id, "digest": plan.calibration_digest, "mode": plan.calibration.mode,
                        "alpha": plan.calibration.alpha, "source": plan.policy.calibration.path,
                        "fitted_on": plan.calibration.fitted_on},
        "evaluation": {"preset": plan.policy.preset, "parser": plan.policy.parser,
                       "localizer": plan.policy.localizer, "embedder": plan.policy.embedder,
                       "editor": {"name": plan.policy.editor.name, "settings": plan.policy.editor.settings,
                                  "seed": plan.policy.editor.seed},
                       "runner": runner, "results": str(results_dir), "campaign_run_id": campaign_run_id,
                       "pipeline_run_id": pipeline_run_id, "evaluation_key": key,
                       "meaningless": any(c.get("meaningless") for c in summary["candidates"].values())},
        "code": code_version(),
        "baselines": {a: (None if b is None else {"run_id": b.run_id, "version": b.version, "alias": b.alias,
                                                  "date": b.date, "means": dict(b.means)})
                      for a, b in previous.items()},
        "rules": [r.to_dict() for r in rules],
    }
    run_id = _log_audit_run(client, plan, record, folder)
    tag_versions(client, plan, record)
    log.info("audit %s: %s (run %s)", plan.policy.name, verdict, run_id)
    return AuditOutcome(verdict=verdict, rules=tuple(rules), record=record, audit_run_id=run_id, folder=folder)


# --------------------------------------------------------------------------- one machine


def run_audit(policy: AuditPolicy | str | Path, *, tracking_uri: str | None = None, root: str | Path = ".bpm",
              runner: Runner = "in-process", policy_text: str | None = None) -> AuditOutcome:
    """The whole audit on this machine (what ``bpm audit run`` and a crontab line call).

    ``policy``: a parsed policy (then ``policy_text`` is what gets archived) or its path.
    """
    from bpm_lib.runner.local import run_in_process, run_local

    if runner not in ("in-process", "kfp-local"):
        raise ValueError(f"runner must be 'in-process' or 'kfp-local', got {runner!r}")
    if not isinstance(policy, AuditPolicy):
        path = Path(policy)
        policy = load_policy(path)
        policy_text = path.read_text(encoding="utf-8")
    text = policy_text if policy_text is not None else json.dumps(policy.to_dict(), indent=2)
    root = Path(root).resolve()
    uri = resolve_audit_tracking_uri(policy, tracking_uri, root=root)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = root / "audits" / f"{policy.name}-{stamp}-{os.getpid()}"
    plan = prepare_audit(policy, text, tracking_uri=uri, folder=base / "plan")
    config = evaluation_config(plan)
    with tracking_env(uri):
        if runner == "in-process":
            result = run_in_process(config, root=root, work=base / "evaluation")
        else:
            result = run_local(config, root=root)
    return finish_audit(plan, result.results_dir, base / "report", runner=runner,
                        campaign_run_id=result.parent_run_id)


# --------------------------------------------------------------------------- scheduling

_CRON_MACROS = {
    "@yearly": "0 0 0 1 1 *", "@annually": "0 0 0 1 1 *", "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0", "@daily": "0 0 0 * * *", "@midnight": "0 0 0 * * *", "@hourly": "0 0 * * * *",
}
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
# (name, low, high, names whose index + offset is the value)
_FIELDS6 = (("second", 0, 59, None, 0), ("minute", 0, 59, None, 0), ("hour", 0, 23, None, 0),
            ("day of month", 1, 31, None, 0), ("month", 1, 12, _MONTHS, 1), ("day of week", 0, 6, _DAYS, 0))
_ATOM = re.compile(r"^(\*|\?|[A-Za-z0-9]+(?:-[A-Za-z0-9]+)?)(?:/(\d+))?$")


def _cron_value(text: str, spec: tuple[Any, ...], expr: str) -> int:
    name, low, high, names, offset = spec
    if names is not None and text.upper() in names:
        return names.index(text.upper()) + offset
    if not text.isdigit():
        raise ValueError(f"cron expression {expr!r}: {name} field: {text!r} is not a number"
                         + (f" or one of {', '.join(names)}" if names else ""))
    value = int(text)
    if name == "day of week" and value == 7:
        raise ValueError(f"cron expression {expr!r}: day of week 7: use 0 (or SUN) for Sunday; "
                         "Kubeflow's scheduler takes 0-6")
    if not low <= value <= high:
        raise ValueError(f"cron expression {expr!r}: {name} {value} is outside {low}-{high}")
    return value


def _check_cron_field(field_text: str, spec: tuple[Any, ...], expr: str) -> None:
    name = spec[0]
    for part in field_text.split(","):
        m = _ATOM.match(part)
        if m is None:
            raise ValueError(f"cron expression {expr!r}: {name} field {field_text!r} is not valid cron syntax")
        atom, step = m.group(1), m.group(2)
        if step is not None and int(step) < 1:
            raise ValueError(f"cron expression {expr!r}: {name} step must be >= 1, got {step}")
        if atom == "?":
            if name not in ("day of month", "day of week"):
                raise ValueError(f"cron expression {expr!r}: '?' is only allowed for day of month/day of week")
            continue
        if atom == "*":
            continue
        bounds = atom.split("-")
        values = [_cron_value(b, spec, expr) for b in bounds]
        if len(values) == 2 and values[0] > values[1]:
            raise ValueError(f"cron expression {expr!r}: {name} range {atom!r} runs backwards")


def kfp_cron(expr: str) -> str:
    """A cron expression in the 6-field form Kubeflow Pipelines schedules with
    (robfig/cron: ``second minute hour day-of-month month day-of-week``).

    5 fields (classic crontab) get ``0`` seconds prepended: ``"30 2 * * 1"`` →
    ``"0 30 2 * * 1"``; 6 fields are kept; ``@daily`` etc. are spelled out. Every field is
    checked (numbers in range, names such as MON/JAN, ranges, lists, steps, ``?``)."""
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError(f"cron expression must be a non-empty string, got {expr!r}")
    text = " ".join(expr.split())
    if text.startswith("@"):
        if text.lower() not in _CRON_MACROS:
            raise ValueError(f"cron expression {expr!r}: unknown macro; use one of {', '.join(_CRON_MACROS)}")
        return _CRON_MACROS[text.lower()]
    fields = text.split(" ")
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise ValueError(f"cron expression {expr!r} has {len(fields)} fields; give 5 (minute hour day month weekday) "
                         "or 6 (second first, as Kubeflow Pipelines uses)")
    for f, spec in zip(fields, _FIELDS6, strict=True):
        _check_cron_field(f, spec, expr)
    return " ".join(fields)


def pipeline_parameters(policy_text: str, calibration_text: str, tracking_uri: str) -> dict[str, str]:
    """Arguments of the ``governance_audit`` pipeline."""
    return {"policy": policy_text, "calibration": calibration_text, "tracking_uri": tracking_uri}


def compile_audit_pipeline(path: str | Path) -> Path:
    from kfp import compiler

    from pipelines.governance_audit import governance_audit

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(governance_audit, str(out))
    return out


@dataclass(frozen=True)
class ScheduledAudit:
    recurring_run_id: str
    experiment_id: str
    name: str
    cron: str


def schedule_audit(policy_path: str | Path, *, cron: str, host: str | None = None, name: str | None = None,
                   tracking_uri: str | None = None, namespace: str | None = None, experiment: str | None = None,
                   client: Any = None) -> ScheduledAudit:
    """Register ``governance_audit`` as a Kubeflow recurring run: one run at a time
    (``max_concurrency=1``), no backfill of missed runs (``no_catchup=True``).

    The policy file and its frozen calibration are validated here and passed as pipeline
    parameters (the calibration's content travels with the schedule, so every run uses
    exactly these bounds). ``tracking_uri``: the MLflow address *as the cluster sees it*
    (default: the policy's ``tracking.uri``). ``client``: a ``kfp.Client`` (built from
    ``host``/``namespace`` when None).
    """
    path = Path(policy_path)
    policy = load_policy(path)
    policy_text = path.read_text(encoding="utf-8")
    six = kfp_cron(cron)
    uri = tracking_uri or policy.tracking.uri
    if not uri:
        raise ValueError("tracking_uri is required (or tracking.uri in the policy): the MLflow server the "
                         "cluster's pipeline pods reach")
    with tempfile.TemporaryDirectory(prefix="bpm-audit-schedule-") as tmp:
        cal, local, _ = load_frozen_calibration(policy, tmp)
        calibration_text = local.read_text(encoding="utf-8")
        package = compile_audit_pipeline(Path(tmp) / "governance_audit.yaml")
        if client is None:
            if not host:
                raise ValueError("host is required: the Kubeflow Pipelines API endpoint")
            import kfp

            client = kfp.Client(host=host, namespace=namespace)
        exp = client.create_experiment(experiment or policy.tracking.experiment, namespace=namespace)
        job_name = name or f"bpm-audit-{policy.name}"
        run = client.create_recurring_run(
            experiment_id=exp.experiment_id,
            job_name=job_name,
            description=f"BPM governance audit {policy.name}: {policy.model}@{','.join(policy.aliases)}, "
                        f"calibration {cal.id}",
            cron_expression=six,
            max_concurrency=1,
            no_catchup=True,
            params=pipeline_parameters(policy_text, calibration_text, uri),
            pipeline_package_path=str(package),
        )
    rid = getattr(run, "recurring_run_id", None) or getattr(run, "id", None) or ""
    return ScheduledAudit(recurring_run_id=str(rid), experiment_id=str(exp.experiment_id), name=job_name, cron=six)


def policy_from_parameter(policy_text: str) -> AuditPolicy:
    """A policy given as text (the pipeline parameter); relative paths stay relative to the
    working directory of the step."""
    return policy_from_text(policy_text, source_path="(pipeline parameter)")


__all__ = [
    "AuditOutcome",
    "AuditPlan",
    "AuditSubject",
    "ScheduledAudit",
    "candidate_dicts",
    "evaluation_config",
    "finish_audit",
    "kfp_cron",
    "prepare_audit",
    "read_plan",
    "run_audit",
    "schedule_audit",
]

