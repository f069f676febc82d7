"""A small registry per swappable role (STYLE.md rule 2).

A registry maps a name to a factory. Public entry points accept either a registered
name or an already-built instance; an unknown name answers with "did you mean …".
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    name: str
    factory: Callable[..., T]
    description: str


class Registry(Generic[T]):
    """Name → factory for one role (parser, detector, segmenter, embedder, …)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self._entries: dict[str, RegistryEntry[T]] = {}

    def register(self, name: str, description: str = "") -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``factory`` under ``name``."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            self.add(name, factory, description)
            return factory

        return decorator

    def add(self, name: str, factory: Callable[..., T], description: str = "") -> None:
        if not name or name != name.strip():
            raise ValueError(f"{self.role} name must be a non-empty trimmed string, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.role} {name!r} is already registered")
        self._entries[name] = RegistryEntry(name, factory, description or (factory.__doc__ or "").strip().split("\n")[0])

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[RegistryEntry[T]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> RegistryEntry[T]:
        try:
            return self._entries[name]
        except KeyError:
            hint = difflib.get_close_matches(str(name), self._entries, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            known = ", ".join(self.names()) or "(none)"
            raise ValueError(
                f"unknown {self.role} {name!r}{suggestion} Known {self.role}s: {known}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the backend registered as ``name`` with ``kwargs``."""
        return self.get(name).factory(**kwargs)

    def resolve(self, name_or_instance: str | T, **kwargs: Any) -> T:
        """Accept a registered name (built with ``kwargs``) or an instance (returned as is)."""
        if isinstance(name_or_instance, str):
            return self.create(name_or_instance, **kwargs)
        return name_or_instance
