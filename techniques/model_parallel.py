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

from dataclasses import dataclass, field
from typing import Any

from bench.trainloop import StrategyBase, init_model, max_abs_diff, reached, reference_weights, summarize
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
        from bench.distributed import Job, build_pipe, choose_splits, launch

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
        job = Job(strategy="model_parallel", model=ctx.model_name, out=str(ctx.scratch_dir / "pipeline"),
                  data=ctx.data.name, batch_size=ctx.batch_size, seeds=[c.seed for c in cfgs],
                  epochs=cfgs[0].epochs, microbatches=self.microbatches, splits=splits, fail_rank=self._fail_rank)
        ranks = launch(job, self.stages, RANK_TIMEOUT_S)
        from bench.trainloop import RunResult
        per_rank = [[RunResult(**r) for r in rank["runs"]] for rank in ranks]
        runs = per_rank[0]   # rank 0 holds the clock and the accuracy curve
        ref = reference_weights(ctx.model_name, ctx.data, ctx.batch_size, cfgs[0].seed, steps=job.equiv_steps)
        stage_peaks = [max(r.peak_mem_mb for r in rr) for rr in per_rank]
        total = sum(p.numel() for p in model.parameters())
        return {**summarize(runs, self.target), "equivalence_max_abs_diff": max_abs_diff(ranks[0]["equiv"], ref),
                "peak_mem_mb": max(stage_peaks), "device": "cpu",
                "figures": {"reached_target": reached(runs, self.target), "stages": self.stages,
                            "stage_peak_mem_mb": max(stage_peaks),
                            "largest_stage_param_fraction": max(r["stage_params"] for r in ranks) / total}}
