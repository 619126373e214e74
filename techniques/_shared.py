"""Helpers several techniques share: FX tracing, the torch.ao int8 module check, CUDA predictor hooks, the
ONNX export and ONNX Runtime's int8 quantization of it (run by both the onnx and the openvino runtimes).

Technique modules import these (and the interface in `bench.api`), never each other.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.api import Context, NotApplicable

CUDA_DEVICE = "cuda"


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """symbolic_trace in eval mode (so `self.training` is traced as False); a net with data-dependent
    control flow cannot be traced, and then this technique does not apply to it."""
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises TraceError and assorted others on untraceable Python
        raise NotApplicable(f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None


def torch_quantized_modules(model: nn.Module) -> list[str]:
    """Names of the torch.ao int8 modules in `model`: they run on CPU kernels only, and no
    torch.onnx exporter translates them, so runtimes other than eager refuse them by name."""
    return sorted({f"{type(m).__module__.split('.modules')[0]}.{type(m).__name__}" for m in model.modules()
                   if type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))
                   and "PackedParams" not in type(m).__name__})


def cuda_hooks(precision: str = "fp32") -> dict[str, Any]:
    """The Predictor fields every CUDA runtime shares: logits back to the CPU outside the timed call,
    `torch.cuda.synchronize` inside it, memory from the CUDA allocator's peak."""
    return dict(device=CUDA_DEVICE, precision=precision, fetch=lambda out: out.detach().float().cpu(),
                synchronize=torch.cuda.synchronize, reset_peak_memory=torch.cuda.reset_peak_memory_stats,
                peak_memory_mb=lambda: torch.cuda.max_memory_allocated() / 2**20)


EXPORT_BATCH = 2                          # torch.export specialises a batch of 1; 2 keeps it dynamic
CALIBRATION_IMAGES = 256                  # static quantization calibrates on this many training images
CALIBRATION_IMAGES_QUICK = 128
_QUANT_OPS = {"ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul", "QLinearConv", "QLinearMatMul",
              "MatMulIntegerToFloat"}
_COMPUTE_OPS = {"Conv", "Gemm", "MatMul"}


@contextlib.contextmanager
def _quiet_export():
    """Silence the exporter's known, irrelevant chatter, narrowly: torchvision's ops are optional
    (not installed here), and a pytree FutureWarning comes from inside torch itself."""
    class _NoTorchvision(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "torchvision is not installed" not in record.getMessage()

    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    flt = _NoTorchvision()
    log.addFilter(flt)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        log.removeFilter(flt)


def export(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> tuple[Path, bool]:
    """Export with the dynamo exporter and a dynamic batch dimension; if that fails, with the
    TorchScript exporter. Returns (path, whether the fallback was used); raises with both reasons."""
    arg = next(iter(inspect.signature(model.forward).parameters))
    example = torch.randn(EXPORT_BATCH, *input_shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_export():
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes={arg: {0: torch.export.Dim("batch")}})
            return path, False
        except Exception as exc:  # any exporter failure: try the other exporter, keep the reason
            dynamo_err = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
        try:
            # The fallback is deliberate and recorded (dynamo_fallback=1): its "legacy exporter"
            # deprecation notices add nothing. TracerWarnings about the model itself still show.
            for notice in ("You are using the legacy TorchScript", "The feature will be removed"):
                warnings.filterwarnings("ignore", message=notice, category=DeprecationWarning)
            torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=[arg], output_names=["logits"],
                              dynamic_axes={arg: {0: "batch"}, "logits": {0: "batch"}})
            return path, True
        except Exception as exc:
            raise RuntimeError(f"ONNX export failed: dynamo exporter: {dynamo_err}; TorchScript exporter: "
                               f"{type(exc).__name__}: {str(exc).strip()[:300]}") from exc


def onnx_calibration(ctx: Context) -> np.ndarray:
    """Training images (N x C x H x W float32) that static int8 quantization calibrates activation ranges on."""
    n = CALIBRATION_IMAGES_QUICK if ctx.quick else CALIBRATION_IMAGES
    return ctx.data.train_x[:n].numpy().astype(np.float32)


def _strip_initializer_value_info(src: Path, dst: Path) -> Path:
    # The dynamo exporter writes value_info for initializers too; ORT's quantizer then re-infers
    # shapes and can fail with a shape-inference mismatch (seen with onnxruntime 1.31/1.32). Dropping those entries loses nothing.
    import onnx

    model = onnx.load(str(src))
    inits = {i.name for i in model.graph.initializer}
    keep = [v for v in model.graph.value_info if v.name not in inits]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    onnx.save(model, str(dst))
    return dst


def quantize_onnx(src: Path, mode: str, calib: np.ndarray, dst: Path) -> Path:
    """ORT int8 quantization: `dynamic` (weights int8, activations quantized per call) or `static`
    (QDQ format, activation ranges calibrated on `calib`, batches of 32)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    clean = _strip_initializer_value_info(src, src.with_suffix(".clean.onnx"))
    root = logging.getLogger()

    class _NoPreprocessHint(logging.Filter):
        # The quantizer logs "Please consider to run pre-processing" on every call, via the root logger.
        def filter(self, record: logging.LogRecord) -> bool:
            return "pre-processing before quantization" not in record.getMessage()

    flt = _NoPreprocessHint()
    root.addFilter(flt)
    try:
        if mode == "dynamic":
            quantize_dynamic(str(clean), str(dst), weight_type=QuantType.QInt8)
        else:
            import onnx
            in_name = onnx.load(str(clean)).graph.input[0].name

            class Reader(CalibrationDataReader):
                def __init__(self) -> None:
                    self._it = iter([{in_name: calib[i:i + 32]} for i in range(0, len(calib), 32)])

                def get_next(self) -> dict[str, Any] | None:
                    return next(self._it, None)

            quantize_static(str(clean), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    finally:
        root.removeFilter(flt)
    return dst


def count_ops(path: Path) -> tuple[int, int]:
    """(quantized, float) compute nodes: integer ops, or QDQ Conv/Gemm/MatMul whose weight comes from
    a DequantizeLinear; every other Conv/Gemm/MatMul is float."""
    import onnx

    graph = onnx.load(str(path)).graph
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    n_quant = n_float = 0
    for node in graph.node:
        if node.op_type in _QUANT_OPS:
            n_quant += 1
        elif node.op_type in _COMPUTE_OPS:
            if len(node.input) > 1 and node.input[1] in dq_outputs:
                n_quant += 1
            else:
                n_float += 1
    return n_quant, n_float
