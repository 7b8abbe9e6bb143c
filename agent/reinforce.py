"""REINFORCE as the seed gives it, one readable file.

Source: seed document ``../shared/seed/`` §3.2 step 4 and §4.4::

    θ ← θ + lr · ∇θ log πθ(a_t | s_t) · R(s_t, a_t)

i.e. an update after *every* step with that step's reward (no return, no
baseline), Adam with lr 1e-3 (seed §4.4). DESIGN.md §3 keeps this as the
default (``mode="per_step"``).

Also selectable (``mode="episodic"``): the textbook REINFORCE of Williams
(1992) / Sutton & Barto (2018, §13.3–13.4): at the end of an episode, with
discounted returns G_t = Σ_{k≥t} γ^{k−t} R_k (γ = ``discount``, the seed's
objective in §3.1) and an optional moving-average baseline b (``baseline=
"moving_average"``: b ← m·b + (1−m)·mean_t G_t after each episode, m =
``baseline_momentum``; Sutton & Barto §13.4), one Adam step on

    loss = −Σ_t log πθ(a_t | s_t) · (G_t − b).

``ReinforceAgent`` is the algorithm (``act``, ``observe`` after every step,
``end_episode`` at the end of each episode; each mode does its update in one
of them); ``ReinforceMethod`` runs it as a :class:`agent.base.SearchMethod`
(the loop: reset, act on legal actions, step, observe, until the budget is
spent). Both know gymnasium spaces and torch, nothing of the harness.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from agent.base import Budget, SearchMethod
from agent.policy import MLPPolicy

__all__ = ["ReinforceAgent", "ReinforceConfig", "ReinforceMethod"]


@dataclass(frozen=True, slots=True)
class ReinforceConfig:
    """Hyperparameters of the per-step REINFORCE update (seed §4.4).

    Attributes:
        lr: Adam learning rate (seed: 1e-3).
        hidden: policy hidden widths (seed: 64, 64).
        seed: seeds the policy's initial weights and its action sampling.
        mode: ``"per_step"`` (seed §3.2, default) or ``"episodic"`` (discounted returns).
        discount: γ of the discounted return, episodic mode only.
        baseline: ``"none"`` or ``"moving_average"`` (episodic mode only).
        baseline_momentum: m of the moving average b ← m·b + (1−m)·mean G.
    """

    lr: float = 1e-3
    hidden: tuple[int, ...] = (64, 64)
    seed: int = 0
    mode: str = "per_step"
    discount: float = 0.99
    baseline: str = "none"
    baseline_momentum: float = 0.9

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0 (the seed uses 1e-3)")
        if self.mode not in ("per_step", "episodic"):
            raise ValueError(f"mode={self.mode!r} must be 'per_step' (the seed's) or 'episodic'")
        if not 0 <= self.discount <= 1:
            raise ValueError(f"discount={self.discount} must be in [0, 1]")
        if self.baseline not in ("none", "moving_average"):
            raise ValueError(f"baseline={self.baseline!r} must be 'none' or 'moving_average'")
        if self.baseline == "moving_average" and self.mode != "episodic":
            raise ValueError("baseline='moving_average' needs mode='episodic' (the seed's per-step update has none)")
        if not 0 <= self.baseline_momentum < 1:
            raise ValueError(f"baseline_momentum={self.baseline_momentum} must be in [0, 1)")


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
        self._episode: list[tuple[np.ndarray, int, float, np.ndarray | None]] = []
        self.baseline_value: float | None = None

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

    def observe(self, obs: np.ndarray, action: int, reward: float, mask: np.ndarray | None = None) -> float | None:
        """Call after every env step. Per-step mode: the seed's update now (returns the loss).
        Episodic mode: remembers the step for ``end_episode`` (returns None)."""
        if self.config.mode == "per_step":
            return self.update(obs, action, reward, mask)
        if not np.isfinite(reward):
            raise ValueError(f"reward={reward!r} is not finite")
        self._episode.append((np.asarray(obs, dtype=np.float32).copy(), int(action), float(reward),
                              None if mask is None else np.asarray(mask).copy()))
        return None

    def end_episode(self) -> float | None:
        """Call at the end of every episode. Episodic mode: one update on the discounted
        returns minus the baseline (returns the loss); per-step mode: nothing."""
        if self.config.mode == "per_step" or not self._episode:
            self._episode.clear()
            return None
        rewards = [r for _, _, r, _ in self._episode]
        returns = np.zeros(len(rewards), dtype=np.float64)
        running = 0.0
        for t in reversed(range(len(rewards))):
            running = rewards[t] + self.config.discount * running
            returns[t] = running
        b = 0.0
        if self.config.baseline == "moving_average":
            b = self.baseline_value if self.baseline_value is not None else 0.0
            mean = float(returns.mean())
            m = self.config.baseline_momentum
            self.baseline_value = mean if self.baseline_value is None else m * self.baseline_value + (1 - m) * mean
        loss = torch.zeros(())
        for (obs, action, _, mask), g in zip(self._episode, returns):
            dist = self.policy.distribution(self._obs(obs), self._mask(mask))
            loss = loss - dist.log_prob(torch.tensor(action)) * float(g - b)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self._episode.clear()
        return float(loss.detach())

    def state_dict(self) -> dict:
        """Policy, optimizer, sampler and baseline state, for checkpoints and resume."""
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),  # a uint8 tensor: loads with weights_only=True
            "baseline_value": None if self.baseline_value is None else float(self.baseline_value),
            # plain lists, not numpy arrays: checkpoints load with torch.load(weights_only=True)
            "episode": [(obs.tolist(), int(a), float(r), None if m is None else np.asarray(m).tolist())
                        for obs, a, r, m in self._episode],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.baseline_value = state.get("baseline_value")
        self._episode = [(np.asarray(obs, dtype=np.float32), int(a), float(r), None if m is None else np.asarray(m))
                         for obs, a, r, m in state.get("episode", [])]

    @staticmethod
    def _obs(obs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(obs, dtype=np.float32))

    @staticmethod
    def _mask(mask: np.ndarray | None) -> torch.Tensor | None:
        return None if mask is None else torch.as_tensor(np.asarray(mask).astype(bool))


class ReinforceMethod(SearchMethod):
    """REINFORCE as a search method: episodes of masked actions until the budget is spent.

    Args:
        seed: the search seed (policy initialisation and sampling).
        mode: ``"per_step"`` (the seed's update, method ``reinforce``) or ``"episodic"``
            (``reinforce-episodic``).
        lr, hidden, discount, baseline, baseline_momentum: :class:`ReinforceConfig`'s.

    Raises:
        ValueError: a bad hyperparameter (ReinforceConfig's message).
    """

    name = "reinforce"

    def __init__(self, seed: int = 0, mode: str = "per_step", lr: float = 1e-3, hidden: tuple[int, ...] = (64, 64),
                 discount: float = 0.99, baseline: str = "none", baseline_momentum: float = 0.9) -> None:
        self.config = ReinforceConfig(lr=lr, hidden=tuple(int(h) for h in hidden), seed=seed, mode=mode,
                                      discount=discount, baseline=baseline, baseline_momentum=baseline_momentum)
        self.name = "reinforce" if mode == "per_step" else "reinforce-episodic"
        self.agent: ReinforceAgent | None = None
        self._pending: dict | None = None

    @classmethod
    def check_options(cls, options: dict) -> None:
        """Names (SearchMethod's check) and values (ReinforceConfig's)."""
        super().check_options(options)
        if options.get("baseline") == "moving_average" and options.get("mode", "per_step") != "episodic":
            raise ValueError("baseline='moving_average' needs episodic returns: use method 'reinforce-episodic'")
        cls(**options)

    def run(self, env: gym.Env, budget: Budget) -> None:
        """Episodes until ``budget.exhausted()``: the seed's loop (§3.2) with masked sampling."""
        if self.agent is None:
            self.agent = ReinforceAgent(env.observation_space, env.action_space, self.config)
            if self._pending is not None:
                self.agent.load_state_dict(self._pending)
                self._pending = None
        agent = self.agent
        while not budget.exhausted():
            obs, info = env.reset()
            done = False
            while not done and not budget.exhausted():
                mask = info["action_mask"]
                action, _ = agent.act(obs, mask)
                next_obs, reward, terminated, truncated, info = env.step(action)
                agent.observe(obs, action, reward, mask)
                obs, done = next_obs, terminated or truncated
            agent.end_episode()

    def state_dict(self) -> dict:
        """The agent's state (policy, optimiser, sampler, baseline)."""
        if self.agent is None:
            return dict(self._pending or {})
        return self.agent.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (applied when the agent is built on the env's spaces)."""
        if not state:
            return
        if self.agent is None:
            self._pending = state
        else:
            self.agent.load_state_dict(state)
