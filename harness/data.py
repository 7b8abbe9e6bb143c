"""Datasets for the harness: a checked IDX reader and fixed, seeded splits.

Fashion-MNIST (DESIGN.md §7) comes from the Debian package
``dataset-fashion-mnist`` under ``/usr/share/datasets/fashion-mnist``: four
gzip-compressed IDX files. The IDX format is big-endian: a 4-byte magic
(``0x00000803`` = 2051 for uint8 rank-3 images, ``0x00000801`` = 2049 for
uint8 rank-1 labels), one 4-byte size per dimension, then the raw bytes.
Images have a 16-byte header, labels an 8-byte header.

Everything is small (60k + 10k images of 28x28 bytes, ~55 MB as float32), so
splits are in-memory :class:`~torch.utils.data.TensorDataset` objects.

The split is fixed by ``seed``: the validation set is carved out of the 60k
training images by a seeded permutation; the test set is the official 10k.
Planned dataset names: ``cifar10:PATH`` and ``imagefolder:PATH``.
"""

from __future__ import annotations

import functools
import gzip
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = [
    "DEFAULT_FASHION_MNIST_ROOT",
    "DATASETS",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "DatasetError",
    "DatasetSplits",
    "load_dataset",
    "read_idx_images",
    "read_idx_labels",
]

logger = logging.getLogger(__name__)

DEFAULT_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")

#: Names accepted by :func:`load_dataset` today.
DATASETS: tuple[str, ...] = ("fashion-mnist",)
#: Accepted later (the lab brings the files by path).
PLANNED_DATASETS: tuple[str, ...] = ("cifar10:PATH", "imagefolder:PATH")

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension

#: Per-pixel mean and std of the 60,000 Fashion-MNIST training images after
#: scaling bytes to [0, 1] (computed once with numpy over all 47,040,000
#: pixels: mean 0.286040, std 0.353024). Using the whole 60k (not only the
#: train part of our split) keeps the constants independent of the seed; the
#: 10k test images never enter them.
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

_FASHION_FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", 60000),
    "train_labels": ("train-labels-idx1-ubyte.gz", 60000),
    "test_images": ("t10k-images-idx3-ubyte.gz", 10000),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", 10000),
}
_INSTALL_HINT = "install it with `apt-get install dataset-fashion-mnist`, or pass --data-root DIR"


class DatasetError(ValueError):
    """A dataset is missing, damaged or unknown; the message says which and the fix."""


