#!/usr/bin/env python3
"""The grid warm-up budget: MetaSchedule trials per task -> warm-up time and TVM / ONNX Runtime latency.

A grid warm-up (``hilprune tune --grid 8``) is paid once per target, so it can
afford more trials per task than a search's on-the-fly tuning (8). This script
measures the curve that chooses its default, for ResNet-20 at 1x1x28x28 on
this host (target ``host``), in one run:

For each budget (trials per task, ``--trials``, default 8,16,32,64), from an
empty database of its own:

1. tune the unpruned model's tasks (``harness.compile.grid.architecture_tasks``,
   then ``harness.compile.tuning.tune_tasks`` in groups of 4, as the warm-up does):
   wall seconds and seconds per task; with ``--full-grid`` the whole grid's tasks
   instead (hours on 2 cores at 32+ trials);
2. the grid warm-up time: measured with ``--full-grid``, otherwise *estimated* as
   seconds per task x the grid's task count (labelled so; the unpruned model's
   tasks are the grid's widest, so per task they cost at least as much as the rest);
3. build the unpruned model through :class:`harness.pipeline.Pipeline` (all its
   tasks are in the database: nothing is tuned) and time the TVM library and the
   same ONNX file under ONNX Runtime (``backend="onnxruntime"``) on this host
   alternately, ``--rounds`` rounds, the order swapped every round (A B, B A, ...):
   the per-round ratio TVM p50 / ORT p50 and its median (DESIGN.md §5: ratios
   measured side by side, since the absolute p50 of one artifact drifts by tens of
   percent over minutes on a shared machine);
4. at the end, every budget's library and ONNX Runtime in one session, each round
   timing all of them in a rotated order: the headline TVM/ORT ratios, taken under
   one load. (Measured here: ONNX Runtime's p50 moves with the load far more than a
   TVM library's, 0.26 ms idle vs 0.65-1.1 ms at load 3-4.5 on 2 cores, so ratios
   taken minutes apart are not comparable across budgets.)

Every figure is ``measured`` on this host except the estimated warm-up times.
The load average at the start and end of each budget is printed beside it.

Run::

    .venv/bin/python benchmarks/warmup_budget.py [--trials 8,16,32,64] [--rounds 7] [--full-grid]
                                                 [--quick] [--json OUT] [--cache-dir DIR]

``--quick``: budgets 8,16 and 3 rounds (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devices.base import MeasureConfig  # noqa: E402
from devices.local import LocalDevice  # noqa: E402

MODEL = "resnet20"
SHAPE = (1, 1, 28, 28)
MEASURE = MeasureConfig(warmup=3, number=0, repeat=15, min_repeat_ms=10.0, timeout_s=600.0)


def load() -> str:
    """The 1-minute load average and the core count, for the figures' context."""
    return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def side_by_side(pipeline, prepared, rounds: int) -> dict:
    """TVM p50 and ONNX Runtime p50 of one artifact, alternately, order swapped every round."""
    tvm_p50, ort_p50 = [], []
    for r in range(rounds):
        order = (("tvm", tvm_p50), ("onnxruntime", ort_p50))
        for backend, out in (order if r % 2 == 0 else order[::-1]):
            res = pipeline.measure(prepared, backend=backend)
            if not res.ok:
                raise SystemExit(f"measuring {backend}: {res.error.kind}: {res.error.message}")
            out.append(res.p50_ms)
    ratios = [t / o for t, o in zip(tvm_p50, ort_p50)]
    return {"tvm_p50_ms_rounds": [round(x, 4) for x in tvm_p50], "ort_p50_ms_rounds": [round(x, 4) for x in ort_p50],
            "ratio_rounds": [round(x, 3) for x in ratios], "ratio_median": round(statistics.median(ratios), 3),
            "tvm_p50_ms": round(statistics.median(tvm_p50), 4), "ort_p50_ms": round(statistics.median(ort_p50), 4)}


