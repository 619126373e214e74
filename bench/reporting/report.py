"""`accelbench report`: a run's rows -> report.md, report.html and charts/*.png, each written atomically."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import pandas as pd

from bench.records import read
from bench.records.read import records
from bench.records.columns import cell_key
from bench.records.outfiles import real_folder
from bench.records.write import atomic_write, ensure_writable, staged
from bench.reporting import chartkit
from bench.reporting import explain
from bench.reporting import firstscreen
from bench.reporting import html
from bench.reporting import plots
from bench.reporting import plots_size
from bench.reporting import plots_training
from bench.reporting import scale
from bench.reporting import serving
from bench.reporting.blocks import Block, Bullets, Chart, Note, Paragraph, Section, Table
from bench.reporting.verdicts import (ACCURACY_ALPHA, ACCURACY_TOLERANCE_POINTS, AGREEMENT_SLACK_POINTS,
                                      BASELINE_PIPELINE, NEAR_CHANCE_MULTIPLE, SPEEDUP_MARGIN, accuracy_verdict,
                                      as_float, best_per_cell, prepare, speedup_order)
from bench.running.validity import BASELINE_DEPARTURE, MAX_HALFWIDTH

DASH = "–"


def write(source: Path, out: Path | None = None) -> list[Path]:
    """Read a results folder, records.csv or pytest-benchmark JSON; write the report next to it (or in
    `out`). Returns the files written: report.md, report.html, then the charts."""
    source = Path(source)
    df, env = read.load(source)
    out = Path(out) if out is not None else (source if source.is_dir() else source.parent)
    ensure_writable(out)
    charts_dir = real_folder(out / "charts")
    # Charts are drawn into a staging folder and moved into charts/ only once both pages have rendered:
    # a failure part-way leaves the previous report, charts included, as it was.
    staging = Path(tempfile.mkdtemp(prefix=".charts-", dir=out))
    pages: list[Path] = []   # staged page files not yet renamed into place
    try:
        df, collapsed = scale.collapse_duplicates(df)
        df = prepare(df)
        charts = Charts(df, staging)
        charts.explained = explain.records_for_report(source)
        doc = build(df, env, source, charts, collapsed)
        title = f"accelbench report {run_id(df, env)}".strip()
        del df, charts   # the pages need only the document: a large run's rows are freed before rendering
        # Each page is staged to a file as soon as it is rendered and freed (a 100 000-row run's pages
        # are tens of MB of text each); both are renamed into place only when both were written.
        pages.append(staged(out / "report.md", html.markdown(doc, _linked_from(staging))))
        pages.append(staged(out / "report.html", html.page(doc, title)))
        drawn = _drawn(doc)
        for p in drawn:
            os.replace(p, charts_dir / p.name)
        for tmp, name in zip(pages, ("report.md", "report.html")):
            os.replace(tmp, out / name)
        pages = []
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for tmp in pages:
            tmp.unlink(missing_ok=True)
    written = [charts_dir / p.name for p in drawn]
    for stale in charts_dir.glob("*.png"):  # charts of models no longer in this run would mislead
        if stale not in written:
            stale.unlink(missing_ok=True)
    return [out / "report.md", out / "report.html"] + written


def _linked_from(staging: Path) -> Callable[[Path], Path]:
    """Where the pages link a chart drawn under `staging`: the same place under charts/, beside report.md."""
    return lambda p: Path("charts") / p.relative_to(staging)


def _drawn(doc: Section) -> list[Path]:
    """The chart files a document shows, once each (one chart may sit under several tables)."""
    return list(dict.fromkeys(c.path for c in doc.charts()))


class Charts:
    """Draws the charts a section asks for into one folder, and keeps a note of each chart it could not draw."""

    def __init__(self, df: pd.DataFrame, out: Path) -> None:
        self.out = out
        self.colours = chartkit.colours(sorted(df["pipeline"].unique()))
        self.notes: list[str] = []
        settings = sorted(df.loc[df["scenario"] == "inference", "threads"].unique())
        if len(settings) > 1:
            # One chart holds one row per pipeline: draw the charts for one thread setting (the largest);
            # the tables below cover every setting.
            shown = settings[-1]
            self.notes.append(f"Inference charts show the {shown}-thread cells only; the tables cover threads "
                              f"{', '.join(str(s) for s in settings)}.")
            df = df[(df["scenario"] != "inference") | (df["threads"] == shown)]
        self.rows, capped = scale.charted_rows(df)  # the rows charts are drawn from
        self.notes += capped
        self.explained: dict[tuple, dict] = {}   # the run's explain.jsonl records, by cell (bench.reporting.explain)

    def draw(self, plot: Callable, *args) -> list[Chart]:
        """`plot(rows, *args, folder, colours)`: its chart (none or one), its note kept for the end of the report."""
        result = plot(self.rows, *args, self.out, self.colours)
        chart, note = result if isinstance(result, tuple) else (result, "")
        if note:
            self.notes.append(note)
        return [chart] if chart is not None else []


def models_in(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["model"]))


def run_id(df: pd.DataFrame, env: dict) -> str:
    ids = [i for i in df["run_id"].unique() if i]
    return str(env.get("run_id") or (ids[0] if len(ids) == 1 else ", ".join(ids[:3])))


# --- formatting -----------------------------------------------------------------------------------

def fmt(v, spec: str = ".3g", scale: float = 1.0) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return DASH
    if math.isnan(f):
        return DASH
    if spec.endswith("g") and abs(f * scale) >= 1000:  # 1,150 rather than 1.15e+03
        return f"{f * scale:,.0f}"
    return format(f * scale, spec)


def fmt_rate(v) -> str:
    """Throughputs: whole numbers with thousands separators (13,010 reads faster than 1.301e+04)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return DASH
    return DASH if math.isnan(f) else f"{f:,.0f}" if abs(f) >= 100 else f"{f:.3g}"


