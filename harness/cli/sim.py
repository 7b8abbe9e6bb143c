"""``hilprune predict`` and ``hilprune sim ...``: the latency simulator's commands (issue 5).

    hilprune predict MODEL.onnx [MORE.onnx ...] --device sim:PROFILE [--threads N] [--json] [--layers]
    hilprune predict MODEL.onnx [...] --table TARGET [--device local|ssh:BOARD|farm:TAG --inventory FILE]
                     [--family MODEL@SHAPE] [--reference REF.onnx] [--db PATH] [--cache-dir DIR] [--json]
    hilprune sim calibrate --profile NAME (--from-db [--device D] [--db PATH] [--backend B] | --from CSV) ...
    hilprune sim profiles [--json]

``predict`` and ``sim profiles`` import neither torch nor TVM: :func:`fast_main`
runs them with a parser of their own before the full ``hilprune`` parser
(whose ``search`` defaults import torch) is built. ``sim calibrate`` imports
torch only to export the zoo's classic networks when ``--from`` is the ncnn
table and ``--graphs`` is not given.

``predict --table TARGET`` asks a board's own latency table (issue 13,
:class:`harness.compile.table.LatencyTable`): the sum of weight × time of the
model's tuning tasks in TARGET's tuning database (a task's time re-timed in one
session where ``tune --grid`` re-timed it, else its tuning-time record; the
output says which), and, with the
fit stored for that device (``--device``: its identity from its hello, default
``local``; ``host`` on a board is the board's CPU) and model family
(``--family``, as the search names it: ``resnet20@1x1x28x28``), the predicted
ratio to ``--reference`` and absolute ms. Labelled ``predicted``; the fit's
pair count is printed, or "unfitted: raw sum". Why a flag here and not a
``table:BOARD`` device: a device takes compiled artifacts and returns
measurements, and ``devices/`` never sees ONNX graphs (DESIGN.md §2), while a
table prediction is an ONNX → TVM task extraction and a database lookup — a
harness step. The search uses the same table through ``--latency
predicted|hybrid`` (:mod:`harness.search.latency_mode`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import sys
from collections import Counter
from pathlib import Path

from harness.cli.args import Parser, pos_int

__all__ = ["FAST_COMMANDS", "fast_main", "register"]

#: First words handled by :func:`fast_main` (no torch, no TVM).
FAST_COMMANDS = ("predict", "sim")
DEFAULT_DB = "results/hilprune.db"
CLASSICS_DIR = "results/cache/sim_classics"

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``predict`` and ``sim`` (with ``calibrate``, ``profiles``) to ``sub``."""
    p = sub.add_parser("predict", help="predict latency of ONNX graphs with a simulator profile (no board)",
                       description="Predict batch-1 latency of ONNX graphs on a simulator profile "
                                   "(devices/profiles/). Imports neither torch nor TVM.")
    p.add_argument("models", nargs="+", metavar="MODEL.onnx", help="ONNX files with static input shapes")
    p.add_argument("--device", default=None, help="sim:PROFILE, a name or a profile .json (default sim:host); with "
                                                  "--table: the device whose table fit to use (local, ssh:BOARD, "
                                                  "farm:TAG; default local)")
    p.add_argument("--threads", type=pos_int, default=None, help="thread count (default: the profile's)")
    p.add_argument("--json", action="store_true", help="print a JSON list of {model, latency_ms, ...}")
    p.add_argument("--layers", action="store_true", help="per-layer breakdown")
    p.add_argument("--table", metavar="TARGET", default=None,
                   help="answer from the tuning database of TARGET instead (the board's own latency table: "
                        "Σ weight × time of the model's tasks, re-timed where tune --grid re-timed them, else "
                        "recorded; labelled predicted; needs TVM)")
    p.add_argument("--cache-dir", default=None, help="with --table: the cache holding the tuning databases "
                                                     "(default results/cache or $HILPRUNE_CACHE)")
    p.add_argument("--family", default=None, help="with --table: the model family whose stored fit to use, as the "
                                                  "search names it (MODEL@SHAPE, e.g. resnet20@1x1x28x28)")
    p.add_argument("--reference", default=None, metavar="REF.onnx",
                   help="with --table: also predict each model's latency ratio to this model (the fitted offset)")
    p.add_argument("--db", default=DEFAULT_DB, help=f"with --table: results store holding the fits (default {DEFAULT_DB})")
    p.add_argument("--inventory", default=None, help="with --table and --device ssh:BOARD|farm:TAG: the farm inventory")
    p.set_defaults(func=_cmd_predict)

    s = sub.add_parser("sim", help="simulator profiles: calibrate, list", description="Latency simulator profiles.")
    ssub = s.add_subparsers(dest="sim_command", metavar="SIM_COMMAND", required=True)
    c = ssub.add_parser(
        "calibrate", help="fit a profile to measured latencies and write a new profile file",
        description="Fit a profile's parameters (least squares on log latency, weak datasheet prior) to "
                    "measurements: a device's rows in the results store (--from-db) or a CSV (--from: the ncnn "
                    "table, or columns onnx,latency_ms[,threads,group]). Writes the profile with its fit error "
                    "and a bumped version.")
    c.add_argument("--profile", required=True, help="profile name (e.g. rpi4, host)")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-db", action="store_true", help="use measured rows of the results store")
    src.add_argument("--from", dest="from_csv", metavar="CSV", help="use a CSV (ncnn table or onnx,latency_ms)")
    c.add_argument("--device", default="local", help="--from-db: measured device (default local)")
    c.add_argument("--db", default=DEFAULT_DB, help=f"--from-db: results store (default {DEFAULT_DB})")
    c.add_argument("--backend", default="tvm", choices=("tvm", "onnxruntime"),
                   help="--from-db: backend of the rows (default tvm)")
    c.add_argument("--model", default=None, help="--from-db: only this model's rows")
    c.add_argument("--onnx-dir", action="append", default=None,
                   help="--from-db: folder searched for the rows' ONNX files by sha256 (repeatable; default results)")
    c.add_argument("--statistic", choices=("p50", "min"), default="p50",
                   help="--from-db: latency of a graph = smallest p50 (default) or smallest block (min) of its rows")
    c.add_argument("--threads", type=pos_int, default=None,
                   help="--from-db: threads the measurements used (default: the profile's)")
    c.add_argument("--board", default=None, help="--from ncnn table: exact device string (default: the profile's)")
    c.add_argument("--gpu-device", type=int, default=None, help="--from ncnn table: -1 CPU, 0 GPU (default: the profile's)")
    c.add_argument("--graphs", default=None,
                   help=f"--from ncnn table: folder of NAME.onnx graphs (default: export the zoo's into {CLASSICS_DIR})")
    c.add_argument("--macs-json", default="/work/shared/data/ncnn_model_macs.json",
                   help="--from ncnn table: MACs of ncnn's graphs; a graph off by more than 5%% is left out "
                        "(default %(default)s; skipped when absent)")
    c.add_argument("--start", choices=("current", "prior"), default="current",
                   help="start from the current profile file (default) or the datasheet prior")
    c.add_argument("--channel-align", default=None,
                   help="channel grid of the fast conv layout: an int, or 'auto' (5-fold cross-validation over "
                        "1,4,8,16 on the rows); default: the start profile's")
    c.add_argument("--prior-weight", type=float, default=0.3, help="weight of the datasheet prior (default 0.3; 0 = none)")
    c.add_argument("--out", default=None, help="profile file to write (default devices/profiles/NAME.json)")
    c.add_argument("--json", action="store_true", help="print the fit as one JSON object")
    c.set_defaults(func=_cmd_calibrate)

    lp = ssub.add_parser("profiles", help="list the simulator profiles")
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(func=_cmd_profiles)


