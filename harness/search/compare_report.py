"""The comparison's table and figures, computed from results-store rows only (no torch, no device).

``hilprune compare`` (:mod:`harness.search.compare`) runs several search methods at one budget
of evaluated candidates over several seeds; this module turns the store's candidate rows of
those runs into what a reader compares (DESIGN.md §9, issue 14):

- :func:`run_figures`: one run's figures (best speedup within the top-1 drop, validation
  top-1 at the latency target, candidates evaluated, its best architecture);
- :func:`method_table`: per method, the median and the spread (min–max) of those figures over
  its seeds, or the reason a method has no numbers (it raised, or no candidate was within
  the drop); :func:`write_table` writes it as ``table.csv`` and ``table.md``;
- :func:`plot_fronts`: the Pareto fronts of every method in one plot (``fronts.png``);
- :func:`plot_learning_curves`: best reward so far and episode reward against candidates
  evaluated, median over seeds with a min–max band (``learning_curves.png``).

Every figure is from the *search*: validation top-1 on the search's validation images before
fine-tuning, latency as the median ratio to the unpruned model timed interleaved (the rows'
``latency_ratio``). Speedup = 1 / that ratio. Each figure names its latency source
(``measured``, ``predicted``, ``simulated``); rows of different sources are never pooled in one
number (DESIGN.md §5): a method whose runs disagree on the source gets no numbers and says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from harness.search.pareto import pareto_front

__all__ = [
    "MAX_TOP1_DROP",
    "TABLE_COLUMNS",
    "RunFigures",
    "RunRecord",
    "learning_curve",
    "method_table",
    "plot_fronts",
    "plot_learning_curves",
    "reported_rows",
    "run_figures",
    "table_markdown",
    "write_table",
]

#: The accuracy bound of the table's speedup: validation top-1 at most this much below the unpruned
#: model's, as a fraction of images (0.01 = 1 percentage point), on the search's validation images.
MAX_TOP1_DROP = 0.01

#: Columns of ``table.csv``, one row per method, in the order the methods were given:
#:
#: - ``method``: the search method's name;
#: - ``runs``: seeds run; ``runs_ok``: of which finished with at least one usable candidate;
#: - ``speedup_median``, ``speedup_min``, ``speedup_max``: over seeds, each run's best speedup
#:   (1 / median latency ratio to the unpruned model, timed interleaved) among its candidates whose
#:   validation top-1 is at most :data:`MAX_TOP1_DROP` below the unpruned model's;
#: - ``val_top1_at_target_median``, ``_min``, ``_max``: over seeds, each run's best validation top-1
#:   among candidates that met the latency target (ratio ≤ target, or MACs ratio ≤ target when the
#:   target metric is MACs), over the seeds that met it (``note`` says how many); empty when none did;
#: - ``candidates_median``: evaluated candidates per run (store rows of episode ≥ 0), median over seeds;
#: - ``wall_s_median``: wall seconds per run (search and its own final step), median over seeds;
#: - ``latency_source``: ``measured``, ``predicted`` or ``simulated``;
#: - ``note``: why a method has no numbers, or which of its seeds failed (empty when all is well).
TABLE_COLUMNS = ["method", "runs", "runs_ok", "speedup_median", "speedup_min", "speedup_max",
                 "val_top1_at_target_median", "val_top1_at_target_min", "val_top1_at_target_max",
                 "candidates_median", "wall_s_median", "latency_source", "note"]


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One (method, seed) run of a comparison, as :mod:`harness.search.compare` records it.

    Attributes:
        method: the search method's name.
        seed: the search's seed.
        run_id: its run in the results store (None when it failed before creating one).
        status: ``finished`` or ``failed``.
        error: for a failed run, ``ExceptionType: message`` (one line); else None.
        wall_s: wall seconds of the run, s.
    """

    method: str
    seed: int
    run_id: str | None
    status: str
    error: str | None = None
    wall_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON values (``runs.json``)."""
        return {"method": self.method, "seed": self.seed, "run_id": self.run_id, "status": self.status,
                "error": self.error, "wall_s": self.wall_s}


@dataclass(frozen=True, slots=True)
class RunFigures:
    """One run's figures from its store rows (:func:`run_figures`).

    Attributes:
        candidates: evaluated candidates (rows of episode ≥ 0, failed ones included).
        usable: of which with a validation top-1 and a latency ratio and no error.
        base_val_top1: the unpruned model's validation top-1 (the row of episode -1), in [0, 1].
        best_speedup: the best 1 / latency ratio among usable candidates within the top-1 drop
            (None when none is within it).
        best_row: the store row of that candidate (None with it).
        val_top1_at_target: best validation top-1 among usable candidates that met the target (None: none met it).
        best_top1_drop: the smallest top-1 drop of any usable candidate (for the reason of a run with
            no candidate within the bound), fraction.
        sources: latency sources of the usable rows.
    """

    candidates: int
    usable: int
    base_val_top1: float | None
    best_speedup: float | None
    best_row: dict | None
    val_top1_at_target: float | None
    best_top1_drop: float | None
    sources: tuple[str, ...] = field(default=())


def reported_rows(rows: Sequence[dict]) -> list[dict]:
    """The rows a figure may be made of: a ``hybrid`` run's rows hold ``predicted`` screening ratios beside
    ``measured`` confirmations, and every reported figure of such a run is a measurement
    (:mod:`harness.search.latency_mode`), so when a run has both, its predicted rows are left out."""
    sources = {r.get("source") for r in rows if r.get("episode", 0) >= 0}
    if "predicted" in sources and "measured" in sources:
        return [r for r in rows if r.get("source") != "predicted"]
    return list(rows)


def _usable(rows: Sequence[dict]) -> list[dict]:
    return [r for r in reported_rows(rows) if r.get("episode", 0) >= 0 and not r.get("error_kind")
            and r.get("top1") is not None and r.get("latency_ratio") is not None]


def run_figures(rows: Sequence[dict], *, latency_target: float, target_metric: str = "latency",
                max_top1_drop: float = MAX_TOP1_DROP) -> RunFigures:
    """One run's figures from its candidate rows of the results store.

    Args:
        rows: ``ResultsStore.candidates(run_id)``: ``episode`` (-1 = the unpruned model), ``top1``
            (validation top-1 in [0, 1]), ``latency_ratio`` (median ratio to the unpruned model),
            ``macs``, ``error_kind``, ``source``, ``arch_signature``.
        latency_target: the run's target: a candidate met it when its latency ratio (or MACs ratio,
            see ``target_metric``) is ≤ this.
        target_metric: ``latency`` or ``macs``.
        max_top1_drop: the speedup counts only candidates whose validation top-1 is at most this
            below the unpruned model's (fraction; 0.01 = 1 point).

    Returns:
        A :class:`RunFigures`.
    """
    base = next((r for r in rows if r.get("episode") == -1), None)
    cands = [r for r in rows if r.get("episode", 0) >= 0]
    ok = _usable(rows)
    base_top1 = None if base is None else base.get("top1")
    within = [r for r in ok if base_top1 is not None and base_top1 - r["top1"] <= max_top1_drop + 1e-12]
    best = min(within, key=lambda r: (r["latency_ratio"], -r["top1"]), default=None)
    if target_metric == "macs":
        base_macs = (base or {}).get("macs")
        met = [r for r in ok if base_macs and r.get("macs") is not None and r["macs"] / base_macs <= latency_target]
    else:
        met = [r for r in ok if r["latency_ratio"] <= latency_target]
    drops = [base_top1 - r["top1"] for r in ok] if base_top1 is not None else []
    return RunFigures(
        candidates=len(cands), usable=len(ok), base_val_top1=base_top1,
        best_speedup=None if best is None else 1.0 / best["latency_ratio"], best_row=best,
        val_top1_at_target=max((r["top1"] for r in met), default=None),
        best_top1_drop=min(drops, default=None), sources=tuple(sorted({r.get("source") or "?" for r in ok})))


def _spread(values: list[float]) -> tuple[float, float, float] | tuple[None, None, None]:
    if not values:
        return None, None, None
    return median(values), min(values), max(values)


def method_table(records: Sequence[RunRecord], rows_of: dict[str, list[dict]], *, methods: Sequence[str],
                 latency_target: float, target_metric: str = "latency",
                 max_top1_drop: float = MAX_TOP1_DROP):
    """Per method: median and spread (min–max) over its seeds of the run figures (:func:`run_figures`).

    A method with no numbers says why in ``note``: every run raised (the first exception), or
    no run had a candidate within the drop (the smallest drop seen), or its runs measured with
    different latency sources. Runs that failed beside successful ones are named in ``note``
    and left out of the numbers.

    Args:
        records: every run of the comparison.
        rows_of: ``run_id`` → its candidate rows (the store's).
        methods: the methods in table order (a method without records gets a row saying so).
        latency_target, target_metric, max_top1_drop: as for :func:`run_figures`.

    Returns:
        A pandas DataFrame with columns :data:`TABLE_COLUMNS`, one row per method.
    """
    import pandas as pd

    out = []
    for method in methods:
        mine = [r for r in records if r.method == method]
        figs: list[tuple[RunRecord, RunFigures]] = []
        notes: list[str] = []
        for rec in mine:
            if rec.status != "finished" or rec.run_id is None:
                notes.append(f"seed {rec.seed} failed: {rec.error or rec.status}")
                continue
            figs.append((rec, run_figures(rows_of.get(rec.run_id, []), latency_target=latency_target,
                                          target_metric=target_metric, max_top1_drop=max_top1_drop)))
        sources = sorted({s for _, f in figs for s in f.sources})
        row: dict[str, Any] = {"method": method, "runs": len(mine), "runs_ok": 0,
                               "latency_source": "+".join(sources) if sources else None}
        with_speedup = [(rec, f) for rec, f in figs if f.best_speedup is not None]
        for rec, f in figs:
            if f.best_speedup is None:
                why = ("no usable candidate" if not f.usable else
                       f"no candidate within {_points(max_top1_drop)} of the unpruned top-1 (smallest drop "
                       f"{100 * f.best_top1_drop:.2f} points)")
                notes.append(f"seed {rec.seed}: {why}")
        mixed = len(sources) > 1
        if mixed:
            notes.insert(0, f"runs measured with different latency sources ({', '.join(sources)}): not pooled")
            with_speedup = []
        row["runs_ok"] = len(with_speedup)
        if with_speedup:
            s = _spread([f.best_speedup for _, f in with_speedup])
            row.update(speedup_median=s[0], speedup_min=s[1], speedup_max=s[2])
        # top-1 at the target: over every finished run with usable candidates, whether or not it had a speedup
        usable = [f for _, f in figs if f.usable] if not mixed else []
        at_target = [f.val_top1_at_target for f in usable if f.val_top1_at_target is not None]
        if at_target:
            a = _spread(at_target)
            row.update(val_top1_at_target_median=a[0], val_top1_at_target_min=a[1], val_top1_at_target_max=a[2])
            if len(at_target) < len(usable):
                notes.append(f"top-1 at target over {len(at_target)} of {len(usable)} seeds (the others met no "
                             "target)")
        elif usable:
            notes.append("no seed met the latency target")
        if not mine:
            notes.append("not run")
        cands = [f.candidates for _, f in figs]
        row["candidates_median"] = median(cands) if cands else None
        walls = [rec.wall_s for rec in mine if rec.wall_s is not None]
        row["wall_s_median"] = median(walls) if walls else None
        row["note"] = "; ".join(notes)
        out.append(row)
    return pd.DataFrame(out, columns=TABLE_COLUMNS)


def best_runs(records: Sequence[RunRecord], rows_of: dict[str, list[dict]], *, methods: Sequence[str],
              latency_target: float, target_metric: str = "latency",
              max_top1_drop: float = MAX_TOP1_DROP) -> dict[str, tuple[RunRecord, RunFigures]]:
    """Per method, its best run by the table's criterion (the highest speedup within the top-1 drop; ties:
    the higher validation top-1); methods with no such run are absent."""
    out = {}
    for method in methods:
        cands = []
        for rec in records:
            if rec.method != method or rec.status != "finished" or rec.run_id is None:
                continue
            f = run_figures(rows_of.get(rec.run_id, []), latency_target=latency_target, target_metric=target_metric,
                            max_top1_drop=max_top1_drop)
            if f.best_speedup is not None:
                cands.append((rec, f))
        if cands:
            out[method] = max(cands, key=lambda x: (x[1].best_speedup, x[1].best_row["top1"], -x[0].seed))
    return out


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any, spec: str) -> str:
    return "–" if _missing(value) else format(value, spec)


def _points(fraction: float) -> str:
    """A top-1 difference in percentage points: 0.01 -> '1 point', 0.005 -> '0.5 points'."""
    n = 100 * fraction
    return f"{n:g} point" + ("" if n == 1 else "s")


def _cell(row: dict, prefix: str, spec: str) -> str:
    """``median (min–max)`` of a table row's ``prefix_*`` columns, or a dash."""
    m = row[f"{prefix}_median"]
    if _missing(m):
        return "–"
    return f"{_fmt(m, spec)} ({_fmt(row[f'{prefix}_min'], spec)}–{_fmt(row[f'{prefix}_max'], spec)})"


