"""A tiny name -> factory registry (methods, targets, datasets, sources, losses)."""
from __future__ import annotations

import warnings
from typing import Callable, Generic, Iterator, TypeVar

from sskt.errors import SSKTError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; unknown names fail with the list of known ones. ``on_register(name, obj)``,
    if given, is called for every registration (e.g. to tell a class the name it is registered under).

    Registering a name again replaces the earlier entry with a ``UserWarning`` (as timm does), so a notebook
    cell that registers something can be run twice.

    Example:
        >>> LOSSES = Registry("loss")
        >>> @LOSSES.register("l1")
        ... def l1(a, b): return (a - b).abs().mean()
        >>> LOSSES.get("l1") is l1
        True
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     l1_again = LOSSES.register("l1")(lambda a, b: (a - b).abs().sum())
        >>> str(caught[0].message), LOSSES.get("l1") is l1_again
        ("loss 'l1' was registered before; replacing it", True)
    """

    def __init__(self, kind: str, on_register: Callable[[str, T], None] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._on_register = on_register

    def register(self, name: str, stacklevel: int = 2) -> Callable[[T], T]:
        """A decorator that registers its argument under ``name`` (replacing, with a warning, what was there).
        ``stacklevel``: whose line the warning names (2: the decorator's caller; 3 from a function that wraps it)."""

        def add(obj: T) -> T:
            if name in self._items:
                # Not an error: re-running a notebook cell registers the same name again.
                warnings.warn(f"{self.kind} {name!r} was registered before; replacing it", UserWarning,
                              stacklevel=stacklevel)
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
