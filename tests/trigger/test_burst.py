"""A burst of 500 signed deliveries with duplicates over loopback HTTP: bounded time, exactly
one submission per distinct model version, bounded memory.

The submitter and the checkpoint resolver are fast test doubles passed through the API, so
the test measures the trigger (HTTP, verification, SQLite inbox, worker), not an evaluation.
Run with ``-s`` to see the figures."""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bpm_lib.trigger.service import TriggerService, parse_trigger_config
from bpm_lib.trigger.submitters import EvaluationRequest, Submission
from bpm_lib.trigger.webhooks import DELIVERY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

SECRET = "burst-secret"
DELIVERIES = 500
VERSIONS = 100
REPLAYS = 250  # the same delivery id again (MLflow retrying, a proxy duplicating)
RESENDS = 150  # a new delivery id for a version already announced
CLIENTS = 8
TIME_LIMIT_S = 60.0
RSS_LIMIT_MIB = 64.0


class CountingSubmitter:
    name = "counting"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[EvaluationRequest] = []

    def submit(self, request: EvaluationRequest, config: Any) -> Submission:
        with self.lock:
            self.requests.append(request)
        return Submission("submitted", f"run-{request.job_id}")


def resolver(uri: str) -> SimpleNamespace:
    return SimpleNamespace(digest="sha256:" + hashlib.sha256(uri.encode()).hexdigest())


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def delivery(version: int, delivery_id: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"entity": "model_version", "action": "created", "timestamp": "2026-01-01T00:00:00+00:00",
                       "data": {"name": "ip2p", "version": str(version), "source": f"runs:/r/{version}",
                                "run_id": "r", "tags": {}, "description": None}}).encode()
    ts = str(int(time.time()))
    return body, {"Content-Type": "application/json", DELIVERY_ID_HEADER: delivery_id, TIMESTAMP_HEADER: ts,
                  SIGNATURE_HEADER: sign(SECRET, delivery_id, ts, body)}


def send_all(url: str, work: list[tuple[bytes, dict[str, str]]], answers: Counter[int], lock: threading.Lock) -> None:
    """One keep-alive connection per client thread, retrying 503 like MLflow does."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        for body, headers in work:
            while True:
                conn.request("POST", "/webhook", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 503:
                    break
                with lock:
                    answers[503] += 1  # retried, not counted as an answer below
                time.sleep(0.02)
            with lock:
                answers[resp.status] += 1
    finally:
        conn.close()


def test_burst_of_500_deliveries_with_duplicates(tmp_path: Path) -> None:
    rng = random.Random(7)
    originals = [(v, f"burst-{v}-{uuid.UUID(int=rng.getrandbits(128))}") for v in range(1, VERSIONS + 1)]
    plan = list(originals)
    plan += [rng.choice(originals) for _ in range(REPLAYS)]
    plan += [(rng.randint(1, VERSIONS), f"resend-{i}-{uuid.UUID(int=rng.getrandbits(128))}") for i in range(RESENDS)]
    rng.shuffle(plan)
    assert len(plan) == DELIVERIES
    unique_ids = {d for _, d in plan}

    config = parse_trigger_config({
        "state": str(tmp_path / "state.db"), "port": 0, "queue_size": 16, "models": ["ip2p"],
        "tag_model_versions": False, "submit": {"mode": "local", "root": str(tmp_path / "root")},
        "campaign": {"name": "burst", "dataset": {"source": "demo"}}, "candidate": {"editor": "ip2p"},
    })
    sub = CountingSubmitter()
    svc = TriggerService(config, secret=SECRET, submitter=sub, resolver=resolver)
    svc.start()
    try:
        # Warm up (lazy imports, first SQLite pages, thread start) before the baseline.
        warm_body, warm_headers = delivery(VERSIONS + 1, "warm-up")
        send_all(svc.url, [(warm_body, warm_headers)] * 3, Counter(), threading.Lock())
        assert svc.wait_idle(10)
        rss_before = rss_mib()

        work = [delivery(v, d) for v, d in plan]
        answers: Counter[int] = Counter()
        lock = threading.Lock()
        shards = [work[i::CLIENTS] for i in range(CLIENTS)]
        t0 = time.perf_counter()
        threads = [threading.Thread(target=send_all, args=(svc.url, shard, answers, lock)) for shard in shards]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIME_LIMIT_S)
        answered_s = time.perf_counter() - t0
        assert svc.wait_idle(TIME_LIMIT_S)
        total_s = time.perf_counter() - t0
        rss_growth = rss_mib() - rss_before

        state = svc.state
        assert state is not None
        burst = [r for r in sub.requests if r.version != str(VERSIONS + 1)]
        per_version = Counter(r.version for r in burst)
        figures = {
            "deliveries": DELIVERIES, "answers": dict(answers), "answered_s": round(answered_s, 2),
            "deliveries_per_s": round(DELIVERIES / answered_s, 1), "all_done_s": round(total_s, 2),
            "submissions": len(burst), "distinct_versions": len(per_version),
            "rss_before_mib": round(rss_before, 1), "rss_growth_mib": round(rss_growth, 1),
            "http": {k: v for k, v in svc.stats.items() if k.startswith("http_")},
        }
        assert not any(t.is_alive() for t in threads)
        retries = answers.pop(503, 0)
        figures["retried_503"] = retries
        assert sum(answers.values()) == DELIVERIES and set(answers) <= {200, 202}, answers
        assert total_s < TIME_LIMIT_S
        assert per_version == Counter({str(v): 1 for v in range(1, VERSIONS + 1)})  # exactly once each
        assert {d.id for d in state.deliveries()} == unique_ids | {"warm-up"}
        assert Counter(d.status for d in state.deliveries()) == Counter(
            {"done": VERSIONS + 1, "exists": len(unique_ids) - VERSIONS})
        assert len(state.jobs()) == VERSIONS + 1 and {j.status for j in state.jobs()} == {"submitted"}
        print("\nburst figures:", json.dumps(figures, sort_keys=True))
        assert rss_growth < RSS_LIMIT_MIB, figures
    finally:
        svc.stop()
