"""Datasets for the harness: checked readers and fixed, seeded splits.

Three sources (DESIGN.md §7), all as in-memory
:class:`~torch.utils.data.TensorDataset` splits of float32 NCHW images,
normalised per channel, and int64 labels:

``fashion-mnist``
    The Debian package ``dataset-fashion-mnist`` under
    ``/usr/share/datasets/fashion-mnist``: four gzip-compressed IDX files. The
    IDX format is big-endian: a 4-byte magic (``0x00000803`` = 2051 for uint8
    rank-3 images, ``0x00000801`` = 2049 for uint8 rank-1 labels), one 4-byte
    size per dimension, then the raw bytes. Images have a 16-byte header,
    labels an 8-byte header. 1x28x28; fixed normalisation constants
    (:data:`FASHION_MNIST_MEAN`, computed once over all 60k training images).

``cifar10:PATH``
    The CIFAR-10 "python version" (Krizhevsky 2009,
    https://www.cs.toronto.edu/~kriz/cifar.html): PATH is the extracted
    ``cifar-10-batches-py`` directory (or a directory holding it) with
    ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and
    ``batches.meta``. Each batch is a pickled dict (bytes keys when written by
    Python 2) with ``data``: uint8 ndarray [N, 3072], each row 1024 red, 1024
    green, 1024 blue bytes of a 32x32 image, row-major; ``labels``: N ints in
    0..9. ``batches.meta`` has ``label_names`` (10) and
    ``num_cases_per_batch`` (10000 in the real set; every batch must have
    exactly that many rows, so a truncated batch is caught, and a smaller
    consistent set -- e.g. a test fixture -- is accepted with a warning).
    Pickles are read by a restricted unpickler that only rebuilds numpy
    arrays: a file asking for anything else is refused, not executed.
    3x32x32, 50k train (val carved out of it) and 10k test.

``imagefolder:PATH``
    A tree ``PATH/train/<class>/<image>`` plus a held-out split
    ``PATH/test/<class>/...`` or, if there is no ``test/``,
    ``PATH/val/<class>/...`` (the ImageNet convention: its official "val" is
    our test split). With both ``test/`` and ``val/``, ``val/`` is the
    validation split and nothing is carved out of train. Classes are the
    sorted subfolder names of ``train/`` (torchvision's ``ImageFolder``
    order); the held-out split may lack a class but not add one. Files with
    the extensions of :data:`IMAGE_EXTENSIONS` are read (others and hidden
    files are skipped), decoded with PIL, converted to RGB and resized to
    ``image_size`` (default 32x32, bilinear, aspect ratio NOT kept). 3xHxW.

Splits are fixed by ``seed``: the validation set is a seeded random
``val_size`` of the training images (default 5000 for Fashion-MNIST and
CIFAR-10, 10% for an ImageFolder); ``subset`` then caps each split by a
seeded sample. The test split is the dataset's own and never depends on the
seed (except through ``subset``).

Normalisation: Fashion-MNIST uses fixed constants; CIFAR-10 and ImageFolder
use the per-channel mean and std of the train split as loaded (after the val
carve-out and ``subset``; pixels scaled to [0, 1]; exact, from a 256-bin
histogram per channel), applied to all three splits. They are kept in
:attr:`DatasetSplits.mean` / :attr:`DatasetSplits.std`.

Every problem raises :class:`DatasetError` with ONE line naming the file or
folder and what is wrong with it.
"""

from __future__ import annotations

import functools
import gzip
import importlib
import io
import logging
import pickle
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = [
    "CIFAR10_CLASSES",
    "DEFAULT_FASHION_MNIST_ROOT",
    "DEFAULT_IMAGE_SIZE",
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "DatasetSplits",
    "load_dataset",
    "read_cifar_batch",
    "read_cifar_meta",
    "read_idx_images",
    "read_idx_labels",
    "read_image",
]

logger = logging.getLogger(__name__)

DEFAULT_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")

#: Names accepted by :func:`load_dataset` (PATH: the lab's files, or ``root``).
DATASETS: tuple[str, ...] = ("fashion-mnist", "cifar10:PATH", "imagefolder:PATH")

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension

