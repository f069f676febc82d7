"""governance_audit: audit the aliased versions of a registered model against a policy.

prepare (aliases → pinned versions, frozen calibration) → fetch → parse →
localize(source) once; ParallelFor over the audited versions: generate → localize(edited)
→ judge; aggregate with the frozen calibration → finish (rules, MLflow audit run,
version tags; fails the run on a violation). Scheduled by ``bpm audit schedule``;
compiled by ``python -m pipelines.compile``. Cluster only: kfp.local (SDK 2.15) runs
neither ParallelFor nor artifact lists; ``bpm audit run`` is the one-machine form.
"""

from kfp import dsl

from components.audit import audit_aggregate, audit_finish, audit_generate, audit_prepare
from components.data import fetch_data
from components.judge import judge
from components.localize import localize_edited, localize_source
from components.parse import parse_instructions
from pipelines._wiring import cpu_task, gpu_task


@dsl.pipeline(name="bpm-governance-audit",
              description="BPM governance audit of a registered model's aliased versions against a policy")
def governance_audit(policy: str, calibration: str = "", tracking_uri: str = ""):
    prep = cpu_task(audit_prepare(policy=policy, calibration=calibration, tracking_uri=tracking_uri))
    prep.set_caching_options(False)  # aliases move between runs: resolve them every time
    evalset = cpu_task(fetch_data(source=prep.outputs["dataset_source"], limit=prep.outputs["dataset_limit"],
                                  seed=prep.outputs["dataset_seed"],
                                  stratify=prep.outputs["dataset_stratify"])).outputs["evalset"]
    parsed = cpu_task(parse_instructions(evalset=evalset, preset=prep.outputs["preset"],
                                         parser=prep.outputs["parser"])).outputs["parsed"]
    source = gpu_task(localize_source(evalset=evalset, parsed=parsed, preset=prep.outputs["preset"],
                                      localizer=prep.outputs["localizer"],
                                      batch_size=prep.outputs["batch_size"])).outputs["source_loc"]
    with dsl.ParallelFor(prep.outputs["candidates"], parallelism=2) as candidate:
        edits = gpu_task(audit_generate(evalset=evalset, candidate=candidate, tracking_uri=tracking_uri))
        edited = gpu_task(localize_edited(evalset=evalset, parsed=parsed, source_loc=source,
                                          editset=edits.outputs["editset"], preset=prep.outputs["preset"],
                                          localizer=prep.outputs["localizer"],
                                          batch_size=prep.outputs["batch_size"]))
        judged = gpu_task(judge(evalset=evalset, parsed=parsed, source_loc=source,
                                edited_loc=edited.outputs["edited_loc"], editset=edits.outputs["editset"],
                                preset=prep.outputs["preset"], embedder=prep.outputs["embedder"],
                                batch_size=prep.outputs["batch_size"]))
    agg = cpu_task(audit_aggregate(evalset=evalset, judged=dsl.Collected(judged.outputs["judged"]),
                                   editsets=dsl.Collected(edits.outputs["editset"]), plan=prep.outputs["plan"],
                                   pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER))
    agg.set_caching_options(False)  # logs a new MLflow campaign every run
    finish = cpu_task(audit_finish(plan=prep.outputs["plan"], results=agg.outputs["results"],
                                   pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER))
    finish.set_caching_options(False)

