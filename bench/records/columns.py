"""The columns of records.csv, declared once: name, dtype, unit and meaning; every column set is derived."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DTYPES = ("string", "int", "float", "bool", "json")


@dataclass(frozen=True)
class Column:
    """One column of a record. `dtype` is how a reader types it (string, int, float, bool, json);
    `default` is what an empty cell reads as where empty has a meaning (None: missing)."""

    name: str
    dtype: str
    unit: str
    meaning: str
    default: Any = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"Column {self.name!r}: dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")


def _c(name: str, dtype: str, unit: str, meaning: str, default: Any = None) -> Column:
    return Column(name, dtype, unit, meaning, default)


# In records.csv order. Raw timing samples are not here: they go to samples.jsonl.
SCHEMA: tuple[Column, ...] = (
    _c("run_id", "string", "", "the run this row belongs to (its UTC start, YYYYMMDDTHHMMSSZ)"),
    _c("timestamp", "string", "", "when the row was written (ISO 8601, UTC)"),
    _c("model", "string", "", "the model's registry name"),
    _c("pipeline", "string", "", "the pipeline as typed (transforms+...@runtime, or a training strategy)"),
    _c("scenario", "string", "", "inference, training, or a serving scenario: single-stream, multi-stream, "
                                 "server, offline (empty in rows older than the column: inference)",
       "inference"),
    _c("device", "string", "", "where the candidate ran (cpu, cuda:0, ...); - when it did not run"),
    _c("batch_size", "int", "count", "images per call (inference) or per step (training)"),
    _c("data", "string", "", "the data spec the cell ran on (digits, mnist:DIR, synthetic, ...)"),
    _c("threads", "int", "count", "the cell's torch thread setting, a dimension of the matrix (empty: 0, torch's "
                                  "default)", 0),
    _c("status", "string", "", "ok, mismatch (broke its fidelity promise), skipped or error"),
    _c("reason", "string", "", "why the row is skipped, error or mismatch"),
    # whether the measurement can be trusted, and why not; `notes` qualifies figures of an ok row
    _c("valid", "bool", "", "whether the measurement can be trusted (in-cell baseline within 10% of its group's "
                            "reference, speedup interval narrow enough, model deterministic); empty: not judged"),
    _c("validity", "string", "", "why the row is not valid ('; '-separated)"),
    _c("notes", "string", "", "what qualifies the figures of an ok row ('; '-separated)"),
    _c("torch_threads", "int", "count", "threads the cell's torch used"),
    _c("runtime_threads", "int", "count", "the candidate runtime's own thread pool (ONNX Runtime intra-op)"),
    # inference timing of the candidate; rounds are paired-block rounds
    _c("latency_ms_p50", "float", "ms", "median latency of one call of the candidate"),
    _c("latency_ms_p90", "float", "ms", "90th percentile latency"),
    _c("latency_ms_p99", "float", "ms", "99th percentile latency"),
    _c("latency_ms_mean", "float", "ms", "mean latency"),
    _c("latency_ms_iqr", "float", "ms", "interquartile range of the latency"),
    _c("latency_ms_ci_low", "float", "ms", "lower end of the median latency's 95% bootstrap interval"),
    _c("latency_ms_ci_high", "float", "ms", "upper end of the median latency's 95% bootstrap interval"),
    _c("rounds", "int", "count", "rounds of paired blocks timed"),
    _c("throughput_sps", "float", "samples/s", "images per second at the median latency"),
    # the eager baseline timed in alternating blocks with the candidate, in the same process
    _c("baseline_ms_p50", "float", "ms", "median latency of the in-cell eager baseline"),
    _c("speedup", "float", "ratio", "eager latency over candidate latency, from the paired blocks"),
    _c("speedup_ci_low", "float", "ratio", "lower end of the speedup's 95% bootstrap interval"),
    _c("speedup_ci_high", "float", "ratio", "upper end of the speedup's 95% bootstrap interval"),
    _c("speedup_ci_halfwidth", "float", "ratio", "half the interval's width relative to the speedup"),
    # what the in-cell baseline was judged against, and what else took the CPU while the pair was timed
    _c("reference_ms", "float", "ms", "the group's reference: median of every eager measurement of the same model, "
                                      "batch size and threads in this run (the eager cell and in-cell baselines)"),
    _c("reference", "string", "", "how reference_ms was formed (how many eager measurements)"),
    _c("baseline_ms_before_prepare", "float", "ms", "the same eager baseline timed alone in the cell's process "
                                                    "before its technique was prepared"),
    _c("other_cores", "float", "cores", "CPU other processes (and kernel threads) used during the candidate's "
                                        "timed blocks"),
    _c("baseline_other_cores", "float", "cores", "CPU other processes used during the baseline's timed blocks"),
    _c("baseline_foreign_cores", "float", "cores", "CPU of threads the candidate's preparation started, during the "
                                                   "baseline's timed blocks"),
    _c("steal_cores", "float", "cores", "time the hypervisor gave this machine's CPUs to other guests, both sides"),
    _c("preemptions_per_s", "float", "1/s", "involuntary context switches of the cell's process, both sides"),
    _c("threads_started", "int", "count", "threads the cell's preparation started and left alive"),
    _c("processes_started", "int", "count", "child processes the cell's preparation started and left alive"),
    _c("worker_draws", "int", "count", "worker processes started for the cell: one whose eager ran off the group's "
                                       "reference before any technique was prepared gave way to a later one (at most 3)"),
    _c("peak_mem_mb", "float", "MiB", "peak memory of the candidate (resident on CPU, allocator on CUDA)"),
    _c("infer_mem_mb", "float", "MiB", "memory added by inference calls"),
    _c("page_faults_per_call", "float", "count", "minor page faults per call of the candidate, after the timing"),
    _c("baseline_page_faults_per_call", "float", "count", "minor page faults per call of eager"),
    # accuracy and fidelity against the eager baseline
    _c("accuracy", "float", "ratio", "top-1 accuracy on the held-out split"),
    _c("accuracy_ci_low", "float", "ratio", "lower end of the accuracy's 95% Wilson interval"),
    _c("accuracy_ci_high", "float", "ratio", "upper end of the accuracy's 95% Wilson interval"),
    _c("baseline_accuracy", "float", "ratio", "eager's top-1 accuracy on the same images"),
    _c("accuracy_delta", "float", "ratio", "accuracy minus baseline_accuracy"),
    _c("accuracy_p_value", "float", "p", "exact McNemar p-value of the accuracy against eager's"),
    _c("top1_agreement", "float", "ratio", "share of images where candidate and eager agree on the top class"),
    _c("max_abs_diff", "float", "logit", "largest |logit difference| from eager"),
    _c("fidelity", "string", "", "what the pipeline promises: exact (eager's outputs) or approximate"),
    _c("top5_accuracy", "float", "ratio", "top-5 accuracy (more than 5 classes only)"),
    _c("baseline_top5_accuracy", "float", "ratio", "eager's top-5 accuracy"),
    _c("eval_images", "int", "count", "test images evaluated"),
    _c("num_classes", "int", "count", "classes the model's logits cover; chance accuracy is 1/num_classes"),
    _c("weights", "string", "", "where the baseline's weights came from (a --weights file and its sha256, or "
                                "trained here, how)"),
    # model figures
    _c("params", "int", "count", "parameters of the model that ran"),
    _c("flops", "float", "FLOP", "floating-point operations per batch (torch.utils.flop_counter)"),
    _c("model_bytes", "int", "bytes", "serialized size of what ran"),
    _c("gflops_achieved", "float", "GFLOP/s", "flops over the median latency"),
    _c("peak_gflops", "float", "GFLOP/s", "the machine's measured matmul peak at this thread count"),
    _c("peak_fraction", "float", "ratio", "gflops_achieved over peak_gflops"),
    # why the verdict: both sides profiled after the timing, per module (bench.running.explain)
    _c("explanation", "string", "", "where the time went: the modules and operator kinds (quantize/dequantize, "
                                    "layout reorders, overhead) that account for most of the difference from "
                                    "eager, or why nothing was profiled; per-module detail in explain.jsonl"),
    _c("explained_fraction", "float", "ratio", "the candidate's profiled time over its measured latency_ms_p50 "
                                               "(below 0.5 the explanation names no cause; above 1 the profiler's "
                                               "own cost inflates small operators)"),
    # first-call cost apart from steady state, and what ran
    _c("setup_s", "float", "s", "preparing the candidate: export, compile, calibration, fine-tuning, first call"),
    _c("providers", "string", "", "ONNX Runtime execution providers the session used (';'-separated)"),
    _c("kernel_precision", "string", "", "the precisions the candidate's compute nodes ran in, with their share, from "
                                         "the runtime's own profile (OpenVINO: each node's exec_type), e.g. 'bf16 "
                                         "100%'; empty when the runtime does not report it"),
    _c("figures", "json", "", "the techniques' own figures, {technique.figure: value}", {}),
    _c("technique_params", "json", "", "each technique's parameters, in pipeline order", []),
    # training scenario
    _c("step_ms_p50", "float", "ms", "median training step time"),
    _c("samples_per_s", "float", "samples/s", "training images per second"),
    _c("final_accuracy", "float", "ratio", "accuracy after training, median over seeds"),
    _c("final_accuracy_spread", "float", "ratio", "largest minus smallest final accuracy over seeds"),
    _c("time_to_target_s", "float", "s", "training time to reach target_accuracy (empty: not reached)"),
    _c("target_accuracy", "float", "ratio", "the accuracy time_to_target_s is measured to"),
    _c("equivalence_max_abs_diff", "float", "", "largest |difference| of parameters from plain training"),
    _c("equivalence_buffers_max_abs_diff", "float", "", "largest |difference| of floating buffers (BatchNorm)"),
    _c("seeds", "int", "count", "training runs (seeds) the figures are medians of"),
    _c("curve", "json", "", "[elapsed s, accuracy] points of the median seed's training", []),
    # serving scenarios under MLPerf LoadGen (bench.serving): latency_ms_p50/p90/p99 are LoadGen's
    _c("qps", "float", "1/s", "served rate: Server, completed samples/s of the highest VALID target rate; "
                              "Offline, samples/s; SingleStream and MultiStream, queries/s"),
    _c("baseline_qps", "float", "1/s", "the same for eager, served the same way in the same process"),
    _c("baseline_latency_ms_p99", "float", "ms", "eager's p99 as LoadGen measured it"),
    _c("loadgen_valid", "bool", "", "LoadGen judged both sides' runs VALID (candidate and eager)"),
    _c("loadgen_own_ms_p90", "float", "ms", "single-stream: p90 of the same LoadGen run with a predictor that "
       "returns at once (LoadGen's and the SUT's own time per query)"),
    _c("served_call_ms_p90", "float", "ms", "p90 of the candidate predictor's own calls (one batch each) as the "
       "system under test timed them inside the LoadGen run; LoadGen's latency less this is what serving adds"),
    _c("loadgen_reason", "string", "", "why LoadGen judged a side's run INVALID"),
    _c("loadgen_official", "bool", "", "LoadGen's own rules (600 s, its query counts); false: short test "
                                       "overrides, not MLPerf-compliant"),
    _c("latency_bound_ms", "float", "ms", "Server: the p99 bound each step's run must meet"),
    _c("served_outputs_equal", "bool", "", "LoadGen's accuracy pass (every sample once, through the batcher) "
                                           "gave the outputs of the same predictor called directly"),
    _c("served_max_abs_diff", "float", "", "largest |logit difference| of served against direct outputs"),
    _c("loadgen_log", "string", "", "folder of the cell's LoadGen logs, relative to the run's folder"),
    _c("wall_s", "float", "s", "wall time of the whole cell"),
)

BY_NAME: dict[str, Column] = {c.name: c for c in SCHEMA}
COLUMNS: list[str] = [c.name for c in SCHEMA]
# The identity of a cell inside one run (what --resume and compare match on)
KEY_COLUMNS: list[str] = ["model", "pipeline", "scenario", "batch_size", "threads"]
# Columns stored as text (in CSV, SQL and JSON alike): strings, JSON documents and `valid`.
TEXT_COLUMNS: tuple[str, ...] = tuple(c.name for c in SCHEMA if c.dtype in ("string", "json", "bool"))
JSON_COLUMNS: tuple[str, ...] = tuple(c.name for c in SCHEMA if c.dtype == "json")
INT_COLUMNS: tuple[str, ...] = tuple(c.name for c in SCHEMA if c.dtype == "int")
FLOAT_COLUMNS: tuple[str, ...] = tuple(c.name for c in SCHEMA if c.dtype == "float")

# mismatch: the row broke its technique's fidelity promise (exact outputs), so its figures are not
# those of the technique it names
STATUSES = ("ok", "mismatch", "skipped", "error")

# The columns a training strategy fills (bench.running.result.CellResult.training).
# The serving scenarios a row's `scenario` may name (bench.serving), beside inference and training
SERVING_SCENARIOS = ("single-stream", "multi-stream", "server", "offline")
SERVING_COLUMNS = frozenset({"qps", "baseline_qps", "baseline_latency_ms_p99", "latency_ms_p50", "latency_ms_p90",
                             "latency_ms_p99", "speedup", "loadgen_valid", "loadgen_own_ms_p90", "served_call_ms_p90",
                             "loadgen_reason",
                             "loadgen_official", "latency_bound_ms", "served_outputs_equal", "served_max_abs_diff", "loadgen_log"})
TRAINING_COLUMNS = frozenset({"step_ms_p50", "samples_per_s", "peak_mem_mb", "final_accuracy", "final_accuracy_spread",
                              "time_to_target_s", "target_accuracy", "equivalence_max_abs_diff",
                              "equivalence_buffers_max_abs_diff", "seeds", "curve", "notes"})


def cell_key(row: Any) -> tuple[str, str, str, int, int]:
    """The identity of a cell inside one run (what --resume and compare match on), from a typed row
    (bench.records.read) or a to_row dict. Empty scenario and threads read as their defaults."""
    scenario = row.get("scenario")
    scenario = scenario if isinstance(scenario, str) and scenario else "inference"
    return (str(row["model"]), str(row["pipeline"]), scenario, int(float(row["batch_size"])), _count(row.get("threads")))


def _count(value: Any) -> int:
    """An integer that may be missing (None, NA, NaN, "") -> 0."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return 0
    return int(f) if f == f else 0


def column_table() -> str:
    """The Markdown column reference of records.csv (docs/columns.md holds it between its markers)."""
    lines = ["| Column | Type | Unit | Meaning |", "|---|---|---|---|"]
    for c in SCHEMA:
        lines.append(f"| `{c.name}` | {c.dtype} | {c.unit or '–'} | {c.meaning.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
