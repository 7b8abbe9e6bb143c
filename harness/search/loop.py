"""The search loop: a method acts in the env through a recorder; the rest are callbacks.

Stable-Baselines3's shape (issue 14; STYLE.md): the loop speaks gymnasium only. A
:class:`agent.base.SearchMethod` calls ``reset`` / ``step`` (or ``jump``) on a :class:`Recorder`, a
``gymnasium.Wrapper`` around the env, which

- stores every step that evaluated an architecture in the results store (one row per
  (episode, step), from ``info``: ``candidate``, ``reward_terms``, ``event``),
- charges the :class:`agent.base.Budget` one unit per evaluated candidate (a latency cache hit
  and a failed build count too: the budget is candidates, not wall time; ``stop`` and an
  impossible action evaluate nothing and are free),
- tracks the best candidate: the largest (``info["target_met"]``, reward), failures excluded,
- truncates the episode (``truncated=True``) on the step that spends the budget, so a method that
  only looks at ``terminated or truncated`` ends there,
- and calls its callbacks: :class:`Checkpoint` (at every episode boundary: when the method calls
  ``reset`` again, after its end-of-episode update, and when ``run`` returns), :class:`Progress`
  (tqdm bar or time-stamped lines), :class:`EarlyStop` (no better best in N candidates) and
  :class:`Interrupt` (the tests' Ctrl-C after N steps).

It reads nothing of the env but what ``reset``/``step`` return, and decides nothing about the
episode beyond the budget's truncation. A run of steps that evaluate nothing (a policy that only
stops) ends the run after :data:`MAX_IDLE_STEPS` of them, with a warning, so a budget that is never
charged cannot hang it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import gymnasium as gym

from agent.base import Budget

__all__ = ["MAX_IDLE_STEPS", "Callback", "Checkpoint", "EarlyStop", "Interrupt", "Progress", "Recorder", "Step"]

log = logging.getLogger(__name__)

#: Steps in a row that evaluate no candidate after which the recorder ends the run.
MAX_IDLE_STEPS = 1000


@dataclass(frozen=True, slots=True)
class Step:
    """One recorded step, as the callbacks see it.

    Attributes:
        episode, step: where (episode from 0; step from 1 within the episode).
        action: the discrete action, or None for a ``jump`` (a whole spec) or a continuous action.
        reward: the env's reward.
        info: the env's info (``candidate``, ``spec``, ``reward_terms``, ``target_met``, ``event``).
        evaluated: the step evaluated a candidate (charged to the budget, stored).
        new_best: this candidate became the run's best.
    """

    episode: int
    step: int
    action: Any
    reward: float
    info: dict
    evaluated: bool
    new_best: bool


class Callback:
    """Hooks of the recorder (each does nothing by default)."""

    def on_step(self, rec: Recorder, step: Step) -> None:
        """After every step (its row is stored)."""

    def on_episode_end(self, rec: Recorder) -> None:
        """At an episode boundary: the method's state holds everything up to the end of ``rec.episode``."""

    def on_end(self, rec: Recorder) -> None:
        """When the method's ``run`` returned."""


