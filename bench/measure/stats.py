"""Statistics over raw timing samples: what was measured (frozen) apart from what is computed from it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


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
