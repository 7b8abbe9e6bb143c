"""harness/nightly/report.py: the static HTML report (history plots, regressions, Pareto fronts) and the CSV export."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from harness.cli import main
from harness.nightly.report import write_report
from harness.store import ResultsStore

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def store_with_history_and_search(tmp_path):
    db = tmp_path / "r.db"
    s = ResultsStore(db)
    for night, p50 in enumerate([10.0, 10.1, 9.9, 10.05, 11.5]):  # the last night is a 15 % step
        run = f"night-{night}"
        s.create_bench_run(run, suite_name="nightly", suite_path="/s.toml", suite_sha256=None,
                           metadata={"tvm_version": "0.27.0.post1", "suite_git": {"commit": "abc", "dirty": False}})
        mid = s.add_measurement(model="r20", arch_signature="z", device="local", target="host", backend="tvm",
                                tuning_key="untuned", source="measured",
                                stats=dict(p50=p50, p90=p50 * 1.05, mean=p50, std=0.1, min=p50 * 0.98,
                                           max=p50 * 1.1, cov=0.01, n=20, unstable=False),
                                latency_raw_ms=[p50] * 20)
        s.add_bench_result(run, benchmark="r20", device="local", target="host", backend="tvm", tuning_key="untuned",
                           source="measured", status="ok", measurement_id=mid)
        s.add_bench_result(run, benchmark="gone", device="local", target="host", backend="tvm",
                           tuning_key="untuned", source="measured", status="failed", error_kind="onnx_missing",
                           error_message="ONNX file 'gone.onnx' not found")
        s.finish_bench_run(run, "finished")
    s.create_run("search-1", model="resnet20", dataset="fashion-mnist", device="local", target="host", seed=0,
                 config={})
    for step, (lat, top1) in enumerate([(5.0, 0.91), (4.0, 0.90), (4.5, 0.88), (3.0, 0.85), (3.5, 0.80)]):
        s.add_candidate("search-1", dict(episode=0, step=step, arch_signature=f"a{step}", spec_json="[]", top1=top1,
                                         latency_p50_ms=lat, macs=1000 * step, reward=0.0, device="local",
                                         target="host", source="measured"))
    s.close()
    return db


def test_report_has_history_plots_regressions_and_pareto_fronts(store_with_history_and_search, tmp_path):
    out = write_report(store_with_history_and_search, tmp_path / "rep")
    html = (tmp_path / "rep" / "index.html").read_text()
    assert out["latest_run"] == "night-4" and [r["benchmark"] for r in out["regressions"]] == ["r20"]
    assert len(out["plots"]) == 3  # r20 history, gone history (failures only), one Pareto front
    for p in out["plots"]:
        with open(p, "rb") as f:
            assert f.read(8) == PNG
    assert "<tr class='regression'><td class='l'>REGRESSION</td><td class='l'>r20</td>" in html
    assert "1 regression(s) flagged" in html and "onnx_missing" in html
    assert "search-1: resnet20 on local (host), 5 measured candidates, 3 on the front" in html
    assert "src='plots/pareto__search-1.png'" in html and "http" not in html.replace("https://", "")  # no server
    frame = pd.read_csv(tmp_path / "rep" / "data" / "bench_results.csv")
    assert len(frame) == 10 and set(frame["status"]) == {"ok", "failed"}
    assert frame.loc[frame.status == "ok", "latency_p50_ms"].tolist() == [10.0, 10.1, 9.9, 10.05, 11.5]
    assert len(pd.read_csv(tmp_path / "rep" / "data" / "candidates.csv")) == 5
    if importlib.util.find_spec("pyarrow") is None:
        assert out["exports"]["parquet"] == [] and "pyarrow" in out["exports"]["parquet_skipped"]
    else:
        assert len(pd.read_parquet(tmp_path / "rep" / "data" / "bench_results.parquet")) == 10


def test_report_cli(store_with_history_and_search, tmp_path, capsys):
    assert main(["report", "--db", str(store_with_history_and_search), "--out", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "r" / "index.html")
    assert main(["report", "--db", str(tmp_path / "missing.db"), "--out", str(tmp_path / "r2")]) == 2
    assert "not found" in capsys.readouterr().err


def _stats(p50: float) -> dict:
    return dict(p50=p50, p90=p50 * 1.05, mean=p50, std=0.01, min=p50 * 0.98, max=p50 * 1.1, cov=0.02, n=30,
                unstable=False)


@pytest.fixture
def store_with_a_search_and_single_benches(tmp_path):
    """What a new user's store holds: one search and a few `hilprune bench` measurements, no suite run."""
    db = tmp_path / "r.db"
    s = ResultsStore(db)
    s.create_run("search-2", model="resnet20", dataset="fashion-mnist", device="local", target="host", seed=0,
                 config={"eval_samples": 2000, "subset": None, "finetune_epochs": 1})
    for ep, step, sig, lat, top1, err in [(-1, 0, "16-16", 2.41, 0.92, None), (0, 1, "16-12", 2.0, 0.91, None),
                                          (0, 2, "12-12", 1.6, 0.80, None), (1, 1, "12-8", None, None, "wrong_output")]:
        s.add_candidate("search-2", dict(episode=ep, step=step, arch_signature=sig, spec_json="[]", top1=top1,
                                         latency_p50_ms=lat, macs=1000, reward=0.0, device="local", target="host",
                                         source="measured", error_kind=err))
    s.finish_run("search-2", "finished", {
        "candidates": 3,
        "baseline": {"top1": 0.9195, "latency_p50_ms": 2.394, "latency_p50_ms_search": 2.41},
        "best": {"arch_signature": "12-12", "top1": 0.9188, "val_top1_search": 0.80, "latency_p50_ms": 1.626,
                 "latency_p50_ms_search": 1.6, "speedup": 1.47, "finetune_epochs": 1}})
    for model, backend in (("resnet20", "tvm"), ("onnx:best_model", "onnxruntime")):
        s.add_measurement(model=model, arch_signature="z", device="local", target="host", backend=backend,
                          tuning_key="ms:t8:gNone:p64", source="measured", stats=_stats(2.0),
                          latency_raw_ms=[2.0] * 30, metadata={"command": "bench"})
    s.add_measurement(model="resnet20", arch_signature="16-16", device="local", target="host", backend="tvm",
                      tuning_key="ms:t8:gNone:p64", source="measured", stats=_stats(2.4), latency_raw_ms=[2.4] * 30,
                      metadata={})  # a search's measurement: not a bench one
    s.close()
    return db


