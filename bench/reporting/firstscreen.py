"""The report's first screen: per model, the answer (a search's recommendation, or the best pipeline per batch size and scenario) and a heat map of verdicts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from bench.records.columns import SERVING_SCENARIOS
from bench.records.read import records
from bench.reporting.blocks import Block, Details, HeatMap, Note, Paragraph, Section, Table
from bench.reporting.verdicts import BASELINE_PIPELINE, as_float, best_per_cell, is_exact, is_valid

RECOMMENDATION = "recommendation.json"   # written by `accelbench recommend` beside its run's records.csv
# Heat map colours: speedups from 1/SATURATE to SATURATE x span pale to full red / green (log scale).
SATURATE_X = 4.0
ANSWER_HEADERS = ["Target", "Pipeline", "Speedup vs eager (x) [95% CI]", "Accuracy Δ (points)", "Why"]


def recommendation(source: Path) -> dict | None:
    """The search's answer kept beside the run (`accelbench recommend`), or None (an ordinary run, or a
    file that does not read as one)."""
    folder = source if source.is_dir() else source.parent
    try:
        doc = json.loads((folder / RECOMMENDATION).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and "model" in doc and "pipeline" in doc else None


def _x(v, spec: str = ".2f") -> str:
    f = as_float(v)
    return "–" if math.isnan(f) else format(f, spec)


def _speedup(r: dict) -> str:
    lo, hi = as_float(r.get("speedup_ci_low")), as_float(r.get("speedup_ci_high"))
    return _x(r.get("speedup")) + ("" if math.isnan(lo) or math.isnan(hi) else f" [{lo:.2f}–{hi:.2f}]")


# Why an exact pipeline may be named where no accuracy was judged (unlabelled data, near-chance eager)
EXACT_WHY = "exact: it keeps eager's outputs"


def best_serving(g: pd.DataFrame, scenario: str) -> list[str] | None:
    """The answer line of one serving scenario: the fastest served pipeline judged faster (LoadGen VALID)
    that is exact, or approximate with accuracy kept on the paired-block rows of the same pipeline."""
    rows = records(g[(g["scenario"] == scenario) & (g["status"] == "ok")])
    if not rows:
        return None
    kept = set(g.loc[(g["scenario"] == "inference") & (g["accuracy_verdict"] == "accuracy kept"), "pipeline"])
    good = [r for r in rows if r.get("speed_verdict") == "faster" and is_valid(r)
            and (is_exact(r) or r["pipeline"] in kept)]
    if not good:
        return [scenario, BASELINE_PIPELINE, "–", "–", "no served pipeline was faster (LoadGen VALID) and either "
                "exact or with its accuracy measured and kept"]
    best = max(good, key=lambda r: as_float(r.get("speedup")))
    exact = is_exact(best)
    return [scenario, best["pipeline"], _x(best.get("speedup")), "–" if exact else "see batch rows",
            f"{_x(best.get('qps'), '.4g')} samples/s against eager's {_x(best.get('baseline_qps'), '.4g')}"
            + (f"; {EXACT_WHY}" if exact else "")]


def answer_rows(g: pd.DataFrame, rec: dict | None, best: list[dict] | None = None) -> list[list[str]]:
    """The answer of one model: the search's recommendation when there is one for it, else the best
    pipeline per batch size (threads) and per serving scenario, as the detailed best table judges
    (`best`: the model's entries of verdicts.best_per_cell when already computed)."""
    if rec is not None:
        sp = rec.get("speedup")
        ci = (f" [{rec['ci_low']:.2f}–{rec['ci_high']:.2f}]" if rec.get("ci_low") is not None
              and rec.get("ci_high") is not None else "")
        drop = rec.get("accuracy_drop_points")
        return [[f"{rec.get('target', '')}, accuracy drop ≤ {rec.get('max_accuracy_drop_points', '–'):g} points",
                 rec["pipeline"], (f"{sp:.2f}{ci}" if isinstance(sp, (int, float)) else "–"),
                 (f"{-drop:+.2f}" if isinstance(drop, (int, float)) else "–"), rec.get("why", "")]]
    out = []
    for x in best if best is not None else best_per_cell(g):
        r = x["row"]
        threads = f", {x['threads']} thread{'s' if x['threads'] != 1 else ''}" if x["threads"] else ""
        why = x["tie"] or x["why"] or _named_why(r)
        out.append([f"batch {x['batch_size']}{threads}", x["answer"], _speedup(r) if r else "–",
                    _x(r.get("accuracy_delta"), "+.2%").replace("%", "") if r else "–", why])
    for scenario in SERVING_SCENARIOS:
        line = best_serving(g, scenario)
        if line:
            out.append(line)
    return out


def _named_why(r: dict) -> str:
    """Why a named best pipeline could be named: its accuracy was measured and kept, or it is exact (a
    pipeline that keeps eager's outputs is named on unlabelled data or against a near-chance eager too,
    where no accuracy verdict stands, and must not be said to have kept an accuracy nobody measured)."""
    if r.get("accuracy_verdict") == "accuracy kept":
        return "fastest valid pipeline judged faster, accuracy kept"
    return f"fastest valid pipeline judged faster; {EXACT_WHY} (accuracy not judged)"


def _shade(r: dict) -> tuple[str, str]:
    """(text, CSS background) of one heat map cell."""
    if r.get("status") != "ok":
        return r.get("status", "–"), "#e4e4e8"
    sp = as_float(r.get("speedup")) if r.get("pipeline") != BASELINE_PIPELINE else 1.0
    text = "–" if math.isnan(sp) else f"{sp:.2f}x"
    marks = []
    if not is_valid(r) or (r.get("scenario") in SERVING_SCENARIOS and r.get("loadgen_valid") is False):
        marks.append("invalid")
    if r.get("accuracy_verdict") in ("accuracy lost", "accuracy uncertain", "predictions changed"):
        marks.append("acc. lost" if r["accuracy_verdict"] == "accuracy lost" else "acc.?")
    if marks:
        return f"{text} ✗ {', '.join(marks)}", "repeating-linear-gradient(45deg,#f4f4f6 0 6px,#e2e2e6 6px 12px)"
    if math.isnan(sp):
        return text, "#f4f4f6"
    t = max(-1.0, min(1.0, math.log(sp) / math.log(SATURATE_X)))
    if r.get("speed_verdict") not in ("faster", "slower"):
        return text, "#fbf6dc"   # no gain: within the noise margin
    base = (10, 140, 60) if t > 0 else (200, 30, 40)
    a = 0.25 + 0.65 * abs(t)
    rgb = tuple(round(255 + (c - 255) * a) for c in base)
    return text, f"rgb{rgb}"


def heat_map(g: pd.DataFrame) -> HeatMap | None:
    """Pipelines (rows) x batch sizes and serving scenarios (columns), each cell the speedup coloured
    green (faster) to red (slower) by its verdict, pale yellow for no gain, hatched and marked where
    the row is invalid or lost accuracy. Threads beyond one setting: one column each."""
    rows = g[g["scenario"].isin(("inference", *SERVING_SCENARIOS))]
    if not len(rows):
        return None
    several = rows.loc[rows["scenario"] == "inference", "threads"].nunique() > 1

    def column(r: dict) -> str:
        if r["scenario"] != "inference":
            return r["scenario"]
        return f"bs {int(r['batch_size'])}" + (f", {int(r['threads']) or 'default'} thr" if several else "")

    # pipelines skipped everywhere (cannot run here) have nothing to colour: the legend counts them
    ran = set(rows.loc[rows["status"] != "skipped", "pipeline"])
    recs = [r for r in records(rows) if r["pipeline"] in ran]
    if not recs:
        return None
    cols = list(dict.fromkeys(column(r) for r in sorted(recs, key=lambda r: (r["scenario"] != "inference",
                                                                              r["batch_size"], r["threads"]))))
    by_pipe: dict[str, dict[str, dict]] = {}
    for r in recs:
        by_pipe.setdefault(r["pipeline"], {})[column(r)] = r
    order = sorted(by_pipe, key=lambda p: (p != BASELINE_PIPELINE, -max(
        (as_float(r.get("speedup")) for r in by_pipe[p].values() if not math.isnan(as_float(r.get("speedup")))),
        default=-math.inf), p))
    cells = [[_shade(by_pipe[p][c]) if c in by_pipe[p] else ("", "#fff") for c in cols] for p in order]
    return HeatMap(["Pipeline", *cols], [[p, *(t for t, _ in row)] for p, row in zip(order, cells)],
                   tuple(tuple(["", *(s for _, s in row)]) for row in cells))


LEGEND = ("Heat map: speedup against eager per pipeline (rows) and batch size or serving scenario (columns); green "
          "judged faster, red slower (deeper = larger), pale yellow no gain within the noise, hatched with ✗ where "
          "the row is invalid or lost accuracy (acc.? : a drop the test cannot confirm). The tables behind every "
          "figure are below, folded; click a column heading to sort.")


def sections(df: pd.DataFrame, source: Path, best: list[dict] | None = None) -> list[Block]:
    """The first screen: per model its answer and heat map (`best`: verdicts.best_per_cell of `df`, when
    the caller has it)."""
    rec = recommendation(source)
    out: list[Block] = []
    by_model = dict(tuple(df.groupby("model", sort=False)))   # one pass, not a scan of every row per model
    best_of: dict[str, list[dict]] | None = None
    if best is not None:
        best_of = {}
        for x in best:
            best_of.setdefault(x["model"], []).append(x)
    for model in dict.fromkeys(df["model"]):
        g = by_model[model]
        mine = rec if rec is not None and rec.get("model") == model else None
        blocks: list[Block] = []
        rows = answer_rows(g, mine, None if best_of is None else best_of.get(model, []))
        if rows:
            blocks.append(Table(ANSWER_HEADERS, rows))
        if mine is not None and mine.get("command"):
            blocks.append(Paragraph(f"Reproduce: {mine['command']}"))
        heat = heat_map(g)
        if heat is not None:
            blocks.append(heat)
        skipped = sorted(set(g.loc[g["status"] == "skipped", "pipeline"]) - set(g.loc[g["status"] != "skipped", "pipeline"]))
        if skipped:
            blocks.append(Note(f"Not run here (skipped; why: the model's details below): {', '.join(skipped)}."))
        if blocks:
            out.append(Section(f"Answer for {model}", blocks, model))
    if out:
        out.append(Note(LEGEND))
    return out


def folded(block: Block) -> Block:
    """A top-level section of the report's details as a folded one (HTML <details>); other blocks as they are."""
    return Details(block.title, block.blocks, block.model) if type(block) is Section else block
