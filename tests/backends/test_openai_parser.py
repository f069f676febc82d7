"""OpenAIParser over real HTTP against a local scriptable chat-completions server."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator

import pytest

from bpm_lib.backends.base import PARSERS, InstructionParser
from bpm_lib.backends.llm_parsers import (
    EndpointError,
    OpenAIParser,
    backoff_delay,
    redact_url,
    retry_after_seconds,
)
from bpm_lib.backends.parse_schema import (
    ANSWER_SCHEMA,
    PROMPT_VERSION,
    InvalidAnswerError,
    format_answer,
)
from bpm_lib.errors import ConfigError, ParseError
from tests.fixtures.chat_server import ChatServer, Reply, chat_server
from tests.fixtures.servers import free_port

KEY = "sk-test-SECRET-0123456789abcdef"
BIKE = "Replace the bike with bear."
BIKE_ANSWER = format_answer({
    "edit_type": "replace", "source_object": "bike", "target_object": "bear", "anchor_object": "none",
    "added_object": "none", "size_relation": "none", "position_relation": "unchanged",
})


@pytest.fixture()
def server() -> Iterator[ChatServer]:
    with chat_server() as srv:
        yield srv


def make_parser(server: ChatServer, **kw: object) -> OpenAIParser:
    opts: dict[str, object] = {"model": "test-model", "base_url": server.base_url, "api_key": KEY,
                               "timeout": 5.0, "max_retries": 3, "backoff_base": 0.01, "backoff_max": 0.05}
    opts.update(kw)
    return OpenAIParser(**opts)  # type: ignore[arg-type]


def test_success_sends_a_strict_schema_request_at_temperature_zero(server: ChatServer) -> None:
    server.queue(Reply(content=BIKE_ANSWER))
    with make_parser(server) as parser:
        assert isinstance(parser, InstructionParser)
        parsed = parser.parse(BIKE)
    assert (parsed.source_object, parsed.target_object, parsed.edit_type) == ("bike", "bear", "replace")
    assert server.attempts == 1
    req = server.requests[0]
    body = req.body or {}
    assert body["model"] == "test-model"
    assert body["temperature"] == 0
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["strict"] is True
    assert body["response_format"]["json_schema"]["schema"] == ANSWER_SCHEMA
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][-1]["content"].endswith(BIKE)
    assert req.headers.get("Authorization") == f"Bearer {KEY}"


def test_json_schema_rejected_falls_back_to_json_object(server: ChatServer, caplog: pytest.LogCaptureFixture) -> None:
    server.reject_json_schema = True
    server.queue(Reply(content=BIKE_ANSWER), Reply(content=BIKE_ANSWER))
    with make_parser(server, max_retries=0) as parser, caplog.at_level(logging.WARNING):
        assert parser.parse(BIKE).target_object == "bear"
        assert parser.active_response_format == "json_object"
        assert parser.parse("replace the bike with a bear").target_object == "bear"
    formats = [(r.body or {})["response_format"]["type"] for r in server.requests]
    # one rejected json_schema request, then json_object for this and later instructions
    assert formats == ["json_schema", "json_object", "json_object"]
    assert "falling back to json_object" in caplog.text


def test_429_then_success_honours_retry_after(server: ChatServer) -> None:
    server.queue(Reply(status=429, headers={"Retry-After": "0.3"}), Reply(content=BIKE_ANSWER))
    with make_parser(server, backoff_max=1.0) as parser:
        t0 = time.monotonic()
        assert parser.parse(BIKE).source_object == "bike"
        elapsed = time.monotonic() - t0
    assert server.attempts == 2
    gap = server.requests[1].at - server.requests[0].at
    assert gap >= 0.29, f"Retry-After 0.3 s not honoured (gap {gap:.3f}s)"
    assert elapsed < 5


def test_500_every_time_fails_after_bounded_retries(server: ChatServer) -> None:
    server.default = Reply(status=500, error_message="upstream exploded")
    with make_parser(server, max_retries=3) as parser:
        t0 = time.monotonic()
        with pytest.raises(EndpointError) as info:
            parser.parse(BIKE)
        elapsed = time.monotonic() - t0
    assert server.attempts == 4
    msg = str(info.value)
    assert f"endpoint {server.base_url} failed after 4 attempts" in msg
    assert "500" in msg and "upstream exploded" in msg
    assert isinstance(info.value, ParseError)
    assert elapsed < 5  # 3 backoffs of at most 0.05 s


def test_timeouts_are_retried_then_fail(server: ChatServer) -> None:
    server.default = Reply(content=BIKE_ANSWER, delay=3.0)
    with make_parser(server, timeout=0.3, max_retries=1) as parser:
        t0 = time.monotonic()
        with pytest.raises(EndpointError, match="failed after 2 attempts: APITimeoutError"):
            parser.parse(BIKE)
        elapsed = time.monotonic() - t0
    assert server.attempts == 2
    assert elapsed < 2.5


def test_endpoint_down_fails_fast_naming_base_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    parser = OpenAIParser("m", base_url=url, api_key=KEY, max_retries=2, backoff_base=0.01, backoff_max=0.05)
    t0 = time.monotonic()
    with pytest.raises(EndpointError) as info:
        parser.parse(BIKE)
    assert time.monotonic() - t0 < 5
    assert f"endpoint {url} failed after 3 attempts: APIConnectionError" in str(info.value)
    parser.close()


def test_refusal_is_a_parse_error(server: ChatServer) -> None:
    server.queue(Reply(content=None, refusal="I can't help with that."))
    with make_parser(server) as parser, pytest.raises(InvalidAnswerError, match=r"refused.*can't help"):
        parser.parse(BIKE)
    assert server.attempts == 1  # not retried


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(content="The source object is the bike and the target is a bear."), "not JSON"),
        (Reply(content=BIKE_ANSWER.replace('"bear"', '"unicorn"')), "not a phrase of the instruction"),
        (Reply(content=BIKE_ANSWER[:-1] + ', "note": "hi"}'), "unexpected keys"),
        (Reply(content=""), "empty answer"),
        (Reply(content=BIKE_ANSWER[:40], finish_reason="length"), "cut off"),
    ],
)
def test_invalid_answers_are_parse_errors(server: ChatServer, reply: Reply, reason: str) -> None:
    server.queue(reply)
    with make_parser(server) as parser, pytest.raises(InvalidAnswerError, match=reason):
        parser.parse(BIKE)
    assert server.attempts == 1


def test_malformed_http_bodies_are_retried_then_succeed(server: ChatServer) -> None:
    server.queue(
        Reply(status=502, body="<html>bad gateway</html>"),
        Reply(status=200, body='{"choices": [{"message": '),
        Reply(content=BIKE_ANSWER),
    )
    with make_parser(server) as parser:
        assert parser.parse(BIKE).edit_type == "replace"
    assert server.attempts == 3


def test_malformed_body_every_time_is_an_endpoint_error(server: ChatServer) -> None:
    server.default = Reply(status=200, body="this is not json")
    with make_parser(server, max_retries=1) as parser, pytest.raises(EndpointError, match="after 2 attempts"):
        parser.parse(BIKE)
    server.default = Reply(status=200, body='{"id": "x", "choices": []}')
    with make_parser(server) as parser, pytest.raises(EndpointError, match="without choices"):
        parser.parse(BIKE)


def test_client_errors_are_not_retried_and_never_show_the_key(
    server: ChatServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.default = Reply(status=401, error_message="bad key", echo_authorization=True)
    with make_parser(server) as parser, caplog.at_level(logging.DEBUG):
        with pytest.raises(EndpointError) as info:
            parser.parse(BIKE)
        ident = json.dumps(parser.identity())
        text = f"{info.value!s} {info.value!r} {ident} {parser!r} {caplog.text}"
    assert server.attempts == 1
    assert "401" in str(info.value) and "Incorrect API key provided" in str(info.value)
    assert KEY not in text and "SECRET" not in text
    assert info.value.__cause__ is None


def test_key_never_in_retry_logs_or_final_error(server: ChatServer, caplog: pytest.LogCaptureFixture) -> None:
    server.default = Reply(status=503, error_message="overloaded", echo_authorization=True)
    with make_parser(server, max_retries=2) as parser, caplog.at_level(logging.DEBUG):
        with pytest.raises(EndpointError) as info:
            parser.parse(BIKE)
    assert server.attempts == 3
    assert "retrying" in caplog.text
    assert KEY not in caplog.text and KEY not in str(info.value) and "SECRET" not in str(info.value)


def test_identity_and_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "https://user:pw@llm.example.com/v1/?api-key=zzz")
    monkeypatch.setenv("BPM_PARSER_MODEL", "my-model")
    parser = PARSERS.create("openai")
    assert isinstance(parser, OpenAIParser)
    assert parser.identity() == {
        "parser": "openai", "model": "my-model", "base_url": "https://llm.example.com/v1",
        "prompt_version": PROMPT_VERSION,
    }
    monkeypatch.delenv("OPENAI_BASE_URL")
    monkeypatch.delenv("BPM_PARSER_MODEL")
    default = OpenAIParser()
    assert default.identity()["base_url"] == "https://api.openai.com/v1"
    assert default.identity()["model"] == "gpt-4o-mini"


def test_available_follows_the_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert OpenAIParser.available() is False
    assert "OPENAI_API_KEY" in OpenAIParser.unavailable_reason()
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        PARSERS.create("openai", model="m")
    monkeypatch.setenv("OPENAI_API_KEY", "placeholder")
    assert OpenAIParser.available() is True


def test_missing_key_is_a_config_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_LLM_KEY", raising=False)
    with pytest.raises(ConfigError, match="LOCAL_LLM_KEY"):
        OpenAIParser("m", base_url="http://127.0.0.1:1/v1", api_key_env="LOCAL_LLM_KEY")
    monkeypatch.setenv("LOCAL_LLM_KEY", "placeholder")
    assert OpenAIParser("m", base_url="http://127.0.0.1:1/v1", api_key_env="LOCAL_LLM_KEY").model == "m"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_url": "ftp://x/v1"}, "base_url"),
        ({"max_retries": -1}, "max_retries"),
        ({"timeout": 0}, "timeout"),
        ({"response_format": "yaml"}, "response_format"),
        ({"backoff_base": -1}, "backoff_base"),
        ({"model": " "}, "model"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs: dict[str, object], match: str) -> None:
    opts: dict[str, object] = {"model": "m", "base_url": "http://127.0.0.1:1/v1", "api_key": KEY}
    opts.update(kwargs)
    with pytest.raises(ValueError, match=match):
        OpenAIParser(**opts)  # type: ignore[arg-type]


def test_retry_after_parsing() -> None:
    assert retry_after_seconds({"Retry-After": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({"retry-after": "-3"}) is None
    assert retry_after_seconds({}) is None and retry_after_seconds(None) is None


def test_backoff_is_exponential_jittered_and_capped() -> None:
    rng = random.Random(0)
    delays = [backoff_delay(a, 1.0, 5.0, rng) for a in (1, 2, 3, 4, 5)]
    for attempt, d in zip((1, 2, 3, 4, 5), delays, strict=True):
        full = min(5.0, 2.0 ** (attempt - 1))
        assert 0.5 * full <= d <= full
    assert backoff_delay(1, 1.0, 5.0, rng, retry_after=3.0) == 3.0
    assert backoff_delay(1, 1.0, 5.0, rng, retry_after=60.0) == 5.0
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(0, 1.0, 5.0, rng)


def test_redact_url_drops_credentials() -> None:
    assert redact_url("https://u:p@h.example:8443/v1/?key=k#f") == "https://h.example:8443/v1"
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
