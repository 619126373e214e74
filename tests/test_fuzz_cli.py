"""Property-based fuzz of every entry point's command line: any argument list ends in a known exit code,
a refusal is one line without a traceback, and a refused command writes nothing where it was told to write.

Nothing here measures. `run` and `train-node` are checked through the functions `main` calls before it
measures or starts a node (`_build_run_config`: parse, plan and guards; `train_node_plan`: parse and
every check of the node and the job); only the arguments they refuse go through `main` itself, whose
refusal comes before any cell or rank. `recommend` likewise, through `request_of` and the plan of its
first cell (what its `main` checks before it measures). `explain` runs whole: it reads and draws. `calibrate` always gets finished runs (--from), so it never
starts the gate's command. `report`, `compare` and `history` run whole: they only read and render.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import cli
from bench.api import UserError, load_registries
from tests.fuzzing import (FUZZ, JUNK, MODELS, NUMBER_TEXT, SHAPES, TECHNIQUE_NAMES, TOKEN, assert_clean, call,
                           data_specs, files_under, make_scratch, pipelines, weights_files)

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "results" / "baseline-ci"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    folder = make_scratch(tmp_path_factory.mktemp("fuzz-cli"))
    sys.path.insert(0, str(folder))   # the bad modules import by name, as a user's would from their folder
    shutil.copytree(BASELINE, folder / "baseline")
    (folder / "foreign.sqlite").write_bytes(b"")
    con = sqlite3.connect(folder / "foreign.sqlite")
    con.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT)")
    con.commit()
    con.close()
    assert call(["history", "add", str(folder / "baseline"), "--db", str(folder / "history.sqlite")]).code == 0
    load_registries()
    yield folder
    sys.path.remove(str(folder))


def _fresh(scratch: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=scratch)) / "out"


def _options(draw, pairs: dict) -> list[str]:
    argv: list[str] = []
    for option, strategy in pairs.items():
        for value in draw(st.lists(strategy, max_size=2)):
            argv += [option] if value is None else [option, value]
    return argv


@FUZZ
@given(data=st.data())
def test_run_command_lines(scratch, data):
    flag = st.none()
    argv = ["run", *_options(data.draw, {
        "--model": MODELS, "--pipeline": pipelines(), "--batch-size": NUMBER_TEXT, "--threads": NUMBER_TEXT,
        "--input-shape": st.one_of(SHAPES, st.builds(lambda m, s: f"{m}={s}", MODELS, SHAPES)),
        "--data": data_specs(scratch), "--weights": weights_files(scratch), "--output": TOKEN,
        "--scenario": st.sampled_from(["inference", "training", "server", "offline", "bogus"]),
        "--mem-limit": NUMBER_TEXT, "--timeout": NUMBER_TEXT, "--min-time": NUMBER_TEXT,
        "--latency-bound-ms": NUMBER_TEXT, "--eval-limit": NUMBER_TEXT, "--shard": TOKEN,
        "--train-epochs": NUMBER_TEXT, "--train-lr": NUMBER_TEXT, "--train-schedule": TOKEN,
        "--quick": flag, "--no-isolate": flag, "--bogus-option": flag})]
    argv += data.draw(st.lists(JUNK, max_size=1))
    out = _fresh(scratch)
    argv += ["--out", str(out), "--no-history", "--no-report"]
    try:
        args = cli.build_parser().parse_args(argv)
        cli._build_run_config(args)
    except UserError:
        pass
    else:
        return   # a runnable request: running it would measure (see the module docstring)
    o = call(argv)
    assert_clean(o, argv)
    assert o.code == 2, (argv, o)
    assert files_under(out) == [], (argv, files_under(out))


@FUZZ
@given(data=st.data())
def test_train_node_command_lines(scratch, data):
    argv = ["train-node", *_options(data.draw, {
        "--host": st.sampled_from(["127.0.0.1", "::1", "10.0.0.300", "not a host", ""]),
        "--nic": st.sampled_from(["lo", "eth99", ""]), "--rendezvous": st.one_of(TOKEN, st.just("127.0.0.1:29500")),
        "--nnodes": NUMBER_TEXT, "--nproc-per-node": NUMBER_TEXT, "--join-timeout": NUMBER_TEXT,
        "--strategy": pipelines(), "--model": MODELS, "--data": data_specs(scratch), "--batch-size": NUMBER_TEXT,
        "--epochs": NUMBER_TEXT, "--seeds": NUMBER_TEXT, "--threads": NUMBER_TEXT})]
    out = _fresh(scratch)
    argv += ["--out", str(out)]
    try:
        cli.train_node_plan(cli.build_parser().parse_args(argv))
    except UserError:
        pass
    else:
        return   # a valid node: it would wait for the other hosts
    o = call(argv)
    assert_clean(o, argv)
    assert o.code == 2, (argv, o)
    assert files_under(out) == []


def _sources(scratch: Path):
    return st.sampled_from([str(scratch / "baseline"), str(scratch / "baseline" / "records.csv"),
                            str(scratch / "missing"), str(scratch / "garbage.bin"), str(scratch / "empty"),
                            str(scratch / "empty.pt"), str(scratch / "baseline" / "env.json")])


@settings(FUZZ, max_examples=max(3, FUZZ.max_examples // 4))   # a report that renders draws charts: seconds each
@given(data=st.data())
def test_report_command_lines(scratch, data):
    sources = data.draw(st.lists(_sources(scratch), min_size=0, max_size=2))
    out = _fresh(scratch)
    argv = ["report", *sources, *(["--out", str(out)] if data.draw(st.booleans()) or len(sources) != 1 else [])]
    if "--out" not in argv:   # the report would go into the shared baseline: give it its own copy
        copy = _fresh(scratch).parent / "copy"
        shutil.copytree(scratch / "baseline", copy)
        argv[1] = str(copy)
    before = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in sources if Path(p).is_file()}
    o = call(argv)
    assert_clean(o, argv)
    assert o.code in (0, 2), (argv, o)
    if o.code == 2:
        assert files_under(out) == [], (argv, files_under(out))
    assert before == {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in before}


@FUZZ
@given(data=st.data())
def test_compare_command_lines(scratch, data):
    percent = st.one_of(NUMBER_TEXT, NUMBER_TEXT.map(lambda t: t + "%"), st.builds(
        lambda a, b: f"{a}%+{b}MiB", NUMBER_TEXT, NUMBER_TEXT), TOKEN)
    argv = ["compare", *data.draw(st.lists(_sources(scratch), min_size=0, max_size=3)), *_options(data.draw, {
        "--max-slowdown": percent, "--max-accuracy-drop": percent, "--max-memory-growth": percent,
        "--no-calibration": st.none()})]
    o = call(argv)
    assert_clean(o, argv)


def _dbs(scratch: Path):
    return st.sampled_from([str(scratch / "history.sqlite"), str(scratch / "foreign.sqlite"),
                            str(scratch / "garbage.bin"), str(scratch / "empty.pt"), str(scratch / "empty"),
                            str(scratch / "missing.sqlite"), f"sqlite:///{scratch}/missing/deeper/x.db",
                            "notadb://x", "mysql://nobody@127.0.0.1:1/x", "postgresql+psycopg://u@127.0.0.1:1/x",
                            "sqlite://", ""])


@FUZZ
@given(data=st.data())
def test_history_command_lines(scratch, data):
    db = data.draw(_dbs(scratch))
    html = _fresh(scratch) / "trend.html"
    argv = ["history", "--db", db, *_options(data.draw, {"--model": TOKEN, "--pipeline": TOKEN, "--last": NUMBER_TEXT}),
            *(["--html", str(html)] if data.draw(st.booleans()) else [])]
    files = [scratch / n for n in ("history.sqlite", "foreign.sqlite", "garbage.bin", "empty.pt")]
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    o = call(argv)
    assert_clean(o, argv)
    assert o.code in (0, 2), (argv, o)
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in files] == before, argv   # only read
    assert not (scratch / "missing.sqlite").exists() and not (scratch / "missing").exists()
    if o.code == 2:
        assert files_under(html.parent) == []


@FUZZ
@given(data=st.data())
def test_history_add_command_lines(scratch, data):
    fresh = _fresh(scratch).parent / "new.sqlite"
    db = data.draw(st.one_of(_dbs(scratch).filter(lambda d: "history.sqlite" not in d), st.just(str(fresh))))
    argv = ["history", "add", *data.draw(st.lists(_sources(scratch), max_size=2)), "--db", db]
    files = [scratch / n for n in ("foreign.sqlite", "garbage.bin", "empty.pt")]
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    o = call(argv)
    assert_clean(o, argv)
    assert o.code in (0, 2), (argv, o)
    if o.code == 2:   # nothing written into a database that was refused
        assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in files] == before, argv


@FUZZ
@given(data=st.data())
def test_calibrate_command_lines(scratch, data):
    base = _fresh(scratch).parent / "baseline"
    shutil.copytree(scratch / "baseline", base)
    gate_before = (base / "gate.json").read_bytes()
    runs = st.sampled_from([str(base), str(scratch / "baseline"), str(scratch / "missing"), str(scratch / "empty"),
                            str(scratch / "garbage.bin")])
    argv = ["calibrate", str(base), "--from", *data.draw(st.lists(runs, min_size=1, max_size=4)), *_options(data.draw, {
        "--runs": NUMBER_TEXT, "--false-alarm-rate": st.one_of(NUMBER_TEXT, NUMBER_TEXT.map(lambda t: t + "%")),
        "--dry-run": st.none()})]
    if data.draw(st.booleans()):
        argv += ["--holdout", data.draw(NUMBER_TEXT), "--holdout-from", *data.draw(st.lists(runs, min_size=1, max_size=2))]
    o = call(argv)
    assert_clean(o, argv)
    if o.code == 2 or "--dry-run" in argv:
        assert (base / "gate.json").read_bytes() == gate_before, argv


@FUZZ
@given(data=st.data())
def test_recommend_command_lines(scratch, data):
    from bench.recommend.command import request_of
    from bench.recommend.search import run_request
    from bench.running import plan
    argv = ["recommend", *_options(data.draw, {
        "--model": MODELS, "--data": data_specs(scratch), "--weights": weights_files(scratch),
        "--max-accuracy-drop": NUMBER_TEXT, "--batch-size": NUMBER_TEXT,
        "--scenario": st.sampled_from(["server", "offline", "inference", "bogus"]), "--latency-bound-ms": NUMBER_TEXT,
        "--budget-min": NUMBER_TEXT, "--technique": st.sampled_from(TECHNIQUE_NAMES), "--max-transforms": NUMBER_TEXT,
        "--timeout": NUMBER_TEXT, "--mem-limit": NUMBER_TEXT, "--no-isolate": st.none(),
        "--resume": st.sampled_from([str(scratch / "missing"), str(scratch / "baseline"), str(scratch / "garbage.bin")])})]
    out = _fresh(scratch)
    argv += ["--out", str(out)]
    try:
        args = cli.build_parser().parse_args(argv)
        state, _ = request_of(args)
        plan.build(run_request(state.request, ["eager"], True))
    except UserError:
        pass
    else:
        return   # a search it would start: that measures (see the module docstring)
    o = call(argv)
    assert_clean(o, argv)
    assert o.code == 2, (argv, o)
    assert files_under(out) == [], (argv, files_under(out))


@FUZZ
@given(data=st.data())
def test_explain_command_lines(scratch, data):
    argv = ["explain", *data.draw(st.lists(_sources(scratch), min_size=0, max_size=2)), *_options(data.draw, {
        "--model": st.one_of(MODELS, TOKEN), "--pipeline": st.one_of(pipelines(), TOKEN), "--batch-size": NUMBER_TEXT})]
    before = _hashes_of(scratch / "baseline")
    o = call(argv)
    assert_clean(o, argv)
    assert o.code in (0, 2), (argv, o)
    assert _hashes_of(scratch / "baseline") == before, argv


def _hashes_of(folder: Path) -> dict[str, str]:
    return {p: hashlib.sha256((folder / p).read_bytes()).hexdigest() for p in files_under(folder)
            if (folder / p).is_file()}
