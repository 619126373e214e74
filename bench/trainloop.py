"""The training loop every training strategy shares: seeded runs, time-to-accuracy and the summary row.

A strategy changes how one optimizer step is computed (micro-batches, a shard per process, a pipeline
stage, augmented inputs); everything else (Adam + cosine LR, the batches of `bench.train.batches`,
evaluation after each epoch) is this loop, so with the default step it IS the reference trainer
`bench.train.train` (tests/test_training_strategies.py proves the weights come out identical).

Equivalence checks use plain SGD, not Adam: Adam divides each gradient by its own running RMS, so in
the first steps an update is about lr * sign(g) and a 1e-9 float difference in a near-zero gradient
becomes a full-lr difference in the weight. SGD keeps weight differences proportional to gradient
differences, so "max |weight difference| after N steps" measures the strategy, not Adam's amplifier.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

import models
from bench.memory import PeakRSS
from bench.train import TrainConfig, batches, cached_weights, default_config, evaluate
from techniques import Context, TrainingStrategy

TARGET_ACCURACY = 0.97    # the default target: 97% test accuracy on digits for lenet
QUICK_EPOCHS = 6          # lenet passes 97% on digits after ~5 epochs at batch 64
QUICK_MAX_SEEDS = 2
EQUIV_STEPS = 5           # optimizer steps of the equivalence run
EQUIV_LR = 0.05           # SGD learning rate of the equivalence run
# "Equal to float tolerance": different batch splits round differently (~1e-8), and on digits' flat
# backgrounds max-pool sees exact ties that a 1e-7 rounding difference can break the other way, moving
# one gradient to the neighbouring pixel: up to ~5e-5 after 5 steps. A wrong loss scale gives ~2e-2.
EQUIV_TOLERANCE = 1e-4

# step(model, x, y): forward and backward of one global batch; the loop zeroes grads and steps.
StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], None]


def default_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    F.cross_entropy(model(x), y).backward()


@dataclass
class RunResult:
    """One seed's training: step times, the (training seconds, test accuracy) curve, memory."""

    seed: int
    step_s: list[float] = field(default_factory=list)
    curve: list[tuple[float, float]] = field(default_factory=list)
    samples: int = 0
    peak_mem_mb: float = math.nan

    @property
    def final_accuracy(self) -> float:
        return self.curve[-1][1] if self.curve else math.nan

    @property
    def train_s(self) -> float:
        return self.curve[-1][0] if self.curve else math.nan

    def time_to(self, target: float) -> float:
        """Training seconds until the test accuracy first reached `target`; NaN if it never did."""
        return next((t for t, acc in self.curve if acc >= target), math.nan)


@dataclass(frozen=True)
class StrategyBase(TrainingStrategy):
    """Parameters every strategy shares: how many seeds to repeat, the target accuracy, and the
    epochs (0: the model's default from its registration)."""

    seeds: int = 3
    target: float = TARGET_ACCURACY
    epochs: int = 0

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"seeds must be an integer >= 1, got {self.seeds}")
        if not 0.0 < self.target <= 1.0:
            raise ValueError(f"target must be an accuracy in (0, 1] (e.g. 0.97), got {self.target}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be an integer >= 0 (0: the model's default), got {self.epochs}")

    def configs(self, ctx: Context) -> list[TrainConfig]:
        """One TrainConfig per seed: the model's defaults at the cell's global batch size.
        --quick caps epochs at QUICK_EPOCHS and seeds at QUICK_MAX_SEEDS."""
        base = replace(default_config(ctx.model_name), batch_size=ctx.batch_size)
        if self.epochs:
            base = replace(base, epochs=self.epochs)
        n = self.seeds
        if ctx.quick:
            base, n = replace(base, epochs=min(base.epochs, QUICK_EPOCHS)), min(n, QUICK_MAX_SEEDS)
        return [replace(base, seed=ctx.seed + i) for i in range(n)]


def init_model(model_name: str, seed: int) -> nn.Module:
    """The untrained model for `seed`: the same initial weights in every process that asks."""
    torch.manual_seed(seed)
    return models.create(model_name)


