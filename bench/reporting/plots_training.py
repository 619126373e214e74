"""Training charts: accuracy against wall-clock time per strategy, and data-parallel scaling efficiency."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bench.reporting.blocks import Chart
from bench.reporting.chartkit import footnote, not_shown, plain_log_ticks, save, short_labels, slug, wants_log
from bench.reporting.verdicts import curve_points


def time_to_accuracy(df: pd.DataFrame, model: str, out: Path, col: dict) -> tuple[Chart | None, str]:
    g = df[(df["model"] == model) & (df["scenario"] == "training")]
    ok = g[g["status"] == "ok"]
    curves = {(r["pipeline"], int(r["batch_size"])): curve_points(r["curve"]) for _, r in ok.iterrows()}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None, f"{model}: no time-to-accuracy chart: no ok training row has a curve"
    several_bs = len({bs for _, bs in curves}) > 1
    fig, ax = plt.subplots(figsize=(9, 5))
    names = [f"{p} (batch {bs})" if several_bs else p for p, bs in curves]
    for (p, bs), name in zip(curves, short_labels(names)):
        t, a = zip(*curves[(p, bs)])
        ax.plot(t, np.asarray(a) * 100, marker="o", ms=3, color=col.get(p), label=name, lw=1.6)
    targets = ok["target_accuracy"].dropna().unique()
    for tgt in targets[:3]:
        ax.axhline(tgt * 100, color="0.35", ls="--", lw=1)
        ax.annotate(f"target {tgt * 100:g}%", xy=(0.01, tgt * 100), xycoords=("axes fraction", "data"),
                    xytext=(0, -11), textcoords="offset points", fontsize=8, color="0.3")
    all_t = [t for v in curves.values() for t, _ in v if t > 0]
    if wants_log(all_t):
        ax.set_xscale("log")
    all_a = [a * 100 for v in curves.values() for _, a in v] + [t * 100 for t in targets]
    # Early points of a run from scratch sit near chance (10%); showing them squashes the part a
    # reader compares (the approach to the target), so the axis starts a little below the target.
    lo = min(all_a)
    if len(targets):
        lo = max(lo, min(targets) * 100 - 25)
    ax.set_ylim(max(0, lo - 2), min(101, max(all_a) + 2))
    cut = min(all_a) < ax.get_ylim()[0]
    if ax.get_xscale() == "log":
        plain_log_ticks(ax.xaxis)
    ax.set_xlabel("wall-clock training time (s)" + (", log scale" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{model}: time to accuracy per training strategy (median seed)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    footnote(ax, "\n".join(filter(None, [f"accuracy axis starts at {ax.get_ylim()[0]:.0f}%: earlier, lower "
                                                   "evaluations are off the chart" if cut else "", not_shown(g)])))
    return Chart(save(fig, out / f"time_to_accuracy_{slug(model)}.png"), ax.get_title()), ""


def _world_size(row: pd.Series, figs: dict) -> float:
    for k, v in figs.items():
        if k.endswith("world_size"):
            return float(v)
    params = row["technique_params"]
    # one entry per technique (older runs wrote a dict keyed by technique name)
    for p in (params.values() if isinstance(params, dict) else params):
        if isinstance(p, dict) and "world_size" in p:
            try:
                return float(p["world_size"])
            except (TypeError, ValueError):
                pass
    return math.nan


def scaling(df: pd.DataFrame, out: Path, col: dict) -> tuple[Chart | None, str]:
    """Scaling efficiency (samples/s per worker relative to one worker) against world size."""
    g = df[(df["scenario"] == "training") & (df["status"] == "ok")]
    pts = []
    for _, r in g.iterrows():
        figs = r["figures"]
        eff = next((float(v) for k, v in figs.items() if k.endswith("scaling_efficiency")), math.nan)
        if not math.isnan(eff):
            pts.append((r["model"], r["pipeline"], _world_size(r, figs), eff, r["samples_per_s"]))
    pts = [p for p in pts if not math.isnan(p[2])]
    if not pts:
        return None, ("no data-parallel scaling chart: no ok training row reports a scaling efficiency "
                      "with a world size")
    fig, ax = plt.subplots(figsize=(9, 5))
    sizes = sorted({p[2] for p in pts})
    for model in sorted({p[0] for p in pts}):
        mine = sorted((p for p in pts if p[0] == model), key=lambda p: p[2])
        ax.plot([p[2] for p in mine], [p[3] for p in mine], marker="o", ms=8, lw=1.5, label=model)
        for p in mine:
            sps = f", {p[4]:.0f} samples/s" if np.isfinite(p[4]) else ""
            ax.annotate(f"{p[3]:.2f}{sps}", xy=(p[2], p[3]), xytext=(6, 4), textcoords="offset points", fontsize=8)
    ax.axhline(1.0, color="green", ls="--", lw=1, label="ideal (linear scaling)")
    n = np.linspace(1, max(sizes + [2.0]), 100)
    ax.plot(n, 1 / n, color="crimson", ls=":", lw=1.2, label="break-even (1 / world size): below it, slower than 1 process")
    ticks = sorted(set([1.0] + sizes))
    ax.set_xticks(ticks, [f"{s:g}" for s in ticks])
    ax.set_xlim(0.5, max(ticks) + 0.9)
    ax.set_ylim(0, max(1.15, max(p[3] for p in pts) * 1.15))
    ax.set_xlabel("world size (processes)")
    ax.set_ylabel("scaling efficiency (samples/s per worker / single worker)")
    ax.set_title("data-parallel scaling efficiency")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    footnote(ax, "efficiency = (samples/s with N workers / N) / samples/s of one worker")
    return Chart(save(fig, out / "scaling_data_parallel.png"), ax.get_title()), ""
