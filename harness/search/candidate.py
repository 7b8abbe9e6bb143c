"""The way of one candidate through the harness: prune → evaluate → export → compile → measure.

DESIGN.md §2 and §6. ``CandidateEvaluator.evaluate(spec)`` takes an
architecture spec (kept channels per prunable group) and returns a
``CandidateResult`` value: accuracy, MACs, params and measured latency, or an
error kind and message (expected failures are values, never exceptions
through the search loop). Latencies are cached by (model, architecture,
device, target, backend, tuning) in the results store, so a revisited
architecture is never exported, compiled or measured again; accuracy and MACs
are cached per evaluator (they are deterministic for a given base model).
A compiled library whose output on the device differs from ONNX Runtime's
(``harness/compile/check.py``) is a failed candidate (``wrong_output``): its
latency is neither stored nor cached, so a fast wrong program earns nothing.

Per-stage wall time is accumulated in ``StageTimer`` for the run summary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from devices.base import Device, MeasureConfig
from harness.compile.build import compile_onnx
from harness.compile.check import check_measurement
from harness.compile.export import ExportError, export_onnx
from harness.compile.targets import TargetSpec
from harness.compile.tuning import TuningConfig
from harness.pruning import ArchSpec, PruneGroup, apply_spec, count_macs_params
from harness.store import ResultsStore
from harness.train import evaluate

__all__ = ["CandidateResult", "CandidateEvaluator", "StageTimer", "tuning_key"]

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


def tuning_key(tuning: TuningConfig) -> str:
    """Key separating latencies of differently tuned builds in the cache: ``TuningConfig.identity()``
    (``"untuned"``, or the budget, search settings and database of a tuned build)."""
    return tuning.identity()


def graph_only_artifact(onnx_path: Path, report, out_dir: Path) -> Path:
    """An artifact directory without a library (``manifest.json`` + ``model.onnx``), for
    devices with ``needs_library = False`` such as the simulator; ``"library": null``."""
    import shutil

    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, out_dir / "model.onnx")
    manifest = {
        "format_version": 1, "library": None, "library_sha256": None, "params": None, "onnx": "model.onnx",
        "onnx_sha256": report.onnx_sha256,
        "output": {"shape": list(report.output_shape), "dtype": "float32"},
        "tuning": {"tuned": False, "trials_per_task": 0, "database": None},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return out_dir


def _where(m, device_name: str) -> str:
    """``farm:TAG (board pi4-01)`` when the measurement names its board, else the device name."""
    board = (m.hello or {}).get("board")
    return f"{device_name} (board {board})" if board else device_name


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
    """Evaluates architecture specs of one trained base model on one device and target.

    Attributes:
        model_name: zoo name of the base model (part of the latency cache key).
        base_model: the trained, unpruned torch model (never modified).
        groups: its prunable groups.
        input_shape: batch-1 input shape, e.g. (1, 1, 28, 28).
        val_data: validation dataset (tensors) for top-1.
        device: where latency is measured.
        target: compile target.
        tuning: MetaSchedule budget and database.
        measure: measurement settings.
        cache_dir: artifact and tuning cache root.
        work_dir: where ONNX files of this run go.
        store: results store (latency cache and measurement rows).
        eval_samples: validation images used per candidate (None = all).
        importance: ``"l1"`` or ``"l2"`` group magnitude.
        cache_min_id: the latency cache serves only measurements with an id >= this
            (0 = the whole store; set by the search when the device drifted).
    """

    model_name: str
    base_model: torch.nn.Module
    groups: list[PruneGroup]
    input_shape: tuple[int, ...]
    val_data: object
    device: Device
    target: TargetSpec
    tuning: TuningConfig
    measure: MeasureConfig
    cache_dir: Path
    work_dir: Path
    store: ResultsStore
    eval_samples: int | None = 2000
    importance: str = "l1"
    timer: StageTimer = field(default_factory=StageTimer)
    cache_min_id: int = 0

    def __post_init__(self) -> None:
        self._acc_cache: dict[str, tuple[float, int, int]] = {}
        self.example_input = torch.zeros(self.input_shape)
        self.work_dir = Path(self.work_dir)
        (self.work_dir / "onnx").mkdir(parents=True, exist_ok=True)
        self.stats = {"evaluated": 0, "latency_cache_hits": 0, "compiled": 0, "measured": 0, "failed": 0}

    def prune(self, spec: ArchSpec) -> torch.nn.Module:
        """A pruned deep copy of the base model with exactly ``spec``'s widths.

        Raises:
            ValueError: a spec that does not fit the groups.
        """
        with self.timer.time("prune"):
            return apply_spec(self.base_model, spec, self.example_input, importance=self.importance)

    def evaluate(self, spec: ArchSpec, *, fresh: bool = False, model: torch.nn.Module | None = None) -> CandidateResult:
        """Evaluate ``spec``: accuracy, MACs, params and measured latency.

        Args:
            spec: kept channels per group.
            fresh: ignore the latency cache and measure again (used for the final model).
            model: an already pruned (e.g. fine-tuned) model of this spec to use
                instead of pruning the base model again.

        Returns:
            A CandidateResult; failures are values with ``error_kind`` set.
        """
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

        key = self._key(spec)
        if not fresh and model is None:
            hit = self.store.find_measurement(**key, min_id=self.cache_min_id)
            if hit is not None:
                self.stats["latency_cache_hits"] += 1
                return CandidateResult(
                    spec, top1, macs, params, hit["latency_p50_ms"], tuple(hit["latency_raw_ms"]),
                    measurement_id=hit["id"], source=hit["source"], latency_cache_hit=True,
                )
        if pruned is None:
            pruned = self.prune(spec)
        return self._compile_and_measure(spec, pruned, top1, macs, params, key)

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
        config = self.measure if backend is None else dataclasses.replace(self.measure, backend=backend)
        with self.timer.time("measure"):
            outcome = self.device.measure(Path(result.artifact_path), config)
        if outcome.error is not None:
            log.warning("re-measuring %s (%s) failed: %s", result.spec.signature(), config.backend,
                        outcome.error.message)
            return None
        m = outcome.value
        if m.source != result.source:  # e.g. a farm that fell back to the simulator mid-finish
            log.warning("re-measuring %s gave a %s result, the candidate was %s; not used",
                        result.spec.signature(), m.source, result.source)
            return None
        check = check_measurement(Path(result.artifact_path), self._manifest(result.artifact_path), m, config.seed)
        if check is not None and not check.ok:
            self.device.report_bad_result(m, "wrong_output", check.message)
            log.warning("re-measuring %s (%s) on %s: wrong_output: %s; not used", result.spec.signature(),
                        config.backend, _where(m, self.device.name), check.message)
            return None
        self.stats["measured"] += 1
        self._store_measurement(self._key(result.spec, config.backend), m, result.artifact_sha256, None, None,
                                check and {"max_abs_diff": check.max_abs_diff, "bound": check.bound,
                                           "compared": check.compared})
        return m.stats.p50_ms

    @staticmethod
    def _manifest(artifact_dir: str | Path) -> dict:
        return json.loads((Path(artifact_dir) / "manifest.json").read_text())

    def _key(self, spec: ArchSpec, backend: str | None = None) -> dict:
        return dict(
            model=self.model_name, arch_signature=spec.signature(), device=self.device.name, target=self.target.name,
            backend=backend or self.measure.backend, tuning_key=tuning_key(self.tuning),
        )

    def _store_measurement(self, key: dict, m, artifact_sha256, onnx_sha256, manifest_tuning,
                           output_check: dict | None = None) -> int:
        extra = {"output_check": output_check}
        if manifest_tuning is not None:
            extra["tuning"] = manifest_tuning
        return self.store.add_device_measurement(m, **key, artifact_sha256=artifact_sha256, onnx_sha256=onnx_sha256,
                                                 metadata=extra)

    def _compile_and_measure(self, spec, pruned, top1, macs, params, key) -> CandidateResult:
        sig = spec.signature()
        onnx_path = self.work_dir / "onnx" / f"{sig}.onnx"

        def failed(kind: str, message: str) -> CandidateResult:
            self.stats["failed"] += 1
            log.warning("candidate %s failed: %s: %s", sig, kind, message)
            return CandidateResult(spec, top1, macs, params, None, error_kind=kind, error_message=message)

        with self.timer.time("export"):
            try:
                report = export_onnx(pruned, self.input_shape, onnx_path)
            except ExportError as exc:
                return failed(exc.kind, exc.message)
        if not self.device.needs_library:  # the simulator costs the ONNX graph: no TVM build
            artifact_dir = graph_only_artifact(onnx_path, report, self.work_dir / "graph_artifacts" / sig)
            with self.timer.time("measure"):
                outcome = self.device.measure(artifact_dir, self.measure)
            if outcome.error is not None:
                return failed(f"measure_{outcome.error.kind}", outcome.error.message)
            m = outcome.value
            self.stats["measured"] += 1
            mid = self._store_measurement(key, m, None, report.onnx_sha256, None)
            return CandidateResult(spec, top1, macs, params, m.stats.p50_ms, tuple(m.latency_ms), measurement_id=mid,
                                   source=m.source, artifact_path=str(artifact_dir))
        t0 = time.perf_counter()
        compiled = compile_onnx(onnx_path, self.target, self.cache_dir, self.tuning)
        compile_s = time.perf_counter() - t0
        if compiled.error is not None:
            self.timer.add("build", compile_s)
            return failed(compiled.error.kind, compiled.error.message)
        artifact = compiled.artifact
        tune_s = float((artifact.manifest.get("tuning") or {}).get("tune_s") or 0.0) if not artifact.cache_hit else 0.0
        self.timer.add("tune", min(tune_s, compile_s))
        self.timer.add("build", compile_s - min(tune_s, compile_s))
        self.stats["compiled"] += 1
        with self.timer.time("measure"):
            outcome = self.device.measure(artifact.path, self.measure)
        if outcome.error is not None:
            return failed(f"measure_{outcome.error.kind}", outcome.error.message)
        m = outcome.value
        if m.source not in ("measured", "simulated"):  # e.g. an emulated board: a functional check only
            return failed("not_a_latency", f"{self.device.name} gives {m.source} timings, which are not latencies; "
                                           "use a real board, local, or sim:PROFILE for the search")
        with self.timer.time("measure"):
            check = check_measurement(artifact.path, artifact.manifest, m, self.measure.seed)
        if check is not None and not check.ok:
            self.device.report_bad_result(m, "wrong_output", check.message)  # a farm blames that board
            return failed("wrong_output", f"{_where(m, self.device.name)}: {check.message}; latency not used")
        self.stats["measured"] += 1
        st = m.stats
        mid = self._store_measurement(key, m, artifact.library_sha256, report.onnx_sha256, artifact.manifest.get("tuning"),
                                      check and {"max_abs_diff": check.max_abs_diff, "bound": check.bound,
                                                 "compared": check.compared})
        return CandidateResult(
            spec, top1, macs, params, st.p50_ms, tuple(m.latency_ms), measurement_id=mid, source=m.source,
            artifact_sha256=artifact.library_sha256, artifact_path=str(artifact.path),
        )
