"""The checkpoint cache: trained reference weights, and weights a technique trains (cached once per key).

A checkpoint is keyed by the model's name, class and weight shapes, the data's name, input shape and
size, and the training configuration; derived weights by a key that names everything they depend
on, including a digest of the incoming model's weights. Files load with `torch.load(..., weights_only=True)`, and
a corrupt or mismatched one is retrained, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bench import api
from bench.data import Dataset
from bench.training.loop import TrainConfig, default_config, evaluate, init_model, train

# --- checkpoint cache -----------------------------------------------------------------------------

def cache_dir() -> Path:
    """$ACCELBENCH_CACHE, else $XDG_CACHE_HOME/accelbench, else ~/.cache/accelbench (never inside git)."""
    if os.environ.get("ACCELBENCH_CACHE"):
        return Path(os.environ["ACCELBENCH_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "accelbench"


def _fingerprint(model: nn.Module, data: Dataset, cfg: TrainConfig) -> str:
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    blob = json.dumps({"shapes": shapes, "cls": type(model).__qualname__, "data": data.name,
                       "input": list(data.input_shape), "n_train": len(data.train_x), "cfg": asdict(cfg)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_path(model_name: str, model: nn.Module, data: Dataset, cfg: TrainConfig) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name)
    return cache_dir() / "checkpoints" / f"{safe}-{data.name}-{_fingerprint(model, data, cfg)}.pt"


def _try_load(path: Path, model: nn.Module) -> str | None:
    """Load a cached state dict into `model`; return why it was refused, or None if it loaded."""
    try:
        # weights_only=True: a cache file is never trusted with arbitrary unpickling.
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return None
    except Exception as exc:  # corrupt, truncated, or from a different architecture
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def trained(model_name: str, data: Dataset, cfg: TrainConfig | None = None, *, log=None) -> nn.Module:
    """The model `model_name` trained on `data`, from the cache when a valid checkpoint is there."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    cfg = cfg or default_config(model_name)
    torch.manual_seed(cfg.seed)  # same initial weights every time: the fingerprint does not see them
    model = api.create_model(model_name)
    path = checkpoint_path(model_name, model, data, cfg)
    if path.exists():
        why = _try_load(path, model)
        if why is None:
            return model.eval()
        log(f"checkpoint {path} is unusable ({why}); retraining")
        torch.manual_seed(cfg.seed)
        model = api.create_model(model_name)
    if not data.labelled:
        return model.eval()  # random labels: training would only burn time
    t0 = time.perf_counter()
    run = train(model, data, cfg, eval_every_epoch=False)
    log(f"trained {model_name} on {data.name} in {time.perf_counter() - t0:.1f} s: "
        f"test accuracy {run.final_accuracy:.4f}; cached at {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)  # atomic: a crash mid-write never leaves a truncated checkpoint under the real name
    return model.eval()


def cached_weights(key: str, model: nn.Module, fit, *, log=None) -> nn.Module:
    """Weights for a model that a technique trains (a separable rebuild, a distilled student, a pruned
    net after fine-tuning), cached under `key` so the same work is not redone for every batch size.

    The technique builds `model` deterministically (its architecture is a function of its inputs);
    only the state dict is cached, and it loads with weights_only=True. `fit(model)` trains in place.
    `key` must name everything the weights depend on (base checkpoint, parameters, data).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    shapes = hashlib.sha256(json.dumps({k: list(v.shape) for k, v in model.state_dict().items()},
                                       sort_keys=True).encode()).hexdigest()[:8]
    path = cache_dir() / "derived" / f"{digest}-{shapes}.pt"
    if path.exists():
        why = _try_load(path, model)
        if why is None:
            return model.eval()
        log(f"cached weights {path} are unusable ({why}); retraining")
    fit(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return model.eval()

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
    """`bench.training.cache.cached_weights`, plus the seconds the training really took.

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


def plain_key(model_name: str, data, cfg: TrainConfig) -> str:
    return f"trainloop-plain|{model_name}|{data.name}|{len(data.train_x)}|{json.dumps(asdict(cfg), sort_keys=True)}"


def plain_accuracy(model_name: str, data, cfg: TrainConfig) -> float:
    """Final test accuracy of plain training under `cfg` (cached weights: plain rows store theirs)."""
    model = cached_weights(plain_key(model_name, data, cfg), init_model(model_name, cfg.seed),
                           lambda m: train(m, data, cfg))
    return evaluate(model, data.test_x, data.test_y)
