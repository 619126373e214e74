"""The gpu runtime. Without CUDA: the skip and its reason, parameter checks, and (with only the CUDA
calls replaced by recorders) that the harness synchronizes inside the timed region and takes memory
from torch.cuda. With CUDA (`-m gpu`): real fidelity, CUDA-graph replay and memory figures."""

from __future__ import annotations

import time

import pytest
import torch

import bench.running.cell
from bench.running.cell import CellSpec
from tests.cellrow import cell_row
from bench.env import detect
from bench.api import UserError
from bench.pipeline import parse
from bench.measure.timing import TimingConfig
from bench.measure.timing import time_paired_blocks as real_time_paired_blocks
from bench.training.cache import trained
from techniques import Context, Env
from techniques import gpu as gpu_mod
from techniques.gpu import Gpu

FAST = TimingConfig(warmup=1, min_rounds=3, min_time_s=0.0, max_time_s=1.0)
BATCH = 64
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_unavailable_without_cuda():
    assert Gpu().unavailable(Env(cuda=False)) == "no CUDA device"
    assert Gpu(amp="bf16", cuda_graphs=True).unavailable(Env(cuda=True, cuda_device="X", cuda_count=1)) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_row_is_skipped_with_the_reason_here():
    row = cell_row(CellSpec.of("lenet", "gpu:amp=bf16,channels_last=true", 1, quick=True, timing=FAST), detect())
    assert row["status"] == "skipped" and row["reason"] == "gpu: no CUDA device"
    assert "latency_ms_p50" not in row


def test_parameters_validate_and_parse():
    with pytest.raises(ValueError, match=r"gpu\.amp must be one of none, bf16, fp16; got 'fp8'"):
        Gpu(amp="fp8")
    with pytest.raises(ValueError, match=r"gpu\.cuda_graphs must be true or false; got 'yes please'"):
        Gpu(cuda_graphs="yes please")
    with pytest.raises(UserError, match=r"gpu\.cuda_graphs: 'maybe' is not a boolean"):
        parse("gpu:cuda_graphs=maybe")
    t = parse("gpu:amp=BF16,channels_last=true,cuda_graphs=1").runtime
    assert (t.amp, t.channels_last, t.cuda_graphs) == ("bf16", True, True)


def test_torch_quantized_model_is_refused_before_touching_cuda():
    # Refused when the pipeline is parsed, before any device exists.
    with pytest.raises(UserError, match="gpu cannot take torch.ao int8 modules, which quantize:mode=dynamic produces"):
        parse("quantize:mode=dynamic@gpu")


def test_predictor_uses_torch_cuda_accounting(monkeypatch, digits):
    """Only the device is swapped (CPU tensors, no GPU here): the wiring is the real one."""
    monkeypatch.setattr(gpu_mod, "DEVICE", "cpu")
    pred = Gpu().prepare(trained("lenet", digits), Context("lenet", digits, Env(cuda=True), batch_size=BATCH))
    assert pred.synchronize is torch.cuda.synchronize
    assert pred.reset_peak_memory is torch.cuda.reset_peak_memory_stats
    assert pred.fetch(torch.ones(2, 10, dtype=torch.float16)).dtype == torch.float32