def fmt_speedup(r) -> str:
    if math.isnan(r["speedup"]):
        return DASH
    ci = (f" [{r['speedup_ci_low']:.2f}–{r['speedup_ci_high']:.2f}]"
          if not (math.isnan(r["speedup_ci_low"]) or math.isnan(r["speedup_ci_high"])) else "")
    return f"{r['speedup']:.2f}{ci}"


def fmt_figures(figures: dict) -> str:
    items = []
    for k, v in sorted(figures.items()):
        items.append(f"{k}={fmt(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v}")
    return "; ".join(items) or DASH


def device(r) -> str:
    d = r["device"] or DASH
    return f"{d} ({r['providers'].replace(';', ', ')})" if r["providers"] else d


# --- the blocks -----------------------------------------------------------------------------------

INFERENCE_HEADERS = ["Pipeline", "Speedup vs eager (x) [95% CI]", "Speed verdict", "Latency p50 (ms)",
                     "Latency p99 (ms)", "Throughput (samples/s)", "Peak memory (MiB)", "Accuracy (%)",
                     "Accuracy Δ (points)", "Accuracy verdict", "Top-1 agreement (%)", "Max |logit diff|",
                     "Model size (KiB)", "Setup (s)", "Device", "Figures", "Notes"]
TRAINING_HEADERS = ["Strategy", "Batch size", "Step p50 (ms)", "Throughput (samples/s)", "Peak memory (MiB)",
                    "Final accuracy (%)", "Spread over seeds (points)", "Δ vs plain (points)", "Accuracy verdict",
                    "Time to target (s)", "Target (%)", "Equivalence max |Δw|", "Seeds", "Figures"]
NOT_RUN_HEADERS = ["Pipeline", "Scenario", "Batch sizes", "Status", "Reason"]


