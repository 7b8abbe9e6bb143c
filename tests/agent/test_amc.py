"""TD3Method (AMC's agent) on LayerwiseEnv over the toy source (tests/agent/toy_search.py)."""

import io

import numpy as np
import pytest
import torch

from agent.amc import DecayingNormalNoise, TD3Config, TD3Method
from agent.base import Budget
from tests.agent.toy_search import (
    ChargingWrapper,
    make_layerwise_env,
    make_pruning_env,
    mean,
)

SMALL = TD3Config(learning_starts=15, batch_size=16)


def search(seed, limit, config=SMALL):
    env, src = make_layerwise_env(target_ratio=0.5)
    budget = Budget(limit)
    wrapped = ChargingWrapper(env, budget)
    method = TD3Method(config, seed=seed)
    method.run(wrapped, budget)
    return method, budget, src, wrapped


def test_stops_exactly_at_the_budget():
    method, budget, src, _ = search(0, 12)
    assert budget.spent == 12 == len(src.calls)
    assert method.model.num_timesteps == 12 * 3  # one candidate per episode of 3 groups


def test_same_seed_same_specs_other_seed_other_specs():
    a = search(5, 10)[2].calls
    assert a == search(5, 10)[2].calls
    assert a != search(6, 10)[2].calls


def test_final_reward_given_to_every_step_of_the_episode():
    method, _, _, wrapped = search(0, 8)
    buf = method.model.replay_buffer
    # 7 whole episodes (21 steps) + 2 steps of the 8th; its last step spent the budget and was not stored
    assert method.model.num_timesteps == 24 and buf.pos == 23
    rewards, dones = buf.rewards[:21, 0].reshape(-1, 3), buf.dones[:21, 0].reshape(-1, 3)
    finals = np.array(wrapped.episode_rewards[:7], dtype=np.float32)
    assert np.allclose(rewards, finals[:, None]) and (finals != 0).all()  # AMC: each step stores the episode's reward
    assert (dones == 1).all()
    assert (buf.rewards[21:23, 0] == 0).all() and (buf.dones[21:23, 0] == 0).all()  # the unfinished episode: untouched


def test_plain_td3_keeps_the_env_rewards():
    method, _, _, wrapped = search(0, 8, TD3Config(learning_starts=15, batch_size=16, final_reward_to_all=False))
    rewards = method.model.replay_buffer.rewards[:21, 0].reshape(-1, 3)
    assert (rewards[:, :2] == 0).all() and np.allclose(rewards[:, 2], wrapped.episode_rewards[:7])


def test_noise_decays_per_episode_after_warm_up():
    noise = DecayingNormalNoise(1.0, 0.5, 1, seed=0)
    noise.decay()
    noise.decay()
    assert noise.sigma == 0.25
    method, _, _, _ = search(0, 20)  # 15 warm-up steps = 5 episodes; episodes 6..19 end after learning starts
    assert method.noise.sigma == pytest.approx(0.95 ** 14)


def test_saved_policy_reloaded_acts_identically():
    method, _, _, _ = search(0, 20)
    env, _ = make_layerwise_env(target_ratio=0.5)
    obs, _ = env.reset(seed=0)
    observations = [obs]
    for k in (0.7, 0.4):
        obs, *_ = env.step(np.array([k], dtype=np.float32))
        observations.append(obs)
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    buf.seek(0)
    fresh = TD3Method(TD3Config(seed=42))
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.config == method.config and fresh.noise.sigma == method.noise.sigma
    actions = [method.predict(o) for o in observations]
    assert len({float(a[0]) for a in actions}) > 1  # a policy that depends on the observation
    for o, a in zip(observations, actions):
        assert np.array_equal(fresh.predict(o), a)
        assert 0.0 <= a[0] <= 1.0


def test_refuses_a_discrete_env():
    env, _ = make_pruning_env()
    with pytest.raises(TypeError, match="Box"):
        TD3Method().run(env, Budget(2))


def test_episode_reward_rises_on_the_toy_problem():
    """200 candidates (600 steps) with the default config: the last fifth of the episodes earns
    more than the first fifth (the warm-up's random widths)."""
    _, budget, _, wrapped = search(0, 200, TD3Config())
    rewards = wrapped.episode_rewards
    k = len(rewards) // 5
    assert budget.spent == 200
    assert mean(rewards[-k:]) > mean(rewards[:k]) + 0.5, (mean(rewards[:k]), mean(rewards[-k:]))  # −0.29 → 0.64
    assert mean(rewards[-k:]) > 0.5


def test_checkpoint_inside_the_run_changes_nothing():
    """The recorder saves ``state_dict()`` after every episode, from inside ``run``: same specs as without."""
    plain = search(2, 12)[2].calls
    env, src = make_layerwise_env(target_ratio=0.5)
    budget = Budget(12)
    method = TD3Method(SMALL, seed=2)
    saved = []

    class Checkpointing(ChargingWrapper):
        def step(self, action):
            out = super().step(action)
            if out[2] or out[3]:
                saved.append(method.state_dict())
            return out

    method.run(Checkpointing(env, budget), budget)
    assert src.calls == plain and len(saved) == 12 and all(s["model"] for s in saved)
