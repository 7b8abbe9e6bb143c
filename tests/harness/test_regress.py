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
