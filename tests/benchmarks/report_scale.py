"""Benchmark: `accelbench report` on a large records.csv grown from a real run's rows; prints wall time and peak RSS.

The figures are printed, never asserted (a shared machine's timings swing). Usage:

    accelbench run --model lenet --pipeline eager --pipeline jit --pipeline fusion --batch-size 1 \\
        --batch-size 4 --min-time 0.05 --no-report --no-history --out /tmp/small
    python -m tests.benchmarks.report_scale /tmp/small --rows 100000

`grow` is also what tests/test_report_scale.py builds its inputs with.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH_MULTIPLIERS = (1, 3, 9)    # the real rows' batch sizes (powers of two) times these: distinct batch sizes
THREADS = (0, 1, 2, 4)           # thread settings (0: the default)
LATENCY_COLUMNS = ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "latency_ms_iqr",
                   "latency_ms_ci_low", "latency_ms_ci_high", "baseline_ms_p50")


def _scaled(row: dict, factor: float) -> dict:
    """`row` with its latencies times `factor` and its throughput divided by it (figures stay consistent)."""
    out = dict(row)
    for col in LATENCY_COLUMNS:
        try:
            out[col] = repr(float(row[col]) * factor)
        except (KeyError, ValueError):
            pass
    try:
        out["throughput_sps"] = repr(float(row["throughput_sps"]) / factor)
    except (KeyError, ValueError):
        pass
    return out


def grow(rows: list[dict], n: int, duplicate_share: float = 0.1, seed: int = 0) -> list[dict]:
    """`n` rows made from a real run's `rows`: the same pipelines on many models (`<model>_<i>`), batch
    sizes (times BATCH_MULTIPLIERS) and thread settings (THREADS), latencies scaled with the batch;
    the last `duplicate_share` of them measure an earlier cell again (a later timestamp, other figures)."""
    rng = random.Random(seed)
    unique = n - int(n * duplicate_share)
    per_model = len(rows) * len(BATCH_MULTIPLIERS) * len(THREADS)
    out: list[dict] = []
    for i in range(math.ceil(unique / per_model)):
        for mult in BATCH_MULTIPLIERS:
            for threads in THREADS:
                for r in rows:
                    if len(out) == unique:
                        break
                    g = _scaled(r, mult * rng.uniform(0.9, 1.1))
                    g.update(model=f"{r['model']}_{i}", batch_size=str(int(r["batch_size"]) * mult),
                             threads=str(threads) if threads else "")
                    out.append(g)
    for _ in range(n - unique):
        again = _scaled(rng.choice(out[:unique]), rng.uniform(0.95, 1.05))
        again["timestamp"] = "9" + again.get("timestamp", "")[1:]   # later than any real one
        out.append(again)
    return out


def write_grown(source: Path, dest: Path, n: int) -> Path:
    """A results folder `dest` holding `n` grown rows of `source`'s records.csv, and its env.json."""
    with open(source / "records.csv", newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / "records.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(grow(rows, n))
    if (source / "env.json").exists():
        shutil.copy(source / "env.json", dest / "env.json")
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="a real run's results folder (records.csv, env.json)")
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args(argv)
    if not (args.source / "records.csv").is_file():
        print(f"report_scale: {args.source}/records.csv: no such file; give a results folder of a real run",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="report-scale-") as tmp:
        folder = write_grown(args.source, Path(tmp) / "run", args.rows)
        size_mb = (folder / "records.csv").stat().st_size / 2**20
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "bench.cli", "report", str(folder)], capture_output=True, text=True)
        wall_s = time.perf_counter() - t0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)   # the report's process: this one's only child
        peak_mib, cpu_s = usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime   # ru_maxrss: KiB on Linux
        charts = len(list((folder / "charts").glob("*.png")))
        print(f"report of {args.rows:,} rows ({size_mb:.0f} MiB records.csv): exit {proc.returncode}, "
              f"{wall_s:.1f} s wall ({cpu_s:.1f} s CPU: on a shared machine the figure to compare), "
              f"peak RSS {peak_mib:.0f} MiB, {charts} charts")
        if proc.returncode:
            print(proc.stderr[-2000:], file=sys.stderr)
        return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
