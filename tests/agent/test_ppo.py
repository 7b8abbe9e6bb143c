"""MaskablePPOMethod on PruningEnv over the toy source (tests/agent/toy_search.py)."""

import io

import numpy as np
import pytest
import torch

from agent.base import Budget
from agent.ppo import InfoActionMasks, MaskablePPOMethod, PPOConfig
from tests.agent.toy_search import (
    ChargingWrapper,
    make_layerwise_env,
    make_pruning_env,
    mean,
)

SMALL = PPOConfig(n_steps=16, batch_size=8, n_epochs=2)


def search(seed, limit, config=SMALL, **env_config):
    env, src = make_pruning_env(**{"max_steps": 8, "target_ratio": 0.1, **env_config})
    budget = Budget(limit)
    wrapped = ChargingWrapper(env, budget)
    method = MaskablePPOMethod(config, seed=seed)
    method.run(wrapped, budget)
    return method, budget, src, wrapped


def test_stops_exactly_at_the_budget_and_only_legal_actions():
    method, budget, src, _ = search(0, 37)
    assert budget.spent == 37 == len(src.calls)  # 37 is not a multiple of n_steps: stopped mid-rollout
    assert all(min(s.channels) >= 1 for s in src.calls)
    assert method.model.num_timesteps >= 37


def test_same_seed_same_specs_other_seed_other_specs():
    a = search(3, 40)[2].calls
    b = search(3, 40)[2].calls
    c = search(4, 40)[2].calls
    assert a == b
    assert a != c


def test_mask_comes_from_info():
    env, _ = make_pruning_env(max_steps=50, target_ratio=0.01)
    wrapped = InfoActionMasks(env)
    wrapped.reset(seed=0)
    for _ in range(4):  # group 0: 16 → 12 → 8 → 4 → 1, then impossible
        wrapped.step(0)
    assert wrapped.action_masks().tolist() == [False, True, True, True]


def test_saved_policy_reloaded_acts_identically():
    method, _, _, _ = search(0, 64)
    env, _ = make_pruning_env(max_steps=8, target_ratio=0.1)
    obs, info = env.reset(seed=1)
    observations = [(obs, info["action_mask"])]
    for a in (2, 0, 1):
        obs, _, _, _, info = env.step(a)
        observations.append((obs, info["action_mask"]))
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)  # the checkpoint's way
    buf.seek(0)
    fresh = MaskablePPOMethod(PPOConfig(seed=99))
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.config == method.config
    for o, m in observations:
        assert fresh.predict(o, m) == method.predict(o, m)
    probs_a = method.model.policy.get_distribution(method.model.policy.obs_to_tensor(observations[1][0])[0]).distribution.probs
    probs_b = fresh.model.policy.get_distribution(fresh.model.policy.obs_to_tensor(observations[1][0])[0]).distribution.probs
    assert torch.equal(probs_a, probs_b)
    # a masked action is never chosen, even deterministically
    mask = np.array([0, 0, 1, 1], dtype=np.int8)
    assert fresh.predict(observations[0][0], mask) in (2, 3)


def test_resume_continues_the_run():
    method, _, _, _ = search(0, 20)
    state = method.state_dict()
    fresh = MaskablePPOMethod()
    fresh.load_state_dict(state)
    env, _ = make_pruning_env(max_steps=8, target_ratio=0.1)
    budget2 = Budget(15)
    fresh.run(ChargingWrapper(env, budget2), budget2)
    assert budget2.spent == 15 and fresh.model.num_timesteps >= method.model.num_timesteps + 15


def test_refuses_a_continuous_env_and_bad_config():
    env, _ = make_layerwise_env()
    with pytest.raises(TypeError, match="Discrete"):
        MaskablePPOMethod().run(env, Budget(3))
    with pytest.raises(ValueError, match="batch_size"):
        PPOConfig(n_steps=16, batch_size=5)


@pytest.mark.parametrize("seed", [0, 1])
def test_episode_reward_rises_on_the_toy_problem(seed):
    """Latency falls with pruning, accuracy falls by 0.5 per group past half width: the best
    episodes prune every group to half and stop. With the default hyperparameters and 400
    candidates the mean episode reward of the last fifth of the episodes is well above that of
    the first fifth (seed 0: 0.51 → 2.81, seed 1: 0.86 → 3.07), and late candidates cross the
    cliff less often than early ones."""
    _, budget, src, wrapped = search(seed, 400, PPOConfig())
    rewards = wrapped.episode_rewards
    k = len(rewards) // 5
    first, last = mean(rewards[:k]), mean(rewards[-k:])
    assert budget.spent == 400
    assert last > first + 1.0, (first, last)

    def crossed(calls):
        return np.mean([any(w / c < 0.5 for w, c in zip(s.channels, (16, 16, 32))) for s in calls])

    assert crossed(src.calls[-80:]) < crossed(src.calls[:80])


def test_agent_threads_apart_from_the_envs():
    torch.set_num_threads(2)
    outer = torch.get_num_threads()
    seen = []

    class Spy(ChargingWrapper):
        def step(self, action):
            seen.append(torch.get_num_threads())
            return super().step(action)

    env, _ = make_pruning_env(max_steps=8, target_ratio=0.1)
    budget = Budget(20)
    MaskablePPOMethod(SMALL).run(Spy(env, budget), budget)
    assert set(seen) == {outer} and torch.get_num_threads() == outer


def test_checkpoint_inside_the_run_changes_nothing():
    """The recorder saves ``state_dict()`` after every episode, from inside ``run``: same specs as without."""
    plain = search(2, 40)[2].calls
    env, src = make_pruning_env(max_steps=8, target_ratio=0.1)
    budget = Budget(40)
    method = MaskablePPOMethod(SMALL, seed=2)
    saved = []

    class Checkpointing(ChargingWrapper):
        def step(self, action):
            out = super().step(action)
            if out[2] or out[3]:
                saved.append(method.state_dict())
            return out

    method.run(Checkpointing(env, budget), budget)
    assert src.calls == plain and len(saved) >= 5 and all(s["model"] for s in saved)
