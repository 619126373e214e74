"""Fault injection: every failure becomes a precise row, nothing finished is lost, bad input is refused.

The misbehaving techniques live in tests/fault_techniques.py and are loaded the way a user's own
technique is, as `module:Class`, so they run in the isolated worker like any other technique.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench.records import read, write
from bench.cli import main

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FAST = ["--min-time", "0.05", "--no-report"]


def _rows(out: Path) -> list[dict]:
    with open(out / "records.csv", newline="") as f:
        return list(csv.DictReader(f))


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_each_fault_becomes_an_error_row_and_the_rest_complete(tmp_path, capsys):
    out = tmp_path / "run"
    temp_before = _our_temp_folders()
    pipes = ["fault_techniques:Raises", "fault_techniques:Exits", "fault_techniques:Exits:how=segv",
             "fault_techniques:Hogs", "eager"]
    argv = ["run", "--model", "lenet", "--batch-size", "1", "--out", str(out), "--timeout", "300",
            "--mem-limit", "1200", *FAST]
    for p in pipes:
        argv += ["--pipeline", p]
    before = set(p.pid for p in psutil.Process().children(recursive=True))
    code = main(argv)
    assert code == 1  # some cells failed
    rows = {r["pipeline"]: r for r in _rows(out)}
    assert set(rows) == set(pipes)
    expect = {
        "fault_techniques:Raises": "RuntimeError: injected failure in apply",
        "fault_techniques:Exits": "worker exited with code 3 before reporting a result",
        "fault_techniques:Exits:how=segv": "worker crashed: killed by SIGSEGV",
        "fault_techniques:Hogs": "out of memory",
    }
    for pipe, reason in expect.items():
        assert rows[pipe]["status"] == "error", rows[pipe]
        assert reason in rows[pipe]["reason"], rows[pipe]["reason"]
    assert rows["eager"]["status"] == "ok" and float(rows["eager"]["latency_ms_p50"]) > 0
    assert "Traceback" in (out / "errors.log").read_text()  # the full story is kept, off the table
    _assert_no_leftover_workers(before)
    assert not _our_temp_folders() - temp_before   # a crashed or killed worker leaves no temporary files


def test_a_hanging_cell_times_out_and_the_next_cell_runs(tmp_path):
    from bench.data import load
    from bench.training.cache import trained
    trained("lenet", load("digits"))   # cached first: the model's preparation runs under the same 4 s time-out
    temp_before = _our_temp_folders()
    out = tmp_path / "run"
    before = set(p.pid for p in psutil.Process().children(recursive=True))
    t0 = time.monotonic()
    code = main(["run", "--model", "lenet", "--batch-size", "1", "--out", str(out), "--timeout", "4",
                 "--pipeline", "fault_techniques:Hangs", *FAST])
    assert code == 1 and time.monotonic() - t0 < 120
    (row,) = _rows(out)
    assert row["status"] == "error" and row["reason"] == "timed out after 4 s (cell time-out; --timeout)"
    _assert_no_leftover_workers(before)
    assert not _our_temp_folders() - temp_before   # the killed worker's scratch folder went with it


def _our_temp_folders() -> set[str]:
    """The harness's folders in the system's temporary folder, where workers write (a worker is
    forked from the fork server, so a tempdir patched in this process would not reach it)."""
    import tempfile
    return {p.name for p in Path(tempfile.gettempdir()).glob("accelbench-*")}


def _assert_no_leftover_workers(before: set[int]) -> None:
    """No worker outlives its cell (the fork server and multiprocessing's resource tracker stay
    for the next run, by design)."""
    keep = ("forkserver", "resource_tracker")
    leftover = [p for p in psutil.Process().children(recursive=True)
                if p.pid not in before and not any(k in " ".join(p.cmdline()) for k in keep)]
    assert not leftover, [p.cmdline() for p in leftover]


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.cli", *argv], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_keeps_every_finished_row_and_resume_completes(tmp_path, sig):
    matrix = ["--model", "lenet", "--pipeline", "eager", "--pipeline", "fault_techniques:Slow:sleep_ms=0.5",
              "--batch-size", "1", "--batch-size", "2", "--batch-size", "4", "--min-time", "0.5", "--no-report"]
    out = tmp_path / "interrupted"
    proc = _start(["run", *matrix, "--out", str(out)])
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if (out / "records.csv").exists() and len(_rows(out)) >= 2:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, sig)  # SIGINT: what a terminal's Ctrl-C does to the whole foreground group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "finish with: accelbench run --resume" in err and "Traceback" not in err
    partial = _rows(out)  # valid CSV: DictReader parses every line into the full column set
    assert 2 <= len(partial) < 6 and all(r["status"] == "ok" for r in partial)

    proc = _start(["run", "--resume", str(out)])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    resumed = _rows(out)
    assert resumed[: len(partial)] == partial  # finished rows untouched
    assert len({r["run_id"] for r in resumed}) == 1

    whole = tmp_path / "whole"
    assert main(["run", *matrix, "--out", str(whole)]) == 0
    key = lambda r: (r["model"], r["pipeline"], r["scenario"], r["batch_size"], r["status"])  # noqa: E731
    assert sorted(map(key, resumed)) == sorted(map(key, _rows(whole)))


@pytest.mark.parametrize("delay_s", [0.0, 0.7, 2.0])
def test_ctrl_c_during_start_up_is_one_line_and_leaves_no_process(tmp_path, delay_s):
    # Right after the header the fork server is still importing torch and the first worker is
    # being born: both used to catch the terminal's SIGINT and print tracebacks of their own.
    proc = _start(["run", "--model", "lenet", "--pipeline", "eager", "--batch-size", "1", "--batch-size", "2",
                   "--min-time", "0.5", "--no-report", "--out", str(tmp_path / "early")])
    head = ""
    while "cells ->" not in head:
        line = proc.stderr.readline()
        assert line, f"run ended before its header: {head!r}"
        head += line
    time.sleep(delay_s)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)  # returns only when every process holding stderr is gone
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1].startswith("accelbench: interrupted"), err
    left = [p for p in psutil.process_iter(["pid", "status"])
            if _sid(p.pid) == proc.pid and p.info["status"] != psutil.STATUS_ZOMBIE]  # dead, awaiting reaping
    # A killed worker can still be tearing down its address space when the run's last stderr holder is
    # gone (seen: cmdline already empty, parent already init, gone a few ms later): it is exiting, not
    # left. What is still alive after the grace is a process the run left behind.
    _, alive = psutil.wait_procs(left, timeout=5)
    assert not alive, [(p.pid, _cmdline(p)) for p in alive]


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:200]
    except psutil.Error:
        return "?"


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def test_a_second_run_on_the_same_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "locked"
    out.mkdir()
    with write.OutputLock(out):
        code = main(["run", "--model", "lenet", "--pipeline", "eager", "--batch-size", "1", "--out", str(out), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and f"{out}: another accelbench run (pid {os.getpid()}) is writing here" in err
    assert not (out / "records.csv").exists()


def test_rewrites_are_atomic(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    write.atomic_write(target, "good\n")

    class Crash(Exception):
        pass

    real_fsync = os.fsync

    def crash_after_partial_write(fd):
        raise Crash("power cut")

    monkeypatch.setattr(os, "fsync", crash_after_partial_write)
    with pytest.raises(Crash):
        write.atomic_write(target, "new and much longer content\n" * 1000)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert target.read_text() == "good\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # no temp file left behind


def test_torn_last_line_is_dropped_on_resume_and_repaired(tmp_path):
    w = write.RecordWriter(tmp_path / "records.csv")
    w.write({"model": "lenet", "pipeline": "eager", "scenario": "inference", "batch_size": 1, "status": "ok"})
    w.close()
    whole = (tmp_path / "records.csv").read_text()
    with open(tmp_path / "records.csv", "a") as f:
        f.write("x,lenet,half a row")
    rows = read.read_csv(tmp_path / "records.csv")
    assert len(rows) == 1 and rows["pipeline"].iloc[0] == "eager"
    write.repair(tmp_path / "records.csv")
    assert (tmp_path / "records.csv").read_text() == whole


def test_user_technique_that_fails_to_import_is_named(capsys):
    code = main(["run", "--pipeline", "my_missing_pkg.fast:Turbo"])
    err = capsys.readouterr().err
    assert code == 2
    assert "technique spec 'my_missing_pkg.fast:Turbo': cannot import module 'my_missing_pkg.fast'" in err


def test_an_onnx_file_that_fails_to_load_is_an_error_row_naming_it(monkeypatch, tmp_path):
    import techniques.onnx as onnx_tech
    from bench.running.cell import CellSpec
    from bench.env import detect
    from bench.running.runner import run_inline
    from bench.measure.timing import TimingConfig

    def corrupt_export(model, input_shape, path):
        path.write_bytes(b"\x08\x07this is not a protobuf")
        return path, False

    monkeypatch.setattr(onnx_tech, "export", corrupt_export)
    row = run_inline(CellSpec.of("lenet", "onnx:ep=cpu", 1, timing=TimingConfig(warmup=0, min_rounds=1, min_time_s=0)),
                     detect())
    assert row.status == "error"
    assert row.reason.startswith("RuntimeError: ONNX file ") and "model.onnx failed to load" in row.reason
