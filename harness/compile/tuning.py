"""MetaSchedule tuning against a persistent per-target JSON database.

Untuned Relax CPU code is naive loops, 40-90x slower than ONNX Runtime, so a
latency reward on untuned code is not hardware-aware (DESIGN.md §4, "Tuning is
mandatory on CPU"). Tuned kernels are keyed by workload (the fused TIR
function), so a database at ``cache_dir/tuning/<target key>/`` is shared by all
models, candidates and runs for one target: a pruned candidate re-tunes only
the workloads the database has not seen.

Pitfalls handled (DESIGN.md §4):

- ``LocalBuilder``'s default build imports ``tvm.s_tir.tensor_intrin`` in each
  fresh worker (~40 s on this machine, over its 30 s timeout): every build
  fails and tuning "succeeds" with zero records. We pass ``f_build=`` a build
  that skips that import (fp32 CPU code never uses those intrinsics) and raise
  the timeout.
- Records reach disk only after every task had its first batch, so a killed
  tuning call loses its records; we tune only the tasks missing from the
  database, which keeps calls short.
- Set-up: ``TuneContext`` imports ``tvm.s_tir.tensor_intrin`` (25 s, mostly
  the CUDA tables); for llvm targets we import only the CPU intrinsics (1.4 s),
  see ``_import_cpu_tensor_intrin``.
- ``LocalBuilder`` restarts its worker pool on every batch (3-4 s of TVM
  import per batch); we build in-process by default (``builder="in_process"``).
- The default ``EvolutionarySearch`` (population 512, 4 genetic iterations,
  50 random schedules) costs 20-28 s per conv task on 2 cores whatever the
  trial budget; we use population 64, 1 iteration, 16 random schedules.

Measured on this machine (2 shared cores, another job training), CIFAR-style
ResNet-20 (16/32/64) at 1x1x28x28, 18 tasks, from an empty database, same
builder and set-up fixes, 8 trials per task: TVM's default search 272 s ->
2.40 ms; our search 58.5 s -> 2.07 ms (ONNX Runtime 1.19 ms, untuned 26.0 ms).
16 trials per task (two rounds, xgb): 165 s -> 1.19 ms (ORT 1.13 ms then).
Small test CNN (8 tasks): 110 s with LocalBuilder + fast f_build -> 28 s.

The database directory is guarded with an exclusive ``fcntl.flock`` for the
whole read-tune-write, so two processes never interleave appends.
"""

from __future__ import annotations

import fcntl
import hashlib
import contextlib
import logging
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: File names JSONDatabase uses inside its work_dir (tvm 0.27 json_database.py).
WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
LOCK_FILE = ".lock"
#: MetaSchedule's console log of every tuning call on this database (appended).
TUNING_LOG = "tuning.log"


