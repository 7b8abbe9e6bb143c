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

A record's run time is one sample taken whenever tuning reached the task,
under whatever load the machine had then (benchmarks/table_fidelity.py found
recorded/re-timed ratios of 0.2–2.0 across the tasks of one grid warm-up).
:func:`retime_tasks` times every task's best schedule again in one session
(interleaved passes, median) into ``table_times.json`` beside the database;
:func:`table_prediction` uses a task's re-timed time while it is fresh (the
database's best record of that workload is still the one timed) and the
recorded one otherwise, and says which (``TaskTime.source``,
``TablePrediction.retimed``).

Predictions are labelled ``predicted`` (DESIGN.md §5) and never mixed with
``measured`` latencies.

:class:`LatencyTable` is the table of one board as the search uses it: per
(device identity, target, model family) it predicts the *ratio* of a model's
latency to a reference's, caches each architecture's sum, and is fitted online
on the board's interleaved ratios (kept in the results store's ``table_pairs``,
so a fit survives runs). Why ratios: absolute p50s on a shared host drift
1.5× over minutes, interleaved ratios reproduce to 0.3 % (DESIGN.md §5). With
latency ≈ s·T + o, the ratio to the reference is

    ratio = (T_c + o') / (T_ref + o'),   o' = o / s   (table ms)