#: Per-pixel mean and std of the 60,000 Fashion-MNIST training images after
#: scaling bytes to [0, 1] (computed once with numpy over all 47,040,000
#: pixels: mean 0.286040, std 0.353024). Using the whole 60k (not only the
#: train part of our split) keeps the constants independent of the seed; the
#: 10k test images never enter them.
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
#: Default (H, W) an ImageFolder's images are resized to.
DEFAULT_IMAGE_SIZE: tuple[int, int] = (32, 32)
#: File name endings read as images in an ImageFolder tree (torchvision's list, lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (".bmp", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")

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
    ``input_shape``: (C, H, W). ``name``: ``"fashion-mnist"``, ``"cifar10"``
    or ``"imagefolder"``. ``mean``/``std``: the per-channel constants the
    images were normalised with, ``(x/255 - mean) / std`` (empty if unknown).
    ``classes``: class names by label (empty if unknown).
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    classes: tuple[str, ...] = ()

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


def _split_indices(
    n_train: int, n_test: int, seed: int, val_size: int | None, subset: int | None, n_val: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) index arrays, each sorted. Without ``n_val`` the
    validation split is ``val_size`` of the ``n_train`` images, picked by
    ``default_rng(seed).permutation``; with ``n_val`` it is its own set of
    ``n_val`` images. ``subset`` caps each split by a seeded sample
    (``default_rng(seed + 1)``; not the first N, which could be class-skewed)."""
    if n_val is None:
        if val_size is None or not 0 < val_size < n_train:
            raise DatasetError(f"val_size={val_size} must be between 1 and {n_train - 1} (the training images less one)")
        perm = np.random.default_rng(seed).permutation(n_train)
        val_idx, train_idx = np.sort(perm[:val_size]), np.sort(perm[val_size:])
    else:
        train_idx, val_idx = np.arange(n_train), np.arange(n_val)
    test_idx = np.arange(n_test)
    if subset is not None:
        if subset < 1:
            raise DatasetError(f"subset={subset} must be >= 1 (or None for the full splits)")
        rng = np.random.default_rng(seed + 1)
        train_idx = np.sort(rng.choice(train_idx, min(subset, len(train_idx)), replace=False))
        val_idx = np.sort(rng.choice(val_idx, min(subset, len(val_idx)), replace=False))
        test_idx = np.sort(rng.choice(test_idx, min(subset, len(test_idx)), replace=False))
    return train_idx, val_idx, test_idx


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

    train_idx, val_idx, test_idx = _split_indices(len(train_x), len(test_x), seed, val_size, subset)

    m, s = FASHION_MNIST_MEAN, FASHION_MNIST_STD
    train = TensorDataset(*_to_tensors(train_x[train_idx], train_y[train_idx], m, s))
    val = TensorDataset(*_to_tensors(train_x[val_idx], train_y[val_idx], m, s))
    test = TensorDataset(*_to_tensors(test_x[test_idx], test_y[test_idx], m, s))
    logger.info(
        "fashion-mnist from %s: train %d, val %d, test %d (seed %d)", root, len(train), len(val), len(test), seed
    )
    return DatasetSplits(
        train=train, val=val, test=test, num_classes=10, input_shape=(1, 28, 28), name="fashion-mnist",
        mean=(m,), std=(s,), classes=FASHION_MNIST_CLASSES,
    )


# --------------------------------------------------------------------------- shared helpers


def _one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception on one line (for DatasetError messages)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images [N, C, H, W] scaled to [0, 1],
    exact (float64 from a 256-bin histogram per channel, no float copy of the data).
    A constant channel gets std 1.0 (so normalising never divides by 0)."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = np.bincount(images[:, c].ravel(), minlength=256).astype(np.float64)
        n = hist.sum()
        mean = float((hist * values).sum() / n)
        var = float((hist * (values - mean) ** 2).sum() / n)
        means.append(mean)
        stds.append(var**0.5 if var > 0 else 1.0)
    return tuple(means), tuple(stds)


def _normalised(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 [N, C, H, W], ``(x/255 - mean[c]) / std[c]``
    (in place on one float copy)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def _make_splits(
    name: str, parts: Sequence[tuple[np.ndarray, np.ndarray]], classes: Sequence[str]
) -> DatasetSplits:
    """DatasetSplits from uint8 [N, C, H, W] images and int labels of train, val,
    test, normalised by the train images' per-channel statistics."""
    (tx, _), _, _ = parts
    if len(tx) == 0:
        raise DatasetError(f"{name}: the train split is empty")
    mean, std = _channel_stats(tx)
    train, val, test = (
        TensorDataset(_normalised(x, mean, std), torch.from_numpy(np.asarray(y, dtype=np.int64))) for x, y in parts
    )
    return DatasetSplits(
        train=train, val=val, test=test, num_classes=len(classes), input_shape=tuple(tx.shape[1:]),
        name=name, mean=mean, std=std, classes=tuple(classes),
    )


# --------------------------------------------------------------------------- CIFAR-10

