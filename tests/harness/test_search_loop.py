"""The search loop's machinery on an arithmetic env: recorder, budget, callbacks, the baselines, resume.

The candidate source is a stand-in (latency = Σ channels / 10 ms, MACs = Σ channels², top-1 loses 0.002
per removed channel), so every method and callback is checked in milliseconds;
``tests/test_search_methods.py`` runs the methods on the real pipeline with a simulated device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pytest

from agent.base import Budget
from agent.baselines import RandomMethod, UniformMethod, nearest_width
from agent.reinforce import ReinforceMethod
from harness.pruning import ArchSpec, PruneGroup
from harness.search.config import SearchConfig, load_config_file
from harness.search.env import EnvConfig, PruningEnv
from harness.search.loop import Callback, EarlyStop, Interrupt, Recorder
from harness.search.methods import METHODS, build_method, check_method, method_reward

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
    latency_ratio: float | None = None


class Source:
    def __init__(self):
        self.calls = []

    def evaluate(self, spec):
        self.calls.append(spec.channels)
        c = np.array(spec.channels)
        return Result(spec, 0.9 - 0.002 * (56 - c.sum()), int((c ** 2).sum()), c.sum() / 10)


def make_env(**kw):
    source = Source()
    base = source.evaluate(ArchSpec((16, 8, 32)))
    source.calls.clear()
    return PruningEnv(source, GROUPS, base, EnvConfig(**{"max_steps": 4, "target_ratio": 0.5, **kw})), source


class Episodes(Callback):
    """Records the method's state at every episode boundary, with the rows stored so far (a checkpoint)."""

    def __init__(self, method, rows):
        self.method, self.rows, self.saved = method, rows, []

    def on_episode_end(self, rec):
        self.saved.append((rec.episode, rec.budget.spent, len(self.rows), self.method.state_dict()))


def run(method, budget, callbacks=(), env_kw=None, episode=0, spent=0):
    env, source = make_env(**(env_kw or {}))
    rows = []
    b = Budget(budget)
    b.spent = spent
    cbs = list(callbacks)
    rec = Recorder(env, b, store_row=rows.append, callbacks=cbs, episode=episode)
    for cb in cbs:
        if isinstance(cb, Episodes):
            cb.rows = rows
    method.run(rec, b)
    rec.finish()
    return rows, b, rec, source


@pytest.mark.parametrize("method", [ReinforceMethod(seed=0), ReinforceMethod(seed=0, mode="episodic"),
                                    RandomMethod(seed=0)])
def test_budget_is_respected_exactly_and_the_last_step_truncates(method):
    rows, budget, rec, source = run(method, 7)
    assert budget.spent == 7 == len(rows) == len(source.calls)  # one row per evaluated candidate
    assert all(r.evaluated and r.info["candidate"] is not None for r in rows)
    assert [(r.episode, r.step) for r in rows] == sorted({(r.episode, r.step) for r in rows})
    # the best is the largest (target met, reward) of the rows
    best = max(rows, key=lambda r: (r.info["target_met"], r.reward))
    assert rec.best_key == (best.info["target_met"], best.reward) and rec.best_spec == best.info["candidate"].spec
    with pytest.raises(RuntimeError, match="budget"):
        rec.step(0)


def test_random_is_reproducible_from_its_seed_and_acts_only_on_legal_actions():
    a, *_ = run(RandomMethod(seed=3), 12, env_kw={"max_steps": 8, "target_ratio": 0.1})
    b, *_ = run(RandomMethod(seed=3), 12, env_kw={"max_steps": 8, "target_ratio": 0.1})
    c, *_ = run(RandomMethod(seed=4), 12, env_kw={"max_steps": 8, "target_ratio": 0.1})
    sig = [(r.episode, r.step, r.action, r.info["spec"].channels) for r in a]
    assert sig == [(r.episode, r.step, r.action, r.info["spec"].channels) for r in b]
    assert sig != [(r.episode, r.step, r.action, r.info["spec"].channels) for r in c]
    assert all(r.info["event"] == "pruned" for r in a)  # never an impossible action: the mask is obeyed


