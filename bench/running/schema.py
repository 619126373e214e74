"""The results schema: one tidy row per (run, model, pipeline, scenario, device, batch size)."""

from __future__ import annotations

# Column order of records.csv. Units are in the names (ms, s, sps = samples/s, mb = MiB).
# `threads` is the cell's torch thread setting (0: torch's default), a dimension of the matrix.
KEY_COLUMNS = ["model", "pipeline", "scenario", "batch_size", "threads"]

COLUMNS = [
    "run_id", "timestamp", "model", "pipeline", "scenario", "device", "batch_size", "data", "threads",
    "status", "reason",
    # whether the measurement can be trusted (in-cell baseline agrees with the run's eager cell, speedup
    # interval narrow enough, model deterministic), and why not; `notes` qualifies figures of an ok row
    "valid", "validity", "notes",
    # threads the cell's torch used and the candidate runtime's own pool (ONNX Runtime intra-op)
    "torch_threads", "runtime_threads",
    # inference timing (candidate), raw samples are in samples.jsonl; rounds = paired-block rounds
    "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "latency_ms_iqr",
    "latency_ms_ci_low", "latency_ms_ci_high", "rounds", "throughput_sps",
    # the eager baseline timed interleaved with the candidate in the same process
    "baseline_ms_p50", "speedup", "speedup_ci_low", "speedup_ci_high", "speedup_ci_halfwidth",
    # what the in-cell baseline was judged against: the median eager latency of the cell's group
    # (model, batch size, threads) and how it was formed; the same baseline timed alone in the cell's
    # process before its technique was prepared
    "reference_ms", "reference", "baseline_ms_before_prepare",
    # what else took the CPU while the pair was timed, in cores: other processes (candidate's blocks,
    # baseline's blocks), threads the candidate's preparation started (during the baseline's blocks),
    # the hypervisor (both sides), and preemptions of this process per second (both sides)
    "other_cores", "baseline_other_cores", "baseline_foreign_cores", "steal_cores", "preemptions_per_s",
    # threads and child processes the cell's preparation started and left alive
    "threads_started", "processes_started",
    # memory
    "peak_mem_mb", "infer_mem_mb",
    # minor page faults per call (candidate, then eager), counted in a window after the timing
    "page_faults_per_call", "baseline_page_faults_per_call",
    # accuracy and fidelity against the eager baseline
    "accuracy", "accuracy_ci_low", "accuracy_ci_high", "baseline_accuracy", "accuracy_delta", "accuracy_p_value",
    "top1_agreement", "max_abs_diff", "fidelity", "top5_accuracy", "baseline_top5_accuracy", "eval_images",
    # where the baseline's weights came from: a --weights file and its sha256, or training here (how)
    "weights",
    # model figures
    "params", "flops", "model_bytes", "gflops_achieved", "peak_gflops", "peak_fraction",
    # first-call cost (export, compile, fine-tuning) apart from steady state
    "setup_s", "providers", "figures", "technique_params",
    # training scenario
    "step_ms_p50", "samples_per_s", "final_accuracy", "final_accuracy_spread", "time_to_target_s",
    "target_accuracy", "equivalence_max_abs_diff", "equivalence_buffers_max_abs_diff", "seeds", "curve",
    "wall_s",
]

# Columns holding text (everything else is a number): how the report tools read them back.
TEXT_COLUMNS = ("run_id", "timestamp", "model", "pipeline", "scenario", "device", "data", "status", "reason",
                "valid", "validity", "notes", "fidelity", "weights", "reference", "providers", "figures", "technique_params", "curve")

# mismatch: the row broke its technique's fidelity promise (exact outputs), so its figures are not
# those of the technique it names
STATUSES = ("ok", "mismatch", "skipped", "error")

# The columns a training strategy fills (bench.running.result.CellResult.training).
TRAINING_COLUMNS = frozenset({"step_ms_p50", "samples_per_s", "peak_mem_mb", "final_accuracy", "final_accuracy_spread",
                              "time_to_target_s", "target_accuracy", "equivalence_max_abs_diff",
                              "equivalence_buffers_max_abs_diff", "seeds", "curve", "notes"})


def cell_key(row: dict) -> tuple[str, str, str, int, int]:
    """The identity of a cell inside one run (what --resume and compare match on). Rows written before
    threads was a dimension count as threads 0 (torch's default)."""
    scenario = row.get("scenario")
    return (str(row["model"]), str(row["pipeline"]), scenario if isinstance(scenario, str) and scenario else "inference",
            int(float(row["batch_size"])), _count(row.get("threads")))


def _count(value) -> int:
    """An integer column read back from CSV or pandas: missing, empty, NaN or NA -> 0."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return 0
    return int(f) if f == f else 0