def one_budget(trials: int, tasks, grid_total: int, onnx: Path, root: Path, rounds: int, full_grid: bool) -> dict:
    from harness.compile.targets import resolve_target
    from harness.compile.tuning import TuningConfig, database_info, tune_tasks
    from harness.pipeline import Pipeline, PipelineError

    db = root / f"db-t{trials}"
    tuning = TuningConfig(trials_per_task=trials, database_dir=db, tasks_per_call=4)
    row: dict = {"trials_per_task": trials, "load_before": load()}
    print(f"[{time.strftime('%H:%M:%S')}] {trials} trials per task: tuning {len(tasks)} tasks "
          f"({'the whole grid' if full_grid else 'the unpruned model'}), {row['load_before']}", flush=True)
    report = tune_tasks(tasks, db, tuning)
    if not report.tasks_tuned_now:  # a work dir reused from an earlier run: its tuning figures are in its output
        per_task = None
    else:
        per_task = report.seconds / report.tasks_tuned_now
    row.update(tasks_tuned=report.tasks_tuned_now, tune_s=round(report.seconds, 1),
               s_per_task=None if per_task is None else round(per_task, 2), records=database_info(db).records)
    if per_task is None:
        row.update(grid_warmup_s=None, grid_warmup_source="not tuned in this run")
    elif full_grid:
        row.update(grid_warmup_s=round(report.seconds, 1), grid_warmup_source="measured")
    else:
        row.update(grid_warmup_s=round(per_task * grid_total, 1), grid_warmup_source="estimated")
    device = LocalDevice()
    try:
        pipeline = Pipeline.for_device(device, resolve_target("host"), tuning, MEASURE, root / "cache")
        prepared = pipeline.compile(onnx)
        if isinstance(prepared, PipelineError):
            raise SystemExit(f"{trials} trials: {prepared.kind}: {prepared.message}")
        row["tasks_tuned_at_build"] = prepared.manifest.tuning.get("tasks_tuned_now")
        row["artifact"] = str(prepared.path)
        if rounds:
            row.update(side_by_side(pipeline, prepared, rounds))
    finally:
        device.close()
    row["load_after"] = load()
    if per_task is None:
        line = "    nothing to tune: the database of this budget is already warm (tuning figures: the earlier run)"
    else:
        line = (f"    tuned {row['tasks_tuned']} tasks in {row['tune_s']} s ({row['s_per_task']} s/task); grid "
                f"warm-up {row['grid_warmup_s'] / 60:.1f} min ({row['grid_warmup_source']})")
    if rounds:
        line += (f"; TVM p50 {row['tvm_p50_ms']} ms, ORT p50 {row['ort_p50_ms']} ms, TVM/ORT per round "
                 f"{row['ratio_rounds']} -> median {row['ratio_median']} (measured)")
    print(f"{line}; {row['load_after']}", flush=True)
    return row


