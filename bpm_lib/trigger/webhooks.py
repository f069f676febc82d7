"""MLflow model-registry webhooks: signature verification and payload reading (pure logic).

MLflow 3.x (``mlflow/webhooks/delivery.py``) signs each delivery the Standard Webhooks
way:

* headers ``X-MLflow-Delivery-Id`` (a UUID), ``X-MLflow-Timestamp`` (Unix seconds) and,
  when the webhook has a secret, ``X-MLflow-Signature: v1,<base64 HMAC-SHA256>``;
* the HMAC key is the secret's UTF-8 bytes; the signed content is
  ``<delivery id>.<timestamp>.<raw body>``;
* the body is ``{"entity": …, "action": …, "timestamp": ISO-8601, "data": {…}}``; the
  event name is ``<entity>.<action>`` (``model_version.created``,
  ``model_version_alias.created``, …).

Nothing here does I/O: :func:`verify_delivery` checks headers, signature and clock skew,
:func:`parse_payload` reads an authenticated body, :func:`model_version_of` says which
model version (if any) an event asks to evaluate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bpm_lib.errors import BpmError

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"

MODEL_VERSION_CREATED = "model_version.created"
MODEL_VERSION_ALIAS_CREATED = "model_version_alias.created"
# Events that name one model version, so they can start an evaluation.
EVALUABLE_EVENTS = frozenset({MODEL_VERSION_CREATED, MODEL_VERSION_ALIAS_CREATED})

MAX_SIGNATURES = 8
_DELIVERY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_NAME_PART = re.compile(r"^[a-z_]{1,64}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,17}$")


class WebhookRejected(BpmError):
    """A delivery that is answered with an HTTP error; ``status`` is the HTTP status."""

    status = 400


class MalformedDelivery(WebhookRejected):
    """Headers or body are not a well-formed MLflow webhook delivery (HTTP 400)."""

    status = 400


class Unauthenticated(WebhookRejected):
    """Missing or wrong signature, or a timestamp outside the allowed skew (HTTP 401)."""

    status = 401


@dataclass(frozen=True)
class DeliveryHeaders:
    """The three MLflow webhook headers, as received (the timestamp string is signed as is)."""

    delivery_id: str
    timestamp: str
    signatures: tuple[str, ...]

    @property
    def unix_time(self) -> int:
        return int(self.timestamp)


@dataclass(frozen=True)
class WebhookPayload:
    """An authenticated delivery body."""

    entity: str
    action: str
    data: Mapping[str, Any]
    sent_at: str | None = None

    @property
    def event(self) -> str:
        return f"{self.entity}.{self.action}"


@dataclass(frozen=True)
class ModelVersionRef:
    """A registered model version an event asks to evaluate."""

    name: str
    version: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def sign(secret: str, delivery_id: str, timestamp: str | int, body: bytes) -> str:
    """The ``X-MLflow-Signature`` value MLflow sends for this delivery (``v1,<base64>``)."""
    if not isinstance(secret, str) or not secret:
        raise ValueError(f"secret must be a non-empty string, got {type(secret).__name__}")
    if not isinstance(body, bytes | bytearray):
        raise TypeError(f"body must be bytes, got {type(body).__name__}")
    content = f"{delivery_id}.{timestamp}.".encode() + bytes(body)
    digest = hmac.new(secret.encode("utf-8"), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def _single(headers: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = headers.get(name.lower())
    if not values:
        return None
    if len(values) > 1:
        raise MalformedDelivery(f"header {name} is given {len(values)} times")
    return values[0]


def read_headers(headers: Mapping[str, Sequence[str]]) -> DeliveryHeaders:
    """Read the MLflow headers from ``headers`` (lower-cased name → values).

    A missing or empty signature is :class:`Unauthenticated`; a missing or malformed
    delivery id or timestamp is :class:`MalformedDelivery`.
    """
    signature = _single(headers, SIGNATURE_HEADER)
    if signature is None or not signature.strip():
        raise Unauthenticated(f"missing {SIGNATURE_HEADER} header")
    delivery_id = _single(headers, DELIVERY_ID_HEADER)
    if delivery_id is None:
        raise MalformedDelivery(f"missing {DELIVERY_ID_HEADER} header")
    if not _DELIVERY_ID.fullmatch(delivery_id):
        raise MalformedDelivery(f"{DELIVERY_ID_HEADER} must be 1-128 characters of [A-Za-z0-9._:-], got {delivery_id[:140]!r}")
    timestamp = _single(headers, TIMESTAMP_HEADER)
    if timestamp is None:
        raise MalformedDelivery(f"missing {TIMESTAMP_HEADER} header")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise MalformedDelivery(f"{TIMESTAMP_HEADER} must be Unix seconds, got {timestamp[:40]!r}")
    entries = tuple(s for s in signature.split(" ") if s)
    if len(entries) > MAX_SIGNATURES:
        raise MalformedDelivery(f"{SIGNATURE_HEADER} carries {len(entries)} signatures (at most {MAX_SIGNATURES})")
    return DeliveryHeaders(delivery_id, timestamp, entries)


def verify_signature(secret: str, headers: DeliveryHeaders, body: bytes) -> bool:
    """True when one of the ``v1`` signatures matches (constant-time comparison)."""
    expected = sign(secret, headers.delivery_id, headers.timestamp, body).encode("ascii")
    ok = False
    for entry in headers.signatures:
        try:
            candidate = entry.encode("ascii")
        except UnicodeEncodeError:
            continue
        # Compare every entry (no early exit) so timing says nothing about which matched.
        ok = hmac.compare_digest(expected, candidate) or ok
    return ok


def verify_delivery(
    secret: str,
    headers: Mapping[str, Sequence[str]],
    body: bytes,
    *,
    now: float,
    max_skew_s: float,
) -> DeliveryHeaders:
    """Authenticate a delivery: headers present, signature valid, timestamp within
    ``max_skew_s`` of ``now`` (either direction: older deliveries are replays).

    Raises :class:`Unauthenticated` or :class:`MalformedDelivery`.
    """
    if max_skew_s <= 0:
        raise ValueError(f"max_skew_s must be > 0, got {max_skew_s!r}")
    parsed = read_headers(headers)
    if not verify_signature(secret, parsed, body):
        raise Unauthenticated("signature does not match")
    skew = now - parsed.unix_time
    if abs(skew) > max_skew_s:
        raise Unauthenticated(
            f"timestamp {parsed.timestamp} is {abs(skew):.0f}s {'old' if skew > 0 else 'in the future'} "
            f"(allowed skew {max_skew_s:.0f}s)"
        )
    return parsed


def parse_payload(body: bytes) -> WebhookPayload:
    """Read an MLflow webhook body; :class:`MalformedDelivery` when it is not one."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MalformedDelivery(f"body is not valid JSON: {type(e).__name__}") from e
    if not isinstance(data, dict):
        raise MalformedDelivery(f"body must be a JSON object, got {type(data).__name__}")
    entity, action, payload = data.get("entity"), data.get("action"), data.get("data")
    for key, value in (("entity", entity), ("action", action)):
        if not isinstance(value, str) or not _NAME_PART.fullmatch(value):
            raise MalformedDelivery(f"body.{key} must be a lower-case event part, got {str(value)[:60]!r}")
    if not isinstance(payload, dict):
        raise MalformedDelivery(f"body.data must be an object, got {type(payload).__name__}")
    sent_at = data.get("timestamp")
    return WebhookPayload(str(entity), str(action), payload, sent_at if isinstance(sent_at, str) else None)


