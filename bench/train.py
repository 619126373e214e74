"""The plain trainer and the checkpoint cache every inference cell loads its trained model from."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import models
from bench.data import Dataset


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of the plain trainer. Defaults reach >= 97% on digits for lenet and convnet."""

    epochs: int = 15
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")


@dataclass
class History:
    """What training did: test accuracy after each epoch against wall-clock seconds since the start."""

    epochs: list[int] = field(default_factory=list)
    elapsed_s: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` (put in eval mode) on (x, y)."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    model.train(was_training)
    return correct / max(len(x), 1)


def batches(n: int, batch_size: int, epoch: int, seed: int) -> list[torch.Tensor]:
    """The shuffled index batches of one epoch: a function of (seed, epoch) alone, so runs repeat."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def train(model: nn.Module, data: Dataset, cfg: TrainConfig = TrainConfig(), *, target_accuracy: float | None = None,
          eval_every_epoch: bool = True) -> History:
    """Train in place with Adam and cross-entropy; deterministic for a given cfg.seed on CPU."""
    torch.manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Cosine decay to zero: the last epochs settle instead of bouncing, so the final accuracy is stable.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    hist = History()
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        for idx in batches(len(data.train_x), cfg.batch_size, epoch, cfg.seed):
            s0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            # cross_entropy on log-softmax outputs (convnet) equals NLL: log_softmax is idempotent.
            loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            loss.backward()
            opt.step()
            hist.step_s.append(time.perf_counter() - s0)
        sched.step()
        if eval_every_epoch or epoch == cfg.epochs - 1:
            hist.epochs.append(epoch + 1)
            hist.elapsed_s.append(time.perf_counter() - t0)
            hist.accuracy.append(evaluate(model, data.test_x, data.test_y))
    model.eval()
    return hist


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


def default_config(model_name: str) -> TrainConfig:
    """TrainConfig with the model's registered overrides (e.g. convnet trains longer)."""
    return TrainConfig(**dict(models.spec(model_name).train))


def trained(model_name: str, data: Dataset, cfg: TrainConfig | None = None, *, log=None) -> nn.Module:
    """The model `model_name` trained on `data`, from the cache when a valid checkpoint is there."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    cfg = cfg or default_config(model_name)
    torch.manual_seed(cfg.seed)  # same initial weights every time: the fingerprint does not see them
    model = models.create(model_name)
    path = checkpoint_path(model_name, model, data, cfg)
    if path.exists():
        why = _try_load(path, model)
        if why is None:
            return model.eval()
        log(f"checkpoint {path} is unusable ({why}); retraining")
        torch.manual_seed(cfg.seed)
        model = models.create(model_name)
    if not data.labelled:
        return model.eval()  # random labels: training would only burn time
    t0 = time.perf_counter()
    hist = train(model, data, cfg, eval_every_epoch=False)
    log(f"trained {model_name} on {data.name} in {time.perf_counter() - t0:.1f} s: "
        f"test accuracy {hist.accuracy[-1]:.4f}; cached at {path}")
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
