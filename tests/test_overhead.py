"""`python -m bench.overhead`: the harness's timer against bare loops, in a smoke run of a few seconds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import overhead

ROOT = Path(__file__).resolve().parents[1]


def test_a_smoke_run_prints_each_figure_once_per_repeat_and_their_ratios(capsys):
    assert overhead.main(["--repeats", "2", "--calls", "20", "--min-time", "0"]) == 0
    out = capsys.readouterr().out
    per_repeat = re.search(r"harness-reported median, eager lenet batch 1: ([\d.]+) ms  \(per repeat: (.*)\)", out)
    assert per_repeat, out
    assert len(per_repeat.group(2).split(", ")) == 2 and float(per_repeat.group(1)) > 0
    ratios = re.search(r"harness / bare loop mean = ([\d.]+); harness / bare median = ([\d.]+)", out)
    assert ratios and all(float(r) > 0 for r in ratios.groups()), out


def test_the_module_runs_from_the_command_line_and_refuses_a_bad_count():
    bad = subprocess.run([sys.executable, "-m", "bench.overhead", "--repeats", "0"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "--repeats: must be at least 1, got 0" in bad.stderr


@pytest.mark.parametrize("n", [1, 5])
def test_the_bare_loops_time_every_call(n):
    calls = []
    assert overhead.bare_loop_s(lambda: calls.append(1), n) >= 0
    assert overhead.bare_median_s(lambda: calls.append(1), n) >= 0
    assert len(calls) == 2 * n
