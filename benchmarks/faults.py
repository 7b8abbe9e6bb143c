#!/usr/bin/env python3
"""Fault figures on loopback OpenSSH boards (real sshd on 127.0.0.1) and the bad-input corpus.

Per fault (scenarios of ``tests/devices/faults.py`` and ``tests/search_faults.py``,
the same ones ``pytest -m faults`` asserts on):

- ``detect_s``: seconds from the fault to the controller's error (for a
  controller killed with -9: until its board daemon was gone; for a killed
  search: until the store shows the run ``interrupted``);
- ``board_clean_s``: seconds until no process of ours and no temp dir is left;
- ``orphans``: processes of ours left on the board (command line naming the
  board's temp area) after the bounded wait;
- ``temp_dirs``: ``hilprune-run.*`` dirs left;
- ``lost``: measurements lost (a request that found no board; rows missing
  after a resume).

Then the bad-input corpus (``tests/bad_inputs.py``) and the daemon's malformed
requests: tried / clear (exit 2, one line naming the culprit; for the daemon,
an error reply and a daemon still serving) / traceback.

    .venv/bin/python benchmarks/faults.py [--no-search] [--json OUT]

``[farm] dead_link_s`` is 3 s here (the default is 30 s).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.devices import faults  # noqa: E402
from tests.devices.sshd_server import keygen  # noqa: E402


def _daemon_corpus() -> dict:
    """The malformed daemon requests of tests/devices/test_daemon.py, against one daemon process."""
    import importlib

    mod = importlib.import_module("tests.devices.test_daemon")
    cases = [p for m in mod.test_malformed_request_answered_and_daemon_lives.pytestmark
             if m.name == "parametrize" for p in m.args[1]]
    proc = subprocess.Popen([sys.executable, str(REPO / "devices" / "daemon.py")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    clear = crashed = 0
    for line, kind, words in cases:
        try:
            proc.stdin.write(line + b"\n")
            proc.stdin.flush()
            reply = json.loads(proc.stdout.readline())
            proc.stdin.write(b'{"v":1,"id":"alive","op":"hello"}\n')
            proc.stdin.flush()
            alive = json.loads(proc.stdout.readline()).get("ok") is True
        except (OSError, ValueError):
            crashed += 1
            break
        if reply.get("ok") is False and reply["error"]["kind"] == kind and words in reply["error"]["message"] \
                and alive:
            clear += 1
    proc.stdin.close()
    proc.wait(30)
    return {"tried": len(cases), "clear": clear, "traceback": crashed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-search", action="store_true", help="skip the killed-search scenario (~2 min)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hilprune-faults-"))
    keygen(root / "client")
    key = root / "client"
    rows = []
    scenarios = [
        ("partition", lambda d: faults.partition(d, key)),
        ("hang", lambda d: faults.hang(d, key)),
        ("flood", lambda d: faults.flood(d, key)),
        ("sshd-9", lambda d: faults.sshd_killed(d, key)),
        ("hello-hang", lambda d: faults.hello_hang(d, key)),
        ("controller-9-free", lambda d: faults.controller_killed(d, key, second_board=True)),
        ("controller-9-wait", lambda d: faults.controller_killed(d, key, second_board=False)),
        ("leftover-dir", lambda d: faults.stale_dir_swept(d, key)),
    ]
    for name, fn in scenarios:
        d = root / name
        d.mkdir()
        out = fn(d)
        rows.append({"fault": out.fault, "detect_s": out.detect_s, "board_clean_s": out.board_clean_s,
                     "orphans": out.orphans, "temp_dirs": out.temp_dirs, "lost": out.lost,
                     "error": (out.error or "").splitlines()[0][:110] if out.error else ""})
    if not args.no_search:
        from tests.search_faults import kill_and_resume

        d = root / "search"
        d.mkdir()
        r = kill_and_resume(d)
        rows.append({"fault": "search -9 then --resume", "detect_s": r["detect_s"], "board_clean_s": None,
                     "orphans": 0, "temp_dirs": 0, "lost": r["measurements_lost"] + (0 if r["same_actions"] else 1),
                     "error": f"status {r['status_raw']} -> {r['status_seen']}; resume rc {r['resume_rc']}, "
                              f"same candidates: {r['same_actions']}, integrity {r['integrity']}"})
    print(f"{'fault':42s} {'detect_s':>8s} {'clean_s':>8s} {'orphans':>7s} {'tmpdirs':>7s} {'lost':>4s}  message")
    for row in rows:
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"{row['fault']:42s} {fmt(row['detect_s']):>8s} {fmt(row['board_clean_s']):>8s} {row['orphans']:>7d} "
              f"{row['temp_dirs']:>7d} {row['lost']:>4d}  {row['error']}")

    from tests.bad_inputs import CASES, Files, run_case

    files = Files(root / "corpus")
    t0 = time.monotonic()
    outs = [(c, run_case(c, files)) for c in CASES]
    corpus = {"tried": len(outs), "clear": sum(o.clear(c.words) for c, o in outs),
              "traceback": sum(o.traceback for _, o in outs), "seconds": round(time.monotonic() - t0, 1),
              "unclear": [c.id for c, o in outs if not o.clear(c.words)]}
    daemon = _daemon_corpus()
    print(f"\nbad-input corpus (CLI): tried {corpus['tried']}, clear {corpus['clear']}, traceback "
          f"{corpus['traceback']} ({corpus['seconds']} s){'; unclear: ' + ', '.join(corpus['unclear']) if corpus['unclear'] else ''}")
    print(f"daemon malformed requests: tried {daemon['tried']}, clear {daemon['clear']}, crashed {daemon['traceback']}")
    if args.json:
        args.json.write_text(json.dumps({"faults": rows, "corpus": corpus, "daemon": daemon}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
