"""harness/search/pareto.py: the search's Pareto front, pareto.csv and pareto.png, on synthetic candidate rows."""

from __future__ import annotations

import json

import matplotlib.figure
import pandas as pd
import pytest

from harness.search.pareto import CSV_COLUMNS, pareto_front, plot_pareto, top1_label, write_pareto

PNG = b"\x89PNG\r\n\x1a\n"


def _row(sig: str, top1, lat, *, episode: int = 0, step: int = 1, error_kind: str | None = None) -> dict:
    return dict(arch_signature=sig, spec_json=json.dumps([int(x) for x in sig.split("-")]), top1=top1,
                latency_p50_ms=lat, macs=1000 + int(sig.replace("-", "")), params=10, episode=episode, step=step,
                source="measured", error_kind=error_kind)


@pytest.fixture
def rows() -> list[dict]:
    return [
        _row("16-16", 0.92, 2.40, episode=-1, step=0),  # the unpruned model
        _row("16-12", 0.91, 2.00),
        _row("12-12", 0.80, 1.60, step=2),
        _row("16-8", 0.85, 2.10, episode=1),            # dominated by 16-12 (faster and more accurate)
        _row("12-12", 0.70, 1.50, episode=2),           # same architecture again: its first row counts
        _row("8-8", 0.99, 0.50, episode=2, step=2, error_kind="wrong_output"),  # failed: never on the front
        _row("8-12", 0.60, None, episode=2, step=3),    # not measured
    ]


def test_front_keeps_only_non_dominated_architectures_sorted_by_latency(rows):
    front = pareto_front(rows)
    assert [r["arch_signature"] for r in front] == ["12-12", "16-12", "16-16"]
    assert front[0]["latency_p50_ms"] == 1.60  # the first row of a repeated architecture
    assert pareto_front([]) == []


def test_top1_label_says_what_the_accuracy_is():
    assert top1_label(2000) == "validation top-1 (2000 images, during the search, before fine-tuning)"
    assert "whole validation split" in top1_label(None)


def test_write_pareto_writes_the_csv_columns_and_the_png(rows, tmp_path):
    front = write_pareto(rows, tmp_path, val_images=200, best_signature="12-12", best_test_top1=0.88,
                         finetune_epochs=1, baseline_final_p50_ms=2.30)
    assert [r["arch_signature"] for r in front] == ["12-12", "16-12", "16-16"]
    csv = pd.read_csv(tmp_path / "pareto.csv")
    assert list(csv.columns) == CSV_COLUMNS
    assert list(csv["arch_signature"]) == ["12-12", "16-12", "16-16"]
    assert list(csv["val_top1"]) == [0.80, 0.91, 0.92] and list(csv["latency_p50_ms"]) == [1.60, 2.00, 2.40]
    assert list(csv["is_best"]) == [1, 0, 0] and set(csv["val_images"]) == {200}
    assert list(csv["episode"]) == [0, 0, -1] and json.loads(csv["spec"][0]) == [12, 12]
    assert (tmp_path / "pareto.png").read_bytes()[:8] == PNG


def test_write_pareto_with_no_usable_candidate_writes_an_empty_front(tmp_path):
    front = write_pareto([_row("8-8", None, None)], tmp_path, val_images=None)
    assert front == [] and list(pd.read_csv(tmp_path / "pareto.csv").columns) == CSV_COLUMNS
    assert (tmp_path / "pareto.png").read_bytes()[:8] == PNG


@pytest.fixture
def drawn(monkeypatch):
    """The figures plot_pareto saves (it closes them; the Figure objects stay readable)."""
    figs = []
    save = matplotlib.figure.Figure.savefig

    def spy(self, *args, **kwargs):
        figs.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return figs


def test_plot_labels_the_accuracy_marks_the_best_and_puts_the_line_on_the_unpruned_point(rows, tmp_path, drawn):
    front = pareto_front(rows)
    plot_pareto(rows, front, tmp_path / "p.png", title="run-1", val_images=2000, best_signature="12-12",
                best_test_top1=0.8812, finetune_epochs=1, baseline_final_p50_ms=2.30)
    ax = drawn[0].axes[0]
    label = "validation top-1 (2000 images, during the search, before fine-tuning)"
    assert label in ax.get_title() and ax.get_ylabel().replace("\n", " ") == label
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "best (fine-tuned 1 epoch: test top-1 0.8812)" in legend
    assert "unpruned p50 during the search: 2.400 ms (re-measured at the end: 2.300 ms)" in legend
    assert "candidates (4)" in legend and "Pareto front (3)" in legend  # the unpruned model apart
    lines = {line.get_label(): line for line in ax.get_lines()}
    # the dashed line stands on the unpruned point's own (search-time) latency, not the end's re-measurement
    dashed = lines["unpruned p50 during the search: 2.400 ms (re-measured at the end: 2.300 ms)"]
    assert set(dashed.get_xdata()) == {2.40}
    assert list(lines["unpruned model"].get_xdata()) == [2.40]
    star = lines["best (fine-tuned 1 epoch: test top-1 0.8812)"]
    assert list(star.get_xdata()) == [1.60] and list(star.get_ydata()) == [0.80] and star.get_marker() == "*"


def test_plot_without_a_chosen_model_or_fine_tuning_says_so(rows, tmp_path, drawn):
    plot_pareto(rows, pareto_front(rows), tmp_path / "a.png", title="a", val_images=None)
    legend = [t.get_text() for t in drawn[0].axes[0].get_legend().get_texts()]
    assert not any(t.startswith("best") for t in legend)
    assert "unpruned p50 during the search: 2.400 ms" in legend
    plot_pareto(rows, pareto_front(rows), tmp_path / "b.png", title="b", val_images=None, best_signature="16-12",
                best_test_top1=0.9, finetune_epochs=0)
    legend = [t.get_text() for t in drawn[1].axes[0].get_legend().get_texts()]
    assert "best (not fine-tuned: test top-1 0.9000)" in legend
