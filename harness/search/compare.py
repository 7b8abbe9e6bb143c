"""``hilprune compare``: search methods side by side at an equal budget of evaluated candidates.

DESIGN.md §9 and issue 14. One comparison:

1. every (method, seed) runs :func:`harness.search.run.run_search` with the same options: the
   same base model (``base_seed`` fixed; only the search's ``seed`` varies), the same budget of
   evaluated candidates, one results store and one cache directory (so a latency one run measured
   is a cache hit for the others, and the tuning database is shared). A run that raises is recorded
   with its reason and the others go on; everything it measured is in the store already. The
   runs do not fine-tune (the comparison does, alike, at the end);
2. the table, the fronts and the learning curves are computed from the store's rows of those runs
   (:mod:`harness.search.compare_report`);
3. the final step (:func:`final_step`): each method's best run by the table's criterion gives its
   best architecture, pruned from the same base model, fine-tuned the same ``finetune_epochs``
   with the same seed, then all of them timed against the unpruned model on one device, pinned to
   one board, in interleaved sessions of up to three candidates with the reference
   (:meth:`harness.pipeline.Pipeline.measure_ratios`), with their test top-1.

Everything goes to ``OUT/compare-STAMP/``: ``config.json`` (the options, methods, seeds and
budget), ``runs.json`` (each run's id, status, reason, wall time; rewritten after every run),
``table.csv`` + ``table.md``, ``fronts.png``, ``learning_curves.png``, ``final.csv`` and
``summary.json``; the runs' own directories are under ``runs/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.search.compare_report import (
    MAX_TOP1_DROP,
    RunRecord,
    best_runs,
    dumps,
    learning_curve,
    method_table,
    plot_fronts,
    plot_learning_curves,
    reported_rows,
    table_markdown,
    write_table,
)

__all__ = ["FINAL_COLUMNS", "CompareConfig", "check_options", "final_step", "parse_methods", "run_compare"]

log = logging.getLogger(__name__)

#: Columns of ``final.csv``: one row for the unpruned model, then one per method with a best run:
#:
#: - ``method`` (``unpruned`` for the reference), ``seed`` and ``run_id`` of the method's best run;
#: - ``arch_signature``, ``spec`` (JSON list of kept widths), ``macs``, ``params``;
#: - ``val_top1_search``, ``latency_ratio_search``: the candidate as the search saw it;
#: - ``finetune_epochs``: epochs every method's best was fine-tuned (the same for all);
#: - ``test_top1``: test top-1 after fine-tuning, in [0, 1]; ``test_top1_drop``: the unpruned model's minus it;
#: - ``speedup``: 1 / the median latency ratio to the unpruned model, timed interleaved now;
#:   ``speedup_ci_low``, ``speedup_ci_high``: its bootstrap interval; ``within_noise``: the interval holds 1.0;
#: - ``speedup_rounds``: JSON list of each round's 1 / ratio; ``pairs``: rounds timed;
#: - ``latency_p50_ms``, ``reference_p50_ms``: the two absolute p50s of that session, ms;
#: - ``session``: which interleaved call (0, 1, ...) timed it: up to three candidates share one with the reference;
#: - ``source``: ``measured`` or ``simulated``; ``board``: the pinned board (farms), else empty;
#: - ``error``: why a method has no final figures (``kind: message``), else empty.
FINAL_COLUMNS = ["method", "seed", "run_id", "arch_signature", "spec", "macs", "params", "val_top1_search",
                 "latency_ratio_search", "finetune_epochs", "test_top1", "test_top1_drop", "speedup",
                 "speedup_ci_low", "speedup_ci_high", "within_noise", "speedup_rounds", "pairs", "latency_p50_ms",
                 "reference_p50_ms", "session", "source", "board", "error"]


def known_methods() -> tuple[str, ...]:
    """The search methods ``--methods`` may name (the search's registry)."""
    from harness.search.methods import METHODS

    return tuple(METHODS)


def parse_methods(text: str) -> tuple[str, ...]:
    """``reinforce,ppo,random`` → the method names, in order, each once.

    Raises:
        ValueError: an empty list, a repeated name, or an unknown name (listing the valid ones).
    """
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise ValueError("--methods is empty; name at least one method, e.g. --methods reinforce,random")
    known = known_methods()
    unknown = [m for m in names if m not in known]
    if unknown:
        raise ValueError(f"--methods: unknown method {unknown[0]!r}; valid: {', '.join(known)}")
    repeated = sorted({m for m in names if names.count(m) > 1})
    if repeated:
        raise ValueError(f"--methods names {repeated[0]!r} twice; name each method once")
    return tuple(names)


@dataclass(frozen=True, slots=True)
class CompareConfig:
    """What a comparison runs.

    Attributes:
        search: every search option shared by all runs (its ``method``, ``seed`` and ``budget``
            are set per run, ``early_stop`` is off: every run spends the whole budget; ``out`` is where ``compare-STAMP/`` goes; ``db`` and ``cache_dir`` are
            shared by all runs; ``finetune_epochs`` is the final step's, the same for every method).
        methods: method names, in table order (:func:`parse_methods`).
        seeds: search seeds per method: 0 .. seeds-1 (≥ 1).
        budget: evaluated candidates per run (≥ 1).
        final: run the final step (fine-tune and time every method's best).
    """

    search: Any
    methods: tuple[str, ...]
    seeds: int = 3
    budget: int = 50
    final: bool = True

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods is empty; name at least one method")
        for name, value in (("seeds", self.seeds), ("budget", self.budget)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for method in self.methods:  # e.g. an [agent] option one of the methods does not take: refused now
            try:
                self.run_config(method, 0, Path("."))
            except ValueError as exc:
                why = str(exc)
                raise ValueError(why if repr(method) in why else f"--methods {method}: {why}") from None

    def run_config(self, method: str, seed: int, runs_dir: Path):
        """The search options of one (method, seed) run."""
        return dataclasses.replace(self.search, method=method, seed=seed, budget=self.budget, early_stop=None,
                                   finetune_epochs=0, out=str(runs_dir))

    def to_dict(self) -> dict[str, Any]:
        """Plain values for ``config.json``."""
        search = self.search.to_dict() if hasattr(self.search, "to_dict") else dataclasses.asdict(self.search)
        return {"search": search, "methods": list(self.methods), "seeds": list(range(self.seeds)),
                "budget": self.budget, "final": self.final, "max_top1_drop": MAX_TOP1_DROP}


def check_options(search) -> None:
    """Refuse a model, target or device that every run would fail on, before any work.

    Raises:
        ValueError: an unknown model, target or device (or simulator profile), or a board device without
            an inventory; the message names the option.
    """
    from devices.registry import make_device
    from harness.compile.targets import resolve_target
    from harness.models import build_model

    build_model(search.model)
    resolve_target(search.target)
    if search.device.startswith(("ssh:", "farm:")):
        if not search.inventory:
            raise ValueError(f"--device {search.device} needs --inventory FILE (the farm's boards)")
    elif search.device == "local" or search.device.startswith("sim:"):
        if search.device != "local":
            make_device(search.device).close()  # an unknown simulator profile
    else:
        make_device(search.device)  # raises: the message lists the valid names


def _target(search) -> tuple[float, str]:
    """The latency target and its metric (``latency`` or ``macs``) of the search options."""
    return float(search.env.target_ratio), str(search.env.target_metric)


def _run_search(config, progress):
    from harness.search.run import run_search

    return run_search(config, progress=progress)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def run_compare(config: CompareConfig, *, progress: bool | str = "off",
                say: Callable[[str], None] | None = None) -> dict:
    """Run every (method, seed) at the budget, then write the table, the figures and the final step.

    Args:
        config: the comparison.
        progress: each run's progress (``bar``, ``lines``, ``off``; as for ``run_search``).
        say: called with one line per run started and finished (the CLI prints them on stderr).

    Returns:
        The summary (also ``summary.json``): ``compare_dir``, ``runs`` (records), ``table`` (rows),
        ``final`` (rows), ``latency_source``, ``files``.

    Raises:
        KeyboardInterrupt: Ctrl-C; the runs done so far are in ``runs.json`` and the store.
    """
    say = say or (lambda _m: None)
    t0 = time.perf_counter()
    search = config.search
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    cmp_dir = Path(search.out) / f"compare-{stamp}"
    suffix = 1
    while cmp_dir.exists():
        suffix += 1
        cmp_dir = Path(search.out) / f"compare-{stamp}-{suffix}"
    runs_dir = cmp_dir / "runs"
    runs_dir.mkdir(parents=True)
    (cmp_dir / "config.json").write_text(dumps(config.to_dict()))
    records: list[RunRecord] = []
    total = len(config.methods) * config.seeds
    for method in config.methods:
        for seed in range(config.seeds):
            before = {p.name for p in runs_dir.iterdir()}
            say(f"[{len(records) + 1}/{total}] {method}, seed {seed}: {config.budget} candidates")
            start = time.perf_counter()
            try:
                summary = _run_search(config.run_config(method, seed, runs_dir), progress)
                rec = RunRecord(method, seed, summary["run_id"], "finished", wall_s=time.perf_counter() - start)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                new = sorted({p.name for p in runs_dir.iterdir()} - before)
                rec = RunRecord(method, seed, new[0] if new else None, "failed", error=_one_line(exc),
                                wall_s=time.perf_counter() - start)
                log.warning("compare: %s seed %d failed: %s", method, seed, rec.error, exc_info=True)
            records.append(rec)
            (cmp_dir / "runs.json").write_text(dumps([r.to_dict() for r in records]))
            say(f"[{len(records)}/{total}] {method}, seed {seed}: "
                + (f"{rec.run_id} ({rec.wall_s:.0f} s)" if rec.status == "finished" else f"FAILED {rec.error}"))
    return _report(config, cmp_dir, records, t0, say)


def _report(config: CompareConfig, cmp_dir: Path, records: list[RunRecord], t0: float,
            say: Callable[[str], None]) -> dict:
    """The table, the figures and the final step of a comparison whose runs are done."""
    from harness.store import ResultsStore

    search = config.search
    target, metric = _target(search)
    store = ResultsStore(search.db)
    try:
        rows_of = {r.run_id: store.candidates(r.run_id) for r in records if r.run_id is not None}
    finally:
        store.close()
    ok_runs = [r for r in records if r.status == "finished" and r.run_id is not None]
    # the sources of what is reported: a hybrid run's predicted rows only screened (compare_report.reported_rows)
    sources = sorted({row.get("source") or "?" for r in ok_runs for row in reported_rows(rows_of[r.run_id])
                      if row.get("episode", 0) >= 0 and not row.get("error_kind") and row.get("latency_ratio")
                      is not None})
    source = "+".join(sources) if sources else "no latency"
    if len(sources) > 1:  # e.g. a farm run that fell back to the simulator: said on every figure
        source = f"MIXED ({source}: not comparable)"
    table = method_table(records, rows_of, methods=config.methods, latency_target=target, target_metric=metric)
    md = {"source": source, "latency_target": target, "target_metric": metric, "budget": config.budget,
          "seeds": config.seeds}
    write_table(table, cmp_dir, **md)
    rows_by_method = {m: [row for r in ok_runs if r.method == m for row in rows_of[r.run_id]] for m in config.methods}
    # validation images per candidate: eval_samples, capped by subset (which caps the validation split)
    caps = [n for n in (search.eval_samples, search.subset) if n]
    val_images = min(caps) if caps else None
    plot_fronts(rows_by_method, cmp_dir / "fronts.png", title=cmp_dir.name, source=source, val_images=val_images)
    curves = {m: [learning_curve(rows_of[r.run_id]) for r in ok_runs if r.method == m] for m in config.methods}
    plot_learning_curves(curves, cmp_dir / "learning_curves.png",
                         title=f"{cmp_dir.name}: budget {config.budget} candidates, {source} latency")
    final_rows: list[dict] = []
    final_error = None
    if config.final:
        best = best_runs(records, rows_of, methods=config.methods, latency_target=target, target_metric=metric)
        say(f"final step: {len(best)} method(s) with a best model; fine-tuning each "
            f"{search.finetune_epochs} epoch(s), then timing them against the unpruned model")
        try:
            final_rows = final_step(search, {m: (rec, fig.best_row) for m, (rec, fig) in best.items()}, cmp_dir)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            final_error = _one_line(exc)
            log.warning("compare: the final step failed: %s", final_error, exc_info=True)
        _write_final(final_rows, cmp_dir)
    md_text = table_markdown(table, **md) + "\n" + final_markdown(final_rows, final_error,
                                                                  epochs=search.finetune_epochs,
                                                                  done=config.final)
    (cmp_dir / "table.md").write_text(md_text)
    summary = {"compare_dir": str(cmp_dir), "runs": [r.to_dict() for r in records],
               "table": table.to_dict("records"), "final": final_rows, "final_error": final_error,
               "latency_source": source, "budget": config.budget, "seeds": config.seeds,
               "methods": list(config.methods), "wall_s": round(time.perf_counter() - t0, 3),
               "files": sorted(p.name for p in cmp_dir.iterdir() if p.is_file())}
    (cmp_dir / "summary.json").write_text(dumps(summary))
    summary["files"] = sorted(p.name for p in cmp_dir.iterdir() if p.is_file())
    summary["markdown"] = md_text
    return summary


def _write_final(rows: list[dict], cmp_dir: Path) -> None:
    import pandas as pd

    pd.DataFrame(rows, columns=FINAL_COLUMNS).to_csv(cmp_dir / "final.csv", index=False)


def final_markdown(rows: list[dict], error: str | None, *, epochs: int, done: bool = True) -> str:
    """The final step as Markdown (appended to ``table.md``)."""
    if not done:
        return "Final step: not run.\n"
    if error is not None:
        return f"Final step failed: {error}\n"
    if not rows:
        return "Final step: no method had a best model.\n"
    src = sorted({r["source"] for r in rows if r.get("source")})
    header = (f"Final step: each method's best fine-tuned {epochs} epoch(s), then timed against the unpruned model "
              f"({'+'.join(src) or 'no latency'}; interleaved, one board, up to three candidates per session). "
              "Speedup = 1 / median ratio [bootstrap interval]; test top-1 after fine-tuning.")
    lines = [header, "", "| method | seed | spec | test top-1 | speedup | interval | rounds | within noise | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rounds = json.loads(r["speedup_rounds"]) if r.get("speedup_rounds") else []
        rr = f"{min(rounds):.3f}–{max(rounds):.3f} ({len(rounds)})" if rounds else "–"
        interval = (f"[{r['speedup_ci_low']:.3f}, {r['speedup_ci_high']:.3f}]"
                    if r.get("speedup_ci_low") is not None else "–")
        noise = ("–" if r.get("within_noise") is None else "n/a (simulated: no noise)"
                 if r.get("source") == "simulated" else "yes" if r["within_noise"] else "no")
        test = "–" if r.get("test_top1") is None else f"{r['test_top1']:.4f}"
        speedup = "–" if r.get("speedup") is None else f"{r['speedup']:.3f}"
        seed = "" if r.get("seed") is None else r["seed"]
        lines.append(f"| {r['method']} | {seed} | {r.get('arch_signature') or '–'} | {test} | {speedup} | {interval} "
                     f"| {rr} | {noise} | {(r.get('error') or '').replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def final_step(search, best: dict[str, tuple[RunRecord, dict]], cmp_dir: Path) -> list[dict]:
    """Fine-tune every method's best alike, then time all of them against the unpruned model.

    Each best architecture is pruned from the one base model (``search.base_seed``), fine-tuned
    ``search.finetune_epochs`` with the same seed, evaluated on the test split, exported and
    compiled like a candidate, then timed: the device is pinned to one board for all of them
    (``Device.pinned``) and each interleaved session times the unpruned model with up to three
    candidates (:meth:`harness.pipeline.Pipeline.measure_ratios`).

    Args:
        search: the comparison's search options.
        best: method → (its best run, the store row of its best candidate), in table order.
        cmp_dir: the comparison's directory (ONNX files and artifacts of this step go to ``final/``).

    Returns:
        Rows with :data:`FINAL_COLUMNS`: the unpruned model first, then each method (a failure of
        one method's fine-tune, build or measurement is its ``error``).

    Raises:
        ValueError, harness.data.DatasetError: bad options (not expected: the runs used them).
        devices.base.DeviceUnavailable: the device does not answer at all.
    """
    import torch

    from devices.base import MeasureConfig
    from devices.interleaved import InterleavedConfig
    from devices.registry import make_device
    from harness.compile.targets import resolve_target
    from harness.compile.tuning import TuningConfig
    from harness.data import load_dataset
    from harness.paths import default_cache_dir
    from harness.pipeline import Pipeline, PipelineError, StoreKey
    from harness.pruning import ArchSpec, count_macs_params, find_groups, full_spec
    from harness.search.candidate import CandidateEvaluator
    from harness.store import ResultsStore
    from harness.train import evaluate, finetune, load_or_train_baseline

    s = search
    data_root = Path(s.data_root) if s.data_root else None
    cache_dir = Path(s.cache_dir) if s.cache_dir else default_cache_dir()
    splits = load_dataset(s.dataset, root=data_root, seed=s.base_seed, subset=s.subset)
    base_model, _ = load_or_train_baseline(s.model, s.dataset, seed=s.base_seed, epochs=s.train_epochs,
                                           cache_dir=cache_dir, data_root=data_root, progress=False, splits=splits)
    input_shape = (1, *splits.input_shape)
    groups = find_groups(base_model, torch.zeros(input_shape))
    base_spec = full_spec(groups)
    base_test = evaluate(base_model, splits.test)
    base_macs, base_params = count_macs_params(base_model, input_shape)
    rows: list[dict] = [{"method": "unpruned", "arch_signature": base_spec.signature(),
                         "spec": json.dumps(list(base_spec.channels)), "macs": base_macs, "params": base_params,
                         "finetune_epochs": 0, "test_top1": base_test, "test_top1_drop": 0.0,
                         "latency_ratio_search": 1.0}]
    store = ResultsStore(s.db)
    device = make_device(s.device, inventory=s.inventory, fallback="fail", target=s.target)
    try:
        pipeline = Pipeline.for_device(
            device, resolve_target(s.target), TuningConfig(trials_per_task=s.tune_trials),
            MeasureConfig(backend=s.backend, number=0, repeat=s.repeat, min_repeat_ms=20.0), cache_dir, store,
            ratio_config=InterleavedConfig(backend=s.backend, number=0, rel_width=s.ratio_width,
                                           max_pairs=s.max_pairs, seed=s.base_seed))
        ev = CandidateEvaluator(model_name=s.model, base_model=base_model, groups=groups, input_shape=input_shape,
                                val_data=splits.val, pipeline=pipeline, work_dir=cmp_dir / "final",
                                eval_samples=s.eval_samples or None, importance=s.importance)
        err = ev.set_reference(base_spec, base_model)
        if err is not None:
            raise RuntimeError(f"the unpruned {s.model} could not be compiled: {err.kind}: {err.message}")
        todo = []  # (row, prepared)
        for method, (rec, cand) in best.items():
            row = {"method": method, "seed": rec.seed, "run_id": rec.run_id, "arch_signature": cand["arch_signature"],
                   "spec": cand["spec_json"], "val_top1_search": cand["top1"],
                   "latency_ratio_search": cand["latency_ratio"], "finetune_epochs": s.finetune_epochs}
            rows.append(row)
            try:
                spec = ArchSpec(tuple(json.loads(cand["spec_json"])))
                model = ev.prune(spec)
                if s.finetune_epochs > 0:
                    finetune(model, splits, epochs=s.finetune_epochs, seed=s.base_seed)
                row["test_top1"] = evaluate(model, splits.test)
                row["test_top1_drop"] = base_test - row["test_top1"]
                row["macs"], row["params"] = count_macs_params(model, input_shape)
                prepared = ev.prepare(spec, model)
            except Exception as exc:  # noqa: BLE001 - one method's failure is its row's
                row["error"] = _one_line(exc)
                continue
            if isinstance(prepared, PipelineError):
                row["error"] = f"{prepared.kind}: {prepared.message}"
                continue
            todo.append((row, prepared))
        with device.pinned() as board:
            for session, at in enumerate(range(0, len(todo), 3)):
                chunk = todo[at:at + 3]
                keys = [StoreKey(s.model, r["arch_signature"], {"command": "compare", "final": True,
                                                                "method": r["method"], "compare": cmp_dir.name})
                        for r, _ in chunk]
                results = pipeline.measure_ratios(ev.reference, [p for _, p in chunk], keys,
                                                  StoreKey(s.model, base_spec.signature(),
                                                           {"command": "compare", "final": True}))
                for i, ((row, _), r) in enumerate(zip(chunk, results)):
                    row.update(session=session, board=board)
                    if not r.ok:
                        row["error"] = f"{r.error.kind}: {r.error.message}"
                        continue
                    q = r.ratio
                    per_round = (list(r.measurement.round_ratios[i]) if r.measurement is not None
                                 else list(q.ratios))
                    row.update(speedup=1.0 / q.median, speedup_ci_low=1.0 / q.ci_high, speedup_ci_high=1.0 / q.ci_low,
                               within_noise=bool(q.ci_low <= 1.0 <= q.ci_high),
                               speedup_rounds=json.dumps([1.0 / x for x in per_round]),
                               pairs=r.measurement.pairs if r.measurement is not None else None,
                               latency_p50_ms=r.candidate_p50_ms, reference_p50_ms=r.reference_p50_ms,
                               source=r.source)
    finally:
        device.close()
        store.close()
    return rows


def print_summary(summary: dict, file=None) -> None:
    """The table (and the final step) as Markdown, and the comparison's directory, on ``file`` (stdout)."""
    file = file or sys.stdout
    print(summary["markdown"], file=file)
    print(f"comparison directory: {summary['compare_dir']}", file=file)
