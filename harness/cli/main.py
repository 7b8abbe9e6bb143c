"""The ``hilprune`` command line: the only place that wires every layer together.

Subcommands (more are registered from SUBCOMMAND_MODULES):
    search   the main job: RL search for a faster pruned model (DESIGN.md §1)
    train    train and cache a baseline model

User errors (unknown model, dataset, device or target, a negative count, a
missing dataset) print ONE line to stderr, ``hilprune: error: ...``, and exit
with status 2; nothing already measured is lost (it is in the results store).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

from harness.cli.args import Parser, nonneg_int, pos_int

__all__ = ["main", "build_parser", "SUBCOMMAND_MODULES"]

#: Modules that add subcommands: each has ``register(subparsers)`` which adds its
#: parser(s) with ``set_defaults(func=...)``; ``func(args) -> int`` is the exit status.
#: Keep imports inside the ``func``s so ``--help`` and light commands start fast.
SUBCOMMAND_MODULES: tuple[str, ...] = ("harness.cli.compile", "harness.cli.sim", "harness.cli.devices",
                                       "harness.cli.nightly", "harness.cli.compare")

#: Above this ratio of the unpruned model's TVM p50 to its ONNX Runtime p50 the search report
#: warns that the TVM build is far from a mature runtime (DESIGN.md §4: 2-5x at 8-32 trials per task).
TVM_SLOWER_THAN_ORT_NOTE = 1.5


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand (each has ``--help``)."""
    from harness.search.config import DEFAULT_BUDGET
    from harness.search.run import SearchConfig

    d = SearchConfig()
    p = Parser(
        prog="hilprune",
        description="Hardware-in-the-loop RL filter pruning: prune, compile through ONNX and TVM, measure on a device.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    from harness.search.methods import METHODS

    s = sub.add_parser("search", help="RL search for a pruned architecture that is faster on the device",
                       description="Run the pruning search. With no arguments: REINFORCE on ResNet-20 / "
                                   "Fashion-MNIST, measured on this machine (device local, target host). Options "
                                   "come from the defaults, then --config FILE (TOML: top-level keys and [env], "
                                   "[reward], [agent] tables), then the flags given.",
                       argument_default=argparse.SUPPRESS)
    opt = s.add_argument
    opt("--config", help="TOML file with any search option (keys named like the flags)")
    opt("--resume", metavar="RUN_ID", help="continue RUN_ID (under --out, in --db) from its last completed step")
    opt("--model", help=f"zoo model (default {d.model})")
    opt("--dataset", help=f"dataset (default {d.dataset})")
    opt("--data-root", help="dataset directory (default: the Debian package's)")
    opt("--device", help=f"where latency is measured (default {d.device})")
    opt("--target", help=f"TVM target preset or JSON dict (default {d.target})")
    opt("--backend", choices=("tvm", "onnxruntime"), help=f"what the daemon times (default {d.backend})")
    opt("--inventory", help="farm inventory TOML, for --device ssh:BOARD or farm:TAG")
    opt("--fallback", choices=("fail", "sim"), help="farm: when no healthy board is left (default: the inventory's)")
    opt("--method", choices=tuple(METHODS),
        help=f"search method (default {d.method}): " + "; ".join(f"{e.name}: {e.about}" for e in METHODS.values()))
    opt("--budget", type=pos_int,
        help=f"evaluated candidates the run may spend (default: --episodes x --max-steps, else {DEFAULT_BUDGET})")
    opt("--episodes", type=pos_int, help="sizes the budget as episodes x max steps when --budget is not given")
    opt("--early-stop", type=pos_int, metavar="N", help="end the run after N candidates without a better best")
    opt("--max-steps", type=pos_int, help=f"[env] steps per episode (default {d.env.max_steps})")
    opt("--target-ratio", type=float,
        help=f"[env] an episode ends once the target metric <= R x the unpruned model's (default {d.env.target_ratio})")
    opt("--latency-target", type=float, dest="target_ratio", help=argparse.SUPPRESS)  # its old name
    opt("--target-metric", choices=("latency", "macs"),
        help=f"[env] what --target-ratio bounds (default {d.env.target_metric})")
    opt("--alpha", type=float, help=f"[reward] weight of ΔP, accuracy (default {d.reward.alpha})")
    opt("--beta", type=float, help=f"[reward] weight of ΔC, MACs (default {d.reward.beta})")
    opt("--gamma", type=float, help=f"[reward] weight of ΔH, measured latency (default {d.reward.gamma})")
    opt("--seed", type=nonneg_int, help=f"the search's seed: policy, sampling (default {d.seed})")
    opt("--base-seed", type=nonneg_int,
        help=f"the base model's seed: data splits, baseline training, fine-tuning (default {d.base_seed})")
    opt("--tune-trials", type=nonneg_int, help=f"MetaSchedule trials per task, 0 = untuned (default {d.tune_trials})")
    opt("--train-epochs", type=nonneg_int, help=f"epochs of the baseline, cached (default {d.train_epochs})")
    opt("--finetune-epochs", type=nonneg_int, help=f"fine-tuning epochs of the best model (default {d.finetune_epochs})")
    opt("--step-fraction", type=float,
        help=f"[env] share of a group's filters one action removes (default {d.env.step_fraction})")
    opt("--round-to", type=pos_int, help=f"[env] keep widths on multiples of N (default {d.env.round_to})")
    opt("--importance", help=f"group magnitude criterion (default {d.importance})")
    opt("--reinforce", choices=("per_step", "episodic"), help=argparse.SUPPRESS)  # now --method reinforce-episodic
    opt("--lr", type=float, help="[agent] learning rate of the method (REINFORCE: 1e-3)")
    opt("--discount", type=float, help="[agent] discount of episodic returns (reinforce-episodic: 0.99)")
    opt("--baseline", choices=("none", "moving_average"),
        help="[agent] return baseline of reinforce-episodic (default none)")
    opt("--eval-samples", type=nonneg_int, help=f"validation images per candidate, 0 = all (default {d.eval_samples})")
    opt("--subset", type=pos_int, help="cap each data split (quick runs and tests)")
    opt("--repeat", type=pos_int, help=f"timed blocks per absolute measurement (default {d.repeat})")
    opt("--ratio-width", type=float,
        help=f"time each candidate interleaved with the unpruned model until its latency ratio is known to "
             f"± this fraction (default {d.ratio_width}) ...")
    opt("--max-pairs", type=pos_int, help=f"... or for at most this many interleaved pairs (default {d.max_pairs})")
    opt("--latency", choices=("measured", "predicted", "hybrid"),
        help="where candidates' latency ratios come from: measured (each compiled and timed interleaved), "
             "predicted (the board's latency table from the target's tuning database; only the final best is "
             "measured) or hybrid (predicted; measured when it would enter the Pareto front or the top-k). "
             "Default: hybrid when the tuning database covers the unpruned model (hilprune tune --grid), else "
             "measured; a sim: device is always simulated")
    opt("--confirm-top-k", type=nonneg_int,
        help=f"hybrid: also measure a candidate whose predicted reward enters the top K of the measured ones "
             f"(default {d.confirm_top_k}; 0 = the Pareto front alone)")
    opt("--cache-drift-tolerance", type=float,
        help=f"reuse earlier runs' latencies only while the unpruned p50 is within this fraction "
             f"of its cached value (default {d.cache_drift_tolerance}; inf = always)")
    opt("--out", help=f"run directories go to OUT/RUN_ID (default {d.out})")
    opt("--db", help=f"results store (default {d.db})")
    opt("--cache-dir", help="baselines, artifacts, tuning databases (default results/cache)")
    opt("--json", action="store_true", help="print one JSON object instead of a table")
    s.set_defaults(func=_cmd_search)

    t = sub.add_parser("train", help="train and cache a baseline model",
                       description="Train a zoo model on a dataset and cache it (keyed by model, dataset, seed, epochs).")
    t.add_argument("--model", default=d.model, help=f"zoo model (default {d.model})")
    t.add_argument("--dataset", default=d.dataset, help=f"dataset (default {d.dataset})")
    t.add_argument("--data-root", default=None, help="dataset directory (default: the Debian package's)")
    t.add_argument("--epochs", type=nonneg_int, default=d.train_epochs, help=f"epochs (default {d.train_epochs})")
    t.add_argument("--seed", type=nonneg_int, default=d.seed, help=f"seed (default {d.seed})")
    t.add_argument("--subset", type=pos_int, default=None, help="cap each data split")
    t.add_argument("--cache-dir", default=None, help="cache root (default results/cache)")
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.set_defaults(func=_cmd_train)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return p


def _cmd_search(args: argparse.Namespace) -> int:
    from harness.search.config import merge_options, nest_flat
    from harness.search.run import SearchConfig, load_config_file, resume_search, run_search

    given = {k: v for k, v in vars(args).items() if k not in ("func", "command", "verbose", "json", "config", "resume")}
    as_json = getattr(args, "json", False)
    # a bar on a terminal; time-stamped lines in a log (a bar would be invisible there); --json: quiet
    progress = "off" if as_json else ("bar" if sys.stderr.isatty() else "lines")
    if getattr(args, "resume", None):
        extra = set(given) - {"out", "db"}
        if extra or getattr(args, "config", None):
            raise ValueError(f"--resume takes only --out and --db (the run keeps its own config); drop "
                             f"{', '.join('--' + k.replace('_', '-') for k in sorted(extra)) or '--config'}")
        summary = resume_search(args.resume, out=given.get("out"), db=given.get("db"), progress=progress)
    else:
        values = load_config_file(args.config) if getattr(args, "config", None) else {}
        config = SearchConfig.from_dict(merge_options(values, nest_flat(given)[0]), source="search options")
        summary = run_search(config, progress=progress)
    if as_json:
        print(json.dumps(summary, sort_keys=True, default=str))
    else:
        _print_search(summary)
    return 0


def _print_search(s: dict) -> None:
    b, best = s["baseline"], s["best"]

    def fmt(x, spec=".4f"):
        return "-" if x is None else format(x, spec)

    print(f"run {s['run_id']}  ({s.get('method', 'reinforce')}, {s['candidates']} candidates, {s['wall_s']:.0f} s)"
          f"  -> {s['run_dir']}")
    if s.get("latency_source"):
        switched = s.get("source_switch")
        print(f"latencies: {s['latency_source']} on {s.get('measured_on') or s.get('device')}, target {s.get('target')}"
              + (f" (switched from {switched['from']} at episode {switched['episode']} step {switched['step']}: "
                 "no healthy board left)" if switched else ""))
    lm = s.get("latency_mode") or {}
    if lm.get("mode") in ("predicted", "hybrid") or lm.get("fit"):
        mape = lm.get("prediction_mape_pct")
        print(f"latency mode {lm['mode']}: {lm.get('candidates_predicted', 0)} candidates predicted, "
              f"{lm.get('candidates_measured', 0)} measured; table {lm.get('fit_describe')}"
              + (f"; prediction error on the measured ones {mape:.1f} % (MAPE of the ratio, "
                 f"{lm.get('prediction_pairs')} pairs)" if mape is not None else ""))
        tt = lm.get("table_times") or {}
        if tt.get("predictions"):
            print(f"table task times: {tt['times']} ({tt['tasks_retimed']} task uses re-timed in one session, "
                  f"{tt['tasks_recorded']} tuning-time records, over {tt['predictions']} architectures)"
                  + ("; re-time them: hilprune tune --grid N --retime-only" if tt["tasks_recorded"] else ""))
        if lm["mode"] == "predicted":
            print("the search ranked on predicted latencies; the best's speedup below is measured afresh")
    print(f"{'':10} {'val top-1':>10} {'test top-1':>10} {'MACs':>12} {'params':>9} {'p50 ms':>9}")
    print(f"{'baseline':10} {fmt(b.get('val_top1'), '10.4f')} {fmt(b['test_top1'], '10.4f')} {b['macs']:>12,} "
          f"{b['params']:>9,} {fmt(b['latency_p50_ms'], '9.3f')}")
    if best is None:
        print("best       none: no candidate was measured successfully")
        return
    print(f"{'best':10} {fmt(best.get('val_top1'), '10.4f')} {fmt(best['test_top1'], '10.4f')} {best['macs']:>12,} "
          f"{best['params']:>9,} {fmt(best['latency_p50_ms'], '9.3f')}")
    rounds = best.get("speedup_rounds") or []
    ci = best.get("speedup_ci")
    simulated = s.get("latency_source") == "simulated"
    spread = (" (simulated: a ratio of two predictions, no interval)" if simulated and ci
              else f" [{ci[0]:.2f}, {ci[1]:.2f}] over {best.get('final_pairs')} interleaved pairs" if ci
              else f" (rounds {min(rounds):.2f}-{max(rounds):.2f})" if len(rounds) > 1 else "")
    print(f"speedup {fmt(best['speedup'], '.2f')}x{spread}, "
          f"test top-1 drop {fmt(100 * best['test_top1_drop'], '.2f')} points, "
          f"spec {best['arch_signature']}")
    noise = best.get("speedup_within_noise")
    if noise is None:  # a summary from before interval estimates: the rounds' spread
        noise = len(rounds) > 1 and min(rounds) <= 1.0 < max(rounds)
    if noise:
        print("note: the speedup is within this machine's noise (its interval holds 1.0): the best model is not "
              "measurably faster than the baseline here (measure on an idle machine or a board)")
    ties = best.get("ties") or []
    if ties:
        print(f"note: {len(ties)} other candidate(s) are within noise of the best's latency (ties): "
              + ", ".join(ties[:3]) + (" ..." if len(ties) > 3 else ""))
    if best.get("final_error"):
        print(f"note: the fine-tuned best model could not be measured afresh ({best['final_error'].splitlines()[0]}); "
              "its p50 is the one from the search")
    ref = best.get("reference_onnxruntime")
    if ref and "error" in ref:
        print(f"ONNX Runtime on the same device: not measured ({ref['error'].splitlines()[0]})")
    elif ref:
        ort_ci = ref.get("speedup_ci")
        print(f"ONNX Runtime on the same device: {ref['baseline_p50_ms']:.3f} -> {ref['best_p50_ms']:.3f} ms "
              f"({ref['speedup']:.2f}x" + (f" [{ort_ci[0]:.2f}, {ort_ci[1]:.2f}])" if ort_ci else ")"))
        slower = (b["latency_p50_ms"] or 0.0) / ref["baseline_p50_ms"]
        if slower > TVM_SLOWER_THAN_ORT_NOTE:
            print(f"note: this TVM build runs the unpruned model {slower:.1f}x slower than ONNX Runtime; with so "
                  "little tuning a speedup may come from the schedules TVM happened to find, not from the "
                  "pruning (raise --tune-trials for deployment-grade latencies)")
    shares = {k: v for k, v in s["stage_seconds"].items() if v > 0}
    print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in shares.items()))


