"""plain: the reference trainer (Adam + cosine LR on bench.training.cache's batches); every training row compares to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.api.harness import (StrategyBase, cached_weights, init_model, max_abs_diff, plain_key, reached,
                               reference_weights, sgd_steps, summarize, train)
from techniques import Context, register


@register
@dataclass(frozen=True)
class Plain(StrategyBase):
    """One process, one batch per step: the time-to-accuracy every other strategy is measured against.

    Its trained weights are also cached, so `augment` compares its accuracy with exactly these runs.
    """

    name = "plain"
    figures = {"reached_target": "count"}
    examples = ("plain",)

    def run(self, ctx: Context) -> dict[str, Any]:
        runs = []
        for cfg in self.configs(ctx):
            model = init_model(ctx.model_name, cfg.seed)
            runs.append(train(model, ctx.data, cfg))
            # Store (not load) these weights: load_state_dict runs only when the key is new.
            cached_weights(plain_key(ctx.model_name, ctx.data, cfg), init_model(ctx.model_name, cfg.seed),
                           lambda m, trained=model: m.load_state_dict(trained.state_dict()), log=lambda _: None)
        # Plain against itself: two equivalence runs with the same seed measure run-to-run repeatability
        # (0 on CPU; non-deterministic kernels would show here first).
        cfg = self.configs(ctx)[0]
        again = sgd_steps(init_model(ctx.model_name, cfg.seed), ctx.data, ctx.batch_size, cfg.seed)
        repeat = max_abs_diff(again, reference_weights(ctx.model_name, ctx.data, ctx.batch_size, cfg.seed))
        return {**summarize(runs, self.target), "equivalence_max_abs_diff": repeat, "device": "cpu",
                "figures": {"reached_target": reached(runs, self.target)}}
