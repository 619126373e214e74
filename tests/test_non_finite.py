"""NaN/inf is a verdict of its own: non-finite logits make error rows naming the side; a diverged training is not cached."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

FAST = ["--batch-size", "2", "--min-time", "0.05", "--no-report", "--no-history"]

MODELS = '''
import torch
from torch import nn
from dataclasses import dataclass
from techniques import Transform


def nan_weights():
    net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    with torch.no_grad():
        net[1].weight[0, 0] = float("nan")
    return net


def fine():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


@dataclass(frozen=True)
class Infinite(Transform):
    """A transform whose output model gives inf logits: the candidate side is the broken one."""

    name = "test_infinite"

    def apply(self, model, ctx):
        with torch.no_grad():
            model[1].bias.fill_(float("inf"))
        return model, {}
'''


def _run(tmp_path: Path, argv: list[str]) -> tuple[int, str, list[dict]]:
    (tmp_path / "nets.py").write_text(MODELS)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--out", str(out), *argv, *FAST], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    rows = list(csv.DictReader(open(out / "records.csv", newline=""))) if (out / "records.csv").exists() else []
    return proc.returncode, proc.stderr, rows


def test_nan_weights_make_error_rows_naming_the_baseline(tmp_path):
    code, err, rows = _run(tmp_path, ["--model", "nets.py:nan_weights", "--data", "synthetic",
                                      "--pipeline", "eager", "--pipeline", "jit"])
    assert code == 1, err[-2000:]
    assert len(rows) == 2, err[-2000:]
    for row in rows:
        assert row["status"] == "error", row
        assert row["reason"].startswith("outputs contain NaN/inf: the baseline (eager"), row["reason"]
        assert "nondeterministic" not in row["reason"] + row.get("validity", "")
        assert row["top1_agreement"] in ("", "nan"), row["top1_agreement"]


def test_inf_from_a_technique_makes_an_error_row_naming_the_candidate(tmp_path):
    code, err, rows = _run(tmp_path, ["--model", "nets.py:fine", "--data", "synthetic",
                                      "--pipeline", "eager", "--pipeline", "nets:Infinite"])
    assert code == 1, err[-2000:]
    by = {r["pipeline"]: r for r in rows}
    assert by["eager"]["status"] == "ok", by["eager"]
    bad = by["nets:Infinite"]
    assert bad["status"] == "error", bad
    assert bad["reason"].startswith("outputs contain NaN/inf: the candidate (nets:Infinite)"), bad["reason"]


def test_check_finite_passes_finite_logits_and_counts_nan_and_inf():
    from bench.running.cell import NonFiniteOutputs, check_finite

    check_finite(torch.randn(4, 10), "the candidate (x)", "a batch")   # finite: nothing raised
    logits = torch.zeros(2, 3)
    logits[0, 0], logits[1, 2], logits[1, 1] = math.nan, math.inf, -math.inf
    with pytest.raises(NonFiniteOutputs, match=r"the candidate \(x\) gave 1 NaN and 2 inf among 6 logits on a batch"):
        check_finite(logits, "the candidate (x)", "a batch")


class _Diverges(nn.Module):
    """A network whose logits are inf: cross-entropy, and so the weights, are NaN from the first step."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("inf")


def test_a_training_that_ends_in_nan_loss_is_not_cached(tmp_path, monkeypatch):
    from bench import api, data
    from bench.api import UserError
    from bench.training import cache
    from bench.training.loop import TrainConfig

    monkeypatch.setenv("ACCELBENCH_CACHE", str(tmp_path / "cache"))
    name = "test_non_finite_diverges"
    api.register_model(name)(_Diverges)
    try:
        digits = data.load("digits", (1, 28, 28), 10)
        with pytest.raises(UserError, match=r"ended with a NaN/inf loss \(nan\).*not cached as trained"):
            cache.trained(name, digits, TrainConfig(epochs=1, batch_size=256), log=lambda m: None)
    finally:
        api.MODELS.unregister(name)
    assert not list((tmp_path / "cache").rglob("*.pt")), list((tmp_path / "cache").rglob("*"))


def test_diverged_training_names_nan_weights_and_passes_finite_ones():
    from bench.training.cache import diverged_training

    net = nn.Linear(3, 2)
    assert diverged_training(net, 0.5) == ""
    with torch.no_grad():
        net.weight[0, 0] = math.nan
    assert diverged_training(net) == "NaN/inf in 1 weight tensor(s) (weight)"
    assert diverged_training(net, math.inf).startswith("a NaN/inf loss (inf) and NaN/inf in 1")
