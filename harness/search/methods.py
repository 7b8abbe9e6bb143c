"""The search methods by name (``--method``, ``SearchConfig.method``), and ``magnitude``.

:data:`METHODS` maps a name to a :class:`MethodEntry`: the :class:`agent.base.SearchMethod` class
(``"module:Class"``, imported when used, so ``ppo`` does not load Stable-Baselines3 for the others),
the env it acts in (``"module:Class"``; built as ``Env(source, groups, baseline, env_config)``), fixed
constructor parameters, and reward weights it overrides:

=====================  ==============================================  =====================================
name                   what                                            notes
=====================  ==============================================  =====================================
``reinforce``          the seed's per-step REINFORCE                   agent.reinforce:ReinforceMethod
``reinforce-episodic`` REINFORCE on discounted episode returns         mode="episodic"
``random``             uniformly random legal actions                  agent.baselines:RandomMethod
``uniform``            one keep ratio for all groups, swept            agent.baselines:UniformMethod
``magnitude``          Torch-Pruning global magnitude at MACs targets  :class:`MagnitudeMethod` (no search)
``macs-reward``        ``reinforce`` with γ = 0 (AMC's compute-only    latency still measured for every
                       reward: ΔH's value is measured, not assumed)    candidate, never rewarded
``ppo``                sb3-contrib MaskablePPO                         agent.ppo:MaskablePPOMethod
``amc-td3``            AMC's layer-by-layer MDP, TD3                   agent.amc:TD3Method in
                                                                       harness.search.amc_env:LayerwiseEnv
=====================  ==============================================  =====================================
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from agent.base import Budget, SearchMethod
from agent.baselines import nearest_width
from harness.search.reward import RewardWeights

__all__ = ["METHODS", "MagnitudeMethod", "MethodContext", "MethodEntry", "build_method", "check_method",
           "env_class", "method_reward"]

PRUNING_ENV = "harness.search.env:PruningEnv"


@dataclass(frozen=True, slots=True)
class MethodEntry:
    """One method of the registry (module doc).

    Attributes:
        name: its ``--method`` name.
        cls: ``"module:Class"`` of the SearchMethod.
        env: ``"module:Class"`` of its env.
        params: constructor parameters fixed by the name (not settable in ``[agent]``).
        reward: RewardWeights fields it overrides (``macs-reward``: ``gamma = 0``).
        about: one line for ``--help``.
    """

    name: str
    cls: str
    env: str = PRUNING_ENV
    params: dict = field(default_factory=dict)
    reward: dict = field(default_factory=dict)
    about: str = ""


METHODS: dict[str, MethodEntry] = {e.name: e for e in (
    MethodEntry("reinforce", "agent.reinforce:ReinforceMethod", params={"mode": "per_step"},
                about="the seed's per-step REINFORCE"),
    MethodEntry("reinforce-episodic", "agent.reinforce:ReinforceMethod", params={"mode": "episodic"},
                about="REINFORCE on discounted episode returns"),
    MethodEntry("random", "agent.baselines:RandomMethod", about="uniformly random legal actions"),
    MethodEntry("uniform", "agent.baselines:UniformMethod", about="one keep ratio for every group, swept"),
    MethodEntry("magnitude", "harness.search.methods:MagnitudeMethod",
                about="Torch-Pruning global magnitude pruning at MACs targets"),
    MethodEntry("macs-reward", "agent.reinforce:ReinforceMethod", params={"mode": "per_step"},
                reward={"gamma": 0.0}, about="reinforce with gamma = 0 (AMC's compute-only reward)"),
    MethodEntry("ppo", "agent.ppo:MaskablePPOMethod", about="sb3-contrib MaskablePPO"),
    MethodEntry("amc-td3", "agent.amc:TD3Method", env="harness.search.amc_env:LayerwiseEnv",
                about="AMC's layer-by-layer MDP with TD3"),
)}


@dataclass(frozen=True)
class MethodContext:
    """What a harness-side method may use besides the env (``SearchMethod.create``'s ``context``).

    Attributes:
        base_model: the trained, unpruned torch model (never modified).
        input_shape: batch-1 input shape, e.g. (1, 1, 28, 28).
        importance: group magnitude criterion (``l1`` / ``l2``).
    """

    base_model: Any
    input_shape: tuple[int, ...]
    importance: str = "l1"


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _entry(name: str) -> MethodEntry:
    if name not in METHODS:
        raise ValueError(f"method={name!r} is not a search method; valid: {', '.join(METHODS)}")
    return METHODS[name]


def _method_class(name: str) -> type[SearchMethod]:
    entry = _entry(name)
    try:
        return _load(entry.cls)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"method {name!r} is not available here ({entry.cls}: {exc})") from None


def check_method(name: str, options: dict[str, Any]) -> None:
    """Refuse an unknown method or options it does not take (one line naming them).

    Raises:
        ValueError: unknown name, a method that cannot be imported, an option fixed by the name or not taken.
    """
    entry = _entry(name)
    cls = _method_class(name)
    fixed = sorted(set(options) & set(entry.params))
    if fixed:
        raise ValueError(f"[agent] {fixed[0]} is set by the method's name ({name!r} has "
                         f"{fixed[0]}={entry.params[fixed[0]]!r}); choose the method instead")
    try:
        cls.check_options({**entry.params, **options})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"method {name!r}: {exc}") from None


def build_method(name: str, *, seed: int, options: dict[str, Any], context: MethodContext | None = None
                 ) -> SearchMethod:
    """The method ``name`` for a run: ``Class.create(seed=, options=params + [agent], context=)``."""
    entry = _entry(name)
    method = _method_class(name).create(seed=seed, options={**entry.params, **options}, context=context)
    method.name = name
    return method


def env_class(name: str) -> type[gym.Env]:
    """The env class method ``name`` acts in."""
    entry = _entry(name)
    try:
        return _load(entry.env)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"method {name!r} needs env {entry.env}, not available here: {exc}") from None


def method_reward(name: str, weights: RewardWeights) -> RewardWeights:
    """The reward weights method ``name`` runs with (``weights`` with the method's overrides)."""
    return dataclasses.replace(weights, **_entry(name).reward)


class MagnitudeMethod(SearchMethod):
    """Torch-Pruning global magnitude pruning to a few MACs targets: no search (DESIGN.md §9).

    For each MACs target t of ``macs_targets`` (default 0.9 ... 0.3 of the unpruned MACs) the widths of
    :func:`harness.pruning.global_magnitude_widths` (a bisection on MetaPruner's global ratio) are moved
    to the nearest width of each group's grid (``info["widths"]``) and the spec is put through the env
    (``jump``): accuracy and latency are measured like every candidate. Specs that coincide on the grid
    count once. A budget smaller than the distinct specs takes an evenly spaced subset of them (mildest and
    strongest included); a larger one is left unspent.

    Args:
        seed: unused (deterministic); the common constructor's.
        macs_targets: MACs ratios in (0, 1], mild to strong.
        context: the base model and its input shape (:class:`MethodContext`).
    """

    name = "magnitude"

    def __init__(self, seed: int = 0, macs_targets: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3),
                 context: MethodContext | None = None) -> None:
        self.macs_targets = tuple(float(t) for t in macs_targets)
        if not self.macs_targets or not all(0 < t <= 1 for t in self.macs_targets):
            raise ValueError(f"macs_targets={macs_targets!r} must be MACs ratios in (0, 1]")
        self.context = context
        self.plan: list[list[int]] | None = None
        self.targets_used: list[float] = []
        self.next_index = 0

    @classmethod
    def create(cls, *, seed: int, options: dict[str, Any], context: Any = None) -> MagnitudeMethod:
        """Needs ``context`` (the base model)."""
        if context is None:
            raise ValueError("method 'magnitude' needs the base model (a MethodContext)")
        return cls(seed=seed, context=context, **options)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """``macs_targets`` only."""
        extra = set(options) - {"macs_targets"}
        if extra:
            raise ValueError(f"method 'magnitude' has no option {min(extra)!r} in [agent]; valid: macs_targets")
        cls(**options)

    def run(self, env: gym.Env, budget: Budget) -> None:
        """Plan the specs (once), then one ``reset`` + ``jump`` per spec until the plan or the budget is spent."""
        from harness.pruning import global_magnitude_widths

        if budget.exhausted():
            return
        _, info = env.reset()
        if self.plan is None:
            plan, used = [], []
            full = [w[0] for w in info["widths"]]
            for t in self.macs_targets:
                spec, _ = global_magnitude_widths(self.context.base_model, self.context.input_shape, t,
                                                  importance=self.context.importance)
                rounded = [nearest_width(w, k) for w, k in zip(info["widths"], spec.channels)]
                if rounded != full and rounded not in plan:
                    plan.append(rounded)
                    used.append(t)
            left = budget.left
            if left is not None and left < len(plan):  # evenly spaced, mildest and strongest included
                keep = np.unique(np.round(np.linspace(0, len(plan) - 1, left)).astype(int))
                plan, used = [plan[i] for i in keep], [used[i] for i in keep]
            self.plan, self.targets_used = plan, used
        first = True
        while self.next_index < len(self.plan) and not budget.exhausted():
            if not first:
                env.reset()
            first = False
            spec = self.plan[self.next_index]
            self.next_index += 1
            env.jump(tuple(spec))

    def state_dict(self) -> dict[str, Any]:
        """The plan, its MACs targets and the index of the next spec."""
        return {"plan": self.plan, "targets_used": self.targets_used, "next_index": self.next_index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if state:
            self.plan = [list(s) for s in state["plan"]] if state.get("plan") is not None else None
            self.targets_used = list(state.get("targets_used") or [])
            self.next_index = int(state.get("next_index", 0))
