"""``ppo``: sb3-contrib's MaskablePPO on ``PruningEnv`` (issue 14; the seed's §7.1 asks for PPO).

Algorithm: PPO (Schulman et al. 2017, clipped surrogate, GAE of Schulman et al. 2016) with
invalid-action masking (Huang & Ontañón 2022, "A Closer Look at Invalid Action Masking in
Policy Gradient Algorithms"): masked logits get −inf, so the policy never picks an impossible
prune and never pays the env's penalty for one. The mask comes from ``info["action_mask"]``
(agent/base.py contract), held by :class:`InfoActionMasks` which gives MaskablePPO its
``action_masks()``; nothing else of the env is read.

Hyperparameters for small budgets (:class:`PPOConfig`). A search evaluates tens to hundreds of
candidates and nearly every step evaluates one, so the whole run is a few hundred env steps.
SB3's defaults (n_steps 2048, batch 64, 10 epochs, lr 3e-4) would not finish one rollout. Here
n_steps = 32 gives an update every ~32 candidates (6 updates at a budget of 200); with so few
updates each rollout is used hard: minibatches of 8 (4 per epoch), 8 epochs (32 gradient steps
per rollout; PPO's clip range bounds the drift), lr 3e-3. Policy and value nets are 64-64 MLPs
(the seed's §4.3 policy size), entropy bonus 0.01 so the early policy keeps trying every group.
Chosen on the toy problem of ``tests/agent/toy_search.py`` (latency falls with pruning, top-1
falls by 0.5 per group past half width; 400 candidates, seeds 0–3; mean episode reward of the
first → last fifth of the episodes): these values 0.51→2.81, 0.86→3.07, 0.74→2.39, 0.73→2.22
(1 agent thread; the rows below ran with 2, which moves the figures by float rounding only);
n_steps 16 / batch 8 / 4 epochs / lr 1e-3: 0.78→1.95, 0.87→0.94, 0.74→1.66, 0.79→1.27;
n_steps 32 / batch 8 / 8 epochs / lr 1e-3: 0.50→1.72, 0.71→2.26, 0.62→1.49, 0.99→1.20.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from sb3_contrib import MaskablePPO

from agent.base import Budget, SearchMethod
from agent.sb3_common import (
    BudgetCallback,
    EnvThreads,
    agent_threads,
    model_from_bytes,
    model_to_bytes,
    rng_state,
    set_rng_state,
)

__all__ = ["InfoActionMasks", "MaskablePPOMethod", "PPOConfig"]


class InfoActionMasks(gym.Wrapper):
    """Keeps the last ``info["action_mask"]`` and answers MaskablePPO's ``action_masks()`` with it.

    A step or reset without a mask allows every action. Returns bool ``[n_actions]``.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._mask = self._all()

    def _all(self) -> np.ndarray:
        return np.ones(int(self.env.action_space.n), dtype=bool)

    def _keep(self, info: dict) -> None:
        mask = info.get("action_mask")
        self._mask = self._all() if mask is None else np.asarray(mask).astype(bool)

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        self._keep(info)
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._keep(info)
        return obs, reward, terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        """bool [n_actions]: 1 = legal, from the last ``info``."""
        return self._mask


@dataclass(frozen=True, slots=True)
class PPOConfig:
    """MaskablePPO hyperparameters sized for small budgets (module docstring says why).

    Attributes:
        seed: the search seed (policy init, action sampling, minibatch order).
        n_steps: env steps per rollout (≈ candidates per update).
        batch_size: minibatch size; must divide n_steps.
        n_epochs: passes over each rollout.
        learning_rate: Adam rate.
        gamma: discount.
        gae_lambda: GAE λ.
        clip_range: PPO's ε.
        ent_coef: entropy bonus.
        hidden: hidden widths of the policy and of the value net.
        total_timesteps: an upper bound on env steps when the budget has no limit.
        torch_threads: torch intra-op threads during the agent's own work (None: unchanged); the env's
            steps keep the caller's count (``agent.sb3_common.agent_threads`` says why 1).

    Raises:
        ValueError: a value out of range (named).
    """

    seed: int = 0
    n_steps: int = 32
    batch_size: int = 8
    n_epochs: int = 8
    learning_rate: float = 3e-3
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.01
    hidden: tuple[int, ...] = (64, 64)
    total_timesteps: int = 100_000
    torch_threads: int | None = 1

    def __post_init__(self) -> None:
        if self.n_steps < 2:
            raise ValueError(f"n_steps={self.n_steps} must be >= 2")
        if self.batch_size < 2 or self.n_steps % self.batch_size:
            raise ValueError(f"batch_size={self.batch_size} must be >= 2 and divide n_steps={self.n_steps}")
        if self.n_epochs < 1:
            raise ValueError(f"n_epochs={self.n_epochs} must be >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be > 0")
        if not 0 <= self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"gamma={self.gamma} and gae_lambda={self.gae_lambda} must be in [0, 1]")
        if self.total_timesteps < 1:
            raise ValueError(f"total_timesteps={self.total_timesteps} must be >= 1")


