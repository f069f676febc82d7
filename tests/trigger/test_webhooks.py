"""Webhook signature verification and payload reading, checked against MLflow's own signer."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from bpm_lib.trigger.webhooks import (
    DELIVERY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    MalformedDelivery,
    ModelVersionRef,
    Unauthenticated,
    decide,
    model_version_of,
    parse_payload,
    read_headers,
    sign,
    verify_delivery,
    verify_signature,
)

SECRET = "s3cr3t-ü"  # non-ASCII: the key is the secret's UTF-8 bytes, as MLflow does


def mlflow_body(entity: str = "model_version", action: str = "created", **data: object) -> bytes:
    """A body exactly as mlflow.webhooks.delivery builds it (json.dumps of the envelope)."""
    payload = {"entity": entity, "action": action, "timestamp": "2026-01-01T00:00:00+00:00",
               "data": data or {"name": "m", "version": "3", "source": "models:/m-1", "run_id": None,
                                "tags": {}, "description": None}}
    return json.dumps(payload).encode("utf-8")


def headers_for(body: bytes, *, secret: str = SECRET, delivery_id: str | None = None,
                timestamp: int | None = None) -> dict[str, list[str]]:
    delivery_id = delivery_id or str(uuid.uuid4())
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        SIGNATURE_HEADER.lower(): [sign(secret, delivery_id, ts, body)],
        DELIVERY_ID_HEADER.lower(): [delivery_id],
        TIMESTAMP_HEADER.lower(): [ts],
    }


def test_sign_matches_mlflows_own_signer() -> None:
    from mlflow.webhooks.delivery import _generate_hmac_signature

    body = mlflow_body()
    for delivery_id, ts in (("0b6f…".replace("…", "x"), "1700000000"), (str(uuid.uuid4()), str(int(time.time())))):
        ours = sign(SECRET, delivery_id, ts, body)
        assert ours == _generate_hmac_signature(SECRET, delivery_id, ts, body.decode("utf-8"))
        assert ours.startswith("v1,")


def test_valid_delivery_verifies_and_returns_its_headers() -> None:
    body = mlflow_body()
    headers = headers_for(body, delivery_id="abc-123", timestamp=1_700_000_000)
    got = verify_delivery(SECRET, headers, body, now=1_700_000_100, max_skew_s=300)
    assert (got.delivery_id, got.timestamp, got.unix_time) == ("abc-123", "1700000000", 1_700_000_000)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda h, b: (h, b + b" "), id="body-changed"),
        pytest.param(lambda h, b: ({**h, DELIVERY_ID_HEADER.lower(): ["other-id"]}, b), id="delivery-id-changed"),
        pytest.param(lambda h, b: ({**h, TIMESTAMP_HEADER.lower(): ["1700000001"]}, b), id="timestamp-changed"),
        pytest.param(lambda h, b: ({**h, SIGNATURE_HEADER.lower(): ["v1,AAAA"]}, b), id="garbage-signature"),
        pytest.param(lambda h, b: ({**h, SIGNATURE_HEADER.lower(): [h[SIGNATURE_HEADER.lower()][0].replace("v1,", "v2,")]},
                                   b), id="wrong-version"),
        pytest.param(lambda h, b: (headers_for(b, secret="wrong", delivery_id="abc-123", timestamp=1_700_000_000), b),
                     id="wrong-secret"),
    ],
)
def test_tampered_delivery_is_unauthenticated(mutate) -> None:  # type: ignore[no-untyped-def]
    body = mlflow_body()
    headers, body2 = mutate(headers_for(body, delivery_id="abc-123", timestamp=1_700_000_000), body)
    with pytest.raises(Unauthenticated, match="signature does not match"):
        verify_delivery(SECRET, headers, body2, now=1_700_000_000, max_skew_s=300)


def test_missing_signature_is_unauthenticated_and_missing_ids_are_malformed() -> None:
    body = mlflow_body()
    good = headers_for(body)
    for missing, error in ((SIGNATURE_HEADER, Unauthenticated), (DELIVERY_ID_HEADER, MalformedDelivery),
                           (TIMESTAMP_HEADER, MalformedDelivery)):
        headers = {k: v for k, v in good.items() if k != missing.lower()}
        with pytest.raises(error, match="missing"):
            verify_delivery(SECRET, headers, body, now=time.time(), max_skew_s=300)
    with pytest.raises(Unauthenticated):
        verify_delivery(SECRET, {**good, SIGNATURE_HEADER.lower(): ["  "]}, body, now=time.time(), max_skew_s=300)


@pytest.mark.parametrize(("header", "value"), [
    (TIMESTAMP_HEADER, "17e8"), (TIMESTAMP_HEADER, "-5"), (TIMESTAMP_HEADER, ""),
    (TIMESTAMP_HEADER, "1700000000\n"),
    (DELIVERY_ID_HEADER, "has space"), (DELIVERY_ID_HEADER, "x" * 129), (DELIVERY_ID_HEADER, "../etc"),
    (DELIVERY_ID_HEADER, "abc\n"),
])
def test_malformed_header_values(header: str, value: str) -> None:
    body = mlflow_body()
    headers = {**headers_for(body), header.lower(): [value]}
    with pytest.raises(MalformedDelivery, match=header):
        read_headers(headers)


def test_a_header_given_twice_is_malformed() -> None:
    body = mlflow_body()
    headers = headers_for(body)
    headers[DELIVERY_ID_HEADER.lower()] = ["a", "b"]
    with pytest.raises(MalformedDelivery, match="2 times"):
        read_headers(headers)


def test_stale_and_future_timestamps_are_rejected_within_skew_accepted() -> None:
    body = mlflow_body()
    now = 1_800_000_000
    for offset, ok in ((0, True), (-299, True), (299, True), (-301, False), (301, False), (-86_400, False)):
        headers = headers_for(body, timestamp=now + offset)
        if ok:
            verify_delivery(SECRET, headers, body, now=now, max_skew_s=300)
        else:
            with pytest.raises(Unauthenticated, match="allowed skew 300s"):
                verify_delivery(SECRET, headers, body, now=now, max_skew_s=300)
    with pytest.raises(ValueError, match="max_skew_s"):
        verify_delivery(SECRET, headers_for(body), body, now=now, max_skew_s=0)


def test_any_of_several_signatures_may_match_during_secret_rotation() -> None:
    body = mlflow_body()
    headers = headers_for(body, delivery_id="rot-1", timestamp=1_700_000_000)
    good = headers[SIGNATURE_HEADER.lower()][0]
    old = sign("old-secret", "rot-1", "1700000000", body)
    parsed = read_headers({**headers, SIGNATURE_HEADER.lower(): [f"{old} {good}"]})
    assert verify_signature(SECRET, parsed, body)
    assert not verify_signature(SECRET, read_headers({**headers, SIGNATURE_HEADER.lower(): [old]}), body)
    with pytest.raises(MalformedDelivery, match="signatures"):
        read_headers({**headers, SIGNATURE_HEADER.lower(): [" ".join([old] * 9)]})


def test_sign_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="secret"):
        sign("", "id", "1", b"{}")
    with pytest.raises(TypeError, match="body must be bytes"):
        sign("s", "id", "1", "{}")  # type: ignore[arg-type]


@pytest.mark.parametrize(("body", "match"), [
    (b"not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"entity": "model_version", "action": "created"}', "body.data"),
    (b'{"entity": "Model Version", "action": "created", "data": {}}', "body.entity"),
    (b'{"entity": "model_version", "action": 3, "data": {}}', "body.action"),
    (b"[" * 100_000, "not valid JSON"),
])
def test_parse_payload_rejects_malformed_bodies(body: bytes, match: str) -> None:
    with pytest.raises(MalformedDelivery, match=match):
        parse_payload(body)


def test_parse_payload_reads_mlflows_envelope() -> None:
    p = parse_payload(mlflow_body(name="ip2p", version="7", source="runs:/r/ckpt"))
    assert (p.event, p.entity, p.action, p.sent_at) == ("model_version.created", "model_version", "created",
                                                        "2026-01-01T00:00:00+00:00")
    assert model_version_of(p) == ModelVersionRef("ip2p", "7")
    assert model_version_of(p).uri == "models:/ip2p/7"
    alias = parse_payload(mlflow_body("model_version_alias", "created", name="ip2p", alias="champion", version="2"))
    assert model_version_of(alias) == ModelVersionRef("ip2p", "2")


@pytest.mark.parametrize("data", [
    {"version": "1"}, {"name": "", "version": "1"}, {"name": "a/b", "version": "1"}, {"name": "m", "version": "0"},
    {"name": "m", "version": "Production"}, {"name": "m", "version": True}, {"name": "m"}, {"name": 5, "version": "1"},
])
def test_model_version_of_rejects_bad_names_and_versions(data: dict) -> None:
    with pytest.raises(MalformedDelivery):
        model_version_of(parse_payload(mlflow_body(**data)))


def test_decide_ignores_unwatched_events_and_models() -> None:
    events = {"model_version.created"}
    created = parse_payload(mlflow_body(name="ip2p", version="4"))
    assert decide(created, events=events, models=()).ref == ModelVersionRef("ip2p", "4")
    assert decide(created, events=events, models=("ip2p",)).ref == ModelVersionRef("ip2p", "4")
    other_model = decide(created, events=events, models=("other",))
    assert other_model.ref is None and "model 'ip2p' is not watched" in (other_model.reason or "")
    tag_set = parse_payload(mlflow_body("model_version_tag", "set", name="ip2p", version="4", key="k", value="v"))
    d = decide(tag_set, events=events, models=())
    assert d.ref is None and d.event == "model_version_tag.set" and "not watched" in (d.reason or "")
    unknown = parse_payload(mlflow_body("spaceship", "launched", x=1))
    assert decide(unknown, events=events, models=()).ref is None
    # an unknown event is ignored even when its data is not a model version
    assert decide(parse_payload(b'{"entity": "x", "action": "y", "data": {}}'), events=events, models=()).ref is None
