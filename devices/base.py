"""The values that flow through measurement, and the Device interface.

Compile and measure meet at an artifact directory (DESIGN.md §2, §4). A
:class:`Device` takes that directory and a :class:`MeasureConfig` and returns a
:class:`MeasureResult` holding either a :class:`Measurement` or a
:class:`MeasureError` — expected failures are values, never exceptions through
the search loop (TVM MetaSchedule's runner style). Bad configuration raises
``ValueError`` early, when the config is built.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from devices.stats import DEFAULT_MAX_COV, LatencyStats

if TYPE_CHECKING:  # devices.interleaved imports this module
    from devices.interleaved import InterleavedConfig, InterleavedResult

__all__ = [
    "BACKENDS",
    "Device",
    "DeviceUnavailable",
    "LatencyStats",
    "MeasureConfig",
    "MeasureError",
    "MeasureErrorKind",
    "MeasureResult",
    "Measurement",
]

#: Backends a daemon can time: the TVM library or the ONNX file via ONNX Runtime.
BACKENDS = ("tvm", "onnxruntime")


def _check_int(name: str, value: Any, minimum: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"MeasureConfig.{name} must be an int >= {minimum}, got {value!r}; {fix}")


def _check_float(name: str, value: Any, minimum: float, fix: str, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        op = ">" if strict else ">="
        raise ValueError(f"MeasureConfig.{name} must be a number {op} {minimum}, got {value!r}; {fix}")


@dataclass(frozen=True, slots=True)
class MeasureConfig:
    """How to time one artifact on one device (immutable, checked once).

    Attributes:
        backend: ``"tvm"`` (the compiled library, default) or
            ``"onnxruntime"`` (the artifact's ONNX file).
        warmup: untimed-in-stats calls before timing; their times are kept
            apart in ``Measurement.warmup_ms``.
        number: calls per timed block; each raw latency is block time /
            number. 0 lets the daemon choose the smallest number whose block
            lasts at least ``min_repeat_ms``.
        repeat: timed blocks, i.e. raw latencies per measurement.
        min_repeat_ms: minimum block duration in ms, used when ``number == 0``.
        timeout_s: wall-clock limit in seconds for one daemon request (load,
            warm-up and all repeats together).
        seed: seed of the fixed input, ``numpy.random.default_rng(seed)``.
        max_cov: CoV (std/mean) above which a result is unstable and
            re-measured (pyperf's 10% rule).
        max_remeasure: extra measurements allowed when unstable.
        num_threads: CPU threads for the backend (TVM_NUM_THREADS /
            OMP_NUM_THREADS, ONNX Runtime intra-op threads); None = default.

    Raises:
        ValueError: naming the field and the fix, on any bad value.
    """

    backend: str = "tvm"
    warmup: int = 5
    number: int = 10
    repeat: int = 30
    min_repeat_ms: float = 50.0
    timeout_s: float = 120.0
    seed: int = 0
    max_cov: float = DEFAULT_MAX_COV
    max_remeasure: int = 2
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"MeasureConfig.backend must be one of {BACKENDS}, got {self.backend!r}; "
                             "use 'tvm' for the compiled library or 'onnxruntime' for the ONNX file")
        _check_int("warmup", self.warmup, 0, "use 0 to skip warm-up")
        _check_int("number", self.number, 0, "use 0 to derive it from min_repeat_ms")
        _check_int("repeat", self.repeat, 1, "at least one timed block is needed")
        _check_float("min_repeat_ms", self.min_repeat_ms, 0.0, "use 0 for no minimum block length")
        _check_float("timeout_s", self.timeout_s, 0.0, "give a positive number of seconds", strict=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"MeasureConfig.seed must be an int, got {self.seed!r}")
        _check_float("max_cov", self.max_cov, 0.0, "e.g. 0.10 for pyperf's 10% rule", strict=True)
        _check_int("max_remeasure", self.max_remeasure, 0, "use 0 to never re-measure")
        if self.num_threads is not None:
            _check_int("num_threads", self.num_threads, 1, "or None for the backend's default")


class MeasureErrorKind(str, enum.Enum):
    """Why a measurement failed; the reward maps each kind to a finite penalty."""

    DAEMON_START = "daemon_start"  #: the daemon did not start or did not say hello
    TIMEOUT = "timeout"  #: no reply within timeout_s (the daemon was killed)
    PROTOCOL = "protocol"  #: a reply that breaks the protocol (not JSON, wrong version/id)
    BAD_REQUEST = "bad_request"  #: the daemon refused the request as malformed
    LOAD_FAILED = "load_failed"  #: artifact missing or unloadable (manifest, library, ONNX)
    RUN_FAILED = "run_failed"  #: the model raised while running
    DEVICE_LOST = "device_lost"  #: the daemon died or its stream closed
    UNSTABLE = "unstable"  #: the device stayed throttled across re-measurements


@dataclass(frozen=True, slots=True)
class MeasureError:
    """An expected measurement failure, as a value.

    Attributes:
        kind: a :class:`MeasureErrorKind`.
        message: one human-readable explanation (may include the daemon's
            stderr tail).
    """

    kind: MeasureErrorKind
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", MeasureErrorKind(self.kind))


@dataclass(frozen=True, slots=True)
class Measurement:
    """One immutable measurement of one artifact on one device.

    Attributes:
        device: device name (e.g. "local").
        backend: "tvm" or "onnxruntime".
        artifact_sha256: ``library_sha256`` from the artifact manifest.
        latency_ms: raw per-repeat latencies in ms (block time / number).
        warmup_ms: per-call warm-up latencies in ms, not in the statistics.
        number: calls per timed block actually used.
        stats: statistics of ``latency_ms``.
        output_sha256: sha256 of the output tensor's C-order bytes.
        output_head: the first 16 output values (flattened), as floats.
        output_shape: shape of the output tensor.
        device_state_before, device_state_after: device state around the
            timing (governor, frequency, temperatures, throttling bits...).
        hello: the daemon's hello (versions and machine facts).
        source: "measured" (simulators will say "simulated").
        remeasured: extra measurements made because a result was unstable.
        tuning: the manifest's "tuning" object, or None if absent.
        created_at: unix time in seconds when the measurement finished.
    """

    device: str
    backend: str
    artifact_sha256: str | None
    latency_ms: tuple[float, ...]
    warmup_ms: tuple[float, ...]
    number: int
    stats: LatencyStats
    output_sha256: str
    output_head: tuple[float, ...]
    output_shape: tuple[int, ...]
    device_state_before: dict
    device_state_after: dict
    hello: dict
    source: str = "measured"
    remeasured: int = 0
    tuning: dict | None = None
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class MeasureResult:
    """Exactly one of ``value`` and ``error`` is set.

    Raises:
        ValueError: on construction with both or neither set.
    """

    value: Measurement | None = None
    error: MeasureError | None = None

    def __post_init__(self) -> None:
        if (self.value is None) == (self.error is None):
            raise ValueError("MeasureResult needs exactly one of value and error")

    @property
    def ok(self) -> bool:
        """True when the result holds a Measurement."""
        return self.value is not None

    @classmethod
    def fail(cls, kind: MeasureErrorKind | str, message: str) -> "MeasureResult":
        """Shorthand for ``MeasureResult(error=MeasureError(kind, message))``."""
        return cls(error=MeasureError(MeasureErrorKind(kind), message))


class DeviceUnavailable(RuntimeError):
    """Raised by :meth:`Device.hello` when the device cannot be reached.

    Attributes:
        error: the :class:`MeasureError` describing why.
    """

    def __init__(self, error: MeasureError) -> None:
        super().__init__(f"{error.kind.value}: {error.message}")
        self.error = error


class Device(abc.ABC):
    """A thing that times artifacts. One measurement at a time per device.

    Subclasses implement :meth:`hello`, :meth:`measure` and :meth:`_close`;
    :meth:`submit` queues measurements on a single worker thread so the caller
    can compile the next candidate meanwhile.

    ``needs_library``: False for devices that read only the artifact's
    ``manifest.json`` and ``model.onnx`` (the simulator), so callers may skip
    the TVM build for them. ``is_board``: True for SSH boards and farms.
    """

    needs_library: bool = True
    #: True for SSH boards and farms: the target ``host`` means the board's CPU, and tuning
    #: trials are timed there (``time_function``), not on the controller.
    is_board: bool = False

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self._closing = False  # submit() refused
        self._closed = False  # queued work drained, transport released

    @abc.abstractmethod
    def hello(self) -> dict:
        """The daemon's hello (versions, machine facts).

        Raises:
            DeviceUnavailable: the device cannot be reached.
        """

    @abc.abstractmethod
    def measure(self, artifact_dir: Path, config: MeasureConfig) -> MeasureResult:
        """Time the artifact in ``artifact_dir``; never raises for expected failures."""

    def measure_interleaved(self, artifact_dirs: Sequence[Path], config: "InterleavedConfig") -> "InterleavedResult":
        """Time 2..4 artifacts side by side; ``artifact_dirs[0]`` is the reference.

        Alternating short blocks in one session, until the bootstrap interval
        of every median ratio against the reference is narrow enough or a cap
        of rounds (:mod:`devices.interleaved`). Never raises for expected
        failures. The default answers a ``bad_request`` error value: devices
        that can interleave override it.
        """
        from devices.interleaved import InterleavedResult  # noqa: PLC0415 - import cycle

        return InterleavedResult.fail(MeasureErrorKind.BAD_REQUEST,
                                      f"device {self.name!r} ({type(self).__name__}) cannot measure interleaved")

    def submit(self, artifact_dir: Path, config: MeasureConfig) -> "Future[MeasureResult]":
        """Queue :meth:`measure` on this device's single worker; returns its future.

        Raises:
            RuntimeError: the device is closed.
        """
        return self._queue(self.measure, Path(artifact_dir), config)

    def submit_interleaved(self, artifact_dirs: Sequence[Path],
                           config: "InterleavedConfig") -> "Future[InterleavedResult]":
        """Queue :meth:`measure_interleaved` on this device's single worker (after queued measurements).

        Raises:
            RuntimeError: the device is closed.
        """
        return self._queue(self.measure_interleaved, [Path(d) for d in artifact_dirs], config)

    def _queue(self, fn, *args) -> Future:
        """``fn(*args)`` on this device's single worker thread (made on first use).

        Raises:
            RuntimeError: the device is closed.
        """
        with self._executor_lock:
            if self._closing:
                raise RuntimeError(f"device {self.name!r} is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"device-{self.name}")
            return self._executor.submit(fn, *args)

    def close(self) -> None:
        """Wait for queued measurements, then release the device. Idempotent."""
        with self._executor_lock:
            if self._closing:
                return
            self._closing = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        self._closed = True
        self._close()

    def report_bad_result(self, measurement: Measurement, kind: str, reason: str) -> None:
        """The caller found a successful Measurement unusable; blame where it came from.

        ``measurement`` is a value this device returned; ``kind`` names the
        problem in one word (e.g. ``"wrong_output"``: the output does not
        match ONNX Runtime), ``reason`` explains it in one line. Devices that
        can blame a board use it (:class:`devices.farm.FarmDevice` counts it
        as a board fault, towards quarantine); the default does nothing.
        Never raises for an unknown measurement.
        """

    @contextlib.contextmanager
    def pinned(self) -> Iterator[str | None]:
        """Context manager: while active, every request of this device goes to one machine.

        For comparisons that must not mix machines (interleaved A/B rounds).
        A single-machine device already does that: the default does nothing
        and yields None; :meth:`devices.farm.FarmDevice.pinned` picks one
        board and yields its name.
        """
        yield None

    @abc.abstractmethod
    def _close(self) -> None:
        """Release the transport (stop the daemon)."""

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
