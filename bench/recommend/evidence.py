"""The answer's evidence: one point per measured pipeline, the Pareto front chart (PNG), its table, and recommendation.json."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

import pandas as pd

from bench.records.write import atomic_write
from bench.recommend.judge import Choice, admissible, as_speedup, drop_points, front
from bench.recommend.request import SearchRequest
from matplotlib.ticker import NullFormatter

from bench.reporting.chartkit import plain_log_ticks, plt, save, times_formatter
from bench.reporting.verdicts import as_float, is_exact, is_valid

RESULT = "recommendation.json"
CHART = "pareto.png"
TABLE = "recommendation.md"
MAX_NAMED_POINTS = 12


def points(screened: pd.DataFrame, confirmed: pd.DataFrame, req: SearchRequest) -> list[dict[str, Any]]:
    """One point per measured pipeline that ran: its speedup and interval from the last rung it reached
    (a serving target's confirmed rows: the served rate's ratio, no interval), its accuracy drop
    (points; 0 for exact) from its paired-block row, whether it fits the budget and whether it is valid."""
    serving = req.target.serving
    acc = {r["pipeline"]: r for r in screened.to_dict("records") if r["status"] == "ok"}
    out: dict[str, dict[str, Any]] = {}
    for rung, rows in (("screen", screened), ("confirmed", confirmed)):
        for r in rows.to_dict("records"):
            if r["status"] != "ok" or (rung == "confirmed" and serving and r.get("scenario") != serving):
                continue
            a = r if serving is None or rung == "screen" else acc.get(r["pipeline"], r)
            fits, why = admissible(a, req.max_accuracy_drop_points)
            lo, hi = as_float(r.get("speedup_ci_low")), as_float(r.get("speedup_ci_high"))
            out[r["pipeline"]] = {"pipeline": r["pipeline"], "rung": rung, "speedup": as_speedup(r),
                                  "ci_low": lo, "ci_high": hi, "drop": drop_points(a), "fits": fits,
                                  "accuracy": why, "exact": is_exact(a), "valid": is_valid(r),
                                  "verdict": r.get("speed_verdict", ""), "setup_s": as_float(r.get("setup_s"))}
    return sorted(out.values(), key=lambda p: -p["speedup"] if not math.isnan(p["speedup"]) else math.inf)


def reproduce(req: SearchRequest, pipeline: str) -> str:
    """The `accelbench run` command that measures the chosen cell again (full timing, its own folder)."""
    from bench.recommend.search import run_request

    r = run_request(req, [pipeline], screen=False)
    args = ["accelbench", "run", "--model", req.model, "--pipeline", pipeline]
    args += [] if req.data == "digits" else ["--data", req.data]
    for w in req.weights:
        args += ["--weights", w]
    if req.target.serving:
        args += ["--scenario", req.target.serving]
        if req.target.latency_bound_ms is not None:
            args += ["--latency-bound-ms", f"{req.target.latency_bound_ms:g}"]
    else:
        args += ["--batch-size", str(r.batch_sizes[0])]
    return shlex.join(args + ["--out", "results/reproduce"])


def chart(pts: list[dict[str, Any]], chosen: str | None, budget_points: float, path: Path, title: str) -> Path:
    """Speedup (log scale) against accuracy drop, one point per pipeline with its 95% interval, the
    Pareto front joined, the budget a vertical line and the chosen pipeline starred and named."""
    usable = [p for p in pts if not (math.isnan(p["speedup"]) or math.isnan(p["drop"]))]
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    for rung, marker in (("screen", "o"), ("confirmed", "s")):
        for fits in (True, False):
            for invalid in (False, True):
                sel = [p for p in usable if p["rung"] == rung and p["fits"] == fits
                       and (p.get("verdict") == "invalid") == invalid]
                if not sel:
                    continue
                err = [[max(p["speedup"] - p["ci_low"], 0) if not math.isnan(p["ci_low"]) else 0 for p in sel],
                       [max(p["ci_high"] - p["speedup"], 0) if not math.isnan(p["ci_high"]) else 0 for p in sel]]
                colour = "#1f6fb4" if fits else "#b0b0b0"
                # a row the harness marked invalid is drawn hollow: its figure is shown, never judged
                ax.errorbar([p["drop"] for p in sel], [p["speedup"] for p in sel], yerr=err, fmt=marker, ms=6,
                            color=colour, mfc="none" if invalid else colour, ecolor="#9ab", capsize=2, alpha=0.9,
                            label=f"{'confirmed (full timing)' if rung == 'confirmed' else 'screened (short timing)'}, "
                                  f"{'within budget' if fits else 'over budget'}"
                                  + (", marked invalid (no verdict)" if invalid else ""))
    f = front(usable)
    if f:
        ax.plot([p["drop"] for p in f], [p["speedup"] for p in f], "-", color="#e07b00", lw=1.5, label="Pareto front")
        # every point named while they are few; else the front's only (the table lists them all)
        for p in usable if len(usable) <= MAX_NAMED_POINTS else f:
            ax.annotate(p["pipeline"], (p["drop"], p["speedup"]), textcoords="offset points", xytext=(5, 4),
                        fontsize=7, color="#704000")
    ax.axvline(budget_points, color="#a3141c", ls="--", lw=1.2, label=f"accuracy budget ({budget_points:g} points)")
    ax.axhline(1.0, color="#666", lw=0.8, ls=":")
    pick = next((p for p in usable if p["pipeline"] == chosen), None)
    if pick is not None:
        ax.plot([pick["drop"]], [pick["speedup"]], "*", ms=18, color="#0a6b2e", label=f"chosen: {chosen}")
    if usable:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(times_formatter)
        ax.yaxis.set_minor_formatter(NullFormatter())
        # the axes frame the points, not the intervals: a short screening cell's interval can span 100x
        sps = [p["speedup"] for p in usable if p["speedup"] > 0] + [1.0]
        ax.set_ylim(min(sps) / 1.5, max(sps) * 1.5)
        plain_log_ticks(ax.yaxis)   # 1-2-5 steps: a span under a decade otherwise shows the 1x label alone
        ax.yaxis.set_major_formatter(times_formatter)
        drops = [p["drop"] for p in usable] + [0.0, budget_points]
        ax.set_xlim(min(drops) - 0.1 - 0.05 * (max(drops) - min(drops)), max(drops) * 1.1 + 0.1)
    ax.set_xlabel("accuracy drop against eager (percentage points; exact pipelines at 0)")
    ax.set_ylabel("speedup against eager (x, log scale)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return save(fig, path)


def _x(v: float, spec: str = ".2f") -> str:
    return "–" if v is None or math.isnan(v) else format(v, spec)


def table(pts: list[dict[str, Any]], chosen: str | None) -> list[list[str]]:
    """The Pareto front as table rows: pipeline, speedup [95% CI], accuracy drop, rung, verdicts."""
    rows = []
    for p in front([q for q in pts if not (math.isnan(q["speedup"]) or math.isnan(q["drop"]))]):
        ci = f" [{_x(p['ci_low'])}–{_x(p['ci_high'])}]" if not math.isnan(p["ci_low"]) else ""
        rows.append([p["pipeline"] + (" (chosen)" if p["pipeline"] == chosen else ""), _x(p["speedup"]) + ci,
                     _x(p["drop"], "+.2f"), p["rung"], p["verdict"] or "–", p["accuracy"]])
    return rows


TABLE_HEADERS = ["Pipeline", "Speedup (x) [95% CI]", "Accuracy drop (points)", "Measured in", "Speed verdict",
                 "Accuracy against the budget"]


def write(out: Path, req: SearchRequest, choice: Choice, pts: list[dict[str, Any]], progress, unavailable,
          impossible: str = "") -> dict[str, Any]:
    """recommendation.json (what the report's first screen shows), pareto.png and recommendation.md in `out`."""
    chosen = choice.row["pipeline"] if choice.row is not None else None
    pick = next((p for p in pts if p["pipeline"] == chosen), None)
    doc = {"model": req.model, "target": req.target.words(), "max_accuracy_drop_points": req.max_accuracy_drop_points,
           "budget_min": req.budget_s / 60, "pipeline": chosen or "eager", "why": impossible or choice.why,
           "impossible": bool(impossible), "speedup": pick["speedup"] if pick else None,
           "ci_low": pick["ci_low"] if pick else None, "ci_high": pick["ci_high"] if pick else None,
           "accuracy_drop_points": pick["drop"] if pick else None,
           "runner_up": choice.runner_up["pipeline"] if choice.runner_up is not None else None,
           "command": reproduce(req, chosen) if chosen else None,
           "front": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in p.items()}
                     for p in front([q for q in pts if not (math.isnan(q["speedup"]) or math.isnan(q["drop"]))])],
           "screened": progress.screened, "confirmed": progress.confirmed,
           "unmeasured": progress.unmeasured, "unavailable": dict(unavailable), "wall_s": progress.wall_s}
    atomic_write(out / RESULT, json.dumps(doc, indent=2, default=str) + "\n")
    chart(pts, chosen, req.max_accuracy_drop_points, out / CHART,
          f"{req.model}: speedup against accuracy drop ({req.target.words()})")
    lines = [f"# Recommendation for {req.model}\n", f"**{doc['pipeline']}**: {doc['why']}.\n"]
    if doc["command"]:
        lines.append(f"Reproduce: `{doc['command']}`\n")
    lines += ["| " + " | ".join(TABLE_HEADERS) + " |", "|" + "---|" * len(TABLE_HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in table(pts, chosen)]
    lines.append(f"\n![Pareto front]({CHART})\n")
    atomic_write(out / TABLE, "\n".join(lines) + "\n")
    return doc
