"""Nightly benchmark commands (issue 6): ``bench --suite``, ``bench compare`` and ``report``.

    hilprune bench --suite FILE [--device D ...] [--inventory FILE] [--db PATH] [--json]
                   [--tune-trials N] [--backend B] [--repeat N] [--threads N] [--cache-dir DIR] [--ratio-max-pairs N]
        -> one line per (benchmark, target, device) or ONE JSON object (the run's summary);
           every benchmark runs; exit 1 when any of them failed (each failure is stored with its
           kind and reason), 0 when all succeeded, 2 on a bad suite file or device
    hilprune bench compare [--db PATH] [--run RUN_ID] [--baseline N] [--threshold 0.05] [--json]
        -> the run's verdicts, absolute p50 and (in a suite with a reference model) ratio to the reference;
           exit 1 when a model regressed (its ratio; with no ratio judgement, its absolute p50), else 0
           (harness/nightly/regress.py has the rule)
    hilprune report [--db PATH] --out DIR [--baseline N] [--threshold X] [--json]
        -> DIR/index.html (static), DIR/plots/*.png, DIR/data/*.csv (and *.parquet with pyarrow)

``bench`` itself lives in :mod:`harness.cli.compile`; it calls
:func:`add_bench_suite_args` and :func:`add_bench_compare` on its parser and
hands ``--suite`` to :func:`cmd_bench_suite`. ``--device`` stays a single
value for ``bench --model/--onnx`` (the last one given, as before) and is a
list (every one given) for ``--suite`` (:class:`harness.cli.args.DeviceAction`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.cli.args import pos_int

__all__ = ["add_bench_compare", "add_bench_suite_args", "cmd_bench_suite", "register"]


def add_bench_suite_args(bench: argparse.ArgumentParser, source_group) -> None:
    """Add ``--suite`` (to bench's model-source group) and ``--inventory`` to the bench parser."""
    source_group.add_argument("--suite", metavar="FILE",
                              help="a benchmark suite TOML ([[benchmark]] tables; see harness/nightly/suite.py): "
                                   "compile and measure each benchmark on each device, stored as one bench run")
    bench.add_argument("--inventory", metavar="FILE", default=None,
                       help="farm inventory TOML for --device ssh:BOARD / farm:TAG")
    bench.add_argument("--ratio-max-pairs", type=pos_int, default=64, metavar="N",
                       help="--suite with a reference model: cap of interleaved rounds of each ratio to the "
                            "reference (default 64; it stops earlier once the ratio's interval is within ±1%%)")
    bench.set_defaults(devices=None)


def add_bench_compare(bench: argparse.ArgumentParser) -> None:
    """Add the ``bench compare`` subcommand under the bench parser."""
    sub = bench.add_subparsers(dest="bench_command", metavar="{compare}")
    c = sub.add_parser("compare", help="compare the latest bench run with its history; exit 1 on regression",
                       description="Compare a bench run (default: the latest) with the history of each "
                                   "(benchmark, device, target, backend, tuning, source): baseline = median p50 "
                                   "of the last N runs; band = max(threshold, 3.5 x noise), noise = the larger "
                                   "of 1.4826 x MAD/baseline of the history and 1.2533 x CoV/sqrt(n) of the run. "
                                   "In a suite with a reference model the ratio to the reference (timed "
                                   "interleaved in the same run) is judged by the same rule against the history "
                                   "of ratios (run noise: its bootstrap interval), and each benchmark gets a "
                                   "verdict: model_regression (ratio up), machine_night (absolute up, ratio flat, "
                                   "the reference's absolute up too), both, absolute_only. Exit 1 for "
                                   "regressions of models only (without a reference: any absolute regression).")
    c.add_argument("--db", default="results/hilprune.db", help="results store (default results/hilprune.db)")
    c.add_argument("--run", metavar="RUN_ID", default=None, help="the bench run to judge (default: the latest)")
    c.add_argument("--baseline", type=pos_int, default=7, help="earlier runs forming the history (default 7)")
    c.add_argument("--threshold", type=float, default=0.05,
                   help="smallest relative change reported, e.g. 0.05 = 5%% (default 0.05)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=cmd_bench_compare)


def register(subparsers) -> None:
    """Add ``report`` to the ``hilprune`` parser."""
    r = subparsers.add_parser("report", help="static HTML report of the results store (history, regressions, "
                                             "Pareto fronts) and CSV/Parquet export",
                              description="Write DIR/index.html (opens from disk, no server) with per benchmark "
                                          "and device latency history plots (p50 with p90 band), the latest run's "
                                          "regressions, the Pareto fronts of searches, and the tables as CSV "
                                          "(and Parquet when pyarrow is installed) under DIR/data.")
    r.add_argument("--db", default="results/hilprune.db", help="results store (default results/hilprune.db)")
    r.add_argument("--out", required=True, metavar="DIR", help="output folder")
    r.add_argument("--baseline", type=pos_int, default=7, help="history runs of the regression flags (default 7)")
    r.add_argument("--threshold", type=float, default=0.05, help="regression threshold (default 0.05)")
    r.add_argument("--json", action="store_true", help="print one JSON object (paths, regressions)")
    r.set_defaults(func=cmd_report)


def cmd_bench_suite(args: argparse.Namespace) -> int:
    """``bench --suite``: run the whole suite, print the outcome; 1 when any benchmark failed, else 0."""
    from harness.nightly.run import SuiteOptions, run_suite
    from harness.nightly.suite import load_suite
    from harness.paths import default_cache_dir

    if args.target:
        raise ValueError("--target is for --model/--onnx; a suite names its targets per benchmark (targets = [...])")
    suite = load_suite(args.suite)
    opts = SuiteOptions(
        devices=tuple(dict.fromkeys(args.devices)) if args.devices else None, inventory=args.inventory,
        tune_trials=args.tune_trials, backend=args.backend, repeat=args.repeat, warmup=args.warmup,
        min_repeat_ms=args.min_repeat_ms, timeout_s=args.timeout_s, threads=args.threads,
        cache_dir=Path(args.cache_dir) if args.cache_dir else default_cache_dir(),
        ratio_max_pairs=args.ratio_max_pairs,
    )
    summary = run_suite(suite, args.db, opts)
    if args.json:
        print(json.dumps(summary, sort_keys=True, default=str))
        return 1 if summary["failed"] else 0
    ref = summary.get("reference")
    print(f"bench run {summary['run_id']} (suite {summary['suite']}): {summary['ok']} ok, {summary['failed']} failed, "
          f"{len(summary['skipped'])} skipped, {summary['wall_s']:.0f} s -> {summary['db']}"
          + (f"; {summary['ratios']} ratio(s) to the reference {ref} (timed interleaved, same device)" if ref else ""))
    for r in summary["results"]:
        if r["status"] == "ok":
            ratio = ""
            if r.get("latency_ratio") is not None:
                ratio = (f"  ratio {r['latency_ratio']:.4f} [{r['ratio_ci_low']:.4f}, {r['ratio_ci_high']:.4f}] "
                         f"({r['ratio_pairs']} pairs)")
            elif r.get("ratio_error"):
                ratio = f"  no ratio: {r['ratio_error']}"
            elif ref and r["benchmark"] == ref:
                ratio = "  (reference)"
            print(f"  ok      {r['benchmark']:24} {r['device']:16} {r['target']:10} p50 {r['latency_p50_ms']:9.4f} ms"
                  f"  CoV {r['latency_cov']:.3f}" + ("  UNSTABLE" if r["unstable"] else "") + ratio)
        else:
            print(f"  FAILED  {r['benchmark']:24} {r['device']:16} {r['target']:10} {r['error_kind']}: "
                  f"{r['error_message']}")
    for s in summary["skipped"]:
        print(f"  skipped {s['benchmark']:24} {s['device']:16} {s['target']:10} {s['reason']}")
    return 1 if summary["failed"] else 0


def cmd_bench_compare(args: argparse.Namespace) -> int:
    """``bench compare``: exit 1 when the judged run has a regression of a model (:data:`EXIT_VERDICTS`)."""
    from harness.nightly.regress import EXIT_VERDICTS, CompareRule, compare_run, metadata_changes
    from harness.store import ResultsStore

    rule = CompareRule(threshold=args.threshold, baseline_runs=args.baseline)
    from harness.store import check_store_file

    check_store_file(args.db)
    store = ResultsStore(args.db)
    try:
        results = store.bench_results()
        runs = store.bench_runs()
    finally:
        store.close()
    wanted = args.run or (runs[-1]["run_id"] if runs else None)
    if wanted is not None and wanted in {r["run_id"] for r in runs} and \
            not any(r["run_id"] == wanted for r in results):
        print(f"bench run {wanted}: no results (every pair skipped, or it was interrupted before the first); "
              "nothing to compare", file=sys.stderr)
        return 0
    run_id, verdicts = compare_run(results, wanted, rule)
    regressions = [v for v in verdicts if v.verdict in EXIT_VERDICTS]
    counts = {k: sum(v.verdict == k for v in verdicts) for k in dict.fromkeys(v.verdict for v in verdicts)}
    ids = [r["run_id"] for r in runs]
    at = ids.index(run_id) if run_id in ids else -1
    changed = metadata_changes(runs[at - 1]["metadata"], runs[at]["metadata"]) if at > 0 else {}
    if args.json:
        print(json.dumps({"run_id": run_id, "regressions": len(regressions), "verdicts": counts,
                          "absolute_regressions": sum(v.status == "regression" for v in verdicts),
                          "improvements": sum(v.status == "improvement" for v in verdicts),
                          "failed": sum(v.status == "failed" for v in verdicts),
                          "rule": {"threshold": rule.threshold, "baseline_runs": rule.baseline_runs,
                                   "min_history": rule.min_history, "k": rule.k,
                                   "min_mad_history": rule.min_mad_history},
                          "changed_since_previous_run": changed,
                          "comparisons": [v.as_dict() for v in verdicts]}, sort_keys=True, default=str))
    else:
        reference = next((v.ratio.reference for v in verdicts if v.ratio is not None), None)
        print(f"bench run {run_id}: {len(regressions)} regression(s) "
              + (f"of models (by the ratio to the reference {reference}) " if reference else "")
              + f"(baseline: median of the last {rule.baseline_runs} runs; band max({rule.threshold:g}, "
              f"{rule.k:g} x noise))")
        for v in verdicts:
            if v.status == "failed":
                print(f"  failed           {v.benchmark:24} {v.device:16} {v.target:10} {v.error}")
                continue
            delta = "" if v.delta is None else f"{v.delta:+7.1%}"
            band = "" if v.band is None else f" band ±{v.band:.1%}"
            base = "" if v.baseline_p50_ms is None else f" vs {v.baseline_p50_ms:.4f} ms"
            word = v.verdict.upper() if v.verdict in EXIT_VERDICTS else v.verdict
            line = (f"  {word:16} {v.benchmark:24} {v.device:16} {v.target:10} p50 {v.latency_p50_ms:.4f} ms{base} "
                    f"{delta}{band} [{v.status}] (history {v.history_n})" + ("  unstable" if v.unstable else ""))
            r = v.ratio
            if r is not None and r.latency_ratio is not None:
                line += f"; ratio {r.latency_ratio:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}]"
                if r.baseline_ratio is not None:
                    line += f" vs {r.baseline_ratio:.4f} {r.delta:+.1%}"
                line += (f" band ±{r.band:.1%}" if r.band is not None else "") + f" [{r.status}]"
            elif r is not None:
                line += f"; no ratio ({r.error})"
            if v.reference_delta is not None:
                line += f"; reference p50 {v.reference_delta:+.1%} [{v.reference_status}]"
            print(line)
        if changed:
            print("changed since the previous run: "
                  + "; ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
        if counts.get("machine_night") or counts.get("both"):
            print("machine_night: every model and the reference slower alike; a compiler, runtime or firmware "
                  "change would look the same (see the changes above)")
    return 1 if regressions else 0


def cmd_report(args: argparse.Namespace) -> int:
    """``report``: write the HTML report; print its path (or one JSON object)."""
    from harness.nightly.regress import CompareRule
    from harness.nightly.report import write_report

    out = write_report(args.db, args.out, CompareRule(threshold=args.threshold, baseline_runs=args.baseline))
    if args.json:
        print(json.dumps(out, sort_keys=True, default=str))
    else:
        print(out["index"])
        if "parquet_skipped" in out["exports"]:
            print(f"note: {out['exports']['parquet_skipped']}", file=sys.stderr)
    return 0