def _sim_device(name: str):
    from devices.sim.device import SIM_PREFIX, SimDevice

    if not name.startswith(SIM_PREFIX):
        raise ValueError(f"predict needs a simulator device 'sim:PROFILE', got {name!r}")
    return SimDevice(name[len(SIM_PREFIX):], name=name)


def _predict_table(args: argparse.Namespace) -> int:
    """``predict --table TARGET``: the board's latency table for ``--device`` (predicted; see the module doc)."""
    from devices.base import MeasureConfig
    from devices.registry import make_device
    from harness.compile.build import CompileFailed
    from harness.compile.table import LatencyTable
    from harness.compile.targets import resolve_target
    from harness.compile.tuning import TuningConfig, database_dir_for
    from harness.paths import default_cache_dir
    from harness.pipeline import Pipeline
    from harness.store import ResultsStore

    device_name = args.device or "local"
    if device_name.startswith("sim:"):
        raise ValueError(f"--table needs a measuring device (local, ssh:BOARD, farm:TAG), not the simulator "
                         f"{device_name}: a table is a board's own; drop --table to ask the simulator")
    for m in [*args.models, *([args.reference] if args.reference else [])]:
        if not Path(m).is_file():
            raise FileNotFoundError(f"ONNX file {m!r} not found; pass an existing .onnx file")
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    device = make_device(device_name, inventory=args.inventory)
    try:
        pipe = Pipeline.for_device(device, resolve_target(args.table), TuningConfig(), MeasureConfig(), cache)
        identity, target = pipe.identity(), pipe.target
    finally:
        device.close()
    db = database_dir_for(cache, target.canonical_json(), TuningConfig())
    store = ResultsStore(args.db) if args.family and Path(args.db).is_file() else None
    try:
        table = LatencyTable(target, db, identity=identity, family=args.family or "-", store=store)
        fit = table.fit

        def predict(path: str):
            try:
                return table.prediction(Path(path), f"file:{Path(path).resolve()}")
            except CompileFailed as exc:
                raise ValueError(f"{path}: {exc}") from None

        ref = predict(args.reference) if args.reference else None
        out = []
        for m in args.models:
            p = predict(m)
            rec = {"model": m, "tasks_ms": p.tasks_ms, "tasks": len(p.tasks), "missing": list(p.missing),
                   "tasks_retimed": p.retimed, "times": p.times,
                   "complete": p.complete, "target": target.name, "database": str(db), "source": "predicted",
                   "device_identity": identity, "family": args.family, "fit": fit.as_dict(),
                   "fit_describe": fit.describe(),
                   "latency_ms": fit.latency_ms(p.tasks_ms) if p.complete else None,
                   "latency_ratio": (fit.ratio(p.tasks_ms, ref.tasks_ms) if ref is not None and p.complete
                                     and ref.complete else None)}
            out.append(rec)
    finally:
        if store is not None:
            store.close()
    if args.json:
        print(json.dumps(out))
        return 0
    for rec in out:
        gap = f", {len(rec['missing'])} WITHOUT A RECORD (not in the sum)" if rec["missing"] else ""
        extra = "".join([f"  ratio {rec['latency_ratio']:.4f} to {args.reference}" if rec["latency_ratio"] else "",
                         f"  ~{rec['latency_ms']:.4f} ms" if rec["latency_ms"] else ""])
        what = {"retimed": "re-timed", "recorded": "recorded",
                "mixed": f"time ({rec['tasks_retimed']} re-timed, the rest recorded)"}[rec["times"]]
        print(f"{rec['tasks_ms']:10.4f} ms  Σ weight × {what} time of {rec['tasks']} tasks{gap}  {rec['model']}"
              f"{extra}  ({rec['target']} table {rec['database']}, predicted; "
              f"{rec['fit_describe'] if args.family else 'unfitted: raw sum (pass --family MODEL@SHAPE for a fit)'})")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    if getattr(args, "table", None):
        return _predict_table(args)
    from devices.sim.graph import load_features
    from devices.sim.profile import layer_breakdown, predict_latency_ms

    dev = _sim_device(args.device or "sim:host")
    out = []
    for m in args.models:
        feats = load_features(m)
        rec = {"model": m, "latency_ms": predict_latency_ms(feats, dev.profile, threads=args.threads),
               "device": dev.name, "profile_version": dev.profile.version,
               "threads": min(args.threads or dev.profile.threads, dev.profile.cores), "macs": feats.macs,
               "source": "simulated"}
        if args.layers:
            rec["layers"] = layer_breakdown(feats, dev.profile, threads=args.threads)
        out.append(rec)
    if args.json:
        print(json.dumps(out))
        return 0
    for rec in out:
        print(f"{rec['latency_ms']:10.4f} ms  {rec['macs']:>14,} MACs  {rec['model']}  "
              f"({rec['device']} v{rec['profile_version']}, {rec['threads']} threads, simulated)")
        if args.layers:
            print(f"    {'node':32} {'op':18} {'class':11} {'ms':>9} {'bound':7}")
            for r in rec["layers"]:
                print(f"    {r['node'][:32]:32} {r['op_type']:18} {r['op_class']:11} {r['latency_ms']:9.4f} {r['bound']}")
            print(f"    {'(per-model constant)':62} {dev.profile.params.model_overhead_ms:9.4f}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from devices.sim.calibrate import (
        PRIORS,
        RANKING_FIELD,
        choose_channel_align,
        fit_profile,
        leave_one_group_out,
        lomo_ranking,
        prior_profile,
        ranking_scores,
    )
    from devices.sim.profile import PROFILE_DIR, SimParams, load_profile
    from harness.sim import data as sim_data

    name = args.profile
    try:
        current = load_profile(name)
    except ValueError:
        current = None
    if current is None and name not in PRIORS:
        raise ValueError(f"profile {name!r} has neither a file nor a datasheet prior; known priors: {', '.join(PRIORS)}")
    prior = prior_profile(name) if name in PRIORS else current
    start = current if (args.start == "current" and current is not None) else prior
    if current is not None:
        start = start.with_params(start.params, version=current.version)
    if args.from_db:
        threads = args.threads or start.threads
        dirs = [Path(d) for d in (args.onnx_dir or ["results"])]
        rows = sim_data.db_rows(Path(args.db), args.device, args.backend, dirs, threads=threads, model=args.model,
                                statistic=args.statistic)
        source = {"kind": "results-store", "db": str(args.db), "device": args.device, "backend": args.backend,
                  "threads": threads, "model": args.model, "latency": f"smallest {args.statistic} per graph"}
    else:
        csv_path = Path(args.from_csv)
        if not csv_path.is_file():
            raise FileNotFoundError(f"{csv_path} does not exist")
        if sim_data.is_ncnn_csv(csv_path):
            from harness.sim.graphs import MACS_TOLERANCE, export_classics, ncnn_macs

            reference = ncnn_macs() if Path(args.macs_json).is_file() else None
            if args.graphs:
                from devices.sim.graph import load_features

                graphs = {p.stem: p for p in sorted(Path(args.graphs).glob("*.onnx"))}
                for stem, p in list(graphs.items()):  # a graph stands for ncnn's only with its MACs
                    if reference and stem in reference and abs(load_features(p).macs / reference[stem] - 1) > MACS_TOLERANCE:
                        logger.warning("left out %s: its MACs differ from ncnn's by more than %.0f%%", p,
                                       100 * MACS_TOLERANCE)
                        del graphs[stem]
            else:
                graphs = export_classics(Path(CLASSICS_DIR), macs_reference=reference)
            rows = sim_data.ncnn_rows(csv_path, name, graphs, board=args.board, gpu_device=args.gpu_device)
            board, gpu = sim_data.NCNN_BOARDS.get(name, (args.board, args.gpu_device))
            source = {"kind": "ncnn-benchmark-table", "csv": str(csv_path), "board": args.board or board,
                      "gpu_device": args.gpu_device if args.gpu_device is not None else gpu,
                      "models": sorted({r.group for r in rows}), "latency": "avg_ms",
                      "threads": sorted({r.threads for r in rows}),
                      "note": "ncnn's kernels, not TVM's: the shape of the board's costs, not a TVM number"}
        else:
            rows = sim_data.csv_rows(csv_path)
            source = {"kind": "csv", "csv": str(csv_path)}
    align_cv = None
    if args.channel_align is not None:
        if args.channel_align == "auto":
            align, align_cv = choose_channel_align(rows, start, prior=prior, prior_weight=args.prior_weight)
        else:
            try:
                align = int(args.channel_align)
            except ValueError:
                raise ValueError(f"--channel-align must be an int or 'auto', got {args.channel_align!r}") from None
        start = start.with_params(SimParams.from_dict(start.params.to_dict() | {"channel_align": align}))
    report = fit_profile(rows, start, prior=prior, prior_weight=args.prior_weight)
    stats = dict(report.stats)
    if align_cv is not None:
        stats["channel_align_cv_rmse_log"] = align_cv
    if len({r.group for r in rows}) >= 2:
        lomo = leave_one_group_out(rows, start, prior=prior, prior_weight=args.prior_weight)
        stats["leave_one_group_out_mape"] = lomo["mape"]
        # several graphs per model (pruned variants, as --from-db gives): the verdict ranks within a
        # model, as a search does; one graph per model (the ncnn table): across models
        within = min(Counter(r.group for r in rows).values()) >= 3
        ranking = lomo_ranking(rows, start, within_models=within, prior=prior, prior_weight=args.prior_weight)
        stats[RANKING_FIELD] = {k: v for k, v in ranking.items() if k != "rows"} | {
            "per_threads": {str(t): v for t, v in ranking["per_threads"].items()}}
        if within:
            across = ranking_scores([r["measured_ms"] for r in ranking["rows"]],
                                    [r["predicted_ms"] for r in ranking["rows"]], [r["macs"] for r in ranking["rows"]],
                                    [r["threads"] for r in ranking["rows"]],
                                    train_scale=[r["macs_ms"] / r["macs"] for r in ranking["rows"]])
            stats[RANKING_FIELD]["across_models"] = {k: across[k] for k in ("spearman_sim", "spearman_macs")}
    stats["no_better_than_macs"] = not stats.get(RANKING_FIELD, {}).get("beats_macs", False)
    profile = report.profile.with_params(report.profile.params, fit=stats, provenance={
        "calibrated": True, "source": source, "rows": report.rows,
        "command": "hilprune " + " ".join(getattr(args, "argv", None) or sys.argv[1:]),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "start": args.start, "prior_sources": PRIORS.get(name, {}).get("sources"),
        "previous_version": current.version if current is not None else None,
    })
    path = profile.save(Path(args.out) if args.out else PROFILE_DIR / f"{name}.json")
    if args.json:
        print(json.dumps({"profile": name, "version": profile.version, "path": str(path), "fit": stats,
                          "rows": report.rows}, default=str))
        return 0
    print(f"wrote {path} ({name} v{profile.version}) from {len(rows)} rows: MAPE {stats['mape']:.1f}%, "
          f"max {stats['max_ape']:.1f}%, rmse(log) {stats['rmse_log']:.3f}"
          + (f", leave-one-group-out MAPE {stats['leave_one_group_out_mape']:.1f}%" if "leave_one_group_out_mape" in stats else ""))
    if RANKING_FIELD in stats:
        r = stats[RANKING_FIELD]
        print(f"leave-one-model-out ({r['scope']}), n={r['n_rows']}: Spearman sim {r['spearman_sim']:.3f} vs MACs "
              f"{r['spearman_macs']:.3f}; MAPE sim {r['mape_sim']:.1f}% vs MACs x one scale {r['mape_macs']:.1f}%"
              + (f"; 95% interval of the difference [{r['spearman_diff_ci95'][0]:+.3f}, "
                 f"{r['spearman_diff_ci95'][1]:+.3f}]" if r.get("spearman_diff_ci95") else "")
              + ("" if r["beats_macs"] else "  -> NO BETTER THAN MACS (flagged in the profile)"))
    for r in report.rows:
        print(f"  {r['label']:40} {r['threads']:>2}t  measured {r['measured_ms']:10.3f} ms  "
              f"predicted {r['predicted_ms']:10.3f} ms  ({r['ape']:.1f}%)")
    return 0


