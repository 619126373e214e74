"""A name -> factory registry shared by models and techniques; duplicates raise, unknown names list the known ones."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, TypeVar

from bench.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Plain dict behind a decorator. `what` names the entries in messages ("model", "technique")."""

    def __init__(self, what: str, entry_point_group: str) -> None:
        self.what = what
        self.group = entry_point_group
        self._items: dict[str, T] = {}
        self._entry_points_loaded = False

    def register(self, name: str, obj: T) -> T:
        if name in self._items:
            # A silent overwrite would label one thing's results with another's name.
            raise ValueError(f"{self.what} {name!r} is already registered ({self._items[name]!r}); pick another name")
        self._items[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name in self._items:
                continue
            try:
                self._items[ep.name] = ep.load()
            except Exception as exc:  # a broken third-party plugin must not take the tool down
                raise UserError(f"{self.what} entry point {ep.name!r} ({ep.value}) failed to load: {exc}") from exc

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def get(self, name: str) -> T:
        """Look up by registered name or by a `package.module:object` spec."""
        if ":" in name:  # registered names never contain ':'
            return load_object(name, self.what)
        self._load_entry_points()
        if name not in self._items:
            raise UserError(f"unknown {self.what} {name!r}; known {self.what}s: {', '.join(self.names())}"
                            f" (or give a package.module:object spec)")
        return self._items[name]

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._items[n]) for n in self.names()]


def load_object(spec: str, what: str) -> Any:
    """Import `package.module:object`; any failure is a UserError naming the spec."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"{what} spec {spec!r} must look like package.module:object")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UserError(f"{what} spec {spec!r}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{what} spec {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj

