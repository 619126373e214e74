"""Statistics of timed samples (medians, intervals, paired ratios) and the timing configuration's checks."""

from __future__ import annotations

import pytest

from bench.measure.stats import Measurement, bootstrap_median_ci, speedup
from bench.measure.timing import TimingConfig


def test_measurement_statistics():
    m = Measurement("x", (1.0, 2.0, 3.0, 4.0, 100.0), batch_size=10)
    assert m.median_s == 3.0
    assert m.mean_s == 22.0
    assert m.iqr_s == pytest.approx(4.0 - 2.0)
    assert m.quantile_s(0.99) == pytest.approx(4.0 + 0.96 * 96.0)
    assert m.throughput_sps == pytest.approx(10 / 3.0)
    with pytest.raises(ValueError, match="samples_s is empty"):
        Measurement("y", ())


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
