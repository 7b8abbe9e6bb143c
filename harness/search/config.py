"""``SearchConfig``: every option of a search, and its TOML file.

The config nests the parts it hands on instead of repeating their fields (issue 14):
``env`` is the MDP's :class:`~harness.search.env.EnvConfig` (step fraction, grid, step limit,
target), ``reward`` the :class:`~harness.search.reward.RewardWeights` (α, β, γ), and ``agent``
the chosen method's own options (a plain table: ``lr``, ``discount``, ``baseline`` for REINFORCE;
whatever the PPO or TD3 method takes). A TOML file writes them as tables::

    method = "reinforce-episodic"
    seed = 1
    budget = 200

    [env]
    max_steps = 6
    target_ratio = 0.7
    target_metric = "latency"

    [reward]
    gamma = 0.0

    [agent]
    discount = 0.9

(or all of it under ``[search]``, with ``[search.env]`` ...). The CLI's flat flags map into the
tables (:data:`FLAT_KEYS`: ``--max-steps`` is ``env.max_steps``, ``--alpha`` is ``reward.alpha``,
``--discount`` is ``agent.discount``). A flat key in a file or an older run's ``config.json`` is
accepted with a deprecation note naming its table (``latency_target`` is now ``env.target_ratio``,
``reinforce = "episodic"`` is ``method = "reinforce-episodic"``).

Two seeds: ``base_seed`` fixes the base model (the data splits, the baseline's training, the
fine-tuning of the best): one base model for every method and search seed; ``seed`` is the
search's (policy initialisation, sampling, the interleaving order of measurements).
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.search.env import EnvConfig
from harness.search.latency_mode import DEFAULT_CONFIRM_TOP_K, check_latency_option
from harness.search.reward import RewardWeights

__all__ = ["DEFAULT_BUDGET", "DRIFT_TOLERANCE", "FLAT_KEYS", "SearchConfig", "load_config_file", "merge_options", "nest_flat"]

log = logging.getLogger(__name__)

#: Relative change of the unpruned model's absolute p50 since it was cached beyond which a run says the
#: machine changed (load, firmware, clock): 10 %, the CoV threshold of an unstable measurement (pyperf's
#: rule, devices/stats.py). Reported only: the reward ranks on ratios measured side by side.
DRIFT_TOLERANCE = 0.10

#: Evaluated candidates of the embedded default search (neither ``budget`` nor ``episodes`` given): the
#: budget at which the default method's episode reward rises, within 30 min on a grid-warmed tuning database
#: on this 2-core host (issue 14; the curve and the figures are in benchmarks/search_quality.py's note).
DEFAULT_BUDGET = 300

#: The sections a config nests.
SECTIONS = ("env", "reward", "agent")

#: Flat option names (CLI flags, pre-issue-14 files) -> (section, field).
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "max_steps": ("env", "max_steps"),
    "step_fraction": ("env", "step_fraction"),
    "round_to": ("env", "round_to"),
    "min_channels": ("env", "min_channels"),
    "target_ratio": ("env", "target_ratio"),
    "latency_target": ("env", "target_ratio"),  # its old name: it also held a MACs target
    "target_metric": ("env", "target_metric"),
    "alpha": ("reward", "alpha"),
    "beta": ("reward", "beta"),
    "gamma": ("reward", "gamma"),
    "failure_penalty": ("reward", "failure_penalty"),
    "lr": ("agent", "lr"),
    "discount": ("agent", "discount"),
    "baseline": ("agent", "baseline"),
}

#: Defaults of the env table that differ from EnvConfig's own: 4 steps, widths on multiples of 8
#: (a finite set of tuning tasks that ``hilprune tune --grid 8`` warms once per target).
_ENV_DEFAULTS = dict(max_steps=4, round_to=8)


def _default_env() -> EnvConfig:
    return EnvConfig(**_ENV_DEFAULTS)


def nest_flat(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Move flat keys (:data:`FLAT_KEYS`, ``reinforce``) into their tables.

    Keys may use ``-`` or ``_``. Returns (nested values, the flat keys that were moved).
    """
    out: dict[str, Any] = {}
    moved: list[str] = []
    for key, value in values.items():
        k = key.replace("-", "_")
        if k in FLAT_KEYS:
            section, name = FLAT_KEYS[k]
            out.setdefault(section, {})[name] = value
            moved.append(k)
        elif k == "reinforce":  # the REINFORCE variant was an option; it is a method now
            modes = {"per_step": "reinforce", "episodic": "reinforce-episodic"}
            if value not in modes:
                raise ValueError(f"reinforce={value!r} must be 'per_step' or 'episodic' (now: method = "
                                 f"'reinforce' or 'reinforce-episodic')")
            out["method"] = modes[value]
            moved.append(k)
        elif k in SECTIONS and isinstance(value, dict):
            out.setdefault(k, {}).update({n.replace("-", "_"): v for n, v in value.items()})
        else:
            out[k] = value
    return out, moved


