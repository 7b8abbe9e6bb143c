"""The main job: an RL search for a pruned architecture that is faster on the device.

Seed document ``../shared/seed/`` §3.2 (the loop) and §4.4 (training code);
DESIGN.md §1–§6. One run:

1. load the data (fixed seeded splits) and the trained baseline (trained and
   cached on first use);
2. find the prunable groups; evaluate the unpruned model (accuracy, MACs,
   compile + tune for the target, measure on the device) — the reference of
   every ΔP, ΔC, ΔH;
3. for each episode, reset the env and let REINFORCE pick actions, updating
   after every step (seed §3.2); every candidate goes to the results store;
4. pick the best candidate that met the target (else the best reward),
   optionally fine-tune it, measure it again afresh, and write ``summary.json``.

Every random source is seeded from ``SearchConfig.seed``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from agent.reinforce import ReinforceAgent, ReinforceConfig
from devices.base import MeasureConfig, make_device
from harness.candidate import CandidateEvaluator, CandidateResult, StageTimer
from harness.data import load_dataset
from harness.env import EnvConfig, PruningEnv
from harness.models import build_model
from harness.pruning import ArchSpec, find_groups, full_spec
from harness.reward import RewardWeights
from harness.store import ResultsStore
from harness.targets import resolve_target
from harness.train import evaluate, finetune, load_or_train_baseline
from harness.tuning import TuningConfig

__all__ = ["SearchConfig", "run_search", "default_cache_dir"]

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """Cache root for baselines, artifacts and tuning databases: ``$HILPRUNE_CACHE`` or ``results/cache``."""
    return Path(os.environ.get("HILPRUNE_CACHE", "results/cache"))


@dataclass(frozen=True, slots=True)
class SearchConfig:
    """Every option of a search; the CLI flags map one to one.

    Attributes:
        model: zoo model name.
        dataset: dataset name (``fashion-mnist``).
        device: device name (``local``).
        target: target preset or TVM JSON target.
        episodes: number of episodes (≥ 1).
        max_steps: step limit per episode (≥ 2).
        latency_target: stop an episode once p50 ≤ this × the unpruned p50.
        alpha, beta, gamma: reward weights (seed §3.1).
        seed: seeds data splits, training, policy and sampling.
        tune_trials: MetaSchedule trials per task (0 = untuned, labelled so).
        train_epochs: epochs of the baseline (cached by model, dataset, seed, epochs).
        finetune_epochs: epochs of fine-tuning for the best candidate (0 = none).
        step_fraction: share of a group's original filters one action removes.
        eval_samples: validation images per candidate (0 = the whole validation split).
        subset: cap on each data split (tests; None = full data).
        repeat: timed blocks per measurement.
        out: run directories go to ``out/RUN_ID``.
        db: results store path.
        cache_dir: baselines, artifacts, tuning databases (None = default_cache_dir()).
        data_root: dataset directory override.
    """

    model: str = "resnet20"
    dataset: str = "fashion-mnist"
    device: str = "local"
    target: str = "host"
    episodes: int = 3
    max_steps: int = 4
    latency_target: float = 0.8
    alpha: float = 2.0
    beta: float = 0.5
    gamma: float = 1.0
    seed: int = 0
    tune_trials: int = 8
    train_epochs: int = 4
    finetune_epochs: int = 1
    step_fraction: float = 0.25
    eval_samples: int = 2000
    subset: int | None = None
    repeat: int = 30
    out: str = "results/runs"
    db: str = "results/hilprune.db"
    cache_dir: str | None = None
    data_root: str | None = None

    def __post_init__(self) -> None:
        for name in ("episodes", "max_steps", "tune_trials", "train_epochs", "finetune_epochs", "eval_samples", "repeat"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {self.episodes}")
        if self.max_steps < 2:
            raise ValueError(f"--max-steps must be >= 2, got {self.max_steps}")
        if self.repeat < 1:
            raise ValueError(f"--repeat must be >= 1, got {self.repeat}")
        if self.subset is not None and self.subset < 1:
            raise ValueError(f"--subset must be >= 1, got {self.subset}")
        # the value objects below validate the rest with their own field names
        RewardWeights(self.alpha, self.beta, self.gamma)
        EnvConfig(step_fraction=self.step_fraction, max_steps=self.max_steps, latency_target=self.latency_target)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _row(result: CandidateResult, *, episode: int, step: int, action: int | None, reward: float, terms, device: str, target: str) -> dict:
    return dict(
        episode=episode, step=step, action=action, arch_signature=result.spec.signature(),
        spec_json=json.dumps(list(result.spec.channels)), top1=result.top1, macs=result.macs, params=result.params,
        latency_p50_ms=result.latency_p50_ms, latency_raw_ms=json.dumps(list(result.latency_raw_ms)),
        measurement_id=result.measurement_id, device=device, target=target, source=result.source,
        reward=reward, delta_p=getattr(terms, "delta_p", None), delta_c=getattr(terms, "delta_c", None),
        delta_h=getattr(terms, "delta_h", None), latency_cache_hit=int(result.latency_cache_hit),
        error_kind=result.error_kind, error_message=result.error_message,
    )


def _public(result: CandidateResult, test_top1: float | None = None) -> dict:
    return {
        "spec": list(result.spec.channels),
        "arch_signature": result.spec.signature(),
        "val_top1": result.top1,
        "top1": test_top1,
        "macs": result.macs,
        "params": result.params,
        "latency_p50_ms": result.latency_p50_ms,
        "source": result.source,
    }


def run_search(config: SearchConfig, *, progress: bool = True) -> dict:
    """Run one search end to end and return its summary (also written to ``summary.json``).

    Returns:
        A dict with at least ``run_id``, ``run_dir``, ``candidates`` (number
        evaluated), ``baseline`` and ``best`` (each with ``top1`` — test
        top-1 —, ``macs``, ``params``, ``latency_p50_ms``; ``best`` also with
        ``speedup`` = baseline p50 / best p50, and ``spec``), ``stage_seconds``
        and ``wall_s``.

    Raises:
        ValueError: bad configuration (unknown model, dataset, device or target).
        harness.data.DatasetError: the dataset is missing or damaged.
        devices errors are *values* inside the loop; a failed baseline raises
        RuntimeError since nothing can be compared with it.
    """
    t_start = time.perf_counter()
    _seed_everything(config.seed)
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    target = resolve_target(config.target)
    build_model(config.model)  # unknown model: clear error before any work
    device = make_device(config.device)
    data_root = Path(config.data_root) if config.data_root else None
    try:
        splits = load_dataset(config.dataset, root=data_root, seed=config.seed, subset=config.subset)
    except BaseException:
        device.close()
        raise
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_id = f"{config.model}-{config.device.replace(':', '_')}-s{config.seed}-{stamp}"
    run_dir = Path(config.out) / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    cfg = dataclasses.asdict(config)
    (run_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    store = ResultsStore(config.db)
    store.create_run(run_id, model=config.model, dataset=config.dataset, device=config.device,
                     target=target.name, seed=config.seed, config=cfg)
    timer = StageTimer()
    status = "failed"
    try:
        with timer.time("train"):
            base_model, base_info = load_or_train_baseline(
                config.model, config.dataset, seed=config.seed, epochs=config.train_epochs,
                cache_dir=cache_dir, data_root=data_root,
                progress=progress, splits=splits,
            )
        input_shape = (1, *splits.input_shape)
        groups = find_groups(base_model, torch.zeros(input_shape))
        evaluator = CandidateEvaluator(
            model_name=config.model, base_model=base_model, groups=groups, input_shape=input_shape,
            val_data=splits.val, device=device, target=target,
            tuning=TuningConfig(trials_per_task=config.tune_trials),
            measure=MeasureConfig(number=0, repeat=config.repeat, min_repeat_ms=20.0), cache_dir=cache_dir, work_dir=run_dir,
            store=store, eval_samples=config.eval_samples or None, timer=timer,
        )
        base_spec = full_spec(groups)
        baseline = evaluator.evaluate(base_spec)
        if not baseline.ok:
            raise RuntimeError(f"the unpruned {config.model} could not be measured: {baseline.error_kind}: {baseline.error_message}")
        store.add_candidate(run_id, _row(baseline, episode=-1, step=0, action=None, reward=0.0, terms=None,
                                         device=config.device, target=target.name))
        weights = RewardWeights(config.alpha, config.beta, config.gamma)
        env = PruningEnv(evaluator, groups, baseline, EnvConfig(
            step_fraction=config.step_fraction, max_steps=config.max_steps,
            latency_target=config.latency_target, weights=weights))
        agent = ReinforceAgent(env.observation_space, env.action_space, ReinforceConfig(seed=config.seed))
        best = _loop(config, env, agent, store, run_id, target.name, timer, progress)

        report = _finish(config, evaluator, splits, base_model, baseline, best, run_dir, timer)
        summary = {
            "run_id": run_id,
            "run_dir": str(run_dir),
            "candidates": len(store.candidates(run_id)) - 1,
            "evaluator": evaluator.stats,
            **report,
            "device": config.device,
            "target": target.name,
            "target_dict": target.target,
            "tuning": {"trials_per_task": config.tune_trials, "tuned": config.tune_trials > 0},
            "baseline_train": base_info if isinstance(base_info, dict) else dataclasses.asdict(base_info),
            "stage_seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
            "wall_s": round(time.perf_counter() - t_start, 3),
            "versions": {"python": platform.python_version(), "torch": torch.__version__},
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
        status = "finished"
        return summary
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        store.finish_run(run_id, status, None if status != "finished" else json.loads((run_dir / "summary.json").read_text()))
        store.close()
        device.close()


def _loop(config, env, agent, store, run_id, target_name, timer, progress) -> CandidateResult | None:
    """Episodes × steps of per-step REINFORCE; returns the best candidate (see ``_better``)."""
    from tqdm import tqdm

    best: CandidateResult | None = None
    best_key: tuple | None = None
    total = config.episodes * config.max_steps
    bar = tqdm(total=total, disable=not progress, desc="search", unit="step")
    try:
        for episode in range(config.episodes):
            obs, info = env.reset(seed=config.seed + episode)
            for step in range(1, config.max_steps + 1):
                t0 = time.perf_counter()
                mask = info["action_mask"]
                action, _ = agent.act(obs, mask)
                timer.add("agent", time.perf_counter() - t0)
                next_obs, reward, terminated, truncated, info = env.step(action)
                t0 = time.perf_counter()
                agent.update(obs, action, reward, mask)
                timer.add("agent", time.perf_counter() - t0)
                cand = info["candidate"]
                if cand is None:  # stop or impossible: the state itself is the candidate of this step
                    cand = env.current
                store.add_candidate(run_id, _row(cand, episode=episode, step=step, action=action, reward=reward,
                                                 terms=info["reward_terms"] if info["event"] != "failed" else None,
                                                 device=config.device, target=target_name))
                if cand.ok and info["event"] in ("pruned", "stop") and cand is not env.baseline:
                    met = cand.latency_p50_ms <= config.latency_target * env.baseline.latency_p50_ms
                    key = (met, reward)
                    if best_key is None or key > best_key:
                        best, best_key = cand, key
                bar.update(1)
                bar.set_postfix(ep=episode, best_r=f"{best_key[1]:.3f}" if best_key else "-",
                                lat=f"{info['latency_ratio']:.2f}", top1=f"{info['top1']:.3f}")
                obs = next_obs
                if terminated or truncated:
                    bar.update(config.max_steps - step)
                    break
    finally:
        bar.close()
    return best


def _finish(config, evaluator, splits, base_model, baseline, best, run_dir, timer) -> dict:
    """Test top-1 before/after, optional fine-tune of the best, a fresh measurement."""
    base_test = evaluate(base_model, splits.test)
    out = {"baseline": {**_public(baseline, base_test)}, "best": None}
    if best is None:
        return out
    model = evaluator.prune(best.spec)
    test_before_ft = evaluate(model, splits.test)
    if config.finetune_epochs > 0:
        with timer.time("finetune"):
            finetune(model, splits, epochs=config.finetune_epochs, seed=config.seed)
    test_after = evaluate(model, splits.test)
    final = evaluator.evaluate(best.spec, fresh=True, model=model)
    torch.save({"spec": list(best.spec.channels), "model": config.model, "state_dict": model.state_dict()},
               run_dir / "best_model.pt")
    lat = final.latency_p50_ms if final.ok else best.latency_p50_ms
    out["best"] = {
        **_public(final if final.ok else best, test_after),
        "top1_before_finetune": test_before_ft,
        "latency_p50_ms_search": best.latency_p50_ms,
        "speedup": baseline.latency_p50_ms / lat if lat else None,
        "top1_drop": base_test - test_after,
        "finetune_epochs": config.finetune_epochs,
    }
    return out
