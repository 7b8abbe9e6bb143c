"""harness/nightly/regress.py and ``hilprune bench compare`` on a synthetic nightly history in a temp store.

The history: 2 benchmarks x 2 devices, 10 nightly runs, each result 20 raw
repeats with 2 % within-run spread around a nightly p50 that itself wanders
with a 1 % sigma (seeded). That noise is inside the band (5 % floor); a 10 %
step on one (benchmark, device) is a regression of that key only.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from devices.stats import LatencyStats
from harness.cli import main
from harness.nightly.regress import CompareRule, compare_all, compare_run
from harness.store import ResultsStore

BASE_MS = {("resnet20-28", "local"): 10.0, ("resnet20-28", "ssh:pi4"): 42.0,
           ("vgg11-32", "local"): 3.0, ("vgg11-32", "ssh:pi4"): 17.0}


def _add_run(store: ResultsStore, rng: np.random.Generator, run_id: str, scale: dict | None = None,
             night_sigma: float = 0.01, within_cov: float = 0.02, n: int = 20,
             extra: list[tuple[str, str, str, float]] = ()) -> None:
    """One nightly run; ``scale`` multiplies a key's latency; ``extra`` = (bench, device, source, p50) rows."""
    store.create_bench_run(run_id, suite_name="nightly", suite_path="/x/nightly.toml", suite_sha256="0" * 64,
                           metadata={"tvm_version": "0.27.0.post1"})
    rows = [(b, d, "measured", p * (scale or {}).get((b, d), 1.0)) for (b, d), p in BASE_MS.items()] + list(extra)
    for bench, device, source, p50 in rows:
        night = p50 * (1 + night_sigma * rng.standard_normal())
        raw = night * (1 + within_cov * rng.standard_normal(n))
        st = LatencyStats.from_raw(raw.tolist())
        mid = store.add_measurement(
            model=bench, arch_signature="zoo", device=device, target="host", backend="tvm", tuning_key="untuned",
            source=source, stats=dict(p50=st.p50_ms, p90=st.p90_ms, mean=st.mean_ms, std=st.std_ms, min=st.min_ms,
                                      max=st.max_ms, cov=st.cov, n=st.n, unstable=st.unstable),
            latency_raw_ms=raw.tolist())
        store.add_bench_result(run_id, benchmark=bench, device=device, target="host", backend="tvm",
                               tuning_key="untuned", source=source, status="ok", measurement_id=mid)
    store.finish_bench_run(run_id, "finished")


@pytest.fixture
def history(tmp_path):
    db = tmp_path / "r.db"
    store = ResultsStore(db)
    rng = np.random.default_rng(6)
    for night in range(10):
        _add_run(store, rng, f"night-{night:02d}")
    yield db, store, rng
    store.close()


