"""Latency ratios measured side by side: artifacts timed in alternating blocks in one daemon session.

Why (DESIGN.md §5 "Rank on ratios measured side by side", issue 12): on a
shared machine one artifact's absolute p50 moves by tens of percent over
minutes, while two artifacts timed alternately in short blocks give a median
per-round ratio that reproduces to well under 1 %. ΔH is a ratio against the
unpruned model, so it is measured as one: the reference and the candidate(s)
interleaved in one session, the absolute values kept beside the ratio with
the time and the device's load.

What this module holds: :class:`InterleavedConfig` (how), the values
(:class:`InterleavedArtifact`, :class:`InterleavedMeasurement`,
:class:`InterleavedResult`: a value or an error, like ``MeasureResult``), and
:func:`run_interleaved`, the adaptive loop every daemon-backed device
(``LocalDevice``, ``SshDevice``, and ``FarmDevice`` through its boards) runs
over the daemon's ``measure_interleaved`` op.

Where the adaptive loop lives — here, in the controller, not in the daemon:

- the statistics (median ratio, percentile bootstrap interval, the stop rule)
  are written once, in :mod:`devices.stats`, and tested there; the daemon is
  uploaded alone to boards and may import nothing of this repository, so a
  daemon-side loop would need a second copy of the bootstrap;
- each daemon request stays short and bounded (``timeout_s`` per request, a
  chunk of rounds), so a timeout still means "the board is wedged", never
  "the interval was slow to narrow";
- the cost is one round trip per chunk (a local pipe: ~0.1 ms; SSH on a LAN:
  ~1 ms) against chunks of ``chunk_pairs`` rounds of >= 2 blocks of
  ``min_block_ms`` (>= 160 ms by default): under 1 % of the time. Rounds pair
  blocks of the same round only, so the gap between chunks never enters a
  ratio. The models stay loaded in the daemon between chunks (its cache).

Estimate: per round, the ratio of each artifact's block to the reference's
block of the same round. With the rotated order (default) n consecutive rounds
put every artifact once in every position; the unit of the statistics is that
cycle, its ratio the geometric mean of its rounds' ratios
(:func:`~devices.stats.cycle_ratios`): a position effect (the block after a
bigger model runs on colder caches, measured here at up to ±10 % per position
for three artifacts on a loaded host) cancels inside a unit instead of
splitting the per-round ratios into modes the median then picks from. The
median of the units and its percentile bootstrap interval over units
(:class:`~devices.stats.RatioEstimate`) are the result.

Stop rule (checked after every chunk): once there are at least
:data:`MIN_UNITS` units, every non-reference artifact's interval lies inside
median × (1 ± ``rel_width``) — stop, ``"converged"``; else at ``max_pairs``
rounds — stop, ``"max_pairs"`` (the interval is kept, wider than asked).
pyperf's stability advice (enough values, check the spread, never trust one
run) is the model; the bootstrap is Efron & Tibshirani (1993), ch. 13.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from devices.base import BACKENDS, MeasureError, MeasureErrorKind
from devices.client import Reply
from devices.remeasure import throttled
from devices.manifest import Manifest, ManifestError, read_manifest
from devices.stats import DEFAULT_CONFIDENCE, DEFAULT_N_RESAMPLES, LatencyStats, RatioEstimate, cycle_ratios

__all__ = [
    "MAX_INTERLEAVED",
    "MIN_UNITS",
    "ORDERS",
    "STOP_REASONS",
    "InterleavedArtifact",
    "InterleavedConfig",
    "InterleavedMeasurement",
    "InterleavedResult",
    "read_artifact_manifest",
    "run_interleaved",
]

logger = logging.getLogger(__name__)

#: Most artifacts (reference included) per interleaved measurement: the daemon keeps >= 4 loaded.
MAX_INTERLEAVED = 4
#: Block orders the daemon knows (see ``Daemon.measure_interleaved``).
ORDERS = ("rotate", "shuffle")
#: Why a measurement stopped: the interval is narrow enough, the cap of rounds, or no timing at all.
STOP_REASONS = ("converged", "max_pairs", "simulated")
#: Fewest bootstrap units (rotation cycles, or rounds when shuffled) before a "converged" stop: the
#: bootstrap interval of a median of 1-3 values is degenerate (zero width from one value).
MIN_UNITS = 4


def _int(name: str, value: Any, minimum: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"InterleavedConfig.{name} must be an int >= {minimum}, got {value!r}; {fix}")


def _num(name: str, value: Any, lo: float, hi: float | None, fix: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > lo
    if ok and hi is not None:
        ok = value < hi
    if not ok:
        where = f"> {lo}" if hi is None else f"in ({lo}, {hi})"
        raise ValueError(f"InterleavedConfig.{name} must be a number {where}, got {value!r}; {fix}")


@dataclass(frozen=True, slots=True)
class InterleavedConfig:
    """How to time artifacts side by side (immutable, checked once).

    Attributes:
        backend: ``"tvm"`` or ``"onnxruntime"``.
        warmup: calls per artifact before the first round, each artifact
            warmed up apart; kept in ``InterleavedArtifact.warmup_ms``.
        block_warmup: untimed calls of an artifact right before each of its
            blocks (the first call after another model runs on colder caches;
            the ranking wants the steady state).
        number: calls per block for every artifact; 0 (default) calibrates
            each artifact's own number so its block lasts >= ``min_block_ms``.
        min_block_ms: shortest block, ms (when ``number == 0``). >= 10 ms on
            a loaded machine, so a preemption moves a block by a fraction.
        min_pairs: rounds in the first request, and before any stop (>= 2).
        max_pairs: cap on rounds (>= min_pairs).
        chunk_pairs: rounds per later request (>= 1).
            With ``order="rotate"`` the three are rounded up to whole rotation
            cycles (n rounds for n artifacts), so ``pairs`` may pass
            ``max_pairs`` by up to n - 1 rounds.
        rel_width: stop when every ratio's interval lies inside
            median × (1 ± rel_width); 0.01 = ± 1 %.
        confidence: coverage of the bootstrap interval, in (0, 1).
        n_resamples: bootstrap resamples (>= 100).
        order: ``"rotate"`` (default: n consecutive rounds put each artifact
            once in each position; the bootstrap resamples those cycles) or
            ``"shuffle"`` (a seeded random order per round; resamples rounds,
            with no position balance inside a unit).
        seed: seed of the fixed input, of ``shuffle`` and of the bootstrap.
        timeout_s: limit of ONE daemon request (load, warm-up and a chunk), s.
        num_threads: CPU threads of the backend; None = its default. Use 1
            for comparisons on a loaded machine (a 2-thread pool waits for a
            descheduled worker at every operator).

    Raises:
        ValueError: naming the field and the fix, on any bad value.
    """

    backend: str = "tvm"
    warmup: int = 5
    block_warmup: int = 1
    number: int = 0
    min_block_ms: float = 10.0
    min_pairs: int = 8
    max_pairs: int = 64
    chunk_pairs: int = 8
    rel_width: float = 0.01
    confidence: float = DEFAULT_CONFIDENCE
    n_resamples: int = DEFAULT_N_RESAMPLES
    order: str = "rotate"
    seed: int = 0
    timeout_s: float = 120.0
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"InterleavedConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        _int("warmup", self.warmup, 0, "use 0 to skip warm-up")
        _int("block_warmup", self.block_warmup, 0, "use 0 to time the first call after a switch too")
        _int("number", self.number, 0, "use 0 to calibrate each artifact to min_block_ms")
        if isinstance(self.min_block_ms, bool) or not isinstance(self.min_block_ms, (int, float)) \
                or not self.min_block_ms >= 0:
            raise ValueError(f"InterleavedConfig.min_block_ms must be a number >= 0 ms, got {self.min_block_ms!r}; "
                             "e.g. 10")
        _int("min_pairs", self.min_pairs, 2, "a ratio's interval needs at least 2 rounds")
        _int("max_pairs", self.max_pairs, 2, "the cap of rounds")
        if self.max_pairs < self.min_pairs:
            raise ValueError(f"InterleavedConfig.max_pairs ({self.max_pairs}) must be >= min_pairs "
                             f"({self.min_pairs}); raise max_pairs or lower min_pairs")
        _int("chunk_pairs", self.chunk_pairs, 1, "rounds per request after the first")
        _num("rel_width", self.rel_width, 0.0, None, "e.g. 0.01 for ± 1 %")
        _num("confidence", self.confidence, 0.0, 1.0, "e.g. 0.95")
        _int("n_resamples", self.n_resamples, 100, "e.g. 2000 (Efron & Tibshirani: 1000-2000 for percentiles)")
        if self.order not in ORDERS:
            raise ValueError(f"InterleavedConfig.order must be one of {ORDERS}, got {self.order!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"InterleavedConfig.seed must be an int >= 0, got {self.seed!r}")
        _num("timeout_s", self.timeout_s, 0.0, None, "give a positive number of seconds")
        if self.num_threads is not None:
            _int("num_threads", self.num_threads, 1, "or None for the backend's default")


@dataclass(frozen=True, slots=True)
class InterleavedArtifact:
    """One artifact's side of an interleaved measurement (absolute values, as measured).

    Attributes:
        name: the artifact directory's name.
        artifact_sha256: ``library_sha256`` of its manifest (None if absent).
        latency_ms: per-round block latencies, ms per call (block time /
            number), in round order; element ``r`` pairs with every other
            artifact's element ``r``.
        warmup_ms: per-call warm-up latencies, ms (first request only).
        number: calls per block.
        stats: statistics of ``latency_ms`` (``stats.p50_ms`` is the absolute p50).
        output_sha256: sha256 of the output's C-order bytes ("" when simulated).
        output_head: the first 16 output values.
        output_shape: the output's shape.
    """

    name: str
    artifact_sha256: str | None
    latency_ms: tuple[float, ...]
    warmup_ms: tuple[float, ...]
    number: int
    stats: LatencyStats
    output_sha256: str
    output_head: tuple[float, ...]
    output_shape: tuple[int, ...]

    @property
    def latency_p50_ms(self) -> float:
        """Absolute median latency, ms (drifts with the machine's load: never rank on it)."""
        return self.stats.p50_ms


@dataclass(frozen=True, slots=True)
class InterleavedMeasurement:
    """An immutable interleaved measurement: ratios against the reference, absolutes beside them.

    Attributes:
        device: device name (a farm's measurement says its board in ``hello["board"]``).
        backend: "tvm" or "onnxruntime".
        source: "measured", "emulated" or "simulated" (never mixed).
        artifacts: one entry per artifact in request order; ``artifacts[0]`` is the reference.
        ratios: ``ratios[i]`` is ``artifacts[i + 1]`` over the reference: the units' ratios (rotation
            cycles; rounds when shuffled), their median and its bootstrap interval (len = len(artifacts) - 1).
        round_ratios: ``round_ratios[i][r]`` = ``artifacts[i + 1].latency_ms[r] /
            artifacts[0].latency_ms[r]``, every round (the raw per-block ratios).
        order: per round, the artifact indices in the order their blocks ran.
        round_at: per round, the device's Unix time (s) when it started: the absolute values'
            time line (drift, a neighbour's load) beside ``loadavg_*``.
        pairs: rounds measured (a pair when there are two artifacts).
        stop_reason: one of :data:`STOP_REASONS`.
        rel_width: the relative half-width that was asked for.
        requests: daemon requests made (chunks).
        started_at, finished_at: Unix time (s, this controller's clock) around the measurement.
        loadavg_before, loadavg_after: the device's ``os.getloadavg()`` (1, 5, 15 min) at the first
            request's start and the last one's end; None when the device does not say.
        device_state_before, device_state_after: the daemon's device state at those points.
        hello: the daemon's hello (versions, machine; ``board`` over SSH).
        throttled: a Raspberry Pi reported active throttling (``vcgencmd`` bits 0-3) before or
            after a request: both sides of a round ran throttled or not, but the caller may
            prefer to re-measure (DESIGN.md §5: throttled samples are invalid).
    """

    device: str
    backend: str
    source: str
    artifacts: tuple[InterleavedArtifact, ...]
    ratios: tuple[RatioEstimate, ...]
    round_ratios: tuple[tuple[float, ...], ...]
    order: tuple[tuple[int, ...], ...]
    round_at: tuple[float, ...]
    pairs: int
    stop_reason: str
    rel_width: float
    requests: int
    started_at: float
    finished_at: float
    loadavg_before: tuple[float, ...] | None
    loadavg_after: tuple[float, ...] | None
    device_state_before: dict
    device_state_after: dict
    hello: dict
    throttled: bool = False

    @property
    def elapsed_s(self) -> float:
        """Wall time of the measurement, s (loading included)."""
        return self.finished_at - self.started_at

    @property
    def reference(self) -> InterleavedArtifact:
        """``artifacts[0]``."""
        return self.artifacts[0]


@dataclass(frozen=True, slots=True)
class InterleavedResult:
    """Exactly one of ``value`` and ``error`` is set (as :class:`~devices.base.MeasureResult`).

    Raises:
        ValueError: on construction with both or neither set.
    """

    value: InterleavedMeasurement | None = None
    error: MeasureError | None = None

    def __post_init__(self) -> None:
        if (self.value is None) == (self.error is None):
            raise ValueError("InterleavedResult needs exactly one of value and error")

    @property
    def ok(self) -> bool:
        """True when the result holds an InterleavedMeasurement."""
        return self.value is not None

    @classmethod
    def fail(cls, kind: MeasureErrorKind | str, message: str) -> "InterleavedResult":
        """Shorthand for ``InterleavedResult(error=MeasureError(kind, message))``."""
        return cls(error=MeasureError(MeasureErrorKind(kind), message))


def read_artifact_manifest(artifact_dir: Path) -> Manifest | MeasureError:
    """The artifact's :class:`devices.manifest.Manifest`, or a ``load_failed`` error value."""
    try:
        return read_manifest(artifact_dir)
    except ManifestError as exc:
        return MeasureError(MeasureErrorKind.LOAD_FAILED, str(exc))


def check_artifact_dirs(artifact_dirs: Any) -> list[Path] | MeasureError:
    """2..MAX_INTERLEAVED artifact directories as Paths, or a ``bad_request`` error value."""
    dirs = [Path(d) for d in artifact_dirs] if isinstance(artifact_dirs, (list, tuple)) else []
    if not 2 <= len(dirs) <= MAX_INTERLEAVED:
        return MeasureError(MeasureErrorKind.BAD_REQUEST,
                            f"measure_interleaved needs 2..{MAX_INTERLEAVED} artifact dirs (the first is the "
                            f"reference), got {artifact_dirs!r}")
    return dirs


def _loadavg(state: dict) -> tuple[float, ...] | None:
    la = state.get("loadavg") if isinstance(state, dict) else None
    return tuple(float(v) for v in la) if isinstance(la, list) and la else None


def run_interleaved(
    call: Callable[[dict], Reply],
    remote_dirs: list[str],
    manifests: list[Manifest],
    names: list[str],
    config: InterleavedConfig,
    *,
    device: str,
    hello: Callable[[], dict],
    source: str = "measured",
) -> InterleavedResult:
    """The adaptive loop over the daemon's ``measure_interleaved`` op (see the module doc).

    Args:
        call: sends one request's fields (op ``measure_interleaved``) and returns the daemon's Reply.
        remote_dirs: the artifact dirs as the daemon sees them (reference first).
        manifests: their manifests (``library_sha256``), same order.
        names: names for the values (the local dirs' names), same order.
        config: the settings.
        device: device name recorded in the value.
        hello: returns the daemon's hello (read at the end).
        source: "measured" or "emulated".

    Returns:
        InterleavedResult with the measurement, or the first error a request
        returned, or ``protocol`` for a malformed reply.
    """
    n = len(remote_dirs)
    cycle = n if config.order == "rotate" else 1

    def whole(rounds: int) -> int:  # up to whole rotation cycles
        return -(-rounds // cycle) * cycle

    started_at = time.time()
    numbers = [config.number] * n
    blocks: list[list[float]] = [[] for _ in range(n)]
    order: list[tuple[int, ...]] = []
    round_at: list[float] = []
    first: dict | None = None
    last: dict | None = None
    requests = 0
    estimates: list[RatioEstimate] = []
    round_ratios: list[list[float]] = []
    hot = False
    stop = "max_pairs"
    while True:
        done = len(order)
        rounds = whole(config.min_pairs if done == 0 else min(config.chunk_pairs, config.max_pairs - done))
        fields = {"artifacts": list(remote_dirs), "backend": config.backend,
                  "warmup": config.warmup if done == 0 else 0, "numbers": numbers,
                  "min_repeat_ms": float(config.min_block_ms), "rounds": rounds, "first_round": done,
                  "block_warmup": config.block_warmup,
                  "order": config.order, "seed": config.seed, "num_threads": config.num_threads}
        reply = call(fields)
        requests += 1
        if not reply.ok:
            return InterleavedResult(error=reply.error)
        res = reply.result
        try:
            arts = res["artifacts"]
            if (len(arts) != n or any(len(a["latency_ms"]) != rounds for a in arts) or len(res["order"]) != rounds
                    or len(res["round_at"]) != rounds):
                raise ValueError(f"expected {n} artifacts x {rounds} rounds")
            for i, a in enumerate(arts):
                blocks[i].extend(float(v) for v in a["latency_ms"])
            order.extend(tuple(int(i) for i in o) for o in res["order"])
            round_at.extend(float(t) for t in res["round_at"])
            numbers = [int(a["number"]) for a in arts]
            first = first or res
            last = res
            hot = hot or throttled(res.get("device_state_before", {})) or throttled(res.get("device_state_after", {}))
            round_ratios = [[o / r for r, o in zip(blocks[0], blocks[i])] for i in range(1, n)]
            estimates = [RatioEstimate.from_ratios(cycle_ratios(rr, cycle), n_resamples=config.n_resamples,
                                                   confidence=config.confidence, seed=config.seed)
                         for rr in round_ratios]
        except (KeyError, TypeError, ValueError) as exc:
            return InterleavedResult.fail(MeasureErrorKind.PROTOCOL, f"bad measure_interleaved result: {exc!r}")
        if len(order) // cycle >= MIN_UNITS and all(e.within(config.rel_width) for e in estimates):
            stop = "converged"
            break
        if len(order) >= config.max_pairs:
            break
        logger.debug("%s: %d rounds, ratio half-widths %s > %g; more rounds", device, len(order),
                     [round(e.rel_half_width, 4) for e in estimates], config.rel_width)
    try:
        artifacts = tuple(
            InterleavedArtifact(
                name=names[i], artifact_sha256=manifests[i].library_sha256,
                latency_ms=tuple(blocks[i]), warmup_ms=tuple(float(v) for v in first["artifacts"][i]["warmup_ms"]),
                number=int(last["artifacts"][i]["number"]), stats=LatencyStats.from_raw(blocks[i]),
                output_sha256=str(first["artifacts"][i]["output_sha256"]),
                output_head=tuple(float(v) for v in first["artifacts"][i]["output_head"]),
                output_shape=tuple(int(v) for v in first["artifacts"][i]["output_shape"]),
            ) for i in range(n))
        before, after = dict(first["device_state_before"]), dict(last["device_state_after"])
    except (KeyError, TypeError, ValueError) as exc:
        return InterleavedResult.fail(MeasureErrorKind.PROTOCOL, f"bad measure_interleaved result: {exc!r}")
    value = InterleavedMeasurement(
        device=device, backend=config.backend, source=source, artifacts=artifacts, ratios=tuple(estimates),
        round_ratios=tuple(tuple(rr) for rr in round_ratios),
        order=tuple(order), round_at=tuple(round_at), pairs=len(order), stop_reason=stop,
        rel_width=float(config.rel_width),
        requests=requests, started_at=started_at, finished_at=time.time(),
        loadavg_before=_loadavg(before), loadavg_after=_loadavg(after),
        device_state_before=before, device_state_after=after, hello=dict(hello() or {}), throttled=hot,
    )
    logger.info("%s: %d rounds (%s, %d requests): ratios %s", device, value.pairs, stop, requests,
                ", ".join(f"{e.median:.4f} [{e.ci_low:.4f}, {e.ci_high:.4f}]" for e in estimates))
    return InterleavedResult(value=value)
