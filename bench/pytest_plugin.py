"""The pytest-benchmark side of accelbench: options, the cell matrix, one measured cell, extra_info rows."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from bench.api import Env
from bench.measure.ceilings import Ceilings
from bench.measure.timing import QUICK
from bench.running.cell import CellSpec, run_prepared
from bench.running.plan import RunRequest
from bench.running.result import CellResult

# Key of the JSON document (written through pytest_benchmark_update_json) that holds the rows of
# cells that were skipped or failed: pytest-benchmark itself records only benchmarks that ran.
UNBENCHMARKED_KEY = "accelbench_unbenchmarked"
BENCH_TARGET_S = 0.5      # wall time the benchmark fixture spends timing one cell (after the harness)
BENCH_MIN_ROUNDS = 20
BENCH_MAX_ROUNDS = 5000
BENCH_WARMUP_ROUNDS = 5   # pytest-benchmark warms up nothing by default on CPython


def add_options(parser) -> None:
    """Register the --accel-* options (call from a conftest's pytest_addoption)."""
    g = parser.getgroup("accelbench", "accelbench benchmark matrix (tests/benchmarks)")
    g.addoption("--accel-models", default="", metavar="A,B",
                help="models to benchmark, comma-separated (default: the --quick matrix: lenet, plus the "
                     "models techniques ask for)")
    g.addoption("--accel-pipelines", default="", metavar="P1,P2",
                help="pipelines, comma-separated (default: eager plus every technique's examples); use ';' "
                     "as separator if a pipeline contains a comma")
    g.addoption("--accel-batch-sizes", default="", metavar="1,64", help="batch sizes (default 1,64)")
    g.addoption("--accel-min-time", type=float, default=QUICK.min_time_s, metavar="S",
                help=f"minimum seconds of the harness's interleaved timing per cell (default {QUICK.min_time_s})")
    g.addoption("--accel-threads", type=int, default=0, metavar="N",
                help="torch intra-op threads per cell, as `accelbench run --threads` (default: torch's choice)")
    g.addoption("--accel-data", default="digits", metavar="SPEC",
                help="the data, as `accelbench run --data` (default digits; mnist:DIR, imagefolder:DIR, npz:FILE, ...)")
    g.addoption("--accel-input-shape", action="append", default=[], metavar="[MODEL=]CxHxW",
                help="a model's input (channels x height x width) when it declares none, as `accelbench run "
                     "--input-shape` (repeatable; MODEL= may be left out with one model)")
    g.addoption("--accel-weights", action="append", default=[], metavar="[MODEL=]PATH",
                help="a model's trained weights (state dict or .safetensors), as `accelbench run --weights`")
    g.addoption("--accel-out", default="", metavar="DIR",
                help="also write DIR/records.csv and DIR/env.json of the same run (as `accelbench run` does)")


def _split(text: str) -> list[str]:
    sep = ";" if ";" in text else ","
    return [p.strip() for p in text.split(sep) if p.strip()]


def run_request(models: str, pipelines: str, batch_sizes: str, min_time_s: float = QUICK.min_time_s,
                threads: int = 0, data: str = "digits", input_shapes: tuple[str, ...] = (),
                weights: tuple[str, ...] = ()) -> RunRequest:
    """The --accel-* options as a run request: `accelbench run --quick`'s matrix, which is built from
    the registry, so a new technique's examples are benchmarked without editing the suite."""
    from bench.api import UserError
    try:
        sizes = [int(b) for b in _split(batch_sizes)]
    except ValueError:
        raise UserError(f"--accel-batch-sizes: {batch_sizes!r} is not a comma-separated list of integers") from None
    if sizes and min(sizes) < 1:
        raise UserError(f"--accel-batch-sizes: batch sizes must be >= 1, got {batch_sizes!r}")
    if threads < 0:
        raise UserError(f"--accel-threads must be >= 0 (0: torch's choice), got {threads}")
    if not 0 <= min_time_s < math.inf:   # NaN fails this too
        raise UserError(f"--accel-min-time must be a finite number of seconds >= 0, got {min_time_s}")
    return RunRequest(models=_split(models), pipelines=_split(pipelines), batch_sizes=sizes, scenario="inference",
                      quick=True, min_time_s=min_time_s, threads=(threads,) if threads else (),
                      data=data or "digits", input_shapes=tuple(input_shapes), weights=tuple(weights))


def selected_cells(models: str, pipelines: str, batch_sizes: str, min_time_s: float = QUICK.min_time_s,
                   threads: int = 0, data: str = "digits", input_shapes: tuple[str, ...] = (),
                   weights: tuple[str, ...] = ()) -> tuple[CellSpec, ...]:
    """The cells the options select, planned as `accelbench run` plans its own (bench.running.plan);
    the machine's ceilings are added when a cell runs (`with_ceilings`). Planning sets this process's
    model settings (input shapes, weights), and the cells run in this process."""
    from bench.running import plan
    return plan.build(run_request(models, pipelines, batch_sizes, min_time_s, threads, data, input_shapes,
                                  weights)).cells


def cell_id(spec: CellSpec) -> str:
    return f"{spec.model}-{spec.pipeline.spec}-bs{spec.batch_size}"


@dataclass
class Measured:
    """The harness's result for a cell, and (when it ran) the very callable the harness timed."""

    result: CellResult
    candidate: Callable[[], None] | None


def measure(spec: CellSpec, env: Env) -> Measured:
    """Run the cell exactly as the runner's worker does (`bench.running.cell.run_prepared`), keeping
    the prepared candidate (`pred.run(placed)` then `pred.synchronize()`), so the benchmark fixture
    times the same thing, with the device synchronized inside the timed call."""
    result, prepared = run_prepared(spec, env)
    return Measured(result, prepared.candidate if prepared is not None else None)


def full_row(spec: CellSpec, result: CellResult, wall_s: float, run_id: str) -> dict[str, Any]:
    """The records.csv row of `result`, built where the runner builds its rows."""
    return result.to_row(spec, run_id=run_id, wall_s=wall_s)


def extra_info(row: dict[str, Any]) -> dict[str, Any]:
    """The row as pytest-benchmark can write it (strict JSON): numbers as numbers, NaN as null, text
    as records.csv writes it; bench.records.read reads it back into the same typed rows."""
    from bench.records.write import plain_row
    return plain_row(row)


def bench_rounds(latency_ms: float) -> int:
    """Enough rounds for about BENCH_TARGET_S of timing at the latency the harness measured (pass the
    mean, not the median: on a busy machine rare 100 ms stalls dominate the wall time)."""
    if not latency_ms or not math.isfinite(latency_ms) or latency_ms <= 0:
        return BENCH_MIN_ROUNDS
    return int(min(BENCH_MAX_ROUNDS, max(BENCH_MIN_ROUNDS, BENCH_TARGET_S / (latency_ms / 1e3))))


def with_ceilings(spec: CellSpec, ceil: Ceilings) -> CellSpec:
    """The planned cell with this machine's matmul peaks, for its achieved fraction of peak."""
    return replace(spec, **ceil.cell_fields(spec.threads))


class Recorder:
    """Rows of this pytest session: for --accel-out's records.csv and for the JSON's skipped rows."""

    def __init__(self, out: str, env_record: dict[str, Any]) -> None:
        self.run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.unbenchmarked: list[dict[str, Any]] = []
        self.writer = None
        self.env_record = env_record
        if out:
            from bench.records import write
            path = Path(out)
            write.ensure_writable(path)
            write.atomic_write(path / "env.json", json.dumps({**env_record, "run_id": self.run_id}, indent=2) + "\n")
            if (path / "records.csv").exists():
                (path / "records.csv").replace(path / "records.prev.csv")
            self.writer = write.RecordWriter(path / "records.csv")

    def add(self, row: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.write(row)
        if row.get("status") != "ok":
            self.unbenchmarked.append(extra_info(row))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def env_record(env: Env, ceil: Ceilings) -> dict[str, Any]:
    from bench import env as env_mod
    from bench.measure.allocator import apply_policy
    apply_policy()  # the cells run in this process: the same heap policy as the runner's workers
    return {**env_mod.record(env, list(sys.argv)), **ceil.as_record()}