@dataclass(frozen=True, slots=True)
class DatasetSplits:
    """Train/validation/test splits held in memory.

    ``train``, ``val`` and ``test`` are TensorDatasets of
    ``(float32 images [N, C, H, W] normalised, int64 labels [N])``.
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _read_gz(path: Path) -> bytes:
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}; {_INSTALL_HINT}")
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"damaged dataset file {path}: not a readable gzip file ({exc})") from exc


def read_idx_images(path: Path, expected_count: int | None = None) -> np.ndarray:
    """Read a gzip IDX image file -> uint8 array [N, rows, cols], checking the header."""
    path = Path(path)
    raw = _read_gz(path)
    if len(raw) < 16:
        raise DatasetError(f"damaged dataset file {path}: {len(raw)} bytes, shorter than the 16-byte IDX image header")
    magic, count, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != IDX_IMAGES_MAGIC:
        raise DatasetError(f"damaged dataset file {path}: magic {magic}, expected {IDX_IMAGES_MAGIC} (IDX uint8 images)")
    if (rows, cols) != (28, 28):
        raise DatasetError(f"damaged dataset file {path}: images are {rows}x{cols}, expected 28x28")
    if expected_count is not None and count != expected_count:
        raise DatasetError(f"damaged dataset file {path}: {count} images in the header, expected {expected_count}")
    body = len(raw) - 16
    if body != count * rows * cols:
        raise DatasetError(
            f"damaged dataset file {path}: {body} data bytes, header promises {count * rows * cols}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols)


def read_idx_labels(path: Path, expected_count: int | None = None, num_classes: int = 10) -> np.ndarray:
    """Read a gzip IDX label file -> uint8 array [N], checking header and label range."""
    path = Path(path)
    raw = _read_gz(path)
    if len(raw) < 8:
        raise DatasetError(f"damaged dataset file {path}: {len(raw)} bytes, shorter than the 8-byte IDX label header")
    magic, count = struct.unpack(">II", raw[:8])
    if magic != IDX_LABELS_MAGIC:
        raise DatasetError(f"damaged dataset file {path}: magic {magic}, expected {IDX_LABELS_MAGIC} (IDX uint8 labels)")
    if expected_count is not None and count != expected_count:
        raise DatasetError(f"damaged dataset file {path}: {count} labels in the header, expected {expected_count}")
    if len(raw) - 8 != count:
        raise DatasetError(f"damaged dataset file {path}: {len(raw) - 8} data bytes, header promises {count}")
    labels = np.frombuffer(raw, dtype=np.uint8, offset=8)
    if count and int(labels.max()) >= num_classes:
        raise DatasetError(f"damaged dataset file {path}: label {int(labels.max())} outside 0..{num_classes - 1}")
    return labels


def _to_tensors(images: np.ndarray, labels: np.ndarray, mean: float, std: float) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # uint8 -> float in [0,1], [N,1,28,28]
    x = (x - mean) / std
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


@functools.lru_cache(maxsize=2)
def _read_fashion_files(stamp: tuple[tuple[str, int, int], ...]) -> tuple[np.ndarray, ...]:
    """The four arrays, cached by (path, mtime, size) of the files: decompressing
    costs seconds and the arrays are read-only (np.frombuffer), so sharing is safe."""
    paths = [Path(p) for p, _, _ in stamp]
    counts = [n for _, n in _FASHION_FILES.values()]
    return (
        read_idx_images(paths[0], counts[0]),
        read_idx_labels(paths[1], counts[1]),
        read_idx_images(paths[2], counts[2]),
        read_idx_labels(paths[3], counts[3]),
    )


def _load_fashion_mnist(root: Path | None, seed: int, val_size: int, subset: int | None) -> DatasetSplits:
    root = Path(root) if root is not None else DEFAULT_FASHION_MNIST_ROOT
    if not root.is_dir():
        raise DatasetError(f"Fashion-MNIST directory not found: {root}; {_INSTALL_HINT}")
    names = {k: root / fname for k, (fname, _) in _FASHION_FILES.items()}
    missing = [str(p) for p in names.values() if not p.is_file()]
    if missing:
        raise DatasetError(f"Fashion-MNIST file(s) missing: {', '.join(missing)}; {_INSTALL_HINT}")

    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in names.values())
    train_x, train_y, test_x, test_y = _read_fashion_files(stamp)

    n = len(train_x)
    if not 0 < val_size < n:
        raise DatasetError(f"val_size={val_size} must be between 1 and {n - 1}")
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(perm[:val_size]), np.sort(perm[val_size:])
    test_idx = np.arange(len(test_x))
    if subset is not None:
        if subset < 1:
            raise DatasetError(f"subset={subset} must be >= 1 (or None for the full splits)")
        # Seeded subsets of each split (not the first N, which could be class-skewed).
        rng = np.random.default_rng(seed + 1)
        train_idx = np.sort(rng.choice(train_idx, min(subset, len(train_idx)), replace=False))
        val_idx = np.sort(rng.choice(val_idx, min(subset, len(val_idx)), replace=False))
        test_idx = np.sort(rng.choice(test_idx, min(subset, len(test_idx)), replace=False))

    m, s = FASHION_MNIST_MEAN, FASHION_MNIST_STD
    train = TensorDataset(*_to_tensors(train_x[train_idx], train_y[train_idx], m, s))
    val = TensorDataset(*_to_tensors(train_x[val_idx], train_y[val_idx], m, s))
    test = TensorDataset(*_to_tensors(test_x[test_idx], test_y[test_idx], m, s))
    logger.info(
        "fashion-mnist from %s: train %d, val %d, test %d (seed %d)", root, len(train), len(val), len(test), seed
    )
    return DatasetSplits(train=train, val=val, test=test, num_classes=10, input_shape=(1, 28, 28), name="fashion-mnist")


def load_dataset(
    name: str = "fashion-mnist",
    root: Path | None = None,
    seed: int = 0,
    val_size: int = 5000,
    subset: int | None = None,
) -> DatasetSplits:
    """Load a dataset as fixed, seeded in-memory splits.

    ``name``: one of :data:`DATASETS`. ``root``: the directory of its files
    (default: where the Debian package installs them). ``seed`` fixes which
    ``val_size`` training images form the validation split. ``subset`` caps
    each split at that many samples (a seeded sample; for fast tests).
    Raises :class:`DatasetError` for an unknown name or missing/damaged files.
    """
    if name == "fashion-mnist":
        return _load_fashion_mnist(root, seed, val_size, subset)
    valid = ", ".join(DATASETS)
    planned = ", ".join(PLANNED_DATASETS)
    raise DatasetError(f"unknown dataset {name!r}; valid: {valid} (planned: {planned})")
