"""The seed's per-step REINFORCE: θ ← θ + lr·∇log π(a|s)·R (seed §3.2, §4.4)."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from agent.policy import MLPPolicy
from agent.reinforce import ReinforceAgent, ReinforceConfig

OBS = gym.spaces.Box(0.0, 1.0, shape=(5,), dtype=np.float32)
ACT = gym.spaces.Discrete(4)


def test_policy_shape_matches_seed():
    p = MLPPolicy(5, 4)
    linears = [m for m in p.net if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(5, 64), (64, 64), (64, 4)]
    probs = p(torch.rand(5)).detach()
    assert probs.shape == (4,) and float(probs.sum()) == pytest.approx(1.0, abs=1e-6)


def test_positive_reward_raises_probability_of_action_negative_lowers_it():
    obs = np.full(5, 0.5, dtype=np.float32)
    for reward, sign in ((1.0, 1), (-1.0, -1)):
        agent = ReinforceAgent(OBS, ACT, ReinforceConfig(seed=3))
        before = float(agent.policy(torch.as_tensor(obs))[2])
        for _ in range(20):
            agent.update(obs, 2, reward)
        after = float(agent.policy(torch.as_tensor(obs))[2])
        assert sign * (after - before) > 0.05


def test_update_is_exactly_one_adam_step_on_minus_logprob_times_reward():
    obs = np.linspace(0, 1, 5, dtype=np.float32)
    a = ReinforceAgent(OBS, ACT, ReinforceConfig(seed=1))
    b = MLPPolicy(5, 4)
    b.load_state_dict(a.policy.state_dict())
    opt = torch.optim.Adam(b.parameters(), lr=1e-3)
    loss = -torch.log(b(torch.as_tensor(obs))[1]) * 0.7  # the seed's §4.4 line
    opt.zero_grad(); loss.backward(); opt.step()
    a.update(obs, 1, 0.7)
    for pa, pb in zip(a.policy.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-7)


def test_mask_gives_zero_probability_and_same_seed_same_actions():
    obs = np.full(5, 0.2, dtype=np.float32)
    mask = np.array([1, 0, 1, 0], dtype=np.int8)
    agent = ReinforceAgent(OBS, ACT, ReinforceConfig(seed=7))
    acts = [agent.act(obs, mask)[0] for _ in range(200)]
    assert set(acts) <= {0, 2}
    again = ReinforceAgent(OBS, ACT, ReinforceConfig(seed=7))
    assert [again.act(obs, mask)[0] for _ in range(200)] == acts


def test_non_finite_reward_refused():
    agent = ReinforceAgent(OBS, ACT)
    with pytest.raises(ValueError, match="not finite"):
        agent.update(np.zeros(5, np.float32), 0, float("nan"))


def test_episodic_discounted_returns_with_moving_average_baseline_by_hand():
    cfg = ReinforceConfig(seed=2, mode="episodic", discount=0.5, baseline="moving_average", baseline_momentum=0.9)
    a = ReinforceAgent(OBS, ACT, cfg)
    ref = MLPPolicy(5, 4)
    ref.load_state_dict(a.policy.state_dict())
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    obs = [np.full(5, v, dtype=np.float32) for v in (0.1, 0.2, 0.3)]
    acts, rews = [0, 3, 1], [1.0, 0.0, 2.0]
    for o, act, r in zip(obs, acts, rews):
        assert a.observe(o, act, r) is None  # episodic: no update yet
    a.end_episode()
    # G = [1 + 0.5·0 + 0.25·2, 0 + 0.5·2, 2] = [1.5, 1.0, 2.0]; first episode: b = 0, then b = mean G = 1.5
    returns = [1.5, 1.0, 2.0]
    loss = sum(-torch.log(ref(torch.as_tensor(o))[act]) * g for o, act, g in zip(obs, acts, returns))
    opt.zero_grad(); loss.backward(); opt.step()
    for pa, pb in zip(a.policy.parameters(), ref.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)
    assert a.baseline_value == pytest.approx(1.5)
    for o, act, r in zip(obs, acts, rews):
        a.observe(o, act, r)
    a.end_episode()
    assert a.baseline_value == pytest.approx(0.9 * 1.5 + 0.1 * 1.5)


def test_per_step_mode_updates_in_observe_and_config_is_checked():
    a = ReinforceAgent(OBS, ACT, ReinforceConfig(seed=0))
    assert a.observe(np.zeros(5, np.float32), 1, 0.5) is not None
    assert a.end_episode() is None
    with pytest.raises(ValueError, match="episodic"):
        ReinforceConfig(baseline="moving_average")
    with pytest.raises(ValueError, match="mode"):
        ReinforceConfig(mode="ppo")
