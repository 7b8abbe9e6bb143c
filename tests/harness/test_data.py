"""Tests for harness/data.py: the checked IDX, CIFAR-10 and ImageFolder readers and the seeded splits.

CIFAR-10 batches and ImageFolder trees are tiny fakes written to tmp dirs (no downloads)."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.data import (
    CIFAR10_CLASSES,
    DEFAULT_FASHION_MNIST_ROOT,
    DatasetError,
    load_dataset,
    read_cifar_batch,
    read_cifar_meta,
    read_idx_images,
    read_idx_labels,
    read_image,
)

torch.set_num_threads(2)

needs_fmnist = pytest.mark.skipif(
    not (DEFAULT_FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist is not installed",
)


def _write_idx(path: Path, header: bytes, body: bytes) -> Path:
    with gzip.open(path, "wb") as fh:
        fh.write(header + body)
    return path


@needs_fmnist
def test_real_files_have_the_documented_counts_and_labels():
    root = DEFAULT_FASHION_MNIST_ROOT
    train_x = read_idx_images(root / "train-images-idx3-ubyte.gz", 60000)
    test_x = read_idx_images(root / "t10k-images-idx3-ubyte.gz", 10000)
    train_y = read_idx_labels(root / "train-labels-idx1-ubyte.gz", 60000)
    test_y = read_idx_labels(root / "t10k-labels-idx1-ubyte.gz", 10000)
    assert train_x.shape == (60000, 28, 28) and train_x.dtype == np.uint8
    assert test_x.shape == (10000, 28, 28)
    assert train_y.shape == (60000,) and test_y.shape == (10000,)
    # Fashion-MNIST is balanced: 6000 train and 1000 test images per class.
    assert np.bincount(train_y, minlength=10).tolist() == [6000] * 10
    assert np.bincount(test_y, minlength=10).tolist() == [1000] * 10


def test_wrong_magic_names_the_file(tmp_path):
    # A label magic (2049) where an image file (2051) is expected.
    bad = _write_idx(tmp_path / "images.gz", struct.pack(">IIII", 2049, 2, 28, 28), bytes(2 * 28 * 28))
    with pytest.raises(DatasetError, match=r"images\.gz.*magic 2049, expected 2051"):
        read_idx_images(bad)
    bad_labels = _write_idx(tmp_path / "labels.gz", struct.pack(">II", 2051, 3), bytes([0, 1, 2]))
    with pytest.raises(DatasetError, match=r"labels\.gz.*magic 2051, expected 2049"):
        read_idx_labels(bad_labels)


def test_good_tiny_file_reads_and_damage_is_caught(tmp_path):
    body = bytes(range(256)) * 6 + bytes(2 * 28 * 28 - 256 * 6)
    ok = _write_idx(tmp_path / "ok.gz", struct.pack(">IIII", 2051, 2, 28, 28), body)
    arr = read_idx_images(ok, expected_count=2)
    assert arr.shape == (2, 28, 28) and int(arr[0, 0, 5]) == 5
    with pytest.raises(DatasetError, match="expected 60000"):
        read_idx_images(ok, expected_count=60000)
    short = _write_idx(tmp_path / "short.gz", struct.pack(">IIII", 2051, 2, 28, 28), body[:100])
    with pytest.raises(DatasetError, match=r"short\.gz.*100 data bytes"):
        read_idx_images(short)
    big_label = _write_idx(tmp_path / "lab.gz", struct.pack(">II", 2049, 2), bytes([3, 10]))
    with pytest.raises(DatasetError, match=r"label 10 outside 0\.\.9"):
        read_idx_labels(big_label)
    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_bytes(b"not a gzip file at all")
    with pytest.raises(DatasetError, match=r"plain\.gz.*gzip"):
        read_idx_images(not_gzip)


def test_missing_root_gives_one_clear_line(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", root=missing)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(missing) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-root" in msg
    assert isinstance(info.value, ValueError)


def test_missing_file_is_named(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz"):
        load_dataset(root=tmp_path)


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(DatasetError, match=r"unknown dataset 'mnist'.*fashion-mnist.*cifar10:PATH"):
        load_dataset("mnist")


@needs_fmnist
def test_split_sizes_normalisation_and_determinism():
    s0 = load_dataset("fashion-mnist", seed=0)
    assert s0.sizes() == {"train": 55000, "val": 5000, "test": 10000}
    assert s0.num_classes == 10 and s0.input_shape == (1, 28, 28) and s0.name == "fashion-mnist"
    x, y = s0.train.tensors
    assert x.dtype == torch.float32 and x.shape == (55000, 1, 28, 28) and y.dtype == torch.int64
    # Normalised with the train mean/std: about zero mean, unit std.
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1.0) < 0.01
    again = load_dataset("fashion-mnist", seed=0)
    assert torch.equal(again.val.tensors[0], s0.val.tensors[0])
    assert torch.equal(again.val.tensors[1], s0.val.tensors[1])
    other = load_dataset("fashion-mnist", seed=1)
    assert not torch.equal(other.val.tensors[1], s0.val.tensors[1])
    # The test split does not depend on the seed.
    assert torch.equal(other.test.tensors[1], s0.test.tensors[1])
    # Validation is carved out of train: no image in both (compare by raw bytes of a sample).
    train_keys = {bytes(t.numpy().tobytes()) for t in s0.train.tensors[0][:2000]}
    assert not any(bytes(t.numpy().tobytes()) in train_keys for t in s0.val.tensors[0][:2000])


@needs_fmnist
def test_subset_caps_each_split():
    s = load_dataset(subset=300, seed=3)
    assert s.sizes() == {"train": 300, "val": 300, "test": 300}
    assert torch.equal(load_dataset(subset=300, seed=3).train.tensors[1], s.train.tensors[1])
    with pytest.raises(DatasetError, match="subset"):
        load_dataset(subset=0)


# --------------------------------------------------------------------------- CIFAR-10 (python batches)

CIFAR_ROWS = 20  # rows per fake batch (the real set has 10000; batches.meta says how many)


def _cifar_batch(rows: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    # Python 2's cPickle wrote str keys, which Python 3 reads back as bytes with encoding="bytes".
    return {
        b"batch_label": b"fake batch",
        b"labels": [int(i % 10) for i in range(rows)],
        b"data": rng.integers(0, 256, size=(rows, 3072), dtype=np.uint8),
        b"filenames": [b"img%d.png" % i for i in range(rows)],
    }


def _write_cifar(root: Path, rows: int = CIFAR_ROWS, meta_rows: int | None = CIFAR_ROWS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(_cifar_batch(rows, i), protocol=2))
    test = _cifar_batch(rows, 99)
    # Test image 0: a known picture (rows 0..1023 red, then green, then blue, row-major 32x32).
    pic = np.zeros((3, 32, 32), dtype=np.uint8)
    pic[0] = 255
    pic[1, :, :16] = 100
    pic[2, 5, 7] = 7
    test[b"data"][0] = pic.reshape(-1)
    (root / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    meta = {b"label_names": [n.encode() for n in CIFAR10_CLASSES], b"num_vis": 3072}
    if meta_rows is not None:
        meta[b"num_cases_per_batch"] = meta_rows
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def _one_line_error(name: str, **kw) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(name, **kw)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def test_cifar10_batches_load_with_seeded_splits_and_train_statistics(tmp_path):
    root = _write_cifar(tmp_path / "cifar-10-batches-py")
    s = load_dataset(f"cifar10:{root}", seed=0, val_size=10)
    assert s.name == "cifar10" and s.num_classes == 10 and s.input_shape == (3, 32, 32)
    assert s.sizes() == {"train": 90, "val": 10, "test": 20}
    assert s.classes == CIFAR10_CLASSES
    x, y = s.train.tensors
    assert x.dtype == torch.float32 and x.shape == (90, 3, 32, 32) and y.dtype == torch.int64
    # Normalised by the train split's own per-channel mean/std: exactly 0 and 1 there.
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    assert 0.45 < s.mean[0] < 0.55 and 0.25 < s.std[0] < 0.33  # uniform bytes: 0.5 and ~0.29
    # The pixel layout: row = 1024 R, 1024 G, 1024 B, each 32x32 row-major.
    pic = s.test.tensors[0][0] * torch.tensor(s.std).view(3, 1, 1) + torch.tensor(s.mean).view(3, 1, 1)
    pic = torch.round(pic * 255)
    assert bool((pic[0] == 255).all()) and float(pic[1, 3, 15]) == 100 and float(pic[1, 3, 16]) == 0
    assert float(pic[2, 5, 7]) == 7 and float(pic[2].sum()) == 7
    assert s.test.tensors[1][:10].tolist() == list(range(10))
    # Same seed, same split; another seed, another validation set; a parent directory works too.
    again = load_dataset("cifar10", root=tmp_path, seed=0, val_size=10)
    assert torch.equal(again.val.tensors[0], s.val.tensors[0])
    other = load_dataset(f"cifar10:{root}", seed=1, val_size=10)
    assert not torch.equal(other.val.tensors[0], s.val.tensors[0])
    assert torch.equal(other.test.tensors[1], s.test.tensors[1])
    small = load_dataset(f"cifar10:{root}", seed=0, val_size=10, subset=7)
    assert small.sizes() == {"train": 7, "val": 7, "test": 7}


def test_cifar10_damaged_batch_gives_one_line_naming_it(tmp_path):
    root = _write_cifar(tmp_path / "c")
    good = (root / "data_batch_3").read_bytes()
    (root / "data_batch_3").write_bytes(good[: len(good) // 2])  # truncated download
    msg = _one_line_error(f"cifar10:{root}", val_size=10)
    assert re.search(r"damaged CIFAR-10 file \S*data_batch_3: not a readable pickle", msg), msg

    batch = _cifar_batch(CIFAR_ROWS, 3)
    batch[b"data"] = batch[b"data"][:, :3000]
    (root / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    msg = _one_line_error(f"cifar10:{root}", val_size=10)
    assert re.search(r"data_batch_3: data is uint8 \[20x3000\], expected uint8 \[20, 3072\]", msg), msg

    batch = _cifar_batch(CIFAR_ROWS, 3)
    batch[b"labels"][4] = 10
    (root / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    assert re.search(r"data_batch_3: label 10 outside 0\.\.9", _one_line_error(f"cifar10:{root}", val_size=10))

    batch = _cifar_batch(CIFAR_ROWS, 3)
    del batch[b"labels"]
    (root / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    assert re.search(r"data_batch_3: no 'labels' key", _one_line_error(f"cifar10:{root}", val_size=10))


def test_cifar10_batch_count_checked_against_the_meta_and_pickles_cannot_run_code(tmp_path):
    # A meta file without num_cases_per_batch means the real 10000 rows: a 20-row batch is short.
    root = _write_cifar(tmp_path / "c", meta_rows=None)
    msg = _one_line_error(f"cifar10:{root}", val_size=10)
    assert re.search(r"data_batch_1: data is uint8 \[20x3072\], expected uint8 \[10000, 3072\]", msg), msg

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    root = _write_cifar(tmp_path / "d")
    (root / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    msg = _one_line_error(f"cifar10:{root}", val_size=10)
    assert "test_batch" in msg and "refused" in msg and "system" in msg, msg
    assert not (tmp_path / "pwned").exists()

    (root / "batches.meta").unlink()
    msg = _one_line_error(f"cifar10:{root}")
    assert "missing" in msg and "batches.meta" in msg and "cifar-10-batches-py" in msg
    assert "needs a path" in _one_line_error("cifar10")
    assert "not found" in _one_line_error(f"cifar10:{tmp_path / 'nowhere'}")


def test_read_cifar_batch_returns_nchw_uint8(tmp_path):
    root = _write_cifar(tmp_path / "c")
    x, y = read_cifar_batch(root / "data_batch_1", expected_rows=CIFAR_ROWS)
    assert x.shape == (CIFAR_ROWS, 3, 32, 32) and x.dtype == np.uint8 and y.shape == (CIFAR_ROWS,)
    assert read_cifar_meta(root / "batches.meta") == (CIFAR10_CLASSES, CIFAR_ROWS)


# --------------------------------------------------------------------------- ImageFolder

COLOURS = {"cat": (200, 10, 10), "dog": (10, 200, 10), "eel": (10, 10, 200)}


def _image_tree(root: Path, splits: tuple[str, ...] = ("train", "test"), per_class: int = 4) -> Path:
    from PIL import Image

    for split in splits:
        for c, (name, colour) in enumerate(COLOURS.items()):
            d = root / split / name
            d.mkdir(parents=True)
            n = per_class if split == "train" else 2
            for i in range(n):
                size = (40, 20) if i % 2 else (32, 32)  # different sizes and formats, all resized
                ext = "png" if i % 2 else "jpg"
                Image.new("RGB", size, colour).save(d / f"{name}{i}.{ext}", quality=100)
            (d / "notes.txt").write_text("not an image")
    return root


def _pixels(splits, part: str) -> torch.Tensor:
    x = getattr(splits, part).tensors[0]
    return torch.round((x * torch.tensor(splits.std).view(1, 3, 1, 1) + torch.tensor(splits.mean).view(1, 3, 1, 1)) * 255)


def test_imagefolder_tree_loads_resized_with_sorted_classes(tmp_path):
    root = _image_tree(tmp_path / "tree")
    s = load_dataset(f"imagefolder:{root}", seed=0)
    assert s.name == "imagefolder" and s.classes == ("cat", "dog", "eel") and s.num_classes == 3
    assert s.input_shape == (3, 32, 32)
    # 12 train images: 10% (1) carved out for validation; test/ is the test split.
    assert s.sizes() == {"train": 11, "val": 1, "test": 6}
    assert s.test.tensors[1].tolist() == [0, 0, 1, 1, 2, 2]
    px = _pixels(s, "test")
    for label, colour in enumerate(COLOURS.values()):
        got = px[2 * label].mean(dim=(1, 2))
        assert torch.allclose(got, torch.tensor(colour, dtype=torch.float32), atol=3), (label, got)  # JPEG within 3
    assert torch.allclose(s.train.tensors[0].mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    sized = load_dataset(f"imagefolder:{root}", seed=0, image_size=(8, 16), val_size=3, subset=5)
    assert sized.input_shape == (3, 8, 16) and sized.train.tensors[0].shape == (5, 3, 8, 16)
    assert sized.sizes() == {"train": 5, "val": 3, "test": 5}
    again = load_dataset(f"imagefolder:{root}", seed=0, image_size=(8, 16), val_size=3, subset=5)
    assert torch.equal(again.train.tensors[0], sized.train.tensors[0])


def test_imagefolder_val_folder_roles(tmp_path):
    both = _image_tree(tmp_path / "both", ("train", "val", "test"))
    s = load_dataset("imagefolder", root=both, seed=0)
    assert s.sizes() == {"train": 12, "val": 6, "test": 6}  # val/ is the validation split: nothing carved
    only_val = _image_tree(tmp_path / "imagenet_style", ("train", "val"))
    s = load_dataset(f"imagefolder:{only_val}", seed=0, val_size=2)
    assert s.sizes() == {"train": 10, "val": 2, "test": 6}  # val/ is the held-out (test) split


def test_imagefolder_problems_give_one_line_naming_the_file_or_folder(tmp_path):
    root = _image_tree(tmp_path / "t")
    bad = root / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    msg = _one_line_error(f"imagefolder:{root}")
    assert msg.startswith(f"damaged image {bad}: PIL cannot decode it"), msg
    good = (root / "train" / "dog" / "dog1.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated
    assert str(bad) in _one_line_error(f"imagefolder:{root}")
    bad.unlink()

    (root / "test" / "fox").mkdir()
    msg = _one_line_error(f"imagefolder:{root}")
    assert "class 'fox' is not among the train classes (cat, dog, eel)" in msg and "test/fox" in msg
    (root / "test" / "fox").rmdir()
    (root / "train" / "gnu").mkdir()
    assert re.search(r"class folder \S*train/gnu holds no images", _one_line_error(f"imagefolder:{root}"))
    (root / "train" / "gnu").rmdir()

    (tmp_path / "flat" / "cat").mkdir(parents=True)
    assert "has no train/ folder" in _one_line_error(f"imagefolder:{tmp_path / 'flat'}")
    (tmp_path / "flat" / "train").mkdir()
    assert "has no test/ (or val/) folder" in _one_line_error(f"imagefolder:{tmp_path / 'flat'}")
    assert "image_size" in _one_line_error(f"imagefolder:{root}", image_size=(0, 4))
    assert "imagefolder:PATH" in _one_line_error("imagenet")


def test_read_image_converts_to_rgb_chw(tmp_path):
    from PIL import Image

    Image.new("L", (5, 3), 77).save(tmp_path / "grey.png")
    arr = read_image(tmp_path / "grey.png", (3, 5))
    assert arr.shape == (3, 3, 5) and arr.dtype == np.uint8 and bool((arr == 77).all())