def test_harness_synchronizes_inside_the_timed_region(monkeypatch):
    """CUDA's calls become recorders (there is no GPU): the event log must read clock, run,
    synchronize, clock for every timed candidate call, and the memory figure must be CUDA's."""
    events: list[str] = []
    timing = {"on": False}
    monkeypatch.setattr(gpu_mod, "DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: timing["on"] and events.append("sync"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: events.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 7 * 2**20)

    real_prepare = Gpu.prepare

    def prepare(self, model, ctx):
        pred = real_prepare(self, model, ctx)
        inner = pred.run
        pred.run = lambda x: (timing["on"] and events.append("run"), inner(x))[1]
        return pred

    def logged_time_paired_blocks(candidate, baseline, cfg, *, batch_size=1, clock=time.perf_counter, **kw):
        def tick() -> float:
            events.append("clock")
            return clock()
        timing["on"] = True
        try:
            return real_time_paired_blocks(candidate, baseline, cfg, batch_size=batch_size, clock=tick, **kw)
        finally:
            timing["on"] = False

    monkeypatch.setattr(Gpu, "prepare", prepare)
    monkeypatch.setattr(bench.running.cell, "time_paired_blocks", logged_time_paired_blocks)
    env = Env(cuda=True, cuda_device="recorded", cuda_count=1, cpu_count=1)
    # max_time_s far away: exactly min_rounds rounds, even on a busy CPU
    exact = TimingConfig(warmup=3, min_rounds=3, min_time_s=0.0, max_time_s=600.0, block_s=0.0, settle_s=0.0)
    row = cell_row(CellSpec.of("lenet", "gpu", BATCH, quick=True, timing=exact), env)

    assert row["status"] == "ok"
    assert "reset" in events and row["peak_mem_mb"] == 7.0 and row["infer_mem_mb"] == 7.0
    runs = [i for i, e in enumerate(events) if e == "run"]
    # the timed calls: at least one per round, and the warm-up calls (timed to size the blocks)
    timed = [i for i in runs if events[i - 1] == "clock"]
    assert row["rounds"] >= exact.min_rounds
    assert len(timed) >= row["rounds"] + exact.warmup
    for i in timed:
        assert events[i - 1:i + 3] == ["clock", "run", "sync", "clock"], events[i - 1:i + 3]


# --- on a real GPU (pytest -m gpu on a CUDA machine) -------------------------------------------------

def _padded_logits(pred, x: torch.Tensor, batch: int) -> torch.Tensor:
    from bench.running.cell import _batched_predict  # the cell's own padding: what a real row computes
    return _batched_predict(pred, x, batch)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("amp,channels_last,agree_min,diff_max", [
    ("none", False, 0.99, 1e-2),    # cuDNN may use TF32 for fp32 convolutions
    ("none", True, 0.99, 1e-2),
    ("bf16", True, 0.98, 1.0),      # bf16 keeps 8 mantissa bits: logits move by ~0.1 on LeNet
    ("fp16", False, 0.98, 0.5),
])
def test_gpu_matches_eager(digits, amp, channels_last, agree_min, diff_max):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("GPU without bf16")
    model = trained("lenet", digits)
    with torch.inference_mode():
        ref = model(digits.test_x)
    pred = Gpu(amp=amp, channels_last=channels_last).prepare(
        trained("lenet", digits), Context("lenet", digits, detect(), batch_size=BATCH))
    logits = _padded_logits(pred, digits.test_x, BATCH)
    assert logits.device.type == "cpu" and logits.dtype == torch.float32
    assert (logits.argmax(1) == ref.argmax(1)).float().mean().item() >= agree_min
    assert (logits - ref).abs().max().item() < diff_max


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("amp", ["none", "fp16"])
def test_cuda_graph_replay_gives_the_same_logits(digits, amp):
    ctx = Context("lenet", digits, detect(), batch_size=BATCH)
    plain = Gpu(amp=amp).prepare(trained("lenet", digits), ctx)
    graphed = Gpu(amp=amp, cuda_graphs=True).prepare(trained("lenet", digits), ctx)
    a, b = _padded_logits(plain, digits.test_x, BATCH), _padded_logits(graphed, digits.test_x, BATCH)
    assert torch.allclose(a, b, atol=1e-4 if amp == "none" else 1e-2)
    # Two batches placed, then the first one run: the replay must compute the first batch.
    x1, x2 = digits.test_x[:BATCH], digits.test_x[BATCH:2 * BATCH]
    p1 = graphed.place(x1)
    graphed.place(x2)
    out = graphed.fetch(graphed.run(p1))
    torch.cuda.synchronize()
    assert torch.allclose(out, a[:BATCH], atol=1e-4 if amp == "none" else 1e-2)
    with pytest.raises(ValueError, match="captured for input"):
        graphed.place(digits.test_x[:3])


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("pipeline", ["gpu", "gpu:cuda_graphs=true", "gpu:amp=bf16,channels_last=true"])
def test_gpu_row_has_cuda_memory_and_timing(pipeline):
    row = cell_row(CellSpec.of("lenet", pipeline, BATCH, quick=True, timing=FAST), detect())
    assert row["status"] == "ok" and row["device"] == "cuda"
    assert row["peak_mem_mb"] > 0 and row["latency_ms_p50"] > 0
    assert row["top1_agreement"] >= 0.98
