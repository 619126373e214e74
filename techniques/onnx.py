"""onnx: export the model with torch.onnx and run it in ONNX Runtime on a chosen execution provider.

When it helps: ONNX Runtime's graph optimizer (constant folding, Conv+activation fusion, layout
choices) often beats eager PyTorch on small CPU batches, and the same file runs on other hardware
through execution providers: `cpu`, `cuda`, `tensorrt`, `openvino`, and `vitisai` (alias `fpga`:
the Vitis AI provider is the FPGA path for AMD/Xilinx boards). `device` picks the OpenVINO provider's
device (`cpu`, `gpu`, `npu`; ep=openvino only: the provider needs the `onnxruntime-openvino` build, which
replaces `onnxruntime` in its environment, see docs/openvino.md). `opt` sets the graph optimization
level, so `opt=disable` against `opt=all` shows what ORT's fusions are worth. `quant=dynamic|static`
applies ONNX Runtime's own int8 quantization (static: QDQ format, calibrated on real training
images); on small CNNs dynamic quantization of Conv can be much *slower* than float: the row says so.

Honesty: ONNX Runtime silently falls back to CPU when a requested provider is missing. `unavailable`
refuses a provider the build lacks, and after the session exists `session.get_providers()` must list
the requested provider first, else the row is skipped: a CPU timing is never labelled FPGA. (The
OpenVINO provider asked for an absent device does the same: ORT drops it and runs on CPU.) Every row
records the providers that ran.

Threads: the session uses `torch.get_num_threads()` intra-op threads (one inter-op thread), the
same count the eager baseline gets, so a speedup is the runtime's, not a thread-count difference.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from techniques import CONTIGUOUS, Context, Env, NotApplicable, Predictor, Runtime, register
# The export and ONNX Runtime's int8 quantization are shared with the openvino runtime, which runs the same files.
from techniques._shared import count_ops, export, onnx_calibration, quantize_onnx

EP_NAMES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "vitisai": "VitisAIExecutionProvider",
    "fpga": "VitisAIExecutionProvider",   # the FPGA path today is Vitis AI (OpenVINO dropped FPGAs)
}
_GPU_EPS = ("cuda", "tensorrt")           # these providers take device-resident inputs via I/O binding
OPENVINO_DEVICES = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}   # device -> the OpenVINO provider's device_type


@register
@dataclass(frozen=True)
class Onnx(Runtime):
    """torch.onnx (dynamo) export, then ONNX Runtime on an execution provider (`fpga` = Vitis AI), optionally int8."""

    ep: Literal["cpu", "cuda", "tensorrt", "openvino", "vitisai", "fpga"] = "cpu"
    opt: Literal["disable", "basic", "extended", "all"] = "all"
    quant: Literal["none", "dynamic", "static"] = "none"
    device: Literal["cpu", "gpu", "npu"] = "cpu"   # the OpenVINO provider's device_type (ep=openvino only)

    name: ClassVar[str] = "onnx"
    figures: ClassVar[dict[str, str]] = {
        "export_s": "s", "quant_s": "s", "session_s": "s",
        "dynamo_fallback": "bool",          # 1 when the dynamo exporter failed and TorchScript's was used
        "ops_quantized": "count", "ops_float": "count",   # Conv/Gemm/MatMul nodes in int8 / in float
        "intra_op_threads": "count",
        # Where the graph ran, from ONNX Runtime's own profiler (one event per node and call, with the
        # provider that executed it): share of nodes and of kernel time on the requested provider.
        "nodes_on_requested_ep": "ratio", "time_on_requested_ep": "ratio",
    }
    heavy_imports: ClassVar[tuple[str, ...]] = ("onnx", "onnxscript", "onnxruntime", "onnxruntime.quantization",
                                                "torch.onnx", "torch.export")
    # ONNX Runtime takes NCHW inputs and picks its own layouts: channels_last would change nothing it
    # runs, so `channels_last@onnx` is refused when it is parsed rather than labelled with it.
    accepts_memory_formats: ClassVar[tuple[str, ...]] = (CONTIGUOUS,)
    examples: ClassVar[tuple[str, ...]] = ("onnx:ep=cpu", "onnx:ep=cpu,opt=disable", "onnx:ep=cpu,quant=dynamic",
                                           "onnx:ep=cpu,quant=static", "onnx:ep=fpga", "onnx:ep=cuda")

    def __post_init__(self) -> None:
        for field_, allowed in (("ep", tuple(EP_NAMES)), ("opt", ("disable", "basic", "extended", "all")),
                                ("quant", ("none", "dynamic", "static")), ("device", tuple(OPENVINO_DEVICES))):
            value = getattr(self, field_)
            if value not in allowed:
                raise ValueError(f"onnx.{field_} must be one of {', '.join(allowed)}; got {value!r}")
        if self.device != "cpu" and self.ep != "openvino":
            raise ValueError(f"onnx.device picks the OpenVINO provider's device: it needs ep=openvino; got "
                             f"device={self.device!r} with ep={self.ep!r}")

    def promise(self) -> str:
        return "exact" if self.quant == "none" else "approximate"

    @property
    def provider(self) -> str:
        return EP_NAMES[self.ep]

    def unavailable(self, env: Env) -> str | None:
        if not env.ort_providers:
            return "onnxruntime is not installed (pip install onnxruntime)"
        if self.provider not in env.ort_providers:
            return f"{self.provider} not available (available: {', '.join(env.ort_providers)})"
        if self.ep in _GPU_EPS and not env.cuda:
            return "no CUDA device"
        return None

    def prepare(self, model: nn.Module, ctx: Context) -> Predictor:
        import onnxruntime as ort

        _refuse_torch_quantized(model)
        scratch = Path(ctx.scratch_dir)
        t0 = time.perf_counter()
        path, fallback = export(model.eval(), ctx.input_shape, scratch / "model.onnx")
        exported = path
        export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if self.quant != "none":
            path = quantize_onnx(path, self.quant, onnx_calibration(ctx), scratch / f"model.{self.quant}.onnx")
        quant_s = time.perf_counter() - t0
        try:
            n_quant, n_float = count_ops(path)
        except Exception as exc:  # a truncated or corrupt file: say which file, not a protobuf trace
            raise RuntimeError(f"ONNX file {path} failed to load: {type(exc).__name__}: {exc}") from exc

        t0 = time.perf_counter()
        so = ort.SessionOptions()
        level = ort.GraphOptimizationLevel
        so.graph_optimization_level = {"disable": level.ORT_DISABLE_ALL, "basic": level.ORT_ENABLE_BASIC,
                                       "extended": level.ORT_ENABLE_EXTENDED, "all": level.ORT_ENABLE_ALL}[self.opt]
        threads = torch.get_num_threads()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        first: Any = self.provider
        if self.ep == "openvino":
            # An absent device_type makes ORT drop the provider (check_providers sees it). OpenVINO runs
            # the graph on its own threads, which intra_op_num_threads does not bound: num_of_threads does.
            first = (self.provider, {"device_type": OPENVINO_DEVICES[self.device], "num_of_threads": str(threads)})
        requested = [first] + (["CPUExecutionProvider"] if self.provider != "CPUExecutionProvider" else [])
        with warnings.catch_warnings():
            # ORT warns "Specified provider ... is not in available provider names" and carries on on
            # CPU; the check below turns that into a skipped row, so the warning adds nothing.
            warnings.filterwarnings("ignore", message="Specified provider", category=UserWarning)
            session = ort.InferenceSession(str(path), so, providers=requested)
        session_s = time.perf_counter() - t0
        ran = tuple(session.get_providers())
        check_providers(self.provider, ran)
        placement = node_placement(str(path), so, requested, (ctx.batch_size, *ctx.input_shape))
        node_share, time_share = placement.get(self.provider, (0.0, 0.0))
        if node_share == 0.0:
            raise NotApplicable(f"{self.provider} is registered on the session but ran no node of the graph "
                                f"(ONNX Runtime's profile: {_describe_placement(placement)}); not timed")

        figures = {"export_s": export_s, "quant_s": quant_s, "session_s": session_s, "dynamo_fallback": float(fallback),
                   "ops_quantized": float(n_quant), "ops_float": float(n_float), "intra_op_threads": float(threads),
                   "nodes_on_requested_ep": node_share, "time_on_requested_ep": time_share}
        if len(placement) > 1:  # a partial fallback: say in the providers column where the nodes went
            ran = tuple(f"{ep}:{share:.0%}" for ep, (share, _) in sorted(placement.items(), key=lambda kv: -kv[1][0]))
        nbytes = path.stat().st_size
        if self.ep in _GPU_EPS:
            return _bound_predictor(session, ran, nbytes, figures)
        in_name = session.get_inputs()[0].name

        def run(arr: np.ndarray) -> np.ndarray:
            return session.run(None, {in_name: arr})[0]

        def profile(arr: np.ndarray, calls: int) -> list[tuple[str, str, float]]:
            # A separate profiling session on the same file (the timed one is never profiled); modules
            # come from the exporter's name scopes, which the quantizer keeps on the nodes it leaves
            from bench.api.harness import onnx_scopes, profile_ort
            scopes = {**onnx_scopes(exported), **onnx_scopes(path)}
            return profile_ort(path, so, requested, {in_name: arr}, calls, scopes)

        # OpenVINO runs on the device_type asked for (its CPU plugin by default); Vitis AI drives an FPGA or NPU board.
        ov_device = "cpu" if self.device == "cpu" else f"openvino:{OPENVINO_DEVICES[self.device]}"
        device = {"cpu": "cpu", "openvino": ov_device, "fpga": "vitisai"}.get(self.ep, self.ep)
        return Predictor(run=run, device=device,
                         place=lambda x: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32),
                         fetch=lambda out: torch.from_numpy(np.asarray(out)).float(),
                         providers=ran, model_bytes=nbytes, figures=figures, threads=threads,
                         notes=(FALLBACK_NOTE,) if fallback else (), profile=profile)


PROFILE_CALLS = 3   # profiled runs of the placement session
FALLBACK_NOTE = ("onnx: the dynamo exporter failed on this model; the graph ran was exported by torch.onnx's "
                 "TorchScript exporter (a trace: data-dependent branches are frozen)")


def node_placement(path: str, so: Any, providers: list[Any], input_shape: tuple[int, ...]) -> dict[str, tuple[float, float]]:
    """{provider: (share of graph nodes, share of kernel time)} from ONNX Runtime's profiler.

    `session.get_providers()` lists the providers registered on a session, not where each node ran:
    an accelerator provider can take part of the graph and leave the rest to the CPU. A separate
    session with profiling on (the timed session is never profiled) runs a few zero batches; each
    kernel event names the provider that executed its node.
    """
    import json
    import os
    import tempfile

    import onnxruntime as ort

    prof = ort.SessionOptions()
    prof.graph_optimization_level = so.graph_optimization_level
    prof.intra_op_num_threads = so.intra_op_num_threads
    prof.inter_op_num_threads = so.inter_op_num_threads
    prof.execution_mode = so.execution_mode
    prof.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="accelbench-ort-profile-") as tmp:
        prof.profile_file_prefix = os.path.join(tmp, "profile")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Specified provider", category=UserWarning)
            session = ort.InferenceSession(path, prof, providers=providers)
        feed = {session.get_inputs()[0].name: np.zeros(input_shape, dtype=np.float32)}
        for _ in range(PROFILE_CALLS):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    return placement_shares(events)


def placement_shares(events: list[dict]) -> dict[str, tuple[float, float]]:
    """{provider: (share of nodes, share of kernel time)} from ONNX Runtime profile events (each node
    kernel event is `cat` "Node", `name` "<node>_kernel_time", `args.provider`, `dur` in us)."""
    nodes: dict[str, set[str]] = {}
    micros: dict[str, float] = {}
    for ev in events:
        args = ev.get("args") or {}
        if ev.get("cat") != "Node" or "provider" not in args or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        ep = args["provider"]
        nodes.setdefault(ep, set()).add(ev["name"])
        micros[ep] = micros.get(ep, 0.0) + float(ev.get("dur", 0.0))
    n_total, t_total = sum(len(v) for v in nodes.values()), sum(micros.values())
    return {ep: (len(nodes[ep]) / n_total if n_total else 0.0, micros.get(ep, 0.0) / t_total if t_total else 0.0)
            for ep in nodes}


def _describe_placement(placement: dict[str, tuple[float, float]]) -> str:
    return ", ".join(f"{ep} {n:.0%} of nodes" for ep, (n, _) in placement.items()) or "no node events"


def check_providers(requested: str, ran: tuple[str, ...]) -> None:
    """NotApplicable unless `requested` is the session's first provider: ORT's silent CPU fallback
    must become a skipped row, not a CPU timing under another provider's name."""
    if not ran or ran[0] != requested:
        raise NotApplicable(f"{requested} requested but the session runs on {', '.join(ran) or 'nothing'} "
                            f"(ONNX Runtime fell back); not timed")


