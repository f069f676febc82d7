"""``bpm audit run`` end to end against a real MLflow server: a registered model whose two
versions are tiny random InstructPix2Pix checkpoints (aliases champion / challenger), the
demo set (4 samples) as the frozen audit set, a frozen calibration fitted on a first run,
the tiny-random preset; plus the clear errors, and the pipeline's components called in
sequence as the pipeline wires them."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from bpm_lib import __version__
from bpm_lib.cli import main
from tests.fixtures.servers import free_port

SETTINGS: dict[str, Any] = {"num_inference_steps": 2, "max_side": 64, "device": "cpu"}
EDITOR = {"name": "ip2p", "settings": SETTINGS}


@dataclass(frozen=True)
class Registry:
    url: str
    model: str
    versions: dict[str, str]  # alias → version
    digest: str  # frozen audit-set digest
    calibration: Path
    calibration_id: str
    root: Path
    experiment: str

    def policy(self, path: Path, *, rules: dict[str, Any], digest: str | None = None, **extra: Any) -> Path:
        data: dict[str, Any] = {
            "name": path.stem, "model": self.model, "aliases": ["champion", "challenger"],
            "audit_set": {"source": "demo", "limit": 4, "seed": 0, "digest": digest or self.digest},
            "calibration": {"path": str(self.calibration), "id": self.calibration_id},
            "preset": "tiny-random", "editor": EDITOR, "rules": rules,
            "tracking": {"experiment": self.experiment},
        }
        data.update(extra)
        path.write_text("# test policy\n" + yaml.safe_dump(data, sort_keys=False))
        return path


def _register(client: Any, url: str, model: str, checkpoints: Mapping[str, Path | None]) -> dict[str, str]:
    client.create_registered_model(model)
    exp = client.get_experiment_by_name("audit-test-models")
    exp_id = exp.experiment_id if exp else client.create_experiment("audit-test-models")
    versions = {}
    for alias, ckpt in checkpoints.items():
        run = client.create_run(exp_id)
        if ckpt is not None:
            client.log_artifacts(run.info.run_id, str(ckpt), artifact_path="checkpoint")
        client.set_terminated(run.info.run_id)
        mv = client.create_model_version(model, source=f"runs:/{run.info.run_id}/checkpoint", run_id=run.info.run_id)
        client.set_registered_model_alias(model, alias, mv.version)
        versions[alias] = str(mv.version)
    return versions


@pytest.fixture(scope="module")
def registry(mlflow_tracking: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Two tiny ip2p versions registered, the demo subset's digest, and a frozen
    calibration fitted on a first (untracked) evaluation of both versions."""
    import torch
    from mlflow import MlflowClient

    from bpm_lib.aggregate import fit_calibration, save_calibration
    from bpm_lib.config import CandidateConfig, DatasetConfig, RunConfig
    from bpm_lib.io.datasets import fetch
    from bpm_lib.runner.local import run_in_process
    from bpm_lib.types import SampleScore
    from tests.fixtures.tiny_ip2p import save_tiny_ip2p

    tmp = tmp_path_factory.mktemp("audit")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BPM_CACHE_DIR", str(tmp / "cache"))
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_tracking.url)
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        client = MlflowClient(mlflow_tracking.url)
        model = f"audit-tiny-{uuid.uuid4().hex[:6]}"
        ckpts = {"champion": save_tiny_ip2p(tmp / "v1", seed=0), "challenger": save_tiny_ip2p(tmp / "v2", seed=1)}
        versions = _register(client, mlflow_tracking.url, model, ckpts)
        digest = fetch("demo", tmp / "frozen-set", limit=4, seed=0).digest
        first = RunConfig(
            name="calibration-pool", preset="tiny-random", dataset=DatasetConfig(source="demo", limit=4, seed=0),
            candidates=tuple(CandidateConfig(name=a, editor="ip2p", checkpoint=f"models:/{model}/{v}",
                                             settings=dict(SETTINGS)) for a, v in versions.items()),
        )
        result = run_in_process(first, root=tmp / "state", tracking=False)
        scores = [SampleScore.from_dict(json.loads(line))
                  for line in (result.results_dir / "scores.jsonl").read_text().splitlines() if line]
        cal = fit_calibration(scores, mode="frozen", fitted_on={"pool": "audit test", "digest": digest})
        save_calibration(cal, tmp / "frozen-calibration.json")
        yield Registry(url=mlflow_tracking.url, model=model, versions=versions, digest=digest,
                       calibration=tmp / "frozen-calibration.json", calibration_id=cal.id, root=tmp / "state",
                       experiment=f"bpm-audits-{uuid.uuid4().hex[:6]}")
    torch.set_num_threads(threads)


