"""The one interface every search method implements (issue 14: methods compared on one env).

A method proposes architectures by acting in a gymnasium env; it knows gymnasium
spaces and (if it learns) torch, nothing of the harness. The harness hands it an env
already wrapped by the search's recorder (which stores every evaluated candidate,
checkpoints, shows progress and counts the budget), and a :class:`Budget` to stop on.

Contract (the loop in ``harness/search/loop.py`` and every method keep it):

- ``run(env, budget)`` acts in ``env`` (``reset`` / ``step``, gymnasium 1.x API) until
  ``budget.exhausted()`` is True, then returns. It checks the budget at least after every
  ``step``; the recorder also truncates the episode once the budget is spent, so a method
  that only looks at ``terminated or truncated`` ends its episode there too.
- A discrete env gives ``info["action_mask"]`` (int8 ``[n_actions]``, 1 = legal); methods
  act only on legal actions.
- Every step's outcome is in ``info``: ``candidate`` (the evaluated architecture or None),
  ``spec``, ``reward_terms``, ``target_met``, ``event``. Methods read nothing else of the env.
- ``state_dict()`` / ``load_state_dict()`` round-trip everything the method needs to go on
  (policy weights, optimiser, RNG state) as plain picklable values: the checkpoint saves it
  after every episode and ``--resume`` restores it.
- Randomness comes only from the ``seed`` given at construction (the *search* seed, not the
  base model's), so a method with the same seed on the same env acts identically.
- Construction: the harness calls ``cls.create(seed=..., options=..., context=...)``, where
  ``options`` is the config's ``[agent]`` table (plain values) plus the registry's fixed parameters
  (``reinforce-episodic``: ``mode="episodic"``). The default is ``cls(seed=seed, **options)``, or,
  for a class whose ``__init__`` takes ``config=`` with a dataclass default (``PPOConfig()``),
  ``cls(seed=seed, config=dataclasses.replace(default, **options))``. ``check_options(options)`` is
  called when the config is read, before any work: by default the keys must be keyword parameters
  of ``__init__`` (or fields of that config dataclass, whose own checks then run). A method that needs the harness (``magnitude``:
  the base model) overrides ``create`` and reads ``context`` (``harness.search.methods.MethodContext``).
- ``env.jump(spec)`` (the recorder passes it to ``PruningEnv.jump``) evaluates a whole spec as one
  step that ends its episode: how one-shot methods propose an architecture (widths from
  ``info["widths"]``, the grid of each group).
- ``state_dict()`` is taken at episode boundaries (when the method calls ``reset`` again, and when
  ``run`` returns); ``--resume`` continues from the last one with a fresh call of ``run``, so a method
  keeps in its state where it was (an RNG state, the index of its next candidate).
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
from typing import Any

import gymnasium as gym

__all__ = ["Budget", "SearchMethod"]


class Budget:
    """How many candidates a run may still evaluate (the comparison's unit of cost, issue 14).

    Args:
        limit: evaluated candidates allowed (≥ 1), or None for no limit (the run ends by its episodes).

    Raises:
        ValueError: ``limit`` < 1.
    """

    def __init__(self, limit: int | None) -> None:
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise ValueError(f"budget must be an integer >= 1 (evaluated candidates), got {limit!r}")
        self.limit = limit
        self.spent = 0
        self.stop_requested = False

    def charge(self, n: int = 1) -> None:
        """Count ``n`` more evaluated candidates."""
        self.spent += n

    def request_stop(self) -> None:
        """End the run early (early stop, interrupt): ``exhausted()`` is True from now on."""
        self.stop_requested = True

    def exhausted(self) -> bool:
        """True once the limit is reached or a stop was requested."""
        return self.stop_requested or (self.limit is not None and self.spent >= self.limit)

    @property
    def left(self) -> int | None:
        """Candidates left (None = no limit)."""
        return None if self.limit is None else max(0, self.limit - self.spent)


class SearchMethod(abc.ABC):
    """A way of proposing architectures (an RL agent, a baseline, a one-shot heuristic).

    Attributes:
        name: the method's name in ``--method`` / ``hilprune compare --methods`` and in the store.
    """

    name: str = ""

    @classmethod
    def _config_default(cls) -> Any:
        """The dataclass default of ``__init__``'s ``config`` parameter, or None."""
        param = inspect.signature(cls.__init__).parameters.get("config")
        default = None if param is None else param.default
        return default if dataclasses.is_dataclass(default) and not isinstance(default, type) else None

    @classmethod
    def create(cls, *, seed: int, options: dict[str, Any], context: Any = None) -> SearchMethod:
        """Build the method for a run (module doc): ``cls(seed=seed, **options)``, or with ``config=`` of options."""
        default = cls._config_default()
        if default is not None and "config" not in options:
            return cls(seed=seed, config=dataclasses.replace(default, **options))
        return cls(seed=seed, **options)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Refuse options this method does not take, naming them (ValueError); called on config load."""
        default = cls._config_default()
        if default is not None and "config" not in options:
            valid = sorted(f.name for f in dataclasses.fields(default))
            for key in options:
                if key not in valid:
                    raise ValueError(f"method {cls.name or cls.__name__!r} has no option {key!r} in [agent]; "
                                     f"valid: {', '.join(valid)}")
            dataclasses.replace(default, **options)  # the config's own checks
            return
        params = inspect.signature(cls.__init__).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return
        valid = sorted(n for n in params if n not in ("self", "seed"))
        for key in options:
            if key not in valid:
                raise ValueError(f"method {cls.name or cls.__name__!r} has no option {key!r} in [agent]; "
                                 f"valid: {', '.join(valid) or 'none'}")

    @abc.abstractmethod
    def run(self, env: gym.Env, budget: Budget) -> None:
        """Act in ``env`` until ``budget.exhausted()``; see the module doc for the contract."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to go on after a resume (default: nothing)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s value."""