def test_uniform_sweeps_one_keep_ratio_mild_to_strong_on_the_grid():
    env, _ = make_env()
    _, info = env.reset()
    assert info["widths"] == ((16, 12, 8, 4, 1), (8, 6, 4, 2, 1), (32, 24, 16, 8, 1))
    plan = UniformMethod().sweep(info["widths"])
    # r = 0.85: 13.6 -> 12, 6.8 -> 6, 27.2 -> 24 (0.95 and 0.90 round back to the unpruned spec: skipped)
    assert plan[0] == [12, 6, 24] and plan[-1] == [1, 1, 1] and len(plan) == len({tuple(p) for p in plan})
    assert all(all(a >= b for a, b in zip(p, q)) for p, q in zip(plan, plan[1:]))  # mild to strong
    rows, budget, *_ = run(UniformMethod(), 3)
    assert len(rows) == budget.spent == 3 and [r.info["event"] for r in rows] == ["jump"] * 3
    specs = [list(r.info["spec"].channels) for r in rows]
    assert specs[0] == plan[0] and specs[-1] == plan[-1] and specs[1] in plan  # evenly spaced, ends included
    assert [(r.episode, r.step) for r in rows] == [(0, 1), (1, 1), (2, 1)]
    again, *_ = run(UniformMethod(seed=9), 3)
    assert [list(r.info["spec"].channels) for r in again] == specs
    # a budget larger than the sweep is left unspent: a sweep has nothing more to propose
    rows, budget, *_ = run(UniformMethod(), 100)
    assert budget.spent == len(plan) == len(rows)
    assert nearest_width((16, 12, 8), 10) == 12  # a tie keeps more


@pytest.mark.parametrize("make", [lambda: RandomMethod(seed=5), lambda: ReinforceMethod(seed=5),
                                  lambda: ReinforceMethod(seed=5, mode="episodic"), lambda: UniformMethod()])
