"""The benchmark suite's plugin glue: --accel-* options, the cell matrix, the run's environment and rows.

The suite runs only under `--benchmark-only` or `--benchmark-enable`; a plain `pytest -q` collects
its cells and skips them (timing every pipeline takes minutes, not the seconds a test run may).
"""

from __future__ import annotations

import pytest

from bench import pytest_plugin as bench_plugin


def pytest_addoption(parser):
    # Seen only when this conftest is an initial conftest (`pytest tests/benchmarks ...`); from the
    # repo root with no path, tests/conftest.py must register them (the same call) for the options
    # to be accepted. Registering twice raises ValueError: then the root conftest already did it.
    try:
        bench_plugin.add_options(parser)
    except ValueError:
        pass


def _opt(config, name: str, default):
    try:
        return config.getoption(name)
    except ValueError:  # the options were never registered (late conftest): use the defaults
        return default


def pytest_generate_tests(metafunc):
    if "accel_cell" not in metafunc.fixturenames:
        return
    from bench.api import UserError
    cfg = metafunc.config
    try:
        cells = bench_plugin.selected_cells(_opt(cfg, "accel_models", ""), _opt(cfg, "accel_pipelines", ""),
                                            _opt(cfg, "accel_batch_sizes", ""),
                                            _opt(cfg, "accel_min_time", bench_plugin.QUICK.min_time_s),
                                            _opt(cfg, "accel_threads", 0), _opt(cfg, "accel_data", "digits"),
                                            tuple(_opt(cfg, "accel_input_shape", [])),
                                            tuple(_opt(cfg, "accel_weights", [])))
    except UserError as exc:
        raise pytest.UsageError(str(exc)) from None
    metafunc.parametrize("accel_cell", cells, ids=[bench_plugin.cell_id(c) for c in cells])


def _benchmarking(config) -> bool:
    return bool(_opt(config, "benchmark_only", False) or _opt(config, "benchmark_enable", False))


def pytest_collection_modifyitems(config, items):
    if _benchmarking(config):
        return
    skip = pytest.mark.skip(reason="accelbench benchmarks run only with --benchmark-only (or --benchmark-enable)")
    for item in items:
        if "accel_cell" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def accel_env(request):
    from bench import env as env_mod
    from bench.measure import ceilings
    env = env_mod.detect()
    return env, ceilings.measure(env.cuda, (_opt(request.config, "accel_threads", 0),))


_recorder: bench_plugin.Recorder | None = None


@pytest.fixture(scope="session")
def accel_recorder(request, accel_env):
    global _recorder
    env, ceil = accel_env
    _recorder = bench_plugin.Recorder(_opt(request.config, "accel_out", ""), bench_plugin.env_record(env, ceil))
    yield _recorder
    _recorder.close()


def pytest_benchmark_update_machine_info(config, machine_info):
    if _recorder is not None:
        machine_info["accelbench_env"] = dict(_recorder.env_record)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    if _recorder is not None:
        output_json[bench_plugin.UNBENCHMARKED_KEY] = list(_recorder.unbenchmarked)
