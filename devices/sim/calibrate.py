"""Fitting simulator profiles to measured latencies (maximum a posteriori, log space).

Every parameter ``theta`` of :class:`~devices.sim.profile.SimParams` is fitted
as ``log(theta)`` with ``scipy.optimize.least_squares`` (trust-region
reflective, bounded) on the residuals

    r_row   = log(predicted_ms) - log(measured_ms)              one per row
    r_prior = prior_weight * (log(theta) - log(theta_prior)) / prior_sigma_log

i.e. relative error on the latencies plus a weak log-normal prior that holds a
parameter the data cannot see (an operator class absent from the rows, the
thread exponent when every row has one thread count) at its datasheet prior,
and keeps a fit with fewer rows than parameters well posed. ``prior_weight=0``
is a plain least-squares fit.

:data:`PRIORS` holds the starting profile of each device (datasheet figures,
sources in each entry); :func:`prior_profile` builds it. ``scipy`` is imported
lazily.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from devices.sim.graph import OP_CLASSES, GraphFeatures
from devices.sim.profile import SimParams, SimProfile, effective_class, misaligned_mask, predict_latency_ms

logger = logging.getLogger(__name__)

__all__ = ["PRIORS", "RANKING_FIELD", "CalibrationRow", "FitReport", "choose_channel_align", "fit_profile",
           "fit_stats", "leave_one_group_out", "lomo_ranking", "prior_profile", "ranking_scores"]

#: Operator-class efficiency relative to ``conv_kxk`` used by every prior
#: (dimensionless; typical of im2col/Winograd CPU kernels: 1x1 convs are
#: GEMMs without Winograd's MAC saving, depthwise and pooling are memory-bound
#: loops). Source: our assumption, refined per board by calibration.
#: ``conv3x3s1`` gets ``winograd`` x the ``conv_kxk`` rate (2 where the runtime
#: uses Winograd for 3x3 stride-1 convs: ncnn, TVM on ARM; 1 for ONNX Runtime's
#: MLAS, which does not).
_CLASS_SHAPE = {"conv1x1": 0.6, "conv3x3s1": 1.0, "conv_kxk": 1.0, "depthwise": 0.15, "grouped": 0.3,
                "dense": 0.3, "pooling": 0.15, "elementwise": 0.3}


def _prior(conv_kxk_gmacs_s: float, bandwidth_gb_s: float, layer_overhead_us: float,
           model_overhead_ms: float, thread_exponent: float = 0.8, winograd: float = 2.0,
           channel_align: int = 4, misaligned_factor: float = 1.5,
           grouped_dense_min_channels: int = 16) -> dict[str, Any]:
    shape = _CLASS_SHAPE | {"conv3x3s1": winograd}
    return {"gops_s": {c: conv_kxk_gmacs_s * s for c, s in shape.items()},
            "bandwidth_gb_s": bandwidth_gb_s, "layer_overhead_us": layer_overhead_us,
            "model_overhead_ms": model_overhead_ms, "thread_exponent": thread_exponent,
            "channel_align": channel_align, "misaligned_factor": misaligned_factor,
            "grouped_dense_min_channels": grouped_dense_min_channels}


#: Datasheet priors (the start and the anchor of every calibration). The
#: per-thread ``conv_kxk`` rate is the core's fp32 NEON/AVX MAC peak times a
#: typical kernel efficiency, raised where ncnn uses fp16 arithmetic (ARMv8.2:
#: A76, A78AE); bandwidth is DRAM peak (bus width x transfer rate) x ~0.3.
PRIORS: dict[str, dict[str, Any]] = {
    "rpi4": {
        "description": "Raspberry Pi 4 Model B, BCM2711, 4x Cortex-A72 @ 1.8 GHz, CPU, fp32",
        "threads": 4, "cores": 4,
        "params": _prior(10.0, 4.0, 5.0, 0.05),
        "sources": "Cortex-A72: 2x128-bit NEON, 8 fp32 MAC/cycle -> 14.4 GMAC/s/core peak (ARM TRM); "
                   "LPDDR4-3200 x32 = 12.8 GB/s (RPi 4 datasheet)",
    },
    "rpi5": {
        "description": "Raspberry Pi 5, BCM2712, 4x Cortex-A76 @ 2.4 GHz, CPU (ncnn: fp16 arithmetic)",
        "threads": 4, "cores": 4,
        "params": _prior(30.0, 5.0, 3.0, 0.05),
        "sources": "Cortex-A76: 8 fp32 / 16 fp16 MAC/cycle -> 19.2 / 38.4 GMAC/s/core (ARM); "
                   "LPDDR4X-4267 x32 = 17 GB/s (RPi 5 product brief)",
    },
    "jetson-nano": {
        "description": "NVIDIA Jetson Nano, 4x Cortex-A57 @ 1.43 GHz, CPU, fp32",
        "threads": 4, "cores": 4,
        "params": _prior(6.0, 7.7, 5.0, 0.05),
        "sources": "Cortex-A57: 4 fp32 MAC/cycle -> 5.7 GMAC/s/core; LPDDR4 x64 = 25.6 GB/s (Jetson Nano datasheet)",
    },
    "jetson-orin-nano": {
        "description": "NVIDIA Jetson Orin Nano, 6x Cortex-A78AE @ 1.5 GHz, CPU (ncnn: fp16 arithmetic)",
        "threads": 6, "cores": 6,
        "params": _prior(20.0, 20.0, 3.0, 0.05),
        "sources": "Cortex-A78AE: 8 fp32 / 16 fp16 MAC/cycle -> 12 / 24 GMAC/s/core; LPDDR5 x128 = 68 GB/s "
                   "(Jetson Orin Nano datasheet)",
    },
    "jetson-nano-gpu": {
        "description": "NVIDIA Jetson Nano, 128-core Maxwell GPU @ 921 MHz (ncnn Vulkan, fp16 storage)",
        "threads": 1, "cores": 1,
        "params": _prior(60.0, 12.0, 50.0, 1.0, 1.0, grouped_dense_min_channels=0),
        "sources": "128 CUDA cores x 921 MHz = 118 GMAC/s fp32 (Jetson Nano datasheet); LPDDR4 25.6 GB/s shared",
    },
    "jetson-orin-nano-gpu": {
        "description": "NVIDIA Jetson Orin Nano, 1024-core Ampere GPU @ 625 MHz (ncnn Vulkan, fp16 storage)",
        "threads": 1, "cores": 1,
        "params": _prior(300.0, 34.0, 30.0, 0.5, 1.0, grouped_dense_min_channels=0),
        "sources": "1024 CUDA cores x 625 MHz = 640 GMAC/s fp32 (Jetson Orin Nano datasheet); LPDDR5 68 GB/s shared",
    },
    "host": {
        "description": "this machine: AMD EPYC (Zen 4, KVM guest), 2 vCPUs, AVX-512, CPU",
        "threads": 1, "cores": 2,
        "params": _prior(15.0, 30.0, 3.0, 0.02, winograd=1.0, channel_align=16),
        "sources": "Zen 4: 2x256-bit FMA, 16 fp32 MAC/cycle -> ~40 GMAC/s/core peak at 2.6 GHz; "
                   "32 MB L3 holds the CIFAR-size models (bandwidth is L3-like); ONNX Runtime MLAS NCHWc "
                   "block = 16 channels with AVX-512",
    },
}


def prior_profile(name: str) -> SimProfile:
    """The uncalibrated datasheet profile of a device (version 0 is never written; version 1).

    Raises:
        ValueError: no prior for ``name`` (the message lists the known ones).
    """
    if name not in PRIORS:
        raise ValueError(f"no prior for profile {name!r}; known: {', '.join(PRIORS)}")
    e = PRIORS[name]
    return SimProfile(name=name, version=1, description=e["description"], threads=e["threads"], cores=e["cores"],
                      params=SimParams.from_dict(e["params"]),
                      provenance={"prior_sources": e["sources"], "calibrated": False}, fit=None)


@dataclass(frozen=True, slots=True)
class CalibrationRow:
    """One measured latency of one graph.

    Attributes:
        features: the graph's cost features.
        latency_ms: measured latency (p50 or mean), ms, > 0.
        threads: thread count of the measurement (>= 1).
        label: free text (model name, measurement id) for reports.
        group: leave-one-group-out key (e.g. the model name).
    """

    features: GraphFeatures
    latency_ms: float
    threads: int = 1
    label: str = ""
    group: str = ""


@dataclass(frozen=True, slots=True)
class FitReport:
    """A calibrated profile and its error on the rows it was fitted to.

    Attributes:
        profile: the fitted profile (``fit`` filled from :attr:`stats`).
        stats: ``n_rows``, ``mape`` (%), ``max_ape`` (%), ``rmse_log``,
            ``cost``, ``optimizer`` message.
        rows: per row: ``label``, ``threads``, ``measured_ms``, ``predicted_ms``, ``ape`` (%).
    """

    profile: SimProfile
    stats: dict[str, Any]
    rows: list[dict[str, Any]]


# x = log of: gops_s[8], bandwidth, layer overhead, model overhead, thread exponent, misaligned factor[8]
_K = len(OP_CLASSES)
_M = _K + 4  # first misaligned factor
_NP = _K + 4 + _K
_BOUNDS = ([math.log(1e-4)] * _K + [math.log(1e-3), math.log(1e-3), math.log(1e-5), math.log(0.05)] + [0.0] * _K,
           [math.log(1e6)] * _K + [math.log(1e4), math.log(1e5), math.log(1e4), 0.0] + [math.log(20.0)] * _K)


def _to_vec(p: SimParams) -> np.ndarray:
    return np.log(np.concatenate([p.gops_s, [p.bandwidth_gb_s, max(p.layer_overhead_us, 1e-3),
                                             max(p.model_overhead_ms, 1e-5), p.thread_exponent],
                                  p.misaligned_factor]))


def _from_vec(x: np.ndarray, channel_align: int, grouped_dense_min_channels: int = 0) -> SimParams:
    v = np.exp(x)
    return SimParams(v[:_K].copy(), float(v[_K]), float(v[_K + 1]), float(v[_K + 2]), float(min(v[_K + 3], 1.0)),
                     channel_align, np.maximum(v[_M:], 1.0), grouped_dense_min_channels)


class _Stacked:
    """All rows' operators concatenated, for one vectorised prediction of every row."""

    def __init__(self, rows: Sequence[CalibrationRow], cores: int, params: SimParams) -> None:
        channel_align = params.channel_align
        self.work = np.concatenate([r.features.work for r in rows])
        self.bytes = np.concatenate([r.features.bytes for r in rows])
        self.cls = np.concatenate([effective_class(r.features, params) for r in rows])
        counts = np.array([len(r.features) for r in rows])
        self.row = np.repeat(np.arange(len(rows)), counts)
        self.n_ops = counts.astype(np.float64)
        self.threads = np.minimum(np.array([r.threads for r in rows], dtype=np.float64), cores)
        self.log_threads_op = np.log(self.threads)[self.row]
        self.n_rows = len(rows)
        self.misaligned = np.concatenate([misaligned_mask(r.features.channels, channel_align) for r in rows])

    def predict_ms(self, x: np.ndarray) -> np.ndarray:
        rate = np.exp(x[:_K])[self.cls] * 1e9 * np.exp(np.exp(x[_K + 3]) * self.log_threads_op)
        work = np.where(self.misaligned, self.work * np.exp(x[_M:])[self.cls], self.work)
        t = np.maximum(work / rate, self.bytes / (math.exp(x[_K]) * 1e9))
        per_row = np.bincount(self.row, weights=t, minlength=self.n_rows)
        return 1e3 * (per_row + self.n_ops * math.exp(x[_K + 1]) * 1e-6) + math.exp(x[_K + 2])


