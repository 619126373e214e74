"""Datasets: bundled digits (default), MNIST IDX, image folders, CIFAR-10 batches, npz, a user's factory, synthetic.

A data spec is `KIND[:ARG]` with optional `;key=value` options:

    digits                        scikit-learn's bundled 8x8 digits (1,797 images, no download)
    mnist:DIR                     the four MNIST IDX files (raw or .gz)
    imagefolder:DIR               DIR/<class>/*.png|jpg|... (Pillow); DIR/train with DIR/val (or DIR/test)
    cifar10:DIR                   the CIFAR-10 python batches (data_batch_1..5, test_batch)
    npz:FILE                      arrays x_train, y_train, x_test, y_test
    package.module:factory        (or file.py:factory) returning (x_train, y_train, x_test, y_test)
                                  tensors/arrays, or (train, test) torch Datasets of (image, label)
    synthetic                     random tensors with random labels (speed only; accuracy means nothing)

    options: ;mean=0.485,0.456,0.406;std=0.229,0.224,0.225  normalisation of [0, 1] images (default:
             per-channel statistics of the training split);  ;eval=N  evaluate on a fixed stratified
             subset of N test images.

Every source becomes float32 N x C x H x W tensors resized to the model's input (bilinear), with
integer labels 0..K-1. Grey images feed a C-channel model by repetition; colour images never feed a
grey model silently (a UserError says how to declare the input shape).
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench import restricted_pickle
from bench.api import UserError

SPLIT_SEED = 0          # fixed: every run, every process sees the same split
TEST_FRACTION = 0.2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
KINDS = "digits, mnist:DIR, imagefolder:DIR, cifar10:DIR, npz:FILE, package.module:factory or synthetic"


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors, float32 N x C x H x W, normalised per channel; labels int64 in [0, K)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    labelled: bool = True   # synthetic data has random labels: accuracy means nothing there
    spec: str = ""          # what `load` was given (paths made absolute): another process loads the same data by it
    num_classes: int = 10
    fingerprint: str = ""   # sha256 of the training split's content as the model sees it (after resize, normalisation)
    # The images as the source holds them (C, H, W), before any resize: what to declare as a model's
    # input shape when it has none. None for synthetic data (shaped to the model).
    source_shape: tuple[int, int, int] | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    @property
    def identity(self) -> str:
        """What cached weights trained on this data are keyed by: its content, never only its name."""
        return f"{self.name}:{self.fingerprint}"


def load(spec: str, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> Dataset:
    """The data named by `spec` (see the module docstring), shaped to `input_shape` (C, H, W).

    `num_classes` is used only by `synthetic` (its random labels). Raises UserError, one line, for a
    missing path, an empty class, an unreadable image, labels out of range or a bad option.
    """
    base, options = _options(spec)
    kind, _, arg = base.partition(":")
    if kind == "digits" and not arg:
        ds, canon = _digits(), base
    elif kind == "synthetic" and not arg:
        ds, canon = _synthetic(input_shape, num_classes), base
    elif kind in ("mnist", "imagefolder", "cifar10", "npz"):
        if not arg:
            raise UserError(f"--data {kind}: needs a path, e.g. {kind}:~/data/{kind}")
        path = Path(arg).expanduser().absolute()
        ds = {"mnist": _mnist, "imagefolder": _imagefolder, "cifar10": _cifar10, "npz": _npz}[kind](path, input_shape)
        canon = f"{kind}:{path}"
    elif ":" in base:
        ds, canon = _from_factory(base), base
    else:
        raise UserError(f"unknown data {spec!r}; use {KINDS}")
    if ds.labelled:
        ds = _finish(ds, input_shape, options.get("mean"), options.get("std"), canon)
    if "eval" in options:
        ds = _eval_subset(ds, options["eval"], spec)
    opts = "".join(f";{k}={_fmt(v)}" for k, v in options.items())
    return replace(ds, spec=canon + opts, fingerprint=ds.fingerprint or _digest(ds))


def _fmt(v: Any) -> str:
    return ",".join(f"{x:g}" for x in v) if isinstance(v, tuple) else str(v)


def _options(spec: str) -> tuple[str, dict[str, Any]]:
    base, *rest = spec.split(";")
    out: dict[str, Any] = {}
    for item in rest:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in ("mean", "std", "eval"):
            raise UserError(f"data option {item!r} in {spec!r}: use ;mean=a,b,c ;std=a,b,c or ;eval=N")
        try:
            out[key] = int(value) if key == "eval" else tuple(float(v) for v in value.split(","))
        except ValueError:
            raise UserError(f"data option {key}={value!r} in {spec!r}: expected "
                            f"{'an integer' if key == 'eval' else 'numbers separated by commas'}") from None
        if key == "eval" and out[key] < 1:
            raise UserError(f"data option eval={value} in {spec!r}: must be >= 1 test images")
        if key == "std" and any(v <= 0 for v in out[key]):
            raise UserError(f"data option std={value} in {spec!r}: every std must be > 0")
    return base.strip(), out


def _digest(ds: Dataset) -> str:
    h = hashlib.sha256()
    for t in (ds.train_x, ds.train_y):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _labels(name: str, y: Any, where: str) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(y))
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise UserError(f"{where}: {name} holds non-integer labels; expected class indices 0..K-1")
        y = y.long()
    if y.ndim != 1:
        raise UserError(f"{where}: {name} has shape {tuple(y.shape)}; expected one class index per image")
    if len(y) and int(y.min()) < 0:
        raise UserError(f"{where}: {name} has label {int(y.min())}; labels must be 0..K-1")
    return y.long()


def _images(name: str, x: Any, where: str) -> torch.Tensor:
    """N x C x H x W float in [0, 1] (uint8 scaled) from N x H x W, N x C x H x W or N x H x W x C."""
    a = np.asarray(x)
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[1] not in (1, 3) and a.shape[3] in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    if a.ndim != 4:
        raise UserError(f"{where}: {name} has shape {a.shape}; expected N x H x W, N x C x H x W or N x H x W x C")
    if a.dtype == np.uint8:
        return torch.from_numpy(np.array(a, copy=True)).float() / 255.0
    if not np.issubdtype(a.dtype, np.number):
        raise UserError(f"{where}: {name} has dtype {a.dtype}; expected numbers")
    t = torch.from_numpy(np.array(a, dtype=np.float32, copy=True))
    if not torch.isfinite(t).all():
        raise UserError(f"{where}: {name} holds {int((~torch.isfinite(t)).sum())} NaN or infinite value(s)")
    return t


def _raw(name: str, x_tr, y_tr, x_te, y_te, where: str) -> Dataset:
    """An unnormalised Dataset from arrays, with counts and label ranges checked."""
    x_tr, x_te = _images("x_train", x_tr, where), _images("x_test", x_te, where)
    y_tr, y_te = _labels("y_train", y_tr, where), _labels("y_test", y_te, where)
    for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        if len(x) != len(y):
            raise UserError(f"{where}: {len(x)} {split} images but {len(y)} {split} labels")
        if len(x) == 0:
            raise UserError(f"{where}: the {split} split is empty")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise UserError(f"{where}: train images are {tuple(x_tr.shape[1:])} but test images {tuple(x_te.shape[1:])}")
    k = int(y_tr.max()) + 1
    if int(y_te.max()) >= k:
        raise UserError(f"{where}: y_test has label {int(y_te.max())} but the training split has classes 0..{k - 1}")
    missing = sorted(set(range(k)) - set(y_tr.tolist()))
    if missing:
        raise UserError(f"{where}: class(es) {missing[:10]} have no training images (labels must be 0..K-1 "
                        f"with every class present)")
    return Dataset(name, x_tr, y_tr, x_te, y_te, num_classes=k, source_shape=tuple(x_tr.shape[1:]))


def _finish(ds: Dataset, input_shape, mean, std, where: str) -> Dataset:
    """Resize to the model's H x W, adapt channels, normalise per channel (train statistics by default)."""
    c, h, w = input_shape
    have = ds.train_x.shape[1]
    if have != c and have != 1:
        real = "x".join(map(str, ds.source_shape or (have, h, w)))
        raise UserError(f"{where}: images are {real} (channels x height x width) but the model expects {c} "
                        f"channel(s) (input {c}x{h}x{w}); declare the model's input shape, e.g. "
                        f"--input-shape MODEL={real}, @register_model(input_shape=...) or the factory's "
                        f"input_shape attribute")

    def shape(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > w or x.shape[-2] > h)
        return (x.repeat(1, c, 1, 1) if have == 1 and c != 1 else x).contiguous()

    x_tr, x_te = shape(ds.train_x), shape(ds.test_x)
    if mean is None:
        m, s = x_tr.mean(dim=(0, 2, 3)), x_tr.std(dim=(0, 2, 3)).clamp_min(1e-6)
    else:
        lo, hi = float(x_tr.min()), float(x_tr.max())
        if lo < -0.01 or hi > 1.01:
            raise UserError(f"{where}: ;mean=/;std= normalise images in [0, 1], but these range {lo:g}..{hi:g}; "
                            f"scale them to [0, 1] (uint8 images are) or leave mean/std out (then the training "
                            f"split's own statistics are used)")
        if std is None or len(mean) not in (1, c) or len(std) not in (1, c):
            raise UserError(f"data options mean/std: give both, with 1 or {c} values each "
                            f"(got mean={mean}, std={std})")
        m, s = torch.tensor(mean).expand(c), torch.tensor(std).expand(c)
    m, s = m.view(1, c, 1, 1), s.view(1, c, 1, 1)
    return replace(ds, train_x=(x_tr - m) / s, test_x=(x_te - m) / s)


