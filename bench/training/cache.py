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
import math
import os
import pickle
import re
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bench import api
from bench.api import UserError
from bench.data import Dataset
from bench.terminal import inert
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
            "training config": digest(cfg.key())}


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


DATA_PARALLEL_PREFIX = "module."


def load_weights_file(model: nn.Module, path: str | Path, model_name: str = "", log=None) -> str:
    """Load a state dict file into `model` strictly; return the file's sha256.

    `.safetensors` files load with safetensors; anything else with `torch.load(weights_only=True)`
    (a state dict saved by `torch.save(model.state_dict(), ...)`; a dict holding one under
    "state_dict" or "model" is accepted too). UserError, one line, for a missing or unreadable file,
    missing or unexpected keys, or shape mismatches (each named).

    A state dict saved from a DataParallel / DistributedDataParallel wrapper has every key under
    `module.`: when every key carries it and none of the model's own does, it is stripped (the
    tensors are the same; the strict load below still checks every name and shape) and `log`, when
    given, says so in one line.
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
    stripped = ""
    if (state and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state)
            and not any(k.startswith(DATA_PARALLEL_PREFIX) for k in own)):
        state = {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state.items()}
        stripped = (f"every key carried the {DATA_PARALLEL_PREFIX!r} prefix of a DataParallel/DistributedDataParallel "
                    f"wrapper, stripped")
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
             if state[k].shape != own[k].shape]
    problems = [f"{label}: {', '.join(items[:4])}{f' (+{len(items) - 4} more)' if len(items) > 4 else ''}"
                for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", wrong)) if items]
    if problems:
        raise UserError(f"{who}: does not fit the model's state dict" + (f" ({stripped})" if stripped else "")
                        + "; " + "; ".join(problems))
    model.load_state_dict(state)
    if stripped and log is not None:
        log(f"{who}: {stripped}; loaded")
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
            f"lr {cfg.lr:g} {cfg.schedule}, seed {cfg.seed}")


def trained(model_name: str, data: Dataset, cfg: TrainConfig | None = None, *, log=None) -> nn.Module:
    """The model `model_name` with its baseline weights: from its --weights file, from a pretrained
    factory, or trained on `data` (from the checkpoint cache when a valid checkpoint is there).

    Training saves its state after every epoch (`partial_path`, written atomically) and an interrupted
    training (Ctrl-C, a time-out, a crash) continues from its last finished epoch the next time it is
    asked for; the result is the same as that of a training never interrupted."""
    log = log or (lambda msg: print(inert(msg), file=sys.stderr))
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
    partial = partial_path(path)
    start = _load_partial(partial, cfg, log)
    recipe = f"{cfg.epochs} epochs, batch {cfg.batch_size}, Adam lr {cfg.lr:g} {cfg.schedule}"
    if start is not None:
        log(f"training {model_name} on {data.name}: continuing from epoch {start['epoch']}/{cfg.epochs} "
            f"(saved in {partial}; {recipe})")
    elif not path.exists():
        log(f"training {model_name} on {data.name}: {_why_retrain(model_name, data, parts)} ({recipe})")
    t0 = last_said = time.perf_counter()

    def saved(state: dict) -> None:
        nonlocal last_said
        _atomic_save(state, partial)
        if state["epoch"] < cfg.epochs and time.perf_counter() - last_said >= PROGRESS_EVERY_S:
            last_said = time.perf_counter()
            log(f"training {model_name}: epoch {state['epoch']}/{cfg.epochs} done "
                f"({last_said - t0:.0f} s; saved, an interruption continues from here)")

    try:
        run = train(model, data, cfg, eval_every_epoch=False, start=start, on_epoch=saved)
    except Exception:
        if start is not None:   # a saved state that loaded but does not fit: never trusted twice
            partial.unlink(missing_ok=True)
        raise
    diverged = diverged_training(model, run.final_loss)
    if diverged:   # neither cached nor kept to continue from: the next run trains again from the start
        partial.unlink(missing_ok=True)
        raise UserError(f"model {model_name}: training on {data.name} ended with {diverged}; not cached as trained "
                        f"(lower the learning rate with --train-lr, or give trained weights with "
                        f"--weights {model_name}=FILE)")
    accuracy = run.final_accuracy
    log(f"trained {model_name} on {data.name} in {time.perf_counter() - t0:.1f} s: "
        f"test accuracy {accuracy:.4f}; cached at {path}")
    warning = near_chance(accuracy, len(data.test_y), data.num_classes)
    if warning:
        log(f"accelbench: warning: model {model_name}: {warning} after {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''} of training on "
            f"{data.name}; give trained weights with --weights {model_name}=FILE, or train longer "
            f"(--train-epochs, --train-lr; docs/training.md)")
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(model.state_dict(), path)  # a crash mid-write never leaves a truncated checkpoint under the real name
    partial.unlink(missing_ok=True)
    _remember(model_name, data, parts)
    return model.eval()


def diverged_training(model: nn.Module, final_loss: float | None = None) -> str:
    """What shows that a training diverged ("a NaN/inf loss (nan)", "NaN/inf in 3 weight tensor(s)
    (conv1.weight, ...)"), or "" when the last loss (None: not known) and every floating-point weight
    and buffer are finite."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    loss = f"a NaN/inf loss ({final_loss})" if final_loss is not None and not math.isfinite(final_loss) else ""
    weights = (f"NaN/inf in {len(bad)} weight tensor(s) ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
               if bad else "")
    return " and ".join(filter(None, [loss, weights]))


PROGRESS_EVERY_S = 10.0   # a training's progress line at most this often (each epoch of a long one)


def partial_path(path: Path) -> Path:
    """Where the training state of the checkpoint `path` is kept after each epoch until it is done."""
    return path.with_name(path.stem + ".partial.pt")


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def _load_partial(partial: Path, cfg: TrainConfig, log) -> dict | None:
    """The saved state of an interrupted training of this very checkpoint (its key names the model,
    data and recipe), or None; an unreadable one is removed and training starts over."""
    if not partial.exists():
        return None
    try:
        state = torch.load(partial, map_location="cpu", weights_only=True)
        if not (isinstance(state, dict) and 0 < int(state["epoch"]) < cfg.epochs):
            raise ValueError(f"epoch {state.get('epoch') if isinstance(state, dict) else '?'} of {cfg.epochs}")
        return state
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt, or from another version: start over
        log(f"saved training state {partial} is unusable ({type(exc).__name__}: {_clean(exc)}); training from the start")
        partial.unlink(missing_ok=True)
        return None


def near_chance(accuracy: float, n: int, num_classes: int) -> str | None:
    """Why a test accuracy of `accuracy` on `n` images is too close to chance to benchmark with, or
    None. The rule: the lower end of its 95% Wilson interval is below twice chance (2 / classes), or
    below halfway from chance to 100% where that is lower (two classes: 75%), so the model is not
    shown to be clearly better than guessing."""
    from bench.measure.stats import wilson_interval

    if not n or num_classes < 2 or not math.isfinite(accuracy):
        return None
    low, high = wilson_interval(round(accuracy * n), n)
    chance = 1.0 / num_classes
    bar = min(2 * chance, (1 + chance) / 2)
    if low >= bar:
        return None
    return (f"test accuracy {accuracy:.1%} (95% interval {low:.1%}-{high:.1%}, {n} images) is near chance "
            f"({chance:.1%} for {num_classes} classes): not clearly above {bar:.0%}")


def cached_weights(key: str, model: nn.Module, fit, *, log=None) -> nn.Module:
    """Weights for a model that a technique trains (a separable rebuild, a distilled student, a pruned
    net after fine-tuning), cached under `key` so the same work is not redone for every batch size.

    The technique builds `model` deterministically (its architecture is a function of its inputs);
    only the state dict is cached, and it loads with weights_only=True. `fit(model)` trains in place.
    `key` must name everything the weights depend on (base checkpoint, parameters, data).
    """
    log = log or (lambda msg: print(inert(msg), file=sys.stderr))
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
    diverged = diverged_training(model)
    if diverged:
        raise ValueError(f"the technique's training ended with {diverged}; not cached")
    _atomic_save(model.state_dict(), path)
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
    return f"trainloop-plain|{model_name}|{data.identity}|{json.dumps(cfg.key(), sort_keys=True)}"


def plain_accuracy(model_name: str, data, cfg: TrainConfig) -> float:
    """Final test accuracy of plain training under `cfg` (cached weights: plain rows store theirs)."""
    model = cached_weights(plain_key(model_name, data, cfg), init_model(model_name, cfg.seed),
                           lambda m: train(m, data, cfg))
    return evaluate(model, data.test_x, data.test_y)
