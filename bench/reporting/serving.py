"""The report's serving part: per model, each scenario's LoadGen figures, the Server latency-vs-rate chart and the verdicts by scenario."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.records.columns import SERVING_SCENARIOS
from bench.records.read import records
from bench.reporting.blocks import Block, Chart, Note, Section, Table
from bench.reporting.chartkit import plain_log_ticks, plt, save
from bench.reporting.verdicts import BASELINE_PIPELINE, as_float

HEADERS = ["Pipeline", "Rate (1/s)", "Eager rate (1/s)", "Speedup", "Verdict", "p50 (ms)", "p99 (ms)",
           "Eager p99 (ms)", "LoadGen", "Served = direct", "Logs"]
# What each scenario's rate counts (bench.serving.scenarios)
RATE_OF = {"single-stream": "queries/s, one sample each", "multi-stream": "queries/s of 8 samples",
           "server": "samples/s at the highest VALID arrival rate with p99 under the bound",
           "offline": "samples/s"}


def rows_of(df: pd.DataFrame) -> pd.DataFrame:
    """The serving rows of a run (empty when it served nothing)."""
    return df[df["scenario"].isin(SERVING_SCENARIOS)] if "scenario" in df else df.iloc[0:0]


def _f(v, spec: str = ".4g") -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(x) else format(x, spec)


def _true(v) -> bool:
    """A boolean cell (Python, numpy or pandas NA) is true."""
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and v is not pd.NA and bool(v)


def _flag(v) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return "yes" if bool(v) else "no"


def section(g: pd.DataFrame, model: str, out: Path, colours: dict) -> Section | None:
    """One model's serving section, or None when it has no serving rows."""
    s = rows_of(g)
    if not len(s):
        return None
    blocks: list[Block] = [Note(
        "Each row serves the pipeline and eager one after the other in the same worker under MLPerf LoadGen "
        "(eager, candidate, candidate, eager; Server: the two bisections' steps alternate), through the same "
        "batcher and threads. Speedup is the candidate's rate over eager's, one point estimate with no "
        "interval: read differences under ~10% as noise. 'Served = direct': LoadGen's accuracy pass gave the "
        "outputs of the same predictor called directly.")]
    if any(not _true(v) for v in s.get("loadgen_official", pd.Series(dtype=object)).dropna()):
        blocks.append(Note("These runs use LoadGen test overrides (short minimum durations): they are not "
                           "MLPerf-compliant; --loadgen-official applies LoadGen's own rules."))
    for scenario in SERVING_SCENARIOS:
        h = s[s["scenario"] == scenario]
        if not len(h):
            continue
        ok = h[h["status"] == "ok"].sort_values("speedup", ascending=False, na_position="last")
        bound = ok["latency_bound_ms"].dropna().unique() if "latency_bound_ms" in ok else []
        title = f"{model}: {scenario} (rate: {RATE_OF[scenario]}" + (
            f"; p99 bound {', '.join(_f(b, '.3g') for b in bound)} ms" if len(bound) else "") + ")"
        table = [[r["pipeline"], _f(r.get("qps")), _f(r.get("baseline_qps")), _f(r.get("speedup"), ".2f") + "x",
                  r.get("speed_verdict", "") if _true(r.get("loadgen_valid")) else "invalid",
                  _f(r.get("latency_ms_p50"), ".3g"), _f(r.get("latency_ms_p99"), ".3g"),
                  _f(r.get("baseline_latency_ms_p99"), ".3g"),
                  "VALID" if _true(r.get("loadgen_valid")) else f"INVALID: {r.get('loadgen_reason', '')}",
                  _flag(r.get("served_outputs_equal")), f"[logs]({r.get('loadgen_log', '')})"]
                 for r in records(ok)]
        blocks.append(Section(title, [Table(HEADERS, table)] if table else
                              [Note("No pipeline was served (see the skipped and error rows).")], model))
    check = crosscheck_rows(g)
    unpaired = unpaired_threads(g) if not check else ""
    if unpaired:
        blocks.append(Note(unpaired))
    if check:
        blocks.append(Section(f"{model}: single-stream p90 against the paired-block p90 at batch 1", [
            Note("Two independent measurements of the same predictor: LoadGen's single-stream p90 (issue to "
                 "completion) and the inference cell's p90 (direct calls on one batch, timed in paired blocks). "
                 "The difference is what serving adds per query. LoadGen's own time is measured too: the same "
                 "run with a predictor that returns its output at once; the next ratio takes it out. The last "
                 "two columns split the rest: the predictor's own calls, timed by the system under test inside "
                 "the LoadGen run, against the paired-block p90 (above 1: the predictor itself ran slower "
                 "served, one fresh sample per query, its threads woken for each). Percentiles do not add: "
                 "read the split as approximate."),
            Table(["Pipeline", "Single-stream p90 (ms)", "Paired-block p90 (ms)", "Ratio", "Difference (ms)",
                   "LoadGen's own p90 (ms)", "Ratio without it", "Served call p90 (ms)",
                   "Served call / paired"], check)], model))
    for chart in (server_chart(s, model, out, colours), verdict_chart(s, model, out, colours)):
        if chart is not None:
            blocks.append(chart)
    return Section(f"{model}: serving scenarios (MLPerf LoadGen)", blocks, model)


