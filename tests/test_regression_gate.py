"""CI's performance gate: a small real run of this code against results/baseline-ci/, and the benchmark
suite run the way a user runs it (`pytest --benchmark-only --benchmark-json`), read back by our tools."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import cli
from bench.records.columns import KEY_COLUMNS
from bench.records.read import load

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "results" / "baseline-ci"


@pytest.fixture(scope="module")
def gate() -> dict:
    path = BASELINE / "gate.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the CI gate needs the committed baseline (see results/baseline-ci/README.md)")
    return json.loads(path.read_text())


def _gate_argv(gate: dict, out: Path) -> list[str]:
    """The documented baseline command (gate.json, README), writing to `out` instead."""
    argv = shlex.split(gate["command"])
    assert argv[:2] == ["accelbench", "run"] and "--out" in argv, gate["command"]
    argv[argv.index("--out") + 1] = str(out)
    return argv[1:]


def test_gate_command_is_the_one_that_made_the_baseline(gate):
    made_with = json.loads((BASELINE / "env.json").read_text())["command"].split()
    assert made_with[made_with.index("run"):] == shlex.split(gate["command"])[1:], \
        "results/baseline-ci/ was made with another command than gate.json's; regenerate it (see its README)"


def test_current_code_has_no_regression_against_the_committed_baseline(gate, tmp_path, capsys):
    out = tmp_path / "current"
    # A fresh process, exactly as the baseline was made: same threads, same memory accounting.
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *_gate_argv(gate, out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    th = gate["thresholds"]
    code = cli.main(["compare", str(BASELINE), str(out), "--max-slowdown", th["max_slowdown"],
                     "--max-accuracy-drop", th["max_accuracy_drop"], "--max-memory-growth", th["max_memory_growth"]])
    table = capsys.readouterr().out
    with capsys.disabled():
        print("\n" + table)
    assert code == 0, table


# --- the pytest-benchmark suite, run in a subprocess as a user would --------------------------------

@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("suite")
    cmd = [sys.executable, "-m", "pytest", "tests/benchmarks", "--benchmark-only", "--accel-pipelines", "eager",
           "--accel-batch-sizes", "1", "--accel-threads", "1", "--accel-min-time", "0.2",
           f"--benchmark-json={d / 'out.json'}", "--accel-out", str(d / "run"), "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return d


def _table(df: pd.DataFrame) -> pd.DataFrame:
    drop = ["timestamp", "wall_s"]  # when each row was written differs by design
    return df.drop(columns=drop).sort_values(KEY_COLUMNS).reset_index(drop=True)


def test_suite_json_holds_the_same_table_as_its_records_csv(suite_run):
    from_json, env = load(suite_run / "out.json")
    from_csv, _ = load(suite_run / "run")
    assert len(from_json) == 1 and from_json.loc[0, "status"] == "ok" and from_json.loc[0, "pipeline"] == "eager"
    assert from_json.loc[0, "latency_ms_p50"] > 0 and 0 <= from_json.loc[0, "accuracy"] <= 1
    pd.testing.assert_frame_equal(_table(from_json), _table(from_csv), check_dtype=False)
    assert env["torch"] and env["cpu_model"]  # the accelbench environment record rides in machine_info
    assert cli.main(["compare", str(suite_run / "run"), str(suite_run / "out.json")]) == 0


def test_suite_json_is_strict_json_that_pytest_benchmark_compare_reads(suite_run):
    text = (suite_run / "out.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c} in extra_info"))
    exe = Path(sys.executable).with_name("pytest-benchmark")
    proc = subprocess.run([str(exe), "compare", str(suite_run / "out.json")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "test_pipeline[lenet-eager-bs1]" in proc.stdout


def test_accelbench_report_reads_the_suite_json(suite_run, tmp_path):
    assert cli.main(["report", str(suite_run / "out.json"), "--out", str(tmp_path)]) == 0
    written = [p for p in tmp_path.iterdir() if p.suffix in (".md", ".html")]
    assert written and "eager" in (tmp_path / "report.md").read_text()
