"""Fault scenarios on loopback OpenSSH boards, shared by ``tests/devices/test_faults.py``
and ``benchmarks/faults.py`` (one copy of each scenario).

Each scenario starts its own sshd on 127.0.0.1 (a board of this machine's
target), provokes one fault and returns a :class:`FaultOutcome`: seconds from
the fault to the controller's error (``detect_s``), seconds until nothing of
the session is left on the board (``board_clean_s``), processes of ours left
on the board (``orphans``: any process whose command line names the session's
temp dir), temp dirs left (``temp_dirs``) and measurements lost (``lost``).

A *partition* is made by :class:`Relay`, a TCP relay the controller connects
through, which stops forwarding without closing either socket: no FIN, no
RST, nothing -- as when a cable is pulled. The board's sshd then runs without
``ClientAliveInterval`` (sshd's default), so only our own dead-link detection
can notice.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.devices.sshd_server import LoopbackSshd, board_toml

REPO = Path(__file__).resolve().parents[2]
DEAD_LINK_S = 3.0  # the scenarios' [farm] dead_link_s: small so the suite is quick, bounds stay generous
BOUND_S = 60.0  # generous upper bound of every wait (returns as soon as the condition holds)


@dataclass
class FaultOutcome:
    """What one fault left behind (see the module doc); ``error`` is the controller's message."""

    fault: str
    detect_s: float | None = None
    board_clean_s: float | None = None
    orphans: int = 0
    temp_dirs: int = 0
    lost: int = 0
    error: str = ""
    notes: dict = field(default_factory=dict)


class Relay:
    """A TCP relay 127.0.0.1:port -> 127.0.0.1:target; :meth:`partition` stops forwarding
    (both sockets stay open: the peers see silence, not a close)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self.listener.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target_port))
            self.socks += [a, b]
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.2)
        while True:
            if self.cut.is_set():  # partitioned: neither read nor write, never close
                time.sleep(0.2)
                continue
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data or self.cut.is_set():
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                continue  # bytes read just as the cut happened are dropped, like packets
            try:
                dst.sendall(data)
            except OSError:
                return

    def partition(self) -> None:
        """Stop forwarding in both directions (sockets stay open)."""
        self.cut.set()

    def close(self) -> None:
        self.listener.close()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


def procs_naming(text: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line contains ``text``."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(text in a for a in p.info["cmdline"] or ()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def session_dirs(sshd: LoopbackSshd) -> list[Path]:
    """The board's ``hilprune-run.*`` temp dirs."""
    return sorted(sshd.remote_tmp.glob("hilprune-run.*"))


def wait_until(cond, timeout_s: float = BOUND_S) -> float | None:
    """Seconds until ``cond()`` held (polled every 0.1 s), or None if it never did within ``timeout_s``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.1)
    return time.monotonic() - t0 if cond() else None


def _board_clean(sshd: LoopbackSshd) -> bool:
    return not session_dirs(sshd) and not procs_naming(str(sshd.remote_tmp))


def _finish(out: FaultOutcome, sshd: LoopbackSshd, t_fault: float) -> FaultOutcome:
    clean = wait_until(lambda: _board_clean(sshd))
    out.board_clean_s = None if clean is None else time.monotonic() - t_fault
    out.orphans = len(procs_naming(str(sshd.remote_tmp)))
    out.temp_dirs = len(session_dirs(sshd))
    return out


def _inventory(root: Path, sshd: LoopbackSshd, key: Path, *, port: int | None = None, name: str = "b1",
               extra: str = "", farm: str = "", more: str = "") -> Path:
    text = board_toml(name, sshd, key, extra=extra)
    if port is not None:
        text = text.replace(f"port = {sshd.port}", f"port = {port}")
    inv = root / "farm.toml"
    inv.write_text(f'[farm]\nlease_db = "{root / "leases.sqlite"}"\ndead_link_s = {DEAD_LINK_S}\n{farm}\n\n'
                   f"{text}\n{more}")
    return inv


def new_board(root: Path, key: Path, client_alive: bool = True) -> LoopbackSshd:
    """A fresh loopback sshd board under ``root`` for ``key``'s public half."""
    pub = " ".join(key.with_suffix(".pub").read_text().split()[:2])
    return LoopbackSshd(root, pub, client_alive=client_alive).start()


# ------------------------------------------------------------------ scenarios

def partition(root: Path, key: Path) -> FaultOutcome:
    """A request in flight when the link goes silent (relay stops forwarding, sshd without ClientAlive)."""
    from devices.base import MeasureErrorKind
    from devices.inventory import load_inventory
    from devices.ssh import SshDevice

    sshd = new_board(root / "sshd", key, client_alive=False)
    relay = Relay(sshd.port)
    out = FaultOutcome("partition (relay stops forwarding)")
    dev = SshDevice(load_inventory(_inventory(root, sshd, key, port=relay.port)).board("b1"))
    try:
        dev.hello()
        result: dict = {}

        def request() -> None:
            result["reply"] = dev.call("sleep", timeout_s=600, s=600, child=True)
            result["t"] = time.monotonic()

        th = threading.Thread(target=request, daemon=True)
        th.start()
        time.sleep(0.5)
        t_fault = time.monotonic()
        relay.partition()
        th.join(BOUND_S)
        reply = result.get("reply")
        if reply is not None and reply.error is not None:
            out.detect_s = result["t"] - t_fault
            out.error = reply.error.message
            out.notes["kind"] = reply.error.kind.value
            assert reply.error.kind is MeasureErrorKind.DEVICE_LOST, reply.error
        return _finish(out, sshd, t_fault)
    finally:
        dev.close()
        relay.close()
        sshd.stop()


