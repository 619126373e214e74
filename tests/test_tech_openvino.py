"""The openvino runtime: real OpenVINO compiled models on trained LeNet: f32 fidelity, the precision that
really ran (from OpenVINO's own profile), int8, the throughput hint, absent devices, composition, misfits."""

from __future__ import annotations

import pytest
import torch

import techniques
from bench.api import UserError
from bench.env import detect
from bench.measure.timing import TimingConfig
from bench.pipeline import parse
from bench.running.cell import CellSpec
from bench.training.cache import trained
from techniques import Context, NotApplicable
from tests.cellrow import cell_row

pytest.importorskip("openvino", reason="openvino is not installed")
from techniques.openvino import OpenVino, _check_precision, describe  # noqa: E402

FAST = TimingConfig(warmup=1, min_rounds=3, min_time_s=0.0, max_time_s=1.0)
BATCH = 64


@pytest.fixture(scope="module")
def lenet(digits):
    return trained("lenet", digits)


@pytest.fixture(scope="module")
def eager_logits(lenet, digits):
    with torch.inference_mode():
        return lenet(digits.test_x)


def _ctx(digits, tmp_path) -> Context:
    return Context("lenet", digits, detect(), batch_size=BATCH, quick=True, scratch_dir=tmp_path)


def _predict_all(pred, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([pred.predict(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])


def test_f32_matches_eager_and_reports_f32_kernels(lenet, digits, eager_logits, tmp_path):
    tech = OpenVino()
    assert tech.promise() == "exact"
    pred = tech.prepare(lenet, _ctx(digits, tmp_path))
    logits = _predict_all(pred, digits.test_x)
    assert (logits - eager_logits).abs().max().item() < 1e-4
    assert (logits.argmax(1) == eager_logits.argmax(1)).all()
    assert set(pred.figures) == set(OpenVino.figures)
    assert pred.kernel_precision == "f32 100%" and pred.figures["nodes_f32"] == 1.0
    assert pred.figures["ops_float"] == 4 and pred.figures["ops_quantized"] == 0   # 2 Conv + 2 Gemm
    # The cell's thread count reaches OpenVINO (read back from the compiled model).
    assert pred.threads == pred.figures["inference_threads"] == torch.get_num_threads()
    assert pred.figures["streams"] == 1 and pred.figures["infer_requests"] == 1   # the latency hint
    for n in (1, 7):   # the export's batch dimension is dynamic
        assert torch.allclose(pred.predict(digits.test_x[:n]), eager_logits[:n], atol=1e-4)


def test_bf16_request_reports_bf16_kernels_and_is_approximate(lenet, digits, eager_logits, tmp_path):
    tech = OpenVino(precision="bf16")
    why = tech.unavailable(detect())
    if why:
        pytest.skip(why)
    assert tech.promise() == "approximate"
    pred = tech.prepare(lenet, _ctx(digits, tmp_path))
    assert pred.kernel_precision == "bf16 100%" and pred.figures["nodes_bf16"] == 1.0 and pred.precision == "bf16"
    logits = _predict_all(pred, digits.test_x)
    diff = (logits - eager_logits).abs().max().item()
    assert diff > 1e-4   # bf16 arithmetic really ran: not fp32's outputs
    assert (logits.argmax(1) == eager_logits.argmax(1)).float().mean().item() >= 0.98


def test_static_int8_file_runs_int8_kernels(lenet, digits, eager_logits, tmp_path):
    pred = OpenVino(quant="static").prepare(lenet, _ctx(digits, tmp_path))
    # Which nodes of the QDQ file run int8 kernels is the CPU plugin's choice per machine: on an AMD EPYC
    # (AVX-512 VNNI) all four of lenet's compute nodes did; on an Intel Xeon with AMX the two fully
    # connected layers ran brgemm_avx512_amx_i8 and the two small convolutions brgconv_avx512_f32. The row
    # says what ran, whatever it was: at least the linear layers in int8, and the text matches the shares.
    shares = {p: pred.figures[f"nodes_{p}"] for p in ("f32", "bf16", "f16", "int8")}
    assert pred.figures["nodes_int8"] >= 0.5 and sum(shares.values()) == pytest.approx(1.0)
    assert pred.kernel_precision == describe({p: v for p, v in shares.items() if v > 0})
    assert pred.figures["ops_quantized"] == 4 and pred.figures["ops_float"] == 0
    assert pred.model_bytes < (tmp_path / "model.onnx").stat().st_size / 2   # int8 weights in the file
    logits = _predict_all(pred, digits.test_x)
    assert (logits.argmax(1) == eager_logits.argmax(1)).float().mean().item() >= 0.98


def test_throughput_hint_splits_the_batch_across_requests_and_keeps_the_order(lenet, digits, eager_logits, tmp_path):
    pred = OpenVino(hint="throughput").prepare(lenet, _ctx(digits, tmp_path))
    assert pred.figures["infer_requests"] >= 1 and pred.figures["streams"] >= 1
    logits = _predict_all(pred, digits.test_x)
    assert (logits - eager_logits).abs().max().item() < 1e-4   # every sample back in its place
    assert torch.allclose(pred.predict(digits.test_x[:1]), eager_logits[:1], atol=1e-4)


def test_a_precision_other_than_the_one_asked_is_not_timed():
    # An f16 hint on a CPU without fp16 arithmetic ran bf16 kernels on this project's machine.
    with pytest.raises(NotApplicable, match=r"precision=f16 was asked, but OpenVINO ran compute nodes in bf16 100%"):
        _check_precision("f16", "none", {"bf16": 1.0})
    with pytest.raises(NotApplicable, match="none in int8"):
        _check_precision("f32", "static", {"f32": 1.0})
    _check_precision("f32", "static", {"int8": 0.5, "f32": 0.5})   # int8 file with float leftovers: fine
    assert describe({"f32": 0.25, "int8": 0.75}) == "int8 75%; f32 25%"


def test_absent_device_is_a_skipped_row_with_the_reason():
    import openvino as ov

    devices = ov.Core().available_devices
    if any(d.startswith("GPU") for d in devices):
        pytest.skip("this machine has an OpenVINO GPU device")
    row = cell_row(CellSpec.of("lenet", "openvino:device=gpu", 1, quick=True, timing=FAST), detect())
    assert row["status"] == "skipped"
    assert row["reason"] == f"openvino: OpenVINO finds no GPU device (available: {', '.join(devices)})"
    assert "latency_ms_p50" not in row


def test_cell_row_records_kernel_precision_threads_and_exact_fidelity():
    row = cell_row(CellSpec.of("lenet", "openvino", 16, quick=True, timing=FAST, threads=1), detect())
    assert row["status"] == "ok", row["reason"]
    assert row["fidelity"] == "exact" and row["max_abs_diff"] < 1e-4 and row["top1_agreement"] == 1.0
    assert row["kernel_precision"] == "f32 100%" and row["runtime_threads"] == 1 and row["device"] == "cpu"
    assert 0 < row["model_bytes"] and row["flops"] > 0 and row["peak_mem_mb"] > 0 and row["speedup"] > 0


@pytest.mark.parametrize("pipeline", ["fusion@openvino", "prune:amount=0.5,structured=true@openvino"])
def test_composed_transform_then_openvino(pipeline):
    if pipeline.split(":")[0].split("@")[0] not in techniques.names():
        pytest.skip("the transform (another module) is not in this tree")
    row = cell_row(CellSpec.of("lenet", pipeline, BATCH, quick=True, timing=FAST), detect())
    assert row["status"] == "ok", row.get("reason")
    assert row["kernel_precision"] == "f32 100%"
    if row["fidelity"] == "exact":   # fusion: the same function, so eager's outputs
        assert row["max_abs_diff"] < 1e-3
    else:                            # prune: judged by accuracy
        assert row["accuracy"] > 0.5


@pytest.mark.parametrize("pipeline, words", [("channels_last@openvino", "channels_last"),
                                             ("quantize:mode=static@openvino", "torch.ao int8 modules")])
def test_misfits_are_refused_when_parsed(pipeline, words):
    if pipeline.split(":")[0].split("@")[0] not in techniques.names():
        pytest.skip("the transform (another module) is not in this tree")
    with pytest.raises(UserError, match=f"openvino cannot take {words}"):
        parse(pipeline)


@pytest.mark.parametrize("param,value", [("hint", "fast"), ("precision", "int4"), ("quant", "dynamic"),
                                         ("device", "fpga")])
def test_bad_parameter_names_field_choices_and_value(param, value):
    with pytest.raises(ValueError, match=rf"openvino\.{param} must be one of .*; got '{value}'"):
        OpenVino(**{param: value})
    with pytest.raises(UserError, match=rf"openvino\.{param}: '{value}' is not one of"):
        parse(f"openvino:{param}={value}")
