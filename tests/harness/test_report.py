"""harness/nightly/report.py: the static HTML report (history plots, regressions, Pareto fronts) and the CSV export."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from harness.cli import main
from harness.nightly.report import pareto_front, write_report
from harness.store import ResultsStore

PNG = b"\x89PNG\r\n\x1a\n"


def test_pareto_front_keeps_only_non_dominated_points():
    pts = [(2.0, 0.90), (1.0, 0.80), (3.0, 0.91), (2.5, 0.85), (1.0, 0.79), (4.0, 0.91)]
    assert pareto_front(pts) == [1, 0, 2]  # by latency; (2.5, .85), (1.0, .79), (4.0, .91) are dominated


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
