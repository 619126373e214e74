"""Benchmark of the harness itself: its reported median against a bare perf_counter loop (python -m bench.measure.overhead)."""

from __future__ import annotations

import statistics
import sys
import time

import torch

from bench.data import load
from bench.measure.timing import TimingConfig, time_interleaved
from bench.training.cache import trained
from bench import api
from bench.api import Context, Env

CALLS_PER_BARE_LOOP = 2000
REPEATS = 7


def bare_loop_s(fn, n: int) -> float:
    """Mean seconds per call of `fn` over n back-to-back calls: the least a timer can add."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def bare_median_s(fn, n: int) -> float:
    """Median of n individually perf_counter-timed calls, with nothing else in the loop."""
    samples = [0.0] * n
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        samples[i] = time.perf_counter() - t0
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    data = load("digits")
    model = trained("lenet", data)
    pred = api.technique("eager")().prepare(model, Context("lenet", data, Env()))
    x = data.test_x[:1].contiguous()

    def call() -> None:
        pred.run(x)

    harness, bare, bare_med = [], [], []
    cfg = TimingConfig(warmup=50, min_rounds=2000, min_time_s=0.5)
    for _ in range(REPEATS):  # alternate the two methods so drift hits both alike
        harness.append(time_interleaved({"eager": call}, cfg)["eager"].median_s)
        bare.append(bare_loop_s(call, CALLS_PER_BARE_LOOP))
        bare_med.append(bare_median_s(call, CALLS_PER_BARE_LOOP))
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
