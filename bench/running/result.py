"""What one cell measured, as small frozen parts, and the one place a records.csv row is built from it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from bench.measure import stats
from bench.measure.stats import PairedBlocks
from bench.records.columns import COLUMNS, SERVING_COLUMNS, STATUSES, TRAINING_COLUMNS
from bench.records.reasons import Failure, Why, validity_text


def timing_figures(pb: PairedBlocks) -> dict[str, float]:
    """The timing columns of a row from candidate and baseline timed in paired blocks."""
    cand, base = pb.candidate, pb.baseline
    sp, sp_lo, sp_hi = pb.speedup()
    lat_lo, lat_hi = stats.bootstrap_median_ci(cand.samples_s)
    return {
        "latency_ms_p50": cand.median_s * 1e3, "latency_ms_p90": cand.quantile_s(0.9) * 1e3,
        "latency_ms_p99": cand.quantile_s(0.99) * 1e3, "latency_ms_mean": cand.mean_s * 1e3,
        "latency_ms_iqr": cand.iqr_s * 1e3, "latency_ms_ci_low": lat_lo * 1e3, "latency_ms_ci_high": lat_hi * 1e3,
        "rounds": len(pb.ratios), "throughput_sps": cand.throughput_sps,
        "baseline_ms_p50": base.median_s * 1e3, "speedup": sp, "speedup_ci_low": sp_lo, "speedup_ci_high": sp_hi,
        "speedup_ci_halfwidth": pb.halfwidth(),
    }


def load_figures(pb: PairedBlocks) -> dict[str, float]:
    """What else took the CPU during each side's timed blocks (bench.measure.disturbance), in cores."""
    cand, base = pb.candidate_load, pb.baseline_load
    both = cand + base
    return {"other_cores": cand.other_cores, "baseline_other_cores": base.other_cores,
            "baseline_foreign_cores": base.foreign_cores, "steal_cores": both.steal_cores,
            "preemptions_per_s": both.preemptions_per_s}


def timing_samples(pb: PairedBlocks) -> dict[str, Any]:
    # 1 ns is finer than perf_counter's real resolution; shorter lines in samples.jsonl
    return {"candidate_s": [round(s, 9) for s in pb.candidate.samples_s],
            "baseline_s": [round(s, 9) for s in pb.baseline.samples_s],
            "block_calls": pb.block_calls, "block_ratios": [round(r, 6) for r in pb.ratios]}


@dataclass(frozen=True)
class MemoryFigures:
    """Resident (CPU) or allocator (CUDA) memory of the candidate, MiB; minor page faults per call."""

    peak_mb: float
    infer_mb: float
    page_faults_per_call: float = math.nan
    baseline_page_faults_per_call: float = math.nan


@dataclass(frozen=True)
class Fidelity:
    """Accuracy on the held-out split (fractions; NaN for unlabelled data) with its 95% Wilson interval
    and the exact McNemar p-value against eager on the same images, and agreement with eager's logits
    (`tolerance`: the largest |logit diff| an exact pipeline may show)."""

    accuracy: float
    baseline_accuracy: float
    top1_agreement: float
    max_abs_diff: float
    accuracy_ci: tuple[float, float] = (math.nan, math.nan)
    p_value: float = math.nan
    tolerance: float = math.nan
    top5: float = math.nan             # top-5 accuracy (only with more than 5 classes)
    baseline_top5: float = math.nan
    images: int = 0                    # test images evaluated (all of the split, or --eval-limit)
    classes: int = 0                   # classes in the logits (chance accuracy = 1 / classes); 0: unknown


@dataclass(frozen=True)
class ModelStats:
    """Size and arithmetic of what ran: parameters, FLOPs per batch, bytes, achieved GFLOP/s."""

    params: int
    flops: float
    model_bytes: int
    gflops_achieved: float
    peak_gflops: float

    @property
    def peak_fraction(self) -> float:
        return self.gflops_achieved / self.peak_gflops if self.peak_gflops and not math.isnan(self.peak_gflops) else math.nan


