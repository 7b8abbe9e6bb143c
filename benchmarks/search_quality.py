"""Search quality: every method side by side at an equal budget (issue 14's benchmark).

Runs ``hilprune compare`` (:mod:`harness.search.compare`) on ResNet-20 /
Fashion-MNIST, target ``host``, device ``local``: every method × seed at the
same budget of evaluated candidates, on one base model, one results store and
one cache; then each method's best fine-tuned alike and all of them timed
interleaved against the unpruned model. Once per backend:

- ``tvm``: latency ``hybrid`` by default (the board's table from the grid-warmed
  tuning database, every reported figure measured; ``--latency measured`` when
  no table is there yet: warm it with ``hilprune tune --model resnet20
  --input-shape 1,1,28,28 --target host --grid 8 --trials 8``);
- ``onnxruntime``: ``measured`` (ONNX Runtime has no table).

Prints each comparison's table (``table.md``) and where its directory is; with
``--json`` also writes every comparison's summary. Figures only; nothing is
asserted. The issue asks for 3 seeds and ≥ 200 candidates per method: that is
the default here, hours on a 2-core machine; ``--seeds`` and ``--budget``
shrink it, and the table says what was run.

    .venv/bin/python benchmarks/search_quality.py                                   # the full benchmark
    .venv/bin/python benchmarks/search_quality.py --seeds 1 --budget 60 --backends tvm  # a short look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.search.compare import CompareConfig, parse_methods, run_compare  # noqa: E402
from harness.search.config import SearchConfig  # noqa: E402

METHODS = "reinforce,ppo,random,uniform,magnitude,macs-reward"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=METHODS, help=f"comma-separated methods (default {METHODS})")
    ap.add_argument("--seeds", type=int, default=3, help="search seeds per method (default 3)")
    ap.add_argument("--budget", type=int, default=200, help="evaluated candidates per run (default 200)")
    ap.add_argument("--backends", default="tvm,onnxruntime", help="comma-separated: tvm, onnxruntime")
    ap.add_argument("--latency", default="hybrid", choices=("hybrid", "predicted", "measured"),
                    help="the tvm comparison's latency mode (default hybrid); onnxruntime is always measured")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--train-epochs", type=int, default=3, help="the base model's epochs (cached)")
    ap.add_argument("--finetune-epochs", type=int, default=1, help="the final step's fine-tuning, every method alike")
    ap.add_argument("--eval-samples", type=int, default=1000, help="validation images per candidate")
    ap.add_argument("--subset", type=int, default=None, help="cap on each data split (None = full data)")
    ap.add_argument("--tune-trials", type=int, default=8, help="the grid database's trials per task")
    ap.add_argument("--cache-dir", default=os.environ.get("HILPRUNE_CACHE", "results/cache"))
    ap.add_argument("--out", default="results/bench/search_quality")
    ap.add_argument("--json", default=None, help="write every comparison's summary here")
    args = ap.parse_args(argv)
    methods = parse_methods(args.methods)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        latency = args.latency if backend == "tvm" else "measured"
        search = SearchConfig(model=args.model, device="local", target="host", backend=backend,
                              tune_trials=args.tune_trials, train_epochs=args.train_epochs,
                              finetune_epochs=args.finetune_epochs, eval_samples=args.eval_samples,
                              subset=args.subset, latency=latency, out=str(out / backend),
                              db=str(out / "results.db"), cache_dir=args.cache_dir)
        config = CompareConfig(search=search, methods=methods, seeds=args.seeds, budget=args.budget)
        t0 = time.perf_counter()
        print(f"== {backend} ({latency}): {len(methods)} methods x {args.seeds} seeds x {args.budget} candidates",
              flush=True)
        summary = run_compare(config, progress="off", say=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
        summaries[backend] = summary
        cmp_dir = Path(summary["compare_dir"])
        print((cmp_dir / "table.md").read_text())
        print(f"{backend}: {time.perf_counter() - t0:.0f} s; directory {cmp_dir}\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(summaries, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
