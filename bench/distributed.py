"""Distributed training workers (DDP, GPipe pipeline) and their launcher: one OS process per rank.

The harness starts each rank as `python -m bench.distributed --job FILE` with the environment torchrun
would give it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so the same worker also runs
under torchrun, across machines:

    torchrun --nnodes=2 --nproc-per-node=2 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        -m bench.distributed --strategy data_parallel --model lenet --batch-size 64 --out DIR

Ranks are plain subprocesses in the caller's process group (no new session): the runner's kill of a
timed-out cell takes them with it. Each rank writes DIR/rank{r}.pt (loadable with weights_only=True).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from itertools import combinations
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

COLLECTIVE_TIMEOUT_S = 60.0   # a rank blocked this long in a collective gives up by itself
POLL_S = 0.05
FAIL_EXIT_CODE = 17           # the exit code of a rank killed on purpose by `fail_rank` (tests)


@dataclass
class Job:
    """What every rank runs. `fail_rank` >= 0 makes that rank exit right after joining the group:
    it exists only for the tests that prove a dead worker becomes an error, not a hang."""

    strategy: str                       # data_parallel | model_parallel
    model: str
    out: str
    data: str = "digits"
    batch_size: int = 64                # the global batch
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int = 0                     # 0: the model's default
    backend: str = "gloo"
    microbatches: int = 4
    splits: list[str] = field(default_factory=list)   # pipeline split points (top-level module names)
    threads: int = 1
    equiv_steps: int = 5
    fail_rank: int = -1


def free_port() -> int:
    """A TCP port free right now (bind to 0, read it, close): a fresh one per run, so runs never collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n_chars: int = 300) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip() and "USDT" not in ln]
    except OSError:
        return ""
    return lines[-1][-n_chars:] if lines else ""


