"""harness/search/latency_mode.py: the search's latency modes (measured, predicted, hybrid) on a real table.

The slow tests warm ResNet-20's grid 32 (30 tasks, 1 trial each: only the stage-3 groups move, 64 -> 32)
into a fresh tuning database, then search with the board's latency table of that database on ``local``.
"""

from __future__ import annotations

import csv
import json

import pytest

from harness.cli import main
from harness.compile.table import TablePrediction, TaskTime
from harness.search.latency_mode import MeasuredPoint, measure_reason, resolve_mode
from harness.search.run import SearchConfig

# -------------------------------------------------------------------------------------------- the rule by hand


def test_hybrid_rule_by_hand():
    base = MeasuredPoint(0.90, 1.0, None)
    a = MeasuredPoint(0.88, 0.80, 0.10)
    b = MeasuredPoint(0.85, 0.60, 0.25)
    pts = [base, a, b]
    # not dominated: faster than a at a top-1 between a's and b's -> enters the front
    assert measure_reason(0.87, 0.70, -1.0, pts, top_k=5) == "front"
    # dominated by a (a has higher top-1 and lower ratio) but fewer than k measured rewards -> top_k
    assert measure_reason(0.86, 0.85, -1.0, pts, top_k=3) == "top_k"
    # dominated, two measured rewards and k = 2: enters only with a reward above the 2nd best (0.10)
    assert measure_reason(0.86, 0.85, 0.11, pts, top_k=2) == "top_k"
    assert measure_reason(0.86, 0.85, 0.10, pts, top_k=2) is None
    assert measure_reason(0.86, 0.85, 0.99, pts, top_k=0) is None  # k = 0: the front alone
    # equal to a measured point is not dominated (the front keeps ties); the unpruned model bounds the front
    assert measure_reason(0.88, 0.80, -1.0, pts, top_k=0) == "front"
    assert measure_reason(0.89, 1.05, -1.0, pts, top_k=0) is None


def test_mode_resolution_and_refusals():
    full = TablePrediction((TaskTime("a", 1, 0.5),), 0.5, ())
    part = TablePrediction((TaskTime("a", 1, 0.5), TaskTime("b", 2, None)), 0.5, ("b",))
    assert resolve_mode(None, simulated=False, table=full, where="db") == "hybrid"
    assert resolve_mode(None, simulated=False, table=part, where="db") == "measured"
    assert resolve_mode(None, simulated=False, table=None, where="db") == "measured"
    assert resolve_mode("measured", simulated=False, table=full, where="db") == "measured"
    assert resolve_mode(None, simulated=True, table=None, where="db") == "simulated"
    with pytest.raises(ValueError, match=r"latency='predicted' needs a latency table, but the target lacks 1 of 2 "
                                         r"tasks of the unpruned model \(db\); warm it first \(hilprune tune"):
        resolve_mode("predicted", simulated=False, table=part, where="db")
    with pytest.raises(ValueError, match="has no tuning database"):
        resolve_mode("hybrid", simulated=False, table=None, where="db")


@pytest.mark.parametrize(("over", "needle"), [
    (dict(device="sim:host", latency="predicted"),
     "latency='predicted' needs a board's latency table; sim:host is a simulator, whose latencies are always "
     "simulated: drop --latency, or use --device local|ssh:BOARD|farm:TAG"),
    (dict(device="sim:rpi4", latency="hybrid"), "sim:rpi4 is a simulator"),
    (dict(latency="hybrid", backend="onnxruntime"), "says nothing of backend 'onnxruntime'"),
    (dict(latency="predicted", tune_trials=0), "tune_trials=0 builds untuned ones"),
    (dict(latency="guess"), "latency='guess' must be one of measured, predicted, hybrid"),
])
def test_config_refuses_a_mode_that_cannot_apply(over, needle):
    with pytest.raises(ValueError) as err:
        SearchConfig(**over)
    assert needle in str(err.value)
    SearchConfig(device="sim:host", latency="measured")  # measured on a simulator is just simulated: allowed


def test_cli_refusal_is_one_line_exit_2(capsys, tmp_path):
    code = main(["search", "--device", "sim:host", "--latency", "hybrid", "--out", str(tmp_path / "runs"),
                 "--db", str(tmp_path / "r.db")])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.strip().count("\n") == 0
    assert "sim:host is a simulator, whose latencies are always simulated" in err
    assert not (tmp_path / "runs").exists()