CIFAR10_TRAIN_FILES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_META_FILE = "batches.meta"
CIFAR10_ROWS = 10000  # images per batch in the real set
_CIFAR_HINT = "expected the extracted cifar-10-batches-py directory (data_batch_1..5, test_batch, batches.meta)"

# What a CIFAR-10 pickle may ask for: numpy array reconstruction only (older
# numpy names map to numpy._core to avoid numpy 2's deprecation warnings).
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),
}


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and plain containers, nothing else."""

    def find_class(self, module: str, name: str):
        target = _PICKLE_ALLOWED.get((module, name))
        if target is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return getattr(importlib.import_module(target[0]), target[1])


def _read_pickle(path: Path) -> dict:
    """A CIFAR pickle as a dict with str keys (Python 2 files give bytes keys)."""
    if not path.is_file():
        raise DatasetError(f"CIFAR-10 file not found: {path}; {_CIFAR_HINT}")
    try:
        raw = path.read_bytes()
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _RefusedGlobal as exc:
        raise DatasetError(
            f"damaged CIFAR-10 file {path}: the pickle asks for {exc}, which a CIFAR-10 batch never holds "
            "(refused: only numpy arrays are loaded)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise DatasetError(f"damaged CIFAR-10 file {path}: not a readable pickle ({_one_line(exc)})") from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"damaged CIFAR-10 file {path}: holds a {type(obj).__name__}, expected a dict")
    return {(k.decode("latin-1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def read_cifar_meta(path: Path) -> tuple[tuple[str, ...], int]:
    """``batches.meta`` -> (the 10 label names, rows per batch). A meta file
    without ``num_cases_per_batch`` means 10000. Raises DatasetError naming the file."""
    path = Path(path)
    meta = _read_pickle(path)
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != 10:
        got = "missing" if names is None else f"{type(names).__name__} of {len(names) if hasattr(names, '__len__') else '?'}"
        raise DatasetError(f"damaged CIFAR-10 file {path}: label_names is {got}, expected a list of 10 names")
    labels = tuple(n.decode("latin-1") if isinstance(n, bytes) else str(n) for n in names)
    rows = meta.get("num_cases_per_batch", CIFAR10_ROWS)
    if not isinstance(rows, (int, np.integer)) or isinstance(rows, bool) or rows < 1:
        raise DatasetError(f"damaged CIFAR-10 file {path}: num_cases_per_batch is {rows!r}, expected a positive int")
    return labels, int(rows)


def read_cifar_batch(path: Path, expected_rows: int | None = CIFAR10_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch -> (uint8 images [N, 3, 32, 32], uint8 labels [N]).

    Checks: a dict with ``data`` (uint8 ndarray [N, 3072]; N == ``expected_rows``
    unless that is None) and ``labels`` (N ints in 0..9). Raises DatasetError
    with one line naming the file."""
    path = Path(path)
    batch = _read_pickle(path)
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise DatasetError(
            f"damaged CIFAR-10 file {path}: no {', '.join(repr(k) for k in missing)} key (keys: {', '.join(sorted(batch))})"
        )
    data = batch["data"]
    want = f"uint8 [{expected_rows if expected_rows is not None else 'N'}, 3072]"
    if not isinstance(data, np.ndarray):
        raise DatasetError(f"damaged CIFAR-10 file {path}: data is a {type(data).__name__}, expected a {want} array")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or (
        expected_rows is not None and data.shape[0] != expected_rows
    ):
        shape = "x".join(str(d) for d in data.shape)
        raise DatasetError(f"damaged CIFAR-10 file {path}: data is {data.dtype} [{shape}], expected {want}")
    try:
        labels = np.asarray(batch["labels"])
    except Exception as exc:  # noqa: BLE001
        raise DatasetError(f"damaged CIFAR-10 file {path}: labels unreadable ({_one_line(exc)})") from exc
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"damaged CIFAR-10 file {path}: {labels.size} labels of type {labels.dtype}, expected {len(data)} ints"
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) > 9):
        bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
        raise DatasetError(f"damaged CIFAR-10 file {path}: label {bad} outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.uint8)


def _cifar_dir(path: Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DatasetError(f"CIFAR-10 directory not found: {path}; {_CIFAR_HINT}")
    nested = path / "cifar-10-batches-py"
    if not (path / CIFAR10_META_FILE).exists() and nested.is_dir():
        path = nested
    names = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE, CIFAR10_META_FILE)
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        raise DatasetError(f"CIFAR-10 file(s) missing in {path}: {', '.join(missing)}; {_CIFAR_HINT}")
    return path


@functools.lru_cache(maxsize=2)
def _read_cifar_files(stamp: tuple[tuple[str, int, int], ...]) -> tuple:
    """(classes, train x, train y, test x, test y), read-only arrays, cached by
    (path, mtime, size) of the seven files."""
    paths = [Path(p) for p, _, _ in stamp]
    classes, rows = read_cifar_meta(paths[-1])
    if rows != CIFAR10_ROWS:
        logger.warning("CIFAR-10 at %s has %d images per batch, not the standard %d", paths[-1].parent, rows, CIFAR10_ROWS)
    train = [read_cifar_batch(p, rows) for p in paths[:5]]
    test_x, test_y = read_cifar_batch(paths[5], rows)
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    absent = sorted(set(range(10)) - set(np.unique(train_y).tolist()))
    if absent:
        raise DatasetError(
            f"damaged CIFAR-10 set {paths[0].parent}: no training image of class(es) {absent} in data_batch_1..5"
        )
    for a in (train_x, train_y, test_x, test_y):
        a.flags.writeable = False
    return classes, train_x, train_y, test_x, test_y


def _load_cifar10(path: Path, seed: int, val_size: int | None, subset: int | None) -> DatasetSplits:
    path = _cifar_dir(path)
    files = [path / n for n in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE, CIFAR10_META_FILE)]
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    classes, train_x, train_y, test_x, test_y = _read_cifar_files(stamp)
    tr, va, te = _split_indices(len(train_x), len(test_x), seed, 5000 if val_size is None else val_size, subset)
    splits = _make_splits(
        "cifar10", [(train_x[tr], train_y[tr]), (train_x[va], train_y[va]), (test_x[te], test_y[te])], classes
    )
    logger.info("cifar10 from %s: %s (seed %d), mean %s std %s", path, splits.sizes(), seed, splits.mean, splits.std)
    return splits


