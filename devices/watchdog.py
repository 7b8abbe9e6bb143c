#!/usr/bin/env python3
"""Board-side guard of one daemon: its process group dies with the SSH session.

Uploaded next to ``daemon.py`` and run by the SSH transport as::

    python -u watchdog.py LIMIT_S PGID_FILE PYTHON -u daemon.py

Self-contained (stdlib only; never imports the hilprune repo). It starts the
daemon in a NEW session and process group (``start_new_session``: the
``setsid`` of this design), writes that group id to ``PGID_FILE``, hands the
daemon its stdout/stderr directly (the SSH channel) and forwards its own stdin
to the daemon. Then the whole daemon group (the daemon and anything it
spawned) is killed with SIGKILL when:

- stdin reaches EOF (the controller closed the channel, or the SSH connection
  died and sshd closed the session's pipes) and the daemon has not exited
  within ``GRACE_S``;
- ``LIMIT_S`` seconds have passed (hard limit of the session);
- the watchdog gets SIGTERM, SIGHUP, SIGINT or SIGPIPE;
- the daemon exits (its leftover children go too).

Nothing is written to stdout (it belongs to the daemon's protocol).
Exit status: the daemon's, or 137 when killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

GRACE_S = 1.0


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        sys.stderr.write("usage: watchdog.py LIMIT_S PGID_FILE CMD...\n")
        return 2
    limit_s = float(argv[1])
    pgid_file = argv[2]
    cmd = argv[3:]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, start_new_session=True)
    with open(pgid_file, "w", encoding="ascii") as f:
        f.write(str(proc.pid))

    def kill(why: str) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            sys.stderr.write(f"[hilprune-watchdog] killed daemon group {proc.pid}: {why}\n")
            sys.stderr.flush()
        except OSError:
            pass

    def on_signal(signum, _frame):
        kill(f"signal {signum}")
        os._exit(137)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, on_signal)
    timer = threading.Timer(limit_s, kill, args=(f"hard limit of {limit_s:g} s",))
    timer.daemon = True
    timer.start()

    def pump() -> None:
        while True:
            try:
                data = os.read(0, 65536)
            except OSError:
                data = b""
            if not data:
                break
            try:
                proc.stdin.write(data)
                proc.stdin.flush()
            except OSError:
                break
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            kill("stdin closed (controller gone) and the daemon did not exit")

    threading.Thread(target=pump, daemon=True).start()
    rc = proc.wait()
    kill("daemon exited") if rc == 0 else kill(f"daemon exited with status {rc}")
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
