"""S3 faults: a real S3 endpoint (moto_server) behind a flaky proxy that answers 500/503,
drops connections and cuts bodies short. Transient faults are retried (bounded, with
backoff) and nothing is lost or corrupted; permanent ones fail at once, naming the URI;
a failed download never leaves a cache entry that looks complete."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpm_lib.errors import DataError
from bpm_lib.io import storage
from bpm_lib.io.datasets import fetch
from tests.fixtures.servers import S3Endpoint
from tests.robustness.catalogue import ordinary_png
from tests.robustness.faults import S3_ERROR, FlakyProxy, Rule, flaky_proxy

pytestmark = pytest.mark.slow

FILES = {f"data/img-{i}.png": ordinary_png(i, (96, 80)) for i in range(6)}


def _s3_error(status: int, code: str) -> dict[str, object]:
    return {"status": status, "body": S3_ERROR.format(code=code).encode(), "content_type": "application/xml"}


@pytest.fixture()
def bucket(s3_env: S3Endpoint) -> str:
    import uuid

    name = f"faults-{uuid.uuid4().hex[:10]}"
    client = s3_env.client()
    client.create_bucket(Bucket=name)
    for key, data in FILES.items():
        client.put_object(Bucket=name, Key=key, Body=data)
    return name


@pytest.fixture()
def proxy(s3_env: S3Endpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FlakyProxy]:
    """boto3 (through the AWS_* variables) talks to S3 only through the flaky proxy."""
    with flaky_proxy(s3_env.url) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", p.url)
        monkeypatch.setenv("BPM_S3_MAX_ATTEMPTS", "4")
        monkeypatch.setenv("BPM_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setattr(storage, "RETRY_BASE_SECONDS", 0.01)
        yield p


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_transient_faults_on_every_operation_are_retried(bucket: str, proxy: FlakyProxy,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    uri = f"s3://{bucket}/out/blob.bin"
    payload = bytes(range(256)) * 512
    blob = lambda m, p: m == "GET" and p.endswith("/out/blob.bin")  # noqa: E731
    listing = lambda m, p: m == "GET" and "list-type=2" in p  # noqa: E731
    proxy.add(Rule("status", times=1, match=lambda m, p: m == "PUT", **_s3_error(503, "SlowDown")))  # type: ignore[arg-type]
    proxy.add(Rule("drop", times=1, match=blob))
    proxy.add(Rule("truncate", times=1, match=blob))
    proxy.add(Rule("status", times=2, match=listing, **_s3_error(500, "InternalError")))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="bpm_lib.io.storage"):
        storage.write_bytes(uri, payload)
        assert storage.read_bytes(uri) == payload
        listed = list(storage.list_uri(f"s3://{bucket}/data"))
    assert listed == [f"s3://{bucket}/{k}" for k in sorted(FILES)]
    assert sorted(kind for kind, _, _ in proxy.faults) == ["drop", "status", "status", "status", "truncate"]
    assert sum("transient S3 failure" in r.getMessage() for r in caplog.records) == 5


def test_a_flaky_prefix_download_is_complete_and_exact(bucket: str, proxy: FlakyProxy, tmp_path: Path) -> None:
    # every third GET fails one way or another, the first body is cut short
    proxy.add(Rule("truncate", times=1, match=lambda m, p: m == "GET" and "/data/img-" in p))
    proxy.add(Rule("status", times=None, match=lambda m, p: m == "GET" and len(proxy.requests) % 3 == 0,
                   **_s3_error(503, "ServiceUnavailable")))  # type: ignore[arg-type]
    folder = storage.fetch_to_local(f"s3://{bucket}/data", cache_dir=tmp_path / "c")
    got = {p.relative_to(folder).as_posix(): _sha(p.read_bytes()) for p in folder.rglob("*") if p.is_file()}
    assert got == {k.removeprefix("data/"): _sha(v) for k, v in FILES.items()}
    assert len(proxy.faults) >= 3
    # served from the cache afterwards, with no request at all
    before = len(proxy.requests)
    assert storage.fetch_to_local(f"s3://{bucket}/data", cache_dir=tmp_path / "c") == folder
    assert len(proxy.requests) == before


def test_a_dataset_fetched_through_faults_equals_the_clean_fetch(bucket: str, proxy: FlakyProxy,
                                                                 s3_env: S3Endpoint, tmp_path: Path) -> None:
    demo = fetch("demo", tmp_path / "demo", limit=4)
    client = s3_env.client()
    for path in sorted(p for p in (tmp_path / "demo").rglob("*") if p.is_file()):
        client.put_object(Bucket=bucket, Key=f"sets/demo/{path.relative_to(tmp_path / 'demo').as_posix()}",
                          Body=path.read_bytes())
    clean = fetch(f"s3://{bucket}/sets/demo", tmp_path / "clean", cache_dir=tmp_path / "c1")
    proxy.add(Rule("status", times=None, match=lambda m, p: len(proxy.requests) % 2 == 0,
                   **_s3_error(500, "InternalError")))  # type: ignore[arg-type]
    flaky = fetch(f"s3://{bucket}/sets/demo", tmp_path / "flaky", cache_dir=tmp_path / "c2")
    assert proxy.faults, "the faults were not injected"
    assert (flaky.count, flaky.digest) == (clean.count, clean.digest) == (demo.count, flaky.digest)


def test_permanent_failures_name_the_uri_and_leave_no_cache_entry(bucket: str, proxy: FlakyProxy,
                                                                  tmp_path: Path) -> None:
    uri = f"s3://{bucket}/data"
    proxy.down(**_s3_error(503, "SlowDown"))  # type: ignore[arg-type]
    with pytest.raises(DataError, match=rf"s3://{bucket}/data.*after 4 attempts"):
        storage.fetch_to_local(uri, cache_dir=tmp_path / "c")
    assert len(proxy.faults) == 4  # bounded
    entries = list((tmp_path / "c" / "s3").iterdir()) if (tmp_path / "c" / "s3").exists() else []
    assert not any((e / storage.COMPLETE_MARKER).exists() for e in entries)

    proxy.clear()
    proxy.add(Rule("status", times=None, **_s3_error(403, "AccessDenied")))  # type: ignore[arg-type]
    with pytest.raises(DataError, match=rf"s3://{bucket}/data/img-0.png: S3 request failed: .*AccessDenied"):
        storage.read_bytes(f"{uri}/img-0.png")
    assert len(proxy.faults) == 5  # a 403 is not retried

    proxy.clear()  # the endpoint is back: the same call now works and fills the cache
    folder = storage.fetch_to_local(uri, cache_dir=tmp_path / "c")
    assert sorted(p.name for p in folder.iterdir()) == sorted(Path(k).name for k in FILES)


def test_model_weights_download_through_faults_like_any_s3_fetch(bucket: str, proxy: FlakyProxy,
                                                                 tmp_path: Path) -> None:
    """Model sources (``s3://`` weights of GroundingDINO, SAM, CLIP) use the same retried
    download as data: a flaky endpoint gives complete, exact files; a dead one a
    ModelLoadError naming the model, and no cache entry that looks complete."""
    from bpm_lib.backends.model_source import resolve_model_source
    from bpm_lib.errors import ModelLoadError

    proxy.add(Rule("truncate", times=1, match=lambda m, p: m == "GET" and "/data/img-" in p))
    proxy.add(Rule("status", times=None, match=lambda m, p: m == "GET" and len(proxy.requests) % 3 == 0,
                   **_s3_error(503, "ServiceUnavailable")))  # type: ignore[arg-type]
    folder = Path(resolve_model_source(f"s3://{bucket}/data", cache_dir=tmp_path / "m", what="test detector"))
    got = {p.relative_to(folder).as_posix(): _sha(p.read_bytes()) for p in folder.rglob("*") if p.is_file()}
    assert got == {k.removeprefix("data/"): _sha(v) for k, v in FILES.items()}
    assert proxy.faults

    proxy.clear()
    proxy.down(**_s3_error(503, "SlowDown"))  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match=rf"test detector: cannot download s3://{bucket}/data/img-1.png"):
        resolve_model_source(f"s3://{bucket}/data/img-1.png", cache_dir=tmp_path / "m2", what="test detector")
    entries = list((tmp_path / "m2" / "s3").iterdir()) if (tmp_path / "m2" / "s3").exists() else []
    assert not any((e / storage.COMPLETE_MARKER).exists() for e in entries)
