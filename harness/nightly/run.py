"""Run a benchmark suite: compile each benchmark once per target, measure it on each device, store everything.

``hilprune bench --suite FILE`` (issue 6) calls :func:`run_suite`. For every
benchmark of the suite (:mod:`harness.nightly.suite`), in file order:

1. the ONNX file is produced once (a zoo model exported with its seeded
   random weights, or the suite's file checked against ``input_shape``);
2. for every target and every device that can run that target's code
   (``local``: this machine's arch; ``ssh:BOARD``: the board's target preset;
   ``farm:TAG``: boards of that target; ``sim:PROFILE``: any, labelled
   ``simulated``) it goes through :class:`harness.pipeline.Pipeline`:
   compiled (content-addressed, so an unchanged model is a cache hit the next
   night and a second device of the same target reuses the build; tuning
   trials are timed on the board itself for board devices), measured, its
   output checked and stored. Pairs that cannot run are listed as ``skipped``
   in the summary, not stored.

3. with a suite reference (``[suite] reference``, issue 12): the reference
   runs first; then every other benchmark that measured ok on a (target,
   device) is also timed *interleaved* with the reference on that device in
   one session (:meth:`harness.pipeline.Pipeline.measure_ratio`; a farm runs
   the pair on one board), the reference compiled by the benchmark's own
   pipeline (same target, backend and tuning; a cache hit when the settings
   are the reference's own). The ratio benchmark / reference (median, bootstrap
   interval) is stored in ``latency_ratios`` and on the bench result; a ratio
   that could not be measured leaves the absolute result ``ok`` and says why
   in ``ratio_error`` (``reference_unavailable``, ``reference_compile_failed:<kind>``,
   ``ratio_failed:<kind>``, ``wrong_output``).

Every outcome is a row of ``bench_results``: ``ok`` with its measurement
(raw latencies, statistics, device state) or ``failed`` with a kind and the
reason (``onnx_missing``, ``source_failed``, ``compile_failed:<kind>``,
``measure_failed:<kind>``, ``wrong_output`` (the device's output differs from
ONNX Runtime's, ``harness/compile/check.py``), ``device_unavailable``,
``error``). A failure
never stops the other benchmarks. The run row holds the metadata: git
commit of the suite's repository (if any), hilprune, TVM and Python
versions, the host, and each device's daemon hello and its state at the
first and last measurement.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.nightly.suite import Benchmark, Suite

logger = logging.getLogger(__name__)

__all__ = ["SuiteOptions", "run_metadata", "run_suite"]


@dataclass(frozen=True, slots=True)
class SuiteOptions:
    """How a suite is run (the ``bench`` flags); per-benchmark suite keys win where both exist.

    Attributes:
        devices: devices for every benchmark (``--device``, repeatable), or None for each benchmark's own.
        inventory: farm inventory TOML for ``ssh:``/``farm:`` devices.
        tune_trials: MetaSchedule trials per task when a benchmark sets none.
        backend: ``tvm`` / ``onnxruntime`` when a benchmark sets none.
        repeat, warmup, min_repeat_ms, timeout_s: the measurement (see ``devices.base.MeasureConfig``);
            ``min_repeat_ms`` in ms, ``timeout_s`` in s.
        threads: CPU threads for tuning and measuring, None = all.
        cache_dir: artifacts and tuning databases.
        ratio_max_pairs: cap of interleaved rounds of a ratio to the reference
            (``devices.interleaved.InterleavedConfig.max_pairs``).
        ratio_rel_width: a ratio stops early once its bootstrap interval lies inside
            median × (1 ± ratio_rel_width) (``InterleavedConfig.rel_width``; 0.01 = ± 1 %).
    """

    devices: tuple[str, ...] | None = None
    inventory: str | None = None
    tune_trials: int = 8
    backend: str = "tvm"
    repeat: int = 30
    warmup: int = 5
    min_repeat_ms: float = 50.0
    timeout_s: float = 600.0
    threads: int | None = None
    cache_dir: Path = Path("results/cache")
    ratio_max_pairs: int = 64
    ratio_rel_width: float = 0.01


class _Fail(Exception):
    """An expected failure of one benchmark (kind + one-line reason)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = " ".join(str(message).split())[:500]


