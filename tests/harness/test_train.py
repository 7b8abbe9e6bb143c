"""Tests for harness/train.py: training, evaluation, fine-tuning, the cached baseline."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import TensorDataset

import harness.train as train_mod
from harness.data import DEFAULT_FASHION_MNIST_ROOT, DatasetSplits, load_dataset
from harness.models import resnet20
from harness.train import baseline_path, evaluate, finetune, load_or_train_baseline, one_cycle_lr, train

# One thread: on a shared 2-core box two OpenMP threads spin against other jobs and run
# several times slower; one thread is within ~2x of two on an idle box.
torch.set_num_threads(1)

needs_fmnist = pytest.mark.skipif(
    not (DEFAULT_FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist is not installed",
)


def _tiny_splits(n: int = 64) -> DatasetSplits:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    ds = TensorDataset(x, y)
    return DatasetSplits(train=ds, val=ds, test=ds, num_classes=10, input_shape=(1, 28, 28), name="synthetic")


def _small_model():
    return resnet20(widths={"stem": 4, "layer1": 4, "layer2": 8, "layer3": 8}
                    | {f"layer{s}.{b}": 4 for s in (1, 2, 3) for b in range(3)}, seed=0)


@pytest.mark.slow
@needs_fmnist
def test_one_epoch_on_2000_samples_beats_chance():
    splits = load_dataset("fashion-mnist", seed=0, subset=2000)
    # Half-width ResNet-20 (8/16/32): a quarter of the MACs, so this stays fast on a busy box.
    half = {"stem": 8, "layer1": 8, "layer2": 16, "layer3": 32}
    half |= {f"layer{s}.{b}": w for s, w in ((1, 8), (2, 16), (3, 32)) for b in range(3)}
    model = resnet20(widths=half, seed=0)
    # Batch 32: 63 updates in the epoch instead of 16 (~0.66 top-1 instead of ~0.33).
    report = train(model, splits, epochs=1, seed=0, batch_size=32)
    assert report.val_top1 > 0.3 and report.test_top1 > 0.3  # chance is 0.1
    assert report.epochs == 1.0 and len(report.history) == 1
    assert report.history[0]["steps"] == 63  # ceil(2000 / 32)
    assert report.seconds > 0


def test_evaluate_range_mode_and_max_samples():
    splits = _tiny_splits(50)
    model = _small_model().train()
    acc = evaluate(model, splits.val, batch_size=16)
    assert 0.0 <= acc <= 1.0 and model.training  # mode restored
    # max_samples: accuracy over the first 10 only equals a manual count.
    model.eval()
    with torch.no_grad():
        manual = (model(splits.val.tensors[0][:10]).argmax(1) == splits.val.tensors[1][:10]).float().mean()
    assert evaluate(model, splits.val, max_samples=10) == pytest.approx(float(manual))


def test_training_is_deterministic_by_seed():
    splits = _tiny_splits(64)
    a, b, c = _small_model(), _small_model(), _small_model()
    train(a, splits, epochs=1, seed=3, batch_size=16)
    train(b, splits, epochs=1, seed=3, batch_size=16)
    train(c, splits, epochs=1, seed=4, batch_size=16)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_finetune_steps_and_epochs():
    splits = _tiny_splits(64)
    model = _small_model()
    before = model.conv1.weight.clone()
    report = finetune(model, splits, steps=3, batch_size=16)
    assert report.history[-1]["steps"] == 3 and report.epochs == pytest.approx(3 / 4)
    assert not torch.equal(before, model.conv1.weight)
    report = finetune(model, splits, epochs=0.5, batch_size=16)
    assert report.history[-1]["steps"] == 2
    with pytest.raises(ValueError, match="exactly one of epochs or steps"):
        finetune(model, splits)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        train(model, splits, epochs=0, seed=0)


def test_baseline_is_cached_atomically_and_reloaded(tmp_path, monkeypatch):
    splits = _tiny_splits(32)
    model, info = load_or_train_baseline(
        "resnet20", "synthetic", seed=0, epochs=1, cache_dir=tmp_path, progress=False, splits=splits
    )
    pt = baseline_path(tmp_path, "resnet20", "synthetic", 0, 1)
    assert pt == tmp_path / "baselines" / "resnet20-synthetic-s0-e1.pt" and pt.is_file()
    record = json.loads(pt.with_suffix(".json").read_text())
    assert record["model_name"] == "resnet20" and record["epochs"] == 1 and record["format_version"] == 1
    assert record["test_top1"] == info.test_top1
    assert sorted(p.name for p in pt.parent.iterdir()) == sorted([pt.name, pt.with_suffix(".json").name])  # no temp files

    def no_training(*a, **k):
        raise AssertionError("the cached baseline should be loaded, not retrained")

    monkeypatch.setattr(train_mod, "train", no_training)
    again, info2 = load_or_train_baseline(
        "resnet20", "synthetic", seed=0, epochs=1, cache_dir=tmp_path, progress=False, splits=splits
    )
    assert info2 == info and not again.training
    x = splits.test.tensors[0][:4]
    with torch.no_grad():
        assert torch.equal(again(x), model.eval()(x))


def test_one_cycle_schedule_shape():
    total = 100
    lrs = [one_cycle_lr(s, total, 0.1) for s in range(total)]
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) == 25  # peak after 25% of the steps
    assert lrs[-1] == pytest.approx(0.1 / 25 / 1e4)
    assert all(a <= b for a, b in zip(lrs[:25], lrs[1:26])) and all(a >= b for a, b in zip(lrs[25:], lrs[26:]))
    assert [round(one_cycle_lr(s, 4, 0.1), 4) for s in range(4)] == [0.004, 0.1, 0.05, 0.0]  # tiny runs work