# -------------------------------------------------------------------------------------- searches on a real table


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """ResNet-20's grid 32 tuned with 1 trial per task into a fresh database (as tests/harness/test_grid.py)."""
    root = tmp_path_factory.mktemp("table")
    code = main(["tune", "--model", "resnet20", "--target", "host", "--grid", "32", "--trials", "1",
                 "--cache-dir", str(root / "cache"), "--json"])
    assert code == 0
    return root


def _config(root, tmp_path, **over) -> SearchConfig:
    return SearchConfig(**{**dict(episodes=2, env={"max_steps": 4, "round_to": 32, "target_ratio": 0.3},
                                  subset=500, train_epochs=1, eval_samples=100,
                                  tune_trials=1, finetune_epochs=0, repeat=5, max_pairs=16,
                                  seed=0, out=str(tmp_path / "runs"), db=str(tmp_path / "r.db"),
                                  cache_dir=str(root / "cache")), **over})


def _rows(db, run_id):
    from harness.store import ResultsStore

    store = ResultsStore(db)
    try:
        return store.candidates(run_id), store.query("SELECT * FROM table_pairs ORDER BY id")
    finally:
        store.close()


STOP = 12  # ResNet-20 has 12 prunable groups: action 12 is "stop" (no evaluation, the row repeats the current one)


@pytest.mark.slow
def test_hybrid_search_measures_exactly_the_candidates_its_rule_names(warm, tmp_path, capsys):
    from harness.search.run import run_search

    cfg = _config(warm, tmp_path, confirm_top_k=1)  # default latency: a table exists -> hybrid
    out = run_search(cfg, progress=False)
    lm = out["latency_mode"]
    assert lm["mode"] == "hybrid"
    rows, pairs = _rows(cfg.db, out["run_id"])
    base = rows[0]
    assert base["episode"] == -1 and base["source"] == "measured" and base["latency_ratio"] == 1.0
    w = (cfg.reward.alpha, cfg.reward.beta, cfg.reward.gamma)
    points = {base["arch_signature"]: MeasuredPoint(base["top1"], 1.0, None)}
    expected, got, evaluated = set(), set(), 0
    for r in rows[1:]:
        if r["action"] == STOP:
            continue
        assert r["error_kind"] is None, r["error_message"]
        evaluated += 1
        pred = r["latency_ratio_predicted"]
        assert pred is not None and pred > 0  # every candidate is predicted, measured or not
        key = (r["episode"], r["step"])
        if r["arch_signature"] in points:  # measured earlier in this run: the store's ratio cache
            reason = "cache"
        else:
            reward = w[0] * r["delta_p"] - w[1] * r["delta_c"] - w[2] * (pred - 1.0)
            reason = measure_reason(r["top1"], pred, reward, points.values(), top_k=1)
        if reason is not None:
            expected.add(key)
        if r["source"] == "measured":
            got.add(key)
            assert r["latency_measure_reason"] == reason and r["latency_ratio_ci_low"] is not None
            points.setdefault(r["arch_signature"], MeasuredPoint(r["top1"], r["latency_ratio"], r["reward"]))
        else:
            assert r["source"] == "predicted" and r["latency_ratio"] == pred and r["latency_ratio_ci_low"] is None
            assert r["measurement_id"] is None and r["ratio_id"] is None  # a prediction is never a measurement
    assert got == expected
    assert 0 < len(got) < evaluated, (got, evaluated)  # the rule did skip candidates, and did measure some
    # one pair of the fit per fresh measurement, stored for this board, target and family; refitted after each
    fresh = [r for r in rows[1:] if r["source"] == "measured" and r["latency_measure_reason"] != "cache"
             and r["action"] != STOP]
    assert len(pairs) == len(fresh) == lm["fit"]["n_pairs"]
    assert {p["family"] for p in pairs} == {"resnet20@1x1x28x28"}
    assert [p["ratio_id"] for p in pairs] == [r["ratio_id"] for r in fresh]
    assert lm["candidates_measured"] + lm["candidates_predicted"] == sum(1 for r in rows[1:] if not r["error_kind"])
    assert lm["prediction_pairs"] == len(fresh) and lm["prediction_mape_pct"] is not None
    # every reported figure is a measurement: the front file, the best
    with open(tmp_path / "runs" / out["run_id"] / "pareto.csv") as fh:
        front = list(csv.DictReader(fh))
    assert front and {f["source"] for f in front} == {"measured"}
    assert out["best"]["source"] == "measured" and out["best"]["final_pairs"] >= 8
    # hilprune predict --table uses the stored fit of this device identity and family, labelled predicted
    run_dir = tmp_path / "runs" / out["run_id"]
    cand, ref = fresh[0], base
    argv = ["predict", str(run_dir / "onnx" / f"{cand['arch_signature']}.onnx"), "--table", "host", "--cache-dir",
            str(warm / "cache"), "--db", cfg.db, "--family", "resnet20@1x1x28x28", "--reference",
            str(run_dir / "onnx" / f"{ref['arch_signature']}.onnx"), "--json"]
    assert main(argv) == 0
    (rec,) = json.loads(capsys.readouterr().out)
    assert rec["source"] == "predicted" and rec["complete"] and rec["fit"]["n_pairs"] == len(pairs)
    assert rec["fit"]["offset_ms"] == pytest.approx(lm["fit"]["offset_ms"])
    o = rec["fit"]["offset_ms"]
    assert rec["latency_ratio"] == pytest.approx((pairs[0]["tasks_ms"] + o) / (pairs[0]["reference_tasks_ms"] + o))
    assert rec["latency_ms"] == pytest.approx(lm["fit"]["scale"] * (pairs[0]["tasks_ms"] + o))
    assert main(argv[:6] + ["--db", cfg.db, "--json"]) == 0  # no family: the raw sum, unfitted
    (raw,) = json.loads(capsys.readouterr().out)
    assert raw["fit"]["n_pairs"] == 0 and raw["tasks_ms"] == pytest.approx(pairs[0]["tasks_ms"])