def launch(job: Job, world_size: int, timeout_s: float = 600.0) -> list[dict]:
    """Run `job` in `world_size` local processes; return each rank's result. If a rank dies, the others
    are killed at once and a RuntimeError names the rank, its exit code and its last log line."""
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    job_path = out / "job.json"
    job_path.write_text(json.dumps(asdict(job)))
    port = free_port()
    procs, logs = [], []
    try:
        for rank in range(world_size):
            env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                   "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                   "OMP_NUM_THREADS": str(job.threads)}
            logs.append(open(out / f"rank{rank}.log", "wb"))
            procs.append(subprocess.Popen([sys.executable, "-m", "bench.distributed", "--job", str(job_path)],
                                          env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout_s
        while True:
            codes = [p.poll() for p in procs]
            dead = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if dead:
                # The first rank seen dead is the cause; the others usually die of it a moment later.
                what = "; ".join(f"rank {r} exited with code {c}: {_tail(out / f'rank{r}.log')}" for r, c in dead)
                raise RuntimeError(f"{job.strategy} worker {what} (the other ranks were stopped; "
                                   f"logs in {out})")
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{job.strategy}: ranks still running after {timeout_s:g} s; stopped them")
            time.sleep(POLL_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
        for f in logs:
            f.close()
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world_size)]


# --- the ranks -----------------------------------------------------------------------------------

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


def _config(job: Job, seed: int):
    from bench.train import default_config
    cfg = replace(default_config(job.model), batch_size=job.batch_size, seed=seed)
    return replace(cfg, epochs=job.epochs) if job.epochs else cfg


def _ddp(job: Job, data, rank: int, world: int, device: torch.device) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from bench.train import evaluate
    from bench.trainloop import fit, init_model, sgd_steps

    tx, ty = data.test_x.to(device), data.test_y.to(device)

    def shard_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        # Contiguous shards; sum-loss scaled by world/global so DDP's gradient average is the global
        # mean even when the last batch of an epoch does not divide evenly.
        xs, ys = x.tensor_split(world)[rank].to(device), y.tensor_split(world)[rank].to(device)
        (F.cross_entropy(model(xs), ys, reduction="sum") * (world / len(x))).backward()

    def wrapped(seed: int):
        model = init_model(job.model, seed).to(device)
        return model, DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    model, ddp = wrapped(job.seeds[0])
    sgd_steps(ddp, data, job.batch_size, job.seeds[0], step=shard_step, steps=job.equiv_steps)
    equiv = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    runs = []
    for seed in job.seeds:
        model, ddp = wrapped(seed)
        runs.append(asdict(fit(ddp, data, _config(job, seed), step=shard_step,
                               evaluate_fn=lambda m=model: evaluate(m, tx, ty))))
    return {"rank": rank, "runs": runs, "equiv": equiv if rank == 0 else {}}


def _pipeline(job: Job, data, rank: int, world: int, device: torch.device) -> dict:
    import torch.distributed as dist
    from torch.distributed.pipelining import ScheduleGPipe

    import models
    from bench.train import evaluate
    from bench.trainloop import fit, init_model, sgd_steps

    full = init_model(job.model, job.seeds[0])
    splits = job.splits or choose_splits(full, world)
    stage = build_pipe(full, splits, job.batch_size // job.microbatches, data.input_shape).build_stage(rank, device)
    sub, last = stage.submod, rank == world - 1

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Sum over the micro-batch / global batch, and no rescaling by the schedule: the accumulated
        # gradient is then exactly the global batch's mean gradient.
        return F.cross_entropy(out, target, reduction="sum") / job.batch_size

    sched = ScheduleGPipe(stage, job.microbatches, loss_fn=loss_fn, scale_grads=False)

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
        m = models.create(job.model)
        m.load_state_dict(state)
        return evaluate(m, data.test_x, data.test_y)

    load_init(job.seeds[0])
    sgd_steps(sub, data, job.batch_size, job.seeds[0], step=step, steps=job.equiv_steps)
    equiv = gather_full()
    runs = []
    for seed in job.seeds:
        load_init(seed)
        # A stage's receive buffers have the traced micro-batch shape: the ragged last batch is dropped.
        runs.append(asdict(fit(sub, data, _config(job, seed), step=step, evaluate_fn=evaluate_full,
                               drop_last=True)))
    return {"rank": rank, "runs": runs, "equiv": equiv if rank == 0 else {},
            "stage_params": sum(p.numel() for p in sub.parameters()), "splits": splits}


def run_rank(job: Job) -> dict:
    """One rank's whole life: join the group, train, write DIR/rank{r}.pt, leave the group."""
    import torch.distributed as dist

    import models
    from bench import data as data_mod

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    # One intra-op thread per rank by default: N ranks on N cores, each with torch's default of all
    # cores, would oversubscribe the CPU and time the scheduler instead of the strategy.
    torch.set_num_threads(job.threads)
    device = torch.device("cuda", local_rank) if job.backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(job.backend, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        if rank == job.fail_rank:
            os._exit(FAIL_EXIT_CODE)  # die without a word while the others wait in a collective
        data = data_mod.load(job.data, models.spec(job.model).input_shape)
        fn = {"data_parallel": _ddp, "model_parallel": _pipeline}[job.strategy]
        result = fn(job, data, rank, world, device)
        out = Path(job.out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f"rank{rank}.pt.tmp"
        torch.save(result, tmp)
        os.replace(tmp, out / f"rank{rank}.pt")
        return result
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.distributed",
                                description="one rank of a distributed training run (under torchrun or the harness)")
    p.add_argument("--job", type=Path, help="a job.json written by the harness (overrides the options below)")
    p.add_argument("--strategy", choices=("data_parallel", "model_parallel"), default="data_parallel")
    p.add_argument("--model", default="lenet")
    p.add_argument("--data", default="digits")
    p.add_argument("--batch-size", type=int, default=64, help="global batch")
    p.add_argument("--epochs", type=int, default=0, help="0: the model's default")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    p.add_argument("--microbatches", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--out", type=Path, default=Path("accelbench-distributed"))
    a = p.parse_args(argv)
    if a.job:
        job = Job(**json.loads(a.job.read_text()))
    else:
        job = Job(strategy=a.strategy, model=a.model, out=str(a.out), data=a.data, batch_size=a.batch_size,
                  seeds=list(range(a.seeds)), epochs=a.epochs, backend=a.backend, microbatches=a.microbatches,
                  threads=a.threads)
    result = run_rank(job)
    if result["rank"] == 0 and not a.job:
        from bench.trainloop import RunResult, summarize
        runs = [RunResult(**r) for r in result["runs"]]
        print(json.dumps({k: v for k, v in summarize(runs, 0.97).items() if k != "curve"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
