"""The one way of a model to a measured latency: export → compile → measure → output check → store.

DESIGN.md §2, §4, §5 and STYLE.md ("one way through the system is written
once"). The search's candidates (``harness/search/candidate.py``), ``hilprune
bench``, ``hilprune tune`` and ``compile``, nightly suites
(``harness/nightly/run.py``) and the benchmarks all go through
:class:`Pipeline`; nothing else builds that sequence.

What a :class:`Pipeline` decides once, for its (device, target):

- **the target**: ``host`` on a board means *that board's* CPU, from its
  daemon's hello (:func:`harness.compile.targets.board_target`), never the
  controller's ``mcpu``;
- **what is built**: a TVM library (tuned), or a graph-only artifact (the
  ONNX file and a manifest, no TVM build) for ``--backend onnxruntime`` and
  for the simulator;
- **where tuning trials are timed**: on the board that will measure (the
  daemon's ``time_func``, :mod:`harness.compile.board_runner`; the boards of a
  farm tune in parallel), on this host (``LocalRunner``) for ``local``, or
  nowhere when no device can run the target's code (``compile`` with no
  device): the build then applies what the tuning database holds and the
  manifest counts the untuned tasks.

Each step returns a value or a :class:`PipelineError` (kind + one line):
expected failures never raise through a caller's loop. A measurement counts
only when its output matches ONNX Runtime's (:mod:`harness.compile.check`):
otherwise it is a ``wrong_output`` error, the device is told
(``Device.report_bad_result``: a farm blames the board) and nothing is stored.
Emulated timings (qemu) are stored, labelled ``emulated``, and
:attr:`PipelineResult.is_latency` says they are none.

Every stored row carries its source and the identity of what measured it
(:func:`devices.identity.identity_of`): the latency cache
(:meth:`Pipeline.cached`) serves a row only to a pipeline of the same
identity — same source, same board and machine facts, same simulator profile
and version.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devices.base import Device, DeviceUnavailable, MeasureConfig, Measurement
from devices.identity import identity_of
from devices.interleaved import InterleavedConfig, InterleavedMeasurement
from devices.stats import RatioEstimate
from devices.manifest import Manifest, TensorSig, read_manifest, write_manifest
from harness.compile.build import compile_onnx, stdout_to_stderr
from harness.compile.check import check_artifact_output, check_measurement
from harness.compile.export import ExportError, export_onnx, sha256_file
from harness.compile.targets import TargetSpec, board_target
from harness.compile.tuning import TuningConfig
from harness.store import ResultsStore

__all__ = ["GRAPH_ONLY_TUNING_KEY", "Pipeline", "PipelineError", "PipelineResult", "Prepared", "RatioResult",
           "StoreKey", "onnx_io"]

log = logging.getLogger(__name__)

#: The tuning key of latencies of graph-only artifacts (ONNX Runtime, simulator): no TVM build, no tuning.
GRAPH_ONLY_TUNING_KEY = "graph-only"
#: Latency sources that are latencies (``emulated`` is a functional check only; DESIGN.md §5).
LATENCY_SOURCES = ("measured", "simulated")


@dataclass(frozen=True, slots=True)
class PipelineError:
    """An expected failure of one step, as a value.

    Attributes:
        kind: ``export_failed``/``invalid_onnx``/``ort_failed``/``mismatch`` (export),
            ``import_failed``/``tune_failed``/``build_failed``/``link_failed`` (compile),
            ``measure_<MeasureErrorKind>`` (the device), ``device_unavailable``,
            ``wrong_output`` (output unlike ONNX Runtime's), ``source_mismatch``
            (e.g. a simulated answer where a measured one was expected).
        message: one human-readable line.
    """

    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class Prepared:
    """What a device will run: an artifact directory and its manifest.

    Attributes:
        path: the artifact directory.
        manifest: its :class:`devices.manifest.Manifest`.
        cache_hit: the artifact was already built (nothing compiled or tuned now).
        compile_s: wall seconds of this call's compile (tuning included), s.
        tune_s: of which tuning, s (0 on a cache hit).
    """

    path: Path
    manifest: Manifest
    cache_hit: bool
    compile_s: float = 0.0
    tune_s: float = 0.0

    @classmethod
    def at(cls, path: Path | str) -> "Prepared":
        """An artifact already on disk (e.g. a candidate's, measured again).

        Raises:
            devices.manifest.ManifestError: no readable, valid manifest there.
        """
        return cls(Path(path), read_manifest(path), cache_hit=True)


@dataclass(frozen=True, slots=True)
class StoreKey:
    """Where a measurement goes in the results store (besides device, target, backend, tuning).

    Attributes:
        model: model label (zoo name or ``onnx:<stem>``).
        arch_signature: the architecture (a pruned spec's signature, or a zoo/ONNX id).
        metadata: extra metadata for the row (``command``, ``input_shape``, ...).
    """

    model: str
    arch_signature: str
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """One measurement through the pipeline: a Measurement (stored) or an error.

    Attributes:
        measurement: the device's Measurement (None on error).
        measurement_id: its row in the store (None when not stored).
        output_check: ``{"max_abs_diff", "bound", "compared"}`` of the output check,
            None when nothing ran (simulated).
        error: set on failure (then ``measurement`` may still hold a wrong output's
            Measurement, never stored).
        measure_s: wall seconds of the device call and the check, s.
    """

    measurement: Measurement | None = None
    measurement_id: int | None = None
    output_check: dict | None = None
    error: PipelineError | None = None
    measure_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when there is a Measurement and no error."""
        return self.error is None and self.measurement is not None

    @property
    def is_latency(self) -> bool:
        """True when the measurement is a latency (``measured`` or ``simulated``, not ``emulated``)."""
        return self.ok and self.measurement.source in LATENCY_SOURCES

    @property
    def p50_ms(self) -> float | None:
        """The measurement's median latency in ms (None on error)."""
        return self.measurement.stats.p50_ms if self.measurement is not None and self.error is None else None


@dataclass(frozen=True, slots=True)
class RatioResult:
    """A candidate timed interleaved with its reference in one session (DESIGN.md §5, "rank on ratios").

    Attributes:
        ratio: median candidate/reference ratio with its bootstrap interval (None on error).
        candidate_p50_ms, reference_p50_ms: the two absolute p50s of the session, ms.
        measurement: the device's InterleavedMeasurement (raw per-round values, load, state).
        ratio_id: its row in the store's ``latency_ratios`` (None when not stored or cached).
        measurement_id: the candidate's absolute row in ``measurements``.
        cache_hit: the ratio came from the store (nothing was measured).
        error: set on failure.
        measure_s: wall seconds of the device call and the checks, s.
    """

    ratio: RatioEstimate | None = None
    candidate_p50_ms: float | None = None
    reference_p50_ms: float | None = None
    measurement: InterleavedMeasurement | None = None
    ratio_id: int | None = None
    measurement_id: int | None = None
    cache_hit: bool = False
    error: PipelineError | None = None
    measure_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when there is a ratio and no error."""
        return self.error is None and self.ratio is not None

    @property
    def source(self) -> str | None:
        """``measured``, ``simulated`` or ``emulated`` (None when cached or failed)."""
        return self.measurement.source if self.measurement is not None else None


def onnx_io(onnx_path: Path) -> tuple[TensorSig, TensorSig]:
    """The single input's and output's name, static shape and dtype of an ONNX file.

    Raises:
        ValueError: unreadable, not exactly one input and one output, or a dynamic shape.
    """
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends
        raise ValueError(f"{onnx_path} is not a readable ONNX file ({type(exc).__name__}); pass a .onnx model") \
            from None
    dtypes = {1: "float32", 10: "float16", 11: "float64", 6: "int32", 7: "int64", 2: "uint8", 3: "int8"}
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ValueError(f"{onnx_path} has {len(inputs)} graph inputs and {len(model.graph.output)} outputs; "
                         "hilprune runs models with exactly one of each")

    def sig(value_info, name: str | None) -> TensorSig:
        ttype = value_info.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim)
        if any(d < 1 for d in dims):
            raise ValueError(f"{onnx_path}: {value_info.name!r} has a dynamic shape {list(dims)}; "
                             "re-export it with a static shape")
        return TensorSig(name, dims, dtypes.get(ttype.elem_type, str(ttype.elem_type)))

    return sig(inputs[0], inputs[0].name), sig(model.graph.output[0], None)


def graph_artifact(onnx_path: Path, cache_dir: Path) -> Prepared:
    """A graph-only artifact (``manifest.json`` + ``model.onnx``, no TVM library) for ONNX Runtime and the
    simulator, content-addressed at ``cache_dir/graphs/<sha256 of the ONNX file>/``.

    Raises:
        ValueError: the ONNX file is unreadable or not one static input and output.
    """
    digest = sha256_file(onnx_path)
    final = Path(cache_dir) / "graphs" / digest
    if (final / "manifest.json").is_file():
        return Prepared(final, read_manifest(final), cache_hit=True)
    inp, out = onnx_io(onnx_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{digest[:16]}-", dir=final.parent))
    try:
        shutil.copyfile(onnx_path, tmp / "model.onnx")
        manifest = Manifest(input=inp, output=out, onnx="model.onnx", onnx_sha256=digest,
                            tuning={"tuned": False, "trials_per_task": 0, "graph_only": True})
        write_manifest(tmp, manifest)
        tmp.chmod(0o755)
        try:
            tmp.rename(final)
        except OSError:  # another process built it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Prepared(final, read_manifest(final), cache_hit=False)


class Pipeline:
    """Export, compile (and tune) for one device and target, measure, check and store.

    Build it with :meth:`for_device`. Attributes after construction:

    Attributes:
        device: where latencies are measured (None: compile only).
        target: the resolved target (``host`` on a board is the board's CPU).
        tuning: the tuning config, with the board runner set when the device is a board.
        measure_config: how to time.
        cache_dir: artifacts, graph-only artifacts and tuning databases.
        store: the results store (None: nothing stored, no latency cache).
        graph_only: True when no TVM library is built (ONNX Runtime backend, simulator).
        tuning_key: the store's tuning column for this pipeline's latencies.
        ratio_config: how candidates are timed interleaved with a reference (:meth:`measure_ratio`).
    """

    def __init__(self, device: Device | None, target: TargetSpec, tuning: TuningConfig,
                 measure_config: MeasureConfig, cache_dir: Path, store: ResultsStore | None = None,
                 ratio_config: InterleavedConfig | None = None) -> None:
        self.device = device
        mc = measure_config
        self.ratio_config = ratio_config or InterleavedConfig(
            backend=mc.backend, warmup=mc.warmup, number=mc.number, num_threads=mc.num_threads, seed=mc.seed,
            timeout_s=mc.timeout_s)
        self.target = target
        self.tuning = tuning
        self.measure_config = measure_config
        self.cache_dir = Path(cache_dir)
        self.store = store
        self.graph_only = device is not None and (not device.needs_library
                                                  or measure_config.backend == "onnxruntime")
        self.tuning_key = GRAPH_ONLY_TUNING_KEY if self.graph_only else tuning.identity()
        self._identity: str | None = None

    # ------------------------------------------------------------------ make

    @classmethod
    def for_device(cls, device: Device | None, target: TargetSpec, tuning: TuningConfig,
                   measure_config: MeasureConfig, cache_dir: Path, store: ResultsStore | None = None,
                   *, runner_timeout_s: float = 60.0, ratio_config: InterleavedConfig | None = None) -> "Pipeline":
        """A pipeline that tunes where it measures.

        - ``target.name == "host"`` and a board device: the target becomes
          the board's own CPU (its hello; the farm's pinned board, or its
          first healthy one).
        - a board device and a tuned config: tuning trials are timed on the
          board through its daemon (``make_board_runner``; all boards of a
          farm in parallel), the manifest's ``tuning.runner`` names it.

        Raises:
            DeviceUnavailable: the board did not answer its hello (its target is unknown).
            ValueError: a board whose machine hilprune cannot build for.
        """
        if device is not None and device.is_board and target.name == "host":
            hello = device.hello()
            target = board_target(hello, board=str(hello.get("board") or device.name))
            log.info("%s: target host is the board's own CPU: %s", device.name, target.canonical_json())
        pipeline = cls(device, target, tuning, measure_config, cache_dir, store, ratio_config)
        if device is not None and device.is_board and tuning.tuned and not pipeline.graph_only:
            from harness.compile.board_runner import make_board_runner

            runner = make_board_runner(device, target, timeout_s=runner_timeout_s)
            pipeline.tuning = dataclasses.replace(tuning, runner=runner, runner_label=device.name)
        return pipeline

    # ---------------------------------------------------------------- steps

    def export(self, model: Any, input_shape: tuple[int, ...], path: Path) -> Path | PipelineError:
        """Export a torch model to ONNX (checked against torch by ONNX Runtime).

        Returns:
            ``path``, or a :class:`PipelineError` of an export kind.
        """
        try:
            export_onnx(model, tuple(input_shape), Path(path))
        except ExportError as exc:
            return PipelineError(exc.kind, exc.message)
        return Path(path)

    def compile(self, onnx_path: Path) -> Prepared | PipelineError:
        """The artifact the device will run: graph-only (ONNX Runtime, simulator) or a TVM library.

        A TVM build tunes the tasks the database lacks on this pipeline's
        runner; with no runner for a target this host cannot run, it applies
        the database as is (see :func:`harness.compile.build.compile_onnx`).
        TVM's and MetaSchedule's prints go to stderr.

        Returns:
            A :class:`Prepared`, or a :class:`PipelineError` (compile kinds; a
            bad ONNX file for a graph-only artifact is ``import_failed``).
        """
        t0 = time.perf_counter()
        if self.graph_only:
            try:
                return graph_artifact(Path(onnx_path), self.cache_dir)
            except ValueError as exc:
                return PipelineError("import_failed", str(exc))
        with stdout_to_stderr():
            result = compile_onnx(Path(onnx_path), self.target, self.cache_dir, self.tuning)
        compile_s = time.perf_counter() - t0
        if result.error is not None:
            return PipelineError(result.error.kind, result.error.message)
        art = result.artifact
        tune_s = 0.0 if art.cache_hit else float(art.manifest.tuning.get("tune_s") or 0.0)
        return Prepared(art.path, art.manifest, art.cache_hit, compile_s, min(tune_s, compile_s))

    def identity(self) -> str:
        """The identity of this pipeline's latencies (source, board, machine facts / profile and version).

        Raises:
            DeviceUnavailable: the device does not answer its hello.
            ValueError: no device.
        """
        if self.device is None:
            raise ValueError("a compile-only pipeline (no device) measures nothing")
        if self._identity is None:
            self._identity = identity_of(self.device.hello(), default_name=self.device.name)
        return self._identity

    def forget_identity(self) -> None:
        """Re-read the identity at the next use (after a farm's run moved to another board)."""
        self._identity = None

    def cached(self, key: StoreKey, *, backend: str | None = None) -> dict | None:
        """The latency cache: the first stored measurement of ``key`` by a device of this identity.

        Rows of another source, board, machine or simulator profile version —
        and rows stored before identities were recorded — are never served.

        Returns:
            The store's row (``latency_raw_ms`` parsed) or None.
        """
        if self.store is None:
            return None
        try:
            identity = self.identity()
        except DeviceUnavailable:
            return None
        return self.store.find_measurement(
            model=key.model, arch_signature=key.arch_signature, device=self.device.name, target=self.target.name,
            backend=backend or self.measure_config.backend, tuning_key=self.tuning_key, identity=identity,
)

    def measure(self, prepared: Prepared, key: StoreKey | None = None, *, backend: str | None = None,
                expect_source: str | None = None) -> PipelineResult:
        """Time ``prepared`` on the device, check its output, store it.

        Args:
            prepared: from :meth:`compile`.
            key: where to store it (None: not stored).
            backend: time this backend instead of the config's (``onnxruntime``:
                the artifact's ONNX file, a reference beside the TVM build).
            expect_source: refuse a measurement of another source (e.g. a
                ``simulated`` answer where the run measures): ``source_mismatch``.

        Returns:
            A :class:`PipelineResult`; failures are values.

        Raises:
            ValueError: a compile-only pipeline.
        """
        if self.device is None:
            raise ValueError("a compile-only pipeline (no device) measures nothing")
        config = self.measure_config if backend is None else dataclasses.replace(self.measure_config,
                                                                                  backend=backend)
        t0 = time.perf_counter()

        def failed(kind: str, message: str, m: Measurement | None = None) -> PipelineResult:
            return PipelineResult(measurement=m, error=PipelineError(kind, message),
                                  measure_s=time.perf_counter() - t0)

        outcome = self.device.measure(prepared.path, config)
        if outcome.error is not None:
            return failed(f"measure_{outcome.error.kind.value}", outcome.error.message)
        m = outcome.value
        if expect_source is not None and m.source != expect_source:
            return failed("source_mismatch", f"{self.device.name} answered with a {m.source} result where a "
                                             f"{expect_source} one was expected; not used", m)
        try:
            check = check_measurement(prepared.path, prepared.manifest, m, config.seed)
        except ValueError as exc:
            return failed("wrong_output", str(exc), m)
        if check is not None and not check.ok:
            self.device.report_bad_result(m, "wrong_output", check.message)  # a farm blames that board
            where = f"{self.device.name} (board {m.hello['board']})" if m.hello.get("board") else self.device.name
            return failed("wrong_output", f"{where}: {check.message}; latency not used", m)
        output_check = None if check is None else {"max_abs_diff": check.max_abs_diff, "bound": check.bound,
                                                   "compared": check.compared}
        mid = None
        if self.store is not None and key is not None:
            meta = {"output_check": output_check, "tuning": dict(prepared.manifest.tuning),
                    "num_threads": config.num_threads, **key.metadata}
            mid = self.store.add_device_measurement(
                m, model=key.model, arch_signature=key.arch_signature, target=self.target.name,
                tuning_key=GRAPH_ONLY_TUNING_KEY if prepared.manifest.graph_only else self.tuning_key,
                device=self.device.name, artifact_sha256=prepared.manifest.library_sha256,
                onnx_sha256=prepared.manifest.onnx_sha256, metadata=meta)
        return PipelineResult(measurement=m, measurement_id=mid, output_check=output_check,
                              measure_s=time.perf_counter() - t0)

    @staticmethod
    def artifact_id(prepared: Prepared, backend: str) -> str:
        """What a ratio's reference *is* for a backend: the library's sha256 (tvm), the ONNX file's (onnxruntime)."""
        m = prepared.manifest
        return str(m.library_sha256 if backend == "tvm" and m.library_sha256 else m.onnx_sha256)

    def cached_ratio(self, key: StoreKey, reference: Prepared, *, backend: str | None = None) -> RatioResult | None:
        """The latency cache of ratios: a stored ratio of ``key`` against this very reference artifact,
        measured by a device of this identity (:meth:`identity`); None otherwise."""
        if self.store is None:
            return None
        backend = backend or self.ratio_config.backend
        try:
            identity = self.identity()
        except DeviceUnavailable:
            return None
        row = self.store.find_ratio(model=key.model, arch_signature=key.arch_signature,
                                    reference_sha256=self.artifact_id(reference, backend), device=self.device.name,
                                    target=self.target.name, backend=backend, tuning_key=self.tuning_key,
                                    identity=identity)
        if row is None:
            return None
        ratio = RatioEstimate(ratios=tuple(row["round_ratios"]), median=row["ratio"], ci_low=row["ci_low"],
                              ci_high=row["ci_high"], confidence=row["confidence"])
        return RatioResult(ratio=ratio, candidate_p50_ms=row["latency_p50_ms"],
                           reference_p50_ms=row["reference_p50_ms"], ratio_id=row["id"],
                           measurement_id=row["measurement_id"], cache_hit=True)

    def measure_ratio(self, reference: Prepared, candidate: Prepared, key: StoreKey | None = None,
                      reference_key: StoreKey | None = None, *, backend: str | None = None,
                      expect_source: str | None = None) -> RatioResult:
        """Time ``candidate`` interleaved with ``reference`` in one device session; check both outputs; store.

        ΔH is a ratio against the unpruned model (seed §3.1): measured as one,
        in short alternating blocks, it reproduces to well under 1 % where
        absolute p50s taken minutes apart move by tens of percent (DESIGN.md §5;
        :mod:`devices.interleaved`, :func:`devices.stats.bootstrap_median_ci`).
        Stored: the ratio (median, interval, pairs, per-round ratios) in
        ``latency_ratios`` and both artifacts' absolute values of the session in
        ``measurements`` (with the time and load at measurement).

        Args:
            reference, candidate: prepared artifacts (the reference is the unpruned model).
            key, reference_key: store keys (no ``key``: nothing stored).
            backend: time this backend instead of the config's.
            expect_source: refuse another source (``source_mismatch``).

        Returns:
            A :class:`RatioResult`; failures are values (``measure_*``, ``wrong_output``,
            ``source_mismatch``).

        Raises:
            ValueError: a compile-only pipeline.
        """
        return self.measure_ratios(reference, [candidate], [key], reference_key, backend=backend,
                                   expect_source=expect_source)[0]

    def measure_ratios(self, reference: Prepared, candidates: list[Prepared],
                       keys: list[StoreKey | None] | None = None, reference_key: StoreKey | None = None, *,
                       backend: str | None = None, expect_source: str | None = None) -> list[RatioResult]:
        """Time 1..3 candidates interleaved with ``reference`` in ONE device session (rotated blocks).

        As :meth:`measure_ratio`, for several candidates at once
        (``Device.measure_interleaved`` takes 2..4 artifacts): every ratio is
        against the same reference blocks of the same session, so candidates
        compared in one call share the machine's state (``hilprune compare``'s
        final step). The reference's absolute values are stored once.

        Args:
            reference: the unpruned model's prepared artifact.
            candidates: 1..3 prepared artifacts.
            keys: one store key per candidate (None, or a None entry: that one is not stored).
            reference_key: the reference's store key (default: the first candidate's).
            backend, expect_source: as for :meth:`measure_ratio`.

        Returns:
            One :class:`RatioResult` per candidate, in order. A device failure, a source mismatch or
            a wrong output of the reference fails them all; a candidate's wrong output fails that one.

        Raises:
            ValueError: a compile-only pipeline, or not 1..3 candidates, or keys of another length.
        """
        if self.device is None:
            raise ValueError("a compile-only pipeline (no device) measures nothing")
        if not 1 <= len(candidates) <= 3:
            raise ValueError(f"measure_ratios takes 1..3 candidates (the device times 2..4 artifacts), "
                             f"got {len(candidates)}")
        keys = list(keys) if keys is not None else [None] * len(candidates)
        if len(keys) != len(candidates):
            raise ValueError(f"{len(keys)} store keys for {len(candidates)} candidates")
        config = self.ratio_config if backend is None else dataclasses.replace(self.ratio_config, backend=backend)
        t0 = time.perf_counter()

        def failed(kind: str, message: str) -> RatioResult:
            return RatioResult(error=PipelineError(kind, message), measure_s=time.perf_counter() - t0)

        def all_failed(kind: str, message: str) -> list[RatioResult]:
            return [failed(kind, message) for _ in candidates]

        out = self.device.measure_interleaved([reference.path, *(c.path for c in candidates)], config)
        if out.error is not None:
            return all_failed(f"measure_{out.error.kind.value}", out.error.message)
        v = out.value
        if expect_source is not None and v.source != expect_source:
            return all_failed("source_mismatch", f"{self.device.name} answered with a {v.source} ratio where a "
                                                 f"{expect_source} one was expected; not used")
        wrong: list[str | None] = [None] * (1 + len(candidates))
        if v.source != "simulated":  # every program must compute the model, or the ratio means nothing
            for i, (prepared, art) in enumerate(zip((reference, *candidates), v.artifacts)):
                try:
                    check = check_artifact_output(prepared.path, prepared.manifest, config.seed, art.output_head,
                                                  art.output_shape)
                except ValueError as exc:
                    wrong[i] = str(exc)
                    continue
                if not check.ok:
                    where = f"{self.device.name} (board {v.hello['board']})" if v.hello.get("board") else \
                        self.device.name
                    wrong[i] = f"{where}: {prepared.path.name}: {check.message}; ratio not used"
        if wrong[0] is not None:
            return all_failed("wrong_output", wrong[0])
        ref_art = v.artifacts[0]
        identity = session = None
        ref_id: int | None = None
        # nothing of the session is stored when no candidate's ratio is usable (a wrong output: nothing to cache)
        stored = self.store is not None and any(k is not None and w is None for k, w in zip(keys, wrong[1:]))
        if stored:
            identity = identity_of(v.hello or {}, default_name=self.device.name)
            session = {"interleaved": True, "started_at": v.started_at, "finished_at": v.finished_at,
                       "loadavg_before": v.loadavg_before, "loadavg_after": v.loadavg_after, "pairs": v.pairs,
                       "hello": v.hello, "device_state_before": v.device_state_before,
                       "device_state_after": v.device_state_after, "num_threads": config.num_threads}
            ref_key = reference_key or next(k for k in keys if k is not None)
            ref_id = self._store_absolute(reference, ref_art, ref_key, config, v, identity, session, "reference")
        results = []
        for i, (candidate, key) in enumerate(zip(candidates, keys)):
            if wrong[i + 1] is not None:
                results.append(failed("wrong_output", wrong[i + 1]))
                continue
            ratio, cand_art = v.ratios[i], v.artifacts[i + 1]
            ratio_id = cand_id = None
            if stored and key is not None:
                cand_id = self._store_absolute(candidate, cand_art, key, config, v, identity, session, "candidate")
                ratio_id = self.store.add_ratio(
                    model=key.model, arch_signature=key.arch_signature,
                    reference_signature=(reference_key or key).arch_signature,
                    reference_sha256=self.artifact_id(reference, config.backend), device=self.device.name,
                    target=self.target.name, backend=config.backend, tuning_key=self.tuning_key, source=v.source,
                    device_identity=identity, ratio=ratio.median, ci_low=ratio.ci_low, ci_high=ratio.ci_high,
                    confidence=ratio.confidence, pairs=v.pairs, stop_reason=v.stop_reason,
                    round_ratios=list(v.round_ratios[i]),
                    latency_p50_ms=cand_art.latency_p50_ms, reference_p50_ms=ref_art.latency_p50_ms,
                    measurement_id=cand_id, reference_measurement_id=ref_id, metadata=key.metadata)
            results.append(RatioResult(ratio=ratio, candidate_p50_ms=cand_art.latency_p50_ms,
                                       reference_p50_ms=ref_art.latency_p50_ms, measurement=v, ratio_id=ratio_id,
                                       measurement_id=cand_id, measure_s=time.perf_counter() - t0))
        return results

    def _store_absolute(self, prepared: Prepared, art: Any, key: StoreKey, config: InterleavedConfig,
                        v: InterleavedMeasurement, identity: str, session: dict, role: str) -> int:
        """One artifact's absolute values of an interleaved session, as a ``measurements`` row."""
        st = art.stats
        return self.store.add_measurement(
            model=key.model, arch_signature=key.arch_signature, device=self.device.name, target=self.target.name,
            backend=config.backend, tuning_key=self.tuning_key, source=v.source,
            stats=dict(p50=st.p50_ms, p90=st.p90_ms, mean=st.mean_ms, std=st.std_ms, min=st.min_ms,
                       max=st.max_ms, cov=st.cov, n=st.n, unstable=st.unstable),
            latency_raw_ms=list(art.latency_ms), warmup_ms=list(art.warmup_ms),
            artifact_sha256=prepared.manifest.library_sha256, onnx_sha256=prepared.manifest.onnx_sha256,
            metadata={**session, "tuning": dict(prepared.manifest.tuning), "number": art.number,
                      "output_sha256": art.output_sha256, "role": role, **key.metadata},
            device_identity=identity)

    def run(self, onnx_path: Path, key: StoreKey | None = None) -> tuple[Prepared | None, PipelineResult]:
        """:meth:`compile` then :meth:`measure`.

        Returns:
            (the prepared artifact or None, the result; a compile error is the result's error).
        """
        prepared = self.compile(onnx_path)
        if isinstance(prepared, PipelineError):
            return None, PipelineResult(error=prepared)
        return prepared, self.measure(prepared, key)
