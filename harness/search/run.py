"""The main job: a search for a pruned architecture that is faster on the device (the entry point).

Seed document ``../shared/seed/`` §3.2 (the loop) and §4.4 (training code);
DESIGN.md §1–§6, §9. One run:

1. load the data (splits seeded by ``base_seed``) and the trained baseline (trained and
   cached on first use, keyed by ``base_seed``: one base model for every method and search seed);
2. find the prunable groups; evaluate the unpruned model (accuracy, MACs,
   compile + tune for the target, measure on the device) — the reference of
   every ΔP, ΔC, ΔH;
3. let the chosen method (``SearchConfig.method``, :mod:`harness.search.methods`) act in the env
   through the recorder (:mod:`harness.search.loop`) until its budget of evaluated candidates is
   spent: every candidate goes to the results store, a checkpoint is written at every episode
   boundary;
4. pick the best candidate (target met first, then reward), fine-tune it, measure it and the
   unpruned model again afresh, and write ``summary.json``, ``pareto.csv``, ``pareto.png`` and the
   best model (:mod:`harness.search.final`).

The config is :mod:`harness.search.config`; this module re-exports what callers import from it.

A run lives in ``OUT/RUN_ID/`` (``RUN_ID`` = model, method, device, search seed, time). A killed
run loses nothing measured (rows are committed per step), and ``resume_search(RUN_ID)`` continues
from its last **episode boundary**: rows stored after the last checkpoint are dropped and made
again by the restored method (policy, optimiser and RNG states), so with latencies from the store's
cache it makes the same choices as an uninterrupted run. A kill during the first episode restarts
the search from its first step.

Overlap of compile and measure: in this per-step MDP the next candidate
depends on the reward of the current one, so one env cannot compile the next
candidate while the device measures the current; the device API has
``submit`` futures for callers that can (several envs, benchmarks).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.base import Budget
from devices.base import DeviceUnavailable, MeasureConfig
from devices.interleaved import InterleavedConfig
from devices.registry import make_device
from harness.compile.targets import resolve_target
from harness.compile.tuning import TuningConfig
from harness.data import load_dataset
from harness.models import build_model
from harness.paths import default_cache_dir
from harness.pipeline import Pipeline
from harness.pruning import ArchSpec, find_groups, full_spec
from harness.search.candidate import CandidateEvaluator, CandidateResult, StageTimer
from harness.search.config import DRIFT_TOLERANCE, SearchConfig, load_config_file
from harness.search.final import finish, load_best_model
from harness.search.latency_mode import build_latency_mode
from harness.search.loop import (
    Checkpoint,
    EarlyStop,
    Interrupt,
    Progress,
    Recorder,
    Step,
)
from harness.search.methods import MethodContext, build_method, env_class, method_reward
from harness.search.pareto import pareto_front
from harness.store import ResultsStore
from harness.train import load_or_train_baseline

__all__ = [
    "DRIFT_TOLERANCE", "SearchAborted", "SearchConfig", "load_best_model", "load_checkpoint", "load_config_file",
    "pareto_front", "resume_search", "run_search",
]

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
#: Version of ``checkpoint.pt``: 2 = taken at episode boundaries, with the method's state (issue 14);
#: 1 (mid-episode, REINFORCE only) is not read any more.
CHECKPOINT_FORMAT = 2
#: How a run shows progress: a tqdm bar, plain time-stamped lines (logs), or nothing.
PROGRESS_MODES = ("bar", "lines", "off")


class SearchAborted(RuntimeError):
    """The search cannot go on (the unpruned model could not be measured, a farm ran out of
    healthy boards). Everything measured before is in the results store; the run can be resumed."""


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _row(result: CandidateResult, *, episode: int, step: int, action: int | None, reward: float, terms,
         device: str, target: str) -> dict:
    return dict(
        episode=episode, step=step, action=action, arch_signature=result.spec.signature(),
        spec_json=json.dumps(list(result.spec.channels)), top1=result.top1, macs=result.macs, params=result.params,
        latency_p50_ms=result.latency_p50_ms, latency_raw_ms=json.dumps(list(result.latency_raw_ms)),
        latency_ratio=result.latency_ratio, latency_ratio_ci_low=result.ratio_ci[0],
        latency_ratio_ci_high=result.ratio_ci[1], ratio_id=result.ratio_id,
        measurement_id=result.measurement_id, device=device, target=target, source=result.source,
        reward=reward, delta_p=getattr(terms, "delta_p", None), delta_c=getattr(terms, "delta_c", None),
        delta_h=getattr(terms, "delta_h", None), latency_cache_hit=int(result.latency_cache_hit),
        error_kind=result.error_kind, error_message=result.error_message,
        latency_ratio_predicted=result.predicted_ratio, latency_measure_reason=result.measure_reason,
    )


def _plain(obj: Any) -> Any:
    """``obj`` with numpy arrays/scalars as lists/Python numbers (tensors kept): what
    ``torch.load(weights_only=True)`` accepts."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _atomic_torch_save(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` so that a crash leaves the old file or the new one, never a torn one:
    a temp file beside it, flushed and fsynced, renamed over ``path``, then the directory fsynced."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(_plain(obj), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: Path) -> dict | None:
    """A run's checkpoint, loaded with ``torch.load(weights_only=True)`` (tensors and plain data
    only: a checkpoint in a shared run directory must not run code on resume); None if absent.

    Raises:
        ValueError: the file is torn, not a checkpoint, or holds other objects (one line naming it).
    """
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, zip errors
        why = " ".join(str(exc).split())[:200]
        raise ValueError(f"checkpoint {path} cannot be loaded safely ({type(exc).__name__}: {why}); it is torn or "
                         f"holds more than tensors and plain data (never loaded with code execution): move it away "
                         f"to restart the run from its first step") from None
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} is not a hilprune checkpoint of format {CHECKPOINT_FORMAT} (an older "
                         f"hilprune writes format 1, mid-episode); move it away to restart the run from its first step")
    return ckpt


