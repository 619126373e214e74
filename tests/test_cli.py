"""The CLI: `list` works, and every user mistake is one clear line and exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def test_list_shows_models_and_techniques_with_availability(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "lenet" in out and "resnet8" in out and "eager" in out and "runs here" in out


@pytest.mark.parametrize("argv, message", [
    (["run", "--model", "lenet5"], "unknown model 'lenet5'; known models: convnet"),
    (["run", "--pipeline", "turbo"], "pipeline 'turbo': unknown technique 'turbo'; known techniques:"),
    (["run", "--min-time", "inf"], "--min-time must be a finite number of seconds >= 0, got inf"),
    (["run", "--min-time", "nan"], "--min-time must be a finite number of seconds >= 0, got nan"),
    (["run", "--pipeline", "eager:speed=9"], "eager has no parameter 'speed'"),
    (["run", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["run", "--batch-size", "-4"], "argument --batch-size: must be >= 1, got -4"),
    (["run", "--batch-size", "big"], "argument --batch-size: 'big' is not an integer"),
    (["run", "--data", "mnist:/no/such/dir"], "/no/such/dir: no such folder; expected a folder with the MNIST IDX"),
    (["run", "--data", "imagenet"], "unknown data 'imagenet'"),
    (["run", "--timeout", "0", "--pipeline", "eager"], "--timeout must be > 0 seconds"),
    (["run", "--resume", "/no/such/run"], "--resume /no/such/run: no run.json there"),
    (["run", "--model", "no_pkg.nets:make"], "model spec 'no_pkg.nets:make': cannot import module 'no_pkg.nets'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["report", "/no/such/results"], "/no/such/results"),
])
def test_user_mistakes_are_one_line(capsys, argv, message):
    code, err = _run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err


def test_unwritable_output_folder(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = _run(capsys, "run", "--model", "lenet", "--pipeline", "eager", "--batch-size", "1",
                     "--out", str(blocker / "sub"), "--no-report")
    assert code == 2 and "cannot write results there" in err and len(err.strip().splitlines()) == 1


def test_console_script_prints_no_traceback():
    """The installed entry point, as a user runs it."""
    exe = Path(sys.executable).with_name("accelbench")
    proc = subprocess.run([str(exe), "run", "--pipeline", "prune:amount=lots"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.startswith("accelbench: error: pipeline 'prune:amount=lots'") or \
        "unknown technique 'prune'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--models", "nosuch"], "unknown model 'nosuch'"),
    (["--models", "lenet", "--pipelines", "bogus"], "pipeline 'bogus'"),
    (["--models", "lenet", "--batch-sizes", "0"], "--batch-sizes must be >= 1"),
    (["--models", "lenet", "--threads", "0"], "--threads must be >= 1"),
    (["--models", "lenet", "--min-time", "-1"], "--min-time must be a finite number of seconds > 0"),
    (["--models", "lenet", "--min-time", "nan"], "--min-time must be a finite number of seconds > 0"),
])
def test_crosscheck_refuses_a_bad_matrix_in_one_line_before_running(args, message):
    proc = subprocess.run([sys.executable, "-m", "bench.crosscheck", *args, "--repeats", "1"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("python -m bench.crosscheck: error: ") and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not proc.stdout, (proc.stdout, proc.stderr)
