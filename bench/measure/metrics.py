"""Model figures: FLOPs, parameters, serialized bytes, the machine's matmul peak, accuracy and fidelity."""

from __future__ import annotations

import io
import math
import time

import torch
from torch import nn


def flops(model: nn.Module, example: torch.Tensor) -> float:
    """FLOPs of one forward pass on `example` (torch.utils.flop_counter; 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(example)
        return float(counter.get_total_flops())
    except Exception:
        return math.nan  # e.g. a module the counter cannot trace; NaN says "not measured", not zero


def count_params(model: nn.Module) -> int:
    """Parameters, including the weights of quantized modules (which hold them as packed buffers)."""
    n = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        w = getattr(m, "weight", None)
        if callable(w):  # quantized modules expose weight() / bias() methods, not Parameters
            try:
                n += w().numel()
                b = m.bias() if callable(getattr(m, "bias", None)) else None
                n += b.numel() if b is not None else 0
            except Exception:
                pass
    return int(n)


def state_dict_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def matmul_peak_gflops(n: int = 1024, min_time_s: float = 0.5, device: str = "cpu",
                       dtype: torch.dtype = torch.float32) -> float:
    """Best observed GFLOP/s of an n x n matmul in `dtype`: the machine's practical dense peak."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    best = math.inf
    start = time.perf_counter()
    while time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def fidelity(candidate: torch.Tensor, baseline: torch.Tensor) -> tuple[float, float]:
    """(top-1 agreement, max |logit difference|) of candidate logits against the eager baseline's."""
    agree = (candidate.argmax(1) == baseline.argmax(1)).float().mean().item()
    diff = (candidate.float() - baseline.float()).abs().max().item()
    return agree, diff


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the k largest logits (top-5 accuracy for k=5)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item()
