"""Verdicts a reader acts on (faster / no gain / slower, accuracy kept / lost), judged with noise in mind."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from bench.records.read import marked_invalid

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



def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Typed rows (bench.records.read) plus each row's verdicts; a row without a status counts as ok."""
    df = df.copy()
    df["status"] = df["status"].where(df["status"] != "", "ok")
    df["speed_verdict"] = [speed_verdict(r) for r in df.to_dict("records")]
    df["accuracy_verdict"] = [accuracy_verdict(r.get("accuracy_delta"), p_value=r.get("accuracy_p_value"))
                              for r in df.to_dict("records")]
    return df


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


def sort_by_speedup(df: pd.DataFrame) -> pd.DataFrame:
    """Fastest first; rows without a speedup last, in pipeline order. The eager row sorts as 1.0x,
    what it is by definition (its measured speedup is eager against itself: a noise check)."""
    key = df["speedup"].where(df["pipeline"] != BASELINE_PIPELINE, 1.0).fillna(-math.inf)
    return df.assign(_k=key).sort_values(["_k", "pipeline"], ascending=[False, True], kind="stable").drop(columns="_k")


def best_per_cell(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Per (model, batch size, threads) of the inference rows: the fastest valid pipeline judged faster
    with accuracy kept (or n/a on unlabelled data), or None with the reason there is none. Rows marked
    invalid or that broke their fidelity promise (status mismatch) are never named."""
    out = []
    inf = df[df["scenario"] == "inference"]
    for (model, bs, threads), g in inf.groupby(["model", "batch_size", "threads"], sort=True):
        ok = g[g["status"] == "ok"]
        good = ok[(ok["speed_verdict"] == "faster") & ok["accuracy_verdict"].isin(["accuracy kept", "n/a"])]
        if len(good):
            best = sort_by_speedup(good).iloc[0]
            out.append({"model": model, "batch_size": int(bs), "threads": int(threads), "row": best.to_dict(),
                        "why": ""})
            continue
        mismatched = (g["status"] == "mismatch").sum()
        if not len(ok):
            why = "no pipeline ran (all skipped, error or mismatch)"
        elif (ok["pipeline"] == BASELINE_PIPELINE).all():
            why = ("the other pipelines broke their promise of eager's outputs (mismatch)" if mismatched
                   else "only the eager baseline ran")
        elif ok["speedup"].notna().sum() == 0:
            why = "no speedup was measured (no baseline)"
        elif (ok["speed_verdict"] == "faster").any():
            why = "the faster pipelines lost accuracy (or may have); keep eager"
        elif (ok["speed_verdict"] == "invalid").any():
            why = "no valid pipeline was reliably faster than eager (some measurements were invalid); keep eager"
        else:
            why = "no pipeline was reliably faster than eager; keep eager"
        out.append({"model": model, "batch_size": int(bs), "threads": int(threads), "row": None, "why": why})
    return out


def curve_points(curve: list) -> list[tuple[float, float]]:
    """The `curve` column (a list of [elapsed_s, accuracy]) as sorted points; malformed points are dropped."""
    pts = []
    for p in curve if isinstance(curve, list) else []:
        if isinstance(p, (list, tuple)) and len(p) >= 2:
            t, a = as_float(p[0]), as_float(p[1])
            if not (math.isnan(t) or math.isnan(a)):
                pts.append((t, a))
    return sorted(pts)
