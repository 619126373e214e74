"""`accelbench calibrate`: thresholds fitted to A/A noise hold their false-alarm rate and catch planted slowdowns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench import cli
from bench.reporting import calibrate
from bench.reporting.compare import Thresholds
from bench.records.read import load
from tests.test_history import BASELINE, make_run

NOISE_SD = 0.03


@pytest.fixture
def baseline(tmp_path) -> Path:
    """A copy of the committed CI baseline (gate.json included) that calibrate may write into."""
    out = tmp_path / "baseline"
    shutil.copytree(BASELINE, out)
    return out


def _aa(tmp: Path, n: int, seed: int) -> list[Path]:
    """n recorded A/A runs: the baseline's rows with 3% log-normal run-to-run noise on every speedup."""
    return [make_run(tmp, i, noise_sd=NOISE_SD, seed=seed) for i in range(n)]


def test_calibrated_thresholds_hold_their_false_alarm_rate_and_catch_planted_slowdowns(baseline, tmp_path, capsys):
    fit_runs = _aa(tmp_path / "fit", 30, seed=1)
    assert cli.main(["calibrate", str(baseline), "--from", *map(str, fit_runs)]) == 0
    out = capsys.readouterr().out
    cal = json.loads((baseline / "gate.json").read_text())["calibration"]
    assert cal["runs"] == 30 and cal["false_alarm_rate"] == 0.01 and len(cal["cells"]) == 8
    for c in cal["cells"]:
        assert c["noise_sd_log"] == pytest.approx(NOISE_SD, rel=0.35)
        # t(0.99, 29) * sd * sqrt(1 + 1/30) ~ 2.5 sd below the fitted offset
        assert 1 - np.exp(c["offset_log"] - 2.46 * c["noise_sd_log"] * np.sqrt(1 + 1 / 30)) == \
            pytest.approx(c["max_slowdown"], rel=0.02)
        assert c["detectable_slowdown"] > c["max_slowdown"]
        assert f"{c['max_slowdown']:.1%}" in out
    base = load(baseline)[0]
    fits = [calibrate.CellFit((c["model"], c["pipeline"], c["scenario"], c["batch_size"], c["threads"]), c["runs"],
                              c["offset_log"], c["noise_sd_log"], c["max_slowdown"], c["detectable_slowdown"])
            for c in cal["cells"]]
    th = Thresholds(max_slowdown=0.3, calibrated={f.key: f.max_slowdown for f in fits})
    held = [load(p)[0] for p in _aa(tmp_path / "held", 150, seed=2)]
    counts = calibrate.evaluate(base, held, th)
    cell_runs = sum(c["valid"] for c in counts.values())
    false = sum(c["false"] for c in counts.values())
    assert cell_runs == 8 * 150 and false / cell_runs < 0.03          # target 1%; 12 expected, 36 allowed
    slow = [c for k, c in counts.items() if " eager " not in f" {k} "]
    assert sum(c["x1.3"] for c in slow) / sum(c["valid"] for c in slow) > 0.95
    assert all(c["x2"] == c["valid"] for c in slow)


def test_compare_uses_the_calibrated_thresholds_unless_told_not_to(baseline, tmp_path, capsys):
    gate = json.loads((baseline / "gate.json").read_text())
    gate["calibration"] = {"runs": 10, "date": "2026-11-30", "false_alarm_rate": 0.01,
                           "cells": [{"model": "lenet", "pipeline": "jit", "scenario": "inference", "batch_size": 64,
                                      "threads": 1, "max_slowdown": 0.05}]}
    (baseline / "gate.json").write_text(json.dumps(gate))
    cur = make_run(tmp_path, 1, {"jit": 0.9})                    # jit 10% slower; its intervals overlap
    assert cli.main(["compare", str(baseline), str(cur)]) == 1
    out = capsys.readouterr().out
    assert "regression: lenet jit bs=64 threads=1: speedup" in out and "calibrated for this cell" in out
    assert "lenet jit bs=1 threads=1" in out and out.count("\nregression: ") == 1   # others: the 15% default
    assert cli.main(["compare", str(baseline), str(cur), "--no-calibration"]) == 0


def test_calibrate_refuses_unusable_input_in_one_line(baseline, tmp_path, capsys):
    runs = _aa(tmp_path, 2, seed=3)
    assert cli.main(["calibrate", str(baseline), "--from", *map(str, runs)]) == 2
    assert "2 A/A run(s) cannot give a spread" in capsys.readouterr().err
    assert cli.main(["calibrate", str(tmp_path / "nothing")]) == 2
    assert "gate.json: no such file" in capsys.readouterr().err
    assert cli.main(["calibrate", str(baseline), "--false-alarm-rate", "60%", "--from", *map(str, runs)]) == 2
    assert "--false-alarm-rate: must be >= 0% and below 50%" in capsys.readouterr().err


@pytest.mark.slow
def test_calibrate_runs_the_gate_command(baseline, tmp_path, capsys):
    """One small real calibration: a gate command of one of the baseline's cells, run 3 times (A/A)."""
    gate = json.loads((baseline / "gate.json").read_text())
    gate["command"] = ("accelbench run --model lenet --pipeline eager --batch-size 1 --threads 1 --min-time 0.05 "
                       "--no-isolate --no-report --out results/baseline-ci")
    (baseline / "gate.json").write_text(json.dumps(gate))
    assert cli.main(["calibrate", str(baseline), "--runs", "3", "--keep", str(tmp_path / "aa")]) == 0
    out = capsys.readouterr().out
    assert "3 A/A runs" in out and "lenet eager bs=1 threads=1" in out
    assert len(list((tmp_path / "aa").glob("aa-*/records.csv"))) == 3
    assert not (tmp_path / "history.sqlite").exists()           # calibration runs stay out of the history
    cal = json.loads((baseline / "gate.json").read_text())["calibration"]
    assert [(c["pipeline"], c["batch_size"], c["runs"]) for c in cal["cells"]] == [("eager", 1, 3)]
    assert 0.01 <= cal["cells"][0]["max_slowdown"] < 1


def test_a_missing_run_folder_is_named(baseline, tmp_path, capsys):
    assert cli.main(["calibrate", str(baseline), "--from", str(tmp_path / "nope"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nope'}: no such file or folder" in err and len(err.strip().splitlines()) == 1, err
