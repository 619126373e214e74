"""The results schema: one tidy row per (run, model, pipeline, scenario, device, batch size)."""

from __future__ import annotations

# Column order of records.csv. Units are in the names (ms, s, sps = samples/s, mb = MiB).
KEY_COLUMNS = ["model", "pipeline", "scenario", "batch_size"]

COLUMNS = [
    "run_id", "timestamp", "model", "pipeline", "scenario", "device", "batch_size", "data", "threads",
    "status", "reason",
    # inference timing (candidate), raw samples are in samples.jsonl
    "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "latency_ms_iqr",
    "latency_ms_ci_low", "latency_ms_ci_high", "rounds", "throughput_sps",
    # the eager baseline timed interleaved with the candidate in the same process
    "baseline_ms_p50", "speedup", "speedup_ci_low", "speedup_ci_high",
    # memory
    "peak_mem_mb", "infer_mem_mb",
    # minor page faults per call (candidate, then eager), counted in a window after the timing
    "page_faults_per_call", "baseline_page_faults_per_call",
    # accuracy and fidelity against the eager baseline
    "accuracy", "baseline_accuracy", "accuracy_delta", "top1_agreement", "max_abs_diff",
    # model figures
    "params", "flops", "model_bytes", "gflops_achieved", "peak_gflops", "peak_fraction",
    # first-call cost (export, compile, fine-tuning) apart from steady state
    "setup_s", "providers", "figures", "technique_params",
    # training scenario
    "step_ms_p50", "samples_per_s", "final_accuracy", "final_accuracy_spread", "time_to_target_s",
    "target_accuracy", "equivalence_max_abs_diff", "seeds", "curve",
    "wall_s",
]

# Columns holding text (everything else is a number): how the report tools read them back.
TEXT_COLUMNS = ("run_id", "timestamp", "model", "pipeline", "scenario", "device", "data", "status", "reason",
                "providers", "figures", "technique_params", "curve")

STATUSES = ("ok", "skipped", "error")

# The columns a training strategy fills (bench.running.result.CellResult.training).
TRAINING_COLUMNS = frozenset({"step_ms_p50", "samples_per_s", "peak_mem_mb", "final_accuracy", "final_accuracy_spread",
                              "time_to_target_s", "target_accuracy", "equivalence_max_abs_diff", "seeds", "curve"})


def cell_key(row: dict) -> tuple[str, str, str, int]:
    """The identity of a cell inside one run (what --resume matches on)."""
    return (str(row["model"]), str(row["pipeline"]), str(row["scenario"]), int(float(row["batch_size"])))
