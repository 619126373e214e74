"""`accelbench compare`: exit codes, verdicts, and the gate on real runs made 2x slower or jittered."""

from __future__ import annotations

import csv
import json
import random
import time
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

import techniques
from bench import cli
from bench.records.columns import COLUMNS
from techniques import Context, Predictor, Runtime


def _row(pipeline: str, bs: int = 1, speedup: float = 1.0, half_width: float = 0.02, accuracy: float = 0.97,
         mem: float = 30.0, status: str = "ok", model: str = "lenet", reason: str = "") -> dict:
    return {"run_id": "r", "model": model, "pipeline": pipeline, "scenario": "inference", "batch_size": bs,
            "status": status, "reason": reason, "speedup": speedup, "speedup_ci_low": speedup - half_width,
            "speedup_ci_high": speedup + half_width, "accuracy": accuracy, "peak_mem_mb": mem}


def _write(tmp_path, name: str, rows: list[dict]):
    out = tmp_path / name
    out.mkdir()
    with open(out / "records.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return out


def _compare(base, cur, *extra: str) -> int:
    return cli.main(["compare", str(base), str(cur), *extra])


BASE = [_row("eager"), _row("jit", speedup=2.5, half_width=0.1), _row("onnx:ep=cpu", speedup=1.8),
        _row("eager", bs=64), _row("jit", bs=64, speedup=2.8, half_width=0.1)]


def test_same_run_passes(tmp_path, capsys):
    base = _write(tmp_path, "base", BASE)
    assert _compare(base, base) == 0
    out = capsys.readouterr().out
    assert "0 regressions" in out and out.count("ok: within 15%") == len(BASE)


def test_two_times_slower_is_named(tmp_path, capsys):
    cur = [dict(r) for r in BASE]
    cur[1] = _row("jit", speedup=1.25, half_width=0.05)
    assert _compare(_write(tmp_path, "b", BASE), _write(tmp_path, "c", cur)) == 1
    out = capsys.readouterr().out
    assert "1 regression " in out and "regression: lenet jit bs=1: speedup" in out


def test_slowdown_with_overlapping_intervals_is_noise(tmp_path, capsys):
    cur = [dict(r) for r in BASE]
    cur[1] = _row("jit", speedup=2.0, half_width=0.6)  # -20%, but [1.4, 2.6] overlaps [2.4, 2.6]
    assert _compare(_write(tmp_path, "b", BASE), _write(tmp_path, "c", cur)) == 0
    assert "intervals overlap" in capsys.readouterr().out


def test_five_percent_jitter_never_flags(tmp_path):
    rng = random.Random(0)
    base = _write(tmp_path, "b", BASE)
    for i in range(20):
        cur = []
        for r in BASE:
            f = 1 + rng.uniform(-0.05, 0.05)
            cur.append({**r, "speedup": r["speedup"] * f, "speedup_ci_low": r["speedup_ci_low"] * f,
                        "speedup_ci_high": r["speedup_ci_high"] * f, "peak_mem_mb": r["peak_mem_mb"] * f})
        assert _compare(base, _write(tmp_path, f"c{i}", cur)) == 0


@pytest.mark.parametrize("change, verdict", [
    (lambda rows: rows[:2] + rows[3:], "missing now"),
    (lambda rows: rows[:2] + [_row("onnx:ep=cpu", status="error", reason="RuntimeError: boom")] + rows[3:],
     "error now: RuntimeError: boom"),
    (lambda rows: rows[:2] + [_row("onnx:ep=cpu", status="skipped", reason="onnx: not installed")] + rows[3:],
     "skipped now"),
    (lambda rows: rows[:2] + [_row("onnx:ep=cpu", speedup=1.8, accuracy=0.96)] + rows[3:], "dropped more than 0.5 pp"),
    (lambda rows: rows[:2] + [_row("onnx:ep=cpu", speedup=1.8, mem=70.0)] + rows[3:], "grew more than 20%"),
])
def test_regressions_are_flagged(tmp_path, capsys, change, verdict):
    assert _compare(_write(tmp_path, "b", BASE), _write(tmp_path, "c", change(list(BASE)))) == 1
    out = capsys.readouterr().out
    assert "regression: lenet onnx:ep=cpu bs=1" in out and verdict in out


def test_thresholds_are_configurable_and_memory_has_a_noise_floor(tmp_path):
    cur = [dict(r) for r in BASE]
    cur[1] = _row("jit", speedup=2.0, half_width=0.05)   # -20%, intervals apart
    cur[2] = _row("onnx:ep=cpu", speedup=1.8, mem=50.0)  # +67% but only +20 MiB: below the default floor
    b, c = _write(tmp_path, "b", BASE), _write(tmp_path, "c", cur)
    assert _compare(b, c) == 1
    assert _compare(b, c, "--max-slowdown", "25%") == 0
    assert _compare(b, c, "--max-slowdown", "25%", "--max-memory-growth", "20%+10MiB") == 1
    cur[0] = _row("eager", accuracy=0.965)
    c2 = _write(tmp_path, "c2", cur)
    assert _compare(b, c2, "--max-slowdown", "25%") == 0          # -0.5 pp is within 0.5 pp
    assert _compare(b, c2, "--max-slowdown", "25%", "--max-accuracy-drop", "0.2") == 1


def test_the_gate_defaults_are_declared_once_and_the_cli_reads_them():
    from bench.reporting.thresholds import DEFAULT_THRESHOLDS, Thresholds, thresholds_from_args, thresholds_from_options
    args = cli.build_parser().parse_args(["compare", "a", "b"])
    assert thresholds_from_args(args) == DEFAULT_THRESHOLDS
    assert args.max_slowdown == f"{DEFAULT_THRESHOLDS.max_slowdown:.0%}"
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["compare"].format_help()
    assert f"(default {DEFAULT_THRESHOLDS.as_options()['max_slowdown']})" in help_text
    # a gate.json that names some thresholds gets the defaults for the rest; the text form round-trips
    assert thresholds_from_options({"max_slowdown": "30%"}) == Thresholds(max_slowdown=0.3)
    odd = Thresholds(max_slowdown=0.3, max_accuracy_drop_pp=1.25, max_memory_growth=0.1, memory_floor_mb=64.0)
    assert odd.as_options()["max_memory_growth"] == "10%+64MiB"
    assert thresholds_from_options(odd.as_options()) == odd


def test_new_and_baseline_skipped_cells_are_not_regressions(tmp_path, capsys):
    base = BASE + [_row("gpu", status="skipped", reason="gpu: no CUDA device")]
    cur = BASE + [_row("quantize:mode=dynamic", speedup=1.1)]
    assert _compare(_write(tmp_path, "b", base), _write(tmp_path, "c", cur)) == 0
    out = capsys.readouterr().out
    assert "new: not in the baseline" in out and "nothing measured in the baseline" in out


@pytest.mark.parametrize("bad", ["missing", "corrupt", "other_model", "no_overlap", "threshold", "floor"])
def test_unusable_input_exits_2_with_one_line(tmp_path, capsys, bad):
    base = _write(tmp_path, "b", BASE)
    args: list[str] = []
    if bad == "missing":
        cur = tmp_path / "nope"
    elif bad == "corrupt":
        cur = tmp_path / "x.json"
        cur.write_text('{"benchmarks": [')
    elif bad == "other_model":
        cur = _write(tmp_path, "c", [{**r, "model": "resnet8"} for r in BASE])
    elif bad == "no_overlap":
        cur = _write(tmp_path, "c", [{**r, "batch_size": 7} for r in BASE])
    elif bad == "threshold":
        cur, args = base, ["--max-slowdown", "fast"]
    else:
        cur, args = base, ["--max-memory-growth", "20%+lots"]
    assert _compare(base, cur, *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("accelbench") and "\n" not in err


def test_benchmark_json_with_nulls_is_read(tmp_path):
    doc = {"benchmarks": [{"name": "t", "stats": {}, "extra_info": {**_row("eager"), "accuracy": None}}],
           "machine_info": {}, "commit_info": {}}
    path = tmp_path / "out.json"
    path.write_text(json.dumps(doc, allow_nan=False))
    base = _write(tmp_path, "b", [{**_row("eager"), "accuracy": ""}])
    assert _compare(base, path) == 0          # null reads as missing, as an empty CSV cell does
    measured = _write(tmp_path, "m", [_row("eager")])
    assert _compare(measured, path) == 1      # and a figure the baseline measured, missing now, fails the gate


# --- real runs: a runtime whose candidate is made slower on demand ------------------------------

SLOWNESS = {"factor": 1.0, "jitter": 0.0}   # read at call time: the same pipeline string, made slower


@dataclass(frozen=True)
class Sluggish(Runtime):
    """Eager, then busy-waits so each call takes `factor` times as long (plus up to 2*jitter at random)."""

    name: ClassVar[str] = "sluggish"

    def prepare(self, model: nn.Module, ctx: Context) -> Predictor:
        model = model.eval()
        rng = random.Random(0)

        def run(x: torch.Tensor) -> torch.Tensor:
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = model(x)
            dt = time.perf_counter() - t0
            stretch = SLOWNESS["factor"] * (1 + rng.uniform(0, 2 * SLOWNESS["jitter"]))
            while time.perf_counter() < t0 + dt * stretch:
                pass
            return out

        return Predictor(run=run, device="cpu")


@pytest.fixture()
def sluggish():
    threads = torch.get_num_threads()   # --threads 1 below sets it in this process (--no-isolate)
    techniques.register(Sluggish)
    yield
    techniques.unregister("sluggish")
    SLOWNESS.update(factor=1.0, jitter=0.0)
    torch.set_num_threads(threads)


def _real_run(out, factor: float, jitter: float, tries: int = 3) -> None:
    # One torch thread: on a busy 2-core machine two intra-op threads wait on each other whenever one
    # is descheduled, which turns a 0.2 ms call into 100 ms stalls; one thread is merely slowed.
    # A run the harness marked invalid (a host slow period during it) is what compare must report as
    # "INVALID now", not as a regression; this test is about regressions, so it measures again, as a
    # user would, into a fresh folder.
    import shutil
    SLOWNESS.update(factor=factor, jitter=jitter)
    for _ in range(tries):
        shutil.rmtree(out, ignore_errors=True)
        assert cli.main(["run", "--model", "lenet", "--pipeline", "eager", "--pipeline", "sluggish", "--batch-size",
                         "1", "--min-time", "0.3", "--threads", "1", "--out", str(out), "--no-isolate",
                         "--no-report", "--no-history"]) == 0
        rows = list(csv.DictReader(open(out / "records.csv")))
        if all(r["valid"] == "true" for r in rows):
            return
    raise AssertionError(f"{tries} runs in a row marked invalid: {[r['validity'] for r in rows]}")


def test_real_runs_flag_2x_and_not_5_percent_jitter(tmp_path, capsys, sluggish):
    _real_run(tmp_path / "base", 1.0, 0.0)
    _real_run(tmp_path / "slow", 2.0, 0.0)
    _real_run(tmp_path / "jitter", 1.0, 0.05)
    capsys.readouterr()
    assert _compare(tmp_path / "base", tmp_path / "base") == 0
    assert _compare(tmp_path / "base", tmp_path / "slow") == 1
    out = capsys.readouterr().out
    print(out)
    assert "regression: lenet sluggish bs=1 threads=1: speedup" in out and "regression: lenet eager" not in out
    assert _compare(tmp_path / "base", tmp_path / "jitter") == 0, capsys.readouterr().out


def test_runs_on_different_data_are_refused(tmp_path, capsys):
    import pandas as pd
    for name, data in (("a", "digits"), ("b", "synthetic")):
        (tmp_path / name).mkdir()
        pd.DataFrame([{**_row("eager"), "data": data}]).to_csv(tmp_path / name / "records.csv",
                                                                                 index=False)
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "different data" in capsys.readouterr().err
