#!/usr/bin/env python3
"""Measurement stability (issue 12): absolute p50 per session vs the ratio measured interleaved.

Ten ResNet-20 variants (seeded random pruning specs on a grid, close in
latency on purpose: candidates of a search differ by 5-20 %) and the unpruned
baseline are exported to ONNX and compiled for ``host``, then measured on the
``local`` device in two independent full passes (a fresh daemon each pass):

(a) absolute: each model's p50 from one ``Device.measure`` (as the search did
    before issue 12), and the "ratio from absolutes" p50(variant) / p50(baseline)
    of the same pass, the baseline measured at the start of the pass;
(b) interleaved: each variant's median ratio against the baseline from one
    ``Device.measure_interleaved([baseline, variant])`` (adaptive: ± rel_width
    or the cap of pairs).

Printed per figure: Spearman's rank correlation between the two passes over
the variants (goal >= 0.95 for (b)), the median run-to-run change
|pass2 / pass1 - 1| (goal <= 1 % for (b)), and the seconds per candidate
(measurement wall time; the build is apart). Figures only; nothing asserted.
The machine's load is printed (os.getloadavg) before and after each pass: it
moves every absolute figure.

Untuned builds by default (``--tune-trials 0``): tuning ResNet-20 takes
minutes per candidate here (DESIGN.md §4). Untuned TVM code is naive loops
whose time tracks MACs, so the absolute figures are large (tens of ms) and
the candidates' order follows their MACs; the stability of the measurement
is what is measured, not a deployment latency.

    .venv/bin/python benchmarks/measurement_stability.py                 # 10 variants (~10 min here)
    .venv/bin/python benchmarks/measurement_stability.py --quick         # 5 variants, cap 32 pairs
    .venv/bin/python benchmarks/measurement_stability.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

INPUT_SHAPE = (1, 1, 28, 28)
SEED = 0


def build_artifacts(args) -> tuple[Path, list[tuple[str, Path]]]:
    """Export and compile the baseline and ``args.variants`` pruned variants; returns (baseline dir, variants)."""
    import numpy as np

    from harness.compile.build import compile_onnx
    from harness.compile.export import export_onnx
    from harness.compile.targets import resolve_target
    from harness.compile.tuning import TuningConfig
    from harness.models import build_model
    from harness.pruning import apply_spec, find_groups, full_spec, random_spec

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    target = resolve_target("host")
    tuning = TuningConfig(trials_per_task=args.tune_trials, num_threads=args.threads)
    model = build_model("resnet20", num_classes=10, in_channels=1, input_size=INPUT_SHAPE[2:], seed=SEED)
    groups = find_groups(model, INPUT_SHAPE)
    rng = np.random.default_rng(args.seed)
    specs = [("baseline", full_spec(groups))]
    seen = {specs[0][1].signature()}
    while len(specs) < args.variants + 1:
        spec = random_spec(groups, rng, min_keep=args.min_keep, round_to=4)
        if spec.signature() not in seen:
            seen.add(spec.signature())
            specs.append((f"v{len(specs):02d}", spec))
    out = []
    for name, spec in specs:
        t0 = time.perf_counter()
        onnx_path = cache / f"resnet20-{spec.signature()}.onnx"
        if not onnx_path.exists():
            export_onnx(apply_spec(model, spec, INPUT_SHAPE) if name != "baseline" else model, INPUT_SHAPE, onnx_path)
        res = compile_onnx(onnx_path, target, cache, tuning)
        if res.error is not None:
            raise SystemExit(f"{name}: compile failed: {res.error.kind}: {res.error.message}")
        print(f"  {name}: {spec.signature()[:60]:<60} {'cached' if res.artifact.cache_hit else 'built'} "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        out.append((name, res.artifact.path))
    return out[0][1], out[1:]


def one_pass(label: str, baseline: Path, variants: list[tuple[str, Path]], args) -> dict:
    """One independent pass: a fresh daemon, (a) absolute then (b) interleaved for every variant."""
    from devices.base import MeasureConfig
    from devices.interleaved import InterleavedConfig
    from devices.local import LocalDevice

    mcfg = MeasureConfig(warmup=2, number=0, repeat=args.repeat, min_repeat_ms=args.min_block_ms,
                         timeout_s=600, seed=SEED, num_threads=args.threads)
    icfg = InterleavedConfig(warmup=2, min_block_ms=args.min_block_ms, min_pairs=args.min_pairs,
                             max_pairs=args.max_pairs, rel_width=args.rel_width, timeout_s=600, seed=SEED,
                             num_threads=args.threads)
    res: dict = {"label": label, "loadavg_before": list(os.getloadavg()), "absolute": {}, "interleaved": {}}
    dev = LocalDevice()
    try:
        dev.hello()  # the daemon's start (TVM import) is not a candidate's cost
        t0 = time.perf_counter()
        m = dev.measure(baseline, mcfg)
        if not m.ok:
            raise SystemExit(f"baseline: {m.error.kind.value}: {m.error.message}")
        base_p50 = m.value.stats.p50_ms
        res["baseline_p50_ms"], res["baseline_s"] = base_p50, time.perf_counter() - t0
        for name, path in variants:
            t0 = time.perf_counter()
            m = dev.measure(path, mcfg)
            if not m.ok:
                raise SystemExit(f"{name}: {m.error.kind.value}: {m.error.message}")
            res["absolute"][name] = {"p50_ms": m.value.stats.p50_ms, "ratio": m.value.stats.p50_ms / base_p50,
                                     "cov": m.value.stats.cov, "s": time.perf_counter() - t0}
        for name, path in variants:
            t0 = time.perf_counter()
            r = dev.measure_interleaved([baseline, path], icfg)
            if not r.ok:
                raise SystemExit(f"{name}: {r.error.kind.value}: {r.error.message}")
            v = r.value
            e = v.ratios[0]
            res["interleaved"][name] = {"ratio": e.median, "ci": [e.ci_low, e.ci_high], "pairs": v.pairs,
                                        "stop": v.stop_reason, "base_p50_ms": v.artifacts[0].latency_p50_ms,
                                        "p50_ms": v.artifacts[1].latency_p50_ms, "s": time.perf_counter() - t0}
    finally:
        dev.close()
    res["loadavg_after"] = list(os.getloadavg())
    la0, la1 = res["loadavg_before"][0], res["loadavg_after"][0]
    print(f"\n== pass {label}: load average (1 min) {la0:.2f} -> {la1:.2f}; baseline p50 {base_p50:.3f} ms", flush=True)
    print(f"  {'variant':<8} {'abs p50 ms':>10} {'abs ratio':>9} {'s':>5} | {'ratio':>7} {'95% CI':>17} "
          f"{'pairs':>5} {'stop':>9} {'s':>5}", flush=True)
    for name, _ in variants:
        a, b = res["absolute"][name], res["interleaved"][name]
        print(f"  {name:<8} {a['p50_ms']:>10.3f} {a['ratio']:>9.4f} {a['s']:>5.1f} | {b['ratio']:>7.4f} "
              f"[{b['ci'][0]:.4f}, {b['ci'][1]:.4f}] {b['pairs']:>5} {b['stop']:>9} {b['s']:>5.1f}", flush=True)
    return res


def compare(p1: dict, p2: dict, names: list[str]) -> dict:
    """Spearman between passes and the median run-to-run change, per figure."""
    from scipy.stats import spearmanr

    figures = {
        "(a) absolute p50": [(p1["absolute"][n]["p50_ms"], p2["absolute"][n]["p50_ms"]) for n in names],
        "(a) ratio of absolutes": [(p1["absolute"][n]["ratio"], p2["absolute"][n]["ratio"]) for n in names],
        "(b) interleaved ratio": [(p1["interleaved"][n]["ratio"], p2["interleaved"][n]["ratio"]) for n in names],
    }
    out = {}
    for fig, pairs in figures.items():
        x, y = zip(*pairs)
        rho = float(spearmanr(x, y).statistic)
        changes = [abs(b / a - 1) for a, b in pairs]
        out[fig] = {"spearman": rho, "median_change": statistics.median(changes), "max_change": max(changes)}
    out["seconds_per_candidate"] = {
        "(a) absolute": statistics.median([p["absolute"][n]["s"] for p in (p1, p2) for n in names]),
        "(b) interleaved": statistics.median([p["interleaved"][n]["s"] for p in (p1, p2) for n in names]),
    }
    out["pairs_used"] = {"median": statistics.median([p["interleaved"][n]["pairs"] for p in (p1, p2) for n in names]),
                         "converged": sum(p["interleaved"][n]["stop"] == "converged" for p in (p1, p2) for n in names),
                         "of": 2 * len(names)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", type=int, default=10, help="pruned variants (default 10)")
    ap.add_argument("--quick", action="store_true", help="5 variants, at most 32 pairs")
    ap.add_argument("--min-keep", type=float, default=0.6, help="random specs keep 60..100 %% per group")
    ap.add_argument("--tune-trials", type=int, default=0, help="MetaSchedule trials per task (0: untuned)")
    ap.add_argument("--threads", type=int, default=1, help="threads of the backend (default 1: loaded machine)")
    ap.add_argument("--repeat", type=int, default=30, help="(a): timed blocks per measurement")
    ap.add_argument("--min-block-ms", type=float, default=10.0, help="block length, ms (both)")
    ap.add_argument("--min-pairs", type=int, default=8)
    ap.add_argument("--max-pairs", type=int, default=64)
    ap.add_argument("--rel-width", type=float, default=0.01, help="(b): stop at this relative half-width")
    ap.add_argument("--seed", type=int, default=SEED, help="seed of the random specs")
    ap.add_argument("--cache", default=str(REPO / "results" / "cache" / "measurement_stability"))
    ap.add_argument("--json", help="write all figures to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.variants, args.max_pairs = 5, 32
    t_all = time.perf_counter()
    print(f"ResNet-20 @ {'x'.join(map(str, INPUT_SHAPE))}, target host, "
          f"{'UNTUNED (trials_per_task=0)' if args.tune_trials == 0 else f'{args.tune_trials} trials/task'}, "
          f"{args.threads} thread(s), blocks >= {args.min_block_ms:g} ms; {args.variants} variants "
          f"(random specs, keep {args.min_keep:g}..1 per group, round_to 4, seed {args.seed}); "
          f"(a) repeat {args.repeat}; (b) pairs {args.min_pairs}..{args.max_pairs}, rel_width ±{args.rel_width:g}",
          flush=True)
    t0 = time.perf_counter()
    baseline, variants = build_artifacts(args)
    print(f"artifacts ready in {time.perf_counter() - t0:.0f} s", flush=True)
    p1 = one_pass("1", baseline, variants, args)
    p2 = one_pass("2", baseline, variants, args)
    names = [n for n, _ in variants]
    cmp = compare(p1, p2, names)
    print("\n== between the two passes")
    for fig in ("(a) absolute p50", "(a) ratio of absolutes", "(b) interleaved ratio"):
        c = cmp[fig]
        print(f"  {fig:<24} Spearman {c['spearman']:+.3f}   median run-to-run change {100 * c['median_change']:.2f} % "
              f"(max {100 * c['max_change']:.2f} %)")
    s = cmp["seconds_per_candidate"]
    print(f"  seconds per candidate (median): (a) {s['(a) absolute']:.1f} s, (b) {s['(b) interleaved']:.1f} s; "
          f"(b) pairs median {cmp['pairs_used']['median']:g}, converged {cmp['pairs_used']['converged']} of "
          f"{cmp['pairs_used']['of']}")
    print(f"  goals for (b): Spearman >= 0.95, median change <= 1 %; total {time.perf_counter() - t_all:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "passes": [p1, p2], "compare": cmp}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
