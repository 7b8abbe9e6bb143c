"""Compile an ONNX graph with TVM 0.27 Relax into a content-addressed artifact.

The artifact directory is the boundary between compile and measure (DESIGN.md
§2); the device daemon reads it with the TVM runtime only::

    <artifact_dir>/manifest.json
    <artifact_dir>/lib.so        # Relax VM executable (export_library)
    <artifact_dir>/params.npz    # weights, keys "p0000", "p0001", ... in main()'s order after the input
    <artifact_dir>/model.onnx    # the ONNX graph (for the onnxruntime backend)

and runs ``vm["main"](input, *params)`` with
``tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module("lib.so"), dev)``.

Artifacts live at ``cache_dir/artifacts/<sha256 of (ONNX bytes, canonical
target JSON, TVM version, tuning identity)>/``; they are built in a temporary
directory beside it and renamed into place, so a killed build never leaves a
half artifact and a second compile of the same thing is a cache hit.

Pipeline (DESIGN.md §4, and tvm 0.27 ``relax.pipeline.static_shape_tuning_pipeline``
for the order): ``from_onnx(keep_params_in_input=True)`` -> ``detach_params``
-> within ``with target``: ``DecomposeOpsForInference`` -> ``get_pipeline("zero")``
(LegalizeOps, FuseOps, FuseTIR) -> extract and tune tasks on that fused TIR ->
``MetaScheduleApplyDatabase`` (the database keys are exactly those fused
functions) -> ``tvm.compile`` -> ``export_library`` (``cc=`` the cross
compiler for aarch64).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from devices.manifest import MANIFEST_FILE, Manifest, TensorSig, read_manifest, write_manifest
from harness.compile.export import sha256_file
from harness.compile.targets import TargetSpec, host_cannot_run
from harness.compile.tuning import (TuningConfig, TuneReport, database_dir_for, database_info, locked, open_database,
                                    tune_module, untuned_tasks)

logger = logging.getLogger(__name__)

LIBRARY_FILE = "lib.so"
PARAMS_FILE = "params.npz"
ONNX_FILE = "model.onnx"

#: ONNX TensorProto elem_type -> numpy dtype name (onnx.TensorProto enum).
_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 6: "int32", 7: "int64", 2: "uint8", 3: "int8"}


@dataclass(frozen=True, slots=True)
class Artifact:
    """A compiled artifact on disk.

    Attributes:
        path: the artifact directory.
        manifest: its :class:`devices.manifest.Manifest`.
        library_sha256: hex sha256 of ``lib.so`` (None for a graph-only artifact).
        cache_hit: True when this call found the artifact already built.
    """

    path: Path
    manifest: Manifest
    library_sha256: str | None
    cache_hit: bool


@dataclass(frozen=True, slots=True)
class CompileError:
    """An expected compile failure (a value, not an exception).

    Attributes:
        kind: ``"import_failed"`` (ONNX unreadable or refused by the Relax
            frontend), ``"tune_failed"`` (MetaSchedule raised), ``"build_failed"``
            (a pass or ``tvm.compile`` raised) or ``"link_failed"``
            (``export_library`` / the (cross) linker failed).
        message: one human-readable line (the first 500 chars of the cause).
    """

    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class CompileResult:
    """Exactly one of ``artifact`` and ``error`` is set."""

    artifact: Artifact | None
    error: CompileError | None

    def __post_init__(self) -> None:
        if (self.artifact is None) == (self.error is None):
            raise ValueError("CompileResult needs exactly one of artifact and error")

    @property
    def ok(self) -> bool:
        return self.artifact is not None


class CompileFailed(Exception):
    """An expected compile failure raised inside this module (and by :func:`lower_onnx`);
    ``error`` holds the :class:`CompileError` value, ``str()`` its one-line message."""

    def __init__(self, kind: str, cause: BaseException | str) -> None:
        text = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        text = " ".join(str(text).split())[:500]
        super().__init__(text)
        self.error = CompileError(kind, text)


def artifact_key(onnx_bytes: bytes, target: TargetSpec, tuning: TuningConfig) -> str:
    """sha256 hex of ONNX bytes + canonical target JSON + TVM version + tuning identity."""
    import hashlib

    import tvm

    digest = hashlib.sha256()
    for part in (onnx_bytes, target.canonical_json().encode(), tvm.__version__.encode(),
                 tuning.identity().encode()):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def apply_only(target: TargetSpec, tuning: TuningConfig) -> bool:
    """True when a tuned build must apply the database without tuning: nothing can time the
    target's code here (a board target and no board runner in ``tuning.runner``)."""
    return tuning.tuned and tuning.runner is None and host_cannot_run(target) is not None


#: A ``.tmp-*`` build dir untouched this long was left by a killed process (s).
STALE_TMP_S = 6 * 3600


def _remove_stale_tmp(root: Path) -> None:
    now = time.time()
    for entry in root.glob(".tmp-*"):
        try:
            if now - entry.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def _load_manifest(path: Path) -> Artifact:
    manifest = read_manifest(path)
    return Artifact(path, manifest, manifest.library_sha256, cache_hit=True)


