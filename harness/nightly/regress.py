"""Regression detection for nightly benchmarks: one run against the history of the same key.

``hilprune bench compare`` (issue 6). The key of a history is
(benchmark, device, target, backend, tuning key, source): latencies of
another backend or tuning budget never mix, and **simulated results never
count as history of a measured device** (a farm that fell back to the
simulator records ``simulated`` under the farm's name; those rows only ever
meet other simulated rows).

The rule (all latencies are per-run medians, p50, in ms):

* history H = the p50 of the last ``baseline_runs`` (N, default 7) earlier runs
  of the key whose result was ``ok`` (failed runs have no number);
* baseline b = median(H) — robust to one bad night;
* history noise: MAD = median(|h − b|); its normal-consistent sigma is
  1.4826·MAD (Rousseeuw & Croux 1993; scipy.stats.median_abs_deviation,
  scale="normal"), relative noise s_hist = 1.4826·MAD / b;
* the run's own noise: the standard error of a median is ≈ 1.2533·σ/√n for
  normal data (Kendall & Stuart), so relative s_run = 1.2533·CoV / √n with CoV
  and n of this run's raw repeats;
* band = max(threshold, k · max(s_hist, s_run)), threshold default 0.05 (5 %),
  where s_hist counts only with at least 3 earlier results (the MAD of one
  or two values says nothing about the spread; until then the threshold and
  the run's own noise decide),
  k = 3.5: with s_hist this is Iglewicz & Hoaglin's modified z-score rule
  (|0.6745·(x − median)/MAD| > 3.5 flags an outlier; NIST/SEMATECH
  e-Handbook §1.3.5.17);
* Δ = (p50 − b) / b; ``regression`` if Δ > band, ``improvement`` if Δ < −band,
  else ``ok``. Fewer than ``min_history`` (default 1) earlier results:
  ``new`` (no verdict). A failed result in the compared run: ``failed``.

**Through the suite's reference model** (issue 12). In a suite with a
reference (``[suite] reference``), every other benchmark also has, per run,
its median ratio to the reference timed interleaved in one device session,
with a bootstrap interval (:meth:`harness.pipeline.Pipeline.measure_ratio`).
On a shared machine the absolute p50 of one artifact moves by tens of percent
from session to session while such ratios reproduce to well under 1 %
(DESIGN.md §5, issue 12), so the ratio says whether the *model* got slower:

* the ratio history R = the last N earlier ratios of the same key and the same
  reference benchmark; b_r = median(R); Δ_r = (ratio − b_r) / b_r;
* the same band rule with the ratio's own noise: s_hist = 1.4826·MAD(R)/b_r
  (again only from 3 earlier ratios on) and s_run = the bootstrap interval's
  half-width as a sigma, (ci_high − ci_low) / (2·z_c) / ratio, z_c the normal
  quantile of the interval's coverage c (1.96 for 95 %: an interval of ± z·σ
  for an approximately normal sampling distribution of the median);
  band_r = max(threshold, k · max(s_hist, s_run)).

Each result then gets a **verdict** from both judgements and from the
reference's own absolute p50 on the same (device, target, source) in the same run:

* ``model_regression``: the ratio regressed (whatever the absolute did), and the
  reference's absolute did not;
* ``both``: the ratio regressed and the reference's absolute regressed too
  (a slower model on a slower machine night);
* ``machine_night``: the absolute p50 regressed, the ratio did not, and the
  reference's own absolute p50 regressed alike: the machine was slower, not the model;
* ``absolute_only``: the absolute p50 regressed, the ratio did not, and the
  reference did not move: the ratio (the more precise figure) clears the model;
* ``regression``: no ratio judgement to lean on (no reference in the suite, no
  ratio this run, or fewer than ``min_history`` earlier ratios): today's
  absolute rule decides;
* ``improvement`` (by the ratio where there is one, else the absolute), ``ok``,
  ``new``, ``failed``; the reference's own result has the verdict ``reference``
  (its absolute status is the machine's, never a regression of a model).

``bench compare`` exits 1 for :data:`EXIT_VERDICTS` only. A change that slows
*every* model alike (a compiler, runtime or firmware upgrade) moves the
reference too and reads as ``machine_night``: the "changed since the previous
run" line (versions, commits, the reference's ONNX hash) is how to tell it apart.

A step that persists becomes the new baseline once it fills half of the last
N runs (the median moves), so a deliberate change stops being reported after
about N/2 nights. pyperf's own rule (``pyperf compare_to``) is a two-sample
t-test on the raw values of two results; here the unit of history is a night,
whose night-to-night spread (load, temperature, a firmware change) is wider
than the within-run spread a t-test on raw repeats would see.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["EXIT_VERDICTS", "CompareRule", "Comparison", "RatioComparison", "compare_all", "compare_run",
           "history_key", "metadata_changes", "ratio_key"]

#: normal-consistency constant of the MAD: sigma ≈ 1.4826 · MAD for normal data.
MAD_TO_SIGMA = 1.4826
#: standard error of the sample median ≈ 1.2533 · sigma / sqrt(n) (sqrt(pi/2)) for normal data.
MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)
#: Verdicts that make ``bench compare`` exit 1: a slower model (by its ratio to the reference, or, with no ratio
#: judgement, by the absolute rule).
EXIT_VERDICTS = ("model_regression", "both", "regression")


@dataclass(frozen=True, slots=True)
class CompareRule:
    """Parameters of the regression rule (see the module docstring).

    Attributes:
        threshold: smallest relative change ever reported (0.05 = 5 %).
        baseline_runs: N, how many earlier runs form the history.
        min_history: fewer earlier results than this: no verdict (``new``).
        min_mad_history: earlier results needed before the history's MAD counts as noise.
        k: multiple of the noise sigma a change must exceed (3.5, Iglewicz & Hoaglin).

    Raises:
        ValueError: a non-positive threshold, N < 1, min_history < 1 or k <= 0.
    """

    threshold: float = 0.05
    baseline_runs: int = 7
    min_history: int = 1
    k: float = 3.5
    min_mad_history: int = 3

    def __post_init__(self) -> None:
        if not (self.threshold > 0):
            raise ValueError(f"--threshold must be > 0 (a relative change, e.g. 0.05), got {self.threshold}")
        if self.baseline_runs < 1:
            raise ValueError(f"--baseline must be >= 1 run, got {self.baseline_runs}")
        if self.min_history < 1 or self.k <= 0:
            raise ValueError("min_history must be >= 1 and k > 0")


@dataclass(frozen=True, slots=True)
class RatioComparison:
    """The ratio of a result to the suite's reference, judged against the history of ratios.

    Attributes:
        reference: the reference benchmark's name.
        status: ``regression``, ``improvement``, ``ok``, ``new`` (too few earlier ratios) or
            ``missing`` (no ratio this run; ``error`` says why).
        latency_ratio: this run's median ratio benchmark / reference (dimensionless).
        ci_low, ci_high: its bootstrap interval; confidence: the interval's coverage.
        baseline_ratio: median of the earlier ratios.
        delta: (ratio − baseline) / baseline.
        band: the relative band used.
        noise_history, noise_run: relative sigmas 1.4826·MAD/b_r and (ci_high − ci_low)/(2·z_c)/ratio.
        history_n: earlier ratios used.
        error: why there is no ratio (``ratio_error`` of the bench result).
    """

    reference: str
    status: str
    latency_ratio: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None
    baseline_ratio: float | None = None
    delta: float | None = None
    band: float | None = None
    noise_history: float | None = None
    noise_run: float | None = None
    history_n: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Comparison:
    """The verdict on one result of a run.

    Attributes:
        benchmark, device, target, backend, tuning_key, source: the history key.
        status: ``regression``, ``improvement``, ``ok``, ``new`` or ``failed``.
        latency_p50_ms: this run's p50 (None when failed).
        baseline_p50_ms: median of the history's p50s (None with no history).
        delta: (p50 − baseline) / baseline (None without both).
        band: the relative band used (None without enough history).
        noise_history, noise_run: relative sigmas 1.4826·MAD/b and 1.2533·CoV/√n.
        history_n: earlier results used.
        unstable: this run's result was flagged unstable by the device (CoV over its limit).
        error: kind and reason when failed.
        verdict: the result's verdict (module docstring); without a reference equal to ``status``.
        ratio: the ratio to the suite's reference judged (None: the suite has no reference, or this
            is the reference itself).
        reference_status, reference_delta: the reference's own absolute status and Δ in the same run
            on the same (device, target, source) (None without one).
    """

    benchmark: str
    device: str
    target: str
    backend: str
    tuning_key: str
    source: str
    status: str
    latency_p50_ms: float | None
    baseline_p50_ms: float | None
    delta: float | None
    band: float | None
    noise_history: float | None
    noise_run: float | None
    history_n: int
    unstable: bool
    error: str | None = None
    verdict: str = ""
    ratio: RatioComparison | None = None
    reference_status: str | None = None
    reference_delta: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The comparison as plain JSON-able values (``ratio`` a nested dict or None)."""
        return asdict(self)


