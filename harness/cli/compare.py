"""``hilprune compare``: search methods side by side at an equal budget (issue 14; DESIGN.md §9).

    hilprune compare --methods reinforce,ppo,random,uniform,magnitude,macs-reward [--seeds 3] [--budget N]
                     [every search option: --model, --device, --target, --backend, --inventory, --subset,
                      --train-epochs, --finetune-epochs, --base-seed, --config FILE.toml, ...]
                     [--no-final] [--out DIR] [--db PATH] [--json]
        -> OUT/compare-STAMP/ with config.json, runs.json, table.csv, table.md, fronts.png,
           learning_curves.png, final.csv, summary.json; prints the table (Markdown) and that directory
           (--json: one JSON object). Exit 0 when the comparison ran (a method that failed says why in its
           row), 2 on bad input (an unknown method, a bad option) before any work.

The search options are the ``search`` subcommand's own (copied from its parser, so the two never
drift), except those a comparison sets per run: ``--method`` (from ``--methods``), ``--seed``
(0 .. seeds-1), ``--budget`` (the comparison's own flag, the same for every run) and ``--resume``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

from harness.cli.args import pos_int

__all__ = ["register"]

#: Options of ``search`` that a comparison does not take from the user: it sets them per run or has its own
#: (``--early-stop`` would end runs before the budget: the budgets would no longer be equal).
NOT_COPIED = {"help", "resume", "method", "reinforce", "seed", "budget", "early_stop", "json", "episodes"}


def register(sub) -> None:
    """Add the ``compare`` subcommand; copies the search options from the ``search`` parser in ``sub``."""
    c = sub.add_parser(
        "compare", help="search methods side by side at an equal budget of evaluated candidates",
        description="Run every method with seeds 0..N-1 at the same budget of evaluated candidates on one base "
                    "model, one results store and one cache; write a table (median and min-max over seeds of the "
                    "best speedup within 1 point of validation top-1, of validation top-1 at the target), the "
                    "methods' Pareto fronts, learning curves, and a final step: each method's best fine-tuned "
                    "alike and timed against the unpruned model on one board, with its test top-1.",
        argument_default=argparse.SUPPRESS)
    c.add_argument("--methods", required=True, metavar="M1,M2,...",
                   help="search methods, comma-separated (e.g. reinforce,ppo,random,uniform,magnitude,macs-reward)")
    c.add_argument("--seeds", type=pos_int, default=3, metavar="N", help="search seeds 0..N-1 per method (default 3)")
    c.add_argument("--budget", type=pos_int, metavar="N",
                   help="evaluated candidates per run, the same for every method (default: the search's default "
                        "budget)")
    c.add_argument("--no-final", action="store_true", help="skip the final step (fine-tune and time the bests)")
    c.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    search = sub.choices.get("search")
    if search is not None:
        for action in search._actions:
            if action.dest in NOT_COPIED or not action.option_strings:
                continue
            c._add_action(copy.copy(action))
    c.set_defaults(func=_cmd_compare)


def _search_config(given: dict, config_file: str | None):
    """The comparison's search options: defaults, then ``--config`` FILE, then the flags given."""
    from harness.search.config import (
        SearchConfig,
        load_config_file,
        merge_options,
        nest_flat,
    )

    values = load_config_file(config_file) if config_file else {}
    values = {k.replace("-", "_"): v for k, v in values.items()}
    nested, _ = nest_flat(given)
    return SearchConfig.from_dict(merge_options(values, nested), source="compare options")


def _cmd_compare(args: argparse.Namespace) -> int:
    from harness.search.compare import (
        CompareConfig,
        check_options,
        parse_methods,
        print_summary,
        run_compare,
    )

    methods = parse_methods(args.methods)  # an unknown name: exit 2 before any work
    own = {"func", "command", "verbose", "json", "config", "methods", "seeds", "budget", "no_final"}
    given = {k: v for k, v in vars(args).items() if k not in own}
    given["method"] = methods[0]  # the shared options are checked per method below (CompareConfig)
    search = _search_config(given, getattr(args, "config", None))
    check_options(search)
    budget = getattr(args, "budget", None) or search.budget_limit
    config = CompareConfig(search=search, methods=methods, seeds=args.seeds, budget=budget,
                           final=not getattr(args, "no_final", False))
    as_json = getattr(args, "json", False)
    progress = "off" if as_json else ("bar" if sys.stderr.isatty() else "lines")

    def say(message: str) -> None:
        if not as_json:
            print(f"compare: {message}", file=sys.stderr, flush=True)

    summary = run_compare(config, progress=progress, say=say)
    if as_json:
        from harness.search.compare_report import dumps

        print(json.dumps(json.loads(dumps({k: v for k, v in summary.items() if k != "markdown"})), sort_keys=True))
    else:
        print_summary(summary)
    return 0
