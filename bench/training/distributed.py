"""The distributed launcher: one OS process per rank, each running its strategy's `run_rank` hook.

The harness starts each rank as `python -m bench.training.distributed --job FILE` with the
environment torchrun would give it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so the
same worker also runs under torchrun, across machines (`accelbench train-node`, bench/training/multihost.py,
fills in the settings a multi-host torchrun needs).

What a rank does belongs to its strategy: the job names the strategy and its parameters, and each
rank looks it up in the technique registry and calls `strategy.run_rank(Rank)`. A new distributed
strategy is one file in techniques/; nothing here changes. The data travels as its full spec
(`mnist:DIR`, not `mnist`), so every rank loads what the parent loaded.

Ranks are plain subprocesses in the caller's process group (no new session): the runner's kill of a
timed-out cell takes them with it. Each rank writes DIR/rank{r}.pt (loadable with weights_only=True);
under torchrun, rank 0 also writes DIR/summary.json (strict JSON) and prints it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
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
from torch.distributed.elastic.multiprocessing.errors import record

from bench import api

COLLECTIVE_TIMEOUT_S = 60.0   # a rank blocked this long in a collective gives up by itself
POLL_S = 0.05
FAIL_EXIT_CODE = 17           # the exit code of a rank killed on purpose by `fail_rank` (tests)
HOST_ENV = "ACCELBENCH_HOST"   # this host's address, set by `accelbench train-node` (else the hostname)


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


def run_rank(job: Job, summary: bool = False) -> dict:
    """One rank's whole life: join the group, run the strategy's hook, write DIR/rank{r}.pt, leave.

    Every rank then shares its host and peak memory with the others (all_gather_object, which is
    also the last collective: no rank tears the group down while a peer's pipeline sends are still
    in flight). With `summary`, rank 0 writes DIR/summary.json (see `job_summary`) and returns it
    under "summary"."""
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
        me = {"rank": rank, "host": os.environ.get(HOST_ENV) or socket.gethostname(),
              "peak_mem_mb": max((r["peak_mem_mb"] for r in result.get("runs", [])), default=None)}
        ranks: list = [None] * world
        dist.all_gather_object(ranks, me)
        out = Path(job.out)
        out.mkdir(parents=True, exist_ok=True)
        _save_atomic(out / f"rank{rank}.pt", lambda path: torch.save(result, path))
        if summary and rank == 0:
            result["summary"] = job_summary(job, result, ranks, data)
            text = json.dumps(result["summary"], allow_nan=False)
            _save_atomic(out / "summary.json", lambda path: path.write_text(text + "\n"))
        return result
    finally:
        dist.destroy_process_group()


def _save_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def strict_json(value: Any) -> Any:
    """`value` with every NaN or infinity (a figure never reached) as None: strict JSON says `null`."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


_SET_BY_LAUNCH = ("seeds", "epochs", "world_size", "stages")