def compile_onnx(
    onnx_path: Path, target: TargetSpec, cache_dir: Path, tuning: TuningConfig
) -> CompileResult:
    """Compile ``onnx_path`` for ``target`` into ``cache_dir/artifacts/<key>/``.

    Args:
        onnx_path: ONNX model with one static-shape input (e.g. fp32
            ``[1, 1, 28, 28]``) and one output.
        target: from ``harness.compile.targets.resolve_target``.
        cache_dir: root of the artifact cache and (by default) the tuning
            databases (``cache_dir/tuning/<target key>/``).
        tuning: ``TuningConfig(trials_per_task=0)`` for an untuned build. A
            tuned config for a target this host cannot run and no
            ``tuning.runner`` (no board at hand) applies what the database
            holds without tuning: the manifest's ``tuning.tasks_untuned``
            says how many tasks got TVM's default schedule (see
            :func:`apply_only`); such an artifact is keyed by the database's
            size too, so a later, fuller database builds anew.

    Returns:
        ``CompileResult`` with the artifact, or with a ``CompileError`` value
        for an expected failure (see ``CompileError.kind``).

    Raises:
        FileNotFoundError: ``onnx_path`` does not exist.
    """
    onnx_path = Path(onnx_path)
    cache_dir = Path(cache_dir)
    onnx_bytes = onnx_path.read_bytes()
    key = artifact_key(onnx_bytes, target, tuning)
    if apply_only(target, tuning):
        db = database_info(database_dir_for(cache_dir, target.canonical_json(), tuning))
        key = artifact_key(onnx_bytes + f"|apply-only:{db.workloads}:{db.records}".encode(), target, tuning)
    root = cache_dir / "artifacts"
    final = root / key
    if (final / MANIFEST_FILE).exists():
        logger.info("artifact cache hit %s", final)
        return CompileResult(_load_manifest(final), None)

    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", dir=root))
    try:
        manifest = _build(onnx_path, onnx_bytes, target, cache_dir, tuning, tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the daemon may run as another user
        try:
            os.rename(tmp, final)
        except OSError:
            if (final / MANIFEST_FILE).exists():  # another process won the race
                logger.info("artifact %s appeared while building; using it", final)
                shutil.rmtree(tmp, ignore_errors=True)
                return CompileResult(_load_manifest(final), None)
            raise
    except CompileFailed as failed:
        shutil.rmtree(tmp, ignore_errors=True)
        logger.warning("compile failed (%s): %s", failed.error.kind, failed.error.message)
        return CompileResult(None, failed.error)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CompileResult(Artifact(final, manifest, manifest.library_sha256, False), None)


def _io_signature(onnx_model) -> tuple[dict[str, Any], dict[str, Any]]:
    graph = onnx_model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise CompileFailed("import_failed", f"need 1 input and 1 output, got {len(inputs)} and {len(graph.output)}")

    def sig(value_info) -> dict[str, Any]:
        ttype = value_info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim]
        if any(d <= 0 for d in dims):
            raise CompileFailed("import_failed", f"{value_info.name!r} has a dynamic shape {dims}")
        return {"name": value_info.name, "shape": dims, "dtype": _ONNX_DTYPES.get(ttype.elem_type, str(ttype.elem_type))}

    out = sig(graph.output[0])
    del out["name"]
    return sig(inputs[0]), out


@dataclass(frozen=True, slots=True)
class Lowered:
    """An ONNX graph lowered to the fused Relax module that tuning and the build work on.

    Attributes:
        mod: ``tvm.IRModule`` after ``DecomposeOpsForInference``, ``CanonicalizeBindings`` and the
            ``"zero"`` pipeline (LegalizeOps, FuseOps, FuseTIR): its fused TIR functions are the tuning
            tasks and the tuning database's keys.
        weights: the detached parameters, in ``main()``'s order after the input (float32 numpy arrays).
        input_sig, output_sig: ``{"name", "shape", "dtype"}`` of the graph's input and output
            (the output has no name).
    """

    mod: Any
    weights: list
    input_sig: dict[str, Any]
    output_sig: dict[str, Any]


def lower_onnx(onnx_bytes: bytes, target: TargetSpec) -> Lowered:
    """Import an ONNX graph into Relax and lower it for ``target`` up to (not including) tuning.

    The one lowering of the project: :func:`compile_onnx` builds from it and the grid warm-up
    (:mod:`harness.compile.grid`) extracts its tasks from it, so both see the same workloads.

    Raises:
        CompileFailed: ``import_failed`` (unreadable ONNX, not one static input and output, refused by the
            frontend) or ``build_failed`` (a lowering pass raised); ``str()`` is one line.
    """
    import onnx
    from tvm import relax
    from tvm.relax.frontend import detach_params
    from tvm.relax.frontend.onnx import from_onnx

    try:
        onnx_model = onnx.load_from_string(onnx_bytes)
        input_sig, output_sig = _io_signature(onnx_model)
        mod = from_onnx(
            onnx_model,
            shape_dict={input_sig["name"]: input_sig["shape"]},
            dtype_dict={input_sig["name"]: input_sig["dtype"]},
            keep_params_in_input=True,
        )
        mod, params = detach_params(mod)
    except CompileFailed:
        raise
    except Exception as exc:
        raise CompileFailed("import_failed", exc) from exc
    weights = [p.numpy() for p in params.get("main", [])]
    try:
        with target.tvm_target():
            mod = relax.transform.DecomposeOpsForInference()(mod)
            mod = relax.transform.CanonicalizeBindings()(mod)
            mod = relax.get_pipeline("zero")(mod)  # no database current: legalize + fuse only
    except Exception as exc:
        raise CompileFailed("build_failed", exc) from exc
    return Lowered(mod, weights, input_sig, output_sig)


