"""Storage URIs: local and S3 (a real moto_server), retries, the download cache, safe_join."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from bpm_lib.errors import DataError
from bpm_lib.io import storage
from bpm_lib.io.storage import (
    fetch_to_local,
    is_s3,
    list_uri,
    read_bytes,
    safe_join,
    split_s3,
    write_bytes,
)


@pytest.fixture()
def bucket(s3_env: Any, request: pytest.FixtureRequest) -> str:
    name = "bkt-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    s3_env.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "RETRY_BASE_SECONDS", 0.0)


# --------------------------------------------------------------------------- URIs


def test_is_s3_and_split() -> None:
    assert is_s3("s3://b/k") and not is_s3("/tmp/x") and not is_s3(Path("s3:/b"))
    assert split_s3("s3://my-bucket/a/b/c.png") == ("my-bucket", "a/b/c.png")
    assert split_s3("s3://my-bucket") == ("my-bucket", "")
    assert split_s3("s3://my-bucket/") == ("my-bucket", "")


@pytest.mark.parametrize(
    "uri",
    ["s3:///key", "s3://", "s3://b/../x", "s3://bucket/a/../../x", "s3://bucket/a/./b", "s3://bucket/a\\..\\b",
     "http://bucket/key", "s3://bad bucket/k"],
)
def test_split_s3_rejects(uri: str) -> None:
    with pytest.raises(DataError) as info:
        split_s3(uri)
    assert isinstance(info.value, ValueError)  # StorageUriError is both
    assert repr(uri) in str(info.value)


# --------------------------------------------------------------------------- safe_join


def test_safe_join_accepts_paths_inside(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert safe_join(tmp_path, "a/b.png", what="f") == tmp_path / "a" / "b.png"
    assert safe_join(tmp_path, "a/../c.png", what="f") == tmp_path / "c.png"
    assert safe_join(tmp_path, "./a//b.png", what="f") == tmp_path / "a" / "b.png"
    assert safe_join(tmp_path, "a\\b.png", what="f") == tmp_path / "a" / "b.png"


@pytest.mark.parametrize(
    "rel",
    ["../x.png", "a/../../x.png", "/etc/passwd", "C:\\Windows\\x", "\\\\server\\share", "..\\x", "", ".", "a\x00b"],
)
def test_safe_join_rejects_escapes(tmp_path: Path, rel: str) -> None:
    with pytest.raises(DataError) as info:
        safe_join(tmp_path, rel, what="source_image_path")
    assert "source_image_path" in str(info.value)


def test_safe_join_rejects_symlink_out_of_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (root / "link.png").symlink_to(outside)
    (root / "dirlink").symlink_to(tmp_path)
    (root / "inside.png").write_bytes(b"x")
    (root / "ok_link.png").symlink_to(root / "inside.png")
    with pytest.raises(DataError, match=r"mask.*link\.png"):
        safe_join(root, "link.png", what="mask")
    with pytest.raises(DataError, match="mask"):
        safe_join(root, "dirlink/secret.txt", what="mask")
    assert safe_join(root, "ok_link.png", what="mask") == root / "ok_link.png"


# --------------------------------------------------------------------------- local


def test_local_read_write_list(tmp_path: Path) -> None:
    write_bytes(tmp_path / "d" / "x.bin", b"abc")
    write_bytes(str(tmp_path / "d" / "sub" / "y.bin"), b"def")
    assert read_bytes(tmp_path / "d" / "x.bin") == b"abc"
    assert list(list_uri(tmp_path / "d")) == [str(tmp_path / "d" / "x.bin"), str(tmp_path / "d" / "sub" / "y.bin")]
    assert list(list_uri(tmp_path / "d" / "x.bin")) == [str(tmp_path / "d" / "x.bin")]
    assert not [p for p in (tmp_path / "d").iterdir() if p.name.startswith(".")]  # no temp leftovers
    with pytest.raises(DataError, match="not found"):
        read_bytes(tmp_path / "missing")
    with pytest.raises(DataError, match="no such"):
        list(list_uri(tmp_path / "missing"))
    with pytest.raises(TypeError, match="data"):
        write_bytes(tmp_path / "z", "text")  # type: ignore[arg-type]
    assert fetch_to_local(tmp_path / "d") == tmp_path / "d"


# --------------------------------------------------------------------------- S3


def test_s3_roundtrip_and_list_pagination(bucket: str, monkeypatch: pytest.MonkeyPatch, s3_env: Any) -> None:
    for name in ("data/a.png", "data/sub/b.png", "data2/c.png", "top.txt"):
        write_bytes(f"s3://{bucket}/{name}", name.encode())
    s3_env.client().put_object(Bucket=bucket, Key="data/d/", Body=b"")  # a console "folder"
    with pytest.raises(DataError, match="not a prefix"):
        write_bytes(f"s3://{bucket}/data/d/", b"x")
    assert read_bytes(f"s3://{bucket}/data/sub/b.png") == b"data/sub/b.png"
    monkeypatch.setattr(storage, "LIST_PAGE_SIZE", 1)  # forces one page per object
    assert list(list_uri(f"s3://{bucket}/data")) == [f"s3://{bucket}/data/a.png", f"s3://{bucket}/data/sub/b.png"]
    assert list(list_uri(f"s3://{bucket}/data/")) == list(list_uri(f"s3://{bucket}/data"))
    assert list(list_uri(f"s3://{bucket}/top.txt")) == [f"s3://{bucket}/top.txt"]
    assert len(list(list_uri(f"s3://{bucket}"))) == 4  # the folder marker "data/d/" is skipped
    with pytest.raises(DataError, match="not found"):
        read_bytes(f"s3://{bucket}/nope.png")
    with pytest.raises(DataError, match="bucket"):
        read_bytes("s3://no-such-bucket-xyz/k")


def test_fetch_to_local_file_and_prefix_cached_once(bucket: str, tmp_path: Path, s3_env: Any) -> None:
    client = s3_env.client()
    for name in ("set/manifest.jsonl", "set/images/1.png", "set/images/2.png", "other.bin"):
        client.put_object(Bucket=bucket, Key=name, Body=name.encode())
    cache = tmp_path / "cache"
    folder = fetch_to_local(f"s3://{bucket}/set", cache_dir=cache)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "images/1.png", "images/2.png", "manifest.jsonl"]
    entry = folder.parent
    assert entry.parent == cache / "s3" and len(entry.name) == 16
    marker = json.loads((entry / storage.COMPLETE_MARKER).read_text())
    assert marker["uri"] == f"s3://{bucket}/set" and marker["count"] == 3
    single = fetch_to_local(f"s3://{bucket}/other.bin", cache_dir=cache)
    assert single.read_bytes() == b"other.bin" and single.name == "other.bin"

    # Downloaded once: the cache answers even after the objects are gone.
    client.delete_object(Bucket=bucket, Key="set/images/1.png")
    client.delete_object(Bucket=bucket, Key="other.bin")
    assert fetch_to_local(f"s3://{bucket}/set", cache_dir=cache) == folder
    assert (folder / "images" / "1.png").read_bytes() == b"set/images/1.png"
    assert fetch_to_local(f"s3://{bucket}/other.bin", cache_dir=cache) == single
    assert not [p for p in (cache / "s3").iterdir() if p.name.startswith(".tmp")]


def test_fetch_to_local_uses_env_cache_and_redoes_incomplete(bucket: str, tmp_path: Path, s3_env: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BPM_CACHE_DIR", str(tmp_path / "envcache"))
    s3_env.client().put_object(Bucket=bucket, Key="p/x.txt", Body=b"new")
    uri = f"s3://{bucket}/p"
    entry = tmp_path / "envcache" / "s3" / storage.uri_cache_key(uri)
    (entry / storage.CONTENT_DIR).mkdir(parents=True)
    (entry / storage.CONTENT_DIR / "x.txt").write_bytes(b"half")  # a crashed download: no marker
    folder = fetch_to_local(uri)
    assert folder == entry / storage.CONTENT_DIR
    assert (folder / "x.txt").read_bytes() == b"new"


def test_fetch_to_local_missing_and_escaping_keys(bucket: str, tmp_path: Path, s3_env: Any) -> None:
    with pytest.raises(DataError, match="no such S3 object or prefix"):
        fetch_to_local(f"s3://{bucket}/nothing-here", cache_dir=tmp_path)
    with pytest.raises(DataError, match=r"\.\."):
        fetch_to_local(f"s3://{bucket}/a/../b", cache_dir=tmp_path)
    # A listed key that would climb out of the prefix folder is refused, nothing is left behind.
    s3_env.client().put_object(Bucket=bucket, Key="evil/../../escaped.txt", Body=b"x")
    s3_env.client().put_object(Bucket=bucket, Key="evil/ok.txt", Body=b"x")
    keys = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket, Prefix="evil/")["Contents"]]
    assert "evil/../../escaped.txt" in keys
    with pytest.raises(DataError, match=r"\.\."):
        fetch_to_local(f"s3://{bucket}/evil", cache_dir=tmp_path / "c")
    assert not (tmp_path / "escaped.txt").exists()
    assert not list((tmp_path / "c" / "s3").iterdir())


class _FlakyClient:
    """Answers like S3 but fails the first ``failures`` calls with the given error."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return {}


