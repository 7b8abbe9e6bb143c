"""REINFORCE as the seed gives it, one readable file.

Source: seed document ``../shared/seed/`` §3.2 step 4 and §4.4::

    θ ← θ + lr · ∇θ log πθ(a_t | s_t) · R(s_t, a_t)

i.e. an update after *every* step with that step's reward (no return, no
baseline), Adam with lr 1e-3 (seed §4.4). DESIGN.md §3 keeps this as the
default. The agent knows gymnasium spaces and torch, nothing of the harness.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from agent.policy import MLPPolicy

__all__ = ["ReinforceConfig", "ReinforceAgent"]


@dataclass(frozen=True, slots=True)
class ReinforceConfig:
    """Hyperparameters of the per-step REINFORCE update (seed §4.4).

    Attributes:
        lr: Adam learning rate (seed: 1e-3).
        hidden: policy hidden widths (seed: 64, 64).
        seed: seeds the policy's initial weights and its action sampling.
    """

    lr: float = 1e-3
    hidden: tuple[int, ...] = (64, 64)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0 (the seed uses 1e-3)")


class ReinforceAgent:
    """Per-step REINFORCE over a ``Discrete`` action space and a ``Box`` observation.

    Args:
        observation_space: gymnasium Box, flat float32 [obs_dim].
        action_space: gymnasium Discrete(n).
        config: ReinforceConfig.

    Raises:
        TypeError: spaces of another kind.
    """

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, config: ReinforceConfig = ReinforceConfig()) -> None:
        if not isinstance(action_space, gym.spaces.Discrete):
            raise TypeError(f"REINFORCE here needs a Discrete action space, got {action_space}")
        if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
            raise TypeError(f"REINFORCE here needs a flat Box observation space, got {observation_space}")
        self.config = config
        torch.manual_seed(config.seed)
        self.policy = MLPPolicy(observation_space.shape[0], int(action_space.n), config.hidden)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(config.seed)

    def act(self, obs: np.ndarray, mask: np.ndarray | None = None, greedy: bool = False) -> tuple[int, float]:
        """Sample an action a ~ π(·|obs) (or the argmax when ``greedy``).

        Args:
            obs: float32 [obs_dim].
            mask: bool/int8 [n_actions], 1 = allowed, or None.

        Returns:
            (action, probability of that action).
        """
        with torch.no_grad():
            probs = self.policy(self._obs(obs), self._mask(mask))
        if greedy:
            action = int(torch.argmax(probs))
        else:
            action = int(torch.multinomial(probs, 1, generator=self.generator))
        return action, float(probs[action])

    def update(self, obs: np.ndarray, action: int, reward: float, mask: np.ndarray | None = None) -> float:
        """One seed-§3.2 step: loss = −log π(a|s)·R, one Adam step.

        Returns:
            The loss value (float).

        Raises:
            ValueError: a non-finite reward (the environment must give finite penalties).
        """
        if not np.isfinite(reward):
            raise ValueError(f"reward={reward!r} is not finite")
        dist = self.policy.distribution(self._obs(obs), self._mask(mask))
        loss = -dist.log_prob(torch.tensor(action)) * float(reward)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def state_dict(self) -> dict:
        """Policy, optimizer and sampler state, for checkpoints and resume."""
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])

    @staticmethod
    def _obs(obs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(obs, dtype=np.float32))

    @staticmethod
    def _mask(mask: np.ndarray | None) -> torch.Tensor | None:
        return None if mask is None else torch.as_tensor(np.asarray(mask).astype(bool))
