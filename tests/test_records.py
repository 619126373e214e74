"""The results format: committed runs read back typed, rows round-trip through records.csv, JSON and SQL,
and validity reasons are enumeration values rendered to the same text."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from bench.measure.stats import Measurement, PairedBlocks
from bench.records import columns, read, write
from bench.records.reasons import Invalid, Why
from bench.running.cell import CellSpec
from bench.running.result import CellResult, Fidelity

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = [ROOT / "results" / "reference-cpu", ROOT / "results" / "baseline-ci"]


def _check_types(df: pd.DataFrame) -> None:
    assert list(df.columns[: len(columns.COLUMNS)]) == columns.COLUMNS
    for c in (c.name for c in columns.SCHEMA if c.dtype == "bool"):
        assert str(df[c].dtype) == "boolean", c
    for c in columns.INT_COLUMNS:
        assert str(df[c].dtype) == "Int64", c
    for c in columns.FLOAT_COLUMNS:
        assert df[c].dtype == "float64", c
    for c in columns.TEXT_COLUMNS:
        if c not in columns.JSON_COLUMNS and columns.BY_NAME[c].dtype != "bool":
            assert all(isinstance(v, str) for v in df[c]), c
    assert all(isinstance(v, dict) for v in df["figures"]) and all(isinstance(v, list) for v in df["curve"])


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda p: p.name)
def test_committed_runs_read_back_typed(folder):
    df, env = read.load(folder)
    _check_types(df)
    text = pd.read_csv(folder / "records.csv", dtype=str, keep_default_na=False)
    # valid: true -> True, false -> False, empty (skipped rows, not judged) -> <NA>
    assert list(df["valid"].map(lambda v: "" if v is pd.NA else str(v).lower())) == list(text["valid"])
    assert (df["threads"] >= 0).all() and (df["scenario"] != "").all()
    ok = df[df["status"] == "ok"]
    assert ok["speedup"].notna().all() and ok["batch_size"].notna().all()
    assert all(isinstance(v, list) and v for v in df["technique_params"])
    assert env.get("run_id") or env.get("cpu_model")


def test_reference_run_has_rows_not_judged():
    df, _ = read.load(COMMITTED[0])
    assert df["valid"].isna().any() and (df.loc[df["valid"].isna(), "status"] != "ok").all()


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda p: p.name)
def test_typed_rows_written_again_read_back_the_same(folder, tmp_path):
    df, _ = read.load(folder)
    w = write.RecordWriter(tmp_path / "records.csv")
    for row in df.to_dict("records"):
        w.write(row)
    w.close()
    again, _ = read.load(tmp_path / "records.csv")
    pd.testing.assert_frame_equal(again, df)


def _result(valid: bool = True, invalid: tuple = ()) -> CellResult:
    pb = PairedBlocks(Measurement("candidate", (0.001, 0.0011, 0.0009)), Measurement("baseline", (0.002,) * 3),
                      (2.0, 2.1, 1.9), 1)
    fid = Fidelity(0.97, 0.975, 0.99, 1e-6, (0.95, 0.98), 0.5, 1e-4, images=360)
    return CellResult("ok", device="cpu", params=({"technique": "jit", "channels_last": False},), setup_s=0.25,
                      figures={"jit.b": 2.0, "jit.a": 1}, timing=pb, fidelity=fid, promise="exact", valid=valid,
                      invalid=invalid, torch_threads=2, runtime_threads=2)


def test_a_row_written_and_read_back_round_trips(tmp_path):
    spec = CellSpec.of("lenet", "jit", 64)
    why = (Why(Invalid.INTERVAL_TOO_WIDE, "speedup interval +-12% is wider than +-10%"),
           Why(Invalid.BASELINE_DEPARTED, "in-cell eager baseline 2 ms vs the run's eager cell 1 ms (2.00x)"))
    rows = [_result().to_row(spec, run_id="r1", wall_s=1.5),
            _result(False, why).to_row(spec, run_id="r1", wall_s=1.5),
            CellResult("skipped", "no CUDA").to_row(spec, run_id="r1", wall_s=0.0)]
    w = write.RecordWriter(tmp_path / "records.csv")
    for row in rows:
        w.write(row)
    w.close()
    text = (tmp_path / "records.csv").read_text().splitlines()
    assert ",true,," in text[1] and ",false,speedup interval +-12% is wider than +-10%; in-cell eager" in text[2]
    df, _ = read.load(tmp_path / "records.csv")
    _check_types(df)
    assert list(df["valid"].astype(object).where(df["valid"].notna(), None)) == [True, False, None]
    assert df["validity"].iloc[1] == "; ".join(w.text for w in why)
    first = df.iloc[0]
    assert first["batch_size"] == 64 and first["threads"] == 0 and first["eval_images"] == 360
    assert first["figures"] == {"jit.a": 1, "jit.b": 2.0}
    assert first["technique_params"] == [{"technique": "jit", "channels_last": False}]
    for col in ("speedup", "latency_ms_p50", "accuracy", "max_abs_diff", "setup_s", "wall_s"):
        assert first[col] == rows[0][col], col
    skipped = df.iloc[2]
    assert skipped["reason"] == "no CUDA" and math.isnan(skipped["speedup"]) and skipped["figures"] == {}


def test_a_pytest_benchmark_json_reads_as_the_same_typed_rows(tmp_path):
    from bench.pytest_plugin import extra_info

    spec = CellSpec.of("lenet", "jit", 1)
    rows = [_result().to_row(spec, run_id="r1", wall_s=1.0), CellResult("error", "boom").to_row(spec, run_id="r1",
                                                                                               wall_s=0.0)]
    w = write.RecordWriter(tmp_path / "records.csv")
    for row in rows:
        w.write(row)
    w.close()
    doc = {"benchmarks": [{"extra_info": extra_info(rows[0])}], "accelbench_unbenchmarked": [extra_info(rows[1])]}
    (tmp_path / "bench.json").write_text(json.dumps(doc, allow_nan=False))
    from_json, _ = read.load(tmp_path / "bench.json")
    from_csv, _ = read.load(tmp_path / "records.csv")
    pd.testing.assert_frame_equal(from_json, from_csv)


def test_validity_reasons_are_enumerations_with_the_rows_text():
    from bench.running import validity

    spec = CellSpec.of("lenet", "onnx:ep=cpu", 1)
    nondet = Why(Invalid.NONDETERMINISTIC, "nondeterministic model: two eager calls differ")
    result = _result(False, (nondet,))
    row = result.to_row(spec, run_id="r", wall_s=1.0)
    judged, reasons = validity.judge(row, result.invalid, validity.reference([0.5]))   # in-cell eager 2 ms: departed
    assert [w.kind for w in reasons] == [Invalid.NONDETERMINISTIC, Invalid.BASELINE_DEPARTED]
    assert judged["validity"].startswith("nondeterministic model: two eager calls differ; in-cell eager baseline 2 ms")
    # only a disturbed measurement is measured again: a nondeterministic model stays so
    assert not all(w.kind.disturbed for w in reasons)
    assert Invalid.INTERVAL_TOO_WIDE.disturbed and Invalid.TOO_FEW_ROUNDS.disturbed


def test_valid_as_text_is_refused_where_a_typed_value_is_needed():
    assert read.marked_invalid(False) and not read.marked_invalid(True) and not read.marked_invalid(pd.NA)
    assert not read.marked_invalid(None)
    with pytest.raises(TypeError, match="bench.records.read"):
        read.marked_invalid("false")
    assert read.typed_row({"model": "m", "pipeline": "p", "batch_size": "1", "valid": "false"})["valid"] is False


def test_every_column_is_declared_once_with_a_known_dtype_and_a_meaning():
    names = [c.name for c in columns.SCHEMA]
    assert len(names) == len(set(names)) and set(columns.KEY_COLUMNS) <= set(names)
    assert all(c.meaning and c.dtype in columns.DTYPES for c in columns.SCHEMA)
    assert columns.TRAINING_COLUMNS <= set(names)
    with pytest.raises(ValueError, match="dtype must be one of"):
        columns.Column("x", "decimal", "", "a column")