def _eval_subset(ds: Dataset, n: int, spec: str) -> Dataset:
    """A fixed, stratified subset of n test images (all of them when n >= the test split)."""
    if n >= len(ds.test_y):
        return ds
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(ds.test_y))
    try:
        keep, _ = train_test_split(idx, train_size=n, random_state=SPLIT_SEED, stratify=ds.test_y.numpy())
    except ValueError:   # fewer images than classes, or a class with one test image
        keep, _ = train_test_split(idx, train_size=n, random_state=SPLIT_SEED)
    keep = torch.from_numpy(np.sort(keep))
    return replace(ds, test_x=ds.test_x[keep].contiguous(), test_y=ds.test_y[keep].contiguous())


def _split(x: np.ndarray, y: np.ndarray, where: str, names: list[str] | None = None) -> tuple:
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    if counts.min() < 2:
        c = int(counts.argmin())
        raise UserError(f"{where}: class {names[c] if names else c!r} has {int(counts.min())} image(s); a stratified "
                        f"split needs at least 2 per class (or give train/ and val/ folders)")
    try:
        return train_test_split(x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    except ValueError:
        raise UserError(f"{where}: {len(y)} images in {len(counts)} classes are too few for a stratified "
                        f"{1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} split (the test part needs one image per "
                        f"class); add images or give train/ and val/ folders") from None


# --- the sources ----------------------------------------------------------------------------------

def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()  # 1,797 real 8x8 images shipped inside scikit-learn: no download
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    x_tr, x_te, y_tr, y_te = _split(x, bunch.target.astype(np.int64), "digits")
    return _raw("digits", x_tr, y_tr, x_te, y_te, "digits")


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
    return _raw("mnist", arrays["train_x"], arrays["train_y"].astype(np.int64), arrays["test_x"],
                arrays["test_y"].astype(np.int64), str(folder))


def _class_folders(root: Path) -> dict[str, list[Path]]:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{root}: no class sub-folders; expected {root}/<class name>/<images>")
    out = {}
    for c in classes:
        files = sorted(p for p in c.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"{c}: class {c.name!r} holds no images (PNG, JPEG, BMP, WebP, TIFF)")
        out[c.name] = files
    return out


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _read_images(files: list[Path], size: tuple[int, int], grey: bool) -> np.ndarray:
    """N x H x W x C float32 in [0, 1]; 16-bit grey images scaled by 65535 (Pillow's convert("L")
    would clip them at 255)."""
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(files), size[0], size[1], 1 if grey else 3), dtype=np.float32)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                if img.mode in _SIXTEEN_BIT:
                    img = img.convert("I")   # 32-bit integer mode: resizable, nothing clipped
                    if img.size != (size[1], size[0]):
                        img = img.resize((size[1], size[0]), Image.BILINEAR)
                    a = np.asarray(img, dtype=np.float32) / 65535.0
                    if not grey:
                        a = np.repeat(a[..., None], 3, axis=-1)
                else:
                    img = img.convert("L" if grey else "RGB")
                    if img.size != (size[1], size[0]):
                        img = img.resize((size[1], size[0]), Image.BILINEAR)
                    a = np.asarray(img, dtype=np.float32) / 255.0
                out[i] = a.reshape(out.shape[1:])
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise UserError(f"{path}: unreadable or corrupt image ({type(exc).__name__}: {exc})") from None
    return out