def _crosscheck_sides(g: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ok inference rows at batch 1 and the ok single-stream rows: the two sides of the cross-check."""
    ok = g[g["status"] == "ok"]
    return ok[(ok["scenario"] == "inference") & (ok["batch_size"] == 1)], ok[ok["scenario"] == "single-stream"]


def unpaired_threads(g: pd.DataFrame) -> str:
    """Why the single-stream cross-check is missing although the run has single-stream rows and inference
    rows at batch 1: they ran at different thread counts (serving cells default to the usable cores
    less one, inference cells to torch's choice), so no pair measures the same predictor. "" otherwise."""
    inf, ss = _crosscheck_sides(g)
    if not len(inf) or not len(ss):
        return ""
    ours = sorted({int(t) for t in ss["threads"].dropna()})
    theirs = sorted({int(t) for t in inf["threads"].dropna()})
    if not ours or set(ours) & set(theirs):
        return ""
    return (f"No single-stream cross-check: the single-stream cells ran at {', '.join(map(str, ours))} "
            f"thread(s) and the inference cells at batch 1 at {', '.join(map(str, theirs)) or 'torch default'}, "
            f"so no pair times the same predictor; run both with --threads {ours[0]} to get it.")


def crosscheck_rows(g: pd.DataFrame) -> list[list[str]]:
    """Per pipeline with both an ok single-stream row and an ok inference row at batch 1 (same threads):
    LoadGen's p90, the paired-block p90, their ratio and difference, LoadGen's own time, and the
    predictor's own calls timed inside the LoadGen run."""
    out = []
    inf, ss = _crosscheck_sides(g)
    for r in records(ss):
        m = inf[(inf["pipeline"] == r["pipeline"]) & (inf["threads"] == r["threads"])]
        if not len(m):
            continue
        served, direct = float(r["latency_ms_p90"]), float(m["latency_ms_p90"].iloc[0])
        if math.isnan(served) or math.isnan(direct) or direct <= 0:
            continue
        own, call = as_float(r.get("loadgen_own_ms_p90")), as_float(r.get("served_call_ms_p90"))
        out.append([r["pipeline"], f"{served:.3g}", f"{direct:.3g}", f"{served / direct:.2f}",
                    f"{served - direct:+.3g}", _f(own, ".3g"),
                    "" if math.isnan(own) else f"{(served - own) / direct:.2f}", _f(call, ".3g"),
                    "" if math.isnan(call) else f"{call / direct:.2f}"])
    return out


def server_chart(s: pd.DataFrame, model: str, out: Path, colours: dict) -> Chart | None:
    """p99 latency against achieved rate for every Server bisection step of each pipeline (and of the
    eager baseline served beside it), the latency bound drawn: where each pipeline's curve crosses it."""
    h = s[(s["scenario"] == "server") & (s["status"] == "ok")]
    pts = []
    for r in records(h):
        fig = r.get("figures") or {}
        for key, name in (("serving.server_steps", r["pipeline"]), ("serving.baseline_server_steps", None)):
            for step in fig.get(key, []) or []:
                pts.append((name or f"eager (beside {r['pipeline']})", name is None, step, r.get("latency_bound_ms")))
    if not pts:
        return None
    figure, ax = plt.subplots(figsize=(7.5, 4.6))
    for name in dict.fromkeys(p[0] for p in pts):
        mine = sorted((p for p in pts if p[0] == name), key=lambda p: p[2]["target_qps"])
        eager = mine[0][1]
        colour = "0.6" if eager else colours.get(name, "C0")
        ax.plot([p[2]["qps"] for p in mine], [p[2]["latency_ms_p99"] for p in mine], "-" if not eager else ":",
                color=colour, lw=1.2 if eager else 1.8, label=None if eager else name, zorder=2)
        for p in mine:
            ax.scatter(p[2]["qps"], p[2]["latency_ms_p99"], color=colour, edgecolor="black", lw=0.4, zorder=3,
                       marker="o" if p[2]["valid"] else "x", s=30 if not eager else 15)
    bounds = {float(p[3]) for p in pts if p[3] is not None and not math.isnan(float(p[3]))}
    for b in bounds:
        ax.axhline(b, color="firebrick", lw=1, ls="--", label=f"p99 bound {b:.3g} ms")
    ax.set_yscale("log")
    plain_log_ticks(ax.yaxis)
    ax.set_xlabel("achieved rate (samples/s)")
    ax.set_ylabel("p99 latency (ms, LoadGen)")
    ax.set_title(f"{model}, server: p99 against rate (o VALID, x INVALID; dotted grey: eager beside each)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    path = save(figure, out / f"{_safe(model)}-server-latency-vs-rate.png")
    return Chart(path, f"{model}: Server p99 latency against achieved rate, each bisection step")


def verdict_chart(s: pd.DataFrame, model: str, out: Path, colours: dict) -> Chart | None:
    """Speedup over eager of each pipeline in each scenario served: where a verdict flips."""
    h = s[(s["status"] == "ok") & (s["pipeline"] != BASELINE_PIPELINE)]
    h = h[h["speedup"].notna()]
    scenarios = [x for x in SERVING_SCENARIOS if (h["scenario"] == x).any()]
    if not len(h) or not scenarios:
        return None
    pipes = list(dict.fromkeys(h["pipeline"]))
    figure, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(scenarios) + 2), 4.2))
    width = 0.8 / len(pipes)
    for i, p in enumerate(pipes):
        for j, scen in enumerate(scenarios):
            r = h[(h["pipeline"] == p) & (h["scenario"] == scen)]
            if not len(r):
                continue
            v = float(r["speedup"].iloc[0])
            valid = _true(r["loadgen_valid"].iloc[0])
            ax.bar(j + (i - (len(pipes) - 1) / 2) * width, v, width, color=colours.get(p, "C0"),
                   hatch=None if valid else "//", alpha=1.0 if valid else 0.4, label=p if j == 0 else None,
                   edgecolor="black", lw=0.4)
    ax.axhline(1.0, color="black", lw=1)
    ax.set_xticks(range(len(scenarios)), scenarios)
    ax.set_ylabel("speedup over eager (rate ratio)")
    ax.set_yscale("log")
    plain_log_ticks(ax.yaxis)
    ax.set_title(f"{model}: speedup by serving scenario (hatched: a side INVALID)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    path = save(figure, out / f"{_safe(model)}-serving-speedups.png")
    return Chart(path, f"{model}: speedup over eager in each serving scenario")


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(name).name)
