"""A board reached over SSH (paramiko): ``ssh:BOARD``.

How we talk to a board (the inventory says what it *is*):

- **Connect**: key authentication only (no agent, no ``~/.ssh`` keys, no
  ``~/.ssh/config``); the host key is checked against the board's pinned key
  or the farm known_hosts file with paramiko's ``RejectPolicy`` — never
  auto-added. A *changed* key is refused with a message that says so.
  Timeouts on TCP connect, banner and auth (``connect_timeout_s`` each);
  keepalive every ``keepalive_s``.
- **Per-run temp dir** (``mktemp -d REMOTE_TMP/hilprune-run.XXXXXX``): the
  daemon, the watchdog and each artifact are uploaded there over SFTP (with a
  deadline), their sha256 checked on the board with ``sha256sum``, and the dir
  is removed when the session ends — also after errors (and dirs left by a
  dead controller are swept after ``session_limit_s`` by the next session).
- **Commands** are argv lists joined with :func:`shlex.join`, each wrapped in
  ``timeout -s KILL N`` on the board and given the same deadline here: no
  inventory field can inject shell, no command can hang.
- **One daemon session per lease**: ``watchdog.py`` starts ``daemon.py`` in its
  own process group (new session) with a hard limit of ``session_limit_s``;
  the watchdog kills that group when its stdin closes — our channel closed on
  a timeout, or a dead SSH connection — so nothing outlives the session. The
  daemon's stdout and stderr are drained together by
  :class:`~devices.client.DaemonSession`.
- **Arch check** before any upload: the manifest's ``arch`` against the
  board's ``uname -m`` (and the daemon hello's ``machine``; for an
  ``emulated`` qemu-user board, the hello's alone). An emulated board's
  measurements say ``source="emulated"``: outputs to compare, never latency.

Expected failures are :class:`~devices.base.MeasureError` values:
``device_lost`` (unreachable, host key, auth, connection dropped),
``daemon_start``, ``timeout``, ``load_failed`` (wrong arch, corrupt upload),
plus the daemon's own kinds.
"""

from __future__ import annotations

import base64
import collections
import enum
import hashlib
import json
import logging
import shlex
import socket
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import paramiko

from devices.base import (
    Device,
    DeviceUnavailable,
    MeasureConfig,
    MeasureError,
    MeasureErrorKind,
    MeasureResult,
)
from devices.client import DaemonSession, Reply
from devices.interleaved import (InterleavedConfig, InterleavedResult, check_artifact_dirs, read_artifact_manifest,
                                 run_interleaved)
from devices.inventory import Board, normalise_arch
from devices.lease import Lease, LeaseManager, describe_lease
from devices.local import DAEMON_PATH
from devices.manifest import Manifest, ManifestError, read_manifest
from devices.remeasure import measure_request, measure_until_stable

logger = logging.getLogger(__name__)

__all__ = ["BoardState", "SshDevice", "SshError", "SshSession"]

WATCHDOG_PATH = Path(__file__).with_name("watchdog.py")
#: The manifest reader, uploaded beside the daemon (which imports it as ``manifest``).
MANIFEST_PATH = Path(__file__).with_name("manifest.py")
HELLO_TIMEOUT_S = 120.0  # importing numpy/TVM on a Pi takes a while; capped by the request's timeout_s
MAX_COMMAND_OUTPUT_BYTES = 16 << 20  # stdout + stderr drained from one short command
MAX_UPLOADED_ARTIFACTS = 8  # artifact dirs kept in a session's temp dir (LRU; the oldest is removed)
STALE_SETUP_MIN = 10  # a temp dir with no watchdog.pid yet is being set up for at most this long
BYE_TIMEOUT_S = 5.0
_KEEP: Any = object()


class BoardState(str, enum.Enum):
    """Where a board's session stands (labgrid's state machine, simplified)."""

    UNKNOWN = "unknown"  #: not contacted yet, or the last session ended
    LEASED = "leased"  #: our lease is held, no connection yet
    REACHABLE = "reachable"  #: SSH connected, temp dir made
    DAEMON_READY = "daemon_ready"  #: daemon said hello, measurements go through
    FAILED = "failed"  #: the last attempt failed (see ``SshDevice.last_error``)
    BUSY = "busy"  #: leased by another holder


