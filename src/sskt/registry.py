"""A tiny name -> factory registry (methods, targets, datasets, sources, losses)."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from sskt.errors import SSKTError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; unknown names fail with the list of known ones. ``on_register(name, obj)``,
    if given, is called for every registration (e.g. to tell a class the name it is registered under).

    Example:
        >>> LOSSES = Registry("loss")
        >>> @LOSSES.register("l1")
        ... def l1(a, b): return (a - b).abs().mean()
        >>> LOSSES.get("l1") is l1
        True
    """

    def __init__(self, kind: str, on_register: Callable[[str, T], None] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._on_register = on_register

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if self._on_register is not None:
                self._on_register(name, obj)
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise SSKTError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
