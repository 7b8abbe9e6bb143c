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


def _export(path, widths):
    import torch

    from harness.compile.export import export_onnx

    layers, c_in = [], SHAPE[1]
    for w in widths:
        layers += [torch.nn.Conv2d(c_in, w, 3, padding=1), torch.nn.ReLU()]
        c_in = w
    torch.manual_seed(0)
    model = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(c_in, 4)).eval()
    with torch.no_grad():
        export_onnx(model, SHAPE, path)


def _suite(path, benchmarks):
    text = '[suite]\nname = "e2e"\n'
    for name, onnx in benchmarks:
        text += (f'[[benchmark]]\nname = "{name}"\nonnx = "{onnx}"\ninput_shape = {list(SHAPE)}\n'
                 'targets = ["host"]\ndevices = ["local"]\n')
    path.write_text(text)


def _bench(capsys, suite, db, cache, expect=0):
    # --threads 1: a 2-thread pool on a loaded 2-core machine waits for its descheduled worker at every
    # operator, which inflates a tiny model far more than a big one and squeezes the ratios compared below
    code = main(["bench", "--suite", str(suite), "--db", str(db), "--cache-dir", str(cache), "--tune-trials", "0",
                 "--repeat", "10", "--warmup", "3", "--min-repeat-ms", "20", "--threads", "1", "--json"])
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
    """benchmarks/suites/nightly.toml: ResNet-20 untuned on local and the rpi4 simulator, and through ORT."""
    from pathlib import Path

    suite = Path(__file__).resolve().parents[2] / "benchmarks" / "suites" / "nightly.toml"
    summary = _bench(capsys, suite, tmp_path / "r.db", tmp_path / "cache")
    got = {(r["benchmark"], r["device"], r["backend"]): r for r in summary["results"]}
    assert set(got) == {("resnet20-28", "local", "tvm"), ("resnet20-28", "sim:rpi4", "tvm"),
                        ("resnet20-28-ort", "local", "onnxruntime")}
    assert got[("resnet20-28", "sim:rpi4", "tvm")]["source"] == "simulated"
    assert got[("resnet20-28", "local", "tvm")]["source"] == "measured"
    # the ORT line reuses the TVM line's artifact (same ONNX, target and tuning): compiled once
    assert got[("resnet20-28-ort", "local", "onnxruntime")]["compile_cache_hit"] is True
    with sqlite3.connect(tmp_path / "r.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM bench_results WHERE source='simulated'").fetchone()[0] == 1


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
