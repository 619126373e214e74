"""Property-based fuzz of the files others hand us: records.csv, run.json, env.json, samples.jsonl, gate.json,
explain.jsonl and history databases, cut, retyped, with columns missing or added, or another program's, against every reader.

Readers: `compare`, `report`, `history add` and `history` run whole (they only read and render); `run
--resume` through `_build_run_config`, all `main` does before it measures, with main itself called on what
that refuses, and the resumed run's own reading of records.csv (`read.read_csv`, `cell_key`) directly.
Each file starts as a real run's (results/baseline-ci) and is mutated; the guarantee is that of
tests/fuzzing.py, and a refused file's folder is left byte for byte as it was.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import cli
from bench.api import UserError, load_registries
from bench.records import read
from bench.records.columns import cell_key
from tests.fuzzing import FUZZ, JUNK, NUMBER_TEXT, assert_clean, call, files_under

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "results" / "baseline-ci"
FILES = ("records.csv", "run.json", "env.json", "samples.jsonl", "gate.json")

JSON = st.recursive(st.none() | st.booleans() | st.integers(-10 ** 12, 10 ** 12) | st.floats() | JUNK,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(JUNK, inner, max_size=3),
                    max_leaves=8)


@st.composite
def csv_mutation(draw, text: str) -> bytes:
    rows = list(csv.reader(io.StringIO(text)))
    kind = draw(st.sampled_from(["cut", "drop column", "extra column", "retype cell", "header only", "garbage"]))
    if kind == "cut":
        data = text.encode()
        return data[:draw(st.integers(0, len(data)))]
    if kind == "garbage":
        return draw(st.binary(max_size=200))
    if kind == "header only":
        rows = rows[:1]
    elif kind == "drop column":
        i = draw(st.integers(0, len(rows[0]) - 1))
        rows = [r[:i] + r[i + 1:] for r in rows]
    elif kind == "extra column":
        rows = [rows[0] + [draw(JUNK)]] + [r + [draw(JUNK)] for r in rows[1:]]
    else:
        r, c = draw(st.integers(1, len(rows) - 1)), draw(st.integers(0, len(rows[0]) - 1))
        rows[r][c] = draw(st.one_of(NUMBER_TEXT, JUNK))
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


@st.composite
def json_mutation(draw, text: str, lines: bool = False) -> bytes:
    kind = draw(st.sampled_from(["cut", "other document", "retype key", "drop key", "garbage"]))
    if kind == "cut":
        data = text.encode()
        return data[:draw(st.integers(0, len(data)))]
    if kind == "garbage":
        return draw(st.binary(max_size=200))
    if kind == "other document":
        return json.dumps(draw(JSON)).encode()
    docs = [json.loads(ln) for ln in text.splitlines()[:3]] if lines else [json.loads(text)]
    for doc in docs:
        if isinstance(doc, dict) and doc:
            key = draw(st.sampled_from(sorted(doc)))
            if kind == "drop key":
                del doc[key]
            else:
                doc[key] = draw(JSON)
    return "\n".join(json.dumps(d) for d in docs).encode()


def mutated(draw, which: str) -> bytes:
    text = (BASELINE / which).read_text()
    if which == "records.csv":
        return draw(csv_mutation(text))
    return draw(json_mutation(text, lines=which == "samples.jsonl"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    load_registries()
    return tmp_path_factory.mktemp("fuzz-files")


def _folder(scratch: Path, draw) -> tuple[Path, str]:
    """A copy of the baseline run with one file mutated (which one is drawn)."""
    folder = Path(tempfile.mkdtemp(dir=scratch)) / "run"
    shutil.copytree(BASELINE, folder)
    which = draw(st.sampled_from(FILES))
    (folder / which).write_bytes(mutated(draw, which))
    return folder, which


def _hashes(folder: Path) -> dict[str, str]:
    return {p: hashlib.sha256((folder / p).read_bytes()).hexdigest() for p in files_under(folder)
            if (folder / p).is_file() and p != ".lock"}


@FUZZ
@given(data=st.data())
def test_compare_reads_any_run_folder(scratch, data):
    folder, _ = _folder(scratch, data.draw)
    before = _hashes(folder)
    for argv in (["compare", str(folder), str(BASELINE)], ["compare", str(BASELINE), str(folder)]):
        o = call(argv)
        assert_clean(o, argv)
    assert _hashes(folder) == before


@FUZZ
@given(data=st.data())
def test_history_add_reads_any_run_folder(scratch, data):
    folder, _ = _folder(scratch, data.draw)
    db = folder.parent / "history.sqlite"
    before = _hashes(folder)
    argv = ["history", "add", str(folder), "--db", str(db)]
    o = call(argv)
    assert_clean(o, argv)
    assert o.code in (0, 2)
    if o.code == 2:
        assert not db.exists(), argv   # every source is read before the database is opened
    assert _hashes(folder) == before


@settings(FUZZ, max_examples=max(3, FUZZ.max_examples // 4))   # a report that renders draws charts: seconds each
@given(data=st.data())
def test_report_reads_any_run_folder(scratch, data):
    folder, _ = _folder(scratch, data.draw)
    out = folder.parent / "report"
    before = _hashes(folder)
    argv = ["report", str(folder), "--out", str(out)]
    o = call(argv)
    assert_clean(o, argv)
    assert o.code in (0, 2)
    if o.code == 2:
        assert files_under(out) == []
    assert _hashes(folder) == before


@FUZZ
@given(data=st.data())
def test_resume_reads_any_run_folder(scratch, data):
    folder, which = _folder(scratch, data.draw)
    before = _hashes(folder)
    argv = ["run", "--resume", str(folder), "--no-history", "--no-report"]
    try:
        cli._build_run_config(cli.build_parser().parse_args(argv))
    except UserError:
        o = call(argv)
        assert_clean(o, argv)
        assert o.code == 2, (argv, o)
        assert _hashes(folder) == before
    # The rows a resumed run reads to know which cells are done: read, or refused in one line.
    try:
        rows = read.read_csv(folder / "records.csv").to_dict("records")
    except UserError as exc:
        assert "\n" not in str(exc)
    else:
        {cell_key(r) for r in rows}


@settings(FUZZ, max_examples=max(3, FUZZ.max_examples // 4))   # calibrate reads four runs: seconds each
@given(data=st.data())
def test_calibrate_reads_any_gate_and_runs(scratch, data):
    folder, _ = _folder(scratch, data.draw)
    before = _hashes(folder)
    argv = ["calibrate", str(folder), "--from", str(folder), str(BASELINE), str(BASELINE), "--dry-run"]
    o = call(argv)
    assert_clean(o, argv)
    assert _hashes(folder) == before


@pytest.fixture(scope="module")
def good_history(scratch):
    db = scratch / "good.sqlite"
    assert call(["history", "add", str(BASELINE), "--db", str(db)]).code == 0
    return db


@FUZZ
@given(data=st.data())
def test_history_reads_any_database(scratch, good_history, data):
    db = Path(tempfile.mkdtemp(dir=scratch)) / "h.sqlite"
    shutil.copy(good_history, db)
    kind = data.draw(st.sampled_from(["cut", "drop table", "drop column", "junk row", "foreign table"]))
    if kind == "cut":
        raw = db.read_bytes()
        db.write_bytes(raw[:data.draw(st.integers(0, len(raw)))])
    else:
        con = sqlite3.connect(db)
        table = data.draw(st.sampled_from(["runs", "records"]))
        info = list(con.execute(f"PRAGMA table_info({table})"))
        columns = [r[1] for r in info]
        droppable = [r[1] for r in info if not r[5] and r[1] not in ("uid", "date", "run_pk")]   # SQLite keeps keys
        if kind == "drop table":
            con.execute(f"DROP TABLE {table}")
        elif kind == "drop column":
            con.execute(f'ALTER TABLE {table} DROP COLUMN "{data.draw(st.sampled_from(droppable))}"')
        elif kind == "junk row":
            values = [data.draw(st.one_of(st.none(), NUMBER_TEXT, JUNK, st.integers(-10, 10))) for _ in columns]
            con.execute(f"INSERT OR IGNORE INTO {table} VALUES ({','.join('?' * len(columns))})", values)
        else:
            con.execute(f"DROP TABLE {table}")
            con.execute(f"CREATE TABLE {table} (id INTEGER, what TEXT)")
        con.commit()
        con.close()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    argv = ["history", "--db", str(db), "--last", "3"]
    o = call(argv)
    assert_clean(o, argv)
    assert o.code in (0, 2)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before, kind


@pytest.fixture(scope="module")
def explained(scratch):
    """A real run with explanations (two cells, in this process): explain.jsonl as the runner writes it."""
    out = scratch / "explained"
    argv = ["run", "--model", "lenet", "--pipeline", "eager", "--pipeline", "prune:amount=0.5", "--batch-size", "2",
            "--data", "synthetic", "--quick", "--no-isolate", "--no-history", "--no-report", "--threads", "1",
            "--out", str(out)]
    o = call(argv)
    assert o.code == 0 and (out / "explain.jsonl").is_file(), o
    return out


@FUZZ
@given(data=st.data())
def test_explain_reads_any_explain_file(scratch, explained, data):
    folder = Path(tempfile.mkdtemp(dir=scratch)) / "run"
    shutil.copytree(explained, folder)
    which = data.draw(st.sampled_from(["explain.jsonl", "records.csv"]))
    text = (explained / which).read_text()
    mutation = csv_mutation(text) if which == "records.csv" else json_mutation(text, lines=True)
    (folder / which).write_bytes(data.draw(mutation))
    before = _hashes(folder)
    argv = ["explain", str(folder), *data.draw(st.sampled_from(
        [[], ["--pipeline", "prune:amount=0.5"], ["--model", "lenet", "--pipeline", "eager", "--batch-size", "2"]]))]
    o = call(argv)
    assert_clean(o, argv)
    assert o.code in (0, 2), (argv, o)
    # explain draws its charts under explain/; every file of the run stays as it was
    assert {p: h for p, h in _hashes(folder).items() if not p.startswith("explain/")} == before, argv
