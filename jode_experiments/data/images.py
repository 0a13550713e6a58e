"""Image data: scikit-learn's handwritten digits (shipped) and MNIST from IDX files.

`load_digits` gives the 8x8 digits (1,797 images; Alpaydin & Kaynak 1998, UCI) with a fixed,
stratified train/test split. `load_mnist` reads the original MNIST IDX files (LeCun et al.
1998) from a folder you give or from `$JODE_MNIST_DIR`; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

MNIST_ENV = "JODE_MNIST_DIR"
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_digits(test_fraction: float = 0.25, seed: int = 0, classes=None, flatten=True):
    """The scikit-learn digits as float arrays in [0, 1], split per class (stratified).

    Args:
        test_fraction: share of each class held out for testing.
        seed: seed of the fixed split.
        classes: keep only these digit classes (e.g. range(5)); None keeps all ten.
        flatten: (n, 64) images if True, else (n, 8, 8).

    Returns:
        (x_train, y_train, x_test, y_test) NumPy arrays; labels int32.
    """
    from sklearn.datasets import load_digits as _sk_digits

    data = _sk_digits()
    x = (data.images / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    if classes is not None:
        keep = np.isin(y, np.asarray(list(classes)))
        x, y = x[keep], y[keep]
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_test = int(round(test_fraction * idx.size))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx, test_idx = np.concatenate(train_idx), np.concatenate(test_idx)
    train_idx, test_idx = rng.permutation(train_idx), rng.permutation(test_idx)
    if flatten:
        x = x.reshape(len(x), -1)
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 0x0000TTDD, D big-endian int32 dims."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4]!r})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    shape = struct.unpack(">" + "i" * ndim, raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {data.size} values")
    return data.reshape(shape)


def _find(root: Path, stem: str) -> Path | None:
    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        if (root / name).exists():
            return root / name
    return None


def load_mnist(split: str = "train", root=None, classes=None, flatten=True):
    """MNIST images in [0, 1] (float32) and labels (int32) from the IDX files.

    Args:
        split: "train" or "test".
        root: folder with the four IDX files (gzipped or not); default `$JODE_MNIST_DIR`.
        classes: keep only these digits.
        flatten: (n, 784) if True, else (n, 28, 28).

    Raises:
        FileNotFoundError: naming the folder searched and the files it must hold.
    """
    if split not in _MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test'; got split={split!r}")
    root = root if root is not None else os.environ.get(MNIST_ENV)
    if root is None:
        raise FileNotFoundError(
            f"MNIST needs its IDX files: pass root=... or set ${MNIST_ENV} to a folder "
            f"holding {', '.join(_MNIST_FILES[split])} (optionally .gz)"
        )
    root = Path(root)
    images_stem, labels_stem = _MNIST_FILES[split]
    images, labels = _find(root, images_stem), _find(root, labels_stem)
    if images is None or labels is None:
        raise FileNotFoundError(
            f"MNIST {split} files not found in {root}: expected {images_stem} and "
            f"{labels_stem} (optionally .gz)"
        )
    x = read_idx(images).astype(np.float32) / 255.0
    y = read_idx(labels).astype(np.int32)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{images} has {x.shape[0]} images but {labels} {y.shape[0]} labels")
    if classes is not None:
        keep = np.isin(y, np.asarray(list(classes)))
        x, y = x[keep], y[keep]
    if flatten:
        x = x.reshape(len(x), -1)
    return x, y
