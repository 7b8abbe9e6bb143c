"""A farm of SSH boards as one device: ``farm:TAG`` (and ``ssh:BOARD``).

- **Boards**: the inventory boards carrying ``TAG`` (optionally only those of
  one target preset). Each is an :class:`~devices.ssh.SshDevice` holding an
  exclusive lease (``devices/lease.py``) while its session is open.
- **Queue**: :meth:`FarmDevice.submit` hands requests to a
  :class:`Dispatcher`; the default :class:`ThreadDispatcher` runs as many
  requests at once as there are boards, and each request takes an idle
  healthy board (the least used one), so boards work in parallel, one
  measurement at a time each. A Ray actor pool or TVM's RPC tracker could
  take the dispatcher's place: the interface is ``submit(fn, *args) -> Future``.
- **Pinning**: inside ``with farm.pinned():`` every request goes to one board
  (chosen at entry), so interleaved A/B rounds compare on one machine; if that
  board is quarantined meanwhile, pinning ends and requests fail over as usual.
  A **run pin** (:meth:`FarmDevice.pin_run`: a search, whose latencies must all
  come from one board) lasts until :meth:`FarmDevice.unpin_run`; when its
  board is quarantined the farm moves the pin to another healthy board and
  records the move in :attr:`FarmDevice.board_changes`, so the run can
  re-measure its reference there and say so.
- **Faults**: a request that fails with a board fault (``device_lost``,
  ``daemon_start``, ``timeout``, ``protocol``) is retried on another board
  (on the same board while pinned); ``max_failures`` consecutive faults (or
  one host-key/auth refusal) quarantine the board with the reason. A
  successful result the caller later finds unusable
  (:meth:`FarmDevice.report_bad_result`, e.g. output unlike ONNX Runtime's)
  counts as a fault of the board that measured it, in its place in that
  board's sequence. Finished results are values already handed back, so
  nothing measured before a failure is lost.
- **Shared quarantine**: with a lease database a quarantine this farm finds is
  written there for ``quarantine_s``, and this farm skips that board for the
  rest of its life. Quarantines written by others (the controller's other
  processes, ``hilprune devices check``) are read when the farm is made and
  re-read at most every ``quarantine_refresh_s`` (30 s) when the farm picks a
  board, and as soon as a known one's ``until`` passes: a board quarantined
  elsewhere is skipped from then on, and one whose shared quarantine expired
  or was cleared returns to service.
- **Fallback** when no healthy board is left: ``"sim"`` answers from the
  simulator device ``sim:<target preset>`` (results say ``source=
  "simulated"``), ``"fail"`` returns a ``device_lost`` error whose message
  starts with ``farm exhausted`` and sets :attr:`FarmDevice.exhausted`. A
  search never uses ``"sim"`` here (one simulated answer among measured ones
  would mix sources): it makes its farm with ``"fail"`` and, when told to
  fall back, switches the whole run to the simulator itself.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from devices.base import (Device, DeviceUnavailable, MeasureConfig, MeasureError, MeasureErrorKind, MeasureResult,
                          Measurement)
from devices.client import Reply
from devices.interleaved import InterleavedConfig, InterleavedResult
from devices.inventory import FALLBACKS, Board, Inventory, InventoryError, load_inventory
from devices.lease import LeaseManager, Quarantine, describe_lease
from devices.ssh import BoardState, SshDevice

logger = logging.getLogger(__name__)

__all__ = ["Dispatcher", "FarmDevice", "ThreadDispatcher", "make_farm_device"]

#: Error kinds that blame the board (retried elsewhere, counted towards quarantine).
BOARD_FAULTS = frozenset({MeasureErrorKind.DEVICE_LOST, MeasureErrorKind.DAEMON_START,
                          MeasureErrorKind.TIMEOUT, MeasureErrorKind.PROTOCOL})
EXHAUSTED = "farm exhausted"
#: Seconds between re-reads of the lease database's quarantines (see the module doc).
QUARANTINE_REFRESH_S = 30.0
_OK = object()  # a successful outcome that is not a Measurement (tuning timings)
_RECENT = 64  # outcomes remembered per board, so a late report_bad_result finds its place


class Dispatcher(abc.ABC):
    """Runs farm requests somewhere; ``submit(fn, *args) -> Future`` (same as an executor)."""

    @abc.abstractmethod
    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Schedule ``fn(*args)``; its future holds the return value."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Wait for queued work, then stop."""


