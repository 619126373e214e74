"""The cross-check tool: its verdict per cell, and one real cell run end to end (correctness only;
the figures it prints are a benchmark, read on a quiet machine)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.crosscheck import BAND, COLUMNS, _spread, _verdict

ROOT = Path(__file__).resolve().parent.parent


def _row(ratio: float, eager_ratio: float, cell_spread: float, alone_spread: float) -> dict:
    return {"ratio": ratio, "eager_ratio": eager_ratio, "cell_spread": cell_spread, "alone_spread": alone_spread}


@pytest.mark.parametrize("ratio, eager_ratio, cell_spread, alone_spread, verdict", [
    (1.00, 1.00, 1.00, 1.00, "within"),
    (BAND[0], BAND[1], 1.00, 1.00, "within"),            # the band's edges belong to it
    (1.08, 1.00, 1.04, 1.02, "noise"),                   # 1.08 <= 1.05 x 1.04: the processes disagreed that much
    (0.93, 1.00, 1.01, 1.03, "noise"),                   # 0.93 >= 0.95 / 1.03
    (1.08, 1.00, 1.01, 1.01, "outside"),                 # beyond both band and spread
    (1.00, 0.90, 1.04, math.nan, "outside"),             # 0.90 < 0.95 / 1.04; NaN (one process) widens nothing
    (1.08, 1.00, math.nan, math.nan, "unknown"),         # one process a side: machine and method cannot be told apart
])
def test_verdict_reads_a_ratio_against_the_band_widened_by_the_measured_spread(ratio, eager_ratio, cell_spread,
                                                                                alone_spread, verdict):
    assert _verdict(_row(ratio, eager_ratio, cell_spread, alone_spread)) == verdict


def test_spread_is_slowest_over_fastest_and_nan_for_one_process():
    assert _spread([2.0, 1.0, 1.5]) == 2.0
    assert math.isnan(_spread([1.0]))


@pytest.mark.parametrize("pipeline", ["jit", "openvino"])   # a torch runtime, and one with its own thread pool
def test_one_real_cell_end_to_end(tmp_path, pipeline):
    """A harness cell and stand-alone processes really run; the CSV carries every column and its
    ratios are the quotients of its own latencies."""
    if pipeline == "openvino":
        pytest.importorskip("openvino", reason="openvino is not installed")
    out = tmp_path / "cross.csv"
    proc = subprocess.run([sys.executable, "-m", "bench.crosscheck", "--models", "lenet", "--pipelines", pipeline,
                           "--batch-sizes", "1", "--threads", "1", "--min-time", "0.05", "--repeats", "1",
                           "--cell-repeats", "1", "--out", str(out)], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = list(csv.DictReader(open(out, newline="")))
    assert tuple(row) == COLUMNS
    assert row["status"] == "ok" and row["verdict"] in ("within", "unknown")   # no spread with one process a side
    for num, den, ratio in (("row_ms", "alone_ms", "ratio"), ("in_cell_eager_ms", "alone_eager_ms", "eager_ratio")):
        assert float(row[num]) > 0 and float(row[den]) > 0
        assert float(row[ratio]) == pytest.approx(float(row[num]) / float(row[den]))
    assert float(row["alone_speedup"]) == pytest.approx(float(row["alone_eager_ms"]) / float(row["alone_ms"]))
    assert math.isnan(float(row["alone_spread"])) and math.isnan(float(row["cell_spread"]))  # one process a side
    assert f"lenet    {pipeline} " in proc.stdout and "of 1 measured cells" in proc.stdout
