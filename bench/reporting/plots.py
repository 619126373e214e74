"""Inference charts (latency, accuracy-vs-speedup Pareto, throughput, memory, GFLOP/s) as PNGs, matplotlib Agg."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from bench.reporting.blocks import Chart
from bench.reporting.chartkit import (BAR_HEIGHT_IN, footnote, not_shown, plain_log_ticks, plt, save,
                            short_labels, slug, times_formatter, wants_log)
from bench.reporting.verdicts import BASELINE_PIPELINE, sort_by_speedup

# Pareto point numbers: offset from the point, line height and digit width of the 9 pt font, in points.
LABEL_DX_PT, LABEL_DY_PT, LABEL_LINE_PT, LABEL_CHAR_PT = 7.0, 5.0, 11.0, 6.0
MARKER_PT = 8.0            # diameter of a point (scatter s=60 is 60 pt^2)
MAX_LABEL_LINES_AWAY = 12  # how far a number may be pushed from its point before it gives up
FOCUS_POINTS = 10.0   # accuracy (percentage points) below eager's that the Pareto y-axis still shows


# --- latency per pipeline, one chart per model and batch size ------------------------------------

def latency(df: pd.DataFrame, model: str, bs: int, out: Path, col: dict) -> Chart | None:
    """Each pipeline's median latency beside the eager baseline timed in the same cell (its own paired
    window, `baseline_ms_p50`), labelled with the cell's speedup: the two bars of a pair and their ratio
    come from the same window. Cells of one chart were timed at different moments, so bars of different
    pipelines are not compared with each other, and no eager line from another window is drawn."""
    g = df[(df["model"] == model) & (df["batch_size"] == bs) & (df["scenario"] == "inference")]
    ok = sort_by_speedup(g[(g["status"] == "ok") & g["latency_ms_p50"].notna()]).iloc[::-1]  # fastest on top
    if not len(ok):
        return None
    labels = short_labels(list(ok["pipeline"]))
    y = np.arange(len(ok))
    p50 = ok["latency_ms_p50"].to_numpy(float)
    base = ok["baseline_ms_p50"].to_numpy(float) if "baseline_ms_p50" in ok else np.full(len(ok), np.nan)
    lo = np.clip(p50 - ok["latency_ms_ci_low"].fillna(ok["latency_ms_p50"]).to_numpy(float), 0, None)
    hi = np.clip(ok["latency_ms_ci_high"].fillna(ok["latency_ms_p50"]).to_numpy(float) - p50, 0, None)
    lines = 1 + max(l.count("\n") for l in labels) * 0.5
    fig, ax = plt.subplots(figsize=(9, 1.6 + BAR_HEIGHT_IN * len(ok) * max(1.6, lines)))
    h = 0.36
    bars = ax.barh(y + h / 2, p50, color=[col[p] for p in ok["pipeline"]], alpha=0.85, height=h,
                   xerr=np.vstack([lo, hi]), error_kw={"ecolor": "0.2", "capsize": 3, "lw": 1},
                   label="pipeline, median (95% CI)")
    has_base = np.isfinite(base)
    if has_base.any():
        # outlined, not filled: no pipeline's colour (tab20 has greys) can be taken for its baseline
        ax.barh((y - h / 2)[has_base], base[has_base], facecolor="none", edgecolor="0.3", lw=0.9, height=h,
                label="eager timed beside it in the same cell")
    # A row marked invalid keeps its bar (what was measured) but is drawn faded and hatched, and its
    # speedup says so: its baseline was disturbed, so the ratio is not a verdict.
    invalid = (ok["valid"] == False).fillna(False).to_numpy(bool) if "valid" in ok else np.zeros(len(ok), bool)  # noqa: E712
    for bar, bad in zip(bars, invalid):
        if bad:
            bar.set_alpha(0.35)
            bar.set_hatch("//")
    p99 = ok["latency_ms_p99"].to_numpy(float)
    if np.isfinite(p99).any():
        ax.plot(p99, y + h / 2, "|", color="crimson", ms=9, mew=2, label="pipeline p99")
    notes = ["each pair was timed in its own cell at its own moment: compare a bar with the outlined eager bar "
             "below it, not with other pipelines' bars"]
    if not has_base.all():
        notes.append("no in-cell eager baseline for: " + ", ".join(ok.loc[~has_base, "pipeline"])[:100])
    notes.append(not_shown(g))
    every = np.concatenate([p50, p99[np.isfinite(p99)], p50 + hi, base[has_base]])
    if wants_log(every):
        ax.set_xscale("log")
    ax.set_xlim(0 if ax.get_xscale() == "linear" else None,
                np.nanmax(every) * (1.45 if ax.get_xscale() == "linear" else 4))
    if ax.get_xscale() == "log":
        plain_log_ticks(ax.xaxis)
    for yi, v, end, b, sp, p, bad in zip(y, p50, np.fmax(p50 + hi, p99), base, ok["speedup"], ok["pipeline"], invalid):
        txt = f"{v:.3g} ms" + (f"  {sp:.2f}x" if np.isfinite(sp) else "")
        txt += "  (eager against itself)" if p == BASELINE_PIPELINE else ""
        txt += "  invalid (no verdict)" if bad else ""
        # right of the bar's error bar and p99 mark, so neither covers the figures
        ax.annotate(txt, xy=(end, yi + h / 2), xytext=(6, 0), textcoords="offset points", fontsize=8, va="center")
        if np.isfinite(b):
            ax.annotate(f"{b:.3g} ms", xy=(b, yi - h / 2), xytext=(4, 0), textcoords="offset points", fontsize=7,
                        va="center", color="0.35")
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_xlabel("latency per batch (ms)" + (", log scale" if ax.get_xscale() == "log" else "")
                  + "; label: speedup of the pair")
    ax.set_title(f"{model}, batch size {bs}: each pipeline against eager timed in the same cell "
                 f"(highest speedup on top)", fontsize=10)
    handles, names = ax.get_legend_handles_labels()
    from matplotlib.patches import Patch
    handles = [Patch(facecolor="0.55", alpha=0.85) if n.startswith("pipeline, median") else hnd
               for hnd, n in zip(handles, names)]  # the first bar's colour would stand for all of them
    ax.legend(handles, [n.replace("(95% CI)", "(95% CI), its own colour") for n in names], loc="upper left",
              bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    footnote(ax, "\n".join(filter(None, notes)))
    return Chart(save(fig, out / f"latency_{slug(model)}_bs{bs}.png"), ax.get_title())


# --- accuracy against speedup, with the Pareto front --------------------------------------------

def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both speedup and accuracy (ties kept), by speedup."""
    idx = []
    for i, (x, yv) in enumerate(points):
        dominated = any((x2 >= x and y2 >= yv) and (x2 > x or y2 > yv) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            idx.append(i)
    return sorted(idx, key=lambda i: points[i][0])


def _place_label(px: float, py: float, w: float, boxes: list[tuple[float, float, float, float]],
                 w_pt: float, h_pt: float) -> tuple[float, float]:
    """Offset (points) for a number of width w beside the point at (px, py) in axes points: the
    nearest slot, right then left of the point, up then down, that overlaps no box already taken
    (numbers and markers) and stays inside the axes; the first slot above if none does."""
    def free(x: float, y: float) -> bool:
        return all(not (x < bx + bw and bx < x + w and y < by + bh and by < y + LABEL_LINE_PT)
                   for bx, by, bw, bh in boxes)

    for k in range(MAX_LABEL_LINES_AWAY):
        for dx in (LABEL_DX_PT, -LABEL_DX_PT - w):
            for dy in (LABEL_DY_PT + LABEL_LINE_PT * k, -LABEL_DY_PT - LABEL_LINE_PT * (k + 1)):
                x, y = px + dx, py + dy
                if 0 <= x and x + w <= w_pt and 0 <= y and y + LABEL_LINE_PT <= h_pt and free(x, y):
                    return dx, dy
    return LABEL_DX_PT, LABEL_DY_PT


def pareto(df: pd.DataFrame, model: str, out: Path, col: dict) -> tuple[Chart | None, str]:
    g = df[(df["model"] == model) & (df["scenario"] == "inference") & (df["status"] == "ok")]
    g = g[g["speedup"].notna() & g["accuracy"].notna() & (g["speedup"] > 0)]
    if not len(g):
        return None, (f"{model}: no accuracy-vs-speedup chart: no ok row has both a speedup and an accuracy "
                      f"(unlabelled data or no baseline)")
    bss = sorted(g["batch_size"].unique())
    ncol = min(len(bss), 2)
    nrow = math.ceil(len(bss) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.2 * ncol, 4.6 * nrow), squeeze=False, sharey=True)
    for ax in axes.flat[len(bss):]:
        ax.set_visible(False)
    key = {p: i + 1 for i, p in enumerate(sort_by_speedup(g).drop_duplicates("pipeline")["pipeline"])}
    ys = g["accuracy"] * 100
    # One broken pipeline (a pruned net left at 19%) would squash every useful point into one line:
    # the axis reaches FOCUS_POINTS below eager's accuracy and no lower; points under that sit on
    # its floor as downward triangles labelled with their true accuracy.
    base = g["baseline_accuracy"].dropna() * 100
    ref = base.median() if len(base) else ys.max()
    floor = max(ys.min(), min(ref, ys.max()) - FOCUS_POINTS)
    pad = max(1.0, (ys.max() - floor) * 0.15)
    y_lim = (floor - pad, ys.max() + pad)  # room above the best rows for their numbers; no tick above 100%
    for ax, bs in zip(axes.flat, bss):
        h = g[g["batch_size"] == bs]
        # eager sits at 1x by definition; its measured value is eager against itself (noise)
        pts = list(zip(h["speedup"].where(h["pipeline"] != BASELINE_PIPELINE, 1.0), h["accuracy"] * 100))
        front = pareto_front(pts)
        shown = [(x, max(yv, y_lim[0])) for x, yv in pts]  # where each point is drawn: on the floor if below
        for (x, yv), (_, y_shown), p in zip(pts, shown, h["pipeline"]):
            below = yv < y_lim[0]
            ax.scatter(x, y_shown, s=60, color=col[p], edgecolor="black", lw=0.5, zorder=3, label=p,
                       marker="v" if below else "o", clip_on=False)
            if below:
                ax.annotate(f"{yv:.1f}%", xy=(x, y_shown), xytext=(-7, 5), textcoords="offset points",
                            fontsize=8, ha="right", color="0.3")
        fx, fy = [shown[i][0] for i in front], [shown[i][1] for i in front]
        ax.step(fx, fy, where="post", color="0.55", lw=5, alpha=0.35, zorder=2, solid_capstyle="round")
        ax.scatter(fx, fy, s=190, facecolor="none", edgecolor="0.35", lw=1.4, zorder=4,
                   label="Pareto front (not beaten on both axes)")
        ax.set_xscale("log")
        xs = [x for x, _ in pts]
        lo_x, hi_x = min(xs + [1.0]) / 1.6, max(xs + [1.0]) * 1.6
        ax.set_xlim(lo_x, hi_x)
        if hi_x / lo_x < 16:  # powers of two alone would leave one or two ticks
            ax.set_xticks([t for t in (0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10) if lo_x <= t <= hi_x])
        else:
            ax.xaxis.set_major_locator(LogLocator(base=2))
        ax.xaxis.set_major_formatter(FuncFormatter(times_formatter))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.axvline(1.0, color="0.5", ls=":", lw=1)
        ax.set_ylim(*y_lim)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: "" if v > 100 + 1e-9 else f"{v:g}"))
        # Full pipeline names beside points collide; each point carries its pipeline's number from
        # the legend instead (bold on the front), which stays legible however long the names are.
        # Each number goes to the nearest free slot beside its point (boxes in points, widths
        # estimated from the digit count), so crowded clusters stay legible.
        w_pt, h_pt = ax.bbox.width * 72 / fig.dpi, ax.bbox.height * 72 / fig.dpi
        xy_pt = [(math.log(x / lo_x) / math.log(hi_x / lo_x) * w_pt,
                  (yv - y_lim[0]) / (y_lim[1] - y_lim[0]) * h_pt) for x, yv in shown]
        r = MARKER_PT / 2
        boxes = [(mx - r, my - r, 2 * r, 2 * r) for mx, my in xy_pt]  # numbers keep off the markers too
        for i, ((x, yv), p, (mx, my)) in enumerate(zip(shown, h["pipeline"], xy_pt)):
            w = LABEL_CHAR_PT * len(str(key[p])) + 4  # a little air between neighbours
            dx, dy = _place_label(mx, my, w, boxes, w_pt, h_pt)
            boxes.append((mx + dx, my + dy, w, LABEL_LINE_PT))
            # A number more than a line away from its point gets a thin leader line to it.
            far = abs(dy) > LABEL_DY_PT + LABEL_LINE_PT
            ax.annotate(str(key[p]), xy=(x, yv), xytext=(dx, dy), textcoords="offset points",
                        fontsize=9, fontweight="bold" if i in front else "normal", color="0.1", va="bottom",
                        arrowprops=dict(arrowstyle="-", lw=0.5, color="0.6", shrinkA=0, shrinkB=4) if far else None)
        ax.set_title(f"batch size {bs}", fontsize=10)
        ax.set_xlabel("speedup vs eager (x, log scale; right is faster)")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    handles, labels = {}, {}
    for ax in axes.flat:
        for hnd, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, hnd)
    handles = dict(sorted(handles.items(), key=lambda kv: key.get(kv[0], len(key) + 1)))
    pipes = [n for n in handles if n in col]
    named = {p: f"{key[p]}: {lab}" for p, lab in zip(pipes, short_labels(pipes))}
    fig.legend(list(handles.values()), [named.get(n, n) for n in handles], loc="upper center",
               bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(f"{model}: accuracy against speedup (up and right is better)", fontsize=12)
    fig.tight_layout()
    return Chart(save(fig, out / f"pareto_{slug(model)}.png"), f"{model}: accuracy against speedup"), ""


# --- throughput against batch size ----------------------------------------------------------------

def throughput(df: pd.DataFrame, model: str, out: Path, col: dict) -> Chart | None:
    g = df[(df["model"] == model) & (df["scenario"] == "inference") & (df["status"] == "ok")]
    g = g[g["throughput_sps"].notna()]
    if not len(g):
        return None
    fig, ax = plt.subplots(figsize=(9, 5))
    order = sort_by_speedup(g).drop_duplicates("pipeline")["pipeline"]
    for p in order:
        h = g[g["pipeline"] == p].sort_values("batch_size")
        ax.plot(h["batch_size"], h["throughput_sps"], marker="o", color=col[p], label=p,
                lw=2.2 if p == BASELINE_PIPELINE else 1.5, ls="--" if p == BASELINE_PIPELINE else "-")
    bss = sorted(g["batch_size"].unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(bss, [str(b) for b in bss])
    ax.xaxis.set_minor_formatter(NullFormatter())
    if len(bss) == 1:
        ax.set_xlim(bss[0] / 2, bss[0] * 2)
    if wants_log(g["throughput_sps"]):
        ax.set_yscale("log")
        ax.set_ylim(g["throughput_sps"].min() / 1.5, g["throughput_sps"].max() * 1.5)
        plain_log_ticks(ax.yaxis)
    else:
        ax.set_ylim(0, g["throughput_sps"].max() * 1.1)
    ax.set_xlabel("batch size (log scale)")
    ax.set_ylabel("throughput (samples/s)" + (", log scale" if ax.get_yscale() == "log" else ""))
    ax.set_title(f"{model}: throughput against batch size")
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles, short_labels(list(order)), loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.grid(alpha=0.3, which="both")
    footnote(ax, not_shown(df[(df["model"] == model) & (df["scenario"] == "inference")]))
    return Chart(save(fig, out / f"throughput_{slug(model)}.png"), ax.get_title())


# --- peak memory per pipeline ----------------------------------------------------------------------

def memory(df: pd.DataFrame, model: str, out: Path, col: dict) -> Chart | None:
    g = df[(df["model"] == model) & (df["scenario"] == "inference") & (df["status"] == "ok")]
    g = g[g["peak_mem_mb"].notna()]
    if not len(g):
        return None
    pipes = list(sort_by_speedup(g).drop_duplicates("pipeline")["pipeline"])[::-1]
    bss = sorted(g["batch_size"].unique())
    labels = short_labels(pipes)
    lines = 1 + max(l.count("\n") for l in labels) * 0.5
    fig, ax = plt.subplots(figsize=(9, 1.6 + BAR_HEIGHT_IN * len(pipes) * max(1, len(bss) * 0.6) * lines))
    width = 0.8 / len(bss)
    shades = plt.get_cmap("viridis")(np.linspace(0.15, 0.85, len(bss)))
    for k, bs in enumerate(bss):
        h = g[g["batch_size"] == bs].set_index("pipeline")
        vals = [h["peak_mem_mb"].get(p, np.nan) for p in pipes]
        ax.barh(np.arange(len(pipes)) + ((len(bss) - 1) / 2 - k) * width, vals, height=width,  # smallest on top
                color=shades[k], label=f"batch {bs}")
    ax.set_yticks(np.arange(len(pipes)), labels, fontsize=9)
    ax.set_xlabel("peak memory during inference calls (MiB above the process at cell start)")
    ax.set_title(f"{model}: peak memory per pipeline")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False, title="batch size")
    ax.grid(axis="x", alpha=0.3)
    footnote(ax, not_shown(df[(df["model"] == model) & (df["scenario"] == "inference")]))
    return Chart(save(fig, out / f"memory_{slug(model)}.png"), ax.get_title())


# --- achieved GFLOP/s against the machine's measured peak ------------------------------------------

def gflops(df: pd.DataFrame, model: str, out: Path, col: dict) -> tuple[Chart | None, str]:
    g = df[(df["model"] == model) & (df["scenario"] == "inference") & (df["status"] == "ok")]
    g = g[g["gflops_achieved"].notna() & g["flops"].notna() & (g["gflops_achieved"] > 0) & (g["flops"] > 0)]
    if not len(g):
        return None, f"{model}: no GFLOP/s chart: no ok row has FLOPs and achieved GFLOP/s"
    fig, ax = plt.subplots(figsize=(9, 5))
    markers = dict(zip(sorted(g["batch_size"].unique()), "osD^vP*X"))
    for p, h in g.groupby("pipeline", sort=True):
        for bs, r in h.groupby("batch_size"):
            ax.scatter(r["flops"] / 1e6, r["gflops_achieved"], color=col[p], marker=markers.get(bs, "o"), s=55,
                       edgecolor="black", lw=0.5, zorder=3)
    peak = g["peak_gflops"].dropna()
    ax.set_xscale("log")
    ax.set_yscale("log")
    if len(peak):
        ax.axhline(peak.iloc[0], color="crimson", ls="--", lw=1.2)
        ax.annotate(f"measured matmul peak {peak.iloc[0]:.3g} GFLOP/s", xy=(0.01, peak.iloc[0]),
                    xycoords=("axes fraction", "data"), xytext=(0, 4), textcoords="offset points", color="crimson",
                    fontsize=8)
    top = max(g["gflops_achieved"].max(), peak.max() if len(peak) else 0)
    ax.set_ylim(g["gflops_achieved"].min() / 3, top * 2.5)
    fx = g["flops"] / 1e6
    ax.set_xlim(fx.min() / 2.5, fx.max() * 2.5)
    plain_log_ticks(ax.xaxis)
    plain_log_ticks(ax.yaxis)
    ax.set_xlabel("work per call (MFLOP per batch, log scale)")
    ax.set_ylabel("achieved GFLOP/s (log scale)")
    ax.set_title(f"{model}: achieved GFLOP/s against the machine's measured peak")
    from matplotlib.lines import Line2D
    hp = [Line2D([], [], ls="", marker="o", color=col[p], mec="black", mew=0.5) for p in sorted(g["pipeline"].unique())]
    hb = [Line2D([], [], ls="", marker=m, color="0.6", mec="black", mew=0.5) for m in markers.values()]
    ax.legend(hp + hb, short_labels(sorted(g["pipeline"].unique())) + [f"batch {b}" for b in markers],
              loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.grid(alpha=0.3, which="both")
    above = len(peak) and (g["gflops_achieved"] > peak.max()).any()
    ran = df[(df["model"] == model) & (df["scenario"] == "inference") & (df["status"] == "ok")]
    no_flops = sorted(set(ran["pipeline"]) - set(g["pipeline"]))
    footnote(ax, "\n".join(filter(None, [
        "points above the peak line: the peak is one matmul measured at run start, low on a busy machine"
        if above else "", f"no FLOP count for: {', '.join(no_flops)[:100]}" if no_flops else "",
        not_shown(df[(df["model"] == model) & (df["scenario"] == "inference")])])))
    return Chart(save(fig, out / f"gflops_{slug(model)}.png"), ax.get_title()), ""
