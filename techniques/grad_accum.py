"""grad_accum: K micro-batches per optimizer step, so a big global batch fits in the memory of a small one.

Each micro-batch's loss is scaled by its share of the global batch, so the summed gradient is exactly
the big batch's mean gradient for a model without batch-dependent layers (no BatchNorm): the weights
after N steps equal plain training's to float tolerance (`equivalence_max_abs_diff`, SGD, in-process).
What it buys is memory: `step_peak_mem_mb` (one accumulated step) against `big_batch_peak_mem_mb`
(one step on the whole batch), both kernel-counted resident peaks. It costs speed: K smaller matmuls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.api.harness import (StrategyBase, default_step, equivalence, init_model, reached, reference_weights,
                               sgd_steps, step_peak_mb, summarize, train)
from techniques import Context, register


def accumulate_step(steps: int):
    """step(model, x, y) that runs `steps` micro-batches and leaves the global mean gradient in .grad."""

    def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        n = len(x)
        for xs, ys in zip(x.tensor_split(steps), y.tensor_split(steps)):
            if len(xs):  # a ragged last batch smaller than K leaves empty chunks
                (F.cross_entropy(model(xs), ys, reduction="sum") / n).backward()

    return step


@register
@dataclass(frozen=True)
class GradAccum(StrategyBase):
    """`grad_accum:steps=K`: the global batch (the cell's batch size) in K micro-batches."""

    name = "grad_accum"
    figures = {"reached_target": "count", "step_peak_mem_mb": "MiB", "big_batch_peak_mem_mb": "MiB"}
    examples = ("grad_accum:steps=4",)
    steps: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1 (micro-batches per optimizer step), got {self.steps}")

    def run(self, ctx: Context) -> dict[str, Any]:
        if ctx.batch_size < self.steps:
            from techniques import NotApplicable
            raise NotApplicable(f"batch size {ctx.batch_size} is smaller than steps={self.steps} micro-batches")
        step = accumulate_step(self.steps)
        cfgs = self.configs(ctx)
        data = ctx.data

        ref = reference_weights(ctx.model_name, data, ctx.batch_size, cfgs[0].seed)
        got = sgd_steps(init_model(ctx.model_name, cfgs[0].seed), data, ctx.batch_size, cfgs[0].seed, step=step)
        runs = [train(init_model(ctx.model_name, cfg.seed), data, cfg, step=step) for cfg in cfgs]
        # Memory last, so its allocator settings cannot touch the timed training: one step each way.
        model = init_model(ctx.model_name, cfgs[0].seed)
        opt = torch.optim.Adam(model.parameters())
        x, y = data.train_x[:ctx.batch_size], data.train_y[:ctx.batch_size]

        def one(step_fn):
            def run_step() -> None:
                opt.zero_grad(set_to_none=True)
                step_fn(model, x, y)
                opt.step()
            return run_step

        accum_mb, big_mb = step_peak_mb(one(step)), step_peak_mb(one(default_step))

        return {**summarize(runs, self.target), **equivalence(got, ref, ctx.model_name, splits_batch=self.steps > 1), "device": "cpu",
                "figures": {"reached_target": reached(runs, self.target), "step_peak_mem_mb": accum_mb,
                            "big_batch_peak_mem_mb": big_mb}}