def merge_options(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; the section tables are merged key by key (a flag beats the file)."""
    out = dict(base)
    for k, v in over.items():
        if k in SECTIONS and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


@dataclass(frozen=True, slots=True)
class SearchConfig:
    """Every option of a search (module doc); a TOML file and the CLI flags map onto it.

    Attributes:
        model: zoo model name.
        dataset: dataset name (``fashion-mnist``).
        data_root: dataset directory override.
        subset: cap on each data split (tests; None = full data).
        base_seed: seeds the base model: data splits, the baseline's training (cached by model,
            dataset, base seed, epochs) and the fine-tuning of the best. One base model for all
            methods and search seeds.
        train_epochs: epochs of the baseline.
        device: ``local``, ``sim:PROFILE``, ``ssh:BOARD`` or ``farm:TAG``.
        target: target preset or TVM JSON target.
        backend: ``tvm`` (the compiled artifact) or ``onnxruntime`` (the ONNX file, labelled).
        inventory: farm inventory TOML (needed by ``ssh:`` and ``farm:`` devices).
        fallback: ``farm:`` only — ``fail`` or ``sim`` when no healthy board is left
            (None = the inventory's ``[farm] fallback``).
        tune_trials: MetaSchedule trials per task (0 = untuned, labelled so).
        repeat: timed blocks per absolute measurement (the unpruned model's).
        ratio_width: a candidate's latency ratio against the unpruned model is timed interleaved until
            its bootstrap interval is narrower than ± this fraction of the ratio (0.01 = ±1 %) ...
        max_pairs: ... or at this many interleaved pairs (the cap; ``devices.interleaved``).
        cache_drift_tolerance: the run reports (``latency_cache_drift``) when the unpruned model's fresh
            absolute p50 is off its cached one by more than this fraction; cached ratios serve either way.
        method: the search method (``harness.search.methods.METHODS``: ``ppo`` (default: the method whose
            episode reward rose within the default budget here; the seed's REINFORCE did not, issue 14),
            ``reinforce`` (the seed's), ``reinforce-episodic``, ``random``, ``uniform``, ``magnitude``,
            ``macs-reward``, ``amc-td3``).
        seed: the search's seed: policy initialisation, sampling, interleaving order. ``run_id`` holds it.
        budget: evaluated candidates the run may spend (each env step that evaluated an architecture,
            cache hits and failures included; ``stop`` and impossible actions are free); None =
            ``episodes`` × ``env.max_steps`` when ``episodes`` is set, else :data:`DEFAULT_BUDGET`.
        episodes: sizes the budget as episodes × ``env.max_steps`` (None = :data:`DEFAULT_BUDGET`).
        early_stop: end the run after this many evaluated candidates without a better best (None = never).
        env: the MDP (EnvConfig; its ``weights`` are always ``reward``).
        reward: R = αΔP − βΔC − γΔH weights (RewardWeights).
        agent: the method's own options (a plain table, checked by the method).
        importance: group magnitude criterion (``l1``).
        eval_samples: validation images per candidate (0 = the whole validation split).
        finetune_epochs: epochs of fine-tuning for the best candidate (0 = none).
        out: run directories go to ``out/RUN_ID``.
        db: results store path.
        cache_dir: baselines, artifacts, tuning databases (None = default_cache_dir()).
        latency: where candidates' latency ratios come from (:mod:`harness.search.latency_mode`):
            ``measured`` (each compiled and timed interleaved), ``predicted`` (the board's latency table
            only; the final best is still measured) or ``hybrid`` (predicted; measured when it would enter
            the Pareto front or the top ``confirm_top_k`` rewards). None: ``hybrid`` when the target's
            tuning database covers every task of the unpruned model, else ``measured``. Simulator devices
            are ``simulated`` (``predicted``/``hybrid`` refused).
        confirm_top_k: k of the hybrid rule's top-k by reward (0 = the front alone).
    """

    model: str = "resnet20"
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    subset: int | None = None
    base_seed: int = 0
    train_epochs: int = 3
    device: str = "local"
    target: str = "host"
    backend: str = "tvm"
    inventory: str | None = None
    fallback: str | None = None
    tune_trials: int = 8
    repeat: int = 30
    ratio_width: float = 0.01
    max_pairs: int = 64
    cache_drift_tolerance: float = DRIFT_TOLERANCE
    method: str = "ppo"
    seed: int = 0
    budget: int | None = None
    episodes: int | None = None
    early_stop: int | None = None
    env: EnvConfig = field(default_factory=_default_env)
    reward: RewardWeights = field(default_factory=RewardWeights)
    agent: dict = field(default_factory=dict)
    importance: str = "l1"
    eval_samples: int = 2000
    finetune_epochs: int = 1
    out: str = "results/runs"
    db: str = "results/hilprune.db"
    cache_dir: str | None = None
    latency: str | None = None
    confirm_top_k: int = DEFAULT_CONFIRM_TOP_K

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # a TOML value of the wrong type names its option (not a TypeError)
            value = getattr(self, f.name)
            if f.type in ("str", "str | None") and not (isinstance(value, str) or (value is None and "None" in f.type)):
                raise ValueError(f"option {f.name!r} must be a string, got {type(value).__name__} {value!r}")
            if f.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"option {f.name!r} must be a number, got {type(value).__name__} {value!r}")
        if isinstance(self.env, dict):
            object.__setattr__(self, "env", _section(EnvConfig, "env", self.env, _ENV_DEFAULTS))
        if isinstance(self.reward, dict):
            object.__setattr__(self, "reward", _section(RewardWeights, "reward", self.reward, {}))
        if not isinstance(self.env, EnvConfig) or not isinstance(self.reward, RewardWeights):
            raise ValueError("options 'env' and 'reward' must be tables ([env], [reward])")
        if not isinstance(self.agent, dict):
            raise ValueError(f"option 'agent' must be a table ([agent]), got {type(self.agent).__name__}")
        object.__setattr__(self, "env", dataclasses.replace(self.env, weights=self.reward))  # one source: [reward]
        from harness.pruning import IMPORTANCES

        if self.importance not in IMPORTANCES:
            raise ValueError(f"importance={self.importance!r} must be one of {', '.join(IMPORTANCES)}")
        for name in ("tune_trials", "train_epochs", "finetune_epochs", "eval_samples", "repeat", "seed",
                     "base_seed", "confirm_top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("budget", "early_stop", "subset", "episodes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 (or unset), got {value!r}")
        if self.repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {self.repeat}")
        if not (isinstance(self.ratio_width, (int, float)) and 0 < self.ratio_width < 1):
            raise ValueError(f"ratio_width must be a fraction in (0, 1), e.g. 0.01 for ±1 %, got {self.ratio_width!r}")
        if not isinstance(self.max_pairs, int) or isinstance(self.max_pairs, bool) or self.max_pairs < 8:
            raise ValueError(f"max_pairs must be an integer >= 8, got {self.max_pairs!r}")
        if not self.cache_drift_tolerance > 0:
            raise ValueError(f"cache_drift_tolerance must be > 0 (e.g. 0.1, or inf), got {self.cache_drift_tolerance}")
        if self.fallback not in (None, "fail", "sim"):
            raise ValueError(f"fallback={self.fallback!r} must be 'fail' or 'sim'")
        if self.backend not in ("tvm", "onnxruntime"):
            raise ValueError(f"backend={self.backend!r} must be 'tvm' or 'onnxruntime'")
        check_latency_option(self.latency, device=self.device, backend=self.backend, tune_trials=self.tune_trials)
        from harness.search.methods import check_method

        check_method(self.method, self.agent)

    @property
    def budget_limit(self) -> int:
        """Evaluated candidates this run may spend: ``budget``, else ``episodes`` × ``env.max_steps``, else
        :data:`DEFAULT_BUDGET`."""
        if self.budget is not None:
            return self.budget
        return self.episodes * self.env.max_steps if self.episodes is not None else DEFAULT_BUDGET

    def to_dict(self) -> dict[str, Any]:
        """Plain values (``config.json``), nested like the TOML file; :meth:`from_dict` reads it back."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in SECTIONS}
        env = dataclasses.asdict(self.env)
        env.pop("weights")
        return {**out, "env": env, "reward": dataclasses.asdict(self.reward), "agent": dict(self.agent)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> SearchConfig:
        """Build from a dict (a TOML file, a saved ``config.json``); unknown keys are an error.

        Keys may use ``-`` or ``_`` (``tune-trials`` = ``tune_trials``). Flat keys of the tables
        (``max_steps``, ``alpha``, ``latency_target``, ``reinforce`` ...) are accepted with a
        deprecation note naming where they live now.

        Raises:
            ValueError: an unknown key (listing the valid ones) or a bad value, naming ``source``.
        """
        try:
            nested, moved = nest_flat(values)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        for k in moved:
            where = ("method" if k == "reinforce" else
                     "[{}] {}".format(*FLAT_KEYS[k]))
            log.warning("%s: option %r is deprecated at the top level; write it as %s", source, k, where)
        names = {f.name for f in dataclasses.fields(cls)}
        for key in nested:
            if key not in names:
                flat = sorted(n for n in names if n not in SECTIONS)
                raise ValueError(f"{source}: unknown search option {key!r}; valid options: {', '.join(flat)}, "
                                 f"and the tables [env], [reward], [agent]")
        try:
            return cls(**nested)
        except (TypeError, ValueError) as exc:  # a bad value names the file it came from, too
            raise ValueError(f"{source}: {exc}") from None


def _section(kind: type, name: str, values: dict[str, Any], defaults: dict[str, Any]):
    """A value object of a table, with its keys checked by name."""
    fields = {f.name for f in dataclasses.fields(kind)} - {"weights"}
    clean = {k.replace("-", "_"): v for k, v in values.items()}
    for key in clean:
        if key not in fields:
            raise ValueError(f"unknown option {key!r} in [{name}]; valid: {', '.join(sorted(fields))}")
    return kind(**{**defaults, **clean})


def load_config_file(path: Path | str) -> dict[str, Any]:
    """Read a TOML search config: top-level keys (or a ``[search]`` table) with ``[env]``, ``[reward]``,
    ``[agent]`` tables, named like the fields (module doc).

    Returns:
        The values, nested (flat table keys moved into their tables, with a deprecation note).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid TOML (with the line), unknown keys or bad values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist; pass an existing TOML file to --config")
    try:
        data = tomllib.loads(path.read_text())
    except UnicodeDecodeError:
        raise ValueError(f"config file {path} is not a text file (not UTF-8); pass a TOML file to --config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path} is not valid TOML: {exc}") from None
    data = data.get("search", data)
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: 'search' must be a table ([search] with options under it), "
                         f"got {type(data).__name__}")
    SearchConfig.from_dict(data, source=str(path))  # validate names and values early (and note flat keys)
    return nest_flat(data)[0]
