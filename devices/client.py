"""Client side of the daemon's JSON-lines protocol (version 1) over byte streams.

:class:`DaemonSession` needs only a writable byte stream (the daemon's stdin),
a readable one (its stdout) and optionally its stderr, so the same code serves
a local subprocess and, later, an SSH channel. A reader thread turns stdout
lines into a queue (so every read has a timeout); a second thread drains
stderr into a bounded buffer so a chatty daemon never blocks on a full pipe.
Every failure comes back as a :class:`~devices.base.MeasureError` value.
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
from typing import IO, Any

from devices.base import MeasureError, MeasureErrorKind

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
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
                 stderr_lines: int = 200) -> None:
        self._stdin = stdin
        self._stdout = stdout
        self._replies: queue.Queue = queue.Queue()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self._ids = itertools.count(1)
        self.broken: str | None = None
        self._reader = threading.Thread(target=self._read_stdout, name="daemon-stdout", daemon=True)
        self._reader.start()
        if stderr is not None:
            threading.Thread(target=self._read_stderr, args=(stderr,), name="daemon-stderr", daemon=True).start()

    def _read_stdout(self) -> None:
        try:
            for line in iter(self._stdout.readline, b""):
                self._replies.put(line)
        except (OSError, ValueError) as exc:
            logger.debug("daemon stdout closed: %r", exc)
        self._replies.put(_EOF)

    def _read_stderr(self, stream: IO[bytes]) -> None:
        try:
            for line in iter(stream.readline, b""):
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
            self._stdin.write(payload)
            self._stdin.flush()
        except (OSError, ValueError) as exc:
            return self._fail(MeasureErrorKind.DEVICE_LOST, f"cannot write to daemon: {exc!r}", broken=True)
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._replies.get(timeout=max(left, 0.0)) if left > 0 else self._replies.get_nowait()
            except queue.Empty:
                return self._fail(MeasureErrorKind.TIMEOUT, f"no reply to {op!r} within {timeout_s:g} s",
                                  broken=True)
            if line is _EOF:
                self._replies.put(_EOF)  # stay at EOF for later readers
                return self._fail(MeasureErrorKind.DEVICE_LOST, f"daemon closed its output during {op!r}",
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
        """Close our end of the daemon's stdin (the daemon exits on EOF)."""
        try:
            self._stdin.close()
        except (OSError, ValueError):
            pass
