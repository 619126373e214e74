"""The onnx runtime: fidelity of real ORT sessions on trained LeNet, the provider-fallback check, composition."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import techniques
from bench.running.cell import CellSpec
from tests.cellrow import cell_row
from bench.env import detect
from bench.api import UserError
from bench.pipeline import parse
from bench.measure.timing import TimingConfig
from bench.training.cache import trained
from techniques import Context, Env, NotApplicable
from techniques.onnx import Onnx

FAST = TimingConfig(warmup=1, min_rounds=3, min_time_s=0.0, max_time_s=1.0)
BATCH = 64


@pytest.fixture(scope="module")
def lenet(digits):
    return trained("lenet", digits)


@pytest.fixture(scope="module")
def eager_logits(lenet, digits):
    with torch.inference_mode():
        return lenet(digits.test_x)


def _ctx(digits, tmp_path, env: Env | None = None) -> Context:
    return Context("lenet", digits, env or detect(), batch_size=BATCH, quick=True, scratch_dir=tmp_path)


def _predict_all(pred, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([pred.predict(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])


@pytest.mark.parametrize("opt", ["disable", "all"])
def test_fp32_session_matches_eager(lenet, digits, eager_logits, tmp_path, opt):
    tech = Onnx(ep="cpu", opt=opt)
    pred = tech.prepare(lenet, _ctx(digits, tmp_path))
    logits = _predict_all(pred, digits.test_x)
    assert (logits - eager_logits).abs().max().item() < 1e-4
    assert (logits.argmax(1) == eager_logits.argmax(1)).all()
    assert pred.providers == ("CPUExecutionProvider",)
    assert set(pred.figures) == set(Onnx.figures)
    assert pred.figures["dynamo_fallback"] == 0.0          # the dynamo exporter handled LeNet itself
    assert pred.figures["ops_quantized"] == 0 and pred.figures["ops_float"] == 4   # 2 Conv + 2 Gemm/MatMul
    assert pred.model_bytes == (tmp_path / "model.onnx").stat().st_size > 4 * 400_000  # fp32 weights inside
    for n in (1, 7):  # exported with a batch of 2 and a dynamic batch dimension: other sizes run too
        assert torch.allclose(pred.predict(digits.test_x[:n]), eager_logits[:n], atol=1e-4)


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.export refuses it, the TorchScript tracer records one branch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x.flatten(1))
        return y if y.sum() > 0 else -y


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")   # expected: that is the point of _Branchy
def test_exporter_fallback_is_recorded(digits, tmp_path):
    torch.manual_seed(0)
    model = _Branchy().eval()
    pred = Onnx().prepare(model, _ctx(digits, tmp_path))
    assert pred.figures["dynamo_fallback"] == 1.0
    # The traced file computes whichever branch the export example took: the harness's fidelity
    # columns, not the exporter, are what tell a user whether the fallback kept the model's meaning.
    with torch.inference_mode():
        ref = model(digits.test_x[:5])
    out = pred.predict(digits.test_x[:5])
    assert torch.allclose(out, ref, atol=1e-4) or torch.allclose(out, -ref, atol=1e-4)


@pytest.mark.parametrize("quant", ["dynamic", "static"])
def test_ort_quantization_keeps_predictions(lenet, digits, eager_logits, tmp_path, quant):
    pred = Onnx(quant=quant).prepare(lenet, _ctx(digits, tmp_path))
    logits = _predict_all(pred, digits.test_x)
    agreement = (logits.argmax(1) == eager_logits.argmax(1)).float().mean().item()
    assert agreement >= 0.98
    assert pred.figures["ops_quantized"] == 4 and pred.figures["ops_float"] == 0
    assert pred.model_bytes < (tmp_path / "model.onnx").stat().st_size / 2   # int8 weights


def test_unavailable_names_missing_provider_and_lists_available():
    env = Env(ort_providers=("AzureExecutionProvider", "CPUExecutionProvider"))
    for ep in ("fpga", "vitisai"):
        assert Onnx(ep=ep).unavailable(env) == ("VitisAIExecutionProvider not available "
                                                "(available: AzureExecutionProvider, CPUExecutionProvider)")
    assert Onnx(ep="cpu").unavailable(env) is None
    assert Onnx(ep="cuda").unavailable(Env(ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"))) \
        == "no CUDA device"
    assert "not installed" in Onnx().unavailable(Env(ort_providers=()))


def test_real_env_fpga_row_is_skipped_with_the_reason():
    env = detect()
    if "VitisAIExecutionProvider" in env.ort_providers:
        pytest.skip("this onnxruntime build has Vitis AI")
    row = cell_row(CellSpec.of("lenet", "onnx:ep=fpga", 1, quick=True, timing=FAST), env)
    assert row["status"] == "skipped"
    assert row["reason"] == f"onnx: VitisAIExecutionProvider not available (available: {', '.join(env.ort_providers)})"


def test_session_fallback_to_cpu_is_detected_not_timed(lenet, digits, tmp_path):
    """A real ORT session asked for Vitis AI on a build without it runs on CPU: the check catches it."""
    env = detect()
    if "VitisAIExecutionProvider" in env.ort_providers:
        pytest.skip("this onnxruntime build has Vitis AI")
    with pytest.raises(NotApplicable, match="VitisAIExecutionProvider requested but the session runs on "
                                            "CPUExecutionProvider"):
        Onnx(ep="fpga").prepare(lenet, _ctx(digits, tmp_path))
    # Through the harness, with an Env that (wrongly) claims the provider: a skipped row, no timing.
    liar = Env(cpu_count=env.cpu_count, ort_providers=env.ort_providers + ("VitisAIExecutionProvider",))
    row = cell_row(CellSpec.of("lenet", "onnx:ep=fpga", BATCH, quick=True, timing=FAST), liar)
    assert row["status"] == "skipped" and "fell back" in row["reason"]
    assert "latency_ms_p50" not in row and "speedup" not in row


def test_cell_row_records_providers_and_file_size():
    row = cell_row(CellSpec.of("lenet", "onnx:ep=cpu,quant=static", BATCH, quick=True, timing=FAST), detect())
    assert row["status"] == "ok" and row["device"] == "cpu"
    assert row["providers"] == "CPUExecutionProvider"
    assert row["top1_agreement"] >= 0.98 and row["accuracy"] > 0.9
    assert 0 < row["model_bytes"] < 1_000_000   # the int8 .onnx file, not the fp32 state dict (1.7 MB)
    assert row["speedup"] > 0 and row["latency_ms_p50"] > 0


def test_composed_transform_then_onnx():
    pipeline = "prune:amount=0.5@onnx:ep=cpu"
    if "prune" not in techniques.names():
        pytest.skip("prune (another module) is not in this tree")
    row = cell_row(CellSpec.of("lenet", pipeline, BATCH, quick=True, timing=FAST), detect())
    assert row["status"] == "ok", row.get("reason")
    assert row["providers"] == "CPUExecutionProvider" and row["top1_agreement"] >= 0.9


@pytest.mark.parametrize("pipeline", ["quantize:mode=dynamic@onnx:ep=cpu", "quantize:mode=static@onnx:ep=cpu",
                                      "fusion+quantize@onnx:ep=cpu"])
def test_torch_quantized_model_is_refused_when_parsed(pipeline):
    if pipeline.split("+")[0] == "fusion" and "fusion" not in techniques.names():
        pytest.skip("fusion (another module) is not in this tree")
    with pytest.raises(UserError, match="onnx:ep=cpu cannot take torch.ao int8 modules"):
        parse(pipeline)


@pytest.mark.parametrize("param,value", [("ep", "fpga2"), ("opt", "max"), ("quant", "int4"), ("device", "tpu")])
def test_bad_parameter_names_field_choices_and_value(param, value):
    with pytest.raises(ValueError, match=rf"onnx\.{param} must be one of .*; got '{value}'"):
        Onnx(**{param: value})
    with pytest.raises(UserError, match=rf"onnx\.{param}: '{value}' is not one of"):
        parse(f"onnx:{param}={value}")


def test_device_is_the_openvino_providers_and_refused_with_another_provider():
    assert Onnx(ep="openvino", device="gpu").label() == "onnx:ep=openvino,device=gpu"
    with pytest.raises(ValueError, match=r"onnx\.device .* needs ep=openvino; got device='gpu' with ep='cpu'"):
        Onnx(ep="cpu", device="gpu")
    with pytest.raises(UserError, match="needs ep=openvino"):
        parse("onnx:device=npu")


@pytest.mark.gpu
def test_cuda_ep_with_io_binding_matches_eager(lenet, digits, eager_logits, tmp_path):
    env = detect()
    if not env.cuda or "CUDAExecutionProvider" not in env.ort_providers:
        pytest.skip("needs CUDA and onnxruntime-gpu")
    pred = Onnx(ep="cuda").prepare(lenet, _ctx(digits, tmp_path, env))
    assert pred.providers[0] == "CUDAExecutionProvider" and pred.device == "cuda"
    logits = _predict_all(pred, digits.test_x)
    # cuDNN may pick TF32 convolutions: agreement exact, logits within TF32 tolerance.
    assert (logits.argmax(1) == eager_logits.argmax(1)).float().mean().item() >= 0.99
    assert (logits - eager_logits).abs().max().item() < 1e-2
