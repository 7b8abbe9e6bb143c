"""Tests of harness/compile/grid.py (the grid warm-up's task enumeration), ``hilprune tune --grid``,
and a search on a warmed grid database that tunes nothing.

Task counts are checked by independent routes: by hand from ResNet-20's layers,
against DESIGN.md §4's figures, against the tasks of random architectures the
real env proposes, and against a brute-force enumeration of every architecture
of a small grid.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.compile.grid import (
    GridSpec,
    TaskSet,
    architecture_tasks,
    covering_specs,
    grid_tasks,
    group_widths,
    layer_dependencies,
)
from harness.compile.targets import resolve_target
from harness.pruning import ArchSpec
from harness.search.env import EnvConfig, PruningEnv, reachable_widths

SHAPE = (1, 1, 28, 28)


def test_widths_per_group_follow_the_env_rule_and_the_grid():
    # step 25 % of the unpruned width, rounded down to multiples of 8, never below 8 (worked by hand)
    spec = GridSpec(round_to=8)
    assert group_widths([16, 32, 64], spec) == [(16, 8), (32, 24, 16, 8), (64, 48, 32, 16, 8)]
    assert group_widths([16, 32, 64], GridSpec(round_to=8, widths="grid"))[2] == (64, 56, 48, 40, 32, 24, 16, 8)
    assert group_widths([16, 64], GridSpec(round_to=32)) == [(16,), (64, 32)]
    assert group_widths([16, 32], GridSpec(round_to=8, groups=(1,))) == [(16,), (32, 24, 16, 8)]
    # 0.5: 64 -> 32 -> 0, clamped to the grid's smallest point 8
    assert reachable_widths(64, EnvConfig(step_fraction=0.5, round_to=8)) == (64, 32, 8)
    with pytest.raises(ValueError, match="round_to"):
        GridSpec(round_to=0)
    with pytest.raises(ValueError, match="widths"):
        GridSpec(widths="all")


def test_env_stepping_reaches_exactly_the_chain():
    """An independent route: prune one group with the real env until its action is masked."""

    class Source:
        def evaluate(self, spec):
            c = np.array(spec.channels)
            return type("R", (), {"ok": True, "top1": 0.9, "macs": int((c ** 2).sum()),
                                      "latency_p50_ms": float(c.sum()), "error_kind": None,
                                      "error_message": None})()

    from harness.pruning import PruneGroup

    groups = [PruneGroup(0, "a", 64, ("a",), "conv"), PruneGroup(1, "b", 32, ("b",), "residual")]
    src = Source()
    env = PruningEnv(src, groups, src.evaluate(ArchSpec((64, 32))),
                     EnvConfig(round_to=8, max_steps=50, target_ratio=0.01))
    for g, channels in ((0, 64), (1, 32)):
        env.reset()
        seen = [channels]
        while env.action_mask()[g]:
            _, _, _, _, info = env.step(g)
            seen.append(info["spec"].channels[g])
        assert tuple(seen) == reachable_widths(channels, env.config)


def test_layer_dependencies_of_resnet20_by_hand():
    groups, deps = layer_dependencies("resnet20", SHAPE)
    by = {d.layer: (d.in_groups, d.out_groups) for d in deps}
    assert [g.name for g in groups][:2] == ["stem+layer1", "layer1.0"] and len(groups) == 12
    assert by["conv1"] == ((), (0,))  # the stem's input is the image
    assert by["layer1.0.conv1"] == ((0,), (1,)) and by["layer1.0.conv2"] == ((1,), (0,))
    assert by["layer2.0.shortcut.0"] == ((0,), (5,))  # projection: stage 1 stream -> stage 2 stream
    assert by["layer3.2.conv2"] == ((11,), (9,))
    assert by["fc"] == ((9,), ())  # the classes are never pruned
    assert len(deps) == 22  # 19 convs + 2 projections + fc


def test_covering_specs_cover_every_combination_near_the_lower_bound():
    rng = np.random.default_rng(0)
    widths = [tuple(range(int(rng.integers(1, 6)), 0, -1)) for _ in range(7)]
    reqs = [tuple(rng.choice(7, size=int(rng.integers(1, 4)), replace=False)) for _ in range(9)]
    rows = covering_specs(widths, reqs)
    assert rows[0] == tuple(w[0] for w in widths)  # the unpruned architecture first
    for r in reqs:
        need = set(itertools.product(*(widths[g] for g in r)))
        assert need <= {tuple(row[g] for g in r) for row in rows}, r
    # a triangle (ResNet's projection: stream a -> stream b, a -> inner c -> b), sizes 4, 8, 8:
    # 64 rows are necessary (|W_b| x |W_c|) and enough (a Latin-square assignment of a)
    tri = covering_specs([(4, 3, 2, 1), tuple(range(8, 0, -1)), tuple(range(8, 0, -1))], [(0, 1), (0, 2), (2, 1)])
    assert len(tri) == 64


def _tasks(arch, target, tmp_path, shape=SHAPE):
    return architecture_tasks("resnet20", arch, shape, target, tmp_path)


@pytest.mark.slow
def test_resnet20_grid_counts_design_figures_and_random_architectures(tmp_path):
    """DESIGN.md §4 counted 43 conv workloads for ResNet-20 with inner convs only on multiples of 8
    (40 inner-conv (C_in, C_out) pairs + stem + 2 projections); the enumeration finds the same.
    With every group and the search's own widths, the tasks of random architectures the real env
    proposes are all in the set."""
    target = resolve_target("host")
    groups, _ = layer_dependencies("resnet20", SHAPE)
    inner = tuple(g.index for g in groups if g.kind != "residual")
    design = grid_tasks("resnet20", SHAPE, target, GridSpec(8, "grid", groups=inner))
    assert design.conv_tasks == 43
    # + mean, matmul and transpose of the classifier, the flatten reshape, and one bias reshape per
    # distinct bias length: 8, 16, ..., 64 (8 of them)
    assert design.total == 43 + 3 + 1 + 8

    full = grid_tasks("resnet20", SHAPE, target, GridSpec(8), cache_dir=tmp_path / "cache")
    assert full.conv_tasks == 148 and full.total == 174 and not full.cache_hit
    again = grid_tasks("resnet20", SHAPE, target, GridSpec(8), cache_dir=tmp_path / "cache")
    assert again.cache_hit and again.architectures == 0 and again.total == full.total
    grid_set = TaskSet()
    for t in again.tasks:  # the cached tasks are the same workloads
        grid_set.add(t)
    assert all(t in grid_set for t in full.tasks) and len(grid_set) == full.total

    rng = np.random.default_rng(7)
    widths = group_widths([g.channels for g in groups], GridSpec(8))
    for _ in range(4):
        arch = tuple(int(rng.choice(w)) for w in widths)
        missing = [t.task_name for t in _tasks(arch, target, tmp_path) if t not in grid_set]
        assert not missing, (arch, missing)
    off_grid = _tasks((16, 16, 16, 16, 32, 32, 32, 32, 64, 64, 64, 60), target, tmp_path)
    assert any(t not in grid_set for t in off_grid)  # the check can fail: a width off the grid is a new task


@pytest.mark.slow
def test_small_grid_equals_brute_force_over_every_architecture(tmp_path):
    """Groups 0 (stage-1 stream), 1 (an inner conv) and 5 (stage-2 stream) on every multiple of 8:
    2 x 2 x 4 = 16 architectures, each extracted; their union is the grid's set, no more, no less."""
    target = resolve_target("host")
    shape = (1, 1, 8, 8)
    spec = GridSpec(8, "grid", groups=(0, 1, 5))
    grid = grid_tasks("resnet20", shape, target, spec)
    assert grid.architectures == 8  # the projection 0 -> 5 needs 2 x 4 combinations
    widths = group_widths([16, 16, 16, 16, 32, 32, 32, 32, 64, 64, 64, 64], spec)
    brute = TaskSet()
    archs = list(itertools.product(*widths))
    assert len(archs) == 16
    for arch in archs:
        for t in _tasks(arch, target, tmp_path, shape):
            brute.add(t)
    grid_set = TaskSet()
    for t in grid.tasks:
        grid_set.add(t)
    assert len(brute) == len(grid_set) == grid.total
    assert all(t in grid_set for t in brute.tasks) and all(t in brute for t in grid.tasks)


