"""Timing loop: warm up, then candidate and baseline in alternating blocks until a minimum time and count are met."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

from bench.measure.disturbance import Load, Probe, snapshot
from bench.measure.stats import Measurement, PairedBlocks, ratio_interval, relative_halfwidth

# Fewer paired-block rounds give no interval worth the name (one round: zero width). Timing never
# stops early on a narrow interval before this many; a cell that has fewer (time limit) is invalid.
MIN_ROUNDS_FOR_INTERVAL = 5
# A cell whose calls are so slow that max_time_s ends it before MIN_ROUNDS_FOR_INTERVAL rounds runs on
# for those rounds, up to this multiple of max_time_s: stopping at 3 or 4 rounds left it without an
# interval, so it was marked invalid and timed a second time, which cost more than finishing once.
SLOW_CELL_TIME_FACTOR = 3.0


@dataclass(frozen=True)
class TimingConfig:
    """How long to time. `min_time_s` and `min_rounds` must both be met; `max_time_s` caps slow cells."""

    warmup: int = 5
    min_rounds: int = 8
    min_time_s: float = 1.0
    max_time_s: float = 10.0
    max_rounds: int = 100_000
    # Paired blocks (time_paired_blocks): each block aims at block_s of calls of one side, after one
    # untimed call that refills the caches the other side evicted; settle_s of idle follows every
    # block so the other runtime's spinning worker threads go quiet before the next block starts
    # (a cell also waits, after it, until the threads its candidate started use no CPU).
    # Timing stops once the speedup's 95% interval is within +-target_halfwidth (relative), or at
    # max_time_s; `min_rounds` and `min_time_s` must be met first.
    block_s: float = 0.1
    settle_s: float = 0.03
    target_halfwidth: float = 0.03

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ValueError(f"TimingConfig.warmup must be >= 0, got {self.warmup}")
        if self.min_rounds < 1:
            raise ValueError(f"TimingConfig.min_rounds must be >= 1, got {self.min_rounds}")
        if not 0 <= self.min_time_s <= self.max_time_s < math.inf:   # NaN or inf would time forever
            raise ValueError(f"TimingConfig needs 0 <= min_time_s <= max_time_s, got {self.min_time_s}, {self.max_time_s}")
        if self.block_s < 0 or self.settle_s < 0:
            raise ValueError(f"TimingConfig.block_s and settle_s must be >= 0 seconds, got {self.block_s}, {self.settle_s}")
        if not self.target_halfwidth > 0:
            raise ValueError(f"TimingConfig.target_halfwidth must be > 0 (e.g. 0.02 for +-2%), got {self.target_halfwidth}")


QUICK = TimingConfig(warmup=3, min_rounds=6, min_time_s=0.4, max_time_s=4.0, block_s=0.05, settle_s=0.02)


MAX_BLOCK_CALLS = 1000
ALONE_MIN_CALLS = 3


def time_alone(fn: Callable[[], object], cfg: TimingConfig = TimingConfig(), *, batch_size: int = 1,
               clock: Callable[[], float] = time.perf_counter) -> Measurement:
    """`fn` alone, after cfg.warmup untimed calls, for about as long as MIN_ROUNDS_FOR_INTERVAL of its
    blocks (cfg.block_s each) and at least ALONE_MIN_CALLS calls: a reference taken outside any pair,
    e.g. a cell's eager baseline before the cell's technique is prepared."""
    for _ in range(cfg.warmup):
        fn()
    samples: list[float] = []
    start = clock()
    while len(samples) < ALONE_MIN_CALLS or clock() - start < MIN_ROUNDS_FOR_INTERVAL * cfg.block_s:
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return Measurement("alone", tuple(samples), batch_size)


def _block_calls(per_call_s: float, cfg: TimingConfig) -> int:
    """Calls per block so that a block lasts about cfg.block_s at `per_call_s` per call."""
    return int(min(MAX_BLOCK_CALLS, max(1, round(cfg.block_s / max(per_call_s, 1e-9)))))


def time_paired_blocks(candidate: Callable[[], object], baseline: Callable[[], object],
                       cfg: TimingConfig = TimingConfig(), *, batch_size: int = 1,
                       clock: Callable[[], float] = time.perf_counter,
                       sleep: Callable[[float], None] = time.sleep, probe: Probe = snapshot,
                       quiet: Callable[[], float] | None = None) -> PairedBlocks:
    """Time candidate against baseline in alternating blocks (A B, B A, ...), so both see the same
    drift of a shared machine without slowing each other down.

    Call-by-call alternation distorts any pair with two thread pools (ONNX Runtime's intra-op threads
    and torch's OpenMP threads spin after each call and take the cores the other side needs) and any
    pair whose models evict each other from the last-level cache. Here each block runs one side alone:
    an untimed refill call, then K timed calls (K chosen from the warm-up so a block lasts about
    `cfg.block_s`), then `cfg.settle_s` of idle. The speedup is the median over rounds of
    median(baseline block) / median(candidate block), with a bootstrap interval over rounds; timing
    stops when that interval is narrow enough (`cfg.target_halfwidth`) or at `cfg.max_time_s` (for
    calls too slow to give MIN_ROUNDS_FOR_INTERVAL rounds by then: at those rounds, or at
    SLOW_CELL_TIME_FACTOR x `cfg.max_time_s`).
    `probe` is read before and after each timed block (outside the timed calls): what other processes,
    the hypervisor and preemptions took from each side (bench.measure.disturbance), so a disagreement
    between the two sides can be explained. `quiet`, when given, is called after each settle and
    returns once the other side's own threads have stopped using the CPU (an ONNX Runtime pool spins
    for tens of milliseconds after its last call, longer than `cfg.settle_s`). `clock`, `sleep` and
    `probe` are injectable so tests can drive the loop deterministically.
    """
    sides = {"candidate": candidate, "baseline": baseline}
    est: dict[str, float] = {}
    for name, fn in sides.items():
        calls = []
        for _ in range(max(cfg.warmup, 3)):
            t0 = clock()
            fn()
            calls.append(clock() - t0)
        est[name] = statistics.median(calls)   # not the mean: the first call is often far slower
        sleep(cfg.settle_s)
    k = _block_calls(max(est.values()), cfg)
    samples: dict[str, list[float]] = {"candidate": [], "baseline": []}
    load = {"candidate": Load(), "baseline": Load()}
    ratios: list[float] = []
    start = clock()
    rounds = 0
    while rounds < cfg.max_rounds:
        order = ("candidate", "baseline") if rounds % 2 == 0 else ("baseline", "candidate")
        block_median: dict[str, float] = {}
        for name in order:
            fn = sides[name]
            fn()  # refill: the other side just had the caches and the cores
            block = []
            before = probe()
            for _ in range(k):
                t0 = clock()
                fn()
                block.append(clock() - t0)
            load[name] += Load.between(before, probe())
            samples[name] += block
            block_median[name] = statistics.median(block)
            sleep(cfg.settle_s)
            if quiet is not None:
                quiet()
        if block_median["candidate"] > 0:
            ratios.append(block_median["baseline"] / block_median["candidate"])
        rounds += 1
        # Re-size the blocks from what the calls really take: a warm-up slowed by a busy machine
        # would otherwise leave blocks of one or two calls for the whole cell.
        k = _block_calls(max(block_median.values()), cfg)
        elapsed = clock() - start
        enough_for_interval = len(ratios) >= min(cfg.min_rounds, MIN_ROUNDS_FOR_INTERVAL)
        if (elapsed >= cfg.max_time_s and enough_for_interval) or elapsed >= SLOW_CELL_TIME_FACTOR * cfg.max_time_s:
            break
        if rounds >= cfg.min_rounds and elapsed >= cfg.min_time_s and len(ratios) >= MIN_ROUNDS_FOR_INTERVAL:
            if relative_halfwidth(*ratio_interval(ratios)) <= cfg.target_halfwidth:
                break
    return PairedBlocks(Measurement("candidate", tuple(samples["candidate"]), batch_size),
                        Measurement("baseline", tuple(samples["baseline"]), batch_size),
                        tuple(ratios), k, load["candidate"], load["baseline"])
