"""Which cells a run covers: the default and --quick matrices, built from what techniques declare."""

from __future__ import annotations

import models
import techniques
from bench.pipeline import parse

QUICK_MODELS = ("lenet",)
QUICK_BATCH_SIZES = (1, 64)
DEFAULT_BATCH_SIZES = (1, 16, 64, 256)
QUICK_TRAINING_BATCH_SIZE = 64


def default_pipelines(scenario: str) -> list[str]:
    """`eager` first, then every registered technique's example pipelines, in name order."""
    kinds = ("training",) if scenario == "training" else ("transform", "runtime")
    out = [] if scenario == "training" else ["eager"]
    for _, cls in techniques.all_items():
        if cls.kind in kinds:
            out += [p for p in cls.examples if p not in out]
    return out


def cells(model_names: list[str] | None, pipelines: list[str] | None, batch_sizes: list[int] | None,
          scenario: str, quick: bool) -> list[tuple[str, str, int]]:
    """(model, pipeline, batch size) triples in run order (model-major, so a model trains once)."""
    if scenario == "training":
        bss = batch_sizes or [QUICK_TRAINING_BATCH_SIZE]
    else:
        bss = batch_sizes or list(QUICK_BATCH_SIZES if quick else DEFAULT_BATCH_SIZES)
    pipes = pipelines or default_pipelines(scenario)
    if model_names:
        plan = {m: list(pipes) for m in model_names}
    elif quick:
        plan = {m: list(pipes) for m in QUICK_MODELS}
        if not pipelines:  # techniques may ask to be shown on another model too (fusion -> lenet_bn)
            for _, cls in techniques.all_items():
                for m in cls.quick_models:
                    extra = [p for p in cls.examples if p in pipes]
                    base = ["eager"] if scenario != "training" else []
                    plan.setdefault(m, [])
                    plan[m] += [p for p in base + extra if p not in plan[m]]
    else:
        plan = {m: list(pipes) for m in models.list()}
    for p in {p for ps in plan.values() for p in ps}:
        if parse(p).scenario != scenario:
            raise_scenario(p, scenario)
    return [(m, p, b) for m, ps in plan.items() for p in ps for b in bss]


def raise_scenario(pipeline: str, scenario: str) -> None:
    from bench.errors import UserError
    other = "training" if scenario == "inference" else "inference"
    raise UserError(f"pipeline {pipeline!r} is a {other} pipeline; run it with --scenario {other}")
