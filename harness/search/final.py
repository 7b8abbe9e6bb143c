"""The final step of a search: fine-tune the best, measure it interleaved with the unpruned model, write the summary.

After the method spent its budget (:mod:`harness.search.loop`), the run's best candidate (largest
(target met, reward); :class:`harness.search.loop.Recorder`) is pruned from the base model, fine-tuned
``finetune_epochs`` (seeded by ``base_seed``: every method's best is fine-tuned alike), timed
interleaved with the unpruned model in one session on one board (TVM, then ONNX Runtime the same way),
and evaluated on the *test* split. ``summary.json`` keeps the two top-1s apart: ``val_top1`` (the
validation images the search ranked on, before fine-tuning) and ``test_top1`` (the test split, after
fine-tuning; ``test_top1_before_finetune`` before it). The store's ``candidates.top1`` column is the
validation top-1 (its name kept: a rename would need a migration of every stored run).
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from harness.compile.export import export_onnx
from harness.pipeline import PipelineError, Prepared, RatioResult, StoreKey
from harness.pruning import ArchSpec, count_macs_params, rebuild
from harness.search.candidate import CandidateResult
from harness.search.pareto import write_pareto
from harness.train import evaluate, finetune

__all__ = ["final_ratio", "finish", "load_best_model", "public", "save_best", "speedup_figures", "ties"]


def public(result: CandidateResult, test_top1: float | None = None) -> dict:
    return {
        "spec": list(result.spec.channels),
        "arch_signature": result.spec.signature(),
        "val_top1": result.top1,
        "test_top1": test_top1,
        "macs": result.macs,
        "params": result.params,
        "latency_p50_ms": result.latency_p50_ms,
        "latency_ratio": result.latency_ratio,
        "latency_ratio_ci": list(result.ratio_ci),
        "source": result.source,
    }



def final_ratio(run: Any, final: Prepared, backend: str | None = None) -> RatioResult:
    """The fine-tuned best model timed interleaved with the unpruned one, in one session, on one board."""
    ev = run.evaluator
    return ev.pipeline.measure_ratio(ev.reference, final, StoreKey(run.config.model, run.best_spec.signature(),
                                                                   {"command": "search", "final": True}),
                                     ev.key(run.base_spec), backend=backend, expect_source=run.baseline.source)

def speedup_figures(r: RatioResult) -> dict:
    """Speedup figures of a final ratio: 1 / ratio, its interval, per-round values, and a noise verdict."""
    q = r.ratio
    rounds = list(q.ratios) if r.measurement is None else list(r.measurement.round_ratios[0])
    return {"speedup": 1.0 / q.median, "speedup_ci": [1.0 / q.ci_high, 1.0 / q.ci_low],
            "speedup_rounds": [1.0 / x for x in rounds], "latency_ratio": q.median,
            "latency_ratio_ci": [q.ci_low, q.ci_high], "pairs": r.measurement.pairs if r.measurement else None,
            "within_noise": q.ci_low <= 1.0 <= q.ci_high,
            "baseline_p50_ms": r.reference_p50_ms, "best_p50_ms": r.candidate_p50_ms}

def finish(run: Any, t_start: float) -> dict:
    """Fine-tune the best, time it interleaved with the unpruned model, write the run directory's files.

    The final speedup is 1 / (the median of interleaved ratios best / unpruned, measured in one
    session on one board), with its bootstrap interval; an interval that holds 1.0 is noise, and
    the summary says so. Beside the TVM build, ONNX Runtime times the same two models the same
    way (``reference_onnxruntime``): a speedup both runtimes see is the model's, one that only
    a weakly tuned TVM build sees is the build's (DESIGN.md §4).

    Returns:
        The summary (also written to ``summary.json``).
    """
    c, ev = run.config, run.evaluator
    base_test = evaluate(run.base_model, run.splits.test)
    best_out, model = None, None
    if run.best_spec is not None:
        best = ev.evaluate(run.best_spec)
        model = ev.prune(run.best_spec)
        test_before = evaluate(model, run.splits.test)
        if c.finetune_epochs > 0:
            run.say(f"best {run.best_spec.signature()}: fine-tuning {c.finetune_epochs} epoch(s)")
            with run.timer.time("finetune"):
                finetune(model, run.splits, epochs=c.finetune_epochs, seed=c.base_seed)
        test_after = evaluate(model, run.splits.test)
        macs, params = count_macs_params(model, run.input_shape)
        run.say("final measurement: the fine-tuned best interleaved with the unpruned model"
                 + (" (then ONNX Runtime the same way)" if c.backend == "tvm" and run.baseline.source == "measured"
                    else ""))
        final = ev.prepare(run.best_spec, model)
        measured = reference = None
        if isinstance(final, PipelineError):
            final_error = f"{final.kind}: {final.message}"
        else:
            with run.device.pinned(), run.timer.time("measure"):  # a farm: one board for both
                measured = final_ratio(run, final)
                if (c.backend == "tvm" and measured.ok and run.baseline.source == "measured"):
                    ort = final_ratio(run, final, backend="onnxruntime")
                    reference = (speedup_figures(ort) if ort.ok
                                 else {"error": f"{ort.error.kind}: {ort.error.message}"})
            final_error = None if measured.ok else f"{measured.error.kind}: {measured.error.message}"
            save_best(run, model, run.best_spec, final.path)
        no_ci = best.ratio_ci[0] is None  # a predicted best whose final measurement failed
        figures = speedup_figures(measured) if measured is not None and measured.ok else {
            "speedup": 1.0 / best.latency_ratio,
            "speedup_ci": None if no_ci else [1.0 / best.ratio_ci[1], 1.0 / best.ratio_ci[0]],
            "speedup_rounds": [], "latency_ratio": best.latency_ratio, "latency_ratio_ci": list(best.ratio_ci),
            "pairs": None, "within_noise": None if no_ci else best.ratio_ci[0] <= 1.0 <= best.ratio_ci[1],
            "baseline_p50_ms": run.baseline.latency_p50_ms, "best_p50_ms": best.latency_p50_ms}
        best_out = {
            **public(best, test_after),
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
            "test_top1_before_finetune": test_before,
            # set when the fine-tuned model could not be measured: the ratio is then the search's
            "final_error": final_error,
            "test_top1_drop": base_test - test_after,
            "macs_ratio": best.macs / run.baseline.macs,
            "finetune_epochs": c.finetune_epochs,
            "met_target": bool(run.best_key[0]),
            "reward": run.best_key[1],
            "ties": ties(run, best),
        }
    base_lat = (best_out or {}).get("baseline_p50_ms_final") or run.baseline.latency_p50_ms
    baseline = {**public(run.baseline, base_test), "latency_p50_ms": base_lat,
                "latency_p50_ms_search": run.baseline.latency_p50_ms}
    rows = run.store.candidates(run.run_id)
    latency = getattr(run, "latency", None)  # hybrid: the front is made of measured candidates only
    reported = rows if latency is None else [r for r in rows if latency.reportable_row(r)]
    front = write_pareto(  # val top-1 and search-time latency ratio of every candidate; the best one starred
        reported, run.run_dir,
        val_images=min(c.eval_samples or len(run.splits.val), len(run.splits.val)),
        best_signature=best_out and best_out["arch_signature"], best_test_top1=best_out and best_out["test_top1"],
        finetune_epochs=c.finetune_epochs)
    return {
        "run_id": run.run_id,
        "run_dir": str(run.run_dir),
        "method": c.method,
        "seed": c.seed,
        "base_seed": c.base_seed,
        # evaluated candidates (the budget's unit: cache hits and failures count); rows stored = the same
        "candidates": run.budget.spent,
        "budget": run.budget.limit,
        "early_stop": run.early_stopped_at,
        "episodes": run.episodes_done,
        "evaluator": ev.stats,
        "baseline": baseline,
        "best": best_out,
        "pareto_size": len(front),
        "latency_cache_drift": run.drift,
        "device": c.device,
        "latency_source": run.baseline.source,
        "latency_mode": latency.summary(rows) if latency is not None else {"mode": run.baseline.source},
        "measured_on": run.evaluator.device.name if run.board is None or run.source_switch
        else f"{c.device} (board {run.board})",
        "board": run.board,
        "board_changes": run.board_changes,
        "source_switch": run.source_switch,
        "target": run.target.name,
        "target_dict": run.target.target,
        "backend": c.backend,
        "tuning": {"trials_per_task": c.tune_trials, "tuned": c.tune_trials > 0},
        "baseline_train": {k: v for k, v in run.base_info.items() if k != "history"},
        "stage_seconds": {k: round(v, 3) for k, v in run.timer.seconds.items()},
        "wall_s": round(time.perf_counter() - t_start, 3),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }


def ties(run: Any, best: CandidateResult) -> list[str]:
    """Signatures of the run's other candidates whose latency ratio interval overlaps the best's (ties)."""
    out = []
    for row in run.store.candidates(run.run_id):
        lo, hi = row.get("latency_ratio_ci_low"), row.get("latency_ratio_ci_high")
        if row["episode"] < 0 or row["arch_signature"] == best.spec.signature() or lo is None or hi is None:
            continue
        if not (hi < best.ratio_ci[0] or best.ratio_ci[1] < lo) and row["arch_signature"] not in out:
            out.append(row["arch_signature"])
    return out


def save_best(run: Any, model: torch.nn.Module, spec_: ArchSpec, artifact_path: Path) -> None:
    """Write the fine-tuned best model: state dict with its spec, spec JSON, ONNX and the TVM artifact."""
    spec = list(spec_.channels)
    torch.save({"format_version": 1, "model": run.config.model, "spec": spec,
                "num_classes": run.splits.num_classes, "input_shape": list(run.input_shape),
                "state_dict": model.state_dict()}, run.run_dir / "best_model.pt")
    (run.run_dir / "best_spec.json").write_text(json.dumps(
        {"model": run.config.model, "spec": spec, "arch_signature": spec_.signature()}, indent=2))
    export_onnx(model, run.input_shape, run.run_dir / "best_model.onnx")
    dest = run.run_dir / "best_artifact"
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