def hang(root: Path, key: Path) -> FaultOutcome:
    """The daemon (and a child of it) hangs past the request's timeout (2 s)."""
    from devices.inventory import load_inventory
    from devices.ssh import SshDevice

    sshd = new_board(root / "sshd", key)
    out = FaultOutcome("hang (request timeout 2 s)")
    dev = SshDevice(load_inventory(_inventory(root, sshd, key)).board("b1"))
    try:
        dev.hello()
        t_fault = time.monotonic()
        reply = dev.call("sleep", timeout_s=2.0, s=600, child=True)
        out.detect_s = time.monotonic() - t_fault - 2.0  # beyond the timeout itself
        out.error = reply.error.message if reply.error else "no error"
        out.notes["kind"] = reply.error.kind.value if reply.error else "ok"
        return _finish(out, sshd, t_fault)
    finally:
        dev.close()
        sshd.stop()


def flood(root: Path, key: Path) -> FaultOutcome:
    """The board's daemon floods its stdout with replies nobody asked for (a broken board)."""
    from devices.inventory import load_inventory
    from devices.ssh import SshDevice

    sshd = new_board(root / "sshd", key)
    script = root / "flood.sh"  # a "python" that floods: its command line names the temp dir (the args)
    script.write_text('#!/bin/sh\nwhile :; do echo \'{"v":1,"id":0,"ok":true,"result":{}}\'; done\n')
    script.chmod(0o755)
    inv = _inventory(root, sshd, key)
    inv.write_text(inv.read_text().replace(f'python = "{sys.executable}"', f'python = "{script}"'))
    out = FaultOutcome("output flood (stdout)")
    dev = SshDevice(load_inventory(inv).board("b1"))
    try:
        t_fault = time.monotonic()
        try:
            dev.hello()
            out.error = "no error"
        except Exception as exc:  # noqa: BLE001 - DeviceUnavailable expected
            out.error = str(exc).splitlines()[0]
        out.detect_s = time.monotonic() - t_fault
        return _finish(out, sshd, t_fault)
    finally:
        dev.close()
        sshd.stop()


def sshd_killed(root: Path, key: Path) -> FaultOutcome:
    """sshd (listener and session processes) killed with -9 while a request runs."""
    from devices.inventory import load_inventory
    from devices.ssh import SshDevice

    sshd = new_board(root / "sshd", key)
    out = FaultOutcome("sshd -9 mid-measure")
    dev = SshDevice(load_inventory(_inventory(root, sshd, key)).board("b1"))
    try:
        dev.hello()
        result: dict = {}

        def request() -> None:
            result["reply"] = dev.call("sleep", timeout_s=600, s=600, child=True)
            result["t"] = time.monotonic()

        th = threading.Thread(target=request, daemon=True)
        th.start()
        time.sleep(0.5)
        t_fault = time.monotonic()
        sshd.kill_all()
        th.join(BOUND_S)
        reply = result.get("reply")
        if reply is not None and reply.error is not None:
            out.detect_s = result["t"] - t_fault
            out.error = reply.error.message.splitlines()[0]
        return _finish(out, sshd, t_fault)
    finally:
        dev.close()
        sshd.stop()


_HOLDER = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[2])
    from devices.farm import make_farm_device
    dev = make_farm_device("ssh:b1", sys.argv[1])
    hello = dev.hello()
    print(json.dumps({"pid": hello["pid"], "tmp": dev.session.tmp}), flush=True)
    time.sleep(600)
