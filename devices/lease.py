"""Exclusive, expiring board leases kept on the controller side in SQLite.

Why the controller side: a board is a plain SSH host (sshd + Python), and
every process that measures on it — several searches, a nightly benchmark,
``hilprune devices check`` — runs on the lab's controller machine(s) sharing
one lease database. SQLite gives an atomic compare-and-set
(``BEGIN IMMEDIATE``) without a server; the expiry is wall-clock time in the
row, so a killed client (no more heartbeats) frees its board after
``ttl_s`` at the latest, with nothing to clean up on the board. A live holder
renews the expiry from a heartbeat thread every ``ttl_s / 3``.
Limit: controllers on *different* machines need one shared database on a
local disk of one of them (SQLite over NFS is not safe); a board-side
``flock`` would be the next step for that.

States (labgrid style): a board is ``free`` (no row or an expired row) or
``leased`` (a row with a future expiry and a holder).

Quarantines live in the same file: a process that takes a board out of
service after repeated faults writes ``(board, reason, until)``, so the
controller's other farms sharing this file (tonight's nightly bench, the next
search, and running ones, which re-read the quarantines at most every 30 s:
``devices/farm.py``) skip that board too until ``until`` passes or
``hilprune devices check`` finds it healthy again and clears it. The farm that
wrote a quarantine skips the board for the rest of its own life.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["Lease", "LeaseManager", "Quarantine"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    board TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token TEXT NOT NULL,
    acquired_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    board TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    holder TEXT NOT NULL,
    since REAL NOT NULL,
    until REAL NOT NULL
);
"""


def local_iso(t: float) -> str:
    """Unix time ``t`` (s) as local ISO 8601 with its UTC offset, to the second (for people)."""
    return datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def describe_lease(board: str, held: dict | None) -> str:
    """``board 'b1' is leased by HOST:PID until 2026-12-01T13:02:11+00:00`` (local time) or ``... is free``."""
    if not held:
        return f"board {board!r} is free"
    return f"board {board!r} is leased by {held.get('holder')} until {local_iso(float(held['expires_at']))}"