def _client_error(status: int, code: str) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError"), (400, "Throttling")])
def test_retries_transient_errors(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                  status: int, code: str) -> None:
    flaky = _FlakyClient(2, _client_error(status, code))
    monkeypatch.setattr(storage, "_client", lambda: flaky)
    with caplog.at_level(logging.WARNING, logger="bpm_lib.io.storage"):
        write_bytes("s3://bucket-x/k", b"data")
    assert flaky.calls == 3
    assert sum("retry" in r.message for r in caplog.records) == 2


def test_retries_are_bounded_and_permanent_errors_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    flaky = _FlakyClient(100, _client_error(503, "ServiceUnavailable"))
    monkeypatch.setattr(storage, "_client", lambda: flaky)
    monkeypatch.setenv("BPM_S3_MAX_ATTEMPTS", "3")
    with pytest.raises(DataError, match="after 3 attempts"):
        write_bytes("s3://bucket-x/k", b"data")
    assert flaky.calls == 3
    denied = _FlakyClient(100, _client_error(403, "AccessDenied"))
    monkeypatch.setattr(storage, "_client", lambda: denied)
    with pytest.raises(DataError, match="AccessDenied"):
        write_bytes("s3://bucket-x/k", b"data")
    assert denied.calls == 1
    monkeypatch.setenv("BPM_S3_MAX_ATTEMPTS", "zero")
    with pytest.raises(ValueError, match="BPM_S3_MAX_ATTEMPTS"):
        write_bytes("s3://bucket-x/k", b"data")


def test_connection_errors_are_retried_then_reported(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from tests.fixtures.servers import free_port

    secret = "s3cr3t-Do-Not-Log-42"
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", os.environ["AWS_ENDPOINT_URL"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("BPM_S3_MAX_ATTEMPTS", "2")
    with caplog.at_level(logging.DEBUG, logger="bpm_lib"), pytest.raises(DataError, match="after 2 attempts"):
        read_bytes("s3://some-bucket/key.png")
    assert any("retry 1/1" in r.getMessage() for r in caplog.records)
    assert all(secret not in r.getMessage() for r in caplog.records)
