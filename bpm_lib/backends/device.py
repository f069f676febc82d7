"""Choosing the torch device and dtype for a backend, the same way everywhere.

``"auto"`` picks CUDA when it is available, else the CPU; an explicit request is honoured
or refused with a clear error (never silently replaced by another device). torch is
imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import logging
import os
import re
from typing import TYPE_CHECKING

from bpm_lib.errors import ConfigError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# torch's OpenMP worker threads busy-wait between parallel regions by default. Where the
# cores are shared (kfp.local runs tasks side by side, CI, laptops) the spinning threads
# starve the thread that has the work: the tiny-random detector + segmenter ran ~25x
# slower in wall time with 2 threads than with 1 on a loaded 2-core machine, and no slower
# than 1 thread with PASSIVE. libgomp reads this when torch loads it, so it is
# set here, before any backend imports torch; a value already in the environment is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_CUDA_INDEX = re.compile(r"cuda:(\d+)")

# Accepted spellings of each dtype (lower case).
_DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def pick_device(preference: str = "auto") -> str:
    """Return the torch device string to run on.

    ``"auto"``: ``"cuda"`` if a CUDA device is available, else ``"cpu"``. ``"cpu"``,
    ``"cuda"`` and ``"cuda:N"`` are returned as given when usable; asking for CUDA on a
    machine without it (or for a device index it does not have) raises
    :class:`~bpm_lib.errors.ConfigError`. Anything else raises ``ValueError``.
    """
    if not isinstance(preference, str):
        raise TypeError(f"preference must be a device string, got {type(preference).__name__}")
    pref = preference.strip().lower()
    if pref == "cpu":
        return "cpu"
    index_match = _CUDA_INDEX.fullmatch(pref)
    if pref not in ("auto", "cuda") and index_match is None:
        raise ValueError(f"preference must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {preference!r}")

    import torch

    available = torch.cuda.is_available()
    if pref == "auto":
        device = "cuda" if available else "cpu"
        logger.debug("device auto -> %s", device)
        return device
    if not available:
        raise ConfigError(f"device {preference!r} was requested but CUDA is not available on this machine")
    if index_match is not None:
        index = int(index_match.group(1))
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"device {preference!r} was requested but this machine has {count} CUDA device(s)")
    return pref


def pick_dtype(device: str, preference: str = "auto") -> torch.dtype:
    """Return the torch dtype for weights and activations on ``device``.

    ``"auto"``: bfloat16 on a CUDA device that supports it (compute capability ≥ 8.0),
    else float16 on CUDA, and float32 on the CPU. An explicit ``"float32"``/``"fp32"``, ``"float16"``/``"fp16"``
    or ``"bfloat16"``/``"bf16"`` is honoured; anything else raises ``ValueError``.
    """
    if not isinstance(device, str) or not device:
        raise ValueError(f"device must be a device string such as 'cpu' or 'cuda:0', got {device!r}")
    if not isinstance(preference, str):
        raise TypeError(f"preference must be a dtype name, got {type(preference).__name__}")
    pref = preference.strip().lower()
    if pref != "auto" and pref not in _DTYPE_NAMES:
        known = ", ".join(["auto", *sorted(_DTYPE_NAMES)])
        raise ValueError(f"preference must be one of {known}; got {preference!r}")

    import torch

    if pref != "auto":
        return getattr(torch, _DTYPE_NAMES[pref])  # type: ignore[no-any-return]
    try:
        kind = torch.device(device).type
    except RuntimeError as e:
        raise ValueError(f"device must be a torch device string such as 'cpu' or 'cuda:0', got {device!r}") from e
    if kind == "cuda":
        # bf16 runs natively from compute capability 8.0 (Ampere) on.
        major, _minor = torch.cuda.get_device_capability(torch.device(device))
        return torch.bfloat16 if major >= 8 else torch.float16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` → ``"float32"`` (for identities and logs)."""
    return str(dtype).removeprefix("torch.")