def inference_rows(g: pd.DataFrame | list[dict]) -> list[list[str]]:
    return [[r["pipeline"], fmt_speedup(r), r["speed_verdict"], fmt(r["latency_ms_p50"]), fmt(r["latency_ms_p99"]),
             fmt_rate(r["throughput_sps"]), fmt(r["peak_mem_mb"]), fmt(r["accuracy"], ".2f", 100),
             fmt(r["accuracy_delta"], "+.2f", 100), r["accuracy_verdict"], fmt(r["top1_agreement"], ".2f", 100),
             fmt(r["max_abs_diff"], ".2g"), fmt(r["model_bytes"], ".4g", 1 / 1024), fmt(r["setup_s"]), device(r),
             fmt_figures(r["figures"]), "; ".join(filter(None, [r.get("validity", ""), r.get("notes", "")])) or DASH]
            for r in speedup_order(records(g))]


def training_rows(g: pd.DataFrame) -> list[list[str]]:
    plain = g[g["pipeline"] == "plain"]
    rows = []
    order = g.assign(_t=g["time_to_target_s"].fillna(math.inf)).sort_values(["_t", "pipeline"], kind="stable")
    for r in records(order):
        ref = plain[plain["batch_size"] == r["batch_size"]]
        ref = ref if len(ref) else plain
        delta, verdict = math.nan, "n/a"
        if len(ref) and r["pipeline"] != "plain":
            delta = r["final_accuracy"] - ref["final_accuracy"].iloc[0]
            # Seeds move final accuracy too: "lost" only beyond the larger of the tolerance and either spread.
            spread_pts = max(0.0, *(x * 100 for x in (r["final_accuracy_spread"], ref["final_accuracy_spread"].iloc[0])
                                    if not math.isnan(x)))
            verdict = accuracy_verdict(delta, max(ACCURACY_TOLERANCE_POINTS, spread_pts))
        elif r["pipeline"] == "plain":
            verdict = "reference"
        rows.append([r["pipeline"], str(r["batch_size"]), fmt(r["step_ms_p50"]), fmt_rate(r["samples_per_s"]),
                     fmt(r["peak_mem_mb"]), fmt(r["final_accuracy"], ".2f", 100),
                     fmt(r["final_accuracy_spread"], ".2f", 100), fmt(delta, "+.2f", 100), verdict,
                     fmt(r["time_to_target_s"]) if not math.isnan(r["time_to_target_s"]) else "not reached",
                     fmt(r["target_accuracy"], "g", 100), fmt(r["equivalence_max_abs_diff"], ".2g"),
                     fmt(r["seeds"], ".0f"), fmt_figures(r["figures"])])
    return rows


GPU_CEILING_HEADERS = ["Model", "Pipeline", "Batch-1 latency p50 (ms)", "× launch floor", "Largest batch",
                       "Achieved GFLOP/s", "Matmul peak used (GFLOP/s)", "% of peak"]


def gpu_ceiling_rows(df: pd.DataFrame, env: dict) -> list[list[str]]:
    """CUDA rows against the ceilings measured at the run's start: batch-1 latency in launch
    floors, largest-batch arithmetic as a share of the matmul peak in the row's precision."""
    floor_ms = env.get("cuda_launch_floor_ms")
    ok = df[(df["status"] == "ok") & (df["scenario"] == "inference") & df["device"].fillna("").astype(str).str.startswith("cuda")]
    rows = []
    for (model, pipe), g in ok.groupby(["model", "pipeline"], sort=True):
        one = g[g["batch_size"] == 1]
        big = g.loc[g["batch_size"].idxmax()]
        lat = one["latency_ms_p50"].iloc[0] if len(one) else math.nan
        ratio = lat / floor_ms if floor_ms and not math.isnan(lat) else math.nan
        rows.append([model, pipe, fmt(lat), fmt(ratio), str(big["batch_size"]), fmt(big["gflops_achieved"], ".4g"),
                     fmt(big["peak_gflops"], ".4g"), fmt(big["peak_fraction"], ".1f", 100)])
    return rows


