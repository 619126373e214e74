"""prune: remove weights by L1 magnitude, either zeroing them (unstructured) or cutting whole channels.

Unstructured (`method=l1_unstructured`, the default): the `amount` fraction of smallest-magnitude
weights over all conv and linear layers together (`torch.nn.utils.prune.global_unstructured`) is set
to zero and made permanent with `prune.remove`. The tensors stay dense, so dense kernels do the same
work: expect about 1.0x, and a smaller file only after compression. It shows what accuracy survives.

Structured (`structured=true`): each prunable convolution loses the `amount` fraction of its output
channels with the smallest filter L1 norms, and the layers that read them are rebuilt smaller (the
BatchNorm after it, the next conv's input channels, or the first Linear's input features after a
flatten). The layers are physically smaller, so this can be faster. A conv whose output meets another
tensor in a residual addition (resnet8's stem and block outputs) keeps its channels: the add ties them
to the shortcut's; the convs inside the blocks are still pruned.

`finetune_epochs > 0` retrains the pruned net briefly (masks kept during unstructured fine-tuning, so
pruned weights stay zero); the result is cached per (model, parameters, data).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from bench.training.cache import fit_cached, state_digest
from bench.training.loop import default_config, train
from techniques import NEEDS_LABELS, Context, NotApplicable, Transform, register
from techniques._shared import trace

FINETUNE_LR_FACTOR = 0.3   # the net is already trained: a full learning rate would undo more than it fixes
# Functions and modules that act on each channel alone: a channel cut before them stays cut after them.
_CHANNELWISE_CALLS = {"relu", "relu_", "max_pool2d", "_max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
                      "dropout", "dropout2d", "contiguous", "gelu", "sigmoid", "tanh"}
_CHANNELWISE_MODULES = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity, nn.Dropout,
                        nn.Dropout2d, nn.GELU, nn.Sigmoid, nn.Tanh)


@register
@dataclass(frozen=True)
class Prune(Transform):
    """L1 magnitude pruning: unstructured (zeros) or structured (fewer conv channels)."""

    amount: float = 0.5
    method: Literal["l1_unstructured"] = "l1_unstructured"
    structured: bool = False
    finetune_epochs: int = 0

    name = "prune"
    figures = {"sparsity": "ratio", "params_before": "count", "params_after": "count", "channels_removed": "count"}
    examples = ("prune:amount=0.5", "prune:amount=0.5,structured=true",
                "prune:amount=0.5,structured=true,finetune_epochs=2")

    def __post_init__(self) -> None:
        if not isinstance(self.amount, (int, float)) or not 0 < self.amount < 1:
            raise ValueError(f"prune.amount must be a fraction strictly between 0 and 1 (e.g. 0.5); got {self.amount!r}")
        if self.method != "l1_unstructured":
            raise ValueError(f"prune.method must be l1_unstructured (use structured=true for channel pruning); "
                             f"got {self.method!r}")
        if not isinstance(self.finetune_epochs, int) or self.finetune_epochs < 0:
            raise ValueError(f"prune.finetune_epochs must be an integer >= 0; got {self.finetune_epochs!r}")

    def apply(self, model: nn.Module, ctx: Context) -> tuple[nn.Module, dict[str, float]]:
        if self.finetune_epochs > 0 and not ctx.data.labelled:
            raise NotApplicable(f"finetune_epochs={self.finetune_epochs} {NEEDS_LABELS}")
        model = model.eval()
        params_before = sum(p.numel() for p in model.parameters())
        key = f"prune|{ctx.model_name}|{state_digest(model)}|{self.params()}|{ctx.data.identity}|seed={ctx.seed}"
        removed = 0
        if self.structured:
            removed = prune_channels(model, self.amount)
            if self.finetune_epochs:
                model, _ = fit_cached(key, model, lambda m: self._finetune(m, ctx))
        elif self.finetune_epochs:
            model, _ = fit_cached(key, model, lambda m: (mask(m, self.amount), self._finetune(m, ctx), unmask(m)))
        else:
            mask(model, self.amount)
            unmask(model)
        return model.eval(), {"sparsity": sparsity(model), "params_before": params_before,
                              "params_after": sum(p.numel() for p in model.parameters()),
                              "channels_removed": removed}

    def _finetune(self, model: nn.Module, ctx: Context) -> None:
        if not ctx.data.labelled:
            return  # random labels: fine-tuning would only teach noise
        cfg = default_config(ctx.model_name)
        cfg = dataclasses.replace(cfg, epochs=self.finetune_epochs, lr=cfg.lr * FINETUNE_LR_FACTOR, seed=ctx.seed)
        train(model, ctx.data, cfg, eval_every_epoch=False)


def _prunable(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def mask(model: nn.Module, amount: float) -> None:
    """Global L1 unstructured pruning over all conv and linear weights (masks as forward pre-hooks)."""
    from torch.nn.utils import prune
    layers = [(m, "weight") for m in _prunable(model)]
    if not layers:
        raise NotApplicable("no Conv2d or Linear weights to prune")
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=amount)


def unmask(model: nn.Module) -> None:
    """Make the masks permanent: plain `weight` Parameters with zeros, no hooks, no `weight_orig`."""
    from torch.nn.utils import prune
    for m in _prunable(model):
        if prune.is_pruned(m):
            prune.remove(m, "weight")


def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over all conv and linear layers."""
    ws = [m.weight for m in _prunable(model)]
    total = sum(w.numel() for w in ws)
    return sum(int((w == 0).sum()) for w in ws) / total if total else 0.0


