"""Verdicts a reader acts on (faster / no gain / slower, accuracy kept / lost), judged with noise in mind."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pandas as pd

from bench.measure.stats import wilson_interval
from bench.records.read import marked_invalid, records

# "faster" needs the whole 95% bootstrap interval of the speedup above 1 + margin, "slower" the whole
# interval below 1 / (1 + margin). An eager-vs-eager cell on this 2-core machine lands within
# about 2% of 1.0 with a tight interval, and a gain under 5% is not worth a deployment change:
# everything in between is "no gain".
SPEEDUP_MARGIN = 0.05
# One digits test image is 0.28 points: a drop of up to one image is "kept".
ACCURACY_TOLERANCE_POINTS = 0.5
# "accuracy lost" also needs the drop to be real: an exact McNemar test on the images where the two
# disagree (same test images for both) must reject "equal accuracy" at this level.
ACCURACY_ALPHA = 0.05
BASELINE_PIPELINE = "eager"
# What a pipeline promises (the `fidelity` column): exact ones kept eager's outputs when their status is ok
# (bench.running.cell checks max |logit diff| against a tolerance), approximate ones are judged by accuracy.
EXACT = "exact"

# A baseline too weak to judge accuracy against. Chance is 1 / num_classes. Eager's accuracy is "near
# chance" when the 95% Wilson interval of its accuracy on the test images reaches chance (on these images
# it cannot be told from guessing), or when it is at most NEAR_CHANCE_MULTIPLE times chance (at most
# halfway from chance to 100%, so two classes still leave room): an untrained or mismatched network
# (20% on 10 classes) whose accuracy deltas are noise around guessing, however many images. Then no
# accuracy verdict is given and no approximate pipeline is named best.
NEAR_CHANCE_MULTIPLE = 2.0
# Top-1 agreement with eager is a second guard on "accuracy kept": an approximate pipeline must agree with
# eager's top class on at least eager's accuracy minus the accuracy tolerance. Below that it must have
# changed more than the tolerance of the answers eager got right, and kept its accuracy only by getting
# others right instead: its predictions are not eager's, whatever the delta says (static int8 on a
# near-chance net: agreement 18.75% with accuracy delta +0.00). On a trained net the rule costs nothing:
# at 99% baseline accuracy a pipeline that keeps accuracy within 0.5 points can hardly agree on fewer
# than 98.5% of images (the reference run's kept pipelines agree on 97.5-100% with baselines of 97-99.7%).
AGREEMENT_SLACK_POINTS = ACCURACY_TOLERANCE_POINTS



PREPARE_CHUNK_ROWS = 2000


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Typed rows (bench.records.read) plus each row's verdicts; a row without a status counts as ok.
    Adds `speed_verdict`, `accuracy_verdict` (row_accuracy_verdict) and `weak_baseline` (why eager's
    accuracy is too near chance to judge against, or "")."""
    df = df.copy()
    df["status"] = df["status"].where(df["status"] != "", "ok")
    # judged a slice at a time: a large run's rows all as dicts at once would take several times the
    # frame's own memory
    rows = (r for start in range(0, len(df), PREPARE_CHUNK_ROWS)
            for r in records(df.iloc[start:start + PREPARE_CHUNK_ROWS]))
    verdicts = [(speed_verdict(r), weak_baseline(r.get("baseline_accuracy"), r.get("eval_images"),
                                                 r.get("num_classes")) if r.get("scenario") != "training" else "",
                 row_accuracy_verdict(r)) for r in rows]
    df["speed_verdict"] = [v[0] for v in verdicts]
    df["weak_baseline"] = [v[1] for v in verdicts]
    df["accuracy_verdict"] = [v[2] for v in verdicts]
    return df


def is_exact(row: dict) -> bool:
    """Whether the row's pipeline promised eager's outputs (`fidelity` exact; eager itself) and, being ok,
    kept that promise. A row without a `fidelity` (written before the column) counts as approximate."""
    return row.get("status") == "ok" and (row.get("fidelity") == EXACT or row.get("pipeline") == BASELINE_PIPELINE)


