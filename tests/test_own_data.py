"""Bring your own data: image folders (Pillow), CIFAR-10 batches, npz, a module's factory; each from real files made here."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from bench import data as data_mod
from bench.api import UserError


def _digit_images(n: int | None = None):
    """The real digits, as 32x32 RGB uint8 images (grey repeated and tinted per channel)."""
    from sklearn.datasets import load_digits
    bunch = load_digits()
    x = torch.tensor(bunch.images[:n, None] / 16.0, dtype=torch.float32)
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    rgb = torch.cat([x, 0.8 * x, 0.6 * x + 0.1], dim=1).clamp(0, 1)
    return (rgb * 255).round().byte().permute(0, 2, 3, 1).numpy(), bunch.target[:n]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    imgs, labels = _digit_images()
    for i, (img, y) in enumerate(zip(imgs, labels)):
        d = root / f"digit_{y}"
        d.mkdir(exist_ok=True)
        Image.fromarray(img, "RGB").save(d / f"{i:04d}.png")
    return root


def test_imagefolder_of_pngs_loads_rgb_with_a_fixed_stratified_split(image_folder):
    ds = data_mod.load(f"imagefolder:{image_folder}", (3, 32, 32))
    assert ds.num_classes == 10 and ds.input_shape == (3, 32, 32)
    assert len(ds.train_y) + len(ds.test_y) == 1797 and len(ds.test_y) == 360
    assert torch.bincount(ds.test_y).min() >= 35                        # stratified
    assert ds.train_x.mean(dim=(0, 2, 3)).abs().max() < 1e-4             # per-channel normalised
    assert torch.allclose(ds.train_x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
    again = data_mod.load(f"imagefolder:{image_folder}", (3, 32, 32))
    assert torch.equal(ds.test_y, again.test_y) and ds.fingerprint == again.fingerprint
    small = data_mod.load(f"imagefolder:{image_folder}", (3, 16, 16))   # resized to the model's input
    assert small.input_shape == (3, 16, 16) and small.fingerprint != ds.fingerprint


def test_a_small_net_learns_the_image_folder(image_folder, tmp_path, monkeypatch):
    from bench.training.loop import TrainConfig, evaluate, train
    ds = data_mod.load(f"imagefolder:{image_folder}", (3, 32, 32))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4),
                              torch.nn.Flatten(), torch.nn.Linear(16 * 64, 10))
    train(net, ds, TrainConfig(epochs=4), eval_every_epoch=False)
    assert evaluate(net.eval(), ds.test_x, ds.test_y) >= 0.90


def test_sixteen_bit_pngs_are_scaled_not_clipped(tmp_path):
    for cls, level in (("dim", 8000), ("bright", 40000)):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(np.full((8, 8), level + 100 * i, dtype=np.uint16)).save(tmp_path / cls / f"{i}.png")
    ds = data_mod.load(f"imagefolder:{tmp_path};mean=0;std=1", (1, 8, 8))
    x = torch.cat([ds.train_x, ds.test_x])
    assert 0.10 < float(x.min()) < 0.15 and 0.6 < float(x.max()) < 0.65   # 8000/65535 .. 40400/65535


def test_train_folder_without_val_or_test_is_refused_and_test_is_accepted(tmp_path):
    imgs, labels = _digit_images(60)
    for i in range(40):
        d = tmp_path / "train" / str(labels[i])
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(imgs[i]).save(d / f"{i}.png")
    with pytest.raises(UserError, match="found train/ but no val/ or test/"):
        data_mod.load(f"imagefolder:{tmp_path}", (3, 32, 32))
    for i in range(40, 60):
        d = tmp_path / "test" / str(labels[i % 10])
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(imgs[i]).save(d / f"{i}.png")
    ds = data_mod.load(f"imagefolder:{tmp_path}", (3, 32, 32))
    assert len(ds.train_y) == 40 and len(ds.test_y) == 20 and ds.num_classes == 10


def test_nan_data_test_labels_unseen_in_training_and_unscaled_data_with_mean_std_are_refused(tmp_path):
    x = np.random.rand(20, 1, 8, 8).astype(np.float32)
    y = np.arange(20) % 2
    bad = x.copy()
    bad[3, 0, 2, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x_train=bad, y_train=y, x_test=x[:4], y_test=y[:4])
    with pytest.raises(UserError, match="x_train holds 1 NaN or infinite value"):
        data_mod.load(f"npz:{tmp_path}/nan.npz", (1, 8, 8))
    np.savez(tmp_path / "oor.npz", x_train=x, y_train=y, x_test=x[:4], y_test=np.array([0, 1, 1, 7]))
    with pytest.raises(UserError, match="y_test has label 7 but the training split has classes 0..1"):
        data_mod.load(f"npz:{tmp_path}/oor.npz", (1, 8, 8))
    np.savez(tmp_path / "255.npz", x_train=x * 255, y_train=y, x_test=x[:4] * 255, y_test=y[:4])
    with pytest.raises(UserError, match=r"normalise images in \[0, 1\], but these range"):
        data_mod.load(f"npz:{tmp_path}/255.npz;mean=0.5;std=0.25", (1, 8, 8))
    assert data_mod.load(f"npz:{tmp_path}/255.npz", (1, 8, 8)).num_classes == 2   # own statistics: fine


def test_imagefolder_with_train_and_val_uses_them(tmp_path):
    imgs, labels = _digit_images(200)
    for split, rng in (("train", range(0, 150)), ("val", range(150, 200))):
        for i in rng:
            d = tmp_path / split / str(labels[i])
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(imgs[i, :, :, 0], "L").save(d / f"{i}.png")   # grey PNGs
    ds = data_mod.load(f"imagefolder:{tmp_path}", (1, 28, 28))
    assert len(ds.train_y) == 150 and len(ds.test_y) == 50 and ds.input_shape == (1, 28, 28)


def test_imagefolder_errors_are_one_line_naming_the_problem(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        data_mod.load(f"imagefolder:{tmp_path / 'nope'}", (3, 32, 32))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "1.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "2.png")
    with pytest.raises(UserError, match=r"class 'b' holds no images \(PNG, JPEG"):
        data_mod.load(f"imagefolder:{tmp_path}", (3, 32, 32))
    Image.new("RGB", (8, 8)).save(tmp_path / "b" / "1.png")
    with pytest.raises(UserError, match="class 'b' has 1 image"):
        data_mod.load(f"imagefolder:{tmp_path}", (3, 32, 32))
    Image.new("RGB", (8, 8)).save(tmp_path / "b" / "0.png")
    with pytest.raises(UserError, match="4 images in 2 classes are too few for a stratified 80%/20% split"):
        data_mod.load(f"imagefolder:{tmp_path}", (3, 32, 32))
    (tmp_path / "b" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(UserError, match=r"2.png: unreadable or corrupt image"):
        data_mod.load(f"imagefolder:{tmp_path}", (3, 32, 32))
    (tmp_path / "b" / "2.png").unlink()
    for i in range(3, 8):
        Image.new("RGB", (8, 8)).save(tmp_path / "a" / f"{i}.png")
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "b" / f"{i}.jpg")
    # The hint names the images' own size (8x8 on disk), not the model's default 28x28.
    with pytest.raises(UserError, match=r"images are 3x8x8 .* but the model expects 1 channel.*--input-shape MODEL=3x8x8,"):
        data_mod.load(f"imagefolder:{tmp_path}", (1, 28, 28))


def _cifar_folder(root, n_per_batch=20):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        y = [i % 10 for i in range(n_per_batch)]
        with open(root / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": y, b"batch_label": name.encode()}, f)
    return root


def test_cifar10_python_batches(tmp_path):
    root = _cifar_folder(tmp_path / "cifar-10-batches-py")
    ds = data_mod.load(f"cifar10:{tmp_path}", (3, 32, 32))       # the parent folder works too
    assert len(ds.train_y) == 100 and len(ds.test_y) == 20 and ds.num_classes == 10
    with open(root / "data_batch_1", "rb") as f:
        first = pickle.load(f, encoding="bytes")[b"data"][0].reshape(3, 32, 32)
    raw = data_mod.load(f"cifar10:{root};mean=0,0,0;std=1,1,1", (3, 32, 32))   # given statistics: [0, 1]
    assert torch.allclose(raw.train_x[0], torch.tensor(first / 255.0, dtype=torch.float32))
    (root / "test_batch").unlink()
    with pytest.raises(UserError, match="missing test_batch"):
        data_mod.load(f"cifar10:{root}", (3, 32, 32))


def test_npz_nchw_and_nhwc_and_label_checks(tmp_path):
    rng = np.random.default_rng(0)
    y_tr, y_te = np.arange(40) % 4, np.arange(12) % 4
    np.savez(tmp_path / "nchw.npz", x_train=rng.random((40, 3, 16, 16), dtype=np.float32), y_train=y_tr,
             x_test=rng.random((12, 3, 16, 16), dtype=np.float32), y_test=y_te)
    np.savez(tmp_path / "nhwc.npz", x_train=rng.integers(0, 255, (40, 16, 16, 3), dtype=np.uint8), y_train=y_tr,
             x_test=rng.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8), y_test=y_te)
    for name in ("nchw", "nhwc"):
        ds = data_mod.load(f"npz:{tmp_path / name}.npz", (3, 16, 16))
        assert ds.input_shape == (3, 16, 16) and ds.num_classes == 4 and len(ds.test_y) == 12
    np.savez(tmp_path / "bad.npz", x_train=rng.random((40, 1, 8, 8)), y_train=y_tr - 1,
             x_test=rng.random((12, 1, 8, 8)), y_test=y_te)
    with pytest.raises(UserError, match="label -1; labels must be 0..K-1"):
        data_mod.load(f"npz:{tmp_path}/bad.npz", (1, 8, 8))
    np.savez(tmp_path / "short.npz", x_train=rng.random((40, 1, 8, 8)), y_train=y_tr)
    with pytest.raises(UserError, match="missing array"):
        data_mod.load(f"npz:{tmp_path}/short.npz", (1, 8, 8))
    with pytest.raises(UserError, match="no such file"):
        data_mod.load(f"npz:{tmp_path}/none.npz", (1, 8, 8))


def test_a_module_factory_of_tensors_or_datasets(tmp_path):
    (tmp_path / "mydata.py").write_text(
        "import torch\n"
        "from torch.utils.data import TensorDataset\n"
        "g = torch.Generator().manual_seed(0)\n"
        "def tensors():\n"
        "    return torch.rand(30, 1, 8, 8, generator=g), torch.arange(30) % 3, torch.rand(9, 1, 8, 8), torch.arange(9) % 3\n"
        "def datasets():\n"
        "    x, y, xt, yt = tensors()\n"
        "    return TensorDataset(x, y), TensorDataset(xt, yt)\n"
        "def broken():\n"
        "    raise FileNotFoundError('my data is elsewhere')\n")
    for fn in ("tensors", "datasets"):
        ds = data_mod.load(f"{tmp_path / 'mydata.py'}:{fn}", (1, 8, 8))
        assert ds.num_classes == 3 and len(ds.train_y) == 30 and ds.input_shape == (1, 8, 8)
    with pytest.raises(UserError, match="the factory raised FileNotFoundError: my data is elsewhere"):
        data_mod.load(f"{tmp_path / 'mydata.py'}:broken", (1, 8, 8))


def test_eval_limit_is_a_fixed_stratified_subset(digits):
    ds = data_mod.load("digits;eval=100")
    assert len(ds.test_y) == 100 and torch.bincount(ds.test_y).min() >= 9
    assert torch.equal(ds.test_y, data_mod.load("digits;eval=100").test_y)
    assert ds.fingerprint == digits.fingerprint      # the training split, and so the weights, are the same
    with pytest.raises(UserError, match="eval"):
        data_mod.load("digits;eval=zero")


def test_two_folders_of_the_same_format_have_different_identities(mnist_dir, tmp_path):
    import shutil
    other = tmp_path / "other"
    shutil.copytree(mnist_dir, other)
    a = data_mod.load(f"mnist:{mnist_dir}")
    assert data_mod.load(f"mnist:{other}").identity == a.identity   # same content: same weights are right
    from tests.conftest import _write_idx
    _write_idx(other / "train-images-idx3-ubyte", np.zeros((1500, 28, 28)), compress=True)
    assert data_mod.load(f"mnist:{other}").identity != a.identity
