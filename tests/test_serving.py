"""Serving scenarios under real MLPerf LoadGen (short test overrides): figures, faults, and served outputs."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("mlperf_loadgen")

from bench.serving import loadgen  # noqa: E402
from bench.serving.scenarios import ServingConfig, serve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10)).eval()


def _predict(model: nn.Module):
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)
    return run


SAMPLES = torch.randn(64, 1, 12, 12)


@pytest.mark.parametrize("scenario,batch", [("single-stream", 1), ("multi-stream", 8), ("server", 8), ("offline", 16)])
def test_each_scenario_is_valid_on_a_small_model_and_serves_its_outputs_unchanged(tmp_path, scenario, batch):
    net = _small_net()
    served = serve(_predict(net), _predict(net), SAMPLES, ServingConfig(scenario, latency_bound_ms=50.0), batch,
                   tmp_path, tolerance=1e-5)
    assert served.valid, (served.candidate.outcome.reason, served.baseline.outcome.reason)
    assert served.candidate.qps > 0 and served.baseline.qps > 0
    assert 0 < served.candidate.outcome.latency_ms_p50 <= served.candidate.outcome.latency_ms_p99
    assert served.outputs_equal and served.max_abs_diff <= 1e-5 and served.top1_agreement == 1.0
    assert (tmp_path / "accuracy" / "mlperf_log_accuracy.json").exists()
    logs = [p for p in tmp_path.rglob("mlperf_log_summary.txt") if "accuracy" not in p.parts]
    assert len(logs) >= 4 and all("Result is" in p.read_text() for p in logs)   # both sides, at least 2 runs each
    if scenario == "server":
        assert len(served.candidate.steps) >= 2 and served.latency_bound_ms == 50.0
        assert all(s["latency_ms_p99"] < 50.0 for s in served.candidate.steps if s["valid"])


def test_the_predictors_own_calls_are_timed_inside_the_loadgen_run(tmp_path):
    """A predictor whose call takes a known time (a 2 ms sleep): the SUT's own p90 of its calls is about
    2 ms, and LoadGen's p90 (issue to completion) holds it, so what serving adds is never negative."""
    def sleepy(x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.002)
        return torch.zeros(len(x), 10)

    out, _ = loadgen.run(sleepy, SAMPLES, loadgen.Settings("single-stream", min_duration_ms=300, min_query_count=50,
                                                           expected_latency_ms=0.1), tmp_path)
    assert out.valid, out.reason
    assert 2.0 <= out.call_ms_p90 < 20.0, out.call_ms_p90
    assert out.latency_ms_p90 >= out.call_ms_p90, (out.latency_ms_p90, out.call_ms_p90)


def test_a_predictor_that_returns_at_once_does_not_make_loadgen_schedule_millions_of_queries(tmp_path):
    """LoadGen builds its whole query schedule from the expected latency: a precomputed output (0.3 us a
    call, as LoadGen's own-time run serves) at the full 5 s once scheduled 18.6M queries and ran out of
    memory. The schedule is bounded, and the run still has queries for its whole duration."""
    import resource

    from bench.serving.scenarios import MAX_PREGENERATED_QUERIES, expected_latency_ms, own_time
    cfg = ServingConfig("single-stream", quick=False)
    assert cfg.duration_ms / expected_latency_ms(0.0003, cfg) <= MAX_PREGENERATED_QUERIES
    assert expected_latency_ms(2.0, cfg) == pytest.approx(0.1)     # a real predictor: the usual cap
    before_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = own_time(_predict(_small_net()), SAMPLES, cfg, 1, tmp_path, 30.0)
    grew_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before_mib
    assert out.valid, out.reason
    assert grew_mib < 2000, grew_mib