@dataclass(frozen=True, slots=True)
class TuningConfig:
    """How to tune. Immutable; checked once in ``__post_init__``.

    Attributes:
        trials_per_task: MetaSchedule trials (measured candidates) per new task;
            0 = untuned build (no database applied; labelled untuned in the manifest).
        max_trials_global: cap on trials over all new tasks of one call; None =
            ``trials_per_task * number of new tasks``.
        database_dir: database directory; None = ``cache_dir/tuning/<target key>/``.
        num_threads: threads for the search and builder/runner workers (None =
            all logical cores).
        population_size: EvolutionarySearch population (TVM default 512;
            64/1/16 below measured 4.7x faster at equal or better latency, see
            the module doc).
        genetic_num_iters: EvolutionarySearch genetic iterations (TVM default 4).
        init_min_unmeasured: EvolutionarySearch minimum of random (unmeasured)
            schedules in the initial population (TVM default 50).
        num_trials_per_iter: candidates measured per search round (TVM default 64).
        builder: ``"in_process"`` (sequential builds in this process, no pool
            start-up; see ``_make_in_process_builder``) or ``"local"``
            (``LocalBuilder`` with the fast ``f_build``).
        builder_timeout_s: LocalBuilder per-build timeout (TVM default 30 s is
            too short on 2 busy cores, DESIGN.md §4).
        runner_timeout_s: LocalRunner per-run timeout.
        number, repeat, min_repeat_ms: LocalRunner evaluator config (TVM
            defaults 3, 1, 100).
        cost_model: ``"xgb"`` (needs xgboost), ``"random"``, or ``"auto"``:
            ``"random"`` when every task gets a single search round
            (``trials_per_task <= num_trials_per_iter``: the model is never
            consulted after it is trained, yet its updates cost ~1 s per task
            on 2 cores, ~20 s for ResNet-20), else ``"xgb"``.
        seed: search seed.
        runner: a ``tvm.s_tir.meta_schedule.runner.Runner`` for non-host
            targets (a board-backed runner,
            :func:`harness.compile.board_runner.make_board_runner`); None =
            ``LocalRunner`` (host only). Not part of the tuning identity.
        runner_label: who timed the trials, recorded in the manifest
            (``local``, ``ssh:BOARD``, ``farm:TAG``); "" = ``local`` when
            ``runner`` is None.
        tasks_per_call: new tasks tuned per MetaSchedule call (None = all in
            one). MetaSchedule writes records only after every task of a call
            had its first round, so a killed call loses its records: smaller
            calls make a long tuning (a board overnight) resumable task group
            by task group, at the price of one call set-up (~1-2 s) each.
    """

    trials_per_task: int = 8
    max_trials_global: int | None = None
    database_dir: Path | None = None
    num_threads: int | None = None
    population_size: int = 64
    genetic_num_iters: int = 1
    init_min_unmeasured: int = 16
    num_trials_per_iter: int = 8
    builder: str = "in_process"
    builder_timeout_s: float = 120.0
    runner_timeout_s: float = 60.0
    number: int = 3
    repeat: int = 1
    min_repeat_ms: int = 50
    cost_model: str = "auto"
    seed: int = 0
    runner: Any = field(default=None, compare=False, repr=False)
    runner_label: str = field(default="", compare=False)
    tasks_per_call: int | None = None

    def __post_init__(self) -> None:
        if self.trials_per_task < 0:
            raise ValueError(f"trials_per_task must be >= 0, got {self.trials_per_task}")
        if self.max_trials_global is not None and self.max_trials_global < 1:
            raise ValueError(f"max_trials_global must be >= 1 or None, got {self.max_trials_global}")
        for name in ("population_size", "num_trials_per_iter", "number", "repeat"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.genetic_num_iters < 0 or self.init_min_unmeasured < 1:
            raise ValueError("genetic_num_iters must be >= 0 and init_min_unmeasured >= 1")
        if self.builder not in ("in_process", "local"):
            raise ValueError(f"builder must be 'in_process' or 'local', got {self.builder!r}")
        if self.tasks_per_call is not None and self.tasks_per_call < 1:
            raise ValueError(f"tasks_per_call must be >= 1 or None, got {self.tasks_per_call}")
        if self.cost_model not in ("auto", "xgb", "random"):
            raise ValueError(f"cost_model must be 'auto', 'xgb' or 'random', got {self.cost_model!r}")

    @property
    def resolved_cost_model(self) -> str:
        """The cost model ``"auto"`` stands for (see the field's doc)."""
        if self.cost_model != "auto":
            return self.cost_model
        return "random" if self.trials_per_task <= self.num_trials_per_iter else "xgb"

    @property
    def tuned(self) -> bool:
        """True when this config tunes (and applies the database)."""
        return self.trials_per_task > 0

    def identity(self) -> str:
        """Short string of everything that changes the tuned code (cache-key part)."""
        if not self.tuned:
            return "untuned"
        return (
            f"ms:t{self.trials_per_task}:g{self.max_trials_global}:p{self.population_size}"
            f":i{self.genetic_num_iters}:u{self.init_min_unmeasured}:b{self.num_trials_per_iter}"
            f":c{self.resolved_cost_model}:s{self.seed}:db={self.database_dir}"
        )


@dataclass(frozen=True, slots=True)
class DatabaseInfo:
    """A database's location and size: ``workloads`` and ``records`` are line counts."""

    path: Path
    workloads: int
    records: int


@dataclass(frozen=True, slots=True)
class TuneReport:
    """Outcome of one tuning call.

    Attributes:
        tasks_total: tuning tasks (distinct fused TIR workloads) in the module.
        tasks_from_db: tasks whose workload already had a valid record.
        tasks_tuned_now: tasks tuned in this call.
        seconds: wall time of the call, lock wait included (s).
        database: the database after the call.
    """

    tasks_total: int
    tasks_from_db: int
    tasks_tuned_now: int
    seconds: float
    database: DatabaseInfo


def target_key(target_json: str) -> str:
    """Directory name of a target's database: ``<kind>-<16 hex of sha256(canonical JSON)>``."""
    import json

    kind = json.loads(target_json).get("kind", "target")
    return f"{kind}-{hashlib.sha256(target_json.encode()).hexdigest()[:16]}"


def database_dir_for(cache_dir: Path, target_json: str, config: TuningConfig) -> Path:
    """The database directory a config uses for a target."""
    if config.database_dir is not None:
        return Path(config.database_dir)
    return Path(cache_dir) / "tuning" / target_key(target_json)


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def database_info(db_dir: Path) -> DatabaseInfo:
    """Size of the JSON database in ``db_dir`` (0/0 if absent)."""
    db_dir = Path(db_dir)
    return DatabaseInfo(db_dir, _count_lines(db_dir / WORKLOAD_FILE), _count_lines(db_dir / RECORD_FILE))


@contextmanager
def locked(db_dir: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``db_dir/.lock`` (blocks until free)."""
    db_dir = Path(db_dir)
    db_dir.mkdir(parents=True, exist_ok=True)
    with open(db_dir / LOCK_FILE, "a+") as fh:
        start = time.monotonic()
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        waited_s = time.monotonic() - start
        if waited_s > 1.0:
            logger.info("waited %.1f s for tuning database lock %s", waited_s, db_dir)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def repair_torn_tail(path: Path) -> int:
    """Cut a torn last line off a JSON-lines file (a writer killed mid-append); returns bytes removed.

    The file is cut after its last newline when the text after it is not a
    complete line, or when its last line is not valid JSON. Earlier lines are
    never touched. Call it holding :func:`locked` (another writer may be
    appending otherwise).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "rb+") as fh:
        fh.seek(max(0, size - (1 << 20)))
        tail = fh.read()
        end = len(tail) - 1 if tail.endswith(b"\n") else len(tail)
        start = tail.rfind(b"\n", 0, end) + 1  # start of the last line (0: the chunk's start)
        last = tail[start:end]
        if tail.endswith(b"\n"):
            try:
                json.loads(last)
                return 0
            except ValueError:
                pass
        if start == 0 and size > len(tail):
            return 0  # a last line over 1 MiB: not ours to judge
        keep = size - len(tail) + start
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    logger.warning("tuning database %s: removed a torn last line (%d bytes) left by an interrupted writer",
                   path, size - keep)
    return size - keep


#: Databases this process opened, by directory: (the files' (size, mtime_ns), the JSONDatabase).
_OPEN_DATABASES: dict[str, tuple[tuple, Any]] = {}
_OPEN_DATABASES_LOCK = threading.Lock()


def _files_stamp(db_dir: Path) -> tuple:
    out = []
    for name in (WORKLOAD_FILE, RECORD_FILE):
        try:
            st = (Path(db_dir) / name).stat()
            out.append((st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


def open_database(db_dir: Path):
    """Open (creating if missing) the ``JSONDatabase`` in ``db_dir``; a torn last line of its two
    files (a tuning run killed mid-write) is cut off first. Hold :func:`locked`.

    The parsed database is kept for the process and handed out again while its two files are
    unchanged (size and mtime): parsing a grid-warmed database (2,400 workloads, 31 MB) takes
    ~15 s here, and every compile opened it twice (the tuning check, then ``ApplyDatabase``) —
    most of a warm-database candidate's compile time (issue 13's throughput figures). A file
    changed by anyone (a tuning run, another process) is read afresh."""
    from tvm.s_tir import meta_schedule as ms

    Path(db_dir).mkdir(parents=True, exist_ok=True)
    for name in (WORKLOAD_FILE, RECORD_FILE):
        repair_torn_tail(Path(db_dir) / name)
    key = str(Path(db_dir).resolve())
    stamp = _files_stamp(Path(db_dir))
    with _OPEN_DATABASES_LOCK:
        hit = _OPEN_DATABASES.get(key)
        if hit is not None and hit[0] == stamp and None not in stamp:
            return hit[1]
    db = ms.database.JSONDatabase(work_dir=str(db_dir), module_equality="structural")
    with _OPEN_DATABASES_LOCK:
        _OPEN_DATABASES[key] = (_files_stamp(Path(db_dir)), db)
    return db


def _make_fast_build():
    """A LocalBuilder ``f_build`` that skips ``import tvm.s_tir.tensor_intrin``.

    Same as TVM 0.27's ``default_build`` minus that import (~40 s per fresh
    worker here, DESIGN.md §4). Defined as a closure so cloudpickle ships it by
    value: the builder's workers cannot import this repository.
    """

    def fast_build(mod, target, _params):
        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        return tvm_build(mod, target=target)

    return fast_build


def _import_cpu_tensor_intrin() -> None:
    """Register only the CPU tensor intrinsics, skipping the 25 s package import.

    ``TuneContext.__init__`` runs ``import tvm.s_tir.tensor_intrin``, whose
    ``__init__`` imports the cuda (19 s here), rocm (2.8 s) and hexagon (1.4 s)
    intrinsic tables: measured with ``python -X importtime``, 25 s of the
    "40-50 s set-up per tuning call" of DESIGN.md §4 (once per process). For
    an llvm target we register the package without running its ``__init__``
    and import only its x86/arm/riscv submodules (1.4 s); a later explicit
    ``import tvm.s_tir.tensor_intrin.cuda`` still works. No-op if the package
    is already imported.
    """
    import importlib
    import importlib.util
    import sys

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    import tvm.s_tir

    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    package = importlib.util.module_from_spec(spec)  # registered, __init__ not executed
    sys.modules[name] = package
    tvm.s_tir.tensor_intrin = package
    for sub in ("x86", "arm_cpu", "riscv_cpu"):
        importlib.import_module(f"{name}.{sub}")


def _make_in_process_builder():
    """A MetaSchedule builder that builds candidates sequentially in this process.

    ``LocalBuilder`` starts a fresh worker pool on every call (each worker
    imports TVM, ~3-4 s here, plus ~40 s for ``tvm.s_tir.tensor_intrin`` with
    the default build): on 2 cores that start-up, not LLVM, dominated every
    8-candidate batch. Building in-process pays no start-up; a build error
    becomes a failed ``BuilderResult`` as in ``LocalBuilder``. The cost: no
    build timeout and no isolation from a crashing LLVM (not seen here).
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_export

    fast_build = _make_fast_build()

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs):
            results = []
            for build_input in build_inputs:
                try:
                    rt_mod = fast_build(build_input.mod, build_input.target, None)
                    results.append(BuilderResult(default_export(rt_mod), None))
                except Exception as exc:  # a bad candidate, not a bad call
                    results.append(BuilderResult(None, f"InProcessBuilder: {type(exc).__name__}: {exc}"))
            return results

    return InProcessBuilder()


def _has_valid_record(db, task) -> bool:
    mod = task.dispatched[0]
    if not db.has_workload(mod):
        return False
    workload = db.commit_workload(mod)  # returns the existing entry; no new line is written
    return len(db.get_top_k(workload, 1)) > 0


def _prepare_tensor_intrin(target) -> None:
    """Register the tensor intrinsics a TuneContext of ``target`` needs (CPU only for llvm; see above)."""
    if target.kind.name == "llvm":
        _import_cpu_tensor_intrin()
    else:  # works whether or not the CPU-only registration ran before
        import importlib

        importlib.import_module("tvm.s_tir.tensor_intrin.cuda")


def tune_module(mod, target, db_dir: Path, config: TuningConfig) -> TuneReport:
    """Tune the tasks of a legalized, fused Relax module that the database lacks.

    Args:
        mod: ``tvm.IRModule`` after ``DecomposeOpsForInference`` and the
            ``"zero"`` pipeline (LegalizeOps + FuseOps + FuseTIR), i.e. the exact
            TIR that ``MetaScheduleApplyDatabase`` will look up later
            (:func:`harness.compile.build.lower_onnx`).
        target: ``tvm.target.Target``.
        db_dir: database directory (created if missing; locked during the call).
        config: a tuned ``TuningConfig`` (``trials_per_task > 0``).

    Raises:
        ValueError: ``config`` is untuned.
        Exception: whatever MetaSchedule raises; ``compile_onnx`` turns it into
            a ``tune_failed`` value.
    """
    from tvm.s_tir import meta_schedule as ms

    if not config.tuned:
        raise ValueError("tune_module needs trials_per_task > 0")
    start = time.monotonic()
    _prepare_tensor_intrin(target)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    return tune_tasks(tasks, db_dir, config, start=start)


def tune_tasks(tasks, db_dir: Path, config: TuningConfig, *,
               progress: Callable[[int, int], None] | None = None, start: float | None = None) -> TuneReport:
    """Tune the given MetaSchedule tasks that the database at ``db_dir`` lacks.

    The sibling of :func:`tune_module` for a list of tasks gathered elsewhere (the grid warm-up,
    :mod:`harness.compile.grid`, collects the tasks of many architectures). Tasks are tuned
    ``config.tasks_per_call`` at a time; each call's records reach disk at its end, so a killed
    run keeps every finished group and the next run tunes only what is still missing.

    Args:
        tasks: ``tvm.s_tir.meta_schedule.ExtractedTask`` list (their ``target`` is used).
        db_dir: database directory (created if missing; locked during the call).
        config: a tuned ``TuningConfig``; its ``runner`` times the trials (None = this host).
        progress: called as ``progress(done, to_tune)`` with the number of new tasks tuned so far
            (0 first, then after each call), from the calling thread.
        start: ``time.monotonic()`` the report's ``seconds`` count from (default: now).

    Returns:
        A :class:`TuneReport`; ``tasks_tuned_now == 0`` means MetaSchedule was not called.

    Raises:
        ValueError: ``config`` is untuned.
        Exception: whatever MetaSchedule raises (the finished groups' records stay on disk).
    """
    if not config.tuned:
        raise ValueError("tune_tasks needs trials_per_task > 0")
    start = time.monotonic() if start is None else start
    tasks = list(tasks)
    if tasks:
        _prepare_tensor_intrin(tasks[0].target)
    with locked(db_dir):
        db = open_database(db_dir)
        new_tasks = [t for t in tasks if not _has_valid_record(db, t)]
        logger.info(
            "tuning: %d tasks, %d in database %s, %d to tune",
            len(tasks), len(tasks) - len(new_tasks), db_dir, len(new_tasks),
        )
        if progress is not None:
            progress(0, len(new_tasks))
        if new_tasks:
            # MetaSchedule's console handler writes to sys.stdout (tvm/s_tir/meta_schedule/logging.py,
            # "ext://sys.stdout"), which would corrupt `--json` output: send it to a log beside the database.
            # MetaSchedule's create_loggers copies the names of the handlers already on its logger
            # and fails on an unnamed one (AttributeError: 'NoneType' object has no attribute 'format',
            # tvm/s_tir/meta_schedule/logging.py): set them aside during the call, put them back after.
            ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
            kept = list(ms_logger.handlers)
            for handler in kept:
                ms_logger.removeHandler(handler)
            try:
                step = config.tasks_per_call or len(new_tasks)
                for first in range(0, len(new_tasks), step):  # each call's records reach disk at its end
                    with open(db_dir / TUNING_LOG, "a") as log_file, contextlib.redirect_stdout(log_file):
                        _tune(new_tasks[first:first + step], db, config)
                    # its handlers write to the log file just closed: the next call makes new ones
                    _drop_meta_schedule_handlers()
                    if progress is not None:
                        progress(min(first + step, len(new_tasks)), len(new_tasks))
            finally:
                _drop_meta_schedule_handlers()
                for handler in kept:
                    ms_logger.addHandler(handler)
    report = TuneReport(
        tasks_total=len(tasks),
        tasks_from_db=len(tasks) - len(new_tasks),
        tasks_tuned_now=len(new_tasks),
        seconds=time.monotonic() - start,
        database=database_info(db_dir),
    )
    logger.info("tuning done in %.1f s: %s", report.seconds, report)
    return report


def tasks_with_records(tasks, db_dir: Path) -> list[bool]:
    """For each task, whether the database at ``db_dir`` holds a valid record of its workload.

    Raises nothing for an absent database (every entry False)."""
    tasks = list(tasks)
    if tasks and tasks[0].target.kind.name == "llvm":
        _import_cpu_tensor_intrin()
    with locked(db_dir):
        db = open_database(db_dir)
        return [_has_valid_record(db, t) for t in tasks]


def untuned_tasks(mod, target, db_dir: Path) -> tuple[int, list[str]]:
    """Tasks of a fused Relax module that the database at ``db_dir`` has no valid record for.

    For builds that apply a database without tuning (a board target with no
    board at hand): those tasks get TVM's default schedule.

    Args:
        mod, target: as for :func:`tune_module`.
        db_dir: the database directory (may be empty or absent).

    Returns:
        (number of tasks, names of the tasks without a record).
    """
    from tvm.s_tir import meta_schedule as ms

    if target.kind.name == "llvm":
        _import_cpu_tensor_intrin()
    tasks = ms.relax_integration.extract_tasks(mod, target)
    with locked(db_dir):
        db = open_database(db_dir)
        missing = [t.task_name for t in tasks if not _has_valid_record(db, t)]
    return len(tasks), missing


def _drop_meta_schedule_handlers() -> None:
    """Remove (and close) every handler on MetaSchedule's loggers after one tuning call.

    They hold the stream that was ``sys.stdout`` during the call (our tuning.log, already
    closed) and files in the call's deleted work dir; left in place, any later record
    on those loggers hits a closed file. Each tuning call configures them afresh.
    """
    for name in list(logging.root.manager.loggerDict):
        if name == "tvm.s_tir.meta_schedule" or name.startswith("tvm.s_tir.meta_schedule."):
            lg = logging.getLogger(name)
            for handler in list(lg.handlers):
                lg.removeHandler(handler)
                handler.close()


def _tune(tasks, db, config: TuningConfig) -> None:
    from tvm.s_tir import meta_schedule as ms

    num_threads = config.num_threads or os.cpu_count() or 1
    strategy = ms.search_strategy.EvolutionarySearch(
        population_size=config.population_size,
        init_min_unmeasured=config.init_min_unmeasured,
        genetic_num_iters=config.genetic_num_iters,
    )
    if config.builder == "in_process":
        builder = _make_in_process_builder()
    else:
        builder = ms.builder.LocalBuilder(
            max_workers=num_threads,
            timeout_sec=config.builder_timeout_s,
            f_build=_make_fast_build(),
        )
    runner = config.runner
    if runner is None:
        runner = ms.runner.LocalRunner(
            timeout_sec=config.runner_timeout_s,
            evaluator_config=ms.runner.EvaluatorConfig(
                number=config.number,
                repeat=config.repeat,
                min_repeat_ms=config.min_repeat_ms,
                enable_cpu_cache_flush=False,
            ),
        )
    per_task = config.trials_per_task
    total = config.max_trials_global or per_task * len(tasks)
    with tempfile.TemporaryDirectory(prefix="hilprune-ms-") as work_dir:
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            extracted_tasks=tasks,
            work_dir=work_dir,
            strategy=strategy,
            num_threads=num_threads,
            seed=config.seed,
        )
        ms.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=work_dir,
            max_trials_global=total,
            max_trials_per_task=per_task,
            num_trials_per_iter=min(config.num_trials_per_iter, per_task),
            builder=builder,
            runner=runner,
            database=db,
            cost_model=config.resolved_cost_model,
        )
    invalid = [t.task_name for t in tasks if not _has_valid_record(db, t)]
    if invalid:
        logger.warning("tuning left %d tasks without a valid record: %s", len(invalid), invalid)
