"""A cell's processes die with the cell: forks, new sessions and double forks, whatever the cell's outcome.

Each test runs the real CLI in a fresh process on a real model file whose forward starts processes
(and, in one test, a non-daemon thread), then checks the operating system's view of every pid.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--data", "synthetic", "--pipeline", "eager", "--batch-size", "1", "--min-time", "0.05", "--no-report",
        "--no-history"]

MODEL = '''
import os, threading, time
import torch
from torch import nn

PIDS = os.environ["ACCELBENCH_TEST_PIDS"]
_started = False


def _note(tag, pid):
    fd = os.open(os.path.join(PIDS, f"{tag}-{pid}"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)


def _sleep_in_child():
    try:
        time.sleep(3600)
    finally:
        os._exit(0)


def _spawn():
    child = os.fork()
    if child == 0:                  # same process group as the worker
        _sleep_in_child()
    _note("child", child)
    leader = os.fork()
    if leader == 0:                 # leaves the worker's process group and session
        os.setsid()
        _sleep_in_child()
    _note("session", leader)
    middle = os.fork()
    if middle == 0:                 # a daemon's double fork: the grandchild, in a session of its own, is orphaned at once
        try:
            os.setsid()
            grandchild = os.fork()
            if grandchild == 0:
                _sleep_in_child()
            _note("grandchild", grandchild)
        finally:
            os._exit(0)
    os.waitpid(middle, 0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x):
        global _started
        if not _started:
            _started = True
            _spawn()
            if os.environ.get("ACCELBENCH_TEST_THREAD"):
                threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
            if os.environ.get("ACCELBENCH_TEST_HANG"):
                time.sleep(3600)
        return self.fc(x.flatten(1))


def build():
    return Net()
'''


def _run(tmp_path: Path, extra: list[str], **env_extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    (tmp_path / "forking.py").write_text(MODEL)
    pids = tmp_path / "pids"
    pids.mkdir()
    env = {**os.environ, "ACCELBENCH_TEST_PIDS": str(pids), **env_extra}
    out = tmp_path / "run"
    # Output to a file, not a pipe: a surviving process would hold a pipe open and hide what survived.
    with open(tmp_path / "log", "w+") as log:
        try:
            code = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--model", "forking.py:build", "--out",
                                   str(out), *FAST, *extra], cwd=tmp_path, env=env, stdout=log, stderr=log,
                                  timeout=400).returncode
        finally:
            log.seek(0)
            text = log.read()
    return subprocess.CompletedProcess([], code, "", text), out


@pytest.fixture(autouse=True)
def _no_leak(tmp_path):
    """Whatever a failing test left alive is killed: a broken harness must not litter the machine."""
    yield
    if (tmp_path / "pids").exists():
        for pid in (p for pids in _started(tmp_path).values() for p in pids):
            try:
                p = psutil.Process(pid)
                if p.environ().get("ACCELBENCH_TEST_PIDS") == str(tmp_path / "pids"):   # ours, not a reused pid
                    p.kill()
            except psutil.Error:
                pass


def _started(tmp_path: Path) -> dict[str, list[int]]:
    got: dict[str, list[int]] = {}
    for f in (tmp_path / "pids").iterdir():
        tag, pid = f.name.rsplit("-", 1)
        got.setdefault(tag, []).append(int(pid))
    return got


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _rows(out: Path) -> list[dict]:
    with open(out / "records.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("mode", [[], ["--no-isolate"]], ids=["isolated", "no-isolate"])
def test_processes_a_model_starts_end_with_its_cell(tmp_path, mode):
    proc, out = _run(tmp_path, mode)
    assert proc.returncode == 0, proc.stderr[-2000:]
    started = _started(tmp_path)
    assert set(started) == {"child", "session", "grandchild"}, started
    alive = [pid for pids in started.values() for pid in pids if _alive(pid)]
    assert not alive, (alive, started)
    (row,) = _rows(out)
    assert row["status"] == "ok", row


def test_processes_of_a_cell_that_times_out_end_with_it(tmp_path):
    proc, out = _run(tmp_path, ["--timeout", "20"], ACCELBENCH_TEST_HANG="1")
    assert proc.returncode == 1, proc.stderr[-2000:]
    started = _started(tmp_path)
    assert set(started) == {"child", "session", "grandchild"}, started
    alive = [pid for pids in started.values() for pid in pids if _alive(pid)]
    assert not alive, (alive, started)
    (row,) = _rows(out)
    assert row["status"] == "error" and "timed out after 20 s" in row["reason"], row


@pytest.mark.parametrize("mode", [[], ["--no-isolate"]], ids=["isolated", "no-isolate"])
def test_a_model_thread_that_never_ends_does_not_keep_the_harness_alive(tmp_path, mode):
    # The thread sleeps an hour: without the fix the run never exits and subprocess.run's timeout fails the test.
    proc, out = _run(tmp_path, mode, ACCELBENCH_TEST_THREAD="1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = _rows(out)
    assert row["status"] == "ok", row
