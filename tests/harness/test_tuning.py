"""Tests of harness/compile/tuning.py: persistent per-target database, reuse, locking."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from harness.compile.build import compile_onnx
from harness.compile.export import export_onnx
from harness.compile.targets import resolve_target
from harness.compile.tuning import TuningConfig, database_info, locked, target_key
from tests.harness.small_net import small_net


def test_config_is_checked_early():
    with pytest.raises(ValueError):
        TuningConfig(trials_per_task=-1)
    with pytest.raises(ValueError):
        TuningConfig(population_size=0)
    with pytest.raises(ValueError):
        TuningConfig(builder="remote")
    assert TuningConfig(trials_per_task=0).identity() == "untuned"
    assert TuningConfig(trials_per_task=4).identity() != TuningConfig(trials_per_task=8).identity()


def test_target_key_depends_on_target():
    host, rpi4 = resolve_target("host"), resolve_target("rpi4")
    assert target_key(host.canonical_json()) != target_key(rpi4.canonical_json())
    assert target_key(host.canonical_json()).startswith("llvm-")


def test_database_lock_excludes_other_processes(tmp_path):
    probe = (
        "import fcntl, sys\n"
        "fh = open(sys.argv[1], 'a+')\n"
        "try:\n"
        "    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "    print('free')\n"
        "except BlockingIOError:\n"
        "    print('held')\n"
    )
    lock_file = str(tmp_path / ".lock")
    with locked(tmp_path):
        held = subprocess.run([sys.executable, "-c", probe, lock_file], capture_output=True, text=True)
    free = subprocess.run([sys.executable, "-c", probe, lock_file], capture_output=True, text=True)
    assert held.stdout.strip() == "held"
    assert free.stdout.strip() == "free"


@pytest.mark.slow
def test_tuning_fills_database_and_second_run_reuses_it(tmp_path, capfd):
    onnx_path = tmp_path / "small.onnx"
    export_onnx(small_net(), (1, 1, 28, 28), onnx_path)
    db_dir = tmp_path / "db"
    config = TuningConfig(trials_per_task=2, database_dir=db_dir)
    host = resolve_target("host")
    from harness.compile.tuning import open_database

    empty = open_database(db_dir)  # parsed once per process while its files stay unchanged (~15 s on a warm grid)
    assert len(empty) == 0 and open_database(db_dir) is empty

    first = compile_onnx(onnx_path, host, tmp_path / "cache1", config)
    assert first.error is None, first.error
    parsed = open_database(db_dir)  # tuning appended to the files: read afresh, then reused
    assert parsed is not empty and len(parsed) >= 4 and open_database(db_dir) is parsed
    # MetaSchedule's console log goes to the database's tuning.log, never to stdout (`--json` stays JSON)
    assert capfd.readouterr().out == ""
    assert "Initializing Task" in (db_dir / "tuning.log").read_text()
    tuning = first.artifact.manifest.tuning
    assert tuning["tuned"] is True and tuning["trials_per_task"] == 2
    assert tuning["database"] == str(db_dir)
    assert tuning["tasks_total"] >= 4  # three fused convs + matmul + mean + layout ops
    assert tuning["tasks_tuned_now"] == tuning["tasks_total"] and tuning["tasks_from_db"] == 0
    info = database_info(db_dir)
    assert info.workloads == tuning["tasks_total"]
    assert info.records >= tuning["tasks_total"]  # at least one valid record per task
    for line in (db_dir / "database_tuning_record.json").read_text().splitlines():
        json.loads(line)  # every record line is whole JSON

    # Same model, new artifact cache, same database: nothing is tuned again.
    second = compile_onnx(onnx_path, host, tmp_path / "cache2", config)
    assert second.error is None, second.error
    tuning2 = second.artifact.manifest.tuning
    assert tuning2["tasks_tuned_now"] == 0
    assert tuning2["tasks_from_db"] == tuning["tasks_total"]
    assert database_info(db_dir).records == info.records
    assert open_database(db_dir) is parsed  # nothing tuned, nothing re-read

    # The tuned library computes the same function as torch.
    import tvm
    import tvm.runtime.vm

    art = second.artifact.path
    vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(art / "lib.so")), tvm.cpu(0))
    params = np.load(art / "params.npz")
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    out = vm["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(params[k]) for k in sorted(params.files)])
    expected = small_net()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-4, rtol=1e-4)


def _two_matmuls(target):
    """A Relax module of two matmuls of different shapes: two tuning tasks."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape=(16, 32), dtype="float32"))
    w1 = relax.Var("w1", relax.TensorType(shape=(32, 24), dtype="float32"))
    w2 = relax.Var("w2", relax.TensorType(shape=(24, 8), dtype="float32"))
    with bb.function("main", [x, w1, w2]):
        with bb.dataflow():
            h = bb.emit(relax.op.matmul(x, w1))
            out = bb.emit_output(bb.emit(relax.op.matmul(h, w2)))
        bb.emit_func_output(out)
    with target:
        return relax.get_pipeline("zero")(bb.get())


@pytest.mark.slow
def test_tuning_in_task_groups_keeps_the_finished_groups_when_killed(tmp_path, monkeypatch):
    """tasks_per_call=1: a tuning killed in its second call keeps the first task's records; the next call
    tunes only what is left (a board tuning overnight resumes where it stopped)."""
    import tvm

    import harness.compile.tuning as tuning_mod

    target = tvm.target.Target(resolve_target("host").target)
    mod = _two_matmuls(target)
    config = TuningConfig(trials_per_task=2, num_trials_per_iter=2, num_threads=1, tasks_per_call=1,
                          cost_model="random")
    real, calls = tuning_mod._tune, []

    def killed_on_second_call(tasks, db, cfg):
        calls.append(len(tasks))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(tasks, db, cfg)

    monkeypatch.setattr(tuning_mod, "_tune", killed_on_second_call)
    with pytest.raises(KeyboardInterrupt):
        tuning_mod.tune_module(mod, target, tmp_path / "db", config)
    assert calls == [1, 1]
    assert database_info(tmp_path / "db").workloads >= 1 and database_info(tmp_path / "db").records >= 1
    monkeypatch.setattr(tuning_mod, "_tune", real)
    report = tuning_mod.tune_module(mod, target, tmp_path / "db", config)
    assert (report.tasks_total, report.tasks_from_db, report.tasks_tuned_now) == (2, 1, 1)
    assert tuning_mod.untuned_tasks(mod, target, tmp_path / "db") == (2, [])


@pytest.mark.parametrize("content, kept", [
    (b'["a", 1]\n["b", 2]\n["c", 3', b'["a", 1]\n["b", 2]\n'),  # killed mid-line: no newline
    (b'["a", 1]\n["b", 2]\n["c", \n', b'["a", 1]\n["b", 2]\n'),  # a newline, but not JSON
    (b'["a", 1]\n["b", 2]\n', b'["a", 1]\n["b", 2]\n'),  # intact: untouched
    (b'["c", 3', b''),  # only a torn line
])
def test_torn_last_line_of_the_tuning_database_is_cut(tmp_path, content, kept):
    from harness.compile.tuning import repair_torn_tail

    path = tmp_path / "database_tuning_record.json"
    path.write_bytes(content)
    assert repair_torn_tail(path) == len(content) - len(kept)
    assert path.read_bytes() == kept

