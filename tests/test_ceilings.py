"""The machine's ceilings: launch-floor timing logic (fake clock), which peak a row is judged against,
and the report's GPU section built from them. The real CUDA measurement runs only where a GPU is."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from bench.measure import ceilings
from bench.reporting import report
from tests.test_report import _row, md_tables

CUDA_PEAKS = (("fp32", 50_000.0), ("tf32", 400_000.0), ("bf16", 800_000.0), ("fp16", 790_000.0))


class FakeGpu:
    """A clock that advances only when a launch is synchronized: 5 us per launch+sync, +1 us on
    every tenth call (an outlier the median must ignore)."""

    def __init__(self) -> None:
        self.now_s = 0.0
        self.pending = 0
        self.synced = 0

    def launch(self) -> None:
        self.pending += 1

    def synchronize(self) -> None:
        self.synced += 1
        self.now_s += self.pending * (5e-6 + (1e-6 if self.synced % 10 == 0 else 0.0))
        self.pending = 0

    def clock(self) -> float:
        return self.now_s


def test_launch_floor_is_the_median_of_launch_plus_synchronize():
    gpu = FakeGpu()
    floor = ceilings.launch_floor_ms(gpu.launch, gpu.synchronize, calls=100, clock=gpu.clock)
    assert floor == pytest.approx(5e-3)  # 5 us; the 6 us outliers are 10% of the samples
    assert gpu.synced == 50 + 100        # warm-up, then one synchronize inside every timed call


def test_a_floor_timed_without_synchronize_would_be_zero():
    # What the synchronize inside the window is for: without it the clock sees only the launch.
    gpu = FakeGpu()
    assert ceilings.launch_floor_ms(gpu.launch, lambda: None, calls=10, clock=gpu.clock) == 0.0
    with pytest.raises(ValueError, match="calls must be >= 1; got 0"):
        ceilings.launch_floor_ms(gpu.launch, gpu.synchronize, calls=0, clock=gpu.clock)


@pytest.mark.parametrize("device,precision,expect", [
    ("cpu", "fp32", 60.0),
    ("cuda", "bf16", 800_000.0),
    ("cuda", "fp16", 790_000.0),
    ("cuda:1", "fp32", 400_000.0),   # cuDNN may use TF32 (torch's default): the TF32 ceiling
])
def test_a_row_is_judged_against_the_peak_of_its_device_and_precision(device, precision, expect):
    assert torch.backends.cudnn.allow_tf32  # torch's default, which the fp32 case relies on
    assert ceilings.peak_for(device, precision, 60.0, CUDA_PEAKS) == expect


def test_strict_fp32_when_cudnn_tf32_is_off(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert ceilings.peak_for("cuda", "fp32", 60.0, CUDA_PEAKS) == 50_000.0
    assert math.isnan(ceilings.peak_for("cuda", "fp32", 60.0, ()))  # no CUDA peak measured: no fraction


def test_cpu_machine_records_only_the_cpu_peak():
    c = ceilings.measure(cuda=False)
    assert c.cpu_matmul_gflops > 0 and c.cuda_matmul_gflops == () and math.isnan(c.cuda_launch_floor_ms)
    assert c.as_record() == {"matmul_peak_gflops": c.cpu_matmul_gflops}


def test_report_puts_gpu_rows_against_the_floor_and_peak(tmp_path):
    rows = [_row(), _row(batch_size=256, latency_ms_p50=50.0),
            _row(pipeline="gpu", device="cuda", latency_ms_p50=0.05, peak_gflops=400_000.0),
            _row(pipeline="gpu", device="cuda", batch_size=256, gflops_achieved=12_000.0, peak_gflops=400_000.0,
                 peak_fraction=0.03, latency_ms_p50=0.1),
            _row(pipeline="gpu:amp=bf16", device="cuda", batch_size=256, gflops_achieved=40_000.0,
                 peak_gflops=800_000.0, peak_fraction=0.05, latency_ms_p50=0.08)]
    pd.DataFrame(rows).to_csv(tmp_path / "records.csv", index=False)
    env = {"cuda_device": "NVIDIA H100", **ceilings.Ceilings(60.0, CUDA_PEAKS, 0.005).as_record()}
    (tmp_path / "env.json").write_text(json.dumps(env))
    report.write(tmp_path)
    tables = md_tables((tmp_path / "report.md").read_text())
    gpu = tables["GPU rows against this GPU's ceilings"]
    assert gpu[0] == report.GPU_CEILING_HEADERS
    assert gpu[1:] == [["lenet", "gpu", "0.05", "10", "256", "12,000", "400,000", "3.0"],
                       ["lenet", "gpu:amp=bf16", "–", "–", "256", "40,000", "800,000", "5.0"]]
    envt = {r[0]: r[1] for r in tables["Environment"]}
    assert envt["Measured CUDA launch floor (µs)"] == "5"
    assert envt["Measured CUDA matmul peak (GFLOP/s)"] == "fp32 50,000, tf32 400,000, bf16 800,000, fp16 790,000"


def test_a_cpu_report_has_no_gpu_section(tmp_path):
    pd.DataFrame([_row()]).to_csv(tmp_path / "records.csv", index=False)
    report.write(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "GPU rows against" not in text and "CUDA launch floor" not in text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_real_gpu_ceilings_are_plausible():
    c = ceilings.measure(cuda=True)
    peaks = dict(c.cuda_matmul_gflops)
    assert 1e-3 < c.cuda_launch_floor_ms < 1.0          # 1 us .. 1 ms for launch + synchronize
    assert peaks["fp32"] > c.cpu_matmul_gflops and peaks["bf16"] > peaks["fp32"]