def not_run_rows(g: pd.DataFrame) -> list[list[str]]:
    bad = g[g["status"] != "ok"]
    rows = []
    for (p, sc, st, why), h in bad.groupby(["pipeline", "scenario", "status", "reason"], sort=True):
        rows.append([p, sc, ", ".join(str(b) for b in sorted(h["batch_size"].unique())), st, why or "(no reason given)"])
    return sorted(rows, key=lambda r: (r[3] != "error", r[0]))


def environment(env: dict, df: pd.DataFrame) -> list[list[str]]:
    cpu = env.get("cpu") if isinstance(env.get("cpu"), dict) else {}
    commit = env.get("commit") if isinstance(env.get("commit"), dict) else {}
    git = env.get("git_commit") or (f"{commit.get('id')}{'-dirty' if commit.get('dirty') else ''}"
                                   if commit.get("id") else None)
    cores = "/".join(str(env[k]) for k in ("cpu_cores_physical", "cpu_cores_logical", "cpu_affinity") if k in env)
    peak = env.get("matmul_peak_gflops")
    cuda_peaks = env.get("cuda_matmul_peak_gflops") if isinstance(env.get("cuda_matmul_peak_gflops"), dict) else {}
    if peak is None and df["peak_gflops"].notna().any():
        peak = df["peak_gflops"].dropna().iloc[0]
    providers = env.get("onnxruntime_providers")
    items = [
        ("Run id", run_id(df, env)),
        ("CPU model", env.get("cpu_model") or cpu.get("brand_raw")),
        ("CPU cores (physical/logical/usable)", cores or cpu.get("count")),
        ("torch threads", env.get("torch_threads")),
        ("C heap policy", env.get("malloc_policy")),
        ("Memory (GiB)", env.get("memory_gb")),
        ("Platform", env.get("platform") or " ".join(str(env[k]) for k in ("system", "release") if env.get(k)) or None),
        ("Python", env.get("python") or env.get("python_version")),
        ("torch", env.get("torch")),
        ("onnxruntime", (f"{env.get('onnxruntime')} (providers: {', '.join(providers)})" if providers
                         else env.get("onnxruntime"))),
        ("CUDA device", env.get("cuda_device") or ("none" if env.get("cuda_available") is False else None)),
        ("git commit", git),
        ("Command", env.get("command")),
        ("Measured matmul peak (GFLOP/s)", fmt(peak, ".4g") if peak is not None else None),
        ("Data", ", ".join(sorted(set(df["data"]) - {""})) or None),
    ]
    if cuda_peaks:  # only where the run had a GPU: a CPU report needs no row saying so twice
        items += [("Measured CUDA matmul peak (GFLOP/s)", ", ".join(f"{k} {fmt(v, '.4g')}" for k, v in cuda_peaks.items())),
                  ("Measured CUDA launch floor (µs)", fmt(env.get("cuda_launch_floor_ms"), ".3g", 1e3))]
    return [[k, str(v) if v not in (None, "") else "not recorded"] for k, v in items]


def model_provenance(g: pd.DataFrame) -> str:
    """Where the model's weights came from, the data, and how many test images each accuracy is on."""
    parts = []
    for col, label in (("weights", "Weights"), ("data", "Data")):
        if col in g:
            values = sorted({str(v) for v in g[col].dropna() if str(v)})
            if values:
                parts.append(f"{label}: {'; '.join(values)}.")
    if "eval_images" in g and g["eval_images"].notna().any():
        n = sorted({int(v) for v in g["eval_images"].dropna()})
        if "accuracy" not in g or g["accuracy"].isna().all():   # unlabelled data: outputs compared, no accuracy
            parts.append(f"Outputs compared with eager's on {', '.join(map(str, n))} test images; no labels, "
                         f"so no accuracy.")
            return " ".join(parts)
        parts.append(f"Accuracy on {', '.join(map(str, n))} test images"
                     + (" (top-5 in records.csv: top5_accuracy)." if "top5_accuracy" in g and
                        g["top5_accuracy"].notna().any() else "."))
    return " ".join(parts)


