"""The main job: an RL search for a pruned architecture that is faster on the device.

Seed document ``../shared/seed/`` §3.2 (the loop) and §4.4 (training code);
DESIGN.md §1–§6. One run:

1. load the data (fixed seeded splits) and the trained baseline (trained and
   cached on first use);
2. find the prunable groups; evaluate the unpruned model (accuracy, MACs,
   compile + tune for the target, measure on the device) — the reference of
   every ΔP, ΔC, ΔH;
3. for each episode, reset the env and let REINFORCE pick actions (per-step
   update by default, seed §3.2); every candidate goes to the results store
   and a checkpoint is written after every step;
4. pick the best candidate that met the target (else the best reward),
   fine-tune it, measure it and the unpruned model again afresh, and write
   ``summary.json``, ``pareto.csv``, ``pareto.png`` and the best model (ONNX,
   TVM artifact, state dict with its spec).

A run lives in ``OUT/RUN_ID/``. A killed run loses nothing measured (rows are
committed per step) and ``resume_search(RUN_ID)`` continues after its last
completed step; with latencies from the store's cache it makes the same
choices as an uninterrupted run. Every random source is seeded from
``SearchConfig.seed``.

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
import platform
import random
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.reinforce import ReinforceAgent, ReinforceConfig
from devices.base import DeviceUnavailable, MeasureConfig
from devices.interleaved import InterleavedConfig
from devices.registry import make_device
from harness.compile.export import export_onnx
from harness.compile.targets import resolve_target
from harness.compile.tuning import TuningConfig
from harness.data import load_dataset
from harness.models import build_model
from harness.paths import default_cache_dir
from harness.pipeline import Pipeline, PipelineError, Prepared, RatioResult, StoreKey
from harness.pruning import ArchSpec, count_macs_params, find_groups, full_spec, rebuild
from harness.search.candidate import CandidateEvaluator, CandidateResult, StageTimer
from harness.search.env import EnvConfig, PruningEnv
from harness.search.latency_mode import DEFAULT_CONFIRM_TOP_K, build_latency_mode, check_latency_option
from harness.search.pareto import pareto_front, write_pareto
from harness.search.reward import RewardWeights
from harness.store import ResultsStore
from harness.train import evaluate, finetune, load_or_train_baseline

__all__ = [
    "SearchAborted", "SearchConfig", "run_search", "resume_search", "load_config_file",
    "load_best_model", "pareto_front",
]

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
#: How a run shows progress: a tqdm bar, plain time-stamped lines (logs), or nothing.
PROGRESS_MODES = ("bar", "lines", "off")
#: Relative change of the unpruned model's absolute p50 since it was cached beyond which a run says the
#: machine changed (load, firmware, clock): 10 %, the CoV threshold of an unstable measurement (pyperf's
#: rule, devices/stats.py). Reported only: the reward ranks on ratios measured side by side.
DRIFT_TOLERANCE = 0.10


class SearchAborted(RuntimeError):
    """The search cannot go on (the unpruned model could not be measured, a farm ran out of
    healthy boards). Everything measured before is in the results store; the run can be resumed."""


@dataclass(frozen=True, slots=True)
class SearchConfig:
    """Every option of a search; the CLI flags and the TOML config file map one to one.

    Attributes:
        model: zoo model name.
        dataset: dataset name (``fashion-mnist``).
        device: device name: ``local``, ``sim:PROFILE``, ``ssh:BOARD`` or ``farm:TAG``.
        target: target preset or TVM JSON target.
        inventory: farm inventory TOML (needed by ``ssh:`` and ``farm:`` devices).
        fallback: ``farm:`` only — ``fail`` or ``sim`` when no healthy board is left
            (None = the inventory's ``[farm] fallback``).
        backend: ``tvm`` (the compiled artifact) or ``onnxruntime`` (the ONNX file, labelled).
        episodes: number of episodes (≥ 1).
        max_steps: step limit per episode (≥ 2).
        latency_target: an episode ends once the target metric ≤ this × the unpruned value.
        target_metric: ``latency`` (measured p50) or ``macs``.
        alpha, beta, gamma: reward weights (seed §3.1).
        seed: seeds data splits, training, policy and sampling.
        tune_trials: MetaSchedule trials per task (0 = untuned, labelled so).
        train_epochs: epochs of the baseline (cached by model, dataset, seed, epochs).
        finetune_epochs: epochs of fine-tuning for the best candidate (0 = none).
        step_fraction: share of a group's original filters one action removes.
        round_to: kept widths stay on multiples of this (channels; 1 = off). Default 8: a finite set
            of tuning tasks that ``hilprune tune --grid 8`` warms once per target, after which no
            candidate tunes (:mod:`harness.compile.grid`; DESIGN.md §4).
        importance: group magnitude criterion (``l1``).
        reinforce: ``per_step`` (the seed's update) or ``episodic`` (discounted returns).
        discount: γ of the episodic return.
        baseline: ``none`` or ``moving_average`` (episodic only).
        eval_samples: validation images per candidate (0 = the whole validation split).
        subset: cap on each data split (tests; None = full data).
        repeat: timed blocks per absolute measurement (the unpruned model's).
        ratio_width: a candidate's latency ratio against the unpruned model is timed interleaved until
            its bootstrap interval is narrower than ± this fraction of the ratio (0.01 = ±1 %) ...
        max_pairs: ... or at this many interleaved pairs (the cap; ``devices.interleaved``).
        cache_drift_tolerance: the run reports (``latency_cache_drift``) and says when the unpruned
            model's fresh absolute p50 is off its cached one by more than this fraction
            (DRIFT_TOLERANCE); cached ratios are reused either way (they are against the same
            reference artifact, measured side by side).
        out: run directories go to ``out/RUN_ID``.
        db: results store path.
        cache_dir: baselines, artifacts, tuning databases (None = default_cache_dir()).
        data_root: dataset directory override.
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
    device: str = "local"
    target: str = "host"
    backend: str = "tvm"
    inventory: str | None = None
    fallback: str | None = None
    episodes: int = 3
    max_steps: int = 4
    latency_target: float = 0.8
    target_metric: str = "latency"
    alpha: float = 2.0
    beta: float = 0.5
    gamma: float = 1.0
    seed: int = 0
    tune_trials: int = 8
    train_epochs: int = 3
    finetune_epochs: int = 1
    step_fraction: float = 0.25
    round_to: int = 8
    importance: str = "l1"
    reinforce: str = "per_step"
    discount: float = 0.99
    baseline: str = "none"
    eval_samples: int = 2000
    subset: int | None = None
    repeat: int = 30
    ratio_width: float = 0.01
    max_pairs: int = 64
    cache_drift_tolerance: float = DRIFT_TOLERANCE
    out: str = "results/runs"
    db: str = "results/hilprune.db"
    cache_dir: str | None = None
    data_root: str | None = None
    latency: str | None = None
    confirm_top_k: int = DEFAULT_CONFIRM_TOP_K

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # a TOML value of the wrong type names its option (not a TypeError)
            value = getattr(self, f.name)
            if f.type in ("str", "str | None") and not (isinstance(value, str) or (value is None and "None" in f.type)):
                raise ValueError(f"option {f.name!r} must be a string, got {type(value).__name__} {value!r}")
            if f.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"option {f.name!r} must be a number, got {type(value).__name__} {value!r}")
        from harness.pruning import IMPORTANCES

        if self.importance not in IMPORTANCES:
            raise ValueError(f"importance={self.importance!r} must be one of {', '.join(IMPORTANCES)}")
        for name in ("episodes", "max_steps", "tune_trials", "train_epochs", "finetune_epochs", "eval_samples",
                     "repeat", "seed", "confirm_top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {self.repeat}")
        if not (isinstance(self.ratio_width, (int, float)) and 0 < self.ratio_width < 1):
            raise ValueError(f"ratio_width must be a fraction in (0, 1), e.g. 0.01 for ±1 %, got {self.ratio_width!r}")
        if not isinstance(self.max_pairs, int) or isinstance(self.max_pairs, bool) or self.max_pairs < 8:
            raise ValueError(f"max_pairs must be an integer >= 8, got {self.max_pairs!r}")
        if not self.cache_drift_tolerance > 0:
            raise ValueError(f"cache_drift_tolerance must be > 0 (e.g. 0.1, or inf), got {self.cache_drift_tolerance}")
        if self.subset is not None and self.subset < 1:
            raise ValueError(f"subset must be >= 1, got {self.subset}")
        if self.fallback not in (None, "fail", "sim"):
            raise ValueError(f"fallback={self.fallback!r} must be 'fail' or 'sim'")
        if self.backend not in ("tvm", "onnxruntime"):
            raise ValueError(f"backend={self.backend!r} must be 'tvm' or 'onnxruntime'")
        check_latency_option(self.latency, device=self.device, backend=self.backend, tune_trials=self.tune_trials)
        # the value objects validate the rest with their own field names
        RewardWeights(self.alpha, self.beta, self.gamma)
        EnvConfig(step_fraction=self.step_fraction, max_steps=self.max_steps, latency_target=self.latency_target,
                  target_metric=self.target_metric, round_to=self.round_to)
        ReinforceConfig(mode=self.reinforce, discount=self.discount, baseline=self.baseline)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> SearchConfig:
        """Build from a dict (a TOML file, a saved ``config.json``); unknown keys are an error.

        Keys may use ``-`` or ``_`` (``tune-trials`` = ``tune_trials``).

        Raises:
            ValueError: an unknown key (listing the valid ones) or a bad value.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        clean = {}
        for key, value in values.items():
            k = key.replace("-", "_")
            if k not in names:
                raise ValueError(f"{source}: unknown search option {key!r}; valid options: {', '.join(sorted(names))}")
            clean[k] = value
        try:
            return cls(**clean)
        except (TypeError, ValueError) as exc:  # a bad value names the file it came from, too
            raise ValueError(f"{source}: {exc}") from None


def load_config_file(path: Path | str) -> dict[str, Any]:
    """Read a TOML search config: top-level keys or a ``[search]`` table, named like the CLI flags.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid TOML (with the line), or unknown keys.
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
    SearchConfig.from_dict(data, source=str(path))  # validate names and values early
    return data


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


def _tie(a: CandidateResult, b: CandidateResult) -> bool:
    """True when the two latency ratios' intervals overlap: neither is faster beyond noise (devices.stats.tie)."""
    if None in (*a.ratio_ci, *b.ratio_ci):
        return False
    return not (a.ratio_ci[1] < b.ratio_ci[0] or b.ratio_ci[1] < a.ratio_ci[0])


def _public(result: CandidateResult, test_top1: float | None = None) -> dict:
    return {
        "spec": list(result.spec.channels),
        "arch_signature": result.spec.signature(),
        "val_top1": result.top1,
        "top1": test_top1,
        "macs": result.macs,
        "params": result.params,
        "latency_p50_ms": result.latency_p50_ms,
        "latency_ratio": result.latency_ratio,
        "latency_ratio_ci": list(result.ratio_ci),
        "source": result.source,
    }


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
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != 1:
        raise ValueError(f"checkpoint {path} is not a hilprune checkpoint (format_version 1); move it away to "
                         f"restart the run from its first step")
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
        self.splits = load_dataset(config.dataset, root=data_root, seed=config.seed, subset=config.subset)
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
        self.env = None
        self.position: tuple[int, int] = (-1, 0)  # (episode, step) being evaluated, for messages

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
                c.model, c.dataset, seed=c.seed, epochs=c.train_epochs, cache_dir=self.cache_dir,
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
            weights=RewardWeights(c.alpha, c.beta, c.gamma), evaluator=self.evaluator, base_spec=self.base_spec,
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
        where = f"board {self.board} of {c.device}" if self.board else self.evaluator.device.name
        self.say(f"unpruned model: p50 {b.latency_p50_ms:.3f} ms ({b.source} on {where}), val top-1 {b.top1:.4f}, "
                 f"{b.macs:,} MACs; searching {c.episodes} episodes x {c.max_steps} steps")
        self.env = PruningEnv(self.evaluator, self.groups, self.baseline, EnvConfig(
            step_fraction=c.step_fraction, max_steps=c.max_steps, latency_target=c.latency_target,
            target_metric=c.target_metric, round_to=c.round_to,
            weights=RewardWeights(c.alpha, c.beta, c.gamma)))
        self.agent = ReinforceAgent(self.env.observation_space, self.env.action_space, ReinforceConfig(
            seed=c.seed, mode=c.reinforce, discount=c.discount, baseline=c.baseline))

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
        episode, step = self.position
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
        from harness.search.reward import compute_reward

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
        weights = RewardWeights(self.config.alpha, self.config.beta, self.config.gamma)
        for row in self.store.candidates(self.run_id):
            if row["episode"] < 0:
                self.store.update_candidate_latency(self.run_id, row["episode"], row["step"], b)
                continue
            if row["error_kind"] is not None or row["latency_p50_ms"] is None:
                continue
            cand = ev.evaluate(ArchSpec(tuple(json.loads(row["spec_json"]))))
            terms = None if not cand.ok else compute_reward(
                top1=cand.top1, macs=cand.macs, latency_p50_ms=cand.latency_p50_ms, base_top1=b.top1,
                base_macs=b.macs, base_latency_p50_ms=b.latency_p50_ms, weights=weights,
                latency_ratio=cand.latency_ratio)
            self.store.update_candidate_latency(self.run_id, row["episode"], row["step"], cand, terms)
        if self.env is not None:
            self.env.baseline = b
            current = self.env.current
            fresh = b if current.spec == b.spec else ev.evaluate(current.spec)
            self.env.restore(tuple(int(k) for k in self.env.kept), self.env.steps, fresh)
        if getattr(self, "best_spec", None) is not None:
            best = ev.evaluate(self.best_spec)
            if best.ok:
                terms = compute_reward(top1=best.top1, macs=best.macs, latency_p50_ms=best.latency_p50_ms,
                                       base_top1=b.top1, base_macs=b.macs, base_latency_p50_ms=b.latency_p50_ms,
                                       weights=weights, latency_ratio=best.latency_ratio)
                self.best_key = (self.env.target_met(best) if self.env else self.best_key[0], terms.reward)
                self.best_result = best

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
        if self.env is not None:
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

    # -- the loop ---------------------------------------------------------------
    def loop(self, ckpt: dict | None) -> None:
        """Episodes × steps; a checkpoint after every step; resumes from ``ckpt`` if given."""
        from tqdm import tqdm

        c, env, agent = self.config, self.env, self.agent
        self.best_spec: ArchSpec | None = None
        self.best_result: CandidateResult | None = None  # for progress display only (no re-evaluation)
        self.best_key: tuple | None = None
        start_episode, start_step, obs, info = 0, 0, None, None
        if ckpt is not None:
            agent.load_state_dict(ckpt["agent"])
            self.timer.seconds.update(ckpt["timer"])
            if ckpt["best_spec"] is not None:
                self.best_spec, self.best_key = ArchSpec(tuple(ckpt["best_spec"])), tuple(ckpt["best_key"])
            start_episode, start_step = ckpt["episode"], ckpt["step"]
            if ckpt["episode_done"] and start_episode + 1 >= c.episodes:
                return  # killed after the last step, before the end: only finish() is left
            if ckpt["episode_done"]:
                start_episode, start_step = start_episode + 1, 0
            else:
                current = (self.baseline if ckpt["current_spec"] is None
                           else self.evaluator.evaluate(ArchSpec(tuple(ckpt["current_spec"]))))
                obs, info = env.restore(tuple(ckpt["kept"]), ckpt["env_steps"], current)
        total = c.episodes * c.max_steps
        done_before = min(total, start_episode * c.max_steps + start_step)
        bar = tqdm(total=total, initial=done_before, disable=not self.progress, desc="search", unit="step")
        steps_this_call = 0
        try:
            for episode in range(start_episode, c.episodes):
                first = start_step if episode == start_episode else 0
                if first == 0:
                    obs, info = env.reset(seed=c.seed + episode)
                for step in range(first + 1, c.max_steps + 1):
                    t0 = time.perf_counter()
                    mask = info["action_mask"]
                    action, _ = agent.act(obs, mask)
                    self.timer.add("agent", time.perf_counter() - t0)
                    self.position = (episode, step)
                    next_obs, reward, terminated, truncated, info = env.step(action)
                    t0 = time.perf_counter()
                    agent.observe(obs, action, reward, mask)
                    episode_done = terminated or truncated or step == c.max_steps
                    if episode_done:
                        agent.end_episode()
                    self.timer.add("agent", time.perf_counter() - t0)
                    cand = info["candidate"] if info["candidate"] is not None else env.current
                    failed = info["event"] == "failed"
                    self.store.add_candidate(self.run_id, _row(
                        cand, episode=episode, step=step, action=action, reward=reward,
                        terms=None if failed else info["reward_terms"], device=self.evaluator.device.name,
                        target=self.target.name))
                    if (cand.ok and not failed and cand is not self.baseline
                            and (self.latency is None or self.latency.reportable(cand))):
                        met = env.target_met(cand)
                        key = (met, reward)
                        if self.best_key is None or key > self.best_key:
                            self.best_spec, self.best_key, self.best_result = cand.spec, key, cand
                    obs = next_obs
                    self._checkpoint(episode, step, episode_done)
                    bar.update(1)
                    self._postfix(bar, episode)
                    if self.progress_mode == "lines":
                        self.say(self._step_line(episode, step, action, reward, cand, failed))
                    steps_this_call += 1
                    if self.interrupt_after_steps is not None and steps_this_call >= self.interrupt_after_steps:
                        raise KeyboardInterrupt("interrupt_after_steps reached")
                    if episode_done:
                        bar.update(c.max_steps - step)
                        break
        finally:
            bar.close()

    def _step_line(self, episode: int, step: int, action: int, reward: float, cand: CandidateResult,
                   failed: bool) -> str:
        c = self.config
        head = f"episode {episode + 1}/{c.episodes} step {step}/{c.max_steps}: action {action}, reward {reward:+.3f}"
        if failed or not cand.ok:
            first = ((cand.error_message or "").strip().splitlines() or [""])[0]
            what = f"FAILED {cand.error_kind}: {first[:160]}"
        else:
            lo, hi = cand.ratio_ci
            ci = f"[{lo:.3f}, {hi:.3f}]" if lo is not None else f"({cand.source})"
            what = (f"latency {cand.latency_ratio:.3f}x unpruned {ci}"
                    f"{' cached' if cand.latency_cache_hit else ''} (p50 {cand.latency_p50_ms:.3f} ms), "
                    f"val top-1 {cand.top1:.4f}")
        best = self.best_result
        tail = (f"; best so far {best.latency_ratio:.3f}x at top-1 {best.top1:.4f}"
                if best is not None and best.ok else "")
        if best is not None and best is not cand and cand.ok and not failed and _tie(cand, best):
            tail += " (latency within noise of the best: a tie)"
        return f"{head}, {what}{tail}"

    def _postfix(self, bar, episode: int) -> None:
        if not self.progress:
            return
        best = self.best_result  # a resumed run shows its earlier best from the next better one on
        bar.set_postfix(ep=episode, best_r=f"{self.best_key[1]:.3f}" if self.best_key else "-",
                        best_lat=f"{best.latency_ratio:.3f}" if best else "-",
                        best_top1=f"{best.top1:.3f}" if best else "-")

    def _checkpoint(self, episode: int, step: int, episode_done: bool) -> None:
        env = self.env
        _atomic_torch_save({
            "format_version": 1, "episode": episode, "step": step, "episode_done": episode_done,
            "kept": [int(k) for k in env.kept], "env_steps": env.steps,
            "current_spec": None if env.current is self.baseline else list(env.current.spec.channels),
            "agent": self.agent.state_dict(), "timer": dict(self.timer.seconds),
            "board": self.board, "board_changes": self.board_changes, "source_switch": self.source_switch,
            "best_spec": list(self.best_spec.channels) if self.best_spec is not None else None,
            "best_key": list(self.best_key) if self.best_key is not None else None,
            "latency_mode": self.latency.mode if self.latency is not None else None,
        }, self.run_dir / CHECKPOINT)

    # -- the end ----------------------------------------------------------------
    def _final_ratio(self, final: Prepared, backend: str | None = None) -> RatioResult:
        """The fine-tuned best model timed interleaved with the unpruned one, in one session, on one board."""
        ev = self.evaluator
        return ev.pipeline.measure_ratio(ev.reference, final, StoreKey(self.config.model, self.best_spec.signature(),
                                                                       {"command": "search", "final": True}),
                                         ev.key(self.base_spec), backend=backend, expect_source=self.baseline.source)

    @staticmethod
    def _speedup(r: RatioResult) -> dict:
        """Speedup figures of a final ratio: 1 / ratio, its interval, per-round values, and a noise verdict."""
        q = r.ratio
        rounds = list(q.ratios) if r.measurement is None else list(r.measurement.round_ratios[0])
        return {"speedup": 1.0 / q.median, "speedup_ci": [1.0 / q.ci_high, 1.0 / q.ci_low],
                "speedup_rounds": [1.0 / x for x in rounds], "latency_ratio": q.median,
                "latency_ratio_ci": [q.ci_low, q.ci_high], "pairs": r.measurement.pairs if r.measurement else None,
                "within_noise": q.ci_low <= 1.0 <= q.ci_high,
                "baseline_p50_ms": r.reference_p50_ms, "best_p50_ms": r.candidate_p50_ms}

    def finish(self, t_start: float) -> dict:
        """Fine-tune the best, time it interleaved with the unpruned model, write the run directory's files.

        The final speedup is 1 / (the median of interleaved ratios best / unpruned, measured in one
        session on one board), with its bootstrap interval; an interval that holds 1.0 is noise, and
        the summary says so. Beside the TVM build, ONNX Runtime times the same two models the same
        way (``reference_onnxruntime``): a speedup both runtimes see is the model's, one that only
        a weakly tuned TVM build sees is the build's (DESIGN.md §4).

        Returns:
            The summary (also written to ``summary.json``).
        """
        c, ev = self.config, self.evaluator
        base_test = evaluate(self.base_model, self.splits.test)
        best_out, model = None, None
        if self.best_spec is not None:
            best = ev.evaluate(self.best_spec)
            model = ev.prune(self.best_spec)
            test_before = evaluate(model, self.splits.test)
            if c.finetune_epochs > 0:
                self.say(f"best {self.best_spec.signature()}: fine-tuning {c.finetune_epochs} epoch(s)")
                with self.timer.time("finetune"):
                    finetune(model, self.splits, epochs=c.finetune_epochs, seed=c.seed)
            test_after = evaluate(model, self.splits.test)
            macs, params = count_macs_params(model, self.input_shape)
            self.say("final measurement: the fine-tuned best interleaved with the unpruned model"
                     + (" (then ONNX Runtime the same way)" if c.backend == "tvm" and self.baseline.source == "measured"
                        else ""))
            final = ev.prepare(self.best_spec, model)
            measured = reference = None
            if isinstance(final, PipelineError):
                final_error = f"{final.kind}: {final.message}"
            else:
                with self.device.pinned(), self.timer.time("measure"):  # a farm: one board for both
                    measured = self._final_ratio(final)
                    if (c.backend == "tvm" and measured.ok and self.baseline.source == "measured"):
                        ort = self._final_ratio(final, backend="onnxruntime")
                        reference = (self._speedup(ort) if ort.ok
                                     else {"error": f"{ort.error.kind}: {ort.error.message}"})
                final_error = None if measured.ok else f"{measured.error.kind}: {measured.error.message}"
                self._save_best(model, self.best_spec, final.path)
            no_ci = best.ratio_ci[0] is None  # a predicted best whose final measurement failed
            figures = self._speedup(measured) if measured is not None and measured.ok else {
                "speedup": 1.0 / best.latency_ratio,
                "speedup_ci": None if no_ci else [1.0 / best.ratio_ci[1], 1.0 / best.ratio_ci[0]],
                "speedup_rounds": [], "latency_ratio": best.latency_ratio, "latency_ratio_ci": list(best.ratio_ci),
                "pairs": None, "within_noise": None if no_ci else best.ratio_ci[0] <= 1.0 <= best.ratio_ci[1],
                "baseline_p50_ms": self.baseline.latency_p50_ms, "best_p50_ms": best.latency_p50_ms}
            best_out = {
                **_public(best, test_after),
                "latency_p50_ms": figures["best_p50_ms"],
                "latency_ratio": figures["latency_ratio"],
                "latency_ratio_ci": figures["latency_ratio_ci"],
                "speedup": figures["speedup"],
                "speedup_ci": figures["speedup_ci"],
                "speedup_rounds": figures["speedup_rounds"],
                "speedup_within_noise": figures["within_noise"],
                "final_pairs": figures["pairs"],
                "baseline_p50_ms_final": figures["baseline_p50_ms"],
                "reference_onnxruntime": reference,
                "macs": macs, "params": params,
                "val_top1_search": best.top1,
                "latency_ratio_search": best.latency_ratio,
                "latency_ratio_ci_search": list(best.ratio_ci),
                "latency_p50_ms_search": best.latency_p50_ms,
                "top1_before_finetune": test_before,
                # set when the fine-tuned model could not be measured: the ratio is then the search's
                "final_error": final_error,
                "top1_drop": base_test - test_after,
                "macs_ratio": best.macs / self.baseline.macs,
                "finetune_epochs": c.finetune_epochs,
                "met_target": bool(self.best_key[0]),
                "reward": self.best_key[1],
                "ties": self._ties(best),
            }
        base_lat = (best_out or {}).get("baseline_p50_ms_final") or self.baseline.latency_p50_ms
        baseline = {**_public(self.baseline, base_test), "latency_p50_ms": base_lat,
                    "latency_p50_ms_search": self.baseline.latency_p50_ms}
        rows = self.store.candidates(self.run_id)
        reported = rows if self.latency is None else [r for r in rows if self.latency.reportable_row(r)]
        front = write_pareto(  # val top-1 and search-time p50 of every candidate; the best one starred
            reported, self.run_dir,
            val_images=min(c.eval_samples or len(self.splits.val), len(self.splits.val)),
            best_signature=best_out and best_out["arch_signature"], best_test_top1=best_out and best_out["top1"],
            finetune_epochs=c.finetune_epochs)
        return {
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "candidates": sum(1 for r in rows if r["episode"] >= 0),
            "evaluator": ev.stats,
            "baseline": baseline,
            "best": best_out,
            "pareto_size": len(front),
            "latency_cache_drift": self.drift,
            "device": c.device,
            "latency_source": self.baseline.source,
            "latency_mode": (self.latency.summary(rows) if self.latency is not None
                             else {"mode": self.baseline.source}),
            "measured_on": self.evaluator.device.name if self.board is None or self.source_switch
            else f"{c.device} (board {self.board})",
            "board": self.board,
            "board_changes": self.board_changes,
            "source_switch": self.source_switch,
            "target": self.target.name,
            "target_dict": self.target.target,
            "backend": c.backend,
            "tuning": {"trials_per_task": c.tune_trials, "tuned": c.tune_trials > 0},
            "baseline_train": {k: v for k, v in self.base_info.items() if k != "history"},
            "stage_seconds": {k: round(v, 3) for k, v in self.timer.seconds.items()},
            "wall_s": round(time.perf_counter() - t_start, 3),
            "versions": {"python": platform.python_version(), "torch": torch.__version__},
        }

    def _ties(self, best: CandidateResult) -> list[str]:
        """Signatures of the run's other candidates whose latency ratio interval overlaps the best's (ties)."""
        out = []
        for row in self.store.candidates(self.run_id):
            lo, hi = row.get("latency_ratio_ci_low"), row.get("latency_ratio_ci_high")
            if row["episode"] < 0 or row["arch_signature"] == best.spec.signature() or lo is None or hi is None:
                continue
            if not (hi < best.ratio_ci[0] or best.ratio_ci[1] < lo) and row["arch_signature"] not in out:
                out.append(row["arch_signature"])
        return out

    def _save_best(self, model: torch.nn.Module, spec_: ArchSpec, artifact_path: Path) -> None:
        spec = list(spec_.channels)
        torch.save({"format_version": 1, "model": self.config.model, "spec": spec,
                    "num_classes": self.splits.num_classes, "input_shape": list(self.input_shape),
                    "state_dict": model.state_dict()}, self.run_dir / "best_model.pt")
        (self.run_dir / "best_spec.json").write_text(json.dumps(
            {"model": self.config.model, "spec": spec, "arch_signature": spec_.signature()}, indent=2))
        export_onnx(model, self.input_shape, self.run_dir / "best_model.onnx")
        dest = self.run_dir / "best_artifact"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(artifact_path, dest)


def load_best_model(run_dir: Path | str) -> tuple[torch.nn.Module, ArchSpec]:
    """Rebuild a run's best model from its spec alone and load its fine-tuned weights.

    Raises:
        FileNotFoundError: the run has no ``best_model.pt`` (it found no candidate).
    """
    path = Path(run_dir) / "best_model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run saved no best model")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    spec = ArchSpec(tuple(saved["spec"]))
    shape = saved["input_shape"]
    model = rebuild(saved["model"], spec, num_classes=saved["num_classes"], in_channels=shape[1],
                    input_shape=tuple(shape[1:]))
    model.load_state_dict(saved["state_dict"], strict=True)
    return model.eval(), spec


def _execute(run: _Run, ckpt: dict | None, t_start: float) -> dict:
    status = "failed"
    try:
        run.setup(ckpt)
        if ckpt is None:
            run.store.add_candidate(run.run_id, _row(run.baseline, episode=-1, step=0, action=None, reward=0.0,
                                                     terms=None, device=run.evaluator.device.name,
                                                     target=run.target.name))
        run.loop(ckpt)
        summary = run.finish(t_start)
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
        progress: ``True``/``"bar"``: a tqdm bar (episode, step, best reward, best latency
            ratio and its top-1); ``"lines"``: one time-stamped line per stage and step on stderr
            (for logs and cron, where a bar would be invisible); ``False``/``"off"``: nothing.
        interrupt_after_steps: test hook — raise KeyboardInterrupt after this many steps,
            as Ctrl-C would.

    Returns:
        A dict with at least ``run_id``, ``run_dir``, ``candidates`` (steps
        evaluated), ``baseline`` and ``best`` (each with ``top1`` — test
        top-1 —, ``macs``, ``params``, ``latency_p50_ms`` measured afresh at
        the end; ``best`` also with ``speedup`` = baseline p50 / best p50 (the
        medians of the interleaved final rounds), ``speedup_rounds`` (each
        round's own baseline/best ratio: their spread is the speedup's
        uncertainty) and ``spec``), ``stage_seconds``, ``wall_s`` and ``latency_mode`` (the mode,
        candidates predicted / measured, the hybrid rule's reasons, the latency table's fit and the
        prediction error on the measured candidates; :meth:`harness.search.latency_mode.LatencyMode.summary`).

    Raises:
        ValueError: bad configuration (unknown model, dataset, device or target).
        harness.data.DatasetError: the dataset is missing or damaged.
        SearchAborted: the unpruned model could not be measured (nothing to compare with),
            or a farm has no healthy board left.
        KeyboardInterrupt: Ctrl-C; the run is marked ``interrupted`` and can be resumed.
    """
    t_start = time.perf_counter()
    _seed_everything(config.seed)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_id = f"{config.model}-{config.device.replace(':', '_')}-s{config.seed}-{stamp}"
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
    cfg = dataclasses.asdict(config)
    (run_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    store.create_run(run.run_id, model=config.model, dataset=config.dataset, device=config.device,
                     target=run.target.name, seed=config.seed, config=cfg)
    return _execute(run, None, t_start)


def resume_search(run_id: str, *, out: str | None = None, db: str | None = None, progress: bool | str = True,
                  interrupt_after_steps: int | None = None) -> dict:
    """Continue run ``run_id`` from its last completed step (see the module doc).

    Args:
        run_id: the run to continue; its directory is ``out/run_id``.
        out, db: where the run directory and the store are (default: the run's own config).

    Raises:
        FileNotFoundError: no such run directory or no config in it.
        ValueError: the run finished already.
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
        store.delete_candidates_after(run_id, ckpt["episode"], ckpt["step"])
    else:
        store.delete_candidates_after(run_id, -2, 0)  # nothing was checkpointed: start over
    store.set_run_status(run_id, "running")
    try:
        run = _Run(config, run_id, run_dir, store, progress=progress, interrupt_after_steps=interrupt_after_steps)
    except BaseException:
        store.close()
        raise
    return _execute(run, ckpt, t_start)