# --------------------------------------------------------------------------- ImageFolder

_IMAGEFOLDER_HINT = "expected PATH/train/<class>/<image> and PATH/test/<class>/<image> (or PATH/val/...)"


def read_image(path: Path, size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Decode one image with PIL -> uint8 RGB [3, H, W] resized to ``size``
    (H, W; bilinear, aspect ratio not kept). Raises DatasetError naming the
    file if PIL cannot open or fully decode it."""
    from PIL import Image  # Pillow comes with matplotlib; imported only for ImageFolder trees

    path = Path(path)
    h, w = size
    try:
        with Image.open(path) as im:
            im.load()  # Image.open is lazy: decode now so truncated files fail here
            rgb = im.convert("RGB")
        if rgb.size != (w, h):
            rgb = rgb.resize((w, h), Image.Resampling.BILINEAR)
        arr = np.asarray(rgb, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds (OSError, SyntaxError, DecompressionBombError)
        raise DatasetError(f"damaged image {path}: PIL cannot decode it ({_one_line(exc)})") from exc
    return arr.transpose(2, 0, 1)


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted((d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _scan(split_dir: Path, classes: Sequence[str] | None) -> tuple[list[str], list[tuple[Path, int]]]:
    """(classes, [(file, label)] sorted by class then file name) of one split folder.
    ``classes`` None: this folder defines them (train); else its class folders
    must be among them."""
    dirs = _class_dirs(split_dir)
    if not dirs:
        raise DatasetError(f"ImageFolder {split_dir} has no class subfolders; {_IMAGEFOLDER_HINT}")
    if classes is None:
        classes = [d.name for d in dirs]
    index = {c: i for i, c in enumerate(classes)}
    samples: list[tuple[Path, int]] = []
    for d in dirs:
        if d.name not in index:
            raise DatasetError(
                f"ImageFolder {d}: class {d.name!r} is not among the train classes ({', '.join(classes)})"
            )
        files = sorted(
            f for f in d.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files and split_dir.name == "train":
            raise DatasetError(
                f"ImageFolder class folder {d} holds no images (read: {' '.join(IMAGE_EXTENSIONS)})"
            )
        samples += [(f, index[d.name]) for f in files]
    if not samples:
        raise DatasetError(f"ImageFolder {split_dir} holds no images (read: {' '.join(IMAGE_EXTENSIONS)})")
    return list(classes), samples


def _decode(samples: Sequence[tuple[Path, int]], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    x = np.empty((len(samples), 3, *size), dtype=np.uint8)
    for i, (f, _) in enumerate(samples):
        x[i] = read_image(f, size)
    return x, np.array([y for _, y in samples], dtype=np.int64)


def _image_size(image_size: int | Sequence[int] | None) -> tuple[int, int]:
    if image_size is None:
        return DEFAULT_IMAGE_SIZE
    hw = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    if len(hw) != 2 or min(hw) < 1:
        raise DatasetError(f"image_size={image_size!r} must be an int or (H, W) >= 1")
    return hw  # type: ignore[return-value]


def _load_imagefolder(
    path: Path, seed: int, val_size: int | None, subset: int | None, image_size: tuple[int, int]
) -> DatasetSplits:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DatasetError(f"ImageFolder directory not found: {path}; {_IMAGEFOLDER_HINT}")
    train_dir, test_dir, val_dir = path / "train", path / "test", path / "val"
    if not train_dir.is_dir():
        raise DatasetError(f"ImageFolder {path} has no train/ folder; {_IMAGEFOLDER_HINT}")
    if not test_dir.is_dir() and not val_dir.is_dir():
        raise DatasetError(f"ImageFolder {path} has no test/ (or val/) folder; {_IMAGEFOLDER_HINT}")
    classes, train_s = _scan(train_dir, None)
    if len(classes) < 2:
        raise DatasetError(f"ImageFolder {train_dir} has {len(classes)} class folder; a classifier needs at least 2")
    own_val = test_dir.is_dir() and val_dir.is_dir()
    _, test_s = _scan(test_dir if test_dir.is_dir() else val_dir, classes)
    if own_val:
        _, val_s = _scan(val_dir, classes)
        tr, va, te = _split_indices(len(train_s), len(test_s), seed, None, subset, n_val=len(val_s))
        val_pick = [val_s[i] for i in va]
    else:
        n_val = val_size if val_size is not None else max(1, len(train_s) // 10)
        tr, va, te = _split_indices(len(train_s), len(test_s), seed, n_val, subset)
        val_pick = [train_s[i] for i in va]
    parts = [_decode([train_s[i] for i in tr], image_size), _decode(val_pick, image_size),
             _decode([test_s[i] for i in te], image_size)]
    splits = _make_splits("imagefolder", parts, classes)
    logger.info(
        "imagefolder from %s: %d classes, %s at %dx%d (seed %d; test from %s/, val %s), mean %s std %s",
        path, len(classes), splits.sizes(), image_size[0], image_size[1], seed,
        "test" if test_dir.is_dir() else "val", "from val/" if own_val else "carved from train/",
        splits.mean, splits.std,
    )
    return splits


# --------------------------------------------------------------------------- entry point


def load_dataset(
    name: str = "fashion-mnist",
    root: Path | None = None,
    seed: int = 0,
    val_size: int | None = None,
    subset: int | None = None,
    image_size: int | Sequence[int] | None = None,
) -> DatasetSplits:
    """Load a dataset as fixed, seeded in-memory splits (module docstring).

    ``name``: ``"fashion-mnist"``, ``"cifar10:PATH"`` or ``"imagefolder:PATH"``
    (for the last two, ``"cifar10"`` / ``"imagefolder"`` with ``root=PATH``
    works too). ``root``: the Fashion-MNIST directory (default: where the
    Debian package installs it). ``seed`` fixes which ``val_size`` training
    images form the validation split (default 5000; 10% for an ImageFolder;
    unused when an ImageFolder has its own val/). ``subset`` caps each split
    at that many samples (a seeded sample; for fast tests; an ImageFolder
    decodes only those). ``image_size``: (H, W) or an int, ImageFolder only
    (default 32x32).

    Returns float32 NCHW images normalised per channel and int64 labels.
    Raises :class:`DatasetError` (one line naming the file or folder) for an
    unknown name, missing or damaged files, or bad sizes.
    """
    kind, _, path = name.partition(":")
    if kind in ("cifar10", "imagefolder"):
        where = Path(path) if path else root
        if where is None:
            raise DatasetError(f"{kind} needs a path: {kind}:PATH (or --data-root PATH)")
        if kind == "cifar10":
            if image_size is not None and _image_size(image_size) != (32, 32):
                raise DatasetError(f"image_size={image_size!r}: CIFAR-10 images are 32x32; resizing is for imagefolder")
            return _load_cifar10(where, seed, val_size, subset)
        return _load_imagefolder(where, seed, val_size, subset, _image_size(image_size))
    if name == "fashion-mnist":
        if image_size is not None and _image_size(image_size) != (28, 28):
            raise DatasetError(f"image_size={image_size!r}: Fashion-MNIST images are 28x28; resizing is for imagefolder")
        return _load_fashion_mnist(root, seed, 5000 if val_size is None else val_size, subset)
    raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
