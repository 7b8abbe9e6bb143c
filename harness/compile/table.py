"""The board's own latency table: a model's latency from the tuning database of the board that tuned it.

DESIGN.md §5 ("The board's own latency table"), issue 13. The MetaSchedule
database holds, for every tuned workload, the run time of its best schedule
*measured on the device that tuned it* (``TuningRecord.run_secs``). A model's
task extraction gives each task's weight (how many times the fused function is
called). So

    latency(model) ≈ scale × Σ_tasks weight × recorded time + overhead

— a lookup table in the spirit of NetAdapt's (Yang et al., ECCV 2018, §3.2) and
HALP's, made by the compiler that deploys, on the board that runs, at no extra
cost. MetaSchedule prints the same sum as "Total latency (us)" in its task
table. ``scale`` and ``overhead`` (per-call costs: the VM, argument passing,
the layers no task covers) are fitted from whole-model measurements of that
board (:func:`fit_overhead`). A task with no record is reported in
:attr:`TablePrediction.missing`, never guessed.

Predictions are labelled ``predicted`` (DESIGN.md §5) and never mixed with
``measured`` latencies.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from harness.compile.build import lower_onnx
from harness.compile.targets import TargetSpec
from harness.compile.tuning import _import_cpu_tensor_intrin, locked, open_database

__all__ = ["TablePrediction", "TaskTime", "fit_overhead", "table_prediction"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TaskTime:
    """One tuning task of a model in the table.

    Attributes:
        name: MetaSchedule's task name (the fused function, e.g. ``fused_conv2d1_add_relu``).
        weight: how many times the model calls it per inference.
        ms: the best recorded run time of one call in ms (mean of the record's repeats), None
            when the database has no record of its workload.
    """

    name: str
    weight: int
    ms: float | None


@dataclass(frozen=True, slots=True)
class TablePrediction:
    """What the table says of one model.

    Attributes:
        tasks: every task with its weight and recorded time.
        tasks_ms: Σ weight × ms over the tasks that have a record, ms.
        missing: names of the tasks with no record (their time is not in ``tasks_ms``).
    """

    tasks: tuple[TaskTime, ...]
    tasks_ms: float
    missing: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """True when every task has a record (the sum covers the whole model)."""
        return not self.missing

    def latency_ms(self, scale: float = 1.0, overhead_ms: float = 0.0) -> float:
        """``scale × tasks_ms + overhead_ms`` (ms), with a fit from :func:`fit_overhead`.

        Raises:
            ValueError: the table misses tasks (a partial sum is not a latency).
        """
        if not self.complete:
            raise ValueError(f"{len(self.missing)} of {len(self.tasks)} tasks have no record in the tuning database "
                             f"({', '.join(self.missing[:3])}{' ...' if len(self.missing) > 3 else ''}); tune them "
                             "first (hilprune tune --grid)")
        return scale * self.tasks_ms + overhead_ms


def table_prediction(onnx_path: Path, target: TargetSpec, db_dir: Path) -> TablePrediction:
    """Σ weight × recorded time of an ONNX model's tuning tasks in the database at ``db_dir``.

    Args:
        onnx_path: the model (one static input), as compiled for ``target``.
        target: the target the database was tuned for (its tasks are that target's fused TIR).
        db_dir: the tuning database (``harness.compile.tuning.database_dir_for``).

    Returns:
        A :class:`TablePrediction`.

    Raises:
        harness.compile.build.CompileFailed: the ONNX file cannot be imported or lowered.
    """
    from tvm.s_tir import meta_schedule as ms

    lowered = lower_onnx(Path(onnx_path).read_bytes(), target)
    tvm_target = target.tvm_target()
    if tvm_target.kind.name == "llvm":
        _import_cpu_tensor_intrin()
    tasks = ms.relax_integration.extract_tasks(lowered.mod, tvm_target)
    out: list[TaskTime] = []
    with locked(db_dir):
        db = open_database(db_dir)
        for task in tasks:
            mod = task.dispatched[0]
            ms_per_call = None
            if db.has_workload(mod):
                top = db.get_top_k(db.commit_workload(mod), 1)
                secs = [float(s) for s in (top[0].run_secs or [])] if top else []
                if secs:
                    ms_per_call = 1e3 * statistics.fmean(secs)
            out.append(TaskTime(task.task_name, int(task.weight), ms_per_call))
    total = sum(t.weight * t.ms for t in out if t.ms is not None)
    missing = tuple(t.name for t in out if t.ms is None)
    if missing:
        log.info("table: %d of %d tasks of %s have no record in %s", len(missing), len(out), onnx_path, db_dir)
    return TablePrediction(tuple(out), total, missing)


def fit_overhead(pairs: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Fit ``measured ≈ scale × tasks_ms + overhead_ms`` to whole-model measurements of one board.

    Ordinary least squares on (table sum, measured p50) pairs of complete predictions
    (``numpy.polyfit`` degree 1); with a single pair, or pairs whose sums are all alike, the
    scale stays 1 and the overhead is the median difference.

    Args:
        pairs: (``TablePrediction.tasks_ms``, measured p50) in ms, for models measured on the board
            that tuned the database.

    Returns:
        (scale, overhead_ms).

    Raises:
        ValueError: no pairs.
    """
    import numpy as np

    if not pairs:
        raise ValueError("fit_overhead needs at least one (table sum, measured p50) pair")
    x = np.asarray([p[0] for p in pairs], dtype=float)
    y = np.asarray([p[1] for p in pairs], dtype=float)
    if len(pairs) < 2 or float(np.ptp(x)) <= 1e-9 * max(1.0, float(np.abs(x).max())):
        return 1.0, float(np.median(y - x))
    scale, overhead = np.polyfit(x, y, 1)
    return float(scale), float(overhead)
