"""Statistics over raw timing samples: what was measured (frozen) apart from what is computed from it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from bench.measure.disturbance import Load


@dataclass(frozen=True)
class Measurement:
    """Raw per-call times of one callable, in seconds, with the batch size each call processed."""

    label: str
    samples_s: tuple[float, ...]
    batch_size: int = 1

    def __post_init__(self) -> None:
        if not self.samples_s:
            raise ValueError(f"Measurement {self.label!r}: samples_s is empty; time at least one call")

    def quantile_s(self, q: float) -> float:
        return float(np.quantile(np.asarray(self.samples_s), q))

    @property
    def median_s(self) -> float:
        return self.quantile_s(0.5)

    @property
    def mean_s(self) -> float:
        return float(np.mean(self.samples_s))

    @property
    def iqr_s(self) -> float:
        return self.quantile_s(0.75) - self.quantile_s(0.25)

    @property
    def throughput_sps(self) -> float:
        """Samples per second at the median call time."""
        return self.batch_size / self.median_s if self.median_s > 0 else math.inf


def bootstrap_median_ci(samples: tuple[float, ...], confidence: float = 0.95, n_boot: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the median."""
    a = np.asarray(samples)
    rng = np.random.default_rng(seed)
    meds = np.median(a[rng.integers(0, len(a), (n_boot, len(a)))], axis=1)
    lo, hi = np.quantile(meds, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    return float(lo), float(hi)


def speedup(baseline: Measurement, candidate: Measurement, confidence: float = 0.95, n_boot: int = 2000,
            seed: int = 0) -> tuple[float, float, float]:
    """Speedup of candidate over baseline with a percentile-bootstrap interval.

    When the two were timed interleaved (same number of samples, sample i of each from the same
    round), the speedup is the median of the per-round ratios baseline_i / candidate_i: calls a
    few microseconds apart share the machine's state, so a burst of load that slows one round
    slows both sides of its ratio. Otherwise it is median(baseline) / median(candidate).
    """
    b, c = np.asarray(baseline.samples_s), np.asarray(candidate.samples_s)
    rng = np.random.default_rng(seed)
    q = [(1 - confidence) / 2, 1 - (1 - confidence) / 2]
    if len(b) == len(c):
        ratios = b / c
        boot = np.median(ratios[rng.integers(0, len(ratios), (n_boot, len(ratios)))], axis=1)
        lo, hi = np.quantile(boot, q)
        return float(np.median(ratios)), float(lo), float(hi)
    bm = np.median(b[rng.integers(0, len(b), (n_boot, len(b)))], axis=1)
    cm = np.median(c[rng.integers(0, len(c), (n_boot, len(c)))], axis=1)
    lo, hi = np.quantile(bm / cm, q)
    return float(np.median(b) / np.median(c)), float(lo), float(hi)


def ratio_interval(ratios, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Median of per-round ratios with a percentile-bootstrap interval (rounds resampled)."""
    r = np.asarray(ratios, dtype=float)
    if len(r) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    boot = np.median(r[rng.integers(0, len(r), (n_boot, len(r)))], axis=1)
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    return float(np.median(r)), float(lo), float(hi)


def relative_halfwidth(speedup: float, low: float, high: float) -> float:
    """Half an interval's width relative to its point estimate (0.02 = +-2%); NaN without an estimate."""
    return (high - low) / 2 / speedup if speedup > 0 else math.nan


@dataclass(frozen=True)
class PairedBlocks:
    """Candidate and baseline timed in alternating blocks (bench.measure.timing.time_paired_blocks):
    every timed call of each side, the per-round ratio median(baseline block) / median(candidate
    block), the calls per block, and what else took the CPU during each side's blocks."""

    candidate: Measurement
    baseline: Measurement
    ratios: tuple[float, ...]
    block_calls: int
    candidate_load: Load = Load()
    baseline_load: Load = Load()

    @cached_property
    def _interval(self) -> tuple[float, float, float]:
        return ratio_interval(self.ratios)   # bootstrapped once, however many figures ask for it

    def speedup(self) -> tuple[float, float, float]:
        """(median ratio, 95% low, 95% high)."""
        return self._interval

    def halfwidth(self) -> float:
        """Half the speedup interval's width, relative to the speedup (0.02 = +-2%)."""
        return relative_halfwidth(*self._interval)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (Wilson 1927); (nan, nan) when n is 0. Unlike the
    normal approximation it stays inside [0, 1] and behaves at 0 and n successes."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact_p(gained: int, lost: int) -> float:
    """Two-sided exact McNemar test (McNemar 1947; the binomial form): p-value that two classifiers
    scored on the same images have equal accuracy, from the discordant pairs alone (`gained`: images
    only the candidate gets right, `lost`: only the baseline). 1.0 when there is no discordant pair."""
    n = gained + lost
    if n == 0:
        return 1.0
    k = min(gained, lost)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)
