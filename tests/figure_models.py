"""Small models built to break a benchmark harness on purpose (loaded as `tests.figure_models:NAME`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def big_mlp() -> nn.Module:
    """About 100 MiB of fp32 weights, almost all in Linear layers (so dynamic int8 shrinks it ~4x)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 2048), nn.ReLU(), nn.Linear(2048, 12288), nn.ReLU(),
                         nn.Linear(12288, 10))


big_mlp.input_shape = (1, 28, 28)


class _Branchy(nn.Module):
    """Control flow that depends on the data: a trace freezes the branch of its example input."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(784, 10)
        self.b = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        if h.mean() > 0:
            return self.a(h)
        return self.b(h)


def branchy() -> nn.Module:
    return _Branchy()


branchy.input_shape = (1, 28, 28)


class _FunctionalDropout(nn.Module):
    """F.dropout without training=self.training: still dropping in eval mode, so outputs are random."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.dropout(x.flatten(1), 0.5))


def functional_dropout() -> nn.Module:
    return _FunctionalDropout()


functional_dropout.input_shape = (1, 28, 28)
