"""Storage URIs: local paths and ``s3://bucket/key``, read, written, listed and cached.

* boto3 is imported lazily; the endpoint and credentials come from the standard AWS
  environment (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` are honoured by boto3
  itself). Credentials are never logged.
* S3 calls are retried a bounded number of times (``BPM_S3_MAX_ATTEMPTS``, default 4)
  with exponential backoff on 5xx answers, throttling and connection errors; every
  other failure (missing key, access denied) is reported at once.
* :func:`fetch_to_local` downloads an S3 object or prefix once into
  ``$BPM_CACHE_DIR/s3/<sha16 of the URI>/`` (default ``~/.cache/bpm-eval``): the download
  goes to a temporary folder that is renamed into place, with a completion marker, so
  a crash never leaves a half-filled cache entry that looks complete. The cache is keyed
  by the URI only: a changed object under the same URI is not re-downloaded (clear the
  cache folder to refresh).
* :func:`safe_join` confines a relative path to a root folder (no absolute paths, no
  ``..`` escapes, no symlink whose target leaves the root): dataset records and manifest
  lines are untrusted input.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from bpm_lib.envvars import env_int
from bpm_lib.errors import DataError

log = logging.getLogger(__name__)

S3_SCHEME = "s3://"
DEFAULT_MAX_ATTEMPTS = 4
RETRY_BASE_SECONDS = 0.25  # backoff before retry n is RETRY_BASE_SECONDS * 2**(n-1), capped
RETRY_MAX_SECONDS = 5.0
CHUNK = 1 << 20
LIST_PAGE_SIZE = 1000
COMPLETE_MARKER = "complete.json"
CONTENT_DIR = "content"

_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
_RETRY_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
    }
)

T = TypeVar("T")


class StorageUriError(DataError, ValueError):
    """A storage URI is malformed or unsafe (empty bucket, ``..`` in an S3 key)."""


def is_s3(uri: str | os.PathLike[str]) -> bool:
    """True for ``s3://…`` URIs (a ``Path`` is always local)."""
    return isinstance(uri, str) and uri.startswith(S3_SCHEME)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` → ``("bucket", "some/key")``.

    The key may be empty (the whole bucket). Raises :class:`StorageUriError` for a URI
    that is not ``s3://``, has an empty or invalid bucket name, or whose key has a
    ``.``/``..`` segment (it would escape its prefix when mirrored to a local folder).
    """
    if not is_s3(uri):
        raise StorageUriError(f"uri must start with {S3_SCHEME!r}, got {uri!r}")
    rest = uri[len(S3_SCHEME):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageUriError(f"S3 URI has an empty bucket name: {uri!r}")
    if not _BUCKET_RE.match(bucket):
        raise StorageUriError(f"S3 URI has an invalid bucket name {bucket!r}: {uri!r}")
    _check_key(key, uri)
    return bucket, key


def _check_key(key: str, uri: str) -> None:
    if "\x00" in key:
        raise StorageUriError(f"S3 key contains a NUL character: {uri!r}")
    segments = key.replace("\\", "/").split("/")
    if any(seg in ("..", ".") for seg in segments):
        raise StorageUriError(f"S3 key has a '.' or '..' segment (path escape): {uri!r}")


def join_s3(bucket: str, key: str) -> str:
    return f"{S3_SCHEME}{bucket}/{key}"


def safe_join(root: str | os.PathLike[str], relative: str | os.PathLike[str], *, what: str) -> Path:
    """``root / relative``, refusing anything that would leave ``root``.

    Rejected with :class:`DataError` naming ``what`` and the value: an empty path, a NUL
    character, an absolute path (POSIX, Windows drive or UNC), a ``..`` that climbs out
    of ``root``, and a path whose resolved target (following symlinks, including
    symlinked folders on the way) is outside ``root``. Backslashes count as separators.
    The returned path is ``root`` joined with the normalised relative path (not resolved,
    so a symlink that stays inside ``root`` keeps its name).
    """
    text = os.fspath(relative)
    if not isinstance(text, str) or not text:
        raise DataError(f"{what}: path must be a non-empty string, got {relative!r}")
    if "\x00" in text:
        raise DataError(f"{what}: path contains a NUL character: {text!r}")
    posix = text.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        raise DataError(f"{what}: absolute paths are not allowed here, got {text!r}")
    parts: list[str] = []
    for seg in PurePosixPath(posix).parts:
        if seg in ("", "."):
            continue
        if seg == "..":
            if not parts:
                raise DataError(f"{what}: path escapes its root folder with '..': {text!r}")
            parts.pop()
            continue
        parts.append(seg)
    if not parts:
        raise DataError(f"{what}: path names the root folder itself, not a file: {text!r}")
    base = Path(root)
    joined = base.joinpath(*parts)
    real_root = base.resolve()
    real = joined.resolve()
    if real != real_root and real_root not in real.parents:
        raise DataError(
            f"{what}: path {text!r} resolves outside its root folder (symlink to {real})"
        )
    return joined


# --------------------------------------------------------------------------- S3 client

_client_lock = threading.Lock()
_clients: dict[tuple[str | None, ...], Any] = {}


def _client() -> Any:
    """One boto3 S3 client per distinct AWS environment (tests change it per test)."""
    env_key = tuple(
        os.environ.get(name)
        for name in (
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_DEFAULT_REGION",
            "AWS_REGION",
        )
    )
    with _client_lock:
        client = _clients.get(env_key)
        if client is None:
            import boto3
            from botocore.config import Config

            # Retries are ours (bounded, logged); botocore's own retry loop is switched off.
            config = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=10, read_timeout=60)
            client = boto3.session.Session().client("s3", config=config)
            _clients[env_key] = client
        return client


def max_attempts() -> int:
    """``BPM_S3_MAX_ATTEMPTS`` (default 4): attempts per S3 call, at least 1."""
    return env_int("BPM_S3_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, minimum=1)


def _is_transient(exc: BaseException) -> bool:
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )

    if isinstance(
        exc,
        EndpointConnectionError
        | ConnectionClosedError
        | ConnectTimeoutError
        | ReadTimeoutError
        | IncompleteReadError
        | ResponseStreamingError,
    ):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return int(status) >= 500 or int(status) == 429 or code in _RETRY_CODES
    return False


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _with_retries(op: Callable[[], T], what: str) -> T:
    """Run ``op`` with bounded retries on transient S3 failures; :class:`DataError` otherwise."""
    from botocore.exceptions import BotoCoreError, ClientError

    attempts = max_attempts()
    for attempt in range(1, attempts + 1):
        try:
            return op()
        except (BotoCoreError, ClientError) as e:
            if _is_transient(e) and attempt < attempts:
                delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (attempt - 1))
                log.warning("%s: transient S3 failure (%s), retry %d/%d in %.2fs",
                            what, type(e).__name__, attempt, attempts - 1, delay)
                time.sleep(delay)
                continue
            code = _error_code(e)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise DataError(f"{what}: not found") from e
            if code == "NoSuchBucket":
                raise DataError(f"{what}: bucket does not exist") from e
            tried = f" after {attempt} attempts" if attempt > 1 else ""
            raise DataError(f"{what}: S3 request failed{tried}: {type(e).__name__}: {e}") from e
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


# --------------------------------------------------------------------------- read / write / list


def read_bytes(uri: str | os.PathLike[str]) -> bytes:
    """The bytes of a local file or an S3 object (:class:`DataError` when it cannot be read)."""
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        if not key:
            raise StorageUriError(f"S3 URI names a bucket, not an object: {uri!r}")

        def get() -> bytes:
            resp = _client().get_object(Bucket=bucket, Key=key)
            body = resp["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        return _with_retries(get, str(uri))
    path = Path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except IsADirectoryError as e:
        raise DataError(f"{path}: is a folder, not a file") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from e


def write_bytes(uri: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a local file (atomically: temp file + rename) or an S3 object."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        if not key or key.endswith("/"):
            raise StorageUriError(f"S3 URI must name an object, not a prefix: {uri!r}")
        payload = bytes(data)
        _with_retries(lambda: _client().put_object(Bucket=bucket, Key=key, Body=payload), str(uri))
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def list_uri(prefix: str | os.PathLike[str]) -> Iterator[str]:
    """Files under ``prefix``, recursively, in sorted order.

    Local: a file yields itself; a folder yields every file below it (hidden files
    included; symlinked folders are not followed). S3: every object equal to the key or
    below ``key/`` (folder semantics: ``s3://b/data`` does not list ``s3://b/data2/x``),
    paginated; folder-marker keys ending in ``/`` are skipped.
    """
    if is_s3(prefix):
        yield from _list_s3(str(prefix))
        return
    path = Path(prefix)
    if path.is_file():
        yield str(path)
        return
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            yield str(Path(dirpath) / name)


def _list_s3(uri: str) -> Iterator[str]:
    bucket, key = split_s3(uri)
    folder = key if (not key or key.endswith("/")) else key + "/"
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key, "MaxKeys": LIST_PAGE_SIZE}
        if token:
            kwargs["ContinuationToken"] = token
        page = _with_retries(lambda kw=kwargs: _client().list_objects_v2(**kw), uri)  # type: ignore[misc]
        for obj in page.get("Contents", []):
            name = obj["Key"]
            if name.endswith("/"):
                continue
            if name == key or name.startswith(folder):
                yield join_s3(bucket, name)
        if not page.get("IsTruncated"):
            return
        token = page.get("NextContinuationToken")
        if not token:
            return


# --------------------------------------------------------------------------- cache


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$BPM_CACHE_DIR``, else ``~/.cache/bpm-eval``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("BPM_CACHE_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "bpm-eval"


def uri_cache_key(uri: str) -> str:
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:16]


def fetch_to_local(uri: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A local path for ``uri``: a local path is returned as is; an S3 object or prefix is
    downloaded once into the cache and the cached file (object) or folder (prefix) returned.

    A URI that is both an object and a prefix is treated as the object. Every listed key is
    confined to the prefix with :func:`safe_join` (an S3 key cannot write outside the cache
    entry). Concurrent callers may both download; the first rename wins, the other copy is
    discarded.
    """
    if not is_s3(uri):
        return Path(uri)
    text = str(uri)
    bucket, key = split_s3(text)
    entry = cache_root(cache_dir) / "s3" / uri_cache_key(text)
    done = _complete_entry(entry, text)
    if done is not None:
        return done
    if entry.exists():
        log.warning("%s: removing an incomplete cache entry %s", text, entry)
        shutil.rmtree(entry, ignore_errors=True)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".tmp-{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        content = tmp / CONTENT_DIR
        content.mkdir(parents=True)
        kind, name, count = _download(bucket, key, text, content)
        marker = {"uri": text, "kind": kind, "name": name, "count": count}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, sort_keys=True) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, entry)
        except OSError:
            # Someone else finished first: keep theirs if it is complete.
            if _complete_entry(entry, text) is None:
                raise
        log.info("%s: cached %d file(s) in %s", text, count, entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    result = _complete_entry(entry, text)
    if result is None:
        raise DataError(f"{text}: cache entry {entry} is incomplete after download")
    return result


def _complete_entry(entry: Path, uri: str) -> Path | None:
    marker = entry / COMPLETE_MARKER
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("uri") != uri:
        return None
    content = entry / CONTENT_DIR
    if info.get("kind") == "file":
        path = content / str(info.get("name"))
        return path if path.is_file() else None
    return content if content.is_dir() else None


def _download(bucket: str, key: str, uri: str, content: Path) -> tuple[str, str, int]:
    """Download into ``content``; returns (kind, name, count)."""
    client = _client()
    if key and not key.endswith("/"):
        from botocore.exceptions import ClientError

        try:
            _with_retries(lambda: client.head_object(Bucket=bucket, Key=key), uri)
            is_object = True
        except DataError as e:
            cause = e.__cause__
            if isinstance(cause, ClientError) and _error_code(cause) in ("404", "NoSuchKey", "NotFound"):
                is_object = False
            else:
                raise
        if is_object:
            name = PurePosixPath(key).name
            target = safe_join(content, name, what="S3 key")
            _download_object(bucket, key, target, uri)
            return "file", name, 1
    folder = key if (not key or key.endswith("/")) else key + "/"
    count = 0
    for obj_uri in _list_s3(uri):
        obj_key = split_s3(obj_uri)[1]
        relative = obj_key[len(folder):]
        target = safe_join(content, relative, what=f"S3 key {obj_key!r}")
        _download_object(bucket, obj_key, target, obj_uri)
        count += 1
    if count == 0:
        raise DataError(f"{uri}: no such S3 object or prefix (nothing listed)")
    return "prefix", "", count


def _download_object(bucket: str, key: str, target: Path, uri: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)

    def get() -> None:
        resp = _client().get_object(Bucket=bucket, Key=key)
        body = resp["Body"]
        try:
            with target.open("wb") as fh:
                for chunk in body.iter_chunks(CHUNK):
                    fh.write(chunk)
        finally:
            body.close()

    _with_retries(get, uri)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a local file, streamed in 1 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
