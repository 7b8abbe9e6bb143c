"""Tests for harness/models.py: the model zoo (CIFAR ResNet-20/32/56, VGG-11/16-BN,
MobileNetV2, ImageNet ResNet-18) with per-layer widths."""

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
    with pytest.raises(ValueError, match="unknown model 'vgg99'; valid: mobilenet_v2, resnet18, resnet20, resnet32, resnet56, vgg11, vgg16"):
        build_model("vgg99")


# ----------------------------------------------------------------- the rest of the zoo


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet32_depth_params_and_28x28_1ch():
    model = build_model("resnet32").eval()
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules()) == 31
    assert _params(model) == 466_618  # ~0.46M, He et al. Table 6
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    rgb = build_model("resnet32", in_channels=3, num_classes=100, input_size=32).eval()
    assert rgb(torch.randn(1, 3, 32, 32)).shape == (1, 100)
    assert _conv_out(build_model("resnet32", widths={"layer2.4": 9}))["layer2.4.conv1"] == 9
    with pytest.raises(ValueError, match="resnet32 needs 3 stages x 5 blocks"):
        build_model("resnet32", config=ResNetCifarConfig())


def test_resnet18_imagenet_shapes_params_and_widths():
    from harness.models import ResNetImageNet

    model = build_model("resnet18").eval()
    assert isinstance(model, ResNetImageNet)
    assert _params(model) == 11_689_512  # torchvision's resnet18, 1000 classes
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    feats = {}
    for name in ("layer1", "layer4"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: feats.__setitem__(name, o.shape))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    assert feats == {"layer1": (1, 64, 56, 56), "layer4": (1, 512, 7, 7)}
    small = build_model("resnet18", widths={"stem": 32, "layer1": 32, "layer4": 100, "layer3.1": 17}, num_classes=7)
    outs = _conv_out(small)
    assert outs["conv1"] == 32 and outs["layer4.1.conv2"] == 100 and outs["layer3.1.conv1"] == 17
    assert "layer1.0.shortcut.0" not in outs and outs["layer4.0.shortcut.0"] == 100
    assert small.fc.in_features == 100 and small.current_config() == small.config
    with torch.no_grad():
        assert small.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 7)


