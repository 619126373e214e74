"""Size as an axis: each technique's speedup against the network's FLOPs, one point per model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.reporting.blocks import Chart
from bench.reporting.chartkit import footnote, plain_log_ticks, plt, save, short_labels
from bench.reporting.verdicts import BASELINE_PIPELINE

MIN_MODELS = 2   # a size axis needs networks of at least two sizes
NEAR_RATIO = 1.5  # model labels closer than this on the log axis are stacked
MARKERS = "osD^vPX*"
DASHES = ("-", "--", ":")


def network_mflops(df: pd.DataFrame) -> pd.Series:
    """MFLOP per image of each model's float network, from its eager rows (FLOPs per batch / batch size):
    the size of the network as it ran in this run (its input shape included)."""
    eager = df[(df["pipeline"] == BASELINE_PIPELINE) & (df["scenario"] == "inference") & (df["status"] == "ok")
               & df["flops"].notna() & (df["flops"] > 0)]
    return (eager["flops"] / eager["batch_size"] / 1e6).groupby(eager["model"]).median()


def drawn_rows(df: pd.DataFrame, bs: int) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    """What the size chart at batch size `bs` shows: (valid ok rows with a speedup, column `mf` the
    model's MFLOP per image, of pipelines valid on two or more models; pipelines left out because
    they are valid on one model only; invalid rows left out). Empty when fewer than two models of
    known size ran."""
    size = network_mflops(df[df["batch_size"] == bs])
    g = df[(df["batch_size"] == bs) & (df["scenario"] == "inference") & (df["status"] == "ok")
           & (df["pipeline"] != BASELINE_PIPELINE) & df["speedup"].notna() & df["model"].isin(size.index)]
    invalid = g[g["speed_verdict"] == "invalid"]
    g = g[g["speed_verdict"] != "invalid"].assign(mf=lambda d: d["model"].map(size))
    if size.nunique() < MIN_MODELS:
        return g.iloc[:0], [], invalid
    # A pipeline measured on one model only has no trend to show; it stays in the tables.
    spread = g.groupby("pipeline")["model"].nunique()
    keep = spread[spread >= MIN_MODELS].index
    return g[g["pipeline"].isin(keep)], sorted(set(spread.index) - set(keep)), invalid


def speedup_by_size(df: pd.DataFrame, bs: int, out: Path, col: dict) -> tuple[Chart | None, str]:
    """One line per pipeline through its speedup on each model at batch size `bs` (log-log axes), so
    which technique wins as the network grows reads left to right. Only valid ok rows are drawn; the
    bars are the speedup's 95% interval. Returns (chart or None, a note on what was left out)."""
    g, left, invalid = drawn_rows(df, bs)
    if not len(g):
        more = df[(df["batch_size"] == bs) & (df["scenario"] == "inference")]["model"].nunique() >= MIN_MODELS
        return None, (f"batch {bs}: no size chart: no pipeline has valid rows on two or more models" if more else "")
    size = g.drop_duplicates("model").set_index("model")["mf"]
    pipes = sorted(g["pipeline"].unique(), key=lambda p: -g[g["pipeline"] == p].sort_values("mf")["speedup"].iloc[-1])
    fig, ax = plt.subplots(figsize=(10, 6))
    for k, p in enumerate(pipes):
        h = g[g["pipeline"] == p].sort_values("mf")
        sp = h["speedup"].to_numpy(float)
        lo = np.clip(sp - h["speedup_ci_low"].fillna(h["speedup"]).to_numpy(float), 0, None)
        hi = np.clip(h["speedup_ci_high"].fillna(h["speedup"]).to_numpy(float) - sp, 0, None)
        # Up to 20 lines share one palette: marker and dash tell apart the ones whose colours are close.
        ax.errorbar(h["mf"], sp, yerr=np.vstack([lo, hi]), color=col[p], marker=MARKERS[k % len(MARKERS)], ms=5,
                    lw=1.4, ls=DASHES[(k // len(MARKERS)) % len(DASHES)], capsize=2, label=p)
    ax.axhline(1.0, color="0.3", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Model names along the bottom; names of nets of nearly the same size are stacked, not overprinted.
    level, prev = 0, None
    for m, mf in size.sort_values().items():
        level = level + 1 if prev is not None and mf / prev < NEAR_RATIO else 0
        ax.axvline(mf, color="0.85", lw=0.8, zorder=0)
        ax.annotate(m, xy=(mf, 0.02 + 0.045 * level), xycoords=("data", "axes fraction"), ha="center", fontsize=8,
                    color="0.2", bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
        prev = mf
    plain_log_ticks(ax.xaxis)
    plain_log_ticks(ax.yaxis)
    ax.set_xlabel("network size: MFLOP per image of the float network (log scale)")
    ax.set_ylabel("speedup vs eager (x, log scale); 1.0 = no change")
    ax.set_title(f"Speedup against network size, batch size {bs}")
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles, short_labels(pipes), loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.grid(alpha=0.3, which="both")
    footnote(ax, "\n".join(filter(None, [
        f"not drawn (valid on one model only): {_names(left)}" if left else "",
        f"{len(invalid)} invalid row(s) left out: {_names(sorted(set(invalid['pipeline'])))}" if len(invalid) else ""])))
    return Chart(save(fig, out / f"size_bs{bs}.png"), ax.get_title()), ""


def _names(names: list[str], most: int = 4) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")
