"""openvino: the model's ONNX export run by OpenVINO Runtime on a device plugin (its CPU plugin here).

When it helps: OpenVINO compiles the graph for the machine (oneDNN/brgemm kernels, fused activations,
its own layouts) and, on a CPU with AVX-512 BF16 or AMX, can run it in bf16; given the int8 QDQ file of
ONNX Runtime's static quantization (`quant=static`, calibrated on real training images) it runs int8
kernels. It reads the same file the `onnx` runtime exports (torch.onnx dynamo, batch dimension dynamic).

Parameters: `hint` is OpenVINO's PERFORMANCE_HINT (`latency`: one stream, each call on all the cell's
threads; `throughput`: several streams, and a batch split across that many infer requests run by an
AsyncInferQueue). `precision` is INFERENCE_PRECISION_HINT: `f32` (default) or `bf16`/`f16` on request.
`device` is the plugin: `cpu`, or `gpu`/`npu` (skipped when `core.available_devices` has none).

Honesty: on a CPU with bf16 support OpenVINO's *default* inference precision is bf16 (max |logit diff|
1.3e-3 against fp32 was seen on lenet), so `precision` is always pinned, and fidelity is exact only in
f32 without int8. OpenVINO may also run another precision than the one asked (an `f16` hint on a CPU
without fp16 arithmetic ran bf16 kernels here): a second compiled model with PERF_COUNT on runs a few
batches, and every executed node's `exec_type` (`brgconv_avx512_bf16`, `brgemm_avx512_i8`, ...) says
what ran. The row carries that per precision (share of the Convolution/FullyConnected/MatMul nodes, in
`kernel_precision` and the figures); float compute nodes in another precision than the one asked make
the row skipped, not a timing under the wrong name.

Threads: INFERENCE_NUM_THREADS is `torch.get_num_threads()`, the count the eager baseline gets.
Sources: OpenVINO docs, "CPU Device" (inference precision, bf16 default) and "Performance Hints".
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from techniques import CONTIGUOUS, Context, Env, NotApplicable, Predictor, Runtime, register
from techniques._shared import count_ops, export, onnx_calibration, quantize_onnx, torch_quantized_modules

DEVICES = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
PRECISIONS = ("f32", "bf16", "f16")
# What the CPU plugin must list in OPTIMIZATION_CAPABILITIES to compute in a precision.
_CAPABILITY = {"f32": "FP32", "bf16": "BF16", "f16": "FP16"}
# Nodes whose precision is the row's arithmetic (the rest are reorders, pooling, element-wise).
COMPUTE_NODES = {"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"}
# exec_type's last token -> the precision word of the row (I8/U8 are both int8 kernels).
_EXEC_PRECISION = {"f32": "f32", "bf16": "bf16", "f16": "f16", "i8": "int8", "u8": "int8"}
PROFILE_CALLS = 3


@register
@dataclass(frozen=True)
class OpenVino(Runtime):
    """The ONNX export on OpenVINO Runtime (CPU plugin; GPU/NPU when present), f32 unless asked, optionally int8."""

    hint: Literal["latency", "throughput"] = "latency"
    precision: Literal["f32", "bf16", "f16"] = "f32"
    quant: Literal["none", "static"] = "none"
    device: Literal["cpu", "gpu", "npu"] = "cpu"

    name: ClassVar[str] = "openvino"
    figures: ClassVar[dict[str, str]] = {
        "export_s": "s", "quant_s": "s", "compile_s": "s",
        "dynamo_fallback": "bool",                         # 1 when torch.onnx fell back to its TorchScript exporter
        "ops_quantized": "count", "ops_float": "count",    # Conv/Gemm/MatMul nodes of the file in int8 / in float
        "streams": "count", "infer_requests": "count", "inference_threads": "count",
        # Share of executed compute nodes whose kernel ran in each precision (OpenVINO's profile).
        "nodes_f32": "ratio", "nodes_bf16": "ratio", "nodes_f16": "ratio", "nodes_int8": "ratio",
    }
    heavy_imports: ClassVar[tuple[str, ...]] = ("openvino", "onnx", "onnxscript", "onnxruntime.quantization",
                                                "torch.onnx", "torch.export")
    # The exported graph takes NCHW inputs and OpenVINO picks its own layouts: channels_last would
    # change nothing it runs, so `channels_last@openvino` is refused when it is parsed.
    accepts_memory_formats: ClassVar[tuple[str, ...]] = (CONTIGUOUS,)
    # Not in the default matrices yet: a --quick default must add under 15 s to `make quick`, and that was
    # not measured on a quiet machine (one example would add two cells, about 4 s each as an onnx cell
    # in results/baseline-ci). Typed on request: docs/openvino.md.
    examples: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for field_, allowed in (("hint", tuple(HINTS)), ("precision", PRECISIONS), ("quant", ("none", "static")),
                                ("device", tuple(DEVICES))):
            value = getattr(self, field_)
            if value not in allowed:
                raise ValueError(f"openvino.{field_} must be one of {', '.join(allowed)}; got {value!r}")

    def promise(self) -> str:
        return "exact" if self.precision == "f32" and self.quant == "none" else "approximate"

    def unavailable(self, env: Env) -> str | None:
        if importlib.util.find_spec("openvino") is None:
            return "openvino is not installed (pip install openvino)"
        if self.quant == "static" and importlib.util.find_spec("onnxruntime") is None:
            return "quant=static uses ONNX Runtime's quantizer: onnxruntime is not installed"
        if self.device == "cpu" and self.precision == "f32":
            return None   # every CPU plugin computes in f32: no need to start OpenVINO to say so
        import openvino as ov

        core = ov.Core()
        plugin = DEVICES[self.device]
        found = [d for d in core.available_devices if d.split(".")[0] == plugin]
        if not found:
            return f"OpenVINO finds no {plugin} device (available: {', '.join(core.available_devices) or 'none'})"
        caps = core.get_property(found[0], "OPTIMIZATION_CAPABILITIES")
        if _CAPABILITY[self.precision] not in caps:
            return (f"{found[0]} cannot compute in {self.precision} (its OPTIMIZATION_CAPABILITIES: "
                    f"{', '.join(caps)})")
        return None

    def prepare(self, model: nn.Module, ctx: Context) -> Predictor:
        import openvino as ov

        quantized = torch_quantized_modules(model)
        if quantized:
            raise NotApplicable(f"torch.onnx cannot export torch.ao quantized modules ({', '.join(quantized)}); "
                                f"use openvino:quant=static to run ONNX Runtime's int8 file instead")
        scratch = Path(ctx.scratch_dir)
        t0 = time.perf_counter()
        path, fallback = export(model.eval(), ctx.input_shape, scratch / "model.onnx")
        export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if self.quant == "static":
            path = quantize_onnx(path, "static", onnx_calibration(ctx), scratch / "model.static.onnx")
        quant_s = time.perf_counter() - t0
        n_quant, n_float = count_ops(path)

        core = ov.Core()
        threads = torch.get_num_threads()
        config = {"PERFORMANCE_HINT": HINTS[self.hint], "INFERENCE_PRECISION_HINT": self.precision}
        if self.device == "cpu":   # the thread count is a CPU plugin property
            config["INFERENCE_NUM_THREADS"] = threads
        t0 = time.perf_counter()
        compiled = core.compile_model(core.read_model(str(path)), DEVICES[self.device], config)
        compile_s = time.perf_counter() - t0
        shares = kernel_precisions(core, str(path), DEVICES[self.device], config,
                                   (ctx.batch_size, *ctx.input_shape))
        _check_precision(self.precision, self.quant, shares)

        streams = int(compiled.get_property("NUM_STREAMS"))
        requests = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        used_threads = int(compiled.get_property("INFERENCE_NUM_THREADS")) if self.device == "cpu" else 0
        run = _async_runner(ov, compiled, requests) if self.hint == "throughput" else _sync_runner(compiled)
        figures = {"export_s": export_s, "quant_s": quant_s, "compile_s": compile_s, "dynamo_fallback": float(fallback),
                   "ops_quantized": float(n_quant), "ops_float": float(n_float), "streams": float(streams),
                   "infer_requests": float(requests if self.hint == "throughput" else 1),
                   "inference_threads": float(used_threads),
                   **{f"nodes_{p}": shares.get(p, 0.0) for p in ("f32", "bf16", "f16", "int8")}}
        dominant = max(shares, key=shares.get)
        return Predictor(run=run, device="cpu" if self.device == "cpu" else f"openvino:{DEVICES[self.device]}",
                         place=lambda x: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32),
                         fetch=lambda out: torch.from_numpy(np.asarray(out)).float(),
                         model_bytes=path.stat().st_size, figures=figures, precision={"f32": "fp32"}.get(dominant, dominant),
                         kernel_precision=describe(shares), threads=used_threads or None,
                         notes=(FALLBACK_NOTE,) if fallback else ())


FALLBACK_NOTE = ("openvino: the dynamo exporter failed on this model; the graph ran was exported by torch.onnx's "
                 "TorchScript exporter (a trace: data-dependent branches are frozen)")


def _sync_runner(compiled: Any):
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(arr: np.ndarray) -> np.ndarray:
        return request.infer({0: arr})[output]

    return run


def _async_runner(ov: Any, compiled: Any, requests: int):
    """THROUGHPUT: the batch split into up to `requests` parts run at once on the plugin's streams (an
    AsyncInferQueue), the logits put back in order. A batch of 1 runs on one request."""
    queue = ov.AsyncInferQueue(compiled, requests)
    output = compiled.output(0)
    parts: dict[int, np.ndarray] = {}

    def done(request: Any, index: int) -> None:
        parts[index] = request.get_tensor(output).data.copy()

    queue.set_callback(done)

    def run(arr: np.ndarray) -> np.ndarray:
        parts.clear()
        chunks = np.array_split(arr, min(requests, len(arr)))
        for i, chunk in enumerate(chunks):
            queue.start_async({0: np.ascontiguousarray(chunk)}, i)
        queue.wait_all()
        return np.concatenate([parts[i] for i in range(len(chunks))])

    return run


def kernel_precisions(core: Any, path: str, device: str, config: dict[str, Any],
                      input_shape: tuple[int, ...]) -> dict[str, float]:
    """{precision: share of executed compute nodes} (precision in f32, bf16, f16, int8), from OpenVINO's
    own profile: a second compilation with PERF_COUNT on (the timed one is never profiled) runs a few
    zero batches of `input_shape`; `get_profiling_info()` names each node's `exec_type`, whose last
    token is the precision its kernel computed in. Raises RuntimeError if no compute node ran."""
    compiled = core.compile_model(core.read_model(path), device, {**config, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    feed = {0: np.zeros(input_shape, dtype=np.float32)}
    for _ in range(PROFILE_CALLS):
        request.infer(feed)
    counts: dict[str, int] = {}
    for info in request.get_profiling_info():
        if info.node_type not in COMPUTE_NODES or str(info.status).rsplit(".", 1)[-1] != "EXECUTED":
            continue
        token = info.exec_type.rsplit("_", 1)[-1].lower()
        word = _EXEC_PRECISION.get(token, token)
        counts[word] = counts.get(word, 0) + 1
    total = sum(counts.values())
    if not total:
        raise RuntimeError(f"OpenVINO's profile of {path} on {device} shows no executed compute node")
    return {p: n / total for p, n in counts.items()}


def describe(shares: dict[str, float]) -> str:
    """`bf16 100%`, `int8 50%; f32 50%`: the precisions that ran, largest share first."""
    return "; ".join(f"{p} {s:.0%}" for p, s in sorted(shares.items(), key=lambda kv: (-kv[1], kv[0])))


def _check_precision(requested: str, quant: str, shares: dict[str, float]) -> None:
    """NotApplicable when a float compute node ran in another precision than the one asked (OpenVINO
    may silently substitute, e.g. bf16 for f16), or when the int8 file ran no int8 kernel."""
    floats = {p for p in shares if p != "int8"}
    if floats - {requested}:
        raise NotApplicable(f"precision={requested} was asked, but OpenVINO ran compute nodes in "
                            f"{describe(shares)}; not timed")
    if quant == "static" and "int8" not in shares:
        raise NotApplicable(f"quant=static: OpenVINO ran the int8 file's compute nodes in {describe(shares)}, "
                            f"none in int8; not timed")
