"""fusion: fold each Conv+BatchNorm pair into one convolution and drop eval-time no-ops (torch.fx).

When it helps: on nets with BatchNorm after convolutions (lenet_bn, resnet8), where eager PyTorch
otherwise runs a separate normalisation pass over every feature map. On nets without BN (lenet)
it folds nothing; it removes lenet's two `nn.Identity` placeholders, and the row shows about 1.0x
with a note saying that is all it did. Measured (2-core CPU, --quick): lenet_bn 1.13x at batch 1
and at batch 64 (2 BN folded); lenet 1.01x / 0.99x.

The folding is the one `torch.nn.utils.fusion.fuse_conv_bn_eval` does (scale each output channel's
filter by weight / sqrt(running_var + eps), shift its bias), applied to the BatchNorms of a
torch.fx trace in the two forms model zoos produce:
- a `BatchNorm2d` module fx keeps as one call (torch's own class);
- an `F.batch_norm` call with the module's running statistics, which is what fx records when it traces
  through a BatchNorm2d subclass with its own forward, such as timm's `BatchNormAct2d` (batch norm,
  then `drop`, then `act`, in one module; timm's `ConvNormAct` wraps a conv and one of those). Only
  the normalisation is folded; the activation stays, as the module it was.
Every other BatchNorm is left as it is, and the row's notes name it and why (fed by an add, by a
conv whose output is also used elsewhere, normalising with batch statistics, ...). A net where it
found nothing at all to fold or remove is not a result: the cell is skipped, saying so.

Conv+ReLU is deliberately NOT fused here. Eager PyTorch has no fused float Conv+ReLU module
(`torch.ao.nn.intrinsic.ConvReLU2d` is a Sequential that runs the two ops one after the other), and
calling oneDNN's fused `torch.ops.mkldnn._convolution_pointwise(..., "relu")` directly measured the
same as conv then relu on this 2-core CPU (lenet conv2, batch 64: 1.31 ms vs 1.27 ms). The runtimes
that can use that fusion do it themselves: `jit` (freeze + optimize_for_inference) and `compile`
(inductor). So `fusion@jit` hands them a graph with BN already folded, and claims nothing more.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from techniques import Context, NotApplicable, Transform, register
from techniques._shared import trace

_NOOP_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_DROPOUT_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout)
_BATCH_NORM_ARGS = inspect.signature(F.batch_norm)
# What a trace reads of a tensor without its values (timm's `_assert(x.ndim == 4)`): folding keeps
# the conv output's shape, so such readers do not stop a fold.
_SHAPE_ATTRS = ("ndim", "shape", "dtype", "device")
_SHAPE_METHODS = ("size", "dim")
NAMES_IN_A_NOTE = 3   # BatchNorms named in a note or a reason; the rest are counted


@register
@dataclass(frozen=True)
class Fusion(Transform):
    """Conv+BN folding (`torch.nn.utils.fusion.fuse_conv_bn_eval`) on a torch.fx trace of the model."""

    name = "fusion"
    fidelity = "exact"          # folding BN into the conv changes rounding only
    figures = {"bn_folded": "count", "noops_removed": "count"}
    examples = ("fusion", "fusion@jit")
    quick_models = ("lenet_bn",)

    def apply(self, model: nn.Module, ctx: Context) -> tuple[nn.Module, dict[str, float], tuple[str, ...]]:
        gm = trace(model.eval())
        folded, left = fold_conv_bn(gm)
        removed = remove_noops(gm)
        if not folded and not removed:
            looked = (f"looked at {_count(len(left), 'BatchNorm layer')}: {_listing(left)}" if left
                      else "the traced network has no BatchNorm")
            raise NotApplicable(f"found no BatchNorm fed only by a Conv2d and no eval-time no-op (Identity, "
                                f"Dropout) to remove ({looked})")
        gm.graph.lint()
        # A new GraphModule keeps only what the graph still uses: the folded BatchNorms' parameters and
        # buffers, which a traced-through BatchNorm subclass leaves behind as attributes, go.
        gm = torch.fx.GraphModule(gm, gm.graph, class_name=type(model).__name__)
        notes = []
        if left:
            notes.append(f"folded {folded} of {_count(folded + len(left), 'BatchNorm layer')}; not folded: "
                         f"{_listing(left)}")
        elif not folded:
            notes.append(f"no BatchNorm to fold; it only removed {_count(removed, 'eval-time no-op')} "
                         f"(Identity, Dropout)")
        return gm.eval(), {"bn_folded": folded, "noops_removed": removed}, tuple(notes)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _listing(items: list[str]) -> str:
    more = len(items) - NAMES_IN_A_NOTE
    return ", ".join(items[:NAMES_IN_A_NOTE]) + (f" and {more} more" if more > 0 else "")


def _module(gm: torch.fx.GraphModule, node: torch.fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _attr(gm: torch.fx.GraphModule, node: object) -> torch.Tensor | None:
    """The tensor a get_attr node reads; None for anything else (a literal None, a computed value)."""
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return None
    owner, _, leaf = node.target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, leaf)


def _set_module(gm: torch.fx.GraphModule, target: str, new: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, new)


@dataclass
class _Norm:
    """One BatchNorm of the graph: its name, what folding needs, or why it cannot be folded."""

    name: str
    source: object                           # the node it normalises
    stats: tuple | None = None               # (running_mean, running_var, eps, weight, bias)
    why_not: str = ""


def _batch_norm(gm: torch.fx.GraphModule, node: torch.fx.Node) -> _Norm | None:
    """The BatchNorm `node` computes, in either traced form, or None when it is not one."""
    bn = _module(gm, node)
    if isinstance(bn, nn.modules.batchnorm._BatchNorm):
        norm = _Norm(node.target, node.args[0] if node.args else None)
        if type(bn).forward is not nn.modules.batchnorm._BatchNorm.forward:
            # fx keeps torch.nn's own classes as one call: a subclass of them with its own forward
            # computes something other than the running-statistics formula folding assumes.
            norm.why_not = f"{type(bn).__name__} has its own forward"
        elif bn.running_mean is None or bn.running_var is None:
            norm.why_not = "normalises with batch statistics (track_running_stats=False)"
        else:
            norm.stats = (bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        return norm
    if node.op != "call_function" or node.target is not F.batch_norm:
        return None
    args = _BATCH_NORM_ARGS.bind(*node.args, **node.kwargs)
    args.apply_defaults()
    a = args.arguments
    mean, var, weight, bias = (_attr(gm, a[k]) for k in ("running_mean", "running_var", "weight", "bias"))
    # Named after the module whose attributes it reads (`blocks.0.bn1`), as the user wrote it.
    stored = [a[k] for k in ("running_mean", "running_var", "weight", "bias") if _attr(gm, a[k]) is not None]
    norm = _Norm(stored[0].target.rpartition(".")[0] if stored else node.name, a["input"])
    if a["training"] is not False or mean is None or var is None:
        norm.why_not = "normalises with batch statistics"
    elif (a["weight"] is not None and weight is None) or (a["bias"] is not None and bias is None) \
            or not isinstance(a["eps"], (int, float)):
        norm.why_not = "its scale, shift or eps is computed in the forward, not a stored value"
    else:
        norm.stats = (mean, var, float(a["eps"]), weight, bias)
    return norm


def _reads_only_shape(user: torch.fx.Node) -> bool:
    return ((user.op == "call_function" and user.target is getattr and user.args[1] in _SHAPE_ATTRS)
            or (user.op == "call_method" and user.target in _SHAPE_METHODS))


def _conv_to_fold_into(gm: torch.fx.GraphModule, norm: _Norm, node: torch.fx.Node,
                       calls: dict[str, int]) -> tuple[nn.Conv2d | None, str]:
    """The Conv2d module whose output only `node` (the BatchNorm) reads, or None and why not."""
    src = norm.source
    conv = _module(gm, src) if isinstance(src, torch.fx.Node) else None
    if not isinstance(conv, nn.Conv2d):
        what = (type(conv).__name__ if conv is not None else
                getattr(src.target, "__name__", str(src.target)) if isinstance(src, torch.fx.Node) else "a constant")
        return None, f"fed by {'the input' if getattr(src, 'op', '') == 'placeholder' else what}, not a Conv2d"
    if type(conv).forward is not nn.Conv2d.forward or type(conv)._conv_forward is not nn.Conv2d._conv_forward:
        return None, f"fed by {type(conv).__name__}, whose forward is its own"
    # A conv whose output is also used elsewhere must keep its unfolded output, and a conv module
    # called twice would change both calls: leave those pairs.
    if any(u is not node and not _reads_only_shape(u) for u in src.users):
        return None, f"the output of {src.target} is also used elsewhere"
    if calls[src.target] > 1:
        return None, f"{src.target} is called {calls[src.target]} times"
    return conv, ""


def fold_conv_bn(gm: torch.fx.GraphModule) -> tuple[int, list[str]]:
    """Fold every BatchNorm fed only by a Conv2d into that conv, in place. Returns the number folded
    and, for each BatchNorm left, "name (why not)"."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded, left = 0, []
    for node in list(gm.graph.nodes):
        norm = _batch_norm(gm, node)
        if norm is None:
            continue
        conv, why_not = (None, norm.why_not) if norm.why_not else _conv_to_fold_into(gm, norm, node, calls)
        if conv is None:
            left.append(f"{norm.name} ({why_not})")
            continue
        mean, var, eps, weight, bias = norm.stats
        fused = copy.deepcopy(conv.eval())
        fused.weight, fused.bias = fuse_conv_bn_weights(conv.weight, conv.bias, mean, var, eps, weight, bias)
        _set_module(gm, norm.source.target, fused)
        node.replace_all_uses_with(norm.source)
        gm.graph.erase_node(node)
        folded += 1
    for node in list(gm.graph.nodes):   # the folded F.batch_norm calls' statistics, now read by nothing
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
    gm.delete_all_unused_submodules()
    return folded, left


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