def model_version_of(payload: WebhookPayload) -> ModelVersionRef:
    """The model version named by an evaluable event (``data.name`` and ``data.version``)."""
    if payload.event not in EVALUABLE_EVENTS:
        raise ValueError(f"event {payload.event!r} does not name a model version to evaluate")
    name, version = payload.data.get("name"), payload.data.get("version")
    if not isinstance(name, str) or not name.strip() or len(name) > 256 or "/" in name or "@" in name:
        raise MalformedDelivery(f"body.data.name must be a registered model name, got {str(name)[:80]!r}")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise MalformedDelivery(f"body.data.version must be a positive version number, got {str(version)[:40]!r}")
    return ModelVersionRef(name, version)


@dataclass(frozen=True)
class Decision:
    """What to do with an authenticated delivery: evaluate ``ref``, or ignore (``reason``)."""

    event: str
    ref: ModelVersionRef | None
    reason: str | None = None


def decide(payload: WebhookPayload, *, events: Collection[str], models: Collection[str]) -> Decision:
    """Evaluate or ignore: the event must be one of ``events``; the model one of
    ``models`` (every model when ``models`` is empty)."""
    event = payload.event
    if event not in events:
        return Decision(event, None, f"event {event!r} is not watched (watched: {', '.join(sorted(events))})")
    ref = model_version_of(payload)
    if models and ref.name not in models:
        return Decision(event, None, f"model {ref.name!r} is not watched")
    return Decision(event, ref)
