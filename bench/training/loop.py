"""The one training loop: Adam + a LR schedule (cosine by default) over seeded batches; strategies change only the step.

`train()` trains the reference checkpoints, the transforms that fine-tune (prune, separable,
distill) and every training strategy. A strategy changes how one optimizer step is computed
(micro-batches, a shard per process, a pipeline stage, augmented inputs, a distillation loss) by
passing `step`; everything else (Adam + the LR schedule, the batches of `batches`, evaluation after each
epoch) is this loop, so every row's training is comparable with plain training.

Equivalence checks use plain SGD, not Adam: Adam divides each gradient by its own running RMS, so in
the first steps an update is about lr * sign(g) and a 1e-9 float difference in a near-zero gradient
becomes a full-lr difference in the weight. SGD keeps weight differences proportional to gradient
differences, so "max |weight difference| after N steps" measures the strategy, not Adam's amplifier.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench import api
from bench.api import Context, TrainingStrategy
from bench.measure.allocator import blocks_mapped_apart
from bench.measure.memory import PeakRSS, release_free_memory


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of the plain trainer (Adam). Defaults reach about 97% on digits for lenet and
    convnet (96.9-97.8% seen: the last image either way depends on the CPU's float rounding).

    `schedule` is the learning rate over the epochs: `cosine` (decay to zero), `step` (x0.1 after half
    and after three quarters of the epochs) or `constant`."""

    epochs: int = 15
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")

    def key(self) -> dict[str, Any]:
        """The configuration as checkpoint keys hash it. The default schedule is left out, so the keys
        of checkpoints trained before the schedule could be chosen (all cosine) stay the same."""
        doc = asdict(self)
        if self.schedule == "cosine":
            del doc["schedule"]
        return doc


SCHEDULES = ("cosine", "step", "constant")


def lr_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch learning-rate schedule of `cfg` (stepped once after each epoch)."""
    if cfg.schedule == "cosine":
        # Cosine decay to zero: the last epochs settle instead of bouncing, so the final accuracy is stable.
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "step":
        milestones = sorted({max(1, cfg.epochs // 2), max(1, (3 * cfg.epochs) // 4)})
        # LambdaLR keeps no Counter in its state (MultiStepLR does), so the state loads with weights_only=True.
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.1 ** sum(e >= m for m in milestones))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)


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


TARGET_ACCURACY = 0.97    # default target of time-to-accuracy: lenet reaches 97% on digits in ~5 epochs
QUICK_EPOCHS = 6          # lenet passes 97% on digits after ~5 epochs at batch 64
QUICK_MAX_SEEDS = 2
EQUIV_STEPS = 5           # optimizer steps of the equivalence run
EQUIV_LR = 0.05           # SGD learning rate of the equivalence run
# "Equal to float tolerance": different batch splits round differently (~1e-8), and on digits' flat
# backgrounds max-pool sees exact ties that a 1e-7 rounding difference can break the other way, moving
# one gradient to the neighbouring pixel: up to ~5e-5 after 5 steps. A wrong loss scale gives ~2e-2.
EQUIV_TOLERANCE = 1e-4

# step(model, x, y): forward and backward of one global batch; the loop zeroes grads and steps.
StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


def default_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # cross_entropy on log-softmax outputs (convnet) equals NLL: log_softmax is idempotent.
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss


@dataclass
class RunResult:
    """One seed's training: step times, the (training seconds, test accuracy) curve, memory."""

    seed: int
    step_s: list[float] = field(default_factory=list)
    curve: list[tuple[float, float]] = field(default_factory=list)
    samples: int = 0
    peak_mem_mb: float = math.nan
    final_loss: float | None = None   # the last batch's loss, when the step function returns it (NaN/inf: diverged)

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


def default_config(model_name: str) -> TrainConfig:
    """TrainConfig with the model's registered overrides (e.g. convnet trains longer)."""
    return TrainConfig(**dict(api.model_spec(model_name).train))