def default_holder() -> str:
    """``host:pid`` of this process (who holds a lease, for humans)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Lease:
    """A held lease. ``lost`` is set when a renewal found it taken or expired."""

    board: str
    holder: str
    token: str
    expires_at: float
    lost: bool = False


@dataclass(frozen=True)
class Quarantine:
    """A board taken out of service: why, by whom (``host:pid``), and until when (Unix time, s)."""

    board: str
    reason: str
    holder: str
    since: float
    until: float


class LeaseManager:
    """Acquire, renew and release board leases in one SQLite file.

    Args:
        db_path: the lease database (created with its parent directory).
        ttl_s: seconds a lease lives without renewal (> 0).
        holder: label written into the row (default ``host:pid``).

    Thread-safe; every operation opens its own connection (cheap) so several
    processes and threads share the file safely.
    """

    def __init__(self, db_path: str | Path, ttl_s: float = 60.0, holder: str | None = None) -> None:
        if not ttl_s > 0:
            raise ValueError(f"lease ttl_s must be > 0, got {ttl_s!r}")
        self.db_path = Path(db_path)
        self.ttl_s = float(ttl_s)
        self.holder = holder or default_holder()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.executescript(_SCHEMA)
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        con.execute("PRAGMA busy_timeout = 30000")
        return con

    def acquire(self, board: str, wait_s: float = 0.0, poll_s: float = 0.2) -> Lease | None:
        """Take the lease of ``board`` if it is free or expired.

        Args:
            board: board name.
            wait_s: keep trying this long (seconds) while another holder has it.
            poll_s: pause between tries.

        Returns:
            The :class:`Lease` (renewed by the heartbeat until released), or
            None when the board stayed leased by someone else.
        """
        deadline = time.monotonic() + wait_s
        while True:
            lease = self._try_acquire(board)
            if lease is not None:
                with self._lock:
                    self._held[board] = lease
                self._ensure_heartbeat()
                logger.debug("lease %s acquired by %s until %.1f", board, lease.holder, lease.expires_at)
                return lease
            if time.monotonic() >= deadline:
                return None
            time.sleep(poll_s)

    def _try_acquire(self, board: str) -> Lease | None:
        now = time.time()
        token = uuid.uuid4().hex
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                row = con.execute("SELECT holder, expires_at FROM leases WHERE board = ?", (board,)).fetchone()
                if row is not None and row[1] > now:
                    con.execute("ROLLBACK")
                    return None
                con.execute("INSERT OR REPLACE INTO leases(board, holder, token, acquired_at, expires_at) "
                            "VALUES (?, ?, ?, ?, ?)", (board, self.holder, token, now, now + self.ttl_s))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return Lease(board, self.holder, token, now + self.ttl_s)

    def renew(self, lease: Lease) -> bool:
        """Extend ``lease`` by ``ttl_s`` from now; False (and ``lease.lost``) if it was lost."""
        now = time.time()
        with self._connect() as con:
            cur = con.execute("UPDATE leases SET expires_at = ? WHERE board = ? AND token = ? AND expires_at > ?",
                              (now + self.ttl_s, lease.board, lease.token, now))
        if cur.rowcount != 1:
            lease.lost = True
            logger.warning("lease of board %s lost (expired or taken over)", lease.board)
            return False
        lease.expires_at = now + self.ttl_s
        return True

    def release(self, lease: Lease) -> None:
        """Give the lease back (no-op if it was lost)."""
        with self._lock:
            self._held.pop(lease.board, None)
        with self._connect() as con:
            con.execute("DELETE FROM leases WHERE board = ? AND token = ?", (lease.board, lease.token))

    def holder_of(self, board: str) -> dict | None:
        """``{"holder", "expires_at", "acquired_at"}`` of a live lease, or None if free."""
        with self._connect() as con:
            row = con.execute("SELECT holder, acquired_at, expires_at FROM leases WHERE board = ?",
                              (board,)).fetchone()
        if row is None or row[2] <= time.time():
            return None
        return {"holder": row[0], "acquired_at": row[1], "expires_at": row[2]}

    # ------------------------------------------------------------ quarantine

    def quarantine(self, board: str, reason: str, for_s: float) -> Quarantine:
        """Take ``board`` out of service for every controller sharing this file, for ``for_s`` seconds.

        A second quarantine of the same board replaces the first (latest
        reason, new expiry).

        Raises:
            ValueError: ``for_s`` not > 0.
        """
        if not for_s > 0:
            raise ValueError(f"quarantine for_s must be > 0 seconds, got {for_s!r}")
        now = time.time()
        q = Quarantine(board, reason, self.holder, now, now + float(for_s))
        with self._connect() as con:
            con.execute("INSERT OR REPLACE INTO quarantine(board, reason, holder, since, until) VALUES (?, ?, ?, ?, ?)",
                        (q.board, q.reason, q.holder, q.since, q.until))
        return q

    def quarantines(self) -> dict[str, Quarantine]:
        """Live quarantines (``until`` in the future), by board name."""
        with self._connect() as con:
            rows = con.execute("SELECT board, reason, holder, since, until FROM quarantine WHERE until > ?",
                               (time.time(),)).fetchall()
        return {r[0]: Quarantine(*r) for r in rows}

    def clear_quarantine(self, board: str) -> bool:
        """Put ``board`` back into service; True if a live quarantine was removed."""
        with self._connect() as con:
            cur = con.execute("DELETE FROM quarantine WHERE board = ? AND until > ?", (board, time.time()))
            con.execute("DELETE FROM quarantine WHERE until <= ?", (time.time(),))
        return cur.rowcount > 0

    # ------------------------------------------------------------- heartbeat

    def _ensure_heartbeat(self) -> None:
        with self._lock:
            if self._heartbeat is not None:
                return
            self._stop.clear()
            self._heartbeat = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
            self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3.0):  # noqa: B007
            with self._lock:
                held = list(self._held.values())
                if not held:
                    self._heartbeat = None
                    return
            for lease in held:
                try:
                    if not self.renew(lease):
                        with self._lock:
                            self._held.pop(lease.board, None)
                except sqlite3.Error as exc:  # keep beating; the expiry is the safety net
                    logger.warning("lease heartbeat for %s failed: %r", lease.board, exc)
        with self._lock:
            self._heartbeat = None

    def close(self) -> None:
        """Release every held lease and stop the heartbeat."""
        with self._lock:
            held = list(self._held.values())
        for lease in held:
            self.release(lease)
        self._stop.set()
        with self._lock:
            beat = self._heartbeat
        if beat is not None:
            beat.join(timeout=5)
