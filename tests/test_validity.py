"""Validity of a cell's timing: the group's reference, the reasons that name a disturbance, and the counters behind them."""

from __future__ import annotations

import math
import threading
import time

import pytest

from bench.measure.disturbance import CpuSnapshot, Load, snapshot, thread_ids, wait_until_quiet
from bench.measure.timing import TimingConfig, time_paired_blocks
from bench.records.reasons import Invalid, Why
from bench.running import validity


def _row(pipeline: str, baseline_ms: float, latency_ms: float = 1.0, **figures) -> dict:
    return {"model": "lenet", "pipeline": pipeline, "scenario": "inference", "batch_size": 64, "threads": "",
            "status": "ok", "baseline_ms_p50": baseline_ms, "latency_ms_p50": latency_ms, **figures}


# --- the reference -----------------------------------------------------------------------------------

def test_one_odd_eager_cell_no_longer_condemns_its_group():
    """A quick run on an idle machine: the eager cell ran at 5.84/5.90 ms, every other cell's in-cell
    eager at 4.7-4.8 ms. Against the eager cell alone those were 0.80x; against the group's median they
    agree, and the eager cell is the one outside."""
    rows = [_row("eager", 5.84, 5.90)] + [_row(p, ms) for p, ms in
                                         [("jit", 4.72), ("fusion", 4.80), ("distill", 4.95), ("quantize", 4.72)]]
    group = [v for r in rows for v in validity.eager_measurements(r)]
    assert len(group) == 6   # both sides of the eager cell, one baseline of every other cell
    ref = validity.reference(group)
    assert ref.ms == pytest.approx((4.80 + 4.95) / 2) and ref.n == 6
    judged = [validity.judge(r, (), ref)[0] for r in rows]
    assert [j["valid"] for j in judged] == ["false", "true", "true", "true", "true"]
    assert "vs the group's reference 4.88 ms" in judged[0]["validity"]
    assert judged[1]["reference_ms"] == ref.ms and "median of 6 eager measurements" in judged[1]["reference"]


def test_a_cell_invalid_on_its_own_terms_adds_nothing_to_the_reference_and_keeps_its_reason():
    wide = _row("jit", 9.0)
    assert validity.eager_measurements(wide, own_valid=False) == []
    assert validity.eager_measurements({**wide, "status": "error"}) == []
    own = (Why(Invalid.INTERVAL_TOO_WIDE, "speedup interval +-30% is wider than +-10%"),)
    judged, reasons = validity.judge(wide, own, validity.reference([9.0]))
    assert judged["valid"] == "false" and judged["validity"] == "speedup interval +-30% is wider than +-10%"
    assert reasons == own


def test_rows_without_paired_timing_are_left_as_they_are():
    skipped = {"status": "skipped", "reason": "no CUDA device", "valid": ""}
    assert validity.judge(skipped, (), validity.reference([1.0]))[0] is skipped
    assert validity.reference([]) is None


# --- the reasons name the cause -----------------------------------------------------------------------

REF = validity.Reference(4.8, 9)


@pytest.mark.parametrize("figures, expect", [
    ({"baseline_foreign_cores": 0.6, "threads_started": 2},
     "threads the candidate's preparation started (2) used 0.60 cores during the baseline's blocks"),
    ({"baseline_other_cores": 1.1, "other_cores": 0.02},
     "other processes used 1.10 cores during the baseline's blocks and 0.02 during the candidate's"),
    ({"steal_cores": 0.3}, "the hypervisor gave 0.30 of our cores to other machines"),
    ({"baseline_page_faults_per_call": 7808}, "the baseline took 7808 minor page faults a call"),
    ({"baseline_ms_before_prepare": 4.8}, "ran at 4.8 ms in this process before the technique was prepared: "
                                          "slower since the preparation"),
    ({"baseline_ms_before_prepare": 6.3}, "it ran at 6.3 ms before the technique was prepared too: this process "
                                          "was slow from its start"),
    ({"processes_started": 2}, "the preparation left 2 child process(es) running"),
    ({}, "no disturbance the harness can see"),
])
def test_a_departed_baseline_names_what_the_harness_saw(figures, expect):
    why = validity.departure(_row("distill", 6.3, **figures), REF)
    assert why.kind is Invalid.BASELINE_DEPARTED
    why = why.text
    assert why.startswith("in-cell eager baseline 6.3 ms vs the group's reference 4.8 ms (1.31x")
    assert expect in why


def test_quiet_figures_name_no_cause():
    quiet = {"baseline_foreign_cores": 0.01, "baseline_other_cores": 0.03, "other_cores": 0.05, "steal_cores": 0.0,
             "baseline_page_faults_per_call": 0.2, "baseline_ms_before_prepare": 6.0}
    assert validity.causes(_row("distill", 6.3, **quiet), REF) == [
        "it ran at 6 ms before the technique was prepared too: this process was slow from its start, "
        "not because of its technique"]
    assert validity.departure(_row("distill", 5.0, **quiet), REF) is None


