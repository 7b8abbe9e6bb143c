"""harness/compile/table.py: the board's own latency table from a real MetaSchedule database."""

from __future__ import annotations

import json

import pytest

from harness.compile.table import TablePrediction, TaskTime, fit_overhead


def test_fit_overhead_by_hand():
    # measured = 2 x table + 1 exactly: the least squares line recovers it
    scale, overhead = fit_overhead([(1.0, 3.0), (2.0, 5.0), (4.0, 9.0)])
    assert scale == pytest.approx(2.0) and overhead == pytest.approx(1.0)
    # one pair (or sums all alike): scale 1, the overhead is the median difference
    assert fit_overhead([(2.0, 2.5)]) == (1.0, pytest.approx(0.5))
    assert fit_overhead([(2.0, 2.5), (2.0, 2.7), (2.0, 3.5)]) == (1.0, pytest.approx(0.7))
    with pytest.raises(ValueError, match="at least one"):
        fit_overhead([])


def test_a_partial_table_is_not_a_latency():
    full = TablePrediction((TaskTime("a", 2, 0.5), TaskTime("b", 1, 1.0)), 2.0, ())
    assert full.complete and full.latency_ms() == 2.0 and full.latency_ms(1.5, 0.25) == pytest.approx(3.25)
    partial = TablePrediction((TaskTime("a", 2, 0.5), TaskTime("b", 1, None)), 1.0, ("b",))
    with pytest.raises(ValueError, match="1 of 2 tasks have no record.*hilprune tune --grid"):
        partial.latency_ms()


@pytest.mark.slow
def test_the_table_of_a_tuned_model_tracks_its_measured_latency(tmp_path, capsys):
    """ResNet-20 at 1x1x28x28 tuned (2 trials per task) into a database: the table covers every task, its sum is
    within a factor of the measured p50 of the same tuned build (per-call overheads are not in the sum; a
    compute-bound model keeps them small), and a model with other widths is reported as missing tasks."""
    from devices.base import MeasureConfig
    from devices.local import LocalDevice
    from harness.cli import main
    from harness.compile.export import export_onnx
    from harness.compile.table import table_prediction
    from harness.compile.targets import resolve_target
    from harness.compile.tuning import TuningConfig, database_dir_for
    from harness.models import build_model
    from harness.pipeline import Pipeline, PipelineError

    shape = (1, 1, 28, 28)
    onnx = tmp_path / "r20.onnx"
    export_onnx(build_model("resnet20", in_channels=1, input_size=shape[2:], seed=0), shape, onnx)
    target, tuning = resolve_target("host"), TuningConfig(trials_per_task=2, num_trials_per_iter=2, num_threads=1)
    device = LocalDevice(env={"TVM_NUM_THREADS": "1"})
    try:
        pipe = Pipeline.for_device(device, target, tuning, MeasureConfig(number=0, repeat=15, min_repeat_ms=20,
                                                                         num_threads=1), tmp_path / "cache")
        prepared = pipe.compile(onnx)
        assert not isinstance(prepared, PipelineError), prepared
        measured = pipe.measure(prepared)
        assert measured.ok, measured.error
    finally:
        device.close()
    db = database_dir_for(tmp_path / "cache", target.canonical_json(), tuning)
    table = table_prediction(onnx, target, db)
    assert table.complete and len(table.tasks) == prepared.manifest.tuning["tasks_total"]
    assert all(t.weight >= 1 and t.ms > 0 for t in table.tasks)
    ratio = table.tasks_ms / measured.p50_ms
    assert 0.3 < ratio < 2.0, (table.tasks_ms, measured.p50_ms)
    # other widths: new workloads the database has never seen, named, and no latency made up for them
    wide = tmp_path / "wide.onnx"
    export_onnx(build_model("resnet20", in_channels=1, input_size=shape[2:], seed=0,
                            widths={"stem": 24, "layer1": 24}), shape, wide)
    other = table_prediction(wide, target, db)
    assert not other.complete and other.tasks_ms < table.tasks_ms
    with pytest.raises(ValueError, match="no record"):
        other.latency_ms()
    # the CLI says the same, labelled predicted
    assert main(["predict", str(onnx), str(wide), "--table", "host", "--cache-dir", str(tmp_path / "cache"),
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["complete"] for r in rows] == [True, False] and {r["source"] for r in rows} == {"predicted"}
    assert rows[0]["tasks_ms"] == pytest.approx(table.tasks_ms)
