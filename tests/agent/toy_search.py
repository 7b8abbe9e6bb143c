"""A toy search problem for the learned agents' tests (not a test module).

``ToySource`` computes a candidate deterministically from its spec, with no model:
a chain of 3x3 convs over 8x8 maps (input 1 channel), so
    MACs(spec) = 64 · 9 · Σ_g w_{g−1} · w_g   (w_{−1} = 1),
    latency_p50_ms = 0.2 + MACs / 1e6          (falls with pruning, with a fixed per-call cost),
    top1 = 0.9 − 0.5 · #{groups with keep ratio < 0.5}   (a cliff past half width: −1.0 reward per group with α = 2).
``TABLE`` is the matching :class:`LayerTable`, so LayerwiseEnv's MACs features are exact.
``ChargingWrapper`` stands in for the search recorder: it charges the budget for every evaluated
candidate and truncates the episode once the budget is spent.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from agent.base import Budget
from harness.pruning import ArchSpec, PruneGroup
from harness.search.amc_env import (
    LayerRecord,
    LayerTable,
    LayerwiseConfig,
    LayerwiseEnv,
)
from harness.search.env import EnvConfig, PruningEnv

GROUPS = [PruneGroup(0, "conv0", 16, ("conv0",), "conv"), PruneGroup(1, "conv1", 16, ("conv1",), "conv"),
          PruneGroup(2, "conv2", 32, ("conv2",), "residual")]
WIDTHS = tuple(g.channels for g in GROUPS)
HW, K2 = 64, 9
TABLE = LayerTable(tuple(
    LayerRecord(name=g.name, macs=HW * K2 * (1 if i == 0 else WIDTHS[i - 1]) * g.channels, out_group=i,
                in_group=None if i == 0 else i - 1, kernel=3, stride=1, out_hw=HW)
    for i, g in enumerate(GROUPS)))


@dataclass(frozen=True)
class ToyResult:
    """The fields of ``CandidateResult`` the envs read."""

    spec: ArchSpec
    top1: float | None
    macs: int
    latency_p50_ms: float | None
    latency_ratio: float | None = None
    error_kind: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_kind is None


def toy_macs(channels: tuple[int, ...]) -> int:
    """MACs of the toy chain (module docstring)."""
    prev, total = 1, 0
    for w in channels:
        total += HW * K2 * prev * w
        prev = w
    return total


class ToySource:
    """Deterministic candidate source (module docstring); remembers every evaluated spec."""

    def __init__(self) -> None:
        self.calls: list[ArchSpec] = []
        self.base_p50_ms = 0.2 + toy_macs(WIDTHS) / 1e6

    def evaluate(self, spec: ArchSpec) -> ToyResult:
        self.calls.append(spec)
        macs = toy_macs(spec.channels)
        p50 = 0.2 + macs / 1e6
        below = sum(w / c < 0.5 for w, c in zip(spec.channels, WIDTHS))
        return ToyResult(spec, 0.9 - 0.5 * below, macs, p50, latency_ratio=p50 / self.base_p50_ms)


def make_pruning_env(**config) -> tuple[PruningEnv, ToySource]:
    source = ToySource()
    base = source.evaluate(ArchSpec(WIDTHS))
    source.calls.clear()
    return PruningEnv(source, GROUPS, base, EnvConfig(**config)), source


def make_layerwise_env(layerwise: LayerwiseConfig = LayerwiseConfig(), table: LayerTable | None = TABLE,
                       **config) -> tuple[LayerwiseEnv, ToySource]:
    source = ToySource()
    base = source.evaluate(ArchSpec(WIDTHS))
    source.calls.clear()
    return LayerwiseEnv(source, GROUPS, base, EnvConfig(**config), layerwise, layers=table), source


class ChargingWrapper(gym.Wrapper):
    """The recorder's budget rule: one charge per evaluated candidate (``info["candidate"]`` set);
    truncate the episode once the budget is spent. Also records episode rewards."""

    def __init__(self, env: gym.Env, budget: Budget) -> None:
        super().__init__(env)
        self.budget = budget
        self.episode_rewards: list[float] = []
        self._ret = 0.0

    def reset(self, **kwargs):
        self._ret = 0.0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if info.get("candidate") is not None:
            self.budget.charge()
        self._ret += float(reward)
        if self.budget.exhausted() and not terminated:
            truncated = True
        if terminated or truncated:
            self.episode_rewards.append(self._ret)
        return obs, reward, terminated, truncated, info


def mean(values) -> float:
    return float(np.mean(values))
