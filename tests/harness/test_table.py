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


def test_the_ratio_fit_recovers_the_offset_from_pairs_made_by_hand():
    from harness.compile.table import fit_ratio_offset

    # ratio = (T + o') / (T_ref + o') with o' = 0.5 ms: (1 + .5)/(2 + .5) = 0.6, (1.5 + .5)/2.5 = 0.8, 1/2.5 = 0.4
    assert fit_ratio_offset([(1.0, 2.0, 0.6), (1.5, 2.0, 0.8), (0.5, 2.0, 0.4)]) == pytest.approx(0.5, abs=1e-6)
    # two references: o' = 0.3, T_ref 2.0 and 3.0
    pairs = [(t, ref, (t + 0.3) / (ref + 0.3)) for t, ref in ((1.0, 2.0), (1.5, 2.0), (2.0, 3.0), (1.0, 3.0))]
    assert fit_ratio_offset(pairs) == pytest.approx(0.3, abs=1e-6)
    # sums that over-count the savings (as if o' were -0.3) stay at o' = 0: an overhead is never negative, and a
    # negative one would predict negative latencies for narrower models (T < 0.3 here)
    over = [(t, ref, (t - 0.3) / (ref - 0.3)) for t, ref in ((1.0, 2.0), (1.5, 2.0), (2.0, 3.0), (1.0, 3.0))]
    assert fit_ratio_offset(over) == 0.0
    # noisy ratios: the least-squares o' equals a brute-force minimum of the squared ratio residuals
    import numpy as np

    noisy = [(1.0, 3.0, 0.52), (2.0, 3.0, 0.73), (0.5, 3.0, 0.41)]
    grid = np.arange(0.0, 4.0, 1e-4)
    sse = sum((r - (t + grid) / (ref + grid)) ** 2 for t, ref, r in noisy)
    assert fit_ratio_offset(noisy) == pytest.approx(float(grid[np.argmin(sse)]), abs=2e-4)
    # nothing informative (the reference measured against itself): the raw sum ratio, o' = 0
    assert fit_ratio_offset([(2.0, 2.0, 1.0)]) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        fit_ratio_offset([])


def test_latency_table_fit_is_kept_per_board_target_family_and_refitted_on_each_pair(tmp_path):
    from harness.compile.table import LatencyTable
    from harness.compile.targets import resolve_target
    from harness.store import ResultsStore

    store = ResultsStore(tmp_path / "r.db")
    target = resolve_target("host")
    me, fam = "measured|board=local@h|machine=x86_64|cpu=X|cores=2", "resnet20@1x1x28x28"
    table = LatencyTable(target, tmp_path / "db", identity=me, family=fam, store=store)
    assert not table.fit.fitted and table.fit.describe() == "unfitted: raw sum"
    assert table.ratio(1.0, 2.0) == 0.5  # unfitted: the raw sum ratio
    # o' = 0.5, s = 2 (a reference of table sum 2.0 measured at 2 x (2.0 + 0.5) = 5.0 ms)
    fit = table.add_pair(arch_signature="a", tasks_ms=1.0, reference_signature="ref", reference_tasks_ms=2.0,
                         ratio=0.6, latency_p50_ms=3.0, reference_p50_ms=5.0)
    assert fit.n_pairs == 1 and fit.offset_ms == pytest.approx(0.5, abs=1e-6) and fit.scale == pytest.approx(2.0)
    fit = table.add_pair(arch_signature="b", tasks_ms=1.5, reference_signature="ref", reference_tasks_ms=2.0,
                         ratio=0.8, reference_p50_ms=5.0)
    assert fit.n_pairs == 2 and fit.mape_ratio == pytest.approx(0.0, abs=1e-4)
    assert table.ratio(0.5, 2.0) == pytest.approx(0.4, abs=1e-6) and fit.latency_ms(0.5) == pytest.approx(2.0)
    assert "fitted on 2 pairs" in fit.describe()
    # the fit survives the process (the store), and stays with its board and family
    again = LatencyTable(target, tmp_path / "db", identity=me, family=fam, store=store)
    assert again.fit == table.fit
    assert not LatencyTable(target, tmp_path / "db", identity=me + "x", family=fam, store=store).fit.fitted
    assert not LatencyTable(target, tmp_path / "db", identity=me, family="vgg11@1x1x28x28", store=store).fit.fitted
    store.close()


# ------------------------------------------------------------------------ re-timed task times (table_times.json)


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory):
    """A conv + mean + linear model at 1x1x8x8 tuned with 2 trials per task into a fresh database (~10 s)."""
    import torch

    from harness.compile.build import compile_onnx
    from harness.compile.export import export_onnx
    from harness.compile.targets import resolve_target
    from harness.compile.tuning import TuningConfig, database_dir_for

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))

    root = tmp_path_factory.mktemp("retime")
    torch.manual_seed(0)
    onnx = root / "tiny.onnx"
    export_onnx(Tiny().eval(), (1, 1, 8, 8), onnx)
    target = resolve_target("host")
    tuning = TuningConfig(trials_per_task=2, num_trials_per_iter=2, num_threads=1)
    res = compile_onnx(onnx, target, root / "cache", tuning)
    assert res.ok, res
    return onnx, target, database_dir_for(root / "cache", target.canonical_json(), tuning)