def _audit(registry: Registry, policy: Path, *extra: str) -> list[str]:
    return ["audit", "run", "--policy", str(policy), "--tracking-uri", registry.url, "--root", str(registry.root),
            *extra]


def _audit_runs(client: Any, registry: Registry) -> list[Any]:
    exp = client.get_experiment_by_name(registry.experiment)
    return client.search_runs([exp.experiment_id], filter_string="tags.`bpm.kind` = 'audit'",
                              order_by=["attributes.start_time ASC"])


@pytest.mark.slow
def test_audit_run_passes_then_fails_with_reports_and_tags(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("USER", "auditor")
    client = MlflowClient(registry.url)
    passing = registry.policy(tmp_path / "release-pass.yaml", rules={
        "min": {"bpm": -100.0}, "max": {"s_preserve": 1.0},
        "max_regression": {"vs_previous": {"bpm": 0.0}, "vs_champion": {"bpm": 100.0}},
        "min_samples": 4, "max_failed_samples": {"count": 0, "fraction": 0.0},
    })

    # ---- 1: everything within bounds → exit 0
    assert main(_audit(registry, passing, "--out", str(tmp_path / "out"))) == 0
    out = capsys.readouterr().out
    assert "audit PASS" in out and "regression vs champion bpm" in out
    (run1,) = _audit_runs(client, registry)
    assert run1.info.status == "FINISHED"
    tags = run1.data.tags
    assert (tags["audit.status"], tags["audit.model"], tags["audit.policy"]) == ("pass", registry.model, "release-pass")
    assert tags["audit.version.champion"] == registry.versions["champion"]
    assert tags["audit.calibration_id"] == registry.calibration_id and tags["audit.data_digest"] == registry.digest
    assert tags["audit.user"] == "auditor"
    artifacts = {a.path for a in client.list_artifacts(run1.info.run_id, "audit")}
    assert artifacts == {"audit/audit.json", "audit/audit.html", "audit/policy.yaml", "audit/calibration.json"}

    record = json.loads(Path(client.download_artifacts(run1.info.run_id, "audit/audit.json", str(tmp_path))).read_text())
    assert record == json.loads((tmp_path / "out" / "audit.json").read_text())
    assert record["verdict"] == "pass" and record["who"]["user"] == "auditor" and record["who"]["host"]
    datetime.fromisoformat(record["when"]["started"])
    assert record["when"]["finished"] >= record["when"]["started"]
    assert record["what"]["model"] == registry.model
    assert {s["alias"]: s["version"] for s in record["what"]["subjects"]} == registry.versions
    assert all(s["samples_scored"] == 4 and s["checkpoint_digest"].startswith("sha256:")
               for s in record["what"]["subjects"])
    assert record["data"]["digest"] == record["data"]["expected_digest"] == registry.digest
    assert record["calibration"]["id"] == registry.calibration_id
    assert record["calibration"]["digest"] == "sha256:" + hashlib.sha256(registry.calibration.read_bytes()).hexdigest()
    assert record["code"]["bpm_eval"] == __version__
    assert record["mlflow"]["audit_run_id"] == run1.info.run_id
    assert record["evaluation"]["campaign_run_id"]  # the evaluation campaign logged beside it
    assert all({"rule", "subject", "value", "threshold", "verdict", "detail"} <= set(r) for r in record["rules"])
    first_prev = [r for r in record["rules"] if r["rule"] == "regression_vs_previous"]
    assert first_prev and all(r["value"] is None and r["verdict"] == "pass" for r in first_prev)  # first audit
    html = (tmp_path / "out" / "audit.html").read_text()
    assert "PASS" in html and registry.calibration_id in html and registry.digest in html
    policy_text = Path(client.download_artifacts(run1.info.run_id, "audit/policy.yaml", str(tmp_path))).read_text()
    assert policy_text == passing.read_text()

    champion_bpm = next(s for s in record["what"]["subjects"] if s["alias"] == "champion")["means"]["bpm"]
    for alias, version in registry.versions.items():
        vt = client.get_model_version(registry.model, version).tags
        assert vt["audit.status"] == "pass" and vt["audit.run_id"] == run1.info.run_id
        datetime.fromisoformat(vt["audit.date"])
        assert float(vt["audit.bpm"]) == pytest.approx(
            next(s for s in record["what"]["subjects"] if s["alias"] == alias)["means"]["bpm"], rel=1e-5)
    assert champion_bpm is not None

    # ---- 2: a policy the same versions violate (and a changed audit set) → exit 3
    failing = registry.policy(tmp_path / "release-fail.yaml", rules={
        "min": {"bpm": 1e6},
        "max_regression": {"vs_previous": {"bpm": 0.0}},
    })
    assert main(_audit(registry, failing, "--json")) == 3
    captured = capsys.readouterr()
    record2 = json.loads(captured.out)  # --json: stdout is only the record
    assert "violated" in captured.err
    assert record2["verdict"] == "fail"
    assert {s["alias"]: s["status"] for s in record2["what"]["subjects"]} == {"champion": "fail", "challenger": "fail"}
    mins = [r for r in record2["rules"] if r["rule"] == "min"]
    assert len(mins) == 2 and all(r["verdict"] == "fail" and r["threshold"] == 1e6 for r in mins)
    # the previous audit is read back from MLflow: same versions, same numbers → no regression
    prev = {r["subject"]: r for r in record2["rules"] if r["rule"] == "regression_vs_previous"}
    assert set(prev) == {"champion", "challenger"}
    assert all(r["verdict"] == "pass" and r["value"] == pytest.approx(0.0, abs=1e-9) for r in prev.values())
    assert run1.info.run_id in prev["champion"]["detail"]
    assert record2["baselines"]["champion"]["run_id"] == run1.info.run_id
    _, run2 = _audit_runs(client, registry)
    assert run2.data.tags["audit.status"] == "fail" and run2.info.status == "FINISHED"
    for version in registry.versions.values():
        vt = client.get_model_version(registry.model, version).tags
        assert vt["audit.status"] == "fail" and vt["audit.run_id"] == run2.info.run_id

    # ---- 3: the frozen audit set changed → a violation of its own
    moved = registry.policy(tmp_path / "release-moved.yaml", rules={"min": {"bpm": -100.0}},
                            digest="sha256:" + "0" * 64)
    assert main(_audit(registry, moved)) == 3
    out = capsys.readouterr().out
    assert "data digest" in out and "FAIL" in out


@pytest.fixture(scope="module")
def bare_registry(mlflow_tracking: Any, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A model with aliases but no weights: enough to fail before any evaluation."""
    from mlflow import MlflowClient

    from bpm_lib.aggregate import fit_calibration, save_calibration
    from bpm_lib.types import SampleScore

    tmp = tmp_path_factory.mktemp("audit-errors")
    model = f"audit-bare-{uuid.uuid4().hex[:6]}"
    versions = _register(MlflowClient(mlflow_tracking.url), mlflow_tracking.url, model,
                         {"champion": None, "challenger": None})
    scores = [SampleScore(f"s{i}", "c", case="standard", s_modify=0.1 * i, s_preserve=0.02 * (i + 1), s_region=2.0)
              for i in range(3)]
    cal = fit_calibration(scores, mode="frozen", fitted_on={"pool": "errors"})
    save_calibration(cal, tmp / "frozen.json")
    pool = fit_calibration(scores, mode="pool")
    save_calibration(pool, tmp / "pool.json")
    return Registry(url=mlflow_tracking.url, model=model, versions=versions, digest="sha256:" + "1" * 64,
                    calibration=tmp / "frozen.json", calibration_id=cal.id, root=tmp / "state",
                    experiment=f"bpm-audits-{uuid.uuid4().hex[:6]}")


def test_audit_run_fails_fast_on_unreachable_mlflow(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from bpm_lib.aggregate import fit_calibration, save_calibration
    from bpm_lib.types import SampleScore

    scores = [SampleScore(f"s{i}", "c", case="standard", s_modify=0.1 * i, s_preserve=0.02 * (i + 1), s_region=2.0)
              for i in range(3)]
    save_calibration(fit_calibration(scores, mode="frozen"), tmp_path / "frozen.json")
    reg = Registry(url="", model="m", versions={}, digest="sha256:" + "1" * 64, calibration=tmp_path / "frozen.json",
                   calibration_id=json.loads((tmp_path / "frozen.json").read_text())["id"], root=tmp_path / "state",
                   experiment="bpm-audits")
    unreachable = f"http://127.0.0.1:{free_port()}"
    policy = reg.policy(tmp_path / "ok.yaml", rules={"min": {"bpm": 0.5}}, tracking={"uri": unreachable})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["audit", "run", "--policy", str(policy), "--root", str(tmp_path / "state")]) == 1
    assert f"MLflow server {unreachable} is unreachable" in capsys.readouterr().err
    assert not (tmp_path / "state" / "audits").exists()  # failed before anything was prepared
    # precedence: --tracking-uri, then MLFLOW_TRACKING_URI, then the policy's tracking.uri
    from_env, from_flag = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", from_env)
    assert main(["audit", "run", "--policy", str(policy), "--root", str(tmp_path / "state")]) == 1
    assert f"MLflow server {from_env} is unreachable" in capsys.readouterr().err
    assert main(["audit", "run", "--policy", str(policy), "--tracking-uri", from_flag]) == 1
    assert f"MLflow server {from_flag} is unreachable" in capsys.readouterr().err


@pytest.mark.slow  # starts the session's MLflow server (10-30 s on a busy machine); the checks take < 1 s
def test_audit_run_clear_errors(bare_registry: Registry, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    reg = bare_registry
    rules = {"min": {"bpm": 0.5}}
    ok_policy = reg.policy(tmp_path / "ok.yaml", rules=rules)

    missing_alias = reg.policy(tmp_path / "alias.yaml", rules=rules, aliases=["champion", "canary"])
    assert main(_audit(reg, missing_alias)) == 1
    err = capsys.readouterr().err
    assert f"model {reg.model!r} has no alias 'canary'" in err and "challenger, champion" in err

    missing_model = reg.policy(tmp_path / "model.yaml", rules=rules, model="no-such-model")
    assert main(_audit(reg, missing_model)) == 1
    assert "registered model 'no-such-model' does not exist" in capsys.readouterr().err

    wrong_id = reg.policy(tmp_path / "id.yaml", rules=rules,
                          calibration={"path": str(reg.calibration), "id": "cal-0000000000000000"})
    assert main(_audit(reg, wrong_id)) == 1
    assert f"calibration mismatch: the policy expects cal-0000000000000000, {reg.calibration} holds" in (
        capsys.readouterr().err)

    pool = reg.policy(tmp_path / "pool.yaml", rules=rules, calibration={"path": str(reg.calibration.parent / "pool.json")})
    assert main(_audit(reg, pool)) == 1
    assert "has mode 'pool': an audit needs a frozen calibration" in capsys.readouterr().err

    tampered = tmp_path / "tampered.json"
    data = json.loads(reg.calibration.read_text())
    data["modify_max"] += 1.0
    tampered.write_text(json.dumps(data))
    edited = reg.policy(tmp_path / "tampered.yaml", rules=rules, calibration={"path": str(tampered)})
    assert main(_audit(reg, edited)) == 1
    assert "does not match its content hash" in capsys.readouterr().err

    absent = reg.policy(tmp_path / "absent.yaml", rules=rules, calibration={"path": str(tmp_path / "nope.json")})
    assert main(_audit(reg, absent)) == 1
    assert "nope.json" in capsys.readouterr().err

    typo = reg.policy(tmp_path / "editor.yaml", rules=rules, editor={"name": "ip2q"})
    assert main(_audit(reg, typo)) == 1
    assert "policy: editor.name: unknown editor 'ip2q'; did you mean 'ip2p'?" in capsys.readouterr().err
    no_preset = reg.policy(tmp_path / "preset.yaml", rules=rules, preset="tiny-randm")
    assert main(_audit(reg, no_preset)) == 1
    assert "policy: preset: unknown preset 'tiny-randm'; did you mean 'tiny-random'?" in capsys.readouterr().err

    bad = tmp_path / "bad.yaml"
    bad.write_text(ok_policy.read_text().replace("rules:", "rulez:"))
    assert main(_audit(reg, bad)) == 1
    assert "unknown key rulez (did you mean 'rules'?)" in capsys.readouterr().err
    # nothing was audited
    from mlflow import MlflowClient

    assert MlflowClient(reg.url).get_experiment_by_name(reg.experiment) is None


def _art(cls: Any, path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    return cls(name=path.name, uri=str(path))


@pytest.mark.slow
def test_pipeline_components_in_sequence(registry: Registry, tmp_path: Path) -> None:
    """The governance_audit components' bodies, called in the pipeline's order (kfp.local
    runs neither ParallelFor nor artifact lists); the stage cache of the first run serves
    the model stages."""
    from kfp.dsl import HTML, Artifact, Dataset, Metrics

    from bpm_lib.audit.policy import AuditViolation
    from components.audit import audit_aggregate, audit_finish, audit_generate, audit_prepare
    from components.data import fetch_data
    from components.judge import judge
    from components.localize import localize_edited, localize_source
    from components.parse import parse_instructions

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BPM_CACHE_DIR", str(registry.root.parent / "cache"))
        policy_text = registry.policy(tmp_path / "kfp-audit.yaml", rules={
            "min": {"bpm": -100.0}, "max_regression": {"vs_champion": {"bpm": 100.0}}, "min_samples": 4,
        }, tracking={"experiment": f"{registry.experiment}-kfp"}).read_text()
        plan = _art(Artifact, tmp_path / "plan")
        values = audit_prepare.python_func(policy=policy_text, calibration=registry.calibration.read_text(),
                                           tracking_uri=registry.url, plan=plan)
        assert plan.metadata["versions"] == registry.versions
        assert values.dataset_source == "demo" and values.dataset_limit == 4 and values.preset == "tiny-random"
        cands = [json.loads(c) for c in values.candidates]
        assert [(c["name"], c["checkpoint"]) for c in cands] == [
            (a, f"models:/{registry.model}/{v}") for a, v in registry.versions.items()]

        evalset = _art(Dataset, tmp_path / "evalset")
        fetch_data.python_func(source=values.dataset_source, limit=values.dataset_limit, seed=values.dataset_seed,
                               stratify=values.dataset_stratify, evalset=evalset)
        parsed = _art(Dataset, tmp_path / "parsed")
        parse_instructions.python_func(evalset=evalset, preset=values.preset, parser=values.parser, parsed=parsed)
        source = _art(Dataset, tmp_path / "source")
        localize_source.python_func(evalset=evalset, parsed=parsed, preset=values.preset,
                                    localizer=values.localizer, batch_size=values.batch_size, source_loc=source)
        judged, editsets = [], []
        for i, cand in enumerate(values.candidates):
            es = _art(Dataset, tmp_path / f"editset-{i}")
            audit_generate.python_func(evalset=evalset, candidate=cand, tracking_uri=registry.url, editset=es)
            el = _art(Dataset, tmp_path / f"edited-{i}")
            localize_edited.python_func(evalset=evalset, parsed=parsed, source_loc=source, editset=es,
                                        preset=values.preset, localizer=values.localizer,
                                        batch_size=values.batch_size, edited_loc=el)
            jd = _art(Dataset, tmp_path / f"judged-{i}")
            judge.python_func(evalset=evalset, parsed=parsed, source_loc=source, edited_loc=el, editset=es,
                              preset=values.preset, embedder=values.embedder, batch_size=values.batch_size,
                              judged=jd)
            judged.append(jd)
            editsets.append(es)
        results = _art(Dataset, tmp_path / "results")
        metrics = _art(Metrics, tmp_path / "metrics")
        audit_aggregate.python_func(evalset=evalset, judged=judged, editsets=editsets, plan=plan,
                                    pipeline_run_id="run-kfp-1", results=results, metrics=metrics,
                                    report=_art(HTML, tmp_path / "agg.html"))
        assert metrics.metadata["champion.samples_scored"] == 4.0
        audit = _art(Artifact, tmp_path / "audit")
        report = _art(HTML, tmp_path / "audit-report.html")
        audit_finish.python_func(plan=plan, results=results, pipeline_run_id="run-kfp-1", audit=audit,
                                 report=report, metrics=_art(Metrics, tmp_path / "audit-metrics"))
        assert audit.metadata["verdict"] == "pass"
        record = json.loads((Path(audit.path) / "audit.json").read_text())
        assert record["evaluation"]["pipeline_run_id"] == "run-kfp-1"
        assert record["calibration"]["id"] == registry.calibration_id
        assert "PASS" in Path(report.path).read_text()

        # the same plan under a policy it violates: the last step fails the pipeline run
        strict_text = policy_text.replace("bpm: -100.0", "bpm: 1000000.0")
        strict_plan = _art(Artifact, tmp_path / "strict-plan")
        audit_prepare.python_func(policy=strict_text, calibration=registry.calibration.read_text(),
                                  tracking_uri=registry.url, plan=strict_plan)
        with pytest.raises(AuditViolation, match=r"bpm [-0-9.]+ violates >= 1e\+06"):
            audit_finish.python_func(plan=strict_plan, results=results, pipeline_run_id="run-kfp-2",
                                     audit=_art(Artifact, tmp_path / "audit2"),
                                     report=_art(HTML, tmp_path / "audit2.html"),
                                     metrics=_art(Metrics, tmp_path / "audit2-metrics"))


class _FakeRuns:
    """search_runs of an MLflow client over in-memory runs (newest first), recording the query."""

    def __init__(self, runs: list[tuple[str, dict[str, str], dict[str, float]]], experiment: bool = True) -> None:
        from types import SimpleNamespace

        self.queries: list[dict[str, Any]] = []
        self.experiment = SimpleNamespace(experiment_id="7") if experiment else None
        self.runs = [SimpleNamespace(info=SimpleNamespace(run_id=rid), data=SimpleNamespace(tags=t, metrics=m))
                     for rid, t, m in runs]

    def get_experiment_by_name(self, name: str) -> Any:
        return self.experiment

    def search_runs(self, experiment_ids: list[str], filter_string: str, order_by: list[str],
                    max_results: int) -> list[Any]:
        self.queries.append({"ids": experiment_ids, "filter": filter_string, "order_by": order_by})
        return self.runs


def _plan(tmp_path: Path, baseline: str) -> Any:
    from bpm_lib.aggregate import fit_calibration
    from bpm_lib.audit.policy import parse_policy
    from bpm_lib.audit.run import AuditPlan, AuditSubject
    from bpm_lib.types import SampleScore

    policy = parse_policy({
        "name": "p", "model": "m", "aliases": ["champion", "challenger"],
        "audit_set": {"source": "demo", "digest": "sha256:" + "2" * 64}, "calibration": "/c.json",
        "rules": {"max_regression": {"vs_previous": {"bpm": 0.1}, "baseline": baseline}},
    })
    scores = [SampleScore(f"s{i}", "c", case="standard", s_modify=0.1 * i, s_preserve=0.02 * (i + 1), s_region=2.0)
              for i in range(3)]
    return AuditPlan(policy=policy, policy_text="", subjects=(AuditSubject("champion", "m", "3"),
                                                               AuditSubject("challenger", "m", "5")),
                     calibration=fit_calibration(scores, mode="frozen"), calibration_path=str(tmp_path / "c.json"),
                     calibration_digest="sha256:x", tracking_uri="http://unused", started_at="2025-01-01T00:00:00")


def test_find_previous_audits_by_alias_and_by_version(tmp_path: Path) -> None:
    from bpm_lib.audit.run import find_previous_audits

    runs = [  # newest first, as the query orders them
        ("r3", {"audit.version.champion": "4", "audit.date": "d3"}, {"champion/bpm": 1.3}),
        ("r2", {"audit.version.champion": "3", "audit.version.challenger": "2", "audit.date": "d2"},
         {"champion/bpm": 1.2, "challenger/bpm": 0.9}),
        ("r1", {"audit.version.canary": "5", "audit.date": "d1"}, {"canary/bpm": 0.7, "canary/s_modify": 0.2}),
    ]
    client = _FakeRuns(runs)
    by_alias = find_previous_audits(client, _plan(tmp_path, "alias"), "key123")
    (query,) = client.queries
    assert query["ids"] == ["7"] and query["order_by"] == ["attributes.start_time DESC"]
    assert "tags.`bpm.kind` = 'audit'" in query["filter"] and "tags.`audit.evaluation_key` = 'key123'" in query["filter"]
    assert "attributes.status = 'FINISHED'" in query["filter"]
    champ, chall = by_alias["champion"], by_alias["challenger"]
    assert champ is not None and (champ.run_id, champ.version, champ.means["bpm"]) == ("r3", "4", 1.3)
    assert chall is not None and (chall.run_id, chall.version, chall.means["bpm"]) == ("r2", "2", 0.9)

    by_version = find_previous_audits(_FakeRuns(runs), _plan(tmp_path, "version"), "key123")
    champ, chall = by_version["champion"], by_version["challenger"]  # v3 and v5
    assert champ is not None and (champ.run_id, champ.alias, champ.means["bpm"]) == ("r2", "champion", 1.2)
    assert chall is not None and (chall.run_id, chall.alias, chall.means["s_modify"]) == ("r1", "canary", 0.2)

    assert find_previous_audits(_FakeRuns(runs[:1]), _plan(tmp_path, "version"), "k") == {
        "champion": None, "challenger": None}
    assert find_previous_audits(_FakeRuns(runs, experiment=False), _plan(tmp_path, "alias"), "k") == {
        "champion": None, "challenger": None}
