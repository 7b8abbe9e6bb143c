"""What the Stable-Baselines3 methods share (``agent.ppo``, ``agent.amc``): the budget callback and
the byte round-trip of a model (SB3's own ``save`` / ``load`` on an in-memory zip).

Kept apart so each algorithm's file holds only its hyperparameters and update-specific hooks
(STYLE.md, "From Stable-Baselines3").
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from agent.base import Budget

__all__ = [
    "BudgetCallback",
    "EnvThreads",
    "agent_threads",
    "model_from_bytes",
    "model_to_bytes",
    "rng_state",
    "set_rng_state",
]


class BudgetCallback(BaseCallback):
    """Stops ``learn`` as soon as ``budget.exhausted()`` (checked after every env step, agent/base.py).

    SB3 calls ``_on_step`` right after ``env.step``, before the transition is stored or a
    gradient step is taken, so the run ends on the step that spent the last candidate.
    """

    def __init__(self, budget: Budget) -> None:
        super().__init__(verbose=0)
        self.budget = budget

    def _on_step(self) -> bool:
        return not self.budget.exhausted()


def model_to_bytes(model: BaseAlgorithm) -> bytes:
    """The model's SB3 zip (policy and optimiser weights, hyperparameters, timestep count) as bytes.

    The replay buffer is not part of it (SB3 saves it apart; a resumed off-policy run refills it).
    """
    buf = io.BytesIO()
    model.save(buf)
    return buf.getvalue()


def model_from_bytes(cls: type[BaseAlgorithm], data: bytes, **kwargs: Any) -> BaseAlgorithm:
    """Load a model saved by :func:`model_to_bytes` (``cls.load``; no env attached until ``set_env``)."""
    return cls.load(io.BytesIO(data), device="cpu", **kwargs)


def rng_state() -> dict[str, Any]:
    """The global torch and numpy RNG states SB3 samples from, as values ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s value."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


@contextmanager
def agent_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)`` (None: unchanged); yields the count outside it.

    Why: the agents' updates are tiny MLPs (64-64, minibatches of 8-64) that gain nothing from
    intra-op threads, and on a loaded host the threads' contention is ruinous. Measured here
    (2 cores, load average 9.5 from other jobs, toy source): PPO 200 steps 3.2 s with 1 thread vs
    13.8 s with 2; TD3 100 episodes 0.8 s vs 68.3 s. Pair it with :class:`EnvThreads` so the env's
    own torch work (pruning, validation top-1) keeps the outer count.
    """
    outer = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield outer
    finally:
        torch.set_num_threads(outer)


class EnvThreads(gym.Wrapper):
    """Gives ``reset``/``step`` of the wrapped env the torch thread count ``threads`` (the count
    outside :func:`agent_threads`), and restores the agent's count after them."""

    def __init__(self, env: gym.Env, threads: int) -> None:
        super().__init__(env)
        self.threads = int(threads)

    @contextmanager
    def _outer(self) -> Iterator[None]:
        inner = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(inner)

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        with self._outer():
            return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        with self._outer():
            return self.env.step(action)