@pytest.mark.parametrize(("name", "n_convs", "params_imagenet"), [("vgg11", 8, 132_866_088), ("vgg16", 13, 138_361_768)])
def test_vgg_bn_layout_classifier_and_widths(name, n_convs, params_imagenet):
    model = build_model(name).eval()  # CIFAR default: 3x32x32, 5 pools -> 1x1, one linear layer
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == n_convs and sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_convs
    assert convs[-1].out_channels == 512 and model.classifier.out.in_features == 512
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    mnist = build_model(name, in_channels=1, input_size=28).eval()  # 28->14->7->3->1, 5th pool skipped
    assert mnist.config.feature_size() == (1, 1)
    assert sum(isinstance(m, nn.MaxPool2d) for m in mnist.modules()) == 4
    assert mnist(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    # ImageNet head sized for 224: 512*7*7 -> 4096 -> 4096 -> 1000 (torchvision's count minus conv biases,
    # which BN makes redundant: 4,224 for VGG-16, 2,752 for VGG-11)
    big = build_model(name, input_size=224, num_classes=1000, hidden=(4096, 4096))
    assert big.classifier.fc1.in_features == 512 * 7 * 7 and _params(big) == params_imagenet
    last = f"conv{n_convs}"
    narrow = build_model(name, widths={"conv1": 5, last: 40}, input_size=(32, 48), hidden=(64,))
    outs = _conv_out(narrow)
    assert outs["features.conv1"] == 5 and outs[f"features.{last}"] == 40 and outs["features.conv2"] != 5
    assert narrow.features.conv2.in_channels == 5
    assert narrow.classifier.fc1.in_features == 40 * 1 * 1 and narrow.classifier.fc1.out_features == 64
    assert narrow(torch.randn(1, 3, 32, 48)).shape == (1, 10)
    assert narrow.width_key(f"features.{last}") == last and narrow.width_key("classifier.fc1") == "fc1"
    with pytest.raises(ValueError, match="unknown width key"):
        build_model(name, widths={"conv99": 3})


def test_mobilenet_v2_stems_multiplier_and_widths():
    from harness.models import MobileNetV2Config

    imagenet = build_model("mobilenet_v2", input_size=224, num_classes=1000).eval()
    assert imagenet.config.stem_stride == 2 and _params(imagenet) == 3_504_872  # torchvision's mobilenet_v2
    assert len(imagenet.blocks) == 17 and imagenet.config.last == 1280
    with torch.no_grad():
        assert imagenet(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    cifar = build_model("mobilenet_v2").eval()  # 32x32 -> CIFAR stem, stride 1
    assert cifar.config.stem_stride == 1 and cifar.stem[0].stride == (1, 1)
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    forced = build_model("mobilenet_v2", input_size=32, stem="imagenet")
    assert forced.stem[0].stride == (2, 2)
    half = build_model("mobilenet_v2", width_mult=0.5)
    assert half.config.stem == 16 and half.config.blocks[-1].out == 160 and half.config.last == 1280
    assert [b.use_residual for b in half.blocks][:4] == [False, False, True, False]
    w = {"stem": 24, "block0": 8, "block1.expand": 20, "block1": 12, "block2.expand": 30, "block2": 12, "last": 100}
    m = build_model("mobilenet_v2", widths=w, in_channels=1, num_classes=4).eval()
    outs = _conv_out(m)
    assert outs["stem.0"] == 24 and outs["blocks.0.conv.0.0"] == 24  # t=1: depthwise follows its input
    assert outs["blocks.0.conv.1"] == 8 and outs["blocks.1.conv.0.0"] == 20 and outs["blocks.1.conv.2"] == 12
    assert outs["blocks.2.conv.0.0"] == 30 and m.blocks[2].use_residual and outs["last.0"] == 100
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    assert m.width_key("blocks.1.conv.0.0") == "block1.expand" == m.width_key("blocks.1.conv.1.0")  # dw follows
    assert m.width_key("blocks.0.conv.1") == "block0" and m.width_key("blocks.0.conv.0.0") == "stem"
    assert m.width_key("classifier.1") is None
    with pytest.raises(ValueError, match="stem must be 'cifar' or 'imagenet'"):
        build_model("mobilenet_v2", stem="tiny")
    with pytest.raises(ValueError, match="hidden width must equal its input"):
        from harness.models import InvertedResidualSpec

        MobileNetV2Config(32, (InvertedResidualSpec(16, 16, 1, expand=False),), 64)


def test_default_input_shapes_cover_the_registry_and_the_kwargs_are_uniform():
    from harness.models import DEFAULT_INPUT_SHAPES, MODELS, default_input_shape

    assert set(DEFAULT_INPUT_SHAPES) == set(MODELS)
    for name in MODELS:
        n, c, h, w = default_input_shape(name)
        model = build_model(name, num_classes=3, in_channels=c, input_size=(h, w), seed=1).eval()
        with torch.no_grad():
            assert model(torch.randn(n, c, h, w)).shape == (1, 3), name
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        default_input_shape("nope")


@pytest.mark.parametrize(("name", "chw", "n_groups"), [
    ("resnet32", (1, 28, 28), 18), ("resnet18", (3, 64, 64), 12), ("vgg11", (3, 32, 32), 8),
    ("mobilenet_v2", (3, 32, 32), 25),
])
def test_zoo_models_prune_and_rebuild_from_their_widths(name, chw, n_groups):
    """find_groups/apply_spec/rebuild need nothing model-specific beyond width_key()."""
    from harness.pruning import ArchSpec, apply_spec, find_groups, rebuild

    model = build_model(name, in_channels=chw[0], num_classes=10).eval()
    groups = find_groups(model, chw)
    assert len(groups) == n_groups
    spec = ArchSpec(tuple(max(1, g.channels // 2) for g in groups))
    pruned = apply_spec(model, spec, chw)
    rebuilt = rebuild(name, spec, num_classes=10, in_channels=chw[0], input_shape=chw)
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    with torch.no_grad():
        assert rebuilt.eval()(torch.randn(1, *chw)).shape == (1, 10)


def test_pruning_groups_still_work_on_resnet20_and_56_after_the_zoo():
    from harness.pruning import ArchSpec, apply_spec, find_groups, rebuild

    for name, n_groups in (("resnet20", 12), ("resnet56", 30)):
        model = build_model(name).eval()
        groups = find_groups(model, (1, 28, 28))
        assert len(groups) == n_groups
        spec = ArchSpec(tuple(max(1, g.channels // 2) for g in groups))
        pruned = apply_spec(model, spec, (1, 28, 28))
        rebuilt = rebuild(name, spec)
        rebuilt.load_state_dict(pruned.state_dict(), strict=True)
        assert pruned(torch.randn(1, 1, 28, 28)).shape == (1, 10)
