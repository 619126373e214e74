"""The checkpoint cache: trained reference weights, and weights a technique trains (cached once per key).

A checkpoint is keyed by the model's code and structure (the source of its factory and module
classes, its printed structure, its weight shapes), the data's content (a hash of the training split
as the model sees it, not its name), and the training configuration; derived weights by a key that names everything they depend
on, including a digest of the incoming model's weights. Files load with `torch.load(..., weights_only=True)`, and
a corrupt or mismatched one is retrained, never trusted.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import pickle
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bench import api
from bench.api import UserError
from bench.data import Dataset
from bench.training.loop import TrainConfig, default_config, evaluate, init_model, train

# --- checkpoint cache -----------------------------------------------------------------------------

def cache_dir() -> Path:
    """$ACCELBENCH_CACHE, else $XDG_CACHE_HOME/accelbench, else ~/.cache/accelbench (never inside git)."""
    if os.environ.get("ACCELBENCH_CACHE"):
        return Path(os.environ["ACCELBENCH_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "accelbench"


def model_code_digest(model_name: str, model: nn.Module) -> str:
    """A hash of what the model computes, as far as code can tell: the whole source file of the
    factory and of every non-torch module class in it (so an edited helper function that forward
    calls counts too), and its printed structure. An edited forward (ReLU to Tanh with the same
    shapes) changes it; weights do not. Code imported from other files of the user's is not seen."""
    h = hashlib.sha256(repr(model).encode())
    factory = api.model_spec(model_name).factory
    objs = [factory, *sorted({type(m) for m in model.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}")]
    files: dict[str, None] = {}
    for obj in objs:
        module = getattr(obj, "__module__", "") or ""
        if module == "torch" or module.startswith("torch."):
            continue
        try:
            files[inspect.getsourcefile(obj) or ""] = None
        except (OSError, TypeError):   # defined interactively: its name and structure still count
            h.update(f"{module}.{getattr(obj, '__qualname__', obj)}".encode())
    for path in sorted(f for f in files if f):
        try:
            h.update(Path(path).read_bytes())
        except OSError:
            h.update(path.encode())
    return h.hexdigest()[:16]


def _components(model_name: str, model: nn.Module, data: Dataset, cfg: TrainConfig) -> dict[str, str]:
    """What trained weights depend on, each part hashed apart so a retrain can say which one changed."""
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    digest = lambda o: hashlib.sha256(json.dumps(o, sort_keys=True).encode()).hexdigest()[:16]  # noqa: E731
    return {"model code": model_code_digest(model_name, model), "weight shapes": digest(shapes),
            "data content": data.identity, "input shape": "x".join(map(str, data.input_shape)),
            "training config": digest(asdict(cfg))}


def checkpoint_path(model_name: str, model: nn.Module, data: Dataset, cfg: TrainConfig) -> Path:
    return _checkpoint_at(model_name, data, _components(model_name, model, data, cfg))


def _checkpoint_at(model_name: str, data: Dataset, parts: dict[str, str]) -> Path:
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "checkpoints" / f"{_safe(model_name)}-{_safe(data.name)}-{key}.pt"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


def _index(model_name: str) -> tuple[Path, dict]:
    """The model's checkpoint index (data spec -> the components it was last trained with), and its path."""
    path = cache_dir() / "checkpoints" / f"{_safe(model_name)}.index.json"
    try:
        return path, json.loads(path.read_text())
    except (OSError, ValueError):
        return path, {}


def _why_retrain(model_name: str, data: Dataset, parts: dict[str, str]) -> str:
    """Which part changed since this model was last trained on data of the same spec, for the log."""
    before = _index(model_name)[1].get(data.spec or data.name)
    if not before:
        return "no checkpoint yet"
    changed = [k for k in parts if before.get(k) != parts[k]]
    return f"{', '.join(changed)} changed since the last checkpoint" if changed else "checkpoint missing"


def _remember(model_name: str, data: Dataset, parts: dict[str, str]) -> None:
    index, known = _index(model_name)
    known[data.spec or data.name] = parts
    tmp = index.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
    os.replace(tmp, index)


def _try_load(path: Path, model: nn.Module) -> str | None:
    """Load a cached state dict into `model`; return why it was refused, or None if it loaded."""
    try:
        # weights_only=True: a cache file is never trusted with arbitrary unpickling.
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return None
    except Exception as exc:  # corrupt, truncated, or from a different architecture
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_weights_file(model: nn.Module, path: str | Path, model_name: str = "") -> str:
    """Load a state dict file into `model` strictly; return the file's sha256.

    `.safetensors` files load with safetensors; anything else with `torch.load(weights_only=True)`
    (a state dict saved by `torch.save(model.state_dict(), ...)`; a dict holding one under
    "state_dict" or "model" is accepted too). UserError, one line, for a missing or unreadable file,
    missing or unexpected keys, or shape mismatches (each named).
    """
    path = Path(path).expanduser()
    who = f"--weights {path}" + (f" (model {model_name})" if model_name else "")
    if not path.is_file():
        raise UserError(f"{who}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt file, a pickled whole model, a wrong format
        if "Unsupported global" in str(exc):   # torch's weights-only unpickler met a class: a pickled object
            why = "it holds pickled objects, not only tensors (a whole model?), which weights_only=True refuses"
        elif isinstance(exc, (OSError, EOFError, RuntimeError, pickle.UnpicklingError)) and path.suffix != ".safetensors":
            why = f"unreadable: truncated or corrupt? ({type(exc).__name__}: {_clean(exc)})"
        else:
            why = f"{type(exc).__name__}: {_clean(exc)}"
        raise UserError(f"{who}: cannot read it as a state dict: {why}; save one with "
                        f"torch.save(model.state_dict(), path) or safetensors.torch.save_file") from None
    if isinstance(state, dict):
        for k in ("state_dict", "model"):
            if isinstance(state.get(k), dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
                state = state[k]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{who}: holds a {type(state).__name__}, not a state dict of tensors")
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
             if state[k].shape != own[k].shape]
    problems = [f"{label}: {', '.join(items[:4])}{f' (+{len(items) - 4} more)' if len(items) > 4 else ''}"
                for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", wrong)) if items]
    if problems:
        raise UserError(f"{who}: does not fit the model's state dict; " + "; ".join(problems))
    model.load_state_dict(state)
    return file_sha256(path)


def _clean(exc: BaseException) -> str:
    """The first line of an exception's message, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0][:160] if text else ""


def weights_source(model_name: str, data: Dataset, cfg: TrainConfig | None = None) -> str:
    """Where the baseline's weights come from, in words, for the row's `weights` column."""
    spec = api.model_spec(model_name)
    if spec.weights:
        return f"file {Path(spec.weights).expanduser().absolute()} sha256 {file_sha256(Path(spec.weights).expanduser())[:16]}"
    if spec.pretrained:
        return "the factory's own (pretrained=True)"
    if not data.labelled:
        return "untrained (random initialisation: the data has no labels)"
    cfg = cfg or default_config(model_name)
    return (f"trained here on {data.name} ({data.fingerprint}): {cfg.epochs} epochs, batch {cfg.batch_size}, "
            f"lr {cfg.lr:g}, seed {cfg.seed}")


def trained(model_name: str, data: Dataset, cfg: TrainConfig | None = None, *, log=None) -> nn.Module:
    """The model `model_name` with its baseline weights: from its --weights file, from a pretrained
    factory, or trained on `data` (from the checkpoint cache when a valid checkpoint is there)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    cfg = cfg or default_config(model_name)
    spec = api.model_spec(model_name)
    torch.manual_seed(cfg.seed)  # same initial weights every time: the fingerprint does not see them
    model = api.create_model(model_name)
    if spec.weights:
        load_weights_file(model, spec.weights, model_name)
        return model.eval()
    if spec.pretrained or not data.labelled:
        return model.eval()  # trained already, or random labels: training would only burn time
    parts = _components(model_name, model, data, cfg)
    path = _checkpoint_at(model_name, data, parts)
    if path.exists():
        why = _try_load(path, model)
        if why is None:
            return model.eval()
        log(f"checkpoint {path} is unusable ({why}); retraining")
        torch.manual_seed(cfg.seed)
        model = api.create_model(model_name)
    else:
        log(f"training {model_name} on {data.name}: {_why_retrain(model_name, data, parts)}")
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
    _remember(model_name, data, parts)
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
    return f"trainloop-plain|{model_name}|{data.identity}|{json.dumps(asdict(cfg), sort_keys=True)}"


def plain_accuracy(model_name: str, data, cfg: TrainConfig) -> float:
    """Final test accuracy of plain training under `cfg` (cached weights: plain rows store theirs)."""
    model = cached_weights(plain_key(model_name, data, cfg), init_model(model_name, cfg.seed),
                           lambda m: train(m, data, cfg))
    return evaluate(model, data.test_x, data.test_y)
