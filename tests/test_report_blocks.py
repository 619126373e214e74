"""The report's typed blocks: each chart sits in the section that asked for it, the writers refuse what is
not a block, headings stop at three levels, and the verdict prose follows the constants it describes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from bench.records import read
from bench.reporting import html, report
from bench.reporting.blocks import Bullets, Chart, Note, Paragraph, Section, Table
from bench.reporting.verdicts import prepare
from tests.test_report import _row


def _rows(tmp_path: Path, rows: list[dict]) -> pd.DataFrame:
    pd.DataFrame(rows).to_csv(tmp_path / "records.csv", index=False)
    return prepare(read.load(tmp_path)[0])


class Recording(report.Charts):
    """Draws nothing: each chart's path and caption say which plot drew it for which arguments, in names
    no file-name convention would recognise, so a chart can only be where the section that asked put it."""

    def draw(self, plot, *args) -> list[Chart]:
        what = f"{plot.__name__}({', '.join(map(str, args))})"
        return [Chart(self.out / f"drawn-{abs(hash(what))}.png", what)]


def _titles(s: Section) -> list[str]:
    return [b.title for b in s.blocks if isinstance(b, Chart)]


def test_each_chart_sits_in_the_section_that_asked_for_it(tmp_path):
    df = _rows(tmp_path, [_row(model=m, batch_size=bs, pipeline=p) for m in ("lenet", "resnet8") for bs in (1, 8)
                          for p in ("eager", "jit")]
               + [_row(scenario="training", pipeline="plain", batch_size=64, final_accuracy=0.97)])
    doc = report.build(df, {}, tmp_path, Recording(df, tmp_path))
    by_title = {s.title: s for s in doc.sections()}
    for m in ("lenet", "resnet8"):
        for bs in (1, 8):
            inf = by_title[f"{m}, batch size {bs}: inference"]
            assert inf.model == m and _titles(inf) == [f"latency({m}, {bs})"]
        model = by_title[f"Model {m}"]
        assert model.model == m
        assert _titles(model) == [f"{f}({m})" for f in ("pareto", "throughput", "memory", "gflops")]
    assert _titles(by_title["lenet: training strategies (fastest to target first)"]) == ["time_to_accuracy(lenet)"]
    assert _titles(by_title["Speedup against network size"]) == ["speedup_by_size(1)", "speedup_by_size(8)"]
    assert _titles(by_title["Training: data-parallel scaling"]) == ["scaling()"]
    # and the pages link each chart once it has moved beside the report, whatever it is called
    md = html.markdown(doc, report._linked_from(tmp_path))
    assert all(f"(charts/{c.path.name})" in md for c in doc.charts())


def test_a_latency_chart_drawn_for_real_is_kept_by_its_batch_sizes_table(tmp_path):
    df = _rows(tmp_path, [_row(batch_size=bs, pipeline=p, latency_ms_p50=bs * (0.5 if p == "jit" else 1.0))
                          for bs in (1, 8) for p in ("eager", "jit")])
    charts = report.Charts(df, tmp_path)
    doc = report.build(df, {}, tmp_path, charts)
    for bs in (1, 8):
        inf = next(s for s in doc.sections() if s.title == f"lenet, batch size {bs}: inference")
        (chart,) = inf.charts()
        assert chart.path.is_file() and chart.title.startswith(f"lenet, batch size {bs}:")
    assert all(c.path.parent == tmp_path for c in doc.charts())


@pytest.mark.parametrize("write", [lambda doc: html.markdown(doc), lambda doc: html.page(doc, "t")])
def test_the_writers_refuse_what_is_not_a_block(write):
    with pytest.raises(TypeError, match="not a report block"):
        write(Section("report", [Paragraph("fine"), ("h2", "a tuple of the old kind")]))


def test_blocks_are_frozen_values_and_headings_stop_at_the_third_level():
    t = Table(["a", "b"], [["1", "2"]])
    assert t == Table(("a", "b"), (("1", "2"),)) and hash(t) == hash(Table(("a", "b"), (("1", "2"),)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.rows = ()
    deep = Section("one", [Section("two", [Section("three", [Section("four", [Note("n"), Bullets(["x"])])])])])
    assert html.markdown(deep) == "# one\n\n## two\n\n### three\n\n### four\n\nn\n\n- x\n"
    assert "<h3>four</h3>" in html.page(deep, "t")


def test_the_verdict_prose_reads_the_thresholds_it_describes(monkeypatch):
    text = " ".join(report.how_to_read())
    assert "wider than ±10%" in text and "(p < 0.05)" in text and "above 1.05x" in text
    monkeypatch.setattr(report, "MAX_HALFWIDTH", 0.15)
    monkeypatch.setattr(report, "ACCURACY_ALPHA", 0.01)
    monkeypatch.setattr(report, "SPEEDUP_MARGIN", 0.1)
    text = " ".join(report.how_to_read())
    assert "wider than ±15%" in text and "(p < 0.01)" in text and "above 1.10x" in text
