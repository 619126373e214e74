"""Runtimes jit and compile against eager, and a composed pipeline through a real inference cell."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from bench.running.cell import CellSpec
from tests.cellrow import cell_row
from bench.env import detect
from bench.measure.timing import TimingConfig
from bench.training.cache import trained
from techniques import Context, Env
from techniques.compile import Compile
from techniques.jit import Jit

FIDELITY = 1e-4
FAST = TimingConfig(warmup=1, min_rounds=3, min_time_s=0.0, max_time_s=1.0)


@pytest.fixture(scope="module")
def lenet(digits):
    return trained("lenet", digits)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("batch_size", [1, 16])
def test_jit_matches_eager(lenet, digits, channels_last, batch_size):
    pred = Jit(channels_last=channels_last).prepare(lenet, Context("lenet", digits, detect(), batch_size=batch_size))
    x = digits.test_x[:batch_size]
    with torch.no_grad():
        assert (pred.predict(x) - lenet(x)).abs().max().item() < FIDELITY


def test_jit_folds_batchnorm_of_lenet_bn(digits):
    torch.manual_seed(0)
    import models
    model = models.create("lenet_bn").eval()
    pred = Jit().prepare(model, Context("lenet_bn", digits, detect(), batch_size=4))
    with torch.no_grad():
        assert (pred.predict(digits.test_x[:4]) - model(digits.test_x[:4])).abs().max().item() < FIDELITY


class Tiny(nn.Module):
    """A conv and a linear layer: enough for Inductor to generate a kernel, small enough to compile fast."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.skipif(not detect().has_cxx, reason="torch.compile on the CPU needs a C++ compiler")
def test_compile_matches_eager_and_times_its_compilation(digits):
    torch.manual_seed(0)
    model = Tiny().eval()
    pred = Compile().prepare(model, Context("tiny", digits, detect(), batch_size=8))
    assert set(pred.figures) == {"compile_s"} and pred.figures["compile_s"] > 0
    x = digits.test_x[:8]
    with torch.no_grad():
        assert (pred.predict(x) - model(x)).abs().max().item() < FIDELITY


def test_compile_without_a_cxx_compiler_is_unavailable_with_the_reason():
    assert "C++ compiler" in Compile().unavailable(Env(has_cxx=False))
    assert Compile().unavailable(Env(has_cxx=True)) is None


def test_compile_for_cuda_needs_a_cuda_device_not_a_cxx_compiler():
    assert Compile(device="cuda").unavailable(Env(has_cxx=True, cuda=False)) == "no CUDA device"
    assert Compile(device="cuda").unavailable(Env(has_cxx=False, cuda=True)) is None
    with pytest.raises(ValueError, match="compile.device must be one of cpu, cuda; got 'tpu'"):
        Compile(device="tpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_compile_for_cuda_row_is_timed_on_the_gpu():
    row = cell_row(CellSpec.of("lenet", "compile:device=cuda", 16, quick=True, timing=FAST), detect())
    assert row["status"] == "ok" and row["device"] == "cuda", row.get("reason")
    assert row["top1_agreement"] >= 0.99 and row["peak_mem_mb"] > 0
    assert json.loads(row["figures"])["compile.compile_s"] > 0


@pytest.mark.parametrize("pipeline", ["prune:amount=0.5,structured=true+fusion@jit", "separable:epochs=1+fusion@jit"])
def test_composed_pipeline_runs_through_a_cell(lenet, pipeline):
    spec = CellSpec.of(model="lenet", pipeline=pipeline, batch_size=4, quick=True, timing=FAST)
    row = cell_row(spec, detect())
    assert row["status"] == "ok", row.get("reason")
    figures = json.loads(row["figures"])
    first = pipeline.split(":")[0]
    assert figures[f"fusion.bn_folded"] == 0 and f"{first}.params_after" in figures
    assert row["params"] == figures[f"{first}.params_after"] < figures[f"{first}.params_before"]
    assert row["accuracy"] > 0.5 and row["speedup"] > 0 and not math.isnan(row["speedup"])
    assert row["setup_s"] > 0 and row["latency_ms_p50"] > 0


def test_distill_of_an_incompatible_student_is_a_skipped_row():
    spec = CellSpec.of(model="resnet8", pipeline="distill", batch_size=2, data="synthetic", quick=True, timing=FAST)
    from tests.cellrow import cell_row
    row = cell_row(spec, detect())
    assert row["status"] == "skipped" and "input" in row["reason"]