def history_key(row: dict[str, Any]) -> tuple[str, str, str, str, str, str]:
    """(benchmark, device, target, backend, tuning_key, source) of a ``bench_results`` row."""
    return (row["benchmark"], row["device"], row["target"], row["backend"], row["tuning_key"], row["source"])


def _judge(row: dict[str, Any], history: list[float], rule: CompareRule) -> Comparison:
    key = dict(zip(("benchmark", "device", "target", "backend", "tuning_key", "source"), history_key(row)))
    if row["status"] != "ok":
        return Comparison(**key, status="failed", latency_p50_ms=None, baseline_p50_ms=None, delta=None, band=None,
                          noise_history=None, noise_run=None, history_n=len(history), unstable=False,
                          error=f"{row.get('error_kind')}: {row.get('error_message')}")
    p50 = float(row["latency_p50_ms"])
    cov, n = row.get("latency_cov"), row.get("n")
    noise_run = MEDIAN_SE_FACTOR * cov / math.sqrt(n) if cov is not None and n and math.isfinite(cov) else 0.0
    unstable = bool(row.get("unstable"))
    if not history:
        return Comparison(**key, status="new", latency_p50_ms=p50, baseline_p50_ms=None, delta=None, band=None,
                          noise_history=None, noise_run=noise_run, history_n=0, unstable=unstable)
    status, base, delta, band, noise_hist = _band(p50, history, noise_run, rule)
    return Comparison(**key, status=status, latency_p50_ms=p50, baseline_p50_ms=base, delta=delta, band=band,
                      noise_history=noise_hist, noise_run=noise_run, history_n=len(history), unstable=unstable)


