"""The model registry: ModelSpec, `@register_model`, this run's per-model overrides, and output selection."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from bench.api.errors import UserError
from bench.api.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its factory, the input it expects (channels, height, width), its classes,
    which element of its output holds the logits, and where its weights come from."""

    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10
    train: tuple[tuple[str, object], ...] = ()  # TrainConfig overrides that make this net reach its accuracy
    # For a model whose forward returns a tuple/list (an int index) or a dict or object (a key or
    # attribute name): which element is the (N, num_classes) logits.
    output: int | str | None = None
    pretrained: bool = False    # the factory returns trained weights: never trained here
    weights: str = ""           # a state dict file (torch.save or .safetensors) to load instead of training
    declared: tuple[str, ...] = ()   # where input_shape came from, for messages ("@register_model", ...)
    # A smaller input the architecture also takes (a fully convolutional net before a global pool):
    # fast runs and tests use it; FLOPs scale with it. None: only input_shape.
    small_input_shape: tuple[int, int, int] | None = None
    student: str | None = None  # the registered net `distill` trains by default to imitate this one

    @property
    def fast_input_shape(self) -> tuple[int, int, int]:
        return self.small_input_shape or self.input_shape


MODELS: Registry[Any] = Registry("model", "accelbench.models", "models")


class ModelOverrides:
    """This process's per-run settings of models from the command line (--input-shape, --output,
    --weights, the --train-* recipe): model name -> the ModelSpec fields to replace. `model_spec` applies them; a worker
    process receives them as plain data (`as_data`, through process_setup) and `set`s them before
    anything else, so every process of a run sees the same models."""

    FIELDS = ("input_shape", "num_classes", "output", "weights", "pretrained", "train")

    def __init__(self) -> None:
        self._by_model: dict[str, dict[str, Any]] = {}

    def set(self, overrides: dict[str, dict[str, Any]]) -> None:
        """Replace every override with `overrides` (all checked before any is set)."""
        for name, fields in overrides.items():
            bad = set(fields) - set(self.FIELDS)
            if bad:
                raise ValueError(f"model {name!r}: cannot override {sorted(bad)}; allowed: {', '.join(self.FIELDS)}")
        self._by_model.clear()
        for name, fields in overrides.items():
            fields = dict(fields)
            if "input_shape" in fields:   # JSON (run.json) has lists
                fields["input_shape"] = tuple(int(v) for v in fields["input_shape"])
            if "train" in fields:         # TrainConfig fields, as a dict or (key, value) pairs
                fields["train"] = tuple(sorted(dict(fields["train"]).items()))
            self._by_model[name] = fields

    def of(self, name: str) -> dict[str, Any]:
        """The fields overridden for model `name` (empty when none)."""
        return self._by_model.get(name, {})

    def as_data(self) -> dict[str, dict[str, Any]]:
        """A copy as plain data (pickles, JSON), to hand to a worker process."""
        return {n: dict(f) for n, f in self._by_model.items()}


OVERRIDES = ModelOverrides()


def register_model(name: str, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
                   output: int | str | None = None, pretrained: bool = False,
                   small_input_shape: tuple[int, int, int] | None = None, student: str | None = None, **train):
    """Decorator: `@register("lenet")` on a zero-argument factory returning an nn.Module.

    `output` selects the logits from a tuple/dict output; `pretrained=True` says the factory returns
    trained weights (never trained here); `small_input_shape` a smaller input the net also takes
    (for fast runs and tests; `--input-shape` picks any); `student` the registered net `distill`
    trains by default for this teacher (else convnet). Other keyword arguments override
    bench.training.loop.TrainConfig for this model.
    """

    def wrap(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        MODELS.register(name, ModelSpec(name, factory, tuple(input_shape), num_classes, tuple(sorted(train.items())),
                                        output, pretrained, declared=("@register_model",),
                                        small_input_shape=tuple(small_input_shape) if small_input_shape else None,
                                        student=student))
        return factory

    return wrap


def configure_models(overrides: dict[str, dict[str, Any]]) -> None:
    """Set this process's per-model overrides (replacing any before); fields as in ModelSpec."""
    OVERRIDES.set(overrides)


def model_overrides() -> dict[str, dict[str, Any]]:
    """This process's per-model overrides, to hand to a worker process (plain data, pickles)."""
    return OVERRIDES.as_data()


def model_spec(name: str) -> ModelSpec:
    """The ModelSpec for a registered name, an entry point, or a `package.module:factory` /
    `path/to/file.py:factory` spec, with this run's command-line overrides applied."""
    obj = MODELS.get(name)
    if isinstance(obj, ModelSpec):
        spec = obj
    else:
        # A factory from an entry point or a module spec. If importing it ran @register, use that
        # registration; else the factory may carry input_shape, num_classes, output, pretrained.
        spec = next((dataclasses.replace(r, name=name) for r in MODELS.registered()
                     if isinstance(r, ModelSpec) and r.factory is obj), None)
        if spec is None:
            has = hasattr(obj, "input_shape")
            spec = ModelSpec(name, obj, tuple(getattr(obj, "input_shape", (1, 28, 28))),
                             int(getattr(obj, "num_classes", 10)), output=getattr(obj, "output", None),
                             pretrained=bool(getattr(obj, "pretrained", False)),
                             declared=("the factory's input_shape attribute",) if has else ())
    fields = OVERRIDES.of(name)
    if "train" in fields:   # the run's recipe on top of the registration's (which it overrides field by field)
        fields = {**fields, "train": tuple(sorted({**dict(spec.train), **dict(fields["train"])}.items()))}
    if fields:
        spec = dataclasses.replace(spec, **fields,
                                   declared=("--input-shape",) if "input_shape" in fields else spec.declared)
    return spec


def create_model(name: str) -> nn.Module:
    """A fresh (untrained) instance of model `name`; UserError if its factory returns no nn.Module.

    With an output selector, the instance's class becomes a subclass whose forward returns only the
    selected element: parameter names (the state dict) stay the user's, and tracers (FX, TorchScript,
    the ONNX exporter) see a forward that returns one tensor.
    """
    spec = model_spec(name)
    model = spec.factory()
    if not isinstance(model, nn.Module):
        raise UserError(f"model {name!r}: factory returned {type(model).__name__}, expected a torch.nn.Module")
    if spec.output is not None:
        model.__class__ = _selecting_class(type(model), spec.output)
    return model


@functools.cache   # one subclass per (class, selector): instances of a model share their class
def _selecting_class(cls: type, output: int | str) -> type:
    # One named input, as the harness calls every model: FX reads the signature to make its
    # placeholders and cannot trace through *args.
    def forward(self, x):
        return select_output(cls.forward(self, x), output)
    return type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


class OutputSelectorError(ValueError):
    """The output selector does not fit what the model returned."""


def select_output(out: Any, output: int | str) -> Any:
    """`out[output]` for a tuple/list/dict, else `getattr(out, output)`; a clear error otherwise."""
    if isinstance(out, (tuple, list)):
        if not isinstance(output, int) or not -len(out) <= output < len(out):
            raise OutputSelectorError(f"output selector {output!r}: the model returned a {type(out).__name__} of "
                             f"{len(out)} elements; give an index 0-{len(out) - 1}")
        return out[output]
    if isinstance(out, dict):
        if output not in out:
            raise OutputSelectorError(f"output selector {output!r}: the model returned a dict with keys {sorted(map(str, out))}")
        return out[output]
    if isinstance(output, str) and hasattr(out, output):
        return getattr(out, output)
    raise OutputSelectorError(f"output selector {output!r} does not fit the model's output ({type(out).__name__})")

