"""``amc-td3``: AMC's agent on ``LayerwiseEnv`` (issue 14), with SB3's TD3 in the place of DDPG.

AMC (He et al., ECCV 2018, §3.2–3.4) searches per-layer sparsities with DDPG (Lillicrap et al.
2016). TD3 (Fujimoto et al., ICML 2018, "Addressing Function Approximation Error in
Actor-Critic Methods") is DDPG's direct successor: twin critics (the minimum of two Q estimates),
delayed actor updates and target-policy smoothing, which curb DDPG's Q over-estimation. SB3's
``TD3`` with ``policy_delay=1, target_policy_noise=0`` *is* DDPG (SB3's own DDPG subclass does
exactly that), so :class:`TD3Config` can also run AMC's DDPG.

What is taken from AMC (§3.4 and its released code, ``mit-han-lab/amc``):

- Exploration: the first ``learning_starts`` steps act uniformly at random (AMC's warm-up
  episodes); afterwards Gaussian noise on the actor's action, σ = ``noise_sigma`` (AMC: 0.5 of
  the action range [0, 1]; here on SB3's [−1, 1] scale, so 1.0 is the same), decayed by
  ``noise_decay`` per episode (AMC: 0.95) once learning has started
  (:class:`DecayingNormalNoise`). AMC draws from a truncated normal; SB3 adds the noise and clips
  to the action bounds, which puts the mass beyond a bound *on* the bound instead of
  redrawing it (same support, more weight at min_keep and 1).
- Credit assignment (``final_reward_to_all=True``, AMC's code: every transition of an episode is
  stored with the episode's final reward and as terminal, so Q(s_t, a_t) regresses on the
  reward of the network the episode built, with no bootstrapping). :class:`AMCCallback` rewrites
  the episode's transitions in SB3's replay buffer at the end of each episode, before TD3 trains.
  With ``False``, plain TD3 on the env's rewards (0 until the last group).
- Training once per episode (``train_freq=(1, "episode")``), as many gradient steps as steps
  collected (AMC trains after each episode too).

Sized for small budgets (one episode = one evaluated candidate = G steps; a budget of 200 is
200 episodes): learning_starts 100 steps (~8 episodes of a ResNet-20's 12 groups; AMC's 100
warm-up episodes would spend half the budget), buffer 10,000 transitions (the whole run: nothing
is forgotten at these budgets), batch 64 (AMC's), actor and critic 64-64 MLPs (AMC: 300-300;
smaller because there are few samples), lr 1e-3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3 import TD3
from stable_baselines3.common.noise import ActionNoise

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

__all__ = ["AMCCallback", "DecayingNormalNoise", "TD3Config", "TD3Method"]


class DecayingNormalNoise(ActionNoise):
    """Gaussian action noise N(0, σ²) per action dimension from its own seeded generator, σ decayed on demand.

    Args:
        sigma: initial σ (on SB3's [−1, 1] action scale).
        decay: factor applied by :meth:`decay` (AMC: 0.95 per episode).
        dim: action dimensions.
        seed: seeds the generator.
    """

    def __init__(self, sigma: float, decay: float, dim: int, seed: int) -> None:
        super().__init__()
        self.sigma, self.decay_factor, self.dim = float(sigma), float(decay), int(dim)
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> np.ndarray:
        return self.rng.normal(0.0, self.sigma, size=self.dim).astype(np.float32)

    def decay(self) -> None:
        """σ ← decay · σ."""
        self.sigma *= self.decay_factor

    def state(self) -> dict[str, Any]:
        """σ and the generator state, as plain values."""
        return {"sigma": self.sigma, "rng": self.rng.bit_generator.state}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`'s value."""
        self.sigma = float(state["sigma"])
        self.rng.bit_generator.state = state["rng"]


class AMCCallback(BudgetCallback):
    """The budget stop plus AMC's per-episode hooks (module docstring): at the end of each episode
    (SB3's rollout end with ``train_freq=(1, "episode")``), decay the noise once learning has
    started and, with ``final_reward_to_all``, give the episode's transitions its final reward
    and mark them terminal in the replay buffer."""

    def __init__(self, budget: Budget, noise: DecayingNormalNoise, learning_starts: int, final_reward_to_all: bool) -> None:
        super().__init__(budget)
        self.noise, self.learning_starts, self.final_reward_to_all = noise, learning_starts, final_reward_to_all
        self._episode_len = 0

    def _on_step(self) -> bool:
        self._episode_len += 1
        return super()._on_step()

    def _on_rollout_end(self) -> None:
        n, self._episode_len = self._episode_len, 0
        if n == 0 or not bool(np.any(self.locals.get("dones", [False]))):
            return  # the rollout ended without an episode end (the budget stopped it)
        if self.model.num_timesteps > self.learning_starts:
            self.noise.decay()
        if self.final_reward_to_all:
            buf = self.model.replay_buffer
            idx = (buf.pos - 1 - np.arange(n)) % buf.buffer_size
            buf.rewards[idx, 0] = buf.rewards[(buf.pos - 1) % buf.buffer_size, 0]
            buf.dones[idx, 0] = 1.0
            if hasattr(buf, "timeouts"):
                buf.timeouts[idx, 0] = 0.0


@dataclass(frozen=True, slots=True)
class TD3Config:
    """TD3 hyperparameters for AMC's MDP at small budgets (module docstring says why).

    Attributes:
        seed: the search seed (network init, warm-up actions, noise).
        learning_starts: uniformly random steps before the first update (AMC's warm-up).
        buffer_size: replay buffer transitions.
        batch_size: minibatch.
        learning_rate: Adam rate of actor and critics.
        gamma: discount (irrelevant with ``final_reward_to_all``: every transition is terminal).
        tau: target-network soft update rate (AMC: 0.01).
        noise_sigma: initial exploration σ on the [−1, 1] action scale (AMC: 0.5 on [0, 1]).
        noise_decay: σ decay per episode after warm-up (AMC: 0.95).
        policy_delay, target_policy_noise: TD3's (1 and 0.0 make it DDPG).
        final_reward_to_all: AMC's credit assignment (module docstring).
        hidden: hidden widths of actor and critics.
        total_timesteps: an upper bound on env steps when the budget has no limit.
        torch_threads: torch intra-op threads during the agent's own work (None: unchanged); the env's
            steps keep the caller's count (``agent.sb3_common.agent_threads`` says why 1).

    Raises:
        ValueError: a value out of range (named).
    """

    seed: int = 0
    learning_starts: int = 100
    buffer_size: int = 10_000
    batch_size: int = 64
    learning_rate: float = 1e-3
    gamma: float = 0.99
    tau: float = 0.01
    noise_sigma: float = 1.0
    noise_decay: float = 0.95
    policy_delay: int = 2
    target_policy_noise: float = 0.2
    final_reward_to_all: bool = True
    hidden: tuple[int, ...] = (64, 64)
    total_timesteps: int = 1_000_000
    torch_threads: int | None = 1

    def __post_init__(self) -> None:
        if self.learning_starts < 0:
            raise ValueError(f"learning_starts={self.learning_starts} must be >= 0")
        if self.buffer_size < 1 or self.batch_size < 1:
            raise ValueError(f"buffer_size={self.buffer_size} and batch_size={self.batch_size} must be >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be > 0")
        if not 0 <= self.gamma <= 1 or not 0 < self.tau <= 1:
            raise ValueError(f"gamma={self.gamma} must be in [0, 1] and tau={self.tau} in (0, 1]")
        if not self.noise_sigma >= 0 or not 0 < self.noise_decay <= 1:
            raise ValueError(f"noise_sigma={self.noise_sigma} must be >= 0 and noise_decay={self.noise_decay} in (0, 1]")
        if self.policy_delay < 1:
            raise ValueError(f"policy_delay={self.policy_delay} must be >= 1")
        if self.total_timesteps < 1:
            raise ValueError(f"total_timesteps={self.total_timesteps} must be >= 1")


class TD3Method(SearchMethod):
    """Search by TD3 (AMC's DDPG successor) on a continuous env (``LayerwiseEnv``).

    Args:
        config: TD3Config (its ``seed`` is the search seed).
        seed: overrides ``config.seed`` when given.

    The SB3 model is built on the first ``run`` or by ``load_state_dict``; ``run`` again continues.
    The replay buffer is not in ``state_dict`` (a resumed run refills it; ``learning_starts`` counts
    total steps, so it does not warm up again).
    """

    name = "amc-td3"

    def __init__(self, config: TD3Config = TD3Config(), seed: int | None = None) -> None:
        self.config = config if seed is None else TD3Config(**{**_fields(config), "seed": int(seed)})
        self.model: TD3 | None = None
        self.noise: DecayingNormalNoise | None = None

    def _build(self, env: gym.Env) -> TD3:
        c = self.config
        return TD3(
            "MlpPolicy", env, learning_rate=c.learning_rate, buffer_size=c.buffer_size, learning_starts=c.learning_starts,
            batch_size=c.batch_size, tau=c.tau, gamma=c.gamma, train_freq=(1, "episode"), gradient_steps=-1,
            action_noise=self.noise, policy_delay=c.policy_delay, target_policy_noise=c.target_policy_noise,
            policy_kwargs={"net_arch": list(c.hidden)}, seed=c.seed, device="cpu", verbose=0,
        )

    def run(self, env: gym.Env, budget: Budget) -> None:
        """Learn on ``env`` until ``budget.exhausted()`` (or ``config.total_timesteps`` more steps).

        Raises:
            TypeError: ``env`` has no Box action space.
        """
        if not isinstance(env.action_space, gym.spaces.Box):
            raise TypeError(f"amc-td3 needs a continuous (Box) action space (LayerwiseEnv), got {env.action_space}")
        if budget.exhausted():
            return
        c = self.config
        if self.noise is None:
            self.noise = DecayingNormalNoise(c.noise_sigma, c.noise_decay, int(np.prod(env.action_space.shape)), c.seed)
        with agent_threads(c.torch_threads) as outer:
            wrapped = EnvThreads(env, outer)
            if self.model is None:
                self.model = self._build(wrapped)
                reset = True
            else:
                self.model.set_env(wrapped)
                self.model.action_noise = self.noise
                reset = False
            callback = AMCCallback(budget, self.noise, c.learning_starts, c.final_reward_to_all)
            self.model.learn(total_timesteps=c.total_timesteps, callback=callback, reset_num_timesteps=reset,
                             progress_bar=False)

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """The actor's action (float32 [action_dim], in the env's bounds) for one observation.

        Raises:
            RuntimeError: no policy yet.
        """
        if self.model is None:
            raise RuntimeError("amc-td3 has no policy yet: run it or load a state first")
        action, _ = self.model.predict(np.asarray(obs, dtype=np.float32), deterministic=deterministic)
        return np.asarray(action, dtype=np.float32)

    def state_dict(self) -> dict[str, Any]:
        """``{"config", "model" (SB3 zip bytes or None), "noise", "rng"}``: picklable plain values."""
        return {"config": _fields(self.config), "model": None if self.model is None else model_to_bytes(self.model),
                "noise": None if self.noise is None else self.noise.state(), "rng": rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s value (actor, critics, optimisers, timestep count, noise, RNG states)."""
        self.config = TD3Config(**{**state["config"], "hidden": tuple(state["config"]["hidden"])})
        self.model = None if state["model"] is None else model_from_bytes(TD3, state["model"])
        self.noise = None
        if state.get("noise") is not None and self.model is not None:
            dim = int(np.prod(self.model.action_space.shape))
            self.noise = DecayingNormalNoise(self.config.noise_sigma, self.config.noise_decay, dim, self.config.seed)
            self.noise.set_state(state["noise"])
        if state.get("rng") is not None:
            set_rng_state(state["rng"])


def _fields(config: Any) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}