# --- structured: follow each conv's output through the traced graph --------------------------------

def _call_name(node: torch.fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")


def _consumers(gm: torch.fx.GraphModule, node: torch.fx.Node, flat: bool, acts: list) -> str | None:
    """Collect (kind, module) slicing actions for every reader of `node`'s channels; return why the
    channels cannot be cut (None if they can). `flat`: the channels were flattened into features."""
    for user in node.users:
        mod = gm.get_submodule(user.target) if user.op == "call_module" else None
        name = _call_name(user) if user.op in ("call_function", "call_method") else ""
        if user.args[:1] != (node,):
            return f"{user.name} reads the channels as a non-first argument (a residual add or concatenation)"
        if isinstance(mod, nn.Linear) and flat:
            acts.append(("linear_in", mod))
        elif flat and (name in ("relu", "relu_", "dropout") or isinstance(mod, (nn.ReLU, nn.Dropout, nn.Identity))):
            why = _consumers(gm, user, True, acts)
            if why:
                return why
        elif flat:
            return f"{user.name} reads the flattened features and is not a Linear layer"
        elif isinstance(mod, nn.Conv2d) and mod.groups == 1:
            acts.append(("conv_in", mod))
        elif isinstance(mod, nn.Conv2d) and mod.groups == mod.in_channels == mod.out_channels:
            acts.append(("depthwise", mod))  # one filter per channel: cut the same channels, follow on
            why = _consumers(gm, user, False, acts)
            if why:
                return why
        elif isinstance(mod, nn.BatchNorm2d):
            acts.append(("bn", mod))
            why = _consumers(gm, user, False, acts)
            if why:
                return why
        elif isinstance(mod, _CHANNELWISE_MODULES) or name in _CHANNELWISE_CALLS:
            why = _consumers(gm, user, False, acts)
            if why:
                return why
        elif name == "flatten" and (user.args[1:2] == (1,) or user.kwargs.get("start_dim") == 1):
            acts.append(("flatten", None))
            why = _consumers(gm, user, True, acts)
            if why:
                return why
        else:
            return f"{user.name} ({user.op} {name or type(mod).__name__}) is not a layer this pruner can shrink"
    return None


def _keep(conv: nn.Conv2d, amount: float) -> torch.Tensor:
    n_keep = max(1, round(conv.out_channels * (1 - amount)))
    norms = conv.weight.detach().abs().flatten(1).sum(1)
    return norms.argsort(descending=True)[:n_keep].sort().values  # ascending: channel order is kept


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone())


def _slice(kind: str, mod: nn.Module, keep: torch.Tensor, old_c: int) -> None:
    if kind in ("out", "depthwise"):
        mod.weight = _param(mod.weight[keep])
        if mod.bias is not None:
            mod.bias = _param(mod.bias[keep])
        mod.out_channels = len(keep)
        if kind == "depthwise":
            mod.in_channels = mod.groups = len(keep)
    elif kind == "conv_in":
        mod.weight = _param(mod.weight[:, keep])
        mod.in_channels = len(keep)
    elif kind == "bn":
        for attr in ("weight", "bias"):
            if getattr(mod, attr) is not None:
                setattr(mod, attr, _param(getattr(mod, attr)[keep]))
        for attr in ("running_mean", "running_var"):
            if getattr(mod, attr) is not None:
                setattr(mod, attr, getattr(mod, attr)[keep].clone())
        mod.num_features = len(keep)
    elif kind == "linear_in":
        per_c = mod.in_features // old_c   # flatten is channel-major: channel c owns features [c*S, (c+1)*S)
        cols = (keep[:, None] * per_c + torch.arange(per_c)).flatten()
        mod.weight = _param(mod.weight[:, cols])
        mod.in_features = len(cols)


def prune_channels(model: nn.Module, amount: float) -> int:
    """Cut the weakest output channels of every conv whose readers can all be shrunk; return how many
    channels were removed. Raises NotApplicable when no conv in the model can be pruned."""
    gm = trace(model)
    plans, reasons = [], []
    for node in gm.graph.nodes:
        conv = gm.get_submodule(node.target) if node.op == "call_module" else None
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.out_channels < 2:
            continue
        acts: list = []
        why = _consumers(gm, node, False, acts)
        if why:
            reasons.append(f"{node.target}: {why}")
        elif not any(k in ("conv_in", "linear_in") for k, _ in acts):
            reasons.append(f"{node.target}: its channels reach the output without a layer to shrink")
        else:
            plans.append((node.target, acts))
    if not plans:
        raise NotApplicable("no convolution can lose channels: " + "; ".join(reasons))
    removed = 0
    for target, acts in plans:
        conv = model.get_submodule(target)  # gm shares these module objects with model
        old_c = conv.out_channels
        keep = _keep(conv, amount)
        _slice("out", conv, keep, old_c)
        for kind, mod in acts:
            if kind != "flatten":
                _slice(kind, mod, keep, old_c)
        removed += old_c - len(keep)
    return removed