so one parameter, o', is fitted on ratios (:func:`fit_ratio_offset`); the scale
s is needed only for absolute ms, and is read from the reference's measured
p50s (s = p50_ref / (T_ref + o')).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.compile.build import lower_onnx
from harness.compile.targets import TargetSpec
from harness.compile.tuning import _import_cpu_tensor_intrin, locked, open_database

if TYPE_CHECKING:
    from harness.store import ResultsStore

__all__ = ["TIMES_FILE", "LatencyTable", "RetimeReport", "TableFit", "TablePrediction", "TaskTime", "fit_overhead",
           "fit_ratio_offset", "read_retimed", "retime_tasks", "table_prediction", "workload_key"]

#: The re-timed task times of a tuning database, beside its two files (:func:`retime_tasks`).
TIMES_FILE = "table_times.json"
TIMES_VERSION = 1

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TaskTime:
    """One tuning task of a model in the table.

    Attributes:
        name: MetaSchedule's task name (the fused function, e.g. ``fused_conv2d1_add_relu``).
        weight: how many times the model calls it per inference.
        ms: the run time of one call in ms that the sum uses: the re-timed median when the database's
            times file (:func:`retime_tasks`) holds a fresh entry for its best record, else the best
            recorded run time (mean of the record's repeats); None when the database has no record of
            its workload.
        source: ``"retimed"`` (``ms`` is the one-session median of :func:`retime_tasks`),
            ``"recorded"`` (the tuning-time record: one sample under the load of that moment), or None
            (no record).
        recorded_ms: the best record's run time in ms (whatever ``source`` is), None without a record.
    """

    name: str
    weight: int
    ms: float | None
    source: str | None = None
    recorded_ms: float | None = None


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

    @property
    def retimed(self) -> int:
        """How many tasks' times are re-timed ones (:func:`retime_tasks`); the others with a record are
        tuning-time records (``TaskTime.source``)."""
        return sum(1 for t in self.tasks if t.source == "retimed")

    @property
    def times(self) -> str:
        """``"retimed"`` (every task with a record re-timed), ``"recorded"`` (none) or ``"mixed"``."""
        timed = [t for t in self.tasks if t.ms is not None]
        n = self.retimed
        return "retimed" if timed and n == len(timed) else "recorded" if n == 0 else "mixed"

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


def table_prediction(onnx_path: Path, target: TargetSpec, db_dir: Path, *, database=None) -> TablePrediction:
    """Σ weight × time of an ONNX model's tuning tasks in the database at ``db_dir``.

    A task's time is its re-timed median from ``db_dir/table_times.json`` (:func:`retime_tasks`) when
    that file has a fresh entry for its workload (its ``recorded_ms`` equals the database's current best
    record's), else the best record's run time; ``TaskTime.source`` says which.

    Args:
        onnx_path: the model (one static input), as compiled for ``target``.
        target: the target the database was tuned for (its tasks are that target's fused TIR).
        db_dir: the tuning database (``harness.compile.tuning.database_dir_for``).
        database: an already opened ``JSONDatabase`` of ``db_dir`` to read instead of opening it under its
            lock (a snapshot: :class:`LatencyTable` keeps one while the files do not change).

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
    retimed = read_retimed(db_dir)
    with (locked(db_dir) if database is None else contextlib.nullcontext()):
        db = open_database(db_dir) if database is None else database
        for task in tasks:
            mod = task.dispatched[0]
            ms_per_call = recorded = source = None
            if db.has_workload(mod):
                wl = db.commit_workload(mod)
                top = db.get_top_k(wl, 1)
                recorded = _record_ms(top[0]) if top else None
                if recorded is not None:
                    entry = retimed.get(workload_key(wl.mod))
                    if entry is not None and entry.get("recorded_ms") == recorded:  # fresh: same best record
                        ms_per_call, source = float(entry["ms"]), "retimed"
                    else:
                        ms_per_call, source = recorded, "recorded"
            out.append(TaskTime(task.task_name, int(task.weight), ms_per_call, source, recorded))
    total = sum(t.weight * t.ms for t in out if t.ms is not None)
    missing = tuple(t.name for t in out if t.ms is None)
    if missing:
        log.info("table: %d of %d tasks of %s have no record in %s", len(missing), len(out), onnx_path, db_dir)
    return TablePrediction(tuple(out), total, missing)


# ------------------------------------------------------------------------------------------ re-timing


def _record_ms(record) -> float | None:
    """A tuning record's run time in ms (mean of its repeats), None when it has none (a failed trial)."""
    secs = [float(s) for s in (record.run_secs or [])]
    return 1e3 * statistics.fmean(secs) if secs else None


def workload_key(mod) -> str:
    """The key of a workload in the times file: its structural hash (``tvm_ffi.structural_hash``, what the
    database's ``module_equality="structural"`` compares by), 16 hex digits."""
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(mod) & 0xFFFFFFFFFFFFFFFF:016x}"


_TIMES_CACHE: dict[str, tuple[tuple, dict]] = {}
_TIMES_LOCK = threading.Lock()


def _times_path(db_dir: Path) -> Path:
    return Path(db_dir) / TIMES_FILE


def _read_times_file(db_dir: Path) -> dict:
    """The whole times file (``{"version", "workloads": {...}, ...}``); an empty one when absent or unreadable."""
    path = _times_path(db_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"version": TIMES_VERSION, "workloads": {}}
    except (OSError, ValueError) as exc:
        log.warning("table: ignoring unreadable %s (%s): the recorded times are used", path, exc)
        return {"version": TIMES_VERSION, "workloads": {}}
    if not isinstance(data, dict) or data.get("version") != TIMES_VERSION or not isinstance(data.get("workloads"), dict):
        log.warning("table: ignoring %s (not a version %d times file): the recorded times are used", path,
                    TIMES_VERSION)
        return {"version": TIMES_VERSION, "workloads": {}}
    return data


def read_retimed(db_dir: Path) -> dict[str, dict]:
    """The re-timed entries of the database at ``db_dir`` (its ``table_times.json``), per :func:`workload_key`.

    Each entry: ``ms`` (median over passes, ms per call), ``samples_ms`` (one per pass), ``passes``,
    ``recorded_ms`` (the best record's run time when it was re-timed: the entry is fresh while the
    database's best record of that workload still has this time), ``task``, ``retimed_at`` (UTC ISO).
    Kept per process while the file is unchanged (size, mtime). No file: ``{}``.
    """
    path = _times_path(db_dir)
    try:
        st = path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
    except FileNotFoundError:
        return {}
    key = str(path.resolve())
    with _TIMES_LOCK:
        hit = _TIMES_CACHE.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
    entries = _read_times_file(db_dir)["workloads"]
    with _TIMES_LOCK:
        _TIMES_CACHE[key] = (stamp, entries)
    return entries


def _db_stamp(db_dir: Path) -> dict:
    """The database's files as the times file records them: sizes in bytes (records only grow)."""
    from harness.compile.tuning import RECORD_FILE, WORKLOAD_FILE

    out = {}
    for label, name in (("workload_bytes", WORKLOAD_FILE), ("record_bytes", RECORD_FILE)):
        p = Path(db_dir) / name
        out[label] = p.stat().st_size if p.exists() else 0
    return out


@dataclass(frozen=True, slots=True)
class RetimeReport:
    """What :func:`retime_tasks` did.

    Attributes:
        path: the times file.
        workloads: distinct workloads asked for that have a record in the database.
        no_record: asked-for workloads without a valid record (nothing to time).
        fresh: workloads whose entry was already fresh (not timed again).
        retimed_now: workloads timed by this call.
        failed: workloads whose best schedule failed to build or run (kept on the recorded time), names.
        passes: passes over the timed workloads.
        build_s, time_s: seconds building the schedules and timing them.
    """

    path: Path
    workloads: int
    no_record: int
    fresh: int
    retimed_now: int
    failed: tuple[str, ...]
    passes: int
    build_s: float
    time_s: float

    def as_dict(self) -> dict:
        """Plain data (``--json``)."""
        return {"times_file": str(self.path), "workloads": self.workloads, "no_record": self.no_record,
                "fresh": self.fresh, "retimed_now": self.retimed_now, "failed": list(self.failed),
                "passes": self.passes, "build_s": round(self.build_s, 3), "time_s": round(self.time_s, 3)}


def retime_tasks(db_dir: Path, target: TargetSpec, *, tasks: Iterable[Any] | None = None, passes: int = 3,
                 seed: int = 0, repeat: int = 5, min_repeat_ms: int = 10, force: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> RetimeReport:
    """Re-time the best schedule of every workload of a tuning database (or of ``tasks``) in one session, on this host.

    Why: a record's run time is one sample (``TuningConfig.repeat`` 1) taken whenever tuning reached that
    task, under whatever load the machine had then; over a 13-minute grid warm-up here the load drifted
    from 1 to 9 on 2 cores and recorded/re-timed ratios spread 0.2–2.0 across tasks, so the table's sum
    ranked architectures badly (benchmarks/table_fidelity.py: ResNet-20 Spearman 0.88, ratio MAPE
    24.5 % on recorded times; 0.983 / 4.5 % re-timed). Here each workload's best record
    (``Database.get_top_k``) is built once (the tuning's build: no tensor-intrin import) and timed in
    ``passes`` interleaved passes — every workload once per pass, in an order shuffled per pass
    (``random.Random(seed)``), so a change of load hits them alike — each time the median of
    ``time_evaluator(number=0, repeat, min_repeat_ms)``; a workload's time is its median over passes.
    The times go to ``db_dir/table_times.json`` (written atomically, merged with the entries already
    there), which :func:`table_prediction` prefers while an entry is fresh (the database's best record
    of that workload is still the one timed).

    Resumable: a workload whose entry is fresh is not timed again unless ``force``; a call with nothing
    new returns without building anything. The database's lock is held only while reading it.

    Timing is in this process on this host's CPU (``tvm.cpu()``): only for a database tuned on this
    host (device ``local``). A board's database keeps its tuning-time records (labelled ``recorded``).

    Args:
        db_dir: the tuning database (``harness.compile.tuning.database_dir_for``).
        target: the target it was tuned for; must be one this host runs (an ``llvm`` target).
        tasks: MetaSchedule ``ExtractedTask``s to cover (e.g. ``GridTasks.tasks``); None: every workload
            with a record.
        passes: interleaved passes (>= 1).
        seed: seed of the per-pass shuffles.
        repeat, min_repeat_ms: ``time_evaluator``'s repeats per timing and minimum ms per repeat.
        force: time every workload again, fresh or not.
        progress: called ``(done, total)`` over builds + timings.

    Returns:
        A :class:`RetimeReport`.

    Raises:
        ValueError: ``passes`` < 1, or a target that is not for this host's CPU.
    """
    import numpy as np
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from harness.compile.tuning import _make_fast_build

    if passes < 1:
        raise ValueError(f"passes {passes} must be >= 1")
    tvm_target = target.tvm_target()
    if tvm_target.kind.name != "llvm":
        raise ValueError(f"re-timing runs on this host's CPU; target {target.name} ({tvm_target.kind.name}) is "
                         "not (a board's table keeps its tuning-time records)")
    db_dir = Path(db_dir)
    # 1. the best record of each workload, read under the lock
    chosen: dict[str, tuple[str, Any, float]] = {}  # key -> (task name, record, recorded_ms)
    no_record = 0
    with locked(db_dir):
        db = open_database(db_dir)
        if tasks is None:
            best: dict[str, tuple[float, Any]] = {}
            for rec in db.get_all_tuning_records():
                t = _record_ms(rec)
                if t is None:
                    continue
                key = workload_key(rec.workload.mod)
                if key not in best or t < best[key][0]:
                    best[key] = (t, rec)
            for key, (t, rec) in best.items():
                chosen[key] = (key, rec, t)  # a record does not know its task's name
        else:
            for task in tasks:
                mod = task.dispatched[0]
                if not db.has_workload(mod):
                    no_record += 1
                    continue
                wl = db.commit_workload(mod)
                key = workload_key(wl.mod)
                if key in chosen:
                    continue
                top = db.get_top_k(wl, 1)
                t = _record_ms(top[0]) if top else None
                if t is None:
                    no_record += 1
                    continue
                chosen[key] = (task.task_name, top[0], t)
    # 2. what needs timing
    have = read_retimed(db_dir)
    todo = {k: v for k, v in chosen.items()
            if force or have.get(k, {}).get("recorded_ms") != v[2]}
    fresh = len(chosen) - len(todo)
    path = _times_path(db_dir)
    if not todo:
        return RetimeReport(path, len(chosen), no_record, fresh, 0, (), passes, 0.0, 0.0)
    _import_cpu_tensor_intrin()
    build = _make_fast_build()
    dev = tvm.cpu()
    total = len(todo) * (1 + passes)
    done = 0
    kernels: dict[str, tuple] = {}
    failed: list[str] = []
    t0 = time.perf_counter()
    rng_args = np.random.default_rng(0)
    for key, (name, rec, _t) in todo.items():
        try:
            cand = rec.as_measure_candidate()
            lib = build(cand.sch.mod, tvm_target, None)
            args = [tvm.runtime.tensor(_random_array(rng_args, [int(x) for x in a.shape], a.dtype), dev)
                    for a in ms.arg_info.ArgInfo.from_prim_func(cand.sch.mod["main"])]
            kernels[key] = (lib, args)
        except Exception as exc:  # noqa: BLE001 - a schedule that no longer builds keeps its recorded time, said
            log.warning("re-timing: %s (%s) failed to build: %s: %s", name, key, type(exc).__name__, exc)
            failed.append(name)
        done += 1
        if progress is not None:
            progress(done, total)
    build_s = time.perf_counter() - t0
    samples: dict[str, list[float]] = {k: [] for k in kernels}
    order = list(kernels)
    shuffle = random.Random(seed)
    t1 = time.perf_counter()
    for _ in range(passes):
        shuffle.shuffle(order)
        for key in order:
            if key not in samples:
                continue
            lib, args = kernels[key]
            try:
                f = lib.time_evaluator(lib.entry_name, dev, number=0, repeat=repeat, min_repeat_ms=int(min_repeat_ms))
                samples[key].append(1e3 * float(np.median(f(*args).results)))
            except Exception as exc:  # noqa: BLE001 - a kernel that fails to run keeps its recorded time, said
                log.warning("re-timing: %s (%s) failed to run: %s: %s", todo[key][0], key, type(exc).__name__, exc)
                failed.append(todo[key][0])
                del samples[key]
            done += 1
            if progress is not None:
                progress(min(done, total), total)
    time_s = time.perf_counter() - t1
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    new = {k: {"task": todo[k][0], "ms": statistics.median(v), "samples_ms": list(v),
               "passes": len(v), "recorded_ms": todo[k][2], "retimed_at": stamp}
           for k, v in samples.items() if len(v) == passes}
    _write_times(db_dir, new, {"device": "local", "target": target.canonical_json(), "seed": seed,
                               "repeat": repeat, "min_repeat_ms": min_repeat_ms,
                               "tvm_num_threads": os.environ.get("TVM_NUM_THREADS"),
                               "runtime_threads": int(tvm.runtime.num_threads()),
                               "loadavg": [round(x, 2) for x in os.getloadavg()]})
    log.info("re-timed %d workloads of %s (%d passes, %.1f s build, %.1f s timing)", len(new), db_dir, passes,
             build_s, time_s)
    return RetimeReport(path, len(chosen), no_record, fresh, len(new), tuple(failed), passes, build_s, time_s)


def _random_array(rng, shape: list[int], dtype: str):
    """Input data for timing (values do not change a dense kernel's time): uniform [0, 1) floats, small ints."""
    if str(dtype).startswith(("int", "uint")):
        return rng.integers(0, 4, size=shape).astype(dtype)
    return rng.uniform(size=shape).astype(dtype)


def _write_times(db_dir: Path, entries: dict[str, dict], session: dict) -> None:
    """Merge ``entries`` into the times file under the database's lock (re-read there), write it atomically."""
    path = _times_path(db_dir)
    with locked(db_dir):
        data = _read_times_file(db_dir)
        data["workloads"].update(entries)
        data.update(version=TIMES_VERSION, database=_db_stamp(db_dir), last_session=session)
        fd, tmp = tempfile.mkstemp(prefix=".table_times.", suffix=".json", dir=db_dir)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


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


def fit_ratio_offset(pairs: Sequence[tuple[float, float, float]]) -> float:
    """Least-squares offset o' (table ms) of ``ratio ≈ (T_c + o') / (T_ref + o')`` over measured ratios.

    One parameter, fitted on interleaved ratios rather than absolute p50s (those drift with the
    machine's load; the ratios reproduce, DESIGN.md §5). Minimises Σ (r_i − (T_i + o')/(R_i + o'))²
    (``scipy.optimize.least_squares``), started from the linearised solution
    o' = Σ (r−1)(T − r·R) / Σ (r−1)² (exact when the pairs are), and bounded below by 0: o is a
    per-call overhead (VM, argument passing), never negative, and a negative o' fitted on a few pairs
    predicts a negative latency for any smaller model (seen here: two pairs gave o' = −0.66 ms and
    the next, narrower candidate a ratio of −0.11). A table whose sums over-count the savings
    (measured ratios farther from 1 than the table's) stays at o' = 0, and its error shows in the
    fit's MAPE. Pairs with r = 1 and T = R carry no information; if none carries any, o' = 0.

    Args:
        pairs: (T_c, T_ref, measured ratio) per measured candidate: the table's sums of the candidate
            and of the reference it was timed against (ms), and the measured median ratio.

    Returns:
        o' in table ms.

    Raises:
        ValueError: no pairs, or a non-positive sum or ratio.
    """
    import numpy as np
    from scipy.optimize import least_squares

    if not pairs:
        raise ValueError("fit_ratio_offset needs at least one (tasks_ms, reference_tasks_ms, ratio) pair")
    t, ref, r = (np.asarray(col, dtype=float) for col in zip(*pairs))
    if (t <= 0).any() or (ref <= 0).any() or (r <= 0).any():
        raise ValueError("table sums and measured ratios must be positive")
    d = r - 1.0
    den = float(np.sum(d * d))
    if den <= 1e-18:
        return 0.0
    x0 = max(float(np.sum(d * (t - r * ref)) / den), 0.0)
    fit = least_squares(lambda o: r - (t + o[0]) / (ref + o[0]), x0=[x0], bounds=([0.0], [np.inf]))
    o = float(fit.x[0])
    return 0.0 if o <= 1e-6 * float(ref.max()) else o  # on the bound (the solver stays a hair inside it)


@dataclass(frozen=True, slots=True)
class TableFit:
    """The fit of one board's table for one (target, family).

    Attributes:
        offset_ms: o' = o / s, in table ms (0 when unfitted: the raw sum ratio).
        scale: s, measured ms per table ms, the median of p50_ref / (T_ref + o') over the pairs that
            carry the reference's absolute p50 (None: no such pair; absolute ms unknown).
        n_pairs: measured ratios it was fitted on.
        mape_ratio: mean absolute percentage error of the fitted ratio on those pairs, % (None: no pairs).
    """

    offset_ms: float = 0.0
    scale: float | None = None
    n_pairs: int = 0
    mape_ratio: float | None = None

    @property
    def fitted(self) -> bool:
        """True when at least one measured ratio went into the fit."""
        return self.n_pairs > 0

    def ratio(self, tasks_ms: float, reference_tasks_ms: float) -> float:
        """Predicted latency ratio (T_c + o') / (T_ref + o') (dimensionless)."""
        return (tasks_ms + self.offset_ms) / (reference_tasks_ms + self.offset_ms)

    def latency_ms(self, tasks_ms: float) -> float | None:
        """Predicted absolute latency s·(T + o') in ms, None when the scale is unknown."""
        return None if self.scale is None else self.scale * (tasks_ms + self.offset_ms)

    def describe(self) -> str:
        """One line: ``fitted on N pairs: o' = .. ms, s = ..`` or ``unfitted: raw sum``."""
        if not self.fitted:
            return "unfitted: raw sum"
        s = f", s = {self.scale:.3f}" if self.scale is not None else ""
        return (f"fitted on {self.n_pairs} pair{'s' if self.n_pairs != 1 else ''}: o' = {self.offset_ms:.4f} ms{s}, "
                f"ratio MAPE {self.mape_ratio:.1f} %")

    def as_dict(self) -> dict:
        """The fit as plain data (summaries, ``--json``)."""
        return {"offset_ms": self.offset_ms, "scale": self.scale, "n_pairs": self.n_pairs,
                "mape_ratio": self.mape_ratio, "fitted": self.fitted}


class LatencyTable:
    """One board's latency table for one (target, model family), fitted online on its measured ratios.

    Args:
        target: the target of the tuning database (its tasks are that target's fused TIR).
        db_dir: the tuning database (``harness.compile.tuning.database_dir_for``).
        identity: the device identity the fit belongs to (``Pipeline.identity()``): another board,
            or this host with another CPU count, has a fit of its own.
        family: the model family (e.g. ``resnet20@1x1x28x28``): one overhead per family.
        store: where pairs are kept and read (None: in memory only, nothing survives the process).

    A prediction (:class:`TablePrediction`) is cached per architecture signature: an architecture's
    tasks and their recorded times do not change within a run (a database that gains records
    during the run is read again only for new signatures). Predictions are labelled ``predicted``
    and never stored as measurements.
    """

    def __init__(self, target: TargetSpec, db_dir: Path, *, identity: str, family: str,
                 store: "ResultsStore | None" = None) -> None:
        self.target, self.db_dir, self.identity, self.family, self.store = target, Path(db_dir), identity, family, store
        self._predictions: dict[str, TablePrediction] = {}
        self._pairs: list[dict] = []
        self.extractions = 0  # table_prediction calls (the per-architecture cost), for the benchmarks
        self._db = self._db_stamp = None
        self.fit = self.refit()

    def _stamp(self) -> tuple:
        from harness.compile.tuning import RECORD_FILE, WORKLOAD_FILE

        return tuple((p.stat().st_size, p.stat().st_mtime_ns) if p.exists() else None
                     for p in (self.db_dir / WORKLOAD_FILE, self.db_dir / RECORD_FILE))

    def _changed(self) -> bool:
        """True when the database's files changed since the snapshot was opened."""
        return self._db is not None and self._stamp() != self._db_stamp

    def _database(self, reopen: bool = False):
        """A snapshot of the tuning database, opened once under its lock (a warmed grid's is megabytes of
        JSON) and reopened only when a prediction lacks tasks and the files changed since (another process
        tuned meanwhile): the recorded times a run predicts with do not move under it, and a warm-up that
        holds the lock elsewhere does not stall every prediction."""
        if self._db is None or reopen:
            stamp = self._stamp()
            with locked(self.db_dir):
                self._db = open_database(self.db_dir)
            self._db_stamp = stamp
        return self._db

    @property
    def target_key(self) -> str:
        """The ``target`` column of this table's pairs (the target's canonical JSON)."""
        return self.target.canonical_json()

    def prediction(self, onnx_path: Path | None, signature: str) -> TablePrediction:
        """The table's sum for the architecture ``signature`` (cached; ``onnx_path`` read on a miss only).

        Raises:
            ValueError: a miss with no ONNX file to read.
            harness.compile.build.CompileFailed: the ONNX file cannot be imported or lowered.
        """
        hit = self._predictions.get(signature)
        if hit is not None:
            return hit
        if onnx_path is None:
            raise ValueError(f"no table prediction cached for {signature} and no ONNX file to extract it from")
        self.extractions += 1
        pred = table_prediction(Path(onnx_path), self.target, self.db_dir, database=self._database())
        if not pred.complete and self._changed():  # tuned meanwhile (a hybrid's measured candidate, a warm-up)
            pred = table_prediction(Path(onnx_path), self.target, self.db_dir, database=self._database(reopen=True))
        self._predictions[signature] = pred
        return pred

    def times_summary(self) -> dict:
        """Which task times the predictions made so far used: ``predictions`` (cached architectures),
        ``tasks_retimed`` / ``tasks_recorded`` (task uses, over those predictions), ``times`` (``retimed``,
        ``recorded``, ``mixed`` or None with no prediction), for the search summary and ``predict --table``."""
        preds = list(self._predictions.values())
        re_n = sum(p.retimed for p in preds)
        rec_n = sum(1 for p in preds for t in p.tasks if t.source == "recorded")
        times = None if not preds else "retimed" if rec_n == 0 and re_n else "recorded" if re_n == 0 else "mixed"
        return {"predictions": len(preds), "tasks_retimed": re_n, "tasks_recorded": rec_n, "times": times}

    def cached(self, signature: str) -> TablePrediction | None:
        """The cached prediction of ``signature``, or None (no extraction)."""
        return self._predictions.get(signature)

    def ratio(self, tasks_ms: float, reference_tasks_ms: float) -> float:
        """The predicted ratio with the current fit (:meth:`TableFit.ratio`)."""
        return self.fit.ratio(tasks_ms, reference_tasks_ms)

    def pairs(self) -> list[dict]:
        """The pairs the fit is made of (the store's rows, or the in-memory ones without a store)."""
        if self.store is not None:
            return self.store.table_pairs(device_identity=self.identity, target=self.target_key, family=self.family)
        return list(self._pairs)

    def refit(self) -> TableFit:
        """Fit o' on every pair of this (identity, target, family) and s on their reference p50s; sets ``fit``."""
        import numpy as np

        pairs = self.pairs()
        if not pairs:
            self.fit = TableFit()
            return self.fit
        data = [(p["tasks_ms"], p["reference_tasks_ms"], p["ratio"]) for p in pairs]
        o = fit_ratio_offset(data)
        scales = [p["reference_p50_ms"] / (p["reference_tasks_ms"] + o) for p in pairs if p.get("reference_p50_ms")]
        pred = np.array([(t + o) / (ref + o) for t, ref, _ in data])
        meas = np.array([r for _, _, r in data])
        self.fit = TableFit(o, float(np.median(scales)) if scales else None, len(pairs),
                            float(100 * np.mean(np.abs(pred / meas - 1.0))))
        return self.fit

    def add_pair(self, *, arch_signature: str, tasks_ms: float, reference_signature: str, reference_tasks_ms: float,
                 ratio: float, latency_p50_ms: float | None = None, reference_p50_ms: float | None = None,
                 measurement_id: int | None = None, ratio_id: int | None = None, run_id: str | None = None) -> TableFit:
        """Keep one measured interleaved ratio beside the table's sums (in the store when there is one), refit.

        Returns:
            The new fit.
        """
        row = dict(arch_signature=arch_signature, tasks_ms=tasks_ms, reference_signature=reference_signature,
                   reference_tasks_ms=reference_tasks_ms, ratio=ratio, latency_p50_ms=latency_p50_ms,
                   reference_p50_ms=reference_p50_ms, measurement_id=measurement_id, ratio_id=ratio_id, run_id=run_id)
        if self.store is not None:
            self.store.add_table_pair(device_identity=self.identity, target=self.target_key, family=self.family, **row)
        else:
            self._pairs.append(row)
        return self.refit()