class Recorder(gym.Wrapper):
    """The env as every method sees it: stores, charges, tracks the best, truncates (module doc).

    Args:
        env: the MDP (``PruningEnv`` or another env with the same ``info``).
        budget: charged per evaluated candidate.
        store_row: called with each evaluated :class:`Step` (writes the store's row).
        callbacks: called in order.
        episode: index of the first episode (a resumed run continues its numbering).
        best: (spec, key, result) of an earlier best (resume), or None.
        timer: a ``StageTimer``: the time between the recorder's return and the method's next call
            is the method's own (stage ``agent``).
        eligible: which successful candidates may become the best (default: all); a ``hybrid`` run
            allows only measured ones (:meth:`harness.search.latency_mode.LatencyMode.reportable`).
    """

    def __init__(self, env: gym.Env, budget: Budget, *, store_row: Callable[[Step], None],
                 callbacks: list[Callback] = (), episode: int = 0, best: tuple | None = None, timer=None,
                 eligible: Callable[[Any], bool] | None = None) -> None:
        super().__init__(env)
        self.eligible = eligible
        self.budget = budget
        self.store_row = store_row
        self.callbacks = list(callbacks)
        self.episode = episode
        self.step_in_episode = 0
        self.started = False
        self.best_spec, self.best_key, self.best_result = best if best is not None else (None, None, None)
        self.timer = timer
        self.idle_steps = 0
        self.steps_total = 0
        self.last_info: dict = {}
        self._t_return: float | None = None

    # -- gymnasium API --------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start the next episode (closing the current one if it had steps)."""
        if self.started and self.step_in_episode > 0:
            self._end_episode()
            self.episode += 1
        self.started = True
        self.step_in_episode = 0
        obs, info = self.env.reset(seed=seed, options=options)
        self.last_info = info
        self._t_return = time.perf_counter()
        return obs, info

    def action_masks(self):
        """The last ``info["action_mask"]`` (int8, 1 = legal): sb3-contrib's ``MaskablePPO`` asks the env for it
        by this name; it comes from ``info``, not from the env's attributes."""
        return self.last_info.get("action_mask")

    def step(self, action):
        """The env's step, recorded (module doc).

        Raises:
            RuntimeError: a step after the budget was spent (a method must check ``budget.exhausted()``).
        """
        self._before()
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._after(action, obs, reward, terminated, truncated, info)

    def jump(self, spec):
        """The env's ``jump(spec)`` (a whole spec as one step, ending the episode), recorded like a step."""
        self._before()
        obs, reward, terminated, truncated, info = self.env.unwrapped.jump(spec)
        return self._after(None, obs, reward, terminated, truncated, info)

    # -- the run --------------------------------------------------------------
    def finish(self) -> None:
        """The method returned: close its last episode and tell the callbacks."""
        if self.started and self.step_in_episode > 0:
            self._end_episode()
            self.step_in_episode = 0
            self.episode += 1
            self.started = False
        for cb in self.callbacks:
            cb.on_end(self)

    def _before(self) -> None:
        if self.budget.exhausted():
            raise RuntimeError("a step after the budget was spent: a method must stop once budget.exhausted()")
        if not self.started:
            raise RuntimeError("step before reset")
        if self.timer is not None and self._t_return is not None:
            self.timer.add("agent", time.perf_counter() - self._t_return)

    def _after(self, action, obs, reward, terminated, truncated, info):
        self.step_in_episode += 1
        self.steps_total += 1
        cand = info.get("candidate")
        evaluated = cand is not None
        new_best = False
        if evaluated:
            self.budget.charge()
            self.idle_steps = 0
            if (getattr(cand, "ok", False) and info.get("event") != "failed"
                    and (self.eligible is None or self.eligible(cand))):
                key = (bool(info.get("target_met")), float(reward))
                if self.best_key is None or key > self.best_key:
                    self.best_spec, self.best_key, self.best_result = cand.spec, key, cand
                    new_best = True
        else:
            self.idle_steps += 1
            if self.idle_steps >= MAX_IDLE_STEPS:
                log.warning("%d steps in a row evaluated no candidate (the method only stops or takes impossible "
                            "actions): the run ends with %s of its budget spent", self.idle_steps, self.budget.spent)
                self.budget.request_stop()
        if self.budget.exhausted() and not terminated:
            truncated = True
        record = Step(self.episode, self.step_in_episode, None if action is None else _plain_action(action),
                      float(reward), info, evaluated, new_best)
        self.last_info = info
        if evaluated:
            self.store_row(record)
        for cb in self.callbacks:
            cb.on_step(self, record)
        self._t_return = time.perf_counter()
        return obs, reward, terminated, truncated, info

    def _end_episode(self) -> None:
        for cb in self.callbacks:
            cb.on_episode_end(self)


def _plain_action(action):
    try:
        return int(action)
    except (TypeError, ValueError):
        return None  # a continuous action: the row's spec says what it did


class Checkpoint(Callback):
    """Save the run's state at every episode boundary (``save(rec)``; the run writes the file)."""

    def __init__(self, save: Callable[[Recorder], None]) -> None:
        self.save = save

    def on_episode_end(self, rec: Recorder) -> None:
        self.save(rec)


