"""Cross-check: each harness latency against the same prepared predictor timed alone in a fresh process.

    python -m bench.crosscheck                                   # the default matrix (minutes)
    python -m bench.crosscheck --models lenet --pipelines eager,onnx:ep=cpu --batch-sizes 1,64 --threads 1

For every (model, pipeline, batch size, threads) it runs the harness cell exactly as `accelbench run`
does (an isolated worker, the candidate timed in paired blocks against eager), then, in two fresh
processes, prepares the same cell and times only the candidate, and only the eager baseline, call
after call with nothing else running (each side in --repeats fresh processes, alternated, median
taken). It prints the ratio of each reported latency and of each in-cell
baseline to its stand-alone figure: both should be 0.95-1.05 on a quiet machine. The stand-alone side
runs each runtime as a user would deploy it (its default settings, e.g. ONNX Runtime's spinning
worker threads on) at the cell's thread count, under the same C heap policy as the harness
(bench.measure.allocator). One more fresh process times the candidate alone under glibc's default
heap policy (`default heap` column), with its minor page faults per call: what a default deployment
sees, which the row should not be slower than beyond the noise. It is a benchmark, not a test: run it on a quiet
machine, one at a time.
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

from bench.api import UserError

DEFAULT_MODELS = ("lenet", "resnet8")
DEFAULT_PIPELINES = ("eager", "jit", "compile", "onnx:ep=cpu", "onnx:ep=cpu,quant=static", "onnx:ep=cpu,quant=dynamic",
                     "onnx:ep=cpu,opt=disable", "quantize:mode=dynamic", "quantize:mode=static", "fusion@jit")
DEFAULT_BATCH_SIZES = (1, 64, 256)
DEFAULT_THREADS = (1, 2)
ALONE_WARMUP_CALLS = 20
ALONE_REPEATS = 3   # fresh processes per side: one process's placement on a shared VM moves it by ~10%
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


def crosscheck(models, pipelines, batch_sizes, threads, min_time_s: float, out: Path | None,
               repeats: int = ALONE_REPEATS) -> list[dict]:
    from bench import api
    from bench.api import load_registries
    from bench.data import load
    from bench.env import detect
    from bench.measure.timing import TimingConfig
    from bench.running.cell import CellSpec
    from bench.running.result import timing_figures
    from bench.running.runner import run_isolated
    from bench.training.cache import trained

    load_registries()
    env = detect()
    timing = TimingConfig(min_time_s=min_time_s, max_time_s=max(10.0, min_time_s))
    rows: list[dict] = []
    writer = None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        fh = open(out, "w", newline="")
        writer = csv.DictWriter(fh, fieldnames=["model", "pipeline", "batch_size", "threads", "status", "row_ms",
                                                "alone_ms", "ratio", "in_cell_eager_ms", "alone_eager_ms",
                                                "eager_ratio", "speedup", "alone_speedup", "row_faults",
                                                "alone_faults", "default_heap_ms", "default_heap_faults",
                                                "alone_spread"])
        writer.writeheader()
    # Two header lines: what is compared (above), then the two sides of each comparison.
    print(f"{'':8} {'':28} {'':>4} {'':>3}  {'candidate latency, ms':^26}  {'eager baseline, ms':^26}  "
          f"{'speedup':^15}  {'faults/call':^15}  {'glibc default heap':^23}  {'':>12}")
    print(f"{'model':8} {'pipeline':28} {'bs':>4} {'thr':>3}  {'row':>9} {'alone':>9} {'ratio':>6}  "
          f"{'in cell':>9} {'alone':>9} {'ratio':>6}  {'row':>7} {'alone':>7}  {'row':>7} {'alone':>7}  "
          f"{'alone ms':>15} {'faults':>7}  {'alone spread':>12}", flush=True)
    with tempfile.TemporaryDirectory(prefix="accelbench-crosscheck-") as tmp:
        for model in models:
            trained(model, load("digits", api.model_spec(model).input_shape))   # cells load, never train
            for pipeline in pipelines:
                for bs in batch_sizes:
                    for t in threads:
                        spec = CellSpec.of(model, pipeline, bs, timing=timing, threads=t)  # no peak: no fraction
                        result = run_isolated(spec, env, timeout_s=900, mem_limit_mb=0)
                        row = {"model": model, "pipeline": pipeline, "batch_size": bs, "threads": t,
                               "status": result.status}
                        if result.status in ("ok", "mismatch") and result.timing is not None:
                            fig = timing_figures(result.timing)
                            # Alternate the sides' fresh processes and take each side's median, so
                            # a slow process placement or a drift of the machine hits both alike.
                            alone: dict[str, list[tuple[float, float]]] = {"candidate": [], "baseline": []}
                            for _ in range(repeats):
                                for side in alone:
                                    alone[side].append(_alone_in_fresh_process(spec, side, min_time_s, Path(tmp)))
                            cand = statistics.median(s for s, _ in alone["candidate"]) * 1e3
                            base = statistics.median(s for s, _ in alone["baseline"]) * 1e3
                            dflt_s, dflt_faults = _alone_in_fresh_process(spec, "candidate", min_time_s, Path(tmp),
                                                                          malloc="default")
                            row.update(row_ms=fig["latency_ms_p50"], alone_ms=cand,
                                       ratio=fig["latency_ms_p50"] / cand, in_cell_eager_ms=fig["baseline_ms_p50"],
                                       alone_eager_ms=base, eager_ratio=fig["baseline_ms_p50"] / base,
                                       speedup=fig["speedup"], alone_speedup=base / cand,
                                       row_faults=result.memory.page_faults_per_call if result.memory else float("nan"),
                                       alone_faults=statistics.median(f for _, f in alone["candidate"]),
                                       default_heap_ms=dflt_s * 1e3, default_heap_faults=dflt_faults,
                                       # How far fresh processes of the same side disagree with each
                                       # other: the noise floor the two ratios are read against.
                                       alone_spread=max(_spread(alone["candidate"]), _spread(alone["baseline"])))
                            flag = "" if all(BAND[0] <= row[k] <= BAND[1] for k in ("ratio", "eager_ratio")) else "  <-"
                            print(f"{model:8} {pipeline:28} {bs:>4} {t:>3}  {row['row_ms']:>9.4f} {cand:>9.4f} "
                                  f"{row['ratio']:>6.3f}  {row['in_cell_eager_ms']:>9.4f} {base:>9.4f} "
                                  f"{row['eager_ratio']:>6.3f}  {row['speedup']:>7.2f} {row['alone_speedup']:>7.2f}  "
                                  f"{row['row_faults']:>7.1f} {row['alone_faults']:>7.1f}  "
                                  f"{row['default_heap_ms']:>15.4f} {dflt_faults:>7.1f}  {row['alone_spread']:>12.3f}{flag}",
                                  flush=True)
                        else:
                            print(f"{model:8} {pipeline:28} {bs:>4} {t:>3}  {result.status}: {result.reason[:80]}",
                                  flush=True)
                        rows.append(row)
                        if writer is not None:
                            writer.writerow(row)
                            fh.flush()
    ok = [r for r in rows if "ratio" in r]
    if ok:
        inside = sum(BAND[0] <= r["ratio"] <= BAND[1] and BAND[0] <= r["eager_ratio"] <= BAND[1] for r in ok)
        print(f"{inside} of {len(ok)} measured cells have both ratios within {BAND[0]}-{BAND[1]}; "
              f"row/alone latency ratio {min(r['ratio'] for r in ok):.3f}-{max(r['ratio'] for r in ok):.3f}, "
              f"in-cell/alone eager {min(r['eager_ratio'] for r in ok):.3f}-{max(r['eager_ratio'] for r in ok):.3f}; "
              + (f"fresh stand-alone processes of one side differed by up to "
                 f"{max(r['alone_spread'] for r in ok):.3f}x (median {statistics.median(r['alone_spread'] for r in ok):.3f}x)"
                 if repeats > 1 else "one stand-alone process per side (--repeats 1): no spread measured"))
    return rows


def _spread(timed: list[tuple[float, float]]) -> float:
    """Slowest over fastest of one side's stand-alone processes (NaN with a single process: nothing
    was compared)."""
    seconds = [s for s, _ in timed]
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
    p.add_argument("--alone", type=Path, help=argparse.SUPPRESS)   # internal: one stand-alone timing
    p.add_argument("--side", choices=("candidate", "baseline"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.alone:
        print(*time_alone(a.alone, a.side, a.min_time))
        return 0
    pipelines = [s.strip() for s in a.pipelines.split(";") if s.strip()]
    if a.repeats < 1:
        p.error(f"--repeats must be >= 1, got {a.repeats}")
    try:
        models, sizes, threads = _checked(a.models, pipelines, a.batch_sizes, a.threads)
    except (UserError, ValueError) as exc:   # a user's mistake: one line, exit 2, nothing run
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    rows = crosscheck(models, pipelines, sizes, threads, a.min_time, a.out, a.repeats)
    failed = [r for r in rows if "ratio" not in r and r["status"] != "skipped"]
    if failed or not any("ratio" in r for r in rows):
        print(f"{p.prog}: {len(failed)} of {len(rows)} cells could not be measured (see the table)", file=sys.stderr)
        return 1
    return 0


def _checked(models: str, pipelines: list[str], batch_sizes: str, threads: str):
    """The matrix, refused before anything runs when a model, pipeline, batch size, thread count or
    $ACCELBENCH_MALLOC is wrong (UserError or ValueError naming it)."""
    from bench import api
    from bench.api import load_registries
    from bench.measure.allocator import requested_policy
    from bench.pipeline import parse

    requested_policy()
    load_registries()
    names = _csv(models)
    for name in names:
        api.model_spec(name)
    for spec in pipelines:
        parse(spec)
    try:
        sizes, counts = _csv(batch_sizes, int), _csv(threads, int)
    except ValueError:
        raise UserError(f"--batch-sizes and --threads take comma-separated integers, got {batch_sizes!r} "
                        f"and {threads!r}") from None
    if not names or not pipelines or not sizes or not counts:
        raise UserError("--models, --pipelines, --batch-sizes and --threads each need at least one value")
    if min(sizes) < 1:
        raise UserError(f"--batch-sizes must be >= 1, got {batch_sizes!r}")
    if min(counts) < 0:
        raise UserError(f"--threads must be >= 0 (0: torch's default), got {threads!r}")
    return names, sizes, counts


if __name__ == "__main__":
    sys.exit(main())
