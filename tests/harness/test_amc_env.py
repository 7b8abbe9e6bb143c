"""LayerwiseEnv (AMC's layer-by-layer MDP) on the toy source of tests/agent/toy_search.py,
and its MACs table on a real small model."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from harness.pruning import ArchSpec, apply_spec, count_macs_params, find_groups
from harness.search.amc_env import OBS_DIM, LayerwiseConfig, LayerwiseEnv, layer_table
from harness.search.reward import RewardWeights
from tests.agent.toy_search import (
    GROUPS,
    ToyResult,
    ToySource,
    make_layerwise_env,
    make_pruning_env,
    toy_macs,
)
from tests.harness.small_net import INPUT_SHAPE, small_net

BASE_MACS = 576 * (16 + 16 * 16 + 16 * 32)  # 451,584


def act(env, *keeps):
    out = None
    for k in keeps:
        out = env.step(np.array([k], dtype=np.float32))
    return out


def test_check_env_on_both_mdps():
    for table in ("toy", None):  # None: no model, no table: the chain stand-in
        env, _ = make_layerwise_env(**({} if table == "toy" else {"table": None}))
        with pytest.warns(UserWarning, match="symmetric"):  # Box(min_keep, 1): chosen, see the module doc
            check_env(env, skip_render_check=True)
    env, _ = make_pruning_env()
    check_env(env, skip_render_check=True)


def test_one_episode_by_hand():
    env, src = make_layerwise_env(weights=RewardWeights(alpha=2, beta=0.5, gamma=1), target_ratio=0.5)
    obs, info = env.reset(seed=0)
    assert obs.shape == (OBS_DIM,) and env.action_space.shape == (1,)
    assert obs.tolist() == pytest.approx([0, 0, 0.5, 1, 0.25, 3 / 7, 16 / 784, 0, 768 / 784, 1])
    obs, r, term, trunc, info = act(env, 0.5)
    assert (r, term, trunc, info["event"], info["candidate"]) == (0.0, False, False, "layer", None)
    assert info["spec"].channels == (8, 16, 32) and src.calls == []
    # t=1: conv1 (kind conv, 16 of 32 wide); its MACs 256/784; reduced by conv0's half: (784 − 648)/784; rest: conv2
    assert obs.tolist() == pytest.approx([1 / 3, 0, 0.5, 1, 0.25, 3 / 7, 256 / 784, 136 / 784, 512 / 784, 0.5])
    obs, r, term, trunc, info = act(env, 0.5, 0.5)
    assert info["spec"].channels == (8, 8, 16) and src.calls == [ArchSpec((8, 8, 16))]
    assert term and not trunc and info["event"] == "pruned" and info["target_met"]
    macs, base_p50 = 576 * (8 + 64 + 128), 0.2 + BASE_MACS / 1e6
    assert info["candidate"].macs == macs == toy_macs((8, 8, 16))
    d_c, d_h = macs / BASE_MACS - 1, (0.2 + macs / 1e6) / base_p50 - 1
    assert r == pytest.approx(-0.5 * d_c - d_h)  # ΔP = 0: no group below half width
    assert info["reward_terms"].reward == pytest.approx(r)
    with pytest.raises(ValueError, match="reset"):
        act(env, 0.5)


def test_info_has_pruning_env_keys_but_no_mask():
    lw, _ = make_layerwise_env()
    pe, _ = make_pruning_env()
    _, lw_info = lw.reset(seed=0)
    _, pe_info = pe.reset(seed=0)
    assert set(pe_info) - {"action_mask", "widths"} <= set(lw_info)
    assert "action_mask" not in lw_info and {"candidate", "spec", "reward_terms", "target_met", "event"} <= set(lw_info)


def test_widths_rounded_to_grid_and_min_channels_clipped():
    env, _ = make_layerwise_env(round_to=8)
    env.reset(seed=0)
    *_, info = act(env, 0.3, 1.0, 0.0)  # 4.8 → 5 → grid {8, 16}: 8; 32·0.2 (min_keep) = 6.4 → 8
    assert info["spec"].channels == (8, 16, 8)
    env, _ = make_layerwise_env(min_channels=12)
    env.reset(seed=0)
    *_, info = act(env, 0.25, 0.9, 1.0)  # 4 < 12 → 12; 14.4 → 14
    assert info["spec"].channels == (12, 14, 32)


def test_constrained_action_reaches_the_macs_target():
    # target 0.3 · 784 = 235.2 units of 576 MACs; later groups at min_keep 0.25: (4, 4, 8)
    env, _ = make_layerwise_env(LayerwiseConfig(min_keep=0.25, constrain_macs=True), target_metric="macs", target_ratio=0.3)
    env.reset(seed=0)
    *_, info = act(env, 1.0, 1.0, 1.0)
    # g0 16: 16 + 16·4 + 4·8 = 112 ok; g1: 16 + 24·w ≤ 235.2 → 9; g2: 16 + 144 + 9·w ≤ 235.2 → 8
    assert info["spec"].channels == (16, 9, 8) and info["target_met"]
    assert info["macs_ratio"] == pytest.approx(232 / 784)
    free, _ = make_layerwise_env(target_metric="macs", target_ratio=0.3)  # not constrained
    free.reset(seed=0)
    *_, info = act(free, 1.0, 1.0, 1.0)
    assert info["spec"].channels == (16, 16, 32) and not info["target_met"]


class FailingSource(ToySource):
    def evaluate(self, spec):
        if spec.channels[2] == 8:
            return ToyResult(spec, None, 0, None, error_kind="build_failed", error_message="boom")
        return super().evaluate(spec)


def test_failed_candidate_gets_the_failure_penalty():
    src = FailingSource()
    base = src.evaluate(ArchSpec((16, 16, 32)))
    from harness.search.env import EnvConfig
    env = LayerwiseEnv(src, GROUPS, base, EnvConfig(weights=RewardWeights(failure_penalty=-0.7)))
    env.reset(seed=0)
    _, r, term, _, info = act(env, 1.0, 1.0, 0.25)
    assert (r, term, info["event"], info["reward_terms"], info["target_met"]) == (-0.7, True, "failed", None, False)


def test_layer_table_is_exact_on_a_real_model():
    model = small_net()
    groups = find_groups(model, INPUT_SHAPE)
    table = layer_table(model, groups, INPUT_SHAPE)
    by_name = {layer.name: layer for layer in table.layers}
    g_of = {name: g.index for g in groups for name in g.layer_names}
    assert by_name["fc"].out_group is None and by_name["fc"].in_group == g_of["stem.0"]
    assert by_name["c1"].kernel == 3 and by_name["c1"].stride == 1 and by_name["c1"].out_hw == 28 * 28
    assert len(groups) == 2  # stem + c2 (residual), c1
    for keep in [(8, 8), (3, 5), (1, 8), (6, 2)]:
        spec = ArchSpec(keep)
        true = count_macs_params(apply_spec(model, spec, INPUT_SHAPE), INPUT_SHAPE)[0]
        ratios = np.array(spec.channels) / np.array([g.channels for g in groups])
        assert table.macs(ratios) == pytest.approx(true)


class ModelSource(ToySource):
    """A source that carries its model, as ``CandidateEvaluator`` does (``base_model``, ``input_shape``)."""

    def __init__(self, model, input_shape):
        super().__init__()
        self.base_model, self.input_shape = model, input_shape


def test_table_built_from_the_sources_model():
    model = small_net()
    groups = find_groups(model, INPUT_SHAPE)
    src = ModelSource(model, INPUT_SHAPE)
    from harness.search.env import EnvConfig
    env = LayerwiseEnv(src, groups, ToyResult(None, 0.9, 1000, 1.0, latency_ratio=1.0), EnvConfig())
    obs, _ = env.reset(seed=0)
    macs = layer_table(model, groups, INPUT_SHAPE)
    total = sum(layer.macs for layer in macs.layers)
    stem_c2 = sum(layer.macs for layer in macs.layers if layer.name in ("stem.0", "c2"))
    # group 0 (stem + c2, residual, 8 wide): kind 1, width 8/8, 28·28 map, stride 1, 3x3, MACs share
    assert obs[1:7].tolist() == pytest.approx([1, 1, 1, 0.25, 3 / 7, stem_c2 / total])
    assert env.macs_full == pytest.approx(count_macs_params(model, INPUT_SHAPE)[0])


def test_restore_mid_episode_gives_the_same_observation():
    env, _ = make_layerwise_env()
    env.reset(seed=0)
    obs, *_, info = act(env, 0.5, 0.75)
    other, _ = make_layerwise_env()
    restored, rinfo = other.restore(info["spec"].channels, 2, other.baseline)
    assert np.array_equal(restored, obs) and rinfo["spec"] == info["spec"]
    _, _, term, _, info = act(other, 0.5)
    assert term and info["spec"].channels == (8, 12, 16)
    with pytest.raises(ValueError, match="restore"):
        other.restore((16, 16, 32), 3, other.baseline)