def all_side_by_side(rows: list[dict], root: Path, rounds: int) -> dict:
    """Every budget's TVM library and ONNX Runtime in one session: each round times all of them once,
    the order rotated by one every round, so a change of load hits every budget alike (the per-budget
    figures above were taken minutes apart, under whatever load each had). Ratios per round against
    that round's ONNX Runtime p50."""
    from harness.compile.targets import resolve_target
    from harness.compile.tuning import TuningConfig
    from harness.pipeline import Pipeline, Prepared

    items = [("ort", Prepared.at(rows[0]["artifact"]), "onnxruntime")]
    items += [(f"tvm-{r['trials_per_task']}", Prepared.at(r["artifact"]), "tvm") for r in rows]
    p50s: dict[str, list[float]] = {name: [] for name, _, _ in items}
    device = LocalDevice()
    try:
        pipe = Pipeline.for_device(device, resolve_target("host"), TuningConfig(trials_per_task=0), MEASURE,
                                   root / "cache")
        for r in range(rounds):
            for name, prepared, backend in items[r % len(items):] + items[:r % len(items)]:
                res = pipe.measure(prepared, backend=backend)
                if not res.ok:
                    raise SystemExit(f"measuring {name}: {res.error.kind}: {res.error.message}")
                p50s[name].append(res.p50_ms)
    finally:
        device.close()
    out = {"ort_p50_ms": round(statistics.median(p50s["ort"]), 4), "load_after": load(), "budgets": {}}
    for name, _, _ in items[1:]:
        ratios = [t / o for t, o in zip(p50s[name], p50s["ort"])]
        out["budgets"][name] = {"tvm_p50_ms": round(statistics.median(p50s[name]), 4),
                                "ratio_rounds": [round(x, 3) for x in ratios],
                                "ratio_median": round(statistics.median(ratios), 3)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", default="8,16,32,64", help="budgets, trials per task, comma-separated")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved TVM/ORT rounds per budget (default 7)")
    ap.add_argument("--grid", type=int, default=8, help="the grid (round-to) whose task count is warmed (default 8)")
    ap.add_argument("--full-grid", action="store_true", help="tune every grid task per budget (measured warm-up)")
    ap.add_argument("--rounds-each", type=int, default=None,
                    help="interleaved TVM/ORT rounds right after each budget's tuning (default --rounds; 0 = none)")
    ap.add_argument("--quick", action="store_true", help="budgets 8,16 and 3 rounds")
    ap.add_argument("--cache-dir", default=None, help="work directory (default: a new temp dir)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    budgets = [8, 16] if args.quick else [int(t) for t in args.trials.split(",")]
    rounds = 3 if args.quick else args.rounds

    import torch

    from harness.compile.export import export_onnx
    from harness.compile.grid import GridSpec, architecture_tasks, grid_tasks
    from harness.compile.targets import resolve_target
    from harness.models import build_model

    root = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="hilprune-warmup-budget-"))
    root.mkdir(parents=True, exist_ok=True)
    target = resolve_target("host")
    onnx = root / "resnet20.onnx"
    with torch.no_grad():
        export_onnx(build_model(MODEL, in_channels=1, input_size=SHAPE[2:], seed=0).eval(), SHAPE, onnx)
    grid = grid_tasks(MODEL, SHAPE, target, GridSpec(round_to=args.grid), cache_dir=root / "cache")
    full = [16, 16, 16, 16, 32, 32, 32, 32, 64, 64, 64, 64]
    unpruned = architecture_tasks(MODEL, full, SHAPE, target, root)
    figures = {"model": MODEL, "input_shape": list(SHAPE), "target": target.target, "grid": args.grid,
               "grid_tasks": grid.total, "grid_conv_tasks": grid.conv_tasks, "unpruned_tasks": len(unpruned),
               "rounds": rounds, "work_dir": str(root), "budgets": []}
    print(f"{MODEL} {'x'.join(map(str, SHAPE))}, target {target.canonical_json()}: grid {args.grid} has "
          f"{grid.total} tasks ({grid.conv_tasks} conv; enumerated in {grid.enumerate_s:.0f} s), the unpruned "
          f"model {len(unpruned)}; budgets {budgets}, {rounds} interleaved rounds; {load()}", flush=True)
    for trials in budgets:
        figures["budgets"].append(one_budget(trials, grid.tasks if args.full_grid else unpruned, grid.total, onnx,
                                             root, rounds if args.rounds_each is None else args.rounds_each,
                                             args.full_grid))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
    print(f"[{time.strftime('%H:%M:%S')}] all budgets and ONNX Runtime side by side, {rounds} rounds; {load()}",
          flush=True)
    joint = figures["side_by_side"] = all_side_by_side(figures["budgets"], root, rounds)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    print(f"\nside by side in one session (ORT p50 {joint['ort_p50_ms']:.3f} ms; {joint['load_after']}); "
          "tuning figures from each budget's own run")
    print(f"{'trials':>6} {'tune s':>7} {'s/task':>7} {'grid warm-up':>16} {'TVM ms':>7} {'TVM/ORT':>8} "
          f"{'rounds min..max':>16}")
    for r in figures["budgets"]:
        j = joint["budgets"][f"tvm-{r['trials_per_task']}"]
        lo, hi = min(j["ratio_rounds"]), max(j["ratio_rounds"])
        tuned = (f"{r['tune_s']:>7.0f} {r['s_per_task']:>7.1f} {r['grid_warmup_s'] / 60:>6.1f} min "
                 f"{r['grid_warmup_source'][:4]:>5}") if r["s_per_task"] is not None else f"{'(earlier run)':>32}"
        print(f"{r['trials_per_task']:>6} {tuned} {j['tvm_p50_ms']:>7.3f} "
              f"{j['ratio_median']:>8.2f} {lo:>7.2f}..{hi:<7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