def test_noise_inside_the_band_raises_nothing(history, capsys):
    db, store, _ = history
    verdicts = compare_all(store.bench_results())
    flagged = [(r, v) for r, vs in verdicts.items() for v in vs if v.status in ("regression", "improvement")]
    assert flagged == []
    run_id, latest = compare_run(store.bench_results())
    assert run_id == "night-09" and len(latest) == 4
    assert {v.status for v in latest} == {"ok"} and all(v.history_n == 7 for v in latest)
    for v in latest:  # the band is the 5 % floor: 3.5 x the measured noise is smaller here
        assert v.band == pytest.approx(0.05) and abs(v.delta) < 0.05 and 0 < v.noise_history < 0.0143
    assert main(["bench", "compare", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "0 regression(s)" in out and "REGRESSION" not in out


def test_a_10_percent_step_is_one_regression_of_that_key_only(history, capsys):
    db, store, rng = history
    _add_run(store, rng, "night-10", scale={("vgg11-32", "ssh:pi4"): 1.10})
    _, verdicts = compare_run(store.bench_results())
    regressions = [v for v in verdicts if v.status == "regression"]
    assert [(v.benchmark, v.device) for v in regressions] == [("vgg11-32", "ssh:pi4")]
    assert 0.07 < regressions[0].delta < 0.13 and regressions[0].baseline_p50_ms == pytest.approx(17.0, rel=0.03)
    assert main(["bench", "compare", "--db", str(db), "--json"]) == 1
    j = json.loads(capsys.readouterr().out)
    assert j["run_id"] == "night-10" and j["regressions"] == 1
    # the previous night judged on its own is still clean (--run)
    assert main(["bench", "compare", "--db", str(db), "--run", "night-09"]) == 0
    capsys.readouterr()
    # the table names it
    assert main(["bench", "compare", "--db", str(db)]) == 1
    line = [ln for ln in capsys.readouterr().out.splitlines() if "REGRESSION" in ln]
    assert len(line) == 1 and "vgg11-32" in line[0] and "ssh:pi4" in line[0]


def test_improvement_exits_0_and_a_persistent_step_becomes_the_baseline(history):
    _, store, rng = history
    _add_run(store, rng, "night-10", scale={("resnet20-28", "local"): 0.85})
    _, verdicts = compare_run(store.bench_results())
    assert [(v.benchmark, v.device, v.status) for v in verdicts if v.status != "ok"] == \
        [("resnet20-28", "local", "improvement")]
    for night in range(11, 15):  # the faster code stays: after 4 more nights of 7 it is the baseline
        _add_run(store, rng, f"night-{night}", scale={("resnet20-28", "local"): 0.85})
    _, verdicts = compare_run(store.bench_results())
    assert {v.status for v in verdicts} == {"ok"}


def test_simulated_results_never_count_as_measured_history(history):
    """A farm that fell back to the simulator stored 'simulated' rows under the board's device name."""
    _, store, rng = history
    for night in range(10, 13):
        _add_run(store, rng, f"night-{night}", extra=[("resnet20-28", "ssh:pi4", "simulated", 90.0)])
    _, verdicts = compare_run(store.bench_results())
    by = {(v.benchmark, v.device, v.source): v for v in verdicts}
    measured, simulated = by[("resnet20-28", "ssh:pi4", "measured")], by[("resnet20-28", "ssh:pi4", "simulated")]
    assert measured.status == "ok" and measured.baseline_p50_ms == pytest.approx(42.0, rel=0.03)
    assert simulated.history_n == 2 and simulated.baseline_p50_ms == pytest.approx(90.0, rel=0.03)


def test_the_runs_own_noise_widens_the_band():
    """A 10 % step measured with CoV 0.5 over 10 repeats is within 1.2533 x 0.5 / sqrt(10) x 3.5 = 69 %."""
    rows = []
    for i, (p50, cov) in enumerate([(10.0, 0.01)] * 5 + [(11.0, 0.5)]):
        rows.append(dict(id=i, run_id=f"r{i}", benchmark="b", device="local", target="host", backend="tvm",
                         tuning_key="untuned", source="measured", status="ok", latency_p50_ms=p50, latency_cov=cov,
                         n=10, unstable=cov > 0.1))
    _, (v,) = compare_run(rows)
    assert v.status == "ok" and v.unstable and v.band == pytest.approx(3.5 * 1.2533 * 0.5 / 10 ** 0.5, rel=1e-3)
    _, (v,) = compare_run(rows[:5] + [{**rows[5], "latency_cov": 0.01}])
    assert v.status == "regression" and v.delta == pytest.approx(0.10)


def test_bad_rule_and_unknown_run_are_clear(history, tmp_path, capsys):
    db, store, _ = history
    with pytest.raises(ValueError, match="threshold"):
        CompareRule(threshold=0)
    assert main(["bench", "compare", "--db", str(db), "--run", "nope"]) == 2
    assert "'nope' is not in the store" in capsys.readouterr().err
    assert main(["bench", "compare", "--db", str(tmp_path / "none.db")]) == 2
    assert "not found" in capsys.readouterr().err
    ResultsStore(tmp_path / "empty.db").close()
    assert main(["bench", "compare", "--db", str(tmp_path / "empty.db")]) == 2
    assert "no bench runs" in capsys.readouterr().err


def test_compare_names_what_changed_since_the_previous_run(history, capsys):
    """A TVM upgrade on the board between two nights is printed with the verdicts (the likely cause of a step)."""
    db, store, rng = history
    hello = {"tvm": "0.27.0.post1", "python": "3.11.7", "pid": 1}
    store.finish_bench_run("night-09", "finished", metadata={"tvm_version": "0.27.0.post1",
                                                              "devices": {"ssh:pi4": {"hello": hello}}})
    _add_run(store, rng, "night-10", scale={("vgg11-32", "ssh:pi4"): 1.10})
    store.finish_bench_run("night-10", "finished", metadata={"tvm_version": "0.27.0.post1", "devices": {
        "ssh:pi4": {"hello": {**hello, "tvm": "0.28.0", "pid": 2}}}})
    assert main(["bench", "compare", "--db", str(db), "--json"]) == 1
    j = json.loads(capsys.readouterr().out)
    assert j["changed_since_previous_run"] == {"device:ssh:pi4:tvm": ["0.27.0.post1", "0.28.0"]}
    assert main(["bench", "compare", "--db", str(db)]) == 1
    assert "changed since the previous run: device:ssh:pi4:tvm 0.27.0.post1 -> 0.28.0" in capsys.readouterr().out


def test_a_latest_run_without_results_is_not_judged_as_an_older_one(history, capsys):
    db, store, _ = history
    store.create_bench_run("night-10", suite_name="nightly", suite_path="/x", suite_sha256=None, metadata={})
    store.finish_bench_run("night-10", "interrupted")
    assert main(["bench", "compare", "--db", str(db)]) == 0
    assert "night-10: no results" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Through the suite's reference model (issue 12): a fake history with ratios in a real store.
# Reference "ref" (2 ms) and two benchmarks, "a" (10 ms, ratio 5.0) and "b" (3 ms, ratio 1.5), on local; every
# night a 1 % machine jitter moves all three absolutes alike, each ratio carries 0.2 % noise and a ±0.5 %
# bootstrap interval (what interleaved ratios give on this host: DESIGN.md §5).

REF_MS = {"ref": 2.0, "a": 10.0, "b": 3.0}


def _add_ratio_run(store: ResultsStore, rng: np.random.Generator, run_id: str, machine: float = 1.0,
                   model: dict | None = None, session: dict | None = None, n: int = 20) -> None:
    """One night: ``machine`` scales every absolute p50 (the reference's too), ``model`` = {bench: factor}
    scales that benchmark's own latency, so its absolute p50 and its ratio to the reference; ``session`` =
    {bench: factor} scales only that benchmark's absolute p50 (a noisy absolute session, ratio untouched)."""
    store.create_bench_run(run_id, suite_name="nightly", suite_path="/x/nightly.toml", suite_sha256="0" * 64,
                           metadata={"tvm_version": "0.27.0.post1", "reference": {"benchmark": "ref"}})
    night = machine * (1 + 0.01 * rng.standard_normal())
    for bench, base in REF_MS.items():
        factor = (model or {}).get(bench, 1.0)
        raw = base * factor * (session or {}).get(bench, 1.0) * night * (1 + 0.02 * rng.standard_normal(n))
        st = LatencyStats.from_raw(raw.tolist())
        mid = store.add_measurement(
            model=bench, arch_signature="zoo", device="local", target="host", backend="tvm", tuning_key="untuned",
            source="measured", stats=dict(p50=st.p50_ms, p90=st.p90_ms, mean=st.mean_ms, std=st.std_ms,
                                          min=st.min_ms, max=st.max_ms, cov=st.cov, n=st.n, unstable=st.unstable),
            latency_raw_ms=raw.tolist(), device_identity="measured:test")
        ratio_kw = {}
        if bench != "ref":
            ratio = base / REF_MS["ref"] * factor * (1 + 0.002 * rng.standard_normal())
            lo, hi = ratio * 0.995, ratio * 1.005
            rid = store.add_ratio(model=bench, arch_signature="zoo", reference_signature="zoo",
                                  reference_sha256="f" * 64, device="local", target="host", backend="tvm",
                                  tuning_key="untuned", source="measured", device_identity="measured:test",
                                  ratio=ratio, ci_low=lo, ci_high=hi, confidence=0.95, pairs=16,
                                  stop_reason="converged", round_ratios=[ratio] * 4,
                                  latency_p50_ms=st.p50_ms, reference_p50_ms=st.p50_ms / ratio)
            ratio_kw = dict(ratio_id=rid, latency_ratio=ratio, ratio_ci=(lo, hi))
        store.add_bench_result(run_id, benchmark=bench, device="local", target="host", backend="tvm",
                               tuning_key="untuned", source="measured", status="ok", measurement_id=mid,
                               reference_benchmark="ref", **ratio_kw)
    store.finish_bench_run(run_id, "finished")


@pytest.fixture
def ratio_history(tmp_path):
    db = tmp_path / "r.db"
    store = ResultsStore(db)
    rng = np.random.default_rng(12)
    for night in range(8):
        _add_ratio_run(store, rng, f"night-{night:02d}")
    yield db, store, rng
    store.close()


def _by_bench(verdicts):
    return {v.benchmark: v for v in verdicts}


def test_quiet_history_with_a_reference_is_ok_and_the_reference_is_never_a_model(ratio_history, capsys):
    db, store, _ = ratio_history
    _, verdicts = compare_run(store.bench_results())
    v = _by_bench(verdicts)
    assert v["ref"].verdict == "reference" and v["ref"].ratio is None
    for b in ("a", "b"):
        assert v[b].verdict == "ok" and v[b].ratio.status == "ok" and v[b].ratio.history_n == 7
        assert v[b].ratio.reference == "ref" and v[b].reference_status == "ok"
        assert v[b].ratio.baseline_ratio == pytest.approx(REF_MS[b] / 2.0, rel=0.005)
        # the run's own ratio noise is the ±0.5 % interval as a sigma: 0.005 / 1.959964 (95 % normal quantile)
        assert v[b].ratio.noise_run == pytest.approx(0.005 / 1.959964, rel=1e-4)
        assert v[b].ratio.band == pytest.approx(0.05)  # 3.5 x max(noise) is ~1 %: the 5 % floor decides
    assert main(["bench", "compare", "--db", str(db)]) == 0
    capsys.readouterr()


def test_a_machine_night_slows_every_absolute_by_30_percent_but_no_model(ratio_history, capsys):
    db, store, rng = ratio_history
    _add_ratio_run(store, rng, "night-08", machine=1.30)
    _, verdicts = compare_run(store.bench_results())
    v = _by_bench(verdicts)
    assert v["ref"].status == "regression" and v["ref"].verdict == "reference"
    assert 0.25 < v["ref"].delta < 0.35
    for b in ("a", "b"):
        assert v[b].status == "regression" and 0.25 < v[b].delta < 0.35  # the absolute rule alone: a regression
        assert v[b].ratio.status == "ok" and abs(v[b].ratio.delta) < 0.01  # the ratio: no model moved
        assert v[b].reference_status == "regression" and v[b].reference_delta == v["ref"].delta
        assert v[b].verdict == "machine_night"
    assert main(["bench", "compare", "--db", str(db), "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["regressions"] == 0 and j["absolute_regressions"] == 3
    assert j["verdicts"] == {"reference": 1, "machine_night": 2}
    a = next(c for c in j["comparisons"] if c["benchmark"] == "a")
    assert (a["status"], a["ratio"]["status"], a["verdict"]) == ("regression", "ok", "machine_night")
    assert a["ratio"]["latency_ratio"] == pytest.approx(5.0, rel=0.01)
    assert main(["bench", "compare", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "0 regression(s) of models (by the ratio to the reference ref)" in out
    assert [ln.split()[:2] for ln in out.splitlines() if "machine_night " in ln] == \
        [["machine_night", "a"], ["machine_night", "b"]]


def test_one_benchmark_20_percent_slower_by_its_ratio_is_a_model_regression(ratio_history, capsys):
    db, store, rng = ratio_history
    _add_ratio_run(store, rng, "night-08", model={"b": 1.20})
    _, verdicts = compare_run(store.bench_results())
    v = _by_bench(verdicts)
    assert v["b"].verdict == "model_regression" and v["b"].ratio.status == "regression"
    assert v["b"].ratio.delta == pytest.approx(0.20, abs=0.01) and v["b"].reference_status == "ok"
    assert v["a"].verdict == "ok" and v["ref"].verdict == "reference"
    assert main(["bench", "compare", "--db", str(db), "--json"]) == 1
    j = json.loads(capsys.readouterr().out)
    assert j["regressions"] == 1 and j["verdicts"]["model_regression"] == 1
    assert main(["bench", "compare", "--db", str(db)]) == 1
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "MODEL_REGRESSION" in ln]
    assert len(lines) == 1 and lines[0].split()[1] == "b" and "[regression]" in lines[0]


def test_a_slower_model_on_a_slower_night_is_both_and_an_absolute_step_alone_is_not_a_model(ratio_history, capsys):
    db, store, rng = ratio_history
    _add_ratio_run(store, rng, "night-08", machine=1.30, model={"b": 1.20})
    _, verdicts = compare_run(store.bench_results())
    v = _by_bench(verdicts)
    assert (v["a"].verdict, v["b"].verdict) == ("machine_night", "both")
    assert main(["bench", "compare", "--db", str(db)]) == 1
    capsys.readouterr()



def test_an_absolute_step_of_one_benchmark_alone_is_not_a_model_regression(ratio_history, capsys):
    """Its absolute p50 30 % up, its ratio and the reference flat: the ratio (the precise figure) clears the model."""
    db, store, rng = ratio_history
    _add_ratio_run(store, rng, "night-08", session={"a": 1.30})
    _, verdicts = compare_run(store.bench_results())
    v = _by_bench(verdicts)
    assert v["a"].status == "regression" and v["a"].ratio.status == "ok" and v["a"].reference_status == "ok"
    assert v["a"].verdict == "absolute_only" and v["b"].verdict == "ok"
    assert main(["bench", "compare", "--db", str(db)]) == 0
    capsys.readouterr()


def test_no_ratio_history_falls_back_to_the_absolute_rule(tmp_path):
    """The first night with a reference: no earlier ratios, so the absolute rule decides (a step is a regression)."""
    store = ResultsStore(tmp_path / "r.db")
    rng = np.random.default_rng(1)
    try:
        for night in range(3):
            _add_run(store, rng, f"old-{night}")
        rows = store.bench_results()
    finally:
        store.close()
    last = [dict(r, run_id="new", reference_benchmark="ref", latency_ratio=1.0, latency_ratio_ci_low=0.99,
                 latency_ratio_ci_high=1.01, latency_p50_ms=r["latency_p50_ms"] * 1.5)
            for r in rows if r["run_id"] == "old-2"]
    _, verdicts = compare_run(rows + last)
    assert {(v.verdict, v.ratio.status) for v in verdicts} == {("regression", "new")}


def _add_ort_beside_tvm_reference(store: ResultsStore, rng: np.random.Generator, run_id: str, ort_night: float):
    """One night of a TVM reference and an ONNX Runtime benchmark timed against the reference's ONNX Runtime
    build: ``ort_night`` scales every ONNX Runtime timing (the benchmark's and the reference's in its ratio's
    session), TVM's stay put (ORT moves with load far more than TVM on this host)."""
    store.create_bench_run(run_id, suite_name="nightly", suite_path="/x/nightly.toml", suite_sha256="0" * 64,
                           metadata={"reference": {"benchmark": "ref"}})
    stats = lambda v: dict(p50=v, p90=v, mean=v, std=0.0, min=v, max=v, cov=0.0, n=20, unstable=False)  # noqa: E731
    ref_ms = 2.0 * (1 + 0.005 * rng.standard_normal())
    mid = store.add_measurement(model="ref", arch_signature="zoo", device="local", target="host", backend="tvm",
                                tuning_key="untuned", source="measured", stats=stats(ref_ms), latency_raw_ms=[ref_ms],
                                device_identity="measured:test")
    store.add_bench_result(run_id, benchmark="ref", device="local", target="host", backend="tvm",
                           tuning_key="untuned", source="measured", status="ok", measurement_id=mid,
                           reference_benchmark="ref")
    ort_ref, ratio = 0.25 * ort_night * (1 + 0.005 * rng.standard_normal()), 2.0 * (1 + 0.002 * rng.standard_normal())
    mid = store.add_measurement(model="o", arch_signature="zoo", device="local", target="host",
                                backend="onnxruntime", tuning_key="untuned", source="measured",
                                stats=stats(ort_ref * ratio), latency_raw_ms=[ort_ref * ratio],
                                device_identity="measured:test")
    rid = store.add_ratio(model="o", arch_signature="zoo", reference_signature="zoo", reference_sha256="e" * 64,
                          device="local", target="host", backend="onnxruntime", tuning_key="untuned",
                          source="measured", device_identity="measured:test", ratio=ratio, ci_low=ratio * 0.995,
                          ci_high=ratio * 1.005, confidence=0.95, pairs=16, stop_reason="converged",
                          round_ratios=[ratio] * 4, latency_p50_ms=ort_ref * ratio, reference_p50_ms=ort_ref)
    store.add_bench_result(run_id, benchmark="o", device="local", target="host", backend="onnxruntime",
                           tuning_key="untuned", source="measured", status="ok", measurement_id=mid,
                           reference_benchmark="ref", ratio_id=rid, latency_ratio=ratio,
                           ratio_ci=(ratio * 0.995, ratio * 1.005))
    store.finish_bench_run(run_id, "finished")


def test_a_benchmark_on_another_backend_is_judged_against_its_own_sessions_reference(tmp_path):
    """An ONNX Runtime benchmark's ratio is against the reference timed with ONNX Runtime: when ORT got 30 %
    slower across the board (the reference too, in the ratio's sessions) while the TVM reference row did not,
    that is a machine night, not an absolute step of the model."""
    from harness.nightly.regress import compare_all

    store = ResultsStore(tmp_path / "r.db")
    rng = np.random.default_rng(3)
    for night in range(8):
        _add_ort_beside_tvm_reference(store, rng, f"night-{night:02d}", 1.0)
    _add_ort_beside_tvm_reference(store, rng, "night-08", 1.3)
    last = _by_bench(compare_all(store.bench_results())["night-08"])
    store.close()
    assert last["ref"].status == "ok"  # the TVM reference did not move
    assert (last["o"].status, last["o"].ratio.status) == ("regression", "ok")
    assert last["o"].reference_status == "regression" and last["o"].verdict == "machine_night"
