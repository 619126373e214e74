"""model_parallel: the model cut into N pipeline stages, one process each, GPipe schedule.

torch.distributed.pipelining (alpha API) traces the model, cuts it before top-level layers chosen so
the largest stage holds as few parameters as possible, and runs ScheduleGPipe: each global batch in M
micro-batches flows forward through the stages, then backward. What it buys is memory per process
(`stage_peak_mem_mb`, the largest stage's resident peak; `largest_stage_param_fraction`); on one CPU
the stages only add communication, so expect it slower than plain. Equivalence: rank 0 gathers the
stages' weights after N SGD steps and compares them with plain single-process training. A stage's
buffers have the traced micro-batch shape, so the ragged last batch of each epoch is dropped.
A model with fewer top-level layers than stages, or one the tracer cannot export, is skipped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench import api
from bench.api.harness import (RunResult, StrategyBase, equivalence, evaluate, init_model, reached, reference_weights,
                               sgd_steps, summarize, train)
from techniques import Context, Env, NotApplicable, register

RANK_TIMEOUT_S = 600.0


@register
@dataclass(frozen=True)
class ModelParallel(StrategyBase):
    """`model_parallel:stages=N,microbatches=M`: N processes (CPU, gloo), one pipeline stage each.

    `_fail_rank` is for tests only: that rank exits at once, to prove a dead worker is an error row."""

    name = "model_parallel"
    figures = {"reached_target": "count", "stages": "count", "stage_peak_mem_mb": "MiB",
               "largest_stage_param_fraction": "ratio"}
    examples = ("model_parallel:stages=2,microbatches=4",)
    stages: int = 2
    microbatches: int = 4
    _fail_rank: int = field(default=-1, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stages < 1:
            raise ValueError(f"stages must be an integer >= 1 (pipeline processes), got {self.stages}")
        if self.microbatches < 1:
            raise ValueError(f"microbatches must be an integer >= 1, got {self.microbatches}")

    def unavailable(self, env: Env) -> str | None:
        try:
            import torch.distributed.pipelining  # noqa: F401
        except ImportError as exc:
            return f"torch.distributed.pipelining is not available in this torch build ({exc})"
        return None

    def run(self, ctx: Context) -> dict[str, Any]:
        from bench.api.harness import Job, launch

        if ctx.batch_size % self.microbatches:
            raise NotApplicable(f"global batch {ctx.batch_size} is not divisible by microbatches={self.microbatches}")
        cfgs = self.configs(ctx)
        model = init_model(ctx.model_name, cfgs[0].seed)
        try:  # split here first: a model that cannot be cut is a skipped row, not a crashed worker
            splits = choose_splits(model, self.stages)
            build_pipe(model, splits, ctx.batch_size // self.microbatches, ctx.input_shape)
        except Exception as exc:  # noqa: BLE001 - the tracer raises many kinds
            raise NotApplicable(f"cannot split {ctx.model_name} into {self.stages} stages: "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        job = Job(strategy=self.name, params=self.params(), model=ctx.model_name, out=str(ctx.scratch_dir / "pipeline"),
                  data=ctx.data.spec, batch_size=ctx.batch_size, seeds=[c.seed for c in cfgs],
                  epochs=cfgs[0].epochs, extra={"splits": splits}, fail_rank=self._fail_rank)
        ranks = launch(job, self.stages, RANK_TIMEOUT_S)
        per_rank = [[RunResult(**r) for r in rank["runs"]] for rank in ranks]
        runs = per_rank[0]   # rank 0 holds the clock and the accuracy curve
        ref = reference_weights(ctx.model_name, ctx.data, ctx.batch_size, cfgs[0].seed, steps=job.equiv_steps)
        stage_peaks = [max(r.peak_mem_mb for r in rr) for rr in per_rank]
        total = sum(p.numel() for p in model.parameters())
        return {**summarize(runs, self.target),
                **equivalence(ranks[0]["equiv"], ref, ctx.model_name, splits_batch=self.microbatches > 1),
                "peak_mem_mb": max(stage_peaks), "device": "cpu",
                "figures": {"reached_target": reached(runs, self.target), "stages": self.stages,
                            "stage_peak_mem_mb": max(stage_peaks),
                            "largest_stage_param_fraction": max(r["stage_params"] for r in ranks) / total}}

    def run_rank(self, r) -> dict[str, Any]:
        """One pipeline stage (bench.training.distributed.Rank): the equivalence run, then every seed;
        rank 0 gathers the stages' weights to evaluate the whole model after each epoch."""
        import torch.distributed as dist
        from torch.distributed.pipelining import ScheduleGPipe

        job, data, device, rank, world = r.job, r.data, r.device, r.rank, r.world
        full = init_model(job.model, job.seeds[0])
        splits = job.extra.get("splits") or choose_splits(full, world)
        stage = build_pipe(full, splits, job.batch_size // self.microbatches, data.input_shape).build_stage(rank, device)
        sub, last = stage.submod, rank == world - 1

        def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            # Sum over the micro-batch / global batch, and no rescaling by the schedule: the accumulated
            # gradient is then exactly the global batch's mean gradient.
            return F.cross_entropy(out, target, reduction="sum") / job.batch_size

        sched = ScheduleGPipe(stage, self.microbatches, loss_fn=loss_fn, scale_grads=False)

        def step(_model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
            args = (x.to(device),) if rank == 0 else ()
            sched.step(*args, **({"target": y.to(device)} if last else {}))

        def load_init(seed: int) -> None:
            state = init_model(job.model, seed).state_dict()
            sub.load_state_dict({k: state[k] for k in sub.state_dict()})

        def gather_full() -> dict:
            parts: list = [None] * world
            dist.all_gather_object(parts, {k: v.detach().cpu() for k, v in sub.state_dict().items()})
            return {k: v for p in parts for k, v in p.items()}

        def evaluate_full() -> float:
            state = gather_full()  # a collective: every rank takes part, rank 0 evaluates
            if rank != 0:
                return math.nan
            m = api.create_model(job.model)
            m.load_state_dict(state)
            return evaluate(m, data.test_x, data.test_y)

        load_init(job.seeds[0])
        sgd_steps(sub, data, job.batch_size, job.seeds[0], step=step, steps=job.equiv_steps)
        equiv = gather_full()
        runs = []
        for seed in job.seeds:
            load_init(seed)
            # A stage's receive buffers have the traced micro-batch shape: the ragged last batch is dropped.
            runs.append(asdict(train(sub, data, r.config(seed), step=step, evaluate_fn=evaluate_full,
                                     drop_last=True)))
        return {"runs": runs, "equiv": equiv if rank == 0 else {},
                "stage_params": sum(p.numel() for p in sub.parameters()), "splits": splits}


def choose_splits(model: nn.Module, stages: int) -> list[str]:
    """Split points (top-level children with parameters, in registration order) that minimise the
    largest stage's parameter count: what a pipeline stage must hold is the point of splitting."""
    kids = [(n, sum(p.numel() for p in m.parameters())) for n, m in model.named_children()]
    kids = [(n, c) for n, c in kids if c > 0]
    if len(kids) < stages:
        raise ValueError(f"{type(model).__name__} has {len(kids)} top-level layers with parameters "
                         f"({', '.join(n for n, _ in kids)}); it cannot make {stages} pipeline stages")
    best, best_max = None, math.inf
    for cut in combinations(range(1, len(kids)), stages - 1):
        bounds = (0, *cut, len(kids))
        biggest = max(sum(c for _, c in kids[a:b]) for a, b in zip(bounds, bounds[1:]))
        if biggest < best_max:
            best, best_max = cut, biggest
    return [kids[i][0] for i in best]


def build_pipe(model: nn.Module, splits: list[str], microbatch: int, input_shape):
    """torch.distributed.pipelining's tracer frontend: the model cut at `splits` into stage modules."""
    from torch.distributed.pipelining import SplitPoint, pipeline

    model.train()
    return pipeline(model, mb_args=(torch.zeros(microbatch, *input_shape),),
                    split_spec={name: SplitPoint.BEGINNING for name in splits})
