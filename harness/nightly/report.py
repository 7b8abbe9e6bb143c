"""Static HTML report of the results store, and CSV/Parquet export (issue 6).

``hilprune report [--db PATH] --out DIR`` writes::

    DIR/index.html          opens in a browser from disk (no server, no JavaScript, no network)
    DIR/plots/*.png         matplotlib (Agg) figures, referenced by relative paths
    DIR/data/bench_results.csv, measurements.csv, candidates.csv, runs.csv, bench_runs.csv
    DIR/data/*.parquet      the same tables, only when pyarrow is installed (it is not a dependency)

The report has: the latest nightly suite run's comparison (:mod:`harness.nightly.regress`)
with regressions first; per history key (benchmark, device, target, backend,
tuning, source) the p50 latency of every suite run as a line with the p50–p90
band shaded, regressions marked with red triangles and improvements with green
ones, failed runs as grey crosses on the time axis; in a suite with a reference
model, a second panel beside it holds the history of the benchmark's ratio to
the reference (median and bootstrap interval per run, measured interleaved in
that run; flags by the ratio rule), and the table gives each result's verdict
(``machine_night``, ``model_regression``, ... — :mod:`harness.nightly.regress`). Both cover suite runs
(``hilprune bench --suite``, the ``bench_runs`` table) only; single-model
``hilprune bench`` measurements (``measurements`` rows whose metadata command is
``bench``) have no history key to judge against and are listed in a table of
their own (the latest :data:`BENCH_ROWS`). Last, for every search run in the
store with measured candidates, its Pareto front as ``pareto.png`` draws it
(:mod:`harness.search.pareto`): *validation* top-1 during the search, before
fine-tuning (higher is better) against search-time latency p50 in ms (lower is
better), the chosen best model starred, with its final test top-1 after
fine-tuning and re-measured latency from the run's summary beside it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from harness.nightly.regress import (EXIT_VERDICTS, CompareRule, Comparison, compare_all, history_key,
                                     metadata_changes)
from harness.search import pareto as search_pareto

logger = logging.getLogger(__name__)

__all__ = ["BENCH_ROWS", "export_tables", "write_report"]

#: Single-model ``hilprune bench`` measurements listed in the report (the latest; all are in data/measurements.csv).
BENCH_ROWS = 20


def export_tables(store, out_dir: Path) -> dict[str, list[str]]:
    """Write the store's tables as CSV (always) and Parquet (when pyarrow imports) through pandas.

    Returns:
        ``{"csv": [paths], "parquet": [paths], "parquet_skipped": reason or absent}``.
    """
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {
        "bench_results": store.bench_results(),
        "bench_runs": store.query("SELECT * FROM bench_runs ORDER BY created_at"),
        "measurements": store.query("SELECT * FROM measurements ORDER BY id"),
        "latency_ratios": store.query("SELECT * FROM latency_ratios ORDER BY id"),
        "runs": store.query("SELECT * FROM runs ORDER BY created_at"),
        "candidates": store.query("SELECT * FROM candidates ORDER BY run_id, episode, step"),
    }
    try:
        import pyarrow  # noqa: F401

        parquet = True
    except ImportError:
        parquet = False
    written: dict[str, Any] = {"csv": [], "parquet": []}
    for name, rows in tables.items():
        frame = pd.DataFrame(rows)
        for col in ("created_at", "finished_at", "run_created_at"):
            if col in frame:
                frame[col.replace("_at", "_utc")] = pd.to_datetime(frame[col], unit="s", utc=True)
        path = out_dir / f"{name}.csv"
        frame.to_csv(path, index=False)
        written["csv"].append(str(path))
        if parquet:
            frame.to_parquet(out_dir / f"{name}.parquet", index=False)
            written["parquet"].append(str(out_dir / f"{name}.parquet"))
    if not parquet:
        written["parquet_skipped"] = "pyarrow is not installed; CSV only"
    return written


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "__".join(parts))[:150]


def _history_plot(key: tuple, rows: list[dict], verdicts: dict[int, Comparison], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    when = lambda r: dt.datetime.fromtimestamp(r["run_created_at"], tz=dt.timezone.utc)  # noqa: E731
    with_ratio = [r for r in ok if r.get("latency_ratio") is not None]
    if with_ratio:
        fig, (ax, rax) = plt.subplots(1, 2, figsize=(11, 3.2), dpi=100, width_ratios=(3, 2))
        x = [when(r) for r in with_ratio]
        med = [r["latency_ratio"] for r in with_ratio]
        lo = [m - r["latency_ratio_ci_low"] for m, r in zip(med, with_ratio)]
        hi = [r["latency_ratio_ci_high"] - m for m, r in zip(med, with_ratio)]
        rax.errorbar(x, med, yerr=[lo, hi], fmt="o-", color="tab:purple", ms=3, lw=1.2, capsize=2,
                     label="ratio (interval)")
        for status, marker, color in (("regression", "^", "tab:red"), ("improvement", "v", "tab:green")):
            pts = [(when(r), r["latency_ratio"]) for r in with_ratio if verdicts.get(r["id"]) and
                   verdicts[r["id"]].ratio is not None and verdicts[r["id"]].ratio.status == status]
            if pts:
                rax.plot([p[0] for p in pts], [p[1] for p in pts], marker, color=color, ms=9, label=status)
        rax.set_title(f"ratio to the reference {with_ratio[-1]['reference_benchmark']}", fontsize=10)
        rax.set_ylabel("latency ratio (interleaved)")
        rax.grid(alpha=0.3)
        rax.legend(fontsize=7, loc="lower right")
    else:
        fig, ax = plt.subplots(figsize=(7.5, 3.2), dpi=100)
    if ok:
        x = [when(r) for r in ok]
        p50 = [r["latency_p50_ms"] for r in ok]
        p90 = [r["latency_p90_ms"] if r["latency_p90_ms"] is not None else r["latency_p50_ms"] for r in ok]
        ax.fill_between(x, p50, p90, color="tab:blue", alpha=0.2, label="p50–p90")
        ax.plot(x, p50, "o-", color="tab:blue", ms=3, lw=1.2, label="p50")
        for status, marker, color in (("regression", "^", "tab:red"), ("improvement", "v", "tab:green")):
            pts = [(when(r), r["latency_p50_ms"]) for r in ok if verdicts.get(r["id"]) and
                   verdicts[r["id"]].status == status]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, color=color, ms=9, label=status)
        ax.set_ylim(bottom=0)
    if failed:
        ax.plot([when(r) for r in failed], [0] * len(failed), "x", color="grey", ms=8, clip_on=False,
                label="failed")
    bench, device, target, backend, _tuning, source = key
    ax.set_title(f"{bench} on {device} ({target}, {backend}, {source})", fontsize=10)
    ax.set_ylabel("latency, ms")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(x: Any, spec: str = ".3f") -> str:
    if x is None:
        return "–"
    return format(x, spec) if isinstance(x, float) else html.escape(str(x))


def _count(n: int, noun: str, *, none: str | None = None) -> str:
    """``3 searches``, ``1 search``, ``no searches`` (or ``none``): a count in words, never ``None``."""
    plural = noun + ("es" if noun.endswith(("s", "sh", "ch")) else "s")
    if n == 0:
        return none or f"no {plural}"
    return f"{n} {noun if n == 1 else plural}"


def _json(text: str | None) -> dict:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _tuning(m: dict) -> str:
    """A measurement's tuning in words: ``8 trials/task``, ``untuned``, or ``–`` for ONNX Runtime (not compiled)."""
    if m["backend"] == "onnxruntime":
        return "–"
    if m["tuning_key"] == "untuned":
        return "untuned"
    trials = re.match(r"ms:t(\d+):", m["tuning_key"] or "")
    return f"{trials.group(1)} trials/task" if trials else str(m["tuning_key"])[:40]


