"""Timing loop: warm up, then interleaved rounds until both a minimum time and a minimum count are met."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from bench.measure.stats import Measurement


@dataclass(frozen=True)
class TimingConfig:
    """How long to time. `min_time_s` and `min_rounds` must both be met; `max_time_s` caps slow cells."""

    warmup: int = 5
    min_rounds: int = 20
    min_time_s: float = 1.0
    max_time_s: float = 30.0
    max_rounds: int = 100_000

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ValueError(f"TimingConfig.warmup must be >= 0, got {self.warmup}")
        if self.min_rounds < 1:
            raise ValueError(f"TimingConfig.min_rounds must be >= 1, got {self.min_rounds}")
        if self.min_time_s < 0 or self.max_time_s < self.min_time_s:
            raise ValueError(f"TimingConfig needs 0 <= min_time_s <= max_time_s, got {self.min_time_s}, {self.max_time_s}")


QUICK = TimingConfig(warmup=3, min_rounds=15, min_time_s=0.4, max_time_s=8.0)


def time_interleaved(fns: dict[str, Callable[[], object]], cfg: TimingConfig = TimingConfig(), *,
                     batch_size: int = 1, clock: Callable[[], float] = time.perf_counter) -> dict[str, Measurement]:
    """Time each callable once per round, alternating the order (A B, B A, ...) so neither always
    runs first; a drifting machine then shifts both alike and their ratio survives.

    Each sample is one call: `clock()` before, the call (which must synchronize its device itself),
    `clock()` after. `clock` is injectable so tests can drive the loop deterministically.
    """
    if not fns:
        raise ValueError("time_interleaved: fns is empty; pass at least one callable")
    names = list(fns)
    for _ in range(cfg.warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    start = clock()
    rounds = 0
    while rounds < cfg.max_rounds:
        order = names if rounds % 2 == 0 else names[::-1]
        for name in order:
            t0 = clock()
            fns[name]()
            samples[name].append(clock() - t0)
        rounds += 1
        elapsed = clock() - start
        if (rounds >= cfg.min_rounds and elapsed >= cfg.min_time_s) or elapsed >= cfg.max_time_s:
            break
    return {name: Measurement(name, tuple(s), batch_size) for name, s in samples.items()}