# --- the counters -------------------------------------------------------------------------------------

def test_load_between_two_snapshots():
    a = CpuSnapshot(wall_s=10.0, own_cpu_s=5.0, busy_s=100.0, steal_s=1.0, involuntary_switches=3, foreign_cpu_s=0.5)
    b = CpuSnapshot(wall_s=11.0, own_cpu_s=6.8, busy_s=102.3, steal_s=1.1, involuntary_switches=53, foreign_cpu_s=0.9)
    load = Load.between(a, b)
    assert load.other_cores == pytest.approx(0.5) and load.steal_cores == pytest.approx(0.1)
    assert load.foreign_cores == pytest.approx(0.4) and load.preemptions_per_s == pytest.approx(50)
    # /proc/stat counts in ticks: over a short block the machine may show less than this process used
    assert Load.between(a, CpuSnapshot(10.01, 5.02, 100.0, 1.0, 3)).other_cpu_s == 0.0
    assert (load + load).wall_s == pytest.approx(2.0)


def test_a_thread_started_after_the_probe_is_counted_as_foreign_while_it_runs():
    """The state behind a baseline slowed by its candidate's runtime: a thread the preparation started
    that keeps a core busy during the baseline's blocks."""
    home = thread_ids()
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    t = threading.Thread(target=spin, daemon=True)
    t.start()
    try:
        assert len(thread_ids() - home) == 1
        before = snapshot(home)
        time.sleep(0.3)
        load = Load.between(before, snapshot(home))
    finally:
        stop.set()
        t.join()
    assert load.foreign_cpu_s > 0.05            # the spinning thread's CPU, in ticks of 10 ms
    assert Load.between(before, snapshot(frozenset(thread_ids()))).foreign_cpu_s == 0.0


def test_paired_blocks_keep_each_sides_load_apart():
    """A fake clock and a fake probe: the baseline's blocks saw another process take half a core."""
    state = {"t": 0.0, "busy": 0.0, "own": 0.0, "side": ""}

    def clock() -> float:
        return state["t"]

    def work(side: str, s: float):
        def fn() -> None:
            state["t"] += s
            state["own"] += s
            state["busy"] += s + (0.5 * s if side == "baseline" else 0.0)
        return fn

    def probe() -> CpuSnapshot:
        return CpuSnapshot(state["t"], state["own"], state["busy"], 0.0, 0)

    cfg = TimingConfig(warmup=1, min_rounds=6, min_time_s=0.05, max_time_s=1.0, block_s=0.01, settle_s=0.0)
    pb = time_paired_blocks(work("candidate", 0.001), work("baseline", 0.002), cfg, clock=clock,
                            sleep=lambda s: None, probe=probe)
    assert pb.baseline_load.other_cores == pytest.approx(0.5)
    assert pb.candidate_load.other_cores == pytest.approx(0.0)
    assert pb.baseline_load.wall_s == pytest.approx(sum(pb.baseline.samples_s))


def test_waiting_until_the_other_sides_threads_are_quiet():
    home = thread_ids()
    assert wait_until_quiet(home) == 0.0            # no foreign thread: no wait
    stop_at = time.perf_counter() + 0.15

    def spin_then_idle() -> None:                    # what a spin-waiting pool does after its last call
        while time.perf_counter() < stop_at:
            pass
        time.sleep(1.0)

    t = threading.Thread(target=spin_then_idle, daemon=True)
    t.start()
    waited = wait_until_quiet(home)
    assert 0.1 < waited < 0.5
    before = snapshot(home)
    time.sleep(0.1)
    assert Load.between(before, snapshot(home)).foreign_cpu_s < 0.005
    t.join()


def test_an_onnx_cells_baseline_blocks_no_longer_share_the_cores_with_its_spinning_pool():
    """The state that slowed eager inside ONNX Runtime cells: ORT's intra-op worker spin-waits for
    about 40 ms after the candidate's last call, past the settle time, into the baseline's block
    (0.12-0.13 cores of it during the baseline's blocks when each block started after the fixed
    settle alone). Each block now starts once that pool is quiet."""
    from bench.env import detect
    from bench.measure.timing import QUICK
    from bench.running.cell import CellSpec, run_prepared

    import torch

    before = torch.get_num_threads()
    try:   # two threads each, as on a 2-core machine's default: ORT then starts a pool worker to watch
        result, _ = run_prepared(CellSpec.of("lenet", "onnx:ep=cpu", 64, data="synthetic", quick=True,
                                             timing=QUICK, threads=2), detect())
    finally:
        torch.set_num_threads(before)
    assert result.status == "ok", result.reason
    assert result.threads_started >= 1               # ORT's pool: the threads the wait watches
    assert result.timing.baseline_load.foreign_cores < 0.05   # 0.12-0.13 before