def fit(model: nn.Module, data, cfg: TrainConfig, *, step: StepFn = default_step,
        evaluate_fn: Callable[[], float] | None = None, params=None, drop_last: bool = False) -> RunResult:
    """Train in place; the clock runs only while training (evaluation after each epoch is paused out)."""
    torch.manual_seed(cfg.seed)
    opt = torch.optim.Adam(params if params is not None else model.parameters(), lr=cfg.lr,
                           weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    evaluate_fn = evaluate_fn or (lambda: evaluate(model, data.test_x, data.test_y))
    run, clock = RunResult(cfg.seed), 0.0
    with PeakRSS() as mem:
        for epoch in range(cfg.epochs):
            model.train()
            t0 = time.perf_counter()
            for idx in batches(len(data.train_x), cfg.batch_size, epoch, cfg.seed):
                if drop_last and len(idx) < cfg.batch_size:
                    continue
                s0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                step(model, data.train_x[idx], data.train_y[idx])
                opt.step()
                run.step_s.append(time.perf_counter() - s0)
                run.samples += len(idx)
            sched.step()
            clock += time.perf_counter() - t0
            run.curve.append((clock, evaluate_fn()))
    run.peak_mem_mb = mem.peak_mb
    model.eval()
    return run


def sgd_steps(model: nn.Module, data, batch_size: int, seed: int, *, step: StepFn = default_step,
              steps: int = EQUIV_STEPS, params=None) -> dict[str, torch.Tensor]:
    """The equivalence run: `steps` SGD steps on the first batches of epoch 0; returns the weights."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(params if params is not None else model.parameters(), lr=EQUIV_LR)
    model.train()
    for idx in batches(len(data.train_x), batch_size, 0, seed)[:steps]:
        opt.zero_grad(set_to_none=True)
        step(model, data.train_x[idx], data.train_y[idx])
        opt.step()
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def reference_weights(model_name: str, data, batch_size: int, seed: int, steps: int = EQUIV_STEPS) -> dict:
    """Single-process plain SGD with the same seed and global batch: what a strategy must reproduce."""
    return sgd_steps(init_model(model_name, seed), data, batch_size, seed, steps=steps)


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if set(a) != set(b):
        raise RuntimeError(f"equivalence: weights differ in names: {sorted(set(a) ^ set(b))}")
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def plain_key(model_name: str, data, cfg: TrainConfig) -> str:
    return f"trainloop-plain|{model_name}|{data.name}|{len(data.train_x)}|{json.dumps(asdict(cfg), sort_keys=True)}"


def plain_accuracy(model_name: str, data, cfg: TrainConfig) -> float:
    """Final test accuracy of plain training under `cfg` (cached weights: plain rows store theirs)."""
    model = cached_weights(plain_key(model_name, data, cfg), init_model(model_name, cfg.seed),
                           lambda m: fit(m, data, cfg))
    return evaluate(model, data.test_x, data.test_y)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3    # glibc mallopt parameters


def _mallopt(mmap_threshold: int, trim_threshold: int) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and \
            bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))
    except (OSError, AttributeError, TypeError):  # not glibc: the figure is then a floor
        return False


def step_peak_mb(run_step: Callable[[], None], repeats: int = 3) -> float:
    """Extra resident memory one training step needs (MiB, median of `repeats` kernel-counted peaks).

    glibc raises its mmap threshold after a big block is freed, so freed activations stay resident and
    an RSS peak stops showing what one step needs. For the window, big blocks (>= 64 KiB) are mmapped
    and given back on free; afterwards the thresholds go to glibc's dynamic ceiling (32 MiB), because
    a fresh mmap per tensor would slow every later step with page faults.
    """
    _mallopt(64 * 1024, 128 * 1024)
    try:
        run_step()  # warm-up: optimizer state and allocator pools exist before the window
        peaks = []
        for _ in range(repeats):
            with PeakRSS() as mem:
                run_step()
            peaks.append(mem.delta_mb)
    finally:
        _mallopt(32 * 2**20, 64 * 2**20)
    return statistics.median(peaks)


def summarize(runs: list[RunResult], target: float) -> dict[str, Any]:
    """The training columns of the row: medians over seeds, the spread, the median seed's curve."""
    finals = [r.final_accuracy for r in runs]
    # Never reaching the target counts as +inf, so a median of "never" is reported as NaN (not reached).
    ttt = statistics.median([r.time_to(target) if not math.isnan(r.time_to(target)) else math.inf for r in runs])
    median_run = sorted(runs, key=lambda r: r.final_accuracy)[(len(runs) - 1) // 2]
    steps = [s for r in runs for s in r.step_s]
    return {
        "step_ms_p50": statistics.median(steps) * 1e3 if steps else math.nan,
        "samples_per_s": statistics.median(r.samples / r.train_s for r in runs),
        "peak_mem_mb": max(r.peak_mem_mb for r in runs),
        "final_accuracy": statistics.median(finals),
        "final_accuracy_spread": max(finals) - min(finals),
        "time_to_target_s": ttt if math.isfinite(ttt) else math.nan,
        "target_accuracy": target,
        "seeds": len(runs),
        "curve": json.dumps([[round(t, 4), round(a, 6)] for t, a in median_run.curve]),
    }


def reached(runs: list[RunResult], target: float) -> int:
    """How many seeds reached the target (the `reached_target` figure every strategy reports)."""
    return sum(not math.isnan(r.time_to(target)) for r in runs)
