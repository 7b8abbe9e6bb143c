"""Static HTML report of the results store, and CSV/Parquet export (issue 6).

``hilprune report [--db PATH] --out DIR`` writes::

    DIR/index.html          opens in a browser from disk (no server, no JavaScript, no network)
    DIR/plots/*.png         matplotlib (Agg) figures, referenced by relative paths
    DIR/data/bench_results.csv, measurements.csv, candidates.csv, runs.csv, bench_runs.csv
    DIR/data/*.parquet      the same tables, only when pyarrow is installed (it is not a dependency)

The report has: the latest bench run's comparison (:mod:`harness.nightly.regress`)
with regressions first; per history key (benchmark, device, target, backend,
tuning, source) the p50 latency of every run as a line with the p50–p90 band
shaded, regressions marked with red triangles and improvements with green
ones, failed runs as grey crosses on the time axis; and for every search run
in the store with measured candidates, its Pareto front of test top-1
(higher is better) against latency p50 in ms (lower is better).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from harness.nightly.regress import CompareRule, Comparison, compare_all, history_key, metadata_changes

logger = logging.getLogger(__name__)

__all__ = ["export_tables", "pareto_front", "write_report"]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points of (latency_ms, top1), sorted by latency.

    A point is dominated when another is no slower and no less accurate and
    strictly better in one of the two.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_top1 = [], float("-inf")
    for i in order:
        if points[i][1] > best_top1:
            front.append(i)
            best_top1 = points[i][1]
    return front


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


def _pareto_plot(run_id: str, pts: list[tuple[float, float]], front: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], ".", color="tab:grey", alpha=0.6, label="candidates")
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "o-", color="tab:red", drawstyle="steps-post",
            label="Pareto front")
    ax.set_xlabel("latency p50, ms")
    ax.set_ylabel("top-1")
    ax.set_title(f"search {run_id}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(x: Any, spec: str = ".3f") -> str:
    if x is None:
        return "–"
    return format(x, spec) if isinstance(x, float) else html.escape(str(x))


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
        raise FileNotFoundError(f"results store {str(store_path)!r} not found; pass --db PATH")
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    store = ResultsStore(store_path)
    try:
        results = store.bench_results()
        bench_runs = store.bench_runs()
        verdicts_by_run = compare_all(results, rule)
        searches = store.query("SELECT run_id, model, dataset, device, target, status, created_at FROM runs "
                               "ORDER BY created_at")
        cands = store.query("SELECT run_id, top1, latency_p50_ms, arch_signature, macs FROM candidates WHERE "
                            "top1 IS NOT NULL AND latency_p50_ms IS NOT NULL AND error_kind IS NULL")
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
             f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}; {len(bench_runs)} bench runs, "
             f"{len(searches)} searches. Regression rule: band = max({rule.threshold:g}, {rule.k:g} × noise), "
             f"baseline = median p50 of the last {rule.baseline_runs} runs (see harness/nightly/regress.py).</p>"]
    plots: list[str] = []
    regressions = [v for v in latest_verdicts if v.status == "regression"]
    parts.append(f"<h2>Latest bench run {html.escape(str(latest))}</h2>")
    if latest:
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
        parts.append("<table><tr><th>status</th><th>benchmark</th><th>device</th><th>target</th><th>backend</th>"
                     "<th>p50 ms</th><th>baseline ms</th><th>Δ</th><th>band</th><th>history</th><th>note</th></tr>")
        rank = {"regression": 0, "failed": 1, "improvement": 2, "new": 3, "ok": 4}
        for v in sorted(latest_verdicts, key=lambda v: (rank[v.status], v.benchmark, v.device)):
            note = v.error or ("unstable" if v.unstable else "")
            parts.append(
                f"<tr class='{v.status}'><td class='l'>{v.status.upper() if v.status == 'regression' else v.status}"
                f"</td><td class='l'>{html.escape(v.benchmark)}</td><td class='l'>{html.escape(v.device)}</td>"
                f"<td class='l'>{html.escape(v.target)}</td><td class='l'>{html.escape(v.backend)}</td>"
                f"<td>{_fmt(v.latency_p50_ms, '.4f')}</td><td>{_fmt(v.baseline_p50_ms, '.4f')}</td>"
                f"<td>{_fmt(v.delta, '+.1%')}</td><td>{_fmt(v.band, '.1%')}</td><td>{v.history_n}</td>"
                f"<td class='l'>{html.escape(note or '')}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p>No bench runs in this store.</p>")

    series: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        series[history_key(r)].append(r)
    parts.append("<h2>Latency history</h2>")
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

    parts.append("<h2>Search Pareto fronts (top-1 vs latency p50)</h2>")
    by_search: dict[str, list[dict]] = defaultdict(list)
    for c in cands:
        by_search[c["run_id"]].append(c)
    if not by_search:
        parts.append("<p>No search run with measured candidates in this store.</p>")
    for s in searches:
        rows = by_search.get(s["run_id"])
        if not rows:
            continue
        pts = [(float(c["latency_p50_ms"]), float(c["top1"])) for c in rows]
        front = pareto_front(pts)
        name = _slug("pareto", s["run_id"]) + ".png"
        _pareto_plot(s["run_id"], pts, front, plots_dir / name)
        plots.append(str(plots_dir / name))
        parts.append(f"<h3>{html.escape(s['run_id'])}: {html.escape(s['model'])} on {html.escape(s['device'])} "
                     f"({html.escape(s['target'])}), {len(rows)} measured candidates, {len(front)} on the front</h3>"
                     f"<img src='plots/{html.escape(name)}' alt='Pareto front of {html.escape(s['run_id'])}'>"
                     "<table><tr><th>latency p50 ms</th><th>top-1</th><th>MACs</th><th>architecture</th></tr>")
        for i in front:
            c = rows[i]
            parts.append(f"<tr><td>{c['latency_p50_ms']:.4f}</td><td>{c['top1']:.4f}</td><td>{_fmt(c['macs'], ',')}"
                         f"</td><td class='l'>{html.escape(str(c['arch_signature']))[:120]}</td></tr>")
        parts.append("</table>")

    links = " ".join(f"<a href='data/{Path(p).name}'>{Path(p).name}</a>" for p in exports["csv"] + exports["parquet"])
    note = f" ({exports['parquet_skipped']})" if "parquet_skipped" in exports else ""
    parts.append(f"<h2>Data</h2><p>{links}{html.escape(note)}</p></body></html>")
    index = out / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    logger.info("report %s: %d plots", index, len(plots))
    return {"index": str(index), "plots": plots, "regressions": [v.as_dict() for v in regressions],
            "exports": exports, "latest_run": latest}