class SshError(Exception):
    """A transport failure with a MeasureError kind; ``fatal`` = retrying will not help
    (host key refused, auth refused, wrong arch)."""

    def __init__(self, kind: MeasureErrorKind, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.error = MeasureError(kind, message)
        self.fatal = fatal


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's fingerprint of a public key: ``SHA256:`` + unpadded base64 of the key blob's sha256
    (what ``ssh-keygen -lf`` and ssh's host-key warnings print)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


class LinkMonitor:
    """Detects a dead SSH peer, as OpenSSH's ``ServerAliveInterval``/``ServerAliveCountMax`` do.

    A thread sends ``keepalive@openssh.com`` global requests that want a reply
    (paramiko's ``Transport.global_request(wait=True)``; the server answers
    with failure, which is a reply) every ``interval_s``. When no reply came
    for ``dead_link_s`` (a partition that drops packets without a FIN: TCP
    itself would wait many minutes), :attr:`dead` says why and the transport
    is closed, which ends every channel and wakes every waiting reader.

    Args:
        transport: the connected paramiko transport.
        interval_s: seconds between probes (> 0).
        dead_link_s: seconds without any reply after which the link is dead.
        where: label for messages (``board 'b1'``).
    """

    def __init__(self, transport: paramiko.Transport, interval_s: float, dead_link_s: float, where: str) -> None:
        self.transport = transport
        self.interval_s = max(0.2, float(interval_s))
        self.dead_link_s = float(dead_link_s)
        self.where = where
        self.dead: str | None = None
        self.detected_at: float | None = None  # time.monotonic() of the detection
        self.last_reply = time.monotonic()
        self._stop = threading.Event()
        threading.Thread(target=self._probe, name="ssh-link-probe", daemon=True).start()
        threading.Thread(target=self._judge, name="ssh-link-judge", daemon=True).start()

    def _probe(self) -> None:
        while not self._stop.is_set() and self.transport.is_active():
            try:
                self.transport.global_request("keepalive@openssh.com", wait=True)
            except Exception as exc:  # noqa: BLE001 - paramiko raises several types on a dying transport
                logger.debug("%s: keepalive probe failed: %r", self.where, exc)
                return
            if not self.transport.is_active():
                return
            self.last_reply = time.monotonic()
            self._stop.wait(self.interval_s)

    def _judge(self) -> None:
        while not self._stop.wait(min(1.0, self.interval_s)):
            if not self.transport.is_active():
                return
            silent = time.monotonic() - self.last_reply
            if silent > self.dead_link_s:
                self.dead = (f"{self.where}: no answer over SSH for {silent:.0f} s (dead_link_s = "
                             f"{self.dead_link_s:g}): link dead (network partition or board down)")
                self.detected_at = time.monotonic()
                logger.warning("%s", self.dead)
                try:
                    self.transport.close()
                except Exception:  # noqa: BLE001
                    pass
                return

    def stop(self) -> None:
        """Stop probing (the transport is being closed on purpose)."""
        self._stop.set()


def _known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


# $1 = remote_tmp, $2 = minutes a dir without watchdog.pid may be in set-up. Prints "swept DIR" per removal.
_SWEEP_SH = r"""
for d in "$1"/hilprune-run.*; do
  [ -d "$d" ] || continue
  if [ -f "$d/watchdog.pid" ]; then
    p=$(cat "$d/watchdog.pid" 2>/dev/null)
    if [ -n "$p" ] && [ -r "/proc/$p/cmdline" ] && tr '\0' ' ' < "/proc/$p/cmdline" | grep -qF "$d/watchdog.py"; then
      continue
    fi
    g=$(cat "$d/daemon.pgid" 2>/dev/null)
    if [ -n "$g" ] && [ -r "/proc/$g/cmdline" ] && tr '\0' ' ' < "/proc/$g/cmdline" | grep -qF "$d/daemon.py"; then
      kill -KILL -- "-$g" 2>/dev/null
    fi
  elif [ -z "$(find "$d" -maxdepth 0 -mmin +"$2")" ]; then
    continue
  fi
  rm -rf -- "$d" && echo "swept $d"
done
true
"""


class SshSession:
    """One SSH connection to one board with its remote temp dir and daemon.

    Args:
        board: the inventory record.
        env: environment of the daemon (board env plus per-config threads).

    :meth:`open` connects, makes the temp dir, uploads and starts the daemon;
    :meth:`close` stops it and removes the dir. Raises :class:`SshError`.
    """

    def __init__(self, board: Board, env: dict[str, str]) -> None:
        self.board = board
        self.env = dict(env)
        self.client: paramiko.SSHClient | None = None
        self.tmp: str | None = None
        self.machine: str | None = None
        self.channel: paramiko.Channel | None = None
        self.daemon: DaemonSession | None = None
        self.hello: dict | None = None
        self.uploaded: collections.OrderedDict[str, str] = collections.OrderedDict()  # key -> remote dir (LRU)
        self.link: LinkMonitor | None = None
        self._sftp: paramiko.SFTPClient | None = None  # opened once per session (_sftp_client)
        self.hello_timeout_s = HELLO_TIMEOUT_S
        self.started_at = time.monotonic()  # of the running daemon (its watchdog's hard limit counts from here)

    # ------------------------------------------------------------- transport

    def connect(self) -> None:
        """SSH connect with host key verification and key auth.

        Raises:
            SshError: device_lost (unreachable, timeout; host key refused or
                auth refused with ``fatal=True``).
        """
        b = self.board
        where = f"board {b.name!r} ({b.user}@{b.host}:{b.port})"
        client = paramiko.SSHClient()
        keys = client.get_host_keys()  # never load_system_host_keys(): no dependence on ~/.ssh
        if b.host_key is not None:
            ktype, kdata = b.host_key.split()[:2]
            try:
                key = paramiko.PKey.from_type_string(ktype, base64.b64decode(kdata))
            except Exception as exc:  # noqa: BLE001 - paramiko raises several types
                raise SshError(MeasureErrorKind.DEVICE_LOST, f"{where}: pinned host_key is not a valid "
                                                             f"{ktype} key: {exc}", fatal=True) from None
            keys.add(_known_hosts_name(b.host, b.port), ktype, key)
        else:
            try:
                keys.load(str(b.known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                raise SshError(MeasureErrorKind.DEVICE_LOST, f"{where}: cannot read known_hosts "
                                                             f"{b.known_hosts}: {exc}", fatal=True) from None
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        t = b.connect_timeout_s
        try:
            client.connect(b.host, port=b.port, username=b.user, key_filename=str(b.identity_file),
                           timeout=t, banner_timeout=t, auth_timeout=t, channel_timeout=t,
                           allow_agent=False, look_for_keys=False)
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise SshError(MeasureErrorKind.DEVICE_LOST,
                           f"{where}: HOST KEY CHANGED — the board offered {exc.key.get_name()} "
                           f"{fingerprint(exc.key)} but the inventory pins {exc.expected_key.get_name()} "
                           f"{fingerprint(exc.expected_key)}; refusing to connect (if the board was "
                           f"reinstalled, verify the new key with 'ssh-keygen -lf' on the board and update "
                           f"host_key/known_hosts)", fatal=True) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise SshError(MeasureErrorKind.DEVICE_LOST,
                           f"{where}: authentication failed with identity_file {b.identity_file}: {exc} "
                           f"(is its public key in the board's authorized_keys for user {b.user!r}?)",
                           fatal=True) from None
        except paramiko.SSHException as exc:
            client.close()
            text = str(exc)
            if "known_hosts" in text or "not found in" in text:
                raise SshError(MeasureErrorKind.DEVICE_LOST,
                               f"{where}: host key not in the pinned key / known_hosts ({text}); "
                               f"refusing to connect (keys are never auto-added)", fatal=True) from None
            raise SshError(MeasureErrorKind.DEVICE_LOST, f"{where}: SSH error: {text}") from None
        except (OSError, socket.timeout, EOFError) as exc:
            client.close()
            raise SshError(MeasureErrorKind.DEVICE_LOST, f"{where}: unreachable: {exc!r}") from None
        transport = client.get_transport()
        assert transport is not None
        self.client = client
        self.link = LinkMonitor(transport, interval_s=min(b.keepalive_s, b.dead_link_s / 3),
                                dead_link_s=b.dead_link_s, where=f"board {b.name!r}")

    @property
    def alive(self) -> bool:
        """The SSH transport is up and the link monitor has not declared it dead."""
        t = self.client.get_transport() if self.client is not None else None
        return t is not None and t.is_active() and (self.link is None or self.link.dead is None)

    def link_dead(self) -> str | None:
        """None while the link lives, else why it is dead (the daemon session's liveness check)."""
        if self.link is not None and self.link.dead is not None:
            return self.link.dead
        t = self.client.get_transport() if self.client is not None else None
        if t is None or not t.is_active():
            return f"board {self.board.name!r}: SSH connection lost"
        return None

    def run(self, argv: list[str], timeout_s: float | None = None, check: bool = True) -> tuple[int, str, str]:
        """Run one command on the board; stdout and stderr drained together.

        Args:
            argv: the command; joined with :func:`shlex.join` (no injection).
            timeout_s: limit (default ``command_timeout_s``), enforced on the
                board (``timeout -s KILL``) and here.
            check: raise on a non-zero exit status.

        Returns:
            (exit status, stdout, stderr).

        Raises:
            SshError: timeout, lost connection, or (``check``) a failure.
        """
        timeout_s = timeout_s or self.board.command_timeout_s
        cmd = shlex.join(["timeout", "-s", "KILL", f"{max(1, int(timeout_s))}", *argv])
        where = f"board {self.board.name!r}"
        if not self.alive:
            raise SshError(MeasureErrorKind.DEVICE_LOST, f"{where}: SSH connection is down")
        try:
            chan = self.client.get_transport().open_session(timeout=self.board.connect_timeout_s)
            chan.settimeout(self.board.connect_timeout_s)
            chan.exec_command(cmd)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshError(MeasureErrorKind.DEVICE_LOST, f"{where}: cannot run {argv[0]}: {exc!r}") from None
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout_s + 2.0
        try:
            while True:
                busy = False
                if chan.recv_ready():
                    out += chan.recv(65536)
                    busy = True
                if chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    busy = True
                if len(out) + len(err) > MAX_COMMAND_OUTPUT_BYTES:
                    raise SshError(MeasureErrorKind.PROTOCOL,
                                   f"{where}: {argv[0]} wrote over {MAX_COMMAND_OUTPUT_BYTES >> 20} MiB "
                                   f"(bound of a command's output); the board is misbehaving")
                if busy:
                    continue
                if chan.exit_status_ready() and chan.eof_received:
                    break
                if chan.closed or not self.alive:
                    raise SshError(MeasureErrorKind.DEVICE_LOST, f"{where}: connection lost during {argv[0]}")
                if time.monotonic() > deadline:
                    raise SshError(MeasureErrorKind.TIMEOUT, f"{where}: {argv[0]} took over {timeout_s:g} s")
                time.sleep(0.01)
            rc = chan.recv_exit_status()
        finally:
            chan.close()
        sout, serr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        if check and rc != 0:
            kind = MeasureErrorKind.TIMEOUT if rc in (124, 137) else MeasureErrorKind.DEVICE_LOST
            raise SshError(kind, f"{where}: {shlex.join(argv)[:200]} exited {rc}: {serr.strip()[-500:]}")
        return rc, sout, serr

    def _sftp_client(self) -> paramiko.SFTPClient:
        """The session's SFTP channel, opened once (a tuning run uploads one candidate per trial).

        Raises:
            SshError: device_lost when it cannot be opened.
        """
        if self._sftp is None:
            try:
                self._sftp = self.client.open_sftp()
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise SshError(MeasureErrorKind.DEVICE_LOST,
                               f"board {self.board.name!r}: cannot open SFTP: {exc!r}") from None
        return self._sftp

    def _drop_sftp(self) -> None:
        sftp, self._sftp = self._sftp, None
        if sftp is not None:
            try:
                sftp.close()
            except (paramiko.SSHException, OSError, EOFError):
                pass

    def upload(self, files: list[tuple[Path, str]], verify: bool = True) -> None:
        """SFTP ``(local, remote)`` files within ``upload_timeout_s``, then check sha256 on the board.

        Args:
            files: (local path, remote path) pairs.
            verify: check the sha256 of every file on the board (one more command round trip).
                ``False`` for a file whose reader checks it itself (the daemon's ``time_func``
                gets the digest with the request).

        Raises:
            SshError: timeout, lost connection, or load_failed on a checksum mismatch.
        """
        where = f"board {self.board.name!r}"
        deadline = time.monotonic() + self.board.upload_timeout_s

        def check_deadline(_done: int, _total: int) -> None:
            if time.monotonic() > deadline:
                raise TimeoutError("upload deadline")

        sftp = self._sftp_client()
        try:
            sftp.get_channel().settimeout(self.board.upload_timeout_s)
            for local, remote in files:
                sftp.put(str(local), remote, callback=check_deadline, confirm=True)
        except TimeoutError:
            self._drop_sftp()
            raise SshError(MeasureErrorKind.TIMEOUT, f"{where}: upload took over "
                                                     f"{self.board.upload_timeout_s:g} s") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self._drop_sftp()
            raise SshError(MeasureErrorKind.DEVICE_LOST, f"{where}: upload failed: {exc!r}") from None
        if not verify:
            return
        want = {remote: _sha256(local) for local, remote in files}
        _, out, _ = self.run(["sha256sum", "--", *want])
        got = {}
        for line in out.splitlines():
            digest, _, name = line.partition("  ")
            got[name] = digest
        bad = [r for r, d in want.items() if got.get(r) != d]
        if bad:
            raise SshError(MeasureErrorKind.LOAD_FAILED, f"{where}: sha256 mismatch after upload of {bad}")

    # ---------------------------------------------------------------- daemon

    def open(self) -> dict:
        """Connect, make the temp dir, upload and start the daemon; returns its hello.

        Raises:
            SshError: any step failed (everything already made is cleaned up).
        """
        b = self.board
        try:
            self.connect()
            # an emulated board's kernel is the host's: its arch is what its Python says (hello, below)
            self.machine = None if b.emulated else normalise_arch(self.run(["uname", "-m"])[1])
            if self.machine is not None and self.machine != b.arch:
                raise SshError(MeasureErrorKind.DEVICE_LOST,
                               f"board {b.name!r}: uname -m says {self.machine} but the inventory's target "
                               f"{b.target!r} means {b.arch}; fix the inventory", fatal=True)
            self.sweep()
            self.tmp = self.run(["mktemp", "-d", f"{b.remote_tmp}/hilprune-run.XXXXXX"])[1].strip()
            if not self.tmp.startswith(b.remote_tmp + "/hilprune-run."):
                raise SshError(MeasureErrorKind.DAEMON_START, f"board {b.name!r}: odd mktemp output {self.tmp!r}")
            self.upload([(DAEMON_PATH, f"{self.tmp}/daemon.py"), (MANIFEST_PATH, f"{self.tmp}/manifest.py"),
                         (WATCHDOG_PATH, f"{self.tmp}/watchdog.py")])
            self.start_daemon()
            return dict(self.hello)
        except BaseException:
            self.close(polite=False)
            raise

    def sweep(self) -> int:
        """Remove the temp dirs of dead sessions under ``remote_tmp``; returns how many went.

        A dir whose ``watchdog.pid`` names no live ``watchdog.py`` of that dir
        is dead whatever killed it (controller -9, partition, sshd -9, board
        reboot): its leftover daemon group (if any) is killed and the dir
        removed. A dir without ``watchdog.pid`` is another session being set
        up, unless older than ``STALE_SETUP_MIN`` minutes.

        Raises:
            SshError: the command could not run (connection lost, timeout).
        """
        _, out, _ = self.run(["sh", "-c", _SWEEP_SH, "sh", self.board.remote_tmp, str(STALE_SETUP_MIN)],
                             check=False)
        gone = [line[len("swept "):] for line in out.splitlines() if line.startswith("swept ")]
        if gone:
            logger.info("board %s: removed %d temp dir(s) of dead sessions: %s", self.board.name, len(gone),
                        ", ".join(gone))
        return len(gone)

    def start_daemon(self) -> None:
        """Start watchdog + daemon on the board and wait for hello.

        Raises:
            SshError: daemon_start (no hello), device_lost.
        """
        b = self.board
        env = [f"{k}={v}" for k, v in sorted(self.env.items())]
        # the watchdog removes the temp dir when it ends (a daemon lives once per temp dir)
        argv = ["env", *env, b.python, "-u", f"{self.tmp}/watchdog.py", "--dead-link-s", f"{b.dead_link_s:g}",
                "--remove-dir", self.tmp, f"{b.session_limit_s:g}",
                f"{self.tmp}/daemon.pgid", b.python, "-u", f"{self.tmp}/daemon.py"]
        cmd = f"cd {shlex.quote(self.tmp)} && exec {shlex.join(argv)}"
        try:
            chan = self.client.get_transport().open_session(timeout=b.connect_timeout_s)
            chan.exec_command(cmd)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshError(MeasureErrorKind.DAEMON_START, f"board {b.name!r}: cannot start daemon: {exc!r}") from None
        chan.settimeout(None)
        self.started_at = time.monotonic()
        self.channel = chan
        self.daemon = DaemonSession(chan.makefile_stdin("wb"), chan.makefile("rb"), chan.makefile_stderr("rb"),
                                    heartbeat_s=b.dead_link_s / 3, liveness=self.link_dead)
        reply = self.daemon.call("hello", self.hello_timeout_s)
        if not reply.ok or reply.result.get("protocol") != 1:
            why = reply.error.message if reply.error else f"unexpected hello {reply.result}"
            raise SshError(MeasureErrorKind.DAEMON_START, f"board {b.name!r}: daemon did not say hello "
                                                          f"(python {b.python}): {why}")
        self.hello = dict(reply.result, board=b.name, emulated=b.emulated)
        if b.emulated:
            self.machine = normalise_arch(str(self.hello.get("machine")))
        if normalise_arch(str(self.hello.get("machine"))) != b.arch:
            raise SshError(MeasureErrorKind.DAEMON_START, f"board {b.name!r}: daemon runs on "
                                                          f"{self.hello.get('machine')}, inventory says {b.arch}",
                           fatal=True)
        logger.info("board %s: daemon up in %s (%s)", b.name, self.tmp, json.dumps(self.hello))

    def stop_daemon(self, polite: bool = True) -> None:
        """Bye (if ``polite`` and healthy), close the channel; the watchdog kills what is left."""
        daemon, chan = self.daemon, self.channel
        self.daemon = self.channel = None
        self.hello = None
        if daemon is not None and polite and daemon.broken is None and self.alive:
            daemon.call("bye", BYE_TIMEOUT_S)
        if daemon is not None:
            daemon.close()
        if chan is not None:
            try:
                chan.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass

    def close(self, polite: bool = True) -> None:
        """Stop the daemon, kill its group, remove the temp dir, disconnect. Never raises."""
        self.stop_daemon(polite=polite)
        if self.tmp is not None and self.alive:
            script = ('p=$(cat "$1/daemon.pgid" 2>/dev/null) && [ -n "$p" ] && kill -KILL -- "-$p" 2>/dev/null; '
                      'rm -rf -- "$1"')
            try:
                self.run(["sh", "-c", script, "sh", self.tmp], check=False)
                self.tmp = None
            except SshError as exc:
                logger.warning("board %s: cleanup of %s failed: %s", self.board.name, self.tmp, exc)
        if self.link is not None:
            self.link.stop()
        self._drop_sftp()
        if self.client is not None:
            self.client.close()
            self.client = None
        self.uploaded.clear()

    # -------------------------------------------------------------- artifacts

    def put_artifact(self, artifact_dir: Path, manifest: Manifest, backend: str) -> str:
        """Upload what ``backend`` needs of an artifact (once per session); returns the remote dir.

        Raises:
            SshError: load_failed (wrong arch, missing file, checksum), timeout, device_lost.
        """
        b = self.board
        arch = manifest.arch
        if arch is not None and normalise_arch(str(arch)) != (self.machine or b.arch):
            raise SshError(MeasureErrorKind.LOAD_FAILED,
                           f"artifact {artifact_dir.name} is built for {arch} but board {b.name!r} is "
                           f"{self.machine or b.arch} (target {b.target!r}); compile for that target", fatal=False)
        try:
            names = manifest.files(backend)
        except ManifestError as exc:
            raise SshError(MeasureErrorKind.LOAD_FAILED, f"artifact {artifact_dir}: {exc}") from None
        key = hashlib.sha256((manifest.sha256 + backend).encode()).hexdigest()[:20]
        if key in self.uploaded:
            self.uploaded.move_to_end(key)
            return self.uploaded[key]
        files = []
        for n in names:
            local = artifact_dir / n
            if "/" in n or n.startswith(".") or not local.is_file():
                raise SshError(MeasureErrorKind.LOAD_FAILED, f"artifact {artifact_dir}: file {n!r} is missing")
            files.append((local, n))
        remote = f"{self.tmp}/a/{key}"
        self.run(["mkdir", "-p", "--", remote])
        self.upload([(local, f"{remote}/{n}") for local, n in files])
        self.uploaded[key] = remote
        while len(self.uploaded) > MAX_UPLOADED_ARTIFACTS:  # the board's disk holds a bounded number
            _, old = self.uploaded.popitem(last=False)
            self.run(["rm", "-rf", "--", old], check=False)
        return remote


class SshDevice(Device):
    """Measures on one inventory board over SSH; one daemon session per lease.

    Args:
        board: the inventory record.
        leases: lease manager; None = no lease (tests, ``devices check``
            with ``--no-lease``).
        lease_wait_s: how long to wait for a board leased by someone else.
        name: device name (default ``ssh:BOARD``).

    The session (lease, connection, temp dir, daemon) opens on first use and
    is reused; after a transport failure the next call opens a fresh one.
    """

    is_board = True

    def __init__(self, board: Board, leases: LeaseManager | None = None, lease_wait_s: float = 60.0,
                 name: str | None = None) -> None:
        super().__init__(name or f"ssh:{board.name}")
        self.board = board
        self.leases = leases
        self.lease_wait_s = lease_wait_s
        self.state = BoardState.UNKNOWN
        self.last_error: MeasureError | None = None
        self.last_fatal = False
        self._session: SshSession | None = None
        self._lease: Lease | None = None
        self._threads: int | None = None
        self._hello_timeout_s = HELLO_TIMEOUT_S  # capped by the measuring request's timeout_s
        self._lock = threading.RLock()

    # -------------------------------------------------------------- session

    @property
    def session(self) -> SshSession | None:
        """The open session (tests and diagnostics)."""
        return self._session

    def _fail(self, err: SshError | MeasureError, fatal: bool = False) -> MeasureError:
        if isinstance(err, SshError):
            fatal, err = err.fatal, err.error
        self.last_error, self.last_fatal = err, fatal
        self.state = BoardState.FAILED
        return err

    def _ensure(self, num_threads: int | None) -> MeasureError | None:
        if self._closed:
            return MeasureError(MeasureErrorKind.DEVICE_LOST, f"device {self.name!r} is closed")
        s = self._session
        if s is not None and (not s.alive or s.daemon is None or s.daemon.broken is not None):
            self._drop_session(polite=False)
            s = None
        if s is not None and time.monotonic() - s.started_at > 0.9 * self.board.session_limit_s:
            logger.info("board %s: session near its hard limit; starting a fresh one", self.board.name)
            self._drop_session(polite=True)  # before the watchdog kills it mid-measurement
            s = None
        if self.leases is not None and (self._lease is None or self._lease.lost):
            self._lease = self._acquire()
            if self._lease is None:
                held = self.leases.holder_of(self.board.name)
                err = self._fail(MeasureError(MeasureErrorKind.DEVICE_LOST,
                                              describe_lease(self.board.name, held)
                                              + (f" (waited {self.lease_wait_s:g} s)" if self.lease_wait_s else "")))
                self.state = BoardState.BUSY
                return err
            self.state = BoardState.LEASED
        if s is not None and self._threads != num_threads:
            # a daemon lives once per temp dir (its watchdog removes the dir): a fresh session
            self._drop_session(polite=True)
            s = None
        if s is None:
            s = SshSession(self.board, self._env(num_threads))
            s.hello_timeout_s = self._hello_timeout_s
            try:
                s.open()
            except SshError as exc:
                return self._fail(exc)
            self._session, self._threads = s, num_threads
            self.state = BoardState.DAEMON_READY
        return None

    def _acquire(self) -> Lease | None:
        """Take the board's lease, waiting up to ``lease_wait_s`` with a progress line every 10 s."""
        deadline = time.monotonic() + self.lease_wait_s
        while True:
            lease = self.leases.acquire(self.board.name, wait_s=0.0)
            left = deadline - time.monotonic()
            if lease is not None or left <= 0:
                return lease
            logger.warning("%s; waiting for it (up to %.0f s more)", describe_lease(
                self.board.name, self.leases.holder_of(self.board.name)), left)
            lease = self.leases.acquire(self.board.name, wait_s=min(10.0, left), poll_s=0.5)
            if lease is not None:
                return lease

    def _env(self, num_threads: int | None) -> dict[str, str]:
        env = self.board.env_dict
        if num_threads is not None:
            env["TVM_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(num_threads)
        return env

    def _drop_session(self, polite: bool) -> None:
        s, self._session = self._session, None
        if s is not None:
            s.close(polite=polite)

    def call(self, op: str, *, timeout_s: float, daemon_threads: int | None = _KEEP, **fields: Any) -> Reply:
        """One raw daemon request (diagnostics, tests' ``sleep`` op). On a timeout or
        lost stream the remote daemon group is killed and the temp dir removed."""
        with self._lock:
            err = self._ensure(self._threads if daemon_threads is _KEEP else daemon_threads)
            if err is not None:
                return Reply(error=err)
            reply = self._session.daemon.call(op, timeout_s, **fields)
            if self._session.daemon.broken is not None:
                logger.warning("board %s: %s; killing the remote daemon", self.board.name, reply.error.kind.value)
                self._fail(reply.error)
                self._drop_session(polite=False)
            return reply

    def time_function(self, lib_path: Path, args: list, *, arch: str, number: int = 3, repeat: int = 1,
                      min_repeat_ms: int = 0, timeout_s: float = 60.0) -> Reply:
        """Time one tuning candidate (a linked TIR module ``.so``) on the board.

        Args:
            lib_path: the candidate's shared library on this machine.
            args: ``[[dtype, [dims]], ...]`` of the entry function.
            arch: the library's CPU architecture (checked before upload).
            number, repeat, min_repeat_ms: TVM ``time_evaluator`` settings.
            timeout_s: limit of the timing request.

        Returns:
            A Reply: result ``{"costs_s": [...]}`` or a MeasureError value.
        """
        with self._lock:
            if normalise_arch(arch) != self.board.arch:
                return Reply(error=MeasureError(MeasureErrorKind.LOAD_FAILED,
                                                f"candidate built for {arch} but board {self.board.name!r} is "
                                                f"{self.board.arch}"))
            err = self._ensure(self._threads)
            if err is not None:
                return Reply(error=err)
            s = self._session
            remote = f"{s.tmp}/tune-{hashlib.sha256(str(lib_path).encode()).hexdigest()[:16]}.so"
            try:  # the daemon checks the digest and removes the file once loaded: no extra round trips
                s.upload([(Path(lib_path), remote)], verify=False)
            except SshError as exc:
                e = self._fail(exc)
                if e.kind in (MeasureErrorKind.DEVICE_LOST, MeasureErrorKind.TIMEOUT):
                    self._drop_session(polite=False)
                return Reply(error=e)
            return self.call("time_func", timeout_s=timeout_s, lib=remote, args=args, number=number,
                             repeat=repeat, min_repeat_ms=int(min_repeat_ms), sha256=_sha256(Path(lib_path)),
                             remove=True)

    def hello(self) -> dict:
        """The board daemon's hello (plus ``board``).

        Raises:
            DeviceUnavailable: unreachable, host key/auth refused, no daemon.
        """
        with self._lock:
            err = self._ensure(self._threads)
            if err is not None:
                raise DeviceUnavailable(err)
            return dict(self._session.hello)

    def _close(self) -> None:
        with self._lock:
            self._drop_session(polite=True)
            if self._lease is not None and self.leases is not None:
                self.leases.release(self._lease)
            self._lease = None
            self.state = BoardState.UNKNOWN

    # -------------------------------------------------------------- measure

    def measure(self, artifact_dir: Path, config: MeasureConfig) -> MeasureResult:
        """Upload (once per session) and time ``artifact_dir`` on the board.

        A throttled sample (vcgencmd bits 0-3 before or after) is invalid: the
        board rests ``cooldown_s`` and the measurement is repeated, up to
        ``config.max_remeasure`` times; a high CoV re-measures at once.
        Still throttled at the end -> ``unstable``.

        Returns:
            MeasureResult; errors: load_failed (manifest, arch, upload),
            device_lost, daemon_start, timeout, protocol, run_failed, unstable.
        """
        with self._lock:
            return self._measure(Path(artifact_dir).resolve(), config)

    def _measure(self, artifact_dir: Path, config: MeasureConfig) -> MeasureResult:
        try:
            manifest = read_manifest(artifact_dir)
        except ManifestError as exc:
            return MeasureResult.fail(MeasureErrorKind.LOAD_FAILED, str(exc))
        arch = None if manifest.arch is None else normalise_arch(manifest.arch)
        if arch is not None and arch != self.board.arch:  # before connecting or uploading anything
            return MeasureResult.fail(MeasureErrorKind.LOAD_FAILED,
                                      f"artifact {artifact_dir.name} is built for {manifest.arch} but "
                                      f"board {self.board.name!r} is {self.board.arch} (target "
                                      f"{self.board.target!r}); it is never sent there")
        self._hello_timeout_s = min(HELLO_TIMEOUT_S, config.timeout_s)
        err = self._ensure(config.num_threads)
        if err is not None:
            return MeasureResult(error=err)
        try:
            remote = self._session.put_artifact(artifact_dir, manifest, config.backend)
        except SshError as exc:
            e = self._fail(exc)
            if e.kind in (MeasureErrorKind.DEVICE_LOST, MeasureErrorKind.TIMEOUT):
                self._drop_session(polite=False)
            return MeasureResult(error=e)
        request = measure_request(remote, config)
        outcome = measure_until_stable(
            lambda: self.call("measure", timeout_s=config.timeout_s, daemon_threads=config.num_threads, **request),
            config, device=self.name, manifest=manifest,
            hello=lambda: self._session.hello if self._session and self._session.hello else {},
            source="emulated" if self.board.emulated else "measured", cooldown_s=self.board.cooldown_s,
            what=f"{artifact_dir.name} on board {self.board.name!r}",
        )
        if outcome.error is None:
            self.last_error, self.last_fatal = None, False
        return outcome

    def measure_interleaved(self, artifact_dirs: Sequence[Path], config: InterleavedConfig) -> InterleavedResult:
        """Upload each artifact (once per session, checksummed, as :meth:`measure`) and time them side by
        side in the board's daemon (:mod:`devices.interleaved`).

        Every artifact is checked against the board's arch before anything
        connects or uploads. An emulated board's value says ``source="emulated"``.

        Returns:
            InterleavedResult; errors: bad_request, load_failed (manifest,
            arch, upload), device_lost, daemon_start, timeout, protocol, run_failed.
        """
        dirs = check_artifact_dirs(artifact_dirs)
        if isinstance(dirs, MeasureError):
            return InterleavedResult(error=dirs)
        dirs = [d.resolve() for d in dirs]
        read = []
        for d in dirs:
            manifest = read_artifact_manifest(d)
            if isinstance(manifest, MeasureError):
                return InterleavedResult(error=manifest)
            if manifest.arch is not None and normalise_arch(manifest.arch) != self.board.arch:
                return InterleavedResult.fail(MeasureErrorKind.LOAD_FAILED,
                                              f"artifact {d.name} is built for {manifest.arch} but board "
                                              f"{self.board.name!r} is {self.board.arch} (target "
                                              f"{self.board.target!r}); it is never sent there")
            read.append(manifest)
        with self._lock:
            err = self._ensure(config.num_threads)
            if err is not None:
                return InterleavedResult(error=err)
            remotes = []
            for d, manifest in zip(dirs, read):
                try:
                    remotes.append(self._session.put_artifact(d, manifest, config.backend))
                except SshError as exc:
                    e = self._fail(exc)
                    if e.kind in (MeasureErrorKind.DEVICE_LOST, MeasureErrorKind.TIMEOUT):
                        self._drop_session(polite=False)
                    return InterleavedResult(error=e)
            outcome = run_interleaved(
                lambda fields: self.call("measure_interleaved", timeout_s=config.timeout_s,
                                         daemon_threads=config.num_threads, **fields),
                remotes, read, [d.name for d in dirs], config, device=self.name,
                hello=lambda: self._session.hello if self._session and self._session.hello else {},
                source="emulated" if self.board.emulated else "measured")
            if outcome.error is None:
                self.last_error, self.last_fatal = None, False
            return outcome