class EarlyStop(Callback):
    """End the run after ``patience`` evaluated candidates without a better best."""

    def __init__(self, patience: int) -> None:
        if patience < 1:
            raise ValueError(f"early stop patience must be >= 1 candidates, got {patience}")
        self.patience = patience
        self.since_best = 0
        self.stopped_at: int | None = None

    def on_step(self, rec: Recorder, step: Step) -> None:
        if not step.evaluated:
            return
        self.since_best = 0 if step.new_best else self.since_best + 1
        if self.since_best >= self.patience and self.stopped_at is None:
            self.stopped_at = rec.budget.spent
            log.info("early stop: no better candidate in the last %d", self.patience)
            rec.budget.request_stop()


class Interrupt(Callback):
    """Test hook: raise KeyboardInterrupt after ``after_steps`` evaluated steps (stored rows) of this process,
    as Ctrl-C would."""

    def __init__(self, after_steps: int) -> None:
        self.after_steps = after_steps
        self.seen = 0

    def on_step(self, rec: Recorder, step: Step) -> None:
        self.seen += int(step.evaluated)
        if self.seen >= self.after_steps:
            raise KeyboardInterrupt("interrupt_after_steps reached")


class Progress(Callback):
    """A tqdm bar over the budget (``bar``) or one time-stamped line per step on stderr (``lines``).

    Args:
        mode: ``bar``, ``lines`` or ``off``.
        total: the budget (candidates).
        initial: candidates already spent (resume).
        method: the method's name, for the lines.
    """

    def __init__(self, mode: str, total: int, initial: int = 0, method: str = "") -> None:
        self.mode, self.total, self.method = mode, total, method
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="search", unit="cand", file=sys.stderr)

    def on_step(self, rec: Recorder, step: Step) -> None:
        best = rec.best_result
        if self.bar is not None:
            if step.evaluated:
                self.bar.update(1)
            self.bar.set_postfix(ep=step.episode, best_r=f"{rec.best_key[1]:.3f}" if rec.best_key else "-",
                                 best_lat=f"{best.latency_ratio:.3f}" if best is not None and best.latency_ratio
                                 else "-", best_top1=f"{best.top1:.3f}" if best is not None else "-")
        elif self.mode == "lines":
            print(f"[{datetime.now().strftime('%H:%M:%S')}] {step_line(rec, step, self.total)}", file=sys.stderr,
                  flush=True)

    def on_end(self, rec: Recorder) -> None:
        if self.bar is not None:
            self.bar.close()


def _tie(a, b) -> bool:
    """True when the two latency ratios' intervals overlap: neither is faster beyond noise (devices.stats.tie)."""
    if None in (*a.ratio_ci, *b.ratio_ci):
        return False
    return not (a.ratio_ci[1] < b.ratio_ci[0] or b.ratio_ci[1] < a.ratio_ci[0])


def step_line(rec: Recorder, step: Step, total: int) -> str:
    """One step in words: where, what, its latency ratio or failure, the best so far."""
    cand, info = step.info.get("candidate"), step.info
    action = "jump" if step.action is None else f"action {step.action}"
    head = (f"episode {step.episode + 1} step {step.step} ({rec.budget.spent}/{total} candidates): {action}, "
            f"reward {step.reward:+.3f}")
    failed = info.get("event") == "failed"
    if cand is None:
        what = info.get("event") or "no candidate"
    elif failed or not cand.ok:
        first = ((cand.error_message or "").strip().splitlines() or [""])[0]
        what = f"FAILED {cand.error_kind}: {first[:160]}"
    else:
        lo, hi = cand.ratio_ci
        ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else f" ({cand.source})"
        what = (f"latency {cand.latency_ratio:.3f}x unpruned{ci}"
                f"{' cached' if cand.latency_cache_hit else ''} (p50 {cand.latency_p50_ms:.3f} ms), "
                f"val top-1 {cand.top1:.4f}")
    best = rec.best_result
    tail = (f"; best so far {best.latency_ratio:.3f}x at val top-1 {best.top1:.4f}"
            if best is not None and best.ok and best.latency_ratio is not None else "")
    if best is not None and cand is not None and best is not cand and cand.ok and not failed and _tie(cand, best):
        tail += " (latency within noise of the best: a tie)"
    return f"{head}, {what}{tail}"
