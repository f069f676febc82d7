"""Checkpoint URIs: where a candidate's weights come from, resolved to a local folder.

:func:`resolve_checkpoint` accepts

* a local folder or file (``/models/ip2p``, ``./ckpt``, ``~/w``, ``file:///models/x``);
* a hub id (``timbrooks/instruct-pix2pix``): left as is for ``from_pretrained`` and the
  Hugging Face cache; its digest is ``None`` (the hub revision is the loader's business);
* ``s3://bucket/prefix``: downloaded once through :func:`bpm_lib.io.storage.fetch_to_local`;
* MLflow: ``models:/name/version``, ``models:/name@alias`` (optionally followed by
  ``/sub/path``) and ``runs:/run_id/path``, downloaded with
  ``mlflow.artifacts.download_artifacts`` against the current tracking URI
  (``MLFLOW_TRACKING_URI``). For ``models:/`` the registered model name and the concrete
  version are recorded (an alias is resolved with ``MlflowClient.get_model_version_by_alias``
  first, so the cache and the record name the version actually used).

MLflow downloads are cached under ``<cache root>/mlflow/<sha16>/`` (cache root as in
:func:`bpm_lib.io.storage.cache_root`), keyed by tracking URI + model name + version (+ sub
path) or by tracking URI + ``runs:/`` URI; a completion marker is written last, so a
crash never leaves an entry that looks complete. Model versions are immutable; a run's
artifacts could be re-logged, which the cache does not notice (delete the entry).

``digest`` is ``sha256:<hex>`` over the sorted relative file names, sizes and contents
of the resolved folder (hidden files, i.e. any path part starting with ``.``, are left
out), streamed in 1 MiB chunks. It is cached in a ``.bpm-digest`` file inside the folder,
valid while every file keeps its size and mtime; a read-only folder just recomputes.
The same bytes give the same digest wherever they live (local, S3 cache, MLflow cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from bpm_lib.errors import ModelLoadError, TrackingError

log = logging.getLogger(__name__)

DIGEST_FILE = ".bpm-digest"
DIGEST_VERSION = 1
CHUNK = 1 << 20
COMPLETE_MARKER = "complete.json"
CONTENT_DIR = "content"

CheckpointKind = Literal["local", "hub", "s3", "mlflow-model", "mlflow-run"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))(?:/(?P<path>.+))?$")
_RUNS_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)(?:/(?P<path>.*))?$")


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint URI resolved for loading.

    ``local_path`` is a local folder/file, or the hub id itself when ``kind`` is ``hub``.
    ``model_name``/``model_version`` are set for ``models:/`` URIs; ``run_id`` for MLflow
    sources whose run is known.
    """

    local_path: str
    uri: str
    digest: str | None
    model_name: str | None = None
    model_version: str | None = None
    kind: CheckpointKind = "local"
    run_id: str | None = None

    @property
    def is_local(self) -> bool:
        return self.kind != "hub"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_checkpoint(
    uri: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    compute_digest: bool = True,
) -> ResolvedCheckpoint:
    """Resolve ``uri`` (see the module docstring) to a :class:`ResolvedCheckpoint`.

    Raises ``ValueError`` for a URI that is none of the supported forms,
    :class:`ModelLoadError` for one that names nothing (missing folder, unknown model
    version or alias, empty prefix) and :class:`TrackingError` when the MLflow server
    cannot be reached.
    """
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"uri must be a non-empty checkpoint URI or path, got {uri!r}")
    text = uri.strip()
    scheme_match = _SCHEME.match(text)
    scheme = scheme_match.group(1).lower() if scheme_match else None
    # "C:\\models" is a Windows drive, not a scheme.
    if scheme is not None and len(scheme) == 1:
        scheme = None

    if scheme == "s3":
        return _resolve_s3(text, cache_dir, compute_digest)
    if scheme == "models":
        return _resolve_mlflow_model(text, cache_dir, compute_digest)
    if scheme == "runs":
        return _resolve_mlflow_run(text, cache_dir, compute_digest)
    if scheme == "file":
        return _resolve_local(text, Path(text.removeprefix("file://")), compute_digest)
    if scheme is not None:
        raise ValueError(
            f"uri {text!r} has an unsupported scheme {scheme!r}; use a local path, a hub id "
            "(org/name), s3://bucket/prefix, models:/name/version, models:/name@alias or runs:/run_id/path"
        )
    path = Path(text).expanduser()
    if text.startswith(("/", "./", "../", "~", ".\\", "..\\")) or text in (".", "..") or path.exists():
        return _resolve_local(text, path, compute_digest)
    if _HUB_ID.match(text):
        log.debug("%s: treated as a hub id", text)
        return ResolvedCheckpoint(local_path=text, uri=text, digest=None, kind="hub")
    raise ValueError(f"uri {text!r} is neither an existing local path nor a hub id (org/name)")


