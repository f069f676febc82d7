"""Where model weights come from: a local folder, an ``s3://`` prefix or a hub id.

:func:`resolve_model_source` turns a source string into something ``from_pretrained``
(or ``torch.load``) accepts:

* a local path (``/models/gdino``, ``./sam``, ``~/w``, ``file:///models/x``): returned as
  is; it must exist;
* ``s3://bucket/prefix``: every object under the prefix is downloaded once, by
  :func:`bpm_lib.io.storage.fetch_to_local`, into an entry of
  ``$BPM_CACHE_DIR/models`` (default ``~/.cache/bpm-eval/models``) and that folder is
  returned; a later call finds the completion marker and downloads nothing.
  ``s3://bucket/key.pth`` naming one object returns that file's local path. The endpoint
  comes from ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, which boto3 honours natively
  (MinIO, moto);
* anything else is a hub id (``IDEA-Research/grounding-dino-tiny``): returned as is, so
  loading uses the Hugging Face cache (``HF_HOME``).

:func:`load_pretrained` wraps a loader so that a model that is not available (offline, not
in the cache, missing files) becomes a :class:`~bpm_lib.errors.ModelLoadError` that says
what is missing and the three ways to provide it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from bpm_lib.errors import ModelLoadError

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def default_cache_dir() -> Path:
    """``$BPM_CACHE_DIR/models`` if set, else ``~/.cache/bpm-eval/models``."""
    root = os.environ.get("BPM_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "bpm-eval"
    return base / "models"


def is_local_source(source: str) -> bool:
    """True when ``source`` is written as a local path (absolute, ``./``, ``../``, ``~``,
    ``file://``) or names something that exists on disk."""
    if source.startswith(("/", "./", "../", "~", "file://")) or source in (".", ".."):
        return True
    return Path(source).exists()


def resolve_model_source(source: str, *, cache_dir: Path | None = None, what: str) -> str:
    """Return a local path or hub id for ``source`` (see the module docstring).

    ``what`` names the model in messages (``"GroundingDINO detector"``). ``cache_dir``
    overrides the download cache root for ``s3://`` sources.
    """
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source must be a non-empty model source string, got {source!r}")
    source = source.strip()
    scheme = _SCHEME.match(source)
    if scheme is not None and scheme.group(1).lower() == "s3":
        return str(_download_s3(source, cache_dir=cache_dir, what=what))
    if scheme is not None and scheme.group(1).lower() != "file":
        raise ValueError(
            f"source {source!r} for {what} has an unsupported scheme {scheme.group(1)!r}; "
            "use a local directory, an s3://bucket/prefix URI or a hub id (org/name)"
        )
    if is_local_source(source):
        path = Path(source.removeprefix("file://")).expanduser()
        if not path.exists():
            raise ModelLoadError(f"{what}: local model path {str(path)!r} does not exist")
        return str(path)
    return source


def _download_s3(uri: str, *, cache_dir: Path | None, what: str) -> Path:
    """Download ``uri`` once through :func:`bpm_lib.io.storage.fetch_to_local` (the one
    S3 download cache of bpm-eval: retries with backoff on throttling, 5xx and dropped
    connections, a completion marker, keys confined to the entry) under ``cache_dir``
    (default :func:`default_cache_dir`); its errors become :class:`ModelLoadError`."""
    from bpm_lib.errors import DataError
    from bpm_lib.io.storage import fetch_to_local

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        local = fetch_to_local(uri, cache_dir=root)
    except (DataError, OSError, ValueError) as e:
        raise ModelLoadError(f"{what}: cannot download {uri} into {root}: {e}") from e
    logger.debug("%s: %s is at %s", what, uri, local)
    return local


def config_digest(config: Any) -> str:
    """Short content hash of a JSON-able config (for model ids and cache keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8")).hexdigest()[:12]


def read_packaged_config(name: str) -> dict[str, Any]:
    """A JSON file shipped in ``bpm_lib/configs`` (tiny model architectures, …)."""
    from importlib import resources

    if not isinstance(name, str) or PurePosixPath(name).name != name or not name.endswith(".json"):
        raise ValueError(f"name must be a bare *.json file name in bpm_lib/configs, got {name!r}")
    ref = resources.files("bpm_lib").joinpath("configs").joinpath(name)
    try:
        data = json.loads(ref.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelLoadError(f"packaged config {name!r} is missing from bpm_lib/configs") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"packaged config {name!r} must hold a JSON object, got {type(data).__name__}")
    return data


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{type(e).__name__}: {text[:300]}"


def _load_errors() -> tuple[type[BaseException], ...]:
    import pickle

    # UnpicklingError: a pickled .bin that torch.load(weights_only=True) refuses (code in it).
    errors: list[type[BaseException]] = [OSError, pickle.UnpicklingError]
    try:
        from huggingface_hub import errors as hf_errors

        errors += [hf_errors.HFValidationError, hf_errors.EntryNotFoundError, hf_errors.RevisionResolutionError]
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        pass
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def missing_model_hint(source: str, what: str) -> str:
    """How to provide ``what`` when ``source`` cannot be loaded."""
    hf_home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
    mode = " (HF_HUB_OFFLINE is set, so the hub is not contacted)" if offline else ""
    return (
        f"{what} {source!r} is not available{mode}. Provide it as one of: "
        f"(1) a local directory holding the save_pretrained files (config.json, *.safetensors, "
        f"processor files), passed as the model source; "
        f"(2) a Hugging Face cache that already contains {source!r}: point HF_HOME at it "
        f"(now {hf_home}), e.g. after `huggingface-cli download {source}` on a connected machine; "
        f"(3) an s3://bucket/prefix URI holding those files (AWS_ENDPOINT_URL for MinIO/other S3)"
    )


def load_pretrained(
    loader: Callable[..., T],
    source: str,
    *,
    what: str,
    download_dir: Path | None = None,
    **kwargs: Any,
) -> T:
    """``loader(resolve_model_source(source), **kwargs)``, with unavailable models turned
    into :class:`ModelLoadError` that names what is missing and how to provide it.

    ``loader`` is e.g. ``AutoModel.from_pretrained``; pass ``use_safetensors=True`` in
    ``kwargs`` so that no pickled checkpoint is ever unpickled. ``download_dir`` is the
    ``cache_dir`` of :func:`resolve_model_source` (``s3://`` downloads); ``kwargs`` go to
    ``loader`` unchanged (including a Hugging Face ``cache_dir``).
    """
    resolved = resolve_model_source(source, cache_dir=download_dir, what=what)
    try:
        return loader(resolved, **kwargs)
    except _load_errors() as e:
        if is_local_source(resolved):
            raise ModelLoadError(
                f"{what}: {resolved!r} (from {source!r}) does not contain a loadable model: "
                f"{_first_line(e)}. It must hold save_pretrained output with safetensors weights "
                "(a pickled checkpoint is only read as plain tensors, never as code)."
            ) from e
        raise ModelLoadError(f"{missing_model_hint(source, what)}. Cause: {e}") from e


def load_model_and_processor(
    model: Any,
    processor: Any,
    model_id: str | None,
    *,
    model_loader: Callable[..., Any] | None,
    processor_loader: Callable[..., Any] | None,
    what: str,
    cache_dir: str | Path | None,
    revision: str | None,
    dtype: Any,
) -> tuple[Any, Any, str]:
    """(model, processor, model id) from a source string (loaded safely through
    :func:`load_pretrained`, safetensors only) or from an already built model instance
    with its processor and id."""
    if isinstance(model, str):
        if model_loader is None or processor_loader is None:
            raise ValueError(f"{what}: loading from {model!r} needs a model and a processor loader")
        cache = Path(cache_dir) if cache_dir is not None else None
        proc = processor or load_pretrained(processor_loader, model, what=what, download_dir=cache,
                                            revision=revision)
        loaded = load_pretrained(model_loader, model, what=what, download_dir=cache, revision=revision,
                                 use_safetensors=True, dtype=dtype)
        return loaded, proc, model_id or model
    if processor is None:
        raise ValueError("processor is required when model is a built model instance")
    if not model_id:
        raise ValueError("model_id is required when model is a built model instance")
    return model, processor, model_id
