"""``hilprune compile``, ``hilprune bench`` and ``hilprune tune``: one model, one target, no search.

The command-line contract of issue 3 (other tools rely on these names)::

    hilprune compile (--model NAME | --onnx PATH) [--input-shape 1,3,224,224] --target PRESET
                     [--tune-trials N] [--out DIR]
        -> prints the artifact directory (DIR, or the content-addressed cache entry)
    hilprune bench   (--model NAME | --onnx PATH) [--input-shape ...] --target PRESET --device local
                     [--backend tvm|onnxruntime] [--repeat N] [--tune-trials N] [--db PATH] [--json]
        -> a table, or ONE JSON object (see :data:`BENCH_JSON_KEYS`); the measurement goes to the
           results store (default results/hilprune.db)
    hilprune tune    (--model NAME | --onnx PATH) [--input-shape ...] --target PRESET [--trials N]
                     [--device local|ssh:BOARD|farm:TAG --inventory FILE] [--tasks-per-call N]
        -> tasks total / from the database / tuned now, database records before -> after, and the
           tuned latency on the device that tuned (this machine when the target is this machine)

Every one of them goes through :class:`harness.pipeline.Pipeline` (export →
compile, tuning on the device that will measure → measure → output check →
store). ``compile`` has no device: for a target this host cannot run it
applies what the tuning database holds and says in one line how many tasks
have no record (they get TVM's default schedule). ``bench`` and ``tune`` with
``ssh:BOARD``/``farm:TAG`` (and ``--inventory``) tune on the board itself;
``--target host`` on a board means that board's CPU.

A model comes from the zoo (``--model``, random seeded weights, exported to
ONNX opset 17 and checked against ONNX Runtime by :func:`harness.compile.export.export_onnx`)
or from an ONNX file (``--onnx``, one static-shape input). ``--input-shape``
is N,C,H,W; for a zoo model it defaults to the model's natural shape
(:data:`harness.models.DEFAULT_INPUT_SHAPES`) and sets its ``in_channels`` and
``input_size``; for an ONNX file it must match the graph's input.

Bad input (unknown model, target or device, a malformed shape, a missing ONNX
file) raises ``ValueError``/``FileNotFoundError`` with a message naming the
fix; :func:`harness.cli.main.main` prints it as one ``hilprune: error: ...`` line
and exits 2. Expected pipeline failures (export, compile or measurement
failed, or ``wrong_output``: the device's output differs from ONNX Runtime's,
:mod:`harness.compile.check`, and the latency is not stored) print one
``hilprune: error: <kind>: ...`` line and exit 1.

Extension point (nightly benchmarks, a later issue): ``bench``'s model source
is an argparse mutually exclusive group that is *not* argparse-required (the
handler checks that one source was given), so ``--suite FILE`` can join the
group (:func:`_add_source_args` returns it) and ``bench compare`` can be added
with ``bench_parser.add_subparsers(dest="bench_command")`` without changing
the flags above.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cli.args import DeviceAction, nonneg_int, pos_int

logger = logging.getLogger(__name__)

__all__ = ["BENCH_JSON_KEYS", "DEFAULT_TUNE_TRIALS", "parse_input_shape", "register"]

#: ``tune --grid-widths`` values (harness.compile.grid.GRID_WIDTHS; repeated here to keep --help light).
GRID_WIDTHS_CHOICES = ("search", "grid")
#: Default trials per task of a grid warm-up (``tune --grid``), chosen from benchmarks/warmup_budget.py's
#: curve (ResNet-20 at 1x1x28x28 on this host, all budgets timed side by side with ONNX Runtime in one
#: session: TVM p50 1.06 / 1.35 / 1.03 / 0.76 ms at 8 / 16 / 32 / 64 trials, ORT 0.27 ms): 64 is the only
#: budget clearly better than the search's 8 (-28 %), and a warm-up is paid once per target.
GRID_TUNE_TRIALS = 64
#: Tasks per MetaSchedule call of a grid warm-up: a killed warm-up keeps every finished group.
GRID_TASKS_PER_CALL = 4
#: Default MetaSchedule trials per task of compile/bench/tune: the search's default
#: (``SearchConfig.tune_trials``), so a bench number is comparable with a search's.
DEFAULT_TUNE_TRIALS = 8
#: Keys every ``bench --json`` object has (a contract for scripts and nightly tools).
BENCH_JSON_KEYS = (
    "latency_p50_ms", "latency_p90_ms", "latency_mean_ms", "latency_std_ms", "latency_min_ms",
    "latency_max_ms", "latency_cov", "unstable", "n", "number", "source", "device", "target", "backend",
    "tuned", "tuning", "artifact_sha256", "onnx_sha256", "artifact_dir", "model", "input_shape",
    "measurement_id", "db", "compile_cache_hit", "output_sha256", "remeasured", "output_check",
)


def parse_input_shape(text: str) -> tuple[int, int, int, int]:
    """``"1,3,224,224"`` (or ``1x3x224x224``) -> ``(1, 3, 224, 224)``: batch-1-or-more NCHW.

    Raises:
        ValueError: not four positive integers; the message shows the expected form.
    """
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 4 or any(d < 1 for d in dims):
        raise ValueError(f"malformed --input-shape {text!r}: give N,C,H,W as 4 positive integers, e.g. 1,3,224,224")
    return dims  # type: ignore[return-value]


def _add_source_args(p: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """--model/--onnx (exclusive; checked in the handler), --input-shape, --seed, --cache-dir, --threads."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="zoo model: resnet20/32/56, resnet18, vgg11, vgg16, mobilenet_v2")
    src.add_argument("--onnx", metavar="PATH", help="an ONNX file with one static-shape input")
    p.add_argument("--input-shape", metavar="N,C,H,W",
                   help="input shape, e.g. 1,3,224,224 (default: the zoo model's natural shape / the ONNX graph's)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the zoo model's random weights (default 0)")
    p.add_argument("--target", default=None,
                   help="required: TVM target preset (host, rpi4, rpi5, jetson-nano, jetson-orin-nano) or a JSON dict")
    p.add_argument("--cache-dir", default=None, help="artifacts and tuning databases (default results/cache "
                                                     "or $HILPRUNE_CACHE)")
    p.add_argument("--threads", type=pos_int, default=None,
                   help="CPU threads for tuning and measuring (default: all cores)")
    return src


