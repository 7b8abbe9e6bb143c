"""harness/compile/board_runner.py: MetaSchedule tuning measured on a loopback SSH board, records in the DB."""

from __future__ import annotations

import pytest

from devices.registry import make_device
from tests.devices.farm_fixtures import board_toml, client_key, needs_sshd, sshd_pair, write_inventory  # noqa: F401

pytestmark = [needs_sshd, pytest.mark.slow]


def _matmul_module(target):
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape=(32, 32), dtype="float32"))
    w = relax.Var("w", relax.TensorType(shape=(32, 32), dtype="float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.matmul(x, w)))
        bb.emit_func_output(out)
    with target:
        return relax.get_pipeline("zero")(bb.get())


def test_loopback_boards_tune_into_database_in_parallel(tmp_path, sshd_pair, client_key):
    import tvm

    from harness.compile.board_runner import make_board_runner
    from harness.compile.targets import resolve_target
    from harness.compile.tuning import TuningConfig, database_info, tune_module

    spec = resolve_target("host")
    target = tvm.target.Target(spec.target)
    inv = write_inventory(tmp_path / "farm.toml", [board_toml("b1", sshd_pair[0], client_key),
                                                   board_toml("b2", sshd_pair[1], client_key)])
    farm = make_device("farm:loop", inventory=inv)
    try:
        runner = make_board_runner(farm, spec, number=2, repeat=1, min_repeat_ms=0, timeout_s=60)
        db_dir = tmp_path / "db"
        report = tune_module(_matmul_module(target), target, db_dir,
                             TuningConfig(trials_per_task=4, num_trials_per_iter=4, num_threads=1, runner=runner,
                                          cost_model="random"))
        assert report.tasks_tuned_now == 1
        info = database_info(db_dir)
        assert info.records >= 1, info
        # candidates were timed on the boards, not locally, and both boards of the tag worked at once
        assert farm.measured_on["b1"] >= 1 and farm.measured_on["b2"] >= 1, farm.measured_on
        # every record has a finite measured run time
        import json

        recs = [json.loads(line) for line in (db_dir / "database_tuning_record.json").read_text().splitlines()]
        assert any(r[1][1] and all(float(c) < 1.0 for c in r[1][1]) for r in recs), recs[:1]
    finally:
        farm.close()