def build(df: pd.DataFrame, env: dict, source: Path, charts: Charts, collapsed: int = 0) -> Section:
    """The report of one run as a document: each section keeps the charts it asked `charts` to draw.
    `collapsed`: rows left out because a later row measured the same cell (scale.collapse_duplicates)."""
    counts = df["status"].value_counts()
    rid = run_id(df, env)
    again = (f" {collapsed} more row{'s' if collapsed != 1 else ''} measured a cell again: each cell is reported "
             f"once, from its latest row." if collapsed else "")
    doc: list[Block] = [Paragraph(
        f"Source: {source}. {len(df)} row{'s' if len(df) != 1 else ''}: {counts.get('ok', 0)} ok "
        f"({int((df['speed_verdict'] == 'invalid').sum())} of them marked invalid), {counts.get('mismatch', 0)} "
        f"mismatch, {counts.get('skipped', 0)} skipped, {counts.get('error', 0)} error.{again}")]
    best = best_per_cell(df)
    if best:
        doc.append(Section("Best pipeline per model and batch size", [
            Note("The fastest valid pipeline judged faster whose outputs are eager's (exact) or whose accuracy "
                 "was measured and kept (approximate); eager when none is; no result when nothing ran. When "
                 "speedup intervals overlap, the safer pipeline is named (exact before approximate, then less "
                 "set-up) and the runner-up is given. Rows marked invalid, that broke their fidelity promise, or "
                 "approximate ones without accuracy evidence (no labels, a baseline near chance, low top-1 "
                 "agreement with eager) are never named."),
            Table(BEST_HEADERS, [best_row(x) for x in best])]))
    doc += [Section("How to read the verdicts", [Bullets(how_to_read())]),
            Section("Environment", [Table(["Item", "Value"], environment(env, df))])]
    gpu = gpu_ceiling_rows(df, env)
    if gpu:
        doc.append(Section("GPU rows against this GPU's ceilings", [
            Note("Launch floor: median time of one empty kernel launch plus torch.cuda.synchronize, measured at "
                 "the run's start; a batch-1 row at 1× would be all launch overhead and no work. Matmul peak: "
                 "the best GFLOP/s of a large matmul in the row's precision (fp32 rows against TF32 while "
                 "cuDNN may use it, torch's default)."),
            Table(GPU_CEILING_HEADERS, gpu)]))
    by_model = dict(tuple(df.groupby("model", sort=False)))   # one pass, not a scan of every row per model
    doc += [model_section(by_model[model], model, charts) for model in models_in(df)]
    drawn = charts.rows.loc[charts.rows["scenario"] == "inference", "batch_size"].unique()
    size = [c for bs in scale.spread(list(drawn), scale.MAX_BATCH_CHARTS) for c in charts.draw(plots_size.speedup_by_size, bs)]
    if size:
        doc.append(Section("Speedup against network size", [
            Note("Each technique's speedup on each model at one batch size, against the model's size (MFLOP "
                 "per image of its float network as it ran here): which technique wins as the network grows."),
            *size]))
    scaling = charts.draw(plots_training.scaling) if (charts.rows["scenario"] == "training").any() else []
    if scaling:
        doc.append(Section("Training: data-parallel scaling", scaling))
    if charts.notes:
        doc.append(Section("Charts not drawn", [Bullets(charts.notes)]))
    # The answer first, on one screen; every table and chart behind it below, folded.
    doc = [doc[0], *firstscreen.sections(df, source, best), *map(firstscreen.folded, doc[1:])]
    return Section(f"accelbench report: run {rid}" if rid else "accelbench report", doc)