def _cmd_train(args: argparse.Namespace) -> int:
    from harness.data import load_dataset
    from harness.paths import default_cache_dir
    from harness.train import load_or_train_baseline

    root = Path(args.data_root) if args.data_root else None
    splits = load_dataset(args.dataset, root=root, seed=args.seed, subset=args.subset)
    _, info = load_or_train_baseline(
        args.model, args.dataset, seed=args.seed, epochs=args.epochs,
        cache_dir=Path(args.cache_dir) if args.cache_dir else default_cache_dir(),
        data_root=root, progress=not args.json, splits=splits,
    )
    info = dataclasses.asdict(info)
    print(json.dumps(info, sort_keys=True, default=str) if args.json else
          "\n".join(f"{k}: {v}" for k, v in info.items() if k != "history"))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hilprune`` console script; returns the exit status.

    Output piped into a reader that stops early (``hilprune predict ... | head``)
    ends quietly with status 141 (128 + SIGPIPE, as a shell reports it), not a
    BrokenPipeError traceback.
    """
    try:
        return _main(argv)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # Python's own recipe: no second error at exit
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _main(argv: list[str] | None) -> int:
    from harness.cli.sim import fast_main  # `predict` / `sim` start without torch or TVM (issue 5)

    fast = fast_main(sys.argv[1:] if argv is None else list(argv))
    if fast is not None:
        return fast
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:  # a bare `hilprune` must not start a 20-minute job
        parser.print_help(sys.stderr)
        print("hilprune: error: no command given; `hilprune search` runs the default search", file=sys.stderr)
        return 2
    from harness.data import DatasetError
    from harness.search.run import SearchAborted
    from harness.store import StoreError

    def _terminate(signum, frame):  # a `kill` is handled like Ctrl-C: the run is marked interrupted
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except BrokenPipeError:
        raise
    except (ValueError, DatasetError, StoreError, OSError) as exc:  # OSError: a path that is a dir, no permission
        print(f"hilprune: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except SearchAborted as exc:
        print(f"hilprune: stopped: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hilprune: interrupted; everything measured so far is in the results store", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
