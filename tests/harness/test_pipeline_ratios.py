"""harness/pipeline.py: ``Pipeline.measure_ratios`` times several candidates against one reference in one session
(the comparison's final step), on the simulator: ratios are ratios of predictions, so they can be checked exactly."""

from __future__ import annotations

import pytest
import torch

from devices.base import MeasureConfig
from devices.sim.device import SimDevice
from harness.compile.targets import resolve_target
from harness.compile.tuning import TuningConfig
from harness.models import build_model
from harness.pipeline import Pipeline, StoreKey
from harness.pruning import ArchSpec, apply_spec, find_groups, full_spec
from harness.store import ResultsStore


def test_three_candidates_in_one_session_each_against_the_same_reference(tmp_path):
    model = build_model("resnet20").eval()
    shape = (1, 1, 12, 12)
    groups = find_groups(model, torch.zeros(shape))
    full = full_spec(groups)
    specs = [ArchSpec(tuple(max(8, c * k // 4) for c in full.channels)) for k in (3, 2, 1)]
    store = ResultsStore(tmp_path / "r.db")
    sim = SimDevice("host", name="sim:host")
    try:
        pipeline = Pipeline.for_device(sim, resolve_target("host"), TuningConfig(trials_per_task=0),
                                       MeasureConfig(number=0, repeat=5), tmp_path / "cache", store)
        prepared = []
        for i, spec in enumerate([full, *specs]):
            onnx = pipeline.export(apply_spec(model, spec, torch.zeros(shape)), shape, tmp_path / f"{i}.onnx")
            prepared.append(pipeline.compile(onnx))
        keys = [StoreKey("resnet20", s.signature(), {"command": "test"}) for s in specs]
        ref_key = StoreKey("resnet20", full.signature())
        out = pipeline.measure_ratios(prepared[0], prepared[1:], keys, ref_key)
        assert [r.ok for r in out] == [True, True, True] and all(r.source == "simulated" for r in out)
        # each ratio is that candidate's prediction over the reference's, from one session
        ref_ms = sim.predict(prepared[0].path / prepared[0].manifest.onnx, None)
        for r, p in zip(out, prepared[1:]):
            assert r.ratio.median == pytest.approx(sim.predict(p.path / p.manifest.onnx, None) / ref_ms)
            assert r.reference_p50_ms == pytest.approx(ref_ms)
        assert out[0].ratio.median > out[1].ratio.median > out[2].ratio.median  # narrower is faster
        assert len({id(r.measurement) for r in out}) == 1
        # stored: the reference's absolutes once, each candidate's absolutes and ratio
        assert store.query("SELECT COUNT(*) AS n FROM measurements")[0]["n"] == 4
        rows = store.query("SELECT arch_signature, ratio, reference_signature FROM latency_ratios ORDER BY id")
        assert [r["arch_signature"] for r in rows] == [s.signature() for s in specs]
        assert {r["reference_signature"] for r in rows} == {full.signature()}
        # one candidate is measure_ratio's case, with the same figure
        one = pipeline.measure_ratio(prepared[0], prepared[1])
        assert one.ratio.median == pytest.approx(out[0].ratio.median)
        with pytest.raises(ValueError, match="1..3 candidates"):
            pipeline.measure_ratios(prepared[0], prepared[1:] * 2)
    finally:
        sim.close()
        store.close()
