"""``bpm audit schedule``: cron conversion and the Kubeflow recurring run it registers
(a fake kfp client: a real KFP API cannot be reached offline)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import yaml

from bpm_lib.aggregate import calibration_id, save_calibration
from bpm_lib.audit.run import kfp_cron, pipeline_parameters, schedule_audit
from bpm_lib.cli import main
from bpm_lib.errors import CalibrationError
from bpm_lib.types import Calibration

DIGEST = "sha256:" + "cd" * 32


@pytest.mark.parametrize(
    ("expr", "six"),
    [
        ("30 2 * * 1", "0 30 2 * * 1"),
        ("*/15 * * * *", "0 */15 * * * *"),
        ("0 9 ? * MON-FRI", "0 0 9 ? * MON-FRI"),
        ("0 0 1,15 jan,jul *", "0 0 0 1,15 jan,jul *"),
        ("  5   4  *  *  0 ", "0 5 4 * * 0"),
        ("0 0 9 ? * 2-6", "0 0 9 ? * 2-6"),  # already 6 fields (KFP's own example)
        ("15 30 2 * * *", "15 30 2 * * *"),
        ("@daily", "0 0 0 * * *"),
        ("@weekly", "0 0 0 * * 0"),
        ("@hourly", "0 0 * * * *"),
    ],
)
def test_kfp_cron_converts_to_six_fields(expr: str, six: str) -> None:
    assert kfp_cron(expr) == six


@pytest.mark.parametrize(
    ("expr", "match"),
    [
        ("", "non-empty"),
        ("* * * *", "has 4 fields"),
        ("0 0 0 0 * * *", "has 7 fields"),
        ("60 * * * *", "minute 60 is outside 0-59"),
        ("0 24 * * *", "hour 24 is outside 0-23"),
        ("0 0 0 * * *  ", None),  # valid 6 fields: no error
        ("0 0 32 * *", "day of month 32 is outside 1-31"),
        ("0 0 0 * *", "day of month 0 is outside 1-31"),
        ("0 0 * 13 *", "month 13 is outside 1-12"),
        ("0 0 * * 7", "day of week 7: use 0"),
        ("0 0 * * FUN", "'FUN' is not a number or one of SUN"),
        ("0 0 * FOO *", "'FOO' is not a number or one of JAN"),
        ("0 ? * * *", r"'\?' is only allowed"),
        ("*/0 * * * *", "step must be >= 1"),
        ("10-5 * * * *", "runs backwards"),
        ("1-2-3 * * * *", "not valid cron syntax"),
        ("@fortnightly", "unknown macro"),
    ],
)
def test_kfp_cron_rejects_invalid_expressions(expr: str, match: str | None) -> None:
    if match is None:
        assert kfp_cron(expr) == "0 0 0 * * *"
        return
    with pytest.raises(ValueError, match=match):
        kfp_cron(expr)


class FakeKfpClient:
    """Records the calls ``schedule_audit`` makes on a ``kfp.Client``."""

    instances: ClassVar[list[FakeKfpClient]] = []

    def __init__(self, host: str | None = None, namespace: str | None = None) -> None:
        self.host, self.namespace = host, namespace
        self.experiments: list[dict[str, Any]] = []
        self.recurring: list[dict[str, Any]] = []
        FakeKfpClient.instances.append(self)

    def create_experiment(self, name: str, description: str | None = None, namespace: str | None = None) -> Any:
        import kfp

        inspect.signature(kfp.Client.create_experiment).bind(self, name, description, namespace)
        self.experiments.append({"name": name, "namespace": namespace})
        return SimpleNamespace(experiment_id="exp-123", display_name=name)

    def create_recurring_run(self, experiment_id: str, job_name: str, **kwargs: Any) -> Any:
        import kfp

        # the call must fit the real client's signature
        inspect.signature(kfp.Client.create_recurring_run).bind(self, experiment_id, job_name, **kwargs)
        package = Path(kwargs["pipeline_package_path"])
        # read now (the package is a temporary file); documents: pipeline spec, platform spec
        spec = next(yaml.safe_load_all(package.read_text()))
        self.recurring.append({"experiment_id": experiment_id, "job_name": job_name, "spec": spec, **kwargs})
        return SimpleNamespace(recurring_run_id="rr-456")


def _calibration(mode: str = "frozen") -> Calibration:
    fitted = {"pool": "test"}
    cid = calibration_id(preservation_min=-0.4, preservation_max=-0.01, modify_min=-0.2, modify_max=0.3,
                         mode=mode, alpha=0.7, fitted_on=fitted)
    return Calibration(id=cid, mode=mode, preservation_min=-0.4, preservation_max=-0.01,  # type: ignore[arg-type]
                       modify_min=-0.2, modify_max=0.3, alpha=0.7, fitted_on=fitted)


@pytest.fixture()
def policy_file(tmp_path: Path) -> Path:
    cal = _calibration()
    save_calibration(cal, tmp_path / "frozen.json")
    policy = {
        "name": "nightly-audit", "model": "image-editor", "aliases": ["champion", "challenger"],
        "audit_set": {"source": "demo", "limit": 4, "digest": DIGEST},
        "calibration": {"path": "frozen.json", "id": cal.id},
        "rules": {"min": {"bpm": 0.9}, "max_regression": {"vs_champion": {"bpm": 0.1}}},
        "tracking": {"uri": "http://mlflow.bpm.svc:5000", "experiment": "bpm-audits"},
    }
    path = tmp_path / "policy.yaml"
    path.write_text("# nightly\n" + yaml.safe_dump(policy))
    return path


def test_schedule_registers_a_recurring_run(policy_file: Path) -> None:
    client = FakeKfpClient()
    scheduled = schedule_audit(policy_file, cron="30 2 * * 1", client=client)
    assert (scheduled.recurring_run_id, scheduled.experiment_id) == ("rr-456", "exp-123")
    assert (scheduled.name, scheduled.cron) == ("bpm-audit-nightly-audit", "0 30 2 * * 1")
    assert client.experiments == [{"name": "bpm-audits", "namespace": None}]
    (call,) = client.recurring
    assert call["experiment_id"] == "exp-123" and call["job_name"] == "bpm-audit-nightly-audit"
    assert call["cron_expression"] == "0 30 2 * * 1"
    assert call["max_concurrency"] == 1
    assert call["no_catchup"] is True
    assert "interval_second" not in call
    params = call["params"]
    assert params == pipeline_parameters(policy_file.read_text(), params["calibration"], "http://mlflow.bpm.svc:5000")
    assert params["policy"] == policy_file.read_text()  # the policy text as written, comments included
    assert json.loads(params["calibration"]) == json.loads((policy_file.parent / "frozen.json").read_text())
    spec = call["spec"]
    assert spec["pipelineInfo"]["name"] == "bpm-governance-audit"
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"policy", "calibration", "tracking_uri"}


def test_schedule_overrides_and_errors(policy_file: Path, tmp_path: Path) -> None:
    client = FakeKfpClient()
    schedule_audit(policy_file, cron="0 0 6 * * 1-5", client=client, name="weekday-audit", namespace="team-a",
                   experiment="audits-a", tracking_uri="http://other:5000")
    call = client.recurring[0]
    assert (call["job_name"], call["cron_expression"]) == ("weekday-audit", "0 0 6 * * 1-5")
    assert client.experiments == [{"name": "audits-a", "namespace": "team-a"}]
    assert call["params"]["tracking_uri"] == "http://other:5000"

    with pytest.raises(ValueError, match="minute 61 is outside"):
        schedule_audit(policy_file, cron="61 * * * *", client=FakeKfpClient())
    # a calibration whose id is not its hash is refused before anything is registered
    data = json.loads((policy_file.parent / "frozen.json").read_text())
    data["modify_max"] = 0.9
    (policy_file.parent / "frozen.json").write_text(json.dumps(data))
    refused = FakeKfpClient()
    with pytest.raises(CalibrationError, match="does not match its content hash"):
        schedule_audit(policy_file, cron="@daily", client=refused)
    assert refused.recurring == []


def test_schedule_needs_a_tracking_uri(policy_file: Path) -> None:
    text = policy_file.read_text().replace("uri: http://mlflow.bpm.svc:5000", "uri: null")
    policy_file.write_text(text)
    with pytest.raises(ValueError, match="tracking_uri is required"):
        schedule_audit(policy_file, cron="@daily", client=FakeKfpClient())


def test_cli_schedule_builds_the_kfp_client(policy_file: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import kfp

    FakeKfpClient.instances.clear()
    monkeypatch.setattr(kfp, "Client", FakeKfpClient)
    rc = main(["audit", "schedule", "--cron", "0 3 * * *", "--policy", str(policy_file),
               "--host", "http://ml-pipeline.kubeflow:8888", "--name", "nightly"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"recurring_run_id": "rr-456", "experiment_id": "exp-123", "name": "nightly", "cron": "0 0 3 * * *"}
    (client,) = FakeKfpClient.instances
    assert client.host == "http://ml-pipeline.kubeflow:8888"
    assert client.recurring[0]["max_concurrency"] == 1 and client.recurring[0]["no_catchup"] is True

    rc = main(["audit", "schedule", "--cron", "bad", "--policy", str(policy_file), "--host", "http://x"])
    assert rc == 2 and "has 1 fields" in capsys.readouterr().err
