"""The way of one candidate through the harness: prune → evaluate → (the pipeline: export → compile → measure).

DESIGN.md §2 and §6. ``CandidateEvaluator.evaluate(spec)`` takes an
architecture spec (kept channels per prunable group) and returns a
``CandidateResult`` value: accuracy, MACs, params and latency, or an error
kind and message (expected failures are values, never exceptions through the
search loop). Pruning and accuracy are the search's own; everything from the
pruned model to a stored, output-checked latency is
:class:`harness.pipeline.Pipeline` (the one path every command shares).
Latencies are cached in the results store by (model, architecture, device,
target, backend, tuning) *and* the identity of what measured them (source,
board and machine facts, simulator profile and version), so a revisited
architecture is never exported, compiled or measured again on the same
board, and a simulated or another board's number is never served to a run.
Accuracy and MACs are cached per evaluator (deterministic for a base model).
A wrong output (``wrong_output``) is a failed candidate: its latency is
neither stored nor cached, so a fast wrong program earns nothing.

Per-stage wall time is accumulated in ``StageTimer`` for the run summary.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from devices.manifest import ManifestError
from harness.pipeline import Pipeline, PipelineError, PipelineResult, Prepared, StoreKey
from harness.pruning import ArchSpec, PruneGroup, apply_spec, count_macs_params
from harness.train import evaluate

__all__ = ["CandidateResult", "CandidateEvaluator", "StageTimer"]

log = logging.getLogger(__name__)

STAGES = ("train", "prune", "evaluate", "export", "tune", "build", "measure", "agent", "finetune")


class StageTimer:
    """Accumulated wall seconds per pipeline stage (thread-safe)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {s: 0.0 for s in STAGES}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` (≥ 0) to ``stage``."""
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + max(0.0, seconds)

    @contextmanager
    def time(self, stage: str) -> Iterator[None]:
        """Context manager timing its body into ``stage``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0)


@dataclass(frozen=True, slots=True)
class CandidateResult:
    """One evaluated architecture.

    Attributes:
        spec: kept channels per group.
        top1: validation top-1 in [0, 1] (None when pruning failed).
        macs, params: batch-1 MACs (weight-layer multiply-accumulates, the definition of
            harness/pruning.py) and parameter count.
        latency_p50_ms: measured median latency, ms (None on failure).
        latency_raw_ms: raw per-repeat latencies, ms.
        measurement_id: row id in the store's ``measurements``.
        source: ``measured`` (or ``simulated`` for a simulator device).
        latency_cache_hit: latency came from the store, nothing was compiled or measured.
        artifact_sha256: sha256 of the compiled library (None on a cache hit or failure).
        artifact_path: the compiled artifact directory (None on a cache hit or failure).
        error_kind, error_message: set when the candidate failed.
    """

    spec: ArchSpec
    top1: float | None
    macs: int
    params: int
    latency_p50_ms: float | None
    latency_raw_ms: tuple[float, ...] = ()
    measurement_id: int | None = None
    source: str = "measured"
    latency_cache_hit: bool = False
    artifact_sha256: str | None = None
    artifact_path: str | None = None
    error_kind: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        """True when accuracy and latency are both known."""
        return self.error_kind is None and self.top1 is not None and self.latency_p50_ms is not None


@dataclass
class CandidateEvaluator:
    """Evaluates architecture specs of one trained base model through one :class:`Pipeline`.

    Attributes:
        model_name: zoo name of the base model (part of the latency cache key).
        base_model: the trained, unpruned torch model (never modified).
        groups: its prunable groups.
        input_shape: batch-1 input shape, e.g. (1, 1, 28, 28).
        val_data: validation dataset (tensors) for top-1.
        pipeline: export → compile → measure → check → store for the run's device and target.
        work_dir: where ONNX files of this run go.
        eval_samples: validation images used per candidate (None = all).
        importance: ``"l1"`` or ``"l2"`` group magnitude.
        cache_min_id: the latency cache serves only measurements with an id >= this
            (0 = the whole store; set by the search when the device drifted).
        on_exhausted: called with the error message when an evaluation failed because the
            device (a farm) has no healthy board left; returns True when it replaced the
            pipeline (the search switched the whole run to the simulator) so the
            evaluation is retried there, or raises to stop the run.
        on_board_change: called with the farm's move record (``{"from", "to", "reason"}``)
            when the run's board was replaced during an evaluation (the search re-measures
            its reference on the new board).
    """

    model_name: str
    base_model: torch.nn.Module
    groups: list[PruneGroup]
    input_shape: tuple[int, ...]
    val_data: object
    pipeline: Pipeline
    work_dir: Path
    eval_samples: int | None = 2000
    importance: str = "l1"
    timer: StageTimer = field(default_factory=StageTimer)
    cache_min_id: int = 0
    on_exhausted: Callable[[str], bool] | None = None
    on_board_change: Callable[[dict[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        self._acc_cache: dict[str, tuple[float, int, int]] = {}
        self.example_input = torch.zeros(self.input_shape)
        self.work_dir = Path(self.work_dir)
        (self.work_dir / "onnx").mkdir(parents=True, exist_ok=True)
        self.stats = {"evaluated": 0, "latency_cache_hits": 0, "compiled": 0, "measured": 0, "failed": 0}

    @property
    def device(self):
        """The pipeline's device."""
        return self.pipeline.device

    def key(self, spec: ArchSpec) -> StoreKey:
        """The results-store key of ``spec``'s latencies."""
        return StoreKey(self.model_name, spec.signature(), {"command": "search"})

    def prune(self, spec: ArchSpec) -> torch.nn.Module:
        """A pruned deep copy of the base model with exactly ``spec``'s widths.

        Raises:
            ValueError: a spec that does not fit the groups.
        """
        with self.timer.time("prune"):
            return apply_spec(self.base_model, spec, self.example_input, importance=self.importance)

    def evaluate(self, spec: ArchSpec, *, fresh: bool = False, model: torch.nn.Module | None = None) -> CandidateResult:
        """Evaluate ``spec``: accuracy, MACs, params and latency.

        Args:
            spec: kept channels per group.
            fresh: ignore the latency cache and measure again (used for the final model).
            model: an already pruned (e.g. fine-tuned) model of this spec to use
                instead of pruning the base model again.

        Returns:
            A CandidateResult; failures are values with ``error_kind`` set.
        """
        seen = len(getattr(self.device, "board_changes", ()))
        result = self._evaluate(spec, fresh=fresh, model=model)
        changes = getattr(self.device, "board_changes", ())
        if len(changes) > seen:  # a farm moved the run to another board during this evaluation
            self.pipeline.forget_identity()
            if self.on_board_change is not None:
                self.on_board_change(changes[-1])
        if (result.error_kind == "measure_device_lost" and getattr(self.device, "exhausted", False)
                and self.on_exhausted is not None and self.on_exhausted(result.error_message or "")):
            return self.evaluate(spec, fresh=fresh, model=model)
        return result

    def _evaluate(self, spec: ArchSpec, *, fresh: bool, model: torch.nn.Module | None) -> CandidateResult:
        self.stats["evaluated"] += 1
        sig = spec.signature()
        try:
            if model is None and sig in self._acc_cache and not fresh:
                top1, macs, params = self._acc_cache[sig]
                pruned = None
            else:
                pruned = model if model is not None else self.prune(spec)
                macs, params = count_macs_params(pruned, self.input_shape)
                with self.timer.time("evaluate"):
                    top1 = evaluate(pruned, self.val_data, max_samples=self.eval_samples)
                if model is None:
                    self._acc_cache[sig] = (top1, macs, params)
        except ValueError as exc:
            self.stats["failed"] += 1
            return CandidateResult(spec, None, 0, 0, None, error_kind="prune_failed", error_message=str(exc))

        if not fresh and model is None:
            hit = self.pipeline.cached(self.key(spec), min_id=self.cache_min_id)
            if hit is not None:
                self.stats["latency_cache_hits"] += 1
                return CandidateResult(
                    spec, top1, macs, params, hit["latency_p50_ms"], tuple(hit["latency_raw_ms"]),
                    measurement_id=hit["id"], source=hit["source"], latency_cache_hit=True,
                )
        if pruned is None:
            pruned = self.prune(spec)
        return self._compile_and_measure(spec, pruned, top1, macs, params)

    def remeasure(self, result: CandidateResult, backend: str | None = None) -> float | None:
        """Measure an evaluated candidate's artifact once more (stored like any measurement).

        Used to interleave the final measurements of the unpruned and the best model,
        so both see the same machine state (a speedup is a ratio measured side by side).

        Args:
            result: an evaluated candidate with an artifact.
            backend: time this backend instead of the evaluator's (``"onnxruntime"``:
                the artifact's ONNX file, a reference runtime beside the TVM build).

        Returns:
            The new p50 in ms, or None when the candidate has no artifact, the
            measurement failed (e.g. no ONNX Runtime on the board), its output is
            wrong (:mod:`harness.compile.check`) or it is of another source than
            the candidate's (a simulated answer for a measured candidate).
        """
        if result.artifact_path is None:
            return None
        try:
            prepared = Prepared.at(result.artifact_path)
        except ManifestError as exc:
            log.warning("re-measuring %s: %s", result.spec.signature(), exc)
            return None
        with self.timer.time("measure"):
            out = self.pipeline.measure(prepared, self.key(result.spec), backend=backend,
                                        expect_source=result.source)
        if not out.ok:
            log.warning("re-measuring %s (%s) on %s: %s: %s; not used", result.spec.signature(),
                        backend or self.pipeline.measure_config.backend, self.device.name, out.error.kind,
                        out.error.message)
            return None
        self.stats["measured"] += 1
        return out.p50_ms

    def _compile_and_measure(self, spec, pruned, top1, macs, params) -> CandidateResult:
        sig = spec.signature()

        def failed(error: PipelineError) -> CandidateResult:
            self.stats["failed"] += 1
            log.warning("candidate %s failed: %s: %s", sig, error.kind, error.message)
            return CandidateResult(spec, top1, macs, params, None, error_kind=error.kind, error_message=error.message)

        with self.timer.time("export"):
            onnx_path = self.pipeline.export(pruned, self.input_shape, self.work_dir / "onnx" / f"{sig}.onnx")
        if isinstance(onnx_path, PipelineError):
            return failed(onnx_path)
        t0 = time.perf_counter()
        prepared = self.pipeline.compile(onnx_path)
        if isinstance(prepared, PipelineError):
            self.timer.add("build", time.perf_counter() - t0)
            return failed(prepared)
        self.timer.add("tune", prepared.tune_s)
        self.timer.add("build", prepared.compile_s - prepared.tune_s)
        self.stats["compiled"] += 0 if prepared.manifest.graph_only else 1
        with self.timer.time("measure"):
            out: PipelineResult = self.pipeline.measure(prepared, self.key(spec))
        if out.error is not None:
            return failed(out.error)
        m = out.measurement
        if not out.is_latency:  # e.g. an emulated board: a functional check only (stored, labelled)
            return failed(PipelineError("not_a_latency", f"{self.device.name} gives {m.source} timings, which are "
                                                         "not latencies; use a real board, local, or sim:PROFILE "
                                                         "for the search"))
        self.stats["measured"] += 1
        return CandidateResult(
            spec, top1, macs, params, m.stats.p50_ms, tuple(m.latency_ms), measurement_id=out.measurement_id,
            source=m.source, artifact_sha256=prepared.manifest.library_sha256, artifact_path=str(prepared.path),
        )
