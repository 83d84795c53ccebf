"""Named registries (adapters, stitching methods, model families): strict, like torchvision's.

Registering a name twice is an error, and looking up an unknown name raises an error that lists the close matches.
"""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from .errors import unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, hint: str = ""):
        self.kind, self.hint = kind, hint
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        if name not in self._items:
            raise unknown_name(self.kind, name, self._items, self.hint)
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def values(self) -> list[T]:
        return list(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
