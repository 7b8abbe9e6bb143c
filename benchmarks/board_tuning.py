#!/usr/bin/env python3
"""Tuning on a board vs on this host: the cost of timing MetaSchedule trials through the daemon over SSH.

The same model (ResNet-20 at 1x1x28x28), target and tuning budget are tuned
twice from empty databases, in one run:

1. ``LocalRunner`` (MetaSchedule's own, this host) — what ``--device local`` does;
2. the board runner (``harness/compile/board_runner.py``) on a loopback SSH
   board (a real sshd on 127.0.0.1 running the device daemon) — what
   ``--device ssh:BOARD`` / ``farm:TAG`` do: each candidate linked here,
   uploaded, timed by the daemon's ``time_func``.

Both go through :class:`harness.pipeline.Pipeline` and use the board's own
``host`` target (its hello), so the code tuned is the same. Printed: tuning
wall time, trials (records added), trials per minute of each, and the
overhead ratio board/local of seconds per trial (goal <= 1.10). With
``--repeats N`` the two tunings alternate N times (local, board, local, ...,
each from an empty database) so a change of the machine's load hits both;
the ratio of the fastest of each is the overhead, the per-pair ratios its
spread. Then the two
tuned artifacts are measured side by side on this host (interleaved rounds,
A B A B ...): their p50s and the per-round ratio, which says whether the
board-tuned schedules are as good. Both runners time on this machine, with
TVM_NUM_THREADS=1, so load from elsewhere hits them alike.

Run::

    .venv/bin/python benchmarks/board_tuning.py [--trials 4] [--rounds 5] [--json OUT]
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

os.environ["TVM_NUM_THREADS"] = "1"  # before TVM loads: LocalRunner's workers and the board daemon alike
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devices.base import MeasureConfig  # noqa: E402
from devices.local import LocalDevice  # noqa: E402
from devices.registry import make_device  # noqa: E402
from tests.devices.sshd_server import LoopbackSshd, board_toml, keygen  # noqa: E402

SHAPE = (1, 1, 28, 28)
MEASURE = MeasureConfig(warmup=3, number=0, repeat=15, min_repeat_ms=10.0, timeout_s=600.0, num_threads=1)


def tune_once(label: str, device, target, onnx: Path, cache: Path, trials: int) -> dict:
    from harness.compile.tuning import TuningConfig, database_dir_for, database_info
    from harness.pipeline import Pipeline, PipelineError

    tuning = TuningConfig(trials_per_task=trials, num_threads=1)
    pipeline = Pipeline.for_device(device, target, tuning, MEASURE, cache)
    db = database_dir_for(cache, pipeline.target.canonical_json(), tuning)
    before = database_info(db).records
    t0 = time.perf_counter()
    prepared = pipeline.compile(onnx)
    wall = time.perf_counter() - t0
    if isinstance(prepared, PipelineError):
        raise SystemExit(f"{label}: {prepared.kind}: {prepared.message}")
    info = prepared.manifest.tuning
    trials_done = database_info(db).records - before
    tune_s = float(info["tune_s"])
    row = {"runner": label, "tasks": info["tasks_total"], "tasks_tuned_now": info["tasks_tuned_now"],
           "trials": trials_done, "tune_s": round(tune_s, 1), "compile_wall_s": round(wall, 1),
           "trials_per_min": round(60.0 * trials_done / tune_s, 1) if tune_s else None,
           "s_per_trial": tune_s / trials_done if trials_done else None, "artifact": str(prepared.path),
           "tuned_by": info.get("runner")}
    print(f"{label:>6}: {row['tasks']} tasks, {trials_done} trials in {tune_s:.1f} s "
          f"({row['trials_per_min']} trials/min), runner {row['tuned_by']}", flush=True)
    return row


def side_by_side(a: Path, b: Path, rounds: int) -> dict:
    """p50 of two artifacts on this host, interleaved A B A B ... in one daemon session."""
    from harness.compile.targets import resolve_target
    from harness.compile.tuning import TuningConfig
    from harness.pipeline import Pipeline, Prepared

    dev = LocalDevice(env={"TVM_NUM_THREADS": "1"})
    try:
        pipe = Pipeline.for_device(dev, resolve_target("host"), TuningConfig(trials_per_task=0), MEASURE, Path("."))
        pa, pb = Prepared.at(a), Prepared.at(b)
        p50_a, p50_b = [], []
        for _ in range(rounds):
            for prepared, out in ((pa, p50_a), (pb, p50_b)):
                r = pipe.measure(prepared)
                if not r.ok:
                    raise SystemExit(f"measuring {prepared.path}: {r.error.kind}: {r.error.message}")
                out.append(r.p50_ms)
    finally:
        dev.close()
    ratios = [y / x for x, y in zip(p50_a, p50_b)]
    return {"local_tuned_p50_ms": round(statistics.median(p50_a), 4), "board_tuned_p50_ms": round(
        statistics.median(p50_b), 4), "board_over_local_rounds": [round(r, 3) for r in ratios],
        "board_over_local_median": round(statistics.median(ratios), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4, help="MetaSchedule trials per task (default 4)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the side-by-side (default 5)")
    ap.add_argument("--repeats", type=int, default=1, help="alternating local/board tunings (default 1)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    from harness.compile.export import export_onnx
    from harness.compile.targets import board_target
    from harness.models import build_model

    root = Path(tempfile.mkdtemp(prefix="hilprune-board-tuning-"))
    pub = keygen(root / "client")
    sshd = LoopbackSshd(root / "sshd", pub).start()
    figures: dict = {"model": "resnet20", "input_shape": list(SHAPE), "trials_per_task": args.trials}
    try:
        onnx = root / "resnet20.onnx"
        export_onnx(build_model("resnet20", in_channels=1, input_size=SHAPE[2:], seed=0), SHAPE, onnx)
        inv = root / "farm.toml"
        inv.write_text(f'[farm]\nlease_db = "{root / "l.sqlite"}"\n' + board_toml("b1", sshd, root / "client"))
        board = make_device("ssh:b1", inventory=inv)
        local = LocalDevice(env={"TVM_NUM_THREADS": "1"})
        try:
            target = board_target(board.hello(), "b1")  # one target for both: the board's own CPU
            figures["target"] = target.target
            print(f"target {target.canonical_json()}; {args.trials} trials per task, empty databases", flush=True)
            runs = {"local": [], "board": []}
            for i in range(args.repeats):
                runs["local"].append(tune_once("local", local, target, onnx, root / f"cache-local-{i}", args.trials))
                runs["board"].append(tune_once("board", board, target, onnx, root / f"cache-board-{i}", args.trials))
        finally:
            board.close()
            local.close()
        figures["runs"] = runs
        lo = min(runs["local"], key=lambda r: r["s_per_trial"])
        bo = min(runs["board"], key=lambda r: r["s_per_trial"])
        figures["local"], figures["board"] = lo, bo
        figures["overhead_ratio_s_per_trial"] = round(bo["s_per_trial"] / lo["s_per_trial"], 3)
        figures["overhead_ratio_per_pair"] = [round(b["s_per_trial"] / a["s_per_trial"], 3)
                                              for a, b in zip(runs["local"], runs["board"])]
        print(f"overhead board/local, seconds per trial (fastest of {args.repeats} each): "
              f"{figures['overhead_ratio_s_per_trial']:.3f} (goal <= 1.10); per pair "
              f"{figures['overhead_ratio_per_pair']}", flush=True)
        figures["side_by_side"] = side_by_side(Path(lo["artifact"]), Path(bo["artifact"]), args.rounds)
        s = figures["side_by_side"]
        print(f"tuned artifacts on this host, {args.rounds} interleaved rounds: local-tuned p50 "
              f"{s['local_tuned_p50_ms']:.3f} ms, board-tuned p50 {s['board_tuned_p50_ms']:.3f} ms, "
              f"board/local per round {s['board_over_local_rounds']} (median {s['board_over_local_median']})")
    finally:
        sshd.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