def register(subparsers) -> None:
    """Add ``compile``, ``bench`` and ``tune`` to the ``hilprune`` parser."""
    c = subparsers.add_parser("compile", help="compile a model for a target into an artifact directory",
                              description="Export (zoo model) and compile an ONNX graph with TVM for a target; "
                                          "prints the artifact directory. Cached by content: compiling the same "
                                          "thing twice is a cache hit.")
    _add_source_args(c)
    c.add_argument("--tune-trials", type=nonneg_int, default=DEFAULT_TUNE_TRIALS,
                   help=f"MetaSchedule trials per new task, 0 = untuned (default {DEFAULT_TUNE_TRIALS})")
    c.add_argument("--out", metavar="DIR", default=None,
                   help="copy the artifact here (default: print the cache entry's path)")
    c.add_argument("--json", action="store_true", help="print the manifest as one JSON object (with 'path')")
    c.set_defaults(func=_cmd_compile)

    b = subparsers.add_parser("bench", help="compile and measure one model on a device",
                              description="Compile (cached) and time a model on a device; the measurement is "
                                          "stored in the results store.")
    from harness.cli.nightly import add_bench_compare, add_bench_suite_args  # issue 6

    bench_src = _add_source_args(b)
    b.add_argument("--device", default="local", action=DeviceAction,
                   help="where to measure (default local: this machine); with --suite, repeat it for several "
                        "devices (they replace the suite's)")
    b.add_argument("--backend", choices=("tvm", "onnxruntime"), default="tvm",
                   help="time the TVM library (default) or the ONNX file with ONNX Runtime (no TVM build)")
    b.add_argument("--repeat", type=pos_int, default=30, help="timed blocks (raw latencies) (default 30)")
    b.add_argument("--warmup", type=nonneg_int, default=5, help="untimed warm-up calls (default 5)")
    b.add_argument("--min-repeat-ms", type=float, default=50.0,
                   help="each timed block lasts at least this long, in ms (default 50)")
    b.add_argument("--timeout-s", type=float, default=600.0, help="limit of one measurement, s (default 600)")
    b.add_argument("--tune-trials", type=nonneg_int, default=DEFAULT_TUNE_TRIALS,
                   help=f"MetaSchedule trials per new task, 0 = untuned (default {DEFAULT_TUNE_TRIALS})")
    b.add_argument("--db", default="results/hilprune.db", help="results store (default results/hilprune.db)")
    b.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    b.set_defaults(func=_cmd_bench)
    add_bench_suite_args(b, bench_src)  # --suite FILE, --inventory (harness/cli/nightly.py)
    add_bench_compare(b)  # `bench compare` (harness/cli/nightly.py)

    t = subparsers.add_parser("tune", help="tune a model's tasks into the target's tuning database",
                              description="MetaSchedule-tune the tasks of a model that the target's database "
                                          "lacks, then build and (for this machine) measure the tuned artifact.")
    _add_source_args(t)
    t.add_argument("--trials", type=pos_int, default=None,
                   help=f"trials per new task (default {DEFAULT_TUNE_TRIALS}; with --grid {GRID_TUNE_TRIALS}: "
                        "a warm-up is paid once per target, benchmarks/warmup_budget.py)")
    t.add_argument("--device", default=None,
                   help="where tuning trials are timed and the tuned latency measured: local (default for a target "
                        "this machine runs), ssh:BOARD or farm:TAG (needs --inventory; a farm's boards tune in "
                        "parallel)")
    t.add_argument("--inventory", metavar="FILE", default=None, help="farm inventory TOML for ssh:BOARD / farm:TAG")
    t.add_argument("--tasks-per-call", type=pos_int, default=None,
                   help="tasks tuned per MetaSchedule call: records of finished calls survive a kill, so a long "
                        "tuning resumes where it stopped (default: all at once locally, 4 on boards)")
    t.add_argument("--repeat", type=pos_int, default=20, help="timed blocks of the latency check (default 20)")
    t.add_argument("--grid", type=pos_int, default=None, metavar="N",
                   help="grid warm-up: tune every task that any architecture the search can propose with widths "
                        "on multiples of N produces (--model only; the search's --round-to), resumably, and "
                        "report coverage; no latency check")
    t.add_argument("--grid-widths", choices=GRID_WIDTHS_CHOICES, default="search",
                   help="with --grid: 'search' (default: the widths the search's prune actions reach) or 'grid' "
                        "(every multiple of N: what random grid architectures can take)")
    t.add_argument("--step-fraction", type=float, default=0.25,
                   help="with --grid: share of a group's filters one search action removes (the search's "
                        "--step-fraction, default 0.25)")
    t.add_argument("--retime-passes", type=int, default=3, metavar="P",
                   help="with --grid on this host: after tuning, re-time the best schedule of every grid task in one "
                        "session, P interleaved passes (median), into the database's table_times.json, which the "
                        "latency table prefers to the tuning-time records (default 3; 0: off; fresh entries are "
                        "not timed again)")
    t.add_argument("--retime-only", action="store_true",
                   help="with --grid: tune nothing, only re-time the grid's tasks that have a record (an existing "
                        "database)")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.set_defaults(func=_cmd_tune)