def fit_stats(predicted_ms: np.ndarray, measured_ms: np.ndarray) -> dict[str, float]:
    """``mape`` and ``max_ape`` (%), ``rmse_log`` (natural log units) and ``n_rows``."""
    pred, meas = np.asarray(predicted_ms, float), np.asarray(measured_ms, float)
    ape = 100.0 * np.abs(pred - meas) / meas
    return {"n_rows": int(meas.size), "mape": float(ape.mean()), "max_ape": float(ape.max()),
            "rmse_log": float(np.sqrt(np.mean((np.log(pred) - np.log(meas)) ** 2)))}


def fit_profile(rows: Sequence[CalibrationRow], start: SimProfile, *, prior: SimProfile | None = None,
                prior_weight: float = 0.3, prior_sigma_log: float = math.log(4.0),
                fit_thread_exponent: bool | None = None, max_nfev: int = 2000) -> FitReport:
    """Fit ``start``'s parameters to ``rows``; returns the new profile and its error.

    Args:
        rows: measured latencies (>= 1 row; more rows than free parameters
            when ``prior_weight == 0``).
        start: initial parameters; name, threads, cores and description are
            kept, ``version`` is bumped by one.
        prior: the anchor of the prior term (default: ``start``).
        prior_weight: weight of the prior residuals (0 = none).
        prior_sigma_log: prior standard deviation of ``log(theta)`` (default
            ln 4: a factor of 4 is one sigma).
        fit_thread_exponent: fit the exponent (default: only when the rows
            hold at least two thread counts).
        max_nfev: optimizer's evaluation budget.

    Raises:
        ValueError: no rows, a non-positive latency, or too few rows for an
            unregularised fit.
    """
    from scipy.optimize import least_squares

    if not rows:
        raise ValueError("fit_profile needs at least one measured row")
    meas = np.array([r.latency_ms for r in rows], dtype=np.float64)
    if not np.all(np.isfinite(meas)) or np.any(meas <= 0):
        raise ValueError("every measured latency must be a finite number of ms > 0")
    align = start.params.channel_align
    stacked = _Stacked(rows, start.cores, start.params)
    anchor = _to_vec((prior or start).params)
    x0 = np.clip(_to_vec(start.params), _BOUNDS[0], _BOUNDS[1])
    if fit_thread_exponent is None:
        fit_thread_exponent = len(set(np.minimum([r.threads for r in rows], start.cores).tolist())) > 1
    free = np.ones(_NP, dtype=bool)
    free[_K + 3] = bool(fit_thread_exponent)
    # a class's factor needs misaligned convs of that class in the rows
    mis_seen = np.bincount(stacked.cls[stacked.misaligned], minlength=_K) > 0
    free[_M:] = mis_seen & (align > 1)
    # a class with no work in any row cannot be seen: keep it at its start value
    seen = np.bincount(stacked.cls, weights=stacked.work, minlength=len(OP_CLASSES)) > 0
    free[:len(OP_CLASSES)] &= seen
    if prior_weight <= 0 and free.sum() > len(rows):
        raise ValueError(f"{free.sum()} free parameters but only {len(rows)} rows: add rows or use a prior")
    log_meas = np.log(meas)
    w = prior_weight / prior_sigma_log

    def full(xf: np.ndarray) -> np.ndarray:
        x = x0.copy()
        x[free] = xf
        return x

    def residuals(xf: np.ndarray) -> np.ndarray:
        x = full(xf)
        r = np.log(stacked.predict_ms(x)) - log_meas
        if w > 0:
            r = np.concatenate([r, w * (xf - anchor[free])])
        return r

    lb, ub = np.array(_BOUNDS[0])[free], np.array(_BOUNDS[1])[free]
    sol = least_squares(residuals, np.clip(x0[free], lb + 1e-9, ub - 1e-9), bounds=(lb, ub), method="trf",
                        max_nfev=max_nfev, x_scale=1.0, xtol=1e-9, ftol=1e-10, gtol=1e-10)
    x = full(sol.x)
    params = _from_vec(x, align, start.params.grouped_dense_min_channels)
    pred = stacked.predict_ms(x)
    stats = fit_stats(pred, meas) | {"cost": float(sol.cost), "optimizer": str(sol.message),
                                     "prior_weight": prior_weight, "prior_sigma_log": prior_sigma_log,
                                     "free_params": int(free.sum()), "thread_exponent_fitted": bool(free[_K + 3]),
                                     "misaligned_factor_fitted": [c for c, f in zip(OP_CLASSES, free[_M:]) if f]}
    profile = start.with_params(params, version=start.version + 1, fit=stats)
    per_row = [{"label": r.label, "threads": r.threads, "measured_ms": float(m), "predicted_ms": float(p),
                "ape": float(100 * abs(p - m) / m)} for r, m, p in zip(rows, meas, pred)]
    logger.info("calibrated %s on %d rows: MAPE %.1f%%, rmse_log %.3f", start.name, len(rows),
                stats["mape"], stats["rmse_log"])
    return FitReport(profile, stats, per_row)


