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


# ------------------------------------------------------------------ ratios

#: Bootstrap resamples of a ratio interval (Efron & Tibshirani 1993, §13.3: 1000-2000 for percentile
#: intervals, whose ends are tail quantiles and need more resamples than a standard error).
DEFAULT_N_RESAMPLES = 2000
#: Coverage of the bootstrap interval of a median ratio.
DEFAULT_CONFIDENCE = 0.95


def bootstrap_median_ci(values: Iterable[float], *, n_resamples: int = DEFAULT_N_RESAMPLES,
                        confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values`` (Efron & Tibshirani 1993, ch. 13).

    Algorithm, exactly (so a reader can reproduce it)::

        rng = numpy.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_resamples, n))     # resample the n values with replacement
        medians = numpy.median(values[idx], axis=1)          # one median per resample
        lo, hi = numpy.percentile(medians, [100*(1-c)/2, 100*(1+c)/2], method="linear")

    The values are resampled as units: for interleaved timing each value is
    one round's ratio, so a resample keeps A's and B's blocks of a round
    together (a paired bootstrap).

    Args:
        values: 1-D finite values (e.g. per-round latency ratios, dimensionless), at least one.
        n_resamples: bootstrap resamples (>= 1).
        confidence: interval coverage c, in (0, 1).
        seed: seed of ``numpy.random.default_rng``; the same inputs and seed give the same interval.

    Returns:
        (low, high), low <= median <= high up to the discreteness of the median.

    Raises:
        ValueError: empty or non-finite values, n_resamples < 1, confidence outside (0, 1).
    """
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError("bootstrap_median_ci: values must be a non-empty 1-D sequence of finite numbers")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"bootstrap_median_ci: n_resamples must be an int >= 1, got {n_resamples!r}")
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"bootstrap_median_ci: confidence must be in (0, 1), e.g. 0.95, got {confidence!r}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_resamples, arr.size))
    medians = np.median(arr[idx], axis=1)
    lo, hi = np.percentile(medians, [100.0 * (1 - confidence) / 2, 100.0 * (1 + confidence) / 2],
                           method="linear")
    return float(lo), float(hi)


@dataclass(frozen=True, slots=True)
class RatioEstimate:
    """Median of per-round latency ratios (this artifact / the reference) with its bootstrap interval.

    Attributes:
        ratios: the resampled units' ratios in order (dimensionless): per round,
            the artifact's block latency over the reference's block of the same
            round, or per rotation cycle their geometric mean (:func:`cycle_ratios`).
        median: median of ``ratios`` (``numpy.median``).
        ci_low, ci_high: percentile bootstrap interval of the median
            (:func:`bootstrap_median_ci`); equal to ``median`` for a simulated ratio.
        confidence: coverage of the interval (e.g. 0.95).
        n_resamples: bootstrap resamples (0 for a simulated ratio: no resampling).
        seed: the bootstrap's seed.
    """

    ratios: tuple[float, ...]
    median: float
    ci_low: float
    ci_high: float
    confidence: float = DEFAULT_CONFIDENCE
    n_resamples: int = DEFAULT_N_RESAMPLES
    seed: int = 0

    @classmethod
    def from_ratios(cls, ratios: Iterable[float], *, n_resamples: int = DEFAULT_N_RESAMPLES,
                    confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> "RatioEstimate":
        """Median and percentile bootstrap interval of per-round ratios.

        Raises:
            ValueError: as :func:`bootstrap_median_ci`, or a ratio <= 0.
        """
        vals = tuple(float(r) for r in ratios)
        if any(not (r > 0) for r in vals):
            raise ValueError("RatioEstimate.from_ratios: every ratio must be a finite number > 0")
        lo, hi = bootstrap_median_ci(vals, n_resamples=n_resamples, confidence=confidence, seed=seed)
        return cls(ratios=vals, median=float(np.median(vals)), ci_low=lo, ci_high=hi, confidence=confidence,
                   n_resamples=n_resamples, seed=seed)

    @classmethod
    def from_blocks(cls, reference_ms: Iterable[float], other_ms: Iterable[float], **kw) -> "RatioEstimate":
        """Ratios ``other_ms[i] / reference_ms[i]`` of paired blocks (same round), then :meth:`from_ratios`.

        Raises:
            ValueError: unequal lengths, or a reference block <= 0.
        """
        ref, oth = list(reference_ms), list(other_ms)
        if len(ref) != len(oth):
            raise ValueError(f"RatioEstimate.from_blocks: {len(ref)} reference blocks but {len(oth)} others; "
                             "blocks must be paired by round")
        if any(not (r > 0) for r in ref):
            raise ValueError("RatioEstimate.from_blocks: reference block latencies must be > 0 ms")
        return cls.from_ratios([o / r for r, o in zip(ref, oth)], **kw)

    @property
    def rel_half_width(self) -> float:
        """The interval's larger side relative to the median: max(median-low, high-median) / median."""
        return max(self.median - self.ci_low, self.ci_high - self.median) / self.median

    def within(self, rel_width: float) -> bool:
        """True when the interval lies inside median × (1 ± rel_width) (e.g. 0.01 for ±1 %)."""
        return self.rel_half_width <= rel_width

    def contains(self, ratio: float) -> bool:
        """True when ``ci_low <= ratio <= ci_high``."""
        return self.ci_low <= ratio <= self.ci_high


