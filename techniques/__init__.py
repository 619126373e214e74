"""Technique interface and registry: transforms, runtimes and training strategies, added one file each.

A technique is a frozen dataclass whose fields are its parameters (so `dataclasses.asdict` is the
record of what ran). Subclass `Transform`, `Runtime` or `TrainingStrategy`, set `name`, decorate
with `@register`, and drop the file in this folder: every module here is imported by `load_builtin()`.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from bench.registry import Registry

KINDS = ("transform", "runtime", "training")


class NotApplicable(Exception):
    """Raise from apply/prepare/run when the technique does not fit this model (e.g. nothing to
    fuse, a net that cannot be split into stages): the cell becomes `skipped` with this reason."""


@dataclass(frozen=True)
class Env:
    """What this machine can do, as techniques need to know it (see bench.env.detect)."""

    cuda: bool = False
    cuda_device: str | None = None
    cuda_count: int = 0
    cpu_count: int = 1
    ort_providers: tuple[str, ...] = ()
    has_cxx: bool = False


@dataclass
class Context:
    """What a technique may use while it prepares: the data (for fine-tuning or calibration), the
    model's name and input shape, the machine, and whether this is a --quick run."""

    model_name: str
    data: Any                      # bench.data.Dataset
    env: Env
    batch_size: int = 1
    quick: bool = False
    seed: int = 0
    scratch_dir: Any = None        # a pathlib.Path private to this cell, for exported files

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.data.input_shape


def _identity(x: Any) -> Any:
    return x


def _noop() -> None:
    return None


@dataclass
class Predictor:
    """A prepared model: `run` is the timed call; `place` (input to device) and `fetch` (output back
    to CPU logits) stay outside the timed region; `synchronize` is called inside it (CUDA)."""

    run: Callable[[Any], Any]
    device: str = "cpu"
    place: Callable[[torch.Tensor], Any] = _identity
    fetch: Callable[[Any], torch.Tensor] = _identity
    synchronize: Callable[[], None] = _noop
    providers: tuple[str, ...] = ()         # for ONNX Runtime: what session.get_providers() says ran
    model_bytes: int | None = None          # serialized size when the runtime owns its own format
    figures: dict[str, float] = field(default_factory=dict)
    reset_peak_memory: Callable[[], None] | None = None   # device memory accounting (CUDA)
    peak_memory_mb: Callable[[], float] | None = None
    precision: str = "fp32"                 # what the arithmetic runs in: picks the matmul peak it is compared with

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        out = self.run(self.place(x))
        self.synchronize()
        return self.fetch(out)


@dataclass(frozen=True)
class Technique:
    """Base of every technique. Fields are parameters; validate them in __post_init__ with a
    ValueError naming the field, the allowed values and the value received."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    figures: ClassVar[dict[str, str]] = {}   # extra figures it reports -> their units
    # Pipelines this technique adds to the default matrix (`accelbench run` without --pipeline),
    # and extra models it is shown on in --quick runs (which otherwise use lenet alone).
    examples: ClassVar[tuple[str, ...]] = ()
    quick_models: ClassVar[tuple[str, ...]] = ()
    # Python modules the technique imports (exporters, runtimes). The cell imports them before it
    # reads its baseline memory, so peak_mem_mb counts the model and the runtime's work, not the
    # one-off cost of loading a library's code.
    heavy_imports: ClassVar[tuple[str, ...]] = ()

    def unavailable(self, env: Env) -> str | None:
        """Why this cannot run on this machine (no CUDA, provider missing...), or None."""
        return None

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Transform(Technique):
    kind: ClassVar[str] = "transform"

    def apply(self, model: nn.Module, ctx: Context) -> tuple[nn.Module, dict[str, float]]:
        """Return the new module (in eval mode) and the figures declared in `figures`."""
        raise NotImplementedError


class Runtime(Technique):
    kind: ClassVar[str] = "runtime"

    def prepare(self, model: nn.Module, ctx: Context) -> Predictor:
        raise NotImplementedError


class TrainingStrategy(Technique):
    kind: ClassVar[str] = "training"

    def run(self, ctx: Context) -> dict[str, Any]:
        """Train `ctx.model_name` from scratch under this strategy; return training columns."""
        raise NotImplementedError


_REGISTRY: Registry[type[Technique]] = Registry("technique", "accelbench.techniques")


def register(cls: type[Technique]) -> type[Technique]:
    """Class decorator: register a technique under its `name`. A duplicate name raises."""
    params = cls.__dict__.get("__dataclass_params__")  # set on the class itself by @dataclass
    if params is None or not params.frozen:
        raise TypeError(f"{cls.__qualname__} must be a @dataclass(frozen=True) (its fields are its parameters)")
    if not cls.name or cls.kind not in KINDS:
        raise TypeError(f"{cls.__qualname__} needs a `name` and a kind among {KINDS} (subclass Transform, "
                        f"Runtime or TrainingStrategy)")
    _REGISTRY.register(cls.name, cls)
    return cls


def unregister(name: str) -> None:
    """For tests that register a throwaway technique."""
    _REGISTRY.unregister(name)


_loaded = False


def load_builtin() -> None:
    """Import every module in this package once, which registers the built-in techniques."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def get(name: str) -> type[Technique]:
    load_builtin()
    return _REGISTRY.get(name)


def names() -> list[str]:
    load_builtin()
    return _REGISTRY.names()


def all_items() -> list[tuple[str, type[Technique]]]:
    load_builtin()
    return _REGISTRY.items()
