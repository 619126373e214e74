"""Whether a cell's timing can be trusted: its interval, its baseline against its group's reference, and what disturbed it.

A cell times its candidate against an eager baseline of the same model in the same process. The
speedup is only as good as that pair: the baseline must run as eager runs in this run on this machine.
The reference for it is not one eager cell (when that one cell is the odd one out, every cell of its
group is blamed) but the median of every eager measurement of the group (model, batch size, threads):
the eager cell's own two sides and the in-cell baseline of every other cell. A baseline further than
BASELINE_DEPARTURE from that median is invalid, and the reason says what the harness saw disturb it
(bench.measure.disturbance): threads the candidate's preparation left busy, other processes, the
hypervisor, page faults, or a baseline already slow before the technique was prepared.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Mapping

from bench.records.reasons import Invalid, Why, validity_text

MAX_HALFWIDTH = 0.10        # a speedup known only to +-10% or worse is marked invalid (never a verdict)
BASELINE_DEPARTURE = 0.10   # an in-cell baseline this far from its group's reference is invalid
# Below these a disturbance is within what an idle 2-core machine shows (kernel threads, the parent's
# watchdog): cores' worth of CPU during the timed blocks, and minor page faults per call.
BUSY_CORES = 0.10
FOREIGN_CORES = 0.05
STEAL_CORES = 0.05
PAGE_FAULTS_PER_CALL = 10.0


@dataclass(frozen=True)
class Reference:
    """The eager latency a group's in-cell baselines are judged against (ms), from `n` measurements."""

    ms: float
    n: int

    @property
    def text(self) -> str:
        return (f"median of {self.n} eager measurement{'s' if self.n != 1 else ''} of the group "
                f"(the eager cell and in-cell baselines)")


def reference(eager_ms: list[float]) -> Reference | None:
    """The median of a group's eager measurements (ms); None when there are none."""
    values = [v for v in eager_ms if v > 0 and not math.isnan(v)]
    return Reference(statistics.median(values), len(values)) if values else None


def eager_measurements(row: Mapping[str, Any], own_valid: bool | None = True) -> list[float]:
    """The eager latencies (ms) one inference row adds to its group's reference: both sides of the
    eager cell, the in-cell baseline of any other cell. None from a row whose timing cannot be trusted
    on its own terms (`own_valid` False: its interval too wide, or a nondeterministic model)."""
    if row.get("status") not in ("ok", "mismatch") or not _finite(row.get("baseline_ms_p50")) or own_valid is False:
        return []
    out = [float(row["baseline_ms_p50"])]
    if row.get("pipeline") == "eager" and _finite(row.get("latency_ms_p50")):
        out.append(float(row["latency_ms_p50"]))
    return out


def percent_beyond(value: float, limit: float, max_decimals: int = 3) -> str:
    """`value` (a fraction) as a percentage with the fewest decimals (0 to `max_decimals`) that keep it
    visibly apart from `limit` written as a whole percent: 0.104 against 0.10 -> "10.4%", never "10%"."""
    if not math.isfinite(value):
        return f"{value * 100}%"  # "nan%" / "inf%": no interval could be formed
    shown_limit = round(limit * 100)
    for decimals in range(max_decimals + 1):
        text = f"{value * 100:.{decimals}f}"
        if float(text) != shown_limit:
            return f"{text}%"
    return f"{value * 100:.{max_decimals}f}%"


def interval_too_wide(rounds: int, halfwidth: float, min_rounds: int) -> Why | None:
    """Why a paired-block timing gives no usable speedup interval, or None."""
    if rounds < min_rounds:
        return Why(Invalid.TOO_FEW_ROUNDS,
                   f"only {rounds} round(s) of paired blocks before the time limit (at least {min_rounds} are "
                   f"needed for an interval): calls far slower than the warm-up promised, or a busy machine")
    if math.isnan(halfwidth) or halfwidth > MAX_HALFWIDTH:
        return Why(Invalid.INTERVAL_TOO_WIDE,
                   f"speedup interval +-{percent_beyond(halfwidth, MAX_HALFWIDTH)} is wider than "
                   f"+-{MAX_HALFWIDTH:.0%} after {rounds} "
                   f"rounds of paired blocks (a disturbed or too short measurement)")
    return None


