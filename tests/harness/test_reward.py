"""R = αΔP − βΔC − γΔH (seed §3.1), checked against hand computation."""

import math

import pytest

from harness.search.reward import RewardWeights, compute_reward


def test_reward_by_hand():
    w = RewardWeights(alpha=2.0, beta=0.5, gamma=1.0)
    t = compute_reward(top1=0.90, macs=30_000_000, latency_p50_ms=1.5,
                       base_top1=0.92, base_macs=40_000_000, base_latency_p50_ms=2.0, weights=w)
    # ΔP = 0.90 − 0.92 = −0.02; ΔC = (30 − 40)/40 = −0.25; ΔH = (1.5 − 2.0)/2.0 = −0.25
    assert t.delta_p == pytest.approx(-0.02)
    assert t.delta_c == pytest.approx(-0.25)
    assert t.delta_h == pytest.approx(-0.25)
    # R = 2·(−0.02) − 0.5·(−0.25) − 1·(−0.25) = −0.04 + 0.125 + 0.25 = 0.335
    assert t.reward == pytest.approx(0.335)


def test_unpruned_model_has_zero_reward_and_slower_is_penalised():
    w = RewardWeights()
    same = compute_reward(top1=0.9, macs=10, latency_p50_ms=1.0, base_top1=0.9, base_macs=10,
                          base_latency_p50_ms=1.0, weights=w)
    assert same.reward == 0.0
    slower = compute_reward(top1=0.9, macs=10, latency_p50_ms=1.2, base_top1=0.9, base_macs=10,
                            base_latency_p50_ms=1.0, weights=w)
    assert slower.reward == pytest.approx(-0.2 * w.gamma)


@pytest.mark.parametrize("kw", [dict(alpha=-1.0), dict(beta=math.nan), dict(failure_penalty=0.5)])
def test_bad_weights_name_the_field(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        RewardWeights(**kw)


def test_failed_latency_is_refused_not_nan():
    with pytest.raises(ValueError, match="failure penalty"):
        compute_reward(top1=0.9, macs=10, latency_p50_ms=math.nan, base_top1=0.9, base_macs=10,
                       base_latency_p50_ms=1.0, weights=RewardWeights())


def test_terms_against_the_baseline_rank_on_the_interleaved_ratio_not_the_p50s():
    """Every env and the run compute R one way: ΔH from the candidate's interleaved ratio when it has one."""
    from types import SimpleNamespace

    from harness.search.reward import RewardWeights, meets_target, terms_against

    base = SimpleNamespace(top1=0.90, macs=1000, latency_p50_ms=4.0, latency_ratio=1.0)
    cand = SimpleNamespace(top1=0.88, macs=600, latency_p50_ms=4.4, latency_ratio=0.75)  # p50 from a slow minute
    t = terms_against(cand, base, RewardWeights(alpha=2.0, beta=0.5, gamma=1.0))
    assert t.delta_h == pytest.approx(-0.25)  # not 4.4 / 4.0 - 1 = +0.10
    assert t.reward == pytest.approx(2.0 * -0.02 - 0.5 * -0.4 - 1.0 * -0.25)
    no_ratio = SimpleNamespace(top1=0.88, macs=600, latency_p50_ms=3.0, latency_ratio=None)
    assert terms_against(no_ratio, base, RewardWeights()).delta_h == pytest.approx(-0.25)  # older rows: p50s
    assert meets_target(cand, base, metric="latency", target_ratio=0.8)
    assert not meets_target(cand, base, metric="macs", target_ratio=0.5)  # 600 / 1000 = 0.6
