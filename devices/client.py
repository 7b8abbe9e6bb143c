"""Client side of the daemon's JSON-lines protocol (version 1) over byte streams.

:class:`DaemonSession` needs only a writable byte stream (the daemon's stdin),
a readable one (its stdout) and optionally its stderr, so the same code serves
a local subprocess and an SSH channel. A reader thread turns stdout lines
into a queue (so every read has a timeout); a second thread drains stderr
into a bounded buffer so a chatty daemon never blocks on a full pipe.
Every failure comes back as a :class:`~devices.base.MeasureError` value.

Reads are bounded: a reply line longer than :data:`MAX_LINE_BYTES` or more
than :data:`MAX_QUEUED_LINES` unread lines (a board flooding its stdout)
break the session with a ``protocol`` error naming the bound; stderr lines
are cut at :data:`MAX_LINE_BYTES` and only the last ``stderr_lines`` kept.

Liveness: with ``heartbeat_s`` the session writes a blank line (which the
daemon ignores) every ``heartbeat_s`` seconds, so the board-side watchdog
(``devices/watchdog.py --dead-link-s``) can tell a live controller from a dead
one without waiting for stdin EOF; with ``liveness`` (a callable returning
None or why the link is dead) a waiting call ends as ``device_lost`` as soon
as the transport knows the peer is gone, not at the request timeout.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import IO, Any, Callable

from devices.base import MeasureError, MeasureErrorKind

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 8 << 20  #: longest reply / stderr line read from a daemon (bytes)
MAX_QUEUED_LINES = 256  #: unread reply lines kept before the session is declared broken
_EOF = object()
_DAEMON_KINDS = {"bad_request", "load_failed", "run_failed"}


@dataclass(frozen=True, slots=True)
class Reply:
    """One answered request: exactly one of ``result`` (dict) and ``error``."""

    result: dict | None = None
    error: MeasureError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class DaemonSession:
    """A protocol session with one daemon over a pair of byte streams.

    Args:
        stdin: writable binary stream to the daemon.
        stdout: readable binary stream from the daemon (one JSON reply a line).
        stderr: optional readable binary stream of the daemon's logs.
        stderr_lines: how many stderr lines to keep (older ones are dropped).

    After a timeout or a lost stream the session is ``broken``: the caller
    must discard it (and kill the daemon); later calls return ``device_lost``.
    Not thread-safe: one request at a time.
    """

    def __init__(self, stdin: IO[bytes], stdout: IO[bytes], stderr: IO[bytes] | None = None,
                 stderr_lines: int = 200, *, heartbeat_s: float | None = None,
                 liveness: Callable[[], str | None] | None = None) -> None:
        self._stdin = stdin
        self._stdout = stdout
        self._replies: queue.Queue = queue.Queue(maxsize=MAX_QUEUED_LINES + 1)
        self._overflow: str | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self._ids = itertools.count(1)
        self._write_lock = threading.Lock()
        self._closed = threading.Event()
        self._liveness = liveness
        self.broken: str | None = None
        self._reader = threading.Thread(target=self._read_stdout, name="daemon-stdout", daemon=True)
        self._reader.start()
        if stderr is not None:
            threading.Thread(target=self._read_stderr, args=(stderr,), name="daemon-stderr", daemon=True).start()
        if heartbeat_s is not None:
            if not heartbeat_s > 0:
                raise ValueError(f"heartbeat_s must be > 0, got {heartbeat_s!r}")
            threading.Thread(target=self._heartbeat, args=(float(heartbeat_s),), name="daemon-heartbeat",
                             daemon=True).start()

    def _read_stdout(self) -> None:
        try:
            while True:
                line = self._stdout.readline(MAX_LINE_BYTES + 1)
                if not line:
                    break
                if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                    self._overflow = f"the daemon wrote a line over {MAX_LINE_BYTES} bytes (a faulty board)"
                    break
                try:
                    self._replies.put_nowait(line)
                except queue.Full:
                    self._overflow = (f"the daemon wrote over {MAX_QUEUED_LINES} lines nobody asked for "
                                      f"(a faulty board)")
                    break
        except (OSError, ValueError) as exc:
            logger.debug("daemon stdout closed: %r", exc)
        while True:  # make room for the end marker: the waiting call must wake up
            try:
                self._replies.put_nowait(_EOF)
                break
            except queue.Full:
                try:
                    self._replies.get_nowait()
                except queue.Empty:
                    pass

    def _heartbeat(self, every_s: float) -> None:
        while not self._closed.wait(every_s):
            if self.broken is not None:
                return
            try:
                with self._write_lock:
                    self._stdin.write(b"\n")
                    self._stdin.flush()
            except (OSError, ValueError, EOFError):
                return
            except Exception as exc:  # noqa: BLE001 - a transport's own error type (paramiko): stop beating
                logger.debug("heartbeat stopped: %r", exc)
                return

    def _read_stderr(self, stream: IO[bytes]) -> None:
        try:
            for line in iter(lambda: stream.readline(MAX_LINE_BYTES), b""):
                text = line.decode("utf-8", "replace").rstrip()
                self._stderr_tail.append(text)
                logger.debug("daemon: %s", text)
        except (OSError, ValueError):
            pass

    def stderr_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines the daemon wrote to stderr, joined by newlines."""
        return "\n".join(list(self._stderr_tail)[-lines:])

    def _fail(self, kind: MeasureErrorKind, message: str, *, broken: bool) -> Reply:
        if broken:
            self.broken = message
        tail = self.stderr_tail(10)
        if tail and kind in (MeasureErrorKind.DEVICE_LOST, MeasureErrorKind.TIMEOUT,
                             MeasureErrorKind.PROTOCOL, MeasureErrorKind.DAEMON_START):
            message = f"{message}; daemon stderr tail:\n{tail}"
        return Reply(error=MeasureError(kind, message))

    def call(self, op: str, timeout_s: float, **fields: Any) -> Reply:
        """Send ``{"v":1,"id":..,"op":op, **fields}`` and wait for its reply.

        Args:
            op: the daemon operation ("hello", "measure", "bye", ...).
            timeout_s: seconds to wait for the reply (> 0).
            fields: more JSON-serialisable request fields.

        Returns:
            A :class:`Reply`; errors are ``timeout`` (no reply in time; the
            session is then broken), ``device_lost`` (stream closed),
            ``protocol`` (a reply that is not JSON or not v1), or the
            daemon's own ``bad_request`` / ``load_failed`` / ``run_failed``.
        """
        if self.broken is not None:
            return Reply(error=MeasureError(MeasureErrorKind.DEVICE_LOST,
                                            f"session unusable after: {self.broken}"))
        rid = next(self._ids)
        payload = json.dumps({"v": PROTOCOL_VERSION, "id": rid, "op": op, **fields}).encode() + b"\n"
        try:
            with self._write_lock:
                self._stdin.write(payload)
                self._stdin.flush()
        except (OSError, ValueError, EOFError) as exc:
            return self._fail(MeasureErrorKind.DEVICE_LOST, f"cannot write to daemon: {exc!r}", broken=True)
        deadline = time.monotonic() + timeout_s
        dropped = 0
        while True:
            left = deadline - time.monotonic()
            dead = self._liveness() if self._liveness is not None else None
            if dead is not None:
                return self._fail(MeasureErrorKind.DEVICE_LOST, f"{dead} (while waiting for {op!r})", broken=True)
            try:  # in slices of <= 0.5 s so a dead link is seen without waiting for the timeout
                slice_s = min(left, 0.5) if self._liveness is not None else left
                line = self._replies.get(timeout=slice_s) if left > 0 else self._replies.get_nowait()
            except queue.Empty:
                if time.monotonic() < deadline:
                    continue
                return self._fail(MeasureErrorKind.TIMEOUT, f"no reply to {op!r} within {timeout_s:g} s",
                                  broken=True)
            if line is _EOF:
                self._replies.put(_EOF)  # stay at EOF for later readers
                if self._overflow is not None:
                    return self._fail(MeasureErrorKind.PROTOCOL, self._overflow, broken=True)
                dead = self._liveness() if self._liveness is not None else None
                return self._fail(MeasureErrorKind.DEVICE_LOST, dead or f"daemon closed its output during {op!r}",
                                  broken=True)
            try:
                reply = json.loads(line)
            except ValueError:
                return self._fail(MeasureErrorKind.PROTOCOL,
                                  f"reply is not JSON: {line[:200]!r}", broken=True)
            if not isinstance(reply, dict) or reply.get("v") != PROTOCOL_VERSION:
                return self._fail(MeasureErrorKind.PROTOCOL,
                                  f"reply is not protocol v{PROTOCOL_VERSION}: {str(reply)[:200]}", broken=True)
            if reply.get("id") != rid:
                dropped += 1
                if dropped > MAX_QUEUED_LINES:
                    return self._fail(MeasureErrorKind.PROTOCOL,
                                      f"the daemon wrote over {MAX_QUEUED_LINES} replies nobody asked for while "
                                      f"{op!r} waited (a faulty board)", broken=True)
                if dropped <= 3:
                    logger.warning("dropping daemon reply with id %r while waiting for %r", reply.get("id"), rid)
                continue
            if reply.get("ok") is True and isinstance(reply.get("result"), dict):
                return Reply(result=reply["result"])
            err = reply.get("error")
            if reply.get("ok") is False and isinstance(err, dict):
                kind = err.get("kind")
                msg = str(err.get("message", ""))
                if kind in _DAEMON_KINDS:
                    return Reply(error=MeasureError(MeasureErrorKind(kind), msg))
                return self._fail(MeasureErrorKind.PROTOCOL, f"unknown error kind {kind!r}: {msg}", broken=False)
            return self._fail(MeasureErrorKind.PROTOCOL, f"malformed reply: {str(reply)[:200]}", broken=True)

    def close(self) -> None:
        """Stop the heartbeat and close our end of the daemon's stdin (the daemon exits on EOF)."""
        self._closed.set()
        try:
            with self._write_lock:
                self._stdin.close()
        except (OSError, ValueError):
            pass
