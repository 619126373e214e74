"""`accelbench calibrate`: per-cell gate thresholds fitted to this machine's run-to-run noise from A/A runs.

The gate's command (BASELINE/gate.json) is run N times on unchanged code (A/A). For each cell, the log
of the run's speedup over the baseline's, r = log(s_run / s_base), is modelled as normal N(m, sd^2): m is
the baseline's own offset (it is one noisy run too), sd the run-to-run noise. The threshold is the one-sided
normal prediction bound for one further run (Student t, n - 1 degrees of freedom; e.g. Hahn & Meeker,
"Statistical Intervals", 1991, ch. 4):

    L = m - t(1 - a, n - 1) * sd * sqrt(1 + 1/n),     max_slowdown = 1 - exp(L)

so an unchanged cell falls below it with probability a, the target false-alarm rate per cell and run
(default 1%: one cell in a hundred flagged per run by noise alone). The smallest slowdown the cell can
detect is the one that falls below L in POWER of runs: 1 - exp(L - m - z(POWER) * sd).
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from bench.api import UserError
from bench.records.columns import cell_key
from bench.records.read import load
from bench.records.write import atomic_write
from bench.reporting.compare import Thresholds, compare_runs
from bench.reporting.thresholds import parse_percent, thresholds_from_options
from bench.reporting.verdicts import is_valid

POWER = 0.8                 # "can detect": flagged in this share of runs
MIN_RUNS = 3                # fewer A/A runs give no estimate of the spread
MIN_SLOWDOWN = 0.01         # a threshold never below 1%: the ratio's own rounding and timer resolution
RUN_TIMEOUT_S = 1800.0      # one run of the gate's command
PLANTED_SLOWDOWNS = (1.3, 2.0)


@dataclass(frozen=True)
class CellFit:
    """One cell's A/A noise and the threshold fitted to it (fractions; sd of the log ratio)."""

    key: tuple
    runs: int
    offset: float               # mean log(s_run / s_base)
    noise_sd: float             # standard deviation of log(s_run / s_base)
    max_slowdown: float         # the calibrated threshold
    detectable_slowdown: float  # flagged in POWER of runs

    def as_json(self) -> dict:
        model, pipeline, scenario, bs, threads = self.key
        return {"model": model, "pipeline": pipeline, "scenario": scenario, "batch_size": bs, "threads": threads,
                "runs": self.runs, "offset_log": round(self.offset, 6), "noise_sd_log": round(self.noise_sd, 6),
                "max_slowdown": round(self.max_slowdown, 5), "detectable_slowdown": round(self.detectable_slowdown, 5)}


def _speedups(df: pd.DataFrame) -> dict[tuple, float]:
    """cell -> speedup of the ok, valid rows that have one."""
    return {cell_key(r): float(r["speedup"]) for _, r in df.iterrows()
            if r["status"] == "ok" and is_valid(r.to_dict()) and r["speedup"] == r["speedup"] and r["speedup"] > 0}


def fit(base: pd.DataFrame, runs: list[pd.DataFrame], false_alarm_rate: float) -> list[CellFit]:
    """A CellFit for every baseline cell that at least MIN_RUNS of the A/A runs measured validly."""
    if not 0 < false_alarm_rate < 0.5:
        raise UserError(f"--false-alarm-rate must be between 0% and 50%, got {false_alarm_rate:.2%}")
    base_s = _speedups(base)
    per_run = [_speedups(r) for r in runs]
    out = []
    for key, sb in base_s.items():
        r = np.array([math.log(s[key] / sb) for s in per_run if key in s])
        if len(r) < MIN_RUNS:
            continue
        n, m, sd = len(r), float(r.mean()), float(r.std(ddof=1))
        bound = m - stats.t.ppf(1 - false_alarm_rate, n - 1) * sd * math.sqrt(1 + 1 / n)
        limit = max(MIN_SLOWDOWN, 1 - math.exp(bound))
        detect = 1 - math.exp(math.log(1 - limit) - m - stats.norm.ppf(POWER) * sd)
        out.append(CellFit(key, n, m, sd, limit, detect))
    return out


def plant(df: pd.DataFrame, factor: float) -> pd.DataFrame:
    """A copy of a run whose candidates are `factor` times slower: every non-eager cell's latencies
    multiplied by `factor`, so its speedup (eager / candidate) and interval divided by it."""
    slow = df.copy()
    mask = slow["pipeline"] != "eager"
    for col in ("speedup", "speedup_ci_low", "speedup_ci_high"):
        slow.loc[mask, col] = slow.loc[mask, col] / factor
    for col in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean"):
        slow.loc[mask, col] = slow.loc[mask, col] * factor
    return slow


