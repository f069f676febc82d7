"""MLflow faults: a real MLflow server behind a flaky proxy (5xx, 403, dropped connections,
going down mid-logging at seeded points) and stopped then restarted on the same port.

Nothing may be lost: transient faults are absorbed by the bounded retries, and whatever
cannot be logged is spooled and logged exactly once by ``bpm tracking flush``.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

import bpm_lib.io.tracking as tracking
from bpm_lib.cli import main
from bpm_lib.errors import TrackingError
from bpm_lib.io import spool
from bpm_lib.runner.campaign import log_results
from tests.fixtures.servers import MlflowServer, free_port, mlflow_server
from tests.robustness.campaigns import CANDIDATES, Campaign, build_campaign, expected_metrics
from tests.robustness.faults import FlakyProxy, Rule, flaky_proxy

SEED = 8


class RestartableMlflow:
    """One MLflow server (SQLite, local artifacts) that can be stopped and restarted on
    the same port with the same store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self._cm: AbstractContextManager[MlflowServer] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._cm = mlflow_server(self.root, port=self.port)
        self._cm.__enter__()

    def stop(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableMlflow]:
    srv = RestartableMlflow(tmp_path_factory.mktemp("mlflow-faults"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    return build_campaign(tmp_path_factory.mktemp("campaign"))


@pytest.fixture()
def fast_retries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Short backoff, no MLflow-internal retries (ours are the ones under test), a private spool."""
    monkeypatch.setattr(tracking, "RETRY_BASE_SECONDS", 0.05)
    monkeypatch.setenv("BPM_TRACKING_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spool_dir = tmp_path / "spool"
    monkeypatch.setenv("BPM_SPOOL_DIR", str(spool_dir))
    return spool_dir


@pytest.fixture()
def proxy(server: RestartableMlflow) -> Iterator[FlakyProxy]:
    with flaky_proxy(server.url) as p:
        yield p


def _log(campaign: Campaign, uri: str, experiment: str) -> Any:
    return log_results(campaign.results, campaign.evalset, list(campaign.editsets), tracking_uri=uri,
                       experiment=experiment, campaign="faults", params={"preset": "tiny-random"})


def _active_runs(uri: str, experiment: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def _assert_logged_once(uri: str, experiment: str, campaign: Campaign) -> None:
    """Exactly one FINISHED campaign with one FINISHED child per candidate, whose metrics
    are those of the results folder; no other active run is left in the experiment."""
    runs = _active_runs(uri, experiment)
    parents = [r for r in runs if r.data.tags.get("bpm.kind") == "campaign"]
    children = [r for r in runs if r.data.tags.get("bpm.kind") == "candidate"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [(r.info.status) for r in parents]
    assert sorted(r.data.tags["bpm.candidate"] for r in children) == sorted(CANDIDATES)
    assert all(r.info.status == "FINISHED" for r in children)
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert len(runs) == 1 + len(CANDIDATES)
    expected = expected_metrics(campaign.results)
    for child in children:
        for key, value in expected[child.data.tags["bpm.candidate"]].items():
            assert child.data.metrics[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.slow
def test_transient_faults_are_absorbed_by_the_retries(campaign: Campaign, proxy: FlakyProxy, fast_retries: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    proxy.add(Rule("status", times=1, skip=4, status=503))
    proxy.add(Rule("drop", times=1, skip=9))
    proxy.add(Rule("status", times=1, skip=14, status=500))
    with caplog.at_level(logging.WARNING, logger="bpm_lib.io.tracking"):
        runs = _log(campaign, proxy.url, "blips")
    assert [kind for kind, _, _ in proxy.faults] == ["status", "drop", "status"]
    assert sum(" failed (" in r.getMessage() and "; retry " in r.getMessage() for r in caplog.records) == 3
    assert runs.parent_run_id and set(runs.child_run_ids) == set(CANDIDATES)
    assert not fast_retries.exists() or not any(fast_retries.iterdir())
    _assert_logged_once(proxy.url, "blips", campaign)


@pytest.mark.slow
def test_a_rejected_call_is_not_retried_and_is_spooled(campaign: Campaign, proxy: FlakyProxy,
                                                       fast_retries: Path) -> None:
    proxy.add(Rule("status", times=1, status=403, body=b'{"error_code": "PERMISSION_DENIED", "message": "no"}',
                   match=lambda method, path: path.endswith("/runs/log-batch")))
    with pytest.raises(TrackingError, match=r"log_batch was rejected: .*spooled at") as info:
        _log(campaign, proxy.url, "rejected")
    assert len(proxy.faults) == 1  # a 403 is not retried
    (entry,) = spool.entries(fast_retries)
    assert isinstance(entry, spool.SpoolEntry) and str(entry.path) in str(info.value)
    proxy.clear()
    assert main(["tracking", "flush", "--spool-dir", str(fast_retries)]) == 0
    _assert_logged_once(proxy.url, "rejected", campaign)
    assert spool.entries(fast_retries) == []


@pytest.mark.slow
def test_server_failing_mid_logging_at_seeded_points_loses_nothing(
    campaign: Campaign, proxy: FlakyProxy, fast_retries: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _log(campaign, proxy.url, "reference")
    total = len(proxy.requests)
    assert total > 20
    points = sorted(random.Random(SEED).sample(range(2, total - 1), 3))
    for point in points:
        experiment = f"mid-{point}"
        proxy.requests.clear()
        proxy.down(503, skip=point)
        with pytest.raises(TrackingError, match=r"failed after 3 attempts.*spooled at"):
            _log(campaign, proxy.url, experiment)
        (entry,) = spool.entries(fast_retries)
        assert isinstance(entry, spool.SpoolEntry)
        assert entry.arguments["experiment"] == experiment and Path(entry.results_dir) == campaign.results.resolve()

        # still down: the entry stays, its attempts are counted, the command fails
        assert main(["tracking", "flush", "--spool-dir", str(fast_retries)]) == 1
        (again,) = spool.entries(fast_retries)
        assert isinstance(again, spool.SpoolEntry) and again.attempts == 2
        capsys.readouterr()

        proxy.clear()
        assert main(["tracking", "list", "--spool-dir", str(fast_retries), "--json"]) == 0
        listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [row["id"] for row in listed] == [entry.id]
        assert main(["tracking", "flush", "--spool-dir", str(fast_retries), "--json"]) == 0
        (outcome,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert outcome["status"] == "logged", outcome
        _assert_logged_once(proxy.url, experiment, campaign)
        mlflow_json = json.loads((campaign.results / "mlflow.json").read_text())
        assert mlflow_json["parent_run_id"] == outcome["parent_run_id"]
        assert spool.entries(fast_retries) == []
        # a second flush has nothing to do
        assert main(["tracking", "flush", "--spool-dir", str(fast_retries)]) == 0


@pytest.mark.slow
def test_flush_does_not_log_twice_when_the_first_attempt_did_finish(campaign: Campaign, proxy: FlakyProxy,
                                                                    fast_retries: Path) -> None:
    runs = _log(campaign, proxy.url, "finished")
    finished, partial = tracking.find_campaign_runs(proxy.url, "finished", "0" * 32)
    assert (finished, partial) == (None, [])
    # Simulate: everything was logged but the answer to the last call was lost, so it was spooled.
    parent = _active_runs(proxy.url, "finished")
    log_id = next(r.data.tags[tracking.LOG_ID_TAG] for r in parent if r.info.run_id == runs.parent_run_id)
    args = spool.campaign_arguments(campaign.results, tracking_uri=proxy.url, experiment="finished",
                                    campaign="faults", candidates=[], dataset={}, params={}, samples={}, edits={},
                                    pipeline_run_id=None, pipeline_spec=None, log_id=log_id)
    spool.write_entry(spool.KIND_LOG_CAMPAIGN, args, results_dir=campaign.results, error="lost answer",
                      entry_id=log_id)
    (outcome,) = spool.flush()
    assert (outcome.status, outcome.parent_run_id) == ("already_logged", runs.parent_run_id)
    _assert_logged_once(proxy.url, "finished", campaign)


@pytest.mark.slow
def test_flush_keeps_an_entry_whose_results_are_gone(tmp_path: Path, fast_retries: Path,
                                                     server: RestartableMlflow) -> None:
    args = spool.campaign_arguments(tmp_path / "gone", tracking_uri=server.url, experiment="gone",
                                    campaign="faults", candidates=[], dataset={}, params={}, samples={}, edits={},
                                    pipeline_run_id=None, pipeline_spec=None, log_id="abc")
    spool.write_entry(spool.KIND_LOG_CAMPAIGN, args, results_dir=tmp_path / "gone", error="down")
    (fast_retries / "garbage").mkdir()
    (fast_retries / "garbage" / spool.ENTRY_FILE).write_text("{not json")
    outcomes = spool.flush()
    assert sorted(o.status for o in outcomes) == ["failed", "failed"]
    errors = " ".join(o.error or "" for o in outcomes)
    assert "is gone (no summary.json)" in errors and "unreadable spool entry" in errors
    assert len(spool.entries()) == 2  # nothing dropped


@pytest.mark.slow
def test_server_stopped_then_restarted_on_the_same_port(campaign: Campaign, server: RestartableMlflow,
                                                        fast_retries: Path) -> None:
    _log(campaign, server.url, "restart")
    server.stop()
    try:
        with pytest.raises(TrackingError, match=r"unreachable.*spooled at") as info:
            _log(campaign, server.url, "restart-down")
        assert str(fast_retries) in str(info.value)
    finally:
        server.start()  # same port, same SQLite store
    assert main(["tracking", "flush"]) == 0  # BPM_SPOOL_DIR
    _assert_logged_once(server.url, "restart-down", campaign)
    assert len([r for r in _active_runs(server.url, "restart") if r.data.tags["bpm.kind"] == "campaign"]) == 1


def test_a_slow_but_live_local_server_is_reused_not_doubled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under load the recorded local server may answer /health late: `bpm run` waits for it
    instead of starting a second server on the same SQLite store."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class SlowHealth(BaseHTTPRequestHandler):
        calls = 0

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            SlowHealth.calls += 1
            if SlowHealth.calls == 1:
                time.sleep(3)  # longer than the 2 s health-check timeout
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SlowHealth)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        (tmp_path / "mlflow").mkdir()
        (tmp_path / "mlflow" / "server.json").write_text(json.dumps({"url": url, "pid": os.getpid()}))
        monkeypatch.setattr(tracking.subprocess, "Popen", lambda *a, **k: pytest.fail("a second server was started"))
        server = tracking.ensure_local_server(tmp_path, timeout=30)
        assert (server.url, server.started) == (url, False) and SlowHealth.calls >= 2
        # a record whose process is gone is stale at once: a new server is started
        (tmp_path / "mlflow" / "server.json").write_text(json.dumps({"url": url, "pid": 2**22 + 12345}))

        class Started(Exception):
            pass

        def popen(*a: Any, **k: Any) -> Any:
            raise Started

        monkeypatch.setattr(tracking.subprocess, "Popen", popen)
        httpd.shutdown()
        with pytest.raises(Started):
            tracking.ensure_local_server(tmp_path, timeout=30)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
