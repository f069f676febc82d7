"""On-disk cache of instruction parses (BPM_SPEC §2: cached by instruction text, parser
identity and prompt version).

Layout: one small JSON file per key, ``<dir>/<key[:2]>/<key[2:]>.json``, where the key is
the sha256 of the canonical JSON of ``{"instruction", "parser", "prompt_version"}``.
Each file is written to a unique temporary name in the same folder, fsynced, then
renamed over the target (``os.replace`` is atomic on POSIX and Windows), so concurrent
processes and threads may read and write the same cache: a reader sees either no file
or a complete one, and two writers of one key leave one complete record (the last
rename wins; both hold the same kind of content). No locks, no database. A file that is
unreadable or does not describe its key (a torn copy from another tool, a hash
collision) is treated as a miss and rewritten on the next ``put``.

:class:`CachedParser` wraps any :class:`~bpm_lib.backends.base.InstructionParser`:
successful parses are cached; failures are *not* cached by default, so an endpoint that
was down or rate-limited is asked again on the next run. With ``cache_errors=True`` the
deterministic failures — :class:`~bpm_lib.backends.parse_schema.InvalidAnswerError`,
i.e. the model answered and its answer was invalid or a refusal — are cached too and
raised again on a hit without asking the model; transport failures never are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bpm_lib.backends.base import InstructionParser
from bpm_lib.backends.parse_schema import InvalidAnswerError
from bpm_lib.types import ParsedInstruction

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1


def parse_cache_key(instruction: str, parser_identity: Mapping[str, Any], prompt_version: str) -> str:
    """sha256 hex of the canonical JSON of (instruction text, parser identity, prompt version)."""
    if not isinstance(instruction, str):
        raise TypeError(f"instruction must be a string, got {type(instruction).__name__}")
    if not isinstance(parser_identity, Mapping):
        raise TypeError(f"parser_identity must be a mapping, got {type(parser_identity).__name__}")
    if not isinstance(prompt_version, str) or not prompt_version:
        raise ValueError(f"prompt_version must be a non-empty string, got {prompt_version!r}")
    try:
        payload = json.dumps(
            {"instruction": instruction, "parser": parser_identity, "prompt_version": prompt_version},
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
            allow_nan=False,
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"parser_identity must be JSON-serialisable, got {dict(parser_identity)!r}: {e}") from e
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedParse:
    """One cache record: a parse, or the text of a (deterministic) parse error."""

    key: str
    parsed: ParsedInstruction | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.parsed is not None


class ParseCache:
    """Parse results on disk under ``directory`` (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"ParseCache({str(self.directory)!r})"

    def path_for(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"key must be a sha256 hex digest, got {key!r}")
        return self.directory / key[:2] / f"{key[2:]}.json"

    def get(self, instruction: str, parser_identity: Mapping[str, Any], prompt_version: str) -> CachedParse | None:
        """The cached record for this (instruction, parser, prompt version), or ``None``."""
        key = parse_cache_key(instruction, parser_identity, prompt_version)
        path = self.path_for(key)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            logger.warning("parse cache: ignoring unreadable %s: %s", path, e)
            return None
        try:
            if not isinstance(record, dict) or record.get("key") != key or record.get("instruction") != instruction:
                raise ValueError("record does not describe its key")
            if record.get("status") == "ok":
                return CachedParse(key, ParsedInstruction.from_dict(record["parsed"]), None)
            if record.get("status") == "error" and isinstance(record.get("error"), str):
                return CachedParse(key, None, record["error"])
            raise ValueError(f"unknown status {record.get('status')!r}")
        except (KeyError, TypeError, ValueError) as e:
            logger.warning("parse cache: ignoring invalid record %s: %s", path, e)
            return None

    def put(
        self,
        instruction: str,
        parser_identity: Mapping[str, Any],
        prompt_version: str,
        parsed: ParsedInstruction | None = None,
        *,
        error: str | None = None,
    ) -> Path:
        """Store a parse (``parsed``) or an error text (``error``), exactly one of them."""
        if (parsed is None) == (error is None):
            raise ValueError("put needs exactly one of parsed= or error=")
        if parsed is not None and not isinstance(parsed, ParsedInstruction):
            raise TypeError(f"parsed must be a ParsedInstruction, got {type(parsed).__name__}")
        if error is not None and (not isinstance(error, str) or not error):
            raise ValueError(f"error must be a non-empty string, got {error!r}")
        key = parse_cache_key(instruction, parser_identity, prompt_version)
        record = {
            "format": CACHE_FORMAT,
            "key": key,
            "instruction": instruction,
            "parser": dict(parser_identity),
            "prompt_version": prompt_version,
            "status": "ok" if parsed is not None else "error",
            "parsed": parsed.to_dict() if parsed is not None else None,
            "error": error,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(record, fh, sort_keys=True, ensure_ascii=False, allow_nan=False)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return path

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("??/*.json"))


class CachedParser:
    """An :class:`~bpm_lib.backends.base.InstructionParser` that consults a
    :class:`ParseCache` first. ``identity()`` and ``prompt_version`` are the wrapped
    parser's (the cache does not change results). ``hits``/``misses`` count lookups;
    ``cache_errors`` (module docstring) also caches deterministic failures."""

    def __init__(self, parser: InstructionParser, cache: ParseCache, *, cache_errors: bool = False) -> None:
        if not isinstance(parser, InstructionParser):
            raise TypeError(f"parser must implement InstructionParser, got {type(parser).__name__}")
        if not isinstance(cache, ParseCache):
            raise TypeError(f"cache must be a ParseCache, got {type(cache).__name__}")
        self.parser = parser
        self.cache = cache
        self.cache_errors = bool(cache_errors)
        self.name = parser.name
        self.prompt_version = parser.prompt_version
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CachedParser({self.parser!r}, {self.cache!r})"

    def identity(self) -> dict[str, Any]:
        return self.parser.identity()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses}

    def _count(self, hit: bool) -> None:
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1

    def parse(self, instruction: str) -> ParsedInstruction:
        identity = self.parser.identity()
        entry = self.cache.get(instruction, identity, self.prompt_version)
        if entry is not None and (entry.ok or self.cache_errors):
            self._count(hit=True)
            if entry.parsed is not None:
                return entry.parsed
            raise InvalidAnswerError(f"{entry.error} (cached)")
        self._count(hit=False)
        try:
            parsed = self.parser.parse(instruction)
        except InvalidAnswerError as e:
            if self.cache_errors:
                self.cache.put(instruction, identity, self.prompt_version, error=str(e))
            raise
        # Any other error (endpoint trouble: EndpointError) propagates uncached.
        self.cache.put(instruction, identity, self.prompt_version, parsed)
        return parsed