class ThreadDispatcher(Dispatcher):
    """``concurrent.futures`` threads, one per board (requests beyond that queue)."""

    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="farm")

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._pool.submit(fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class FarmDevice(Device):
    """Measure on whichever matching healthy board is free.

    Args:
        boards: the candidate boards (at least one).
        leases: shared lease manager (None: no leases, single-controller use).
        max_failures: consecutive board faults that quarantine a board.
        fallback: ``"fail"`` or ``"sim"`` (see the module doc).
        name: device name (e.g. ``farm:rpi4``).
        dispatcher: where requests run (default :class:`ThreadDispatcher`).
        lease_wait_s: passed to each :class:`SshDevice`.
        quarantine_s: how long a quarantine found here is shared through
            ``leases`` (s).
        quarantine_refresh_s: least time between two reads of the shared
            quarantines in ``leases`` (s); boards quarantined there when the
            farm is made start quarantined.
        wait_for_lease_s: when every usable board is leased by another
            holder, how long (s) a request waits for one (a warning line every
            10 s names each holder and its expiry in local time); a free board
            of the farm is always taken first.

    Raises:
        ValueError: no boards, or a bad fallback, max_failures or time.
    """

    def __init__(self, boards: tuple[Board, ...] | list[Board], *, leases: LeaseManager | None = None,
                 max_failures: int = 3, fallback: str = "fail", name: str = "farm",
                 dispatcher: Dispatcher | None = None, lease_wait_s: float = 0.0,
                 quarantine_s: float = 1800.0, quarantine_refresh_s: float = QUARANTINE_REFRESH_S,
                 wait_for_lease_s: float = 0.0) -> None:
        super().__init__(name)
        if not boards:
            raise ValueError(f"{name}: no boards to measure on")
        if fallback not in FALLBACKS:
            raise ValueError(f"{name}: fallback must be one of {FALLBACKS}, got {fallback!r}")
        if max_failures < 1:
            raise ValueError(f"{name}: max_failures must be >= 1, got {max_failures}")
        if not quarantine_s > 0:
            raise ValueError(f"{name}: quarantine_s must be > 0 seconds, got {quarantine_s!r}")
        if not quarantine_refresh_s >= 0:
            raise ValueError(f"{name}: quarantine_refresh_s must be >= 0 seconds, got {quarantine_refresh_s!r}")
        self.boards = {b.name: SshDevice(b, leases, lease_wait_s=lease_wait_s, name=name) for b in boards}
        self.leases = leases
        self.wait_for_lease_s = max(0.0, float(wait_for_lease_s))
        self.max_failures = max_failures
        self.fallback = fallback
        #: consecutive board faults per board (reported bad results included)
        self.failures: dict[str, int] = {b: 0 for b in self.boards}
        self.quarantine_s = float(quarantine_s)
        self.quarantine_refresh_s = float(quarantine_refresh_s)
        #: board -> why it is skipped (found here, or read from the lease database)
        self.quarantined: dict[str, str] = {}
        self.measured_on: dict[str, int] = {b: 0 for b in self.boards}
        self.exhausted = False
        self._own: set[str] = set()  # quarantined by this farm: skipped for its life
        self._shared_until: dict[str, float] = {}  # quarantined by others: board -> until (Unix time)
        # per board, the latest outcomes in order: [Measurement/_OK/None, bad?]
        self._recent: dict[str, collections.deque] = {b: collections.deque(maxlen=_RECENT) for b in self.boards}
        self._busy: set[str] = set()
        self._pin: str | None = None
        self._pin_depth = 0
        self._run_pin = False  # pin_run(): the pin outlives pinned() blocks and moves on quarantine
        #: moves of a run pin: {"from", "to", "reason", "at"} (Unix time)
        self.board_changes: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        if leases is not None:
            self._apply_shared(leases.quarantines())
        self._next_refresh = time.monotonic() + self.quarantine_refresh_s
        self._dispatcher = dispatcher or ThreadDispatcher(len(self.boards))
        self._sim: Device | None = None
        self._sim_lock = threading.Lock()

    # ---------------------------------------------------------------- boards

    def healthy(self) -> list[str]:
        """Names of boards not quarantined (re-reads shared quarantines when due)."""
        self._refresh_quarantines()
        with self._cond:
            return self._healthy_locked()

    def _healthy_locked(self) -> list[str]:
        return [b for b in self.boards if b not in self.quarantined]

    def _apply_shared(self, live: dict[str, Quarantine] | None) -> None:
        """Adopt the lease database's live quarantines (``None``: unknown, only expire by ``until``).

        Holds the lock. Boards this farm quarantined itself are left alone.
        """
        with self._cond:
            now = time.time()
            changed = False
            for board in self.boards:
                if board in self._own:
                    continue
                q = None if live is None else live.get(board)
                if q is not None and q.until > now:
                    text = (f"quarantined by {q.holder} until "
                            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(q.until))}: {q.reason}")
                    if self.quarantined.get(board) != text:
                        logger.warning("%s: board %s skipped: %s", self.name, board, text)
                        changed = True
                    self.quarantined[board] = text
                    self._shared_until[board] = q.until
                elif board in self._shared_until and (live is not None or self._shared_until[board] <= now):
                    del self._shared_until[board]
                    self.quarantined.pop(board, None)
                    self.failures[board] = 0
                    self._recent[board].clear()
                    logger.warning("%s: board %s back in service (its shared quarantine expired or was cleared)",
                                   self.name, board)
                    changed = True
            if changed:
                self._cond.notify_all()

    def _refresh_quarantines(self) -> None:
        """Re-read the shared quarantines if ``quarantine_refresh_s`` passed or a known one expired."""
        if self.leases is None:
            return
        with self._cond:
            now = time.monotonic()
            expired = any(u <= time.time() for u in self._shared_until.values())
            if now < self._next_refresh and not expired:
                return
            self._next_refresh = now + self.quarantine_refresh_s
        try:
            live = self.leases.quarantines()
        except Exception as exc:  # noqa: BLE001 - keep what is known; try again next interval
            logger.warning("%s: could not re-read the shared quarantines in %s: %r", self.name,
                           getattr(self.leases, "db_path", "the lease database"), exc)
            live = None
        self._apply_shared(live)

    is_board = True

    def _pinned_board(self) -> str | None:
        """The pinned board, or None. Holds the lock.

        If the pinned board was quarantined: a run pin moves to the least used
        healthy board (recorded in :attr:`board_changes`); a plain pin ends.
        """
        if self._pin is not None and self._pin in self.quarantined:
            old = self._pin
            healthy = self._healthy_locked()
            if self._run_pin and healthy:
                self._pin = min(healthy, key=lambda b: self.measured_on[b])
                self.board_changes.append({"from": old, "to": self._pin, "reason": self.quarantined[old],
                                           "at": time.time()})
                logger.warning("%s: run's board %s is quarantined (%s); the run moves to board %s",
                               self.name, old, self.quarantined[old], self._pin)
            else:
                logger.warning("%s: pinned board %s is quarantined; pinning ends, requests fail over as usual",
                               self.name, old)
                self._pin = None
                self._run_pin = False
        return self._pin

    def pin_run(self, prefer: str | None = None) -> str | None:
        """Pin every request of this farm to one board until :meth:`unpin_run` (a whole search).

        Args:
            prefer: the board to pin (a resumed run's board) if it is healthy;
                else the least used healthy board.

        Returns:
            The pinned board, or None when no healthy board is left.

        Raises:
            ValueError: ``prefer`` is not a board of this farm.
        """
        if prefer is not None and prefer not in self.boards:
            raise ValueError(f"{self.name}: board {prefer!r} is not one of {sorted(self.boards)}")
        self._refresh_quarantines()
        with self._cond:
            healthy = self._healthy_locked()
            if not healthy:
                return None
            board = prefer if prefer in healthy else min(healthy, key=lambda b: self.measured_on[b])
            if prefer is not None and board != prefer:
                self.board_changes.append({"from": prefer, "to": board, "reason": self.quarantined.get(prefer, ""),
                                           "at": time.time()})
                logger.warning("%s: the run's board %s is quarantined (%s); the run moves to board %s",
                               self.name, prefer, self.quarantined.get(prefer), board)
            self._pin, self._run_pin = board, True
            logger.info("%s: run pinned to board %s", self.name, board)
            return board

    def unpin_run(self) -> None:
        """End :meth:`pin_run` (pinned() blocks still open keep their board until they exit)."""
        with self._cond:
            self._run_pin = False
            if self._pin_depth == 0:
                self._pin = None
            self._cond.notify_all()

    @property
    def pinned_board(self) -> str | None:
        """The board requests go to now (a run pin or a pinned() block), or None."""
        with self._cond:
            return self._pinned_board()

    def _take(self, tried: set[str]) -> str | None:
        """Block until an idle healthy untried board is free; None if none can ever be.

        While pinned, only the pinned board is taken (waiting while it is busy).
        """
        while True:
            self._refresh_quarantines()
            with self._cond:
                pin = self._pinned_board()
                if pin is not None and pin not in tried:
                    candidates = [pin]
                else:
                    candidates = [b for b in self._healthy_locked() if b not in tried]
                if not candidates:
                    return None
                idle = [b for b in candidates if b not in self._busy]
                if idle:
                    board = min(idle, key=lambda b: self.measured_on[b])  # spread the load
                    self._busy.add(board)
                    return board
                self._cond.wait(timeout=1.0)

    def _give_back(self, board: str) -> None:
        with self._cond:
            self._busy.discard(board)
            self._cond.notify_all()

    @contextlib.contextmanager
    def pinned(self) -> Iterator[str | None]:
        """While active, send every request of this farm to one healthy board.

        The board is the least used idle healthy one at entry (waiting while
        all are busy); requests wait for it while it is busy, and a board
        fault is retried on it (not elsewhere) until it is quarantined. If
        it is quarantined (or leased away) meanwhile, pinning ends and
        requests fail over as usual. Nested or concurrent ``pinned()``
        blocks share the one board; pinning ends when the last one exits.

        Yields:
            The pinned board's name, or None when no healthy board is left.
        """
        with self._cond:
            self._pin_depth += 1
            board = self._pinned_board()
        try:
            if board is None:
                board = self._take(set())
                with self._cond:
                    if board is not None:
                        self._busy.discard(board)
                        if self._pin is None:
                            self._pin = board
                            logger.info("%s: requests pinned to board %s", self.name, board)
                        board = self._pin
                        self._cond.notify_all()
                if board is None:
                    logger.warning("%s: no healthy board to pin; requests fall back as usual", self.name)
            yield board
        finally:
            with self._cond:
                self._pin_depth -= 1
                if self._pin_depth == 0 and self._pin is not None and not self._run_pin:
                    logger.info("%s: requests no longer pinned to board %s", self.name, self._pin)
                    self._pin = None
                self._cond.notify_all()

    def _judge(self, board: str, kind: str, message: str, fatal: bool) -> str | None:
        """Quarantine ``board`` if its fault count (or a fatal fault) says so. Holds the lock.

        Returns:
            The reason when the board was quarantined now (to share), else None.
        """
        if board in self._own or not (fatal or self.failures[board] >= self.max_failures):
            return None
        reason = (f"{self.failures[board]} consecutive failure(s), last {kind}: "
                  f"{(message.splitlines() or [''])[0][:300]}")
        self.quarantined[board] = reason
        self._own.add(board)
        self._shared_until.pop(board, None)
        logger.warning("%s: board %s quarantined: %s", self.name, board, reason)
        self._cond.notify_all()
        return reason

    def _share(self, board: str, reason: str | None) -> None:
        """Write a quarantine found here to the lease database (best effort, outside the lock)."""
        if reason is None or self.leases is None:
            return
        try:
            self.leases.quarantine(board, reason, self.quarantine_s)
        except Exception as exc:  # noqa: BLE001 - sharing is best effort; this run skips it anyway
            logger.warning("%s: could not share the quarantine of %s: %r", self.name, board, exc)

    def _record(self, board: str, result: MeasureResult | Reply, dev: SshDevice) -> bool:
        """Book a result; True when it was a board fault (retry elsewhere)."""
        with self._cond:
            if result.ok:
                self.failures[board] = 0
                self.measured_on[board] += 1
                self._recent[board].append([result.value if isinstance(result, MeasureResult) else _OK, False])
                return False
            if dev.state is BoardState.BUSY:  # leased by another controller: not the board's fault
                return True
            if result.error.kind not in BOARD_FAULTS and not dev.last_fatal:
                return False
            self.failures[board] += 1
            self._recent[board].append([None, True])
            share = self._judge(board, result.error.kind.value, result.error.message, dev.last_fatal)
        self._share(board, share)
        return True

    def report_bad_result(self, measurement: Measurement, kind: str, reason: str) -> None:
        """Count an unusable successful Measurement as a fault of the board that measured it.

        The board is ``measurement.hello["board"]``. The result takes its
        place in that board's sequence of outcomes, so it breaks the run of
        successes it was part of: ``max_failures`` consecutive faults
        (reported ones included) quarantine the board, shared through the
        lease database like any other. Each measurement counts once; one not
        measured by a board of this farm (e.g. the simulator fallback's) is
        logged and ignored.
        """
        board = (getattr(measurement, "hello", None) or {}).get("board")
        if board not in self.boards:
            logger.warning("%s: %s result not measured on a board of this farm (board %r); nobody to blame: %s",
                           self.name, kind, board, reason)
            return
        with self._cond:
            recent = self._recent[board]
            entry = next((e for e in recent if e[0] == measurement), None)  # the same result, or an equal copy
            if entry is not None and entry[1]:
                logger.info("%s: board %s: %s result already reported", self.name, board, kind)
                return
            if entry is None:  # older than what is remembered: a fault now
                recent.append([measurement, True])
            else:
                entry[1] = True
            trailing = 0
            for e in reversed(recent):
                if not e[1]:
                    break
                trailing += 1
            self.failures[board] = trailing
            logger.warning("%s: board %s returned an unusable result (%s, %d consecutive failure(s)): %s",
                           self.name, board, kind, trailing, reason)
            share = self._judge(board, kind, reason, fatal=False)
        self._share(board, share)

    # --------------------------------------------------------------- measure

    def measure(self, artifact_dir: Path, config: MeasureConfig) -> MeasureResult:
        """Measure on one free healthy board (the pinned one inside :meth:`pinned`), retrying board faults
        on the others.

        Returns:
            The first successful or non-board-fault result; after every board
            failed, the last board fault; with no healthy board left, the
            fallback's answer or a ``device_lost`` "farm exhausted" error.
        """
        return self._on_board(lambda dev: dev.measure(artifact_dir, config),
                              lambda: self._no_board(artifact_dir, config), Path(artifact_dir).name)

    def measure_interleaved(self, artifact_dirs: Sequence[Path], config: InterleavedConfig) -> InterleavedResult:
        """Time the artifacts side by side, all on ONE board: the whole measurement (every chunk of
        rounds) is one job of one board's :class:`SshDevice`; inside the caller's :meth:`pinned` that
        board is the pinned one, so a caller's successive interleaved measurements (the candidates of
        one search step, the final rounds) stay on one machine.

        A board fault is retried on another board from scratch (on the pinned board while pinned); the
        value's ``hello["board"]`` names the board. With no healthy board left, the fallback answers
        (``sim``: a simulated ratio) or a ``device_lost`` "farm exhausted" error.
        """
        dirs = [Path(d) for d in artifact_dirs]

        def no_board() -> InterleavedResult:
            if self.fallback == "sim":
                sim = self._sim_device()
                if isinstance(sim, Device):
                    logger.warning("%s: no healthy board; interleaved ratio from %s (simulated)",
                                   self.name, sim.name)
                    return sim.measure_interleaved(dirs, config)
            self.exhausted = True
            return InterleavedResult.fail(MeasureErrorKind.DEVICE_LOST,
                                          f"{EXHAUSTED}: no healthy board left in {self.name} ({self._why()})")

        def job(dev: SshDevice) -> InterleavedResult:
            try:
                return dev.measure_interleaved(dirs, config)
            except Exception as exc:  # noqa: BLE001 - a bug must not wedge the farm (as _on_board)
                logger.exception("%s: board %s raised", self.name, dev.board.name)
                return InterleavedResult.fail(MeasureErrorKind.DEVICE_LOST, f"board {dev.board.name}: {exc!r}")

        # No pinned() of our own: one measurement is one job on one board already, and a board fault
        # is better retried from scratch on another board than max_failures times on this one.
        return self._on_board(job, no_board, f"interleaved {[d.name for d in dirs]}")

    def time_function(self, lib_path: Path, args: list, **kw: Any) -> Reply:
        """:meth:`SshDevice.time_function` on a free healthy board (tuning runner), with failover."""
        def exhausted() -> Reply:
            self.exhausted = True
            why = self._why()
            return Reply(error=MeasureError(MeasureErrorKind.DEVICE_LOST,
                                            f"{EXHAUSTED}: no healthy board left in {self.name} ({why})"))

        return self._on_board(lambda dev: dev.time_function(lib_path, args, **kw), exhausted, "tuning candidate")

    def _on_board(self, job: Callable[[SshDevice], Any], no_board: Callable[[], Any], what: str) -> Any:
        """Run ``job(board device)`` on a free healthy board; board faults are retried on the others."""
        tried: set[str] = set()
        leased: set[str] = set()  # leased by another holder just now: tried again while waiting
        last = None
        deadline = time.monotonic() + self.wait_for_lease_s
        next_note = 0.0
        while True:
            board = self._take(tried | leased)
            if board is None:
                left = deadline - time.monotonic()
                if leased and left > 0:  # every free board failed or is leased: wait for a lease, bounded
                    if time.monotonic() >= next_note:
                        who = "; ".join(describe_lease(b, self.leases.holder_of(b) if self.leases else None)
                                        for b in sorted(leased))
                        logger.warning("%s: no free board for the %s: %s; waiting (up to %.0f s more)",
                                       self.name, what, who, left)
                        next_note = time.monotonic() + 10.0
                    time.sleep(min(1.0, left))
                    leased.clear()
                    continue
                break
            dev = self.boards[board]
            try:
                result = job(dev)
            except Exception as exc:  # noqa: BLE001 - a bug must not wedge the farm
                logger.exception("%s: board %s raised", self.name, board)
                result = MeasureResult.fail(MeasureErrorKind.DEVICE_LOST, f"board {board}: {exc!r}")
            finally:
                self._give_back(board)
            retry = self._record(board, result, dev)
            if not retry:
                return result
            with self._cond:
                on_pin = board == self._pin
                if on_pin and dev.state is BoardState.BUSY:
                    if self._run_pin:  # the run's board is leased away: an error, not a reason to move
                        return result
                    logger.warning("%s: pinned board %s is leased by another holder; pinning ends",
                                   self.name, board)
                    self._pin = None
                    on_pin = False
            if dev.state is BoardState.BUSY:
                leased.add(board)
            elif not on_pin:  # a pinned board is retried until it is quarantined
                tried.add(board)
            last = result
            logger.info("%s: %s failed on %s (%s); trying %s", self.name, what, board,
                        result.error.kind.value, "it again (pinned)" if on_pin else "another board")
        with self._cond:
            any_healthy = bool(self._healthy_locked())
        if any_healthy and last is not None:
            return last  # every healthy board was tried for this request
        return no_board()

    def _why(self) -> str:
        with self._cond:
            return "; ".join(f"{b}: {r}" for b, r in self.quarantined.items()) or "no board"

    def _no_board(self, artifact_dir: Path, config: MeasureConfig) -> MeasureResult:
        why = self._why()
        if self.fallback == "sim":
            sim = self._sim_device()
            if isinstance(sim, Device):
                logger.warning("%s: no healthy board; answering from %s (simulated)", self.name, sim.name)
                return sim.measure(artifact_dir, config)
            self.exhausted = True
            return MeasureResult.fail(MeasureErrorKind.DEVICE_LOST,
                                      f"{EXHAUSTED}: no healthy board left in {self.name} ({why}) and the "
                                      f"simulator fallback is unavailable: {sim}")
        self.exhausted = True
        return MeasureResult.fail(MeasureErrorKind.DEVICE_LOST,
                                  f"{EXHAUSTED}: no healthy board left in {self.name} ({why}); fallback is "
                                  f"'fail' (use fallback 'sim' to answer from the simulator)")

    def _sim_device(self) -> Device | str:
        with self._sim_lock:
            if self._sim is None:
                from devices.sim.device import SimDevice

                targets = sorted({d.board.target for d in self.boards.values()})
                try:
                    self._sim = SimDevice(targets[0], name=f"sim:{targets[0]}")
                except (ValueError, ImportError, OSError) as exc:
                    return f"sim:{targets[0]}: {exc}"
            return self._sim

    def submit(self, artifact_dir: Path, config: MeasureConfig) -> "Future[MeasureResult]":
        """Queue a request; requests run in parallel across free boards.

        Raises:
            RuntimeError: the device is closed.
        """
        if self._closing:
            raise RuntimeError(f"device {self.name!r} is closed")
        return self._dispatcher.submit(self.measure, Path(artifact_dir), config)

    def submit_interleaved(self, artifact_dirs: Sequence[Path], config: InterleavedConfig
                           ) -> "Future[InterleavedResult]":
        """Queue an interleaved measurement; requests run in parallel across free boards (each on one board).

        Raises:
            RuntimeError: the device is closed.
        """
        if self._closing:
            raise RuntimeError(f"device {self.name!r} is closed")
        return self._dispatcher.submit(self.measure_interleaved, [Path(d) for d in artifact_dirs], config)

    def hello(self) -> dict:
        """Hello of the pinned board (while pinned), else of the first healthy board that answers; with ``board``.

        Raises:
            DeviceUnavailable: no board answers (the message lists why).
        """
        errors = []
        pin = self.pinned_board
        for name in ([pin] if pin is not None else self.healthy()):
            try:
                return self.boards[name].hello()
            except DeviceUnavailable as exc:
                errors.append(f"{name}: {exc}")
        raise DeviceUnavailable(MeasureError(MeasureErrorKind.DEVICE_LOST,
                                             f"{EXHAUSTED}: no board of {self.name} answers: " + "; ".join(errors)))

    def close(self) -> None:
        """Wait for queued requests, then close every board session and release leases."""
        if self._closing:
            return
        self._closing = True
        self._dispatcher.shutdown()
        self._closed = True
        self._close()

    def _close(self) -> None:
        for dev in self.boards.values():
            dev.close()
        if self._sim is not None:
            self._sim.close()


