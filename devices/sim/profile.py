"""Device profiles of the latency simulator and the roofline-style cost model.

Cost of one batch-1 inference at ``n`` threads (``n`` capped at ``cores``)::

    t_i      = max(work_i * m_i / (gops_s[class_i] * 1e9 * n**thread_exponent),
                   bytes_i / (bandwidth_gb_s * 1e9))
               + layer_overhead_us * 1e-6                       [s, operator i]
    latency  = 1e3 * sum_i t_i + model_overhead_ms             [ms]

``work_i``, ``bytes_i`` and ``class_i`` come from :mod:`devices.sim.graph`;
``m_i = misaligned_factor[class_i]`` for a conv whose input (per group) or
output channel count is not a multiple of ``channel_align``, else 1.
Compute throughput scales with threads (sub-linearly when
``thread_exponent < 1``); memory bandwidth is shared and does not.

A profile is data: a versioned JSON file under ``devices/profiles/`` holding
the parameters, their provenance (data, rows, command, date) and the fit error
(see :mod:`devices.sim.calibrate`). :func:`load_profile` reads one by name or
path; :meth:`SimProfile.save` writes one.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from devices.sim.graph import OP_CLASSES, GraphFeatures

logger = logging.getLogger(__name__)

__all__ = [
    "PROFILE_DIR",
    "PROFILE_FORMAT_VERSION",
    "SimParams",
    "SimProfile",
    "available_profiles",
    "effective_class",
    "layer_breakdown",
    "load_profile",
    "macs_warning",
    "no_better_than_macs",
    "predict_latency_ms",
]

#: Where named profiles live (``sim:NAME`` reads ``PROFILE_DIR/NAME.json``);
#: ``$HILPRUNE_SIM_PROFILES`` (a folder) is searched first when set.
PROFILE_DIR = Path(__file__).resolve().parent.parent / "profiles"
PROFILE_FORMAT_VERSION = 1
_FORMAT = "hilprune-sim-profile"


@dataclass(frozen=True, slots=True)
class SimParams:
    """The fitted parameters of one device profile. Units are in the names.

    Attributes:
        gops_s: effective throughput of ONE thread per operator class, in 1e9
            operations per second, as a float64 array (8,) in
            :data:`~devices.sim.graph.OP_CLASSES` order. For ``conv1x1``,
            ``conv3x3s1``, ``conv_kxk``, ``depthwise``, ``grouped`` and ``dense`` an
            operation is a multiply-accumulate (GMAC/s); for ``pooling`` a
            window element, for ``elementwise`` an output element. It is an
            *effective* rate: Winograd convs, fp16 arithmetic (ncnn on ARMv8.2)
            and cache behaviour fold into it, so it can exceed the datasheet
            peak. Source: fitted (``hilprune sim calibrate``) to the profile's
            data; the prior is the datasheet peak times typical kernel
            efficiencies (:data:`devices.sim.calibrate.PRIORS`).
        bandwidth_gb_s: effective memory bandwidth in 1e9 bytes/s, shared by
            all threads. Source: fitted; prior from the board's DRAM datasheet
            (bus width x transfer rate) times ~0.3 achievable.
        layer_overhead_us: fixed cost per costed operator in microseconds
            (dispatch, thread wake-up, small-tensor inefficiency). Source:
            fitted; prior 5 us (CPU) / 20 us (GPU kernel launch).
        model_overhead_ms: fixed cost per inference in milliseconds (input
            copy, runtime call). Source: fitted; prior 0.05 ms (CPU) / 0.5 ms
            (GPU).
        thread_exponent: compute speed-up at ``n`` threads is
            ``n ** thread_exponent`` (dimensionless, in (0, 1]). Source:
            fitted on rows at several thread counts (ncnn's 1- and all-core
            runs); prior 0.8.
        channel_align: channel block of the runtime's fast conv layout
            (channels; not fitted): 16 for ONNX Runtime's NCHWc on AVX-512,
            4 for ncnn's pack4 on NEON fp32, 8 for pack8 fp16, 1 = no
            penalty. Source: the runtimes' kernel code (MLAS NCHWc block
            size; ncnn elempack).
        misaligned_factor: compute-time multiplier (>= 1, dimensionless) per
            operator class, float64 array (8,) in ``OP_CLASSES`` order, of a
            conv with a channel count off the ``channel_align`` grid (it falls
            back to a slower layout, un-fused activations and reorders; ONNX
            Runtime's depthwise fallback is ~4x slower). Only conv classes
            use it. Source: fitted per class where the rows hold such convs
            (pruned variants on ``host``); prior 1.5.
        grouped_dense_min_channels: a grouped (not depthwise) conv with at
            least this many input channels per group is costed at the rate of
            the ordinary conv of its kernel (``GraphFeatures.dense_class``);
            0 = never (every grouped conv at the ``grouped`` rate). Not fitted:
            a property of the runtime. CPU runtimes run such a conv as one
            ordinary GEMM/Winograd kernel per group (ncnn's ARM
            ConvolutionDepthWise slices ``group < channels`` into per-group
            Convolution layers; ONNX Runtime's MLAS and TVM's
            ``group_conv2d_nchw`` loop over groups), so AlexNet's groups of
            48-192 channels run at the dense rate while RegNet's groups of 8
            stay slow: 16 on CPU profiles (two fp16 NEON / one fp32 AVX-512
            vector: below it a group's GEMM cannot fill a pack8/NCHW16c
            kernel). ncnn's Vulkan path runs every grouped conv as one
            group-conv shader: 0 on GPU profiles. Issue 13: with one
            ``grouped`` class, rpi4 held AlexNet out at 2.4x its latency.
    """

    gops_s: np.ndarray
    bandwidth_gb_s: float
    layer_overhead_us: float
    model_overhead_ms: float
    thread_exponent: float
    channel_align: int = 1
    misaligned_factor: np.ndarray | float = 1.0
    grouped_dense_min_channels: int = 0

    def __post_init__(self) -> None:
        g = np.asarray(self.gops_s, dtype=np.float64).reshape(-1)
        if g.shape != (len(OP_CLASSES),):
            raise ValueError(f"SimParams.gops_s needs {len(OP_CLASSES)} rates ({', '.join(OP_CLASSES)}), "
                             f"got {g.shape[0]}")
        g.setflags(write=False)
        object.__setattr__(self, "gops_s", g)
        if isinstance(self.channel_align, bool) or not isinstance(self.channel_align, int) or self.channel_align < 1:
            raise ValueError(f"SimParams.channel_align must be an int >= 1, got {self.channel_align!r}")
        g_min = self.grouped_dense_min_channels
        if isinstance(g_min, bool) or not isinstance(g_min, int) or g_min < 0:
            raise ValueError(f"SimParams.grouped_dense_min_channels must be an int >= 0, got {g_min!r}")
        mf = np.broadcast_to(np.asarray(self.misaligned_factor, dtype=np.float64), (len(OP_CLASSES),)).copy()
        mf.setflags(write=False)
        object.__setattr__(self, "misaligned_factor", mf)
        for fname in ("bandwidth_gb_s", "layer_overhead_us", "model_overhead_ms", "thread_exponent"):
            v = float(getattr(self, fname))
            object.__setattr__(self, fname, v)
        checks = [("gops_s", bool(np.all(np.isfinite(g)) and np.all(g > 0)), "> 0"),
                  ("bandwidth_gb_s", math.isfinite(self.bandwidth_gb_s) and self.bandwidth_gb_s > 0, "> 0"),
                  ("layer_overhead_us", math.isfinite(self.layer_overhead_us) and self.layer_overhead_us >= 0, ">= 0"),
                  ("model_overhead_ms", math.isfinite(self.model_overhead_ms) and self.model_overhead_ms >= 0, ">= 0"),
                  ("thread_exponent", 0 < self.thread_exponent <= 1, "in (0, 1]"),
                  ("misaligned_factor", bool(np.all(np.isfinite(mf)) and np.all(mf >= 1)), ">= 1")]
        for fname, ok, rule in checks:
            if not ok:
                raise ValueError(f"SimParams.{fname} must be {rule}, got {getattr(self, fname)!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``gops_s`` keyed by class name)."""
        return {
            "gops_s": {c: float(v) for c, v in zip(OP_CLASSES, self.gops_s)},
            "bandwidth_gb_s": self.bandwidth_gb_s,
            "layer_overhead_us": self.layer_overhead_us,
            "model_overhead_ms": self.model_overhead_ms,
            "thread_exponent": self.thread_exponent,
            "channel_align": self.channel_align,
            "misaligned_factor": {c: float(v) for c, v in zip(OP_CLASSES, self.misaligned_factor)},
            "grouped_dense_min_channels": self.grouped_dense_min_channels,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SimParams":
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: a missing class rate or field, or a bad value.
        """
        try:
            rates = data["gops_s"]
            missing = [c for c in OP_CLASSES if c not in rates]
            if missing:
                raise ValueError(f"gops_s lacks {missing}")
            mf = data.get("misaligned_factor", 1.0)
            mf = np.array([float(mf.get(c, 1.0)) for c in OP_CLASSES]) if isinstance(mf, dict) else float(mf)
            return cls(np.array([float(rates[c]) for c in OP_CLASSES]), float(data["bandwidth_gb_s"]),
                       float(data["layer_overhead_us"]), float(data["model_overhead_ms"]),
                       float(data["thread_exponent"]), int(data.get("channel_align", 1)), mf,
                       int(data.get("grouped_dense_min_channels", 0)))
        except KeyError as exc:
            raise ValueError(f"profile params lack {exc.args[0]!r}") from None


@dataclass(frozen=True, slots=True)
class SimProfile:
    """A named, versioned device profile.

    Attributes:
        name: profile name (``sim:NAME``), e.g. ``"rpi4"``.
        version: integer, bumped by every calibration that rewrites the file.
        description: the device in words (board, CPU/GPU, clock).
        threads: default thread count for predictions (the ``num_threads`` of
            a MeasureConfig overrides it); 1 for a GPU profile.
        cores: physical cores; threads above it give no more speed.
        params: the :class:`SimParams`.
        provenance: where the parameters come from (data file, rows,
            command, date, notes); free-form JSON.
        fit: fit error of the calibration (``n_rows``, ``mape``,
            ``rmse_log``, ``max_ape``...), or None for an uncalibrated prior.
            ``fit["ranking"]`` holds the leave-one-model-out check against
            the MACs proxy (:func:`devices.sim.calibrate.lomo_ranking`:
            ``spearman_sim``, ``spearman_macs``, ``mape_sim``, ``mape_macs``,
            ``beats_macs``...) and ``fit["no_better_than_macs"]`` its verdict
            (:func:`no_better_than_macs`).
    """

    name: str
    version: int
    description: str
    threads: int
    cores: int
    params: SimParams
    provenance: dict = field(default_factory=dict)
    fit: dict | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c in self.name for c in "/\\: "):
            raise ValueError(f"profile name must be a non-empty word without '/', ':' or spaces, got {self.name!r}")
        for fname in ("version", "threads", "cores"):
            v = getattr(self, fname)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SimProfile.{fname} must be an int >= 1, got {v!r}")

    # ------------------------------------------------------------------ file I/O
    def to_dict(self) -> dict[str, Any]:
        """The file's JSON object."""
        return {
            "format": _FORMAT, "format_version": PROFILE_FORMAT_VERSION, "name": self.name,
            "version": self.version, "description": self.description, "threads": self.threads,
            "cores": self.cores, "params": self.params.to_dict(), "provenance": self.provenance, "fit": self.fit,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "profile") -> "SimProfile":
        """Parse a profile object.

        Raises:
            ValueError: wrong format or version, or a missing/bad field (the
                message names ``origin``).
        """
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{origin}: not a hilprune simulator profile (format must be {_FORMAT!r})")
        if data.get("format_version") != PROFILE_FORMAT_VERSION:
            raise ValueError(f"{origin}: format_version {data.get('format_version')!r} is not supported "
                             f"(this hilprune reads {PROFILE_FORMAT_VERSION})")
        try:
            return cls(name=data["name"], version=int(data["version"]), description=str(data.get("description", "")),
                       threads=int(data["threads"]), cores=int(data["cores"]),
                       params=SimParams.from_dict(data["params"]), provenance=dict(data.get("provenance") or {}),
                       fit=data.get("fit"))
        except KeyError as exc:
            raise ValueError(f"{origin}: missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{origin}: {exc}") from None

    def save(self, path: Path | str) -> Path:
        """Write the profile as JSON (atomically: temp file + rename); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path | str) -> "SimProfile":
        """Read a profile file.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not valid JSON or not a valid profile.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, origin=str(path))

    def with_params(self, params: SimParams, **changes: Any) -> "SimProfile":
        """A copy with new parameters (and any other field changes)."""
        return replace(self, params=params, **changes)


def _profile_dirs() -> list[Path]:
    extra = os.environ.get("HILPRUNE_SIM_PROFILES")
    return ([Path(extra)] if extra else []) + [PROFILE_DIR]


def available_profiles() -> list[str]:
    """Names of the profiles found in the profile folders, sorted."""
    names = set()
    for d in _profile_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.json"))
    return sorted(names)


def load_profile(name_or_path: str | Path) -> SimProfile:
    """A profile by name (``"rpi4"``, looked up in the profile folders) or by ``.json`` path.

    Raises:
        ValueError: unknown name (the message lists the available ones) or a
            bad file.
    """
    text = str(name_or_path)
    if text.endswith(".json") or os.sep in text:
        return SimProfile.load(text)
    for d in _profile_dirs():
        p = d / f"{text}.json"
        if p.is_file():
            return SimProfile.load(p)
    raise ValueError(f"unknown simulator profile {text!r}; available: {', '.join(available_profiles()) or 'none'} "
                     f"(or give a path to a profile .json)")


def no_better_than_macs(profile: SimProfile) -> bool:
    """True when the profile's leave-one-model-out Spearman is not above the MACs proxy's.

    Read from ``profile.fit["ranking"]`` (written by ``hilprune sim
    calibrate``); a profile with no such check (uncalibrated, or fitted on one
    model) counts as no better: nothing shows it ranks better than MACs.
    """
    ranking = (profile.fit or {}).get("ranking")
    if not isinstance(ranking, dict) or "beats_macs" not in ranking:
        return True
    return not bool(ranking["beats_macs"])


def macs_warning(profile: SimProfile) -> str | None:
    """One line warning that the profile ranks no better than MACs, or None when it ranks better."""
    if not no_better_than_macs(profile):
        return None
    r = (profile.fit or {}).get("ranking")
    if isinstance(r, dict) and "spearman_sim" in r:
        why = (f"leave-one-model-out Spearman {r['spearman_sim']:.3f} vs MACs {r['spearman_macs']:.3f} on "
               f"{r.get('n_models', '?')} models")
    else:
        why = "it was never checked leave-one-model-out against MACs"
    return (f"simulator profile {profile.name!r} v{profile.version} ranks networks no better than MACs alone "
            f"({why}); its latencies may mislead a search: prefer a measured board or its latency table")


# ---------------------------------------------------------------------- costing
def _rates(profile: SimProfile, threads: int | None) -> tuple[np.ndarray, float, float, float]:
    """(seconds per operation per class (8,), seconds per byte, overhead s per op, model overhead s)."""
    p = profile.params
    n = min(int(threads or profile.threads), profile.cores)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {threads!r}")
    inv_rate = 1.0 / (p.gops_s * 1e9 * n ** p.thread_exponent)
    return inv_rate, 1.0 / (p.bandwidth_gb_s * 1e9), p.layer_overhead_us * 1e-6, p.model_overhead_ms * 1e-3


def misaligned_mask(channels: np.ndarray, align: int) -> np.ndarray:
    """Bool array (n,): conv rows whose input or output channels are off the ``align`` grid."""
    if align <= 1:
        return np.zeros(len(channels), dtype=bool)
    c = channels
    return ((c[:, 0] % align) != 0) | ((c[:, 1] % align) != 0)


_GROUPED = OP_CLASSES.index("grouped")


def effective_class(features: GraphFeatures, params: SimParams) -> np.ndarray:
    """int64 array (n,): each row's class for costing on ``params``.

    ``features.op_class``, except that a ``grouped`` conv with at least
    ``params.grouped_dense_min_channels`` input channels per group takes
    ``features.dense_class`` (see :class:`SimParams`).
    """
    g_min = params.grouped_dense_min_channels
    if g_min <= 0:
        return features.op_class
    wide = (features.op_class == _GROUPED) & (features.channels[:, 0] >= g_min)
    return np.where(wide, features.dense_class, features.op_class)


def _misaligned(features: GraphFeatures, p: SimParams, cls: np.ndarray) -> np.ndarray | float:
    if p.channel_align <= 1:
        return 1.0
    return np.where(misaligned_mask(features.channels, p.channel_align), p.misaligned_factor[cls], 1.0)


def predict_latency_ms(features: GraphFeatures, profile: SimProfile, threads: int | None = None) -> float:
    """Predicted batch-1 latency of a graph on a profile, in ms (deterministic).

    Args:
        features: from :func:`devices.sim.graph.load_features`.
        profile: the device profile.
        threads: thread count (default: the profile's), capped at its cores.

    Raises:
        ValueError: ``threads < 1``.
    """
    inv_rate, inv_bw, ovh_s, const_s = _rates(profile, threads)
    cls = effective_class(features, profile.params)
    t = np.maximum(features.work * inv_rate[cls] * _misaligned(features, profile.params, cls),
                   features.bytes * inv_bw)
    return float(1e3 * (t.sum() + ovh_s * len(features.work) + const_s))


def layer_breakdown(features: GraphFeatures, profile: SimProfile, threads: int | None = None) -> list[dict]:
    """Per-operator predicted cost, in graph order.

    Returns:
        One dict per costed operator: ``node``, ``op_type``, ``op_class``,
        ``work`` (operations), ``bytes``, ``compute_ms``, ``memory_ms``,
        ``overhead_ms``, ``latency_ms`` (= max(compute, memory) + overhead)
        and ``bound`` (``"compute"`` or ``"memory"``). The model constant is
        not in any row; the rows plus ``profile.params.model_overhead_ms``
        sum to :func:`predict_latency_ms`.
    """
    inv_rate, inv_bw, ovh_s, _ = _rates(profile, threads)
    cls = effective_class(features, profile.params)
    comp = features.work * inv_rate[cls] * _misaligned(features, profile.params, cls) * 1e3
    mem = features.bytes * inv_bw * 1e3
    rows = []
    for i, (node, op) in enumerate(zip(features.node_names, features.op_types)):
        c, m = float(comp[i]), float(mem[i])
        rows.append({
            "node": node, "op_type": op, "op_class": OP_CLASSES[int(cls[i])],
            "work": float(features.work[i]), "bytes": float(features.bytes[i]), "compute_ms": c,
            "memory_ms": m, "overhead_ms": ovh_s * 1e3, "latency_ms": max(c, m) + ovh_s * 1e3,
            "bound": "compute" if c >= m else "memory",
        })
    return rows
