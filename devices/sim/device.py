"""``sim:PROFILE``: the latency simulator as a :class:`~devices.base.Device`.

It takes the same artifact directory as every device (DESIGN.md §2), reads the
ONNX graph named by the manifest (``"onnx"``, default ``model.onnx``) and
returns a :class:`~devices.base.Measurement` whose latencies are the profile's
prediction, ``source="simulated"``. It never loads the TVM library, so it runs
where no board and no TVM runtime are. Results are deterministic: the same
graph, profile version and thread count give the same values, every repeat
equal (std 0, CoV 0), so a search with a simulator is reproducible.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Sequence

from devices.base import Device, MeasureConfig, MeasureError, MeasureErrorKind, MeasureResult, Measurement
from devices.interleaved import (InterleavedArtifact, InterleavedConfig, InterleavedMeasurement, InterleavedResult,
                                 check_artifact_dirs, read_artifact_manifest)
from devices.manifest import ManifestError, read_manifest
from devices.sim.graph import SimGraphError, load_features
from devices.sim.profile import SimProfile, load_profile, macs_warning, predict_latency_ms
from devices.stats import LatencyStats, RatioEstimate

logger = logging.getLogger(__name__)

__all__ = ["SIM_PREFIX", "SimDevice"]

#: Device names of the simulator: ``sim:`` + a profile name or path.
SIM_PREFIX = "sim:"


class SimDevice(Device):
    """Predicts latencies with a profile instead of measuring them.

    Args:
        profile: a :class:`SimProfile`, or a profile name / ``.json`` path
            for :func:`~devices.sim.profile.load_profile`.
        name: device name recorded in each Measurement (default
            ``"sim:" + profile.name``); the results store's latency cache is
            keyed by it, so simulated rows never answer for ``local``.

    A profile whose leave-one-model-out ranking is no better than the MACs
    proxy's (:func:`~devices.sim.profile.no_better_than_macs`) logs one
    warning when the device is made (a search, ``predict``), and its hello
    carries it (``macs_warning``).

    Raises:
        ValueError: unknown profile or bad profile file.
    """

    needs_library = False  # reads manifest.json and model.onnx only

    def __init__(self, profile: SimProfile | str | Path, name: str | None = None) -> None:
        self.profile = profile if isinstance(profile, SimProfile) else load_profile(profile)
        super().__init__(name or f"{SIM_PREFIX}{self.profile.name}")
        self._lock = threading.Lock()
        #: the profile's "no better than MACs" warning (None when it ranks better), logged once here
        self.macs_warning = macs_warning(self.profile)
        if self.macs_warning:
            logger.warning("%s", self.macs_warning)

    def hello(self) -> dict:
        """Simulator facts in place of a daemon's hello (never raises)."""
        p = self.profile
        return {"device": self.name, "simulator": True, "profile": p.name, "profile_version": p.version,
                "threads": p.threads, "cores": p.cores, "description": p.description,
                "fit": p.fit, "provenance": p.provenance, "macs_warning": self.macs_warning}

    def predict(self, onnx_path: Path | str, num_threads: int | None = None) -> float:
        """Predicted latency of an ONNX file in ms.

        Raises:
            SimGraphError: the graph cannot be read or costed (names the operator).
        """
        return predict_latency_ms(load_features(onnx_path), self.profile, threads=num_threads)

    def measure(self, artifact_dir: Path, config: MeasureConfig) -> MeasureResult:
        """Predict the artifact's latency; ``config.repeat`` equal raw values.

        Returns:
            A Measurement (``source="simulated"``, ``number=1``,
            ``output_sha256=""``: nothing runs), or a ``load_failed`` error
            for a missing/bad manifest or an uncostable graph (the message
            names the operator).
        """
        artifact_dir = Path(artifact_dir)
        try:
            manifest = read_manifest(artifact_dir)
        except ManifestError as exc:
            return MeasureResult.fail(MeasureErrorKind.LOAD_FAILED, str(exc))
        if manifest.onnx is None:
            return MeasureResult.fail(MeasureErrorKind.LOAD_FAILED,
                                      f"simulator {self.name}: artifact {artifact_dir} has no ONNX graph to cost")
        onnx_path = artifact_dir / manifest.onnx
        with self._lock:
            try:
                latency_ms = self.predict(onnx_path, config.num_threads)
            except SimGraphError as exc:
                return MeasureResult.fail(MeasureErrorKind.LOAD_FAILED, f"simulator {self.name}: {exc}")
        threads = min(config.num_threads or self.profile.threads, self.profile.cores)
        state = {"simulator": True, "profile": self.profile.name, "profile_version": self.profile.version,
                 "threads": threads}
        raw = (latency_ms,) * config.repeat
        value = Measurement(
            device=self.name, backend=config.backend, artifact_sha256=manifest.library_sha256,
            latency_ms=raw, warmup_ms=(latency_ms,) * config.warmup, number=1,
            stats=LatencyStats.from_raw(raw, max_cov=config.max_cov), output_sha256="", output_head=(),
            output_shape=tuple(manifest.output.shape), device_state_before=state,
            device_state_after=state, hello=self.hello(), source="simulated", remeasured=0,
            tuning=dict(manifest.tuning) or None, created_at=time.time(),
        )
        logger.debug("%s predicted %.4f ms for %s", self.name, latency_ms, onnx_path)
        return MeasureResult(value=value)

    def measure_interleaved(self, artifact_dirs: Sequence[Path], config: InterleavedConfig) -> InterleavedResult:
        """The ratio of the predicted latencies (``source="simulated"``): one round, a zero-width interval.

        Nothing runs, so there is no noise to average: each artifact gets one
        "block" (its prediction), each ratio is prediction / the reference's
        prediction with ``ci_low == ci_high == median`` and ``n_resamples=0``,
        ``pairs=1``, ``stop_reason="simulated"``.

        Returns:
            InterleavedResult; errors: bad_request (not 2..4 dirs), load_failed
            (manifest, uncostable graph: the message names the operator).
        """
        started_at = time.time()
        dirs = check_artifact_dirs(artifact_dirs)
        if isinstance(dirs, MeasureError):
            return InterleavedResult(error=dirs)
        predicted, manifests = [], []
        for d in dirs:
            manifest = read_artifact_manifest(d)
            if isinstance(manifest, MeasureError):
                return InterleavedResult(error=manifest)
            if manifest.onnx is None:
                return InterleavedResult.fail(MeasureErrorKind.LOAD_FAILED,
                                              f"simulator {self.name}: artifact {d} has no ONNX graph to cost")
            with self._lock:
                try:
                    predicted.append(self.predict(d / manifest.onnx, config.num_threads))
                except SimGraphError as exc:
                    return InterleavedResult.fail(MeasureErrorKind.LOAD_FAILED, f"simulator {self.name}: {exc}")
            manifests.append(manifest)
        artifacts = []
        for d, manifest, ms in zip(dirs, manifests, predicted):
            artifacts.append(InterleavedArtifact(
                name=d.name, artifact_sha256=manifest.library_sha256, latency_ms=(ms,), warmup_ms=(),
                number=1, stats=LatencyStats.from_raw([ms]), output_sha256="", output_head=(),
                output_shape=tuple(manifest.output.shape)))
        ratios = tuple(RatioEstimate(ratios=(ms / predicted[0],), median=ms / predicted[0], ci_low=ms / predicted[0],
                                     ci_high=ms / predicted[0], confidence=config.confidence, n_resamples=0,
                                     seed=config.seed) for ms in predicted[1:])
        threads = min(config.num_threads or self.profile.threads, self.profile.cores)
        state = {"simulator": True, "profile": self.profile.name, "profile_version": self.profile.version,
                 "threads": threads}
        return InterleavedResult(value=InterleavedMeasurement(
            device=self.name, backend=config.backend, source="simulated", artifacts=tuple(artifacts),
            ratios=ratios, round_ratios=tuple(r.ratios for r in ratios), order=(tuple(range(len(dirs))),),
            round_at=(started_at,), pairs=1, stop_reason="simulated", rel_width=float(config.rel_width),
            requests=0, started_at=started_at, finished_at=time.time(),
            loadavg_before=None, loadavg_after=None, device_state_before=state, device_state_after=state,
            hello=self.hello()))

    def _close(self) -> None:
        """Nothing to release."""