def _band(value: float, history: list[float], noise_run: float,
          rule: CompareRule) -> tuple[str, float, float, float | None, float | None]:
    """(status, baseline, delta, band, noise_history) of ``value`` against a non-empty ``history`` (module rule)."""
    base = statistics.median(history)
    delta = (value - base) / base
    if len(history) < rule.min_history:
        return "new", base, delta, None, None
    noise_hist = None
    if len(history) >= rule.min_mad_history:
        mad = statistics.median(abs(h - base) for h in history)
        noise_hist = MAD_TO_SIGMA * mad / base
    band = max(rule.threshold, rule.k * max(noise_hist or 0.0, noise_run))
    status = "regression" if delta > band else "improvement" if delta < -band else "ok"
    return status, base, delta, band, noise_hist


def ratio_key(row: dict[str, Any]) -> tuple:
    """The history key of a result's ratio: :func:`history_key` and the reference benchmark."""
    return (*history_key(row), row.get("reference_benchmark"))


def _judge_ratio(row: dict[str, Any], history: list[float], rule: CompareRule) -> RatioComparison:
    ref = row["reference_benchmark"]
    ratio = row.get("latency_ratio")
    if ratio is None:
        return RatioComparison(reference=ref, status="missing", history_n=len(history),
                               error=row.get("ratio_error") or "no ratio stored for this result")
    lo, hi = row.get("latency_ratio_ci_low"), row.get("latency_ratio_ci_high")
    conf = row.get("ratio_confidence") or 0.95
    z = statistics.NormalDist().inv_cdf((1 + conf) / 2)
    noise_run = (hi - lo) / (2 * z) / ratio if lo is not None and hi is not None else 0.0
    common = dict(reference=ref, latency_ratio=ratio, ci_low=lo, ci_high=hi, confidence=conf, noise_run=noise_run,
                  history_n=len(history))
    if not history:
        return RatioComparison(status="new", **common)
    status, base, delta, band, noise_hist = _band(ratio, history, noise_run, rule)
    return RatioComparison(status=status, baseline_ratio=base, delta=delta, band=band, noise_history=noise_hist,
                           **common)


def _verdict(v: Comparison, ref: Comparison | None, is_reference: bool) -> str:
    """The verdict of one result from its absolute and ratio judgements and the reference's (module docstring)."""
    if v.status == "failed":
        return "failed"
    if is_reference:
        return "reference"
    ratio = v.ratio
    if ratio is None or ratio.status in ("new", "missing"):  # nothing to lean on: the absolute rule
        return v.status
    ref_slower = ref is not None and ref.status == "regression"
    if ratio.status == "regression":
        return "both" if ref_slower else "model_regression"
    if v.status == "regression":
        return "machine_night" if ref_slower else "absolute_only"
    return ratio.status  # improvement or ok: the model, by its ratio


def _run_order(results: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["run_id"] for r in results))  # store.bench_results() is ordered by run creation