def test_a_predictor_that_raises_is_an_error_not_a_crash(tmp_path):
    calls = {"n": 0}
    net = _small_net()

    def flaky(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 20:
            raise RuntimeError("kernel exploded")
        return _predict(net)(x)

    out, _ = loadgen.run(flaky, SAMPLES, loadgen.Settings("single-stream", min_duration_ms=500, min_query_count=50,
                                                           expected_latency_ms=0.1), tmp_path)
    assert not out.valid and out.error == "the predictor raised RuntimeError: kernel exploded"


def test_a_predictor_that_never_returns_is_abandoned_with_a_reason(tmp_path):
    def stuck(x: torch.Tensor) -> torch.Tensor:
        time.sleep(3600)
        raise AssertionError("unreachable")

    t0 = time.monotonic()
    # Offline: the batcher's thread is stuck, and the watchdog completes its samples so LoadGen returns.
    # (SingleStream runs each query inside issue_query, which nothing can interrupt: there the cell's
    # time-out ends the worker.)
    out, _ = loadgen.run(stuck, SAMPLES, loadgen.Settings("offline", min_duration_ms=200, min_query_count=1,
                                                           expected_qps=100.0), tmp_path, max_batch=8, stall_s=1.0)
    assert time.monotonic() - t0 < 30
    assert not out.valid and "did not return within 1 s" in out.error


def test_served_outputs_that_differ_from_direct_calls_are_caught(tmp_path):
    """A predictor whose output depends on what else is in its batch (batch statistics): the batcher
    changes the results, and the accuracy pass says so."""
    def batch_dependent(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] - x.flatten(1)[:, :10].mean(0, keepdim=True)

    served = serve(batch_dependent, batch_dependent, SAMPLES, ServingConfig("server", latency_bound_ms=50.0), 8,
                   tmp_path, tolerance=1e-5)
    assert not served.outputs_equal and served.max_abs_diff > 1e-3


def test_a_serving_run_writes_rows_logs_and_a_report_section(tmp_path):
    """Through the CLI: two serving scenarios of eager and jit on lenet, each row with LoadGen's
    figures and its logs kept; --resume re-plans the same cells."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bench.cli", "run", "--model", "lenet", "--pipeline", "eager", "--pipeline", "jit",
           "--scenario", "single-stream", "--scenario", "offline", "--quick", "--no-history",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "records.csv")))
    assert sorted((r["pipeline"], r["scenario"], r["batch_size"]) for r in rows) == [
        ("eager", "offline", "64"), ("eager", "single-stream", "1"), ("jit", "offline", "64"), ("jit", "single-stream", "1")]
    for r in rows:
        assert r["status"] == "ok", r["reason"]
        assert float(r["qps"]) > 0 and float(r["baseline_qps"]) > 0 and r["loadgen_official"] == "false"
        assert float(r["speedup"]) == pytest.approx(float(r["qps"]) / float(r["baseline_qps"]))
        assert r["served_outputs_equal"] == "true"
        assert (out / r["loadgen_log"] / "candidate" / "run1" / "mlperf_log_summary.txt").exists()
        assert "not MLPerf-compliant" in r["notes"]
        # single-stream also serves a predictor that returns at once: LoadGen's own time per query
        own = float(r["loadgen_own_ms_p90"] or "nan")
        assert (own > 0) if r["scenario"] == "single-stream" else math.isnan(own), r
        # the predictor's own calls, timed inside the same LoadGen run: part of LoadGen's latency
        call = float(r["served_call_ms_p90"])
        assert 0 < call and (r["scenario"] != "single-stream" or call <= float(r["latency_ms_p90"])), r
    # the progress line reads the in-memory row: a VALID row is reported with its rate, never as INVALID
    assert proc.stderr.count("/s vs eager ") == sum(r["loadgen_valid"] == "true" for r in rows) > 0, proc.stderr
    assert json.loads((out / "run.json").read_text())["serving"] == ["single-stream", "offline"]
    report = (out / "report.md").read_text()
    assert "## lenet: serving scenarios (MLPerf LoadGen)" in report or "### lenet: serving scenarios" in report
    assert "lenet: single-stream (rate: queries/s" in report and "not MLPerf-compliant" in report
    assert "(loadgen/lenet-jit-offline-bs64-t" in report and (out / "charts" / "lenet-serving-speedups.png").exists()
    again = subprocess.run(cmd[:-2] + ["--resume", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "4 cells already done, 0 to run" in again.stderr, again.stderr[-1000:]


def test_official_mode_applies_loadgens_own_rules_in_every_run_of_the_process():
    """FromConfig applies mlperf.conf only on its first call in a process: the rules are read once and
    copied onto every later TestSettings (here the second run of the same scenario, and the pair)."""
    code = ("from bench.serving import loadgen as l; s = l.Settings('single-stream', official=True);"
            "a = l._test_settings(s); b = l._test_settings(s);"
            "print(a.min_duration_ms, b.min_duration_ms, l.official_rules('single-stream')['min_query_count'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["600000", "600000", "100"], out.stderr[-500:]


def test_serving_rows_are_not_gated_on_a_speedup_without_an_interval():
    import pandas as pd

    from bench.reporting.compare import compare_cell
    from bench.reporting.thresholds import Thresholds

    row = {"model": "lenet", "pipeline": "jit", "scenario": "single-stream", "status": "ok", "valid": True,
           "speedup": 1.04, "speedup_ci_low": float("nan"), "speedup_ci_high": float("nan")}
    (got,) = compare_cell(pd.Series(row), pd.Series({**row, "speedup": 0.87}), Thresholds(), "cell")
    assert not got.regression and "not gated" in got.verdict
    (gone,) = compare_cell(pd.Series(row), pd.Series({**row, "status": "error", "reason": "boom"}), Thresholds(), "c")
    assert gone.regression   # a serving cell that errors now is still a regression


@pytest.mark.parametrize("value", ["0", "-5", "abc", "1e13", "nan"])
def test_a_latency_bound_out_of_range_is_one_line_and_exit_2(tmp_path, value):
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--model", "lenet", "--pipeline", "eager",
                           "--scenario", "server", f"--latency-bound-ms={value}", "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-800:]
    assert len(proc.stderr.strip().splitlines()) <= 3 and "latency" in proc.stderr.lower()


def test_the_single_stream_crosscheck_pairs_rows_of_the_same_predictor_and_takes_out_loadgens_own_time():
    import pandas as pd
    from bench.reporting.serving import crosscheck_rows
    rows = pd.DataFrame([
        {"pipeline": "jit", "scenario": "inference", "status": "ok", "batch_size": 1, "threads": 1,
         "latency_ms_p90": 0.10},
        {"pipeline": "jit", "scenario": "inference", "status": "ok", "batch_size": 1, "threads": 2,   # other threads
         "latency_ms_p90": 0.07},
        {"pipeline": "jit", "scenario": "single-stream", "status": "ok", "batch_size": 1, "threads": 1,
         "latency_ms_p90": 0.15, "loadgen_own_ms_p90": 0.04, "served_call_ms_p90": 0.12},
        {"pipeline": "onnx", "scenario": "single-stream", "status": "ok", "batch_size": 1, "threads": 1,  # no pair
         "latency_ms_p90": 0.2, "loadgen_own_ms_p90": 0.04},
        {"pipeline": "eager", "scenario": "inference", "status": "ok", "batch_size": 1, "threads": 1,
         "latency_ms_p90": 0.2},
        {"pipeline": "eager", "scenario": "single-stream", "status": "ok", "batch_size": 1, "threads": 1,
         "latency_ms_p90": 0.3, "loadgen_own_ms_p90": pd.NA},    # own time not measured: no net ratio
    ])
    assert crosscheck_rows(rows) == [["jit", "0.15", "0.1", "1.50", "+0.05", "0.04", "1.10", "0.12", "1.20"],
                                     ["eager", "0.3", "0.2", "1.50", "+0.1", "–", "", "–", ""]]


def test_a_server_side_with_no_valid_rate_in_its_range_halves_on_until_one_is(tmp_path):
    """The range comes from a direct call; when the predictor is slower than that call promised (a machine
    that slowed), every planned step fails and the search goes on down instead of giving no figure."""
    from bench.serving.scenarios import SERVER_EXTRA_STEPS, SERVER_STEPS, _Search

    def slow(x: torch.Tensor) -> torch.Tensor:     # at most 8 samples per ms: 8000 samples/s
        time.sleep(0.001)
        return torch.zeros(len(x), 10)

    search = _Search(slow, SAMPLES, ServingConfig("server", quick=True), 8, 100.0, tmp_path, 30.0)
    search.hi = 16 * 2 * 8000.0      # the planned steps try 128k, 64k, 32k and 16k/s: all past capacity
    for _ in range(SERVER_STEPS["quick"]):
        search.step()
    assert search.best is None and not any(s["valid"] for s in search.steps)
    search.descend()
    side = search.side()
    assert side.outcome.valid and side.outcome.qps < 8000, search.steps
    assert SERVER_STEPS["quick"] < len(search.steps) <= SERVER_STEPS["quick"] + SERVER_EXTRA_STEPS


def test_a_missing_crosscheck_says_the_thread_counts_differ():
    """Serving cells default to one thread here, inference cells to torch's choice: the report says why
    no pair was made instead of leaving the section out in silence."""
    import pandas as pd
    from bench.reporting.serving import crosscheck_rows, unpaired_threads
    rows = pd.DataFrame([
        {"pipeline": "jit", "scenario": "inference", "status": "ok", "batch_size": 1, "threads": 2,
         "latency_ms_p90": 0.10},
        {"pipeline": "jit", "scenario": "single-stream", "status": "ok", "batch_size": 1, "threads": 1,
         "latency_ms_p90": 0.15}])
    assert crosscheck_rows(rows) == []
    assert "ran at 1 thread(s)" in unpaired_threads(rows) and "--threads 1" in unpaired_threads(rows)
    rows.loc[0, "threads"] = 1
    assert crosscheck_rows(rows) and unpaired_threads(rows) == ""


def test_the_first_screen_claims_no_accuracy_for_an_exact_served_pipeline():
    import pandas as pd
    from bench.reporting.firstscreen import best_serving
    rows = pd.DataFrame([
        {"pipeline": "jit", "scenario": "offline", "status": "ok", "speed_verdict": "faster", "valid": True,
         "fidelity": "exact", "speedup": 1.25, "qps": 5e4, "baseline_qps": 4e4, "accuracy_verdict": "n/a"},
        {"pipeline": "jit", "scenario": "inference", "status": "ok", "accuracy_verdict": "accuracy not measured"}])
    line = best_serving(rows, "offline")
    assert line[1] == "jit" and line[3] == "–" and "exact: it keeps eager's outputs" in line[4], line
    rows.loc[0, "speed_verdict"] = "no gain"
    assert "accurate" not in best_serving(rows, "offline")[4]