def _refuse_torch_quantized(model: nn.Module) -> None:
    # Packed int8 weights (quantized::linear_dynamic, LinearPackedParamsBase) defeat both exporters:
    # say so before trying for seconds.
    from techniques._shared import torch_quantized_modules

    quantized = torch_quantized_modules(model)
    if quantized:
        raise NotApplicable(f"torch.onnx cannot export torch.ao quantized modules ({', '.join(quantized)}); "
                            f"use onnx:quant=dynamic or onnx:quant=static to quantize in ONNX Runtime instead")


def _bound_predictor(session: Any, ran: tuple[str, ...], nbytes: int, figures: dict[str, float]) -> Predictor:
    """CUDA/TensorRT: inputs copied to the GPU in `place` and outputs left there by I/O binding, so
    host<->device copies stay out of the timed call; `fetch` copies the logits back."""
    import onnxruntime as ort

    in_name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name

    def place(x: torch.Tensor) -> Any:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        binding = session.io_binding()
        binding.bind_ortvalue_input(in_name, ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0))
        binding.bind_output(out_name, "cuda", 0)
        return binding

    def run(binding: Any) -> Any:
        session.run_with_iobinding(binding)
        return binding

    def sync() -> None:
        # Run() already waits for the provider's stream by default; this also covers a device
        # copy still in flight from `place` when the first timed call starts.
        torch.cuda.synchronize()

    def fetch(binding: Any) -> torch.Tensor:
        return torch.from_numpy(binding.copy_outputs_to_cpu()[0]).float()

    return Predictor(run=run, device="cuda", place=place, fetch=fetch, synchronize=sync, providers=ran,
                     model_bytes=nbytes, figures=figures,
                     profile_unavailable="onnx on a GPU provider: its I/O-bound session is not profiled")