def compare_all(results: list[dict[str, Any]], rule: CompareRule = CompareRule()) -> dict[str, list[Comparison]]:
    """Judge every run against the runs before it.

    Args:
        results: rows of :meth:`harness.store.ResultsStore.bench_results`, oldest run first.

    Returns:
        run id -> its comparisons, in the rows' order.
    """
    by_run: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_run[r["run_id"]].append(r)
    seen: dict[tuple, list[float]] = defaultdict(list)
    seen_ratio: dict[tuple, list[float]] = defaultdict(list)
    seen_ref: dict[tuple, list[float]] = defaultdict(list)  # the reference's p50 in each ratio's session
    out: dict[str, list[Comparison]] = {}
    for run_id in _run_order(results):
        rows = by_run[run_id]
        absolute = [_judge(r, seen[history_key(r)][-rule.baseline_runs:], rule) for r in rows]
        refs = {}  # (device, target, backend, source) -> the reference's own absolute judgement in this run
        for r, v in zip(rows, absolute):
            if r.get("reference_benchmark") and r["benchmark"] == r["reference_benchmark"] and r["status"] == "ok":
                refs.setdefault((r["device"], r["target"], r["backend"], r["source"]), v)
        judged = []
        for r, v in zip(rows, absolute):
            reference = r.get("reference_benchmark")
            is_ref = bool(reference) and r["benchmark"] == reference
            if not reference or is_ref or r["status"] != "ok":
                judged.append(dataclasses.replace(v, verdict=_verdict(v, None, is_ref)))
                continue
            ratio = _judge_ratio(r, seen_ratio[ratio_key(r)][-rule.baseline_runs:], rule)
            ref = refs.get((r["device"], r["target"], r["backend"], r["source"]))
            if ref is None and r.get("ratio_reference_p50_ms") is not None:
                # the reference timed with another backend than its own row (e.g. ONNX Runtime beside a TVM
                # reference): judge the reference's p50 of the ratio's own sessions against their history
                ref = _judge({**r, "latency_p50_ms": r["ratio_reference_p50_ms"], "latency_cov": None},
                             seen_ref[ratio_key(r)][-rule.baseline_runs:], rule)
            v = dataclasses.replace(v, ratio=ratio, reference_status=ref.status if ref else None,
                                    reference_delta=ref.delta if ref else None)
            judged.append(dataclasses.replace(v, verdict=_verdict(v, ref, False)))
        out[run_id] = judged
        for r in rows:
            if r["status"] == "ok":
                seen[history_key(r)].append(float(r["latency_p50_ms"]))
                if r.get("latency_ratio") is not None:
                    seen_ratio[ratio_key(r)].append(float(r["latency_ratio"]))
                if r.get("ratio_reference_p50_ms") is not None:
                    seen_ref[ratio_key(r)].append(float(r["ratio_reference_p50_ms"]))
    return out


def compare_run(results: list[dict[str, Any]], run_id: str | None = None,
                rule: CompareRule = CompareRule()) -> tuple[str, list[Comparison]]:
    """Judge one run (default: the latest) against its history.

    Raises:
        ValueError: no bench runs in ``results``, or ``run_id`` is not among them.
    """
    order = _run_order(results)
    if not order:
        raise ValueError("no bench runs in the store; run `hilprune bench --suite FILE` first (or pass --db)")
    if run_id is None:
        run_id = order[-1]
    elif run_id not in order:
        raise ValueError(f"bench run {run_id!r} is not in the store; runs: {', '.join(order[-5:])}"
                         + (" (latest 5)" if len(order) > 5 else ""))
    upto = order[: order.index(run_id) + 1]
    kept = set(upto)
    return run_id, compare_all([r for r in results if r["run_id"] in kept], rule)[run_id]


#: Run metadata whose change between two nights explains a step (what pyperf refuses to aggregate across).
WATCHED_METADATA = ("tvm_version", "onnxruntime_version", "torch_version", "python_version", "hilprune_version",
                    "host", "host_cpu_count", "reference")

_HELLO_VERSIONS = ("tvm", "onnxruntime", "numpy", "python", "glibc", "protocol", "machine")


def metadata_changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    """What changed between two bench runs' metadata: ``{field: [before, after]}``.

    Watches :data:`WATCHED_METADATA`, the git commits of the suite's repository and of
    hilprune (``suite_git``, ``hilprune_git``), and each device's daemon versions
    (``device:<name>:<key>`` for the daemon hello's tvm, onnxruntime, numpy, python, glibc,
    protocol, machine and any key ending in ``version``).
    """
    changes: dict[str, list[Any]] = {}
    for key in WATCHED_METADATA:
        if before.get(key) != after.get(key):
            changes[key] = [before.get(key), after.get(key)]
    for key in ("suite_git", "hilprune_git"):
        a, b = (before.get(key) or {}).get("commit"), (after.get(key) or {}).get("commit")
        if a != b:
            changes[f"{key}.commit"] = [a, b]
    devs_a, devs_b = before.get("devices") or {}, after.get("devices") or {}
    for name in sorted(set(devs_a) & set(devs_b)):
        ha, hb = devs_a[name].get("hello") or {}, devs_b[name].get("hello") or {}
        for k in sorted(set(ha) | set(hb)):
            if (k in _HELLO_VERSIONS or k.endswith("version")) and ha.get(k) != hb.get(k):
                changes[f"device:{name}:{k}"] = [ha.get(k), hb.get(k)]
    return changes
