"""The latency simulator (devices/sim): graph features, cost, profiles, calibration, device.

Graphs are built with onnx.helper (no torch), so these tests are fast.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devices.base import MeasureConfig
from devices.registry import make_device
from devices.sim import (
    OP_CLASSES,
    GraphFeatures,
    SimDevice,
    SimGraphError,
    SimParams,
    SimProfile,
    available_profiles,
    features_from_model,
    layer_breakdown,
    load_features,
    load_profile,
    predict_latency_ms,
)
from devices.sim.calibrate import PRIORS, CalibrationRow, fit_profile, leave_one_group_out, prior_profile

REPO = Path(__file__).resolve().parents[2]
BOARD_PROFILES = ("rpi4", "rpi5", "jetson-nano", "jetson-orin-nano")


def conv_net(widths=(16, 32, 64), blocks=2, hw=32, c_in=3, classes=10, depthwise=False):
    """Stem conv, then per stage ``blocks`` 3x3 convs (+Relu, +Add residual), stride 2 between stages,
    GlobalAveragePool, Flatten, Gemm. Optional depthwise+pointwise pairs instead of 3x3 convs."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def w(name, shape):
        inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.01, name))
        return name

    cur, c, k = "input", c_in, 0

    def conv(x, c_out, c_in_, kernel=3, stride=1, group=1):
        nonlocal k
        k += 1
        out = f"c{k}"
        nodes.append(helper.make_node("Conv", [x, w(f"w{k}", (c_out, c_in_ // group, kernel, kernel)), w(f"b{k}", (c_out,))],
                                      [out], kernel_shape=[kernel, kernel], strides=[stride, stride],
                                      pads=[kernel // 2] * 4, group=group, name=f"conv{k}"))
        nodes.append(helper.make_node("Relu", [out], [out + "r"], name=f"relu{k}"))
        return out + "r"

    cur = conv(cur, widths[0], c)
    c = widths[0]
    for s, width in enumerate(widths):
        for b in range(blocks):
            stride = 2 if (b == 0 and s > 0) else 1
            if depthwise:
                y = conv(conv(cur, c, c, 3, stride, group=c), width, c, 1)
            else:
                y = conv(cur, width, c, 3, stride)
            if stride == 1 and width == c:
                nodes.append(helper.make_node("Add", [y, cur], [y + "a"], name=f"add{k}"))
                y = y + "a"
            cur, c = y, width
    nodes.append(helper.make_node("GlobalAveragePool", [cur], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    nodes.append(helper.make_node("Gemm", ["flat", w("fw", (classes, c)), w("fb", (classes,))], ["output"],
                                  transB=1, name="fc"))
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, c_in, hw, hw])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _profiles():
    return [load_profile(n) for n in available_profiles()] + [prior_profile(n) for n in PRIORS]


def test_wider_and_deeper_graphs_predict_slower():
    base = features_from_model(conv_net((16, 32, 64), 2), "base")
    wider = features_from_model(conv_net((32, 64, 128), 2), "wider")
    deeper = features_from_model(conv_net((16, 32, 64), 4), "deeper")
    for prof in _profiles():
        b = predict_latency_ms(base, prof)
        assert predict_latency_ms(wider, prof) > b, prof.name
        assert predict_latency_ms(deeper, prof) > b, prof.name
        assert b > 0 and math.isfinite(b)


def test_conv_macs_by_hand_and_classes():
    from onnx import TensorProto, helper, numpy_helper

    z = lambda name, shape: numpy_helper.from_array(np.zeros(shape, np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["a"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], name="k3s2"),
        helper.make_node("Conv", ["a", "w2"], ["b"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8, name="dw"),
        helper.make_node("Conv", ["b", "w3"], ["c"], kernel_shape=[1, 1], name="pw"),
        helper.make_node("Conv", ["c", "w4"], ["d"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=4, name="grp"),
        helper.make_node("Conv", ["d", "w5"], ["e"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="k3s1"),
        helper.make_node("Flatten", ["e"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fw"], ["output"], transB=1, name="fc"),
    ]
    inits = [z("w1", (8, 3, 3, 3)), z("w2", (8, 1, 3, 3)), z("w3", (16, 8, 1, 1)), z("w4", (16, 4, 3, 3)),
             z("w5", (4, 16, 3, 3)), z("fw", (10, 4 * 8 * 8))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    f = features_from_model(model, "g")
    # by hand: output elements x (C_in / group) x kH x kW
    k3s2 = (8 * 8 * 8) * 3 * 9          # 1x8x8x8 out
    dw = (8 * 8 * 8) * 1 * 9
    pw = (16 * 8 * 8) * 8 * 1
    grp = (16 * 8 * 8) * 4 * 9
    k3s1 = (4 * 8 * 8) * 16 * 9
    fc = 10 * 256
    assert list(f.work) == [k3s2, dw, pw, grp, k3s1, fc]
    assert [OP_CLASSES[i] for i in f.op_class] == ["conv_kxk", "depthwise", "conv1x1", "grouped", "conv3x3s1", "dense"]
    assert f.macs == k3s2 + dw + pw + grp + k3s1 + fc
    # traffic of the first conv: input + weights + output, fp32
    assert f.bytes[0] == 4 * (3 * 16 * 16 + 8 * 3 * 3 * 3 + 8 * 8 * 8)
    assert "flat" not in f.node_names  # shape-only: no cost


def test_bad_graph_error_names_the_operator(tmp_path):
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["input"], ["r"], name="ok"),
             helper.make_node("NonMaxSuppression", ["r", "r"], ["output"], name="nms_1")]
    graph = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(SimGraphError, match="NonMaxSuppression") as info:
        features_from_model(model, "bad")
    assert info.value.op_type == "NonMaxSuppression" and info.value.node == "nms_1"
    assert "nms_1" in str(info.value)

    custom = helper.make_graph([helper.make_node("FancyConv", ["input"], ["output"], name="fc0", domain="com.acme")],
                               "c", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                               [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])])
    cm = helper.make_model(custom, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.acme", 1)])
    with pytest.raises(SimGraphError, match="FancyConv"):
        features_from_model(cm, "c")

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf at all\xff" * 10)
    with pytest.raises(SimGraphError, match="junk.onnx"):
        load_features(junk)
    with pytest.raises(SimGraphError, match="cannot read"):
        load_features(tmp_path / "missing.onnx")


def test_dynamic_input_shape_is_refused():
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"], name="r")], "d",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])])
    with pytest.raises(SimGraphError, match="static shape"):
        features_from_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "d")


def test_profile_round_trips_through_its_file(tmp_path):
    feats = features_from_model(conv_net(), "n")
    for prof in _profiles():
        path = prof.save(tmp_path / f"{prof.name}.json")
        back = SimProfile.load(path)
        assert back.to_dict() == prof.to_dict()
        assert predict_latency_ms(feats, back) == predict_latency_ms(feats, prof)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a hilprune simulator profile"):
        SimProfile.load(bad)
    with pytest.raises(ValueError, match="available"):
        load_profile("no-such-board")


def test_shipped_profiles_have_provenance_and_fit():
    names = set(available_profiles())
    assert {"rpi4", "rpi5", "jetson-nano", "jetson-orin-nano", "host"} <= names
    for n in names:
        p = load_profile(n)
        assert p.provenance.get("calibrated") is True and p.provenance.get("source"), n
        assert p.fit is not None and p.fit["n_rows"] >= 1 and 0 <= p.fit["mape"] < 25, n  # percent; shipped fits 3-21 %


def _synthetic_rows(params: SimParams, cores: int, n_graphs: int = 60, seed: int = 0) -> list[CalibrationRow]:
    rng = np.random.default_rng(seed)
    truth = SimProfile("truth", 1, "", 4, cores, params)
    rows = []
    for g in range(n_graphs):
        n = int(rng.integers(5, 60))
        cls = rng.integers(0, len(OP_CLASSES), n)
        work = np.exp(rng.uniform(np.log(1e3), np.log(5e7), n))
        # bytes per op from compute-heavy (0.01 B/op) to memory-heavy (20 B/op)
        nbytes = work * np.exp(rng.uniform(np.log(0.01), np.log(20.0), n))
        chans = rng.choice([0, 8, 16, 12, 20], size=(n, 2))  # some off the 8-channel grid
        f = GraphFeatures(f"g{g}", tuple(f"n{i}" for i in range(n)), ("X",) * n, cls.astype(np.int64), work, nbytes,
                          0, {}, chans.astype(np.int64))
        threads = int(rng.choice([1, 2, 4]))
        rows.append(CalibrationRow(f, predict_latency_ms(f, truth, threads=threads), threads, f"g{g}", f"m{g % 4}"))
    return rows


def test_calibration_recovers_known_parameters():
    true = SimParams(np.array([6.0, 25.0, 9.0, 1.5, 3.0, 2.5, 1.2, 2.0]), 7.5, 4.0, 0.3, 0.7, 8, 1.8)
    rows = _synthetic_rows(true, cores=4)
    prior = prior_profile("rpi4")
    start = prior.with_params(SimParams.from_dict(prior.params.to_dict() | {"channel_align": 8}))
    report = fit_profile(rows, start, prior_weight=0.0)
    got = report.profile.params
    np.testing.assert_allclose(got.gops_s, true.gops_s, rtol=0.02)
    assert got.bandwidth_gb_s == pytest.approx(true.bandwidth_gb_s, rel=0.02)
    assert got.layer_overhead_us == pytest.approx(true.layer_overhead_us, rel=0.02)
    assert got.model_overhead_ms == pytest.approx(true.model_overhead_ms, rel=0.05)
    assert got.thread_exponent == pytest.approx(true.thread_exponent, rel=0.02)
    assert got.misaligned_factor == pytest.approx(true.misaligned_factor, rel=0.02) and got.channel_align == 8
    assert report.stats["mape"] < 0.5
    assert report.profile.version == start.version + 1
    lomo = leave_one_group_out(rows, start, prior_weight=0.0)
    assert lomo["mape"] < 1.0 and lomo["n_rows"] == len(rows)


def test_calibration_refuses_bad_input():
    start = prior_profile("host")
    with pytest.raises(ValueError, match="at least one"):
        fit_profile([], start)
    f = features_from_model(conv_net(), "n")
    with pytest.raises(ValueError, match="> 0"):
        fit_profile([CalibrationRow(f, -1.0)], start)
    with pytest.raises(ValueError, match="free parameters"):
        fit_profile([CalibrationRow(f, 1.0)], start, prior_weight=0.0)


def test_misaligned_channels_cost_more_on_host():
    aligned = features_from_model(conv_net((16, 32, 64), 2), "a")
    off_grid = features_from_model(conv_net((15, 31, 63), 2), "b")  # fewer MACs, off the 16-channel grid
    assert off_grid.macs < aligned.macs
    host = load_profile("host")
    assert 15 % host.params.channel_align != 0 and host.params.misaligned_factor[OP_CLASSES.index("conv3x3s1")] > 1.2
    assert predict_latency_ms(off_grid, host) > predict_latency_ms(aligned, host)
    flat = host.with_params(SimParams.from_dict(host.params.to_dict() | {"misaligned_factor": 1.0}))
    assert predict_latency_ms(off_grid, flat) < predict_latency_ms(aligned, flat)


def test_layer_breakdown_sums_to_prediction():
    f = features_from_model(conv_net(depthwise=True), "dw")
    prof = load_profile("rpi4")
    rows = layer_breakdown(f, prof)
    assert len(rows) == len(f)
    total = sum(r["latency_ms"] for r in rows) + prof.params.model_overhead_ms
    assert total == pytest.approx(predict_latency_ms(f, prof), rel=1e-12)
    assert {r["op_class"] for r in rows} >= {"depthwise", "conv1x1", "dense", "elementwise"}


def _artifact(tmp_path: Path, model) -> Path:
    import onnx

    d = tmp_path / "art"
    d.mkdir()
    onnx.save(model, str(d / "model.onnx"))
    (d / "manifest.json").write_text(json.dumps({
        "format_version": 1, "library": "lib.so", "onnx": "model.onnx", "library_sha256": "abc", "arch": "x86_64",
        "input": {"name": "input", "shape": [1, 3, 32, 32], "dtype": "float32"},
        "output": {"shape": [1, 10], "dtype": "float32"}}))
    return d


def test_sim_device_is_deterministic_and_simulated(tmp_path):
    art = _artifact(tmp_path, conv_net())
    dev = make_device("sim:rpi4")
    assert isinstance(dev, SimDevice) and dev.name == "sim:rpi4"
    cfg = MeasureConfig(repeat=7, warmup=2)
    a, b = dev.measure(art, cfg), dev.submit(art, cfg).result()
    dev.close()
    assert a.ok and b.ok
    m = a.value
    assert m.source == "simulated" and m.device == "sim:rpi4" and len(m.latency_ms) == 7
    assert m.latency_ms == b.value.latency_ms and m.stats.std_ms < 1e-12 and not m.stats.unstable
    assert m.stats.p50_ms == pytest.approx(predict_latency_ms(load_features(art / "model.onnx"), load_profile("rpi4")))
    assert m.output_shape == (1, 10) and m.artifact_sha256 == "abc"
    one = SimDevice("rpi4").measure(art, MeasureConfig(num_threads=1)).value
    assert one.stats.p50_ms > m.stats.p50_ms  # 1 thread is slower than the profile's 4


def test_sim_device_errors_are_values(tmp_path):
    from onnx import TensorProto, helper

    dev = SimDevice("host")
    res = dev.measure(tmp_path / "nowhere", MeasureConfig())
    assert not res.ok and res.error.kind.value == "load_failed"
    graph = helper.make_graph([helper.make_node("Loop", ["input"], ["output"], name="loop0")], "l",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])])
    bad = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    res = dev.measure(_artifact(tmp_path, bad), MeasureConfig())
    assert not res.ok and "Loop" in res.error.message and "sim:host" in res.error.message
    with pytest.raises(ValueError, match="unknown simulator profile"):
        make_device("sim:nope")


def test_devices_sim_imports_neither_onnx_nor_scipy():
    code = ("import sys; import devices.sim, devices.registry; d = devices.registry.make_device('sim:rpi4'); "
            "print(sorted(m for m in ('onnx', 'scipy', 'torch', 'tvm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
