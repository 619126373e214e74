"""Benchmark of the harness itself: the median a row reports against bare perf_counter loops of the same call.

    python -m bench.overhead                 # eager lenet, batch 1, 7 repeats (about half a minute)
    python -m bench.overhead --repeats 1 --calls 50 --min-time 0     # a smoke run

The harness side is the timer every cell uses (bench.measure.timing.time_paired_blocks), here with the
same eager predictor on both sides of the pair; its candidate median is what a row's latency is. The bare
sides time the same call with nothing else in the loop. Their ratio is the harness's own overhead: the
target is 0.95-1.05. It is a benchmark, not a test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import torch

from bench import api
from bench.api import Context, Env
from bench.data import load
from bench.measure.timing import TimingConfig, time_paired_blocks

CALLS_PER_BARE_LOOP = 2000
REPEATS = 7
MIN_TIME_S = 0.5


def bare_loop_s(fn: Callable[[], object], n: int) -> float:
    """Mean seconds per call of `fn` over n back-to-back calls: the least a timer can add."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def bare_median_s(fn: Callable[[], object], n: int) -> float:
    """Median of n individually perf_counter-timed calls, with nothing else in the loop."""
    samples = [0.0] * n
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        samples[i] = time.perf_counter() - t0
    return statistics.median(samples)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=_positive_int, default=REPEATS,
                   help=f"alternations of the harness and the bare loops (default {REPEATS})")
    p.add_argument("--calls", type=_positive_int, default=CALLS_PER_BARE_LOOP,
                   help=f"calls per bare loop (default {CALLS_PER_BARE_LOOP})")
    p.add_argument("--min-time", type=float, default=MIN_TIME_S,
                   help=f"seconds the harness times at least, per repeat (default {MIN_TIME_S})")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = load("digits")
    # The weights do not change what a call costs, so the net is not trained (that would take a minute
    # before any timing); seeded, so every run times the same numbers.
    torch.manual_seed(0)
    model = api.create_model("lenet").eval()
    pred = api.technique("eager")().prepare(model, Context("lenet", data, Env()))
    x = data.test_x[:1].contiguous()

    def call() -> None:
        pred.run(x)

    harness, bare, bare_med = [], [], []
    cfg = TimingConfig(warmup=50, min_time_s=args.min_time, max_time_s=max(10.0, args.min_time))
    for _ in range(args.repeats):  # alternate the methods so drift hits them alike
        harness.append(time_paired_blocks(call, call, cfg).candidate.median_s)
        bare.append(bare_loop_s(call, args.calls))
        bare_med.append(bare_median_s(call, args.calls))
    h, b, bm = statistics.median(harness), statistics.median(bare), statistics.median(bare_med)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"harness-reported median, eager lenet batch 1: {h * 1e3:.4f} ms  (per repeat: "
          + ", ".join(f"{v * 1e3:.4f}" for v in harness) + ")")
    print(f"bare perf_counter loop mean, same call:      {b * 1e3:.4f} ms  (per repeat: "
          + ", ".join(f"{v * 1e3:.4f}" for v in bare) + ")")
    print(f"bare per-call median, same call:            {bm * 1e3:.4f} ms")
    print(f"harness / bare loop mean = {h / b:.3f}; harness / bare median = {h / bm:.3f}  "
          f"(target: within 5%, 0.95-1.05; a busy machine inflates the loop mean, not the medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
