#!/usr/bin/env python3
"""Fidelity of the board's latency table (issue 13): the table's latency ratio vs the measured one.

For each model (default ResNet-20 and VGG-11 at 1x1x28x28, target ``host``,
grid 8) on this host, in one run:

1. draw ``--n`` random architectures (seeded ``numpy.random.default_rng``):
   every group's width uniform over the widths the grid warm-up covered for it
   (:func:`harness.compile.grid.group_widths`: with ``--widths search``, the
   default, the widths the search's actions reach, all multiples of the grid;
   ``--widths grid``: every multiple of the grid); untrained weights
   (:func:`harness.pruning.rebuild`: latency does not depend on them);
2. for each, and for the unpruned model: the table's sum Σ weight × recorded run
   time (:func:`harness.compile.table.table_prediction`) from the warmed tuning
   database; the run stops if any task lacks a record (the database is not warm
   for this grid: run ``hilprune tune --grid`` first);
3. compile it through :class:`harness.pipeline.Pipeline` with that database
   (asserted: zero tasks tuned) and time it interleaved with the unpruned model in
   one session on ``local`` (:meth:`Pipeline.measure_ratio`, the search's ratio
   config: ±1 % interval or 64 pairs);
4. compare the table's ratio T_c / T_ref with the measured ratio: Spearman, MAPE
   and the share within ±10 %, raw and with a per-call overhead o' fitted in ratio
   space, (T_c + o') / (T_ref + o'), leave-one-out (each architecture predicted by
   an o' fitted on the others); beside them the MACs ratio's Spearman, and the
   absolute figures (table sum vs the session's measured p50, raw and with
   ``fit_overhead``'s scale + overhead, leave-one-out).

``--summarise ROWS`` prints the figures of a rows file (a killed run keeps every
measured row); with ``--retime P`` it also re-times, in one session, the best
recorded schedule of every task of those architectures (P passes, all tasks in
turn) and prints the fidelity of the table built on those times beside the raw
one: the recorded run times are single samples taken under whatever load the
warm-up met, so they are not comparable across tasks (see :func:`retime`).

Sources: the measured ratios and p50s are ``measured`` (this host, TVM,
interleaved); the table's ratios are ``predicted``. The load average before and
after each model is printed (2 shared cores: absolute p50s move with it, ratios
far less, DESIGN.md §5). Measurements are stored in ``--work``/results.db.

Run (with the grid warmed in the same cache)::

    HILPRUNE_CACHE=/work/bench-cache nice -n 5 .venv/bin/python benchmarks/table_fidelity.py \
        [--models resnet20,vgg11] [--n 40] [--seed 0] [--grid 8] [--widths search] [--threads N] \
        [--json out.json] [--work DIR] [--cache-dir DIR]
    .venv/bin/python benchmarks/table_fidelity.py --summarise DIR/rows.jsonl --work DIR [--retime 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPE = (1, 1, 28, 28)


def load() -> str:
    """``uptime``'s three load averages and the core count, for the figures' context."""
    a, b, c = os.getloadavg()
    return f"load {a:.2f} {b:.2f} {c:.2f} on {os.cpu_count()} cores"


def random_specs(widths: list[tuple[int, ...]], n: int, seed: int) -> list[tuple[int, ...]]:
    """``n`` distinct architectures, each group's width uniform over its covered widths; never the unpruned one."""
    rng = np.random.default_rng(seed)
    full = tuple(w[0] for w in widths)
    out: list[tuple[int, ...]] = []
    seen = {full}
    tries = 0
    while len(out) < n and tries < 100 * n:
        tries += 1
        spec = tuple(int(w[int(rng.integers(len(w)))]) for w in widths)
        if spec not in seen:
            seen.add(spec)
            out.append(spec)
    return out


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def errors(pred, meas) -> dict:
    """MAPE (%), share within ±10 % (%), max |error| (%) and Spearman of predictions against measurements."""
    p, m = np.asarray(pred, float), np.asarray(meas, float)
    rel = np.abs(p - m) / m
    return {"spearman": round(spearman(p, m), 4), "mape_pct": round(100 * float(rel.mean()), 2),
            "within_10_pct": round(100 * float((rel <= 0.10).mean()), 1),
            "max_err_pct": round(100 * float(rel.max()), 2), "n": int(len(m))}


