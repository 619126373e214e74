"""Shared fixtures: a private checkpoint cache per test session, the digits data."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.api import load_registries

# Before any test imports onnxruntime, which appends a folder holding its own `models` to sys.path.
load_registries()


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
    from bench.pytest_plugin import add_options
    add_options(parser)


def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


@pytest.fixture
def mnist_dir(tmp_path):
    """MNIST-format files made of the real digits images (upscaled to 28x28 grey bytes)."""
    from sklearn.datasets import load_digits
    bunch = load_digits()
    imgs = torch.nn.functional.interpolate(torch.tensor(bunch.images[:, None] / 16.0), size=(28, 28)).squeeze(1)
    imgs = (imgs.numpy() * 255).round()
    _write_idx(tmp_path / "train-images-idx3-ubyte", imgs[:1500], compress=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", bunch.target[:1500], compress=True)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", imgs[1500:], compress=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", bunch.target[1500:], compress=False)
    return tmp_path
