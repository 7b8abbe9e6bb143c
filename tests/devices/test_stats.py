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
