"""A report of many rows stays bounded: a cell measured several times shows once, and charts are capped."""

from __future__ import annotations

import pandas as pd

from bench.records.columns import cell_key

# A chart costs 0.5-3 s to draw and save (matplotlib), a table row microseconds: the charts bound a
# report's time. With these caps a report draws at most 4 x (3 + 4) + 3 = 31 charts, whatever its rows.
MAX_MODELS_CHARTED = 4         # models that get their own charts (the first in the rows); tables cover all
MAX_PIPELINES_PER_CHART = 12   # pipelines in one model's charts: its fastest, by best measured speedup
MAX_BATCH_CHARTS = 3           # per-batch-size charts of one kind: the smallest, largest and middle batch sizes


def spread(values: list, most: int) -> list:
    """At most `most` of the sorted `values`, evenly spread and always with the first and the last."""
    values = sorted(values)
    if len(values) <= most:
        return values
    if most == 1:
        return values[:1]
    return sorted({values[round(i * (len(values) - 1) / (most - 1))] for i in range(most)})


def collapse_duplicates(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Each cell (model, pipeline, scenario, batch size, threads; `cell_key`) once: the latest of its
    rows by `timestamp` (ISO 8601 text, so it sorts as time), the last in the file among equal ones.
    A records.csv holds a cell twice when rows of several runs were concatenated, or a cell was
    measured again. Returns (rows in their original order, how many rows were dropped)."""
    if len(df) < 2:
        return df, 0
    keys = pd.Series([cell_key(r) for r in df[["model", "pipeline", "scenario", "batch_size", "threads"]]
                     .to_dict("records")], index=df.index)
    if not keys.duplicated().any():
        return df, 0
    stamp = df["timestamp"].astype(str) if "timestamp" in df else pd.Series("", index=df.index)
    order = pd.DataFrame({"key": keys, "stamp": stamp, "pos": range(len(df))}, index=df.index)
    # stable sort by time: equal timestamps keep file order, so "last" is the latest and then the last written
    latest = order.sort_values("stamp", kind="stable").drop_duplicates("key", keep="last")
    kept = df.loc[sorted(latest.index, key=lambda i: order.at[i, "pos"])].reset_index(drop=True)
    return kept, len(df) - len(kept)


def charted_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows charts are drawn from: the first MAX_MODELS_CHARTED models (in the order of the
    rows), and in each of those its MAX_PIPELINES_PER_CHART fastest pipelines (by the best speedup
    any of its rows measured; eager, the baseline, always). Returns (rows, notes saying what was left
    out of the charts)."""
    notes: list[str] = []
    models = list(dict.fromkeys(df["model"]))
    if len(models) > MAX_MODELS_CHARTED:
        notes.append(f"Per-model charts are drawn for the first {MAX_MODELS_CHARTED} of {len(models)} models; "
                     f"the tables cover every model.")
        df = df[df["model"].isin(models[:MAX_MODELS_CHARTED])]
    keep = []
    trimmed = []
    for model, g in df.groupby("model", sort=False):
        pipes = list(dict.fromkeys(g["pipeline"]))
        if len(pipes) <= MAX_PIPELINES_PER_CHART:
            keep.append(g)
            continue
        best = g.groupby("pipeline")["speedup"].max().reindex(pipes).fillna(float("-inf"))
        best.loc[best.index == "eager"] = float("inf")
        top = set(best.sort_values(ascending=False, kind="stable").index[:MAX_PIPELINES_PER_CHART])
        keep.append(g[g["pipeline"].isin(top)])
        trimmed.append(f"{model} ({len(pipes)})")
    if trimmed:
        notes.append(f"Charts of a model with more than {MAX_PIPELINES_PER_CHART} pipelines show its "
                     f"{MAX_PIPELINES_PER_CHART} fastest (eager always): {', '.join(trimmed[:5])}"
                     f"{', ...' if len(trimmed) > 5 else ''}; the tables cover every pipeline.")
    sizes = sorted(df.loc[df["scenario"] == "inference", "batch_size"].unique())
    if len(sizes) > MAX_BATCH_CHARTS:
        notes.append(f"Per-batch-size charts are drawn for batch sizes {', '.join(map(str, spread(sizes, MAX_BATCH_CHARTS)))} "
                     f"of {len(sizes)}; the tables cover every batch size.")
    return (pd.concat(keep) if keep else df.iloc[:0]), notes
