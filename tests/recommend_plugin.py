"""A technique registered by a test, nowhere else: the recommender must find it in the registry (loaded as a plugin module)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from techniques import Transform, register


@register
@dataclass(frozen=True)
class Halve(Transform):
    """Scales the logits by one half or one quarter: argmax unchanged, so accuracy is kept, yet approximate."""

    name = "test_halve"
    figures = {"scale": "ratio"}
    by: Literal["half", "quarter"] = "half"

    def apply(self, model: nn.Module, ctx):
        scale = 0.5 if self.by == "half" else 0.25
        return _Scaled(model, scale).eval(), {"scale": scale}


class _Scaled(nn.Module):
    def __init__(self, inner: nn.Module, scale: float) -> None:
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x):
        return self.inner(x) * self.scale
