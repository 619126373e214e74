"""data_parallel and model_parallel in real gloo processes: equivalence with single-process training,
a dead worker becomes an error (not a hang), no process is left behind, a fresh port per run."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from bench.training.distributed import FAIL_EXIT_CODE, free_port
from bench.pipeline import parse
from bench.training.loop import EQUIV_TOLERANCE
from techniques import Context, Env, NotApplicable
from techniques.model_parallel import choose_splits


def _ctx(digits, tmp_path: Path) -> Context:
    return Context("lenet", digits, Env(cpu_count=2), batch_size=64, quick=True, seed=0, scratch_dir=tmp_path)


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.mark.parametrize("spec", ["data_parallel:world_size=2", "model_parallel:stages=2,microbatches=4"])
def test_two_ranks_train_the_same_model_as_one_process(spec, digits, tmp_path):
    before = _children()
    strategy = parse(f"{spec},seeds=1,epochs=1").strategy
    out = strategy.run(_ctx(digits, tmp_path))
    assert out["equivalence_max_abs_diff"] < EQUIV_TOLERANCE
    assert set(out.pop("figures")) == set(strategy.figures)
    assert out["final_accuracy"] > 0.5 and out["samples_per_s"] > 0 and out["seeds"] == 1
    assert _children() <= before


@pytest.mark.parametrize("spec", ["data_parallel:world_size=2", "model_parallel:stages=2,microbatches=4"])
def test_a_dead_rank_is_an_error_naming_it_and_nothing_is_left(spec, digits, tmp_path):
    before = _children()
    strategy = parse(f"{spec},seeds=1,epochs=1,_fail_rank=1").strategy
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=f"rank 1 exited with code {FAIL_EXIT_CODE}"):
        strategy.run(_ctx(digits, tmp_path))
    assert time.monotonic() - t0 < 60  # rank 0 waits in a collective; the launcher must not
    assert _children() <= before


def test_a_dead_rank_makes_an_error_row_through_the_isolated_runner(tmp_path):
    from bench.running.cell import CellSpec
    from bench.running.runner import run_isolated
    row = run_isolated(CellSpec.of("lenet", "data_parallel:world_size=2,seeds=1,epochs=1,_fail_rank=0", 64, quick=True),
                       Env(cpu_count=2), timeout_s=120, mem_limit_mb=0)
    assert row.status == "error" and f"rank 0 exited with code {FAIL_EXIT_CODE}" in row.reason


def test_free_ports_differ_between_runs():
    assert len({free_port() for _ in range(5)}) > 1


def test_nccl_without_cuda_is_a_skip_reason_and_unsplittable_models_are_not_applicable(digits, tmp_path):
    assert "nccl needs CUDA" in parse("data_parallel:backend=nccl").strategy.unavailable(Env(cuda_count=0))
    assert parse("data_parallel").strategy.unavailable(Env(cpu_count=2)) is None
    import models
    with pytest.raises(ValueError, match="cannot make 9 pipeline stages"):
        choose_splits(models.create("lenet"), 9)
    with pytest.raises(NotApplicable, match="cannot split lenet into 9 stages"):
        parse("model_parallel:stages=9,microbatches=4").strategy.run(_ctx(digits, tmp_path))