def off_at_start(before_ms: float, reference_ms: float) -> str:
    """Why a worker whose eager baseline ran at `before_ms` (ms) before any technique was prepared should
    give way to a later one, or "" (also when there is no reference yet): a pair timed in a worker that
    is already off at its start is judged against a reference it cannot meet (bench.running.runner.drawn)."""
    if not (_finite(before_ms) and _finite(reference_ms) and reference_ms > 0):
        return ""
    ratio = before_ms / reference_ms
    if abs(ratio - 1) <= BASELINE_DEPARTURE:
        return ""
    return (f"eager ran at {before_ms:.3g} ms in this worker before any technique was prepared, {ratio:.2f}x the "
            f"group's reference {reference_ms:.3g} ms")


def departure(row: Mapping[str, Any], ref: Reference | None) -> Why | None:
    """Why the row's in-cell baseline disagrees with its group's reference, naming what disturbed it,
    or None when it agrees (or there is nothing to compare)."""
    if ref is None or not _finite(row.get("baseline_ms_p50")):
        return None
    inside = float(row["baseline_ms_p50"])
    ratio = inside / ref.ms
    if abs(ratio - 1) <= BASELINE_DEPARTURE:
        return None
    return Why(Invalid.BASELINE_DEPARTED,
               f"in-cell eager baseline {inside:.3g} ms vs the group's reference {ref.ms:.3g} ms ({ratio:.2f}x, "
               f"{ref.text}): " + "; ".join(causes(row, ref)))


def causes(row: Mapping[str, Any], ref: Reference) -> list[str]:
    """What the harness saw that explains an in-cell baseline away from its reference (text for a reader)."""
    f = {k: _num(row.get(k)) for k in ("baseline_foreign_cores", "baseline_other_cores", "other_cores",
                                       "steal_cores", "baseline_page_faults_per_call", "baseline_ms_before_prepare",
                                       "baseline_ms_p50", "threads_started", "processes_started")}
    out = []
    if f["baseline_foreign_cores"] >= FOREIGN_CORES:
        out.append(f"threads the candidate's preparation started ({f['threads_started']:.0f}) used "
                   f"{f['baseline_foreign_cores']:.2f} cores during the baseline's blocks")
    busy = max(f["baseline_other_cores"], f["other_cores"])
    if busy >= BUSY_CORES:
        out.append(f"other processes used {f['baseline_other_cores']:.2f} cores during the baseline's blocks and "
                   f"{f['other_cores']:.2f} during the candidate's (a busy machine)")
    if f["steal_cores"] >= STEAL_CORES:
        out.append(f"the hypervisor gave {f['steal_cores']:.2f} of our cores to other machines")
    if f["baseline_page_faults_per_call"] >= PAGE_FAULTS_PER_CALL:
        out.append(f"the baseline took {f['baseline_page_faults_per_call']:.0f} minor page faults a call")
    before, inside = f["baseline_ms_before_prepare"], f["baseline_ms_p50"]
    if _finite(before) and before > 0:
        if inside / before - 1 > BASELINE_DEPARTURE:
            out.append(f"the same baseline ran at {before:.3g} ms in this process before the technique was "
                       f"prepared: slower since the preparation")
        elif abs(inside / before - 1) <= BASELINE_DEPARTURE and abs(before / ref.ms - 1) > BASELINE_DEPARTURE:
            out.append(f"it ran at {before:.3g} ms before the technique was prepared too: this process was "
                       f"{'slow' if before > ref.ms else 'fast'} from its start, not because of its technique")
    if f["processes_started"] >= 1:
        out.append(f"the preparation left {f['processes_started']:.0f} child process(es) running")
    return out or ["no disturbance the harness can see (no other load, no busy threads, no page faults)"]


def judge(row: dict[str, Any], own: tuple[Why, ...], ref: Reference | None) -> tuple[dict[str, Any], tuple[Why, ...]]:
    """The row with `valid`, `validity`, `reference_ms` and `reference` set from the cell's own reasons
    (`own`: interval, determinism) and its baseline against `ref`, and all its reasons. Rows without
    paired timing (skipped, error, training) are returned unchanged."""
    if row.get("status") not in ("ok", "mismatch") or not _finite(row.get("baseline_ms_p50")):
        return row, own
    reasons = own + tuple(filter(None, [departure(row, ref)]))
    return {**row, "valid": "false" if reasons else "true", "validity": validity_text(reasons),
            "reference_ms": ref.ms if ref else math.nan, "reference": ref.text if ref else ""}, reasons


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _finite(value: Any) -> bool:
    v = _num(value)
    return not math.isnan(v) and not math.isinf(v)