BEST_HEADERS = ["Model", "Batch size", "Threads", "Best pipeline", "Speedup vs eager (x) [95% CI]",
                "Latency p50 (ms)", "Eager accuracy (%)", "Accuracy Δ (points)", "Top-1 agreement with eager (%)",
                "Note"]


def best_row(x: dict) -> list[str]:
    """One line of the best table (an entry of verdicts.best_per_cell): the answer with its evidence
    (eager's accuracy, the accuracy change and top-1 agreement), and why, a tie, what was left out."""
    r = x["row"]
    cell = [x["model"], str(x["batch_size"]), str(x["threads"] or "default"), x["answer"]]
    note = [x["tie"]] if x["tie"] else [x["why"]] if x["why"] else []
    if x["weak_baseline"] and x["weak_baseline"] not in " ".join(note):
        note.append(f"accuracy verdicts withheld: {x['weak_baseline']}")
    note += [f"not named, {s}" for s in x["left_out"]]
    base = fmt(x["baseline_accuracy"], ".2f", 100)
    if r is None:
        return cell + [DASH, DASH, base, DASH, DASH, "; ".join(note) or DASH]
    return cell + [fmt_speedup(r), fmt(r["latency_ms_p50"]), base, fmt(r["accuracy_delta"], "+.2f", 100),
                   fmt(r["top1_agreement"], ".2f", 100), "; ".join(note) or DASH]


def how_to_read() -> list[str]:
    """What each verdict means, with the thresholds the verdicts and the validity checks use."""
    return [
        f"faster: the whole 95% bootstrap interval of the speedup is above {1 + SPEEDUP_MARGIN:.2f}x; slower: "
        f"the whole interval is below {1 / (1 + SPEEDUP_MARGIN):.3f}x; no gain: anything in between (noise or "
        f"a gain under {SPEEDUP_MARGIN:.0%}). Speedup = median over rounds of eager's block median / the "
        f"candidate's block median, the two timed in alternating blocks in the same process. invalid: the "
        f"measurement was disturbed (in-cell eager baseline more than {BASELINE_DEPARTURE:.0%} from the median "
        f"eager latency of its model, batch size and threads in the run, or an interval wider "
        f"than ±{MAX_HALFWIDTH:.0%}) or the model is nondeterministic; no verdict, never recommended.",
        f"accuracy kept: test accuracy at most {ACCURACY_TOLERANCE_POINTS} points below eager's (training: below "
        f"plain's, or within the spread over seeds when that is larger); lost: a larger drop that an exact "
        f"McNemar test on the same test images confirms (p < {ACCURACY_ALPHA:g}); uncertain: a larger drop the "
        f"test cannot tell from chance. An approximate pipeline (int8, pruning, separable, distillation) is "
        f"judged by accuracy alone: without labels it is 'accuracy not measured' (an exact one, whose outputs "
        f"are eager's, is n/a); when eager's own accuracy is near chance (its 95% Wilson interval reaches "
        f"1/classes, or it is at most {NEAR_CHANCE_MULTIPLE:g}x that) every verdict is 'withheld'; and accuracy "
        f"within the tolerance with top-1 agreement with eager below eager's accuracy minus "
        f"{AGREEMENT_SLACK_POINTS:g} points is 'predictions changed', not kept. None of these is ever named "
        f"best.",
        "mismatch: a pipeline that promises eager's outputs (jit, compile, fp32 ONNX, fusion) computed something "
        "else; its row is listed with the skipped and error rows and never recommended.",
        "The eager row is the baseline timed against itself: its speedup shows the noise of this machine.",
        "Latency is per batch; throughput is samples/s at the median latency."]