def _cmd_profiles(args: argparse.Namespace) -> int:
    """List the profiles with their fit and their leave-one-model-out ranking beside the MACs proxy's.

    Everything shown is read from the profile files (``fit``, ``fit["ranking"]``,
    written by ``sim calibrate``); nothing is recomputed.
    """
    from devices.sim.profile import (
        available_profiles,
        load_profile,
        no_better_than_macs,
    )

    out = []
    for n in available_profiles():
        p = load_profile(n)
        fit = p.fit or {}
        r = fit.get("ranking") or {}
        out.append({"name": n, "version": p.version, "threads": p.threads, "description": p.description,
                    "mape": fit.get("mape"), "n_rows": fit.get("n_rows"),
                    "lomo_spearman_sim": r.get("spearman_sim"), "lomo_spearman_macs": r.get("spearman_macs"),
                    "lomo_mape_sim": r.get("mape_sim"), "lomo_mape_macs": r.get("mape_macs"),
                    "lomo_n_models": r.get("n_models"), "lomo_scope": r.get("scope"),
                    "lomo_spearman_diff_ci95": r.get("spearman_diff_ci95"),
                    "no_better_than_macs": no_better_than_macs(p)})
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{'profile':26} {'ver':>4} {'thr':>3}  {'fit MAPE':>9}  {'LOMO Spearman sim / MACs':>24}  "
          f"{'LOMO MAPE sim / MACs':>20}  {'models':>6}  {'Spearman sim-MACs 95% CI':>24}  "
          "verdict (leave-one-model-out, never in-sample)")
    for r in out:
        fit = f"{r['mape']:8.1f}%" if r["mape"] is not None else "    prior"
        if r["lomo_spearman_sim"] is not None:
            rank = f"{r['lomo_spearman_sim']:11.3f} / {r['lomo_spearman_macs']:.3f}"
            err = f"{r['lomo_mape_sim']:8.1f}% / {r['lomo_mape_macs']:.1f}%"
            models = f"{r['lomo_n_models']:>6}"
        else:
            rank, err, models = f"{'unchecked':>24}", f"{'-':>20}", f"{'-':>6}"
        ci = r["lomo_spearman_diff_ci95"]
        ci_txt = f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "-"
        verdict = "NO BETTER THAN MACS" if r["no_better_than_macs"] else "beats MACs"
        if ci and ci[0] <= 0.0 <= ci[1]:  # the point estimates decide; say when their difference is noise
            verdict += " (within noise: the interval holds 0)"
        if r["lomo_scope"] == "within each held-out model":
            verdict += " (ranked within each model)"
        print(f"sim:{r['name']:22} v{r['version']:<3} {r['threads']:>3}  {fit:>9}  {rank:>24}  {err:>20}  {models}  "
              f"{ci_txt:>24}  {verdict}")
    return 0


def fast_main(argv: list[str]) -> int | None:
    """Run ``predict`` / ``sim`` without building the full parser; None for any other command.

    Returns:
        The exit status (2 with one ``hilprune: error: ...`` line on bad
        input), or None when ``argv``'s command is not in :data:`FAST_COMMANDS`.
    """
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] not in FAST_COMMANDS:
        return None
    parser = Parser(prog="hilprune", description="hilprune latency simulator commands")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(argv)
    args.argv = list(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"hilprune: error: {exc}", file=sys.stderr)
        return 2
