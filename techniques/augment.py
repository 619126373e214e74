"""augment: batched data augmentation with kornia, applied to each training batch as a tensor op.

Two policies. `tutorial` is what common image tutorials apply: horizontal and vertical flips,
rotation up to 30 degrees and a random resized crop. `digit_safe` is the same without flips,
because a flipped 6 is a 9 and a mirrored 2, 3, 4, 5 or 7 is no digit at all. With 1,437 training
images, augmentation can help a little (more variety) or hurt (label noise); the row reports the
accuracy against plain training with the same seeds and epochs, and what augmenting costs per batch.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench.api.harness import StrategyBase, init_model, plain_accuracy, reached, summarize, train
from techniques import Context, Env, register

POLICIES = ("tutorial", "digit_safe")
ROTATION_DEG = 30.0
CROP_SCALE = (0.8, 1.0)    # the crop keeps 80-100% of the image: smaller crops lose whole strokes
COST_ROUNDS = 20           # timed augmentations of one batch for augment_ms_per_batch


def build_policy(policy: str, input_shape: tuple[int, int, int]) -> nn.Module:
    """The kornia pipeline of `policy`; it draws from torch's global RNG, so seeded runs repeat."""
    import kornia.augmentation as K

    ops: list[nn.Module] = []
    if policy == "tutorial":
        ops += [K.RandomHorizontalFlip(p=0.5), K.RandomVerticalFlip(p=0.5)]
    ops += [K.RandomRotation(degrees=ROTATION_DEG, p=0.5),
            K.RandomResizedCrop(size=tuple(input_shape[1:]), scale=CROP_SCALE, p=1.0)]
    return nn.Sequential(*ops)


def augment_ms_per_batch(aug: nn.Module, x: torch.Tensor) -> float:
    """Median wall time of augmenting one batch, in ms (the extra cost per training step)."""
    with torch.no_grad():
        aug(x)  # warm-up
        times = []
        for _ in range(COST_ROUNDS):
            t0 = time.perf_counter()
            aug(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


@register
@dataclass(frozen=True)
class Augment(StrategyBase):
    """`augment:policy=tutorial|digit_safe`: plain training on augmented batches (test data untouched)."""

    name = "augment"
    figures = {"reached_target": "count", "augment_ms_per_batch": "ms", "accuracy_delta_vs_plain": "ratio",
               "plain_final_accuracy": "ratio"}
    examples = ("augment:policy=tutorial", "augment:policy=digit_safe")
    policy: Literal["tutorial", "digit_safe"] = "digit_safe"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")

    def unavailable(self, env: Env) -> str | None:
        try:
            import kornia  # noqa: F401
        except ImportError:
            return "kornia is not installed (pip install kornia)"
        return None

    def run(self, ctx: Context) -> dict[str, Any]:
        aug = build_policy(self.policy, ctx.input_shape)

        def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
            with torch.no_grad():
                x = aug(x)
            F.cross_entropy(model(x), y).backward()

        cfgs = self.configs(ctx)
        cost_ms = augment_ms_per_batch(aug, ctx.data.train_x[:ctx.batch_size])
        runs = [train(init_model(ctx.model_name, cfg.seed), ctx.data, cfg, step=step) for cfg in cfgs]
        plain = statistics.median(plain_accuracy(ctx.model_name, ctx.data, cfg) for cfg in cfgs)
        out = summarize(runs, self.target)
        # No equivalence: augmented training is meant to train a different model.
        return {**out, "device": "cpu",
                "figures": {"reached_target": reached(runs, self.target), "augment_ms_per_batch": cost_ms,
                            "accuracy_delta_vs_plain": out["final_accuracy"] - plain,
                            "plain_final_accuracy": plain}}