def leave_one_group_out(rows: Sequence[CalibrationRow], start: SimProfile, **fit_kw: Any) -> dict[str, Any]:
    """Fit on all groups but one, predict the held-out group; for every group.

    Returns:
        ``mape`` (%) over every held-out row, ``n_rows``, and ``groups``: per
        group ``{"group", "rows": [{"label", "threads", "measured_ms",
        "predicted_ms", "ape"}]}``.

    Raises:
        ValueError: fewer than two groups.
    """
    groups = sorted({r.group for r in rows})
    if len(groups) < 2:
        raise ValueError(f"leave-one-group-out needs >= 2 groups, got {groups}")
    out, apes = [], []
    for g in groups:
        train = [r for r in rows if r.group != g]
        test = [r for r in rows if r.group == g]
        fitted = fit_profile(train, start, **fit_kw).profile
        held = []
        for r in test:
            p = predict_latency_ms(r.features, fitted, threads=r.threads)
            ape = 100 * abs(p - r.latency_ms) / r.latency_ms
            apes.append(ape)
            held.append({"label": r.label, "threads": r.threads, "measured_ms": r.latency_ms,
                         "predicted_ms": p, "ape": ape})
        out.append({"group": g, "rows": held})
    return {"mape": float(np.mean(apes)), "n_rows": len(apes), "groups": out}


