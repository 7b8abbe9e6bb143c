#!/usr/bin/env python3
"""Compile and measure in depth (issue 3): export, build, tuning, and TVM vs ONNX Runtime vs torch.

For each model (default: ResNet-18 and MobileNetV2 at 1x3x224x224, ResNet-20
at 1x1x28x28), with ``--threads`` CPU threads (default 2) everywhere:

1. ONNX export seconds (``harness.compile.export.export_onnx``: export + onnx.checker + ORT check);
2. TVM build seconds untuned, and for each tuning budget (trials per task,
   default 8 and 16) the tuning seconds and the rest of the build; every
   budget tunes into its OWN fresh database (a shared one would hand the
   second budget the first one's records and tune nothing);
3. p50 latency (ms) on the ``local`` device (the real daemon) of the TVM
   artifact untuned and tuned at each budget, of ONNX Runtime on the same
   ONNX file (daemon backend ``onnxruntime``) and of torch eager in this
   process on the same input (``numpy.random.default_rng(0)`` standard
   normal, float32), with the ratios TVM/ORT and TVM/torch. ORT is measured
   right after each TVM measurement (same daemon, same artifact) and each
   TVM/ORT ratio uses that adjacent pair: on a shared machine the load moves
   within minutes, and a ratio of numbers taken ten minutes apart says
   more about the load than about the code;
4. the spread across daemon sessions: the same artifact (the most tuned
   one) measured in ``--sessions`` (default 5) fresh daemon processes; CoV of
   their p50s, and the mean within-session CoV.

It prints figures and asserts nothing about time. Machine load changes every
figure (note what else ran). Examples::

    .venv/bin/python benchmarks/compile_measure.py                                # everything (long)
    .venv/bin/python benchmarks/compile_measure.py --models resnet20              # ResNet-20, budgets 8 and 16
    .venv/bin/python benchmarks/compile_measure.py --models resnet18 --budgets 8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: name -> (build_model kwargs, input shape NCHW)
MODELS = {
    "resnet18": ({"num_classes": 1000}, (1, 3, 224, 224)),
    "mobilenet_v2": ({"num_classes": 1000, "stem": "imagenet"}, (1, 3, 224, 224)),
    "resnet20": ({"num_classes": 10}, (1, 1, 28, 28)),
}
SEED = 0


def torch_eager_ms(model, x, threads: int, repeat: int, min_repeat_ms: float) -> list[float]:
    """Per-call ms of torch eager, timed like the daemon: warm-up, calls per block so a
    block lasts >= min_repeat_ms, ``repeat`` blocks."""
    import torch

    torch.set_num_threads(threads)
    model = model.eval()
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        for _ in range(3):
            model(xt)
        number = 1
        while True:
            t0 = time.perf_counter()
            for _ in range(number):
                model(xt)
            block_ms = (time.perf_counter() - t0) * 1e3
            if block_ms >= min_repeat_ms or number >= 10_000:
                break
            number = min(10_000, max(number * 2, int(number * min_repeat_ms / max(block_ms, 1e-3) * 1.1) + 1))
        out = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(number):
                model(xt)
            out.append((time.perf_counter() - t0) * 1e3 / number)
    return out


def torch_eager_subprocess(name: str, args) -> list[float]:
    """torch eager timed in a fresh process that imports only torch and the zoo (as the daemon
    is a process of its own; TVM's thread pool in the same process would skew torch's)."""
    import subprocess

    cmd = [sys.executable, __file__, "--torch-worker", name, "--threads", str(args.threads),
           "--repeat", str(args.repeat), "--min-repeat-ms", str(args.min_repeat_ms)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=3600).stdout
    return json.loads(out.strip().splitlines()[-1])


def _torch_worker(name: str, threads: int, repeat: int, min_repeat_ms: float) -> None:
    import numpy as np
    import torch

    from harness.models import build_model

    torch.set_num_threads(threads)
    kw, shape = MODELS[name]
    model = build_model(name, in_channels=shape[1], input_size=shape[2:], seed=SEED, **kw)
    x = np.random.default_rng(SEED).standard_normal(shape).astype(np.float32)
    print(json.dumps(torch_eager_ms(model, x, threads, repeat, min_repeat_ms)))


def measure_config(args, repeat: int | None = None):
    from devices.base import MeasureConfig

    return MeasureConfig(warmup=2, number=0, repeat=repeat or args.repeat, min_repeat_ms=args.min_repeat_ms,
                         timeout_s=1800.0, seed=SEED, num_threads=args.threads)


def measure(pipeline, prepared, backend: str):
    """One output-checked measurement through the pipeline (not stored: a benchmark's own figures)."""
    r = pipeline.measure(prepared, backend=backend)
    if r.error is not None:
        raise RuntimeError(f"measure {backend} {prepared.path.name}: {r.error.kind}: {r.error.message}")
    return r.measurement


def run_model(name: str, args, cache_dir: Path) -> dict:
    import numpy as np

    from devices.local import LocalDevice
    from harness.compile.export import export_onnx
    from harness.compile.targets import resolve_target
    from harness.compile.tuning import TuningConfig
    from harness.models import build_model
    from harness.pipeline import Pipeline, PipelineError, Prepared

    kw, shape = MODELS[name]
    target = resolve_target("host")
    model = build_model(name, in_channels=shape[1], input_size=shape[2:], seed=SEED, **kw)
    res: dict = {"model": name, "input_shape": list(shape), "threads": args.threads, "builds": []}
    onnx_path = cache_dir / f"{name}.onnx"
    t0 = time.perf_counter()
    report = export_onnx(model, shape, onnx_path)
    res["export_s"] = time.perf_counter() - t0
    res["export_max_abs_diff_ort_vs_torch"] = report.max_abs_diff
    print(f"\n== {name} {'x'.join(map(str, shape))}: ONNX export {res['export_s']:.1f} s "
          f"(max |ORT-torch| {report.max_abs_diff:.2g})", flush=True)

    eager = torch_eager_subprocess(name, args)
    res["torch_p50_ms"] = statistics.median(eager)
    res["torch_cov"] = statistics.stdev(eager) / statistics.mean(eager) if len(eager) > 1 else 0.0
    print(f"torch eager p50 {res['torch_p50_ms']:.3f} ms", flush=True)

    device = LocalDevice()
    try:
        budgets = [0, *args.budgets] if not args.skip_untuned else list(args.budgets)
        for budget in budgets:
            tuning = TuningConfig(trials_per_task=budget, num_threads=args.threads,
                                  database_dir=(cache_dir / f"tuning-{name}-b{budget}") if budget else None)
            pipeline = Pipeline.for_device(device, target, tuning, measure_config(args), cache_dir)
            t0 = time.perf_counter()
            art = pipeline.compile(onnx_path)
            wall = time.perf_counter() - t0
            if isinstance(art, PipelineError):
                print(f"budget {budget}: compile failed: {art.kind}: {art.message}", flush=True)
                res["builds"].append({"trials_per_task": budget, "error": f"{art.kind}: {art.message}"})
                continue
            tinfo = art.manifest.tuning
            m = measure(pipeline, art, "tvm")
            b = {
                "trials_per_task": budget, "artifact": str(art.path), "cache_hit": art.cache_hit,
                "compile_wall_s": wall, "tune_s": tinfo.get("tune_s", 0.0),
                "build_s": (art.manifest.build_s or 0.0) - tinfo.get("tune_s", 0.0),
                "tasks_total": tinfo.get("tasks_total"), "tasks_tuned_now": tinfo.get("tasks_tuned_now"),
                "p50_ms": m.stats.p50_ms, "cov": m.stats.cov, "n": m.stats.n, "number": m.number,
                "output_head": list(m.output_head)[:4],
            }
            res["builds"].append(b)
            label = f"tuned {budget}/task" if budget else "untuned"
            print(f"TVM {label:>14}: build {b['build_s']:.1f} s, tune {b['tune_s']:.1f} s "
                  f"({b['tasks_total']} tasks), p50 {b['p50_ms']:.3f} ms (CoV {b['cov']:.3f}, n {b['n']}, "
                  f"{b['number']} calls/block)", flush=True)
            # ORT right after each TVM measurement: the ratio compares numbers taken under the same load
            ort = measure(pipeline, art, "onnxruntime")
            b["ort_p50_ms"], b["ort_cov"] = ort.stats.p50_ms, ort.stats.cov
            res.setdefault("ort_p50_ms", ort.stats.p50_ms)
            diff = float(np.max(np.abs(np.asarray(ort.output_head) - np.asarray(m.output_head))))
            res["max_abs_diff_tvm_vs_ort_head"] = diff
            print(f"ONNX Runtime (same artifact's ONNX, measured next) p50 {ort.stats.p50_ms:.3f} ms "
                  f"(CoV {ort.stats.cov:.3f}); max |TVM-ORT| on the output head {diff:.2g}", flush=True)
    finally:
        device.close()

    ok = [b for b in res["builds"] if "p50_ms" in b]
    for b in ok:
        b["tvm_over_ort"] = b["p50_ms"] / b["ort_p50_ms"]
        b["tvm_over_torch"] = b["p50_ms"] / res["torch_p50_ms"]

    if ok and args.sessions > 0:
        chosen = ok[-1]
        p50s, covs = [], []
        for _ in range(args.sessions):
            dev = LocalDevice()
            try:
                session = Pipeline.for_device(dev, target, TuningConfig(trials_per_task=0),
                                              measure_config(args, repeat=args.session_repeat), cache_dir)
                m = measure(session, Prepared.at(chosen["artifact"]), "tvm")
            finally:
                dev.close()
            p50s.append(m.stats.p50_ms)
            covs.append(m.stats.cov)
        res["sessions"] = {
            "trials_per_task": chosen["trials_per_task"], "p50_ms": p50s,
            "cov_of_p50s": statistics.stdev(p50s) / statistics.mean(p50s) if len(p50s) > 1 else 0.0,
            "mean_within_session_cov": statistics.mean(covs),
        }
    return res


def print_summary(results: list[dict]) -> None:
    print("\n== summary (p50 ms; ratios of TVM to ONNX Runtime and to torch eager)")
    print(f"{'model':13} {'build':>14} {'export s':>8} {'build s':>8} {'tune s':>8} {'TVM p50':>9} "
          f"{'ORT p50':>8} {'torch p50':>9} {'TVM/ORT':>8} {'TVM/torch':>9}")
    for r in results:
        for b in r["builds"]:
            if "p50_ms" not in b:
                continue
            label = f"tuned {b['trials_per_task']}/task" if b["trials_per_task"] else "untuned"
            print(f"{r['model']:13} {label:>14} {r['export_s']:8.1f} {b['build_s']:8.1f} {b['tune_s']:8.1f} "
                  f"{b['p50_ms']:9.3f} {b['ort_p50_ms']:8.3f} {r['torch_p50_ms']:9.3f} "
                  f"{b['tvm_over_ort']:8.2f} {b['tvm_over_torch']:9.2f}")
        s = r.get("sessions")
        if s:
            print(f"{r['model']:13} {len(s['p50_ms'])} daemon sessions of the {s['trials_per_task']}-trial artifact: "
                  f"p50s {', '.join(f'{v:.3f}' for v in s['p50_ms'])} ms; CoV across sessions "
                  f"{s['cov_of_p50s']:.3f}, mean CoV within a session {s['mean_within_session_cov']:.3f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2,resnet20",
                   help=f"comma-separated, of {', '.join(MODELS)} (default all)")
    p.add_argument("--budgets", default="8,16", help="tuning budgets, trials per task (default 8,16; '' = none)")
    p.add_argument("--skip-untuned", action="store_true", help="do not build/measure the untuned artifact")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch, ORT, TVM and tuning (default 2)")
    p.add_argument("--repeat", type=int, default=15, help="timed blocks per measurement (default 15)")
    p.add_argument("--min-repeat-ms", type=float, default=100.0, help="minimum block length, ms (default 100)")
    p.add_argument("--sessions", type=int, default=5, help="daemon sessions for the CoV across sessions (default 5)")
    p.add_argument("--session-repeat", type=int, default=10, help="timed blocks per session (default 10)")
    p.add_argument("--cache-dir", default=None,
                   help="artifacts and tuning databases (default: a fresh temporary dir, so nothing is cached)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.torch_worker:
        _torch_worker(args.torch_worker, args.threads, args.repeat, args.min_repeat_ms)
        return 0
    args.budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="hilprune-bench-") as tmp:
        cache_dir = Path(args.cache_dir) if args.cache_dir else Path(tmp)
        cache_dir.mkdir(parents=True, exist_ok=True)
        print(f"threads {args.threads}, budgets {args.budgets}, cache {cache_dir}, load average "
              f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
        results = []
        for name in names:
            results.append(run_model(name, args, cache_dir))
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2))
        print_summary(results)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