def weak_baseline(accuracy: Any, images: Any = None, classes: Any = None) -> str:
    """Why eager's top-1 `accuracy` (a ratio, on `images` test images, over `classes` classes) is too near
    chance (1 / classes) to judge other pipelines' accuracy against, or "" (also when accuracy or the
    number of classes is unknown). Near chance: its 95% Wilson interval reaches chance, or it is at most
    NEAR_CHANCE_MULTIPLE x chance (capped halfway from chance to 100%)."""
    acc, k, n = as_float(accuracy), as_float(classes), as_float(images)
    if math.isnan(acc) or math.isnan(k) or k < 2:
        return ""
    chance = 1 / k
    bar = min(NEAR_CHANCE_MULTIPLE * chance, (1 + chance) / 2)
    low = wilson_interval(round(acc * n), int(n))[0] if not math.isnan(n) and n > 0 else math.nan
    if acc > bar + 1e-9 and not low <= chance:
        return ""
    return (f"baseline accuracy {percent(acc)} is near chance ({percent(chance)}, {int(k)} classes): bring "
            f"trained weights with --weights")


def percent(ratio: float) -> str:
    """A ratio as a percentage with three significant digits: 0.2 -> "20%", 0.001 -> "0.1%"."""
    return f"{ratio * 100:.3g}%"


def row_accuracy_verdict(row: dict) -> str:
    """The accuracy verdict of an inference row, evidence first:
    - "accuracy not measured": an approximate pipeline on unlabelled data (no accuracy); "n/a" for an
      exact one (its outputs are eager's) and for training rows without a delta;
    - "withheld": eager's accuracy is near chance (`weak_baseline`), so no delta means anything;
    - "predictions changed": an approximate pipeline whose accuracy is within the tolerance but whose
      top-1 agreement with eager is below eager's accuracy minus AGREEMENT_SLACK_POINTS;
    - otherwise accuracy_verdict (kept / lost / uncertain)."""
    delta = as_float(row.get("accuracy_delta"))
    if row.get("scenario") == "training":
        return accuracy_verdict(delta, p_value=row.get("accuracy_p_value"))
    exact = is_exact(row)
    if math.isnan(delta):
        return "n/a" if exact or row.get("status") != "ok" else "accuracy not measured"
    if row.get("weak_baseline") or weak_baseline(row.get("baseline_accuracy"), row.get("eval_images"),
                                                 row.get("num_classes")):
        return "withheld"
    verdict = accuracy_verdict(delta, p_value=row.get("accuracy_p_value"))
    agree, base = as_float(row.get("top1_agreement")), as_float(row.get("baseline_accuracy"))
    if verdict == "accuracy kept" and not exact and agree < base - AGREEMENT_SLACK_POINTS / 100 - 1e-9:
        return "predictions changed"
    return verdict


