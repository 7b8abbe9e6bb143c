"""End to end on ``local`` (real TVM builds, the real daemon, real SQLite): ``bench --suite``,
``bench compare`` and ``report`` (issue 6).

A 2-benchmark suite of small ONNX files exported here runs once; then one
benchmark's ONNX file is replaced by a clearly slower model under the same
name (three 64-channel 3x3 convs instead of one 8-channel conv, ~1,500x the
MACs): ``compare`` exits 1 and names it. A third run adds a benchmark whose
ONNX file is missing: it is recorded as failed and the others still run
(from the artifact cache).
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from harness.cli import main

SHAPE = (1, 1, 16, 16)


def _export(path, widths, seed=0):
    import torch

    from harness.compile.export import export_onnx

    layers, c_in = [], SHAPE[1]
    for w in widths:
        layers += [torch.nn.Conv2d(c_in, w, 3, padding=1), torch.nn.ReLU()]
        c_in = w
    torch.manual_seed(seed)
    model = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(c_in, 4)).eval()
    with torch.no_grad():
        export_onnx(model, SHAPE, path)


def _suite(path, benchmarks, reference=None):
    text = '[suite]\nname = "e2e"\n' + (f'reference = "{reference}"\n' if reference else "")
    for name, onnx in benchmarks:
        text += (f'[[benchmark]]\nname = "{name}"\nonnx = "{onnx}"\ninput_shape = {list(SHAPE)}\n'
                 'targets = ["host"]\ndevices = ["local"]\n')
    path.write_text(text)


def _bench(capsys, suite, db, cache, expect=0, extra=()):
    # --threads 1: a 2-thread pool on a loaded 2-core machine waits for its descheduled worker at every
    # operator, which inflates a tiny model far more than a big one and squeezes the ratios compared below
    code = main(["bench", "--suite", str(suite), "--db", str(db), "--cache-dir", str(cache), "--tune-trials", "0",
                 "--repeat", "10", "--warmup", "3", "--min-repeat-ms", "20", "--threads", "1", "--json", *extra])
    out, err = capsys.readouterr()
    assert code == expect, err
    return json.loads(out)


@pytest.mark.slow
def test_suite_run_compare_and_report_end_to_end(tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    _export(models / "small.onnx", [8])
    _export(models / "net.onnx", [8])
    suite, db, cache = tmp_path / "nightly.toml", tmp_path / "r.db", tmp_path / "cache"
    _suite(suite, [("small", "models/small.onnx"), ("net", "models/net.onnx")])

    first = _bench(capsys, suite, db, cache)
    assert (first["ok"], first["failed"], first["skipped"]) == (2, 0, [])
    assert [r["benchmark"] for r in first["results"]] == ["small", "net"]
    assert all(r["device"] == "local" and r["target"] == "host" and r["latency_p50_ms"] > 0 for r in first["results"])

    _export(models / "net.onnx", [64, 64, 64])  # same name, clearly slower
    second = _bench(capsys, suite, db, cache)
    assert second["ok"] == 2
    p50 = {r["benchmark"]: r["latency_p50_ms"] for r in second["results"]}
    first_p50 = {r["benchmark"]: r["latency_p50_ms"] for r in first["results"]}
    assert p50["net"] > 2 * first_p50["net"]

    code = main(["bench", "compare", "--db", str(db), "--json"])
    j = json.loads(capsys.readouterr().out)
    assert code == 1 and j["run_id"] == second["run_id"]
    regressions = [c for c in j["comparisons"] if c["status"] == "regression"]
    # "small" is unchanged; on 2 shared, loaded cores its own verdict is not asserted (the synthetic
    # history in test_regress.py checks that noise raises nothing)
    assert "net" in [c["benchmark"] for c in regressions]
    net = next(c for c in regressions if c["benchmark"] == "net")
    assert net["delta"] > 1.0 and net["history_n"] == 1 and net["baseline_p50_ms"] == first_p50["net"]
    code = main(["bench", "compare", "--db", str(db)])
    out = capsys.readouterr().out
    assert code == 1 and any(line.split()[:2] == ["REGRESSION", "net"] for line in out.splitlines())

    # a missing ONNX file: recorded as failed, the others still run (compiled once: cache hits now)
    _suite(suite, [("small", "models/small.onnx"), ("gone", "models/gone.onnx"), ("net", "models/net.onnx")])
    third = _bench(capsys, suite, db, cache, expect=1)  # exit 1: one benchmark failed (all ran)
    status = {r["benchmark"]: r for r in third["results"]}
    assert (third["ok"], third["failed"]) == (2, 1)
    assert status["gone"]["status"] == "failed" and status["gone"]["error_kind"] == "onnx_missing"
    assert "gone.onnx" in status["gone"]["error_message"] and "not found" in status["gone"]["error_message"]
    assert status["small"]["compile_cache_hit"] is True and status["net"]["compile_cache_hit"] is True
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT benchmark, status, error_kind, measurement_id IS NOT NULL FROM bench_results "
                            "WHERE run_id=? ORDER BY id", (third["run_id"],)).fetchall()
        run = conn.execute("SELECT status, metadata_json FROM bench_runs WHERE run_id=?",
                           (third["run_id"],)).fetchone()
    assert rows == [("small", "ok", None, 1), ("gone", "failed", "onnx_missing", 0), ("net", "ok", None, 1)]
    meta = json.loads(run[1])
    assert run[0] == "finished" and meta["tvm_version"].startswith("0.27") and meta["python_version"]
    assert "local" in meta["devices"] and meta["devices"]["local"]["hello"]
    assert "suite_git" in meta and "hilprune_git" in meta

    # the report: history plots of both benchmarks, the regression flagged, CSV export
    out_dir = tmp_path / "report"
    code = main(["report", "--db", str(db), "--out", str(out_dir), "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert code == 0
    index = (out_dir / "index.html").read_text()
    for bench in ("small", "net"):
        name = next(p for p in rep["plots"] if f"history__{bench}__local__host__tvm__measured" in p)
        assert (out_dir / "plots" / name.split("/")[-1]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"src='plots/{name.split('/')[-1]}'" in index
    assert "regression(s) flagged" in index and "onnx_missing" in index
    assert (out_dir / "data" / "bench_results.csv").read_text().count("\n") == 2 + 2 + 3 + 1


def test_devices_that_cannot_run_a_target_are_skipped_not_failed():
    from harness.compile.targets import resolve_target
    from harness.nightly.run import _Devices

    devs = _Devices(None)
    assert "aarch64/cpu code; this machine's CPU is x86_64" in devs.skip_reason(resolve_target("rpi4"), "local")
    assert devs.skip_reason(resolve_target("host"), "local") is None
    assert devs.skip_reason(resolve_target("rpi4"), "sim:rpi4") is None  # the simulator reads the ONNX graph


@pytest.mark.slow
def test_the_example_nightly_suite_runs_here(tmp_path, capsys):
    """benchmarks/suites/nightly.toml: ResNet-20 untuned on local and the rpi4 simulator, and through ORT, each
    also as a ratio to the reference (ResNet-20 at 16x16) on the same device and backend."""
    from pathlib import Path

    suite = Path(__file__).resolve().parents[2] / "benchmarks" / "suites" / "nightly.toml"
    summary = _bench(capsys, suite, tmp_path / "r.db", tmp_path / "cache", extra=("--ratio-max-pairs", "16"))
    got = {(r["benchmark"], r["device"], r["backend"]): r for r in summary["results"]}
    assert set(got) == {("ref-resnet20-16", "local", "tvm"), ("ref-resnet20-16", "sim:rpi4", "tvm"),
                        ("resnet20-28", "local", "tvm"), ("resnet20-28", "sim:rpi4", "tvm"),
                        ("resnet20-28-ort", "local", "onnxruntime")}
    assert got[("resnet20-28", "sim:rpi4", "tvm")]["source"] == "simulated"
    assert got[("resnet20-28", "local", "tvm")]["source"] == "measured"
    assert summary["reference"] == "ref-resnet20-16" and summary["ratios"] == 3
    # 28x28 against 16x16: 3.06x the MACs (784 / 256 pixels, same layers); fixed per-call costs pull a measured
    # ratio below that, never below 1
    for k in (("resnet20-28", "local", "tvm"), ("resnet20-28", "sim:rpi4", "tvm"),
              ("resnet20-28-ort", "local", "onnxruntime")):
        assert got[k]["ratio_error"] is None and 1.0 < got[k]["latency_ratio"] < 3.5, got[k]
    # the ORT line reuses the TVM line's artifact (same ONNX, target and tuning): compiled once
    assert got[("resnet20-28-ort", "local", "onnxruntime")]["compile_cache_hit"] is True
    with sqlite3.connect(tmp_path / "r.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM bench_results WHERE source='simulated'").fetchone()[0] == 2


from tests.devices.farm_fixtures import board_toml, client_key, needs_sshd, sshd_pair, write_inventory  # noqa: E402,F401


@pytest.mark.slow
@needs_sshd
def test_suite_on_loopback_ssh_boards_with_an_inventory(tmp_path, capsys, sshd_pair, client_key):
    """--device repeated replaces the suite's devices; a board that refuses us (wrong pinned host key)
    is recorded as failed for that device while the same benchmark is measured on the good board."""
    models = tmp_path / "models"
    models.mkdir()
    _export(models / "small.onnx", [8])
    suite = tmp_path / "s.toml"
    _suite(suite, [("small", "models/small.onnx")])
    inv = write_inventory(tmp_path / "inv.toml", [
        board_toml("b1", sshd_pair[0], client_key),
        board_toml("b2", sshd_pair[1], client_key, host_key=sshd_pair[0].host_key)])
    code = main(["bench", "--suite", str(suite), "--device", "ssh:b1", "--device", "ssh:b2", "--inventory", str(inv),
                 "--db", str(tmp_path / "r.db"), "--cache-dir", str(tmp_path / "c"), "--tune-trials", "0",
                 "--repeat", "5", "--warmup", "2", "--min-repeat-ms", "10", "--json"])
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert code == 1, err
    got = {r["device"]: r for r in summary["results"]}
    assert set(got) == {"ssh:b1", "ssh:b2"}  # the suite's "local" is replaced by --device
    assert got["ssh:b1"]["status"] == "ok" and got["ssh:b1"]["latency_p50_ms"] > 0
    assert got["ssh:b2"]["status"] == "failed" and got["ssh:b2"]["error_kind"] == "device_unavailable"  # its hello (the host target of a board is its CPU)
    assert "HOST KEY CHANGED" in got["ssh:b2"]["error_message"]
    with sqlite3.connect(tmp_path / "r.db") as conn:
        meta = json.loads(conn.execute("SELECT metadata_json FROM bench_runs").fetchone()[0])
    assert meta["devices"]["ssh:b1"]["hello"]["tvm"].startswith("0.27") and "ssh:b2" not in meta["devices"]


@pytest.mark.slow
def test_a_suite_with_a_reference_stores_ratios_measured_interleaved(tmp_path, capsys):
    """Issue 12: the reference runs first; each other benchmark is timed interleaved with it on local in one
    session. Known by construction: "twin" is the reference's architecture with other weights (ratio ~1),
    "big" has three 64-channel convs instead of one 8-channel conv (~1,500x the MACs: ratio far above 2)."""
    from harness.compile.export import sha256_file

    models = tmp_path / "models"
    models.mkdir()
    _export(models / "ref.onnx", [8])
    _export(models / "twin.onnx", [8], seed=1)
    _export(models / "big.onnx", [64, 64, 64])
    suite, db, cache = tmp_path / "nightly.toml", tmp_path / "r.db", tmp_path / "cache"
    _suite(suite, [("twin", "models/twin.onnx"), ("ref", "models/ref.onnx"), ("big", "models/big.onnx")],
           reference="ref")
    run = _bench(capsys, suite, db, cache, extra=("--ratio-max-pairs", "16"))
    assert (run["ok"], run["failed"], run["reference"], run["ratios"]) == (3, 0, "ref", 2)
    got = {r["benchmark"]: r for r in run["results"]}
    assert [r["benchmark"] for r in run["results"]] == ["ref", "twin", "big"]  # the reference first
    assert got["ref"]["latency_ratio"] is None and got["ref"]["ratio_error"] is None
    for name in ("twin", "big"):
        r = got[name]
        assert r["ratio_error"] is None and r["ratio_ci_low"] <= r["latency_ratio"] <= r["ratio_ci_high"]
        assert 8 <= r["ratio_pairs"] <= 17 and r["ratio_reference_p50_ms"] > 0 and r["ratio_latency_p50_ms"] > 0
    assert 0.8 < got["twin"]["latency_ratio"] < 1.25
    assert got["big"]["latency_ratio"] > 2.0

    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = {r["benchmark"]: dict(r) for r in conn.execute(
            "SELECT r.benchmark, r.reference_benchmark, r.ratio_id, r.latency_ratio, r.latency_ratio_ci_low, "
            "r.latency_ratio_ci_high, r.ratio_error, q.ratio, q.ci_low, q.ci_high, q.reference_sha256, "
            "q.reference_signature, q.device, q.source, q.reference_measurement_id, m.artifact_sha256 "
            "FROM bench_results r LEFT JOIN latency_ratios q ON q.id = r.ratio_id "
            "LEFT JOIN measurements m ON m.id = r.measurement_id WHERE r.run_id = ?", (run["run_id"],))}
        ref_meas = {r["id"]: dict(r) for r in conn.execute("SELECT id, model, metadata_json FROM measurements")}
        meta = json.loads(conn.execute("SELECT metadata_json FROM bench_runs").fetchone()[0])
    assert rows["ref"]["reference_benchmark"] == "ref" and rows["ref"]["ratio_id"] is None
    for name in ("twin", "big"):
        row = rows[name]
        assert row["reference_benchmark"] == "ref" and row["ratio_id"] == got[name]["ratio_id"]
        assert (row["latency_ratio"], row["latency_ratio_ci_low"], row["latency_ratio_ci_high"]) == \
            (row["ratio"], row["ci_low"], row["ci_high"])
        # timed against the very artifact the reference's own result measured, on the same device
        assert row["reference_sha256"] == rows["ref"]["artifact_sha256"] and row["device"] == "local"
        assert row["source"] == "measured" and row["reference_signature"].startswith("onnx-")
        ref_row = ref_meas[row["reference_measurement_id"]]
        assert ref_row["model"] == "onnx:ref" and json.loads(ref_row["metadata_json"])["role"] == "reference"
    assert meta["reference"] == {"benchmark": "ref", "onnx_sha256": sha256_file(models / "ref.onnx")}

    # one night: no history yet, nothing judged; both verdicts are in --json
    code = main(["bench", "compare", "--db", str(db), "--json"])
    j = json.loads(capsys.readouterr().out)
    assert code == 0
    verdicts = {c["benchmark"]: c for c in j["comparisons"]}
    assert verdicts["ref"]["verdict"] == "reference" and verdicts["ref"]["ratio"] is None
    for name in ("twin", "big"):
        assert (verdicts[name]["verdict"], verdicts[name]["status"], verdicts[name]["ratio"]["status"]) == \
            ("new", "new", "new")
        assert verdicts[name]["ratio"]["latency_ratio"] == got[name]["latency_ratio"]

    out_dir = tmp_path / "report"
    assert main(["report", "--db", str(db), "--out", str(out_dir), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    index = (out_dir / "index.html").read_text()
    assert "<th>ratio to ref.</th>" in index and f"<td>{got['big']['latency_ratio']:.4f}</td>" in index
    assert any("history__big__local" in p for p in rep["plots"])
    assert (out_dir / "data" / "latency_ratios.csv").read_text().count("\n") == 1 + 2

    # the reference's ONNX file gone: it fails, the others are still measured (cache hits), each says why it has
    # no ratio, and compare falls back to the absolute rule for them
    (models / "ref.onnx").unlink()
    second = _bench(capsys, suite, db, cache, expect=1, extra=("--ratio-max-pairs", "16"))
    got = {r["benchmark"]: r for r in second["results"]}
    assert got["ref"]["status"] == "failed" and got["ref"]["error_kind"] == "onnx_missing"
    for name in ("twin", "big"):
        assert got[name]["status"] == "ok" and got[name]["latency_ratio"] is None
        assert got[name]["ratio_error"].startswith("reference_unavailable: onnx_missing: ONNX file")
    code = main(["bench", "compare", "--db", str(db), "--json"])
    verdicts = {c["benchmark"]: c for c in json.loads(capsys.readouterr().out)["comparisons"]}
    assert code in (0, 1) and verdicts["ref"]["verdict"] == "failed"
    for name in ("twin", "big"):
        v = verdicts[name]
        assert v["ratio"]["status"] == "missing" and v["ratio"]["error"].startswith("reference_unavailable")
        assert v["verdict"] == v["status"] and v["reference_status"] is None  # the absolute rule, as without one
