"""Cross-check: each harness latency against the same prepared predictor timed alone in a fresh process.

    python -m bench.crosscheck                                   # the default matrix (an hour or more)
    python -m bench.crosscheck --models lenet --pipelines 'eager;onnx:ep=cpu' --batch-sizes 1,64 --threads 1

For every (model, pipeline, batch size, threads) it runs the harness cell exactly as `accelbench run`
does (an isolated worker, the candidate timed in paired blocks against eager) --cell-repeats times,
and in fresh processes prepares the same cell and times only the candidate, or only the eager
baseline, call after call with nothing else running (--repeats processes per side). Harness cells and
stand-alone processes alternate (cell, candidate, eager, cell, candidate, eager, ...) and each side's
median is taken, so a drift of the machine, or one slow process placement, lands on both sides of a
ratio alike. It prints the ratio of each reported latency and of each in-cell baseline to its
stand-alone figure: both should be 0.95-1.05 on a quiet machine. A cell outside that band is marked
`~` when it is outside by no more than repeated processes of the same side disagreed among
themselves (the `spread` columns: the machine's noise floor, which no method can beat), `<-`
beyond that (the harness's method, not the machine, is then the suspect), and `?` with one process
a side (no spread measured to judge it by).

The stand-alone side runs each runtime as a user would deploy it (its default settings, e.g. ONNX
Runtime's spinning worker threads on) at the cell's thread count, under the same C heap policy as
the harness (bench.measure.allocator). One more fresh process times the candidate alone under
glibc's default heap policy (`default heap` columns), with its minor page faults per call: what a
default deployment sees, which the row should not be slower than beyond the noise. It is a
benchmark, not a test: run it on a quiet machine, one at a time.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import pickle
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from bench.api import UserError
from bench.terminal import inert

if TYPE_CHECKING:
    from bench.running.cell import CellSpec

DEFAULT_MODELS = ("lenet", "resnet8")
DEFAULT_PIPELINES = ("eager", "jit", "compile", "onnx:ep=cpu", "onnx:ep=cpu,quant=static", "onnx:ep=cpu,quant=dynamic",
                     "onnx:ep=cpu,opt=disable", "quantize:mode=dynamic", "quantize:mode=static", "fusion@jit",
                     "openvino", "openvino:quant=static")
DEFAULT_BATCH_SIZES = (1, 64, 256)
DEFAULT_THREADS = (1, 2)
ALONE_WARMUP_CALLS = 20
ALONE_REPEATS = 3   # fresh processes per side: one process's placement on a shared VM moves it by ~10%
CELL_REPEATS = 2    # harness cells per table cell, alternated with the stand-alone processes
COLUMNS = ("model", "pipeline", "batch_size", "threads", "status", "reason", "valid", "verdict", "row_ms", "alone_ms",
           "ratio", "in_cell_eager_ms", "alone_eager_ms", "eager_ratio", "speedup", "alone_speedup", "row_faults",
           "alone_faults", "default_heap_ms", "default_heap_faults", "cell_spread", "alone_spread")
BAND = (0.95, 1.05)


def time_alone(spec_file: Path, side: str, min_time_s: float) -> tuple[float, float]:
    """In this (fresh) process: prepare the cell and time one side alone; (median seconds per call,
    minor page faults per timed call, all threads)."""
    from bench.api import load_registries
    from bench.env import detect
    from bench.measure.allocator import apply_policy
    from bench.running.cell import prepare

    apply_policy()
    load_registries()
    # Unrestricted on purpose: the parent pickled its own spec into a private folder it made
    # (mkdtemp, mode 0700) just before starting this process.
    spec = pickle.loads(spec_file.read_bytes())
    scratch = Path(tempfile.mkdtemp(prefix="accelbench-cell-"))
    try:
        prepared = prepare(spec, detect(), scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)   # a runtime's session has read its export by now
    fn = prepared.candidate if side == "candidate" else prepared.eager
    for _ in range(ALONE_WARMUP_CALLS):
        fn()
    samples: list[float] = []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    while time.perf_counter() - start < min_time_s or len(samples) < 50:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / len(samples)
    return statistics.median(samples), faults


def _alone_in_fresh_process(spec, side: str, min_time_s: float, tmp: Path,
                            malloc: str | None = None) -> tuple[float, float]:
    """(seconds per call, page faults per call) of one side alone in a fresh process; `malloc`
    overrides the heap policy (ACCELBENCH_MALLOC) for that process."""
    spec_file = tmp / "spec.pkl"
    spec_file.write_bytes(pickle.dumps(spec))
    env = {**os.environ, **({"ACCELBENCH_MALLOC": malloc} if malloc else {})}
    proc = subprocess.run([sys.executable, "-m", "bench.crosscheck", "--alone", str(spec_file), "--side", side,
                           "--min-time", str(min_time_s)], capture_output=True, text=True, timeout=900, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"stand-alone {side} failed: {proc.stderr.strip().splitlines()[-1:]}")
    seconds, faults = proc.stdout.strip().splitlines()[-1].split()
    return float(seconds), float(faults)


def crosscheck(cells: Sequence[CellSpec], min_time_s: float, out: Path | None, repeats: int = ALONE_REPEATS,
               cell_repeats: int = CELL_REPEATS) -> list[dict]:
    """Run the planned cells (`plan_cells`); one dict per cell (the CSV's columns; `status` and
    `reason` only for a cell that was not measured)."""
    from bench import api
    from bench.api import load_registries
    from bench.data import load
    from bench.env import detect
    from bench.records.write import csv_cell
    from bench.training.cache import trained

    load_registries()
    env = detect()
    rows: list[dict] = []
    writer = None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        fh = open(out, "w", newline="")
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        writer.writeheader()
    # Trained (or found in the cache) before the table: cells load, never train.
    for model in dict.fromkeys(c.model for c in cells):
        m = api.model_spec(model)
        trained(model, load(cells[0].data, m.input_shape, m.num_classes))   # a plan has one data spec
    # Two header lines: what is compared (above), then the two sides of each comparison.
    print(f"{'':8} {'':28} {'':>4} {'':>3}  {'candidate latency, ms':^26}  {'eager baseline, ms':^26}  "
          f"{'speedup':^15}  {'faults/call':^15}  {'default heap':^17}  {'spread':^13}")
    print(f"{'model':8} {'pipeline':28} {'bs':>4} {'thr':>3}  {'row':>9} {'alone':>9} {'ratio':>6}  "
          f"{'in cell':>9} {'alone':>9} {'ratio':>6}  {'row':>7} {'alone':>7}  {'row':>7} {'alone':>7}  "
          f"{'alone ms':>9} {'faults':>7}  {'cells':>6} {'alone':>6}", flush=True)
    with tempfile.TemporaryDirectory(prefix="accelbench-crosscheck-") as tmp:
        for spec in cells:   # no peak in the cells: no fraction of it in the table
            row = {"model": spec.model, "pipeline": spec.pipeline.spec, "batch_size": spec.batch_size,
                   "threads": spec.threads}
            measured = _measure_cell(spec, env, min_time_s, Path(tmp), repeats, cell_repeats)
            row.update(measured)
            if "ratio" in row:
                print(inert(_line(row)), flush=True)
            else:
                print(inert(f"{row['model']:8} {row['pipeline']:28} {row['batch_size']:>4} {row['threads']:>3}  "
                            f"{row['status']}: {row['reason'][:80]}"), flush=True)
            rows.append(row)
            if writer is not None:
                writer.writerow({k: csv_cell(k, v) if isinstance(v, str) else v for k, v in row.items()})   # formulas quoted
                fh.flush()
    ok = [r for r in rows if "ratio" in r]
    if ok:
        counts = {v: sum(r["verdict"] == v for r in ok) for v in ("within", "noise", "outside", "unknown")}
        print(f"{counts['within']} of {len(ok)} measured cells have both ratios within {BAND[0]}-{BAND[1]}, "
              f"{counts['noise']} more are outside it by no more than repeated processes of one side disagreed "
              f"(~), {counts['outside']} are outside beyond that (<-), {counts['unknown']} are outside with one "
              f"process a side, so no spread to judge them by (?); "
              f"row/alone latency ratio {min(r['ratio'] for r in ok):.3f}-{max(r['ratio'] for r in ok):.3f}, "
              f"in-cell/alone eager {min(r['eager_ratio'] for r in ok):.3f}-{max(r['eager_ratio'] for r in ok):.3f}")
    return rows


def _measure_cell(spec, env, min_time_s: float, tmp: Path, repeats: int, cell_repeats: int) -> dict:
    """One cell of the table: `cell_repeats` harness cells and `repeats` stand-alone processes per side,
    alternated (cell, candidate, eager, cell, candidate, eager, ...), each side's median taken, so a
    drift of the machine over the cell's minute, or one slow process placement, lands on both sides
    of every ratio alike. {status, reason} alone when the cell was not measured."""
    from bench.running.result import timing_figures
    from bench.running.runner import run_isolated

    cells: list[dict] = []
    alone: dict[str, list[tuple[float, float]]] = {"candidate": [], "baseline": []}
    for i in range(max(cell_repeats, repeats)):
        if i < cell_repeats:
            result = run_isolated(spec, env, timeout_s=900, mem_limit_mb=0)
            if result.status not in ("ok", "mismatch") or result.timing is None:
                return {"status": result.status, "reason": result.reason}
            fig = timing_figures(result.timing)
            cells.append({"row_ms": fig["latency_ms_p50"], "in_cell_eager_ms": fig["baseline_ms_p50"],
                          "speedup": fig["speedup"], "valid": result.valid,
                          "row_faults": result.memory.page_faults_per_call if result.memory else math.nan})
        if i < repeats:
            for side in alone:
                alone[side].append(_alone_in_fresh_process(spec, side, min_time_s, tmp))
    dflt_s, dflt_faults = _alone_in_fresh_process(spec, "candidate", min_time_s, tmp, malloc="default")
    row = {k: statistics.median(c[k] for c in cells) for k in ("row_ms", "in_cell_eager_ms", "speedup", "row_faults")}
    cand = statistics.median(s for s, _ in alone["candidate"]) * 1e3
    base = statistics.median(s for s, _ in alone["baseline"]) * 1e3
    row.update(status=result.status, valid=not any(c["valid"] is False for c in cells), alone_ms=cand,
               ratio=row["row_ms"] / cand, alone_eager_ms=base, eager_ratio=row["in_cell_eager_ms"] / base,
               alone_speedup=base / cand, alone_faults=statistics.median(f for _, f in alone["candidate"]),
               default_heap_ms=dflt_s * 1e3, default_heap_faults=dflt_faults,
               # How far repeated processes of the same side disagree with each other: the noise
               # floor the two ratios are read against.
               cell_spread=max(_spread([c["row_ms"] for c in cells]), _spread([c["in_cell_eager_ms"] for c in cells])),
               alone_spread=max(_spread([s for s, _ in alone["candidate"]]), _spread([s for s, _ in alone["baseline"]])))
    row["verdict"] = _verdict(row)
    return row


def _verdict(row: dict) -> str:
    """`within` (both ratios in BAND), `noise` (outside, but not by more than repeated processes of the
    same side disagreed among themselves: the machine, not the method, cannot tell), `outside`
    (beyond that), or `unknown` (outside, with one process a side: no spread was measured, so the
    machine cannot be told from the method)."""
    ratios = (row["ratio"], row["eager_ratio"])
    if all(BAND[0] <= r <= BAND[1] for r in ratios):
        return "within"
    spreads = [x for x in (row["cell_spread"], row["alone_spread"]) if not math.isnan(x)]
    if not spreads:
        return "unknown"
    lo, hi = BAND[0] / max(spreads), BAND[1] * max(spreads)
    return "noise" if all(lo <= r <= hi for r in ratios) else "outside"


def _line(row: dict) -> str:
    flag = {"within": "", "noise": "  ~", "outside": "  <-", "unknown": "  ?"}[row["verdict"]]
    if not row["valid"]:
        flag += "  (a harness cell marked it invalid)"
    return (f"{row['model']:8} {row['pipeline']:28} {row['batch_size']:>4} {row['threads']:>3}  "
            f"{row['row_ms']:>9.4f} {row['alone_ms']:>9.4f} {row['ratio']:>6.3f}  "
            f"{row['in_cell_eager_ms']:>9.4f} {row['alone_eager_ms']:>9.4f} {row['eager_ratio']:>6.3f}  "
            f"{row['speedup']:>7.2f} {row['alone_speedup']:>7.2f}  {row['row_faults']:>7.1f} {row['alone_faults']:>7.1f}  "
            f"{row['default_heap_ms']:>9.4f} {row['default_heap_faults']:>7.1f}  "
            f"{row['cell_spread']:>6.3f} {row['alone_spread']:>6.3f}{flag}")


def _spread(seconds: list[float]) -> float:
    """Slowest over fastest of one side's repeated processes (NaN with a single process: nothing
    was compared)."""
    return max(seconds) / min(seconds) if len(seconds) > 1 else math.nan


def _csv(text: str, cast=str) -> list:
    return [cast(p.strip()) for p in text.split(",") if p.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.crosscheck", description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS))
    p.add_argument("--pipelines", default=";".join(DEFAULT_PIPELINES),
                   help="separated by ';' (pipelines contain commas)")
    p.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)))
    p.add_argument("--threads", default=",".join(map(str, DEFAULT_THREADS)))
    p.add_argument("--min-time", type=float, default=2.0, help="timed seconds per side (default 2)")
    p.add_argument("--out", type=Path, help="also write the table as CSV here")
    p.add_argument("--repeats", type=int, default=ALONE_REPEATS,
                   help=f"fresh stand-alone processes per side, median taken (default {ALONE_REPEATS})")
    p.add_argument("--cell-repeats", type=int, default=CELL_REPEATS,
                   help=f"harness cells per table cell, alternated with the stand-alone processes, median taken "
                        f"(default {CELL_REPEATS})")
    p.add_argument("--data", default="digits",
                   help="dataset of every cell (default digits; 'synthetic' for ImageNet-size models)")
    p.add_argument("--alone", type=Path, help=argparse.SUPPRESS)   # internal: one stand-alone timing
    p.add_argument("--side", choices=("candidate", "baseline"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.alone:
        print(*time_alone(a.alone, a.side, a.min_time))
        return 0
    pipelines = [s.strip() for s in a.pipelines.split(";") if s.strip()]
    for flag, value in (("--repeats", a.repeats), ("--cell-repeats", a.cell_repeats)):
        if value < 1:
            p.error(f"{flag} must be >= 1, got {value}")
    try:
        if not 0 < a.min_time < math.inf:   # NaN fails this too
            raise UserError(f"--min-time must be a finite number of seconds > 0, got {a.min_time}")
        cells = plan_cells(a.models, pipelines, a.batch_sizes, a.threads, a.min_time, a.data)
    except (UserError, ValueError) as exc:   # a user's mistake: one line, exit 2, nothing run
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    rows = crosscheck(cells, a.min_time, a.out, a.repeats, a.cell_repeats)
    failed = [r for r in rows if "ratio" not in r and r["status"] != "skipped"]
    if failed or not any("ratio" in r for r in rows):
        print(f"{p.prog}: {len(failed)} of {len(rows)} cells could not be measured (see the table)", file=sys.stderr)
        return 1
    return 0


def plan_cells(models: str, pipelines: list[str], batch_sizes: str, threads: str, min_time_s: float,
               data: str = "digits") -> tuple[CellSpec, ...]:
    """The cells of the table (model, pipeline, batch size, threads; the full run's timing with
    `min_time_s`), planned as `accelbench run` plans its own (bench.running.plan), refused before
    anything runs when a model, pipeline, batch size, thread count, the data or $ACCELBENCH_MALLOC is
    wrong (UserError or ValueError naming it)."""
    from bench.api import load_registries
    from bench.measure.allocator import requested_policy
    from bench.running import plan

    requested_policy()
    load_registries()
    names = _csv(models)
    try:
        sizes, counts = _csv(batch_sizes, int), _csv(threads, int)
    except ValueError:
        raise UserError(f"--batch-sizes and --threads take comma-separated integers, got {batch_sizes!r} "
                        f"and {threads!r}") from None
    if not names or not pipelines or not sizes or not counts:
        raise UserError("--models, --pipelines, --batch-sizes and --threads each need at least one value")
    if min(sizes) < 1:
        raise UserError(f"--batch-sizes must be >= 1, got {batch_sizes!r}")
    if min(counts) < 1:
        # Both sides are timed at a stated thread count; torch's default differs between a worker
        # and a fresh process, so 0 would compare two different settings.
        raise UserError(f"--threads must be >= 1 (the cross-check compares at a stated thread count), got {threads!r}")
    request = plan.RunRequest(models=names, pipelines=pipelines, batch_sizes=sizes, data=data, min_time_s=min_time_s,
                              threads=counts)
    return plan.build(request).cells

if __name__ == "__main__":
    sys.exit(main())
