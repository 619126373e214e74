"""`accelbench recommend`: the search space comes from the registry, the budget of 0 points admits only eager's
outputs, an interrupted search resumes without measuring again, an impossible target says so, bad input is one line.

The searches here are real: real cells of lenet on digits, in workers, through the ordinary runner."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench import api
from bench.env import detect
from bench.recommend import judge
from bench.recommend.candidates import space
from bench.recommend.request import SearchRequest, State, Target
from bench.recommend import search as search_mod
from bench.records import read

ROOT = Path(__file__).resolve().parents[1]
api.load_registries()


@pytest.fixture(scope="module", autouse=True)
def _test_halve_registered():
    """The test technique is registered while this module's tests run, and only then: registered at import it
    would join every registry-parametrized test collected after this file (and the README's technique table)."""
    import techniques
    from bench.api import registry
    api.import_plugin("recommend_plugin")   # tests/ is on the path; workers import it again (plugin_modules)
    yield
    techniques.unregister("test_halve")
    registry._PLUGINS[:] = [m for m in registry._PLUGINS if m != "recommend_plugin"]
    sys.modules.pop("recommend_plugin", None)   # so a second import registers it again


def _cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_a_technique_registered_here_joins_the_search_with_its_settings_and_the_parse_rules():
    s = {c.spec: c for c in space(detect()).candidates}
    # its default and its other Literal choice, alone (on eager) and before each runtime
    assert {"test_halve", "test_halve:by=quarter", "test_halve@jit", "test_halve:by=quarter@onnx"} <= set(s)
    assert "test_halve+quantize" in s and s["test_halve"].approximate
    # torch int8 modules (quantize) cannot go to ONNX: the parse rules keep that composition out
    assert "quantize@onnx" not in s and "quantize:mode=static@onnx" not in s and "quantize@jit" in s
    # one setting per technique, never two of one
    assert not [p for p in s if p.count("test_halve") > 1]
    assert all(c.trains for p, c in s.items() if p.startswith("distill")) and not s["jit"].trains


def test_the_pareto_front_keeps_only_points_nothing_beats_on_both_axes():
    pts = [{"pipeline": n, "speedup": sp, "drop": d} for n, sp, d in
           [("a", 2.0, 0.0), ("b", 3.0, 0.5), ("c", 1.5, 0.2), ("d", 3.0, 0.9), ("e", math.nan, 0.0)]]
    assert [p["pipeline"] for p in judge.front(pts)] == ["a", "b"]


def _rows(folder: Path) -> pd.DataFrame:
    return read.load(folder)[0]


@pytest.fixture(scope="module")
def interrupted_then_resumed(tmp_path_factory):
    """A real search (eager and the test technique's two settings; 0 points of accuracy budget) stopped by
    a Ctrl-C after its second cell, then resumed from its folder."""
    from bench import env as env_mod
    from bench.measure import ceilings
    from bench.recommend import command

    out = tmp_path_factory.mktemp("recommend")
    req = SearchRequest(model="lenet", max_accuracy_drop_points=0.0, target=Target("inference", 4),
                        budget_s=1800, techniques=("test_halve",), max_transforms=1)
    env = env_mod.detect()
    ceil = ceilings.measure(env.cuda, (0,))
    record = {**env_mod.record(env), **ceil.as_record()}
    seen: list[str] = []

    def stop_after_two(line: str) -> None:
        seen.append(line)
        # a cell's progress line ("[2/3] lenet ..."), not "[later]" or "[re-measure]" notices of a
        # disturbed worker, which a loaded machine adds
        if sum(bool(re.match(r"\[\d+/\d+\] lenet", ln)) for ln in seen) == 2:
            raise KeyboardInterrupt

    state = State(req)
    state.save(out)
    first = command.run_search(state, out, env, record, ceil, stop_after_two)
    before = _rows(out / search_mod.SCREEN)
    t0 = time.monotonic()
    resumed = command.run_search(State.load(out), out, env, record, ceil, lambda m: print(m, file=sys.stderr))
    print(f"resumed search: {time.monotonic() - t0:.0f} s (machine shared)")
    return out, first, before, resumed


def test_an_interrupted_search_resumes_without_measuring_again(interrupted_then_resumed):
    out, first, before, resumed = interrupted_then_resumed
    assert first == 130 and resumed == 0
    assert len(before) == 2   # the two cells that finished before the Ctrl-C
    after = _rows(out / search_mod.SCREEN)
    kept = after[after["pipeline"].isin(before["pipeline"])]
    assert list(kept["wall_s"]) == list(before["wall_s"])   # the same rows, not measured again
    assert after["pipeline"].is_unique and len(after) > 2
    assert State.load(out).spent_s > 0
    # the screen and the confirming rung are ordinary run folders: run.json lets `run --resume` plan them again
    for folder in (out / search_mod.SCREEN, out):
        assert json.loads((folder / "run.json").read_text())["models"] == ["lenet"]
        assert (folder / "report.html").is_file()


def test_the_new_technique_was_measured_and_a_budget_of_0_points_admits_no_approximate_pipeline(
        interrupted_then_resumed):
    out, *_ = interrupted_then_resumed
    screen = _rows(out / search_mod.SCREEN)
    assert "test_halve" in set(screen["pipeline"]) or "test_halve:by=quarter" in set(screen["pipeline"])
    doc = json.loads((out / "recommendation.json").read_text())
    approximate = set(screen.loc[screen["fidelity"] == "approximate", "pipeline"])
    assert approximate, "the screen measured no approximate pipeline"
    confirmed = set(_rows(out)["pipeline"])
    assert not (confirmed & approximate) and doc["pipeline"] not in approximate
    assert all(not p["fits"] for p in doc["front"] if p["pipeline"] in approximate)
    # judged again with a budget of 1 point, the test technique (argmax unchanged) fits: the budget did the excluding
    halve = screen[screen["pipeline"].str.startswith("test_halve") & (screen["status"] == "ok")].to_dict("records")
    assert halve and all(judge.admissible(r, 1.0)[0] and not judge.admissible(r, 0.0)[0] for r in halve)
    assert (out / "pareto.png").stat().st_size > 10_000 and (out / "recommendation.md").is_file()


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for args in (["--model", "lenet"],                                   # no accuracy budget
                 ["--model", "nosuchnet", "--max-accuracy-drop", "1"],
                 ["--model", "lenet", "--max-accuracy-drop", "-1"],
                 ["--model", "lenet", "--max-accuracy-drop", "1", "--latency-bound-ms", "5"],
                 ["--model", "lenet", "--max-accuracy-drop", "1", "--budget-min", "0"]):
        p = _cli("recommend", *args, "--out", str(tmp_path / "x"))
        assert p.returncode == 2, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    p = _cli("recommend", "--resume", str(tmp_path))
    assert p.returncode == 2 and "recommend.json" in p.stderr
    # a training strategy is no part of an inference pipeline: refused, not a search of nothing
    p = _cli("recommend", "--model", "lenet", "--max-accuracy-drop", "1", "--technique", "plain",
             "--out", str(tmp_path / "x"))
    assert p.returncode == 2 and "'plain' is a training technique" in p.stderr, p.stderr
    # --resume takes the recorded search: a new model or budget is refused, never silently ignored
    State(SearchRequest(model="lenet", max_accuracy_drop_points=1)).save(tmp_path)
    for extra in (["--model", "resnet8"], ["--max-accuracy-drop", "5"], ["--max-transforms", "0"]):
        p = _cli("recommend", "--resume", str(tmp_path), *extra)
        assert p.returncode == 2 and "takes only --budget-min" in p.stderr and extra[0] in p.stderr, p.stderr
    assert not (tmp_path / "x").exists()


def test_the_input_shape_and_training_recipe_reach_every_rung():
    req = SearchRequest(model="lenet", max_accuracy_drop_points=1, input_shape="1x32x32", train_epochs=2)
    for screen in (True, False):
        run = search_mod.run_request(req, ["eager"], screen)
        assert run.input_shapes == ("1x32x32",) and run.train_epochs == 2
    with pytest.raises(api.UserError, match="--train-epochs"):
        SearchRequest(model="lenet", max_accuracy_drop_points=1, train_epochs=0)


def test_a_search_that_measured_no_candidate_says_why_and_exits_1(tmp_path):
    # gpu cannot run on a machine without CUDA: every setting is unavailable, so nothing beside eager
    # is measured, and "keep eager" would be an answer to a question nobody measured
    p = _cli("recommend", "--model", "lenet", "--max-accuracy-drop", "1", "--technique", "gpu",
             "--budget-min", "2", "--out", str(tmp_path))
    if "cuda" in p.stderr.lower() and p.returncode == 0:   # a machine with a GPU measured it: nothing to prove
        pytest.skip("a CUDA device is present")
    assert p.returncode == 1, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert "no candidate pipeline" in last and "gpu: no CUDA device" in last, last


def test_candidates_marked_invalid_say_so_instead_of_not_faster():
    rows = pd.DataFrame([{"pipeline": "jit", "status": "ok", "scenario": "inference", "speedup": 1.4,
                          "speedup_ci_low": 1.3, "speedup_ci_high": 1.5, "valid": False,
                          "validity": "eager baseline slower since the preparation", "speed_verdict": "invalid",
                          "fidelity": "exact"}])
    choice = judge.choose(rows, {}, 1.0, None)
    assert choice.row is None and "1 of 1 were marked invalid" in choice.why
    assert "eager baseline slower since the preparation" in choice.why


@pytest.mark.slow
def test_a_latency_bound_no_pipeline_meets_says_so_in_one_line_with_the_closest(tmp_path):
    t0 = time.monotonic()
    p = _cli("recommend", "--model", "lenet", "--max-accuracy-drop", "1", "--scenario", "server",
             "--latency-bound-ms", "0.001", "--technique", "fusion", "--budget-min", "20", "--out", str(tmp_path),
             timeout=1200)
    print(f"impossible-target search: {time.monotonic() - t0:.0f} s (machine shared)")
    assert p.returncode == 1, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert "no pipeline meets the server target (p99 under 0.001 ms)" in last and "closest is" in last, last
    assert json.loads((tmp_path / "recommendation.json").read_text())["impossible"] is True


def test_the_search_report_opens_with_the_recommendation_on_one_screen(interrupted_then_resumed, tmp_path):
    from test_report_first_screen import CHROMIUM, assert_first_screen
    if CHROMIUM is None:
        pytest.skip("chromium is not installed")
    out, *_ = interrupted_then_resumed
    doc = json.loads((out / "recommendation.json").read_text())
    assert_first_screen(out, tmp_path / "p1", expect_answer=doc["pipeline"], min_heat_rows=1)
    screened = len(_rows(out / search_mod.SCREEN))
    assert_first_screen(out / search_mod.SCREEN, tmp_path / "p2", expect_answer="batch 4", min_heat_rows=screened)
