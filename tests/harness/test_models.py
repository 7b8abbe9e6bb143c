"""Tests for harness/models.py: CIFAR-style ResNet-20 with per-layer widths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.models import ResNetCifarConfig, build_model, resnet20, resnet56

torch.set_num_threads(2)


def _conv_out(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_default_resnet20_widths_shortcuts_and_params():
    model = resnet20()
    outs = _conv_out(model)
    expected = {"conv1": 16}
    for s, w in enumerate((16, 32, 64), start=1):
        for b in range(3):
            expected[f"layer{s}.{b}.conv1"] = w
            expected[f"layer{s}.{b}.conv2"] = w
    expected["layer2.0.shortcut.0"] = 32
    expected["layer3.0.shortcut.0"] = 64
    assert outs == expected  # 19 3x3 convs + 2 projections (option B, only where the shape changes)
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules()) == 19
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    assert sum(p.numel() for p in model.parameters()) == 272_186  # ~0.27M as in He et al. Table 6


def test_forward_shape_and_feature_sizes():
    model = resnet20().eval()
    out = model(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10)
    feats = {}
    for name in ("layer1", "layer2", "layer3"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: feats.__setitem__(name, o.shape))
    model(torch.randn(2, 1, 28, 28))
    assert feats == {
        "layer1": (2, 16, 28, 28),
        "layer2": (2, 32, 14, 14),
        "layer3": (2, 64, 7, 7),
    }


def test_widths_are_respected_per_layer():
    widths = {"stem": 8, "layer1": 8, "layer1.1": 5, "layer2": 20, "layer2.0": 3, "layer3": 40, "layer3.2": 7}
    model = resnet20(widths=widths)
    outs = _conv_out(model)
    assert outs["conv1"] == 8
    assert [outs[f"layer1.{b}.conv2"] for b in range(3)] == [8, 8, 8]
    assert outs["layer1.1.conv1"] == 5 and outs["layer1.0.conv1"] == 16
    assert outs["layer2.0.conv1"] == 3 and outs["layer2.0.shortcut.0"] == 20
    assert [outs[f"layer2.{b}.conv2"] for b in range(3)] == [20, 20, 20]
    assert outs["layer3.2.conv1"] == 7 and outs["layer3.0.shortcut.0"] == 40
    assert model.layer1[1].conv2.in_channels == 5  # inner width feeds the block's 2nd conv
    assert model.layer2[0].conv1.in_channels == 8  # stage 1 stream feeds stage 2
    assert model.fc.in_features == 40
    assert "layer1.0.shortcut.0" not in outs  # stem == layer1: identity shortcut
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert model.current_config() == model.config == ResNetCifarConfig().with_widths(widths)


def test_stem_wider_than_stage1_gets_a_projection():
    model = resnet20(widths={"stem": 12})
    assert _conv_out(model)["layer1.0.shortcut.0"] == 16
    assert model.layer1[0].conv1.in_channels == 12
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_config_validation():
    with pytest.raises(ValueError, match="inner has 2 widths, expected 9"):
        ResNetCifarConfig(inner=(16, 16))
    with pytest.raises(ValueError, match="'layer2' must be an int >= 1"):
        ResNetCifarConfig(stages=(16, 0, 64))
    with pytest.raises(ValueError, match="unknown width key"):
        resnet20(widths={"layer4": 3})


def test_init_is_deterministic_by_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = resnet20(seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)  # building did not consume the caller's RNG
    b = resnet20(seed=7)
    c = resnet20(seed=8)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_registry_and_other_sizes():
    model = build_model("resnet20", num_classes=5, in_channels=3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    deep = build_model("resnet56")
    assert sum(isinstance(m, nn.Conv2d) for m in deep.modules()) == 55 + 2
    assert isinstance(resnet56(), nn.Module)
    with pytest.raises(ValueError, match="unknown model 'vgg99'; valid: resnet20, resnet56"):
        build_model("vgg99")
