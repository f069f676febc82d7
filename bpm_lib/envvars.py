"""Integer settings read from environment variables (retry counts, limits, threads)."""

from __future__ import annotations

import os


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    """``int($name)``, or ``default`` when it is unset or empty. A value that is not an
    integer, or below ``minimum`` (when given), is a ValueError naming the variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value
