"""One measurement over a daemon session, re-measured until stable: shared by every transport.

DESIGN.md §5: a result with CoV over the threshold is flagged unstable and
re-measured; throttled samples are invalid. ``LocalDevice`` and ``SshDevice``
talk to the same daemon (``devices/daemon.py``), so the request they send, the
retry rule and the Measurement they build from the reply live here once.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from devices.base import MeasureConfig, MeasureErrorKind, MeasureResult, Measurement
from devices.client import Reply
from devices.manifest import Manifest
from devices.stats import LatencyStats

__all__ = ["THROTTLED_NOW_MASK", "throttled", "measure_request", "measure_until_stable"]

logger = logging.getLogger(__name__)

#: Bits 0-3 of ``vcgencmd get_throttled``: under-voltage, frequency capped,
#: throttled, soft temperature limit — *now* (bits 16-19 are "has occurred").
#: Source: Raspberry Pi documentation, "vcgencmd get_throttled".
THROTTLED_NOW_MASK = 0xF


def throttled(state: dict) -> bool:
    """True when a daemon device state reports active throttling (Raspberry Pi bits 0-3)."""
    bits = state.get("throttled")
    return isinstance(bits, int) and bool(bits & THROTTLED_NOW_MASK)


def measure_request(artifact: str, config: MeasureConfig) -> dict:
    """The fields of a protocol-v1 ``measure`` request for ``artifact`` (a path on the device)."""
    return {"artifact": artifact, "backend": config.backend, "warmup": config.warmup,
            "number": config.number, "repeat": config.repeat, "min_repeat_ms": config.min_repeat_ms,
            "seed": config.seed, "num_threads": config.num_threads}


def measure_until_stable(
    call: Callable[[], Reply],
    config: MeasureConfig,
    *,
    device: str,
    manifest: Manifest,
    hello: Callable[[], dict],
    source: str = "measured",
    cooldown_s: float = 0.0,
    what: str = "",
) -> MeasureResult:
    """Call ``measure`` until the result is stable and unthrottled, at most ``1 + config.max_remeasure`` times.

    The most stable unthrottled reply is kept (rank: throttled, then CoV).
    Still throttled after every attempt -> ``unstable`` error; still high CoV ->
    the Measurement, flagged ``stats.unstable``. A throttled attempt is followed
    by ``cooldown_s`` of sleep before the next.

    Args:
        call: sends one measure request, returns the daemon's Reply.
        config: the measurement settings.
        device: device name recorded in the Measurement.
        manifest: the artifact's :class:`devices.manifest.Manifest` (``library_sha256``, ``tuning``).
        hello: returns the daemon's hello (read after the calls).
        source: ``measured`` (or ``emulated`` for an emulated board).
        cooldown_s: pause after a throttled attempt, s.
        what: name for log lines.

    Returns:
        MeasureResult with the Measurement, or the first error a call returned,
        ``protocol`` for a malformed reply, ``unstable`` when always throttled.
    """
    best: tuple[tuple[bool, float], dict, LatencyStats] | None = None
    attempts = 0
    for attempt in range(config.max_remeasure + 1):
        attempts = attempt + 1
        reply = call()
        if not reply.ok:
            return MeasureResult(error=reply.error)
        result = reply.result
        try:
            stats = LatencyStats.from_raw(result["latency_ms"], max_cov=config.max_cov)
        except (KeyError, TypeError, ValueError) as exc:
            return MeasureResult.fail(MeasureErrorKind.PROTOCOL, f"bad measure result: {exc}")
        hot = throttled(result.get("device_state_before", {})) or throttled(result.get("device_state_after", {}))
        rank = (hot, stats.cov)
        if best is None or rank < best[0]:
            best = (rank, result, stats)
        if not hot and not stats.unstable:
            break
        logger.info("%s: %s (cov %.3f), re-measuring %s", device, "throttled" if hot else "unstable", stats.cov, what)
        if hot and attempt < config.max_remeasure and cooldown_s > 0:
            time.sleep(cooldown_s)
    (hot, _), result, stats = best
    if hot:
        return MeasureResult.fail(MeasureErrorKind.UNSTABLE,
                                  f"{device} throttled in all {attempts} measurements (vcgencmd bits "
                                  f"{result.get('device_state_after', {}).get('throttled')}), "
                                  f"{cooldown_s:g} s cooldown between them")
    try:
        value = Measurement(
            device=device, backend=config.backend, artifact_sha256=manifest.library_sha256,
            latency_ms=tuple(float(v) for v in result["latency_ms"]),
            warmup_ms=tuple(float(v) for v in result["warmup_ms"]),
            number=int(result["number"]), stats=stats,
            output_sha256=str(result["output_sha256"]),
            output_head=tuple(float(v) for v in result["output_head"]),
            output_shape=tuple(int(v) for v in result["output_shape"]),
            device_state_before=dict(result["device_state_before"]),
            device_state_after=dict(result["device_state_after"]),
            hello=dict(hello() or {}), source=source, remeasured=attempts - 1,
            tuning=dict(manifest.tuning) or None, created_at=time.time(),
        )
    except (KeyError, TypeError, ValueError) as exc:
        return MeasureResult.fail(MeasureErrorKind.PROTOCOL, f"bad measure result: {exc!r}")
    return MeasureResult(value=value)