class _Run:
    """Everything one run holds while it goes (built fresh on start and on resume)."""

    def __init__(self, config: SearchConfig, run_id: str, run_dir: Path, store: ResultsStore, *,
                 progress: bool | str, interrupt_after_steps: int | None) -> None:
        self.config, self.run_id, self.run_dir, self.store = config, run_id, run_dir, store
        mode = {True: "bar", False: "off"}.get(progress, progress) if isinstance(progress, bool) else progress
        if mode not in PROGRESS_MODES:
            raise ValueError(f"progress must be one of {PROGRESS_MODES} (or a bool), got {progress!r}")
        self.progress_mode = mode
        self.progress = mode == "bar"  # tqdm bars (baseline training, the search)
        self.interrupt_after_steps = interrupt_after_steps
        self.timer = StageTimer()
        self.drift: dict | None = None
        self.cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        self.target = resolve_target(config.target)
        build_model(config.model)  # unknown model: clear error before any work
        data_root = Path(config.data_root) if config.data_root else None
        self.splits = load_dataset(config.dataset, root=data_root, seed=config.base_seed, subset=config.subset)
        self.device = make_device(config.device, inventory=config.inventory, fallback=config.fallback,
                                  target=config.target)
        # A farm with fallback 'sim' would answer single requests from the simulator among measured ones;
        # the search takes the fallback itself (the whole run switches, _switch_to_simulator) and lets the
        # farm fail instead.
        self.fallback = getattr(self.device, "fallback", None) or "fail"
        if hasattr(self.device, "fallback"):
            self.device.fallback = "fail"
        self.closing: list = [self.device]
        self.data_root = data_root
        self.board: str | None = None  # the farm board the whole run measures on
        self.board_changes: list[dict] = []
        self.source_switch: dict | None = None  # set when the run moved to the simulator as a whole
        self.latency = None  # the run's LatencyMode (harness.search.latency_mode), set in setup; None: simulated
        self.env = None  # the method's env (unwrapped): the fallback re-bases it on a new reference
        self.recorder: Recorder | None = None
        self.method = None
        self.budget = Budget(config.budget_limit)
        self.best_spec: ArchSpec | None = None
        self.best_key: tuple | None = None
        self.early_stopped_at: int | None = None
        self.episodes_done = 0

    def close(self) -> None:
        for device in self.closing:
            device.close()

    def say(self, message: str) -> None:
        """One progress line on stderr: above the bar (``bar``), time-stamped (``lines``: logs, cron), or nothing."""
        if self.progress_mode == "bar":
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)
        elif self.progress_mode == "lines":
            print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def setup(self, ckpt: dict | None = None) -> None:
        """Baseline (trained or cached), groups, evaluator, unpruned reference, env and agent."""
        c = self.config
        self.say(f"run {self.run_id}: {c.model} on {c.dataset}, device {c.device}, target {self.target.name}")
        self.say(f"baseline: loading or training {c.model} ({c.train_epochs} epochs when not cached)")
        with self.timer.time("train"):
            self.base_model, base_info = load_or_train_baseline(
                c.model, c.dataset, seed=c.base_seed, epochs=c.train_epochs, cache_dir=self.cache_dir,
                data_root=self.data_root, progress=self.progress, splits=self.splits,
            )
        self.base_info = dataclasses.asdict(base_info)
        self.input_shape = (1, *self.splits.input_shape)
        self.groups = find_groups(self.base_model, torch.zeros(self.input_shape))
        self.tuning = TuningConfig(trials_per_task=c.tune_trials)
        self.measure = MeasureConfig(backend=c.backend, number=0, repeat=c.repeat, min_repeat_ms=20.0)
        self.ratio = InterleavedConfig(backend=c.backend, number=0, rel_width=c.ratio_width, max_pairs=c.max_pairs,
                                       seed=c.seed)
        switched = (ckpt or {}).get("source_switch")
        if switched:  # a resumed run that had moved to the simulator stays there
            self.source_switch = switched
            pipeline = self._sim_pipeline()
        else:
            pipeline = self._device_pipeline((ckpt or {}).get("board"))
        self.board_changes = list((ckpt or {}).get("board_changes") or [])
        self.evaluator = CandidateEvaluator(
            model_name=c.model, base_model=self.base_model, groups=self.groups, input_shape=self.input_shape,
            val_data=self.splits.val, pipeline=pipeline, work_dir=self.run_dir,
            eval_samples=c.eval_samples or None, importance=c.importance, timer=self.timer,
            on_exhausted=self._on_exhausted, on_board_change=self._on_board_change,
        )
        self.base_spec = full_spec(self.groups)
        self.latency = build_latency_mode(  # before the reference compile: "a table exists" is the database's state
            requested=(ckpt or {}).get("latency_mode", c.latency), confirm_top_k=c.confirm_top_k,
            weights=method_reward(c.method, c.reward), evaluator=self.evaluator, base_spec=self.base_spec,
            base_model=self.base_model, family=f"{c.model}@{'x'.join(map(str, self.input_shape))}",
            run_id=self.run_id)
        self._set_reference()
        self.say(f"unpruned model: compiling for {self.target.name} ({c.tune_trials} tuning trials per new task) "
                 f"and measuring on {c.device}")
        self.baseline = self.evaluator.evaluate(self.base_spec)
        if ckpt is None and self.baseline.ok and self.baseline.latency_cache_hit:
            self._check_drift()
        if not self.baseline.ok:
            raise SearchAborted(f"the unpruned {c.model} could not be measured: "
                               f"{self.baseline.error_kind}: {self.baseline.error_message}")
        b = self.baseline
        if self.latency is not None:
            self.latency.set_baseline(b, self.latency.reference_tasks_ms)
            self.latency.seed(self.store.candidates(self.run_id))  # a resumed run's measured candidates
            if self.latency.table is not None:
                self.evaluator.latency_mode = self.latency
            self.say(f"latency: {self.latency.mode}" + (f" (latency table: {self.latency.table.fit.describe()})"
                                                        if self.latency.table is not None else ""))
            if self.latency.table is None and c.tune_trials > 0:
                self.say(f"note: no latency table for {self.target.name} yet: every candidate is compiled and timed, "
                         f"and every new width is tuned; warm the grid once (hilprune tune --model {c.model} "
                         f"--input-shape {','.join(map(str, self.input_shape))} --target {c.target} --grid "
                         f"{c.env.round_to} --trials {c.tune_trials}) for a search that predicts and confirms")
        where = f"board {self.board} of {c.device}" if self.board else self.evaluator.device.name
        self.say(f"unpruned model: p50 {b.latency_p50_ms:.3f} ms ({b.source} on {where}), val top-1 {b.top1:.4f}, "
                 f"{b.macs:,} MACs; searching with {c.method}: a budget of {c.budget_limit} candidates, "
                 f"{c.env.max_steps} steps per episode")
        env_config = dataclasses.replace(c.env, weights=method_reward(c.method, c.reward))
        self.env = env_class(c.method)(self.evaluator, self.groups, self.baseline, env_config)
        self.method = build_method(c.method, seed=c.seed, options=dict(c.agent), context=MethodContext(
            base_model=self.base_model, input_shape=self.input_shape, importance=c.importance))

    def _set_reference(self) -> None:
        """Compile the unpruned model: every candidate is timed interleaved with this artifact (its ΔH is a
        ratio against it, DESIGN.md §5).

        Raises:
            SearchAborted: it cannot be exported or compiled.
        """
        err = self.evaluator.set_reference(self.base_spec, self.base_model)
        if err is not None:
            raise SearchAborted(f"the unpruned {self.config.model} could not be compiled: {err.kind}: {err.message}")

    def _device_pipeline(self, prefer_board: str | None) -> Pipeline:
        """The run's pipeline on its device; a farm is pinned to one board for the whole run.

        Raises:
            SearchAborted: no healthy board (and no simulator fallback), or the board is unreachable.
        """
        c = self.config
        if hasattr(self.device, "pin_run"):
            self.board = self.device.pin_run(prefer=prefer_board)
            if self.board is None:
                if self.fallback == "sim":
                    self.source_switch = self._switch_record(f"no healthy board in {c.device} at the start")
                    return self._sim_pipeline()
                raise SearchAborted(self._exhausted_message("no healthy board at the start"))
            if prefer_board is not None and self.board != prefer_board:
                self.say(f"board {prefer_board} of {c.device} is quarantined; this run continues on board "
                         f"{self.board} and re-measures its unpruned model there")
            else:
                self.say(f"{c.device}: the whole run measures on board {self.board}")
        try:
            self._pipeline = Pipeline.for_device(self.device, self.target, self.tuning, self.measure,
                                                 self.cache_dir, self.store, ratio_config=self.ratio)
        except DeviceUnavailable as exc:
            raise SearchAborted(f"{c.device} does not answer: {exc}; everything measured is in {c.db}; "
                                f"`hilprune search --resume {self.run_id}` once it is back") from None
        self.target = self._pipeline.target
        return self._pipeline

    def _sim_pipeline(self) -> Pipeline:
        """The simulator of the run's target preset, for a run that switched to ``simulated`` as a whole."""
        from devices.sim.device import SimDevice

        boards = getattr(self.device, "boards", {})
        presets = sorted({d.board.target for d in boards.values()}) if boards else []
        preset = presets[0] if presets else (self.config.target if not self.config.target.startswith("{")
                                             else "host")
        sim = SimDevice(preset, name=f"sim:{preset}")
        self.closing.append(sim)
        self._pipeline = Pipeline.for_device(sim, self.target, self.tuning, self.measure, self.cache_dir, self.store,
                                             ratio_config=self.ratio)
        return self._pipeline

    def _switch_record(self, why: str) -> dict:
        rec = self.recorder
        episode, step = (rec.episode, rec.step_in_episode + 1) if rec is not None else (-1, 0)
        return {"from": self.config.device, "to": None, "reason": why, "episode": episode, "step": step,
                "at": time.time()}

    def _exhausted_message(self, why: str) -> str:
        c = self.config
        return (f"{c.device}: {why}; everything measured is in {c.db}; fix the farm and `hilprune search "
                f"--resume {self.run_id}`, or rerun with --fallback sim (the whole run then switches to the "
                f"simulator)")

    def _on_exhausted(self, message: str) -> bool:
        """The farm has no healthy board left: stop (resumably), or switch the whole run to the simulator."""
        if self.fallback != "sim" or self.source_switch is not None:
            raise SearchAborted(self._exhausted_message(f"no healthy board left ({message})"))
        self._switch_to_simulator(message)
        return True

    def _switch_to_simulator(self, why: str) -> None:
        """Move the whole run to the simulator: the unpruned model is re-predicted, and every candidate row
        this run stored so far is re-predicted and rewritten (latency, source, ΔH, reward), so ΔH always
        compares simulated with simulated and no stored row of the run is measured."""
        from harness.search.reward import terms_against

        record = self._switch_record(why)
        ev = self.evaluator
        ev.pipeline = self._sim_pipeline()
        ev.latency_mode = self.latency = None  # simulated as a whole: no board, no table
        self._set_reference()
        record["to"] = ev.device.name
        self.source_switch = record
        self.say(f"{self.config.device}: no healthy board left ({why.splitlines()[0][:200]}); --fallback sim: the "
                 f"whole run switches to {ev.device.name} (simulated), the unpruned model is re-predicted")
        log.warning("run %s switches to %s (simulated) as a whole: %s", self.run_id, ev.device.name, why)
        self.baseline = ev.evaluate(self.base_spec)
        if not self.baseline.ok:
            raise SearchAborted(f"the simulator cannot predict the unpruned {self.config.model}: "
                                f"{self.baseline.error_kind}: {self.baseline.error_message}")
        b = self.baseline
        weights = self.env.config.weights if self.env is not None else self.config.reward
        for row in self.store.candidates(self.run_id):
            if row["episode"] < 0:
                self.store.update_candidate_latency(self.run_id, row["episode"], row["step"], b)
                continue
            if row["error_kind"] is not None or row["latency_p50_ms"] is None:
                continue
            cand = ev.evaluate(ArchSpec(tuple(json.loads(row["spec_json"]))))
            terms = None if not cand.ok else terms_against(cand, b, weights)
            self.store.update_candidate_latency(self.run_id, row["episode"], row["step"], cand, terms)
        if self.env is not None and hasattr(self.env, "restore"):
            self.env.baseline = b
            current = self.env.current
            fresh = b if current.spec == b.spec else ev.evaluate(current.spec)
            self.env.restore(tuple(int(k) for k in self.env.kept), self.env.steps, fresh)
        rec = self.recorder
        if rec is not None and rec.best_spec is not None:
            best = ev.evaluate(rec.best_spec)
            if best.ok:
                terms = terms_against(best, b, weights)
                met = self.env.target_met(best) if hasattr(self.env, "target_met") else rec.best_key[0]
                rec.best_key, rec.best_result = (bool(met), terms.reward), best

    def _on_board_change(self, change: dict) -> None:
        """The farm moved the run to another board: re-measure the unpruned model there and say so."""
        self.board_changes.append({k: change[k] for k in ("from", "to", "reason", "at") if k in change})
        self.board = change.get("to")
        self.say(f"{self.config.device}: board {change.get('from')} is quarantined ({change.get('reason')}); the run "
                 f"continues on board {self.board} and re-measures its unpruned model there")
        if getattr(self, "base_spec", None) is None or getattr(self, "baseline", None) is None:
            return  # the reference is being measured right now, on the new board
        fresh = self.evaluator.evaluate(self.base_spec)
        if not fresh.ok:
            raise SearchAborted(f"the unpruned {self.config.model} could not be measured on board {self.board}: "
                                f"{fresh.error_kind}: {fresh.error_message}")
        self.baseline = fresh
        if self.latency is not None:  # the new board's own fit and measured points
            self.latency.board_changed(self.evaluator.pipeline.identity(), fresh)
        if self.env is not None and hasattr(self.env, "restore"):
            current = self.env.current
            self.env.baseline = fresh
            self.env.restore(tuple(int(k) for k in self.env.kept), self.env.steps,
                             fresh if current.spec == fresh.spec else current)

    def _check_drift(self) -> None:
        """Report how far the unpruned model's absolute p50 moved since the cached one (a fresh measurement).

        The reward does not depend on it: ΔH is a ratio measured interleaved with this very
        reference artifact in one session, and cached ratios are reused only against the same
        reference artifact on the same device (:meth:`harness.pipeline.Pipeline.cached_ratio`).
        A large drift says the machine (load, firmware, clock) changed; the summary reports it
        (``latency_cache_drift``) and the run says so when it is beyond ``cache_drift_tolerance``.
        """
        cached = self.baseline
        fresh = self.evaluator.evaluate(self.base_spec, fresh=True, model=self.base_model)
        if not fresh.ok:
            return
        drift = fresh.latency_p50_ms / cached.latency_p50_ms - 1.0
        beyond = abs(drift) > self.config.cache_drift_tolerance
        self.drift = {"cached_p50_ms": cached.latency_p50_ms, "fresh_p50_ms": fresh.latency_p50_ms,
                      "drift": drift, "beyond_tolerance": beyond, "cache_reset": False}
        if beyond:
            log.warning("%s: the unpruned model's absolute p50 is %.3f ms now, %.0f%% off its cached %.3f ms (load "
                        "or machine changed); ranking is unaffected: every latency is a ratio against it, measured "
                        "side by side", self.config.device, fresh.latency_p50_ms, 100 * drift, cached.latency_p50_ms)
            self.say(f"note: the unpruned model's absolute p50 moved {100 * drift:+.0f}% since it was cached "
                     f"({cached.latency_p50_ms:.3f} -> {fresh.latency_p50_ms:.3f} ms); ratios are unaffected")
            self.baseline = fresh

    # -- the search ---------------------------------------------------------------
    def search(self, ckpt: dict | None) -> None:
        """The method acts in the env through the recorder until the budget is spent (or resumes from ``ckpt``)."""
        c = self.config
        start_episode, best, done = 0, None, False
        if ckpt is not None:
            self.method.load_state_dict(ckpt["method"])
            self.timer.seconds.update(ckpt["timer"])
            self.budget.spent = int(ckpt["spent"])
            if ckpt.get("stop_requested"):
                self.budget.request_stop()
            if ckpt["best_spec"] is not None:
                spec = ArchSpec(tuple(ckpt["best_spec"]))
                result = self.evaluator.evaluate(spec)  # cached: for the progress display
                best = (spec, tuple(ckpt["best_key"]), result if result.ok else None)
            start_episode = int(ckpt["episode"]) + 1
            done = bool(ckpt.get("method_done"))
        progress = Progress(self.progress_mode, self.budget.limit, initial=self.budget.spent, method=c.method)
        callbacks = [Checkpoint(self._checkpoint), progress]
        early = EarlyStop(c.early_stop) if c.early_stop is not None else None
        if early is not None:
            callbacks.append(early)
        if self.interrupt_after_steps is not None:
            callbacks.append(Interrupt(self.interrupt_after_steps))
        rec = self.recorder = Recorder(self.env, self.budget, store_row=self._store_row, callbacks=callbacks,
                                       episode=start_episode, best=best, timer=self.timer,
                                       eligible=self._reportable)
        try:
            if not done:
                self.method.run(rec, self.budget)
            self._method_done = True
            rec.finish()
            if rec.episode == start_episode and not done:  # nothing ran (budget spent): mark it done
                self._checkpoint(rec, episode=start_episode - 1)
        finally:
            if progress.bar is not None:
                progress.bar.close()
        self.best_spec, self.best_key = rec.best_spec, rec.best_key
        self.early_stopped_at = early.stopped_at if early is not None else None
        self.episodes_done = rec.episode

    def _reportable(self, result: CandidateResult) -> bool:
        """May ``result`` be a reported figure (the best, the front)? In ``hybrid`` only measured candidates."""
        return self.latency is None or self.latency.reportable(result)

    def _store_row(self, step: Step) -> None:
        """One evaluated step as a ``candidates`` row."""
        info = step.info
        failed = info.get("event") == "failed"
        self.store.add_candidate(self.run_id, _row(
            info["candidate"], episode=step.episode, step=step.step, action=step.action, reward=step.reward,
            terms=None if failed else info.get("reward_terms"), device=self.evaluator.device.name,
            target=self.target.name))

    def _checkpoint(self, rec: Recorder, episode: int | None = None) -> None:
        """Save the run at an episode boundary: everything up to ``rec.episode`` is done."""
        _atomic_torch_save({
            "format_version": CHECKPOINT_FORMAT, "episode": rec.episode if episode is None else episode,
            "spent": self.budget.spent, "stop_requested": self.budget.stop_requested,
            "method_name": self.config.method, "method": self.method.state_dict(),
            "method_done": getattr(self, "_method_done", False), "timer": dict(self.timer.seconds),
            "board": self.board, "board_changes": self.board_changes, "source_switch": self.source_switch,
            "best_spec": list(rec.best_spec.channels) if rec.best_spec is not None else None,
            "best_key": list(rec.best_key) if rec.best_key is not None else None,
            "latency_mode": self.latency.mode if self.latency is not None else None,
        }, self.run_dir / CHECKPOINT)


