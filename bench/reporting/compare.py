"""`accelbench compare BASELINE CURRENT`: a noise-aware regression gate on speedup, accuracy and peak memory.

Speed is compared as the speedup against the eager baseline timed interleaved *in the same run*
(a ratio that survives a busy machine), never as absolute latency. A slowdown is a regression only
when it passes the threshold AND the two speedup confidence intervals do not overlap, so noise on
one side cannot flag by itself. Exit codes: 0 no regression, 1 regression, 2 unusable input.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from bench.api import UserError
from bench.records.columns import SERVING_SCENARIOS, cell_key
from bench.records.read import load
from bench.reporting.thresholds import Thresholds, thresholds_from_args
from bench.reporting.verdicts import as_float, is_valid
from bench.terminal import inert

EXIT_OK, EXIT_REGRESSION = 0, 1
GATED_FIGURES = ("speedup", "accuracy", "final_accuracy", "peak_mem_mb")

@dataclass(frozen=True)
class Comparison:
    """One line of the table: a figure of one cell, before and after, and what it means."""

    cell: str
    metric: str
    baseline: str
    current: str
    change: str
    verdict: str
    regression: bool = False


def _fmt_speedup(s: float, lo: float, hi: float) -> str:
    if math.isnan(lo) or math.isnan(hi):
        return f"{s:.2f}x"
    return f"{s:.2f}x [{lo:.2f}-{hi:.2f}]"


def compare_speedup(b: pd.Series, c: pd.Series, th: Thresholds, cell: str) -> Comparison:
    sb, lb, hb = (as_float(b[k]) for k in ("speedup", "speedup_ci_low", "speedup_ci_high"))
    sc, lc, hc = (as_float(c[k]) for k in ("speedup", "speedup_ci_low", "speedup_ci_high"))
    ratio = sc / sb
    change = f"{(ratio - 1) * 100:+.1f}%"
    limit = th.calibrated.get(cell_key(b))
    if limit is not None:
        # The calibrated threshold is a prediction bound of this cell's run-to-run noise: it already
        # holds what the within-run intervals would add (and they understate run-to-run noise).
        if ratio < 1 - limit:
            verdict, bad = f"REGRESSION: slower by more than {limit:.1%} (calibrated for this cell)", True
        elif ratio > 1 + limit:
            verdict, bad = "improved", False
        else:
            verdict, bad = f"ok: within {limit:.1%} (calibrated)", False
        return Comparison(cell, "speedup", _fmt_speedup(sb, lb, hb), _fmt_speedup(sc, lc, hc), change, verdict, bad)
    has_ci = not any(math.isnan(v) for v in (lb, hb, lc, hc))
    apart_slower = hc < lb if has_ci else True   # no interval recorded: the threshold alone decides
    apart_faster = lc > hb if has_ci else True
    if ratio < 1 - th.max_slowdown and apart_slower:
        verdict, bad = f"REGRESSION: slower by more than {th.max_slowdown:.0%}, intervals apart", True
    elif ratio < 1 - th.max_slowdown:
        verdict, bad = "ok: slower, but the intervals overlap (noise)", False
    elif ratio > 1 + th.max_slowdown and apart_faster:
        verdict, bad = "improved", False
    else:
        verdict, bad = f"ok: within {th.max_slowdown:.0%}", False
    return Comparison(cell, "speedup", _fmt_speedup(sb, lb, hb), _fmt_speedup(sc, lc, hc), change, verdict, bad)


def compare_accuracy(b: pd.Series, c: pd.Series, th: Thresholds, cell: str, column: str) -> Comparison:
    ab, ac = as_float(b[column]), as_float(c[column])
    # The test split and the trained checkpoint are fixed, so accuracy is deterministic for
    # deterministic code: any drop past the threshold is a real change, no interval needed.
    drop_pp = (ab - ac) * 100
    if drop_pp > th.max_accuracy_drop_pp + 1e-9:  # float32 accuracies: 0.97 - 0.965 is 0.5000000000004 pp
        verdict, bad = f"REGRESSION: dropped more than {th.max_accuracy_drop_pp:g} pp", True
    elif drop_pp < -th.max_accuracy_drop_pp:
        verdict, bad = "improved", False
    else:
        verdict, bad = f"ok: within {th.max_accuracy_drop_pp:g} pp", False
    return Comparison(cell, column, f"{ab:.2%}", f"{ac:.2%}", f"{0.0 - drop_pp:+.2f} pp", verdict, bad)


def compare_memory(b: pd.Series, c: pd.Series, th: Thresholds, cell: str) -> Comparison:
    mb, mc = as_float(b["peak_mem_mb"]), as_float(c["peak_mem_mb"])
    growth = mc - mb
    rel = growth / mb if mb > 0 else (math.inf if growth > 0 else 0.0)
    change = f"{growth:+.1f} MiB ({rel * 100:+.0f}%)" if math.isfinite(rel) else f"{growth:+.1f} MiB"
    if rel > th.max_memory_growth and growth > th.memory_floor_mb:
        verdict, bad = f"REGRESSION: grew more than {th.max_memory_growth:.0%} and {th.memory_floor_mb:g} MiB", True
    elif rel > th.max_memory_growth:
        verdict, bad = f"ok: grew, but by less than {th.memory_floor_mb:g} MiB (noise floor)", False
    else:
        verdict, bad = f"ok: within {th.max_memory_growth:.0%}", False
    return Comparison(cell, "peak_mem_mb", f"{mb:.1f} MiB", f"{mc:.1f} MiB", change, verdict, bad)


def _has(row: pd.Series, *cols: str) -> bool:
    return all(col in row.index and not math.isnan(as_float(row[col])) for col in cols)


def compare_cell(b: pd.Series | None, c: pd.Series | None, th: Thresholds, cell: str) -> list[Comparison]:
    """Every comparison for one cell; status changes come first and may end it."""
    if b is None:
        return [Comparison(cell, "status", "-", str(c["status"]), "", "new: not in the baseline")]
    if b["status"] != "ok":
        now = "-" if c is None else str(c["status"])
        return [Comparison(cell, "status", str(b["status"]), now, "", "ok: nothing measured in the baseline")]
    if c is None:
        return [Comparison(cell, "status", "ok", "missing", "", "REGRESSION: in the baseline, missing now", True)]
    if c["status"] != "ok":
        reason = str(c.get("reason", "") or "")[:120]
        return [Comparison(cell, "status", "ok", str(c["status"]), "",
                           f"REGRESSION: {c['status']} now: {reason}", True)]
    if not is_valid(c.to_dict()):
        # A disturbed measurement can neither pass nor fail a cell: the gate cannot vouch for it.
        why = str(c.get("validity", "") or "")[:300]
        was = "true" if is_valid(b.to_dict()) else "false"
        return [Comparison(cell, "valid", was, "false", "", f"INVALID now (re-run the gate): {why}", True)]
    if str(c.get("scenario", "")) in SERVING_SCENARIOS:
        # Two LoadGen runs a side give one point estimate and no interval: the same single-stream cell
        # read 1.04x, 0.92x, 1.03x and 0.87x in four runs. Only its status is gated.
        return [Comparison(cell, "status", "ok", "ok", "", "ok: served under LoadGen; its rate is one point "
                                                           "estimate with no interval, not gated")]
    out = []
    for col in GATED_FIGURES:
        if not _has(b, col):
            continue
        if not _has(c, col):
            # The gate fails closed: a figure the baseline measured and this run did not (a crash
            # part-way, a hand-edited file) can neither pass nor fail a check, so the cell does not pass.
            out.append(Comparison(cell, col, f"{as_float(b[col]):.4g}", "missing", "", f"REGRESSION: {col} missing now "
                                  f"(measured in the baseline; an ok row must carry it)", True))
        elif col == "speedup":
            out.append(compare_speedup(b, c, th, cell))
        elif col == "peak_mem_mb":
            out.append(compare_memory(b, c, th, cell))
        else:
            out.append(compare_accuracy(b, c, th, cell, col))
    if not out:
        out.append(Comparison(cell, "status", "ok", "ok", "", "ok: no shared figures to compare"))
    return out


def _index(df: pd.DataFrame, source: Path) -> dict[tuple, pd.Series]:
    rows: dict[tuple, pd.Series] = {}
    for _, r in df.iterrows():
        if math.isnan(as_float(r["batch_size"])):
            raise UserError(f"{source}: row for {r['model']} {r['pipeline']} has no batch_size")
        rows[cell_key(r)] = r  # a resumed run may repeat a cell: the last row is the one that counts
    if not rows:
        raise UserError(f"{source}: holds no rows to compare")
    return rows


def compare_runs(base_df: pd.DataFrame, cur_df: pd.DataFrame, th: Thresholds, *,
                 base_name: Path = Path("BASELINE"), cur_name: Path = Path("CURRENT")) -> list[Comparison]:
    """All comparisons, baseline cells first (in their order), then cells new in CURRENT."""
    base, cur = _index(base_df, base_name), _index(cur_df, cur_name)
    b_models, c_models = {k[0] for k in base}, {k[0] for k in cur}
    if b_models - c_models:
        raise UserError(f"different models: {base_name} has {sorted(b_models)}, {cur_name} has {sorted(c_models)}; "
                        f"run the current benchmark with the baseline's models (--model)")
    if not set(base) & set(cur):
        raise UserError(f"{base_name} and {cur_name} share no (model, pipeline, batch size, threads) cell; "
                        f"run the same pipelines, batch sizes and --threads as the baseline")
    datas = {side: {str(r.get("data", "") or "") for r in rows.values()} - {""}
             for side, rows in (("baseline", base), ("current", cur))}
    if datas["baseline"] and datas["current"] and datas["baseline"] != datas["current"]:
        raise UserError(f"different data: {base_name} ran on {', '.join(sorted(datas['baseline']))}, {cur_name} on "
                        f"{', '.join(sorted(datas['current']))}; accuracy cannot be compared (use the same --data)")
    out: list[Comparison] = []
    for key in list(base) + [k for k in cur if k not in base]:
        model, pipeline, scenario, bs, threads = key
        cell = (f"{model} {pipeline} bs={bs}" + (f" threads={threads}" if threads else "")
                + ("" if scenario == "inference" else f" ({scenario})"))
        out += compare_cell(base.get(key), cur.get(key), th, cell)
    return out


def format_table(rows: list[Comparison]) -> str:
    head = ("cell", "figure", "baseline", "current", "change", "verdict")
    cells = [head] + [(r.cell, r.metric, r.baseline, r.current, r.change, r.verdict) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head) - 1)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row[:-1], widths)) + "  " + row[-1] for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len(head[-1]))
    return "\n".join(lines)


def _machine_note(b_env: dict, c_env: dict) -> str | None:
    b_cpu, c_cpu = b_env.get("cpu_model"), c_env.get("cpu_model")
    if b_cpu and c_cpu and b_cpu != c_cpu:
        return f"note: baseline ran on {b_cpu!r}, current on {c_cpu!r}; speedups may differ for that reason alone"
    return None


def calibrated_thresholds(baseline: Path) -> tuple[dict[tuple, float], str]:
    """Per-cell slowdown thresholds from BASELINE/gate.json's `calibration` (written by `accelbench
    calibrate`), keyed like bench.records.columns.cell_key, and a line saying where they came from; ({}, "")
    when none."""
    path = Path(baseline) / "gate.json"
    if not path.is_file():
        return {}, ""
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: corrupt JSON ({exc})") from None
    out = {}
    try:
        if not isinstance(doc, dict):
            raise TypeError(f"a JSON {type(doc).__name__}, not an object")
        cal = doc.get("calibration") or {}
        if not isinstance(cal, dict) or not isinstance(cal.get("cells", []), list):
            raise TypeError("its calibration is not an object with a list of cells")
        cells = cal.get("cells", [])
        for c in cells:
            limit = float(c["max_slowdown"])
            if not (math.isfinite(limit) and limit >= 0):   # a NaN threshold would pass any slowdown
                raise ValueError(f"max_slowdown {limit} is not a fraction >= 0")
            out[(str(c["model"]), str(c["pipeline"]), str(c["scenario"]), int(c["batch_size"]),
                 int(c["threads"]))] = limit
        about = (f"calibrated per-cell speedup thresholds from {path} ({cal.get('runs')} A/A runs on "
                 f"{cal.get('date')}, target false-alarm rate {float(cal.get('false_alarm_rate', 0)):.1%} of cells "
                 f"per run)") if out else ""
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise UserError(f"{path}: not a gate file written by `accelbench calibrate` ({type(exc).__name__}: {exc}); "
                        f"run calibrate again, or compare with --no-calibration") from None
    return out, about


def main(args: Any, stream: TextIO | None = None) -> int:
    """Run the comparison the CLI asked for; print the table; 0 = no regression, 1 = regression.
    Unusable input raises UserError (the CLI prints it as one line and exits 2)."""
    stream = stream or sys.stdout
    th = thresholds_from_args(args)
    about = ""
    if not getattr(args, "no_calibration", False) and Path(args.baseline).is_dir():
        per_cell, about = calibrated_thresholds(Path(args.baseline))
        th = replace(th, calibrated=per_cell)
    for what, path in (("BASELINE", args.baseline), ("CURRENT", args.current)):
        if not Path(path).exists():
            raise UserError(f"{what} {path}: no such file or folder; give a results folder, a records.csv "
                            f"or a pytest-benchmark JSON")
    base_df, b_env = load(Path(args.baseline))
    cur_df, c_env = load(Path(args.current))
    rows = compare_runs(base_df, cur_df, th, base_name=Path(args.baseline), cur_name=Path(args.current))
    print(inert(format_table(rows), newlines=True), file=stream)
    note = _machine_note(b_env, c_env)
    if note:
        print(inert(note), file=stream)
    if about:
        print(inert(f"speed: {about}; other cells: --max-slowdown"), file=stream)
    bad = [r for r in rows if r.regression]
    print(f"\ncompare: {len(rows)} comparisons, {len(bad)} regression{'s' * (len(bad) != 1)} "
          f"(thresholds: slowdown {th.max_slowdown:.0%} with intervals apart, accuracy drop "
          f"{th.max_accuracy_drop_pp:g} pp, memory growth {th.max_memory_growth:.0%} and {th.memory_floor_mb:g} MiB)",
          file=stream)
    for r in bad:
        print(inert(f"regression: {r.cell}: {r.metric} {r.baseline} -> {r.current}: {r.verdict}"), file=stream)
    return EXIT_REGRESSION if bad else EXIT_OK
