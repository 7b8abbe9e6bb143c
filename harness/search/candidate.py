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

import dataclasses
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

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
        latency_p50_ms: median latency, ms (None on failure): absolute, of the session it was measured
            in (informative: absolute values drift with the machine's load, DESIGN.md §5).
        latency_raw_ms: raw per-repeat (per-round) latencies, ms.
        measurement_id: row id in the store's ``measurements`` (its absolute values).
        latency_ratio: median of its latency / the unpruned model's, timed interleaved in one session
            (1.0 for the unpruned model itself): what ΔH, the Pareto front and the best are decided on.
        ratio_ci: the ratio's bootstrap interval (low, high) (``devices.stats.bootstrap_median_ci``).
        ratio_id: row id in the store's ``latency_ratios``.
        source: ``measured`` (or ``simulated`` for a simulator device, ``predicted`` for the board's latency
            table: then ``latency_ratio`` is the table's ratio, ``ratio_ci`` is (None, None) and
            ``latency_p50_ms`` is that ratio × the unpruned model's measured p50).
        latency_cache_hit: latency came from the store, nothing was compiled or measured.
        artifact_sha256: sha256 of the compiled library (None on a cache hit or failure).
        artifact_path: the compiled artifact directory (None on a cache hit or failure).
        error_kind, error_message: set when the candidate failed.
        predicted_ratio: the latency table's ratio (also beside a measured one, for fidelity figures;
            None when the run has no table).
        measure_reason: why a ``hybrid`` search measured it (``front``, ``top_k``, ``missing_tasks``,
            ``cache``: measured before), None when it was predicted or the run is not hybrid.
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
    latency_ratio: float | None = None
    ratio_ci: tuple[float | None, float | None] = (None, None)
    ratio_id: int | None = None
    predicted_ratio: float | None = None
    measure_reason: str | None = None

    @property
    def ok(self) -> bool:
        """True when accuracy and latency are both known (a search's candidates also carry ``latency_ratio``)."""
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
        reference, reference_spec: the unpruned model's artifact and spec (:meth:`set_reference`): every
            other candidate is timed interleaved with it, its latency a ratio against it.
        on_exhausted: called with the error message when an evaluation failed because the
            device (a farm) has no healthy board left; returns True when it replaced the
            pipeline (the search switched the whole run to the simulator) so the
            evaluation is retried there, or raises to stop the run.
        on_board_change: called with the farm's move record (``{"from", "to", "reason"}``)
            when the run's board was replaced during an evaluation (the search re-measures
            its reference on the new board).
        latency_mode: how a candidate's latency ratio is had (:class:`harness.search.latency_mode.LatencyMode`:
            measured, predicted by the board's latency table, or hybrid); None = measured, no table.
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
    on_exhausted: Callable[[str], bool] | None = None
    on_board_change: Callable[[dict[str, Any]], None] | None = None
    reference: Prepared | None = None
    reference_spec: ArchSpec | None = None
    latency_mode: Any = None

    def __post_init__(self) -> None:
        self._acc_cache: dict[str, tuple[float, int, int]] = {}
        self.example_input = torch.zeros(self.input_shape)
        self.work_dir = Path(self.work_dir)
        (self.work_dir / "onnx").mkdir(parents=True, exist_ok=True)
        self.stats = {"evaluated": 0, "latency_cache_hits": 0, "compiled": 0, "measured": 0, "failed": 0,
                      "predicted": 0}

    @property
    def device(self):
        """The pipeline's device."""
        return self.pipeline.device

    def key(self, spec: ArchSpec) -> StoreKey:
        """The results-store key of ``spec``'s latencies."""
        return StoreKey(self.model_name, spec.signature(), {"command": "search"})

    def set_reference(self, spec: ArchSpec, model: torch.nn.Module | None = None) -> PipelineError | None:
        """Export and compile the unpruned model (a cache hit after the first run): the reference that every
        candidate is timed against. Returns an error value when that fails."""
        prepared = self.prepare(spec, model if model is not None else self.prune(spec))
        if isinstance(prepared, PipelineError):
            return prepared
        self.reference, self.reference_spec = prepared, spec
        return None

    def prepare(self, spec: ArchSpec, pruned: torch.nn.Module) -> Prepared | PipelineError:
        """Export and compile a pruned model of ``spec`` (tuning where the pipeline tunes); timed in stages."""
        sig = spec.signature()
        with self.timer.time("export"):
            onnx_path = self.pipeline.export(pruned, self.input_shape, self.work_dir / "onnx" / f"{sig}.onnx")
        if isinstance(onnx_path, PipelineError):
            return onnx_path
        t0 = time.perf_counter()
        prepared = self.pipeline.compile(onnx_path)
        if isinstance(prepared, PipelineError):
            self.timer.add("build", time.perf_counter() - t0)
            return prepared
        self.timer.add("tune", prepared.tune_s)
        self.timer.add("build", prepared.compile_s - prepared.tune_s)
        self.stats["compiled"] += 0 if prepared.cache_hit or prepared.manifest.graph_only else 1
        return prepared

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

        is_reference = self.reference_spec is not None and spec == self.reference_spec
        if self.reference is not None and not is_reference:
            if self.latency_mode is not None and not fresh and model is None:  # measured / predicted / hybrid
                return self.latency_mode.evaluate(self, spec, pruned, top1, macs, params)
            if not fresh and model is None:
                hit = self.cached_ratio_result(spec, top1, macs, params)
                if hit is not None:
                    return hit
            if pruned is None:
                pruned = self.prune(spec)
            return self._compile_and_measure_ratio(spec, pruned, top1, macs, params)
        if not fresh and model is None:
            hit = self.pipeline.cached(self.key(spec))
            if hit is not None:
                self.stats["latency_cache_hits"] += 1
                return CandidateResult(
                    spec, top1, macs, params, hit["latency_p50_ms"], tuple(hit["latency_raw_ms"]),
                    measurement_id=hit["id"], source=hit["source"], latency_cache_hit=True,
                    latency_ratio=1.0 if is_reference else None, ratio_ci=(1.0, 1.0) if is_reference else (None, None),
                )
        if pruned is None:
            pruned = self.prune(spec)
        result = self._compile_and_measure(spec, pruned, top1, macs, params)
        if is_reference and result.error_kind is None:
            result = dataclasses.replace(result, latency_ratio=1.0, ratio_ci=(1.0, 1.0))
        return result

    def cached_ratio_result(self, spec: ArchSpec, top1: float, macs: int, params: int) -> CandidateResult | None:
        """``spec``'s latency ratio from the store's cache (measured earlier against this reference on this
        device identity), as a result; None on a miss."""
        hit = self.pipeline.cached_ratio(self.key(spec), self.reference)
        if hit is None:
            return None
        self.stats["latency_cache_hits"] += 1
        row = self.pipeline.store.measurement(hit.measurement_id) if hit.measurement_id else None
        return CandidateResult(
            spec, top1, macs, params, hit.candidate_p50_ms, tuple(row["latency_raw_ms"]) if row else (),
            measurement_id=hit.measurement_id,
            source=self._source(), latency_cache_hit=True, latency_ratio=hit.ratio.median,
            ratio_ci=(hit.ratio.ci_low, hit.ratio.ci_high), ratio_id=hit.ratio_id)

    def measure_ratio(self, spec: ArchSpec, pruned: torch.nn.Module | None, top1: float, macs: int,
                      params: int) -> CandidateResult:
        """Export, compile and time ``spec`` interleaved with the reference (no cache lookup); a value."""
        if pruned is None:
            pruned = self.prune(spec)
        return self._compile_and_measure_ratio(spec, pruned, top1, macs, params)

    def _source(self) -> str:
        """What this evaluator's device gives: ``measured``, ``simulated`` or ``emulated`` (its identity)."""
        return self.pipeline.identity().split("|", 1)[0]

    def _failed(self, spec, top1, macs, params, error: PipelineError) -> CandidateResult:
        """A candidate whose latency could not be had (counted, logged, a value)."""
        self.stats["failed"] += 1
        log.warning("candidate %s failed: %s: %s", spec.signature(), error.kind, error.message)
        return CandidateResult(spec, top1, macs, params, None, error_kind=error.kind, error_message=error.message)

    def _compile_and_measure_ratio(self, spec, pruned, top1, macs, params) -> CandidateResult:
        """Export, compile and time ``spec`` interleaved with the reference: its latency is a ratio."""
        def failed(error: PipelineError) -> CandidateResult:
            return self._failed(spec, top1, macs, params, error)

        prepared = self.prepare(spec, pruned)
        if isinstance(prepared, PipelineError):
            return failed(prepared)
        with self.timer.time("measure"):
            out = self.pipeline.measure_ratio(self.reference, prepared, self.key(spec),
                                              self.key(self.reference_spec))
        if out.error is not None:
            return failed(out.error)
        if out.source not in ("measured", "simulated"):  # an emulated board: a functional check only
            return failed(PipelineError("not_a_latency", f"{self.device.name} gives {out.source} timings, which are "
                                                         "not latencies; use a real board, local, or sim:PROFILE "
                                                         "for the search"))
        self.stats["measured"] += 1
        cand = out.measurement.artifacts[1]
        return CandidateResult(
            spec, top1, macs, params, out.candidate_p50_ms, tuple(cand.latency_ms),
            measurement_id=out.measurement_id, source=out.source, artifact_sha256=prepared.manifest.library_sha256,
            artifact_path=str(prepared.path), latency_ratio=out.ratio.median,
            ratio_ci=(out.ratio.ci_low, out.ratio.ci_high), ratio_id=out.ratio_id)

    def _compile_and_measure(self, spec, pruned, top1, macs, params) -> CandidateResult:
        """Export, compile and time ``spec`` alone (the unpruned model: its absolute latency)."""
        def failed(error: PipelineError) -> CandidateResult:
            return self._failed(spec, top1, macs, params, error)

        prepared = self.prepare(spec, pruned)
        if isinstance(prepared, PipelineError):
            return failed(prepared)
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
