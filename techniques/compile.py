"""compile: torch.compile (TorchDynamo + Inductor), which generates fused C++/OpenMP kernels on the CPU.

When it helps: models whose eager time is dominated by many small element-wise ops and Python
overhead; Inductor fuses them and calls oneDNN for convolutions. It costs a compilation: the first
call took 4-20 s on 2 cores, and a new input shape recompiles (with `dynamic=false`), which is why
each cell prepares its own. That cost is reported apart from steady state: the figure `compile_s`
is the first call made inside `prepare` (the harness's `setup_s` contains it too). Inductor's on-disk
cache makes a repeated compile of the same graph faster, so `compile_s` of a warm machine is lower.

On the CPU, Inductor needs a C++ compiler; without one this runtime is unavailable.
`mode=reduce-overhead` uses CUDA graphs on a GPU and changes nothing on the CPU; it is accepted so
that a row records that it was tried.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from techniques import Context, Env, Predictor, Runtime, register

MODES = ("default", "reduce-overhead", "max-autotune")


@register
@dataclass(frozen=True)
class Compile(Runtime):
    """torch.compile(model, mode=..., dynamic=...), compiled by one call at the cell's batch size."""

    mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    dynamic: bool = False

    name = "compile"
    figures = {"compile_s": "s"}
    examples = ("compile",)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"compile.mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if not isinstance(self.dynamic, bool):
            raise ValueError(f"compile.dynamic must be true or false; got {self.dynamic!r}")

    def unavailable(self, env: Env) -> str | None:
        if not env.has_cxx:
            return "torch.compile on the CPU needs a C++ compiler and none was found (install g++ or set CXX)"
        return None

    def prepare(self, model: nn.Module, ctx: Context) -> Predictor:
        model = model.eval()
        example = ctx.data.test_x[:1].expand(ctx.batch_size, *ctx.input_shape).contiguous()
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
        compile_s = time.perf_counter() - t0
        return Predictor(run=run, device="cpu", figures={"compile_s": compile_s})
