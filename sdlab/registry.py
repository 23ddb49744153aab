"""A tiny name -> object registry with one decorator, used for samplers, schedules and more."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class UnknownNameError(ValueError):
    """Raised for a name that is not registered; the message lists the valid ones."""


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any
    description: str
    paper: str = ""
    info: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Maps names to callables; `register` is the one way in, `get` the one way out."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(
        self, name: str | None = None, *, paper: str = "", description: str = "", **info: Any
    ) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            key = name or obj.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            doc = (obj.__doc__ or "").strip().splitlines()
            summary = description or (doc[0] if doc else "")
            self._entries[key] = Entry(key, obj, summary, paper, info)
            return obj

        return deco

    def get(self, name: str) -> Any:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries
