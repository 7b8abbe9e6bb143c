"""Tests of harness/compile/export.py: ONNX export checked against torch eager."""

import hashlib

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

import harness.compile.export as export_mod
from harness.compile.export import ExportError, export_onnx


class SmallNet(nn.Module):
    """conv3x3(1->8)+BN+ReLU, one residual block, GAP, Linear(10); input 1x1x28x28."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.c1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _net() -> SmallNet:
    torch.manual_seed(0)
    net = SmallNet()
    with torch.no_grad():  # non-trivial BN statistics so folding matters
        for bn in (net.stem[1], net.b1, net.b2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return net


def test_export_matches_torch(tmp_path):
    net = _net().train()
    path = tmp_path / "m.onnx"
    report = export_onnx(net, (1, 1, 28, 28), path)
    assert net.training  # the caller's model is untouched (deep copy in eval mode)
    assert report.path == path and path.exists()
    assert report.onnx_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report.input_name == "input"
    assert report.output_shape == (1, 10)
    assert 0.0 <= report.max_abs_diff <= 1e-4
    assert "atol" in report.tolerance and "rtol" in report.tolerance
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    assert any(op.version == 17 for op in model.opset_import if op.domain in ("", "ai.onnx"))

    # The graph computes what eval-mode torch computes on another input too.
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype(np.float32)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    expected = _net().eval()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_mismatch_is_an_export_error(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "ATOL", -1.0)  # nothing can pass
    monkeypatch.setattr(export_mod, "RTOL", 0.0)
    with pytest.raises(ExportError) as info:
        export_onnx(_net(), (1, 1, 28, 28), tmp_path / "m.onnx")
    assert info.value.kind == "mismatch"
    assert "atol" in info.value.message


class NotExportable(nn.Module):
    def forward(self, x):
        return torch.linalg.svd(x)[1]  # aten::linalg_svd has no ONNX opset-17 symbolic


def test_unexportable_model_is_an_export_error(tmp_path):
    with pytest.raises(ExportError) as info:
        export_onnx(NotExportable(), (1, 1, 4, 4), tmp_path / "m.onnx")
    assert info.value.kind == "export_failed"
    assert "linalg_svd" in info.value.message


def test_bad_input_shape_raises_value_error(tmp_path):
    with pytest.raises(ValueError):
        export_onnx(_net(), (1, 0, 28, 28), tmp_path / "m.onnx")