# ---------------------------------------------------------------------------------------------- shared


@dataclass(frozen=True, slots=True)
class _Source:
    """What is compiled: ``label`` (model name or ``onnx:<stem>``), the ONNX file,
    its input shape, the architecture signature stored with measurements, export seconds."""

    label: str
    onnx_path: Path
    input_shape: tuple[int, ...]
    arch_signature: str
    export_s: float


def _cache_dir(args: argparse.Namespace) -> Path:
    from harness.paths import default_cache_dir

    return Path(args.cache_dir) if args.cache_dir else default_cache_dir()


def _onnx_input_shape(path: Path) -> tuple[int, ...]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ValueError(f"{path} is not a readable ONNX file ({type(exc).__name__}); pass a .onnx model") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"{path} has {len(inputs)} graph inputs; hilprune compiles models with exactly one")
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in inputs[0].type.tensor_type.shape.dim)
    if any(d < 1 for d in dims):
        raise ValueError(f"{path} has a dynamic input shape {list(dims)}; re-export it with a static shape")
    return dims


def _resolve_source(args: argparse.Namespace, work_dir: Path) -> _Source:
    """Check the source flags and produce the ONNX file (exporting a zoo model into ``work_dir``).

    Raises:
        ValueError: no or both sources, unknown model, malformed or mismatching shape.
        FileNotFoundError: ``--onnx`` names no file.
        harness.compile.export.ExportError: the zoo model failed to export (a pipeline failure).
    """
    if not args.model and not args.onnx:
        raise ValueError(f"give a model: --model NAME (a zoo model) or --onnx PATH; e.g. "
                         f"hilprune {args.command} --model resnet18 --target host")
    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    if args.onnx:
        path = Path(args.onnx)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file {str(path)!r} not found; pass an existing .onnx file "
                                    "or a zoo model with --model NAME")
        graph_shape = _onnx_input_shape(path)
        if shape is not None and tuple(shape) != graph_shape:
            raise ValueError(f"--input-shape {','.join(map(str, shape))} differs from the ONNX graph's input "
                             f"{','.join(map(str, graph_shape))}; drop --input-shape or re-export the model")
        from harness.compile.export import sha256_file

        return _Source(f"onnx:{path.stem}", path, graph_shape, "onnx-" + sha256_file(path)[:16], 0.0)

    from harness.models import build_model, default_input_shape

    shape = shape or default_input_shape(args.model)  # unknown model -> ValueError naming the valid ones
    import torch

    from harness.compile.export import export_onnx

    model = build_model(args.model, in_channels=shape[1], input_size=shape[2:], seed=args.seed)
    path = work_dir / f"{args.model}.onnx"
    t0 = time.perf_counter()
    with torch.no_grad():
        export_onnx(model, tuple(shape), path)
    export_s = time.perf_counter() - t0
    signature = f"zoo-default-s{args.seed}@{'x'.join(map(str, shape))}"
    return _Source(args.model, path, tuple(shape), signature, export_s)


