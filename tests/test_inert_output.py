"""Names and reasons from users' files reach a terminal, a spreadsheet and report.md as text, never as commands."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from bench import cli
from bench.records import read, write
from bench.terminal import inert

REPO = Path(__file__).resolve().parents[1]
HOSTILE_NAME = "lenet\x1b[2J\x1b]0;PWNED\x07\u202e"
FORMULA_SPEC = "=cmd|' /C calc'!A0"


def test_inert_escapes_every_control_and_bidi_character_and_keeps_text():
    assert inert(HOSTILE_NAME + "\r") == "lenet\\x1b[2J\\x1b]0;PWNED\\x07\\u202e\\r"
    assert inert("a\nb") == "a\\nb" and inert("a\nb", newlines=True) == "a\nb"
    assert inert("x\x9b31m \x7f\x00") == "x\\x9b31m \\x7f\\x00"
    assert inert("résumé 1.5x [1.2–1.8] ✓") == "résumé 1.5x [1.2–1.8] ✓"


def _row(model: str, pipeline: str, speedup: float, **extra) -> dict:
    return {"run_id": "20260101T000000Z", "model": model, "pipeline": pipeline, "scenario": "inference",
            "batch_size": 1, "status": "ok", "speedup": speedup, "speedup_ci_low": speedup - 0.02,
            "speedup_ci_high": speedup + 0.02, "accuracy": 0.97, "peak_mem_mb": 30.0, "valid": True, **extra}


def _records(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir()
    w = write.RecordWriter(folder / "records.csv")
    for r in rows:
        w.write(r)
    w.close()
    return folder


def test_compare_and_history_print_a_hostile_model_name_escaped(tmp_path, capsys):
    rows = [_row(HOSTILE_NAME, "eager", 1.0), _row(HOSTILE_NAME, "fusion@jit", 1.5)]
    base = _records(tmp_path / "base", rows)
    cur = _records(tmp_path / "cur", [rows[0], _row(HOSTILE_NAME, "fusion@jit", 0.5)])
    assert cli.main(["compare", str(base), str(cur)]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "\u202e" not in out
    assert "regression: lenet\\x1b[2J\\x1b]0;PWNED\\x07\\u202e fusion@jit bs=1: speedup" in out
    db = tmp_path / "h.sqlite"
    assert cli.main(["history", "add", str(base), "--db", str(db)]) == 0
    assert cli.main(["history", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "lenet\\x1b[2J" in out and "\x1b" not in out and "\x07" not in out


def test_an_error_line_naming_a_hostile_spec_is_one_inert_line():
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--model", "nosuch\x1b]0;PWNED\x07\nmod:f",
                           "--no-history"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    assert "nosuch\\x1b]0;PWNED\\x07" in proc.stderr


def test_records_csv_quotes_formula_text_and_reads_it_back_as_given(tmp_path):
    out = _records(tmp_path / "run", [_row(FORMULA_SPEC, "@SUM(A1)", -0.5, reason="+1", device="-")])
    raw = next(csv.DictReader(open(out / "records.csv", newline="")))
    assert raw["model"] == "'" + FORMULA_SPEC and raw["pipeline"] == "'@SUM(A1)" and raw["reason"] == "'+1"
    assert raw["speedup"] == "-0.5" and raw["speedup_ci_low"] == "-0.52" and raw["device"] == "-"
    df, _ = read.load(out)
    row = df.iloc[0]
    assert (row["model"], row["pipeline"], row["reason"], row["device"]) == (FORMULA_SPEC, "@SUM(A1)", "+1", "-")
    assert row["speedup"] == -0.5 and row["speedup_ci_low"] == -0.52 and bool(row["valid"])
    # a rewrite (what a run does once a group is judged) keeps both the quoting and the values
    write.replace_rows(out / "records.csv", keep=1, rows=[_row("'=x", "eager", 1.0)])
    df, _ = read.load(out)
    assert df["model"].tolist() == [FORMULA_SPEC, "'=x"]


def test_report_md_shows_a_script_in_a_name_as_text(tmp_path):
    from bench.reporting import report

    name = "<script>alert(1)</script>"
    out = _records(tmp_path / "run", [_row(name, "eager", 1.0), _row(name, "fusion@jit", 1.5)])
    report.write(out)
    md = (out / "report.md").read_text()
    assert "<script>" not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert "<script>" not in (out / "report.html").read_text()