def _inventory(inventory: Any) -> Inventory:
    if isinstance(inventory, Inventory):
        return inventory
    if inventory is None:
        raise ValueError("ssh:BOARD and farm:TAG devices need an inventory (--inventory FILE)")
    return load_inventory(inventory)


def make_farm_device(name: str, inventory: Any, *, fallback: str | None = None,
                     target: str | None = None, leases: LeaseManager | None = None) -> Device:
    """``ssh:BOARD`` -> :class:`SshDevice`; ``farm:TAG`` -> :class:`FarmDevice`.

    Args:
        name: the device name.
        inventory: a path or an :class:`Inventory`.
        fallback: farm fallback (None = the inventory's).
        target: only boards of this target preset (farm only).
        leases: lease manager (default: the inventory's lease_db and ttl).

    Raises:
        ValueError: no inventory, unknown board, no board with the tag.
        InventoryError: a bad inventory.
    """
    inv = _inventory(inventory)
    leases = leases or LeaseManager(inv.farm.lease_db, ttl_s=inv.farm.lease_ttl_s)
    kind, _, rest = name.partition(":")
    if kind == "ssh":
        try:
            board = inv.board(rest)
        except InventoryError as exc:
            raise ValueError(str(exc)) from None
        return SshDevice(board, leases, name=name, lease_wait_s=inv.farm.lease_wait_s)
    if target is not None and target.lstrip().startswith("{"):
        target = None  # a JSON target dict names no preset; the arch check still guards every upload
    boards = [b for b in inv.tagged(rest) if target is None or b.target == target]
    if not boards:
        raise ValueError(f"{name}: no board in {inv.path} has tag {rest!r}"
                         + (f" and target {target!r}" if target else "")
                         + f"; tags: {sorted({t for b in inv.boards for t in b.tags})}")
    return FarmDevice(boards, leases=leases, max_failures=inv.farm.max_failures,
                      fallback=fallback or inv.farm.fallback, name=name, quarantine_s=inv.farm.quarantine_s,
                      wait_for_lease_s=inv.farm.lease_wait_s)
