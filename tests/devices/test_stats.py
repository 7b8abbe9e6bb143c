"""LatencyStats from raw values, checked against hand computation."""

import math

import pytest

from devices.base import LatencyStats as ReExported
from devices.stats import DEFAULT_MAX_COV, LatencyStats


def test_stats_by_hand():
    s = LatencyStats.from_raw([1.0, 2.0, 3.0, 4.0, 10.0])
    # sorted 1,2,3,4,10; p50 = 3; p90 at rank 0.9*4 = 3.6 -> 4 + 0.6*(10-4) = 7.6
    assert s.p50_ms == pytest.approx(3.0)
    assert s.p90_ms == pytest.approx(7.6)
    assert s.mean_ms == pytest.approx(4.0)
    # sample variance: (9+4+1+0+36)/4 = 12.5
    assert s.std_ms == pytest.approx(math.sqrt(12.5))
    assert s.cov == pytest.approx(math.sqrt(12.5) / 4.0)
    assert (s.min_ms, s.max_ms, s.n) == (1.0, 10.0, 5)
    assert s.unstable is True
    assert ReExported is LatencyStats


def test_stable_and_threshold():
    s = LatencyStats.from_raw([2.0, 2.1, 1.9, 2.0])
    # mean 2.0; sample var (0 + .01 + .01 + 0)/3; std ≈ 0.08165; cov ≈ 0.0408
    assert s.p50_ms == pytest.approx(2.0)
    assert s.p90_ms == pytest.approx(2.07)  # rank 2.7 of [1.9,2,2,2.1] -> 2 + 0.7*0.1
    assert s.cov == pytest.approx(math.sqrt(0.02 / 3) / 2.0)
    assert s.unstable is False and s.max_cov == DEFAULT_MAX_COV == 0.10
    assert LatencyStats.from_raw([2.0, 2.1, 1.9, 2.0], max_cov=0.03).unstable is True


def test_single_value_and_errors():
    s = LatencyStats.from_raw([0.5])
    assert (s.p50_ms, s.p90_ms, s.std_ms, s.cov, s.unstable) == (0.5, 0.5, 0.0, 0.0, False)
    for bad in ([], [1.0, float("nan")], [-1.0]):
        with pytest.raises(ValueError):
            LatencyStats.from_raw(bad)
    with pytest.raises(ValueError, match="max_cov"):
        LatencyStats.from_raw([1.0], max_cov=0)


# ------------------------------------------------------------- ratio statistics

def test_bootstrap_constant_and_two_values_by_hand():
    from devices.stats import bootstrap_median_ci

    assert bootstrap_median_ci([2.0, 2.0, 2.0], seed=3) == (2.0, 2.0)
    # two values {1, 3}: a resample's median is 1 (p 1/4), 2 (p 1/2) or 3 (p 1/4); with 2000
    # resamples about 500 are 1 and 500 are 3, so the 2.5th percentile is 1 and the 97.5th is 3
    assert bootstrap_median_ci([1.0, 3.0], n_resamples=2000, seed=0) == (1.0, 3.0)
    # 50 % interval: the 25th / 75th percentiles sit on the border of the 1s and 2s, 2s and 3s
    lo, hi = bootstrap_median_ci([1.0, 3.0], n_resamples=2000, confidence=0.5, seed=0)
    assert 1.0 <= lo <= 2.0 <= hi <= 3.0


def test_bootstrap_is_the_documented_algorithm():
    import numpy as np

    from devices.stats import bootstrap_median_ci

    vals = np.array([0.91, 0.88, 0.93, 0.90, 0.87, 0.95, 0.89])
    rng = np.random.default_rng(11)
    meds = np.median(vals[rng.integers(0, 7, size=(500, 7))], axis=1)
    want = tuple(float(v) for v in np.percentile(meds, [5.0, 95.0]))
    assert bootstrap_median_ci(vals, n_resamples=500, confidence=0.9, seed=11) == want
    assert bootstrap_median_ci(vals, seed=1) == bootstrap_median_ci(vals, seed=1)  # seeded: reproducible
    lo, hi = bootstrap_median_ci(vals)
    assert min(vals) <= lo <= 0.90 <= hi <= max(vals)  # median 0.90 inside, ends inside the data's range


def test_bootstrap_errors():
    from devices.stats import bootstrap_median_ci

    for bad, kw in (([], {}), ([1.0, float("inf")], {}), ([1.0], {"n_resamples": 0}),
                    ([1.0], {"confidence": 1.0}), ([1.0], {"confidence": 0.0})):
        with pytest.raises(ValueError):
            bootstrap_median_ci(bad, **kw)


def test_ratio_estimate_from_blocks_by_hand():
    from devices.stats import RatioEstimate

    est = RatioEstimate.from_blocks([2.0, 4.0, 5.0], [1.0, 3.0, 10.0], seed=0)
    assert est.ratios == (0.5, 0.75, 2.0) and est.median == 0.75
    assert 0.5 <= est.ci_low <= 0.75 <= est.ci_high <= 2.0
    with pytest.raises(ValueError, match="paired"):
        RatioEstimate.from_blocks([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="> 0"):
        RatioEstimate.from_blocks([0.0], [1.0])
    e = RatioEstimate(ratios=(1.0,), median=1.0, ci_low=0.99, ci_high=1.02)
    assert e.rel_half_width == pytest.approx(0.02)  # the larger side: (1.02 - 1) / 1
    assert e.within(0.0201) and not e.within(0.019)
    assert e.contains(1.0) and e.contains(0.99) and not e.contains(1.03)


def test_tie_by_hand():
    from devices.stats import RatioEstimate, tie

    assert tie((0.90, 0.95), (0.94, 1.00))  # overlap 0.94..0.95: within noise
    assert not tie((0.90, 0.93), (0.94, 1.00))  # apart: a real difference
    assert tie((0.90, 0.94), (0.94, 1.00))  # touching ends count as a tie
    assert tie((0.9, 1.1), (0.95, 0.96))  # one inside the other
    a = RatioEstimate(ratios=(0.8,), median=0.8, ci_low=0.79, ci_high=0.81)
    assert not tie(a, (0.82, 0.9)) and tie(a, (0.81, 0.9))
    with pytest.raises(ValueError, match="low > high"):
        tie((1.0, 0.9), (0.9, 1.0))


def test_cycle_ratios_by_hand():
    from devices.stats import cycle_ratios

    # cycles of 2: sqrt(0.5 * 2) = 1, sqrt(4 * 1) = 2; the incomplete tail (9) is dropped
    assert cycle_ratios([0.5, 2.0, 4.0, 1.0, 9.0], 2) == pytest.approx([1.0, 2.0])
    assert cycle_ratios([1.0, 8.0, 1.0], 3) == pytest.approx([2.0])  # (1 * 8 * 1) ** (1/3)
    assert cycle_ratios([0.9, 1.1], 1) == pytest.approx([0.9, 1.1])
    assert cycle_ratios([0.9], 2) == []
    with pytest.raises(ValueError, match="cycle"):
        cycle_ratios([1.0], 0)
    with pytest.raises(ValueError, match="> 0"):
        cycle_ratios([1.0, 0.0], 2)
