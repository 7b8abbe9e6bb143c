"""Tests for harness/pruning.py: groups, specs, pruning, MACs and rebuild."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from harness.models import mobilenet_v2, resnet20, vgg11, vgg16
from harness.pruning import (
    ArchSpec,
    PruneGroup,
    apply_spec,
    count_macs_params,
    find_groups,
    full_spec,
    layer_macs,
    random_spec,
    rebuild,
    round_spec,
)

torch.set_num_threads(2)

SHAPE = (1, 28, 28)
EXPECTED_GROUPS = [
    ("stem+layer1", "residual", 16),
    ("layer1.0", "conv", 16),
    ("layer1.1", "conv", 16),
    ("layer1.2", "conv", 16),
    ("layer2.0", "conv", 32),
    ("layer2", "residual", 32),
    ("layer2.1", "conv", 32),
    ("layer2.2", "conv", 32),
    ("layer3.0", "conv", 64),
    ("layer3", "residual", 64),
    ("layer3.1", "conv", 64),
    ("layer3.2", "conv", 64),
]
SPEC = ArchSpec((8, 4, 16, 11, 20, 24, 32, 1, 64, 40, 33, 2))


@pytest.fixture(scope="module")
def model():
    return resnet20(seed=0).eval()


@pytest.fixture(scope="module")
def groups(model):
    return find_groups(model, SHAPE)


def _conv_out(m: nn.Module) -> dict[str, int]:
    return {n: c.out_channels for n, c in m.named_modules() if isinstance(c, nn.Conv2d)}


def test_resnet20_has_3_residual_and_9_inner_groups(groups):
    assert [(g.name, g.kind, g.channels) for g in groups] == EXPECTED_GROUPS
    assert [g.index for g in groups] == list(range(12))
    assert groups[0].layer_names == ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2")
    assert groups[5].layer_names == ("layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2", "layer2.2.conv2")
    assert groups[9].layer_names == ("layer3.0.conv2", "layer3.0.shortcut.0", "layer3.1.conv2", "layer3.2.conv2")
    assert groups[1].layer_names == ("layer1.0.conv1",)
    assert not any("fc" in n for g in groups for n in g.layer_names)  # the classifier is never pruned
    assert full_spec(groups).signature() == "16-16-16-16-32-32-32-32-64-64-64-64"


def test_find_groups_is_deterministic_and_leaves_the_model_alone():
    m = resnet20(seed=1).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert find_groups(m, SHAPE) == find_groups(m, torch.randn(2, 1, 28, 28))
    assert m.training
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k  # tracing did not touch BN running stats


def test_spec_yields_exactly_its_channels_and_a_working_forward(model, groups):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = apply_spec(model, SPEC, SHAPE)
    outs = _conv_out(pruned)
    for g, keep in zip(groups, SPEC.channels):
        for conv in g.layer_names:
            assert outs[conv] == keep, (g.name, conv)
    assert full_spec(find_groups(pruned, SHAPE)) == SPEC
    assert pruned.fc.out_features == 10
    assert pruned(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    # The original is untouched (apply_spec deep-copies).
    assert _conv_out(model)["conv1"] == 16
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_residual_streams_stay_consistent(model):
    pruned = apply_spec(model, SPEC, SHAPE)
    for s, width in ((1, 8), (2, 24), (3, 40)):
        stage = getattr(pruned, f"layer{s}")
        for b, block in enumerate(stage):
            assert block.conv2.out_channels == width
            assert block.bn2.num_features == width
            if not isinstance(block.shortcut, nn.Identity):
                assert block.shortcut[0].out_channels == width
                assert block.shortcut[1].num_features == width
            if b > 0:
                assert block.conv1.in_channels == width
        if s < 3:
            nxt = getattr(pruned, f"layer{s + 1}")[0]
            assert nxt.conv1.in_channels == width and nxt.shortcut[0].in_channels == width
    assert pruned.conv1.out_channels == pruned.bn1.num_features == 8
    assert pruned.fc.in_features == 40


def test_pruning_keeps_the_channels_of_largest_l1(model):
    m = resnet20(seed=2).eval()
    with torch.no_grad():  # make channels 3 and 7 of block layer1.0's inner group worthless
        for c in (3, 7):
            m.layer1[0].conv1.weight[c].zero_()
            m.layer1[0].bn1.weight[c] = 0.0
            m.layer1[0].bn1.bias[c] = 0.0
            m.layer1[0].conv2.weight[:, c].zero_()
    channels = list(full_spec(find_groups(m, SHAPE)).channels)
    channels[1] = 14
    pruned = apply_spec(m, ArchSpec(tuple(channels)), SHAPE)
    keep = [c for c in range(16) if c not in (3, 7)]
    assert torch.equal(pruned.layer1[0].conv1.weight, m.layer1[0].conv1.weight[keep])
    assert torch.equal(pruned.layer1[0].conv2.weight, m.layer1[0].conv2.weight[:, keep])
    # Removing only dead channels does not change the function.
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(pruned(x), m(x), atol=1e-5)


@pytest.mark.parametrize(
    "channels, match",
    [
        ((0,) + (16,) * 3 + (32,) * 4 + (64,) * 4, r"group 'stem\+layer1' is 0; it must be between 1 and 16"),
        ((16,) * 4 + (33,) + (32,) * 3 + (64,) * 4, r"group 'layer2.0' is 33; it must be between 1 and 32"),
        ((16, 16, 16), r"spec has 3 entries but the model has 12 groups"),
    ],
)
def test_bad_specs_raise(model, channels, match):
    with pytest.raises(ValueError, match=match):
        apply_spec(model, ArchSpec(channels), SHAPE)


def test_macs_match_a_hand_count(model):
    per_layer = layer_macs(model, SHAPE)
    # stem: 28x28 outputs x 16 filters x (1 input channel x 3x3)
    assert per_layer["conv1"] == 28 * 28 * 16 * 1 * 9 == 112_896
    # first conv of stage 2: stride 2 -> 14x14 outputs, 32 filters of 16x3x3
    assert per_layer["layer2.0.conv1"] == 14 * 14 * 32 * 16 * 9
    assert per_layer["layer3.0.shortcut.0"] == 7 * 7 * 64 * 32 * 1
    assert per_layer["fc"] == 64 * 10  # 10 outputs x 64 inputs; the bias adds are not MACs
    # All convs and the classifier, by formula from the architecture.
    hand = 28 * 28 * 16 * 9
    for s, (w_in, w, hw) in enumerate(((16, 16, 28), (16, 32, 14), (32, 64, 7))):
        hand += hw * hw * w * w_in * 9 + hw * hw * w * w * 9  # block 0: conv1, conv2
        hand += 2 * (2 * hw * hw * w * w * 9)  # blocks 1, 2
        if s > 0:
            hand += hw * hw * w * w_in  # 1x1 projection
    hand += 64 * 10
    assert sum(per_layer.values()) == hand == 31_021_952
    macs, params = count_macs_params(model, SHAPE)
    assert params == 272_186  # every parameter, BN scales and shifts included
    # Conv + linear only: BN, ReLU, adds, pooling and biases are not MACs.
    assert macs == hand


def test_macs_decrease_monotonically_as_a_group_shrinks(model, groups):
    base = list(full_spec(groups).channels)
    results = []
    for keep in (64, 32, 8, 1):
        channels = base.copy()
        channels[9] = keep  # the layer3 residual stream
        results.append(count_macs_params(apply_spec(model, ArchSpec(tuple(channels)), SHAPE), SHAPE))
    macs = [m for m, _ in results]
    params = [p for _, p in results]
    assert all(a > b for a, b in zip(macs, macs[1:])), macs
    assert all(a > b for a, b in zip(params, params[1:])), params
    assert results[0] == count_macs_params(model, SHAPE)


def test_rebuild_loads_the_pruned_state_dict_strictly_with_identical_outputs(model):
    pruned = apply_spec(model, SPEC, SHAPE).eval()
    fresh = rebuild("resnet20", SPEC, seed=5)
    fresh.load_state_dict(pruned.state_dict(), strict=True)
    fresh.eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))
    assert fresh.config == pruned.config
    with pytest.raises(ValueError, match="must be between 1 and 64"):
        rebuild("resnet20", ArchSpec((16,) * 4 + (32,) * 4 + (64,) * 3 + (65,)))


def test_arch_spec_signature_and_json_round_trip():
    spec = ArchSpec((16, 8, 1))
    assert spec.signature() == "16-8-1"
    assert ArchSpec.from_signature("16-8-1") == spec
    assert ArchSpec.from_json(spec.to_json()) == spec
    assert spec.to_dict() == {"version": 1, "channels": [16, 8, 1]}
    assert ArchSpec([4, 5]).channels == (4, 5)  # lists are normalised to tuples (hashable)
    assert hash(ArchSpec((4, 5))) == hash(ArchSpec([4, 5]))
    with pytest.raises(ValueError, match="bad architecture signature"):
        ArchSpec.from_signature("16-x")
    with pytest.raises(AttributeError):
        spec.channels = (1,)  # frozen


# --------------------------------------------------------------------------- every zoo model

RGB = (3, 32, 32)


@pytest.fixture(scope="module")
def mbv2():
    return mobilenet_v2(seed=0).eval()


@pytest.fixture(scope="module")
def mbv2_groups(mbv2):
    return find_groups(mbv2, RGB)


def test_mobilenet_v2_groups_and_kinds(mbv2, mbv2_groups):
    groups = mbv2_groups
    assert len(groups) == 25
    assert Counter(g.kind for g in groups) == {"depthwise": 17, "residual": 5, "conv": 3}
    by_name = {g.name: g for g in groups}
    # The stem sets block0's depthwise conv (t=1: no expansion conv).
    assert by_name["stem"].layer_names == ("stem.0", "blocks.0.conv.0.0") and by_name["stem"].kind == "depthwise"
    assert by_name["block1.expand"].layer_names == ("blocks.1.conv.0.0", "blocks.1.conv.1.0")
    assert by_name["block1.expand"].channels == 96
    # A stage's block outputs are coupled through its residual adds.
    assert by_name["block3+block4+block5"].layer_names == ("blocks.3.conv.2", "blocks.4.conv.2", "blocks.5.conv.2")
    assert [g.name for g in groups if g.kind == "residual"] == [
        "block1+block2", "block3+block4+block5", "block6+block7+block8+block9", "block10+block11+block12",
        "block13+block14+block15",
    ]
    assert [g.name for g in groups if g.kind == "conv"] == ["block0", "block16", "last"]
    assert not any("classifier" in n for g in groups for n in g.layer_names)
    assert find_groups(mbv2, torch.randn(2, *RGB)) == groups  # deterministic order, any batch


def test_mobilenet_v2_specs_keep_depthwise_groups_consistent(mbv2, mbv2_groups):
    for seed, round_to in ((0, 1), (1, 8)):
        spec = random_spec(mbv2_groups, np.random.default_rng(seed), min_keep=0.2, round_to=round_to)
        pruned = apply_spec(mbv2, spec, RGB, importance="l2" if seed else "l1")
        mods = dict(pruned.named_modules())
        for g, keep in zip(mbv2_groups, spec.channels):
            for name in g.layer_names:
                assert mods[name].out_channels == keep, (g.name, name)
        for i, block in enumerate(pruned.blocks):
            dw = block.conv[1 if pruned.config.blocks[i].expand else 0][0]
            producer = block.conv[0][0] if pruned.config.blocks[i].expand else None
            width = producer.out_channels if producer is not None else (
                pruned.stem[0].out_channels if i == 0 else pruned.blocks[i - 1].conv[-2].out_channels
            )
            assert dw.in_channels == dw.out_channels == dw.groups == width, (i, dw)
            assert block.conv[-2].in_channels == width
            if block.use_residual:  # output width == input width, so the add still works
                assert block.conv[-2].out_channels == pruned.blocks[i - 1].conv[-2].out_channels
        assert full_spec(find_groups(pruned, RGB)) == spec
        with torch.no_grad():
            assert pruned(torch.randn(2, *RGB)).shape == (2, 10)


def test_vgg16_spec_yields_exactly_its_channel_counts():
    model = vgg16(seed=0).eval()
    groups = find_groups(model, RGB)
    assert [g.name for g in groups] == [f"conv{i}" for i in range(1, 14)]
    assert all(g.kind == "conv" and len(g.layer_names) == 1 for g in groups)
    spec = ArchSpec((3, 64, 1, 100, 255, 7, 8, 500, 2, 512, 13, 1, 77))
    pruned = apply_spec(model, spec, RGB)
    convs = [m for m in pruned.features if isinstance(m, nn.Conv2d)]
    bns = [m for m in pruned.features if isinstance(m, nn.BatchNorm2d)]
    assert [c.out_channels for c in convs] == list(spec.channels)
    assert [b.num_features for b in bns] == list(spec.channels)
    assert [c.in_channels for c in convs] == [3, *spec.channels[:-1]]
    assert pruned.classifier.out.in_features == 77 and pruned.classifier.out.out_features == 10
    assert pruned.config.convs == spec.channels  # the model's own record follows
    with torch.no_grad():
        assert pruned(torch.randn(1, *RGB)).shape == (1, 10)


def test_l2_and_l1_choose_different_channels_on_a_crafted_weight():
    model = vgg11(seed=0).eval()
    with torch.no_grad():
        # Only conv1's filters differ between channels: the coupled BN scales (1) and
        # conv2's input slices (all equal) add the same amount to every channel.
        model.features.conv2.weight.copy_(model.features.conv2.weight[:, :1].expand(-1, 64, -1, -1))
        w = torch.ones(64, 3, 3, 3)
        w[5] = 0.0
        w[5, 0, 1, 1] = 3.0  # one large weight: L1 3, sum of squares 9
        w[9] = 0.2  # many small ones: L1 27 x 0.2 = 5.4, sum of squares 1.08
        model.features.conv1.weight.copy_(w)
    groups = find_groups(model, RGB)
    spec = ArchSpec((63, *(g.channels for g in groups[1:])))
    for importance, dropped in (("l1", 5), ("l2", 9)):
        pruned = apply_spec(model, spec, RGB, importance=importance)
        keep = [c for c in range(64) if c != dropped]
        assert torch.equal(pruned.features.conv1.weight, w[keep]), importance
    with pytest.raises(ValueError, match="unknown importance 'l3'; valid: l1, l2"):
        apply_spec(model, spec, RGB, importance="l3")


def _groups(*channels: int) -> list[PruneGroup]:
    return [PruneGroup(i, f"g{i}", c, (f"conv{i}",), "conv") for i, c in enumerate(channels)]


def test_round_spec_keeps_widths_on_the_grid():
    groups = _groups(64, 64, 64, 64, 20, 5, 64)
    spec = ArchSpec((1, 11, 12, 60, 19, 3, 64))
    assert round_spec(spec, groups, 8).channels == (8, 8, 16, 64, 20, 5, 64)  # nearest, ties up
    assert round_spec(spec, groups, 8, mode="down").channels == (8, 8, 8, 56, 16, 5, 64)
    assert round_spec(spec, groups, 8, mode="up").channels == (8, 16, 16, 64, 20, 5, 64)
    # 20 is off the grid: 8, 16 or the full 20; a group narrower than 8 stays whole.
    assert round_spec(ArchSpec((64,) * 4 + (17, 1, 64)), groups, 8).channels[4:6] == (16, 5)
    assert round_spec(spec, groups, 1) == spec
    with pytest.raises(ValueError, match="round_to=0 must be an int >= 1"):
        round_spec(spec, groups, 0)
    with pytest.raises(ValueError, match="unknown rounding mode"):
        round_spec(spec, groups, 8, mode="sideways")
    with pytest.raises(ValueError, match="must be between 1 and 5"):
        round_spec(ArchSpec((8,) * 5 + (6, 8)), groups, 8)


def test_random_spec_is_seeded_bounded_and_rounds(mbv2_groups):
    groups = mbv2_groups
    a = random_spec(groups, np.random.default_rng(3))
    assert a == random_spec(groups, np.random.default_rng(3))
    assert a != random_spec(groups, np.random.default_rng(4))
    for g, keep in zip(groups, a.channels):
        assert max(1, round(0.25 * g.channels)) <= keep <= g.channels
    for seed in range(5):
        r = random_spec(groups, np.random.default_rng(seed), min_keep=0.05, round_to=8)
        for g, keep in zip(groups, r.channels):
            assert keep % 8 == 0 and 8 <= keep <= g.channels, (g.name, keep)
    assert random_spec(groups, np.random.default_rng(0), min_keep=1.0) == full_spec(groups)
    with pytest.raises(ValueError, match="min_keep"):
        random_spec(groups, np.random.default_rng(0), min_keep=0.0)


@pytest.mark.parametrize(("name", "chw", "kw"), [
    ("vgg11", RGB, {}),
    ("vgg11", (3, 64, 64), {"hidden": (32, 16)}),  # classifier sized for 64x64: rebuild must know
    ("mobilenet_v2", RGB, {}),
    ("mobilenet_v2", (3, 96, 96), {"width_mult": 0.5}),  # ImageNet stem picked by the input size
])
def test_rebuild_loads_strictly_with_identical_outputs(name, chw, kw):
    from harness.models import build_model

    model = build_model(name, in_channels=chw[0], input_size=chw[1:], seed=0, **kw).eval()
    groups = find_groups(model, chw)
    spec = random_spec(groups, np.random.default_rng(7), round_to=4)
    pruned = apply_spec(model, spec, chw).eval()
    fresh = rebuild(name, spec, num_classes=10, in_channels=chw[0], input_shape=chw, seed=9, **kw)
    fresh.load_state_dict(pruned.state_dict(), strict=True)
    fresh.eval()
    assert fresh.config == pruned.config
    x = torch.randn(2, *chw)
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))
