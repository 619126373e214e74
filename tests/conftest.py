"""Shared fixtures: a private checkpoint cache per test session, the digits data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    # Tests share one cache inside the session's tmp dir unless the user points elsewhere:
    # the suite then proves the cold path (training) and never trusts a stale user cache.
    if "ACCELBENCH_CACHE" not in os.environ:
        os.environ["ACCELBENCH_CACHE"] = str(tmp_path_factory.mktemp("accelbench-cache"))
    yield Path(os.environ["ACCELBENCH_CACHE"])


@pytest.fixture(scope="session")
def digits():
    from bench.data import load
    return load("digits")


def pytest_addoption(parser):
    # The benchmark suite's --accel-* options, registered here so they are accepted from the repo
    # root (`pytest --benchmark-only --accel-pipelines eager`), not only with tests/benchmarks given.
    from bench.bench_plugin import add_options
    add_options(parser)