def test_resuming_at_an_episode_boundary_gives_the_same_candidates(make):
    """What --resume does: restore the method's state of a boundary, drop later rows, run the rest of the budget."""
    method = make()
    episodes = Episodes(method, [])
    full, *_ = run(method, 10, callbacks=[episodes])
    assert len(episodes.saved) >= 2
    episode, spent, n_rows, state = episodes.saved[len(episodes.saved) // 2]
    resumed = make()
    resumed.load_state_dict(state)
    tail, budget, *_ = run(resumed, 10, episode=episode + 1, spent=spent)
    key = [(r.episode, r.step, r.action, r.info["spec"].channels) for r in full]
    assert key[:n_rows] + [(r.episode, r.step, r.action, r.info["spec"].channels) for r in tail] == key
    assert budget.spent == 10 or isinstance(method, UniformMethod)


def test_early_stop_and_interrupt_are_callbacks():
    early = EarlyStop(patience=2)
    rows, budget, *_ = run(RandomMethod(seed=1), 50, callbacks=[early], env_kw={"max_steps": 8,
                                                                                    "target_ratio": 0.1})
    # the run ends at the first two evaluated candidates in a row that did not beat the best
    streaks = "".join("B" if r.new_best else "." for r in rows)
    assert streaks.endswith("..") and ".." not in streaks[:-1] and rows[0].new_best
    assert early.stopped_at == budget.spent == len(rows) < 50 and budget.stop_requested
    with pytest.raises(KeyboardInterrupt):
        run(RandomMethod(seed=0), 10, callbacks=[Interrupt(3)])


def test_a_method_that_never_evaluates_cannot_hang_the_run(monkeypatch, caplog):
    from harness.search import loop

    class Stopper(RandomMethod):
        def run(self, env, budget):
            while not budget.exhausted():
                _, info = env.reset()
                env.step(len(info["action_mask"]) - 1)  # stop, at once, forever

    monkeypatch.setattr(loop, "MAX_IDLE_STEPS", 5)
    with caplog.at_level(logging.WARNING):
        rows, budget, *_ = run(Stopper(), 10)
    assert rows == [] and budget.spent == 0 and budget.stop_requested and "evaluated no candidate" in caplog.text


def test_registry_names_and_macs_reward_is_reinforce_with_gamma_zero():
    assert {"reinforce", "reinforce-episodic", "random", "uniform", "magnitude", "macs-reward", "ppo",
            "amc-td3"} <= set(METHODS)
    weights = SearchConfig().reward
    assert method_reward("macs-reward", weights).gamma == 0.0 and method_reward("reinforce", weights) == weights
    m = build_method("macs-reward", seed=1, options={})
    assert isinstance(m, ReinforceMethod) and m.config.mode == "per_step" and m.name == "macs-reward"
    assert build_method("reinforce-episodic", seed=1, options={"discount": 0.5}).config.discount == 0.5
    with pytest.raises(ValueError, match="set by the method's name"):
        check_method("reinforce", {"mode": "episodic"})
    with pytest.raises(ValueError, match="no option 'lr'"):
        check_method("random", {"lr": 0.1})
    with pytest.raises(ValueError, match="not a search method"):
        check_method("annealing", {})


def test_config_nests_env_reward_agent_and_flat_keys_say_where_they_went(tmp_path, caplog):
    path = tmp_path / "s.toml"
    path.write_text('method = "reinforce-episodic"\nbudget = 40\nbase_seed = 2\n[env]\nmax_steps = 6\n'
                    'target_ratio = 0.7\ntarget_metric = "macs"\n[reward]\ngamma = 0.5\n[agent]\ndiscount = 0.9\n')
    cfg = SearchConfig.from_dict(load_config_file(path))
    assert (cfg.method, cfg.budget, cfg.base_seed, cfg.seed) == ("reinforce-episodic", 40, 2, 0)
    assert (cfg.env.max_steps, cfg.env.target_ratio, cfg.env.target_metric, cfg.env.round_to) == (6, 0.7, "macs", 8)
    assert cfg.reward.gamma == 0.5 and cfg.env.weights == cfg.reward and cfg.agent == {"discount": 0.9}
    assert SearchConfig.from_dict(cfg.to_dict()) == cfg  # config.json round-trips
    assert SearchConfig(episodes=5).budget_limit == 5 * 4 and cfg.budget_limit == 40
    old = tmp_path / "old.toml"
    old.write_text("max-steps = 3\nlatency_target = 0.6\nalpha = 3.0\nreinforce = 'episodic'\n")
    with caplog.at_level(logging.WARNING):
        cfg = SearchConfig.from_dict(load_config_file(old), source=str(old))
    assert (cfg.env.max_steps, cfg.env.target_ratio, cfg.reward.alpha, cfg.method) == (3, 0.6, 3.0,
                                                                                       "reinforce-episodic")
    assert "'latency_target' is deprecated at the top level; write it as [env] target_ratio" in caplog.text
    bad = tmp_path / "bad.toml"
    bad.write_text("[env]\nmax_stepz = 3\n")
    with pytest.raises(ValueError, match=r"unknown option 'max_stepz' in \[env\]"):
        load_config_file(bad)
    with pytest.raises(ValueError, match="budget must be an integer >= 1"):
        SearchConfig(budget=0)


def test_the_recorder_passes_the_mask_from_info_and_the_env_passes_check_env():
    from gymnasium.utils.env_checker import check_env

    env, _ = make_env()
    check_env(env, skip_render_check=True)
    rec = Recorder(env, Budget(5), store_row=lambda s: None)
    _, info = rec.reset()
    assert rec.action_masks().tolist() == info["action_mask"].tolist() == [1, 1, 1, 1]
    for _ in range(4):
        *_x, info = rec.step(1)  # 8 -> 6 -> 4 -> 2 -> 1: then group 1 is at its minimum
    assert rec.action_masks().tolist() == [1, 0, 1, 1]


def test_a_method_with_a_config_dataclass_takes_agent_options_as_its_fields():
    """PPO and TD3 take ``config=`` (a frozen dataclass): the [agent] table fills its fields."""
    from dataclasses import dataclass as dc

    from agent.base import SearchMethod

    @dc(frozen=True)
    class Cfg:
        lr: float = 3e-4
        n_steps: int = 16

        def __post_init__(self):
            if self.n_steps < 2:
                raise ValueError(f"n_steps={self.n_steps} must be >= 2")

    class WithConfig(SearchMethod):
        name = "with-config"

        def __init__(self, config: Cfg = Cfg(), seed: int | None = None):
            self.config, self.seed = config, seed

        def run(self, env, budget):
            pass

    m = WithConfig.create(seed=4, options={"n_steps": 32})
    assert m.config == Cfg(lr=3e-4, n_steps=32) and m.seed == 4
    WithConfig.check_options({"lr": 1e-3})
    with pytest.raises(ValueError, match="no option 'gamma'.*valid: lr, n_steps"):
        WithConfig.check_options({"gamma": 0.9})
    with pytest.raises(ValueError, match="n_steps=1"):
        WithConfig.check_options({"n_steps": 1})
