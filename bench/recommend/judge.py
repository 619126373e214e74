"""Judging measured pipelines against the user's accuracy budget as the report judges them, the choice, and the Pareto front."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.reporting.verdicts import (accuracy_verdict, as_float, is_exact, is_valid, overlaps, safer_first,
                                      weak_baseline)


def as_speedup(row: dict) -> float:
    """The row's speedup (x), NaN when none; eager is 1.0 by definition (as the report sorts it)."""
    return 1.0 if row.get("pipeline") == "eager" else as_float(row.get("speedup"))


def drop_points(row: dict) -> float:
    """Accuracy drop against eager in percentage points (positive = worse); 0 for a row that kept
    eager's outputs (exact and ok); NaN when not measured."""
    if is_exact(row):
        return 0.0
    return 0.0 - as_float(row.get("accuracy_delta")) * 100   # 0.0 - x: a delta of +0 is a drop of 0, not -0


def admissible(row: dict, budget_points: float) -> tuple[bool, str]:
    """Whether a row's accuracy fits the budget, judged as the report judges "accuracy kept"
    (bench.reporting.verdicts) with the budget as the tolerance: an exact pipeline that kept its promise
    always does; an approximate one needs labelled test images, an eager baseline not near chance, an
    accuracy drop of at most `budget_points`, and top-1 agreement with eager of at least eager's accuracy
    less the budget. A budget of 0 admits no approximate pipeline: a finite test set cannot show that a
    different function loses nothing. Returns (fits, why in words)."""
    if row.get("status") != "ok":
        return False, f"status {row.get('status')}"
    if is_exact(row):
        return True, "exact (eager's outputs)"
    if budget_points <= 0:
        return False, "approximate, and the budget of 0 points admits only eager's outputs"
    delta = as_float(row.get("accuracy_delta"))
    if math.isnan(delta):
        return False, "approximate, accuracy not measured (no labels)"
    weak = weak_baseline(row.get("baseline_accuracy"), row.get("eval_images"), row.get("num_classes"))
    if weak:
        return False, f"approximate, {weak}"
    verdict = accuracy_verdict(delta, tolerance_points=budget_points, p_value=row.get("accuracy_p_value"))
    if verdict != "accuracy kept":
        return False, f"drop {0.0 - delta * 100:.2f} points is over the budget of {budget_points:g}"
    agree, base = as_float(row.get("top1_agreement")), as_float(row.get("baseline_accuracy"))
    if agree < base - budget_points / 100 - 1e-9:
        return False, (f"top-1 agreement with eager {agree * 100:.2f}% is below eager's accuracy less the budget "
                       f"({(base - budget_points / 100) * 100:.2f}%): its predictions changed")
    return True, f"drop {0.0 - delta * 100:.2f} points within the budget of {budget_points:g}"


def faster(row: dict) -> bool:
    """Judged faster as the report judges (the row's `speed_verdict`, from bench.reporting.verdicts):
    valid, and the whole speedup interval (a serving row: its point estimate) above 1 + margin."""
    return row.get("speed_verdict") == "faster" and is_valid(row)


@dataclass(frozen=True)
class Choice:
    """The answer: the chosen row (None: keep eager), why, and the runner-up of a tie."""

    row: dict | None
    why: str
    runner_up: dict | None = None


def choose(confirmed: pd.DataFrame, accuracy_of: dict[str, dict], budget_points: float, serving: str | None) -> Choice:
    """The fastest confirmed pipeline judged faster whose accuracy fits the budget (`accuracy_of`: the row
    whose accuracy figures judge each pipeline; a serving target's come from its screening cell); a tie
    (overlapping speedup intervals) goes to the safer (exact first, then less set-up), as the report's
    best table settles it."""
    rows = [r for r in confirmed.to_dict("records") if r["status"] == "ok" and r["pipeline"] != "eager"
            and (serving is None or r.get("scenario") == serving)]
    good = [r for r in rows if faster(r) and admissible(accuracy_of.get(r["pipeline"], r), budget_points)[0]]
    if not good:
        if not rows:
            return Choice(None, "no candidate was confirmed: keep eager")
        if not any(faster(r) for r in rows):
            invalid = [r for r in rows if not is_valid(r)]
            if invalid:
                why = invalid[0].get("validity")
                return Choice(None, f"keep eager for now: no confirmed pipeline was reliably faster than eager, and "
                                    f"{len(invalid)} of {len(rows)} were marked invalid (disturbed timing"
                                    + (f": {invalid[0]['pipeline']}: {why}" if isinstance(why, str) and why else "")
                                    + "); run the search again (a new --out) on a quieter machine, with budget enough for the "
                                      "runner to re-measure a disturbed cell")
            return Choice(None, "no confirmed pipeline was reliably faster than eager (valid, whole interval above "
                                "1.05x): keep eager")
        return Choice(None, "the pipelines judged faster do not fit the accuracy budget: keep eager")
    fastest = max(good, key=as_speedup)
    tied = [r for r in good if r is fastest or overlaps(r, fastest)]
    best = safer_first(tied)[0]
    runner = max((r for r in tied if r is not best), key=as_speedup, default=None)
    why = "the fastest pipeline judged faster within the accuracy budget"
    if runner is not None:
        why += f"; tie with {runner['pipeline']} (intervals overlap), settled for the safer (exact, then less set-up)"
    return Choice(best, why, runner)


def front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Pareto front of `points` (each with `speedup` and `drop` in points): those no other point
    beats on both (at least as fast and at most the same drop, better on one). Sorted by drop."""
    usable = [p for p in points if not (math.isnan(p["speedup"]) or math.isnan(p["drop"]))]
    out = [p for p in usable if not any(q is not p and q["speedup"] >= p["speedup"] and q["drop"] <= p["drop"]
                                        and (q["speedup"] > p["speedup"] or q["drop"] < p["drop"]) for q in usable)]
    return sorted(out, key=lambda p: (p["drop"], -p["speedup"]))
