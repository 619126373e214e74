"""The report: tables from a real small run, every chart a real PNG, JSON input == CSV input, edge cases."""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pytest
from torch import nn

import techniques
from bench.reporting import html as html_mod
from bench.reporting import report
from bench.reporting.chartkit import short_labels
from bench.reporting.plots import pareto_front
from bench.reporting.verdicts import accuracy_verdict, speed_verdict
from techniques import Transform

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Boom(Transform):
    """Test-only: fails in apply, so the run has a real error row (loaded as `test_report:Boom`)."""

    name = "report_boom"

    def apply(self, model: nn.Module, ctx):
        raise RuntimeError("report test: injected failure <in apply>")


def _fixture_pipelines() -> list[str]:
    if "onnx" in techniques.names():  # ok, ok, skipped (no FPGA here), error
        return ["eager", "onnx:ep=cpu", "onnx:ep=fpga", "test_report:Boom"]
    return ["eager", "test_report:Boom"]


@pytest.fixture(scope="session")
def real_run(tmp_path_factory) -> Path:
    """One real isolated run per test session: lenet, batch 1 and 8, ok/skipped/error rows."""
    from bench.cli import main
    out = tmp_path_factory.mktemp("report-run")
    argv = ["run", "--model", "lenet", "--batch-size", "1", "--batch-size", "8", "--min-time", "0.05",
            "--out", str(out), "--no-report"]
    for p in _fixture_pipelines():
        argv += ["--pipeline", p]
    assert main(argv) in (0, 1)  # 1: the injected error row, as intended
    return out