def _tasks(onnx, target):
    from tvm.s_tir import meta_schedule as ms

    from harness.compile.build import lower_onnx

    return ms.relax_integration.extract_tasks(lower_onnx(onnx.read_bytes(), target).mod, target.tvm_target())


def test_retimed_times_are_used_while_fresh_and_a_changed_record_falls_back_to_the_recorded_time(tiny_db, capsys):
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    from harness.compile.table import (
        TIMES_FILE,
        read_retimed,
        retime_tasks,
        table_prediction,
    )
    from harness.compile.tuning import WORKLOAD_FILE

    onnx, target, db = tiny_db
    before = table_prediction(onnx, target, db)
    assert before.complete and before.retimed == 0 and before.times == "recorded"
    assert all(t.source == "recorded" and t.ms == t.recorded_ms for t in before.tasks)

    # every workload of the database (one JSON line each in its workload file), 2 passes
    n_workloads = len((db / WORKLOAD_FILE).read_text().splitlines())
    rep = retime_tasks(db, target, passes=2)
    assert (rep.workloads, rep.retimed_now, rep.fresh, rep.failed) == (n_workloads, n_workloads, 0, ())
    data = json.loads((db / TIMES_FILE).read_text())
    assert len(data["workloads"]) == n_workloads and data["database"]["record_bytes"] > 0
    assert all(e["passes"] == 2 and len(e["samples_ms"]) == 2 and e["ms"] > 0 for e in data["workloads"].values())

    # the sum is Σ weight × re-timed ms, keyed here by each task's own structural hash
    tasks = _tasks(onnx, target)
    key = {t.task_name: f"{tvm_ffi.structural_hash(t.dispatched[0]) & 0xFFFFFFFFFFFFFFFF:016x}" for t in tasks}
    by_hand = sum(int(t.weight) * data["workloads"][key[t.task_name]]["ms"] for t in tasks)
    after = table_prediction(onnx, target, db)
    assert after.retimed == len(tasks) == len(after.tasks) and after.times == "retimed"
    assert after.tasks_ms == pytest.approx(by_hand, rel=1e-12)
    assert [t.recorded_ms for t in after.tasks] == [t.ms for t in before.tasks]

    # a second call with nothing new times nothing
    again = retime_tasks(db, target, passes=2)
    assert (again.retimed_now, again.fresh, again.build_s) == (0, n_workloads, 0.0)

    # the database changes after re-timing: a better record of the conv task -> its entry is stale, unused
    conv = next(t for t in tasks if "conv2d" in t.task_name)
    jdb = ms.database.JSONDatabase(work_dir=str(db), module_equality="structural")
    best = jdb.get_top_k(jdb.commit_workload(conv.dispatched[0]), 1)[0]
    faster = [float(s) / 4 for s in best.run_secs]
    jdb.commit_tuning_record(ms.database.TuningRecord(best.trace, best.workload, faster, best.target,
                                                      best.args_info))
    stale = table_prediction(onnx, target, db)
    by_name = {t.name: t for t in stale.tasks}
    assert stale.retimed == len(tasks) - 1 and stale.times == "mixed"
    assert by_name[conv.task_name].source == "recorded"
    assert by_name[conv.task_name].ms == pytest.approx(1e3 * sum(faster) / len(faster))
    assert stale.tasks_ms == pytest.approx(by_hand - int(conv.weight) * (data["workloads"][key[conv.task_name]]["ms"]
                                                                         - by_name[conv.task_name].ms), rel=1e-9)
    # re-timing the model's tasks now times only that one again
    third = retime_tasks(db, target, tasks=tasks, passes=1)
    assert (third.workloads, third.retimed_now, third.fresh) == (len(tasks), 1, len(tasks) - 1)
    entry = read_retimed(db)[key[conv.task_name]]
    assert entry["task"] == conv.task_name and entry["passes"] == 1
    assert table_prediction(onnx, target, db).retimed == len(tasks)
    # predict --table says which times it used
    from harness.cli import main

    assert main(["predict", str(onnx), "--table", "host", "--cache-dir", str(db.parents[1]), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["times"] == "retimed" and rows[0]["tasks_retimed"] == len(tasks) and rows[0]["source"] == "predicted"
    assert rows[0]["tasks_ms"] == pytest.approx(table_prediction(onnx, target, db).tasks_ms, rel=1e-12)


def test_retime_refuses_bad_passes_and_an_unreadable_times_file_falls_back(tiny_db, caplog):
    from harness.compile.table import (
        TIMES_FILE,
        read_retimed,
        retime_tasks,
        table_prediction,
    )

    onnx, target, db = tiny_db
    with pytest.raises(ValueError, match="passes 0 must be >= 1"):
        retime_tasks(db, target, passes=0)
    saved = (db / TIMES_FILE).read_bytes() if (db / TIMES_FILE).exists() else None
    try:
        (db / TIMES_FILE).write_text("{torn")
        assert read_retimed(db) == {}
        pred = table_prediction(onnx, target, db)
        assert pred.retimed == 0 and all(t.source == "recorded" for t in pred.tasks)
    finally:
        if saved is None:
            (db / TIMES_FILE).unlink()
        else:
            (db / TIMES_FILE).write_bytes(saved)