# -------------------------------------------------------------- tune --grid and a search on a warm database


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """ResNet-20's grid 32 warmed with 1 trial per task: only the stage-3 groups move (64 -> 32)."""
    root = tmp_path_factory.mktemp("grid")
    argv = ["tune", "--model", "resnet20", "--target", "host", "--grid", "32", "--trials", "1",
            "--cache-dir", str(root / "cache"), "--json"]
    code = main(argv)
    return root, argv, code


def _json_out(capsys):
    out, err = capsys.readouterr()
    return json.loads(out), err


@pytest.mark.slow
def test_tune_grid_covers_every_task_then_a_second_call_tunes_and_extracts_nothing(warm, capsys, monkeypatch):
    _root, argv, code = warm
    assert code == 0
    # by hand: stage-3 stream S and inner widths i in {64, 32}: conv2 (i -> S, shared by the 3 blocks) 4,
    # conv1 of blocks 1-2 (S -> i) 4, block 0's conv1 (32 -> i, stride 2) 2, projection (32 -> S) 2,
    # plus the 7 convs of stages 1-2 = 19 conv tasks; mean, matmul, transpose, flatten per S: 8,
    # bias reshapes of 16, 32, 64 channels: 3 -> 30 tasks
    import harness.compile.grid as grid_mod
    import harness.compile.tuning as tuning_mod

    def refuse(*a, **k):
        raise AssertionError("MetaSchedule called on a warm grid database")

    def no_extraction(*a, **k):
        raise AssertionError("tasks extracted again: the grid's task list is cached")

    monkeypatch.setattr(tuning_mod, "_tune", refuse)
    monkeypatch.setattr(grid_mod, "architecture_tasks", no_extraction)
    assert main(argv) == 0
    row, err = _json_out(capsys)
    assert row["tasks_total"] == 30 and row["conv_tasks"] == 19
    assert row["tasks_in_db"] == 30 and row["tasks_tuned_now"] == 0 and row["tasks_missing"] == 0
    assert row["grid_cache_hit"] and row["db_records_after"] == row["db_records_before"] >= 30
    assert row["group_widths"][9] == [64, 32] and row["group_widths"][0] == [16]
    assert "] tuning: 0/0 tasks" in err or "30 tasks (19 conv)" in err  # time-stamped lines, no terminal here
    # the first call re-timed every task (3 passes) into table_times.json; this one re-times nothing
    from harness.compile.table import TIMES_FILE

    assert row["retime"]["retimed_now"] == 0 and row["retime"]["fresh"] == row["retime"]["workloads"] == 30
    assert row["retime"]["build_s"] == 0.0 and not row["retime_only"]
    times = json.loads((Path(row["database"]) / TIMES_FILE).read_text())["workloads"]
    assert len(times) == 30 and all(e["passes"] == 3 for e in times.values())
    # --retime-only: nothing tuned (MetaSchedule still refused above), nothing stale, nothing timed
    assert main([*argv, "--retime-only"]) == 0
    row, _ = _json_out(capsys)
    assert row["retime_only"] and row["tasks_tuned_now"] == 0 and row["tasks_in_db"] == 30
    assert row["retime"]["retimed_now"] == 0 and row["tasks_missing"] == 0