def _is_grey(files: list[Path]) -> bool:
    from PIL import Image, UnidentifiedImageError

    for path in files:
        try:
            with Image.open(path) as img:
                if img.mode not in ("1", "L", "LA", "F") and img.mode not in _SIXTEEN_BIT:
                    return False
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise UserError(f"{path}: unreadable or corrupt image ({type(exc).__name__}: {exc})") from None
    return True


def _imagefolder(root: Path, input_shape) -> Dataset:
    if not root.is_dir():
        raise UserError(f"{root}: no such folder; expected {root}/<class name>/<images> (PNG or JPEG)")
    _, h, w = input_shape
    held_out = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and held_out is None:
        raise UserError(f"{root}: found train/ but no val/ or test/ beside it; give the held-out images in "
                        f"{root}/val/<class>/ (or point at a folder of class folders)")
    if held_out is not None and not (root / "train").is_dir():
        raise UserError(f"{root}: found {held_out.name}/ but no train/ beside it")
    if held_out is not None:
        train, val = _class_folders(root / "train"), _class_folders(held_out)
        if set(train) != set(val):
            raise UserError(f"{root}: train/ and {held_out.name}/ hold different classes "
                            f"(only in train: {sorted(set(train) - set(val))}, "
                            f"only in {held_out.name}: {sorted(set(val) - set(train))})")
        names = sorted(train)
        first = train[names[0]][0]
        grey = _is_grey([f for fs in train.values() for f in fs] + [f for fs in val.values() for f in fs])
        parts = []
        for split in (train, val):
            files = [f for n in names for f in split[n]]
            y = np.array([i for i, n in enumerate(names) for _ in split[n]], dtype=np.int64)
            parts += [_read_images(files, (h, w), grey), y]
        x_tr, y_tr, x_te, y_te = parts
    else:
        classes = _class_folders(root)
        names = sorted(classes)
        files = [f for n in names for f in classes[n]]
        y = np.array([i for i, n in enumerate(names) for _ in classes[n]], dtype=np.int64)
        x = _read_images(files, (h, w), _is_grey(files))
        x_tr, x_te, y_tr, y_te = _split(x, y, str(root), names)
        first = files[0]
    ds = _raw("imagefolder", x_tr, y_tr, x_te, y_te, str(root))
    # Images are read at the model's size; the size they have on disk (the first one's) is what a
    # model without a declared input shape should declare.
    return replace(ds, source_shape=(ds.train_x.shape[1], *_image_size(first)))


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header."""
    from PIL import Image

    with Image.open(path) as img:
        return img.size[1], img.size[0]


def _cifar10(folder: Path, input_shape) -> Dataset:
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; expected the CIFAR-10 python batches "
                        f"(data_batch_1..5 and test_batch)")

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = folder / name
        if not path.is_file():
            raise UserError(f"{folder}: missing {name}; expected the CIFAR-10 python batches "
                            f"(data_batch_1..5 and test_batch)")
        try:
            # The format is a pickle, and a pickle can name any code to run while it is read: only
            # the plain data and numpy arrays a batch is made of are rebuilt, anything else refused.
            with open(path, "rb") as f:
                d = restricted_pickle.load(f, restricted_pickle.numpy_arrays(), encoding="bytes")
            x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            return x, np.asarray(d[b"labels"], dtype=np.int64)
        except Exception as exc:  # noqa: BLE001 - a damaged pickle raises many kinds: one line naming the file
            raise UserError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from None

    trains = [batch(f"data_batch_{i}") for i in range(1, 6)]
    x_te, y_te = batch("test_batch")
    return _raw("cifar10", np.concatenate([t[0] for t in trains]), np.concatenate([t[1] for t in trains]),
                x_te, y_te, str(folder))


def _npz(path: Path, input_shape) -> Dataset:
    if not path.is_file():
        raise UserError(f"{path}: no such file; expected an .npz with x_train, y_train, x_test, y_test")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
            if missing:
                raise UserError(f"{path}: missing array(s) {', '.join(missing)} (has: {', '.join(z.files)})")
            arrays = [z[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    except UserError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    return _raw("npz", *arrays, str(path))


def _from_factory(spec: str) -> Dataset:
    from bench.api import load_object

    fn = load_object(spec, "data")
    try:
        got = fn()
    except Exception as exc:  # noqa: BLE001 - the user's code: one line naming it
        raise UserError(f"data {spec!r}: the factory raised {type(exc).__name__}: {exc}") from None
    if isinstance(got, dict):
        got = tuple(got.get(k) for k in ("x_train", "y_train", "x_test", "y_test"))
    if isinstance(got, (tuple, list)) and len(got) == 2 and all(isinstance(d, torch.utils.data.Dataset) for d in got):
        got = (*_stack(got[0], spec, "train"), *_stack(got[1], spec, "test"))
    if not (isinstance(got, (tuple, list)) and len(got) == 4 and all(g is not None for g in got)):
        raise UserError(f"data {spec!r}: the factory must return (x_train, y_train, x_test, y_test) or "
                        f"(train_dataset, test_dataset); got {type(got).__name__}")
    tensors = [g.detach().cpu().numpy() if isinstance(g, torch.Tensor) else g for g in got]
    return _raw(spec, *tensors, f"data {spec!r}")


def _stack(ds, spec: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    try:
        for i in range(len(ds)):
            x, y = ds[i][:2]
            xs.append(torch.as_tensor(x))
            ys.append(int(y))
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"data {spec!r}: reading item {len(xs)} of the {split} dataset failed "
                        f"({type(exc).__name__}: {exc}); items must be (image tensor, int label)") from None
    return torch.stack(xs), torch.tensor(ys)


def _synthetic(input_shape, num_classes: int) -> Dataset:
    g = torch.Generator().manual_seed(SPLIT_SEED)
    x_tr, x_te = torch.randn(1024, *input_shape, generator=g), torch.randn(256, *input_shape, generator=g)
    y_tr = torch.randint(0, num_classes, (1024,), generator=g)
    y_te = torch.randint(0, num_classes, (256,), generator=g)
    return Dataset("synthetic", x_tr, y_tr, x_te, y_te, labelled=False, num_classes=num_classes)
