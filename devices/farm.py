"""A farm of SSH boards as one device: ``farm:TAG`` (and ``ssh:BOARD``).

- **Boards**: the inventory boards carrying ``TAG`` (optionally only those of
  one target preset). Each is an :class:`~devices.ssh.SshDevice` holding an
  exclusive lease (``devices/lease.py``) while its session is open.
- **Queue**: :meth:`FarmDevice.submit` hands requests to a
  :class:`Dispatcher`; the default :class:`ThreadDispatcher` runs as many
  requests at once as there are boards, and each request takes an idle
  healthy board, so boards work in parallel, one measurement at a time each.
  A Ray actor pool or TVM's RPC tracker could take the dispatcher's place:
  the interface is ``submit(fn, *args) -> Future``.
- **Faults**: a request that fails with a board fault (``device_lost``,
  ``daemon_start``, ``timeout``, ``protocol``) is retried on another board;
  ``max_failures`` consecutive faults (or one host-key/auth refusal)
  quarantine the board with the reason. Finished results are values already
  handed back, so nothing measured before a failure is lost. With a lease
  database the quarantine is shared (``quarantine_s``): the controller's other
  processes, and farms made later, skip the board too until it expires or
  ``hilprune devices check`` clears it.
- **Fallback** when no healthy board is left: ``"sim"`` answers from the
  simulator device ``sim:<target preset>`` (results say ``source=
  "simulated"``), ``"fail"`` returns a ``device_lost`` error whose message
  starts with ``farm exhausted`` and sets :attr:`FarmDevice.exhausted`.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from devices.base import Device, DeviceUnavailable, MeasureConfig, MeasureError, MeasureErrorKind, MeasureResult
from devices.client import Reply
from devices.inventory import FALLBACKS, Board, Inventory, InventoryError, load_inventory
from devices.lease import LeaseManager
from devices.ssh import BoardState, SshDevice

logger = logging.getLogger(__name__)

__all__ = ["Dispatcher", "FarmDevice", "ThreadDispatcher", "make_farm_device"]

#: Error kinds that blame the board (retried elsewhere, counted towards quarantine).
BOARD_FAULTS = frozenset({MeasureErrorKind.DEVICE_LOST, MeasureErrorKind.DAEMON_START,
                          MeasureErrorKind.TIMEOUT, MeasureErrorKind.PROTOCOL})
EXHAUSTED = "farm exhausted"


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
            ``leases`` (s); boards already quarantined there when the farm is
            made start quarantined.

    Raises:
        ValueError: no boards, or a bad fallback.
    """

    def __init__(self, boards: tuple[Board, ...] | list[Board], *, leases: LeaseManager | None = None,
                 max_failures: int = 3, fallback: str = "fail", name: str = "farm",
                 dispatcher: Dispatcher | None = None, lease_wait_s: float = 0.0,
                 quarantine_s: float = 1800.0) -> None:
        super().__init__(name)
        if not boards:
            raise ValueError(f"{name}: no boards to measure on")
        if fallback not in FALLBACKS:
            raise ValueError(f"{name}: fallback must be one of {FALLBACKS}, got {fallback!r}")
        if max_failures < 1:
            raise ValueError(f"{name}: max_failures must be >= 1, got {max_failures}")
        if not quarantine_s > 0:
            raise ValueError(f"{name}: quarantine_s must be > 0 seconds, got {quarantine_s!r}")
        self.boards = {b.name: SshDevice(b, leases, lease_wait_s=lease_wait_s, name=name) for b in boards}
        self.leases = leases
        self.max_failures = max_failures
        self.fallback = fallback
        self.failures: dict[str, int] = {b: 0 for b in self.boards}
        self.quarantine_s = float(quarantine_s)
        self.quarantined: dict[str, str] = {}
        if leases is not None:
            for board, q in leases.quarantines().items():
                if board in self.boards:
                    self.quarantined[board] = (f"quarantined by {q.holder} until "
                                               f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(q.until))}: "
                                               f"{q.reason}")
                    logger.warning("%s: board %s skipped: %s", name, board, self.quarantined[board])
        self.measured_on: dict[str, int] = {b: 0 for b in self.boards}
        self.exhausted = False
        self._busy: set[str] = set()
        self._cond = threading.Condition()
        self._dispatcher = dispatcher or ThreadDispatcher(len(self.boards))
        self._sim: Device | None = None
        self._sim_lock = threading.Lock()

    # ---------------------------------------------------------------- boards

    def healthy(self) -> list[str]:
        """Names of boards not quarantined."""
        return [b for b in self.boards if b not in self.quarantined]

    def _take(self, tried: set[str]) -> str | None:
        """Block until an idle healthy untried board is free; None if none can ever be."""
        with self._cond:
            while True:
                candidates = [b for b in self.healthy() if b not in tried]
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

    def _record(self, board: str, result: MeasureResult | Reply, dev: SshDevice) -> bool:
        """Book a result; True when it was a board fault (retry elsewhere)."""
        with self._cond:
            if result.ok:
                self.failures[board] = 0
                self.measured_on[board] += 1
                return False
            if dev.state is BoardState.BUSY:  # leased by another controller: not the board's fault
                return True
            if result.error.kind not in BOARD_FAULTS and not dev.last_fatal:
                return False
            self.failures[board] += 1
            if dev.last_fatal or self.failures[board] >= self.max_failures:
                reason = (f"{self.failures[board]} consecutive failure(s), last {result.error.kind.value}: "
                          f"{result.error.message.splitlines()[0][:300]}")
                self.quarantined[board] = reason
                logger.warning("%s: board %s quarantined: %s", self.name, board, reason)
                if self.leases is not None:
                    try:
                        self.leases.quarantine(board, reason, self.quarantine_s)
                    except Exception as exc:  # noqa: BLE001 - sharing is best effort; this run skips it anyway
                        logger.warning("%s: could not share the quarantine of %s: %r", self.name, board, exc)
                self._cond.notify_all()
            return True

    # --------------------------------------------------------------- measure

    def measure(self, artifact_dir: Path, config: MeasureConfig) -> MeasureResult:
        """Measure on one free healthy board, retrying board faults on the others.

        Returns:
            The first successful or non-board-fault result; after every board
            failed, the last board fault; with no healthy board left, the
            fallback's answer or a ``device_lost`` "farm exhausted" error.
        """
        return self._on_board(lambda dev: dev.measure(artifact_dir, config),
                              lambda: self._no_board(artifact_dir, config), Path(artifact_dir).name)

    def time_function(self, lib_path: Path, args: list, **kw: Any) -> Reply:
        """:meth:`SshDevice.time_function` on a free healthy board (tuning runner), with failover."""
        def exhausted() -> Reply:
            self.exhausted = True
            why = "; ".join(f"{b}: {r}" for b, r in self.quarantined.items()) or "no board"
            return Reply(error=MeasureError(MeasureErrorKind.DEVICE_LOST,
                                            f"{EXHAUSTED}: no healthy board left in {self.name} ({why})"))

        return self._on_board(lambda dev: dev.time_function(lib_path, args, **kw), exhausted, "tuning candidate")

    def _on_board(self, job: Callable[[SshDevice], Any], no_board: Callable[[], Any], what: str) -> Any:
        """Run ``job(board device)`` on a free healthy board; board faults are retried on the others."""
        tried: set[str] = set()
        last = None
        while True:
            board = self._take(tried)
            if board is None:
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
            tried.add(board)
            last = result
            logger.info("%s: %s failed on %s (%s); trying another board", self.name, what, board,
                        result.error.kind.value)
        if self.healthy() and last is not None:
            return last  # every healthy board was tried for this request
        return no_board()

    def _no_board(self, artifact_dir: Path, config: MeasureConfig) -> MeasureResult:
        why = "; ".join(f"{b}: {r}" for b, r in self.quarantined.items()) or "no board"
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

    def hello(self) -> dict:
        """Hello of the first healthy board that answers, plus ``board``.

        Raises:
            DeviceUnavailable: no board answers (the message lists why).
        """
        errors = []
        for name in self.healthy():
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
        return SshDevice(board, leases, name=name)
    if target is not None and target.lstrip().startswith("{"):
        target = None  # a JSON target dict names no preset; the arch check still guards every upload
    boards = [b for b in inv.tagged(rest) if target is None or b.target == target]
    if not boards:
        raise ValueError(f"{name}: no board in {inv.path} has tag {rest!r}"
                         + (f" and target {target!r}" if target else "")
                         + f"; tags: {sorted({t for b in inv.boards for t in b.tags})}")
    return FarmDevice(boards, leases=leases, max_failures=inv.farm.max_failures,
                      fallback=fallback or inv.farm.fallback, name=name, quarantine_s=inv.farm.quarantine_s)
