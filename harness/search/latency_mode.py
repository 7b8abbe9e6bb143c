"""Where a search candidate's latency ratio comes from: measured, predicted by the board's table, or hybrid.

Issue 13, DESIGN.md §5 ("the board's own latency table", "never mixed").
A search runs in one of three modes (``SearchConfig.latency``, ``--latency``):

``measured``
    today's search: every candidate is compiled and timed interleaved with the
    unpruned model (its ratio is ΔH + 1). When the run has a latency table, each
    candidate's predicted ratio is kept beside the measured one and every fresh
    measurement is a new pair of the table's fit.
``predicted``
    every candidate's ratio is the table's (:class:`harness.compile.table.LatencyTable`):
    only the pruned model's ONNX export and MetaSchedule's task extraction run
    (both cached per architecture); nothing is compiled or measured per
    candidate. Rows, front and best are labelled ``predicted``; the final step
    still times the fine-tuned best interleaved with the unpruned model
    (``measured``). A candidate whose tasks the database lacks fails with
    ``not_in_table`` (warm the grid: ``hilprune tune --grid``).
``hybrid``
    every candidate is predicted; it is *measured* (interleaved, as in
    ``measured``) when, by its predicted ratio, it would enter the run's Pareto
    front (validation top-1 vs latency ratio, among the run's measured
    candidates and the unpruned model) or the top ``confirm_top_k`` rewards of
    the run's measured candidates (:func:`measure_reason`); a candidate whose
    tasks the table lacks, or one measured before (the store's ratio cache), is
    measured too. After each measurement the table is refitted. ΔH uses the
    measured ratio where there is one, else the predicted one; every reported
    figure (front, best, speedup) is made of measured candidates only.

On a simulator device latencies are ``simulated`` and no mode applies
(:func:`check_latency_option` refuses ``predicted``/``hybrid`` there). The
default (``latency`` None) is ``hybrid`` when a table exists for the run — the
target's tuning database holds a record for every task of the unpruned model,
and the build is tuned — else ``measured`` (:func:`resolve_mode`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from harness.compile.table import LatencyTable, TablePrediction
from harness.search.reward import RewardWeights, compute_reward

if TYPE_CHECKING:
    from harness.pruning import ArchSpec
    from harness.search.candidate import CandidateEvaluator, CandidateResult

__all__ = ["DEFAULT_CONFIRM_TOP_K", "LATENCY_MODES", "LatencyMode", "MeasuredPoint", "build_latency_mode",
           "check_latency_option", "measure_reason", "resolve_mode"]

log = logging.getLogger(__name__)

#: The search's latency modes (``--latency``); a simulator device's run is ``simulated`` instead.
LATENCY_MODES = ("measured", "predicted", "hybrid")
#: ``hybrid`` measures a candidate that would enter the top-k rewards of the run's measured candidates.
DEFAULT_CONFIRM_TOP_K = 5


def check_latency_option(latency: str | None, *, device: str, backend: str, tune_trials: int) -> None:
    """Refuse a latency mode that cannot apply to the run, before any work.

    Raises:
        ValueError: one line naming ``latency`` and the fix: an unknown mode; ``predicted``/``hybrid`` on a
            simulator device (its latencies are ``simulated``), with ``backend onnxruntime`` (the table is
            TVM's tuning database) or with ``tune_trials 0`` (untuned builds are not what the database timed).
    """
    if latency is None:
        return
    if latency not in LATENCY_MODES:
        raise ValueError(f"latency={latency!r} must be one of {', '.join(LATENCY_MODES)} (or unset: hybrid when the "
                         "target's tuning database covers the model, else measured)")
    if latency == "measured":
        return
    if device.startswith("sim:"):
        raise ValueError(f"latency={latency!r} needs a board's latency table; {device} is a simulator, whose "
                         "latencies are always simulated: drop --latency, or use --device local|ssh:BOARD|farm:TAG")
    if backend != "tvm":
        raise ValueError(f"latency={latency!r} predicts from TVM's tuning database, which says nothing of "
                         f"backend {backend!r}: use --backend tvm or --latency measured")
    if tune_trials == 0:
        raise ValueError(f"latency={latency!r} predicts tuned builds, but tune_trials=0 builds untuned ones: "
                         "set --tune-trials N (N >= 1) or --latency measured")


def resolve_mode(requested: str | None, *, simulated: bool, table: TablePrediction | None, where: str) -> str:
    """The run's mode: ``simulated`` on a simulator, the requested one, or the default.

    Args:
        requested: ``SearchConfig.latency`` (None = default).
        simulated: the run's device is a simulator.
        table: the table's prediction of the unpruned model (None: no tuning database for the target).
        where: the database and how to warm it, for the error message.

    Raises:
        ValueError: ``predicted``/``hybrid`` requested without a table covering the unpruned model.
    """
    if simulated:
        return "simulated"
    complete = table is not None and table.complete
    if requested is None:
        return "hybrid" if complete else "measured"
    if requested != "measured" and not complete:
        lacks = ("has no tuning database" if table is None
                 else f"lacks {len(table.missing)} of {len(table.tasks)} tasks of the unpruned model")
        raise ValueError(f"latency={requested!r} needs a latency table, but the target {lacks} ({where}); warm it "
                         "first (hilprune tune --model M --input-shape ... --target T --grid 8), or use --latency "
                         "measured")
    return requested


@dataclass(frozen=True, slots=True)
class MeasuredPoint:
    """A measured candidate (or the unpruned model) of the run, as the hybrid rule sees it.

    Attributes:
        top1: validation top-1 in [0, 1].
        ratio: measured latency ratio to the unpruned model.
        reward: its reward (None for the unpruned model, which is not a candidate for the top-k).
    """

    top1: float
    ratio: float
    reward: float | None


def measure_reason(top1: float, predicted_ratio: float, predicted_reward: float,
                   measured: Iterable[MeasuredPoint], top_k: int) -> str | None:
    """The hybrid rule: why a candidate predicted at (``top1``, ``predicted_ratio``) must be measured, or None.

    ``front``: no measured point (the unpruned model included) dominates it — none has top-1 ≥ and ratio ≤
    with one of them strictly better (the Pareto front of :func:`harness.search.pareto.pareto_front`).
    ``top_k``: fewer than ``top_k`` measured candidates, or its predicted reward beats the k-th best
    measured reward (the best is chosen by reward among measured candidates).

    Args:
        top1: validation top-1 in [0, 1].
        predicted_ratio: the table's latency ratio.
        predicted_reward: the reward with ΔH = predicted_ratio − 1.
        measured: the run's measured points so far, one per architecture.
        top_k: ``confirm_top_k`` (≥ 0; 0 = no top-k rule).
    """
    points = list(measured)
    dominated = any(p.top1 >= top1 and p.ratio <= predicted_ratio and (p.top1 > top1 or p.ratio < predicted_ratio)
                    for p in points)
    if not dominated:
        return "front"
    rewards = sorted((p.reward for p in points if p.reward is not None), reverse=True)
    if top_k > 0 and (len(rewards) < top_k or predicted_reward > rewards[top_k - 1]):
        return "top_k"
    return None


@dataclass
class LatencyMode:
    """The run's latency mode and its table; the evaluator's hook for every non-reference candidate.

    Attributes:
        mode: ``measured``, ``predicted`` or ``hybrid``.
        table: the board's latency table (None: the run has none; only ``measured`` then).
        weights: the reward's weights (the hybrid rule ranks predicted rewards).
        confirm_top_k: k of the hybrid rule's top-k.
        run_id: recorded with each new pair of the fit.
        reference_tasks_ms: the table's sum of the unpruned model (:meth:`set_baseline`).
        baseline: the evaluated unpruned model (top-1, MACs, p50 for rewards and predicted ms).
        measured: signature -> :class:`MeasuredPoint` of the run's measured candidates.
        errors: (predicted ratio before the measurement, measured ratio) of fresh measurements of this run.
    """

    mode: str
    table: LatencyTable | None
    weights: RewardWeights
    confirm_top_k: int = DEFAULT_CONFIRM_TOP_K
    run_id: str | None = None
    reference_tasks_ms: float | None = None
    baseline: "CandidateResult | None" = None
    measured: dict[str, MeasuredPoint] = field(default_factory=dict)
    errors: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in LATENCY_MODES:
            raise ValueError(f"mode={self.mode!r} must be one of {', '.join(LATENCY_MODES)}")
        if self.mode != "measured" and self.table is None:
            raise ValueError(f"latency mode {self.mode!r} needs a latency table")
        if self.confirm_top_k < 0:
            raise ValueError(f"confirm_top_k must be >= 0, got {self.confirm_top_k}")

    # -- set-up -------------------------------------------------------------------------------------------
    def set_baseline(self, baseline: "CandidateResult", reference_tasks_ms: float | None) -> None:
        """The unpruned model (measured) and the table's sum for it: every prediction is a ratio to it."""
        self.baseline = baseline
        self.reference_tasks_ms = reference_tasks_ms
        self.measured[baseline.spec.signature()] = MeasuredPoint(baseline.top1, 1.0, None)

    def board_changed(self, identity: str, baseline: "CandidateResult") -> None:
        """The run moved to another board (a farm's quarantine): the table's fit is that board's, and only
        ratios measured there count for the hybrid rule (the unpruned model was re-measured there)."""
        if self.table is not None:
            self.table.identity = identity
            self.table.refit()
        self.measured.clear()
        self.set_baseline(baseline, self.reference_tasks_ms)

    def seed(self, rows: Iterable[dict]) -> None:
        """Take the measured candidates of a resumed run's stored rows into the hybrid rule's points."""
        for r in rows:
            if (r["episode"] >= 0 and r["source"] == "measured" and r.get("latency_ratio") is not None
                    and not r.get("error_kind") and r.get("top1") is not None):
                self.measured.setdefault(r["arch_signature"], MeasuredPoint(r["top1"], r["latency_ratio"], r["reward"]))

    # -- the hook ---------------------------------------------------------------------------------------
    def predict(self, ev: "CandidateEvaluator", spec: "ArchSpec", pruned) -> tuple[TablePrediction | None, str | None]:
        """The table's prediction of ``spec`` (exported once per architecture), or (None, error message)."""
        from harness.compile.build import CompileFailed
        from harness.compile.export import ExportError, export_onnx

        sig = spec.signature()
        if self.table.cached(sig) is not None:
            return self.table.cached(sig), None
        if pruned is None:
            pruned = ev.prune(spec)
        onnx = ev.work_dir / "onnx" / f"{sig}.onnx"
        with ev.timer.time("export"):  # the graph is never run on this path: no ONNX Runtime check
            try:
                export_onnx(pruned, ev.input_shape, onnx, check=False)
            except ExportError as exc:
                return None, f"{exc.kind}: {exc.message}"
        try:
            with ev.timer.time("table"):
                return self.table.prediction(Path(onnx), sig), None
        except CompileFailed as exc:
            return None, f"{exc.kind}: {exc}"

    def reward(self, top1: float, macs: int, ratio: float) -> float:
        """The reward of a candidate at latency ratio ``ratio`` against the run's unpruned model."""
        b = self.baseline
        return compute_reward(top1=top1, macs=macs, latency_p50_ms=ratio * b.latency_p50_ms, base_top1=b.top1,
                              base_macs=b.macs, base_latency_p50_ms=b.latency_p50_ms, weights=self.weights,
                              latency_ratio=ratio).reward

    def evaluate(self, ev: "CandidateEvaluator", spec: "ArchSpec", pruned, top1: float, macs: int,
                 params: int) -> "CandidateResult":
        """The latency of a candidate (accuracy known) in this mode; a :class:`CandidateResult`, failures as values."""
        from harness.search.candidate import CandidateResult

        sig = spec.signature()
        if self.mode in ("measured", "hybrid"):
            hit = ev.cached_ratio_result(spec, top1, macs, params)
            if hit is not None:
                pred = self.table.cached(sig) if self.table is not None else None
                ratio = None if pred is None or not pred.complete else self.table.ratio(pred.tasks_ms,
                                                                                        self.reference_tasks_ms)
                return self._measured(dataclasses.replace(
                    hit, predicted_ratio=ratio, measure_reason="cache" if self.mode == "hybrid" else None))
        pred, error = (None, None) if self.table is None else self.predict(ev, spec, pruned)
        if error is not None and self.mode == "predicted":
            ev.stats["failed"] += 1
            return CandidateResult(spec, top1, macs, params, None, error_kind="table_failed", error_message=error)
        complete = pred is not None and pred.complete
        ratio = self.table.ratio(pred.tasks_ms, self.reference_tasks_ms) if complete else None
        if self.mode == "measured":
            return self._measure(ev, spec, pruned, top1, macs, params, pred, ratio, None)
        if not complete:
            if self.mode == "predicted":
                ev.stats["failed"] += 1
                return CandidateResult(
                    spec, top1, macs, params, None, error_kind="not_in_table",
                    error_message=f"{len(pred.missing)} of {len(pred.tasks)} tasks of {sig} have no record in the "
                                  f"tuning database {self.table.db_dir}; warm it (hilprune tune --grid) or use "
                                  "--latency hybrid")
            return self._measure(ev, spec, pruned, top1, macs, params, pred, None,
                                 "missing_tasks" if error is None else "table_failed")
        reason = None
        if self.mode == "hybrid":
            reason = measure_reason(top1, ratio, self.reward(top1, macs, ratio), self.measured.values(),
                                    self.confirm_top_k)
        if reason is not None:
            return self._measure(ev, spec, pruned, top1, macs, params, pred, ratio, reason)
        ev.stats["predicted"] += 1
        return CandidateResult(spec, top1, macs, params, ratio * self.baseline.latency_p50_ms, source="predicted",
                               latency_ratio=ratio, predicted_ratio=ratio)

    def _measure(self, ev, spec, pruned, top1, macs, params, pred, ratio, reason) -> "CandidateResult":
        """Time ``spec`` interleaved with the reference; a fresh ratio becomes a pair of the fit (then refit)."""
        result = ev.measure_ratio(spec, pruned, top1, macs, params)
        result = dataclasses.replace(result, predicted_ratio=ratio, measure_reason=reason)
        if result.ok and result.source == "measured" and pred is not None and pred.complete:
            if ratio is not None:
                self.errors.append((ratio, result.latency_ratio))
            self.table.add_pair(arch_signature=spec.signature(), tasks_ms=pred.tasks_ms,
                                reference_signature=self.baseline.spec.signature(),
                                reference_tasks_ms=self.reference_tasks_ms, ratio=result.latency_ratio,
                                latency_p50_ms=result.latency_p50_ms,
                                reference_p50_ms=self._reference_p50(ev, result),
                                measurement_id=result.measurement_id, ratio_id=result.ratio_id, run_id=self.run_id)
        return self._measured(result)

    @staticmethod
    def _reference_p50(ev, result) -> float | None:
        if result.ratio_id is None or ev.pipeline.store is None:
            return None
        rows = ev.pipeline.store.query("SELECT reference_p50_ms FROM latency_ratios WHERE id=?", (result.ratio_id,))
        return rows[0]["reference_p50_ms"] if rows else None

    def _measured(self, result: "CandidateResult") -> "CandidateResult":
        if result.ok and result.latency_ratio is not None and self.baseline is not None:
            self.measured.setdefault(result.spec.signature(), MeasuredPoint(
                result.top1, result.latency_ratio, self.reward(result.top1, result.macs, result.latency_ratio)))
        return result

    # -- what the run reports ---------------------------------------------------------------------------
    def reportable(self, result: "CandidateResult") -> bool:
        """True when ``result`` may be a reported figure (front, best): in ``hybrid`` only measured ones."""
        return self.mode != "hybrid" or result.source != "predicted"

    def reportable_row(self, row: dict) -> bool:
        """:meth:`reportable` of a stored candidate row (``source`` column)."""
        return self.mode != "hybrid" or row.get("source") != "predicted"

    def summary(self, rows: list[dict]) -> dict:
        """The summary's ``latency_mode`` block from the run's candidate rows (episode ≥ 0).

        Counts of predicted and measured rows, the hybrid rule's reasons, the fit, and the prediction
        error on the measured architectures (each once, its first row: the table's ratio as predicted
        before it was measured, with the fit of that moment) against the measured interleaved ratio:
        MAPE, %.
        """
        import numpy as np

        cands = [r for r in rows if r["episode"] >= 0 and not r.get("error_kind")]
        reasons: dict[str, int] = {}
        for r in cands:
            if r["source"] == "measured" and r.get("latency_measure_reason"):
                reasons[r["latency_measure_reason"]] = reasons.get(r["latency_measure_reason"], 0) + 1
        first: dict[str, dict] = {}  # an architecture's first measured row: predicted before it was measured
        for r in cands:
            if r["source"] == "measured" and r.get("latency_ratio") is not None:
                first.setdefault(r["arch_signature"], r)
        both = [(r["latency_ratio_predicted"], r["latency_ratio"]) for r in first.values()
                if r.get("latency_ratio_predicted") is not None]
        return {
            "mode": self.mode,
            "candidates_predicted": sum(1 for r in cands if r["source"] == "predicted"),
            "candidates_measured": sum(1 for r in cands if r["source"] == "measured"),
            "measure_reasons": reasons,
            "confirm_top_k": self.confirm_top_k if self.mode == "hybrid" else None,
            "fit": self.table.fit.as_dict() if self.table is not None else None,
            "fit_describe": self.table.fit.describe() if self.table is not None else None,
            "table_identity": self.table.identity if self.table is not None else None,
            "table_family": self.table.family if self.table is not None else None,
            "table_database": str(self.table.db_dir) if self.table is not None else None,
            "table_extractions": self.table.extractions if self.table is not None else 0,
            "table_times": self.table.times_summary() if self.table is not None else None,
            "prediction_mape_pct": (float(100 * np.mean([abs(p / m - 1.0) for p, m in both])) if both else None),
            "prediction_pairs": len(both),
        }


def build_latency_mode(*, requested: str | None, confirm_top_k: int, weights: RewardWeights, evaluator,
                       base_spec: "ArchSpec", base_model, family: str, run_id: str | None) -> LatencyMode | None:
    """The run's :class:`LatencyMode`, with its table when the target's tuning database has one.

    Called before the unpruned model is compiled, so "a table exists" means the database held every
    task of the unpruned model *before* this run (a warmed grid, or earlier runs), not because this
    run's own first compile tuned it.

    Args:
        requested: ``SearchConfig.latency`` (or a resumed run's resolved mode).
        confirm_top_k, weights, run_id: as :class:`LatencyMode`.
        evaluator: the run's evaluator (its pipeline: device, target, tuning, store, cache).
        base_spec, base_model: the unpruned model (exported to extract its tasks).
        family: the table's model family, e.g. ``resnet20@1x1x28x28``.

    Returns:
        None on a simulator device (latencies are ``simulated``), else the mode.

    Raises:
        ValueError: ``predicted``/``hybrid`` requested and no table covers the unpruned model.
    """
    from harness.compile.build import CompileFailed
    from harness.compile.tuning import database_dir_for, database_info
    from harness.pipeline import PipelineError

    pipe = evaluator.pipeline
    simulated = pipe.graph_only or evaluator._source() == "simulated"
    table = pred = None
    db_dir = database_dir_for(pipe.cache_dir, pipe.target.canonical_json(), pipe.tuning)
    if not simulated and pipe.tuning.tuned and database_info(db_dir).records > 0:
        sig = base_spec.signature()
        onnx = pipe.export(base_model, evaluator.input_shape, evaluator.work_dir / "onnx" / f"{sig}.onnx")
        if not isinstance(onnx, PipelineError):
            table = LatencyTable(pipe.target, db_dir, identity=pipe.identity(), family=family, store=pipe.store)
            try:
                with evaluator.timer.time("table"):
                    pred = table.prediction(Path(onnx), sig)
            except CompileFailed as exc:
                log.warning("latency table: the unpruned model's tasks could not be extracted: %s", exc)
                table = None
    mode = resolve_mode(requested, simulated=simulated, table=pred,
                        where=f"tuning database {db_dir}")
    if mode == "simulated":
        return None
    if pred is None or not pred.complete:
        table = None
    latency = LatencyMode(mode, table, weights, confirm_top_k=confirm_top_k, run_id=run_id,
                          reference_tasks_ms=pred.tasks_ms if table is not None else None)
    log.info("latency mode %s (table: %s)", mode, "none" if table is None else table.fit.describe())
    return latency
