"""The plugin registry (a dict behind a decorator) and loading of `package.module:object` and `file.py:object` specs."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, TypeVar

from bench.api.errors import PluginImportError, UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Plain dict behind a decorator. `what` names the entries in messages ("model", "technique").

    `builtin` is the package whose modules register the built-in entries; it is imported on first
    lookup. A module there whose own import fails is handed to `on_broken(module, exc)`, which may
    register a stand-in (techniques do: an entry that says why it cannot run), so one broken plugin
    never takes the others down.
    """

    def __init__(self, what: str, entry_point_group: str, builtin: str | None = None,
                 on_broken: Callable[[str, BaseException], None] | None = None) -> None:
        self.what = what
        self.group = entry_point_group
        self.builtin = builtin
        self.on_broken = on_broken
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, obj: T) -> T:
        if name in self._items:
            # A silent overwrite would label one thing's results with another's name.
            raise ValueError(f"{self.what} {name!r} is already registered ({self._items[name]!r}); pick another name")
        self._items[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def load(self) -> None:
        """Import the built-in package (every public module in it) and the entry points, once."""
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self.builtin) if self.builtin else None
        if package is not None and not getattr(package, "ACCELBENCH_BUILTIN", False):
            # e.g. onnxruntime puts its own transformers/ (which holds a `models` package) on sys.path
            raise RuntimeError(f"import {self.builtin!r} found {getattr(package, '__file__', package)}, not "
                               f"accelbench's {self.what}s package; call bench.api.load_registries() before "
                               f"importing libraries that add folders to sys.path")
        for info in pkgutil.iter_modules(getattr(package, "__path__", [])):
            if info.name.startswith("_"):
                continue
            module = f"{self.builtin}.{info.name}"
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - an optional dependency missing, a bug in a plugin
                if self.on_broken is None:
                    raise
                self.on_broken(module, exc)
        for ep in entry_points(group=self.group):
            if ep.name in self._items:
                continue
            try:
                self._items[ep.name] = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken third-party plugin must not take the tool down
                if self.on_broken is None:
                    raise UserError(f"{self.what} entry point {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
                self.on_broken(ep.name, exc)

    def names(self) -> list[str]:
        self.load()
        return sorted(self._items)

    def get(self, name: str) -> T:
        """Look up by registered name or by a `package.module:object` spec."""
        if ":" in name:  # registered names never contain ':'
            return load_object(name, self.what, self.on_broken)
        self.load()
        if name not in self._items:
            raise UserError(f"unknown {self.what} {name!r}; known {self.what}s: {', '.join(self.names())}"
                            f" (or give a package.module:object spec)")
        return self._items[name]

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._items[n]) for n in self.names()]

    def names_loaded(self) -> list[str]:
        """Names registered so far, without importing anything."""
        return list(self._items)

    def registered(self) -> list[T]:
        """Entries registered so far, without importing anything (to match a factory to its spec)."""
        return list(self._items.values())


def load_object(spec: str, what: str, on_broken: Callable[[str, BaseException], Any] | None = None) -> Any:
    """Import `package.module:object` or `path/to/file.py:object`. A module that does not exist is a
    UserError naming the spec; a module that exists but fails to import (an optional dependency
    missing) goes to `on_broken` when given, whose return value stands in for the object."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"{what} spec {spec!r} must look like package.module:object or path/to/file.py:object")
    try:
        module = import_plugin(module_name)
    except UserError:
        raise
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise UserError(f"{what} spec {spec!r}: cannot import module {module_name!r}: {exc}") from exc
        if on_broken is None:   # the module is there; something it imports is not
            raise PluginImportError(f"{what} spec {spec!r}: cannot import module {module_name!r}: {exc}") from exc
        return on_broken(spec, exc)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's module; sys.exit() there must not end the run
        if on_broken is None or isinstance(exc, SystemExit):
            what_failed = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else \
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
            raise PluginImportError(f"{what} spec {spec!r}: cannot import module {module_name!r}: "
                                    f"{what_failed}") from exc
        return on_broken(spec, exc)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{what} spec {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


# Modules of the user's that this process imported through a spec, in order. A worker process
# imports the same ones before it reads anything, so a model or technique that a user's module
# registers as a side effect is known there too.
_PLUGINS: list[str] = []


def import_plugin(module: str) -> Any:
    """Import a module by dotted name, or a `.py` file by path (under a stable private name)."""
    if module.endswith(".py"):
        import hashlib
        import os
        import sys
        path = os.path.abspath(os.path.expanduser(module))
        if not os.path.isfile(path):
            raise UserError(f"{module}: no such file")
        name = "accelbench_user_" + hashlib.sha256(path.encode()).hexdigest()[:10] + "_" + \
            "".join(c if c.isalnum() else "_" for c in os.path.basename(path)[:-3])
        mod = sys.modules.get(name)
        if mod is None:
            # The file's own folder, as `python file.py` would have it: it may import its neighbours.
            if os.path.dirname(path) not in sys.path:
                sys.path.append(os.path.dirname(path))
            spec = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod   # before exec: dataclasses and pickling look the module up by name
            try:
                spec.loader.exec_module(mod)
            except BaseException:
                del sys.modules[name]
                raise
    else:
        mod = importlib.import_module(module)
    if module not in _PLUGINS:
        _PLUGINS.append(module)
    return mod


def plugin_modules() -> list[str]:
    """The user's modules imported so far (dotted names or .py paths), for a worker to import first."""
    return list(_PLUGINS)