@pytest.mark.slow
def test_search_on_the_warm_grid_database_tunes_nothing(warm, monkeypatch, tmp_path):
    from harness.compile import tuning as tuning_mod
    from harness.search.run import SearchConfig, run_search

    root, _, code = warm
    assert code == 0
    calls = []
    real = tuning_mod._tune

    def counting(tasks, db, config):
        calls.append([t.task_name for t in tasks])
        return real(tasks, db, config)

    monkeypatch.setattr(tuning_mod, "_tune", counting)
    out = run_search(SearchConfig(episodes=1, subset=500, train_epochs=1, eval_samples=100,
                                  tune_trials=1, finetune_epochs=0, repeat=5,
                                  env=dict(max_steps=3, round_to=32, target_ratio=0.5),
                                  out=str(tmp_path / "runs"), db=str(tmp_path / "r.db"),
                                  cache_dir=str(root / "cache")), progress=False)
    assert out["candidates"] >= 1 and out["best"]["spec"] != out["baseline"]["spec"]
    assert calls == [], calls  # every candidate's tasks were in the warmed database

    # the counter does count: an architecture off the grid (a stage-3 inner width of 48) tunes its new tasks
    from harness.compile.build import compile_onnx
    from harness.compile.export import export_onnx
    from harness.compile.tuning import TuningConfig
    from harness.pruning import rebuild

    model = rebuild("resnet20", ArchSpec((16, 16, 16, 16, 32, 32, 32, 32, 48, 64, 64, 64)))
    export_onnx(model.eval(), SHAPE, tmp_path / "off.onnx")
    res = compile_onnx(tmp_path / "off.onnx", resolve_target("host"), root / "cache", TuningConfig(trials_per_task=1))
    assert res.ok and res.artifact.manifest.tuning["tasks_tuned_now"] >= 1 and len(calls) >= 1


@pytest.mark.parametrize(("extra", "needle"), [
    (["--onnx", "m.onnx"], "--grid needs --model NAME"),
    (["--model", "resnet20", "--step-fraction", "1.5"], "--step-fraction 1.5 must be in (0, 1)"),
    (["--model", "resnet20", "--device", "sim:rpi4"], "simulator"),
    (["--model", "resnet20", "--retime-passes", "-1"], "--retime-passes -1 must be >= 0"),
    (["--model", "resnet20", "--retime-only", "--retime-passes", "0"], "--retime-only with --retime-passes 0"),
])
def test_tune_grid_bad_input_is_one_line_exit_2(capsys, tmp_path, extra, needle):
    code = main(["tune", "--target", "host", "--grid", "8", "--cache-dir", str(tmp_path / "c"), *extra])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.strip().count("\n") == 0 and needle in err, err
    assert not (tmp_path / "c").exists()  # refused before any work


def test_retime_only_needs_grid_one_line_exit_2(capsys, tmp_path):
    code = main(["tune", "--model", "resnet20", "--target", "host", "--retime-only", "--cache-dir",
                 str(tmp_path / "c")])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "--retime-only needs --grid N" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "c").exists()
