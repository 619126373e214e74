"""eager: the model as written, in PyTorch eager mode on the CPU. The baseline every speedup divides."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from techniques import FLOAT, TORCH_INT8, Context, Predictor, Runtime, register


@register
@dataclass(frozen=True)
class Eager(Runtime):
    """The baseline: the model as written, `model(x)` on CPU under `torch.inference_mode()`; no tricks."""

    name = "eager"
    accepts = (FLOAT, TORCH_INT8)                 # torch.ao int8 modules run here (CPU kernels)
    fidelity = "exact"
    examples = ("eager",)

    def prepare(self, model: nn.Module, ctx: Context) -> Predictor:
        model = model.eval()

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(x)

        def profile(x: torch.Tensor, calls: int) -> list[tuple[str, str, float]]:
            from bench.api.harness import profile_torch
            return profile_torch(run, x, calls, model=model)

        return Predictor(run=run, device="cpu", place=ctx.place_input, profile=profile)
