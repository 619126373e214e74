"""fusion: fold each Conv+BatchNorm pair into one convolution and drop eval-time no-ops (torch.fx).

When it helps: on nets with BatchNorm after convolutions (lenet_bn, resnet8), where eager PyTorch
otherwise runs a separate normalisation pass over every feature map. On nets without BN (lenet)
it folds nothing and the row shows about 1.0x, which is the truth. Measured (2-core CPU, --quick):
lenet_bn 1.13x at batch 1 and at batch 64 (2 BN folded); lenet 1.01x / 0.99x.

Conv+ReLU is deliberately NOT fused here. Eager PyTorch has no fused float Conv+ReLU module
(`torch.ao.nn.intrinsic.ConvReLU2d` is a Sequential that runs the two ops one after the other), and
calling oneDNN's fused `torch.ops.mkldnn._convolution_pointwise(..., "relu")` directly measured the
same as conv then relu on this 2-core CPU (lenet conv2, batch 64: 1.31 ms vs 1.27 ms). The runtimes
that can use that fusion do it themselves: `jit` (freeze + optimize_for_inference) and `compile`
(inductor). So `fusion@jit` hands them a graph with BN already folded, and claims nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from techniques import Context, Transform, register
from techniques._shared import trace

_NOOP_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_DROPOUT_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout)


@register
@dataclass(frozen=True)
class Fusion(Transform):
    """Conv+BN folding (`torch.nn.utils.fusion.fuse_conv_bn_eval`) on a torch.fx trace of the model."""

    name = "fusion"
    fidelity = "exact"          # folding BN into the conv changes rounding only
    figures = {"bn_folded": "count", "noops_removed": "count"}
    examples = ("fusion", "fusion@jit")
    quick_models = ("lenet_bn",)

    def apply(self, model: nn.Module, ctx: Context) -> tuple[nn.Module, dict[str, float]]:
        gm = trace(model.eval())
        folded = fold_conv_bn(gm)
        removed = remove_noops(gm)
        gm.graph.lint()
        gm.recompile()
        return gm.eval(), {"bn_folded": folded, "noops_removed": removed}


def _module(gm: torch.fx.GraphModule, node: torch.fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _set_module(gm: torch.fx.GraphModule, target: str, new: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, new)


def fold_conv_bn(gm: torch.fx.GraphModule) -> int:
    """Replace every BatchNorm2d fed only by a Conv2d with a conv carrying the folded scale and shift."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for node in list(gm.graph.nodes):
        bn = _module(gm, node)
        if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats or not node.args:
            continue
        src = node.args[0]
        conv = _module(gm, src) if isinstance(src, torch.fx.Node) else None
        # A conv whose output is also used elsewhere must keep its unfolded output: leave that pair.
        if not isinstance(conv, nn.Conv2d) or len(src.users) != 1:
            continue
        _set_module(gm, src.target, fuse_conv_bn_eval(conv.eval(), bn.eval()))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded += 1
    gm.delete_all_unused_submodules()
    return folded


def remove_noops(gm: torch.fx.GraphModule) -> int:
    """Drop Identity and Dropout modules and dropout calls traced with training=False: in eval they
    return their input, yet each still costs a Python call per forward."""
    removed = 0
    for node in list(gm.graph.nodes):
        noop = isinstance(_module(gm, node), _NOOP_MODULES)
        if node.op == "call_function" and node.target in _DROPOUT_FUNCTIONS:
            training = node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)
            noop = training is False
        if noop and node.args and isinstance(node.args[0], torch.fx.Node):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            removed += 1
    gm.delete_all_unused_submodules()
    return removed
