"""ParseCache (atomic per-key JSON files) and CachedParser (hit/miss, which errors are cached)."""

from __future__ import annotations

import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bpm_lib.backends.base import InstructionParser
from bpm_lib.backends.llm_parsers import EndpointError, OpenAIParser
from bpm_lib.backends.parse_schema import (
    PROMPT_VERSION,
    InvalidAnswerError,
    format_answer,
    validate_answer,
)
from bpm_lib.io.parse_cache import CachedParser, ParseCache, parse_cache_key
from bpm_lib.types import ParsedInstruction
from tests.fixtures.chat_server import Reply, chat_server

IDENT = {"parser": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1", "prompt_version": PROMPT_VERSION}
BIKE = "Replace the bike with bear."
BIKE_PARSED = ParsedInstruction("bike", "bear", "replace", position_relation="unchanged")


class ScriptedParser:
    """A parser whose answers are given per instruction (validated like a real LLM's);
    an exception instance as the answer is raised instead. Counts its calls."""

    name = "scripted"

    def __init__(self, answers: dict[str, Any], ident: dict[str, Any] | None = None,
                 prompt_version: str = PROMPT_VERSION) -> None:
        self.answers = answers
        self.ident = ident or {"parser": "scripted", "model": "v1"}
        self.prompt_version = prompt_version
        self.calls = 0

    def identity(self) -> dict[str, Any]:
        return dict(self.ident)

    def parse(self, instruction: str) -> ParsedInstruction:
        self.calls += 1
        answer = self.answers[instruction]
        if isinstance(answer, Exception):
            raise answer
        return validate_answer(answer, instruction)


def bike_answer() -> dict[str, str]:
    return BIKE_PARSED.to_dict()


# --------------------------------------------------------------------------- keys and files


def test_key_depends_on_text_identity_and_prompt_version_only() -> None:
    k = parse_cache_key(BIKE, IDENT, PROMPT_VERSION)
    assert len(k) == 64
    assert parse_cache_key(BIKE, dict(reversed(list(IDENT.items()))), PROMPT_VERSION) == k  # order-free
    assert parse_cache_key(BIKE + " ", IDENT, PROMPT_VERSION) != k
    assert parse_cache_key(BIKE, {**IDENT, "model": "m2"}, PROMPT_VERSION) != k
    assert parse_cache_key(BIKE, IDENT, PROMPT_VERSION + "-next") != k
    with pytest.raises(TypeError, match="instruction"):
        parse_cache_key(3, IDENT, PROMPT_VERSION)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prompt_version"):
        parse_cache_key(BIKE, IDENT, "")
    with pytest.raises(ValueError, match="JSON"):
        parse_cache_key(BIKE, {"x": object()}, PROMPT_VERSION)


def test_put_get_round_trip_and_layout(tmp_path: Path) -> None:
    cache = ParseCache(tmp_path / "c")
    assert cache.get(BIKE, IDENT, PROMPT_VERSION) is None
    path = cache.put(BIKE, IDENT, PROMPT_VERSION, BIKE_PARSED)
    key = parse_cache_key(BIKE, IDENT, PROMPT_VERSION)
    assert path == tmp_path / "c" / key[:2] / f"{key[2:]}.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["status"] == "ok" and record["parser"] == IDENT and record["instruction"] == BIKE
    hit = cache.get(BIKE, IDENT, PROMPT_VERSION)
    assert hit is not None and hit.ok and hit.parsed == BIKE_PARSED
    cache.put("Remove the unicorn.", IDENT, PROMPT_VERSION, error="target_object 'x' is not a phrase")
    err = cache.get("Remove the unicorn.", IDENT, PROMPT_VERSION)
    assert err is not None and not err.ok and err.error == "target_object 'x' is not a phrase"
    assert len(cache) == 2
    assert not list((tmp_path / "c").rglob("*.tmp"))
    with pytest.raises(ValueError, match="exactly one"):
        cache.put(BIKE, IDENT, PROMPT_VERSION)
    with pytest.raises(ValueError, match="exactly one"):
        cache.put(BIKE, IDENT, PROMPT_VERSION, BIKE_PARSED, error="x")


def test_unreadable_or_foreign_records_are_misses(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = ParseCache(tmp_path)
    path = cache.put(BIKE, IDENT, PROMPT_VERSION, BIKE_PARSED)
    path.write_text('{"key": "torn', encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert cache.get(BIKE, IDENT, PROMPT_VERSION) is None
    assert "unreadable" in caplog.text
    record = {"key": parse_cache_key(BIKE, IDENT, PROMPT_VERSION), "instruction": "another text",
              "status": "ok", "parsed": BIKE_PARSED.to_dict()}
    path.write_text(json.dumps(record), encoding="utf-8")
    assert cache.get(BIKE, IDENT, PROMPT_VERSION) is None
    record["instruction"] = BIKE
    record["parsed"] = {**BIKE_PARSED.to_dict(), "edit_type": "teleport"}
    path.write_text(json.dumps(record), encoding="utf-8")
    assert cache.get(BIKE, IDENT, PROMPT_VERSION) is None
    cache.put(BIKE, IDENT, PROMPT_VERSION, BIKE_PARSED)  # a put repairs it
    hit = cache.get(BIKE, IDENT, PROMPT_VERSION)
    assert hit is not None and hit.parsed == BIKE_PARSED


# --------------------------------------------------------------------------- CachedParser


def test_cached_parser_hits_and_misses(tmp_path: Path) -> None:
    inner = ScriptedParser({BIKE: bike_answer()})
    cached = CachedParser(inner, ParseCache(tmp_path))
    assert isinstance(cached, InstructionParser)
    assert cached.identity() == inner.identity() and cached.prompt_version == PROMPT_VERSION
    assert cached.parse(BIKE) == BIKE_PARSED
    assert cached.parse(BIKE) == BIKE_PARSED
    assert inner.calls == 1 and cached.stats() == {"hits": 1, "misses": 1}
    # A new process (new wrapper, same folder) hits too.
    again = CachedParser(ScriptedParser({}), ParseCache(tmp_path))
    assert again.parse(BIKE) == BIKE_PARSED and again.hits == 1


def test_other_identity_or_prompt_version_misses(tmp_path: Path) -> None:
    cache = ParseCache(tmp_path)
    CachedParser(ScriptedParser({BIKE: bike_answer()}), cache).parse(BIKE)
    other_model = ScriptedParser({BIKE: bike_answer()}, ident={"parser": "scripted", "model": "v2"})
    other_prompt = ScriptedParser({BIKE: bike_answer()}, prompt_version="bpm-parse-v0")
    for inner in (other_model, other_prompt):
        wrapper = CachedParser(inner, cache)
        wrapper.parse(BIKE)
        assert inner.calls == 1 and wrapper.stats() == {"hits": 0, "misses": 1}
    assert len(cache) == 3


def test_errors_are_not_cached_by_default(tmp_path: Path) -> None:
    inner = ScriptedParser({BIKE: EndpointError("endpoint http://x failed after 5 attempts")})
    cached = CachedParser(inner, ParseCache(tmp_path))
    for _ in range(2):
        with pytest.raises(EndpointError):
            cached.parse(BIKE)
    inner.answers[BIKE] = InvalidAnswerError("not JSON")
    with pytest.raises(InvalidAnswerError):
        cached.parse(BIKE)
    assert inner.calls == 3 and len(cached.cache) == 0
    inner.answers[BIKE] = bike_answer()  # the endpoint recovered: next run succeeds
    assert cached.parse(BIKE) == BIKE_PARSED and inner.calls == 4


def test_cache_errors_caches_only_deterministic_failures(tmp_path: Path) -> None:
    unicorn = "Remove the bike."
    inner = ScriptedParser({
        unicorn: {**bike_answer(), "edit_type": "remove", "target_object": "none", "source_object": "unicorn"},
        BIKE: EndpointError("endpoint http://x failed after 5 attempts"),
    })
    cached = CachedParser(inner, ParseCache(tmp_path), cache_errors=True)
    with pytest.raises(InvalidAnswerError, match="unicorn"):
        cached.parse(unicorn)
    with pytest.raises(InvalidAnswerError, match=r"unicorn.*\(cached\)"):
        cached.parse(unicorn)
    assert inner.calls == 1
    for _ in range(2):
        with pytest.raises(EndpointError):
            cached.parse(BIKE)
    assert inner.calls == 3  # transport failures are asked again
    # A wrapper without cache_errors ignores the cached error and asks the parser again.
    inner.answers[unicorn] = {**bike_answer(), "edit_type": "remove", "target_object": "none"}
    plain = CachedParser(inner, ParseCache(tmp_path))
    assert plain.parse(unicorn).is_removal and inner.calls == 4


def test_cached_parser_over_a_real_endpoint_asks_once(tmp_path: Path) -> None:
    with chat_server() as server:
        server.default = Reply(content=format_answer({**bike_answer()}))
        with OpenAIParser("m", base_url=server.base_url, api_key="local-placeholder", max_retries=0) as parser:
            cached = CachedParser(parser, ParseCache(tmp_path))
            assert cached.parse(BIKE) == cached.parse(BIKE) == BIKE_PARSED
        assert server.attempts == 1


def test_wrapper_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="parser"):
        CachedParser(object(), ParseCache(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cache"):
        CachedParser(ScriptedParser({}), str(tmp_path))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- concurrency

TEXTS = [f"replace the cat number {i} with a dog" for i in range(12)]


def _writer(directory: str, worker: int) -> int:
    cache = ParseCache(directory)
    written = 0
    for round_ in range(3):
        for i, text in enumerate(TEXTS):
            parsed = ParsedInstruction("cat", "dog", "replace", position_relation="unchanged")
            if (i + worker + round_) % 3 == 0:
                cache.put(text, IDENT, PROMPT_VERSION, error=f"worker {worker} round {round_}")
            else:
                cache.put(text, IDENT, PROMPT_VERSION, parsed)
            seen = cache.get(text, IDENT, PROMPT_VERSION)
            if seen is None:  # a reader must never see a missing or torn record once written
                raise RuntimeError(f"record for {text!r} vanished")
            written += 1
    return written


def test_concurrent_writer_processes_leave_complete_records(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=4, mp_context=ctx) as pool:
        counts = list(pool.map(_writer, [str(tmp_path)] * 4, range(4)))
    assert counts == [3 * len(TEXTS)] * 4
    cache = ParseCache(tmp_path)
    assert len(cache) == len(TEXTS)
    for text in TEXTS:
        entry = cache.get(text, IDENT, PROMPT_VERSION)
        assert entry is not None and (entry.ok or entry.error.startswith("worker "))  # type: ignore[union-attr]
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".json")]


def test_concurrent_threads_share_one_cached_parser(tmp_path: Path) -> None:
    inner = ScriptedParser({BIKE: bike_answer()})
    cached = CachedParser(inner, ParseCache(tmp_path))
    cached.parse(BIKE)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: cached.parse(BIKE), range(40)))
    assert all(r == BIKE_PARSED for r in results)
    assert cached.stats() == {"hits": 40, "misses": 1} and inner.calls == 1
