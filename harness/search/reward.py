"""The hardware-aware reward R = αΔP − βΔC − γΔH.

Source: the seed document (``../shared/seed/``), section 3.1 (the formula) and
section 3.3 (ΔH measured on the target hardware); DESIGN.md §1 for the signs.

Definitions (all relative to the *unpruned* model s0, evaluated on the state s'
reached after the action, as the issue and DESIGN.md §1 require)::

    ΔP = top1(s') − top1(s0)                      # fraction, e.g. −0.012 for −1.2 points
    ΔC = (MACs(s') − MACs(s0)) / MACs(s0)          # fraction, negative when pruned
    ΔH = (p50(s') − p50(s0)) / p50(s0)             # fraction, negative when faster

    R  = α·ΔP − β·ΔC − γ·ΔH

With pruning ΔC and ΔH are negative, so −βΔC and −γΔH are *rewards* and αΔP
(negative when accuracy drops) is the accuracy *penalty*.

Defaults α=2, β=0.5, γ=1: the seed gives no values; these make one point of
top-1 (ΔP=−0.01) cost as much as a 2 % latency gain, and weigh MACs at half of
latency so the measured hardware term, not the MACs proxy, drives the search.

Failures (export, build or measurement failed; an impossible action) are not
NaN: they get the finite ``failure_penalty`` (default −1.0), which is below
any reward a valid candidate can plausibly reach with the default weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["RewardTerms", "RewardWeights", "compute_reward", "latency_ratio_of", "meets_target", "terms_against"]


@dataclass(frozen=True, slots=True)
class RewardWeights:
    """Weights of R = αΔP − βΔC − γΔH (seed §3.1).

    Attributes:
        alpha: weight of ΔP (top-1 change, fraction). ≥ 0.
        beta: weight of ΔC (relative MACs change). ≥ 0.
        gamma: weight of ΔH (relative measured p50 latency change). ≥ 0.
        failure_penalty: finite reward for a failed candidate or an impossible
            action; must be ≤ 0.

    Raises:
        ValueError: a negative weight, a positive or non-finite penalty.
    """

    alpha: float = 2.0
    beta: float = 0.5
    gamma: float = 1.0
    failure_penalty: float = -1.0

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"reward weight {name}={value!r} must be a finite number >= 0 (e.g. --{name} 1.0)")
        if not math.isfinite(self.failure_penalty) or self.failure_penalty > 0:
            raise ValueError(f"failure_penalty={self.failure_penalty!r} must be finite and <= 0")


@dataclass(frozen=True, slots=True)
class RewardTerms:
    """The three deltas and the reward, kept together for the results store.

    Attributes:
        delta_p: top1(s') − top1(s0), fraction.
        delta_c: relative MACs change, fraction.
        delta_h: relative measured p50 change, fraction.
        reward: α·ΔP − β·ΔC − γ·ΔH.
    """

    delta_p: float
    delta_c: float
    delta_h: float
    reward: float


def compute_reward(
    *,
    top1: float,
    macs: int,
    latency_p50_ms: float,
    base_top1: float,
    base_macs: int,
    base_latency_p50_ms: float,
    weights: RewardWeights,
    latency_ratio: float | None = None,
) -> RewardTerms:
    """Compute R = αΔP − βΔC − γΔH for one candidate against the unpruned model.

    Args:
        top1: validation top-1 of the candidate, in [0, 1].
        macs: multiply-accumulates of the candidate for one batch-1 input.
        latency_p50_ms: measured median latency of the candidate, ms.
        base_top1, base_macs, base_latency_p50_ms: the same for the unpruned model.
        weights: α, β, γ.
        latency_ratio: the candidate's latency / the unpruned model's, measured *as a ratio*
            (interleaved in one session, ``harness.pipeline.Pipeline.measure_ratio``); when given,
            ΔH = latency_ratio − 1 and the two absolute p50s are not used for ΔH (they were taken
            at different times: DESIGN.md §5).

    Returns:
        RewardTerms with the deltas (fractions) and the reward.

    Raises:
        ValueError: a baseline MACs or latency that is not positive, or a
            non-finite input (a caller bug: failed candidates must use
            ``weights.failure_penalty`` instead).
    """
    values = dict(top1=top1, macs=macs, latency_p50_ms=latency_p50_ms, base_top1=base_top1)
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"{name}={value!r} is not finite; a failed candidate takes the failure penalty")
    if base_macs <= 0:
        raise ValueError(f"base_macs={base_macs} must be > 0")
    if not (base_latency_p50_ms > 0 and math.isfinite(base_latency_p50_ms)):
        raise ValueError(f"base_latency_p50_ms={base_latency_p50_ms} must be a positive latency")
    delta_p = top1 - base_top1
    delta_c = (macs - base_macs) / base_macs
    if latency_ratio is not None:
        if not (latency_ratio > 0 and math.isfinite(latency_ratio)):
            raise ValueError(f"latency_ratio={latency_ratio!r} must be a positive ratio")
        delta_h = latency_ratio - 1.0
    else:
        delta_h = (latency_p50_ms - base_latency_p50_ms) / base_latency_p50_ms
    reward = weights.alpha * delta_p - weights.beta * delta_c - weights.gamma * delta_h
    return RewardTerms(delta_p=delta_p, delta_c=delta_c, delta_h=delta_h, reward=reward)


def latency_ratio_of(result: Any, baseline: Any) -> float:
    """``result``'s latency / the unpruned model's: its interleaved ratio when it has one (DESIGN.md §5),
    else the ratio of the two absolute p50s (ms / ms). ``result``/``baseline``: evaluated candidates
    (``CandidateResult``-like: ``latency_ratio``, ``latency_p50_ms``)."""
    ratio = getattr(result, "latency_ratio", None)
    return ratio if ratio is not None else result.latency_p50_ms / baseline.latency_p50_ms


def terms_against(result: Any, baseline: Any, weights: RewardWeights) -> RewardTerms:
    """R = αΔP − βΔC − γΔH of an evaluated candidate against the evaluated unpruned model (every env's and the
    run's one way to it: :func:`compute_reward` with ΔH from :func:`latency_ratio_of`)."""
    return compute_reward(
        top1=result.top1, macs=result.macs, latency_p50_ms=result.latency_p50_ms,
        base_top1=baseline.top1, base_macs=baseline.macs, base_latency_p50_ms=baseline.latency_p50_ms,
        weights=weights, latency_ratio=latency_ratio_of(result, baseline),
    )


def meets_target(result: Any, baseline: Any, *, metric: str, target_ratio: float) -> bool:
    """True when ``result``'s ``metric`` (``latency``: :func:`latency_ratio_of`; ``macs``: MACs / unpruned MACs)
    is ≤ ``target_ratio``."""
    value = result.macs / baseline.macs if metric == "macs" else latency_ratio_of(result, baseline)
    return bool(value <= target_ratio)