def ratio_with_overhead(t_c, t_ref: float, o: float):
    """(T_c + o') / (T_ref + o'): the table's ratio with a per-call overhead o' (ms) added to both."""
    return (np.asarray(t_c, float) + o) / (t_ref + o)


def fit_ratio_overhead(t_c, t_ref: float, measured) -> float:
    """o' (ms) minimising Σ ((T_c + o') / (T_ref + o') / r - 1)² (relative error in ratio space).

    Bounded: o' > -0.9 · min T_c (a sum cannot turn negative) and < 100 · T_ref (a ratio of 1).
    """
    from scipy.optimize import minimize_scalar

    t_c, r = np.asarray(t_c, float), np.asarray(measured, float)
    lo, hi = -0.9 * float(t_c.min()), 100.0 * t_ref

    def loss(o: float) -> float:
        return float(np.sum((ratio_with_overhead(t_c, t_ref, o) / r - 1.0) ** 2))

    return float(minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6}).x)


def loo(n: int, fit, predict) -> np.ndarray:
    """Leave-one-out predictions: row i predicted by a model fitted on every other row."""
    out = np.empty(n)
    for i in range(n):
        keep = np.array([j != i for j in range(n)])
        out[i] = predict(fit(keep), i)
    return out


def summarise(rows: list[dict], ref: dict) -> dict:
    """Raw and leave-one-out fitted fidelity of one model's rows (ratio and absolute)."""
    from harness.compile.table import fit_overhead

    t_c = np.array([r["table_ms"] for r in rows])
    t_ref = ref["table_ms"]
    meas = np.array([r["ratio"] for r in rows])
    p50 = np.array([r["p50_ms"] for r in rows])
    raw = t_c / t_ref
    o_loo = loo(len(rows), lambda k: fit_ratio_overhead(t_c[k], t_ref, meas[k]), lambda o, i: o)
    fitted = (t_c + o_loo) / (t_ref + o_loo)
    o_all = fit_ratio_overhead(t_c, t_ref, meas)
    abs_fit = loo(len(rows), lambda k: fit_overhead(list(zip(t_c[k], p50[k]))),
                  lambda so, i: so[0] * t_c[i] + so[1])
    macs = np.array([r["macs"] for r in rows]) / ref["macs"]
    return {
        "n": len(rows), "ratio_raw": errors(raw, meas), "ratio_fitted_loo": errors(fitted, meas),
        "overhead_ms_all": round(o_all, 4),
        "overhead_ms_loo_range": [round(float(o_loo.min()), 4), round(float(o_loo.max()), 4)],
        "macs_spearman": round(spearman(macs, meas), 4), "macs_ratio": errors(macs, meas),
        "abs_raw": errors(t_c, p50), "abs_fitted_loo": errors(abs_fit, p50),
        "pairs_median": int(statistics.median(r["pairs"] for r in rows)),
        "pairs_range": [min(r["pairs"] for r in rows), max(r["pairs"] for r in rows)],
        "ratio_ci_halfwidth_pct_median": round(100 * statistics.median(
            (r["ci_high"] - r["ci_low"]) / 2 / r["ratio"] for r in rows), 2),
        "measured_ratio_range": [round(float(meas.min()), 4), round(float(meas.max()), 4)],
        "ref_table_ms": round(t_ref, 4), "ref_p50_ms_median": round(statistics.median(r["ref_p50_ms"] for r in rows), 4),
    }


def emit(args, row: dict) -> None:
    """Append one row to ``--rows`` (JSON lines) as soon as it is measured: a killed run keeps them."""
    with open(args.rows, "a") as fh:
        fh.write(json.dumps(row, default=str) + "\n")


