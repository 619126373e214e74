"""A report of many rows: duplicated cells are collapsed to their latest row (and counted), and charts are bounded.

The rows are grown from the committed reference run (results/reference-cpu, real measurements) by
tests/benchmarks/report_scale.py, which also times `accelbench report` on 100,000 of them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from bench.records import read
from bench.reporting import report, scale
from tests.benchmarks.report_scale import grow, write_grown

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference-cpu"


def _reference_rows() -> list[dict]:
    with open(REFERENCE / "records.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_duplicates_collapse_to_the_latest_row_by_timestamp_then_file_order():
    rows = _reference_rows()[:3]
    early, late, last_written = (dict(rows[0], timestamp="2026-01-01T00:00:00+00:00", latency_ms_p50="1.0"),
                                 dict(rows[0], timestamp="2026-01-03T00:00:00+00:00", latency_ms_p50="3.0"),
                                 dict(rows[1], latency_ms_p50="9.0"))
    df = pd.DataFrame([late, rows[1], early, rows[2], last_written]).fillna("")
    kept, collapsed = scale.collapse_duplicates(read.typed(df))
    assert collapsed == 2
    assert len(kept) == 3
    by_pipe = {(r["model"], r["pipeline"], r["batch_size"]): r for r in kept.to_dict("records")}
    first = by_pipe[(rows[0]["model"], rows[0]["pipeline"], int(rows[0]["batch_size"]))]
    assert first["latency_ms_p50"] == 3.0          # the later timestamp wins, though written first
    second = by_pipe[(rows[1]["model"], rows[1]["pipeline"], int(rows[1]["batch_size"]))]
    assert second["latency_ms_p50"] == 9.0         # equal timestamps: the last written wins


def test_no_duplicates_leaves_the_rows_as_they_are():
    df = read.typed(pd.DataFrame(_reference_rows()[:10]).fillna(""))
    kept, collapsed = scale.collapse_duplicates(df)
    assert collapsed == 0 and kept.equals(df)


def test_spread_keeps_the_ends_and_at_most_n():
    assert scale.spread([64, 1, 8, 512, 4096], 3) == [1, 64, 4096]
    assert scale.spread([2, 1], 3) == [1, 2]
    assert scale.spread(list(range(10)), 1) == [0]


def test_a_large_run_reports_each_cell_once_with_bounded_charts(tmp_path, monkeypatch):
    monkeypatch.setattr(scale, "MAX_MODELS_CHARTED", 2)
    monkeypatch.setattr(scale, "MAX_BATCH_CHARTS", 2)
    n = 1500
    folder = write_grown(REFERENCE, tmp_path / "run", n)
    grown = pd.read_csv(folder / "records.csv")
    duplicated = int(grown.duplicated(["model", "pipeline", "scenario", "batch_size", "threads"]).sum())
    assert duplicated > 0
    written = report.write(folder)
    md = (folder / "report.md").read_text()
    assert f"{n - duplicated} rows:" in md and f"{duplicated} more rows measured a cell again" in md
    charts = [p for p in written if p.suffix == ".png"]
    # per charted model: at most MAX_BATCH_CHARTS latency charts + pareto, throughput, memory, GFLOP/s;
    # then at most MAX_BATCH_CHARTS size charts
    assert 0 < len(charts) <= 2 * (2 + 4) + 2, [p.name for p in charts]
    models = sorted(grown["model"].unique())
    assert len(models) > 2
    for model in models:   # every model is in the tables, charted or not
        assert f"Model {model}" in md
    assert f"Per-model charts are drawn for the first 2 of {len(models)} models" in md
    assert f"show its {scale.MAX_PIPELINES_PER_CHART} fastest" in md


def test_grow_makes_distinct_cells_and_the_asked_share_of_repeats():
    rows = grow(_reference_rows(), 4000, duplicate_share=0.25)
    keys = [(r["model"], r["pipeline"], r["scenario"], r["batch_size"], r["threads"]) for r in rows]
    assert len(rows) == 4000 and len(set(keys)) == 3000
