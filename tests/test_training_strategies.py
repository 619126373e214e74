"""In-process training strategies: plain is the reference trainer, grad_accum's equivalence and memory,
augment's policies, the summary row, and every registered strategy's parameters and figures."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import techniques
from bench.api import UserError
from bench.pipeline import parse
from bench.records.columns import COLUMNS
from bench.training.loop import (EQUIV_TOLERANCE, RunResult, TrainConfig, batches, init_model, max_abs_diff,
                                 reference_weights, sgd_steps, step_peak_mb, summarize, train)
from techniques import Context, Env

TRAINING = [name for name, cls in techniques.all_items() if cls.kind == "training"]
TRAINING_COLUMNS = {"step_ms_p50", "samples_per_s", "peak_mem_mb", "final_accuracy", "final_accuracy_spread",
                    "time_to_target_s", "target_accuracy", "seeds", "curve"}


@pytest.fixture(scope="module")
def small(digits):
    """The first 320 training images (5 batches of 64): real digits, seconds per run."""
    return dataclasses.replace(digits, train_x=digits.train_x[:320], train_y=digits.train_y[:320])


def test_the_seed_strategies_are_registered():
    assert {"plain", "grad_accum", "data_parallel", "model_parallel", "augment"} <= set(TRAINING)


@pytest.mark.parametrize("name", TRAINING)
def test_examples_parse_and_bad_parameters_name_the_field(name):
    cls = techniques.get(name)
    assert cls.examples, f"{name} adds nothing to the default training matrix"
    for ex in cls.examples:
        assert parse(ex).strategy.name == name
    for bad, field in (("seeds=0", "seeds"), ("target=1.5", "target"), ("epochs=-1", "epochs")):
        with pytest.raises(UserError, match=field):
            parse(f"{name}:{bad}")


@pytest.mark.parametrize("bad", ["grad_accum:steps=0", "data_parallel:world_size=0", "model_parallel:stages=0",
                                 "model_parallel:microbatches=0", "augment:policy=flipfest"])
def test_strategy_specific_bad_parameters(bad):
    with pytest.raises(UserError, match=bad.split(":")[1].split("=")[0]):
        parse(bad)


def test_the_training_loop_is_adam_with_cosine_decay_over_the_seeded_batches(small):
    """The one loop, against the same recipe written out in plain PyTorch: weights bit-identical."""
    cfg = TrainConfig(epochs=2, batch_size=64, seed=3)
    ref = init_model("lenet", 3)
    torch.manual_seed(3)
    opt = torch.optim.Adam(ref.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2)
    for epoch in range(2):
        ref.train()
        for idx in batches(320, 64, epoch, 3):
            opt.zero_grad()
            F.cross_entropy(ref(small.train_x[idx]), small.train_y[idx]).backward()
            opt.step()
        sched.step()
    ours = init_model("lenet", 3)
    run = train(ours, small, cfg)
    assert max_abs_diff(ours.state_dict(), ref.state_dict()) == 0.0
    assert len(run.curve) == 2 and run.samples == 2 * 320 and len(run.step_s) == 2 * 5
    assert run.curve[-1][1] == pytest.approx((ref.eval()(small.test_x).argmax(1) == small.test_y).float().mean().item())


def test_grad_accum_equals_one_big_batch_and_a_wrong_scaling_is_caught(small):
    from techniques.grad_accum import accumulate_step
    ref = reference_weights("lenet", small, 64, seed=1)
    got = sgd_steps(init_model("lenet", 1), small, 64, 1, step=accumulate_step(4))
    assert max_abs_diff(got, ref) < EQUIV_TOLERANCE

    def unscaled(model, x, y):  # the classic bug: mean loss per micro-batch, gradients K times too big
        for xs, ys in zip(x.tensor_split(4), y.tensor_split(4)):
            F.cross_entropy(model(xs), ys).backward()

    bad = sgd_steps(init_model("lenet", 1), small, 64, 1, step=unscaled)
    assert max_abs_diff(bad, ref) > 10 * EQUIV_TOLERANCE


def test_grad_accum_step_needs_less_memory_than_the_big_batch(digits):
    from techniques.grad_accum import accumulate_step
    model = init_model("lenet", 0)
    opt = torch.optim.Adam(model.parameters())
    x, y = digits.train_x[:256], digits.train_y[:256]

    def step_with(fn):
        def run():
            opt.zero_grad(set_to_none=True)
            fn(model, x, y)
            opt.step()
        return run

    # One thread, as training cells run by default: each extra OpenMP worker's malloc arena adds a
    # fixed few MiB to both steps, whatever threads earlier tests in this process left set.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        big = step_peak_mb(step_with(lambda m, a, b: F.cross_entropy(m(a), b).backward()))
        accum = step_peak_mb(step_with(accumulate_step(4)))
    finally:
        torch.set_num_threads(threads)
    assert big > 10 and accum < big / 2, (big, accum)  # ~37 MiB vs ~14 MiB for lenet at 256


def test_summary_medians_spread_and_never_reached():
    runs = [RunResult(0, [0.01, 0.03], [(1.0, 0.90), (2.0, 0.98)], 128, 100.0),
            RunResult(1, [0.02, 0.02], [(1.0, 0.95), (2.0, 0.96)], 128, 120.0),
            RunResult(2, [0.02, 0.04], [(1.5, 0.97), (3.0, 0.99)], 128, 110.0)]
    s = summarize(runs, 0.97)
    assert s["final_accuracy"] == 0.98 and s["final_accuracy_spread"] == pytest.approx(0.03)
    assert s["time_to_target_s"] == 1.5 + (2.0 - 1.5) * 1 and s["seeds"] == 3  # times 2.0, inf, 1.5 -> 2.0
    assert s["step_ms_p50"] == pytest.approx(20.0) and s["peak_mem_mb"] == 120.0
    assert json.loads(s["curve"]) == [[1.0, 0.9], [2.0, 0.98]]  # the median seed's curve
    assert math.isnan(summarize(runs[1:2], 0.97)["time_to_target_s"])
    assert math.isnan(summarize(runs[:2], 0.99)["time_to_target_s"])


def test_augment_policies_flip_only_in_the_tutorial(digits):
    import kornia.augmentation as K
    from techniques.augment import build_policy
    flips = (K.RandomHorizontalFlip, K.RandomVerticalFlip)
    assert any(isinstance(m, flips) for m in build_policy("tutorial", (1, 28, 28)))
    assert not any(isinstance(m, flips) for m in build_policy("digit_safe", (1, 28, 28)))
    torch.manual_seed(0)
    x = digits.train_x[:64]
    out = build_policy("digit_safe", (1, 28, 28))(x)
    assert out.shape == x.shape and not torch.equal(out, x)


@pytest.mark.parametrize("spec", ["plain", "grad_accum:steps=4", "augment:policy=tutorial"])
def test_in_process_strategy_rows(spec, small, tmp_path: Path):
    strategy = parse(f"{spec},seeds=2,epochs=2" if ":" in spec else f"{spec}:seeds=2,epochs=2").strategy
    ctx = Context("lenet", small, Env(cpu_count=2), batch_size=64, quick=True, seed=0, scratch_dir=tmp_path)
    out = strategy.run(ctx)
    assert set(out.pop("figures")) == set(strategy.figures)
    assert out.pop("device") == "cpu"
    assert TRAINING_COLUMNS <= set(out) <= set(COLUMNS)
    assert out["seeds"] == 2 and 0.0 < out["final_accuracy"] <= 1.0 and out["samples_per_s"] > 0
    assert len(json.loads(out["curve"])) == 2
    if strategy.name != "augment":  # augment trains a different model on purpose
        assert out["equivalence_max_abs_diff"] < EQUIV_TOLERANCE