def from_rows(path: Path) -> dict:
    """The summary of every model in a ``--rows`` file (the last reference row of a model is its reference)."""
    refs: dict[str, dict] = {}
    rows: dict[str, list[dict]] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r["role"] == "reference":
                refs[r["model"]] = r
                rows[r["model"]] = []  # a reference starts a run of that model: earlier rows had another one
            else:
                rows.setdefault(r["model"], []).append(r)
    out: dict = {"models": {}, "rows": []}
    for name, rs in rows.items():
        if len(rs) >= 4:
            out["models"][name] = {**summarise(rs, refs[name]), "reference": refs[name], "load_before": "",
                                   "load_after": ""}
            out["rows"] += rs
    return out


def retime(rows_path: Path, work: Path, db_dir: Path, passes: int) -> list[dict]:
    """Re-time the best recorded schedule of every task of the architectures in a ``--rows`` file, in one session.

    Why: a record's run time is one sample (``TuningConfig.repeat`` 1) taken whenever the warm-up
    reached that task, under whatever load the machine had then; over a 13-minute warm-up here the
    load went from 1 to 7 on 2 cores, so the recorded times of different tasks are not comparable.
    The product does the re-timing (:func:`harness.compile.table.retime_tasks`: every distinct
    workload's best record built once and timed in ``passes`` interleaved passes, shuffled per pass,
    median; kept in the database's ``table_times.json``); here it is forced (every task timed in this
    session, fresh or not) over the union of the rows' tasks, and each row's ``retimed_ms`` is the
    product's prediction (:func:`harness.compile.table.table_prediction`), asserted to use re-timed
    times for every task. Returns the rows with ``retimed_ms``.
    """
    from tvm.s_tir import meta_schedule as ms

    from harness.compile.build import lower_onnx
    from harness.compile.table import retime_tasks, table_prediction
    from harness.compile.targets import resolve_target

    target = resolve_target("host")
    tt = target.tvm_target()
    items = [json.loads(line) for line in Path(rows_path).read_text().splitlines() if line.strip()]
    t0 = time.perf_counter()
    tasks = []
    for r in items:
        r["_onnx"] = work / r["model"] / f"{r['signature'].replace('/', '_')}.onnx"
        tasks += ms.relax_integration.extract_tasks(lower_onnx(r["_onnx"].read_bytes(), target).mod, tt)
    print(f"  re-timing the tasks of {len(items)} architectures ({time.perf_counter() - t0:.0f} s to extract), "
          f"{passes} passes; {load()}", flush=True)
    rep = retime_tasks(db_dir, target, tasks=tasks, passes=passes, force=True)
    print(f"  re-timed {rep.retimed_now} distinct tasks ({rep.build_s:.0f} s building, {rep.time_s:.0f} s timing; "
          f"{rep.no_record} without a record, {len(rep.failed)} failed) -> {rep.path}; {load()}", flush=True)
    if rep.no_record or rep.failed:
        raise SystemExit(f"re-timing incomplete: {rep.no_record} tasks without a record, failed: {rep.failed}")
    for r in items:
        pred = table_prediction(r.pop("_onnx"), target, db_dir)
        assert pred.complete and pred.retimed == len(pred.tasks), (r["signature"], pred.retimed, len(pred.tasks))
        r["retimed_ms"] = pred.tasks_ms
    return items