def choose_channel_align(rows: Sequence[CalibrationRow], start: SimProfile, candidates: Sequence[int] = (1, 4, 8, 16),
                         *, folds: int = 5, seed: int = 0, **fit_kw: Any) -> tuple[int, dict[int, float]]:
    """Pick ``channel_align`` by k-fold cross-validation on ``rows`` (it is a grid size, not fitted).

    Rows are shuffled with ``numpy.random.default_rng(seed)`` and split into
    ``folds`` parts; for each candidate the profile is fitted on k-1 parts and
    scored by the RMS of ``log(predicted / measured)`` on the held-out part.

    Returns:
        (the best candidate, {candidate: cross-validated RMS log error}).

    Raises:
        ValueError: fewer rows than folds, or no candidate.
    """
    if not candidates:
        raise ValueError("choose_channel_align needs at least one candidate")
    if len(rows) < folds:
        raise ValueError(f"{len(rows)} rows are too few for {folds}-fold cross-validation")
    order = np.random.default_rng(seed).permutation(len(rows))
    parts = np.array_split(order, folds)
    scores: dict[int, float] = {}
    for align in candidates:
        s = start.with_params(SimParams.from_dict(start.params.to_dict() | {"channel_align": int(align)}))
        errs = []
        for k in range(folds):
            test = set(parts[k].tolist())
            fitted = fit_profile([r for i, r in enumerate(rows) if i not in test], s, **fit_kw).profile
            errs += [math.log(predict_latency_ms(rows[i].features, fitted, threads=rows[i].threads) / rows[i].latency_ms)
                     for i in test]
        scores[int(align)] = float(np.sqrt(np.mean(np.square(errs))))
    best = min(scores, key=scores.get)
    logger.info("channel_align by %d-fold CV: %s -> %d", folds, scores, best)
    return best, scores


