"""jit: TorchScript trace, freeze and optimize_for_inference: oneDNN-fused convolutions on the CPU.

`torch.jit.trace` records the forward pass; `torch.jit.freeze` inlines the weights as constants and
folds Conv+BN; `torch.jit.optimize_for_inference` then rewrites convolutions to prepacked oneDNN
(MKLDNN) kernels with their ReLU fused and drops no-ops. TorchScript is deprecated upstream, but on
small ConvNets on the CPU it is still among the fastest paths (about 2.8x eager was seen for LeNet at
batch 64 on another 2-core machine). Measured here (2-core shared CPU, `accelbench run --quick --threads 1`): lenet
1.77x at batch 64 and 1.26x at batch 1; lenet_bn with 2 threads 1.86x at batch 64 and 1.29x at 1.
At batch 1 the per-call overheads dominate, so the gain is smaller.

`channels_last=true` converts the model and the input to NHWC first, the layout oneDNN prefers; the
input conversion happens inside the timed call, because a caller holding NCHW tensors pays it too.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from techniques import FLOAT, TORCH_INT8, Context, NotApplicable, Predictor, Runtime, register


@register
@dataclass(frozen=True)
class Jit(Runtime):
    """torch.jit.trace + freeze + optimize_for_inference, traced at the cell's batch size."""

    channels_last: bool = False

    name = "jit"
    accepts = (FLOAT, TORCH_INT8)                 # torch.ao int8 modules run here (CPU kernels)
    fidelity = "exact"                            # a trace that froze another branch breaks it, and is caught
    examples = ("jit", "jit:channels_last=true")

    def prepare(self, model: nn.Module, ctx: Context) -> Predictor:
        model = model.eval()
        example = ctx.place_input(ctx.data.test_x[:1].expand(ctx.batch_size, *ctx.input_shape).contiguous())
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
            example = example.contiguous(memory_format=torch.channels_last)
        script = build(model, example)

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                # jit:channels_last=true converts inside the call (a caller handing it NCHW pays it);
                # after the channels_last transform the batch arrives in NHWC already (ctx.place_input).
                return script(x.contiguous(memory_format=fmt) if self.channels_last else x)

        def profile(x: torch.Tensor, calls: int) -> list[tuple[str, str, float]]:
            # freeze inlines every submodule into one graph: operators are credited to the graph as a whole
            from bench.api.harness import profile_torch
            return profile_torch(run, x, calls, inlined="(TorchScript graph: modules inlined by freeze)")

        return Predictor(run=run, device="cpu", place=ctx.place_input, profile=profile)


def build(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """Trace, freeze, optimize. Raises NotApplicable when the model cannot be traced."""
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # trace, freeze and optimize_for_inference each warn "`torch.jit.X` is deprecated"; the
        # docstring says why this runtime uses them anyway. Only that message is silenced: any other
        # warning (a failed fusion, a tracer warning about data-dependent Python) still shows.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        try:
            traced = torch.jit.trace(model, example, check_trace=False)
        except Exception as exc:  # untraceable Python (data-dependent control flow, odd outputs)
            raise NotApplicable(f"torch.jit.trace failed: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:160] if str(exc) else ''}") from None
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
