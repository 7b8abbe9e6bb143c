"""The baselines every pruning search is compared with (issue 14; DESIGN.md §9), one readable file.

- :class:`RandomMethod` (``random``): uniformly random *legal* actions under the same episode
  rules as the agents (the env's step limit, target and stop). Random search is a strong baseline
  in architecture search (Li & Talwalkar, "Random Search and Reproducibility for NAS", UAI 2019).
- :class:`UniformMethod` (``uniform``): the same keep ratio in every group, swept from mild to
  strong, each a candidate put through the env whole (``env.jump``), widths on the env's grid.

Both are exactly reproducible from their seed (uniform does not even use it): the same env gives the
same candidates in the same order. They know gymnasium and numpy only.
"""

from __future__ import annotations

import json
from typing import Any

import gymnasium as gym
import numpy as np

from agent.base import Budget, SearchMethod

__all__ = ["RandomMethod", "UniformMethod", "nearest_width"]


class RandomMethod(SearchMethod):
    """Uniformly random legal actions (``info["action_mask"]``), episode after episode.

    Args:
        seed: seeds ``numpy.random.default_rng``; one draw (``rng.choice`` over the legal
            actions, the stop action included) per step.
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def run(self, env: gym.Env, budget: Budget) -> None:
        """Episodes of random legal actions until ``budget.exhausted()``."""
        while not budget.exhausted():
            _, info = env.reset()
            done = False
            while not done and not budget.exhausted():
                legal = np.flatnonzero(np.asarray(info["action_mask"]))
                action = int(self.rng.choice(legal))
                _, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated

    def state_dict(self) -> dict[str, Any]:
        """The generator's state, as JSON text (its 128-bit integers as plain data)."""
        return {"rng": json.dumps(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if state:
            self.rng.bit_generator.state = json.loads(state["rng"])


def nearest_width(widths: tuple[int, ...], target: float) -> int:
    """The width of ``widths`` nearest to ``target`` channels; a tie goes to the wider (keep more)."""
    return min(widths, key=lambda w: (abs(w - target), -w))


class UniformMethod(SearchMethod):
    """One keep ratio for every group, swept from mild to strong (no search).

    For each ratio r of ``ratios`` (default 0.95, 0.90, ..., 0.05) every group keeps the width of its
    grid (``info["widths"]``) nearest to r × its unpruned width; specs that coincide on the grid count
    once, and the unpruned spec is skipped. When the budget is smaller than the sweep, an evenly spaced
    subset (mildest and strongest included) is evaluated; a larger budget is left unspent: a sweep has
    nothing more to propose.

    Args:
        seed: unused (the sweep is deterministic); accepted for the common constructor.
        ratios: keep ratios in (0, 1), mild to strong.
    """

    name = "uniform"

    def __init__(self, seed: int = 0, ratios: tuple[float, ...] | None = None) -> None:
        self.ratios = tuple(float(r) for r in ratios) if ratios is not None else tuple(
            round(1.0 - 0.05 * k, 2) for k in range(1, 20))
        if not self.ratios or not all(0 < r < 1 for r in self.ratios):
            raise ValueError(f"ratios={ratios!r} must be keep ratios in (0, 1), mild to strong")
        self.plan: list[list[int]] | None = None
        self.next_index = 0

    def sweep(self, widths: tuple[tuple[int, ...], ...]) -> list[list[int]]:
        """Every distinct spec of the sweep, mild to strong, for groups with these grids."""
        out: list[list[int]] = []
        full = [w[0] for w in widths]
        for r in self.ratios:
            spec = [nearest_width(w, r * w[0]) for w in widths]
            if spec != full and spec not in out:
                out.append(spec)
        return out

    def run(self, env: gym.Env, budget: Budget) -> None:
        """One ``reset`` + ``jump`` per spec of the plan until it or the budget is spent."""
        _, info = env.reset()
        if self.plan is None:
            specs = self.sweep(info["widths"])
            left = budget.left
            if left is not None and left < len(specs):
                idx = np.unique(np.round(np.linspace(0, len(specs) - 1, left)).astype(int))
                specs = [specs[i] for i in idx]
            self.plan = specs
        first = True
        while self.next_index < len(self.plan) and not budget.exhausted():
            if not first:
                env.reset()
            first = False
            spec = self.plan[self.next_index]
            self.next_index += 1
            env.jump(tuple(spec))

    def state_dict(self) -> dict[str, Any]:
        """The plan and the index of the next spec."""
        return {"plan": self.plan, "next_index": self.next_index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if state:
            self.plan = [list(s) for s in state["plan"]] if state.get("plan") is not None else None
            self.next_index = int(state.get("next_index", 0))