def _target(args: argparse.Namespace):
    """The TargetSpec of ``--target`` (checked here, not by argparse, so the error is one line)."""
    from harness.compile.targets import PRESETS, resolve_target

    if not args.target:
        raise ValueError(f"give --target PRESET ({', '.join(PRESETS)}) or a JSON target dict")
    return resolve_target(args.target)


def _tuning(trials: int, threads: int | None, tasks_per_call: int | None = None):
    from harness.compile.tuning import TuningConfig

    return TuningConfig(trials_per_task=trials, num_threads=threads, tasks_per_call=tasks_per_call)


def _compile(pipeline, source: _Source):
    """``pipeline.compile`` of the source's ONNX file, or a ``_Failure``."""
    from harness.pipeline import PipelineError

    prepared = pipeline.compile(source.onnx_path)
    if isinstance(prepared, PipelineError):
        raise _Failure(f"{prepared.kind}: {prepared.message}")
    return prepared


def _untuned_note(prepared, target, db_hint: str) -> str | None:
    """One line when the build applied a database that lacked some of its tasks (None otherwise)."""
    info = prepared.manifest.tuning
    n = int(info.get("tasks_untuned") or 0)
    if not n:
        return None
    return (f"hilprune: note: {n} of {info.get('tasks_total')} tasks have no tuning record for {target.name} in "
            f"{info.get('database')}: compiled untuned (default schedules); {db_hint}")


def _open_device(name: str, inventory: str | None, target):
    """The device ``name`` (``ssh:``/``farm:`` need ``inventory``), only boards of ``target``'s preset in a farm.

    Raises:
        ValueError: unknown device, no inventory for a board device, no board of the target in the tag,
            a board of another target; one line naming the fix.
    """
    from devices.registry import make_device

    if name.startswith(("ssh:", "farm:")) and not inventory:
        raise ValueError(f"--device {name} needs --inventory FILE (the farm's boards, e.g. "
                         "devices/examples/farm.toml)")
    preset = None if target.name in ("host", "custom") else target.name
    device = make_device(name, inventory=inventory, target=preset if name.startswith("farm:") else None)
    board = getattr(device, "board", None)
    if board is not None and preset is not None and board.target != preset:
        device.close()
        raise ValueError(f"board {board.name!r} is a {board.target}, not a {preset}: pass --target {board.target} "
                         f"or --target host (the board's own CPU), or another board")
    return device


def _pipeline(device, target, tuning, config, cache_dir: Path, store=None):
    """:meth:`harness.pipeline.Pipeline.for_device`; an unreachable board is a ``_Failure`` (exit 1)."""
    from devices.base import DeviceUnavailable
    from harness.pipeline import Pipeline

    try:
        return Pipeline.for_device(device, target, tuning, config, cache_dir, store)
    except DeviceUnavailable as exc:
        raise _Failure(f"device_unavailable: {device.name}: {exc}") from None


class _Failure(Exception):
    """An expected pipeline failure (export/compile/measure): exit 1, one line."""


def _run_guarded(fn, args: argparse.Namespace) -> int:
    from harness.compile.export import ExportError

    try:
        return fn(args)
    except ExportError as exc:
        print(f"hilprune: error: export failed: {exc}", file=sys.stderr)
        return 1
    except _Failure as exc:
        print(f"hilprune: error: {exc}", file=sys.stderr)
        return 1


def _check_measurable(target, device_name: str) -> None:
    """ValueError when the local device cannot run the target's code."""
    from harness.compile.targets import host_cannot_run

    why = host_cannot_run(target) if device_name == "local" else None
    if why:
        raise ValueError(f"{why} (device 'local'); measure it with --target host, or on a board of that target")


# --------------------------------------------------------------------------------------------- compile


def _cmd_compile(args: argparse.Namespace) -> int:
    return _run_guarded(_compile_impl, args)


