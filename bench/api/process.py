"""Worker start-up: what a worker process repeats of its parent (import path, user's modules, model
overrides) before it reads a cell, and loading the built-in registries first."""

from __future__ import annotations

from typing import Any

from bench.api.kinds import TECHNIQUES
from bench.api.modelspec import MODELS, configure_models, model_overrides
from bench.api.registry import import_plugin, plugin_modules


def process_setup() -> dict[str, Any]:
    """What a worker process must repeat before it reads a cell: this process's import path, the
    user's modules it imported through specs, and the per-model overrides. Plain data (pickles, JSON)."""
    import sys
    return {"sys_path": list(sys.path), "plugins": plugin_modules(), "models": model_overrides()}


def apply_process_setup(setup: dict[str, Any] | None) -> None:
    """In a worker: load the registries, then extend the import path, import the user's modules and
    set the model overrides. A module that no longer imports is passed over here: the lookup that
    needs it (a model or technique spec) reports it as that cell's or model's error."""
    import sys
    load_registries()   # first: later path entries may hold a foreign `models` package (onnxruntime's)
    if not setup:
        return
    sys.path.extend(p for p in setup.get("sys_path", ()) if p not in sys.path)
    for module in setup.get("plugins", ()):
        try:
            import_plugin(module)
        except Exception:  # noqa: BLE001 - see the docstring
            pass
    configure_models(setup.get("models", {}))


def load_registries() -> None:
    """Import the built-in models and techniques now. Every process that runs cells calls this first:
    some libraries (onnxruntime) append folders holding their own `models` package to sys.path."""
    MODELS.load()
    TECHNIQUES.load()