def tie(a: RatioEstimate | tuple[float, float], b: RatioEstimate | tuple[float, float]) -> bool:
    """Within noise: True when the two ratio intervals overlap (ends included).

    A candidate whose interval straddles the incumbent's is a tie, not a
    winner (issue 12). Overlap of two 95 % intervals is a conservative test
    (it calls some real differences ties), which is the side to err on when a
    wrong "winner" steers a search.

    Args:
        a, b: :class:`RatioEstimate` or ``(low, high)`` pairs.

    Raises:
        ValueError: an interval with low > high.
    """
    (alo, ahi), (blo, bhi) = (_interval(x) for x in (a, b))
    return alo <= bhi and blo <= ahi


def _interval(x: RatioEstimate | tuple[float, float]) -> tuple[float, float]:
    lo, hi = (x.ci_low, x.ci_high) if isinstance(x, RatioEstimate) else (float(x[0]), float(x[1]))
    if not lo <= hi:
        raise ValueError(f"tie: interval ({lo}, {hi}) has low > high")
    return lo, hi


def cycle_ratios(ratios: Iterable[float], cycle: int) -> list[float]:
    """Geometric means of consecutive complete cycles of per-round ratios (an incomplete tail is dropped).

    With the rotated block order of ``n`` artifacts, ``n`` consecutive rounds
    put every artifact once in every position (a Latin square): a cycle's
    geometric mean cancels a position effect (the block after a bigger model
    runs on colder caches) to first order, as an ABBA design does for two.
    ``cycle=1`` returns the ratios unchanged.

    Args:
        ratios: per-round ratios (> 0), in round order.
        cycle: rounds per cycle (>= 1).

    Returns:
        One value per complete cycle: ``exp(mean(log(r)))`` over its rounds.

    Raises:
        ValueError: cycle < 1, or a ratio <= 0.
    """
    vals = [float(r) for r in ratios]
    if isinstance(cycle, bool) or not isinstance(cycle, int) or cycle < 1:
        raise ValueError(f"cycle_ratios: cycle must be an int >= 1, got {cycle!r}")
    if any(not (r > 0) for r in vals):
        raise ValueError("cycle_ratios: every ratio must be > 0")
    whole = len(vals) // cycle * cycle
    logs = np.log(np.asarray(vals[:whole], dtype=np.float64)).reshape(-1, cycle)
    return [float(v) for v in np.exp(logs.mean(axis=1))]
