"""Every zoo model through the real path: torch -> ONNX -> TVM (untuned) -> daemon via LocalDevice.

The daemon runs each artifact on ``numpy.random.default_rng(seed).standard_normal(shape)``
(float32) and returns ``output_head`` (first 16 output values); torch runs the
same input. Untuned builds are enough for correctness (tuning changes
schedules, not results). Inputs are small so builds and runs stay short.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from devices.base import MeasureConfig
from devices.local import LocalDevice
from harness.compile.build import compile_onnx
from harness.compile.export import export_onnx
from harness.compile.targets import resolve_target
from harness.compile.tuning import TuningConfig
from harness.models import build_model

torch.set_num_threads(2)

UNTUNED = TuningConfig(trials_per_task=0)
#: One run of the fixed input: correctness only, no timing statistics.
ONCE = MeasureConfig(warmup=0, number=1, repeat=1, timeout_s=300.0, seed=3, num_threads=2)
#: |TVM - torch| <= ATOL + RTOL * max|torch|: fp32 with another summation order
#: (~1e-6 relative per layer); BN folded differently; 56 layers at most.
ATOL, RTOL = 1e-4, 1e-4

#: (model, build kwargs, input shape): small inputs, every stem and classifier variant.
ZOO = [
    ("resnet20", {}, (1, 1, 28, 28)),
    ("resnet32", {"in_channels": 3}, (1, 3, 16, 16)),
    ("resnet56", {}, (1, 1, 12, 12)),
    ("resnet18", {"num_classes": 10}, (1, 3, 64, 64)),
    ("vgg11", {"in_channels": 1, "input_size": 28}, (1, 1, 28, 28)),
    ("vgg16", {"input_size": 32, "hidden": (32,), "widths": {f"conv{i}": 32 for i in range(1, 14)}}, (1, 3, 32, 32)),
    ("mobilenet_v2", {"width_mult": 0.5}, (1, 3, 32, 32)),  # CIFAR stem
    ("mobilenet_v2", {"width_mult": 0.35, "stem": "imagenet"}, (1, 3, 64, 64)),
]


def _randomize_bn(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial BN statistics (fresh ones are mean 0, var 1: a no-op a wrong export would hide)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def device():
    dev = LocalDevice()
    yield dev
    dev.close()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo-cache")


def _artifact(model: torch.nn.Module, shape, path, cache_dir):
    export_onnx(model, shape, path)
    result = compile_onnx(path, resolve_target("host"), cache_dir, UNTUNED)
    assert result.error is None, result.error
    return result.artifact


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kw", "shape"), ZOO, ids=[f"{z[0]}-{'x'.join(map(str, z[2]))}" for z in ZOO])
def test_tvm_output_equals_torch_through_the_daemon(name, kw, shape, device, cache_dir, tmp_path):
    model = _randomize_bn(build_model(name, **kw), seed=1)
    artifact = _artifact(model, shape, tmp_path / f"{name}.onnx", cache_dir)
    assert artifact.manifest.input.shape == tuple(shape)
    assert artifact.manifest.tuning["tuned"] is False  # labelled untuned

    result = device.measure(artifact.path, ONCE)
    assert result.error is None, result.error
    m = result.value
    x = np.random.default_rng(ONCE.seed).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy().reshape(-1)
    head = np.asarray(m.output_head)
    assert m.output_shape == (1, model(torch.from_numpy(x)).shape[1]) and len(head) == min(16, expected.size)
    scale = float(np.abs(expected).max())
    assert scale > 1e-3  # not a degenerate all-zero output
    np.testing.assert_allclose(head, expected[: len(head)], rtol=0, atol=ATOL + RTOL * scale)
    assert m.backend == "tvm" and m.tuning["tuned"] is False


@pytest.mark.slow
def test_doubled_widths_resnet20_is_clearly_slower_and_ort_is_labelled(device, cache_dir, tmp_path):
    """Untuned code tracks MACs: 2x every width is ~4x the conv MACs at 1x1x28x28 (41M -> 163M)."""
    base = build_model("resnet20")
    widths = {k: 2 * v for k, v in base.config.widths().items()}
    wide = build_model("resnet20", widths=widths)
    # One thread: a 2-thread pool on a loaded 2-core machine waits for its descheduled worker at every
    # operator, a cost per operator (the same for both models) that squeezes the ratio towards 1.
    timing = MeasureConfig(warmup=1, number=0, repeat=7, min_repeat_ms=30.0, timeout_s=300.0, num_threads=1)
    shape = (1, 1, 28, 28)
    a_base = _artifact(base, shape, tmp_path / "base.onnx", cache_dir)
    a_wide = _artifact(wide, shape, tmp_path / "wide.onnx", cache_dir)
    # Interleaved rounds (base, wide, base, wide, ...), each side's fastest p50: a burst of load during
    # one side's measurement cannot make the wide model look as fast as the base one.
    p50 = {"base": [], "wide": []}
    for _ in range(3):
        for label, art in (("base", a_base), ("wide", a_wide)):
            r = device.measure(art.path, timing)
            assert r.error is None, r.error
            p50[label].append(r.value.stats.p50_ms)
    assert min(p50["wide"]) / min(p50["base"]) > 1.3, p50

    ort = device.measure(a_base.path, MeasureConfig(backend="onnxruntime", warmup=1, number=0, repeat=5,
                                                    min_repeat_ms=10.0, num_threads=2, seed=ONCE.seed))
    assert ort.error is None, ort.error
    v = ort.value
    assert v.backend == "onnxruntime" and v.artifact_sha256 == a_base.library_sha256 and v.source == "measured"
    assert v.stats.n == 5 and v.stats.p50_ms > 0
    x = np.random.default_rng(ONCE.seed).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        expected = base.eval()(torch.from_numpy(x)).numpy().reshape(-1)
    np.testing.assert_allclose(v.output_head, expected[:10], rtol=0, atol=1e-4 + 1e-4 * np.abs(expected).max())


@pytest.mark.slow
def test_second_compile_of_a_zoo_export_is_a_cache_hit(cache_dir, tmp_path):
    """torch.onnx.export is byte-deterministic for a seeded zoo model, so a re-export hits the cache."""
    model = build_model("resnet20", seed=5)
    first = _artifact(model, (1, 1, 28, 28), tmp_path / "a.onnx", cache_dir)
    second = _artifact(build_model("resnet20", seed=5), (1, 1, 28, 28), tmp_path / "b.onnx", cache_dir)
    assert second.cache_hit and second.path == first.path