def _build(onnx_path: Path, onnx_bytes: bytes, target: TargetSpec, cache_dir: Path,
           tuning: TuningConfig, out_dir: Path) -> Manifest:
    import tvm
    from tvm import relax

    start = time.monotonic()
    lowered = lower_onnx(onnx_bytes, target)
    mod, weights, input_sig, output_sig = lowered.mod, lowered.weights, lowered.input_sig, lowered.output_sig

    tvm_target = target.tvm_target()
    tune_report: TuneReport | None = None
    db_dir = database_dir_for(cache_dir, target.canonical_json(), tuning) if tuning.tuned else None

    untuned: list[str] = []
    tasks_total = 0
    if tuning.tuned and apply_only(target, tuning):
        try:
            tasks_total, untuned = untuned_tasks(mod, tvm_target, db_dir)
        except Exception as exc:
            raise CompileFailed("build_failed", exc) from exc
        if untuned:
            logger.info("%s: %d of %d tasks have no tuning record in %s and get the default schedule "
                           "(untuned): nothing here can time %s code; tune on a board with "
                           "`hilprune tune --device ssh:BOARD|farm:TAG`", target.name, len(untuned), tasks_total,
                           db_dir, target.arch)
    elif tuning.tuned:
        try:
            tune_report = tune_module(mod, tvm_target, db_dir, tuning)
        except Exception as exc:
            logger.debug("tuning raised", exc_info=True)
            raise CompileFailed("tune_failed", exc) from exc
        tasks_total = tune_report.tasks_total

    try:
        with tvm_target:
            if db_dir is not None:
                with locked(db_dir):
                    database = open_database(db_dir)
                with database:
                    mod = relax.transform.MetaScheduleApplyDatabase()(mod)
            executable = tvm.compile(mod, target=tvm_target)
    except Exception as exc:
        raise CompileFailed("build_failed", exc) from exc

    lib_path = out_dir / LIBRARY_FILE
    try:
        if target.cross_cc:
            executable.export_library(str(lib_path), cc=target.cross_cc)
        else:
            executable.export_library(str(lib_path))
    except Exception as exc:
        raise CompileFailed("link_failed", exc) from exc

    if weights:
        np.savez(out_dir / PARAMS_FILE, **{f"p{i:04d}": w for i, w in enumerate(weights)})
    shutil.copyfile(onnx_path, out_dir / ONNX_FILE)
    runner = None
    if tune_report is not None and tune_report.tasks_tuned_now:
        runner = tuning.runner_label or ("local" if tuning.runner is None else "custom")
    manifest = Manifest(
        input=TensorSig(input_sig["name"], tuple(input_sig["shape"]), input_sig["dtype"]),
        output=TensorSig(None, tuple(output_sig["shape"]), output_sig["dtype"]),
        library=LIBRARY_FILE,
        library_sha256=sha256_file(lib_path),
        params=PARAMS_FILE if weights else None,
        onnx=ONNX_FILE,
        onnx_sha256=sha256_file(out_dir / ONNX_FILE),
        arch=target.arch,
        device_kind=target.device_kind,
        target=target.target,
        target_preset=target.name,
        tvm_version=tvm.__version__,
        build_s=round(time.monotonic() - start, 3),
        tuning={
            # a database applied to a build none of whose tasks it holds tuned nothing
            "tuned": tuning.tuned and not (tasks_total and len(untuned) == tasks_total),
            "trials_per_task": tuning.trials_per_task,
            "database": str(db_dir) if db_dir is not None else None,
            "tasks_total": tasks_total,
            "tasks_from_db": tune_report.tasks_from_db if tune_report else tasks_total - len(untuned),
            "tasks_tuned_now": tune_report.tasks_tuned_now if tune_report else 0,
            "tasks_untuned": len(untuned),
            "tune_s": round(tune_report.seconds, 3) if tune_report else 0.0,
            "runner": runner,
        },
    )
    write_manifest(out_dir, manifest)
    logger.info("built artifact in %.1f s (%s)", manifest.build_s, target.name)
    return manifest


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout (Python and file descriptor 1) to stderr meanwhile.

    TVM and MetaSchedule may print to stdout (task tables, C++ logs); the stdout
    of a command is reserved for its result (one path, a table or one JSON object).
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