def run_model(name: str, args, pipeline_for, db_dir: Path, work: Path) -> tuple[dict, list[dict], dict]:
    from harness.compile.grid import GridSpec, group_widths
    from harness.compile.table import table_prediction
    from harness.models import build_model
    from harness.pipeline import PipelineError, StoreKey
    from harness.pruning import ArchSpec, count_macs_params, find_groups, rebuild

    target, pipeline = pipeline_for()
    full_model = build_model(name, num_classes=10, in_channels=SHAPE[1], input_size=SHAPE[2:], seed=0)
    groups = find_groups(full_model, SHAPE[1:])
    widths = group_widths([g.channels for g in groups], GridSpec(round_to=args.grid, widths=args.widths))
    full = tuple(w[0] for w in widths)
    specs = random_specs(widths, args.n, args.seed)
    mdir = work / name
    mdir.mkdir(parents=True, exist_ok=True)
    print(f"\n== {name} {'x'.join(map(str, SHAPE))}: {len(groups)} groups, widths per group "
          f"{[len(w) for w in widths]} ({args.widths}, grid {args.grid}); {len(specs)} random architectures "
          f"(seed {args.seed}); {load()} ==", flush=True)

    def prepare(spec: tuple[int, ...]) -> dict:
        sig = ArchSpec(spec).signature()
        model = rebuild(name, ArchSpec(spec), num_classes=10, in_channels=SHAPE[1], input_shape=SHAPE, seed=0)
        model.eval()
        macs, _ = count_macs_params(model, SHAPE)
        onnx = pipeline.export(model, SHAPE, mdir / f"{sig.replace('/', '_')}.onnx")
        if isinstance(onnx, PipelineError):
            raise SystemExit(f"{name} {spec}: export failed: {onnx.kind}: {onnx.message}")
        t0 = time.perf_counter()
        table = table_prediction(onnx, target, db_dir)
        table_s = time.perf_counter() - t0
        if table.missing:
            raise SystemExit(f"{name} {spec}: {len(table.missing)} of {len(table.tasks)} tasks have no record in "
                             f"{db_dir} ({', '.join(table.missing[:3])}); warm the grid first: hilprune tune "
                             f"--model {name} --input-shape {','.join(map(str, SHAPE))} --target host --grid "
                             f"{args.grid} --grid-widths {args.widths}")
        prepared = pipeline.compile(onnx)
        if isinstance(prepared, PipelineError):
            raise SystemExit(f"{name} {spec}: compile failed: {prepared.kind}: {prepared.message}")
        tuned = int(prepared.manifest.tuning.get("tasks_tuned_now") or 0)
        assert tuned == 0, f"{name} {spec}: {tuned} tasks were tuned at build: the database was not warm"
        return {"model": name, "signature": sig, "channels": list(spec), "macs": int(macs),
                "table_ms": table.tasks_ms, "table_s": round(table_s, 2), "tasks": len(table.tasks),
                "task_times": [[t.name, t.weight, t.ms] for t in table.tasks],
                "prepared": prepared, "compile_s": round(prepared.compile_s, 2)}

    ref = prepare(full)
    emit(args, {"role": "reference", **{k: v for k, v in ref.items() if k != "prepared"}})
    print(f"  unpruned: table {ref['table_ms']:.3f} ms over {ref['tasks']} tasks (predicted); "
          f"compile {ref['compile_s']} s", flush=True)
    rows = []
    load_before = load()
    for i, spec in enumerate(specs):
        row = prepare(spec)
        res = pipeline.measure_ratio(ref["prepared"], row["prepared"],
                                     StoreKey(name, row["signature"], {"benchmark": "table_fidelity"}),
                                     StoreKey(name, ref["signature"], {"benchmark": "table_fidelity"}))
        if not res.ok:
            print(f"  {i + 1:>3} {spec}: measure failed: {res.error.kind}: {res.error.message}", flush=True)
            continue
        v = res.measurement
        row.update(ratio=res.ratio.median, ci_low=res.ratio.ci_low, ci_high=res.ratio.ci_high, pairs=v.pairs,
                   p50_ms=res.candidate_p50_ms, ref_p50_ms=res.reference_p50_ms,
                   table_ratio=row["table_ms"] / ref["table_ms"], loadavg_before=v.loadavg_before,
                   measure_s=round(res.measure_s, 2))
        del row["prepared"]
        rows.append(row)
        emit(args, {"role": "candidate", **row})
        err = 100 * (row["table_ratio"] / row["ratio"] - 1)
        print(f"  {i + 1:>3}/{len(specs)} table {row['table_ms']:.3f} ms ratio {row['table_ratio']:.3f} | "
              f"measured ratio {row['ratio']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] {row['pairs']} pairs, "
              f"p50 {row['p50_ms']:.3f} / ref {row['ref_p50_ms']:.3f} ms | err {err:+.1f} % | "
              f"compile {row['compile_s']} s", flush=True)
    del ref["prepared"]
    summary = summarise(rows, ref)
    summary.update(load_before=load_before, load_after=load(), widths=[list(w) for w in widths])
    return summary, rows, ref


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,vgg11", help="zoo models, comma-separated")
    ap.add_argument("--n", type=int, default=40, help="random architectures per model (default 40)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the architectures (default 0)")
    ap.add_argument("--grid", type=int, default=8, help="the grid the database was warmed for (default 8)")
    ap.add_argument("--widths", choices=("search", "grid"), default="search",
                    help="the warm-up's --grid-widths: which widths a group takes (default search)")
    ap.add_argument("--trials", type=int, default=8, help="trials per task of the tuning config (default 8; "
                    "nothing is tuned: the database must be warm)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads when timing (default: the search's, "
                    "the backend's default)")
    ap.add_argument("--max-pairs", type=int, default=64, help="cap of interleaved pairs per ratio (default 64)")
    ap.add_argument("--cache-dir", default=None, help="where the warmed tuning database is (default "
                    "$HILPRUNE_CACHE or results/cache)")
    ap.add_argument("--work", default="results/table_fidelity", help="ONNX files, artifacts, results.db")
    ap.add_argument("--json", default=None, help="write the summary and raw rows here")
    ap.add_argument("--rows", default=None, help="JSON lines, one per measured architecture, appended as they "
                    "come (default <work>/rows.jsonl)")
    ap.add_argument("--summarise", default=None, metavar="ROWS",
                    help="measure nothing: print the figures of a --rows file (e.g. of a killed run)")
    ap.add_argument("--retime", type=int, default=0, metavar="PASSES",
                    help="with --summarise: also re-time every task's best schedule in one session (PASSES "
                    "passes; the ONNX files of --work) and report the table with those times beside it")
    args = ap.parse_args()
    if args.summarise:
        out = from_rows(Path(args.summarise))
        report(out)
        if args.retime:
            from harness.compile.targets import resolve_target
            from harness.compile.tuning import TuningConfig, database_dir_for

            cache_dir = Path(args.cache_dir or os.environ.get("HILPRUNE_CACHE") or "results/cache")
            db_dir = database_dir_for(cache_dir, resolve_target("host").canonical_json(),
                                      TuningConfig(trials_per_task=args.trials))
            items = retime(Path(args.summarise), Path(args.work), db_dir, args.retime)
            refs = {r["model"]: r for r in items if r["role"] == "reference"}
            out["retimed"] = {}
            for name in out["models"]:
                rs = [r for r in items if r["role"] == "candidate" and r["model"] == name]
                ref = refs[name]
                re_rows = [{**r, "table_ms": r["retimed_ms"]} for r in rs]
                out["retimed"][name] = summarise(re_rows, {**ref, "table_ms": ref["retimed_ms"]})
                out["retimed"][name]["rows"] = [[r["signature"], r["table_ms"], r["retimed_ms"], r["ratio"]]
                                                for r in rs]
            print("\n== the same, the table's task times re-timed in one session (--retime) ==")
            report({"models": {k: {**v, "load_before": "", "load_after": load()}
                               for k, v in out["retimed"].items()}})
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        return 0
    if args.n < 4:
        print("table_fidelity: --n must be >= 4 (leave-one-out needs a few rows)", file=sys.stderr)
        return 2

    from devices.base import MeasureConfig
    from devices.interleaved import InterleavedConfig
    from devices.local import LocalDevice
    from harness.compile.targets import resolve_target
    from harness.compile.tuning import TuningConfig, database_dir_for
    from harness.pipeline import Pipeline
    from harness.store import ResultsStore

    cache_dir = Path(args.cache_dir or os.environ.get("HILPRUNE_CACHE") or "results/cache")
    target = resolve_target("host")
    db_dir = database_dir_for(cache_dir, target.canonical_json(), TuningConfig(trials_per_task=args.trials))
    if not (db_dir / "database_tuning_record.json").exists():
        print(f"table_fidelity: no tuning database at {db_dir}: warm the grid first (hilprune tune --grid "
              f"{args.grid}) or pass --cache-dir", file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    args.rows = args.rows or str(work / "rows.jsonl")
    tuning = TuningConfig(trials_per_task=args.trials, database_dir=db_dir)
    measure = MeasureConfig(number=0, repeat=20, min_repeat_ms=20.0, num_threads=args.threads)
    ratio = InterleavedConfig(number=0, rel_width=0.01, max_pairs=args.max_pairs, num_threads=args.threads)
    device = LocalDevice()
    store = ResultsStore(work / "results.db")
    pipeline = Pipeline.for_device(device, target, tuning, measure, work / "cache", store, ratio_config=ratio)
    print(f"table fidelity on this host, target host, database {db_dir}; timing: TVM, "
          f"{args.threads or 'default'} threads, interleaved (±1 % or {args.max_pairs} pairs); {load()}")
    out: dict = {"input_shape": list(SHAPE), "target": target.target, "grid": args.grid, "widths": args.widths,
                 "seed": args.seed, "database": str(db_dir), "threads": args.threads, "models": {}, "rows": []}
    t0 = time.perf_counter()
    try:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            summary, rows, ref = run_model(name, args, lambda: (target, pipeline), db_dir, work)
            out["models"][name] = {**summary, "reference": ref}
            out["rows"] += rows
    finally:
        device.close()
        store.close()
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    report(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        print(f"  raw rows: {args.json}")
    return 0


def report(out: dict) -> None:
    """Print the fidelity table of every model in ``out``."""
    print(f"\n== fidelity: table ratio T_c/T_ref (predicted) vs interleaved ratio (measured); fitted = "
          f"(T_c + o')/(T_ref + o'), o' leave-one-out; {load()} ==")
    print(f"  {'model':9} {'n':>3} {'Spearman raw':>12} {'fitted':>7} {'MACs':>6} {'MAPE raw %':>10} {'fitted':>7} "
          f"{'±10 % raw':>9} {'fitted':>7} {'max err raw/fit %':>17} {'o_ms':>7} {'pairs med [min,max]':>20}")
    for name, s in out["models"].items():
        r, f = s["ratio_raw"], s["ratio_fitted_loo"]
        print(f"  {name:9} {s['n']:>3} {r['spearman']:>12.3f} {f['spearman']:>7.3f} {s['macs_spearman']:>6.3f} "
              f"{r['mape_pct']:>10.1f} {f['mape_pct']:>7.1f} {r['within_10_pct']:>8.0f}% {f['within_10_pct']:>6.0f}% "
              f"{r['max_err_pct']:>8.1f}/{f['max_err_pct']:<8.1f} {s['overhead_ms_all']:>7.3f} "
              f"{s['pairs_median']:>8} {str(s['pairs_range']):>11}")
    print("  absolute (table sum vs the session's measured p50; fitted = scale x sum + overhead, leave-one-out):")
    for name, s in out["models"].items():
        a, b = s["abs_raw"], s["abs_fitted_loo"]
        print(f"  {name:9} ref table {s['ref_table_ms']:.3f} ms vs measured p50 {s['ref_p50_ms_median']:.3f} ms; "
              f"Spearman {a['spearman']:.3f}/{b['spearman']:.3f}, MAPE {a['mape_pct']:.1f}/{b['mape_pct']:.1f} %, "
              f"within ±10 % {a['within_10_pct']:.0f}/{b['within_10_pct']:.0f} % (raw/fitted); "
              f"{s['load_before']} -> {s['load_after']}")
    print(f"  goal: Spearman >= 0.95, MAPE <= 10 %; wall {out.get('wall_s', '?')} s")


if __name__ == "__main__":
    sys.exit(main())
