"""PruningEnv: the seed's MDP (§3.1) with a fast arithmetic candidate source.

The source here is a stand-in whose latency grows with width, so the MDP logic
(actions, penalties, termination, truncation, reward) is checked in
milliseconds; ``tests/test_search_e2e.py`` runs the env on the real pipeline.
"""

from dataclasses import dataclass

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from harness.pruning import ArchSpec, PruneGroup
from harness.search.env import EnvConfig, PruningEnv
from harness.search.reward import RewardWeights

GROUPS = [PruneGroup(0, "stage1", 16, ("conv1",), "residual"), PruneGroup(1, "block1.inner", 8, ("b1",), "conv"),
          PruneGroup(2, "stage2", 32, ("s2",), "residual")]


@dataclass(frozen=True)
class Result:
    spec: ArchSpec
    top1: float
    macs: int
    latency_p50_ms: float
    ok: bool = True
    error_kind: str | None = None
    error_message: str | None = None


class Source:
    """latency = Σ channels / 10 ms; MACs = Σ channels²; top-1 loses 0.002 per removed channel."""

    def __init__(self, fail_on=None):
        self.calls = []
        self.fail_on = fail_on

    def evaluate(self, spec):
        self.calls.append(spec)
        c = np.array(spec.channels)
        if self.fail_on is not None and spec.channels[self.fail_on[0]] == self.fail_on[1]:
            return Result(spec, None, 0, None, ok=False, error_kind="build_failed", error_message="boom")
        removed = 56 - c.sum()
        return Result(spec, 0.9 - 0.002 * removed, int((c ** 2).sum()), c.sum() / 10)


def make_env(source=None, **kw):
    source = source or Source()
    base = source.evaluate(ArchSpec((16, 8, 32)))
    return PruningEnv(source, GROUPS, base, EnvConfig(**kw)), source


def test_check_env_passes():
    env, _ = make_env()
    check_env(env, skip_render_check=True)


def test_prune_step_reward_by_hand_and_spaces():
    env, _ = make_env(weights=RewardWeights(alpha=2, beta=0.5, gamma=1), target_ratio=0.5)
    obs, info = env.reset(seed=0)
    assert env.action_space.n == 4 and obs.shape == (4 * 3 + 3,) and obs.dtype == np.float32
    assert info["action_mask"].tolist() == [1, 1, 1, 1]
    obs, r, term, trunc, info = env.step(2)  # stage2: 32 − 0.25·32 = 24
    assert info["spec"].channels == (16, 8, 24)
    # ΔP = −0.002·8 = −0.016; ΔC = (16²+8²+24² − (16²+8²+32²))/(16²+8²+32²) = −448/1344; ΔH = −0.8/5.6
    expect = 2 * -0.016 - 0.5 * (-448 / 1344) - 1 * (-0.8 / 5.6)
    assert r == pytest.approx(expect)
    assert obs[4 * 2] == pytest.approx(0.75)  # keep ratio of group 2
    assert not term and not trunc


def test_never_zero_channels_impossible_action_penalised_and_masked():
    env, src = make_env(max_steps=50, target_ratio=0.01)
    env.reset(seed=0)
    widths = []
    for _ in range(6):
        _, r, *_rest, info = env.step(1)
        widths.append(info["spec"].channels[1])
    assert widths[:4] == [6, 4, 2, 1] and min(widths) == 1
    assert r == env.config.weights.failure_penalty and info["event"] == "impossible"
    assert info["action_mask"][1] == 0 and info["action_mask"][3] == 1
    assert all(min(s.channels) >= 1 for s in src.calls)


def test_round_to_keeps_widths_on_grid():
    env, _ = make_env(round_to=8, max_steps=20, target_ratio=0.01)
    env.reset(seed=0)
    seen = []
    for _ in range(4):
        *_x, info = env.step(2)
        seen.append(info["spec"].channels[2])
    assert seen[:3] == [24, 16, 8] and all(w % 8 == 0 for w in seen)


def test_terminates_at_target_ratio_and_truncates_at_step_limit():
    env, _ = make_env(target_ratio=0.9, max_steps=5)
    env.reset(seed=0)
    _, _, term, trunc, info = env.step(2)  # 4.8 / 5.6 = 0.857 ≤ 0.9
    assert term and not trunc and info["latency_ratio"] == pytest.approx(4.8 / 5.6)
    env2, _ = make_env(target_ratio=0.1, max_steps=2)
    env2.reset(seed=0)
    assert env2.step(0)[3] is False
    _, _, term, trunc, _ = env2.step(0)
    assert trunc and not term


def test_stop_terminates_with_current_reward_and_failed_candidate_reverts():
    env, _ = make_env(source=Source(fail_on=(0, 12)))
    env.reset(seed=0)
    _, r, term, _, info = env.step(0)  # 16 → 12 fails to build
    assert r == -1.0 and not term and info["event"] == "failed" and info["spec"].channels == (16, 8, 32)
    _, r1, *_ = env.step(2)
    _, r2, term, _, info = env.step(3)  # stop
    assert term and r2 == pytest.approx(r1) and info["event"] == "stop"


def test_bad_action_and_bad_config_are_clear():
    env, _ = make_env()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside"):
        env.step(9)
    with pytest.raises(ValueError, match="min_channels"):
        EnvConfig(min_channels=0)
    with pytest.raises(ValueError, match="target_ratio"):
        EnvConfig(target_ratio=1.5)


def test_info_says_target_met_and_jump_evaluates_a_whole_spec():
    env, src = make_env(target_ratio=0.9, max_steps=5)
    _, info = env.reset(seed=0)
    assert info["target_met"] is False and info["widths"][1] == (8, 6, 4, 2, 1)
    *_x, info = env.step(1)  # 5.4 / 5.6 = 0.96 > 0.9
    assert info["target_met"] is False
    env.reset(seed=0)
    n = len(src.calls)
    obs, r, term, trunc, info = env.jump((8, 4, 24))  # latency 3.6 / 5.6 = 0.64
    assert len(src.calls) == n + 1 and info["event"] == "jump" and info["spec"].channels == (8, 4, 24)
    assert term and not trunc and info["target_met"] is True and info["candidate"].spec.channels == (8, 4, 24)
    # ΔP = −0.002·20; ΔC = (8²+4²+24² − 1344)/1344; ΔH = 3.6/5.6 − 1
    assert r == pytest.approx(2 * -0.04 - 0.5 * ((64 + 16 + 576 - 1344) / 1344) - (3.6 / 5.6 - 1))
    assert obs[0] == pytest.approx(0.5) and obs[4] == pytest.approx(0.5) and obs[8] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="not one the env can reach"):
        env.jump((16, 8, 31))
