"""The regression gate fails closed: a figure it cannot read is a regression or a refusal, never a dropped check."""

from __future__ import annotations

import csv
import json

import pytest

from bench import cli
from bench.records.columns import COLUMNS


def _row(pipeline: str, speedup: object = 1.5, accuracy: object = 0.97, valid: str = "true") -> dict:
    return {"run_id": "r", "model": "lenet", "pipeline": pipeline, "scenario": "inference", "batch_size": 1,
            "status": "ok", "speedup": speedup, "speedup_ci_low": 1.45, "speedup_ci_high": 1.55,
            "accuracy": accuracy, "peak_mem_mb": 30.0, "valid": valid}


def _run(tmp_path, name: str, rows: list[dict]):
    out = tmp_path / name
    out.mkdir()
    with open(out / "records.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return out


def _base(tmp_path):
    return _run(tmp_path, "base", [_row("eager", speedup=1.0), _row("fusion@jit")])


def _compare(capsys, base, cur, *extra) -> tuple[int, str, str]:
    code = cli.main(["compare", str(base), str(cur), *extra])
    got = capsys.readouterr()
    return code, got.out, got.err


@pytest.mark.parametrize("figure, value", [("speedup", ""), ("speedup", "nan"), ("accuracy", "")])
def test_a_figure_missing_from_an_ok_row_now_is_a_regression_naming_the_cell(tmp_path, capsys, figure, value):
    cur = _run(tmp_path, "cur", [_row("eager", speedup=1.0), _row("fusion@jit", **{figure: value})])
    code, out, _ = _compare(capsys, _base(tmp_path), cur)
    assert code == 1, out
    assert f"regression: lenet fusion@jit bs=1: {figure}" in out and "missing now" in out


@pytest.mark.parametrize("column, value, wanted", [("speedup", "abc", "a number"), ("valid", "maybe", "true or false")])
def test_a_cell_that_is_not_its_columns_type_is_refused_in_one_line(tmp_path, capsys, column, value, wanted):
    row = _row("fusion@jit")
    row[column] = value
    cur = _run(tmp_path, "cur", [_row("eager", speedup=1.0), row])
    code, out, err = _compare(capsys, _base(tmp_path), cur)
    assert code == 2 and not out
    assert err.count("\n") == 1 and f"records.csv: line 3: {column} is '{value}', not {wanted}" in err


@pytest.mark.parametrize("doc, says", [({"benchmarks": 5}, "not a pytest-benchmark JSON"),
                                       ({"benchmarks": [5]}, "not a pytest-benchmark JSON"),
                                       ({"benchmarks": [], "machine_info": [1]}, "not a pytest-benchmark JSON"),
                                       ({"benchmarks": [{"extra_info": {**_row("fusion@jit"), "valid": "maybe"}}]},
                                        "row 1: valid is 'maybe', not true or false")])
def test_a_malformed_benchmark_json_is_refused_in_one_line(tmp_path, capsys, doc, says):
    path = tmp_path / "cur.json"
    path.write_text(json.dumps(doc))
    code, out, err = _compare(capsys, _base(tmp_path), path)
    assert code == 2 and err.count("\n") == 1 and f"cur.json: {says}" in err


@pytest.mark.parametrize("gate", [{"calibration": "x"}, [1], {"calibration": {"cells": [{"model": "lenet"}]}},
                                  {"calibration": {"cells": [{"model": "lenet", "pipeline": "eager", "scenario": "inference",
                                                              "batch_size": 1, "threads": 0, "max_slowdown": "nan"}]}}])
def test_a_malformed_gate_file_is_refused_in_one_line(tmp_path, capsys, gate):
    base = _base(tmp_path)
    (base / "gate.json").write_text(json.dumps(gate))
    cur = _run(tmp_path, "cur", [_row("eager", speedup=1.0), _row("fusion@jit")])
    code, out, err = _compare(capsys, base, cur)
    assert code == 2 and err.count("\n") == 1 and "gate.json: not a gate file written by `accelbench calibrate`" in err
    assert _compare(capsys, base, cur, "--no-calibration")[0] == 0   # the way out the line names works
