"""data_parallel: DistributedDataParallel in N processes, each on 1/N of every global batch.

Each rank computes the gradient of its shard and DDP averages them (all-reduce) before the step, so
the weights equal single-process training with the same global batch (`equivalence_max_abs_diff`:
rank 0's weights after N SGD steps against plain). It pays off when one worker's compute is the
bottleneck and workers have their own cores or GPUs; on a 2-core CPU the all-reduce and the process
overhead can make it slower than one process: `scaling_efficiency` (samples/s per worker / samples/s
of one worker) says so. world_size above the core count is allowed and flagged (`oversubscribed`).
Ranks run with one torch thread each; the one-worker reference is measured with one thread too.
Each rank runs `run_rank` below; multi-node: `torchrun ... -m bench.training.distributed --strategy data_parallel`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench.api.harness import (RunResult, StrategyBase, equivalence, evaluate, init_model, reached, reference_weights,
                               sgd_steps, summarize, train)
from techniques import Context, Env, NotApplicable, register

RANK_TIMEOUT_S = 600.0   # the whole launch; the runner's cell time-out is the outer guard


@register
@dataclass(frozen=True)
class DataParallel(StrategyBase):
    """`data_parallel:world_size=N,backend=gloo|nccl`: N local ranks (gloo on CPU, nccl on GPUs).

    `_fail_rank` is for tests only: that rank exits at once, to prove a dead worker is an error row."""

    name = "data_parallel"
    figures = {"reached_target": "count", "world_size": "count", "scaling_efficiency": "ratio",
               "single_worker_samples_per_s": "samples/s", "oversubscribed": "bool"}
    examples = ("data_parallel:world_size=2",)
    world_size: int = 2
    backend: Literal["gloo", "nccl"] = "gloo"
    _fail_rank: int = field(default=-1, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.world_size < 1:
            raise ValueError(f"world_size must be an integer >= 1 (processes), got {self.world_size}")
        if self.backend not in ("gloo", "nccl"):
            raise ValueError(f"backend must be gloo (CPU) or nccl (CUDA), got {self.backend!r}")

    def unavailable(self, env: Env) -> str | None:
        if self.backend == "nccl" and env.cuda_count < self.world_size:
            return (f"nccl needs CUDA devices: world_size={self.world_size} but {env.cuda_count} here "
                    f"(use backend=gloo on CPU)")
        return None

    def run(self, ctx: Context) -> dict[str, Any]:
        from bench.api.harness import Job, launch

        if ctx.batch_size < self.world_size:
            raise NotApplicable(f"global batch {ctx.batch_size} is smaller than world_size={self.world_size}")
        cfgs = self.configs(ctx)
        job = Job(strategy=self.name, params=self.params(), model=ctx.model_name, out=str(ctx.scratch_dir / "ddp"),
                  data=ctx.data.spec, batch_size=ctx.batch_size, seeds=[c.seed for c in cfgs],
                  epochs=cfgs[0].epochs, backend=self.backend, fail_rank=self._fail_rank)
        ranks = launch(job, self.world_size, RANK_TIMEOUT_S)
        runs = _runs(ranks[0])
        ref = reference_weights(ctx.model_name, ctx.data, ctx.batch_size, cfgs[0].seed, steps=job.equiv_steps)
        one = _single_worker_sps(ctx, cfgs[0])
        out = summarize(runs, self.target)
        return {**out, **equivalence(ranks[0]["equiv"], ref, ctx.model_name, splits_batch=self.world_size > 1),
                "device": "cuda" if self.backend == "nccl" else "cpu",
                "peak_mem_mb": max(r.peak_mem_mb for rank in ranks for r in _runs(rank)),
                "figures": {"reached_target": reached(runs, self.target), "world_size": self.world_size,
                            "scaling_efficiency": out["samples_per_s"] / self.world_size / one,
                            "single_worker_samples_per_s": one,
                            "oversubscribed": int(self.backend == "gloo" and self.world_size > ctx.env.cpu_count)}}


    def run_rank(self, r) -> dict[str, Any]:
        """One rank (bench.training.distributed.Rank): the equivalence run, then every seed, each step on
        this rank's shard of the global batch."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        job, data, device = r.job, r.data, r.device
        tx, ty = data.test_x.to(device), data.test_y.to(device)

        def shard_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
            # Contiguous shards; sum-loss scaled by world/global so DDP's gradient average is the global
            # mean even when the last batch of an epoch does not divide evenly.
            xs, ys = x.tensor_split(r.world)[r.rank].to(device), y.tensor_split(r.world)[r.rank].to(device)
            (F.cross_entropy(model(xs), ys, reduction="sum") * (r.world / len(x))).backward()

        def wrapped(seed: int):
            model = init_model(job.model, seed).to(device)
            return model, DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

        model, ddp = wrapped(job.seeds[0])
        sgd_steps(ddp, data, job.batch_size, job.seeds[0], step=shard_step, steps=job.equiv_steps)
        equiv = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        runs = []
        for seed in job.seeds:
            model, ddp = wrapped(seed)
            runs.append(asdict(train(ddp, data, r.config(seed), step=shard_step,
                                     evaluate_fn=lambda m=model: evaluate(m, tx, ty))))
        return {"runs": runs, "equiv": equiv if r.rank == 0 else {}}


def _runs(rank_result: dict) -> list[RunResult]:
    return [RunResult(**r) for r in rank_result["runs"]]


def _single_worker_sps(ctx: Context, cfg) -> float:
    """Samples/s of one worker: plain training, one thread like each rank, one epoch (two in full runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = train(init_model(ctx.model_name, cfg.seed), ctx.data, replace(cfg, epochs=1 if ctx.quick else 2))
    finally:
        torch.set_num_threads(threads)
    return run.samples / run.train_s