def as_float(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def is_valid(row: dict) -> bool:
    """False only for rows the harness marked invalid (disturbed timing, nondeterministic model)."""
    return not marked_invalid(row.get("valid"))


def speed_verdict(row: dict) -> str:
    """From the speedup's confidence interval; the point estimate alone only when no interval exists.
    An invalid row gets no verdict ("invalid"), a row that broke its fidelity promise none at all."""
    if row.get("status") != "ok" or row.get("scenario") == "training":
        return ""
    if row.get("pipeline") == BASELINE_PIPELINE:
        return "baseline"
    if not is_valid(row):
        return "invalid"
    if row.get("pipeline") == BASELINE_PIPELINE:
        return "baseline"
    sp, lo, hi = as_float(row.get("speedup")), as_float(row.get("speedup_ci_low")), as_float(row.get("speedup_ci_high"))
    if math.isnan(sp):
        return "n/a"
    if math.isnan(lo) or math.isnan(hi):
        lo = hi = sp
    if lo > 1 + SPEEDUP_MARGIN:
        return "faster"
    if hi < 1 / (1 + SPEEDUP_MARGIN):
        return "slower"
    return "no gain"


def accuracy_verdict(delta: Any, tolerance_points: float = ACCURACY_TOLERANCE_POINTS, p_value: Any = None) -> str:
    """`delta` is a ratio (0.01 = 1 point); NaN (unlabelled data, or not measured) is "n/a".

    "accuracy lost" needs both a drop beyond `tolerance_points` and, where the row has it, an exact
    McNemar p-value below ACCURACY_ALPHA on the same test images; a larger drop the test cannot tell
    from chance is "accuracy uncertain", so one or two images are never a verdict."""
    d = as_float(delta)
    if math.isnan(d):
        return "n/a"
    if d * 100 >= -tolerance_points - 1e-9:
        return "accuracy kept"
    p = as_float(p_value)
    if not math.isnan(p) and p >= ACCURACY_ALPHA:
        return "accuracy uncertain"
    return "accuracy lost"


def speedup_order(rows: list[dict]) -> list[dict]:
    """`rows` (records) in `sort_by_speedup`'s order, without a frame: fastest first, eager as 1.0x,
    rows without a speedup last, ties in pipeline order."""
    def key(r: dict) -> tuple[float, str]:
        k = 1.0 if r.get("pipeline") == BASELINE_PIPELINE else as_float(r.get("speedup"))
        return (-(k if not math.isnan(k) else -math.inf), r.get("pipeline") or "")
    return sorted(rows, key=key)


def sort_by_speedup(df: pd.DataFrame) -> pd.DataFrame:
    """Fastest first; rows without a speedup last, in pipeline order. The eager row sorts as 1.0x,
    what it is by definition (its measured speedup is eager against itself: a noise check)."""
    key = df["speedup"].where(df["pipeline"] != BASELINE_PIPELINE, 1.0).fillna(-math.inf)
    return df.assign(_k=key).sort_values(["_k", "pipeline"], ascending=[False, True], kind="stable").drop(columns="_k")


NO_RESULT = "no result"


def overlaps(a: dict, b: dict) -> bool:
    """Whether two rows' 95% speedup intervals overlap (a row without an interval is its point estimate)."""
    def interval(r: dict) -> tuple[float, float]:
        sp, lo, hi = as_float(r.get("speedup")), as_float(r.get("speedup_ci_low")), as_float(r.get("speedup_ci_high"))
        return (sp, sp) if math.isnan(lo) or math.isnan(hi) else (lo, hi)
    (alo, ahi), (blo, bhi) = interval(a), interval(b)
    return alo <= bhi and blo <= ahi


def safer_first(rows: list[dict]) -> list[dict]:
    """Rows in the order a tie is settled: exact before approximate, then less set-up (setup_s; unknown
    last), then the higher speedup."""
    def key(r: dict) -> tuple:
        setup = as_float(r.get("setup_s"))
        return (not is_exact(r), math.inf if math.isnan(setup) else setup, -as_float(r.get("speedup")))
    return sorted(rows, key=key)


def eligible(row: dict) -> bool:
    """Whether a row may be named best: ok, valid and judged faster, and either exact (it kept eager's
    outputs) or approximate with its accuracy measured and kept (row_accuracy_verdict "accuracy kept")."""
    return (row.get("status") == "ok" and row.get("speed_verdict") == "faster"
            and (is_exact(row) or row.get("accuracy_verdict") == "accuracy kept"))


def best_per_cell(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Per (model, batch size, threads) of the inference rows (`prepare`d), the pipeline to use and why.

    Named best: the fastest `eligible` row. A tie (its 95% speedup interval overlaps another eligible
    row's) goes to the safer pipeline (`safer_first`: exact, then less set-up), and the runner-up (the
    fastest other row of the tie) is named. Rows marked invalid, that broke their fidelity promise
    (mismatch), or approximate ones without accuracy evidence are never named.

    Each entry: model, batch_size, threads; `answer` (the pipeline, "eager" when none is eligible, or
    NO_RESULT when no row of the cell is ok); `row` (the best row or None); `why` (why there is none);
    `tie` (how a tie was settled, "" if none) and `runner_up` (its row or None); `left_out` (sentences
    on faster rows that could not be named); `baseline_accuracy` (eager's, a ratio, NaN unknown) and
    `weak_baseline` (why it is too near chance to judge against, or "")."""
    out = []
    # Grouped as plain rows, converted once: a frame per group costs ~10 ms in pandas whatever its length,
    # which a run of thousands of cells pays thousands of times.
    # (A model's rows at a time: all of a large run's rows as dicts at once would take several times
    # the frame's memory.)
    for _, by_model in sorted(df[df["scenario"] == "inference"].groupby("model", sort=False), key=lambda kv: kv[0]):
        cells: dict[tuple, list[dict]] = {}
        for r in records(by_model):
            key = (r["model"], r["batch_size"], r["threads"])
            if not any(k is None or (isinstance(k, float) and math.isnan(k)) for k in key):   # as groupby drops NA
                cells.setdefault(key, []).append(r)
        out += [_best_of_cell(key, cells[key]) for key in sorted(cells)]
    return out


def _best_of_cell(key: tuple, g: list[dict]) -> dict[str, Any]:
    """best_per_cell's entry for one (model, batch size, threads) cell's rows `g`."""
    model, bs, threads = key
    rows = ok = [r for r in g if r["status"] == "ok"]
    base_acc = [a for a in (as_float(r.get("baseline_accuracy")) for r in ok) if not math.isnan(a)]
    weak = next((r["weak_baseline"] for r in rows if r.get("weak_baseline")), "")
    entry: dict[str, Any] = {"model": model, "batch_size": int(bs), "threads": int(threads), "row": None,
                             "why": "", "tie": "", "runner_up": None, "answer": BASELINE_PIPELINE,
                             "baseline_accuracy": float(statistics.median(base_acc)) if base_acc else math.nan,
                             "weak_baseline": weak, "left_out": left_out(rows, weak)}
    good = [r for r in rows if eligible(r)]
    if good:
        fastest = max(good, key=lambda r: as_float(r.get("speedup")))
        tied = [r for r in good if r is fastest or overlaps(r, fastest)]
        best = safer_first(tied)[0]
        entry.update(row=best, answer=best["pipeline"])
        if len(tied) > 1:
            runner = max((r for r in tied if r is not best), key=lambda r: as_float(r.get("speedup")))
            entry.update(runner_up=runner, tie=tie_text(best, runner))
        return entry
    mismatched = sum(r["status"] == "mismatch" for r in g)
    faster = [r for r in rows if r.get("speed_verdict") == "faster"]
    if not len(ok):
        entry["answer"] = NO_RESULT
        why = "no pipeline ran (all skipped, error or mismatch)"
    elif all(r["pipeline"] == BASELINE_PIPELINE for r in ok):
        why = ("the other pipelines broke their promise of eager's outputs (mismatch)" if mismatched
               else "only the eager baseline ran")
    elif all(math.isnan(as_float(r.get("speedup"))) for r in ok):
        why = "no speedup was measured (no baseline)"
    elif faster and weak:
        why = f"the faster pipelines are approximate and {weak}; keep eager"
    elif faster and all(r["accuracy_verdict"] == "accuracy not measured" for r in faster):
        why = ("the faster pipelines are approximate and their accuracy was not measured (unlabelled data); "
               "keep eager, or run on labelled data")
    elif faster and all(r["accuracy_verdict"] == "predictions changed" for r in faster):
        why = "the faster pipelines changed eager's predictions (top-1 agreement too low); keep eager"
    elif faster:
        why = "the faster pipelines lost accuracy (or may have, or it was not measured); keep eager"
    elif any(r.get("speed_verdict") == "invalid" for r in ok):
        why = "no valid pipeline was reliably faster than eager (some measurements were invalid); keep eager"
    else:
        why = "no pipeline was reliably faster than eager; keep eager"
    entry["why"] = why
    return entry


def left_out(rows: list[dict], weak: str) -> list[str]:
    """Sentences naming the rows judged faster that could not be named best for want of accuracy evidence."""
    groups = {"accuracy not measured": "accuracy not measured",
              "withheld": "accuracy verdict withheld (baseline near chance)",
              "predictions changed": "top-1 agreement with eager too low"}
    out = []
    for verdict, text in groups.items():
        names = [f"{r['pipeline']} ({as_float(r.get('speedup')):.2f}x)" for r in rows
                 if r.get("speed_verdict") == "faster" and not is_exact(r) and r.get("accuracy_verdict") == verdict]
        if names:
            out.append(f"{text}: {', '.join(names)}")
    return out


def tie_text(best: dict, runner: dict) -> str:
    """How a tie between `best` and `runner` (overlapping speedup intervals) was settled, in words."""
    if is_exact(best) and not is_exact(runner):
        how = "exact preferred over approximate"
    elif as_float(best.get("setup_s")) < as_float(runner.get("setup_s")):
        how = f"less set-up ({as_float(best.get('setup_s')):.3g} s against {as_float(runner.get('setup_s')):.3g} s)"
    else:
        how = "the higher point estimate"
    lo, hi = as_float(runner.get("speedup_ci_low")), as_float(runner.get("speedup_ci_high"))
    ci = f" [{lo:.2f}-{hi:.2f}]" if not (math.isnan(lo) or math.isnan(hi)) else ""
    return (f"tie with runner-up {runner['pipeline']} ({as_float(runner.get('speedup')):.2f}x{ci}): speedup "
            f"intervals overlap; {how}")


def curve_points(curve: list) -> list[tuple[float, float]]:
    """The `curve` column (a list of [elapsed_s, accuracy]) as sorted points; malformed points are dropped."""
    pts = []
    for p in curve if isinstance(curve, list) else []:
        if isinstance(p, (list, tuple)) and len(p) >= 2:
            t, a = as_float(p[0]), as_float(p[1])
            if not (math.isnan(t) or math.isnan(a)):
                pts.append((t, a))
    return sorted(pts)
