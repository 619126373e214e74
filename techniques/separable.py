"""separable: replace each k x k convolution by depthwise k x k + pointwise 1x1, then retrain.

A dense conv costs C_in * C_out * k * k multiply-adds per output pixel; the separable pair costs
C_in * k * k + C_in * C_out, so FLOPs and parameters drop by up to a factor of k * k. When it helps:
wide convolutions (many input channels) on hardware with efficient depthwise kernels. On the CPU,
depthwise convolutions run far below the machine's FLOP rate, so the row often shows little or no
speedup despite the smaller FLOP count; and a conv with one input channel (lenet's conv1) becomes a
single k x k filter, which costs accuracy. The rows show what really happens: on lenet, where conv2
(20->50, 5x5) dominates, it measured 1.42x at batch 64 and 1.16x at batch 1 (one thread), at a cost
of 1.7 points of accuracy (0.961 vs 0.978) after 3 quick epochs. Only dense k x k convolutions are rebuilt: a net made
mostly of 1x1 and grouped convolutions (RegNet, MobileNet) keeps most of them, and the row's notes
say how many of its convolutions, and what share of their FLOPs, were converted.

The new layers start from the best rank-1 factorisation of each input channel's filters (an SVD of
the trained weights), then the whole net is trained with the model's own recipe (fewer epochs with
--quick). Training runs once per (model, parameters, data); later cells load the cached weights and
report the training time of the run that produced them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from bench.api.harness import default_config, evaluate, fit_cached, state_digest, train
from techniques import NEEDS_LABELS, Context, NotApplicable, Transform, register

QUICK_EPOCHS = 3   # enough on digits to recover most of the accuracy; keeps --quick a few minutes


@register
@dataclass(frozen=True)
class Separable(Transform):
    """Depthwise-separable rebuild of every dense k x k conv (k > 1, groups == 1), then retraining."""

    epochs: int | None = None   # None: the model's default recipe (QUICK_EPOCHS with --quick)

    name = "separable"
    figures = {"convs_replaced": "count", "convs_total": "count", "conv_flops_replaced": "ratio",
               "params_before": "count", "params_after": "count", "train_s": "s", "accuracy_before": "ratio"}
    examples = ("separable",)

    def __post_init__(self) -> None:
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 0):
            raise ValueError(f"separable.epochs must be an integer >= 0 (0: no retraining) or none; got {self.epochs!r}")

    def trains(self) -> bool:
        return self.epochs != 0   # the rebuilt net is retrained (epochs=0 times it untrained)

    def apply(self, model: nn.Module, ctx: Context) -> tuple[nn.Module, dict[str, float], tuple[str, ...]]:
        model = model.eval()
        acc_before = evaluate(model, ctx.data.test_x, ctx.data.test_y) if ctx.data.labelled else float("nan")
        params_before = sum(p.numel() for p in model.parameters())
        key = f"separable|{ctx.model_name}|{state_digest(model)}|{self.params()}|{ctx.data.identity}|quick={ctx.quick}"
        macs = conv_macs(model, ctx.data.test_x[:1])
        replaced = replace_convs(model)
        if not replaced:
            raise NotApplicable(f"no dense k x k convolution (k > 1, groups == 1) to make separable (looked at "
                                f"{len(macs)} convolution{'' if len(macs) == 1 else 's'}: all 1x1 or grouped)")
        share = sum(macs[name] for name in replaced) / max(1, sum(macs.values()))
        notes = ()
        if len(replaced) < len(macs):   # it left part of the network as it was: say how much it changed
            notes = (f"converted {len(replaced)} of {len(macs)} convolutions ({_percent(share)} of conv FLOPs); "
                     f"the other {len(macs) - len(replaced)} are 1x1 or grouped",)
        cfg = default_config(ctx.model_name)
        epochs = self.epochs if self.epochs is not None else (QUICK_EPOCHS if ctx.quick else cfg.epochs)
        if epochs > 0 and not ctx.data.labelled:
            raise NotApplicable(f"retraining the separable net {NEEDS_LABELS}; separable:epochs=0 times it untrained")
        train_s = 0.0
        if epochs > 0 and ctx.data.labelled:
            cfg = dataclasses.replace(cfg, epochs=epochs, seed=ctx.seed)
            model, train_s = fit_cached(key, model, lambda m: train(m, ctx.data, cfg, eval_every_epoch=False))
        return model.eval(), {"convs_replaced": len(replaced), "convs_total": len(macs),
                              "conv_flops_replaced": share, "params_before": params_before,
                              "params_after": sum(p.numel() for p in model.parameters()),
                              "train_s": train_s, "accuracy_before": acc_before}, notes


def _percent(share: float) -> str:
    return f"{share:.0%}" if share >= 0.1 else f"{share:.1%}"


def conv_macs(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Multiply-adds of each Conv2d of `model` (by module name) on the batch `x`, from one forward:
    output elements x (input channels / groups) x k x k. A conv the forward does not reach counts 0."""
    macs = {name: 0 for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    names = {m: name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}

    def count(conv: nn.Conv2d, _inputs, out: torch.Tensor) -> None:
        per_output = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
        macs[names[conv]] += out.numel() * per_output

    hooks = [m.register_forward_hook(count) for m in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return macs


def separable_pair(conv: nn.Conv2d) -> nn.Sequential:
    """Depthwise (same kernel, stride, padding, dilation) + pointwise 1x1, initialised so that
    pointwise[o, i] * depthwise[i] is the best rank-1 approximation of conv.weight[o, i]."""
    c_in, c_out = conv.in_channels, conv.out_channels
    dw = nn.Conv2d(c_in, c_in, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                   dilation=conv.dilation, groups=c_in, bias=False, padding_mode=conv.padding_mode)
    pw = nn.Conv2d(c_in, c_out, 1, bias=conv.bias is not None)
    with torch.no_grad():
        w = conv.weight.detach().permute(1, 0, 2, 3).reshape(c_in, c_out, -1)  # per input channel: C_out x k*k
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        dw.weight.copy_((vh[:, 0, :] * s[:, :1].sqrt()).reshape_as(dw.weight))
        pw.weight.copy_((u[:, :, 0] * s[:, :1].sqrt()).T.reshape_as(pw.weight))
        if conv.bias is not None:
            pw.bias.copy_(conv.bias)
    return nn.Sequential(dw, pw)


def replace_convs(model: nn.Module) -> list[str]:
    """Swap every dense k x k Conv2d in `model` (in place) for its separable pair; return their names."""
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Conv2d) and m.groups == 1 and max(m.kernel_size) > 1]
    for name, conv in targets:
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, separable_pair(conv))
    return [name for name, _ in targets]
