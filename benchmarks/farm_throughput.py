#!/usr/bin/env python3
"""Farm throughput on loopback SSH boards (real sshd on 127.0.0.1).

1. A batch of N (default 20) distinct artifacts measured through ``farm:loop``
   with one board vs two boards: wall time of each batch and their ratio
   (one/two; 2.0 would be perfect scaling).
2. Per-measurement overhead of the SSH path over ``local`` for the same
   artifact (already uploaded, daemon warm): mean wall time of
   ``SshDevice.measure`` / ``LocalDevice.measure`` with a tiny config, plus
   the one-off cost of the first SSH measurement (connect, temp dir,
   daemon + artifact upload with sha256 check, daemon start).

Both boards are this machine (2 cores here), so the farm ratio is a lower
bound of what separate boards give. Run::

    .venv/bin/python benchmarks/farm_throughput.py [--n 20] [--json OUT]
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
from devices.registry import make_device  # noqa: E402
from devices.local import LocalDevice  # noqa: E402
from tests.devices.conftest import build_tiny_artifact  # noqa: E402
from tests.devices.sshd_server import LoopbackSshd, board_toml, keygen  # noqa: E402

#: each measurement: 10 timed blocks of >= 20 ms (~0.25 s of board time with warm-up)
BATCH_CFG = MeasureConfig(warmup=2, number=0, repeat=10, min_repeat_ms=20, timeout_s=120)
#: overhead probe: as little board work as possible
TINY_CFG = MeasureConfig(warmup=0, number=1, repeat=1, min_repeat_ms=0, timeout_s=60, max_remeasure=0)


def distinct_artifacts(base: Path, out: Path, n: int) -> list[Path]:
    """N copies of the tiny artifact that differ in their manifest (distinct uploads, no daemon cache hits)."""
    import shutil

    arts = []
    for i in range(n):
        d = out / f"a{i:02d}"
        shutil.copytree(base, d)
        m = json.loads((d / "manifest.json").read_text())
        m["benchmark_copy"] = i
        (d / "manifest.json").write_text(json.dumps(m))
        arts.append(d)
    return arts


def batch(device, arts: list[Path]) -> tuple[float, int]:
    t0 = time.perf_counter()
    futures = [device.submit(a, BATCH_CFG) for a in arts]
    ok = sum(f.result().ok for f in futures)
    return time.perf_counter() - t0, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="artifacts in the batch (default 20)")
    ap.add_argument("--probes", type=int, default=60, help="measurements for the overhead ratio (default 60)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hilprune-farm-bench-"))
    pub = keygen(root / "client")
    servers = [LoopbackSshd(root / f"s{i}", pub).start() for i in (1, 2)]
    try:
        base = build_tiny_artifact(root / "tiny")
        arts = distinct_artifacts(base, root / "arts", args.n)
        boards = [board_toml(f"b{i + 1}", s, root / "client") for i, s in enumerate(servers)]
        inv1 = root / "one.toml"
        inv1.write_text(f'[farm]\nlease_db = "{root / "l1.sqlite"}"\n' + boards[0])
        inv2 = root / "two.toml"
        inv2.write_text(f'[farm]\nlease_db = "{root / "l2.sqlite"}"\n' + "\n".join(boards))
        figures: dict = {"n": args.n}
        for label, inv in (("one_board", inv1), ("two_boards", inv2)):
            farm = make_device("farm:loop", inventory=inv)
            try:
                farm.hello()  # sessions open lazily; count them in the batch like a real run would
                wall, ok = batch(farm, arts)
            finally:
                farm.close()
            figures[f"{label}_wall_s"] = round(wall, 2)
            figures[f"{label}_ok"] = ok
        figures["speedup_two_vs_one"] = round(figures["one_board_wall_s"] / figures["two_boards_wall_s"], 2)

        ssh = make_device("ssh:b1", inventory=inv1)
        local = LocalDevice(env={"TVM_NUM_THREADS": "1"})
        try:
            t0 = time.perf_counter()
            assert ssh.measure(base, TINY_CFG).ok
            figures["ssh_first_measure_s"] = round(time.perf_counter() - t0, 3)
            t0 = time.perf_counter()
            assert local.measure(base, TINY_CFG).ok
            figures["local_first_measure_s"] = round(time.perf_counter() - t0, 3)
            times: dict[str, list[float]] = {"ssh": [], "local": []}
            for _ in range(args.probes):  # interleaved
                for name, dev in (("ssh", ssh), ("local", local)):
                    t0 = time.perf_counter()
                    r = dev.measure(base, TINY_CFG)
                    times[name].append(time.perf_counter() - t0)
                    assert r.ok, r.error
            for name in times:
                figures[f"{name}_per_measure_ms"] = round(statistics.median(times[name]) * 1e3, 2)
                figures[f"{name}_per_measure_min_ms"] = round(min(times[name]) * 1e3, 2)
            figures["ssh_over_local_ratio"] = round(figures["ssh_per_measure_ms"] / figures["local_per_measure_ms"], 2)
            figures["ssh_over_local_ratio_min"] = round(figures["ssh_per_measure_min_ms"]
                                                        / figures["local_per_measure_min_ms"], 2)
            figures["loadavg_1min"] = round(os.getloadavg()[0], 2)
        finally:
            ssh.close()
            local.close()
    finally:
        for s in servers:
            s.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
