"""Cached training for transforms that train (separable, prune fine-tuning, distill): keys and timings."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Callable

from torch import nn

from bench.train import cache_dir, cached_weights


def state_digest(model: nn.Module) -> str:
    """A short hash of a model's weights and buffers: the incoming model is part of every cache key,
    so a retrained base checkpoint never reuses weights derived from the old one."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _timing_path(key: str):
    return cache_dir() / "derived" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.train.json"


def fit_cached(key: str, model: nn.Module, fit: Callable[[nn.Module], object]) -> tuple[nn.Module, float]:
    """`bench.train.cached_weights`, plus the seconds the training really took.

    The seconds are stored next to the cached weights, so a cell that loads them still reports the
    cost of the training that produced them (not 0, which would flatter the technique); NaN when the
    weights are cached but their timing file is gone.
    """
    took: dict[str, float] = {}

    def timed_fit(m: nn.Module) -> None:
        t0 = time.perf_counter()
        fit(m)
        took["train_s"] = time.perf_counter() - t0

    model = cached_weights(key, model, timed_fit)
    path = _timing_path(key)
    if "train_s" in took:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(took))
        return model, took["train_s"]
    try:
        return model, float(json.loads(path.read_text())["train_s"])
    except (OSError, ValueError, KeyError):
        return model, float("nan")