def md_tables(text: str) -> dict[str, list[list[str]]]:
    """Markdown tables keyed by the nearest heading above them: rows as lists of cell strings (entities decoded:
    report.md writes < > & as entities)."""
    tables, heading, rows = {}, "", None
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            heading = line.lstrip("# ").strip()
        if line.startswith("|"):
            cells = [html.unescape(c.strip().replace("\\|", "|")) for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if rows is None:
                rows = [cells]
            elif not set("".join(cells)) <= set("-:"):
                rows.append(cells)
        elif rows is not None:
            tables[heading] = rows
            rows = None
    return tables


def test_report_from_real_run_has_the_expected_tables(real_run):
    paths = report.write(real_run)
    assert paths[:2] == [real_run / "report.md", real_run / "report.html"]
    md = (real_run / "report.md").read_text()
    tables = md_tables(md)
    rows = pd.read_csv(real_run / "records.csv")
    env = json.loads((real_run / "env.json").read_text())

    envt = dict((r[0], r[1]) for r in tables["Environment"][1:])
    assert envt["CPU model"] == env["cpu_model"] and envt["git commit"] == env["git_commit"]
    assert envt["Command"] == env["command"] and envt["torch"] == env["torch"]
    assert envt["Run id"] == env["run_id"]
    assert float(envt["Measured matmul peak (GFLOP/s)"]) == pytest.approx(env["matmul_peak_gflops"], rel=1e-3)

    best = tables["Best pipeline per model and batch size"]
    assert [r[:2] for r in best[1:]] == [["lenet", "1"], ["lenet", "8"]]
    assert set(rows.loc[rows.status == "ok", "num_classes"]) == {10}  # digits: chance is 10%
    for bs in (1, 8):
        t = tables[f"lenet, batch size {bs}: inference"]
        assert t[0] == report.INFERENCE_HEADERS
        ok = rows[(rows.batch_size == bs) & (rows.status == "ok")]
        assert sorted(r[0] for r in t[1:]) == sorted(ok.pipeline)
        speed = {r[0]: (1.0 if r[0] == "eager" else float(r[1].split()[0])) for r in t[1:]}
        assert list(speed.values()) == sorted(speed.values(), reverse=True), "sorted by speedup, descending"
        for r in t[1:]:
            src = ok[ok.pipeline == r[0]].iloc[0]
            assert float(r[3]) == pytest.approx(src.latency_ms_p50, rel=5e-3)
            assert float(r[7]) == pytest.approx(src.accuracy * 100, abs=0.006)
            assert r[2] == ("baseline" if r[0] == "eager" else speed_verdict(src.to_dict()))
            assert r[9] == accuracy_verdict(src.accuracy_delta)
    bad = rows[rows.status != "ok"]
    not_run = tables["lenet: mismatch, skipped and error rows"]
    assert not_run[0] == report.NOT_RUN_HEADERS
    assert {(r[0], r[3], r[4]) for r in not_run[1:]} == set(zip(bad.pipeline, bad.status, bad.reason))
    assert "error" in set(bad.status)
    if "onnx" in techniques.names():
        assert "skipped" in set(bad.status)


def _png_ok(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert 300 <= w <= 4000 and 200 <= h <= 5000, f"{path.name}: odd size {w}x{h}"
    assert img[..., :3].std() > 0.02, f"{path.name} looks blank"


def test_every_chart_is_a_sensible_png_and_referenced(real_run):
    paths = report.write(real_run)
    charts = [p for p in paths if p.suffix == ".png"]
    kinds = {p.name.split("_")[0] for p in charts}
    assert {"latency", "pareto", "throughput", "memory", "gflops"} <= kinds
    assert {p.name for p in charts} >= {"latency_lenet_bs1.png", "latency_lenet_bs8.png"}
    md = (real_run / "report.md").read_text()
    for p in charts:
        _png_ok(p)
        assert f"(charts/{p.name})" in md
    assert sorted(p.name for p in (real_run / "charts").glob("*.png")) == sorted(p.name for p in charts)


def _as_benchmark_json(records: Path, dest: Path) -> Path:
    """A pytest-benchmark --benchmark-json document whose extra_info rows are the records' rows."""
    df = pd.read_csv(records)
    benches = []
    for i, row in enumerate(df.to_dict("records")):
        info = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        benches.append({"name": f"test_cell[{i}]", "group": None, "extra_info": info,
                        "stats": {"min": 0.001, "max": 0.002, "mean": 0.0015, "median": 0.0015, "rounds": 3}})
    doc = {"machine_info": {"cpu": {"brand_raw": "test cpu"}, "python_version": "3.11"},
           "commit_info": {"id": "abc", "dirty": False}, "benchmarks": benches, "version": "5.3.1"}
    dest.write_text(json.dumps(doc))
    return dest


def _tables_part(md: str) -> str:
    """Everything but the header line and the environment (which differ between sources by nature)."""
    md = md.split("\n", 3)[3]
    head, _, rest = md.partition("## Environment")
    return head + rest.partition("## Model")[2]


def test_benchmark_json_gives_the_same_tables_as_the_csv(real_run, tmp_path):
    report.write(real_run)
    src = _as_benchmark_json(real_run / "records.csv", tmp_path / "bench.json")
    paths = report.write(src)
    assert paths[0] == tmp_path / "report.md"
    a, b = (real_run / "report.md").read_text(), (tmp_path / "report.md").read_text()
    assert _tables_part(a) == _tables_part(b)
    assert md_tables(b)["Environment"][2] == ["CPU model", "test cpu"]


# --- hand-made rows for the edges ------------------------------------------------------------------

def _row(**kw) -> dict:
    base = {"run_id": "r1", "model": "lenet", "pipeline": "eager", "scenario": "inference", "device": "cpu",
            "batch_size": 1, "data": "digits", "status": "ok", "reason": "", "latency_ms_p50": 1.0,
            "latency_ms_p99": 1.5, "latency_ms_ci_low": 0.9, "latency_ms_ci_high": 1.1, "throughput_sps": 1000.0,
            "speedup": 1.0, "speedup_ci_low": 0.98, "speedup_ci_high": 1.02, "peak_mem_mb": 10.0,
            "accuracy": 0.97, "baseline_accuracy": 0.97, "accuracy_delta": 0.0, "top1_agreement": 1.0,
            "max_abs_diff": 0.0, "flops": 4.5e6, "gflops_achieved": 4.5, "peak_gflops": 60.0, "figures": "{}"}
    base.update(kw)
    base.setdefault("fidelity", "exact" if base["pipeline"] in EXACT_PIPELINES else "approximate")
    return base


EXACT_PIPELINES = {"eager", "jit", "onnx:ep=cpu", "fusion", "channels_last"}


def _write(tmp_path: Path, rows: list[dict]) -> list[Path]:
    pd.DataFrame(rows).to_csv(tmp_path / "records.csv", index=False)
    return report.write(tmp_path)


LONG = "prune:amount=0.5,structured=true+quantize:mode=dynamic@onnx:ep=cpu,opt=extended"
CURVE = [[0.5, 0.3], [1.0, 0.8], [2.0, 0.95], [3.5, 0.975]]

EDGE_CASES = {
    "single_row": [_row()],
    "no_baseline": [_row(pipeline="onnx:ep=cpu", speedup=math.nan, speedup_ci_low=math.nan,
                         speedup_ci_high=math.nan)],
    "all_skipped": [_row(status="skipped", reason="onnx: VitisAIExecutionProvider not available",
                         pipeline="onnx:ep=fpga", latency_ms_p50=math.nan), _row(status="error", reason="boom",
                                                                                   pipeline="x", batch_size=8)],
    "synthetic": [_row(data="synthetic", accuracy=math.nan, accuracy_delta=math.nan),
                  _row(data="synthetic", pipeline="jit", speedup=2.5, speedup_ci_low=2.3, speedup_ci_high=2.7,
                       accuracy=math.nan, accuracy_delta=math.nan, latency_ms_p50=0.4)],
    "long_names": [_row()] + [_row(pipeline=LONG.replace("0.5", a), speedup=s, speedup_ci_low=s * 0.9,
                                   speedup_ci_high=s * 1.1, accuracy=0.97 - d, accuracy_delta=-d, batch_size=bs)
                              for a, s, d in (("0.5", 1.4, 0.001), ("0.7", 1.9, 0.02), ("0.9", 0.6, 0.05))
                              for bs in (1, 64)] + [_row(batch_size=64)],
    "training": [_row(scenario="training", pipeline=p, batch_size=64, final_accuracy=a, final_accuracy_spread=0.004,
                      time_to_target_s=t, target_accuracy=0.97, samples_per_s=s, step_ms_p50=3.0, seeds=2,
                      curve=json.dumps([[x * f, y] for x, y in CURVE]), figures=json.dumps(fig))
                 for p, a, t, s, f, fig in (
                     ("plain", 0.975, 3.0, 2000.0, 1.0, {}),
                     ("data_parallel:world_size=2", 0.974, 4.2, 1500.0, 1.4,
                      {"data_parallel.scaling_efficiency": 0.37, "data_parallel.world_size": 2}),
                     ("augment:policy=tutorial", 0.90, math.nan, 1800.0, 1.2, {}))],
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_cases_write_a_report_and_valid_charts(case, tmp_path):
    paths = _write(tmp_path, EDGE_CASES[case])
    md = (tmp_path / "report.md").read_text()
    html_text = (tmp_path / "report.html").read_text()
    for p in paths[2:]:
        _png_ok(p)
        assert f"(charts/{p.name})" in md
    # one script, the page's own fixed table sorter; nothing from the data becomes a script
    assert re.findall(r"<script[^>]*>", html_text) == ['<script id="sortable-tables">']
    assert html_mod.SORT_JS in html_text and "http://" not in html_text and "https://" not in html_text
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', html_text))
    names = {p.name for p in paths[2:]}
    if case == "no_baseline":
        assert "No eager row for this model and batch size" in md and "No speedup was measured" in md
        assert "no speedup was measured (no baseline)" in md
    if case == "all_skipped":
        assert not names and "VitisAIExecutionProvider not available" in md and "No pipeline ran" in md
    if case == "synthetic":
        assert "| n/a |" in md and "no accuracy-vs-speedup chart" in md
    if case == "long_names":
        t = md_tables(md)["lenet, batch size 64: inference"]
        assert [r[0] for r in t[1:]] == [LONG.replace("0.5", "0.7"), LONG, "eager", LONG.replace("0.5", "0.9")]
        assert [r[2] for r in t[1:]] == ["faster", "faster", "baseline", "slower"]
        assert [r[9] for r in t[1:]] == ["accuracy lost", "accuracy kept", "accuracy kept", "accuracy lost"]
        best = md_tables(md)["Best pipeline per model and batch size"]
        assert best[2][3] == LONG  # 1.9x lost 2 points: the best with accuracy kept is the 1.4x one
    if case == "training":
        assert {"time_to_accuracy_lenet.png", "scaling_data_parallel.png"} <= names
        t = md_tables(md)["lenet: training strategies (fastest to target first)"]
        assert [r[0] for r in t[1:]] == ["plain", "data_parallel:world_size=2", "augment:policy=tutorial"]
        assert [r[8] for r in t[1:]] == ["reference", "accuracy kept", "accuracy lost"]
        assert t[3][9] == "not reached"


def test_strings_from_the_data_are_escaped_in_html(tmp_path):
    _write(tmp_path, [_row(), _row(pipeline="evil<b>", status="error", reason="<script>alert(1)</script> & co")])
    page = (tmp_path / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    assert "evil&lt;b&gt;" in page


def test_a_failure_mid_report_leaves_the_previous_report(tmp_path, monkeypatch):
    _write(tmp_path, EDGE_CASES["long_names"])
    before = {p.relative_to(tmp_path): p.read_bytes() for p in [tmp_path / "report.md", tmp_path / "report.html",
                                                               *(tmp_path / "charts").glob("*.png")]}
    from bench.reporting import html as html_mod

    def broken(*a, **k):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(html_mod, "page", broken)
    with pytest.raises(OSError, match="disk full"):
        _write(tmp_path, EDGE_CASES["single_row"])
    assert {p: (tmp_path / p).read_bytes() for p in before} == before
    assert {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "charts").glob("*.png")}.keys() == {
        k for k in before if k.parts[0] == "charts"}
    assert not list(tmp_path.glob(".*")) and not list((tmp_path / "charts").glob(".*"))


def test_verdict_thresholds_follow_the_confidence_interval():
    r = {"status": "ok", "scenario": "inference", "pipeline": "x"}
    assert speed_verdict({**r, "speedup": 1.3, "speedup_ci_low": 1.06, "speedup_ci_high": 1.5}) == "faster"
    assert speed_verdict({**r, "speedup": 1.3, "speedup_ci_low": 1.04, "speedup_ci_high": 1.5}) == "no gain"
    assert speed_verdict({**r, "speedup": 0.8, "speedup_ci_low": 0.7, "speedup_ci_high": 0.94}) == "slower"
    assert speed_verdict({**r, "speedup": 0.8, "speedup_ci_low": 0.7, "speedup_ci_high": 0.96}) == "no gain"
    assert speed_verdict({**r, "speedup": math.nan}) == "n/a"
    assert speed_verdict({**r, "pipeline": "eager", "speedup": 0.5}) == "baseline"
    assert accuracy_verdict(-0.004) == "accuracy kept" and accuracy_verdict(-0.006) == "accuracy lost"
    assert accuracy_verdict(math.nan) == "n/a" and accuracy_verdict(None) == "n/a"


def test_short_labels_wrap_at_separators_and_stay_distinct():
    names = [LONG, LONG.replace("extended", "all"), "a" * 200 + "x", "a" * 200 + "y", "eager"]
    labels = short_labels(names)
    assert len(set(labels)) == len(names)
    assert all(len(line) <= 30 for lab in labels for line in lab.split("\n"))
    assert labels[-1] == "eager" and labels[0].replace("\n", "") == LONG


def test_pareto_front_keeps_points_not_beaten_on_both_axes():
    pts = [(1.0, 97.0), (2.0, 96.0), (1.5, 95.0), (3.0, 90.0), (0.5, 97.0)]
    assert pareto_front(pts) == [0, 1, 3]  # (0.5, 97) is beaten by (1.0, 97); (1.5, 95) by (2.0, 96)


def test_chart_names_of_distinct_models_never_collide(tmp_path):
    from bench.reporting.chartkit import slug
    assert slug("lenet") == "lenet" and slug("resnet8") == "resnet8"
    names = ["my_nets.zoo:make", "my_nets.zoo_make", "my_nets.zoo/make", "my nets.zoo:make"]
    assert len({slug(n) for n in names}) == len(names)
    rows = [_row(model=n) for n in names[:2]]
    paths = _write(tmp_path, rows)
    pngs = [p.name for p in paths if p.suffix == ".png" and p.name.startswith("latency_")]
    assert len(pngs) == 2, pngs
    md = (tmp_path / "report.md").read_text()
    for n in names[:2]:
        section = md.split(f"## Model {n}\n", 1)[1].split("\n## ", 1)[0]
        assert f"latency_{slug(n)}_bs1.png" in section  # each model's section shows its own chart


def test_a_run_over_two_thread_counts_reports_each(tmp_path):
    """One chart holds one row per pipeline: with --threads 1 --threads 2 the report must not crash."""
    from bench.cli import main
    out = tmp_path / "thr"
    assert main(["run", "--model", "lenet", "--pipeline", "eager", "--pipeline", "jit", "--batch-size", "2",
                 "--threads", "1", "--threads", "2", "--data", "synthetic", "--min-time", "0", "--no-isolate",
                 "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "lenet, batch size 2, 1 thread: inference" in md and "lenet, batch size 2, 2 threads: inference" in md
    assert "Inference charts show the 2-thread cells only" in md


def test_size_chart_shows_each_pipeline_across_models_and_leaves_out_invalid_rows(tmp_path):
    """On the committed reference run (real measurements of several models): one point per model
    and pipeline, sizes from each model's eager FLOPs, invalid rows never drawn."""
    from bench.records.read import load
    from bench.reporting import plots_size
    from bench.reporting.verdicts import prepare
    ref = Path(__file__).resolve().parents[1] / "results" / "reference-cpu"
    df = prepare(load(ref)[0])
    bs = int(df["batch_size"].min())
    eager = df[(df["pipeline"] == "eager") & (df["batch_size"] == bs) & (df["status"] == "ok")]
    victim = df[(df["batch_size"] == bs) & (df["status"] == "ok") & (df["pipeline"] == "jit")].index[0]
    df.loc[victim, "speed_verdict"] = "invalid"
    drawn, _, invalid = plots_size.drawn_rows(df, bs)
    assert victim in invalid.index and victim not in drawn.index
    assert (drawn.groupby("pipeline")["model"].nunique() >= 2).all()
    assert not drawn.duplicated(["pipeline", "model"]).any() and not (drawn["pipeline"] == "eager").any()
    for model, mf in drawn.drop_duplicates("model").set_index("model")["mf"].items():
        row = eager[eager["model"] == model].iloc[0]
        assert mf == pytest.approx(row["flops"] / bs / 1e6)
    chart, _ = plots_size.speedup_by_size(df, bs, tmp_path, {p: (0, 0, 0, 1) for p in df["pipeline"].unique()})
    _png_ok(chart.path)
    one, note = plots_size.speedup_by_size(df[df["model"] == eager["model"].iloc[0]], bs, tmp_path, {})
    assert one is None and note == ""          # one model: no size axis, and nothing to apologise for


# --- the answer needs evidence -----------------------------------------------------------------------

def _cell(*rows: dict) -> list[dict]:
    """An eager row and the given candidate rows, one cell (lenet, batch 1)."""
    return [_row(), *rows]


def _best(tmp_path: Path, rows: list[dict]) -> tuple[list[str], list[str]]:
    """The best table's header and first row, and every inference table's verdict column, from a real report."""
    _write(tmp_path, rows)
    tables = md_tables((tmp_path / "report.md").read_text())
    best = tables["Best pipeline per model and batch size"]
    assert best[0] == report.BEST_HEADERS
    return best[1], tables


def test_without_labels_an_int8_pipeline_is_never_named_best(tmp_path):
    """Unlabelled data: the faster int8 row has no accuracy, so the exact ONNX row is the answer."""
    nolab = dict(data="synthetic", accuracy=math.nan, baseline_accuracy=math.nan, accuracy_delta=math.nan)
    rows = [_row(**nolab),
            _row(pipeline="onnx:ep=cpu,quant=static", speedup=3.63, speedup_ci_low=3.5, speedup_ci_high=3.7,
                 top1_agreement=0.875, latency_ms_p50=0.28, **nolab),
            _row(pipeline="onnx:ep=cpu", speedup=2.0, speedup_ci_low=1.9, speedup_ci_high=2.1, latency_ms_p50=0.5,
                 **nolab)]
    best, tables = _best(tmp_path, rows)
    assert best[3] == "onnx:ep=cpu"
    assert "not named, accuracy not measured: onnx:ep=cpu,quant=static (3.63x)" in best[-1]
    # the first screen's answer: exact, never "accuracy kept" when no accuracy was measured
    answer = next(line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| batch 1 |"))
    assert "| onnx:ep=cpu |" in answer and "accuracy kept" not in answer, answer
    assert "exact: it keeps eager's outputs" in answer, answer
    verdicts = {r[0]: r[9] for r in tables["lenet, batch size 1: inference"][1:]}
    assert verdicts == {"onnx:ep=cpu,quant=static": "accuracy not measured", "onnx:ep=cpu": "n/a", "eager": "n/a"}
    # with only the int8 row faster, eager is kept and the table says why
    best, _ = _best(tmp_path, rows[:2])
    assert best[3] == "eager" and "accuracy was not measured" in best[-1]


def test_a_near_chance_baseline_withholds_accuracy_verdicts(tmp_path):
    """Eager at 20% on 10 classes (chance 10%): no verdict means anything, int8 is not named."""
    weak = dict(accuracy=0.2, baseline_accuracy=0.2, accuracy_delta=0.0, eval_images=360, num_classes=10)
    rows = [_row(**weak),
            _row(pipeline="quantize:mode=static", speedup=3.0, speedup_ci_low=2.9, speedup_ci_high=3.1,
                 top1_agreement=0.1875, **weak)]
    best, tables = _best(tmp_path, rows)
    reason = "baseline accuracy 20% is near chance (10%, 10 classes): bring trained weights with --weights"
    assert best[3] == "eager" and reason in best[-1] and best[6] == "20.00"
    assert {r[9] for r in tables["lenet, batch size 1: inference"][1:]} == {"withheld"}
    assert f"Accuracy verdicts withheld: {reason}" in (tmp_path / "report.md").read_text()
    # an exact pipeline keeps eager's outputs whatever eager's accuracy: it can still be named
    rows.append(_row(pipeline="jit", speedup=1.5, speedup_ci_low=1.4, speedup_ci_high=1.6, **weak))
    best, _ = _best(tmp_path, rows)
    assert best[3] == "jit" and "accuracy verdicts withheld" in best[-1]
    assert "withheld (baseline near chance): quantize:mode=static (3.00x)" in best[-1]


def test_near_chance_by_interval_or_by_multiple():
    from bench.reporting.verdicts import weak_baseline
    assert weak_baseline(0.2, 360, 10)                  # 2x chance, a tight interval: still too weak
    assert not weak_baseline(0.4861, 360, 10)           # gap_convnet's 48.6% is weak but judgeable
    assert weak_baseline(0.25, 12, 10)                  # 3 of 12 right: its interval reaches 10%
    assert not weak_baseline(0.97, 360, 10) and not weak_baseline(0.2, 360, math.nan)
    assert weak_baseline(0.7, 360, 2) and not weak_baseline(0.9, 360, 2)   # two classes: bar at 75%


def test_low_top1_agreement_is_not_accuracy_kept():
    """Same accuracy, mostly different predictions: the delta is luck, not kept accuracy."""
    from bench.reporting.verdicts import row_accuracy_verdict
    r = {"status": "ok", "scenario": "inference", "pipeline": "quantize:mode=static", "fidelity": "approximate",
         "accuracy_delta": 0.0, "baseline_accuracy": 0.6, "top1_agreement": 0.5, "num_classes": 10,
         "eval_images": 360}
    assert row_accuracy_verdict(r) == "predictions changed"
    assert row_accuracy_verdict({**r, "top1_agreement": 0.597}) == "accuracy kept"
    assert row_accuracy_verdict({**r, "fidelity": "exact"}) == "accuracy kept"   # exact: the promise is the guard
    assert row_accuracy_verdict({**r, "accuracy_delta": math.nan}) == "accuracy not measured"


def test_a_tie_goes_to_the_exact_pipeline_and_names_the_runner_up(tmp_path):
    """int8 ONNX 6.39x [6.32-6.60] against fp32 ONNX 6.26x [6.15-6.35]: the intervals overlap."""
    rows = _cell(_row(pipeline="onnx:ep=cpu,quant=static", speedup=6.39, speedup_ci_low=6.32, speedup_ci_high=6.60,
                      setup_s=3.0, top1_agreement=0.995),
                 _row(pipeline="onnx:ep=cpu", speedup=6.26, speedup_ci_low=6.15, speedup_ci_high=6.35, setup_s=2.0))
    best, _ = _best(tmp_path, rows)
    assert best[3] == "onnx:ep=cpu" and best[4] == "6.26 [6.15–6.35]" and best[8] == "100.00"
    assert best[-1] == ("tie with runner-up onnx:ep=cpu,quant=static (6.39x [6.32-6.60]): speedup intervals "
                        "overlap; exact preferred over approximate")
    # two exact pipelines in a tie: the one with less set-up
    rows[1] = _row(pipeline="jit", speedup=6.39, speedup_ci_low=6.32, speedup_ci_high=6.60, setup_s=3.0)
    best, _ = _best(tmp_path, rows)
    assert best[3] == "onnx:ep=cpu" and "tie with runner-up jit" in best[-1] and "less set-up (2 s against 3 s)" in best[-1]
    # intervals apart: the fastest, no tie
    rows[1] = _row(pipeline="onnx:ep=cpu,quant=static", speedup=7.5, speedup_ci_low=7.4, speedup_ci_high=7.6,
                   setup_s=3.0, top1_agreement=0.995)
    best, _ = _best(tmp_path, rows)
    assert best[3] == "onnx:ep=cpu,quant=static" and best[-1] == DASH


DASH = report.DASH


def test_a_model_with_no_ok_cell_is_no_result(tmp_path):
    rows = [_row(), _row(model="convnext", status="error", reason="boom", latency_ms_p50=math.nan),
            _row(model="convnext", pipeline="jit", status="error", reason="boom", latency_ms_p50=math.nan)]
    _write(tmp_path, rows)
    best = md_tables((tmp_path / "report.md").read_text())["Best pipeline per model and batch size"]
    by_model = {r[0]: r for r in best[1:]}
    assert by_model["convnext"][3] == "no result" and "no pipeline ran" in by_model["convnext"][-1]
    assert by_model["lenet"][3] == "eager"


def test_the_latency_chart_pairs_each_pipeline_with_its_own_in_cell_baseline(tmp_path, monkeypatch):
    """convnext: the jit cell's eager ran at 5.2 ms, the eager cell's at 22.3 ms (another window). Each
    pipeline's bar sits beside its own cell's baseline, so a 0.92x label reads against 5.2 ms, not 22.3."""
    from bench.reporting import plots
    rows = [_row(model="convnext", latency_ms_p50=22.3, baseline_ms_p50=22.2, latency_ms_p99=25.0,
                 latency_ms_ci_low=22.0, latency_ms_ci_high=22.9),
            _row(model="convnext", pipeline="jit", latency_ms_p50=5.7, baseline_ms_p50=5.24, speedup=0.92,
                 speedup_ci_low=0.9, speedup_ci_high=0.94, latency_ms_p99=6.0, latency_ms_ci_low=5.6,
                 latency_ms_ci_high=5.8)]
    seen = {}
    real_save = plots.save

    def keep(fig, path):
        ax = fig.axes[0]
        seen[path.name] = (sorted(round(p.get_width(), 2) for p in ax.patches), [t.get_text() for t in ax.texts])
        return real_save(fig, path)
    monkeypatch.setattr(plots, "save", keep)
    paths = _write(tmp_path, rows)
    widths, texts = seen["latency_convnext_bs1.png"]
    assert widths == [5.24, 5.7, 22.2, 22.3]
    assert any(t.startswith("5.7 ms  0.92x") for t in texts) and "5.24 ms" in texts
    _png_ok(next(p for p in paths if p.name == "latency_convnext_bs1.png"))


def test_provenance_on_unlabelled_data_claims_no_accuracy():
    nolab = pd.DataFrame([{"weights": "random", "data": "synthetic", "eval_images": 256, "accuracy": math.nan}])
    text = report.model_provenance(nolab)
    assert "Accuracy on" not in text and "Outputs compared with eager's on 256 test images" in text, text
    labelled = nolab.assign(accuracy=0.97)
    assert "Accuracy on 256 test images" in report.model_provenance(labelled)
