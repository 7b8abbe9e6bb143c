"""Tests of harness/compile/export.py: ONNX export checked against torch eager."""

import hashlib

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

import harness.compile.export as export_mod
from harness.compile.export import ExportError, export_onnx
from tests.harness.small_net import small_net


def test_export_matches_torch(tmp_path):
    net = small_net().train()
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
    expected = small_net().eval()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_mismatch_is_an_export_error(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "ATOL", -1.0)  # nothing can pass
    monkeypatch.setattr(export_mod, "RTOL", 0.0)
    with pytest.raises(ExportError) as info:
        export_onnx(small_net(), (1, 1, 28, 28), tmp_path / "m.onnx")
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
        export_onnx(small_net(), (1, 0, 28, 28), tmp_path / "m.onnx")