def model_section(g: pd.DataFrame, model: str, charts: Charts) -> Section:
    """One model's rows: a table per batch size and thread setting with its latency chart, the model's
    other inference charts, its training strategies with their time-to-accuracy chart, what did not run."""
    blocks: list[Block] = []
    about = model_provenance(g)
    if about:
        blocks.append(Note(about))
    weak = sorted(set(g.get("weak_baseline", pd.Series(dtype=str))) - {""})
    if weak:
        blocks.append(Note(f"Accuracy verdicts withheld: {'; '.join(weak)}. Only pipelines whose outputs are "
                           f"eager's (exact) can be named best."))
    drawn = charts.rows[(charts.rows["model"] == model) & (charts.rows["scenario"] == "inference")]
    # the charts show one thread setting: each batch size's chart sits under its table for every setting
    latency = {bs: charts.draw(plots.latency, model, bs)
               for bs in scale.spread(list(drawn["batch_size"].unique()), scale.MAX_BATCH_CHARTS)}
    # each (batch size, threads) as plain rows, the model's converted once (bench.reporting.verdicts.best_per_cell)
    cells: dict[tuple, list[dict]] = {}
    for r in records(g[g["scenario"] == "inference"]):
        cells.setdefault((r["batch_size"], r["threads"]), []).append(r)
    several = len({t for _, t in cells if t is not None}) > 1
    for bs, threads in sorted(cells, key=lambda k: tuple(math.inf if v is None else v for v in k)):
        ok = [r for r in cells[(bs, threads)] if r["status"] == "ok"]
        label = f", {threads or 'default'} thread{'s' if threads != 1 else ''}" if several else ""
        blocks.append(Section(f"{model}, batch size {bs}{label}: inference", inference_blocks(ok, latency.get(bs, []))
                              + explain.report_blocks(ok, charts.explained, charts.out,
                                                      f"{model}, batch size {bs}{label}: why", model), model))
    if len(drawn):
        blocks += [c for plot in (plots.pareto, plots.throughput, plots.memory, plots.gflops)
                   for c in charts.draw(plot, model)]
    served = serving.section(g, model, charts.out, charts.colours)
    if served is not None:
        blocks.append(served)
    time_to = (charts.draw(plots_training.time_to_accuracy, model)
               if ((charts.rows["model"] == model) & (charts.rows["scenario"] == "training")).any() else [])
    tr = g[(g["scenario"] == "training") & (g["status"] == "ok")]
    if len(tr):
        blocks.append(Section(f"{model}: training strategies (fastest to target first)",
                              [Table(TRAINING_HEADERS, training_rows(tr)), *time_to], model))
    if (g["status"] != "ok").any():
        blocks.append(Section(f"{model}: mismatch, skipped and error rows", [Table(NOT_RUN_HEADERS, not_run_rows(g))],
                              model))
    return Section(f"Model {model}", blocks, model)


def inference_blocks(ok: pd.DataFrame | list[dict], latency: list[Chart]) -> list[Block]:
    """The table of one batch size's ok rows (a frame or its records) and its latency chart, or a note of
    why there is none."""
    ok = records(ok)
    if not ok:
        return [Note("No pipeline ran at this batch size (see the skipped and error rows below).")]
    blocks: list[Block] = []
    if not any(r["pipeline"] == BASELINE_PIPELINE for r in ok):
        measured = any(not math.isnan(as_float(r.get("speedup"))) for r in ok)
        blocks.append(Note("No eager row for this model and batch size in this run."
                           + (" Speedups are against the eager baseline each cell timed beside its candidate."
                              if measured else " No speedup was measured: speed verdicts are n/a.")))
    return blocks + [Table(INFERENCE_HEADERS, inference_rows(ok)), *latency]


# --- several runs, one or several machines ---------------------------------------------------------