def _resolve_local(uri: str, path: Path, compute_digest: bool) -> ResolvedCheckpoint:
    if not path.exists():
        raise ModelLoadError(f"checkpoint {uri!r}: local path {str(path)!r} does not exist")
    return ResolvedCheckpoint(
        local_path=str(path), uri=uri, digest=checkpoint_digest(path) if compute_digest else None, kind="local"
    )


def _resolve_s3(uri: str, cache_dir: str | os.PathLike[str] | None, compute_digest: bool) -> ResolvedCheckpoint:
    from bpm_lib.errors import DataError
    from bpm_lib.io.storage import fetch_to_local

    try:
        local = fetch_to_local(uri, cache_dir=cache_dir)
    except DataError as e:
        raise ModelLoadError(f"checkpoint {uri!r} cannot be fetched: {e}") from e
    return ResolvedCheckpoint(
        local_path=str(local), uri=uri, digest=checkpoint_digest(local) if compute_digest else None, kind="s3"
    )


# --------------------------------------------------------------------------- MLflow


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None, str | None]:
    """``models:/name/3/sub`` → ``("name", "3", None, "sub")``;
    ``models:/name@champion`` → ``("name", None, "champion", None)``.

    Stage names (``models:/name/Production``) are refused: MLflow deprecated stages; use
    a version number or an alias.
    """
    m = _MODELS_URI.match(uri)
    if m is None:
        raise ValueError(f"uri {uri!r} must be models:/<name>/<version> or models:/<name>@<alias>")
    version = m.group("version")
    if version is not None and not version.isdigit():
        raise ValueError(
            f"uri {uri!r}: model version must be a number (stages such as {version!r} are "
            "deprecated in MLflow; use models:/<name>@<alias>)"
        )
    return m.group("name"), version, m.group("alias"), m.group("path")


def _mlflow_errors() -> tuple[type[BaseException], ...]:
    from mlflow.exceptions import MlflowException

    return (MlflowException,)


def _mlflow_failure(uri: str, e: BaseException) -> Exception:
    """Map an MLflow exception: unknown names → ModelLoadError, transport → TrackingError."""
    code = str(getattr(e, "error_code", "") or "")
    if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
        return ModelLoadError(f"checkpoint {uri!r}: {e}")
    import mlflow

    return TrackingError(f"checkpoint {uri!r}: MLflow at {mlflow.get_tracking_uri()} failed: {e}")


def _resolve_mlflow_model(uri: str, cache_dir: str | os.PathLike[str] | None, compute_digest: bool) -> ResolvedCheckpoint:
    import mlflow
    from mlflow import MlflowClient

    name, version, alias, sub_path = parse_models_uri(uri)
    tracking_uri = mlflow.get_tracking_uri()
    client = MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias is not None else client.get_model_version(name, str(version))
    except _mlflow_errors() as e:
        raise _mlflow_failure(uri, e) from e
    concrete = f"models:/{name}/{mv.version}" + (f"/{sub_path}" if sub_path else "")
    local = _download_cached(concrete, f"{tracking_uri}|{concrete}", cache_dir)
    log.info("%s → %s (version %s) at %s", uri, name, mv.version, local)
    return ResolvedCheckpoint(
        local_path=str(local),
        uri=uri,
        digest=checkpoint_digest(local) if compute_digest else None,
        model_name=name,
        model_version=str(mv.version),
        kind="mlflow-model",
        run_id=getattr(mv, "run_id", None) or None,
    )


