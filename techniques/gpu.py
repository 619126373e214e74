"""gpu: the model on a CUDA device, timed with synchronisation; optional channels_last, AMP, CUDA graphs.

When it helps: large batches and large models, where the GPU's arithmetic outweighs the launch
cost of each kernel (tens of microseconds). For tiny nets at batch 1 the launches dominate, which is
what `cuda_graphs=true` attacks: the whole forward is captured once for the cell's batch size and
replayed as one launch. `amp=bf16|fp16` runs under autocast (tensor cores; fidelity drops to the
precision's tolerance, the row's max |logit diff| shows by how much). `channels_last` stores
activations NHWC, which cuDNN's tensor-core convolutions prefer.

Measurement: `place` copies the batch to the device outside the timed call; `synchronize` is
`torch.cuda.synchronize`, which the harness calls inside the timed region, so a sample is the
kernels' real time and not the launch time; memory is `torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

import torch
from torch import nn

from techniques import Context, Env, NotApplicable, Predictor, Runtime, register
from techniques._shared import cuda_hooks

DEVICE = "cuda"
CAPTURE_WARMUP_CALLS = 3   # CUDA graph capture needs the kernels (cuDNN choice, allocator) warmed on a side stream
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@register
@dataclass(frozen=True)
class Gpu(Runtime):
    """`model(x)` on CUDA (skipped without it), optionally channels_last, bf16/fp16 autocast, a CUDA graph."""

    channels_last: bool = False
    amp: Literal["none", "bf16", "fp16"] = "none"
    cuda_graphs: bool = False

    name: ClassVar[str] = "gpu"
    examples: ClassVar[tuple[str, ...]] = ("gpu", "gpu:amp=bf16,channels_last=true", "gpu:cuda_graphs=true")

    def promise(self) -> str:
        # fp32 on CUDA (TF32 where cuDNN picks it) stays within the exact tolerance on these nets;
        # bf16/fp16 autocast computes a different function, judged by accuracy.
        return "exact" if self.amp == "none" else "approximate"

    def __post_init__(self) -> None:
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"gpu.amp must be one of {', '.join(AMP_DTYPES)}; got {self.amp!r}")
        for field_ in ("channels_last", "cuda_graphs"):
            if not isinstance(getattr(self, field_), bool):
                raise ValueError(f"gpu.{field_} must be true or false; got {getattr(self, field_)!r}")

    def unavailable(self, env: Env) -> str | None:
        return None if env.cuda else "no CUDA device"

    def prepare(self, model: nn.Module, ctx: Context) -> Predictor:
        dtype = AMP_DTYPES[self.amp]
        if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise NotApplicable(f"{torch.cuda.get_device_name()} has no bf16 support; use amp=fp16")
        from techniques._shared import torch_quantized_modules

        if quantized := torch_quantized_modules(model):
            raise NotApplicable(f"torch.ao quantized modules have CPU kernels only ({', '.join(quantized)})")
        nhwc = self.channels_last or ctx.memory_format == "channels_last"
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        # A copy moves: the caller's module stays on the CPU, where the harness counts its FLOPs.
        model = copy.deepcopy(model).eval().to(DEVICE, memory_format=fmt)

        def autocast() -> Any:
            if dtype is None:
                return contextlib.nullcontext()
            # The autocast weight-cast cache must be off while capturing: cached casts made outside
            # the graph would be freed memory the replay still reads.
            return torch.autocast(device_type="cuda", dtype=dtype, cache_enabled=not self.cuda_graphs)

        def to_device(x: torch.Tensor) -> torch.Tensor:
            return x.to(DEVICE, non_blocking=False).contiguous(memory_format=fmt)

        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), autocast():
                return model(x)

        common = cuda_hooks(precision="fp32" if dtype is None else self.amp)
        if not self.cuda_graphs:
            return Predictor(run=forward, place=to_device, **common)
        run, place = _graphed(forward, to_device, (ctx.batch_size, *ctx.input_shape), fmt)
        return Predictor(run=run, place=place, **common)


def _graphed(forward: Callable[[torch.Tensor], torch.Tensor], to_device: Callable[[torch.Tensor], torch.Tensor],
             shape: tuple[int, ...], fmt: torch.memory_format) -> tuple[Callable, Callable]:
    """Capture `forward` on a static input buffer of `shape`; `place` copies a batch into it."""
    static_in = torch.zeros(shape, device=DEVICE).contiguous(memory_format=fmt)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(CAPTURE_WARMUP_CALLS):
            forward(static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = forward(static_in)
    state: dict[str, Any] = {"loaded": None}

    def place(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != shape:
            raise ValueError(f"gpu:cuda_graphs=true was captured for input {shape}; got {tuple(x.shape)} "
                             f"(a CUDA graph replays one shape: run a cell per batch size)")
        dev = to_device(x)
        static_in.copy_(dev)
        state["loaded"] = dev
        return dev

    def run(dev: torch.Tensor) -> torch.Tensor:
        # The harness may place several batches before running an earlier one; reload the buffer
        # then (a device-to-device copy) so a replay always computes the batch it was given.
        if state["loaded"] is not dev:
            static_in.copy_(dev)
            state["loaded"] = dev
        graph.replay()
        return static_out

    return run, place
