"""Pollers: find new checkpoints without webhooks, and offer them to the trigger service.

Both go through :meth:`bpm_lib.trigger.service.TriggerService.offer`, so they share the
webhook's inbox, worker and exactly-once job key ``(model, version, digest)``.

* :class:`S3Poller` (``s3://bucket/prefix``): every folder directly under the prefix is
  a checkpoint (model = the prefix URI, version = the folder name, checkpoint = the
  folder URI). Its digest is ``s3-etag:<sha256>`` of the sorted (relative key, size,
  ETag) of its objects, read from the listing (nothing is downloaded to notice a change;
  new content under the same folder is a new checkpoint). A folder is offered once its
  newest object is at least ``min_age_s`` old (an upload still in progress is not
  evaluated half-way) and, when ``require_file`` is set (e.g. ``model_index.json``),
  once that file is there.
* :class:`RegistryPoller` (``models:/NAME``): every ``READY`` version of the registered
  model (``MlflowClient.search_model_versions``), offered as ``models:/NAME/VERSION``
  like a ``model_version.created`` webhook; the worker resolves its digest.

Each finding has a stable delivery id (``poll:<checkpoint>#<digest>`` /
``poll:models:/NAME/VERSION``), so polling again offers nothing new.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from bpm_lib.trigger.webhooks import MODEL_VERSION_CREATED

if TYPE_CHECKING:
    from bpm_lib.trigger.service import Offer

log = logging.getLogger(__name__)

ORIGIN_S3 = "poll:s3"
ORIGIN_REGISTRY = "poll:registry"
S3_CHECKPOINT_EVENT = "s3_checkpoint.created"
REGISTRY_PAGE_SIZE = 200


class Intake(Protocol):
    """Where findings go (:class:`~bpm_lib.trigger.service.TriggerService`)."""

    def offer(self, delivery_id: str, *, event: str, origin: str, payload: bytes, model: str, version: str,
              checkpoint: str, digest: str | None = None) -> Offer: ...


@dataclass(frozen=True)
class Finding:
    """A checkpoint a poller saw."""

    delivery_id: str
    event: str
    origin: str
    model: str
    version: str
    checkpoint: str
    digest: str | None = None

    def payload(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")


@dataclass(frozen=True)
class PollReport:
    source: str
    found: int
    accepted: int
    known: int
    deferred: int
    waiting: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class S3Object:
    key: str
    size: int
    etag: str
    last_modified: float


def folder_digest(objects: Iterable[tuple[str, int, str]]) -> str:
    """``s3-etag:<sha256>`` of (relative key, size, ETag) triples, order-independent."""
    h = hashlib.sha256()
    for rel, size, etag in sorted(objects):
        h.update(json.dumps([rel, int(size), etag.strip('"')]).encode("utf-8") + b"\n")
    return f"s3-etag:{h.hexdigest()}"


def group_folders(prefix_key: str, objects: Iterable[S3Object]) -> dict[str, list[S3Object]]:
    """Objects under ``prefix_key/`` grouped by their first path segment (the folder).
    Objects directly under the prefix, folder markers (keys ending in ``/``) and hidden
    folders (``.name``) are left out."""
    base = prefix_key.rstrip("/") + "/" if prefix_key.strip("/") else ""
    folders: dict[str, list[S3Object]] = {}
    for obj in objects:
        if not obj.key.startswith(base) or obj.key.endswith("/"):
            continue
        folder, sep, rest = obj.key[len(base):].partition("/")
        if not sep or not rest or not folder or folder.startswith("."):
            continue
        folders.setdefault(folder, []).append(obj)
    return folders


def _offer_all(source: str, findings: Sequence[Finding], intake: Intake, waiting: int) -> PollReport:
    accepted = known = deferred = 0
    for f in findings:
        offer = intake.offer(f.delivery_id, event=f.event, origin=f.origin, payload=f.payload(), model=f.model,
                             version=f.version, checkpoint=f.checkpoint, digest=f.digest)
        if offer.status == "accepted":
            accepted += 1
        elif offer.status in ("full", "unavailable"):
            deferred = len(findings) - accepted - known
            log.info("%s: %s; %d finding(s) wait for the next poll", source, offer.reason, deferred)
            break
        else:
            known += 1
    report = PollReport(source, len(findings), accepted, known, deferred, waiting)
    log.info("poll %s: %s", source, report.to_dict())
    return report


class S3Poller:
    """New checkpoint folders under an S3 prefix (see the module docstring)."""

    def __init__(self, prefix: str, *, min_age_s: float = 60.0, require_file: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        from bpm_lib.io.storage import split_s3

        self.bucket, key = split_s3(prefix)
        self.key = key.strip("/")
        self.prefix = f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"
        if min_age_s < 0:
            raise ValueError(f"min_age_s must be >= 0, got {min_age_s!r}")
        if require_file is not None and (not require_file or require_file.startswith("/")):
            raise ValueError(f"require_file must be a relative file name, got {require_file!r}")
        self.min_age_s = float(min_age_s)
        self.require_file = require_file
        self._clock = clock

    def list_objects(self) -> list[S3Object]:
        from bpm_lib.io.storage import _client, _with_retries

        client = _client()
        folder = f"{self.key}/" if self.key else ""
        out: list[S3Object] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": folder}
            if token:
                kwargs["ContinuationToken"] = token
            page = _with_retries(lambda kw=kwargs: client.list_objects_v2(**kw), self.prefix)  # type: ignore[misc]
            for obj in page.get("Contents", []):
                modified = obj.get("LastModified")
                stamp = modified.timestamp() if isinstance(modified, datetime) else 0.0
                out.append(S3Object(obj["Key"], int(obj.get("Size", 0)), str(obj.get("ETag", "")), stamp))
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return out

    def scan(self) -> tuple[list[Finding], int]:
        """(ready findings, number of folders not ready yet)."""
        now = self._clock()
        findings: list[Finding] = []
        waiting = 0
        base = f"{self.key}/" if self.key else ""
        for folder, objects in sorted(group_folders(self.key, self.list_objects()).items()):
            rel = [(o.key[len(base) + len(folder) + 1:], o.size, o.etag) for o in objects]
            newest = max(o.last_modified for o in objects)
            if now - newest < self.min_age_s or (
                    self.require_file is not None and self.require_file not in {r for r, _, _ in rel}):
                waiting += 1
                continue
            digest = folder_digest(rel)
            checkpoint = f"{self.prefix}/{folder}"
            findings.append(Finding(f"poll:{checkpoint}#{digest}", S3_CHECKPOINT_EVENT, ORIGIN_S3, self.prefix,
                                    folder, checkpoint, digest))
        return findings, waiting

    def poll(self, intake: Intake) -> PollReport:
        findings, waiting = self.scan()
        return _offer_all(self.prefix, findings, intake, waiting)


class RegistryPoller:
    """New versions of one registered MLflow model (see the module docstring)."""

    def __init__(self, uri: str, *, tracking_uri: str | None = None) -> None:
        name = uri[len("models:/"):] if uri.startswith("models:/") else ""
        if not name or "/" in name or "@" in name:
            raise ValueError(f"uri must be models:/<registered model name>, got {uri!r}")
        self.name = name
        self.tracking_uri = tracking_uri

    def versions(self) -> list[tuple[str, str]]:
        """(version, status) of every version of the model, oldest first."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        from bpm_lib.errors import TrackingError

        client = MlflowClient(tracking_uri=self.tracking_uri)
        quoted = self.name.replace("\\", "\\\\").replace("'", "\\'")
        out: list[tuple[str, str]] = []
        token: str | None = None
        try:
            while True:
                page = client.search_model_versions(f"name = '{quoted}'", max_results=REGISTRY_PAGE_SIZE,
                                                    page_token=token)
                out.extend((str(mv.version), str(mv.status)) for mv in page if mv.name == self.name)
                token = page.token
                if not token:
                    break
        except MlflowException as e:
            raise TrackingError(f"models:/{self.name}: listing versions failed: {e}") from e
        return sorted(out, key=lambda v: int(v[0]))

    def scan(self) -> tuple[list[Finding], int]:
        findings: list[Finding] = []
        waiting = 0
        for version, status in self.versions():
            if status == "PENDING_REGISTRATION":
                waiting += 1
                continue
            if status != "READY":
                continue
            uri = f"models:/{self.name}/{version}"
            findings.append(Finding(f"poll:{uri}", MODEL_VERSION_CREATED, ORIGIN_REGISTRY, self.name, version, uri))
        return findings, waiting

    def poll(self, intake: Intake) -> PollReport:
        findings, waiting = self.scan()
        return _offer_all(f"models:/{self.name}", findings, intake, waiting)


Poller = S3Poller | RegistryPoller


def poller_for(uri: str, *, min_age_s: float = 60.0, require_file: str | None = None,
               tracking_uri: str | None = None) -> Poller:
    """The poller of ``uri``: ``s3://bucket/prefix`` or ``models:/NAME``."""
    if uri.startswith("s3://"):
        return S3Poller(uri, min_age_s=min_age_s, require_file=require_file)
    if uri.startswith("models:/"):
        return RegistryPoller(uri, tracking_uri=tracking_uri)
    raise ValueError(f"uri must be s3://bucket/prefix or models:/NAME, got {uri!r}")