def _compile_impl(args: argparse.Namespace) -> int:
    target = _target(args)
    tuning = _tuning(args.tune_trials, args.threads)
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and any(out.iterdir()) and not (out / "manifest.json").exists():
        raise ValueError(f"--out {str(out)!r} exists and is not an artifact directory; pass a new or empty DIR")
    from devices.base import MeasureConfig
    from harness.pipeline import Pipeline

    pipeline = Pipeline(None, target, tuning, MeasureConfig(), _cache_dir(args))  # no device: compile only
    with tempfile.TemporaryDirectory(prefix="hilprune-compile-") as work:
        source = _resolve_source(args, Path(work))
        artifact = _compile(pipeline, source)
    note = _untuned_note(artifact, target, f"tune them on a board: hilprune tune --target {args.target} "
                                           "--device ssh:BOARD|farm:TAG --inventory FILE")
    if note:
        print(note, file=sys.stderr)
    path = artifact.path
    if out is not None:
        path = _copy_artifact(artifact.path, out)
    if args.json:
        print(json.dumps({"path": str(path), "cache_hit": artifact.cache_hit, **artifact.manifest.to_dict()},
                         sort_keys=True))
    else:
        print(path)
    return 0


def _copy_artifact(src: Path, out: Path) -> Path:
    """Copy an artifact directory to ``out`` (replacing an artifact there) via a sibling temp dir."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for f in src.iterdir():
            shutil.copy2(f, tmp / f.name)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ----------------------------------------------------------------------------------------------- bench


def _cmd_bench(args: argparse.Namespace) -> int:
    if getattr(args, "suite", None):  # nightly suites: harness/cli/nightly.py (issue 6)
        from harness.cli.nightly import cmd_bench_suite

        return cmd_bench_suite(args)
    return _run_guarded(_bench_impl, args)


def _bench_impl(args: argparse.Namespace) -> int:
    from devices.base import MeasureConfig
    from harness.pipeline import StoreKey
    from harness.store import ResultsStore

    target = _target(args)
    _check_measurable(target, args.device)
    config = MeasureConfig(backend=args.backend, warmup=args.warmup, number=0, repeat=args.repeat,
                           min_repeat_ms=args.min_repeat_ms, timeout_s=args.timeout_s, num_threads=args.threads)
    tuning = _tuning(args.tune_trials, args.threads)
    device = _open_device(args.device, args.inventory, target)  # bad device: ValueError before any work
    store = None
    try:
        store = ResultsStore(args.db)
        pipeline = _pipeline(device, target, tuning, config, _cache_dir(args), store)
        with tempfile.TemporaryDirectory(prefix="hilprune-bench-") as work:
            source = _resolve_source(args, Path(work))
            artifact = _compile(pipeline, source)
            result = pipeline.measure(artifact, StoreKey(source.label, source.arch_signature, {
                "input_shape": list(source.input_shape), "command": "bench"}))
    finally:
        device.close()
        if store is not None:
            store.close()
    if result.error is not None:  # a wrong output is neither stored nor cached by any search
        m = result.measurement
        tail = f"; the latency (p50 {m.stats.p50_ms:.4g} ms) was not stored" if m is not None else ""
        raise _Failure(f"{result.error.kind} on {device.name}: {result.error.message}{tail}")
    m, st, manifest = result.measurement, result.measurement.stats, artifact.manifest
    tuning_info = dict(manifest.tuning)
    row: dict[str, Any] = {
        "latency_p50_ms": st.p50_ms, "latency_p90_ms": st.p90_ms, "latency_mean_ms": st.mean_ms,
        "latency_std_ms": st.std_ms, "latency_min_ms": st.min_ms, "latency_max_ms": st.max_ms,
        "latency_cov": st.cov, "unstable": st.unstable, "n": st.n, "number": m.number, "source": m.source,
        "device": m.device, "board": m.hello.get("board"), "target": pipeline.target.name,
        "backend": m.backend, "tuned": bool(tuning_info.get("tuned")),
        "tuning": tuning_info, "artifact_sha256": manifest.library_sha256,
        "onnx_sha256": manifest.onnx_sha256, "artifact_dir": str(artifact.path), "model": source.label,
        "input_shape": list(source.input_shape), "measurement_id": result.measurement_id, "db": str(args.db),
        "compile_cache_hit": artifact.cache_hit, "output_sha256": m.output_sha256, "remeasured": m.remeasured,
        "output_check": result.output_check,
    }
    if args.json:
        print(json.dumps(row, sort_keys=True))
    else:
        _print_bench(row)
    return 0


def _print_bench(r: dict[str, Any]) -> None:
    if r["backend"] == "onnxruntime":  # no TVM build: the ONNX file itself
        how = "backend onnxruntime: the ONNX file, no TVM build"
    else:
        how = f"backend tvm, {'tuned, %s trials/task' % r['tuning'].get('trials_per_task') if r['tuned'] else 'UNTUNED'}"
        if r["tuning"].get("tasks_untuned"):
            how += f", {r['tuning']['tasks_untuned']} tasks untuned"
    where = f"{r['device']} (board {r['board']})" if r.get("board") else r["device"]
    label = "" if r["source"] == "measured" else f" [{r['source'].upper()}: not a measured latency]"
    print(f"{r['model']} {'x'.join(map(str, r['input_shape']))} on {where} (target {r['target']}, {how}){label}")
    print(f"{'p50 ms':>10} {'p90 ms':>10} {'mean ms':>10} {'min ms':>10} {'CoV':>7} {'n':>4}")
    print(f"{r['latency_p50_ms']:10.3f} {r['latency_p90_ms']:10.3f} {r['latency_mean_ms']:10.3f} "
          f"{r['latency_min_ms']:10.3f} {r['latency_cov']:7.3f} {r['n']:4d}"
          + ("  UNSTABLE" if r["unstable"] else ""))
    kind = "graph-only artifact (ONNX file, no TVM library)" if r["artifact_sha256"] is None else "artifact"
    print(f"{kind} {r['artifact_dir']} ({'cache hit' if r['compile_cache_hit'] else 'built'}); "
          f"stored as measurement {r['measurement_id']} in {r['db']}")


# ------------------------------------------------------------------------------------------------ tune


def _cmd_tune(args: argparse.Namespace) -> int:
    return _run_guarded(_tune_impl, args)


def _tune_impl(args: argparse.Namespace) -> int:
    from devices.base import MeasureConfig
    from harness.compile.targets import host_cannot_run
    from harness.compile.tuning import database_dir_for, database_info
    from harness.pipeline import Pipeline

    target = _target(args)
    name = args.device or ("local" if host_cannot_run(target) is None else None)
    if name == "local":
        _check_measurable(target, "local")
    elif name is None:
        raise ValueError(f"{host_cannot_run(target)}: tuning needs the device that runs it; pass "
                         f"--device ssh:BOARD or farm:TAG with --inventory FILE")
    elif name.startswith("sim:"):
        raise ValueError(f"--device {name} is a simulator: it cannot time tuning trials; pass local, ssh:BOARD "
                         "or farm:TAG")
    if args.grid is not None:
        if not args.model:
            raise ValueError("--grid needs --model NAME (a zoo model: the grid is over its prunable groups); "
                             "for an ONNX file drop --grid")
        if not 0 < args.step_fraction < 1:
            raise ValueError(f"--step-fraction {args.step_fraction} must be in (0, 1), e.g. 0.25")
    if args.retime_passes < 0:
        raise ValueError(f"--retime-passes {args.retime_passes} must be >= 0 (0 turns re-timing off), e.g. 3")
    if args.retime_only and args.grid is None:
        raise ValueError("--retime-only needs --grid N (it re-times the grid's tasks)")
    if args.retime_only and args.retime_passes == 0:
        raise ValueError("--retime-only with --retime-passes 0 does nothing; pass --retime-passes P >= 1")
    if args.retime_only and name != "local":
        raise ValueError(f"--retime-only: re-timing runs on this host only (device {name}); a board's table uses "
                         "its tuning-time records (labelled recorded)")
    if args.trials is None:
        args.trials = GRID_TUNE_TRIALS if args.grid is not None else DEFAULT_TUNE_TRIALS
    device = _open_device(name, args.inventory, target)
    if args.grid is not None:
        try:
            return _tune_grid(args, target, device)
        finally:
            device.close()
    is_board = device.is_board
    tasks_per_call = args.tasks_per_call or (4 if is_board else None)
    tuning = _tuning(args.trials, args.threads, tasks_per_call)
    config = MeasureConfig(number=0, repeat=args.repeat, timeout_s=600.0, num_threads=args.threads)
    cache_dir = _cache_dir(args)
    try:
        pipeline: Pipeline = _pipeline(device, target, tuning, config, cache_dir)
        db_dir = database_dir_for(cache_dir, pipeline.target.canonical_json(), tuning)
        before = database_info(db_dir)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="hilprune-tune-") as work:
            source = _resolve_source(args, Path(work))
            artifact = _compile(pipeline, source)
        wall_s = time.perf_counter() - t0
        after = database_info(db_dir)
        info = dict(artifact.manifest.tuning)
        if artifact.cache_hit:  # nothing tuned by this call; the manifest's numbers are from its build
            info.update(tasks_from_db=info.get("tasks_total", 0), tasks_tuned_now=0, tune_s=0.0)
        row: dict[str, Any] = {
            "model": source.label, "input_shape": list(source.input_shape), "target": pipeline.target.name,
            "target_dict": pipeline.target.target, "trials_per_task": args.trials, "database": str(db_dir),
            "tuned_on": device.name, "tasks_per_call": tasks_per_call,
            "tasks_total": info.get("tasks_total"), "tasks_from_db": info.get("tasks_from_db"),
            "tasks_tuned_now": info.get("tasks_tuned_now"), "tune_s": info.get("tune_s"),
            "wall_s": round(wall_s, 3), "db_workloads_before": before.workloads,
            "db_workloads_after": after.workloads, "db_records_before": before.records,
            "db_records_after": after.records, "artifact_dir": str(artifact.path),
            "artifact_sha256": artifact.manifest.library_sha256, "compile_cache_hit": artifact.cache_hit,
            "latency_p50_ms": None, "device": None,
        }
        result = pipeline.measure(artifact)
    finally:
        device.close()
    if result.error is not None:
        row["latency_note"] = f"{result.error.kind}: {result.error.message}"
    elif not result.is_latency:
        row["latency_note"] = f"{result.measurement.source} timing, not a latency (output checked)"
    else:
        row.update(latency_p50_ms=result.p50_ms, latency_cov=result.measurement.stats.cov, device=device.name,
                   board=result.measurement.hello.get("board"))
    if args.json:
        print(json.dumps(row, sort_keys=True))
        return 0
    print(f"{row['model']} {'x'.join(map(str, row['input_shape']))} for {row['target']}: "
          f"{row['trials_per_task']} trials per new task timed on {row['tuned_on']}, database {row['database']}")
    print(f"tasks: {row['tasks_total']} total, {row['tasks_from_db']} from the database, "
          f"{row['tasks_tuned_now']} tuned now ({row['tune_s']:.1f} s tuning, {wall_s:.1f} s in all)"
          + ("; artifact cache hit" if artifact.cache_hit else ""))
    print(f"database records: {before.records} -> {after.records} "
          f"(workloads {before.workloads} -> {after.workloads})")
    if row["latency_p50_ms"] is not None:
        print(f"tuned latency on {row['device']}: p50 {row['latency_p50_ms']:.3f} ms (CoV {row['latency_cov']:.3f})")
    else:
        print(f"tuned latency: not measured ({row['latency_note']})")
    print(f"artifact {row['artifact_dir']}")
    return 0


# ------------------------------------------------------------------------------------------- tune --grid


class _TuneProgress:
    """Progress of a grid warm-up on stderr: a tqdm bar on a terminal (tasks done / total, ETA),
    time-stamped lines otherwise (logs, cron), nothing with ``mode="off"``."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.bar = None
        self.t0 = time.monotonic()
        self.stage = ""

    def line(self, message: str) -> None:
        if self.mode == "bar":
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)
        elif self.mode == "lines":
            print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage, self.t0 = stage, time.monotonic()
            if self.mode == "bar" and total:
                from tqdm import tqdm

                unit = "arch" if stage == "enumerating" else "task"
                self.bar = tqdm(total=total, desc=stage, unit=unit, file=sys.stderr, dynamic_ncols=True)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        elif self.mode == "lines" and total:
            elapsed = time.monotonic() - self.t0
            eta = f", ETA {elapsed / done * (total - done):.0f} s" if done else ""
            what = "architectures" if stage == "enumerating" else "tasks"
            self.line(f"{stage}: {done}/{total} {what}, {elapsed:.0f} s{eta}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _tune_grid(args: argparse.Namespace, target, device) -> int:
    """``tune --grid N``: enumerate the grid's tasks (:mod:`harness.compile.grid`), tune the missing ones."""
    from devices.base import MeasureConfig
    from harness.compile.build import stdout_to_stderr
    from harness.compile.grid import GridSpec, grid_tasks
    from harness.compile.tuning import (
        TuneReport,
        database_dir_for,
        database_info,
        tasks_with_records,
        tune_tasks,
    )
    from harness.models import default_input_shape

    shape = parse_input_shape(args.input_shape) if args.input_shape else default_input_shape(args.model)
    spec = GridSpec(round_to=args.grid, widths=args.grid_widths, step_fraction=args.step_fraction)
    tasks_per_call = args.tasks_per_call or GRID_TASKS_PER_CALL
    tuning = _tuning(args.trials, args.threads, tasks_per_call)
    cache_dir = _cache_dir(args)
    pipeline = _pipeline(device, target, tuning, MeasureConfig(num_threads=args.threads), cache_dir)
    db_dir = database_dir_for(cache_dir, pipeline.target.canonical_json(), pipeline.tuning)
    progress = _TuneProgress("bar" if sys.stderr.isatty() and not args.json else "lines")
    t0 = time.perf_counter()
    before = database_info(db_dir)
    try:
        with stdout_to_stderr():
            grid = grid_tasks(args.model, shape, pipeline.target, spec, cache_dir=cache_dir,  # weights: no matter
                              progress=lambda d, n: progress("enumerating", d, n))
        progress.close()
        progress.line(f"{args.model} grid {args.grid} ({args.grid_widths} widths): {grid.total} tasks "
                      f"({grid.conv_tasks} conv)" + (" (task list cached)" if grid.cache_hit else
                                                      f" from {grid.architectures} covering architectures"))
        if args.retime_only:
            report = TuneReport(tasks_total=grid.total, tasks_from_db=sum(tasks_with_records(grid.tasks, db_dir)),
                                tasks_tuned_now=0, seconds=0.0, database=before)
        else:
            with stdout_to_stderr():
                report = tune_tasks(grid.tasks, db_dir, pipeline.tuning,
                                    progress=lambda d, n: progress("tuning", d, n))
    except Exception as exc:  # MetaSchedule failed: the finished task groups are in the database
        if isinstance(exc, (ValueError, _Failure)):
            raise
        raise _Failure(f"tune_failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}; the task "
                       "groups tuned before are kept: run the same command again to resume") from None
    finally:
        progress.close()
    missing = 0
    if report.tasks_tuned_now or args.retime_only:
        missing = sum(1 for ok in tasks_with_records(grid.tasks, db_dir) if not ok)
    retime = _retime_grid(args, device, pipeline.target, db_dir, grid.tasks, progress)
    after = database_info(db_dir)
    row: dict[str, Any] = {
        "model": args.model, "input_shape": list(shape), "target": pipeline.target.name,
        "target_dict": pipeline.target.target, "grid": args.grid, "grid_widths": args.grid_widths,
        "step_fraction": args.step_fraction, "group_widths": [list(w) for w in grid.group_widths],
        "trials_per_task": args.trials, "tuned_on": device.name, "tasks_per_call": tasks_per_call,
        "database": str(db_dir), "tasks_total": grid.total, "conv_tasks": grid.conv_tasks,
        "tasks_in_db": report.tasks_from_db, "tasks_tuned_now": report.tasks_tuned_now, "tasks_missing": missing,
        "architectures": grid.architectures, "grid_cache_hit": grid.cache_hit,
        "enumerate_s": round(grid.enumerate_s, 3), "tune_s": round(report.seconds, 3),
        "wall_s": round(time.perf_counter() - t0, 3), "db_records_before": before.records,
        "db_records_after": after.records, "retime_only": args.retime_only, "retime": retime,
    }
    if args.json:
        print(json.dumps(row, sort_keys=True))
    else:
        print(f"{row['model']} {'x'.join(map(str, shape))} for {row['target']}, grid {args.grid} "
              f"({args.grid_widths} widths): {row['trials_per_task']} trials per new task timed on "
              f"{row['tuned_on']}, database {row['database']}")
        print(f"coverage: {row['tasks_total']} tasks total, {row['tasks_in_db']} in the database, "
              f"{row['tasks_tuned_now']} tuned now, {missing} still missing "
              f"({row['enumerate_s']:.1f} s enumerating, {row['tune_s']:.1f} s tuning)")
        print(f"database records: {before.records} -> {after.records}")
        print(_retime_line(retime))
    if missing:
        print(f"hilprune: error: {missing} tasks have no valid tuning record after tuning (see tuning.log in "
              f"{db_dir}); run the command again or raise --trials", file=sys.stderr)
        return 1
    return 0


def _retime_grid(args: argparse.Namespace, device, target, db_dir: Path, tasks, progress: _TuneProgress) -> dict:
    """``tune --grid``'s re-timing step (:func:`harness.compile.table.retime_tasks`): the grid's tasks' best
    schedules timed in one session on this host; a board's database keeps its tuning-time records."""
    from harness.compile.table import retime_tasks

    if args.retime_passes == 0:
        return {"skipped": "--retime-passes 0: the table uses the tuning-time records"}
    if device.is_board:
        return {"skipped": f"tuned on {device.name}: re-timing runs on this host only; the table uses the "
                           "tuning-time records (labelled recorded)"}
    try:
        report = retime_tasks(db_dir, target, tasks=tasks, passes=args.retime_passes,
                              progress=lambda d, n: progress("re-timing", d, n))
    finally:
        progress.close()
    return report.as_dict()


def _retime_line(retime: dict) -> str:
    """One line on the re-timing step of ``tune --grid``."""
    if "skipped" in retime:
        return f"re-timing: skipped ({retime['skipped']})"
    failed = f", {len(retime['failed'])} FAILED (kept on their recorded times)" if retime["failed"] else ""
    return (f"re-timing ({retime['passes']} passes, one session): {retime['retimed_now']} tasks re-timed now, "
            f"{retime['fresh']} already fresh{failed} ({retime['build_s']:.1f} s building, {retime['time_s']:.1f} s "
            f"timing) -> {retime['times_file']}")
