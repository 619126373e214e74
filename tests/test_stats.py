"""Statistics and the timing loop, driven by an injected fake clock so every figure is exact."""

from __future__ import annotations

import pytest

from bench.measure.stats import Measurement, bootstrap_median_ci, speedup
from bench.measure.timing import TimingConfig, time_interleaved


class FakeClock:
    """Advances only when a timed callable says how long it 'took'."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def work(self, seconds: float):
        def fn() -> None:
            self.now += seconds
        return fn


def test_measurement_statistics():
    m = Measurement("x", (1.0, 2.0, 3.0, 4.0, 100.0), batch_size=10)
    assert m.median_s == 3.0
    assert m.mean_s == 22.0
    assert m.iqr_s == pytest.approx(4.0 - 2.0)
    assert m.quantile_s(0.99) == pytest.approx(4.0 + 0.96 * 96.0)
    assert m.throughput_sps == pytest.approx(10 / 3.0)
    with pytest.raises(ValueError, match="samples_s is empty"):
        Measurement("y", ())


def test_interleaved_loop_stops_when_both_minimums_are_met():
    clock = FakeClock()
    cfg = TimingConfig(warmup=2, min_rounds=5, min_time_s=1.0, max_time_s=100.0)
    out = time_interleaved({"a": clock.work(0.1), "b": clock.work(0.3)}, cfg, clock=clock)
    # each round costs 0.4 s of fake time: 1.0 s needs 3 rounds, but min_rounds asks for 5
    assert len(out["a"].samples_s) == 5 and len(out["b"].samples_s) == 5
    assert out["a"].median_s == pytest.approx(0.1) and out["b"].median_s == pytest.approx(0.3)

    clock = FakeClock()
    cfg = TimingConfig(warmup=0, min_rounds=2, min_time_s=2.0, max_time_s=100.0)
    out = time_interleaved({"a": clock.work(0.1), "b": clock.work(0.1)}, cfg, clock=clock)
    assert len(out["a"].samples_s) == 10  # now min_time_s decides: 10 rounds x 0.2 s


def test_max_time_caps_a_slow_callable():
    clock = FakeClock()
    cfg = TimingConfig(warmup=0, min_rounds=1000, min_time_s=1.0, max_time_s=5.0)
    out = time_interleaved({"slow": clock.work(1.0)}, cfg, clock=clock)
    assert len(out["slow"].samples_s) == 5


def test_order_alternates_so_neither_always_runs_first():
    order: list[str] = []
    clock = FakeClock()

    def mark(name):
        def fn():
            order.append(name)
            clock.now += 0.01
        return fn

    cfg = TimingConfig(warmup=0, min_rounds=4, min_time_s=0.0)
    time_interleaved({"a": mark("a"), "b": mark("b")}, cfg, clock=clock)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_drift_cancels_in_the_interleaved_ratio():
    """A machine that slows down 3x halfway: absolute times move, the speedup stays 2.0."""
    clock = FakeClock()
    rounds = {"n": 0}

    def scale() -> float:
        return 1.0 if rounds["n"] < 20 else 3.0

    def base():
        clock.now += 0.2 * scale()

    def cand():
        clock.now += 0.1 * scale()
        rounds["n"] += 1

    cfg = TimingConfig(warmup=0, min_rounds=40, min_time_s=0.0, max_time_s=1e9)
    out = time_interleaved({"candidate": cand, "baseline": base}, cfg, clock=clock)
    sp, lo, hi = speedup(out["baseline"], out["candidate"])
    assert sp == pytest.approx(2.0)
    assert lo <= 2.0 <= hi


def test_speedup_interval_covers_the_truth_and_tightens_with_data():
    import numpy as np
    rng = np.random.default_rng(1)
    base = Measurement("b", tuple(2.0 + rng.normal(0, 0.1, 200)))
    cand = Measurement("c", tuple(1.0 + rng.normal(0, 0.05, 200)))
    sp, lo, hi = speedup(base, cand)
    assert lo < 2.0 < hi and hi - lo < 0.1
    small_lo, small_hi = bootstrap_median_ci(cand.samples_s[:10])
    big_lo, big_hi = bootstrap_median_ci(cand.samples_s)
    assert (big_hi - big_lo) < (small_hi - small_lo)


def test_timing_config_validates():
    with pytest.raises(ValueError, match="min_rounds must be >= 1"):
        TimingConfig(min_rounds=0)
    with pytest.raises(ValueError, match="min_time_s <= max_time_s"):
        TimingConfig(min_time_s=5, max_time_s=1)


def test_paired_ratio_survives_bursts_that_hit_most_rounds():
    """Load bursts slow 70% of rounds 10x, both sides alike: medians alone would mix slowed and
    unslowed samples; the per-round ratio stays exactly 3."""
    import numpy as np
    rng = np.random.default_rng(0)
    slow = np.where(rng.random(101) < 0.7, 10.0, 1.0)
    base = Measurement("b", tuple(0.3 * slow))
    cand = Measurement("c", tuple(0.1 * slow))
    sp, lo, hi = speedup(base, cand)
    assert sp == pytest.approx(3.0) and lo == pytest.approx(3.0) and hi == pytest.approx(3.0)


def test_unpaired_samples_fall_back_to_ratio_of_medians():
    sp, lo, hi = speedup(Measurement("b", (2.0, 2.0, 2.0, 2.0)), Measurement("c", (1.0, 1.0, 1.0)))
    assert (sp, lo, hi) == (2.0, 2.0, 2.0)