# ------------------------------------------------------------------ ranking vs the MACs proxy
#: Field of a profile's ``fit`` that holds its leave-one-model-out ranking check
#: (:func:`lomo_ranking`); :func:`devices.sim.profile.no_better_than_macs` reads it.
RANKING_FIELD = "ranking"


def ranking_scores(measured_ms: Sequence[float], predicted_ms: Sequence[float], macs: Sequence[float],
                   threads: Sequence[int], train_scale: Sequence[float] | None = None,
                   groups: Sequence[str] | None = None) -> dict[str, Any]:
    """Rank and error scores of held-out predictions beside the MACs proxy's.

    Spearman's rho (``scipy.stats.spearmanr``: Pearson correlation of the
    ranks, ties at their mean rank) is computed within each thread count (a
    model at 1 and 4 threads is two latencies of one graph; pooling them would
    reward getting the thread scaling right, not the ranking of networks),
    then averaged over the thread counts weighted by their number of rows.

    Args:
        measured_ms: measured latency per row (ms, > 0).
        predicted_ms: the simulator's held-out prediction per row (ms).
        macs: MACs of each row's graph (the proxy).
        threads: thread count per row.
        train_scale: per row, ms per MAC of the proxy fitted WITHOUT that row's
            model (the one global scale of a leave-one-model-out fit); None:
            fitted on every row (in-sample) as exp(median(log(measured/MACs)))
            per thread count.
        groups: per row, its model; when given, Spearman is computed within
            each (model, thread count) cell of >= 3 rows instead (the ranking
            a search needs: pruned variants of one model), keys of
            ``per_threads`` become ``"model@threads"``.

    Returns:
        ``spearman_sim``, ``spearman_macs`` (row-weighted means over thread
        counts; NaN where no thread count has >= 3 models), ``mape_sim`` (%,
        the predictions as they are), ``mape_macs`` (%, MACs x its one global
        scale), ``n_rows``, ``n_models`` (rows per thread count, largest) and
        ``per_threads``: {threads: {``n``, ``spearman_sim``, ``spearman_macs``}}.

    Raises:
        ValueError: arrays of different lengths or a non-positive latency or MACs.
    """
    from scipy.stats import spearmanr

    meas, pred = np.asarray(measured_ms, float), np.asarray(predicted_ms, float)
    mac, thr = np.asarray(macs, float), np.asarray(threads, int)
    if not (len(meas) == len(pred) == len(mac) == len(thr)):
        raise ValueError("ranking_scores needs one measured, predicted, MACs and threads value per row")
    if np.any(meas <= 0) or np.any(mac <= 0) or np.any(pred <= 0):
        raise ValueError("ranking_scores needs latencies and MACs > 0")
    if train_scale is None:
        scale = np.empty_like(meas)
        for t in np.unique(thr):
            m = thr == t
            scale[m] = math.exp(float(np.median(np.log(meas[m] / mac[m]))))
    else:
        scale = np.asarray(train_scale, float)
    per, ws, s_sim, s_mac = {}, [], [], []
    if groups is None:
        cells = [(int(t), thr == t) for t in np.unique(thr)]
    else:
        grp = np.asarray(groups, dtype=object)
        cells = [(f"{g}@{int(t)}", (grp == g) & (thr == t)) for g in sorted(set(grp.tolist())) for t in np.unique(thr)]
    for key, m in cells:
        n = int(m.sum())
        if n < 3:
            continue
        a = float(spearmanr(pred[m], meas[m]).statistic)
        b = float(spearmanr(mac[m], meas[m]).statistic)
        per[key] = {"n": n, "spearman_sim": a, "spearman_macs": b}
        ws.append(n)
        s_sim.append(a)
        s_mac.append(b)
    wavg = (lambda v: float(np.average(v, weights=ws))) if ws else (lambda v: float("nan"))
    diff_ci = _spearman_diff_ci(meas, pred, mac, [m for _, m in cells if int(m.sum()) >= 3], ws)
    return {"spearman_sim": wavg(s_sim), "spearman_macs": wavg(s_mac), "spearman_diff_ci95": diff_ci,
            "mape_sim": float(np.mean(100 * np.abs(pred - meas) / meas)),
            "mape_macs": float(np.mean(100 * np.abs(mac * scale - meas) / meas)),
            "n_rows": int(meas.size), "n_models": max((p["n"] for p in per.values()), default=0),
            "per_threads": per}