def test_the_final_judgement_gives_every_row_of_a_group_the_same_reference():
    """A busy run seen by a new user: every first measurement of the batch-1 group was too noisy on its
    own terms and was re-measured; the re-measured rows were then each judged against a 'median of 1'
    (themselves), and a baseline 1.7x slower than eager's passed. Now the group's reference is formed
    from the rows as they stand at the end."""
    from bench.running.runner import _Judged, _judged_again

    def judged(pipeline: str, baseline_ms: float, latency_ms: float = 0.05) -> tuple:
        row = {**_row(pipeline, baseline_ms, latency_ms), "batch_size": 1}
        return (None, _Judged(row, (), ()))

    rows = [judged("eager", 0.1015, 0.102), judged("fusion@jit", 0.1736), judged("onnx:ep=cpu,quant=static", 0.1025)]
    final = [j for _, j in _judged_again(rows, {})]
    assert [j.row["reference_ms"] for j in final] == [pytest.approx(0.10225)] * 3
    assert [bool(j.reasons) for j in final] == [False, True, False]
    assert "median of 4 eager measurements" in final[1].row["validity"]


# --- a worker that starts off its group's speed gives way ---------------------------------------------

def test_a_worker_off_its_groups_speed_at_start_gives_way_and_its_cell_is_tried_later():
    """Eager runs slower on this kind of machine for periods of seconds to a minute. A worker that starts
    off its group's reference stops before any technique is prepared and its cell goes behind the cells
    queued after it, at most MAX_WORKER_DRAWS workers in all; the row says how many and why."""
    from bench.records.reasons import Failure
    from bench.running.cell import CellSpec
    from bench.running.result import CellResult
    from bench.running.runner import MAX_WORKER_DRAWS, drawn

    a, b, c = (CellSpec.of("lenet", p, 1) for p in ("jit", "fusion", "distill"))
    starts = {"jit": ["off", "ok"], "fusion": ["ok"], "distill": ["off"] * (MAX_WORKER_DRAWS - 1) + ["ok"]}
    calls: list[tuple[str, float]] = []

    def once(spec: CellSpec, reference_ms: float) -> CellResult:
        calls.append((spec.pipeline.spec, reference_ms))
        if starts[spec.pipeline.spec].pop(0) == "off":
            return CellResult.error(validity.off_at_start(0.341, reference_ms), failure=Failure.OFF_AT_START)
        return CellResult("ok", notes=("own note",))

    log: list[str] = []
    got = list(drawn([a, b, c], once, lambda spec: 0.285, log.append))
    assert [s.pipeline.spec for s, _, _ in got] == ["fusion", "jit", "distill"]   # jit tried again after fusion
    assert [c[0] for c in calls] == ["jit", "fusion", "distill", "jit", "distill", "distill"]
    assert calls[-1][1] != calls[-1][1] and calls[0][1] == 0.285   # the last draw is measured whatever its start
    results = {s.pipeline.spec: r for s, r, _ in got}
    assert [results[p].worker_draws for p in ("jit", "fusion", "distill")] == [2, 1, MAX_WORKER_DRAWS]
    assert results["fusion"].notes == ("own note",)
    assert "worker 1 gave way before preparing (eager ran at 0.341 ms" in results["jit"].notes[1]
    assert sum("[later] lenet jit bs=1" in line for line in log) == 1

    assert [r.worker_draws for _, r, _ in drawn([a], lambda s, ms: CellResult("skipped", "x"),
                                                lambda s: math.nan, log.append)] == [None]
    assert validity.off_at_start(0.30, 0.285) == "" and validity.off_at_start(0.341, math.nan) == ""
    assert "1.20x the group's reference" in validity.off_at_start(0.341, 0.285)


def test_a_real_worker_off_its_reference_stops_before_preparing_its_technique():
    """In a real worker: a reference no process can meet stops the cell before its technique is
    prepared (no ONNX export, no compile), as an OFF_AT_START result the runner never writes."""
    from bench.env import detect
    from bench.measure.timing import QUICK
    from bench.records.reasons import Failure
    from bench.running.cell import CellSpec
    from bench.running.runner import run_isolated

    spec = CellSpec.of("lenet", "onnx:ep=cpu", 1, data="synthetic", quick=True, timing=QUICK, reference_ms=1e-6)
    result = run_isolated(spec, detect(), timeout_s=300, mem_limit_mb=4096)
    assert result.failure is Failure.OFF_AT_START, (result.status, result.reason)
    assert "before any technique was prepared" in result.reason and result.setup_s != result.setup_s   # NaN


def test_a_too_wide_interval_reads_wider_than_the_limit():
    """+-10.4% against a +-10% limit must not print as '+-10% is wider than +-10%'."""
    why = validity.interval_too_wide(20, 0.104, 5)
    assert why is not None and why.text.startswith("speedup interval +-10.4% is wider than +-10% ")
    assert validity.interval_too_wide(20, 0.30, 5).text.startswith("speedup interval +-30% is wider than +-10% ")
    assert validity.percent_beyond(0.1004, 0.10) == "10.04%"
    assert validity.interval_too_wide(20, 0.10, 5) is None