def write_merged(sources: list[Path], out: Path) -> list[Path]:
    """One report of several runs (shards of one matrix, or the same matrix on several machines):
    rows are grouped by machine (CPU model, cores, CUDA device from each run's env.json); verdicts and
    speedups are judged within a machine (each speedup is against eager in the same run); a first table
    puts absolute latency and throughput of each cell side by side across machines. Writes report.md,
    report.html and charts/<machine>/*.png into `out`."""
    from bench.env import machine_label

    per_machine: dict[str, tuple[list[pd.DataFrame], dict, list[str]]] = {}
    for src in sources:
        df, env = read.load(Path(src))
        frames, first_env, names = per_machine.setdefault(machine_label(env), ([], env, []))
        frames.append(df)
        names.append(str(src))
    out = Path(out)
    ensure_writable(out)
    machines = {f"M{i}": (label, *v) for i, (label, v) in enumerate(per_machine.items(), 1)}
    staging = Path(tempfile.mkdtemp(prefix=".charts-", dir=out))
    try:
        blocks: list[Block] = [Table(["Machine", "Name", "Runs"],
                                     [[m, label, "; ".join(names)] for m, (label, _, _, names) in machines.items()])]
        prepared, repeated = {}, []
        for m, (_, frames, _, _) in machines.items():
            # shards add up; a cell that several runs of one machine hold is shown from the last run given
            df = pd.concat(frames, ignore_index=True)
            keys = df.apply(cell_key, axis=1)
            if keys.duplicated().any():
                repeated.append(f"{m}: {int(keys.duplicated().sum())} cell(s) appear in several of its runs; "
                                f"the last run given is shown")
            prepared[m] = prepare(df[~keys.duplicated(keep="last")].reset_index(drop=True))
        if repeated:
            blocks.append(Bullets(repeated))
        blocks.append(Section("Across machines", [
            Note("Absolute latency (p50, ms) and throughput (samples/s) of each cell on each machine: the figures to "
                 "compare across machines. Speedups stay within a machine (each is against eager timed in the same "
                 "run), as in the sections below."),
            Table(*across_machines(prepared))]))
        for m, (label, _, env, names) in machines.items():
            (staging / m).mkdir()
            # each machine's whole report, its sections one level down
            report = build(prepared[m], env, Path(", ".join(names)), Charts(prepared[m], staging / m))
            blocks.append(Section(f"Machine {m}: {label}", [report]))
        doc = Section(f"accelbench report: {len(sources)} runs on {len(machines)} machine"
                      f"{'s' * (len(machines) != 1)}", blocks)
        link = _linked_from(staging)
        md, page = html.markdown(doc, link), html.page(doc, "accelbench report (merged)")
        drawn = _drawn(doc)
        for p in drawn:
            real_folder(out / "charts")
            real_folder((out / link(p)).parent)
            os.replace(p, out / link(p))
        atomic_write(out / "report.md", md)
        atomic_write(out / "report.html", page)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / "report.md", out / "report.html"] + [out / link(p) for p in drawn]


def across_machines(prepared: dict[str, pd.DataFrame]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: per inference cell, each machine's latency p50, throughput and speedup."""
    headers = ["Model", "Pipeline", "Batch size", "Threads"]
    for m in prepared:
        headers += [f"{m} latency p50 (ms)", f"{m} throughput (samples/s)", f"{m} speedup vs eager (x)"]
    index: dict[tuple, dict[str, pd.Series]] = {}
    for m, df in prepared.items():
        for r in records(df[(df["status"] == "ok") & (df["scenario"] == "inference")]):
            index.setdefault((r["model"], r["pipeline"], int(r["batch_size"]), int(r["threads"] or 0)), {})[m] = r
    rows = []
    for (model, pipe, bs, threads), by_m in sorted(index.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][3], kv[0][1])):
        row = [model, pipe, str(bs), str(threads or "default")]
        for m in prepared:
            r = by_m.get(m)
            row += [fmt(r["latency_ms_p50"]), fmt_rate(r["throughput_sps"]), fmt_speedup(r)] if r is not None else [DASH] * 3
        rows.append(row)
    return headers, rows
