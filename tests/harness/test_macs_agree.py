"""One MACs definition (harness/pruning.py module docstring): the torch counter
(``count_macs_params``, used by the search) and the simulator's ONNX count
(``devices.sim.graph``, used by ``hilprune predict``) agree exactly, for every
zoo model, unpruned and pruned, and on a tiny net counted by hand (ResNet-20's
hand count is in test_pruning.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from devices.sim.graph import load_features
from harness.compile.export import export_onnx
from harness.models import build_model
from harness.pruning import ArchSpec, apply_spec, count_macs_params, find_groups, full_spec, layer_macs

torch.set_num_threads(2)

#: zoo model -> a small batch-1 input (N, C, H, W)
ZOO_SHAPES = {
    "resnet20": (1, 1, 28, 28),
    "vgg11": (1, 3, 32, 32),
    "mobilenet_v2": (1, 3, 32, 32),
    "resnet18": (1, 3, 64, 64),
}


class TinyNet(nn.Module):
    """Biased conv (stride 2) + BN + ReLU, biased depthwise conv, a Linear on a 3-D
    tensor (ONNX MatMul + Add) and a biased classifier (ONNX Gemm)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=True)
        self.mix = nn.Linear(16, 6)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = self.dw(torch.relu(self.bn(self.conv(x))))  # (N, 4, 4, 4)
        x = torch.relu(self.mix(x.flatten(2)))  # (N, 4, 16) -> (N, 4, 6)
        return self.fc(x.flatten(1))  # (N, 24) -> (N, 5)


def _onnx_macs(model: nn.Module, shape, tmp_path, name: str) -> int:
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, shape, path)
    return load_features(path).macs


def test_tiny_net_by_hand(tmp_path):
    net = TinyNet().eval()
    # conv: 3x8x8 -> 4x4x4 (stride 2): 64 outputs x (3 in x 3x3)  = 64 x 27 = 1,728
    # dw:   4x4x4 -> 4x4x4, groups 4: 64 outputs x (1 in x 3x3)  = 64 x 9  =   576
    # mix:  (1, 4, 16) -> (1, 4, 6):  24 outputs x 16 in          = 24 x 16 =   384
    # fc:   24 -> 5:                   5 outputs x 24 in          =  5 x 24 =   120
    # biases (4 + 4 + 6 + 5 adds), BN, ReLU: not MACs               total  = 2,808
    assert layer_macs(net, (1, 3, 8, 8)) == {"conv": 1728, "dw": 576, "mix": 384, "fc": 120}
    macs, params = count_macs_params(net, (3, 8, 8))
    assert macs == 1728 + 576 + 384 + 120 == 2808
    # params: every parameter, BN's scale and shift included
    assert params == (4 * 27 + 4) + (4 + 4) + (4 * 9 + 4) + (16 * 6 + 6) + (24 * 5 + 5) == 387
    assert _onnx_macs(net, (1, 3, 8, 8), tmp_path, "tiny") == 2808
    # batch included, on both sides
    assert count_macs_params(net, (2, 3, 8, 8))[0] == 2 * 2808
    assert _onnx_macs(net, (2, 3, 8, 8), tmp_path, "tiny_b2") == 2 * 2808


def test_the_counter_leaves_the_model_as_it_was():
    net = TinyNet().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    count_macs_params(net, (3, 8, 8))
    assert net.training and all(m.training for m in net.modules())
    assert not any(m._forward_hooks for m in net.modules())
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # eval mode: BN statistics untouched


def test_a_layer_outside_the_definition_is_refused():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ConvTranspose2d(2, 1, 3))
    with pytest.raises(ValueError, match=r"'1' \(ConvTranspose2d\)"):
        count_macs_params(net, (1, 8, 8))
    assert not net[0]._forward_hooks  # the refused count leaves no hook on the conv before it


@pytest.mark.parametrize("name", list(ZOO_SHAPES))
def test_torch_count_equals_the_simulator_count_of_the_export(name, tmp_path):
    shape = ZOO_SHAPES[name]
    model = build_model(name, num_classes=10, in_channels=shape[1], input_size=shape[2:], seed=0).eval()
    macs, _ = count_macs_params(model, shape)
    assert macs == _onnx_macs(model, shape, tmp_path, name)
    # pruned: every group halved
    groups = find_groups(model, shape)
    half = ArchSpec(tuple(max(1, c // 2) for c in full_spec(groups).channels))
    pruned = apply_spec(model, half, shape)
    pmacs, _ = count_macs_params(pruned, shape)
    assert pmacs < macs
    assert pmacs == _onnx_macs(pruned, shape, tmp_path, f"{name}_half")
