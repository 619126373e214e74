"""channels_last: the whole pipeline in NHWC memory format (the model's 4-D weights and every input batch).

Convolutions on CPU (oneDNN) and on GPU (cuDNN, tensor cores) run natively in NHWC; with NCHW
tensors they reorder data around each convolution or pick slower kernels. This transform stores
the model's 4-D parameters and buffers in `torch.channels_last` and declares NHWC as the layout it
hands on (`produces_memory_format`): the runtime's context carries it, and torch runtimes place each
input batch in that layout outside the timed call, as a data loader that produces NHWC would
(PyTorch, "(beta) Channels Last Memory Format in PyTorch" tutorial). Values are unchanged: the
pipeline promises eager's outputs. A model without 4-D convolutions gains nothing and is skipped.
ONNX Runtime takes NCHW inputs and picks its own layouts, so `channels_last@onnx` is refused when parsed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from techniques import CHANNELS_LAST, Context, NotApplicable, Transform, register


@register
@dataclass(frozen=True)
class ChannelsLast(Transform):
    """NHWC memory format for the model's weights and every input (`torch.channels_last`)."""

    name = "channels_last"
    fidelity = "exact"
    figures = {"tensors_converted": "count"}
    examples = ("channels_last", "channels_last@jit")

    def apply(self, model: nn.Module, ctx: Context) -> tuple[nn.Module, dict[str, float]]:
        if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
            raise NotApplicable("the model has no 2-D convolutions: the memory format changes nothing")
        converted = sum(t.dim() == 4 for t in list(model.parameters()) + list(model.buffers()))
        model = model.to(memory_format=torch.channels_last)
        return model, {"tensors_converted": converted}

    def produces_memory_format(self, incoming: str) -> str:
        return CHANNELS_LAST
