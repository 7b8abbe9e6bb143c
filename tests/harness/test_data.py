"""Tests for harness/data.py: the checked IDX reader and the seeded splits."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.data import (
    DEFAULT_FASHION_MNIST_ROOT,
    DatasetError,
    load_dataset,
    read_idx_images,
    read_idx_labels,
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