def _spearman_diff_ci(meas: np.ndarray, pred: np.ndarray, mac: np.ndarray, cells: list[np.ndarray],
                      weights: list[int], n_resamples: int = 2000, seed: int = 0) -> list[float] | None:
    """95 % percentile bootstrap interval of the row-weighted (sim - MACs) Spearman difference.

    Rows are resampled with replacement within each cell (stratified: a cell
    keeps its size), the same draw for the simulator and the proxy (paired),
    ``numpy.random.default_rng(seed)``; Efron & Tibshirani 1993, ch. 13
    (percentile interval). With 11 models an interval of +-0.05 is usual: a
    verdict from a smaller difference is a point estimate, not a finding.
    """
    from scipy.stats import spearmanr

    if not cells:
        return None
    import warnings

    from scipy.stats import ConstantInputWarning

    rng = np.random.default_rng(seed)
    idx = [np.flatnonzero(m) for m in cells]
    diffs = np.empty(n_resamples)
    for k in range(n_resamples):
        d = []
        for ix in idx:
            pick = rng.choice(ix, size=ix.size, replace=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConstantInputWarning)
                a = spearmanr(pred[pick], meas[pick]).statistic
                b = spearmanr(mac[pick], meas[pick]).statistic
            d.append(0.0 if np.isnan(a) or np.isnan(b) else a - b)  # a constant draw ranks nothing
        diffs[k] = np.average(d, weights=weights)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return [float(lo), float(hi)]