class MaskablePPOMethod(SearchMethod):
    """Search by MaskablePPO on a discrete env with ``info["action_mask"]``.

    Args:
        config: PPOConfig (its ``seed`` is the search seed).
        seed: overrides ``config.seed`` when given (the loop passes the search seed this way).

    The SB3 model is built on the first ``run`` (it needs the env's spaces) or by
    ``load_state_dict``; ``run`` again continues learning from where it stopped.
    """

    name = "ppo"

    def __init__(self, config: PPOConfig = PPOConfig(), seed: int | None = None) -> None:
        self.config = config if seed is None else PPOConfig(**{**_fields(config), "seed": int(seed)})
        self.model: MaskablePPO | None = None

    def _build(self, env: gym.Env) -> MaskablePPO:
        c = self.config
        return MaskablePPO(
            "MlpPolicy", env, learning_rate=c.learning_rate, n_steps=c.n_steps, batch_size=c.batch_size,
            n_epochs=c.n_epochs, gamma=c.gamma, gae_lambda=c.gae_lambda, clip_range=c.clip_range,
            ent_coef=c.ent_coef, policy_kwargs={"net_arch": list(c.hidden)}, seed=c.seed, device="cpu", verbose=0,
        )

    def run(self, env: gym.Env, budget: Budget) -> None:
        """Learn on ``env`` until ``budget.exhausted()`` (or ``config.total_timesteps`` more steps).

        Raises:
            TypeError: ``env`` has no Discrete action space.
        """
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise TypeError(f"ppo needs a Discrete action space (PruningEnv), got {env.action_space}")
        if budget.exhausted():
            return
        with agent_threads(self.config.torch_threads) as outer:
            wrapped = InfoActionMasks(EnvThreads(env, outer))
            if self.model is None:
                self.model = self._build(wrapped)
                reset = True
            else:
                self.model.set_env(wrapped)
                reset = False
            self.model.learn(total_timesteps=self.config.total_timesteps, callback=BudgetCallback(budget),
                             reset_num_timesteps=reset, progress_bar=False)

    def predict(self, obs: np.ndarray, action_mask: np.ndarray | None = None, deterministic: bool = True) -> int:
        """The policy's action for one observation (float32 [obs_dim]); ``action_mask`` bool/int8 [n_actions].

        Raises:
            RuntimeError: no policy yet (neither ``run`` nor ``load_state_dict``).
        """
        if self.model is None:
            raise RuntimeError("ppo has no policy yet: run it or load a state first")
        mask = None if action_mask is None else np.asarray(action_mask).astype(bool)
        action, _ = self.model.predict(np.asarray(obs, dtype=np.float32), deterministic=deterministic, action_masks=mask)
        return int(action)

    def state_dict(self) -> dict[str, Any]:
        """``{"config", "model" (SB3 zip bytes or None), "rng"}``: picklable, loads with ``weights_only=True``."""
        return {"config": _fields(self.config), "model": None if self.model is None else model_to_bytes(self.model),
                "rng": rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s value (policy, optimiser, timestep count, global RNG states)."""
        self.config = PPOConfig(**{**state["config"], "hidden": tuple(state["config"]["hidden"])})
        self.model = None if state["model"] is None else model_from_bytes(MaskablePPO, state["model"])
        if state.get("rng") is not None:
            set_rng_state(state["rng"])


def _fields(config: Any) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}