def evaluate(base: pd.DataFrame, holdout: list[pd.DataFrame], th: Thresholds) -> dict[str, dict[str, int]]:
    """What `compare` says on held-out A/A runs and on copies of them with planted slowdowns, per cell:
    `valid` (runs where the cell was measured validly), `invalid` (the gate refuses those: a run to
    repeat, not a verdict on speed), `false` (valid A/A cells flagged slower) and `x1.3` / `x2`
    (planted copies flagged slower)."""
    def verdicts(cur: pd.DataFrame) -> dict[str, str]:
        return {r.cell: r.metric for r in compare_runs(base, cur, th) if r.regression and r.metric in ("speedup", "valid")}

    cells = [r.cell for r in compare_runs(base, base, th) if r.metric == "speedup"]
    counts = {c: {"valid": 0, "invalid": 0, "false": 0, **{f"x{f:g}": 0 for f in PLANTED_SLOWDOWNS}} for c in cells}
    for run in holdout:
        now = verdicts(run)
        planted = {f: verdicts(plant(run, f)) for f in PLANTED_SLOWDOWNS}
        for c in cells:
            if now.get(c) == "valid":
                counts[c]["invalid"] += 1
                continue
            counts[c]["valid"] += 1
            counts[c]["false"] += now.get(c) == "speedup"
            for f in PLANTED_SLOWDOWNS:
                counts[c][f"x{f:g}"] += planted[f].get(c) == "speedup"
    return counts


def summary(name: str, counts: dict[str, dict[str, int]], runs: int) -> str:
    """One line: false alarms per valid cell-run, planted slowdowns found per valid non-eager cell-run."""
    valid = sum(c["valid"] for c in counts.values())
    invalid = sum(c["invalid"] for c in counts.values())
    fa = sum(c["false"] for c in counts.values())
    slow = {k: v for k, v in counts.items() if " eager " not in f" {k} "}   # eager against itself cannot slow down
    n_slow = sum(c["valid"] for c in slow.values())
    found = ", ".join(f"{f:g}x {sum(c[f'x{f:g}'] for c in slow.values())}/{n_slow} "
                      f"({sum(c[f'x{f:g}'] for c in slow.values()) / max(n_slow, 1):.0%})" for f in PLANTED_SLOWDOWNS)
    return (f"{name}: on {runs} held-out A/A runs, false alarms {fa}/{valid} valid cell-runs ({fa / max(valid, 1):.1%}); "
            f"planted slowdowns found: {found}; {invalid} cell-runs invalid (the gate asks for a re-run)")


