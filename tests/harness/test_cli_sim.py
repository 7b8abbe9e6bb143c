"""``hilprune predict`` and ``hilprune sim calibrate``; simulated rows never answer for a measured device."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from devices.sim import SimProfile, features_from_model, load_profile, predict_latency_ms

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "devices"))
from test_sim import conv_net  # noqa: E402


def _run(*args: str) -> subprocess.CompletedProcess:
    """``python -m harness.cli ARGS`` in a fresh interpreter that reports torch/tvm imports on stderr."""
    code = ("import sys; from harness.cli import main; rc = main(sys.argv[1:]); "
            "heavy = [m for m in ('torch', 'tvm') if m in sys.modules]; "
            "print('HEAVY', heavy, file=sys.stderr); sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> list[Path]:
    import onnx

    d = tmp_path_factory.mktemp("graphs")
    paths = []
    for i, (widths, blocks) in enumerate([((8, 16, 32), 1), ((16, 32, 64), 2), ((32, 64, 128), 2), ((16, 32, 64), 4)]):
        p = d / f"net{i}.onnx"
        onnx.save(conv_net(widths, blocks), str(p))
        paths.append(p)
    return paths


def test_predict_json_shape_and_no_torch_or_tvm(graphs):
    out = _run("predict", str(graphs[0]), str(graphs[1]), "--device", "sim:rpi4", "--json")
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stderr  # neither torch nor TVM was imported
    data = json.loads(out.stdout)
    assert isinstance(data, list) and len(data) == 2
    for rec, path in zip(data, graphs[:2]):
        assert rec["model"] == str(path)
        assert isinstance(rec["latency_ms"], float) and rec["latency_ms"] > 0
        assert rec["source"] == "simulated" and rec["device"] == "sim:rpi4"
        want = predict_latency_ms(features_from_model(__import__("onnx").load(str(path))), load_profile("rpi4"))
        assert rec["latency_ms"] == pytest.approx(want, rel=1e-12)
    assert data[1]["latency_ms"] > data[0]["latency_ms"]


def test_predict_layers_and_text(graphs):
    out = _run("predict", str(graphs[1]), "--device", "sim:jetson-nano", "--layers", "--json")
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)[0]
    assert rec["layers"] and {"node", "op_type", "op_class", "latency_ms", "bound"} <= set(rec["layers"][0])
    text = _run("predict", str(graphs[1]), "--device", "sim:jetson-nano", "--layers")
    assert text.returncode == 0 and "Conv" in text.stdout and "ms" in text.stdout


def test_predict_bad_graph_names_the_operator(tmp_path, graphs):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("GRU", ["input", "w", "r"], ["output"], name="gru_7", hidden_size=4)], "g",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
                           (("input", [1, 1, 4]), ("w", [1, 12, 4]), ("r", [1, 12, 4]))],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)])
    bad = tmp_path / "gru.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(bad))
    out = _run("predict", str(graphs[0]), str(bad), "--device", "sim:rpi4")
    assert out.returncode == 2
    assert "hilprune: error:" in out.stderr and "'GRU'" in out.stderr and "gru_7" in out.stderr
    out = _run("predict", str(graphs[0]), "--device", "local")
    assert out.returncode == 2 and "sim:PROFILE" in out.stderr
    out = _run("predict", str(graphs[0]), "--device", "sim:atari2600")
    assert out.returncode == 2 and "unknown simulator profile" in out.stderr


def test_calibrate_from_csv_writes_profile_with_fit(tmp_path, graphs):
    truth = load_profile("rpi4")
    csv_path = tmp_path / "lat.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["onnx", "latency_ms", "threads", "group"])
        for p in graphs:
            for t in (1, 4):
                w.writerow([str(p), predict_latency_ms(features_from_model(__import__("onnx").load(str(p))), truth, t),
                            t, p.stem])
    out_path = tmp_path / "rpi4-new.json"
    out = _run("sim", "calibrate", "--profile", "rpi4", "--from", str(csv_path), "--out", str(out_path), "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    prof = SimProfile.load(out_path)
    assert prof.version == truth.version + 1 == rep["version"]
    assert prof.fit["n_rows"] == 8 and prof.fit["mape"] < 5.0 and "leave_one_group_out_mape" in prof.fit
    assert prof.provenance["source"]["kind"] == "csv" and "sim calibrate" in prof.provenance["command"]
    assert len(prof.provenance["rows"]) == 8


def test_calibrate_from_db_and_cache_never_mixes_sources(tmp_path, graphs):
    from harness.compile.export import sha256_file
    from harness.store import ResultsStore

    db = tmp_path / "r.db"
    store = ResultsStore(db)
    truth = load_profile("rpi4")
    key = dict(target="host", backend="onnxruntime", tuning_key="untuned")
    me, sim = "measured|board=local@h|machine=x86_64|cpu=c|cores=2", "simulated|profile=rpi4|version=1"
    for p in graphs:
        lat = predict_latency_ms(features_from_model(__import__("onnx").load(str(p))), truth, 1) * 0.5
        stats = dict(p50=lat, p90=lat, mean=lat, std=0.0, min=lat, max=lat, cov=0.0, n=1, unstable=False)
        store.add_measurement(model="net", arch_signature=p.stem, device="local", source="measured",
                              stats=stats, latency_raw_ms=[lat], onnx_sha256=sha256_file(p), device_identity=me,
                              **key)
    # a simulated row for the same architecture, on the simulator device
    store.add_measurement(model="net", arch_signature="net0", device="sim:rpi4", source="simulated",
                          stats=dict(p50=99.0), latency_raw_ms=[99.0], device_identity=sim, **key)
    # the latency cache is keyed by device and identity: the simulated row never answers for `local`
    hit = store.find_measurement(model="net", arch_signature="net0", device="local", identity=me, **key)
    assert hit["source"] == "measured" and hit["latency_p50_ms"] != 99.0
    assert store.find_measurement(model="net", arch_signature="net0", device="sim:rpi4", identity=sim,
                                  **key)["source"] == "simulated"
    assert store.find_measurement(model="net", arch_signature="net9", device="local", identity=me, **key) is None
    store.close()

    out_path = tmp_path / "h.json"
    out = _run("sim", "calibrate", "--profile", "host", "--from-db", "--device", "local", "--backend", "onnxruntime",
               "--db", str(db), "--onnx-dir", str(graphs[0].parent), "--out", str(out_path))
    assert out.returncode == 0, out.stderr
    prof = SimProfile.load(out_path)
    assert prof.fit["n_rows"] == 4 and prof.provenance["source"]["device"] == "local"
    # only measured rows are used, and a sim: device is refused
    out = _run("sim", "calibrate", "--profile", "host", "--from-db", "--device", "sim:rpi4", "--backend",
               "onnxruntime", "--db", str(db), "--onnx-dir", str(graphs[0].parent), "--out", str(out_path))
    assert out.returncode == 2 and "simulated" in out.stderr
    out = _run("sim", "calibrate", "--profile", "host", "--from-db", "--db", str(db), "--out", str(out_path))
    assert out.returncode == 2 and "backend 'tvm'" in out.stderr


def test_sim_profiles_lists_shipped_profiles():
    out = _run("sim", "profiles", "--json")
    assert out.returncode == 0, out.stderr
    names = {r["name"] for r in json.loads(out.stdout)}
    assert {"rpi4", "rpi5", "jetson-nano", "jetson-orin-nano"} <= names


@pytest.mark.slow
def test_search_runs_on_a_simulated_device(tmp_path):
    """The search takes ``sim:PROFILE`` like any device; every latency it stores is simulated and deterministic."""
    import sqlite3

    from harness.search.run import SearchConfig, run_search

    small = dict(episodes=1, subset=500, train_epochs=1, eval_samples=100, tune_trials=0,
                 finetune_epochs=0, repeat=5, env=dict(max_steps=2, target_ratio=0.5), device="sim:rpi4")
    ws = dict(out=str(tmp_path / "runs"), db=str(tmp_path / "r.db"), cache_dir=str(tmp_path / "cache"))
    summary = run_search(SearchConfig(**small, **ws), progress=False)
    assert summary["baseline"]["latency_p50_ms"] > 0
    con = sqlite3.connect(ws["db"])
    rows = con.execute("SELECT device, source, latency_raw_ms FROM measurements").fetchall()
    cands = con.execute("SELECT device, source FROM candidates WHERE error_kind IS NULL").fetchall()
    con.close()
    assert rows and {(d, s) for d, s, _ in rows} == {("sim:rpi4", "simulated")}
    assert all(len(set(json.loads(raw))) == 1 for _, _, raw in rows)  # every repeat the same prediction
    assert cands and {(d, s) for d, s in cands} == {("sim:rpi4", "simulated")}
    assert not (tmp_path / "cache" / "artifacts").exists()  # the simulator needs no TVM build
    assert summary["evaluator"]["compiled"] == 0
