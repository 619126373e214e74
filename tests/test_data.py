"""Data loaders: bundled digits, local MNIST IDX files (raw and gz), synthetic; bad paths are one clear error."""

from __future__ import annotations


import pytest
import torch

from bench.data import load
from bench.api import UserError


def test_digits_split_is_fixed_stratified_and_normalised(digits):
    assert digits.train_x.shape == (1437, 1, 28, 28) and digits.test_x.shape == (360, 1, 28, 28)
    assert torch.equal(load("digits").test_y, digits.test_y)  # same split every time
    counts = torch.bincount(digits.test_y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 10% of each class +- 1
    assert abs(digits.train_x.mean().item()) < 1e-4 and abs(digits.train_x.std().item() - 1) < 1e-3
    assert digits.labelled


def test_three_channel_models_get_32x32_rgb(digits):
    d3 = load("digits", (3, 32, 32))
    assert d3.train_x.shape == (1437, 3, 32, 32)
    assert torch.equal(d3.train_x[:, 0], d3.train_x[:, 2])


def test_mnist_idx_raw_and_gz(mnist_dir):
    d = load(f"mnist:{mnist_dir}")
    assert d.name == "mnist" and d.train_x.shape == (1500, 1, 28, 28) and d.test_x.shape == (297, 1, 28, 28)
    assert d.train_y[:5].tolist() == [0, 1, 2, 3, 4]


def test_missing_mnist_folder_names_the_path(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path / 'nope'}: no such folder; expected a folder with the MNIST IDX"):
        load(f"mnist:{tmp_path / 'nope'}")


def test_mnist_folder_missing_a_file(mnist_dir):
    (mnist_dir / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match="missing t10k-labels-idx1-ubyte"):
        load(f"mnist:{mnist_dir}")


def test_malformed_idx_file_is_named(mnist_dir):
    (mnist_dir / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte: not a valid MNIST IDX file"):
        load(f"mnist:{mnist_dir}")
    (mnist_dir / "t10k-images-idx3-ubyte").write_bytes(b"not idx at all")
    with pytest.raises(UserError, match="bad magic number"):
        load(f"mnist:{mnist_dir}")


def test_synthetic_and_unknown():
    d = load("synthetic", (3, 32, 32))
    assert d.train_x.shape[1:] == (3, 32, 32) and not d.labelled
    with pytest.raises(UserError, match="unknown data 'cifar'; use digits, mnist:DIR, imagefolder:DIR, cifar10:DIR"):
        load("cifar")
    with pytest.raises(UserError, match="--data mnist: needs a path"):
        load("mnist")