""")


def controller_killed(root: Path, key: Path, *, second_board: bool) -> FaultOutcome:
    """A controller holding board b1's lease (daemon up) is killed with -9; then a ``farm:loop``
    run measures: it takes the free board b2 (``second_board``) or waits for b1's lease to expire
    (``lease_ttl_s = 4``) with a progress line naming the holder."""
    import logging

    from devices.base import MeasureConfig
    from devices.farm import make_farm_device
    from tests.devices.conftest import build_tiny_artifact

    sshd = new_board(root / "sshd", key)
    sshd2 = new_board(root / "sshd2", key) if second_board else None
    more = ""
    if sshd2 is not None:
        more = board_toml("b2", sshd2, key)
    inv = _inventory(root, sshd, key, farm="lease_ttl_s = 4\nlease_wait_s = 60", more=more)
    out = FaultOutcome("controller -9 holding a lease" + (" (other board free)" if second_board else " (wait)"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(inv), str(REPO)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, env=env, cwd=str(REPO), start_new_session=True)
    farm = None
    records: list[str] = []

    class _Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    catch = _Catch(logging.WARNING)
    logging.getLogger("devices").addHandler(catch)
    try:
        line = holder.stdout.readline()
        info = json.loads(line)
        t_fault = time.monotonic()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(30)
        gone = wait_until(lambda: not procs_naming(info["tmp"]))
        out.detect_s = None if gone is None else time.monotonic() - t_fault  # board noticed the controller
        clean = wait_until(lambda: not procs_naming(info["tmp"]) and not Path(info["tmp"]).exists())
        clean_s = None if clean is None else time.monotonic() - t_fault
        art = build_tiny_artifact(root / "art")
        farm = make_farm_device("farm:loop", inv)
        t0 = time.monotonic()
        r = farm.measure(art, MeasureConfig(warmup=1, number=2, repeat=3, min_repeat_ms=0, timeout_s=60))
        out.notes["measure_s"] = round(time.monotonic() - t0, 2)
        out.notes["board"] = r.value.hello.get("board") if r.ok else None
        out.error = "" if r.ok else r.error.message
        out.lost = 0 if r.ok else 1
        out.notes["progress"] = next((m for m in records if "leased by" in m and "waiting" in m), None)
        import sqlite3

        con = sqlite3.connect(root / "leases.sqlite")  # the lease store the dead controller was writing
        out.notes["lease_db_integrity"] = con.execute("PRAGMA integrity_check").fetchone()[0]
        con.close()
        farm.close()
        farm = None
        _finish(out, sshd, t_fault)
        out.board_clean_s = clean_s  # the dead controller's session, not the farm's later one
        if sshd2 is not None:
            wait_until(lambda: _board_clean(sshd2))
            out.orphans += len(procs_naming(str(sshd2.remote_tmp)))
            out.temp_dirs += len(session_dirs(sshd2))
        return out
    finally:
        logging.getLogger("devices").removeHandler(catch)
        if farm is not None:
            farm.close()
        if holder.poll() is None:
            holder.kill()
        sshd.stop()
        if sshd2 is not None:
            sshd2.stop()


def stale_dir_swept(root: Path, key: Path) -> FaultOutcome:
    """A temp dir left by a session whose watchdog died with -9 (no cleanup at all) is swept
    by the next session's start."""
    from devices.inventory import load_inventory
    from devices.ssh import SshDevice

    sshd = new_board(root / "sshd", key)
    out = FaultOutcome("leftover temp dir (watchdog -9)")
    board = load_inventory(_inventory(root, sshd, key)).board("b1")
    dev = SshDevice(board)
    try:
        dev.hello()
        tmp = dev.session.tmp
        watchdog = int(Path(tmp, "watchdog.pid").read_text())
        pgid = dev.session.hello["pid"]
        t_fault = time.monotonic()
        os.kill(watchdog, signal.SIGKILL)  # nothing of ours on the board can clean up now
        os.killpg(pgid, signal.SIGKILL)
        dev.session.tmp = None  # the controller forgets it too (as if it had been killed)
        dev.close()
        wait_until(lambda: not procs_naming(tmp))
        out.notes["left_before_next"] = int(Path(tmp).exists())
        dev = SshDevice(board)
        dev.hello()  # the next session's start sweeps
        out.detect_s = time.monotonic() - t_fault
        out.temp_dirs = int(Path(tmp).exists())
        out.orphans = len(procs_naming(tmp))
        return out
    finally:
        dev.close()
        sshd.stop()


def iso_in(text: str) -> bool:
    """True when ``text`` holds a local ISO 8601 time with its offset (``2026-12-01T13:02:11+00:00``)."""
    import re

    return re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", text) is not None


def hello_hang(root: Path, key: Path, timeout_s: float = 3.0) -> FaultOutcome:
    """The board's daemon never says hello (a Python that hangs at start): the wait is the
    measurement's ``timeout_s``, not a fixed 120 s."""
    from devices.base import MeasureConfig
    from devices.inventory import load_inventory
    from devices.ssh import SshDevice
    from tests.devices.conftest import build_tiny_artifact

    sshd = new_board(root / "sshd", key)
    script = root / "slowpython.sh"  # the watchdog runs; the daemon "python" hangs before its hello
    script.write_text(f'#!/bin/sh\ncase "$2" in */daemon.py) exec sleep 600;; esac\nexec {sys.executable} "$@"\n')
    script.chmod(0o755)
    inv = _inventory(root, sshd, key)
    inv.write_text(inv.read_text().replace(f'python = "{sys.executable}"', f'python = "{script}"'))
    art = build_tiny_artifact(root / "art")
    out = FaultOutcome(f"daemon never says hello (timeout_s {timeout_s:g})")
    dev = SshDevice(load_inventory(inv).board("b1"))
    try:
        t_fault = time.monotonic()
        r = dev.measure(art, MeasureConfig(warmup=1, number=2, repeat=3, min_repeat_ms=0, timeout_s=timeout_s))
        out.detect_s = time.monotonic() - t_fault
        out.error = "no error" if r.ok else r.error.message.splitlines()[0]
        out.notes["kind"] = None if r.ok else r.error.kind.value
        return _finish(out, sshd, t_fault)
    finally:
        dev.close()
        sshd.stop()
