"""quantize: int8 quantization in PyTorch (torch.ao), dynamic (Linear only) or static (calibrated).

When it helps: int8 weights are about 4x smaller, and int8 kernels can be faster where the layers
are big enough for the arithmetic to outweigh quantize/dequantize overhead.

- `mode=dynamic`: `torch.ao.quantization.quantize_dynamic`. It quantizes nn.Linear only; nn.Conv2d
  stays float *without a word*, even when asked for. The figures count what was really converted
  (on LeNet: 2 Linear, 0 Conv), so a small latency change is explained, not hidden.
- `mode=static`: FX graph mode post-training quantization (`prepare_fx` / `convert_fx`) with the
  default qconfig mapping of the active quantized engine (`x86` on this CPU), calibrated on real
  training images. FX, not PT2E: PT2E's converted graph holds reference quantize/dequantize ops
  meant for Inductor to lower, and runs slowly in eager; FX swaps in real int8 modules
  (QuantizedConv2d, QuantizedLinear) that the eager runtime calls directly.

A quantized model slower than float is reported as slower: on tiny CNNs the per-call (de)quantize
work can dominate. Quantized torch modules do not export to ONNX; use `onnx:quant=...` for that.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from techniques import TORCH_INT8, Context, NotApplicable, Transform, register

CALIBRATION_IMAGES = 256          # static mode calibrates activation ranges on this many training images
CALIBRATION_IMAGES_QUICK = 128
CALIBRATION_BATCH = 64


@register
@dataclass(frozen=True)
class Quantize(Transform):
    """int8 with torch.ao: `dynamic` (Linear layers only) or `static` (FX graph mode, calibrated on training images)."""

    mode: Literal["dynamic", "static"] = "dynamic"

    name: ClassVar[str] = "quantize"
    figures: ClassVar[dict[str, str]] = {
        "linear_quantized": "count", "conv_quantized": "count", "layers_float": "count",
        "bytes_before": "bytes", "bytes_after": "bytes", "calibration_images": "count",
    }
    examples: ClassVar[tuple[str, ...]] = ("quantize:mode=dynamic", "quantize:mode=static")

    def __post_init__(self) -> None:
        if self.mode not in ("dynamic", "static"):
            raise ValueError(f"quantize.mode must be one of dynamic, static; got {self.mode!r}")

    def produces(self) -> str:
        return TORCH_INT8   # torch.ao modules: eager/jit/compile run them; ONNX export and CUDA cannot

    def apply(self, model: nn.Module, ctx: Context) -> tuple[nn.Module, dict[str, float]]:
        from bench.api.harness import state_dict_bytes  # the same byte count the harness reports

        model = model.eval()
        bytes_before = state_dict_bytes(model)
        n_calib = 0
        with _quiet_ao():
            if self.mode == "dynamic":
                qmodel = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear, nn.Conv2d},
                                                                dtype=torch.qint8)
            else:
                n_calib = CALIBRATION_IMAGES_QUICK if ctx.quick else CALIBRATION_IMAGES
                qmodel = _static_fx(model, ctx.data.train_x[:n_calib])
        counts = count_layers(qmodel)
        if counts["linear_quantized"] + counts["conv_quantized"] == 0:
            raise NotApplicable(f"quantize:mode={self.mode} converted no layer of {ctx.model_name} "
                                f"({counts['layers_float']} float Conv2d/Linear left)")
        figures = {**{k: float(v) for k, v in counts.items()}, "bytes_before": float(bytes_before),
                   "bytes_after": float(state_dict_bytes(qmodel)), "calibration_images": float(n_calib)}
        return qmodel.eval(), figures


@contextlib.contextmanager
def _quiet_ao():
    """torch.ao.quantization warns on every call that it is deprecated (in favour of torchao, not
    installed here), that `reduce_range` will go, and that quantized tensor creation is deprecated.
    These say nothing about this run's result, so exactly these messages are silenced, here only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Please use quant_min and quant_max", category=UserWarning)
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel",
                                category=UserWarning)
        yield


def _static_fx(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    engine = torch.backends.quantized.engine
    if engine not in ("x86", "fbgemm", "qnnpack", "onednn"):
        raise NotApplicable(f"no int8 engine for static quantization (torch.backends.quantized.engine={engine!r})")
    try:
        prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping(engine), (calib[:2],))
    except Exception as exc:  # symbolic tracing fails on data-dependent control flow
        raise NotApplicable(f"FX cannot trace the model for static quantization: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from exc
    with torch.inference_mode():
        for i in range(0, len(calib), CALIBRATION_BATCH):
            prepared(calib[i:i + CALIBRATION_BATCH])
    return convert_fx(prepared)


def count_layers(model: nn.Module) -> dict[str, int]:
    """Quantized Linear and Conv modules, and the Conv2d/Linear layers still in float."""
    lin = conv = flt = 0
    for m in model.modules():
        kind = type(m).__name__
        quantized = type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))
        if quantized and "PackedParams" not in kind and "Linear" in kind:
            lin += 1
        elif quantized and "Conv" in kind:
            conv += 1
        elif not quantized and isinstance(m, (nn.Linear, nn.Conv2d)):
            flt += 1
    return {"linear_quantized": lin, "conv_quantized": conv, "layers_float": flt}