def batches(n: int, batch_size: int, epoch: int, seed: int) -> list[torch.Tensor]:
    """The shuffled index batches of one epoch: a function of (seed, epoch) alone, so runs repeat."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def train(model: nn.Module, data, cfg: TrainConfig = TrainConfig(), *, step: StepFn = default_step,
          evaluate_fn: Callable[[], float] | None = None, eval_every_epoch: bool = True, params=None,
          drop_last: bool = False, start: dict[str, Any] | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> RunResult:
    """Train `model` in place with Adam and cfg.schedule; deterministic for a given cfg.seed on CPU.

    `step(model, x, y)` computes the gradients of one batch (default: cross-entropy) and may return its
    loss (the last one is `RunResult.final_loss`); `evaluate_fn`
    gives the test accuracy after an epoch (default: top-1 on data's test split), every epoch or,
    with eval_every_epoch=False, after the last only. The clock runs only while training.

    `on_epoch(state)` is called after each finished epoch with the training state (model, optimizer,
    scheduler, the epochs done, the RNG, the clock and curve so far: tensors and plain data only, so it
    saves and loads with weights_only=True); `start=state` continues from such a state, and the result
    is the same as that of a training never interrupted.
    """
    torch.manual_seed(cfg.seed)
    opt = torch.optim.Adam(params if params is not None else model.parameters(), lr=cfg.lr,
                           weight_decay=cfg.weight_decay)
    sched = lr_scheduler(opt, cfg)
    evaluate_fn = evaluate_fn or (lambda: evaluate(model, data.test_x, data.test_y))
    run, clock, first = RunResult(cfg.seed), 0.0, 0
    loss = None
    if start is not None:
        model.load_state_dict(start["model"])
        opt.load_state_dict(start["optimizer"])
        sched.load_state_dict(start["scheduler"])
        torch.set_rng_state(start["rng"])
        first, clock = int(start["epoch"]), float(start["clock"])
        run.curve = [(float(t), float(a)) for t, a in start["curve"]]
        run.samples = int(start["samples"])
    with PeakRSS() as mem:
        for epoch in range(first, cfg.epochs):
            model.train()
            t0 = time.perf_counter()
            for idx in batches(len(data.train_x), cfg.batch_size, epoch, cfg.seed):
                if drop_last and len(idx) < cfg.batch_size:
                    continue
                s0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                loss = step(model, data.train_x[idx], data.train_y[idx])
                opt.step()
                run.step_s.append(time.perf_counter() - s0)
                run.samples += len(idx)
            sched.step()
            clock += time.perf_counter() - t0
            if eval_every_epoch or epoch == cfg.epochs - 1:
                run.curve.append((clock, evaluate_fn()))
            if on_epoch is not None:
                on_epoch({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                          "epoch": epoch + 1, "rng": torch.get_rng_state(), "clock": clock,
                          "curve": [list(p) for p in run.curve], "samples": run.samples})
    run.peak_mem_mb = mem.peak_mb
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        run.final_loss = float(loss.detach())
    model.eval()
    return run


def init_model(model_name: str, seed: int) -> nn.Module:
    """The untrained model for `seed`: the same initial weights in every process that asks."""
    torch.manual_seed(seed)
    return api.create_model(model_name)


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


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys=None) -> float:
    """Largest |a - b| over the tensors named in `keys` (default: all); NaN when `keys` is empty."""
    if set(a) != set(b):
        raise RuntimeError(f"equivalence: weights differ in names: {sorted(set(a) ^ set(b))}")
    keys = list(a) if keys is None else [k for k in a if k in set(keys)]
    return max((a[k].double() - b[k].double()).abs().max().item() for k in keys) if keys else math.nan


def equivalence(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], model_name: str,
                splits_batch: bool) -> dict[str, Any]:
    """Training columns comparing a strategy's weights with plain training's after the same steps.

    `equivalence_max_abs_diff` is over the floating-point parameters only; floating buffers (BatchNorm
    running statistics) are reported apart, and integer buffers (num_batches_tracked counts steps, not
    weights) not at all. A strategy that computes a step from parts of the batch (`splits_batch`:
    micro-batches, shards, pipeline micro-batches) cannot match one big batch through BatchNorm, which
    normalises each part with its own statistics: the row says so instead of reporting a failure.
    """
    model = api.create_model(model_name)
    params = [n for n, _ in model.named_parameters()]
    float_buffers = [n for n, b in model.named_buffers() if b.is_floating_point()]
    out: dict[str, Any] = {"equivalence_max_abs_diff": max_abs_diff(got, ref, params),
                           "equivalence_buffers_max_abs_diff": max_abs_diff(got, ref, float_buffers)}
    norms = [type(m).__name__ for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if splits_batch and norms:
        out["notes"] = (f"not equivalent by construction: {len(norms)} {norms[0]} layer(s) normalise each part of "
                        f"the batch with its own statistics, so the gradients differ from one big batch's")
    return out


def step_peak_mb(run_step: Callable[[], None], repeats: int = 3) -> float:
    """Extra resident memory one training step needs (MiB, median of `repeats` kernel-counted peaks).

    A heap that keeps freed memory (glibc after a big free, or the harness's steady policy) would
    serve the step from pages already resident, and an RSS peak would stop showing what one step
    needs. For the window, big blocks (>= 64 KiB) are mmapped and handed back on free; afterwards the
    process's own policy is back, because a fresh mmap per tensor slows every later step with page
    faults.
    """
    with blocks_mapped_apart():
        run_step()  # warm-up: optimizer state and allocator pools exist before the window
        peaks = []
        for _ in range(repeats):
            # A step measured after other work would otherwise be served from heap pages that work
            # freed but glibc kept resident, and its kernel-counted peak would show no growth.
            release_free_memory()
            with PeakRSS() as mem:
                run_step()
            peaks.append(mem.delta_mb)
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
