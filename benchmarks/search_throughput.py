"""Search throughput: candidates per minute and where the wall time goes.

Runs a short search per model (the real pipeline: prune, evaluate, export,
tune, build, measure on ``local``, agent) twice against one results store and
one cache: the first run starts from the given cache state, the second shows
what the latency cache and the tuning database save. Prints, per run:
candidates per minute, the share of wall time of each stage, and the latency
cache hit rate. Figures only; nothing is asserted.

    .venv/bin/python benchmarks/search_throughput.py                     # ResNet-20 and MobileNetV2
    .venv/bin/python benchmarks/search_throughput.py --models resnet20 --episodes 2 --max-steps 3 --json out.json

The baseline of each model is trained on a Fashion-MNIST subset for one epoch
(``--subset``, ``--train-epochs``): accuracy is not the point here, latency
and stage costs are. Run it on an idle machine: measured latencies and
tuning times follow the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.search.run import SearchConfig, run_search  # noqa: E402

STAGES = ("prune", "evaluate", "export", "tune", "build", "measure", "agent")


def one(model: str, args, ws: dict, label: str) -> dict:
    cfg = SearchConfig(model=model, episodes=args.episodes, subset=args.subset,
                       env={"max_steps": args.max_steps, "round_to": args.round_to},
                       train_epochs=args.train_epochs, tune_trials=args.tune_trials, finetune_epochs=0,
                       eval_samples=args.eval_samples, seed=args.seed, **ws)
    t0 = time.perf_counter()
    s = run_search(cfg, progress=False)
    wall_s = time.perf_counter() - t0
    secs = s["stage_seconds"]
    loop_s = sum(secs[k] for k in STAGES)
    ev = s["evaluator"]
    lookups = ev["latency_cache_hits"] + ev["compiled"] + ev["failed"]
    return {
        "model": model, "run": label, "candidates": s["candidates"], "wall_s": round(wall_s, 1),
        "candidates_per_min": round(60 * s["candidates"] / max(loop_s, 1e-9), 2),
        "stage_share": {k: round(secs[k] / max(loop_s, 1e-9), 3) for k in STAGES},
        "stage_seconds": {k: round(secs[k], 1) for k in STAGES + ("train", "finetune")},
        "latency_cache_hit_rate": round(ev["latency_cache_hits"] / max(lookups, 1), 3),
        "compiled": ev["compiled"], "measured": ev["measured"],
        "baseline_p50_ms": s["baseline"]["latency_p50_ms"],
        "best_p50_ms": (s["best"] or {}).get("latency_p50_ms"), "speedup": (s["best"] or {}).get("speedup"),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "mobilenet_v2"])
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--tune-trials", type=int, default=8)
    p.add_argument("--subset", type=int, default=5000)
    p.add_argument("--train-epochs", type=int, default=1)
    p.add_argument("--eval-samples", type=int, default=1000)
    p.add_argument("--round-to", type=int, default=8, help="widths on a grid the tuning database reuses")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="store, runs and cache (default: a fresh temp dir = cold)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="hilprune-throughput-"))
    ws = dict(out=str(root / "runs"), db=str(root / "r.db"), cache_dir=str(root / "cache"))
    print(f"work dir {root} (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    rows = []
    for model in args.models:
        for label in ("first", "second"):
            r = one(model, args, ws, label)
            rows.append(r)
            share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["stage_share"].items())
            print(f"{model:13} {label:6} {r['candidates']:3d} candidates  {r['candidates_per_min']:6.2f}/min  "
                  f"cache hits {100 * r['latency_cache_hit_rate']:.0f}%  compiled {r['compiled']}  | {share}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