def _gate_runs(gate: dict, n: int, folder: Path, label: str) -> list[Path]:
    """Run the gate's command `n` times into folder/<label>-<i>, each in a fresh process (as the gate test does)."""
    argv = shlex.split(gate["command"])
    if argv[:2] != ["accelbench", "run"] or "--out" not in argv:
        raise UserError(f"gate.json command must be `accelbench run ... --out DIR`, got {gate['command']!r}")
    outs = []
    for i in range(1, n + 1):
        out = folder / f"{label}-{i:02d}"
        argv[argv.index("--out") + 1] = str(out)
        print(f"calibrate: {label} run {i}/{n} -> {out}", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, "-m", "bench.cli", *argv[1:], "--no-history"], capture_output=True,
                              text=True, timeout=RUN_TIMEOUT_S)
        if proc.returncode not in (0, 1):
            raise UserError(f"calibrate: the gate's command failed (exit {proc.returncode}): "
                            f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no message'}")
        outs.append(out)
    return outs


def _label(key: tuple) -> str:
    model, pipeline, scenario, bs, threads = key
    return f"{model} {pipeline} bs={bs}" + (f" threads={threads}" if threads else "") + (
        "" if scenario == "inference" else f" ({scenario})")


def _read_gate(gate_path: Path) -> dict:
    """BASELINE/gate.json as a dict whose `command` is text and whose `thresholds` (optional) is an object;
    anything else raises UserError naming the file and the field."""
    try:
        gate = json.loads(gate_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{gate_path}: corrupt JSON ({exc})") from None
    if not isinstance(gate, dict):
        raise UserError(f"{gate_path}: a JSON {type(gate).__name__}, not an object with `command` and `thresholds`")
    if not isinstance(gate.get("command"), str):
        raise UserError(f"{gate_path}: `command` must be the text of an `accelbench run ... --out DIR` command, "
                        f"got {gate.get('command')!r}")
    th = gate.get("thresholds")
    if th is None:
        gate["thresholds"] = {}
    elif not isinstance(th, dict) or not all(isinstance(v, (str, int, float)) or v is None for v in th.values()):
        raise UserError(f"{gate_path}: `thresholds` must be an object of option text "
                        f"(e.g. {{\"max_slowdown\": \"30%\"}}), got {th!r}")
    return gate


def main(args: Any) -> int:
    """The `accelbench calibrate` command; see the module docstring. Prints each cell's noise, threshold
    and smallest detectable slowdown (and with --holdout, the measured false-alarm and detection rates);
    writes the thresholds into BASELINE/gate.json unless --dry-run."""
    base_dir = Path(args.baseline)
    gate_path = base_dir / "gate.json"
    if not gate_path.is_file():
        raise UserError(f"{gate_path}: no such file; calibrate needs a baseline folder with gate.json "
                        f"(its `command` is what is run)")
    gate = _read_gate(gate_path)
    rate = parse_percent(args.false_alarm_rate, "--false-alarm-rate", upper=50)
    base, _ = load(base_dir)
    tmp = None
    folder = args.keep
    if folder is None and not (args.from_runs and (args.holdout_from or not args.holdout)):
        tmp = tempfile.TemporaryDirectory(prefix="accelbench-calibrate-")
        folder = Path(tmp.name)
    try:
        fitted_dirs = args.from_runs or _gate_runs(gate, args.runs, Path(folder), "aa")
        held_dirs = args.holdout_from or (_gate_runs(gate, args.holdout, Path(folder), "holdout") if args.holdout else [])
        fitted = [load(d)[0] for d in fitted_dirs]   # a missing or cut folder: UserError naming it
        empty = [str(d) for d, df in zip(fitted_dirs, fitted) if df.empty]
        if empty:
            raise UserError(f"calibrate: {', '.join(empty)} holds no rows (a run that stopped before its "
                            f"first cell); leave it out")
        if len(fitted_dirs) < MIN_RUNS:
            how = f"give {MIN_RUNS} or more runs to --from" if args.from_runs else f"use --runs {MIN_RUNS} or more"
            raise UserError(f"calibrate: {len(fitted_dirs)} A/A run(s) cannot give a spread; {how}")
        fits = fit(base, fitted, rate)
        if not fits:
            raise UserError(f"calibrate: no baseline cell was measured validly in {MIN_RUNS} or more A/A runs")
        holdout = [load(d)[0] for d in held_dirs]
    finally:
        if tmp is not None:
            tmp.cleanup()
    fixed = thresholds_from_options(gate["thresholds"])
    calibrated = replace(fixed, calibrated={f.key: f.max_slowdown for f in fits})
    print(f"calibrate: {len(fitted_dirs)} A/A runs of {gate_path}'s command against {base_dir}; target false-alarm "
          f"rate {rate:.1%} of cells per run; noise = sd of log(speedup / baseline speedup) over the runs where "
          f"the cell was valid; detects (80%): the smallest slowdown flagged in 80% of runs")
    head = f"{'cell':<44} {'A/A runs':>8} {'offset':>7} {'noise sd':>8} {'threshold':>9} {'detects (80%)':>13}"
    ev = evaluate(base, holdout, calibrated) if holdout else None
    if ev:
        head += f"  {'held-out: valid':>15} {'false alarms':>12} {'1.3x found':>10} {'2x found':>8}"
    print(head)
    for f in fits:
        line = (f"{_label(f.key):<44} {f.runs:>8} {math.exp(f.offset) - 1:>+7.1%} {f.noise_sd:>8.2%} {f.max_slowdown:>9.1%} "
                f"{f.detectable_slowdown:>13.1%}")
        if ev:
            c = ev.get(_label(f.key), {})
            v = c.get("valid", 0)
            line += f"  {v:>9}/{len(holdout):<5} {c.get('false', 0):>12} {c.get('x1.3', 0):>8}/{v:<1} {c.get('x2', 0):>6}/{v}"
        print(line)
    if ev:
        for name, th in (("calibrated", calibrated), (f"fixed gate.json thresholds ({fixed.max_slowdown:.0%}, "
                                                      f"intervals apart)", fixed)):
            print(summary(name, evaluate(base, holdout, th), len(holdout)))
    if args.dry_run:
        print(f"calibrate: --dry-run: {gate_path} not changed")
        return 0
    gate["calibration"] = {
        "method": "one-sided normal prediction bound on log(speedup / baseline speedup) over A/A runs",
        "false_alarm_rate": rate, "power_for_detectable": POWER, "runs": len(fitted_dirs),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cells": [f.as_json() for f in fits],
    }
    atomic_write(gate_path, json.dumps(gate, indent=2) + "\n")
    print(f"calibrate: wrote {len(fits)} per-cell thresholds into {gate_path}; `accelbench compare {base_dir} ...` "
          f"uses them (--no-calibration: the fixed thresholds)")
    return 0