def _git_commit(folder: Path) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git repository holding ``folder``, or None."""
    try:
        sha = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=20)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20)
        return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _pyproject_version(path: Path) -> str | None:
    """``project.version`` of a checkout's pyproject.toml (hilprune run from source, not installed)."""
    import tomllib

    try:
        return tomllib.loads(path.read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return None


def run_metadata(suite: Suite) -> dict[str, Any]:
    """What a nightly number depends on, besides the device: git commit of the suite's repository
    (and of hilprune's own checkout), package versions, Python, the host."""
    import tvm

    checkout = Path(__file__).resolve().parents[2]  # harness/nightly/run.py -> the repository root
    return {
        "suite_git": _git_commit(suite.path.parent),
        "hilprune_git": _git_commit(checkout),
        "hilprune_version": _version("hilprune") or _pyproject_version(checkout / "pyproject.toml"),
        "tvm_version": getattr(tvm, "__version__", None),
        "onnxruntime_version": _version("onnxruntime"),
        "torch_version": _version("torch"),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "host": socket.gethostname(),
        "host_machine": platform.machine(),
        "host_cpu_count": os.cpu_count(),
        "argv": list(sys.argv),
    }


def _onnx_for(bench: Benchmark, work: Path) -> tuple[Path, str, str]:
    """(ONNX path, model label, architecture signature) of a benchmark.

    Raises:
        _Fail: ``onnx_missing`` (no file), ``source_failed`` (unreadable, not one static input,
            shape differs from ``input_shape``, export failed).
    """
    if bench.onnx is not None:
        if not bench.onnx.is_file():
            raise _Fail("onnx_missing", f"ONNX file {str(bench.onnx)!r} not found")
        import onnx

        from harness.compile.export import sha256_file

        try:
            model = onnx.load(str(bench.onnx), load_external_data=False)
        except Exception as exc:  # DecodeError and friends
            raise _Fail("source_failed", f"{bench.onnx} is not a readable ONNX file ({type(exc).__name__})") from None
        inits = {i.name for i in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in inits]
        if len(inputs) != 1:
            raise _Fail("source_failed", f"{bench.onnx} has {len(inputs)} graph inputs; exactly one is supported")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in inputs[0].type.tensor_type.shape.dim)
        if dims != tuple(bench.input_shape):
            raise _Fail("source_failed", f"input_shape {list(bench.input_shape)} differs from the graph's input "
                                         f"{list(dims)} in {bench.onnx}")
        return bench.onnx, f"onnx:{bench.onnx.stem}", "onnx-" + sha256_file(bench.onnx)[:16]

    import torch

    from harness.compile.export import ExportError, export_onnx
    from harness.models import build_model

    shape = tuple(bench.input_shape)
    path = work / f"{bench.name}.onnx"
    try:
        model = build_model(bench.model, in_channels=shape[1], input_size=shape[2:], seed=bench.seed)
        with torch.no_grad():
            export_onnx(model, shape, path)
    except (ExportError, ValueError, RuntimeError) as exc:
        raise _Fail("source_failed", f"export of {bench.model} failed: {exc}") from None
    return path, bench.model, f"zoo-default-s{bench.seed}@{'x'.join(map(str, shape))}"


class _Devices:
    """Open devices of one run, reused across benchmarks; closed at the end."""

    def __init__(self, inventory: str | None) -> None:
        self._inventory_path = inventory
        self._inventory = None
        self._open: dict[tuple[str, str | None], Any] = {}

    def inventory(self):
        if self._inventory is None and self._inventory_path:
            from devices.inventory import load_inventory

            self._inventory = load_inventory(self._inventory_path)
        return self._inventory

    def skip_reason(self, target, device: str) -> str | None:
        """Why ``device`` cannot run ``target``'s code (None: it can)."""
        from harness.compile.targets import host_cannot_run

        if device == "local":
            return host_cannot_run(target)
        if device.startswith("ssh:"):
            inv = self.inventory()
            if inv is None:
                return None  # make_device will say that an inventory is needed
            try:
                board = inv.board(device[4:])
            except ValueError:
                return None  # make_device names the unknown board
            if not target.name.lstrip().startswith("{") and board.target != target.name:
                return f"board {board.name} is a {board.target}, not a {target.name}"
        if device.startswith("farm:") and not target.name.lstrip().startswith("{"):
            inv = self.inventory()
            tagged = inv.tagged(device[5:]) if inv is not None else ()
            if tagged and not any(b.target == target.name for b in tagged):
                return f"no board tagged {device[5:]!r} is a {target.name}"
        return None

    def get(self, device: str, target):
        from devices.registry import make_device

        key = (device, target.name if device.startswith("farm:") else None)
        if key not in self._open:
            self._open[key] = make_device(device, inventory=self.inventory() or self._inventory_path,
                                          target=key[1])
        return self._open[key]

    def close(self) -> None:
        for dev in self._open.values():
            with contextlib.suppress(Exception):
                dev.close()
        self._open.clear()