def table_markdown(table, *, source: str, max_top1_drop: float = MAX_TOP1_DROP, latency_target: float,
                   target_metric: str = "latency", budget: int | None = None, seeds: int | None = None) -> str:
    """The method table as Markdown (numbers as ``median (min–max)``), with a header naming the source.

    Args:
        table: :func:`method_table`'s DataFrame.
        source: the latency source every speedup is from (``measured``, ``predicted``, ``simulated``).
        max_top1_drop, latency_target, target_metric: as for :func:`method_table` (named in the header).
        budget, seeds: the comparison's budget of evaluated candidates and seeds per method.
    """
    what = "latency ratio" if target_metric == "latency" else "MACs ratio"
    header = (f"Search-time figures ({source} latency, ratios to the unpruned model timed interleaved; validation "
              f"top-1 before fine-tuning){f', budget {budget} candidates' if budget else ''}"
              f"{f', {seeds} seeds per method' if seeds else ''}. Speedup: best 1 / latency ratio with validation "
              f"top-1 at most {_points(max_top1_drop)} below the unpruned model's; top-1 at target: best "
              f"validation top-1 with {what} <= {latency_target:g}. Median (min–max) over seeds.")
    lines = [header, "", "| method | runs ok | speedup | val top-1 at target | candidates | wall s | source | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        note = "" if _missing(r["note"]) else str(r["note"]).replace("|", "/")
        lines.append(f"| {r['method']} | {r['runs_ok']}/{r['runs']} | {_cell(r, 'speedup', '.3f')} | "
                     f"{_cell(r, 'val_top1_at_target', '.4f')} | {_fmt(r['candidates_median'], 'g')} | "
                     f"{_fmt(r['wall_s_median'], '.0f')} | {_fmt(r['latency_source'], 's')} | {note} |")
    return "\n".join(lines) + "\n"


def write_table(table, out_dir: Path | str, **markdown) -> tuple[Path, Path]:
    """Write ``table.csv`` (columns :data:`TABLE_COLUMNS`) and ``table.md`` (:func:`table_markdown`, whose
    keyword arguments ``markdown`` holds); returns both paths."""
    out_dir = Path(out_dir)
    table.to_csv(out_dir / "table.csv", index=False)
    (out_dir / "table.md").write_text(table_markdown(table, **markdown))
    return out_dir / "table.csv", out_dir / "table.md"


def learning_curve(rows: Sequence[dict]) -> dict[str, list]:
    """One run's learning curve against candidates evaluated.

    Args:
        rows: the run's candidate rows in the order they were evaluated (the store's order);
            the unpruned row (episode -1) is skipped.

    Returns:
        ``{"candidates": [1..n], "best_reward": running max of the step reward, "episode_reward":
        the return (sum of step rewards) of the last episode completed by then, None before the
        first one ends}``. An episode is complete when a later row starts another episode or
        it is the run's last row.
    """
    cands = [r for r in rows if r.get("episode", 0) >= 0]
    best, running = [], -math.inf
    for r in cands:
        running = max(running, float(r["reward"]))
        best.append(running)
    episode_reward: list[float | None] = []
    last: float | None = None
    for i, r in enumerate(cands):
        ends = i + 1 == len(cands) or cands[i + 1]["episode"] != r["episode"]
        if ends:
            last = sum(float(c["reward"]) for c in cands if c["episode"] == r["episode"])
        episode_reward.append(last)
    return {"candidates": list(range(1, len(cands) + 1)), "best_reward": best, "episode_reward": episode_reward}


def _band(series: list[list[float | None]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Median, min and max at each x over runs (a run shorter than x, or None there, does not count)."""
    xs, med, lo, hi = [], [], [], []
    for i in range(max((len(s) for s in series), default=0)):
        vals = [s[i] for s in series if i < len(s) and s[i] is not None]
        if vals:
            xs.append(i + 1)
            med.append(median(vals))
            lo.append(min(vals))
            hi.append(max(vals))
    return xs, med, lo, hi


def plot_learning_curves(curves: dict[str, list[dict]], path: Path | str, *, title: str) -> None:
    """Two panels against candidates evaluated: best reward so far, and episode reward; per method the
    median over seeds (a line) and min–max (a band).

    Args:
        curves: method → one :func:`learning_curve` per seed.
        path: the PNG to write.
        title: the figure's title (the comparison's directory name and latency source).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=110)
    for (key, label), ax in zip((("best_reward", "best reward so far"), ("episode_reward", "episode reward")), axes):
        for i, (method, runs) in enumerate(curves.items()):
            xs, med, lo, hi = _band([c[key] for c in runs])
            if not xs:
                continue
            color = f"C{i % 10}"
            ax.plot(xs, med, c=color, lw=1.4, label=f"{method} (median of {len(runs)})")
            ax.fill_between(xs, lo, hi, color=color, alpha=0.18, lw=0)
        ax.set_xlabel("candidates evaluated")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}\nreward R = αΔP − βΔC − γΔH with each method's own weights (macs-reward: γ = 0); "
                 "lines: median over seeds; bands: min–max", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_fronts(rows_by_method: dict[str, list[dict]], path: Path | str, *, title: str, source: str,
                val_images: int | None = None) -> dict[str, list[dict]]:
    """Every method's Pareto front (validation top-1 vs latency ratio to the unpruned model) in one plot.

    A method's front is :func:`harness.search.pareto.pareto_front` of all its seeds' candidate rows
    together; the unpruned model (a row of episode -1, ratio 1.0) is a black square.

    Args:
        rows_by_method: method → the candidate rows of all its runs.
        path: the PNG to write.
        title: first title line (the comparison's directory name).
        source: the latency source of the rows (named on the axis).
        val_images: validation images per candidate (None: not known), named on the axis.

    Returns:
        method → its front (rows, by ascending latency ratio).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.search.pareto import top1_label

    fig, ax = plt.subplots(figsize=(7.5, 5.4), dpi=110)
    fronts = {}
    base = None
    for i, (method, rows) in enumerate(rows_by_method.items()):
        usable = [r for r in reported_rows(rows) if r.get("latency_ratio") is not None and r.get("top1") is not None
                  and not r.get("error_kind")]
        base = base or next((r for r in usable if r.get("episode") == -1), None)
        front = pareto_front([r for r in usable if r.get("episode", 0) >= 0])
        fronts[method] = front
        if front:
            ax.plot([r["latency_ratio"] for r in front], [r["top1"] for r in front], "o-", c=f"C{i % 10}", ms=4,
                    lw=1.2, label=f"{method} ({len(front)} on the front)")
    if base is not None:
        ax.plot([base["latency_ratio"]], [base["top1"]], "s", c="black", ms=7, label="unpruned model")
    ax.set_xlabel(f"latency / unpruned ({source}, median ratio timed interleaved), lower is better")
    ax.set_ylabel(top1_label(val_images).replace(" (", "\n(", 1), fontsize=8)
    ax.set_title(f"{title}\nPareto fronts of every method, all seeds pooled; latency {source}", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fronts


def dumps(obj: Any) -> str:
    """JSON text of ``obj`` with NaN as null (pandas' missing values)."""
    def clean(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(obj), indent=2, sort_keys=True, default=str)
