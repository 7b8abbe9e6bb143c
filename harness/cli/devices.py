"""``hilprune devices list|check``: the farm inventory and the health of its boards.

    hilprune devices list  --inventory FILE [--json]
    hilprune devices check --inventory FILE [--json] [--board NAME ...] [--golden DIR] [--no-measure]

``list`` reads the inventory and the lease database only (no network):
board, endpoint, target, arch, tags, who holds its lease, and whether it is
quarantined (by whom, until when, why). ``check`` contacts every board in
parallel: SSH reachability (host key, auth), the daemon's hello (Python,
numpy, TVM runtime, ONNX Runtime, glibc, machine), the machine against the
target's architecture, the thermal/throttling state, and a golden-model
measurement (a tiny conv net compiled for the board's target and cached, or
``--golden DIR``, refused when the selected boards have several targets).

Each board ends ``healthy``, ``busy`` (leased by another holder: its health
is unknown, and it is neither healthy nor unhealthy) or ``unhealthy``. A
healthy board's quarantine is cleared. An unhealthy board is quarantined for
``[farm] quarantine_s``, so searches and nightly runs on this controller skip
it, only for a fault of the board itself: unreachable, host key or auth
refused, daemon did not start, timeout, lost connection, wrong machine
architecture, no TVM runtime, or a golden measurement failing with one of
the farm's board-fault kinds (``devices.farm.BOARD_FAULTS``). Other problems
(the golden artifact does not load or run there, unstable timings) are
reported but quarantine nothing, as the farm does not for them either.
Exit status 0 when every board is healthy or busy, 1 if any is unhealthy,
2 on a bad inventory or a ``--golden`` that cannot fit every selected board.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness.cli.args import nonneg_float

__all__ = ["register", "check_board", "golden_artifact"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``devices list`` and ``devices check``."""
    d = subparsers.add_parser("devices", help="list the farm inventory or check its boards",
                              description="The device farm: list the boards of an inventory, or check them.")
    sub = d.add_subparsers(dest="devices_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="boards of an inventory (no network)")
    ls.add_argument("--inventory", required=True, help="farm inventory TOML file")
    ls.add_argument("--json", action="store_true", help="JSON instead of a table")
    ls.set_defaults(func=cmd_list)
    ck = sub.add_parser("check", help="reach every board, say hello, measure a golden model; exit 1 if unhealthy")
    ck.add_argument("--inventory", required=True, help="farm inventory TOML file")
    ck.add_argument("--json", action="store_true", help="JSON instead of a table")
    ck.add_argument("--board", action="append", default=None, help="only this board (repeatable)")
    ck.add_argument("--golden", default=None, help="artifact dir to measure (default: a tiny model compiled for "
                                                   "each board's target, cached)")
    ck.add_argument("--no-measure", action="store_true", help="skip the golden-model measurement")
    ck.add_argument("--cache-dir", default=None, help="artifact cache for the golden model")
    ck.add_argument("--lease-wait-s", type=nonneg_float, default=30.0, help="wait this long for a leased board (s)")
    ck.set_defaults(func=cmd_check)


def _load(args: argparse.Namespace):
    from devices.inventory import InventoryError, load_inventory

    try:
        return load_inventory(args.inventory)
    except InventoryError as exc:
        raise ValueError(str(exc)) from None


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    cells = [[str(r.get(c, "") if r.get(c) is not None else "-") for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    """Print the inventory's boards; exit 0."""
    from devices.lease import LeaseManager

    inv = _load(args)
    leases = LeaseManager(inv.farm.lease_db, ttl_s=inv.farm.lease_ttl_s)
    quarantines = leases.quarantines()
    rows = []
    for b in inv.boards:
        held = leases.holder_of(b.name)
        q = quarantines.get(b.name)
        rows.append({"name": b.name, "endpoint": f"{b.user}@{b.host}:{b.port}", "target": b.target, "arch": b.arch,
                     "tags": ",".join(b.tags), "python": b.python,
                     "host_key": "pinned" if b.host_key else f"known_hosts {b.known_hosts}",
                     "lease": f"{held['holder']} until {_clock(held['expires_at'])}" if held else "free",
                     "quarantine": None if q is None else {"reason": q.reason, "holder": q.holder,
                                                           "since": q.since, "until": q.until},
                     "health": "ok" if q is None else f"quarantined until {_clock(q.until)}"})
    if args.json:
        print(json.dumps({"inventory": str(inv.path), "boards": rows}, indent=2))
    else:
        print(_table(rows, ["name", "endpoint", "target", "arch", "tags", "host_key", "lease", "health"]))
        for r in rows:
            if r["quarantine"]:
                print(f"{r['name']}: quarantined by {r['quarantine']['holder']}: {r['quarantine']['reason']}",
                      file=sys.stderr)
    return 0


def _clock(t: float) -> str:
    """Unix time -> local ``HH:MM:SS``."""
    return time.strftime("%H:%M:%S", time.localtime(t))


_TINY_CACHE: dict[str, Path] = {}


def golden_artifact(target_name: str, cache_dir: Path) -> Path:
    """A tiny conv net (1x1x8x8 -> 10) compiled for ``target_name``, cached in ``cache_dir``.

    Raises:
        ValueError: unknown target or a failed build (message says why).
    """
    if target_name in _TINY_CACHE:
        return _TINY_CACHE[target_name]
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from harness.compile.build import compile_onnx
    from harness.compile.targets import resolve_target
    from harness.compile.tuning import TuningConfig

    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
             "b": rng.standard_normal((4,)).astype(np.float32),
             "gw": rng.standard_normal((10, 4)).astype(np.float32),
             "gb": rng.standard_normal((10,)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "gw", "gb"], ["output"], transB=1)]
    graph = helper.make_graph(nodes, "golden", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    cache_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = cache_dir / "golden-tiny.onnx"
    onnx.save(model, str(onnx_path))
    result = compile_onnx(onnx_path, resolve_target(target_name), cache_dir, TuningConfig(trials_per_task=0))
    if not result.ok:
        raise ValueError(f"golden model for {target_name}: {result.error}")
    _TINY_CACHE[target_name] = result.artifact.path
    return result.artifact.path


def check_board(board, leases, golden: Path | None, lease_wait_s: float = 30.0) -> dict[str, Any]:
    """Health of one board as a dict; never raises.

    Keys: ``healthy`` (bool), ``busy`` (bool: leased by another holder, so its
    health is unknown; not a fault of the board), ``board_fault`` (bool: the
    problem is the board's own, see the module doc, so it deserves a
    quarantine), ``problem`` (text or None), and what was learnt (hello facts,
    golden timing, thermal state).
    """
    from devices.base import DeviceUnavailable, MeasureConfig
    from devices.farm import BOARD_FAULTS
    from devices.inventory import normalise_arch
    from devices.ssh import BoardState, SshDevice

    row: dict[str, Any] = {"name": board.name, "endpoint": f"{board.host}:{board.port}", "target": board.target,
                           "arch": board.arch, "healthy": False, "busy": False, "board_fault": False,
                           "problem": None}
    dev = SshDevice(board, leases, lease_wait_s=lease_wait_s)
    t0 = time.monotonic()
    try:
        try:
            hello = dev.hello()
        except DeviceUnavailable as exc:
            row["problem"] = str(exc)
            row["busy"] = dev.state is BoardState.BUSY
            if row["busy"]:
                held = leases.holder_of(board.name) if leases is not None else None
                if held:
                    row["leased_by"] = held["holder"]
                    row["problem"] = f"leased by {held['holder']} until {_clock(held['expires_at'])}"
            else:  # unreachable, host key/auth, daemon start, timeout, lost connection, wrong machine
                row["board_fault"] = exc.error.kind in BOARD_FAULTS or dev.last_fatal
            return row
        row["reachable"] = True
        row["connect_s"] = round(time.monotonic() - t0, 2)
        for k in ("python", "numpy", "tvm", "onnxruntime", "glibc", "machine", "cpu_count"):
            row[k] = hello.get(k)
        # the session already refuses a wrong machine; `arm64`/`amd64` spellings are the same arch
        row["arch_ok"] = normalise_arch(str(hello.get("machine") or "")) == board.arch
        if not row["arch_ok"]:
            row["problem"] = f"machine {hello.get('machine')} is not the target's {board.arch}"
            row["board_fault"] = True
            return row
        if hello.get("tvm") is None:
            row["problem"] = "no TVM runtime on the board"
            row["board_fault"] = True
            return row
        if golden is not None:
            r = dev.measure(golden, MeasureConfig(warmup=2, number=0, repeat=10, min_repeat_ms=20, timeout_s=120))
            if not r.ok:
                row["problem"] = f"golden measurement: {r.error.kind.value}: {r.error.message.splitlines()[0]}"
                row["board_fault"] = r.error.kind in BOARD_FAULTS
                return row
            m = r.value
            row["golden_p50_ms"] = round(m.stats.p50_ms, 4)
            row["golden_cov"] = round(m.stats.cov, 3)
            row["golden_output_sha256"] = m.output_sha256[:16]
            state = m.device_state_after
            temps = state.get("temps_c") or {}
            row["temp_c"] = max(temps.values()) if temps else None
            row["throttled"] = state.get("throttled")
            row["governor"] = state.get("governor")
            row["freq_khz"] = state.get("cur_freq_khz")
            row["nvpmodel"] = state.get("nvpmodel")
        row["healthy"] = True
        return row
    except Exception as exc:  # noqa: BLE001 - a report row, not a crash
        row["problem"] = f"{type(exc).__name__}: {exc}"
        return row
    finally:
        dev.close()


def _state(row: dict[str, Any]) -> str:
    return "healthy" if row["healthy"] else "busy" if row["busy"] else "unhealthy"


def cmd_check(args: argparse.Namespace) -> int:
    """Check the boards; print a table (or JSON); exit 1 if any is unhealthy (busy boards are not).

    Raises:
        ValueError: ``--golden`` with selected boards of several targets.
    """
    from devices.lease import LeaseManager

    inv = _load(args)
    boards = [inv.board(n) for n in args.board] if args.board else list(inv.boards)
    targets = sorted({b.target for b in boards})
    if args.golden and len(targets) > 1:
        raise ValueError(f"--golden {args.golden} is one artifact but the selected boards have targets "
                         f"{', '.join(targets)}; select the boards of one target with --board, or leave "
                         f"--golden out (a golden model is then compiled per target)")
    leases = LeaseManager(inv.farm.lease_db, ttl_s=inv.farm.lease_ttl_s)
    goldens: dict[str, Path | None] = {}
    if not args.no_measure:
        if args.golden:
            goldens = {b.target: Path(args.golden) for b in boards}
        else:
            from harness.paths import default_cache_dir

            cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
            for t in targets:
                goldens[t] = golden_artifact(t, cache)
    with ThreadPoolExecutor(max_workers=max(1, len(boards))) as pool:
        rows = list(pool.map(lambda b: check_board(b, leases, goldens.get(b.target), args.lease_wait_s), boards))
    for r in rows:  # share what was found with the controller's other runs (devices/lease.py)
        r["state"] = _state(r)
        r["quarantine"] = None
        if r["healthy"]:
            r["quarantine_cleared"] = leases.clear_quarantine(r["name"])
        elif r["board_fault"] and not r["busy"]:
            q = leases.quarantine(r["name"], f"devices check: {r['problem']}", inv.farm.quarantine_s)
            r["quarantine"] = {"reason": q.reason, "holder": q.holder, "since": q.since, "until": q.until}
    leases.close()
    if args.json:
        print(json.dumps({"inventory": str(inv.path), "boards": rows}, indent=2))
    else:
        print(_table(rows, ["name", "endpoint", "target", "machine", "python", "numpy", "tvm", "glibc",
                            "temp_c", "throttled", "golden_p50_ms", "state"]))
        for r in rows:
            if r["busy"]:
                print(f"{r['name']}: busy: {r['problem']} (health unknown; not quarantined, not a failure)",
                      file=sys.stderr)
            elif r["problem"]:
                why = (f" (quarantined until {_clock(r['quarantine']['until'])})" if r["quarantine"]
                       else " (not quarantined: not a fault of the board)")
                print(f"{r['name']}: {r['problem']}{why}", file=sys.stderr)
            elif r.get("quarantine_cleared"):
                print(f"{r['name']}: healthy again, quarantine cleared", file=sys.stderr)
    return 0 if all(r["healthy"] or r["busy"] for r in rows) else 1
