"""Tests for harness/pruning.py: groups, specs, pruning, MACs and rebuild."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.models import resnet20
from harness.pruning import (
    ArchSpec,
    apply_spec,
    count_macs_params,
    find_groups,
    full_spec,
    layer_macs,
    rebuild,
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
    assert per_layer["fc"] == 64 * 10 + 10  # weights + bias
    # All convs and the classifier, by formula from the architecture.
    hand = 28 * 28 * 16 * 9
    for s, (w_in, w, hw) in enumerate(((16, 16, 28), (16, 32, 14), (32, 64, 7))):
        hand += hw * hw * w * w_in * 9 + hw * hw * w * w * 9  # block 0: conv1, conv2
        hand += 2 * (2 * hw * hw * w * w * 9)  # blocks 1, 2
        if s > 0:
            hand += hw * hw * w * w_in  # 1x1 projection
    hand += 64 * 10 + 10
    assert sum(per_layer.values()) == hand == 31_021_962
    macs, params = count_macs_params(model, SHAPE)
    assert params == 272_186
    # The counter also counts BN, ReLU, adds and pooling: a little more than conv + linear.
    assert hand < macs < hand * 1.02


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