@pytest.mark.slow
def test_predicted_search_compiles_and_measures_nothing_per_candidate(warm, tmp_path, monkeypatch):
    from harness.pipeline import Pipeline
    from harness.search import run as run_mod

    calls = {"compile": [], "measure": [], "measure_ratio": [], "measure_ratios": []}
    in_loop = []
    for name in calls:
        real = getattr(Pipeline, name)

        def counting(self, *a, _real=real, _name=name, **k):
            if in_loop:
                calls[_name].append(a[0])
            return _real(self, *a, **k)

        monkeypatch.setattr(Pipeline, name, counting)
    real_loop = run_mod._Run.search  # the method's loop over the budget's candidates

    def loop(self, ckpt):
        in_loop.append(True)
        try:
            return real_loop(self, ckpt)
        finally:
            in_loop.clear()

    monkeypatch.setattr(run_mod._Run, "search", loop)
    cfg = _config(warm, tmp_path, latency="predicted")
    out = run_mod.run_search(cfg, progress=False)
    assert calls == {"compile": [], "measure": [], "measure_ratio": [], "measure_ratios": []}, calls
    rows, pairs = _rows(cfg.db, out["run_id"])
    cands = [r for r in rows if r["episode"] >= 0]
    assert cands and all(r["source"] == "predicted" and r["latency_ratio"] == r["latency_ratio_predicted"]
                         and r["measurement_id"] is None for r in cands)
    assert out["latency_mode"]["mode"] == "predicted" and out["latency_mode"]["candidates_measured"] == 0
    # the warm-up re-timed every grid task (tune --grid's default 3 passes): the table used only those times
    tt = out["latency_mode"]["table_times"]
    assert tt["times"] == "retimed" and tt["tasks_recorded"] == 0 and tt["tasks_retimed"] > 0
    assert tt["predictions"] == out["latency_mode"]["table_extractions"]
    assert pairs == []  # nothing measured, nothing fitted
    # the front and the best are labelled predicted; the final step still measured the best interleaved
    with open(tmp_path / "runs" / out["run_id"] / "pareto.csv") as fh:
        front = list(csv.DictReader(fh))
    assert {f["source"] for f in front if f["episode"] != "-1"} <= {"predicted"}
    best = out["best"]
    assert best["source"] == "predicted" and best["final_pairs"] >= 8 and best["final_error"] is None
    assert best["speedup"] == pytest.approx(1.0 / best["latency_ratio"])
    summary = json.loads((tmp_path / "runs" / out["run_id"] / "summary.json").read_text())
    assert summary["latency_mode"]["fit"]["fitted"] is False
