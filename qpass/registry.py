"""One registry type for every pluggable thing in qpass.

Built-ins register by decorator::

    @OBSERVERS.register("minmax")
    class MinMaxObserver(Observer): ...

Third-party plugins arrive through the entry-point group named by the registry
(``qpass.observers``, ``qpass.policies``, ``qpass.passes``, ``qpass.kernels``,
``qpass.recipes``, ``qpass.models``); they are loaded the first time a name is looked up
that the built-ins do not have. An unknown name lists the known ones.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class Registry(Generic[T]):
    """A name -> object table with decorator registration and entry-point plugins."""

    def __init__(self, kind: str, entry_point_group: str) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._plugins_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` adds the decorated object."""

        def add(obj: T) -> T:
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: T) -> None:
        if not name or name != name.strip():
            raise ValueError(f"{self.kind} name {name!r} must be a non-empty word")
        if name in self._items and self._items[name] is not obj:
            raise ValueError(
                f"{self.kind} {name!r} is already registered as {self._items[name]!r}; "
                "choose another name or unregister the old one first"
            )
        self._items[name] = obj

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._items:
            self._load_plugins()
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "(none)"
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise KeyError(
                f"unknown {self.kind} {name!r}. Known {self.kind}s: {known}.{hint} "
                f"Plugins register through the {self.entry_point_group!r} entry-point group."
            )
        return self._items[name]

    def name_of(self, obj: object) -> str:
        """The name ``obj`` (or its class) is registered under; ``KeyError`` if none."""
        for _ in range(2):  # a plugin's class may be used before its entry point was loaded
            for name, item in self._items.items():
                if item is obj or item is type(obj):
                    return name
            if self._plugins_loaded:
                break
            self._load_plugins()
        raise KeyError(f"{obj!r} is not a registered {self.kind}; register its class with "
                       f"@{self.kind.upper()}S.register(name) so recipes can name it")

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._items or name in self.names())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in metadata.entry_points(group=self.entry_point_group):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break qpass itself
                log.warning("qpass: could not load %s plugin %r (%s): %s",
                            self.kind, ep.name, ep.value, exc)
                continue
            if ep.name not in self._items:
                self._items[ep.name] = obj
