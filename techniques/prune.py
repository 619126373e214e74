"""prune: remove weights by L1 magnitude, either zeroing them (unstructured) or cutting whole channels.

Unstructured (`method=l1_unstructured`, the default): the `amount` fraction of smallest-magnitude
weights over all conv and linear layers together (`torch.nn.utils.prune.global_unstructured`) is set
to zero and made permanent with `prune.remove`. The tensors stay dense, so dense kernels do the same
work: expect about 1.0x, and a smaller file only after compression. It shows what accuracy survives.

Structured (`structured=true`): every group of coupled channels loses the `amount` fraction with the
smallest L1 norm, found by Torch-Pruning's dependency graph (DepGraph, Fang et al., CVPR 2023): conv
output channels and hidden Linear features, with everything that reads them rebuilt smaller (BatchNorm,
the next layer's inputs, a depthwise conv that follows its input channels, the flattened features of a
Linear). Channels of tensors added in a residual connection are cut together. The classifier keeps its
outputs. The layers are physically smaller, so this can be faster. A net with attention
(`nn.MultiheadAttention`, or a module with `num_heads` such as timm's ViT `Attention`, which splits
one qkv Linear into heads by reshaping) is refused, naming the layer: its features are cut without
regard to heads, and the reshape then fails or mixes heads.

`finetune_epochs > 0` retrains the pruned net briefly (masks kept during unstructured fine-tuning, so
pruned weights stay zero); the result is cached per (model, parameters, data).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from bench.api.harness import default_config, fit_cached, state_digest, train
from techniques import NEEDS_LABELS, Context, NotApplicable, Transform, register

FINETUNE_LR_FACTOR = 0.3   # the net is already trained: a full learning rate would undo more than it fixes


@register
@dataclass(frozen=True)
class Prune(Transform):
    """L1 magnitude pruning: unstructured (zeros) or structured (fewer channels, coupled ones together: Torch-Pruning)."""

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

    def trains(self) -> bool:
        return self.finetune_epochs > 0

    def apply(self, model: nn.Module, ctx: Context) -> tuple[nn.Module, dict[str, float]]:
        if self.finetune_epochs > 0 and not ctx.data.labelled:
            raise NotApplicable(f"finetune_epochs={self.finetune_epochs} {NEEDS_LABELS}")
        model = model.eval()
        params_before = sum(p.numel() for p in model.parameters())
        key = f"prune|{ctx.model_name}|{state_digest(model)}|{self.params()}|{ctx.data.identity}|seed={ctx.seed}"
        removed = 0
        if self.structured:
            removed, _ = prune_channels(model, self.amount, ctx.data.test_x[:2])
            if self.finetune_epochs:
                model, _ = fit_cached(key, model, lambda m: self._finetune(m, ctx))
        elif self.finetune_epochs:
            model, _ = fit_cached(key, model, lambda m: (mask(m, self.amount), self._finetune(m, ctx), unmask(m)))
        else:
            zeros_before = sparsity(model)
            mask(model, self.amount)
            unmask(model)
            if sparsity(model) <= zeros_before:
                raise NotApplicable(f"the {self.amount:g} fraction of smallest weights was already zero (sparsity "
                                    f"{zeros_before:.3f}): no weight left to prune at this amount")
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


# --- structured: Torch-Pruning's dependency graph decides which channels are cut together -------------

def _output_layers(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """The Conv2d/Linear layers whose output is the model's output: their output channels are the
    classes and must never be pruned. Found by running `x` once with forward hooks."""
    produced: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, _i, out: produced.append((mod, out)))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in hooks:
            h.remove()
    same = [m for m, out in produced if out is y]
    if same:
        return same
    # The output was reshaped after the last layer (e.g. a 1x1 conv head then flatten): the last layer
    # run whose output holds as many values per image as the logits is the classifier.
    per_image = y[0].numel()
    return [m for m, out in reversed(produced) if out[0].numel() == per_image][:1]


def prune_channels(model: nn.Module, amount: float, example: torch.Tensor) -> tuple[int, dict[str, list[int]]]:
    """Remove the `amount` fraction of channels (conv output channels, Linear output features) with
    the smallest L1 norm, in place. Returns (channels removed, each coupled group counted once;
    {module name: removed output indices, in the original numbering} for every module that lost
    output channels: conv, BatchNorm, Linear).

    Torch-Pruning's DepGraph (Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023;
    the `torch-pruning` package) traces `example` (shape (N, C, H, W)) through the model and groups
    every coupled channel: tensors added together in a residual connection lose the same channels;
    a depthwise conv loses the channels its input lost; BatchNorm, ReLU6, Hardswish and pooling follow.
    Importance is the group's summed L1 norm (Li et al., "Pruning Filters for Efficient ConvNets",
    ICLR 2017). The layer(s) that produce the logits keep their outputs. Raises NotApplicable when
    the graph cannot be built or nothing can be pruned.
    """
    import torch_pruning as tp  # optional heavy import: only structured pruning needs it

    refuse_attention(model)
    ignored = _output_layers(model, example)
    try:
        pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=amount, ignored_layers=ignored)
    except Exception as exc:  # DepGraph raises assorted errors on models it cannot trace
        raise NotApplicable(f"Torch-Pruning cannot build the dependency graph of {type(model).__name__} "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    names = {m: n for n, m in model.named_modules()}
    removed: dict[str, list[int]] = {}
    count = 0
    for group in pruner.step(interactive=True):
        # A module's output channels belong to one group only, so these indices are still the
        # original ones when its group is pruned.
        for dep, idxs in group.items:
            mod = dep.target.module
            if pruner.DG.is_out_channel_pruning_fn(dep.handler) and mod in names:
                removed.setdefault(names[mod], []).extend(int(getattr(i, "idx", i)) for i in idxs)
        count += len(group[0].idxs)
        group.prune()
    if not count:
        raise NotApplicable("Torch-Pruning found no channel group that can be pruned (every prunable layer "
                            "produces the model's output)")
    return count, {k: sorted(set(v)) for k, v in removed.items()}


def refuse_attention(model: nn.Module) -> None:
    """Raise NotApplicable naming the attention layers of `model`, if it has any. DepGraph cuts the
    features of a qkv Linear as plain channels: a timm-style `Attention` then reshapes them into its
    stored `num_heads` x `head_dim` and the first forward fails (`shape '[1, 17, 3, 3, 64]' is invalid`),
    and nothing checks that the channels cut from q, k and v belong to whole heads. Torch-Pruning can
    prune heads given each layer's head count and a model-specific update of `num_heads`/`head_dim`;
    that is not general enough to do blindly here."""
    found = [f"{name} ({type(m).__name__}, {m.num_heads} heads)" for name, m in model.named_modules()
             if isinstance(m, nn.MultiheadAttention) or isinstance(getattr(m, "num_heads", None), int)]
    if found:
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise NotApplicable(f"structured pruning would cut through the heads of attention layers: "
                            f"{', '.join(found[:3])}{more}; unstructured pruning (prune:amount=...) applies")


def zero_removed(model: nn.Module, removed: dict[str, list[int]]) -> nn.Module:
    """A copy of the unpruned `model` whose removed output channels (as returned by
    `prune_channels`) produce exactly zero: conv/Linear weight and bias rows and BatchNorm's affine
    weight and bias. The pruned net must compute what this copy computes; that is how it is verified."""
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for name, idx in removed.items():
            mod = masked.get_submodule(name)
            for attr in ("weight", "bias"):
                if getattr(mod, attr, None) is not None:
                    getattr(mod, attr)[idx] = 0
    return masked
