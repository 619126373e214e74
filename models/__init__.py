"""Reference ConvNets and the model registry: `register`, `create`, `list`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from bench.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its factory and the input it expects (channels, height, width)."""

    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10
    train: tuple[tuple[str, object], ...] = ()  # TrainConfig overrides that make this net reach its accuracy


_REGISTRY: Registry[ModelSpec] = Registry("model", "accelbench.models")


def register(name: str, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, **train):
    """Decorator: `@register("lenet")` on a zero-argument factory returning an nn.Module.

    Keyword arguments beyond the input shape override bench.train.TrainConfig for this model.
    """

    def wrap(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        _REGISTRY.register(name, ModelSpec(name, factory, tuple(input_shape), num_classes, tuple(sorted(train.items()))))
        return factory

    return wrap


def spec(name: str) -> ModelSpec:
    """The ModelSpec for a registered name, an entry point, or a `package.module:factory` spec."""
    obj = _REGISTRY.get(name)
    if isinstance(obj, ModelSpec):
        return obj
    # A factory from an entry point or a module spec. If importing it ran @register, use that
    # registration (input shape, training overrides); else the factory may carry input_shape.
    for registered in _REGISTRY._items.values():
        if isinstance(registered, ModelSpec) and registered.factory is obj:
            return ModelSpec(name, obj, registered.input_shape, registered.num_classes, registered.train)
    return ModelSpec(name, obj, tuple(getattr(obj, "input_shape", (1, 28, 28))), getattr(obj, "num_classes", 10))


def create(name: str) -> nn.Module:
    model = spec(name).factory()
    if not isinstance(model, nn.Module):
        from bench.errors import UserError
        raise UserError(f"model {name!r}: factory returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def list() -> list[str]:  # noqa: A001 - the issue asks for models.list()
    return _REGISTRY.names()


def unregister(name: str) -> None:
    """For tests that register a throwaway model."""
    _REGISTRY.unregister(name)


from models import convnets as _convnets  # noqa: E402,F401  (registers the reference nets)
