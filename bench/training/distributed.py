"""The distributed launcher: one OS process per rank, each running its strategy's `run_rank` hook.

The harness starts each rank as `python -m bench.training.distributed --job FILE` with the
environment torchrun would give it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so the
same worker also runs under torchrun, across machines:

    torchrun --nnodes=2 --nproc-per-node=2 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        -m bench.training.distributed --strategy data_parallel --model lenet --batch-size 64 --out DIR

What a rank does belongs to its strategy: the job names the strategy and its parameters, and each
rank looks it up in the technique registry and calls `strategy.run_rank(Rank)`. A new distributed
strategy is one file in techniques/; nothing here changes. The data travels as its full spec
(`mnist:DIR`, not `mnist`), so every rank loads what the parent loaded.

Ranks are plain subprocesses in the caller's process group (no new session): the runner's kill of a
timed-out cell takes them with it. Each rank writes DIR/rank{r}.pt (loadable with weights_only=True).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from bench import api

COLLECTIVE_TIMEOUT_S = 60.0   # a rank blocked this long in a collective gives up by itself
POLL_S = 0.05
FAIL_EXIT_CODE = 17           # the exit code of a rank killed on purpose by `fail_rank` (tests)


@dataclass
class Job:
    """What every rank runs: the strategy (registered name and parameters), the model, the data spec,
    the global batch and the seeds. `extra` carries what the parent computed for the ranks (e.g.
    pipeline split points). `fail_rank` >= 0 makes that rank exit right after joining the group: it
    exists only for the tests that prove a dead worker becomes an error, not a hang."""

    strategy: str                       # a registered training strategy (or package.module:Class)
    model: str
    out: str
    params: dict[str, Any] = field(default_factory=dict)
    data: str = "digits"                # the full data spec, e.g. mnist:/data/mnist
    batch_size: int = 64                # the global batch
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int = 0                     # 0: the model's default
    backend: str = "gloo"
    threads: int = 1
    equiv_steps: int = 5
    extra: dict[str, Any] = field(default_factory=dict)
    fail_rank: int = -1
    # the user's modules and per-model settings of the launching process (bench.api.process_setup)
    setup: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rank:
    """What a strategy's `run_rank` gets: the job, this process's place in the group, its device and
    the data (loaded from the job's spec)."""

    job: Job
    rank: int
    world: int
    device: torch.device
    data: Any

    def config(self, seed: int):
        """The TrainConfig of `seed`: the model's defaults at the job's global batch and epochs."""
        from bench.training.loop import default_config
        cfg = replace(default_config(self.job.model), batch_size=self.job.batch_size, seed=seed)
        return replace(cfg, epochs=self.job.epochs) if self.job.epochs else cfg


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
    if not job.setup:
        job = dataclasses.replace(job, setup=api.process_setup())
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
            procs.append(subprocess.Popen([sys.executable, "-m", "bench.training.distributed", "--job", str(job_path)],
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


def run_rank(job: Job) -> dict:
    """One rank's whole life: join the group, run the strategy's hook, write DIR/rank{r}.pt, leave."""
    import torch.distributed as dist

    from bench import data as data_mod

    api.apply_process_setup(job.setup)   # the user's modules, before the strategy or model is looked up
    strategy = api.technique(job.strategy)(**job.params)
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
        m = api.model_spec(job.model)
        data = data_mod.load(job.data, m.input_shape, m.num_classes)
        result = {"rank": rank, **strategy.run_rank(Rank(job, rank, world, device, data))}
        out = Path(job.out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f"rank{rank}.pt.tmp"
        torch.save(result, tmp)
        os.replace(tmp, out / f"rank{rank}.pt")
        return result
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.training.distributed",
                                description="one rank of a distributed training run (under torchrun or the harness)")
    p.add_argument("--job", type=Path, help="a job.json written by the harness (overrides the options below)")
    p.add_argument("--strategy", default="data_parallel",
                   help="a training strategy with its parameters, as in a pipeline: data_parallel, "
                        "data_parallel:backend=nccl, model_parallel:microbatches=4")
    p.add_argument("--model", default="lenet")
    p.add_argument("--data", default="digits", help="digits, mnist:DIR or synthetic")
    p.add_argument("--batch-size", type=int, default=64, help="global batch")
    p.add_argument("--epochs", type=int, default=0, help="0: the model's default")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--out", type=Path, default=Path("accelbench-distributed"))
    a = p.parse_args(argv)
    if a.job:
        job = Job(**json.loads(a.job.read_text()))
    else:
        from bench.pipeline import parse
        strategy = parse(a.strategy).strategy
        if strategy is None:
            raise SystemExit(f"--strategy {a.strategy!r} is not a training strategy")
        job = Job(strategy=strategy.name, params=strategy.params(), model=a.model, out=str(a.out), data=a.data,
                  batch_size=a.batch_size, seeds=list(range(a.seeds)), epochs=a.epochs,
                  backend=getattr(strategy, "backend", "gloo"), threads=a.threads)
    result = run_rank(job)
    if result["rank"] == 0 and not a.job:
        from bench.training.loop import RunResult, summarize
        runs = [RunResult(**r) for r in result["runs"]]
        print(json.dumps({k: v for k, v in summarize(runs, 0.97).items() if k != "curve"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