def _execute(run: _Run, ckpt: dict | None, t_start: float) -> dict:
    status = "failed"
    try:
        run.setup(ckpt)
        if ckpt is None:
            run.store.add_candidate(run.run_id, _row(run.baseline, episode=-1, step=0, action=None, reward=0.0,
                                                     terms=None, device=run.evaluator.device.name,
                                                     target=run.target.name))
        run.search(ckpt)
        summary = finish(run, t_start)
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
        status = "finished"
        return summary
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        run.store.finish_run(run.run_id, status, None if status != "finished"
                             else json.loads((run.run_dir / "summary.json").read_text()))
        run.store.close()
        run.close()


def run_search(config: SearchConfig, *, progress: bool | str = True, interrupt_after_steps: int | None = None) -> dict:
    """Run one search end to end and return its summary (also written to ``summary.json``).

    Args:
        config: every option.
        progress: ``True``/``"bar"``: a tqdm bar (candidates spent, best reward, best latency
            ratio and its top-1); ``"lines"``: one time-stamped line per stage and step on stderr
            (for logs and cron, where a bar would be invisible); ``False``/``"off"``: nothing.
        interrupt_after_steps: test hook — raise KeyboardInterrupt after this many steps,
            as Ctrl-C would.

    Returns:
        A dict with at least ``run_id``, ``run_dir``, ``method``, ``seed``, ``base_seed``,
        ``candidates`` (evaluated candidates, ≤ ``budget``), ``baseline`` and ``best`` (each with
        ``val_top1`` (validation, as the search saw it) and ``test_top1`` (test split; the best's
        after fine-tuning), ``macs``, ``params``, ``latency_p50_ms`` measured afresh at the end;
        ``best`` also with ``speedup`` = 1 / the median interleaved ratio best / unpruned,
        ``speedup_rounds``, ``test_top1_drop`` and ``spec``), ``stage_seconds`` and ``wall_s``.

    Raises:
        ValueError: bad configuration (unknown model, dataset, device, target or method).
        harness.data.DatasetError: the dataset is missing or damaged.
        SearchAborted: the unpruned model could not be measured (nothing to compare with),
            or a farm has no healthy board left.
        KeyboardInterrupt: Ctrl-C; the run is marked ``interrupted`` and can be resumed.
    """
    t_start = time.perf_counter()
    _seed_everything(config.seed)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_id = f"{config.model}-{config.method}-{config.device.replace(':', '_')}-s{config.seed}-{stamp}"
    store = ResultsStore(config.db)
    try:
        run_dir = Path(config.out) / run_id
        run = _Run(config, run_id, run_dir, store, progress=progress, interrupt_after_steps=interrupt_after_steps)
    except BaseException:
        store.close()
        raise
    suffix = 1
    while run_dir.exists() or store.get_run(run.run_id) is not None:  # two runs in one second
        suffix += 1
        run.run_id = f"{run_id}-{suffix}"
        run_dir = run.run_dir = Path(config.out) / run.run_id
    run_dir.mkdir(parents=True)
    cfg = config.to_dict()
    (run_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    store.create_run(run.run_id, model=config.model, dataset=config.dataset, device=config.device,
                     target=run.target.name, seed=config.seed, config=cfg)
    return _execute(run, None, t_start)


def resume_search(run_id: str, *, out: str | None = None, db: str | None = None, progress: bool | str = True,
                  interrupt_after_steps: int | None = None) -> dict:
    """Continue run ``run_id`` from its last episode boundary (see the module doc).

    Args:
        run_id: the run to continue; its directory is ``out/run_id``.
        out, db: where the run directory and the store are (default: the run's own config).

    Raises:
        FileNotFoundError: no such run directory or no config in it.
        ValueError: the run finished already, is still running, or its checkpoint cannot be read.
    """
    t_start = time.perf_counter()
    base_out = out or SearchConfig().out
    run_dir = Path(base_out) / run_id
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no run {run_id!r} under {base_out} ({cfg_path} missing); pass --out of that run")
    values = json.loads(cfg_path.read_text())
    if db is not None:
        values["db"] = db
    values["out"] = base_out
    config = SearchConfig.from_dict(values, source=str(cfg_path))
    store = ResultsStore(config.db)
    row = store.get_run(run_id)
    if row is None:
        store.close()
        raise ValueError(f"run {run_id!r} is not in the results store {config.db}; pass the --db it used")
    if row["status"] == "finished":
        store.close()
        raise ValueError(f"run {run_id!r} finished already; its summary is {run_dir / 'summary.json'}")
    if row["status"] == "running" and row.get("owner_pid") is not None:  # a dead owner was marked interrupted on open
        store.close()
        raise ValueError(f"run {run_id!r} is still running (process {row.get('owner_pid')} on "
                         f"{row.get('owner_host')}); stop it first, or wait for it to end")
    _seed_everything(config.seed)
    ckpt_path = run_dir / CHECKPOINT
    try:
        ckpt = load_checkpoint(ckpt_path)
    except ValueError:
        store.close()
        raise
    if ckpt is not None:
        store.delete_candidates_after(run_id, int(ckpt["episode"]), 2**62)  # rows after the last boundary
    else:
        store.delete_candidates_after(run_id, -2, 0)  # nothing was checkpointed: start over
    store.set_run_status(run_id, "running")
    try:
        run = _Run(config, run_id, run_dir, store, progress=progress, interrupt_after_steps=interrupt_after_steps)
    except BaseException:
        store.close()
        raise
    return _execute(run, ckpt, t_start)
