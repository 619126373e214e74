"""compile: torch.compile (TorchDynamo + Inductor), which generates fused C++/OpenMP kernels on the CPU.

When it helps: models whose eager time is dominated by many small element-wise ops and Python
overhead; Inductor fuses them and calls oneDNN for convolutions. It costs a compilation: the first
call took 4-20 s on 2 cores, and a new input shape recompiles (with `dynamic=false`), which is why
each cell prepares its own. That cost is reported apart from steady state: the figure `compile_s`
is the first call made inside `prepare` (the harness's `setup_s` contains it too). Inductor's on-disk
cache makes a repeated compile of the same graph faster, so `compile_s` of a warm machine is lower.

On the CPU, Inductor needs a C++ compiler; without one this runtime is unavailable. `device=cuda`
compiles for the GPU instead (Triton kernels), timed like the `gpu` runtime: input copied outside
the timed call, `torch.cuda.synchronize` inside it, memory from `torch.cuda.max_memory_allocated`.
`mode=reduce-overhead` uses CUDA graphs on a GPU and changes nothing on the CPU; it is accepted so
that a row records that it was tried.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from techniques import FLOAT, TORCH_INT8, Context, Env, Predictor, Runtime, register

MODES = ("default", "reduce-overhead", "max-autotune")
DEVICES = ("cpu", "cuda")


@register
@dataclass(frozen=True)
class Compile(Runtime):
    """torch.compile(model, mode=..., dynamic=...), compiled by one call at the cell's batch size."""

    mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    dynamic: bool = False
    device: Literal["cpu", "cuda"] = "cpu"

    name = "compile"
    accepts = (FLOAT, TORCH_INT8)                 # torch.ao int8 modules run here (CPU kernels)
    fidelity = "exact"
    figures = {"compile_s": "s"}
    examples = ("compile", "compile:device=cuda")

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"compile.mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if not isinstance(self.dynamic, bool):
            raise ValueError(f"compile.dynamic must be true or false; got {self.dynamic!r}")
        if self.device not in DEVICES:
            raise ValueError(f"compile.device must be one of {', '.join(DEVICES)}; got {self.device!r}")

    def unavailable(self, env: Env) -> str | None:
        if self.device == "cuda":
            return None if env.cuda else "no CUDA device"
        if not env.has_cxx:
            return "torch.compile on the CPU needs a C++ compiler and none was found (install g++ or set CXX)"
        return None

    def prepare(self, model: nn.Module, ctx: Context) -> Predictor:
        cuda = self.device == "cuda"
        # A copy moves: the caller's module stays on the CPU, where the harness counts its FLOPs.
        model = (copy.deepcopy(model).to("cuda") if cuda else model).eval()
        example = ctx.place_input(ctx.data.test_x[:1].expand(ctx.batch_size, *ctx.input_shape).contiguous()).to(self.device)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            # Inductor imports torch modules that define TorchScript methods, and each one warns
            # "`torch.jit.script_method` is deprecated": torch's own noise, not this model's.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.script_method` is deprecated",
                                    category=DeprecationWarning)
            compiled = torch.compile(model, mode=self.mode, dynamic=self.dynamic)

            def run(x: torch.Tensor) -> torch.Tensor:
                # inference_mode in the first call and later alike: grad mode is part of Dynamo's
                # guards, so compiling under one mode and running under another would recompile.
                with torch.inference_mode():
                    return compiled(x)

            run(example)  # the compilation happens here
            if cuda:
                torch.cuda.synchronize()
        compile_s = time.perf_counter() - t0
        if not cuda:
            def profile(x: torch.Tensor, calls: int) -> list[tuple[str, str, float]]:
                # Inductor fuses the modules into generated kernels; their own names would need a
                # recompile with cpp.enable_kernel_profile, so the compiled region is credited whole
                from bench.api.harness import profile_torch
                return profile_torch(run, x, calls, inlined="(compiled region: modules fused by Inductor)")

            return Predictor(run=run, device="cpu", place=ctx.place_input, figures={"compile_s": compile_s},
                             profile=profile)
        from techniques._shared import cuda_hooks
        return Predictor(run=run, place=lambda x: ctx.place_input(x).to("cuda"), figures={"compile_s": compile_s},
                         profile_unavailable="compile:device=cuda: CUDA kernels are not profiled", **cuda_hooks())
