"""Helpers several techniques share: FX tracing, the torch.ao int8 module check, CUDA predictor hooks.

Technique modules import these (and the interface in `bench.api`), never each other.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.api import NotApplicable

CUDA_DEVICE = "cuda"


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """symbolic_trace in eval mode (so `self.training` is traced as False); a net with data-dependent
    control flow cannot be traced, and then this technique does not apply to it."""
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises TraceError and assorted others on untraceable Python
        raise NotApplicable(f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None


def torch_quantized_modules(model: nn.Module) -> list[str]:
    """Names of the torch.ao int8 modules in `model`: they run on CPU kernels only, and no
    torch.onnx exporter translates them, so runtimes other than eager refuse them by name."""
    return sorted({f"{type(m).__module__.split('.modules')[0]}.{type(m).__name__}" for m in model.modules()
                   if type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))
                   and "PackedParams" not in type(m).__name__})


def cuda_hooks(precision: str = "fp32") -> dict[str, Any]:
    """The Predictor fields every CUDA runtime shares: logits back to the CPU outside the timed call,
    `torch.cuda.synchronize` inside it, memory from the CUDA allocator's peak."""
    return dict(device=CUDA_DEVICE, precision=precision, fetch=lambda out: out.detach().float().cpu(),
                synchronize=torch.cuda.synchronize, reset_peak_memory=torch.cuda.reset_peak_memory_stats,
                peak_memory_mb=lambda: torch.cuda.max_memory_allocated() / 2**20)
