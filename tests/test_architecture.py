"""The shape of the code: an acyclic import graph, one parse per pipeline, composition checked at parse
time, one broken plugin never takes the others down, rows only of known columns."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bench.pipeline
from bench.api import UserError
from bench.pipeline import parse

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "models", "techniques")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """module -> project modules it imports (anywhere in the file, functions included)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        deps: set[str] = set()
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # `from bench import api` imports the module bench.api; `from bench.api import X` imports bench.api
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    deps.add(name)
        graph[mod] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


# The harness in layers, lowest first: a module imports only from its own layer and those below it.
# A package or module under bench/ that is not listed here fails the test until it is given a place.
LAYERS = (
    ("bench.api",),                                      # the interface: imports nothing else of the project
    ("bench.measure",),                                  # timing, statistics, memory, metrics
    ("bench.terminal", "bench.restricted_pickle"),       # inert printing, pickles read without running code
    ("bench.env", "bench.data", "bench.pipeline"),       # the machine, the data, parsed pipelines
    ("bench.training",),                                 # training loop, checkpoint cache, distributed launcher
    ("bench.api.harness",),                              # what techniques may use of the layers below
    ("bench.records", "bench.running", "bench.serving"),   # cells and runs (served under LoadGen too), their rows
    ("bench.reporting", "bench.history"),                # what reads rows: report, compare, calibrate, history
    ("bench.recommend",),                                # the search: runs cells, judges them as the report does
    ("bench.cli", "bench.crosscheck", "bench.overhead", "bench.pytest_plugin"),   # front ends
)
# What bench.api.harness hands to techniques, and from where.
HARNESS_MODULES = {"bench.training.loop", "bench.training.cache", "bench.training.distributed", "bench.measure.metrics",
                   "bench.measure.opprofile"}


def _layer(module: str) -> int | None:
    """Index in LAYERS of the longest listed prefix of `module` (bench.api.harness before bench.api)."""
    best: tuple[int, int] | None = None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > best[1]):
                best = (i, len(name))
    return best[0] if best else None


def test_the_import_graph_has_no_cycle_and_the_layers_hold():
    graph = _import_graph()
    assert _cycles(graph) == []
    top = lambda m: m.split(".")[0]  # noqa: E731
    # The harness reaches techniques and models only through the registries in bench.api.
    assert {m: sorted(d) for m, d in graph.items() if top(m) == "bench" and any(top(x) != "bench" for x in d)} == {}
    # Package level: models and techniques depend on bench, never the other way round.
    pkg_edges = {(top(m), top(d)) for m, ds in graph.items() for d in ds if top(m) != top(d)}
    assert pkg_edges <= {("models", "bench"), ("techniques", "bench")}
    # No technique module imports another: only the package's interface and the shared helpers.
    for m, ds in graph.items():
        if m.startswith("techniques.") and m != "techniques._shared":
            assert {d for d in ds if top(d) == "techniques"} <= {"techniques", "techniques._shared"}, m


def test_the_interface_imports_nothing_else_and_techniques_reach_the_harness_only_through_it():
    graph = _import_graph()
    interface = {m for m in graph if (m == "bench.api" or m.startswith("bench.api.")) and m != "bench.api.harness"}
    assert {m: sorted(graph[m] - interface) for m in interface if graph[m] - interface} == {}
    assert graph["bench.api.harness"] <= HARNESS_MODULES
    # The harness's own code imports its modules directly; the declared list is for plugins.
    assert sorted(m for m, ds in graph.items() if m.startswith("bench") and "bench.api.harness" in ds) == []
    # Techniques and models see of bench only the interface and the declared harness.
    reach = {m: sorted(d for d in ds if d.startswith("bench") and d != "bench.api" and not d.startswith("bench.api."))
             for m, ds in graph.items() if m.split(".")[0] in ("techniques", "models")}
    assert {m: ds for m, ds in reach.items() if ds} == {}


def test_the_harness_layers_hold():
    graph = _import_graph()
    modules = [m for m in graph if m.startswith("bench.")]
    assert [m for m in modules if _layer(m) is None] == [], "give each new module of bench/ a place in LAYERS"
    upward = {m: sorted(d for d in graph[m] if d.startswith("bench.") and _layer(d) > _layer(m)) for m in modules}
    assert {m: ds for m, ds in upward.items() if ds} == {}
    # named because it once did: the measurement layer needs no trained model
    assert not any(d.startswith("bench.training") for m in modules if m.startswith("bench.measure") for d in graph[m])