def _source_of(device: str) -> str:
    return "simulated" if device.startswith("sim:") else "measured"


def run_suite(suite: Suite, store_path: str | Path, options: SuiteOptions = SuiteOptions(),
              run_id: str | None = None) -> dict[str, Any]:
    """Run every benchmark of ``suite`` and store each outcome; returns the run's summary.

    Args:
        suite: from :func:`harness.nightly.suite.load_suite`.
        store_path: the results store (SQLite).
        options: devices, tuning and measurement settings.
        run_id: default ``bench-<suite>-<UTC time>-<4 hex>``.

    Returns:
        ``{"run_id", "suite", "db", "reference", "ok", "failed", "skipped", "ratios", "results": [...],
        "wall_s"}``; each result has benchmark, target, device, backend, source, status, latency_p50_ms,
        latency_cov, n, error_kind, error_message, measurement_id, compile_cache_hit, and with a reference
        latency_ratio, ratio_ci_low, ratio_ci_high, ratio_pairs, ratio_id, ratio_error and the session's
        two absolute p50s ratio_latency_p50_ms, ratio_reference_p50_ms (ms). ``ratios``: how many
        results got a ratio.

    Raises:
        ValueError: an unknown device name or a bad inventory, before anything is measured.
        KeyboardInterrupt: after marking the run ``interrupted`` (results so far are kept).
    """
    from devices.base import DeviceUnavailable, MeasureConfig
    from devices.interleaved import InterleavedConfig
    from devices.registry import make_device
    from harness.compile.targets import resolve_target
    from harness.compile.tuning import TuningConfig
    from harness.pipeline import Pipeline, PipelineError, StoreKey
    from harness.store import ResultsStore

    t_start = time.perf_counter()
    devs = _Devices(options.inventory)
    names = sorted({d for b in suite.benchmarks for d in (options.devices or b.devices)})
    for name in names:  # bad names fail the whole command early, as bench does for one model
        if name != "local" and not name.startswith("farm:"):
            make_device(name, inventory=devs.inventory() or options.inventory).close()
        elif name.startswith("farm:") and not (devs.inventory() or options.inventory):
            raise ValueError(f"device {name!r} needs --inventory FILE (the farm's boards)")
    run_id = run_id or (f"bench-{suite.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-"
                        f"{secrets.token_hex(2)}")
    metadata = run_metadata(suite)
    metadata["devices"] = {}
    store = ResultsStore(store_path)
    store.create_bench_run(run_id, suite_name=suite.name, suite_path=str(suite.path), suite_sha256=suite.sha256,
                           metadata=metadata)
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    reference = suite.reference
    # the reference first: its ONNX file is then at hand when the others are timed against it
    order = sorted(suite.benchmarks, key=lambda b: b.name != reference) if reference else list(suite.benchmarks)
    ref_source: dict[str, Any] = {}  # "onnx": its ONNX path, "key": its StoreKey, or "error": why none
    if reference:
        metadata["reference"] = {"benchmark": reference}

    def record(bench: Benchmark, target_name: str, device: str, backend: str, tuning_key: str, *,
               result=None, fail: _Fail | None = None, cache_hit: bool | None = None, ratio=None,
               ratio_error: str | None = None) -> None:
        row: dict[str, Any] = dict(benchmark=bench.name, target=target_name, device=device, backend=backend,
                                   status="failed" if fail else "ok", latency_p50_ms=None, latency_p90_ms=None,
                                   latency_cov=None, n=None, unstable=None, error_kind=None, error_message=None,
                                   measurement_id=None, compile_cache_hit=cache_hit, source=_source_of(device),
                                   reference=reference, latency_ratio=None, ratio_ci_low=None, ratio_ci_high=None,
                                   ratio_pairs=None, ratio_id=None, ratio_error=ratio_error,
                                   ratio_latency_p50_ms=None, ratio_reference_p50_ms=None)
        if fail is not None:
            row.update(error_kind=fail.kind, error_message=fail.message)
            store.add_bench_result(run_id, benchmark=bench.name, device=device, target=target_name,
                                   backend=backend, tuning_key=tuning_key, source=_source_of(device),
                                   status="failed", error_kind=fail.kind, error_message=fail.message,
                                   reference_benchmark=reference)
            logger.warning("%s on %s (%s): FAILED %s: %s", bench.name, device, target_name, fail.kind, fail.message)
        else:
            m, st, mid = result.measurement, result.measurement.stats, result.measurement_id
            est = ratio.ratio if ratio is not None else None
            store.add_bench_result(run_id, benchmark=bench.name, device=device, target=target_name,
                                   backend=m.backend, tuning_key=tuning_key, source=m.source, status="ok",
                                   measurement_id=mid, reference_benchmark=reference,
                                   ratio_id=ratio.ratio_id if ratio is not None else None,
                                   latency_ratio=est.median if est is not None else None,
                                   ratio_ci=(est.ci_low, est.ci_high) if est is not None else None,
                                   ratio_error=ratio_error)
            row.update(latency_p50_ms=st.p50_ms, latency_p90_ms=st.p90_ms, latency_cov=st.cov, n=st.n,
                       unstable=st.unstable, measurement_id=mid, source=m.source, output_check=result.output_check)
            if est is not None:
                row.update(latency_ratio=est.median, ratio_ci_low=est.ci_low, ratio_ci_high=est.ci_high,
                           ratio_pairs=ratio.measurement.pairs if ratio.measurement is not None else None,
                           ratio_id=ratio.ratio_id, ratio_latency_p50_ms=ratio.candidate_p50_ms,
                           ratio_reference_p50_ms=ratio.reference_p50_ms)
            info = metadata["devices"].setdefault(device, {"hello": m.hello, "state_first": m.device_state_before})
            info["state_last"] = m.device_state_after
            logger.info("%s on %s (%s): p50 %.4f ms, CoV %.3f%s", bench.name, device, target_name, st.p50_ms, st.cov,
                        f", ratio to {reference} {est.median:.4f} [{est.ci_low:.4f}, {est.ci_high:.4f}]"
                        if est is not None else "")
        results.append(row)

    def ratio_to_reference(pipeline, prepared, key):
        """(RatioResult or None, ratio_error or None): ``prepared`` timed interleaved with the reference."""
        if "onnx" not in ref_source:
            return None, f"reference_unavailable: {ref_source.get('error', 'the reference has no ONNX file')}"
        ref_prepared = pipeline.compile(ref_source["onnx"])
        if isinstance(ref_prepared, PipelineError):
            return None, f"reference_compile_failed:{ref_prepared.kind}: {ref_prepared.message}"[:500]
        ratio = pipeline.measure_ratio(ref_prepared, prepared, key, ref_source["key"])
        if ratio.error is not None:
            kind = ratio.error.kind
            kind = f"ratio_failed:{kind[len('measure_'):]}" if kind.startswith("measure_") else kind
            return None, f"{kind}: {' '.join(ratio.error.message.split())}"[:500]
        return ratio, None

    def one(bench: Benchmark) -> None:
        trials = bench.tune_trials if bench.tune_trials is not None else options.tune_trials
        backend = bench.backend or options.backend
        tuning = TuningConfig(trials_per_task=trials, num_threads=options.threads)
        tuning_key = tuning.identity()
        config = MeasureConfig(backend=backend, warmup=options.warmup, number=0, repeat=options.repeat,
                               min_repeat_ms=options.min_repeat_ms, timeout_s=options.timeout_s,
                               num_threads=options.threads)
        ratio_config = InterleavedConfig(backend=backend, warmup=options.warmup, num_threads=options.threads,
                                         timeout_s=options.timeout_s, max_pairs=options.ratio_max_pairs,
                                         min_pairs=min(8, options.ratio_max_pairs),
                                         rel_width=options.ratio_rel_width)
        devices = options.devices or bench.devices
        is_reference = bench.name == reference
        # the ONNX files live in the run's work folder: the reference's is needed by the others
        try:
            onnx_path, label, signature = _onnx_for(bench, work)
        except _Fail as fail:
            if is_reference:
                ref_source["error"] = f"{fail.kind}: {fail.message}"
            for t in bench.targets:
                for d in devices:
                    record(bench, resolve_target(t).name, d, backend, tuning_key, fail=fail)
            return
        key = StoreKey(label, signature, {"input_shape": list(bench.input_shape), "command": "bench --suite",
                                          "bench_run_id": run_id, "benchmark": bench.name})
        if is_reference:
            from harness.compile.export import sha256_file

            ref_source.update(onnx=onnx_path, key=key)
            metadata["reference"]["onnx_sha256"] = sha256_file(onnx_path)
        for target_name in bench.targets:
            target = resolve_target(target_name)  # validated with the suite
            for d in devices:
                why = devs.skip_reason(target, d)
                if why:
                    skipped.append({"benchmark": bench.name, "target": target.name, "device": d,
                                    "reason": why})
                    continue
                try:
                    pipeline = Pipeline.for_device(devs.get(d, target), target, tuning, config,
                                                   options.cache_dir, store, ratio_config=ratio_config)
                except (DeviceUnavailable, ValueError) as exc:  # unreachable, no board of this target, ...
                    record(bench, target.name, d, backend, tuning_key,
                           fail=_Fail("device_unavailable", str(exc)))
                    continue
                prepared = pipeline.compile(onnx_path)
                if isinstance(prepared, PipelineError):
                    record(bench, target.name, d, backend, pipeline.tuning_key,
                           fail=_Fail(f"compile_failed:{prepared.kind}", prepared.message))
                    continue
                result = pipeline.measure(prepared, key)
                if result.error is not None:
                    kind = result.error.kind
                    kind = f"measure_failed:{kind[len('measure_'):]}" if kind.startswith("measure_") else kind
                    record(bench, target.name, d, backend, pipeline.tuning_key, cache_hit=prepared.cache_hit,
                           fail=_Fail(kind, result.error.message))
                    continue
                if not result.is_latency:  # an emulated board: stored, labelled, never in the history
                    record(bench, target.name, d, backend, pipeline.tuning_key, cache_hit=prepared.cache_hit,
                           fail=_Fail("not_a_latency", f"{d} gives {result.measurement.source} timings "
                                                       f"(measurement {result.measurement_id}), not latencies"))
                    continue
                ratio = ratio_error = None
                if reference and not is_reference:
                    ratio, ratio_error = ratio_to_reference(pipeline, prepared, key)
                    if ratio_error:
                        logger.warning("%s on %s (%s): no ratio to the reference %s: %s", bench.name, d,
                                       target.name, reference, ratio_error)
                record(bench, target.name, d, backend, pipeline.tuning_key, result=result,
                       cache_hit=prepared.cache_hit, ratio=ratio, ratio_error=ratio_error)

    status = "interrupted"
    work_dir = tempfile.TemporaryDirectory(prefix="hilprune-suite-")
    work = Path(work_dir.name)
    try:
        for bench in order:
            before = len(results)
            try:
                one(bench)
            except Exception as exc:  # an unexpected failure of one benchmark never stops the others
                logger.exception("benchmark %s failed unexpectedly", bench.name)
                done = {(r["target"], r["device"]) for r in results[before:]}
                trials = bench.tune_trials if bench.tune_trials is not None else options.tune_trials
                key = TuningConfig(trials_per_task=trials, num_threads=options.threads).identity()
                for t in (resolve_target(t).name for t in bench.targets):
                    for d in options.devices or bench.devices:
                        if (t, d) not in done and not any(s["benchmark"] == bench.name and s["device"] == d
                                                          and s["target"] == t for s in skipped):
                            record(bench, t, d, bench.backend or options.backend, key,
                                   fail=_Fail("error", f"{type(exc).__name__}: {exc}"))
        status = "finished"
    finally:
        devs.close()
        work_dir.cleanup()
        summary = {
            "run_id": run_id, "suite": suite.name, "suite_path": str(suite.path), "db": str(store_path),
            "reference": reference, "ratios": sum(r["latency_ratio"] is not None for r in results),
            "status": status, "ok": sum(r["status"] == "ok" for r in results),
            "failed": sum(r["status"] == "failed" for r in results), "skipped": skipped, "results": results,
            "wall_s": round(time.perf_counter() - t_start, 3),
        }
        store.finish_bench_run(run_id, status, metadata=metadata,
                               summary={k: v for k, v in summary.items() if k != "results"})
        store.close()
    return summary