def lomo_ranking(rows: Sequence[CalibrationRow], start: SimProfile, *, within_models: bool = False,
                 **fit_kw: Any) -> dict[str, Any]:
    """Leave-one-model-out check of a profile's ranking against the MACs proxy (never in-sample).

    For each group (model) of ``rows``: fit the profile (:func:`fit_profile`,
    ``start`` and ``fit_kw``) on the other groups' rows and predict the
    held-out rows; fit the MACs proxy's one global scale (ms per MAC,
    exp(median log(latency / MACs)) per thread count) on the same other
    groups. Then :func:`ranking_scores` over every held-out row: ranked
    across models (within each thread count), or with ``within_models``
    within each held-out model (its pruned variants: what a search ranks).

    Returns:
        :func:`ranking_scores`' dict (``n_models``: the number of models
        held out) plus ``beats_macs`` (True when the
        simulator's Spearman is strictly above the proxy's), ``method``
        (a one-line description) and ``rows`` (per held-out row: ``label``,
        ``threads``, ``measured_ms``, ``predicted_ms``, ``macs``, ``macs_ms``).

    Raises:
        ValueError: fewer than two groups.
    """
    groups = sorted({r.group for r in rows})
    if len(groups) < 2:
        raise ValueError(f"leave-one-model-out needs >= 2 models, got {groups}")
    meas, pred, mac, thr, scale, detail = [], [], [], [], [], []
    for g in groups:
        train = [r for r in rows if r.group != g]
        fitted = fit_profile(train, start, **fit_kw).profile
        for r in (r for r in rows if r.group == g):
            same = [t for t in train if t.threads == r.threads] or train
            s = math.exp(float(np.median([math.log(t.latency_ms / t.features.macs) for t in same])))
            p = predict_latency_ms(r.features, fitted, threads=r.threads)
            meas.append(r.latency_ms)
            pred.append(p)
            mac.append(r.features.macs)
            thr.append(r.threads)
            scale.append(s)
            detail.append({"label": r.label, "group": r.group, "threads": r.threads, "measured_ms": r.latency_ms, "predicted_ms": p,
                           "macs": r.features.macs, "macs_ms": s * r.features.macs})
    grp = [d["group"] for d in detail] if within_models else None
    out = ranking_scores(meas, pred, mac, thr, train_scale=scale, groups=grp)
    out["n_models"] = len(groups)
    out["beats_macs"] = bool(out["spearman_sim"] > out["spearman_macs"])
    out["scope"] = "within each held-out model" if within_models else "across models"
    out["method"] = ("leave-one-model-out: profile and MACs scale fitted without the held-out model; Spearman "
                     + ("within each (held-out model, thread count)" if within_models else "within each thread count")
                     + ", row-weighted mean")
    out["rows"] = detail
    return out