def _resolve_mlflow_run(uri: str, cache_dir: str | os.PathLike[str] | None, compute_digest: bool) -> ResolvedCheckpoint:
    import mlflow

    m = _RUNS_URI.match(uri)
    if m is None:
        raise ValueError(f"uri {uri!r} must be runs:/<run_id>/<artifact path>")
    local = _download_cached(uri, f"{mlflow.get_tracking_uri()}|{uri}", cache_dir)
    return ResolvedCheckpoint(
        local_path=str(local),
        uri=uri,
        digest=checkpoint_digest(local) if compute_digest else None,
        kind="mlflow-run",
        run_id=m.group("run_id"),
    )


def _download_cached(artifact_uri: str, key: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    """Download ``artifact_uri`` once into the cache; returns the local file or folder."""
    import mlflow

    from bpm_lib.io.storage import cache_root

    entry = cache_root(cache_dir) / "mlflow" / hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    done = _complete(entry, key)
    if done is not None:
        log.debug("%s: cached at %s", artifact_uri, done)
        return done
    if entry.exists():
        shutil.rmtree(entry, ignore_errors=True)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".tmp-{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        content = tmp / CONTENT_DIR
        content.mkdir(parents=True)
        try:
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(content)))
        except _mlflow_errors() as e:
            raise _mlflow_failure(artifact_uri, e) from e
        except OSError as e:
            raise TrackingError(f"checkpoint {artifact_uri!r}: download failed: {e}") from e
        rel = got.resolve().relative_to(content.resolve()).as_posix()
        if rel == "." and not any(content.iterdir()):
            raise ModelLoadError(f"checkpoint {artifact_uri!r}: no artifacts at that location")
        marker = {"key": key, "uri": artifact_uri, "relative": rel}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, sort_keys=True) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, entry)
        except OSError:
            if _complete(entry, key) is None:  # not a concurrent download finishing first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    result = _complete(entry, key)
    if result is None:
        raise ModelLoadError(f"checkpoint {artifact_uri!r}: cache entry {entry} is incomplete after download")
    return result


def _complete(entry: Path, key: str) -> Path | None:
    try:
        info = json.loads((entry / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("key") != key:
        return None
    rel = str(info.get("relative", "."))
    path = entry / CONTENT_DIR if rel == "." else entry / CONTENT_DIR / rel
    return path if path.exists() else None


# --------------------------------------------------------------------------- digest


def _files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative posix name, path) of every non-hidden file under ``root``, sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            yield path.relative_to(root).as_posix(), path


def _listing(path: Path) -> list[tuple[str, Path, int, int]]:
    entries = [(path.name, path)] if path.is_file() else list(_files(path))
    out = []
    for rel, p in sorted(entries):
        st = p.stat()
        out.append((rel, p, st.st_size, st.st_mtime_ns))
    return out


def _digest_cache_path(path: Path) -> Path:
    return path / DIGEST_FILE if path.is_dir() else path.with_name(f".{path.name}{DIGEST_FILE}")


def checkpoint_digest(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of a checkpoint folder (or single file); see the module docstring."""
    root = Path(path)
    if not root.exists():
        raise ModelLoadError(f"checkpoint path {str(root)!r} does not exist")
    listing = _listing(root)
    stamp = [[rel, size, mtime] for rel, _, size, mtime in listing]
    cache = _digest_cache_path(root)
    try:
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached.get("version") == DIGEST_VERSION and cached.get("files") == stamp:
            return str(cached["digest"])
    except (OSError, ValueError, AttributeError, KeyError):
        pass
    h = hashlib.sha256()
    for rel, p, size, _ in listing:
        name = rel.encode("utf-8")
        h.update(len(name).to_bytes(8, "big") + name + size.to_bytes(8, "big"))
        with p.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
    digest = f"sha256:{h.hexdigest()}"
    tmp = cache.with_name(f"{cache.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps({"version": DIGEST_VERSION, "files": stamp, "digest": digest}), encoding="utf-8")
        os.replace(tmp, cache)
    except OSError as e:  # a read-only checkpoint folder: fine, just not cached
        log.debug("cannot cache the digest of %s: %s", root, e)
        tmp.unlink(missing_ok=True)
    return digest
