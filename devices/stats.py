"""Latency statistics computed from raw per-repeat latencies (pyperf style).

A :class:`LatencyStats` is derived, never measured: it is always rebuilt from
the raw values with :meth:`LatencyStats.from_raw`, so the raw values stay the
record and the statistics can be recomputed at any time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

#: Default instability threshold on the coefficient of variation (std / mean).
#: pyperf warns when "the standard deviation is at least 10% of the mean";
#: a result with ``cov > DEFAULT_MAX_COV`` is flagged unstable.
DEFAULT_MAX_COV = 0.10


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Summary of raw per-repeat latencies, all in milliseconds.

    Attributes:
        p50_ms: median (50th percentile).
        p90_ms: 90th percentile.
        mean_ms: arithmetic mean.
        std_ms: sample standard deviation (``ddof=1``, as pyperf and
            ``statistics.stdev``); 0.0 when ``n == 1``.
        min_ms, max_ms: extremes.
        n: number of raw values.
        cov: coefficient of variation, ``std_ms / mean_ms`` (dimensionless;
            ``inf`` if the mean is 0 and std > 0, 0.0 if both are 0).
        max_cov: the threshold this result was judged against.
        unstable: ``cov > max_cov``.

    Percentiles use ``numpy.percentile`` with ``method="linear"`` (linear
    interpolation between the closest ranks, numpy's default).
    """

    p50_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    n: int
    cov: float
    max_cov: float
    unstable: bool

    @classmethod
    def from_raw(cls, values_ms: Iterable[float], max_cov: float = DEFAULT_MAX_COV) -> "LatencyStats":
        """Compute the statistics of raw latencies.

        Args:
            values_ms: raw latencies in ms, one per timed repeat (1-D, any
                iterable of real numbers), at least one value, all finite
                and >= 0.
            max_cov: instability threshold on ``cov`` (> 0).

        Raises:
            ValueError: empty input, a non-finite or negative value, or
                ``max_cov <= 0``.
        """
        arr = np.asarray(list(values_ms), dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError("LatencyStats.from_raw: values_ms must be a non-empty 1-D sequence of ms")
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError("LatencyStats.from_raw: values_ms must be finite and >= 0 (got "
                             f"{arr.tolist()[:8]}...)")
        if not (max_cov > 0):
            raise ValueError(f"LatencyStats.from_raw: max_cov must be > 0, got {max_cov!r}")
        n = int(arr.size)
        mean = float(arr.mean())
        std = float(arr.std(ddof=1)) if n > 1 else 0.0
        if mean > 0:
            cov = std / mean
        else:
            cov = math.inf if std > 0 else 0.0
        p50, p90 = (float(v) for v in np.percentile(arr, [50.0, 90.0], method="linear"))
        return cls(
            p50_ms=p50,
            p90_ms=p90,
            mean_ms=mean,
            std_ms=std,
            min_ms=float(arr.min()),
            max_ms=float(arr.max()),
            n=n,
            cov=cov,
            max_cov=float(max_cov),
            unstable=bool(cov > max_cov),
        )
