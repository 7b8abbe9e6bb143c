"""harness/compile/check.py: the device's output against ONNX Runtime's, and what a search does with a wrong one."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.utils.data import TensorDataset

from devices.base import Device, MeasureConfig, MeasureResult
from devices.local import LocalDevice
from harness.pipeline import Pipeline
from harness.pruning import ArchSpec
from harness.compile.check import OUTPUT_ATOL, OUTPUT_RTOL, check_device_output, check_measurement, device_input
from harness.compile.export import export_onnx
from harness.compile.targets import resolve_target
from harness.compile.tuning import TuningConfig
from harness.models import build_model
from harness.pruning import find_groups, full_spec
from harness.search.candidate import CandidateEvaluator
from harness.store import ResultsStore
from tests.harness.small_net import INPUT_SHAPE, small_net

FAST = MeasureConfig(warmup=1, number=2, repeat=3, min_repeat_ms=0, timeout_s=120, max_cov=1e9, max_remeasure=0)


@pytest.fixture(scope="module")
def onnx_and_ref(tmp_path_factory):
    path = tmp_path_factory.mktemp("check") / "small.onnx"
    export_onnx(small_net(), INPUT_SHAPE, path)
    x = device_input(INPUT_SHAPE, "float32", seed=0)
    (ref,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    return path, ref


def test_device_input_is_the_daemons_rule():
    from devices.daemon import _make_input  # the daemon's own function, not a re-implementation of it

    x = device_input((1, 1, 4, 4), "float32", seed=3)
    assert x.dtype == np.float32 and x.shape == (1, 1, 4, 4)
    from devices.manifest import Manifest, TensorSig

    manifest = Manifest(input=TensorSig("input", (1, 1, 4, 4), "float32"), output=TensorSig(None, (1, 10), "float32"),
                        onnx="model.onnx")
    np.testing.assert_array_equal(x, _make_input(manifest, 3))


def test_right_output_passes_and_a_wrong_one_names_the_value(onnx_and_ref):
    path, ref = onnx_and_ref
    head = ref.reshape(-1)[:16].astype(np.float64)
    ok = check_device_output(path, "input", INPUT_SHAPE, "float32", 0, head + 1e-6, ref.shape)
    assert ok.ok and ok.compared == 10 and ok.max_abs_diff == pytest.approx(1e-6, rel=1e-3)
    assert ok.bound == pytest.approx(OUTPUT_ATOL + OUTPUT_RTOL * float(np.abs(ref).max()))

    bad = head.copy()
    bad[7] += 0.05 * float(np.abs(ref).max()) + 2 * OUTPUT_ATOL  # a wrong program's error: far past the bound
    r = check_device_output(path, "input", INPUT_SHAPE, "float32", 0, bad, ref.shape)
    assert not r.ok and "at index 7" in r.message and r.max_abs_diff > r.bound

    # another seed is another input: the same values no longer match
    assert not check_device_output(path, "input", INPUT_SHAPE, "float32", 1, head, ref.shape).ok
    shape = check_device_output(path, "input", INPUT_SHAPE, "float32", 0, head, (1, 11))
    assert not shape.ok and "shape (1, 11)" in shape.message
    nan = head.copy()
    nan[0] = np.nan
    assert "NaN" in check_device_output(path, "input", INPUT_SHAPE, "float32", 0, nan, ref.shape).message


@pytest.fixture(scope="module")
def evaluator_parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("wrong")
    model = build_model("resnet20").eval()  # random seeded weights; 12x12 input keeps the build small
    shape = (1, 1, 12, 12)
    groups = find_groups(model, torch.zeros(shape))
    gen = torch.Generator().manual_seed(0)
    val = TensorDataset(torch.randn(16, 1, 12, 12, generator=gen), torch.randint(0, 10, (16,), generator=gen))
    return root, model, groups, shape, val


def _evaluator(parts, device: Device, store: ResultsStore, name: str) -> CandidateEvaluator:
    root, model, groups, shape, val = parts
    pipeline = Pipeline.for_device(device, resolve_target("host"), TuningConfig(trials_per_task=0), FAST,
                                   root / "cache", store)
    return CandidateEvaluator(
        model_name="resnet20", base_model=model, groups=groups, input_shape=shape, val_data=val, pipeline=pipeline,
        work_dir=root / name, eval_samples=16)


class CorruptingDevice(Device):
    """A real LocalDevice whose replies come back with one output value off: a fast, wrong program."""

    def __init__(self, inner: LocalDevice) -> None:
        super().__init__(inner.name)
        self.inner = inner
        self.blamed: list[str] = []

    def report_bad_result(self, measurement, kind: str, reason: str) -> None:
        self.blamed.append(kind)

    def hello(self) -> dict:
        return self.inner.hello()

    def measure(self, artifact_dir, config) -> MeasureResult:
        r = self.inner.measure(artifact_dir, config)
        if r.ok:
            head = list(r.value.output_head)
            head[3] += 1.0 + abs(head[3])
            r = MeasureResult(value=dataclasses.replace(r.value, output_head=tuple(head)))
        return r

    def measure_interleaved(self, artifact_dirs, config):
        """The same corruption on the candidate (the second artifact) of an interleaved session."""
        from devices.interleaved import InterleavedResult

        r = self.inner.measure_interleaved(artifact_dirs, config)
        if r.ok:
            arts = list(r.value.artifacts)
            head = list(arts[1].output_head)
            head[3] += 1.0 + abs(head[3])
            arts[1] = dataclasses.replace(arts[1], output_head=tuple(head))
            r = InterleavedResult(value=dataclasses.replace(r.value, artifacts=tuple(arts)))
        return r

    def _close(self) -> None:
        self.inner.close()


@pytest.mark.slow
def test_search_candidate_with_wrong_output_fails_and_is_never_cached(evaluator_parts, tmp_path):
    store = ResultsStore(tmp_path / "r.db")
    spec = full_spec(evaluator_parts[2])
    local = LocalDevice()
    try:
        corrupting = CorruptingDevice(local)
        wrong = _evaluator(evaluator_parts, corrupting, store, "w").evaluate(spec)
        assert wrong.error_kind == "wrong_output" and "at index 3" in wrong.error_message
        assert corrupting.blamed == ["wrong_output"]  # the device (a farm: that board) is told
        assert wrong.latency_p50_ms is None
        assert store.query("SELECT COUNT(*) AS n FROM measurements")[0]["n"] == 0  # nothing to cache

        right = _evaluator(evaluator_parts, local, store, "r").evaluate(spec)  # the real daemon, real TVM
        assert right.ok and not right.latency_cache_hit
        (row,) = store.query("SELECT metadata_json FROM measurements")
        check = json.loads(row["metadata_json"])["output_check"]
        assert check["compared"] == 10 and 0 <= check["max_abs_diff"] <= check["bound"]

        # a pruned candidate is timed interleaved with the unpruned reference: both outputs are checked
        pruned = ArchSpec(tuple(max(1, c // 2) for c in spec.channels))
        good = _evaluator(evaluator_parts, local, store, "r")
        assert good.set_reference(spec) is None
        ok = good.evaluate(pruned)
        assert ok.ok and ok.latency_ratio > 0 and ok.ratio_ci[0] <= ok.latency_ratio <= ok.ratio_ci[1]
        assert store.query("SELECT COUNT(*) AS n FROM latency_ratios")[0]["n"] == 1
        bad = _evaluator(evaluator_parts, CorruptingDevice(local), store, "w")
        assert bad.set_reference(spec) is None
        wrong = bad.evaluate(pruned, fresh=True)
        assert wrong.error_kind == "wrong_output" and "ratio not used" in wrong.error_message
        assert store.query("SELECT COUNT(*) AS n FROM latency_ratios")[0]["n"] == 1  # nothing stored for it
        # the cached ratio is served to a pipeline of the same identity, against the same reference only
        again = _evaluator(evaluator_parts, local, store, "r")
        assert again.set_reference(spec) is None
        hit = again.evaluate(pruned)
        assert hit.latency_cache_hit and hit.latency_ratio == ok.latency_ratio
    finally:
        local.close()
        store.close()


def test_simulated_measurements_are_not_checked(onnx_and_ref):
    sim = type("M", (), {"source": "simulated", "output_head": (), "output_shape": (1, 10)})()
    assert check_measurement(onnx_and_ref[0].parent, None, sim, seed=0) is None


def test_an_onnx_file_ort_cannot_run_is_a_clear_value_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ValueError, match=r"cannot check the device's output: ONNX Runtime cannot run .*bad\.onnx"):
        check_device_output(bad, "input", INPUT_SHAPE, "float32", 0, [0.0] * 10, (1, 10))
