"""Leave-one-model-out ranking of the simulator against the MACs proxy (issue 13).

Real values: Spearman and MAPE worked out by hand on a small table; real
profile files; real ``SimDevice`` and CLI; the shipped profiles' verdicts
checked against their own stored Spearmans by an independent comparison.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devices.sim import GraphFeatures, SimDevice, available_profiles, load_profile
from devices.sim.calibrate import (
    CalibrationRow,
    lomo_ranking,
    prior_profile,
    ranking_scores,
)
from devices.sim.profile import macs_warning, no_better_than_macs

REPO = Path(__file__).resolve().parents[2]


def test_ranking_scores_on_a_hand_made_table():
    # 1 thread, 5 models: predicted ranks 1 2 4 3 5 -> sum d^2 = 2 -> rho = 1 - 6*2/(5*24) = 0.9
    #                     MACs ranks      2 1 3 5 4 -> sum d^2 = 4 -> rho = 1 - 6*4/120 = 0.8
    # 4 threads, 3 models: predicted ranks 1 2 3 -> 1.0; MACs ranks 3 1 2 -> sum d^2 = 6 -> 1 - 36/24 = -0.5
    meas = [10, 20, 30, 40, 50, 5, 10, 15]
    pred = [12, 18, 35, 33, 60, 6, 9, 20]
    macs = [2, 1, 3, 5, 4, 3, 1, 2]
    thr = [1, 1, 1, 1, 1, 4, 4, 4]
    s = ranking_scores(meas, pred, macs, thr, train_scale=[10.0] * 8)
    assert s["per_threads"][1] == {"n": 5, "spearman_sim": pytest.approx(0.9), "spearman_macs": pytest.approx(0.8)}
    assert s["per_threads"][4] == {"n": 3, "spearman_sim": pytest.approx(1.0), "spearman_macs": pytest.approx(-0.5)}
    assert s["spearman_sim"] == pytest.approx((5 * 0.9 + 3 * 1.0) / 8)  # 0.9375, row-weighted
    assert s["spearman_macs"] == pytest.approx((5 * 0.8 + 3 * -0.5) / 8)  # 0.3125
    # |pred - meas| / meas in %: 20 10 16.67 17.5 20 | 20 10 33.33
    assert s["mape_sim"] == pytest.approx(147.5 / 8)
    # MACs x 10 ms: 20 10 30 50 40 | 30 10 20 -> 100 50 0 25 20 | 500 0 33.33
    assert s["mape_macs"] == pytest.approx((100 + 50 + 0 + 25 + 20 + 500 + 0 + 100 / 3) / 8)
    assert s["n_rows"] == 8 and s["n_models"] == 5


def test_ranking_scores_in_sample_scale_and_bad_input():
    # in-sample scale = exp(median log(meas/MACs)) per thread count: meas/MACs = 2, 4, 8 -> 4 ms per MAC
    s = ranking_scores([2, 8, 24], [2, 8, 24], [1, 2, 3], [1, 1, 1])
    assert s["mape_macs"] == pytest.approx((100 + 0 + 50) / 3)  # 4, 8, 12 against 2, 8, 24
    assert s["spearman_sim"] == pytest.approx(1.0) and s["mape_sim"] == 0.0
    with pytest.raises(ValueError, match="one measured"):
        ranking_scores([1, 2], [1], [1, 2], [1, 1])
    with pytest.raises(ValueError, match="> 0"):
        ranking_scores([1, 0, 3], [1, 2, 3], [1, 2, 3], [1, 1, 1])


def test_spearman_difference_interval():
    meas = list(range(1, 11))
    perfect, reversed_ = meas, meas[::-1]
    s = ranking_scores(meas, perfect, reversed_, [1] * 10)
    assert s["spearman_sim"] == pytest.approx(1.0) and s["spearman_macs"] == pytest.approx(-1.0)
    lo, hi = s["spearman_diff_ci95"]
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)  # every resample keeps the perfect and the reversed order (ties alike)
    same = ranking_scores(meas, [1, 3, 2, 4, 5, 7, 6, 8, 10, 9], [1, 3, 2, 4, 5, 7, 6, 8, 10, 9], [1] * 10)
    assert same["spearman_diff_ci95"] == pytest.approx([0.0, 0.0])  # paired draws: equal rankings never differ
    assert ranking_scores([1, 2], [1, 2], [1, 2], [1, 1])["spearman_diff_ci95"] is None  # no cell of >= 3 rows


def _feat(name: str, macs: float, n_ops: int) -> GraphFeatures:
    """A graph of ``n_ops`` equal conv1x1 rows (class 0) holding ``macs`` MACs, compute-bound."""
    work = np.full(n_ops, macs / n_ops)
    return GraphFeatures(name, tuple(f"n{i}" for i in range(n_ops)), ("Conv",) * n_ops, np.zeros(n_ops, np.int64),
                         work, work * 1e-3, int(macs), {})


def test_lomo_never_fits_the_held_out_model_and_can_beat_macs():
    # latency = 1 ms x MACs/1e6 + 0.5 ms per operator: many small layers make a net slow at few MACs,
    # which the MACs proxy cannot see and the profile's per-layer overhead can
    specs = [("a", 1e6, 40), ("b", 4e6, 2), ("c", 2e6, 10), ("d", 8e6, 1), ("e", 3e6, 30), ("f", 6e6, 4)]
    rows = [CalibrationRow(_feat(n, m, k), m / 1e6 + 0.5 * k, 1, n, n) for n, m, k in specs]
    out = lomo_ranking(rows, prior_profile("host"))
    # the MACs scale of a held-out row is fitted on the five others only: exp(median log(lat/MACs))
    for r in out["rows"]:
        others = [x for x in rows if x.group != r["label"]]
        s = math.exp(float(np.median([math.log(x.latency_ms / x.features.macs) for x in others])))
        assert r["macs_ms"] == pytest.approx(s * r["macs"])
    meas = [r.latency_ms for r in rows]  # 21, 5, 7, 8.5, 18, 8 -> MACs order is far off
    assert out["spearman_macs"] == pytest.approx(float(__import__("scipy.stats").stats.spearmanr(
        [m for _, m, _ in specs], meas).statistic))
    assert out["spearman_sim"] > out["spearman_macs"] and out["beats_macs"] is True


def _profile_file(tmp_path: Path, name: str, ranking: dict | None) -> Path:
    data = load_profile("host").to_dict() | {"name": name}
    data["fit"] = {k: v for k, v in (data["fit"] or {}).items() if k != "ranking"}
    if ranking is not None:
        data["fit"]["ranking"] = ranking
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def _ranking(sim: float, macs: float) -> dict:
    return {"spearman_sim": sim, "spearman_macs": macs, "mape_sim": 19.3, "mape_macs": 67.3, "n_models": 11,
            "beats_macs": sim > macs}


def test_warning_exactly_for_profiles_that_do_not_beat_macs(tmp_path, caplog):
    cases = {"better": _ranking(0.95, 0.91), "worse": _ranking(0.86, 0.91), "tie": _ranking(0.9, 0.9),
             "unchecked": None}
    for name, ranking in cases.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="devices.sim.device"):
            dev = SimDevice(_profile_file(tmp_path, name, ranking))
        warned = [r.getMessage() for r in caplog.records if "no better than MACs" in r.getMessage()]
        assert bool(warned) is (name != "better"), name
        assert (dev.hello()["macs_warning"] is None) is (name == "better")
        if name == "worse":
            assert "Spearman 0.860 vs MACs 0.910 on 11 models" in warned[0]
        dev.close()


@pytest.mark.parametrize("name", available_profiles())
def test_shipped_profiles_verdict_matches_their_stored_spearmans(name):
    p = load_profile(name)
    r = (p.fit or {}).get("ranking")
    expected = r is None or not (r["spearman_sim"] > r["spearman_macs"])  # independent of beats_macs
    assert no_better_than_macs(p) is expected
    assert (macs_warning(p) is not None) is expected
    if r is not None:
        assert p.fit["no_better_than_macs"] is expected
        assert r["n_models"] >= 3 and all(k in r for k in ("mape_sim", "mape_macs", "method"))


def _cli(*args: str, env_dir: Path | None = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ)
    if env_dir is not None:
        env["HILPRUNE_SIM_PROFILES"] = str(env_dir)
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=REPO, capture_output=True, text=True, check=False,
                          env=env)


def test_sim_profiles_shows_both_spearmans_and_predict_warns(tmp_path):
    _profile_file(tmp_path, "aaa-worse", _ranking(0.861, 0.912))
    _profile_file(tmp_path, "aaa-better", _ranking(0.951, 0.912))
    out = _cli("sim", "profiles", env_dir=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = {ln.split()[0]: ln for ln in out.stdout.splitlines() if ln.startswith("sim:")}
    assert "0.861 / 0.912" in lines["sim:aaa-worse"] and lines["sim:aaa-worse"].endswith("NO BETTER THAN MACS")
    assert "0.951 / 0.912" in lines["sim:aaa-better"] and lines["sim:aaa-better"].endswith("beats MACs")
    assert "19.3% / 67.3%" in lines["sim:aaa-better"]
    js = {r["name"]: r for r in json.loads(_cli("sim", "profiles", "--json", env_dir=tmp_path).stdout)}
    assert js["aaa-worse"]["lomo_spearman_sim"] == 0.861 and js["aaa-worse"]["lomo_spearman_macs"] == 0.912
    assert js["aaa-worse"]["no_better_than_macs"] is True and js["aaa-better"]["no_better_than_macs"] is False

    import onnx

    sys.path.insert(0, str(REPO / "tests" / "devices"))
    from test_sim import conv_net

    g = tmp_path / "net.onnx"
    onnx.save(conv_net((8, 16, 32), 1), str(g))
    worse = _cli("predict", str(g), "--device", "sim:aaa-worse", "--json", env_dir=tmp_path)
    better = _cli("predict", str(g), "--device", "sim:aaa-better", "--json", env_dir=tmp_path)
    assert worse.returncode == better.returncode == 0, worse.stderr + better.stderr
    assert "ranks networks no better than MACs alone" in worse.stderr
    assert "no better than MACs" not in better.stderr
    assert json.loads(worse.stdout)[0]["latency_ms"] > 0


def _grouped_conv_graph(groups: int):
    """ONNX: one 3x3 stride-1 conv, 64 -> 64 channels at 8x8, ``groups`` groups (weights (64, 64/groups, 3, 3))."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((64, 64 // groups, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=groups, pads=[1, 1, 1, 1], name="conv")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 8, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("groups", "g_min", "costed_as"), [
    (2, 16, "conv3x3s1"),   # 32 channels per group >= 16: an ordinary conv per group (CPU runtimes)
    (8, 16, "grouped"),     # 8 per group: the grouped rate
    (2, 0, "grouped"),      # a GPU profile (0): every grouped conv at the grouped rate
])
def test_wide_groups_are_costed_as_ordinary_convs(groups, g_min, costed_as):
    from devices.sim import (
        OP_CLASSES,
        SimParams,
        SimProfile,
        features_from_model,
        predict_latency_ms,
    )
    from devices.sim.profile import effective_class

    f = features_from_model(_grouped_conv_graph(groups))
    assert OP_CLASSES[int(f.op_class[0])] == "grouped" and OP_CLASSES[int(f.dense_class[0])] == "conv3x3s1"
    macs = 64 * 8 * 8 * (64 // groups) * 9  # output elements x C_in/group x kH x kW
    assert f.macs == macs
    rates = np.arange(1.0, 9.0)  # GMAC/s per class, all different
    params = SimParams(rates, 1e9, 0.0, 0.0, 1.0, 1, 1.0, g_min)
    prof = SimProfile("t", 1, "", 1, 1, params)
    assert OP_CLASSES[int(effective_class(f, params)[0])] == costed_as
    expected_ms = 1e3 * macs / (rates[OP_CLASSES.index(costed_as)] * 1e9)  # compute-bound: bandwidth 1e9 GB/s
    assert predict_latency_ms(f, prof, threads=1) == pytest.approx(expected_ms)
