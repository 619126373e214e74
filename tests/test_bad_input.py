"""Bad input and hostile surroundings end in one line and a non-zero exit, never a traceback or a write to what was only read.

Each case here once ended in a traceback, a hang, a crash or a silent write: a full disk under --out,
another program's SQLite file given as the history, an input too large to allocate, a damaged
run.json, infinite or absurd guards, a user's module that exits or raises at import.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from bench.cli import main
from bench.records.write import atomic_write
from bench.running import limits

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "results" / "baseline-ci"   # a real finished run: records.csv, run.json, env.json


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- a full disk under --out ------------------------------------------------------------------------

@pytest.fixture
def full_tmpfs(tmp_path):
    """A real 256 KiB tmpfs (root only), for ENOSPC as the kernel gives it."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount): no honest full disk to test on")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder: Path) -> None:
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(full_tmpfs):
    target = full_tmpfs / "records.csv"
    target.write_text("old\n")
    _fill(full_tmpfs)
    with pytest.raises(OSError) as info:
        atomic_write(target, "new content " * 10_000)
    assert info.value.errno == errno.ENOSPC
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in full_tmpfs.iterdir()) == ["filler", "records.csv"]


def test_a_run_on_a_full_disk_ends_in_one_line_counting_the_rows_kept(full_tmpfs, capsys):
    out = full_tmpfs / "run"
    shutil.copytree(BASELINE, out)
    with open(out / "records.csv", newline="") as f:
        rows = len(list(csv.DictReader(f)))
    before = _sha(out / "records.csv")
    _fill(full_tmpfs)
    code = main(["run", "--resume", str(out), "--no-history", "--no-report"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "No space left on device" in last
    assert f"{rows} rows kept in {out}/records.csv" in last
    assert _sha(out / "records.csv") == before


# --- a history database that is not ours ------------------------------------------------------------

def _foreign(path: Path, kind: str) -> None:
    if kind == "empty file":
        path.write_bytes(b"")
        return
    con = sqlite3.connect(path)
    if kind == "foreign runs":
        con.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT)")
        con.execute("INSERT INTO runs VALUES (1, 'a marathon')")
    elif kind == "foreign records":
        con.execute("CREATE TABLE records (artist TEXT, title TEXT)")
    elif kind == "other tables":
        con.execute("CREATE TABLE invoices (n INTEGER)")
    con.commit()
    con.close()


@pytest.mark.parametrize("kind", ["foreign runs", "foreign records", "empty file", "other tables"])
def test_history_never_writes_a_database_it_only_reads(tmp_path, capsys, kind):
    db = tmp_path / "theirs.sqlite"
    _foreign(db, kind)
    before = _sha(db)
    assert main(["history", "--db", str(db)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(db) in line
    assert _sha(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs.sqlite"]


@pytest.mark.parametrize("kind", ["foreign runs", "foreign records"])
def test_history_add_refuses_another_programs_tables(tmp_path, capsys, kind):
    db = tmp_path / "theirs.sqlite"
    _foreign(db, kind)
    before = _sha(db)
    assert main(["history", "add", str(BASELINE), "--db", str(db)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(db) in line and "not an accelbench history" in line
    assert _sha(db) == before


def test_history_reads_an_older_database_without_completing_it(tmp_path, capsys):
    db = tmp_path / "history.sqlite"
    assert main(["history", "add", str(BASELINE), "--db", str(db)]) == 0
    con = sqlite3.connect(db)
    con.execute('ALTER TABLE records DROP COLUMN "validity"')   # as a database from before that column
    con.commit()
    con.close()
    capsys.readouterr()
    before = _sha(db)
    assert main(["history", "--db", str(db)]) == 0
    assert "lenet" in capsys.readouterr().out
    assert _sha(db) == before


# --- inputs and guards refused before anything runs ------------------------------------------------

@pytest.mark.parametrize("argv, says", [
    (["--input-shape", "3x100000x100000"], f"limit is {limits.MAX_INPUT_BATCH_BYTES / 2 ** 30:g} GiB"),
    (["--input-shape", "1x28x28", "--batch-size", "100000000"], "GiB of float32 per batch"),
    (["--threads", "100000"], f"at most {limits.max_threads()} threads"),
    (["--mem-limit", "inf"], "--mem-limit"),
    (["--mem-limit", "nan"], "--mem-limit"),
    (["--mem-limit", "1e300"], "--mem-limit"),
    (["--timeout", "inf"], "--timeout"),
    (["--timeout", "nan"], "--timeout"),
    (["--min-time", "1e300"], "--min-time"),
])
def test_absurd_sizes_and_guards_are_refused_up_front(tmp_path, capsys, argv, says):
    out = tmp_path / "out"
    code = main(["run", "--model", "lenet", "--pipeline", "eager", "--data", "synthetic", "--no-history",
                 "--out", str(out), *argv])
    assert code == 2
    assert says in _one_line(capsys.readouterr().err)
    assert not out.exists()


def _resume_folder(tmp_path: Path, doc) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps(doc))
    return folder


GOOD_RUN = {"models": ["lenet"], "pipelines": ["eager"], "batch_sizes": [1], "scenario": None, "data": "synthetic",
            "quick": True, "min_time_s": None, "threads": None, "shard": None, "model_settings": {}}


@pytest.mark.parametrize("doc", [
    [GOOD_RUN], "lenet", 3, {k: v for k, v in GOOD_RUN.items() if k != "quick"},
    {**GOOD_RUN, "quick": "maybe"}, {**GOOD_RUN, "batch_sizes": [0]}, {**GOOD_RUN, "data": ["digits"]},
    {**GOOD_RUN, "scenario": 5}, {**GOOD_RUN, "threads": [10 ** 6]}, {**GOOD_RUN, "min_time_s": 1e300},
    {**GOOD_RUN, "model_settings": {"lenet": {"input_shape": [1, 2]}}},
    {**GOOD_RUN, "model_settings": {"lenet": {"output": [1]}}},
    {**GOOD_RUN, "model_settings": {"lenet": {"weights": 5}}},
], ids=lambda d: json.dumps(d)[:40])
def test_resume_of_a_damaged_run_json_names_it(tmp_path, capsys, doc):
    folder = _resume_folder(tmp_path, doc)
    assert main(["run", "--resume", str(folder), "--no-history"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "run.json" in line
    assert sorted(p.name for p in folder.iterdir()) == ["run.json"]


# --- a user's module that exits or raises at import -------------------------------------------------

@pytest.fixture
def bad_modules(tmp_path, monkeypatch):
    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "raises_at_import.py").write_text("raise ValueError('no weights here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("module, says", [("exits_at_import", "sys.exit(3)"),
                                          ("raises_at_import", "ValueError: no weights here")])
def test_a_module_failing_at_import_alone_is_refused_with_its_line(bad_modules, capsys, module, says):
    out = bad_modules / "out"
    assert main(["run", "--model", f"{module}:build", "--data", "synthetic", "--no-history",
                 "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert module in line and says in line
    assert not out.exists()


def test_a_module_failing_at_import_costs_only_its_own_rows(bad_modules, capsys):
    out = bad_modules / "out"
    # gpu is skipped on a machine without CUDA: the run goes on without minutes of measuring
    code = main(["run", "--model", "lenet", "--model", "exits_at_import:build", "--model", "raises_at_import:build",
                 "--pipeline", "gpu", "--batch-size", "1", "--data", "synthetic", "--no-history", "--no-report",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    with open(out / "records.csv", newline="") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"lenet", "exits_at_import:build", "raises_at_import:build"}
    assert rows["lenet"]["status"] in ("ok", "skipped")
    assert rows["exits_at_import:build"]["status"] == "error"
    assert "sys.exit(3)" in rows["exits_at_import:build"]["reason"]
    assert "ValueError: no weights here" in rows["raises_at_import:build"]["reason"]


# --- files the fuzz (tests/test_fuzz_files.py) found read with a traceback --------------------------

def _baseline_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(BASELINE, folder)
    return folder


@pytest.mark.parametrize("content", [b"\x80", b"{", b""])
def test_history_add_of_a_folder_with_a_corrupt_run_json_names_it(tmp_path, capsys, content):
    folder = _baseline_copy(tmp_path)
    (folder / "run.json").write_bytes(content)
    db = tmp_path / "h.sqlite"
    assert main(["history", "add", str(folder), "--db", str(db)]) == 2
    assert "run.json" in _one_line(capsys.readouterr().err)
    assert not db.exists()


def test_resume_of_a_run_json_that_is_not_text_names_it(tmp_path, capsys):
    folder = _baseline_copy(tmp_path)
    (folder / "run.json").write_bytes(b"\x80\x81")
    assert main(["run", "--resume", str(folder), "--no-history"]) == 2
    assert "run.json is corrupt" in _one_line(capsys.readouterr().err)


def test_the_rows_a_resume_reads_refuse_bytes_that_are_not_text(tmp_path):
    from bench.api import UserError
    from bench.records import read
    path = tmp_path / "records.csv"
    path.write_bytes(b"\x80")
    with pytest.raises(UserError, match="not a readable CSV"):
        read.read_csv(path)


@pytest.mark.parametrize("change", ["drop batch_size", "blank batch_size"])
def test_records_without_a_batch_size_are_refused_by_compare_and_calibrate(tmp_path, capsys, change):
    folder = _baseline_copy(tmp_path)
    with open(folder / "records.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if change == "drop batch_size":
        for r in rows:
            del r["batch_size"]
    else:
        rows[2]["batch_size"] = ""
    with open(folder / "records.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for argv in (["compare", str(BASELINE), str(folder)],
                 ["calibrate", str(BASELINE), "--from", str(folder), str(BASELINE), str(BASELINE), "--dry-run"]):
        assert main(argv) == 2, argv
        assert "batch_size" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("content", [b"\x80", b"[1, 2]", b'"text"'])
def test_an_env_json_that_is_not_an_object_is_refused_by_every_reader(tmp_path, capsys, content):
    folder = _baseline_copy(tmp_path)
    (folder / "env.json").write_bytes(content)
    for argv in (["compare", str(BASELINE), str(folder)], ["history", "add", str(folder), "--db", str(tmp_path / "h.db")],
                 ["calibrate", str(BASELINE), "--from", str(folder), str(BASELINE), str(BASELINE), "--dry-run"]):
        assert main(argv) == 2, argv
        assert "env.json" in _one_line(capsys.readouterr().err)
