"""Test-only techniques that misbehave on purpose (never shipped; loaded as `fault_techniques:Name`)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import torch
from torch import nn

from techniques import Transform


@dataclass(frozen=True)
class Raises(Transform):
    name = "fault_raises"

    def apply(self, model: nn.Module, ctx):
        raise RuntimeError("injected failure in apply")


@dataclass(frozen=True)
class Exits(Transform):
    """Kills its own process without a word, as a segfault in a native library would."""

    name = "fault_exits"
    how: str = "exit"

    def apply(self, model: nn.Module, ctx):
        if self.how == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        os._exit(3)


@dataclass(frozen=True)
class Hangs(Transform):
    name = "fault_hangs"

    def apply(self, model: nn.Module, ctx):
        while True:
            time.sleep(0.5)


@dataclass(frozen=True)
class Hogs(Transform):
    """Allocates 100 MiB tensors until memory runs out (bounded by the cell's memory limit)."""

    name = "fault_hogs"

    def apply(self, model: nn.Module, ctx):
        hoard = []
        for _ in range(400):  # 40 GiB: more than this machine has, so only the limit can stop it
            hoard.append(torch.ones(25 * 2**20))
        return model, {}


@dataclass(frozen=True)
class Slow(Transform):
    """Makes the model 2x-ish slower by sleeping in forward (for the regression gate)."""

    name = "fault_slow"
    sleep_ms: float = 1.0

    def apply(self, model: nn.Module, ctx):
        delay_s = self.sleep_ms / 1e3

        class Slowed(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                time.sleep(delay_s)
                return self.inner(x)

        return Slowed(model), {}
