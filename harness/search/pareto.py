"""The Pareto front of a search run: ``pareto.csv`` and ``pareto.png`` in its run directory.

What the front is made of, so that nobody reads it as the final table: every
point is a candidate as the *search* saw it — its **validation top-1** on the
first ``eval_samples`` images of the validation split, *before* any
fine-tuning, and its latency as the search ranked it: the median ratio of its
latency to the unpruned model's, the two timed interleaved in one session
(the unpruned model is 1.0, the row of episode -1; runs stored before ratios
existed fall back to the absolute p50 in ms). The table printed at the end of
``hilprune search`` (and ``summary.json``) gives other numbers for the chosen
best model and the unpruned one: *test* top-1 after fine-tuning and the
speedup measured afresh, interleaved, at the end of the run. The plot
marks the chosen best model and names its fine-tuned test top-1 in the legend,
so the two can be matched up.

No torch here: :mod:`harness.nightly.report` draws the same figure from the
results store.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["CSV_COLUMNS", "latency_of", "pareto_front", "plot_pareto", "top1_label", "write_pareto"]

#: Columns of ``pareto.csv``, one row per architecture on the front, sorted by latency (ascending):
#:
#: - ``arch_signature``: kept widths joined by ``-`` (the architecture's key in the store);
#: - ``spec``: the same widths as a JSON list;
#: - ``val_top1``: validation top-1 in [0, 1] during the search, before fine-tuning;
#: - ``val_images``: how many validation images ``val_top1`` was computed on (empty = not known);
#: - ``latency_ratio``: median latency ratio to the unpruned model, timed interleaved (1.0 = unpruned);
#: - ``latency_ratio_ci_low``, ``latency_ratio_ci_high``: its bootstrap interval;
#: - ``latency_p50_ms``: absolute median latency in ms of the session it was measured in (drifts with load);
#: - ``macs``, ``params``: multiply-accumulates of one inference, parameter count;
#: - ``episode``, ``step``: where the search first met it (episode -1 = the unpruned model);
#: - ``source``: ``measured`` or ``simulated``;
#: - ``is_best``: 1 for the model the run chose, fine-tuned and saved as ``best_model.*``; else 0.
CSV_COLUMNS = ["arch_signature", "spec", "val_top1", "val_images", "latency_ratio", "latency_ratio_ci_low",
               "latency_ratio_ci_high", "latency_p50_ms", "macs", "params", "episode", "step", "source", "is_best"]


def latency_of(rows: list[dict]):
    """The latency the front ranks on, and its axis label: the interleaved ratio when every row has one
    (the search since schema 4), else the absolute p50 in ms (older runs)."""
    if rows and all(r.get("latency_ratio") is not None for r in rows):
        return (lambda r: r["latency_ratio"]), "latency / unpruned, timed interleaved (median ratio), lower is better"
    return (lambda r: r["latency_p50_ms"]), "latency p50 during the search (ms), lower is better"


def pareto_front(rows: list[dict]) -> list[dict]:
    """Non-dominated candidates: no other has top-1 ≥ and latency ≤ with one strictly better.

    Args:
        rows: candidate rows of the results store (``arch_signature``, ``top1`` = validation
            top-1 in [0, 1], ``latency_ratio`` (or, for older runs, ``latency_p50_ms`` in ms),
            ``error_kind``); rows without both
            numbers or with an error are ignored; duplicates of one architecture count once
            (its first row).

    Returns:
        The front (the rows themselves) sorted by latency, ascending.
    """
    seen: dict[str, dict] = {}
    for r in _usable(rows):
        seen.setdefault(r["arch_signature"], r)
    pts = list(seen.values())
    lat, _ = latency_of(pts)
    front = [p for p in pts if not any(
        (q["top1"] >= p["top1"] and lat(q) <= lat(p)) and (q["top1"] > p["top1"] or lat(q) < lat(p)) for q in pts)]
    return sorted(front, key=lat)


def top1_label(val_images: int | None) -> str:
    """The axis label of the front's accuracy: what it was measured on and when.

    Args:
        val_images: validation images per candidate; None = the whole validation split.
    """
    images = f"{val_images} images" if val_images else "whole validation split"
    return f"validation top-1 ({images}, during the search, before fine-tuning)"


def plot_pareto(rows: list[dict], front: list[dict], path: Path | str, *, title: str, val_images: int | None,
                best_signature: str | None = None, best_test_top1: float | None = None,
                finetune_epochs: int | None = None, baseline_final_p50_ms: float | None = None) -> None:
    """Draw validation top-1 (y) against search-time latency p50 in ms (x) as a PNG.

    Grey dots are all usable candidates, red the front (:func:`pareto_front`), a blue square
    the unpruned model (the row of episode -1) with a dashed vertical line at *its* latency,
    so that line and point agree; a gold star the chosen best model.

    Args:
        rows: the run's candidate rows (as for :func:`pareto_front`; ``episode`` -1 = unpruned).
        front: :func:`pareto_front` of ``rows``.
        path: the PNG to write (its folder must exist).
        title: first title line (the run id).
        val_images: validation images per candidate (None = the whole validation split).
        best_signature: ``arch_signature`` of the model the run chose (None = none chosen).
        best_test_top1: that model's test top-1 in [0, 1] at the end of the run, named in the legend.
        finetune_epochs: epochs it was fine-tuned for before ``best_test_top1`` (0 = not
            fine-tuned, None = not known: "fine-tuned" without a count).
        baseline_final_p50_ms: the unpruned model's p50 in ms re-measured at the end of the run
            (the final table's figure), named in the legend; the line stays at the search-time one.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = _usable(rows)
    lat, xlabel = latency_of(ok)
    base = next((r for r in ok if r.get("episode") == -1), None)
    others = [r for r in ok if r is not base]
    fig, ax = plt.subplots(figsize=(7, 5.4), dpi=110)
    ax.scatter([lat(r) for r in others], [r["top1"] for r in others], s=14, c="0.6", zorder=2,
               label=f"candidates ({len(others)})")
    ax.plot([lat(r) for r in front], [r["top1"] for r in front], "o-", c="tab:red", ms=5, zorder=3,
            label=f"Pareto front ({len(front)})")
    if base is not None:
        x = lat(base)
        what = (f"unpruned model: {x:.3f} (p50 {base['latency_p50_ms']:.3f} ms during the search)"
                if base.get("latency_ratio") is not None else f"unpruned p50 during the search: {x:.3f} ms")
        again = (f" (re-measured at the end: {baseline_final_p50_ms:.3f} ms)"
                 if baseline_final_p50_ms is not None else "")
        ax.axvline(x, ls="--", c="tab:blue", lw=1, zorder=1, label=f"{what}{again}")
        ax.plot([x], [base["top1"]], "s", c="tab:blue", ms=7, zorder=4, label="unpruned model")
    best = next((r for r in ok if best_signature is not None and r["arch_signature"] == best_signature), None)
    if best is not None:
        tuned = ("not fine-tuned" if finetune_epochs == 0 else "fine-tuned" if finetune_epochs is None else
                 f"fine-tuned {finetune_epochs} epoch{'s' if finetune_epochs != 1 else ''}")
        after = f"{tuned}: test top-1 {best_test_top1:.4f}" if best_test_top1 is not None else "chosen"
        ax.plot([lat(best)], [best["top1"]], "*", c="gold", mec="black", mew=0.8, ms=16, zorder=5,
                label=f"best ({after})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(top1_label(val_images).replace(" (", "\n(", 1), fontsize=8)
    ax.set_title(f"{title}\n{top1_label(val_images)}", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")  # the legend sits below the axes
    plt.close(fig)


def write_pareto(rows: list[dict], run_dir: Path | str, *, val_images: int | None,
                 best_signature: str | None = None, best_test_top1: float | None = None,
                 finetune_epochs: int | None = None, baseline_final_p50_ms: float | None = None) -> list[dict]:
    """Write ``run_dir/pareto.csv`` (columns :data:`CSV_COLUMNS`) and ``run_dir/pareto.png``.

    Args:
        rows: every candidate row of the run from the results store, the unpruned one included.
        run_dir: the run directory (exists); its name is the plot's title.
        val_images, best_signature, best_test_top1, finetune_epochs, baseline_final_p50_ms: as for
            :func:`plot_pareto`.

    Returns:
        The front, as :func:`pareto_front`.
    """
    import pandas as pd

    run_dir = Path(run_dir)
    front = pareto_front(rows)
    table = [{"arch_signature": r["arch_signature"], "spec": _spec(r), "val_top1": r["top1"],
              "val_images": val_images, "latency_ratio": r.get("latency_ratio"),
              "latency_ratio_ci_low": r.get("latency_ratio_ci_low"),
              "latency_ratio_ci_high": r.get("latency_ratio_ci_high"), "latency_p50_ms": r["latency_p50_ms"],
              "macs": r.get("macs"),
              "params": r.get("params"), "episode": r.get("episode"), "step": r.get("step"),
              "source": r.get("source"), "is_best": int(r["arch_signature"] == best_signature)} for r in front]
    pd.DataFrame(table, columns=CSV_COLUMNS).to_csv(run_dir / "pareto.csv", index=False)
    plot_pareto(rows, front, run_dir / "pareto.png", title=run_dir.name, val_images=val_images,
                best_signature=best_signature, best_test_top1=best_test_top1, finetune_epochs=finetune_epochs,
                baseline_final_p50_ms=baseline_final_p50_ms)
    return front


def _usable(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("top1") is not None and r.get("latency_p50_ms") is not None
            and not r.get("error_kind")]


def _spec(row: dict) -> str | None:
    spec = row.get("spec_json", row.get("spec"))
    return spec if spec is None or isinstance(spec, str) else json.dumps(list(spec))
