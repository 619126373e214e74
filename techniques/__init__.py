"""Techniques: transforms, runtimes and training strategies, added one file each.

A technique is a frozen dataclass whose fields are its parameters (so `dataclasses.asdict` is the
record of what ran). Subclass `Transform`, `Runtime` or `TrainingStrategy`, set `name`, decorate
with `@register`, and drop the file in this folder: every public module here is imported on the
first registry lookup. A module whose import fails (an optional library missing) does not stop the
others: it is listed with that error as the reason it cannot run.

The interface itself lives in `bench.api`, which imports nothing else from the project; it is
re-exported here so a technique (ours or a user's) writes `from techniques import Transform, register`.
Technique modules import that interface, the parts of the harness declared in `bench.api.harness`
(training loop, checkpoint cache, distributed launcher) and the shared helpers in `techniques._shared`,
never each other and nothing else of `bench` (tests/test_architecture.py holds them to it).
"""

from __future__ import annotations

from bench.api import (CHANNELS_LAST, CONTIGUOUS, FLOAT, KINDS, NEEDS_LABELS, TECHNIQUES, TORCH_INT8, Context, Env,
                       NotApplicable, Predictor, Runtime, Technique, TrainingStrategy, Transform, Unimportable, register)

__all__ = ["CHANNELS_LAST", "CONTIGUOUS", "FLOAT", "KINDS", "NEEDS_LABELS", "TORCH_INT8", "Context", "Env",
           "NotApplicable", "Predictor", "Runtime", "Technique",
           "TrainingStrategy", "Transform", "Unimportable", "all_items", "get", "load_builtin", "names", "register",
           "unregister"]
ACCELBENCH_BUILTIN = True   # tells bench.api's registry this is the project's package


def load_builtin() -> None:
    """Import every module of this package once (which registers the built-in techniques)."""
    TECHNIQUES.load()


def get(name: str) -> type[Technique]:
    return TECHNIQUES.get(name)


def names() -> list[str]:
    return TECHNIQUES.names()


def all_items() -> list[tuple[str, type[Technique]]]:
    return TECHNIQUES.items()


def unregister(name: str) -> None:
    """For tests that register a throwaway technique."""
    TECHNIQUES.unregister(name)