def test_report_without_suite_runs_says_so_in_words_and_lists_single_benches(
        store_with_a_search_and_single_benches, tmp_path):
    out = write_report(store_with_a_search_and_single_benches, tmp_path / "rep")
    html = (tmp_path / "rep" / "index.html").read_text()
    assert out["latest_run"] is None and "None" not in html
    assert "no nightly suite runs, 2 single-model bench measurements, 1 search." in html
    assert "No nightly suite runs in this store" in html and "Latest" not in html
    assert "Latency history" not in html  # nothing to draw: it follows suite runs only
    # the two `hilprune bench` measurements, newest first, in words; the search's measurement is not one
    assert "<h2>Single-model bench measurements</h2><p>2 measurements by" in html
    assert html.index("onnx:best_model") < html.index("<td class='l'>resnet20</td>")
    assert "8 trials/task" in html and "ms:t8" not in html
    # counted as the CLI counts ("3 candidates"), the unpruned model apart; accuracy named for what it is
    assert "search-2: resnet20 on local (host), 2 measured candidates + the unpruned model (1 more failed), " \
           "3 on the front" in html
    assert "<b>validation</b> top-1 during the search" in html and "validation top-1 (search)" in html
    assert "test top-1 0.9188 after 1 fine-tuning epoch (validation top-1 during the search 0.8000)" in html
    assert "p50 2.394 ms re-measured at the end (2.410 ms during the search)" in html
    assert "chosen (starred)" in html and len(out["plots"]) == 1


def test_absolute_plot_marks_a_machine_night_apart_from_a_model_regression():
    """The history plot's red triangle means what the table's verdict means: a regression of the model."""
    from harness.nightly.regress import Comparison, RatioComparison
    from harness.nightly.report import absolute_mark

    def comparison(status: str, verdict: str, ratio_status: str | None) -> Comparison:
        ratio = None if ratio_status is None else RatioComparison("ref", ratio_status, latency_ratio=1.0)
        return Comparison("net", "local", "host", "tvm", "t", "measured", status, 11.0, 10.0, 0.1, 0.05, 0.01, 0.01,
                          5, False, None, verdict=verdict, ratio=ratio)

    assert absolute_mark(comparison("regression", "machine_night", "ok")) == "not_the_model"
    assert absolute_mark(comparison("regression", "absolute_only", "ok")) == "not_the_model"
    assert absolute_mark(comparison("regression", "model_regression", "regression")) == "regression"
    assert absolute_mark(comparison("regression", "regression", None)) == "regression"  # no reference in the suite
    assert absolute_mark(comparison("improvement", "improvement", "improvement")) == "improvement"
    assert absolute_mark(comparison("ok", "ok", "ok")) is None and absolute_mark(None) is None