@dataclass(frozen=True)
class CellResult:
    """The outcome of one cell. `status` is ok, skipped or error; the typed parts are present when
    they were measured. `params` is one entry per technique occurrence, in pipeline order."""

    status: str
    reason: str = ""
    device: str = "-"
    params: tuple[dict[str, Any], ...] = ()
    setup_s: float = math.nan
    providers: tuple[str, ...] = ()
    kernel_precision: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    timing: PairedBlocks | None = None
    memory: MemoryFigures | None = None
    fidelity: Fidelity | None = None
    model_stats: ModelStats | None = None
    training: dict[str, Any] = field(default_factory=dict)   # the strategy's TRAINING_COLUMNS
    serving: dict[str, Any] = field(default_factory=dict)    # a serving cell's SERVING_COLUMNS (bench.serving)
    traceback: str = ""
    promise: str = ""              # exact | approximate: what the pipeline's techniques promise
    valid: bool | None = None      # None: not judged (skipped, error, training)
    invalid: tuple[Why, ...] = ()  # why not valid
    notes: tuple[str, ...] = ()    # what qualifies an ok row's figures
    torch_threads: int | None = None
    runtime_threads: int | None = None
    before_prepare: stats.Measurement | None = None   # eager alone in the cell's process before any technique ran
    threads_started: int | None = None    # threads the preparation started and left alive
    processes_started: int | None = None  # child processes the preparation started and left alive
    worker_draws: int | None = None       # fresh workers started for the cell (bench.running.runner.drawn)
    failure: Failure | None = None  # how an error row failed
    message: str = ""               # an error's message without its exception type (a UserError's is for the user)
    explanation: Any = None         # bench.running.explain.Explanation: why the verdict, from both sides' profiles

    @property
    def validity(self) -> str:
        """The `validity` column: why the row is not valid."""
        return validity_text(self.invalid)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"CellResult.status must be one of {', '.join(STATUSES)}; got {self.status!r}")
        if set(self.serving) - SERVING_COLUMNS:
            raise ValueError(f"serving figures {sorted(set(self.serving) - SERVING_COLUMNS)} are not serving columns")
        unknown = set(self.training) - TRAINING_COLUMNS
        if unknown:
            raise ValueError(f"training figures {sorted(unknown)} are not columns of records.csv; "
                             f"report extra figures through the technique's `figures`")

    @classmethod
    def error(cls, reason: str, traceback: str = "", params: tuple[dict[str, Any], ...] = (),
              failure: Failure = Failure.EXCEPTION, message: str | None = None) -> "CellResult":
        """An error result; `reason` is the row's text, `message` (default: the reason) what it says
        without the exception's type."""
        return cls("error", reason[:500], params=params, traceback=traceback, failure=failure,
                   message=reason[:500] if message is None else message)

    def to_row(self, spec, *, run_id: str, wall_s: float, timestamp: str | None = None,
               weights: str = "") -> dict[str, Any]:
        """The records.csv row of this result for `spec` (a CellSpec): every column of the schema.
        `weights` says where the model's baseline weights came from (file and sha256, or training)."""
        row: dict[str, Any] = {
            "run_id": run_id, "timestamp": timestamp or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": spec.model, "pipeline": spec.pipeline.spec, "scenario": spec.scenario, "device": self.device,
            "batch_size": spec.batch_size, "data": spec.data, "threads": spec.threads or "",
            "status": self.status, "reason": self.reason,
            "setup_s": self.setup_s, "providers": ";".join(self.providers), "kernel_precision": self.kernel_precision,
            "figures": json.dumps(self.figures, sort_keys=True) if self.figures else "",
            "valid": "" if self.valid is None else str(self.valid).lower(), "validity": self.validity,
            "notes": "; ".join(self.notes), "fidelity": self.promise,
            "torch_threads": self.torch_threads if self.torch_threads is not None else "",
            "runtime_threads": self.runtime_threads if self.runtime_threads is not None else "",
            "technique_params": json.dumps(list(self.params)), "weights": weights,
            "wall_s": wall_s,
        }
        if self.timing is not None:
            row.update(timing_figures(self.timing))
            row.update(load_figures(self.timing))
        if self.before_prepare is not None:
            row["baseline_ms_before_prepare"] = self.before_prepare.median_s * 1e3
        if self.threads_started is not None:
            row.update({"threads_started": self.threads_started, "processes_started": self.processes_started})
        if self.explanation is not None:
            row.update({"explanation": self.explanation.sentence,
                        "explained_fraction": self.explanation.explained_fraction})
        if self.worker_draws is not None:
            row["worker_draws"] = self.worker_draws
        if self.memory is not None:
            row.update({"peak_mem_mb": self.memory.peak_mb, "infer_mem_mb": self.memory.infer_mb,
                        "page_faults_per_call": self.memory.page_faults_per_call,
                        "baseline_page_faults_per_call": self.memory.baseline_page_faults_per_call})
        if self.fidelity is not None:
            f = self.fidelity
            row.update({"accuracy": f.accuracy, "accuracy_ci_low": f.accuracy_ci[0],
                        "accuracy_ci_high": f.accuracy_ci[1], "baseline_accuracy": f.baseline_accuracy,
                        "accuracy_delta": f.accuracy - f.baseline_accuracy, "accuracy_p_value": f.p_value,
                        "top1_agreement": f.top1_agreement, "max_abs_diff": f.max_abs_diff,
                        "top5_accuracy": f.top5, "baseline_top5_accuracy": f.baseline_top5,
                        "eval_images": f.images or "", "num_classes": f.classes or ""})
        if self.model_stats is not None:
            s = self.model_stats
            row.update({"params": s.params, "flops": s.flops, "model_bytes": s.model_bytes,
                        "gflops_achieved": s.gflops_achieved, "peak_gflops": s.peak_gflops,
                        "peak_fraction": s.peak_fraction})
        row.update(self.training)
        row.update(self.serving)
        unknown = set(row) - set(COLUMNS)
        if unknown:  # a programming error here, never a user's: fail loudly rather than drop a figure
            raise ValueError(f"row columns {sorted(unknown)} are not in bench.records.columns.SCHEMA")
        return row