def job_summary(job: Job, rank0: dict, ranks: list[dict], data) -> dict[str, Any]:
    """What rank 0 reports for a whole run: the strategy and its parameters, the world size, the
    epochs, the training figures of bench.training.loop.summarize (medians over seeds; times in s,
    step time in ms, memory in MiB), every rank's host and resident peak (MiB), and the equivalence
    figure: max |weight difference| between rank 0's weights after `equiv_steps` SGD steps and plain
    single-process training with the same seed and global batch, computed here."""
    from bench.training.loop import (EQUIV_TOLERANCE, TARGET_ACCURACY, RunResult, default_config, equivalence,
                                     reference_weights, summarize)

    runs = [RunResult(**r) for r in rank0["runs"]]
    target = getattr(api.technique(job.strategy)(**job.params), "target", TARGET_ACCURACY)
    figures = {k: v for k, v in summarize(runs, target).items() if k != "curve"}
    ref = reference_weights(job.model, data, job.batch_size, job.seeds[0], steps=job.equiv_steps)
    equiv = equivalence(rank0["equiv"], ref, job.model, splits_batch=len(ranks) > 1)
    return strict_json({
        # The job, not the strategy's own defaults, fixes seeds and epochs, and torchrun the world size.
        "strategy": job.strategy, "model": job.model, "data": job.data,
        "params": {k: v for k, v in job.params.items() if k not in _SET_BY_LAUNCH and not k.startswith("_")},
        "world_size": len(ranks), "hosts": sorted({r["host"] for r in ranks}),
        "epochs": job.epochs or default_config(job.model).epochs, "global_batch_size": job.batch_size,
        **figures,
        "peak_mem_mb": max((r["peak_mem_mb"] for r in ranks if r["peak_mem_mb"] is not None), default=None),
        "peak_mem_mb_per_rank": [r["peak_mem_mb"] for r in ranks],
        "rank_hosts": [r["host"] for r in ranks],
        **equiv, "equivalence_steps": job.equiv_steps, "equivalence_tolerance": EQUIV_TOLERANCE,
        "equivalent": equiv["equivalence_max_abs_diff"] <= EQUIV_TOLERANCE,
    })


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """The options that describe one distributed training job (shared with `accelbench train-node`)."""
    p.add_argument("--strategy", default="data_parallel",
                   help="a training strategy with its parameters, as in a pipeline: data_parallel, "
                        "data_parallel:backend=nccl, model_parallel:microbatches=4")
    p.add_argument("--model", default="lenet")
    p.add_argument("--data", default="digits", help="digits, mnist:DIR, ... as for `accelbench run --data`")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (default 64)")
    p.add_argument("--epochs", type=int, default=0, help="0: the model's default")
    p.add_argument("--seeds", type=int, default=1, help="how many seeds to train (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    p.add_argument("--out", type=Path, default=Path("accelbench-distributed"),
                   help="folder for rank{r}.pt and, on the host of rank 0, summary.json")


JOB_OPTIONS = ("strategy", "model", "data", "batch_size", "epochs", "seeds", "threads", "out")


def job_from_args(a: argparse.Namespace) -> Job:
    """The Job of parsed `add_job_arguments` options; api.UserError names a bad strategy or value."""
    from bench.pipeline import parse
    for name in ("batch_size", "seeds", "threads"):
        if getattr(a, name) < 1:
            raise api.UserError(f"--{name.replace('_', '-')} must be an integer >= 1, got {getattr(a, name)}")
    if a.epochs < 0:
        raise api.UserError(f"--epochs must be an integer >= 0 (0: the model's default), got {a.epochs}")
    strategy = parse(a.strategy).strategy
    if strategy is None or type(strategy).run_rank is api.TrainingStrategy.run_rank:
        raise api.UserError(f"--strategy {a.strategy!r} is not a distributed training strategy "
                            f"(data_parallel, model_parallel)")
    return Job(strategy=strategy.name, params=strategy.params(), model=a.model, out=str(a.out), data=a.data,
               batch_size=a.batch_size, seeds=list(range(a.seeds)), epochs=a.epochs,
               backend=getattr(strategy, "backend", "gloo"), threads=a.threads)


@record   # under torchrun, a rank's exception goes to its error file: the failure summary names it
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.training.distributed",
                                description="one rank of a distributed training run (under torchrun or the harness)")
    p.add_argument("--job", type=Path, help="a job.json written by the harness (overrides the options below)")
    add_job_arguments(p)
    a = p.parse_args(argv)
    if a.job:
        job = Job(**json.loads(a.job.read_text()))
    else:
        try:
            job = job_from_args(a)
        except api.UserError as exc:
            raise SystemExit(f"{p.prog}: {exc}") from None
    result = run_rank(job, summary=not a.job)
    if "summary" in result:
        print(json.dumps(result["summary"], allow_nan=False), flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    # Everything a rank reports is on disk (written atomically) and the group is destroyed. What
    # is left is interpreter shutdown, whose C++ static destructors in the collective backends
    # aborted a finished rank (SIGABRT) now and then on a loaded machine, failing a run that had
    # succeeded; a finished rank leaves without them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
