"""Datasets: scikit-learn's bundled digits (default), local MNIST IDX files, synthetic tensors."""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.api import UserError

SPLIT_SEED = 0          # fixed: every run, every process sees the same split
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors, float32 NCHW normalised to mean 0 / std 1 per the train split."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    labelled: bool = True   # synthetic data has random labels: accuracy means nothing there
    spec: str = ""          # what `load` was given (folders made absolute): another process loads the same data by it

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


def load(spec: str, input_shape: tuple[int, int, int] = (1, 28, 28)) -> Dataset:
    """`digits`, `mnist:DIR` or `synthetic`, shaped to `input_shape` (C, H, W)."""
    kind, _, arg = spec.partition(":")
    if kind == "digits" and not arg:
        return replace(_digits(input_shape), spec=spec)
    if kind == "mnist":
        if not arg:
            raise UserError("--data mnist:DIR needs the folder holding the MNIST IDX files, e.g. mnist:~/data/mnist")
        folder = Path(arg).expanduser().absolute()
        return replace(_mnist(folder, input_shape), spec=f"mnist:{folder}")
    if kind == "synthetic" and not arg:
        return replace(_synthetic(input_shape), spec=spec)
    raise UserError(f"unknown data {spec!r}; use digits, mnist:DIR or synthetic")


def _shape(x: torch.Tensor, input_shape: tuple[int, int, int]) -> torch.Tensor:
    """Resize N x 1 x h x w images to the model's C x H x W (grey repeated over channels)."""
    c, h, w = input_shape
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    if c != 1:
        x = x.repeat(1, c, 1, 1)
    return x.contiguous()


def _finish(name: str, x_tr, y_tr, x_te, y_te, input_shape) -> Dataset:
    x_tr, x_te = _shape(x_tr, input_shape), _shape(x_te, input_shape)
    mean, std = x_tr.mean(), x_tr.std()
    return Dataset(name, (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te)


def _digits(input_shape) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()  # 1,797 real 8x8 images shipped inside scikit-learn: no download
    x = bunch.images.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return _finish("digits", t(x_tr)[:, None], t(y_tr), t(x_te)[:, None], t(y_te), input_shape)


_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
            raise ValueError("bad magic number")
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if data.size != int(np.prod(dims)):
            raise ValueError(f"header says {dims} but file holds {data.size} bytes")
        return data.reshape(dims)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise UserError(f"{path}: not a valid MNIST IDX file ({exc})") from exc


def _mnist(folder: Path, input_shape) -> Dataset:
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; expected a folder with the MNIST IDX files "
                        f"({', '.join(_MNIST_FILES.values())}, raw or .gz)")
    arrays = {}
    for key, stem in _MNIST_FILES.items():
        candidates = [folder / stem, folder / (stem + ".gz"), folder / stem.replace("-idx", ".idx")]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise UserError(f"{folder}: missing {stem} (raw or .gz); expected the four MNIST IDX files")
        arrays[key] = _read_idx(found)
    for split in ("train", "test"):
        if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
            raise UserError(f"{folder}: {split} images and labels differ in count")
    t = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0)[:, None]  # noqa: E731
    return _finish("mnist", t(arrays["train_x"]), torch.from_numpy(arrays["train_y"].astype(np.int64)),
                   t(arrays["test_x"]), torch.from_numpy(arrays["test_y"].astype(np.int64)), input_shape)


def _synthetic(input_shape) -> Dataset:
    g = torch.Generator().manual_seed(SPLIT_SEED)
    x_tr, x_te = torch.randn(1024, *input_shape, generator=g), torch.randn(256, *input_shape, generator=g)
    y_tr, y_te = torch.randint(0, 10, (1024,), generator=g), torch.randint(0, 10, (256,), generator=g)
    return Dataset("synthetic", x_tr, y_tr, x_te, y_te, labelled=False)
