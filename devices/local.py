"""This machine as a device: the daemon as a local subprocess.

The daemon (``devices/daemon.py``) runs in its own process group
(``start_new_session=True``); on a timeout, a lost stream or :meth:`close`
the whole group is killed, so a wedged model or a child it spawned never
outlives the measurement. One daemon serves many measurements (it caches
loaded artifacts); after a failure the next measurement starts a new one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

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
from devices.manifest import ManifestError, read_manifest
from devices.remeasure import measure_request, measure_until_stable

logger = logging.getLogger(__name__)

DAEMON_PATH = Path(__file__).with_name("daemon.py")
HELLO_TIMEOUT_S = 60.0  # importing tvm takes seconds on a busy machine
BYE_TIMEOUT_S = 5.0
_KEEP: Any = object()  # "the running daemon's threads"


class LocalDevice(Device):
    """Measures artifacts on this machine through a daemon subprocess.

    Args:
        name: device name recorded in each Measurement.
        python: interpreter that runs the daemon (needs numpy and the backend).
        env: extra environment variables for the daemon (on top of ours).

    ``config.num_threads`` sets TVM_NUM_THREADS and OMP_NUM_THREADS of the
    daemon; a config with other threads than the running daemon restarts it.
    """

    def __init__(self, name: str = "local", python: str = sys.executable,
                 env: Mapping[str, str] | None = None) -> None:
        super().__init__(name)
        self.python = python
        self.env = dict(env or {})
        self._proc: subprocess.Popen | None = None
        self._session: DaemonSession | None = None
        self._hello: dict | None = None
        self._threads: int | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------ daemon life

    @property
    def pid(self) -> int | None:
        """The running daemon's pid (also its process group id), or None."""
        return self._proc.pid if self._proc is not None else None

    def _start(self, num_threads: int | None) -> MeasureError | None:
        env = {**os.environ, **self.env}
        if num_threads is not None:
            env["TVM_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(num_threads)
        try:
            proc = subprocess.Popen([self.python, "-u", str(DAEMON_PATH)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                    start_new_session=True, cwd=str(DAEMON_PATH.parent))
        except OSError as exc:
            return MeasureError(MeasureErrorKind.DAEMON_START, f"cannot start {self.python} {DAEMON_PATH}: {exc}")
        self._proc = proc
        self._session = DaemonSession(proc.stdin, proc.stdout, proc.stderr)
        self._threads = num_threads
        reply = self._session.call("hello", HELLO_TIMEOUT_S)
        if not reply.ok or reply.result.get("protocol") != 1:
            why = reply.error.message if reply.error else f"unexpected hello {reply.result}"
            self._kill()
            return MeasureError(MeasureErrorKind.DAEMON_START, f"daemon did not say hello: {why}")
        self._hello = reply.result
        logger.info("device %s: daemon pid %d up (%s)", self.name, proc.pid, json.dumps(self._hello))
        return None

    def _kill(self) -> None:
        """Kill the daemon's whole process group and forget the session."""
        proc, session = self._proc, self._session
        self._proc = self._session = None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            logger.error("daemon pid %d survived SIGKILL", proc.pid)
        if session is not None:
            session.close()
        for stream in (proc.stdout, proc.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass

    def _ensure(self, num_threads: int | None) -> MeasureError | None:
        """A live daemon with these threads, or the error; a dead one is reported once."""
        if self._proc is not None and self._proc.poll() is not None:
            code = self._proc.returncode
            tail = self._session.stderr_tail(10) if self._session else ""
            self._kill()
            return MeasureError(MeasureErrorKind.DEVICE_LOST,
                                f"daemon exited with status {code} between requests; stderr tail:\n{tail}")
        if self._proc is not None and self._threads != num_threads:
            self._stop()
        if self._proc is None:
            return self._start(num_threads)
        return None

    def call(self, op: str, *, timeout_s: float, daemon_threads: int | None = _KEEP, **fields: Any) -> Reply:
        """Send one raw request to the daemon (diagnostics and tests; e.g. the
        test-only ``sleep`` op). ``daemon_threads`` (default: the running
        daemon's) restarts the daemon with those threads if they differ. On a timeout or lost
        stream the daemon's process group is killed and the next call starts
        a new daemon."""
        with self._lock:
            if self._closed:
                return Reply(error=MeasureError(MeasureErrorKind.DEVICE_LOST, f"device {self.name!r} is closed"))
            if daemon_threads is _KEEP:
                daemon_threads = self._threads
            err = self._ensure(daemon_threads)
            if err is not None:
                return Reply(error=err)
            reply = self._session.call(op, timeout_s, **fields)
            if self._session.broken is not None:
                logger.warning("device %s: %s; killing daemon group %d", self.name, reply.error.kind.value,
                               self._proc.pid)
                self._kill()
            return reply

    def hello(self) -> dict:
        """The daemon's hello, starting the daemon if needed.

        Raises:
            DeviceUnavailable: the daemon cannot start or answer.
        """
        with self._lock:
            err = self._ensure(self._threads) if not self._closed else \
                MeasureError(MeasureErrorKind.DEVICE_LOST, f"device {self.name!r} is closed")
            if err is not None:
                raise DeviceUnavailable(err)
            return dict(self._hello)

    def _stop(self) -> None:
        """Polite stop: bye, then kill the group whatever happened."""
        if self._session is not None and self._session.broken is None:
            self._session.call("bye", BYE_TIMEOUT_S)
            try:
                self._proc.wait(timeout=BYE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        self._kill()

    def _close(self) -> None:
        with self._lock:
            self._stop()

    # ---------------------------------------------------------------- measure

    def measure(self, artifact_dir: Path, config: MeasureConfig) -> MeasureResult:
        """One measurement at a time: see :meth:`_measure`."""
        with self._lock:
            return self._measure(artifact_dir, config)

    def _measure(self, artifact_dir: Path, config: MeasureConfig) -> MeasureResult:
        """Time ``artifact_dir`` (see the artifact contract in DESIGN.md / daemon.py).

        Re-measures while the result is unstable (CoV > ``config.max_cov``)
        or the device reports active throttling, up to ``config.max_remeasure``
        extra times, keeping the most stable unthrottled result. Still
        throttled at the end -> ``unstable`` error; still high CoV -> the
        Measurement, flagged ``stats.unstable``.

        Returns:
            MeasureResult with a Measurement, or a MeasureError of kind
            load_failed (manifest unreadable), daemon_start, timeout,
            device_lost, protocol, bad_request, run_failed or unstable.
        """
        artifact_dir = Path(artifact_dir).resolve()
        try:
            manifest = read_manifest(artifact_dir)
        except ManifestError as exc:
            return MeasureResult.fail(MeasureErrorKind.LOAD_FAILED, str(exc))
        request = measure_request(str(artifact_dir), config)
        return measure_until_stable(
            lambda: self.call("measure", timeout_s=config.timeout_s, daemon_threads=config.num_threads, **request),
            config, device=self.name, manifest=manifest, hello=lambda: self._hello, what=artifact_dir.name,
        )

    def measure_interleaved(self, artifact_dirs: Sequence[Path], config: InterleavedConfig) -> InterleavedResult:
        """Time the artifacts side by side in this device's daemon (:mod:`devices.interleaved`).

        Returns:
            InterleavedResult; errors: bad_request (not 2..4 dirs, or the
            daemon refused), load_failed (a manifest or artifact), daemon_start,
            timeout, device_lost, protocol, run_failed.
        """
        dirs = check_artifact_dirs(artifact_dirs)
        if isinstance(dirs, MeasureError):
            return InterleavedResult(error=dirs)
        dirs = [d.resolve() for d in dirs]
        manifests = []
        for d in dirs:
            got = read_artifact_manifest(d)
            if isinstance(got, MeasureError):
                return InterleavedResult(error=got)
            manifests.append(got)
        with self._lock:
            return run_interleaved(
                lambda fields: self.call("measure_interleaved", timeout_s=config.timeout_s,
                                         daemon_threads=config.num_threads, **fields),
                [str(d) for d in dirs], manifests, [d.name for d in dirs], config,
                device=self.name, hello=lambda: self._hello)
