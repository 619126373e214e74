"""The machine's ceilings a row is judged against: dense matmul peak per device and precision, CUDA launch floor.

A batch-1 GPU latency means little alone: next to the time of one empty kernel launch plus a
synchronize it says how many launches' worth of overhead the forward costs. A large-batch
throughput likewise means more as a fraction of what this very GPU reached on a plain matmul in the
same precision. Both ceilings are measured at the start of a run, never looked up in a spec sheet.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from bench.measure import metrics

CPU_MATMUL_N = 1024                 # fills a few cores; bigger only slows the measurement
CUDA_MATMUL_N = 8192                # a data-centre GPU needs a large matmul before it reaches its peak
CUDA_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
LAUNCH_FLOOR_CALLS = 2000           # empty launches timed; the median of so many is stable to ~0.1 us


@dataclass(frozen=True)
class Ceilings:
    """What this machine reached, measured at the start of the run (units in the names)."""

    cpu_matmul_gflops: float                                 # at torch's default thread count
    cuda_matmul_gflops: tuple[tuple[str, float], ...] = ()   # (precision, GFLOP/s) pairs, in CUDA_PRECISIONS order
    cuda_launch_floor_ms: float = math.nan                   # median of one empty kernel launch + synchronize
    cpu_matmul_gflops_by_threads: tuple[tuple[int, float], ...] = ()   # (torch threads, GFLOP/s); 0: default

    def cpu_peak(self, threads: int = 0) -> float:
        """The fp32 matmul peak at `threads` torch threads (0: torch's default), the one a row timed with
        that many threads is compared with."""
        return dict(self.cpu_matmul_gflops_by_threads).get(threads, self.cpu_matmul_gflops if not threads else math.nan)

    def cell_fields(self, threads: int = 0) -> dict:
        """The CellSpec fields a cell needs to compute its row's peak_fraction (see peak_for)."""
        return {"peak_gflops": self.cpu_peak(threads), "cuda_peaks_gflops": self.cuda_matmul_gflops}

    def as_record(self) -> dict:
        """The env.json entries (the CPU key predates the others and keeps its name)."""
        rec: dict = {"matmul_peak_gflops": self.cpu_matmul_gflops}
        if self.cpu_matmul_gflops_by_threads:
            rec["matmul_peak_gflops_by_threads"] = {str(t): v for t, v in self.cpu_matmul_gflops_by_threads}
        if self.cuda_matmul_gflops:
            rec["cuda_matmul_peak_gflops"] = dict(self.cuda_matmul_gflops)
            rec["cuda_launch_floor_ms"] = self.cuda_launch_floor_ms
        return rec


def peak_for(device: str, precision: str, cpu_gflops: float, cuda_gflops: tuple[tuple[str, float], ...]) -> float:
    """The matmul peak a row on `device` computing in `precision` is compared with.

    fp32 on CUDA is compared with the TF32 peak while cuDNN may use TF32 (torch's default,
    `torch.backends.cudnn.allow_tf32`): its convolutions run on those tensor cores, and a strict fp32
    ceiling would let a row reach more than 100% of "peak"."""
    if not device.startswith("cuda"):
        return cpu_gflops
    peaks = dict(cuda_gflops)
    if precision == "fp32" and torch.backends.cudnn.allow_tf32:
        precision = "tf32"
    return peaks.get(precision, math.nan)


def cuda_matmul_gflops(n: int = CUDA_MATMUL_N, min_time_s: float = 0.5) -> tuple[tuple[str, float], ...]:
    """Best GFLOP/s of an n x n matmul in each precision, on the current CUDA device."""
    out = []
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        for precision in CUDA_PRECISIONS:
            torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
            out.append((precision, metrics.matmul_peak_gflops(n, min_time_s, device="cuda", dtype=dtype)))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return tuple(out)


def launch_floor_ms(launch: Callable[[], None], synchronize: Callable[[], None],
                    calls: int = LAUNCH_FLOOR_CALLS, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median time of `launch(); synchronize()`: what one kernel costs when it does no work.

    The synchronize is inside the timed window because that is how the harness times every GPU
    sample; the floor is then the smallest latency any GPU row could show."""
    if calls < 1:
        raise ValueError(f"calls must be >= 1; got {calls}")
    for _ in range(min(calls, 50)):  # the first launches pay for context and module loading
        launch()
        synchronize()
    samples = []
    for _ in range(calls):
        t0 = clock()
        launch()
        synchronize()
        samples.append(clock() - t0)
    return statistics.median(samples) * 1e3


def _empty_kernel() -> None:
    # torch.cuda._sleep(0) launches a real kernel that spins for zero cycles: the launch and
    # nothing else (an empty tensor op would be skipped on the host without any launch).
    torch.cuda._sleep(0)


def cpu_peak_at(threads: int) -> float:
    """The fp32 matmul peak with `threads` torch threads (0: torch's default), threads restored after."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return metrics.matmul_peak_gflops(CPU_MATMUL_N)
    finally:
        torch.set_num_threads(before)


def measure(cuda: bool, threads: tuple[int, ...] = ()) -> Ceilings:
    """The ceilings of this machine: the CPU matmul peak at torch's default thread count and at each
    of `threads`; the CUDA ones only where a CUDA device is present."""
    cpu = cpu_peak_at(0)
    by_threads = tuple((t, cpu if t == 0 else cpu_peak_at(t)) for t in sorted(set(threads)))
    if not cuda:
        return Ceilings(cpu, cpu_matmul_gflops_by_threads=by_threads)
    return Ceilings(cpu, cuda_matmul_gflops(), launch_floor_ms(_empty_kernel, torch.cuda.synchronize), by_threads)
