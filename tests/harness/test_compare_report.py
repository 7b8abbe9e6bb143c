"""harness/search/compare_report.py: the comparison's table and plots, on candidate rows written by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.search.compare_report import (
    TABLE_COLUMNS,
    RunRecord,
    best_runs,
    learning_curve,
    method_table,
    plot_fronts,
    plot_learning_curves,
    run_figures,
    table_markdown,
    write_table,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _row(episode, step, top1, ratio, reward, *, sig=None, macs=800, error_kind=None, source="simulated"):
    return dict(episode=episode, step=step, top1=top1, latency_ratio=ratio, reward=reward, macs=macs,
                arch_signature=sig or f"{episode}-{step}", spec_json="[8, 8]", error_kind=error_kind,
                latency_p50_ms=None if ratio is None else 2.0 * ratio, source=source)


BASE = _row(-1, 0, 0.900, 1.0, 0.0, sig="16-16", macs=1000)
# run a: within 1 point: 0.895 @ 0.80 (1.25x), 0.891 @ 0.70 (1.4286x); 0.880 @ 0.50 is 2 points off
RUN_A = [BASE, _row(0, 1, 0.895, 0.80, 0.1), _row(0, 2, 0.880, 0.50, 0.3), _row(1, 1, 0.891, 0.70, 0.2),
         _row(1, 2, 0.99, 0.10, -1.0, error_kind="wrong_output")]
# run b: the best within the drop is 0.900 @ 0.90 (1.1111x); meets target 0.6 with 0.85 @ 0.55
RUN_B = [BASE, _row(0, 1, 0.900, 0.90, 0.05, sig="b1"), _row(0, 2, 0.850, 0.55, 0.4, sig="b2"),
         _row(0, 3, 0.84, 0.58, 0.35, sig="b3")]
# run c: nothing within the drop (smallest drop 3 points)
RUN_C = [BASE, _row(0, 1, 0.870, 0.60, 0.2), _row(1, 1, 0.86, 0.5, 0.1)]


def test_run_figures_pick_the_fastest_candidate_within_the_drop_and_the_best_top1_at_target():
    f = run_figures(RUN_A, latency_target=0.6)
    assert f.candidates == 4 and f.usable == 3 and f.base_val_top1 == 0.9
    assert f.best_speedup == pytest.approx(1 / 0.70) and f.best_row["arch_signature"] == "1-1"
    assert f.val_top1_at_target == 0.880  # only 0-2 (ratio 0.5) met 0.6; the failed 0.99 never counts
    assert f.sources == ("simulated",)
    c = run_figures(RUN_C, latency_target=0.6)
    assert c.best_speedup is None and c.best_top1_drop == pytest.approx(0.03)
    # a MACs target counts the MACs ratio, not the latency
    m = run_figures([BASE, _row(0, 1, 0.85, 0.95, 0.0, macs=500)], latency_target=0.6, target_metric="macs")
    assert m.val_top1_at_target == 0.85


def test_method_table_gives_median_and_spread_and_says_why_a_method_has_no_numbers():
    records = [RunRecord("reinforce", 0, "a", "finished", wall_s=10.0),
               RunRecord("reinforce", 1, "b", "finished", wall_s=14.0),
               RunRecord("reinforce", 2, "c", "finished", wall_s=12.0),
               RunRecord("random", 0, "c", "finished", wall_s=5.0),
               RunRecord("ppo", 0, None, "failed", error="RuntimeError: exploded at step 3", wall_s=1.0)]
    table = method_table(records, {"a": RUN_A, "b": RUN_B, "c": RUN_C},
                         methods=["reinforce", "random", "ppo", "uniform"], latency_target=0.6)
    assert list(table.columns) == TABLE_COLUMNS and list(table["method"]) == ["reinforce", "random", "ppo", "uniform"]
    r = table.iloc[0]
    # seeds a and b have a speedup (1/0.7, 1/0.9); c has none: median of two = their mean
    assert r["runs"] == 3 and r["runs_ok"] == 2
    assert r["speedup_median"] == pytest.approx((1 / 0.7 + 1 / 0.9) / 2)
    assert r["speedup_min"] == pytest.approx(1 / 0.9) and r["speedup_max"] == pytest.approx(1 / 0.7)
    # top-1 at target 0.6 counts every seed that met it, with a speedup or not: 0.88 (a), 0.85 (b), 0.87 (c)
    assert r["val_top1_at_target_median"] == pytest.approx(0.87)
    assert r["val_top1_at_target_min"] == 0.85 and r["val_top1_at_target_max"] == 0.88
    assert r["candidates_median"] == 3 and r["wall_s_median"] == 12.0 and r["latency_source"] == "simulated"
    assert "seed 2: no candidate within 1 point of the unpruned top-1 (smallest drop 3.00 points)" in r["note"]
    rnd = table.iloc[1]
    assert rnd["runs_ok"] == 0 and math.isnan(rnd["speedup_median"]) and "no candidate within 1 point" in rnd["note"]
    assert rnd["val_top1_at_target_median"] == 0.87
    ppo = table.iloc[2]
    assert ppo["note"] == "seed 0 failed: RuntimeError: exploded at step 3" and math.isnan(ppo["speedup_median"])
    assert table.iloc[3]["note"] == "not run"
    best = best_runs(records, {"a": RUN_A, "b": RUN_B, "c": RUN_C}, methods=["reinforce", "random", "ppo"],
                     latency_target=0.6)
    assert list(best) == ["reinforce"] and best["reinforce"][0].run_id == "a"


def test_runs_of_different_latency_sources_are_not_pooled():
    measured = [dict(r, source="measured") for r in RUN_B]
    table = method_table([RunRecord("m", 0, "a", "finished"), RunRecord("m", 1, "b", "finished")],
                         {"a": RUN_A, "b": measured}, methods=["m"], latency_target=0.6)
    assert table.iloc[0]["runs_ok"] == 0 and "different latency sources (measured, simulated)" in table.iloc[0]["note"]


def test_write_table_writes_csv_and_markdown_with_the_numbers(tmp_path):
    records = [RunRecord("reinforce", 0, "a", "finished", wall_s=10.0),
               RunRecord("ppo", 0, None, "failed", error="RuntimeError: boom")]
    table = method_table(records, {"a": RUN_A}, methods=["reinforce", "ppo"], latency_target=0.6)
    csv_path, md_path = write_table(table, tmp_path, source="simulated", latency_target=0.6, budget=4, seeds=1)
    back = pd.read_csv(csv_path)
    assert back["speedup_median"][0] == pytest.approx(1 / 0.7) and back["note"][1] == "seed 0 failed: RuntimeError: boom"
    md = md_path.read_text()
    assert "| reinforce | 1/1 | 1.429 (1.429–1.429) | 0.8800 (0.8800–0.8800) | 4 | 10 | simulated |  |" in md
    assert "| ppo | 0/1 | – | – | – | – | – | seed 0 failed: RuntimeError: boom |" in md
    assert "simulated latency" in md and "budget 4 candidates" in md
    assert table_markdown(table, source="measured", latency_target=0.6).startswith("Search-time figures (measured")


def test_learning_curve_running_best_and_episode_returns():
    c = learning_curve(RUN_A)
    assert c["candidates"] == [1, 2, 3, 4]
    assert c["best_reward"] == [0.1, 0.3, 0.3, 0.3]
    # episode 0 (0.1 + 0.3) ends at candidate 2; episode 1 (0.2 - 1.0) at the last
    assert c["episode_reward"][0] is None and c["episode_reward"][1:3] == [pytest.approx(0.4)] * 2
    assert c["episode_reward"][3] == pytest.approx(-0.8)


def test_plots_are_written(tmp_path):
    curves = {"reinforce": [learning_curve(RUN_A), learning_curve(RUN_B)], "random": [learning_curve(RUN_C)]}
    plot_learning_curves(curves, tmp_path / "lc.png", title="t")
    fronts = plot_fronts({"reinforce": RUN_A + RUN_B, "random": RUN_C}, tmp_path / "f.png", title="t",
                         source="simulated", val_images=200)
    assert (tmp_path / "lc.png").read_bytes()[:8] == PNG and (tmp_path / "f.png").read_bytes()[:8] == PNG
    # pooled front of reinforce: 0.9@0.9 (b), 0.895@0.8, 0.891@0.7, 0.88@0.5 (a); 0.85@0.55 and 0.84@0.58 dominated
    assert [(r["top1"], r["latency_ratio"]) for r in fronts["reinforce"]] == [
        (0.88, 0.5), (0.891, 0.7), (0.895, 0.8), (0.9, 0.9)]
    assert [r["latency_ratio"] for r in fronts["random"]] == [0.5, 0.6]


def test_top1_at_target_says_how_many_seeds_met_the_target():
    records = [RunRecord("m", 0, "a", "finished"), RunRecord("m", 1, "b", "finished")]
    table = method_table(records, {"a": RUN_A, "b": RUN_B}, methods=["m"], latency_target=0.52)
    r = table.iloc[0]  # only run a has a candidate at ratio <= 0.52 (0.880 @ 0.50)
    assert r["val_top1_at_target_median"] == 0.88 and r["runs_ok"] == 2
    assert r["note"] == "top-1 at target over 1 of 2 seeds (the others met no target)"
    none = method_table(records, {"a": RUN_A, "b": RUN_B}, methods=["m"], latency_target=0.3).iloc[0]
    assert math.isnan(none["val_top1_at_target_median"]) and none["note"] == "no seed met the latency target"


def test_a_hybrid_runs_figures_are_made_of_its_measured_rows_only():
    """A hybrid run screens with predicted ratios and confirms with measured ones; its figures are measurements."""
    base = {**BASE, "source": "measured"}
    rows = [base, _row(0, 1, 0.899, 0.60, 0.3, source="predicted"),  # the fastest, but only predicted
            _row(0, 2, 0.898, 0.80, 0.2, source="measured"), _row(1, 1, 0.85, 0.40, 0.1, source="predicted")]
    f = run_figures(rows, latency_target=0.7)
    assert f.candidates == 3 and f.usable == 1 and f.sources == ("measured",)
    assert f.best_speedup == pytest.approx(1 / 0.80) and f.val_top1_at_target is None
    # a predicted-only run reports its predictions, labelled so
    p = run_figures([base] + [{**r, "source": "predicted"} for r in rows[1:]], latency_target=0.7)
    assert p.sources == ("predicted",) and p.best_speedup == pytest.approx(1 / 0.60)
