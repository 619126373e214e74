"""One benchmark per (model, pipeline, batch size) of the registry: `pytest --benchmark-only`."""

from __future__ import annotations

import time

import pytest

from bench import pytest_plugin as bench_plugin


def test_pipeline(benchmark, accel_cell, accel_env, accel_recorder):
    env, ceil = accel_env
    spec = bench_plugin.with_ceilings(accel_cell, ceil)
    model, pipeline, batch_size = spec.model, spec.pipeline, spec.batch_size
    t0 = time.perf_counter()
    try:
        measured = bench_plugin.measure(spec, env)
    except Exception as exc:
        from bench.running.result import CellResult
        error = CellResult.error(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                                 params=pipeline.params())
        accel_recorder.add(bench_plugin.full_row(spec, error, time.perf_counter() - t0, accel_recorder.run_id))
        raise
    row = bench_plugin.full_row(spec, measured.result, time.perf_counter() - t0, accel_recorder.run_id)
    accel_recorder.add(row)
    if row["status"] != "ok":
        pytest.skip(row["reason"])  # the runner's reason, verbatim
    benchmark.group = f"{model} bs={batch_size}"
    benchmark.extra_info.update(bench_plugin.extra_info(row))
    benchmark.pedantic(measured.candidate, rounds=bench_plugin.bench_rounds(row["latency_ms_mean"]),
                       warmup_rounds=bench_plugin.BENCH_WARMUP_ROUNDS, iterations=1)