def test_the_declared_harness_names_resolve_and_others_are_refused():
    import bench.api.harness as harness
    for name in harness.__all__:
        assert getattr(harness, name) is not None, name
    with pytest.raises(AttributeError, match="a technique may use"):
        harness.not_a_harness_name  # noqa: B018


def test_a_two_cell_run_parses_each_pipeline_once(monkeypatch, tmp_path):
    """At start-up, once per distinct pipeline string; cells carry the parsed Pipeline."""
    from bench.cli import main
    from bench.running import matrix

    calls = {"parse": 0, "parse_technique": 0}

    def counting(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(bench.pipeline, "parse_technique", counting("parse_technique", bench.pipeline.parse_technique))
    counted_parse = counting("parse", bench.pipeline.parse)
    monkeypatch.setattr(bench.pipeline, "parse", counted_parse)
    monkeypatch.setattr(matrix, "parse", counted_parse)
    code = main(["run", "--model", "lenet", "--pipeline", "fusion@jit", "--batch-size", "1", "--batch-size", "2",
                 "--data", "synthetic", "--min-time", "0", "--no-isolate", "--no-report", "--out", str(tmp_path)])
    assert code == 0
    assert calls == {"parse": 1, "parse_technique": 2}   # fusion and jit, once each, for both cells
    rows = (tmp_path / "records.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",fusion@jit," in r for r in rows[1:])


@pytest.mark.parametrize("spec, parts", [
    ("quantize:mode=static@onnx:ep=cpu", ("onnx", "quantize:mode=static")),
    ("quantize@onnx", ("onnx", "quantize")),
    ("quantize+prune@eager", ("prune", "quantize")),
    ("quantize:mode=static+fusion", ("fusion", "quantize:mode=static")),
])
def test_a_pipeline_whose_parts_do_not_fit_is_refused_naming_both(spec, parts):
    with pytest.raises(UserError) as err:
        parse(spec)
    msg = str(err.value)
    assert all(p in msg for p in parts) and "int8" in msg and "\n" not in msg


@pytest.mark.parametrize("spec", ["quantize", "quantize:mode=static@jit", "quantize:mode=dynamic@compile",
                                  "fusion+quantize:mode=static@eager", "prune+quantize"])
def test_pipelines_that_fit_still_parse(spec):
    assert parse(spec).runtime is not None


def test_an_impossible_pipeline_on_the_command_line_exits_2_before_anything_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--pipeline", "quantize:mode=static@onnx:ep=cpu",
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "onnx" in lines[0] and "quantize:mode=static" in lines[0], proc.stderr
    assert not (tmp_path / "out" / "records.csv").exists()


def test_a_repeated_technique_keeps_both_parameter_sets_and_both_figures(tmp_path):
    from bench.env import detect
    from bench.measure.timing import TimingConfig
    from bench.running.cell import CellSpec
    from tests.cellrow import cell_row

    spec = CellSpec.of("lenet", "prune:amount=0.3+prune:amount=0.7@eager", 4, quick=True,
                       timing=TimingConfig(warmup=0, min_rounds=3, min_time_s=0))
    row = cell_row(spec, detect())
    assert row["status"] == "ok", row["reason"]
    params = json.loads(row["technique_params"])
    assert [(p["technique"], p.get("amount")) for p in params] == [("prune", 0.3), ("prune", 0.7), ("eager", None)]
    figures = json.loads(row["figures"])
    assert figures["prune.sparsity"] < figures["prune#2.sparsity"]


def test_the_writer_refuses_a_column_the_schema_does_not_have(tmp_path):
    from bench.records.write import RecordWriter
    w = RecordWriter(tmp_path / "records.csv")
    try:
        with pytest.raises(ValueError, match="latency_us"):
            w.write({"model": "lenet", "latency_us": 3.0})
    finally:
        w.close()


def _tree_with_a_broken_technique(tmp_path: Path) -> dict[str, str]:
    """A copy of techniques/ with one more module whose own import fails, first on PYTHONPATH."""
    shutil.copytree(ROOT / "techniques", tmp_path / "techniques", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "techniques" / "openvino_ep.py").write_text(
        "import openvino_runtime_not_installed  # an optional dependency this machine lacks\n")
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}


def test_a_technique_module_that_fails_to_import_is_listed_with_why_and_the_rest_runs(tmp_path):
    env = _tree_with_a_broken_technique(tmp_path)
    listing = subprocess.run([sys.executable, "-m", "bench.cli", "list"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "Traceback" not in listing.stderr
    line = next(ln for ln in listing.stdout.splitlines() if ln.strip().startswith("openvino_ep"))
    assert "cannot import techniques.openvino_ep: ModuleNotFoundError" in line and "openvino_runtime_not_installed" in line
    assert any(ln.strip().startswith("eager") and "runs here" in ln for ln in listing.stdout.splitlines())

    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--model", "lenet", "--pipeline", "eager",
                          "--pipeline", "openvino_ep", "--batch-size", "1", "--data", "synthetic", "--min-time", "0",
                          "--no-report", "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    import csv
    rows = {r["pipeline"]: r for r in csv.DictReader(open(out / "records.csv"))}
    assert rows["eager"]["status"] == "ok"
    assert rows["openvino_ep"]["status"] == "skipped"
    assert "openvino_runtime_not_installed" in rows["openvino_ep"]["reason"]


def test_data_parallel_ranks_load_the_full_data_spec(mnist_dir, tmp_path):
    """`--data mnist:DIR` reaches every rank whole (a rank given just `mnist` cannot load anything)."""
    from bench.api import Context, Env
    from bench.data import load

    data = load(f"mnist:{mnist_dir}")
    assert data.spec == f"mnist:{mnist_dir}"
    strategy = parse("data_parallel:world_size=2,seeds=1,epochs=1").strategy
    out = strategy.run(Context("lenet", data, Env(cpu_count=2), batch_size=64, quick=True, scratch_dir=tmp_path))
    job = json.loads((tmp_path / "ddp" / "job.json").read_text())
    assert job["data"] == f"mnist:{mnist_dir}"
    assert out["final_accuracy"] > 0.3


def test_plain_pytest_benchmark_only_from_the_repository_root_writes_benchmarks(tmp_path):
    """The console script, not `python -m pytest`: the repository root is not on sys.path by itself."""
    pytest_script = Path(sys.executable).with_name("pytest")
    if not pytest_script.exists():
        pytest.skip(f"no pytest console script beside {sys.executable}")
    out = tmp_path / "out.json"
    proc = subprocess.run([str(pytest_script), "--benchmark-only", f"--benchmark-json={out}", "-q",
                           "--accel-models", "lenet", "--accel-pipelines", "eager", "--accel-batch-sizes", "2",
                           "--accel-min-time", "0"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert [b["extra_info"]["pipeline"] for b in doc["benchmarks"]] == ["eager"]
    assert doc["benchmarks"][0]["extra_info"]["status"] == "ok"


def test_an_isolated_onnx_cell_finds_the_models_after_onnxruntime_edits_sys_path(tmp_path):
    """onnxruntime appends a folder holding its own `models` package to sys.path; a cell worker that
    imports it before looking up a model must still find ours (it once found 'no models')."""
    import csv
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--model", "lenet", "--pipeline", "onnx:ep=cpu",
                           "--batch-size", "2", "--data", "synthetic", "--min-time", "0", "--no-report",
                           "--out", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = csv.DictReader(open(tmp_path / "records.csv"))
    assert row["status"] == "ok", row["reason"]


def test_a_parameter_given_twice_is_refused():
    with pytest.raises(UserError, match=r"prune\.amount is given twice"):
        parse("prune:amount=0.5,amount=0.3")


def test_a_users_technique_that_fails_to_import_is_skipped_even_with_parameters(tmp_path, monkeypatch):
    (tmp_path / "badtech.py").write_text("import not_installed_anywhere_pkg\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from bench.env import detect
    pipe = parse("badtech:HalfWidth:mode=b@jit")
    why = pipe.transforms[0].unavailable(detect())
    assert "cannot import badtech:HalfWidth" in why and "not_installed_anywhere_pkg" in why
