"""Search throughput: candidates per minute and where the wall time goes.

Runs a short search per model (the real pipeline: prune, evaluate, export,
tune, build, measure on ``local``, agent) twice against one results store and
one cache: the first run starts from the given cache state, the second shows
what the latency cache and the tuning database save. Prints, per run:
candidates per minute, the share of wall time of each stage, and the latency
cache hit rate. Figures only; nothing is asserted.

    .venv/bin/python benchmarks/search_throughput.py                     # ResNet-20 and MobileNetV2
    .venv/bin/python benchmarks/search_throughput.py --models resnet20 --episodes 2 --max-steps 3 --json out.json

Latency modes (issue 13): with ``--latency measured predicted hybrid`` each mode runs once (after a first
run that trains the baseline and fills the caches) against a *warm grid database* in ``--cache-dir``
(``hilprune tune --model resnet20 --input-shape 1,1,28,28 --target host --grid 8 --trials 8``), and the
figures are candidates per minute of the search loop (wall time of the loop: agent, prune, accuracy,
export, task extraction, compile, measure; not the baseline's set-up nor the final step), the new
architectures per minute (revisits are cache hits, free for every mode alike), and the loop's stages::

    HILPRUNE_CACHE=/work/bench-cache nice -n 5 .venv/bin/python benchmarks/search_throughput.py \
        --models resnet20 --latency measured predicted hybrid --cache-dir /work/bench-cache --tune-trials 8

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

STAGES = ("prune", "evaluate", "export", "table", "tune", "build", "measure", "agent")


def _timed_loop():
    """Wrap the search loop to time it (wall seconds of episodes x steps only)."""
    from harness.search import run as run_mod

    real = getattr(run_mod._Run.search, "__wrapped__", run_mod._Run.search)
    box = {"loop_s": 0.0, "stages": {}}

    def loop(self, ckpt):  # _Run.search: the method's loop (the budget's candidates)
        t0, before = time.perf_counter(), dict(self.timer.seconds)
        try:
            return real(self, ckpt)
        finally:
            box["loop_s"] += time.perf_counter() - t0
            box["stages"] = {k: v - before.get(k, 0.0) for k, v in self.timer.seconds.items()}

    loop.__wrapped__ = real

    run_mod._Run.search = loop
    return box


def one(model: str, args, ws: dict, label: str, latency: str | None = None, episodes: int | None = None) -> dict:
    cfg = SearchConfig(model=model, episodes=episodes or args.episodes, subset=args.subset,
                       env={"max_steps": args.max_steps, "round_to": args.round_to},
                       train_epochs=args.train_epochs, tune_trials=args.tune_trials, finetune_epochs=0,
                       eval_samples=args.eval_samples, seed=args.seed, latency=latency, **ws)
    box = _timed_loop()
    t0 = time.perf_counter()
    s = run_search(cfg, progress=False)
    wall_s = time.perf_counter() - t0
    secs = box["stages"]  # the loop's own stage seconds (the set-up compiles and measures the reference)
    loop_s = box["loop_s"]
    lm = s.get("latency_mode") or {}
    from harness.store import ResultsStore

    store = ResultsStore(cfg.db)
    rows = [r for r in store.candidates(s["run_id"]) if r["episode"] >= 0]
    store.close()
    ev = s["evaluator"]
    lookups = ev["latency_cache_hits"] + ev["compiled"] + ev["failed"]
    return {
        "model": model, "run": label, "latency_mode": lm.get("mode"), "candidates": s["candidates"],
        "new_architectures": len({r["arch_signature"] for r in rows}), "wall_s": round(wall_s, 1),
        "loop_s": round(loop_s, 1),
        "candidates_per_min": round(60 * s["candidates"] / max(loop_s, 1e-9), 2),
        "new_architectures_per_min": round(60 * len({r["arch_signature"] for r in rows}) / max(loop_s, 1e-9), 2),
        "candidates_predicted": lm.get("candidates_predicted"), "candidates_measured": lm.get("candidates_measured"),
        "prediction_mape_pct": lm.get("prediction_mape_pct"), "fit": lm.get("fit_describe"),
        "table_extractions": lm.get("table_extractions"),
        "stage_share": {k: round(secs.get(k, 0.0) / max(loop_s, 1e-9), 3) for k in STAGES},
        "stage_seconds": {k: round(secs.get(k, 0.0), 1) for k in STAGES + ("train", "finetune")},
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
    p.add_argument("--latency", nargs="+", default=None, choices=("measured", "predicted", "hybrid"),
                   help="compare these search latency modes (one run each, after a warm-up run) on --cache-dir")
    p.add_argument("--cache-dir", default=None, help="cache (tuning database) to use, e.g. a warmed grid's")
    p.add_argument("--episodes-per-mode", nargs="+", type=int, default=None,
                   help="with --latency: episodes of each mode's run (default --episodes for all)")
    args = p.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="hilprune-throughput-"))
    ws = dict(out=str(root / "runs"), db=str(root / "r.db"), cache_dir=args.cache_dir or str(root / "cache"))
    print(f"work dir {root} (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    rows = []
    if args.latency:
        for model in args.models:
            # trains the baseline and compiles the reference (predicted: no candidate's latency is cached)
            one(model, args, {**ws, "db": str(root / "r-warm-up.db")}, "warm-up", latency="predicted", episodes=1)
            for i, mode in enumerate(args.latency):
                eps = (args.episodes_per_mode or [])[i] if i < len(args.episodes_per_mode or []) else None
                # a results store and an artifact cache per mode: no mode is served another's measured ratios or
                # compiled candidates; the tuning database, grids and trained baselines are shared (symlinks)
                cache = root / f"cache-{mode}"
                cache.mkdir(exist_ok=True)
                for part in Path(ws["cache_dir"]).iterdir():
                    if part.name != "artifacts" and not (cache / part.name).exists():
                        (cache / part.name).symlink_to(part.resolve())
                r = one(model, args, {**ws, "db": str(root / f"r-{mode}.db"), "cache_dir": str(cache)}, mode,
                        latency=mode, episodes=eps)
                rows.append(r)
                share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["stage_share"].items() if v >= 0.005)
                print(f"{model:9} {mode:9} {r['candidates']:3d} candidates ({r['new_architectures']} new) in "
                      f"{r['loop_s']:.0f} s: {r['candidates_per_min']:6.2f}/min ({r['new_architectures_per_min']:.2f} "
                      f"new/min); predicted {r['candidates_predicted']}, measured {r['candidates_measured']}, "
                      f"MAPE {r['prediction_mape_pct']}; table {r['fit']}; load {os.getloadavg()[0]:.1f} | {share}")
        by = {r["run"]: r for r in rows}
        if "measured" in by:
            for mode in ("predicted", "hybrid"):
                if mode in by:
                    print(f"{mode} / measured: {by[mode]['candidates_per_min'] / by['measured']['candidates_per_min']:.1f}x "
                          f"candidates per minute")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return 0
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