def _tuned(epochs: int | None) -> str:
    if epochs is None:
        return "at the end of the run"
    return "without fine-tuning" if epochs == 0 else f"after {epochs} fine-tuning epoch{'s' if epochs != 1 else ''}"


def _single_bench_measurements(store) -> list[dict]:
    """``measurements`` rows written by a single-model ``hilprune bench`` (metadata command ``bench``), oldest first."""
    rows = store.query("SELECT id, created_at, model, device, target, backend, tuning_key, source, latency_p50_ms, "
                       "latency_p90_ms, latency_cov, n, unstable, metadata_json FROM measurements WHERE metadata_json "
                       "LIKE '%\"command\"%' ORDER BY id")
    return [r for r in rows if _json(r.pop("metadata_json")).get("command") == "bench"]


_CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1100px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}td.l{text-align:left}
tr.regression td{background:#fde2e2}tr.improvement td{background:#e2f7e2}tr.failed td{background:#eee}
img{border:1px solid #ddd;margin:4px 0}"""


def write_report(store_path: str | Path, out_dir: str | Path, rule: CompareRule = CompareRule()) -> dict[str, Any]:
    """Write ``out_dir/index.html`` with its plots and data exports.

    Args:
        store_path: the results store; it must exist (a report of nothing is a mistake).
        out_dir: created if needed; files there of the same names are replaced.
        rule: the regression rule of the flags (as ``bench compare``).

    Returns:
        ``{"index": path, "plots": [paths], "regressions": [...], "exports": {...}}``.

    Raises:
        FileNotFoundError: ``store_path`` does not exist.
    """
    from harness.store import ResultsStore

    store_path, out = Path(store_path), Path(out_dir)
    if not store_path.is_file():
        from harness.store import check_store_file

        check_store_file(store_path)
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    store = ResultsStore(store_path)
    try:
        results = store.bench_results()
        bench_runs = store.bench_runs()
        verdicts_by_run = compare_all(results, rule)
        searches = store.query("SELECT run_id, model, dataset, device, target, status, created_at, config_json, "
                               "summary_json FROM runs ORDER BY created_at")
        cands = store.query("SELECT run_id, episode, step, top1, latency_p50_ms, arch_signature, macs, source, "
                            "error_kind FROM candidates ORDER BY run_id, episode, step")
        singles = _single_bench_measurements(store)
        exports = export_tables(store, out / "data")
    finally:
        store.close()

    verdict_of: dict[int, Comparison] = {}
    for r_id, verdicts in verdicts_by_run.items():
        rows = [r for r in results if r["run_id"] == r_id]
        verdict_of.update({r["id"]: v for r, v in zip(rows, verdicts)})
    latest = bench_runs[-1]["run_id"] if bench_runs else None
    latest_verdicts = verdicts_by_run.get(latest, []) if latest else []

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>hilprune report</title>"
             f"<style>{_CSS}</style></head><body><h1>hilprune report</h1>",
             f"<p>store <code>{html.escape(str(store_path))}</code>; generated "
             f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}; "
             f"{_count(len(bench_runs), 'nightly suite run', none='no nightly suite runs')}, "
             f"{_count(len(singles), 'single-model bench measurement')}, {_count(len(searches), 'search')}. "
             f"Regression rule: band = max({rule.threshold:g}, {rule.k:g} × noise), "
             f"baseline = median p50 of the last {rule.baseline_runs} runs (see harness/nightly/regress.py).</p>"]
    plots: list[str] = []
    regressions = [v for v in latest_verdicts if v.verdict in EXIT_VERDICTS]
    has_ratio = any(v.ratio is not None for v in latest_verdicts)
    if latest:
        parts.append(f"<h2>Latest nightly suite run {html.escape(str(latest))}</h2>")
        meta = bench_runs[-1]["metadata"]
        git = meta.get("suite_git") or {}
        parts.append(f"<p>suite {html.escape(bench_runs[-1]['suite_name'])}, status "
                     f"{html.escape(bench_runs[-1]['status'])}; TVM {_fmt(meta.get('tvm_version'))}, Python "
                     f"{_fmt(meta.get('python_version'))}, hilprune {_fmt(meta.get('hilprune_version'))}, suite "
                     f"commit {_fmt(git.get('commit', 'none'))}{' (dirty)' if git.get('dirty') else ''}. "
                     f"<b>{len(regressions)} regression(s)</b>.</p>")
        if len(bench_runs) > 1:
            changed = metadata_changes(bench_runs[-2]["metadata"], meta)
            if changed:
                parts.append("<p>Changed since the previous run: " + html.escape(
                    "; ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())) + "</p>")
        ratio_head = ("<th>ratio to ref.</th><th>ratio interval</th><th>ratio baseline</th><th>ratio Δ</th>"
                      "<th>ratio band</th><th>ref. p50 Δ</th>") if has_ratio else ""
        parts.append("<table><tr><th>verdict</th><th>benchmark</th><th>device</th><th>target</th><th>backend</th>"
                     "<th>p50 ms</th><th>baseline ms</th><th>Δ</th><th>band</th><th>history</th>"
                     f"{ratio_head}<th>note</th></tr>")
        rank = {"model_regression": 0, "both": 0, "regression": 0, "failed": 1, "machine_night": 2,
                "absolute_only": 2, "improvement": 3, "new": 4, "ok": 5, "reference": 6}
        for v in sorted(latest_verdicts, key=lambda v: (rank.get(v.verdict, 5), v.benchmark, v.device)):
            note = v.error or ("unstable" if v.unstable else "")
            ratio_cells = ""
            if has_ratio:
                r = v.ratio
                if r is not None and r.error:
                    note = (note + "; " if note else "") + f"no ratio: {r.error}"
                interval = f"[{r.ci_low:.4f}, {r.ci_high:.4f}]" if r is not None and r.ci_low is not None else None
                ratio_cells = "".join(f"<td>{c}</td>" for c in (
                    _fmt(r.latency_ratio if r else None, '.4f'), _fmt(interval), _fmt(r.baseline_ratio if r else None,
                                                                                       '.4f'),
                    _fmt(r.delta if r else None, '+.1%'), _fmt(r.band if r else None, '.1%'),
                    _fmt(v.reference_delta, '+.1%')))
            css = "regression" if v.verdict in EXIT_VERDICTS else v.status
            parts.append(
                f"<tr class='{css}'><td class='l'>{v.verdict.upper() if v.verdict in EXIT_VERDICTS else v.verdict}"
                f"</td><td class='l'>{html.escape(v.benchmark)}</td><td class='l'>{html.escape(v.device)}</td>"
                f"<td class='l'>{html.escape(v.target)}</td><td class='l'>{html.escape(v.backend)}</td>"
                f"<td>{_fmt(v.latency_p50_ms, '.4f')}</td><td>{_fmt(v.baseline_p50_ms, '.4f')}</td>"
                f"<td>{_fmt(v.delta, '+.1%')}</td><td>{_fmt(v.band, '.1%')}</td><td>{v.history_n}</td>"
                f"{ratio_cells}<td class='l'>{html.escape(note or '')}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<h2>Nightly suite runs</h2><p>No nightly suite runs in this store "
                     "(<code>hilprune bench --suite FILE</code> makes them), so there is no regression table and no "
                     "latency history: both are built from suite runs only.</p>")

    series: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        series[history_key(r)].append(r)
    if series:
        parts.append("<h2>Latency history (nightly suite runs)</h2>")
    for key in sorted(series):
        name = _slug("history", *key[:4], key[5]) + f"-{hashlib.sha256(key[4].encode()).hexdigest()[:8]}.png"
        _history_plot(key, series[key], verdict_of, plots_dir / name)
        plots.append(str(plots_dir / name))
        n_reg = sum(1 for r in series[key] if verdict_of.get(r["id"]) and verdict_of[r["id"]].status == "regression")
        parts.append(f"<h3>{html.escape(key[0])} — {html.escape(key[1])} ({html.escape(key[2])}, "
                     f"{html.escape(key[3])}, {html.escape(key[5])}, tuning {html.escape(key[4][:40])})"
                     f"{f' — {n_reg} regression(s) flagged' if n_reg else ''}</h3>"
                     f"<img src='plots/{html.escape(name)}' alt='latency history of {html.escape(key[0])} on "
                     f"{html.escape(key[1])}'>")

    if singles:
        shown = singles[-BENCH_ROWS:]
        more = f"; the latest {len(shown)} here, all in data/measurements.csv" if len(shown) < len(singles) else ""
        parts.append(f"<h2>Single-model bench measurements</h2><p>{_count(len(singles), 'measurement')} by "
                     "<code>hilprune bench --model/--onnx</code> (one model, no suite). They are kept in the store "
                     "but are not in the regression table or the latency history, which follow nightly suite runs "
                     f"only{more}.</p><table><tr><th>measured (UTC)</th><th>model</th><th>device</th><th>target</th>"
                     "<th>backend</th><th>tuning</th><th>source</th><th>p50 ms</th><th>p90 ms</th><th>CoV</th>"
                     "<th>n</th><th>note</th></tr>")
        for m in reversed(shown):
            when = dt.datetime.fromtimestamp(m["created_at"], tz=dt.timezone.utc)
            parts.append(
                f"<tr><td class='l'>{when:%Y-%m-%d %H:%M:%S}</td><td class='l'>{html.escape(m['model'])}</td>"
                f"<td class='l'>{html.escape(m['device'])}</td><td class='l'>{html.escape(m['target'])}</td>"
                f"<td class='l'>{html.escape(m['backend'])}</td><td class='l'>{html.escape(_tuning(m))}</td>"
                f"<td class='l'>{html.escape(m['source'])}</td><td>{_fmt(m['latency_p50_ms'], '.4f')}</td>"
                f"<td>{_fmt(m['latency_p90_ms'], '.4f')}</td><td>{_fmt(m['latency_cov'], '.1%')}</td>"
                f"<td>{_fmt(m['n'])}</td><td class='l'>{'unstable' if m['unstable'] else ''}</td></tr>")
        parts.append("</table>")

    parts.append(
        "<h2>Search Pareto fronts</h2><p>Each run's front as its <code>pareto.png</code> and <code>pareto.csv</code> "
        "draw it: every candidate's <b>validation</b> top-1 during the search (on the run's "
        "<code>eval_samples</code> validation images, before fine-tuning) against its latency p50 measured during "
        "the search. The table printed at the end of <code>hilprune search</code> gives other numbers for the "
        "chosen model and the unpruned one: <b>test</b> top-1 after fine-tuning and latencies re-measured at the "
        "end; they are in the line under each plot.</p>")
    by_search: dict[str, list[dict]] = defaultdict(list)
    for c in cands:
        by_search[c["run_id"]].append(c)
    n_shown = 0
    for s in searches:
        rows = by_search.get(s["run_id"], [])
        usable = [c for c in rows if c["top1"] is not None and c["latency_p50_ms"] is not None and not c["error_kind"]]
        if not usable:
            continue
        n_shown += 1
        config, summary = _json(s["config_json"]), _json(s["summary_json"])
        best, base = summary.get("best") or {}, summary.get("baseline") or {}
        eval_samples, subset = config.get("eval_samples"), config.get("subset")
        # 0, or a subset smaller than eval_samples (it caps the validation split too): the whole validation split
        val_images = eval_samples if eval_samples and not (subset and subset < eval_samples) else None
        front = search_pareto.pareto_front(usable)
        name = _slug("pareto", s["run_id"]) + ".png"
        search_pareto.plot_pareto(usable, front, plots_dir / name, title=f"search {s['run_id']}",
                                  val_images=val_images, best_signature=best.get("arch_signature"),
                                  best_test_top1=best.get("test_top1", best.get("top1")), finetune_epochs=best.get("finetune_epochs"),
                                  baseline_final_p50_ms=base.get("latency_p50_ms"))
        plots.append(str(plots_dir / name))
        # counted as the CLI counts them ("N candidates": the search's steps), the unpruned model apart
        has_base = any(c["episode"] == -1 for c in usable)
        n_ok = len(usable) - has_base
        n_failed = sum(1 for c in rows if c["episode"] >= 0) - n_ok
        kind = "simulated" if any(c["source"] == "simulated" for c in usable) else "measured"
        counts = (f"{n_ok} {kind} candidate{'s' if n_ok != 1 else ''}{' + the unpruned model' if has_base else ''}"
                  f"{f' ({n_failed} more failed)' if n_failed else ''}")
        parts.append(f"<h3>{html.escape(s['run_id'])}: {html.escape(s['model'])} on {html.escape(s['device'])} "
                     f"({html.escape(s['target'])}), {counts}, {len(front)} on the front</h3>"
                     f"<img src='plots/{html.escape(name)}' alt='Pareto front of {html.escape(s['run_id'])}'>")
        if best:
            parts.append(
                f"<p>Chosen model (starred) <code>{html.escape(str(best.get('arch_signature')))}</code>: test top-1 "
                f"{_fmt(best.get('test_top1', best.get('top1')), '.4f')} {_tuned(best.get('finetune_epochs'))} "
                f"(validation top-1 during the search {_fmt(best.get('val_top1_search', best.get('val_top1')), '.4f')}"
                f"), p50 {_fmt(best.get('latency_p50_ms'), '.3f')} ms re-measured at the end "
                f"({_fmt(best.get('latency_p50_ms_search'), '.3f')} ms during the search), speedup "
                f"{_fmt(best.get('speedup'), '.2f')}x. Unpruned: test top-1 {_fmt(base.get('test_top1', base.get('top1')), '.4f')}, p50 "
                f"{_fmt(base.get('latency_p50_ms'), '.3f')} ms re-measured at the end "
                f"({_fmt(base.get('latency_p50_ms_search'), '.3f')} ms during the search).</p>")
        elif s["status"] != "finished":
            parts.append(f"<p>Run {html.escape(s['status'])}: no model chosen yet.</p>")
        parts.append("<table><tr><th>latency p50 ms (search)</th><th>validation top-1 (search)</th><th>MACs</th>"
                     "<th>architecture</th><th>note</th></tr>")
        for c in front:
            note = ", ".join(n for n, on in (("unpruned", c["episode"] == -1),
                                             ("chosen (starred)", c["arch_signature"] == best.get("arch_signature")))
                             if on)
            parts.append(f"<tr><td>{c['latency_p50_ms']:.4f}</td><td>{c['top1']:.4f}</td><td>{_fmt(c['macs'], ',')}"
                         f"</td><td class='l'>{html.escape(str(c['arch_signature']))[:120]}</td>"
                         f"<td class='l'>{note}</td></tr>")
        parts.append("</table>")
    if not n_shown:
        parts.append("<p>No search run with measured candidates in this store.</p>")

    links = " ".join(f"<a href='data/{Path(p).name}'>{Path(p).name}</a>" for p in exports["csv"] + exports["parquet"])
    note = f" ({exports['parquet_skipped']})" if "parquet_skipped" in exports else ""
    parts.append(f"<h2>Data</h2><p>{links}{html.escape(note)}</p></body></html>")
    index = out / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    logger.info("report %s: %d plots", index, len(plots))
    return {"index": str(index), "plots": plots, "regressions": [v.as_dict() for v in regressions],
            "exports": exports, "latest_run": latest}
