"""Governance-audit components: thin wrappers over :mod:`bpm_lib.audit.run`.

``audit_prepare`` resolves the aliases and verifies the frozen calibration (the plan),
``audit_generate`` edits with one pinned model version (it needs the MLflow address to
download ``models:/``), ``audit_aggregate`` scores with the frozen calibration and
``audit_finish`` applies the policy, logs the audit run, tags the versions and fails the
pipeline run when the policy is violated.
"""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE)
def audit_prepare(policy: str, calibration: str, tracking_uri: str, plan: Output[Artifact]) -> NamedTuple(  # type: ignore[valid-type]
    "AuditEvaluation",
    [("candidates", list), ("dataset_source", str), ("dataset_limit", int), ("dataset_seed", int),
     ("dataset_stratify", str), ("preset", str), ("parser", str), ("localizer", str), ("embedder", str),
     ("batch_size", int)],
):
    """``policy``: the policy YAML text; ``calibration``: the frozen calibration JSON text
    ("" reads the policy's calibration.path, e.g. an s3:// URI)."""
    from collections import namedtuple

    from bpm_lib.audit.run import pipeline_values, policy_from_parameter, prepare_audit

    if not tracking_uri:
        raise ValueError("tracking_uri is required: the MLflow server holding the model registry")
    result = prepare_audit(policy_from_parameter(policy), policy, tracking_uri=tracking_uri, folder=plan.path,
                           calibration_text=calibration or None)
    plan.metadata.update({"model": result.policy.model, "calibration_id": result.calibration.id,
                          "versions": {s.alias: s.version for s in result.subjects}})
    AuditEvaluation = namedtuple("AuditEvaluation", [
        "candidates", "dataset_source", "dataset_limit", "dataset_seed", "dataset_stratify", "preset", "parser",
        "localizer", "embedder", "batch_size"])
    return AuditEvaluation(**pipeline_values(result))


@dsl.component(base_image=IMAGE)
def audit_generate(evalset: Input[Dataset], candidate: str, tracking_uri: str, editset: Output[Dataset]):
    """One audited version edits the audit set (``candidate``: a CandidateConfig as JSON,
    as in :func:`components.generate.generate_edits`)."""
    from bpm_lib.audit.run import tracking_env
    from bpm_lib.runner.steps import generate_step

    with tracking_env(tracking_uri):
        meta = generate_step(evalset.path, candidate, editset.path)
    editset.metadata.update({"candidate": meta["candidate"], "cached": meta["cached"],
                             "checkpoint_digest": meta.get("checkpoint_digest") or ""})


@dsl.component(base_image=IMAGE)
def audit_aggregate(evalset: Input[Dataset], judged: Input[List[Dataset]], editsets: Input[List[Dataset]],
                    plan: Input[Artifact], pipeline_run_id: str, results: Output[Dataset], metrics: Output[Metrics],
                    report: Output[HTML]):
    """BPM with the plan's frozen calibration over every audited version; logs the campaign."""
    from bpm_lib.audit.run import aggregate_for_audit, read_plan

    values = aggregate_for_audit(read_plan(plan.path), evalset.path, [j.path for j in judged],
                                 [e.path for e in editsets], results.path, report.path,
                                 pipeline_run_id=pipeline_run_id)
    for name, value in values.items():
        metrics.log_metric(name, value)


@dsl.component(base_image=IMAGE)
def audit_finish(plan: Input[Artifact], results: Input[Dataset], pipeline_run_id: str, audit: Output[Artifact],
                 report: Output[HTML], metrics: Output[Metrics]):
    """Apply the policy; raise (failing the run) when it is violated, after logging."""
    import shutil

    from bpm_lib.audit.policy import AuditViolation
    from bpm_lib.audit.report import verdict_table
    from bpm_lib.audit.run import finish_audit, read_plan

    outcome = finish_audit(read_plan(plan.path), results.path, audit.path, runner="kubeflow",
                           pipeline_run_id=pipeline_run_id or None)
    shutil.copy(outcome.html_path, report.path)
    metrics.log_metric("rules_total", float(len(outcome.rules)))
    metrics.log_metric("rules_failed", float(len(outcome.violations)))
    audit.metadata.update({"verdict": outcome.verdict, "audit_run_id": outcome.audit_run_id})
    print(verdict_table(outcome.record))
    if outcome.verdict != "pass":
        raise AuditViolation(f"audit {outcome.record['policy']['name']!r} failed: "
                             + "; ".join(f"{r.subject}: {r.detail}" for r in outcome.violations))
