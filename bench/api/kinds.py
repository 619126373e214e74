"""The three kinds of technique (Transform, Runtime, TrainingStrategy) on their Technique base, the
technique registry and its `@register` decorator."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from bench.api.context import CHANNELS_LAST, CONTIGUOUS, FLOAT, Context, Env, Predictor
from bench.api.registry import Registry


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
    # Module formats it takes as input (see FORMAT_WORDS).
    accepts: ClassVar[tuple[str, ...]] = (FLOAT,)
    # Input layouts it takes (see MEMORY_FORMAT_WORDS): a runtime that cannot honour one narrows this.
    accepts_memory_formats: ClassVar[tuple[str, ...]] = (CONTIGUOUS, CHANNELS_LAST)
    # What it promises about outputs: EXACT (equal to eager's within EXACT_TOLERANCE: a faster way to
    # compute the same function) or APPROXIMATE (a different function, judged by its accuracy).
    fidelity: ClassVar[str] = "approximate"

    def promise(self) -> str:
        """EXACT or APPROXIMATE for these parameters (e.g. onnx is exact in fp32, approximate in int8)."""
        return self.fidelity

    def unavailable(self, env: Env) -> str | None:
        """Why this cannot run on this machine (no CUDA, provider missing...), or None."""
        return None

    def trains(self) -> bool:
        """Whether preparing it trains a network (distillation, retraining, fine-tuning): minutes where
        others take seconds. A search (`accelbench recommend`) measures such pipelines last, once the
        cheaper ones leave it time."""
        return False

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def label(self) -> str:
        """`name:k=v,...` with the parameters that differ from their defaults."""
        diff = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                if not f.name.startswith("_") and f.default is not dataclasses.MISSING
                and getattr(self, f.name) != f.default]
        return self.name + (":" + ",".join(diff) if diff else "")


class Transform(Technique):
    kind: ClassVar[str] = "transform"

    def produces(self) -> str:
        """The format of the module `apply` returns (FLOAT unless overridden)."""
        return FLOAT

    def produces_memory_format(self, incoming: str) -> str:
        """The layout of the inputs after this transform, given the layout they arrive in (unchanged
        unless overridden: channels_last returns CHANNELS_LAST). The runtime's Context carries it."""
        return incoming

    def apply(self, model: nn.Module, ctx: Context) -> (tuple[nn.Module, dict[str, float]]
                                                          | tuple[nn.Module, dict[str, float], tuple[str, ...]]):
        """Return the new module (in eval mode) and the figures declared in `figures`; optionally a
        third item, a tuple of notes: sentences that qualify the row (e.g. it changed only a small
        share of the network), which the row's `notes` carry prefixed with the technique's name.
        Raise NotApplicable when it finds nothing to change: a row that changes nothing is no result."""
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

    def run_rank(self, rank: Any) -> dict[str, Any]:
        """What one process of a distributed launch runs (bench.training.distributed.Rank): only
        strategies that launch ranks implement it. The launcher finds it through the registry, so a
        new distributed strategy needs no edit of the harness."""
        raise NotImplementedError(f"{self.name} does not run distributed ranks")


KINDS = ("transform", "runtime", "training")


@dataclass(frozen=True)
class Unimportable(Transform, Runtime):
    """Stands in for a technique module that failed to import: it parses in any position, and every
    cell that uses it is skipped with the import error as its reason."""

    kind: ClassVar[str] = "unimportable"
    reason: ClassVar[str] = ""

    def unavailable(self, env: Env) -> str | None:
        return self.reason

    def __reduce__(self):
        # The class is made at run time, so pickle (a cell crossing to its worker) rebuilds it by value.
        return (_unimportable, (self.name, self.reason))


def _unimportable_class(name: str, reason: str) -> type[Technique]:
    cls = type(f"Unimportable_{name}", (Unimportable,), {"name": name, "reason": reason, "__doc__": reason})
    return dataclass(frozen=True)(cls)


def _unimportable(name: str, reason: str) -> Technique:
    return _unimportable_class(name, reason)()


def _technique_broken(module: str, exc: BaseException) -> type[Technique]:
    short = module.rsplit(".", 1)[-1] if ":" not in module else module
    why = f"cannot import {module}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    cls = _unimportable_class(short, why)
    if ":" not in module and short not in TECHNIQUES.names_loaded():
        TECHNIQUES.register(short, cls)
    return cls


TECHNIQUES: Registry[type[Technique]] = Registry("technique", "accelbench.techniques", "techniques", _technique_broken)


def register(cls: type[Technique]) -> type[Technique]:
    """Class decorator: register a technique under its `name`. A duplicate name raises."""
    params = cls.__dict__.get("__dataclass_params__")  # set on the class itself by @dataclass
    if params is None or not params.frozen:
        raise TypeError(f"{cls.__qualname__} must be a @dataclass(frozen=True) (its fields are its parameters)")
    if not cls.name or cls.kind not in KINDS:
        raise TypeError(f"{cls.__qualname__} needs a `name` and a kind among {KINDS} (subclass Transform, "
                        f"Runtime or TrainingStrategy)")
    TECHNIQUES.register(cls.name, cls)
    return cls


def technique(name: str) -> type[Technique]:
    """The technique class registered as `name` (or a `package.module:Class` spec)."""
    return TECHNIQUES.get(name)
