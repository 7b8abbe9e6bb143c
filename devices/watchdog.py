#!/usr/bin/env python3
"""Board-side guard of one daemon: its process group dies with the SSH session.

Uploaded next to ``daemon.py`` and run by the SSH transport as::

    python -u watchdog.py [--dead-link-s S] [--remove-dir DIR] LIMIT_S PGID_FILE PYTHON -u daemon.py

Self-contained (stdlib only; never imports the hilprune repo). It starts the
daemon in a NEW session and process group (``start_new_session``: the
``setsid`` of this design), writes that group id to ``PGID_FILE`` and its own
pid to ``watchdog.pid`` beside it (the next session's sweep tells a live
session's temp dir from a dead one by it), hands the daemon its stdout/stderr
directly (the SSH channel) and forwards its own stdin to the daemon. Then the
whole daemon group (the daemon and anything it spawned) is killed with
SIGKILL when:

- no byte arrived on stdin for ``--dead-link-s`` seconds: the controller
  sends a blank line (which the daemon ignores) every third of that, so
  silence means the controller or the link is gone -- a partition that drops
  packets without a FIN, or a controller killed with -9 whose TCP connection
  the board never hears closing. No stdin EOF is needed;
- stdin reaches EOF (the controller closed the channel, or the SSH connection
  died and sshd closed the session's pipes) and the daemon has not exited
  within ``GRACE_S``;
- ``LIMIT_S`` seconds have passed (hard limit of the session);
- the watchdog gets SIGTERM, SIGHUP, SIGINT or SIGPIPE;
- the daemon exits (its leftover children go too).

With ``--remove-dir DIR`` (a directory named ``hilprune-run.*``) the watchdog
removes DIR -- the session's temp dir with the daemon and every uploaded
artifact -- whenever it ends, so nothing of a dead session stays on the board.

Nothing is written to stdout (it belongs to the daemon's protocol).
Exit status: the daemon's, or 137 when killed.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time

GRACE_S = 1.0


def _log(msg: str) -> None:
    try:
        sys.stderr.write(f"[hilprune-watchdog {os.getpid()}] {msg}\n")
        sys.stderr.flush()
    except OSError:
        pass


def main(argv: list[str]) -> int:
    args = list(argv[1:])
    dead_link_s: float | None = None
    remove_dir: str | None = None
    while args and args[0].startswith("--"):
        flag = args.pop(0)
        if flag == "--dead-link-s" and args:
            dead_link_s = float(args.pop(0))
        elif flag == "--remove-dir" and args:
            remove_dir = args.pop(0)
        else:
            sys.stderr.write(f"watchdog.py: unknown option {flag}\n")
            return 2
    if len(args) < 3:
        sys.stderr.write("usage: watchdog.py [--dead-link-s S] [--remove-dir DIR] LIMIT_S PGID_FILE CMD...\n")
        return 2
    if remove_dir is not None and not os.path.basename(remove_dir.rstrip("/")).startswith("hilprune-run."):
        sys.stderr.write(f"watchdog.py: refusing --remove-dir {remove_dir!r} (not a hilprune-run.* dir)\n")
        return 2
    limit_s = float(args[0])
    pgid_file = args[1]
    cmd = args[2:]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, start_new_session=True)
    with open(pgid_file, "w", encoding="ascii") as f:
        f.write(str(proc.pid))
    with open(os.path.join(os.path.dirname(os.path.abspath(pgid_file)), "watchdog.pid"), "w",
              encoding="ascii") as f:
        f.write(str(os.getpid()))
    lock = threading.RLock()  # re-entrant: a signal handler may run inside finish() on the main thread
    done: list[bool] = []

    def finish(why: str) -> None:
        """Kill the daemon group and remove the temp dir, once. A second caller (another thread)
        waits until the first has finished, so the process never exits halfway through the removal."""
        with lock:
            if done:
                return
            done.append(True)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
                _log(f"killed daemon group {proc.pid}: {why}")
            except OSError:
                pass
            if remove_dir is not None:
                shutil.rmtree(remove_dir, ignore_errors=True)

    def on_signal(signum, _frame):
        finish(f"signal {signum}")
        os._exit(137)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, on_signal)

    def hard_limit() -> None:
        finish(f"hard limit of {limit_s:g} s")
        os._exit(137)

    timer = threading.Timer(limit_s, hard_limit)
    timer.daemon = True
    timer.start()

    def pump() -> None:
        last = time.monotonic()
        while True:
            wait = None if dead_link_s is None else max(0.0, last + dead_link_s - time.monotonic())
            try:
                ready, _, _ = select.select([0], [], [], wait)
            except (OSError, ValueError):
                ready = [0]
            if not ready:
                finish(f"no sign of the controller for {dead_link_s:g} s (dead link)")
                os._exit(137)
            try:
                data = os.read(0, 65536)
            except OSError:
                data = b""
            if not data:
                break
            last = time.monotonic()
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
            finish("stdin closed (controller gone) and the daemon did not exit")
            os._exit(137)

    threading.Thread(target=pump, daemon=True).start()
    rc = proc.wait()
    finish("daemon exited" if rc == 0 else f"daemon exited with status {rc}")
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
