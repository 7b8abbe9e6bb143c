"""``PruningEnv``: the seed's MDP as a gymnasium environment.

Source: seed document ``../shared/seed/`` §3.1 (state, action, reward) and
§4.2 (``PruningEnv``); DESIGN.md §3.

State (observation, float32, flat ``[4·G + 3]`` for G prunable groups):
    per group g, in group order:
        kept_g / orig_g            current keep ratio, in (0, 1]
        orig_g / max_g orig        the group's original width, normalised
        g / (G − 1)                the group's index (AMC's layer index feature)
        kind_g                     1 residual group (convs coupled by adds), 0.5 depthwise
                                   (expansion conv + its depthwise conv), 0 a single conv
    then three globals:
        step / max_steps           budget used so far
        MACs(s) / MACs(s0)         compute ratio
        min(p50(s) / p50(s0), 2)/2 measured latency ratio, clipped to [0, 1]

Action: ``Discrete(G + 1)``. Action g < G removes ``step_fraction`` of group g's
*original* filters (rounded, at least one; the seed's "prune one layer by a
fixed fraction"), never below ``min_channels``; action G is "stop".

Impossible actions are **penalised, not masked inside the env**: a group
already at its minimum leaves the state unchanged and gives
``weights.failure_penalty``. ``info["action_mask"]`` (int8, 1 = possible)
lets an agent mask them (ours does), so a masked agent never pays it.

Reward: ``harness.search.reward.compute_reward`` of the state reached, relative to
the unpruned model; "stop" is rewarded with the current state's reward. A
candidate whose export, build or measurement failed gives the failure penalty
and the state goes back to where it was.

Terminated: the target metric's ratio to the unpruned model is at most
``target_ratio`` (the measured latency ratio with ``target_metric="latency"``,
MACs(s)/MACs(s0) with ``"macs"``), the agent stopped, or nothing can be pruned
any more. Truncated: ``max_steps``.

``info`` (every ``reset`` and ``step``) carries what a search loop needs, so it never reads the
env's attributes: ``event`` (None after reset; ``pruned``, ``failed``, ``impossible``, ``stop``,
``jump``), ``spec`` (the current ArchSpec), ``candidate`` (the CandidateResult evaluated by this
step, or None), ``reward_terms`` (RewardTerms of the current state, None while unpruned),
``target_met`` (bool: the current state meets the target), ``action_mask``, ``latency_ratio``,
``macs_ratio``, ``top1`` (validation) of the current state, and ``widths`` (per group, every
width the group can take, widest first: the MDP's grid, for methods that propose whole specs).

:meth:`PruningEnv.jump` is a step that sets every group's width at once (one evaluated candidate,
then the episode terminates): how one-shot methods (uniform, magnitude) put a whole spec through the
same env, reward and recorder as the agents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from harness.pruning import ArchSpec, PruneGroup
from harness.search.reward import (
    RewardTerms,
    RewardWeights,
    latency_ratio_of,
    meets_target,
    terms_against,
)

__all__ = ["CandidateSource", "EnvConfig", "PruningEnv", "next_width", "reachable_widths"]

#: The group-kind feature of the observation (harness.pruning.GROUP_KINDS).
_KIND_FEATURE = {"residual": 1.0, "depthwise": 0.5, "conv": 0.0}


class CandidateSource(Protocol):
    """What the env needs from the harness: evaluate one architecture.

    ``evaluate(spec)`` returns an object with ``ok`` (bool), ``top1`` (float),
    ``macs`` (int), ``latency_p50_ms`` (float), ``error_kind`` and
    ``error_message`` — see ``harness.search.candidate.CandidateResult``.
    """

    def evaluate(self, spec: ArchSpec) -> Any: ...


@dataclass(frozen=True, slots=True)
class EnvConfig:
    """Options of the MDP.

    Attributes:
        step_fraction: share of a group's original filters one action removes (0, 1).
        min_channels: no group goes below this many channels (≥ 1).
        round_to: kept widths are rounded down to a multiple of this (1 = off)
            and never go below it, nor below ``min_channels``.
        max_steps: truncation limit per episode (≥ 2).
        target_ratio: episode terminates when the target metric's ratio to the unpruned model ≤ this,
            in (0, 1] (0.8 = 20 % below the unpruned latency, or MACs).
        target_metric: ``"latency"`` (the measured latency ratio) or ``"macs"``.
        weights: α, β, γ and the failure penalty.
    """

    step_fraction: float = 0.25
    min_channels: int = 1
    round_to: int = 1
    max_steps: int = 8
    target_ratio: float = 0.8
    target_metric: str = "latency"
    weights: RewardWeights = field(default_factory=RewardWeights)

    def __post_init__(self) -> None:
        for name in ("min_channels", "round_to", "max_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name}={value!r} must be an integer")
        if isinstance(self.step_fraction, bool) or not isinstance(self.step_fraction, (int, float)):
            raise ValueError(f"step_fraction={self.step_fraction!r} must be a number in (0, 1), e.g. 0.25")
        if not 0 < self.step_fraction < 1:
            raise ValueError(f"step_fraction={self.step_fraction} must be in (0, 1), e.g. 0.25")
        if self.min_channels < 1:
            raise ValueError(f"min_channels={self.min_channels} must be >= 1: no group may reach zero channels")
        if self.round_to < 1:
            raise ValueError(f"round_to={self.round_to} must be >= 1 (1 = no rounding)")
        if self.max_steps < 2:
            raise ValueError(f"max_steps={self.max_steps} must be >= 2")
        if isinstance(self.target_ratio, bool) or not isinstance(self.target_ratio, (int, float)) \
                or not 0 < self.target_ratio <= 1:
            raise ValueError(f"target_ratio={self.target_ratio!r} must be in (0, 1], e.g. 0.8 for 20% below the "
                             f"unpruned model's latency (or MACs, with target_metric='macs')")
        if self.target_metric not in ("latency", "macs"):
            raise ValueError(f"target_metric={self.target_metric!r} must be 'latency' or 'macs'")


def next_width(kept: int, channels: int, config: EnvConfig) -> int | None:
    """The width (channels) a group has after one prune action, or None when the action is impossible.

    The rule of the action (module docstring): remove ``round(step_fraction x channels)`` filters
    (at least one) from ``kept``, round down to a multiple of ``round_to``, and never go below
    ``min_channels`` nor below ``round_to`` (with a grid the smallest width is a grid point too).
    An action that would not shrink the group is impossible.

    Args:
        kept: the group's current width (channels).
        channels: its unpruned width (channels).
        config: step fraction, grid and minimum width.
    """
    step = max(1, int(round(config.step_fraction * channels)))
    new = kept - step
    r = config.round_to
    if r > 1:
        new = (new // r) * r
    new = max(new, config.min_channels, r)
    return new if new < kept else None


def reachable_widths(channels: int, config: EnvConfig) -> tuple[int, ...]:
    """Every width a group of ``channels`` filters can take in an episode, widest first.

    Each action changes one group only, so a group's widths form a chain from ``channels`` down
    by :func:`next_width`; the widths the search can propose for the group are exactly this chain
    (used by the grid warm-up, :mod:`harness.compile.grid`). E.g. ``step_fraction=0.25``,
    ``round_to=8``: 64 -> (64, 48, 32, 16, 8), 32 -> (32, 24, 16, 8), 16 -> (16, 8).
    """
    chain = [int(channels)]
    while (nxt := next_width(chain[-1], int(channels), config)) is not None:
        chain.append(nxt)
    return tuple(chain)


class PruningEnv(gym.Env):
    """Filter pruning as an MDP over the kept channels of each prunable group.

    Args:
        source: evaluates an architecture (prune, accuracy, MACs, compile, measure).
        groups: the prunable groups (``harness.pruning.find_groups``).
        baseline: the evaluated unpruned model (a successful CandidateResult).
        config: EnvConfig.

    Raises:
        ValueError: a failed baseline or no groups.
    """

    metadata = {"render_modes": []}

    def __init__(self, source: CandidateSource, groups: list[PruneGroup], baseline: Any, config: EnvConfig = EnvConfig()) -> None:
        super().__init__()
        if not groups:
            raise ValueError("the model has no prunable groups")
        if not baseline.ok:
            raise ValueError(f"the unpruned model could not be evaluated: {baseline.error_kind}: {baseline.error_message}")
        self.source = source
        self.groups = list(groups)
        self.baseline = baseline
        self.config = config
        self.orig = np.array([g.channels for g in self.groups], dtype=np.int64)
        n = len(self.groups)
        self.action_space = gym.spaces.Discrete(n + 1)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(4 * n + 3,), dtype=np.float32)
        max_orig = float(self.orig.max())
        index = np.arange(n, dtype=np.float32) / max(n - 1, 1)
        kind = np.array([_KIND_FEATURE.get(g.kind, 0.0) for g in self.groups], dtype=np.float32)
        self._static = np.stack([self.orig / max_orig, index, kind], axis=1).astype(np.float32)
        self.stop_action = n
        self.widths = tuple(reachable_widths(int(c), config) for c in self.orig)
        self._reset_state()

    # -- gymnasium API --------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Back to the unpruned model. Returns (observation, info)."""
        super().reset(seed=seed)
        self._reset_state()
        return self._obs(), self._info(None, None)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Apply one action; returns (obs, reward, terminated, truncated, info).

        Raises:
            ValueError: an action outside ``action_space``.
        """
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is outside Discrete({self.action_space.n})")
        action = int(action)
        self.steps += 1
        result = None
        if action == self.stop_action:
            reward = self.current_terms.reward if self.current_terms else 0.0
            terminated = True
            event = "stop"
        else:
            new = self._pruned_width(action)
            if new is None:
                reward, terminated, event = self.config.weights.failure_penalty, False, "impossible"
            else:
                kept = list(self.kept)
                kept[action] = new
                spec = ArchSpec(tuple(int(k) for k in kept))
                result = self.source.evaluate(spec)
                if not result.ok:
                    reward, terminated, event = self.config.weights.failure_penalty, False, "failed"
                else:
                    self.kept = np.array(kept, dtype=np.int64)
                    self.current = result
                    self.current_terms = self._terms(result)
                    reward = self.current_terms.reward
                    terminated = self.target_met(result) or not self._any_possible()
                    event = "pruned"
        truncated = (not terminated) and self.steps >= self.config.max_steps
        return self._obs(), float(reward), bool(terminated), bool(truncated), self._info(result, event)

    def jump(self, spec: ArchSpec | tuple[int, ...]) -> tuple[np.ndarray, float, bool, bool, dict]:
        """One step that sets every group's width at once: ``spec`` is evaluated as one candidate.

        The episode then terminates (a one-shot method makes one candidate per episode); a failed
        candidate gives the failure penalty and leaves the state where it was, as a failed step does.

        Args:
            spec: kept channels per group; each must be one of the group's ``info["widths"]``.

        Returns:
            (obs, reward, terminated=True, truncated=False, info) with ``info["event"] == "jump"``
            (``"failed"`` when it could not be evaluated).

        Raises:
            ValueError: a spec of the wrong length or a width off the group's grid.
        """
        channels = tuple(int(k) for k in (spec.channels if isinstance(spec, ArchSpec) else spec))
        if len(channels) != len(self.groups):
            raise ValueError(f"jump: spec has {len(channels)} widths, the model has {len(self.groups)} groups")
        for g, (k, widths) in enumerate(zip(channels, self.widths)):
            if k not in widths:
                raise ValueError(f"jump: width {k} of group {g} is not one the env can reach ({list(widths)})")
        self.steps += 1
        result = self.source.evaluate(ArchSpec(channels))
        if not result.ok:
            reward, event = self.config.weights.failure_penalty, "failed"
        else:
            self.kept = np.array(channels, dtype=np.int64)
            self.current = result
            self.current_terms = self._terms(result)
            reward, event = self.current_terms.reward, "jump"
        return self._obs(), float(reward), True, False, self._info(result, event)

    def restore(self, kept: tuple[int, ...], steps: int, current: Any) -> tuple[np.ndarray, dict]:
        """Put the env back into a checkpointed mid-episode state (for ``--resume``).

        Args:
            kept: kept channels per group.
            steps: steps already taken in this episode.
            current: the evaluated candidate of ``kept`` (the baseline when unpruned).

        Returns:
            (observation, info) as ``reset`` would give them for that state.
        """
        self.kept = np.array(kept, dtype=np.int64)
        self.steps = int(steps)
        self.current = current
        self.current_terms = None if current is self.baseline else self._terms(current)
        return self._obs(), self._info(None, None)

    # -- helpers --------------------------------------------------------------
    def _reset_state(self) -> None:
        self.kept = self.orig.copy()
        self.steps = 0
        self.current = self.baseline
        self.current_terms: RewardTerms | None = None

    def _pruned_width(self, g: int) -> int | None:
        """The width group g would have after one action, or None if impossible."""
        return next_width(int(self.kept[g]), int(self.orig[g]), self.config)

    def _any_possible(self) -> bool:
        return any(self._pruned_width(g) is not None for g in range(len(self.groups)))

    def action_mask(self) -> np.ndarray:
        """int8 [G + 1]: 1 where the action changes the state (stop always allowed)."""
        mask = np.array([self._pruned_width(g) is not None for g in range(len(self.groups))] + [True], dtype=np.int8)
        return mask

    def _terms(self, result: Any) -> RewardTerms:
        return terms_against(result, self.baseline, self.config.weights)

    def latency_ratio(self, result: Any) -> float:
        """``result``'s latency / the unpruned model's (:func:`harness.search.reward.latency_ratio_of`)."""
        return latency_ratio_of(result, self.baseline)

    def target_met(self, result: Any) -> bool:
        """True when ``result`` reaches the target ratio of the target metric."""
        return meets_target(result, self.baseline, metric=self.config.target_metric,
                            target_ratio=self.config.target_ratio)

    def _obs(self) -> np.ndarray:
        keep = (self.kept / self.orig).astype(np.float32)[:, None]
        per_group = np.concatenate([keep, self._static], axis=1).reshape(-1)
        cur = self.current
        glob = np.array(
            [
                self.steps / self.config.max_steps,
                cur.macs / self.baseline.macs,
                min(self.latency_ratio(cur), 2.0) / 2.0,
            ],
            dtype=np.float32,
        )
        return np.clip(np.concatenate([per_group, glob]), 0.0, 1.0).astype(np.float32)

    def _info(self, result: Any, event: str | None) -> dict:
        terms = self.current_terms
        return {
            "event": event,
            "spec": ArchSpec(tuple(int(k) for k in self.kept)),
            "candidate": result,
            "action_mask": self.action_mask(),
            "latency_ratio": self.latency_ratio(self.current),
            "macs_ratio": self.current.macs / self.baseline.macs,
            "top1": self.current.top1,
            "reward_terms": terms,
            "target_met": bool(self.current is not self.baseline and self.target_met(self.current)),
            "widths": self.widths,
        }
