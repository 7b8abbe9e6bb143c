"""Tests of harness/cli/compile.py: ``hilprune compile``, ``bench`` and ``tune``."""

from __future__ import annotations

import json
from pathlib import Path
import sqlite3
import subprocess
import sys

import pytest

from harness.cli import main
from harness.cli.compile import BENCH_JSON_KEYS, parse_input_shape

HILPRUNE = [sys.executable, "-m", "harness.cli"]


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err.strip()


@pytest.mark.parametrize("cmd", ["compile", "bench", "tune"])
def test_help(cmd):
    r = subprocess.run(HILPRUNE + [cmd, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and f"usage: hilprune {cmd}" in r.stdout and "--input-shape" in r.stdout


def test_parse_input_shape():
    assert parse_input_shape("1,3,224,224") == (1, 3, 224, 224)
    assert parse_input_shape(" 1x1x28x28 ") == (1, 1, 28, 28)
    for bad in ("1,3,224", "1,3,a,4", "1,0,2,2", "", "1,-3,2,2"):
        with pytest.raises(ValueError, match="give N,C,H,W as 4 positive integers"):
            parse_input_shape(bad)


@pytest.mark.parametrize(("args", "needles"), [
    (["--model", "vgg99", "--target", "host"], ["vgg99", "valid: mobilenet_v2"]),
    (["--model", "resnet20", "--target", "pdp11"], ["pdp11", "presets: host, rpi4"]),
    (["--model", "resnet20", "--target", "host", "--input-shape", "1,1,28"], ["'1,1,28'", "e.g. 1,3,224,224"]),
    (["--model", "resnet20", "--target", "host", "--input-shape", "1,a,28,28"], ["'1,a,28,28'", "N,C,H,W"]),
    (["--onnx", "/nowhere/m.onnx", "--target", "host"], ["/nowhere/m.onnx", "not found", "--model NAME"]),
    (["--target", "host"], ["--model NAME", "--onnx PATH"]),
    (["--model", "resnet20"], ["--target PRESET", "rpi4"]),
    (["--model", "resnet20", "--target", '{"kind": "llvm", "mcpu": "x"'], ["target JSON is malformed"]),
])
@pytest.mark.parametrize("cmd", ["compile", "bench", "tune"])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, cmd, args, needles):
    extra = ["--cache-dir", str(tmp_path / "c")] + (["--db", str(tmp_path / "r.db")] if cmd == "bench" else [])
    code, out, err = _run(capsys, [cmd, *args, *extra])
    assert code == 2 and out == ""
    assert err.startswith("hilprune: error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not (tmp_path / "c" / "artifacts").exists()  # refused before any work


def test_bench_bad_device_and_board_target_on_local(capsys, tmp_path):
    base = ["bench", "--model", "resnet20", "--cache-dir", str(tmp_path / "c"), "--db", str(tmp_path / "r.db")]
    code, _, err = _run(capsys, base + ["--target", "host", "--device", "toaster"])
    assert code == 2 and "toaster" in err and "'local'" in err
    code, _, err = _run(capsys, base + ["--target", "rpi4"])
    assert code == 2 and "aarch64" in err and "--target host" in err and "\n" not in err


def test_onnx_input_shape_must_match_the_graph(capsys, tmp_path):
    from harness.compile.export import export_onnx
    from harness.models import build_model

    path = tmp_path / "m.onnx"
    export_onnx(build_model("resnet20", widths={"stem": 4, "layer1": 4}), (1, 1, 16, 16), path)
    code, _, err = _run(capsys, ["compile", "--onnx", str(path), "--target", "host", "--input-shape", "1,1,28,28",
                                 "--cache-dir", str(tmp_path / "c")])
    assert code == 2 and "1,1,16,16" in err and "drop --input-shape" in err
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    code, _, err = _run(capsys, ["compile", "--onnx", str(tmp_path / "junk.onnx"), "--target", "host",
                                 "--cache-dir", str(tmp_path / "c")])
    assert code == 2 and "not a readable ONNX file" in err


@pytest.mark.slow
def test_bench_json_contract_store_and_compile_cache(capsys, tmp_path):
    cache, db = str(tmp_path / "c"), tmp_path / "r.db"
    common = ["--model", "resnet20", "--input-shape", "1,1,16,16", "--target", "host", "--tune-trials", "0",
              "--cache-dir", cache]
    code, out, err = _run(capsys, ["bench", *common, "--threads", "2", "--repeat", "5", "--db", str(db), "--json"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1  # ONE JSON object
    r = json.loads(lines[0])
    assert set(BENCH_JSON_KEYS) <= set(r)
    assert r["source"] == "measured" and r["device"] == "local" and r["target"] == "host"
    assert r["backend"] == "tvm" and r["tuned"] is False and r["tuning"]["trials_per_task"] == 0
    assert r["n"] == 5 and 0 < r["latency_p50_ms"] <= r["latency_p90_ms"] and r["latency_cov"] >= 0
    assert len(r["artifact_sha256"]) == 64 and r["input_shape"] == [1, 1, 16, 16] and r["model"] == "resnet20"
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT model, arch_signature, backend, tuning_key, source, latency_p50_ms, n, "
                           "artifact_sha256 FROM measurements WHERE id=?", (r["measurement_id"],)).fetchone()
    assert row == ("resnet20", "zoo-default-s0@1x1x16x16", "tvm", "untuned", "measured", r["latency_p50_ms"], 5,
                   r["artifact_sha256"])

    # the same model through ONNX Runtime: the ONNX file itself, no TVM build (no library), a second row
    code, out, err = _run(capsys, ["bench", *common, "--threads", "2", "--repeat", "3", "--db", str(db),
                                   "--backend", "onnxruntime", "--json"])
    assert code == 0, err
    o = json.loads(out)
    assert o["backend"] == "onnxruntime" and o["artifact_sha256"] is None and o["onnx_sha256"] == r["onnx_sha256"]
    assert sorted(p.name for p in Path(o["artifact_dir"]).iterdir()) == ["manifest.json", "model.onnx"]
    assert o["measurement_id"] == r["measurement_id"] + 1 and o["tuning"]["graph_only"] is True

    # compile: a cache hit printing the same directory; --out copies the artifact there
    code, out, _ = _run(capsys, ["compile", *common])
    assert code == 0 and out.strip() == r["artifact_dir"]
    code, out, _ = _run(capsys, ["compile", *common, "--out", str(tmp_path / "art")])
    assert code == 0 and out.strip() == str((tmp_path / "art").resolve())
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["library_sha256"] == r["artifact_sha256"]
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == ["lib.so", "manifest.json", "model.onnx",
                                                                     "params.npz"]
    # the copied ONNX as --onnx source: same bytes, same cached artifact
    code, out, _ = _run(capsys, ["compile", "--onnx", str(tmp_path / "art" / "model.onnx"), "--target", "host",
                                 "--tune-trials", "0", "--cache-dir", cache, "--json"])
    j = json.loads(out)
    assert code == 0 and j["cache_hit"] is True and j["path"] == r["artifact_dir"]

    # table output
    code, out, _ = _run(capsys, ["bench", *common, "--repeat", "3", "--db", str(db)])
    assert code == 0 and "p50 ms" in out and "backend tvm, UNTUNED" in out and "stored as measurement" in out
    code, out, _ = _run(capsys, ["bench", *common, "--repeat", "3", "--db", str(db), "--backend", "onnxruntime"])
    assert code == 0 and "backend onnxruntime: the ONNX file, no TVM build" in out and "tuned" not in out.lower()


@pytest.mark.slow
def test_tune_reports_tasks_and_database_growth_then_reuses_it(capsys, tmp_path):
    """A 2-conv ResNet-20 slice at 8x8 tuned with 2 trials/task, then again: all tasks from the database."""
    import torch

    from harness.compile.export import export_onnx

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.c1(x)).mean((2, 3)))

    torch.manual_seed(0)
    path = tmp_path / "tiny.onnx"
    export_onnx(Tiny().eval(), (1, 1, 8, 8), path)
    argv = ["tune", "--onnx", str(path), "--target", "host", "--trials", "2", "--threads", "2", "--repeat", "3",
            "--cache-dir", str(tmp_path / "c"), "--json"]
    code, out, err = _run(capsys, argv)
    assert code == 0, err
    first = json.loads(out)
    assert first["tasks_total"] >= 1 and first["tasks_tuned_now"] == first["tasks_total"]
    assert first["db_records_before"] == 0 and first["db_records_after"] > 0
    assert first["latency_p50_ms"] > 0 and first["device"] == "local"
    code, out, _ = _run(capsys, argv[:-1])  # table output; the artifact is cached now
    assert code == 0 and "tuned now" in out and "artifact cache hit" in out and "database records:" in out


def _inv(tmp_path: Path, target: str = "host") -> Path:
    """An inventory with one board (never contacted by these tests: every error comes first)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "k").write_text("not a key: never read, the errors come first\n")
    path = tmp_path / "farm.toml"
    path.write_text(f'[farm]\nlease_db = "{tmp_path / "l.sqlite"}"\n\n[[board]]\nname = "b1"\nhost = "127.0.0.1"\n'
                    f'port = 1\nuser = "u"\nidentity_file = "{tmp_path / "k"}"\n'
                    f'host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZha2VrZXlmYWtla2V5ZmFrZWtleWZha2VrZXk="\n'
                    f'target = "{target}"\ntags = ["pi"]\n')
    return path


@pytest.mark.parametrize(("argv", "needles"), [
    (["bench", "--model", "resnet20", "--target", "host", "--device", "ssh:b1"], ["--device ssh:b1", "--inventory"]),
    (["tune", "--model", "resnet20", "--target", "rpi4", "--device", "farm:pi"], ["--inventory FILE"]),
    (["tune", "--model", "resnet20", "--target", "rpi4"], ["aarch64", "--device ssh:BOARD or farm:TAG"]),
    (["tune", "--model", "resnet20", "--target", "rpi4", "--device", "sim:rpi4"], ["simulator", "cannot time"]),
    (["tune", "--model", "resnet20", "--target", "rpi5", "--device", "farm:pi", "--inventory", "INV"],
     ["farm:pi", "target 'rpi5'"]),
    (["tune", "--model", "resnet20", "--target", "rpi5", "--device", "ssh:b1", "--inventory", "INV_RPI4"],
     ["board 'b1' is a rpi4, not a rpi5", "--target host"]),
    (["search", "--device", "farm:pi", "--fallback", "simulate"], ["--fallback", "'simulate'"]),
    (["search", "--device", "farm:pi", "--target", "rpi5", "--inventory", "INV"], ["farm:pi", "target 'rpi5'"]),
    (["search", "--device", "ssh:b1"], ["ssh:BOARD and farm:TAG devices need an inventory (--inventory FILE)"]),
])
def test_board_devices_bad_input_is_one_line_exit_2(capsys, tmp_path, argv, needles):
    inventories = {"INV": str(_inv(tmp_path / "h", "host")), "INV_RPI4": str(_inv(tmp_path / "r", "rpi4"))}
    argv = [inventories.get(a, a) for a in argv]
    extra = ["--cache-dir", str(tmp_path / "c")] + (["--db", str(tmp_path / "r.db"), "--out", str(tmp_path / "runs")]
                                                     if argv[0] == "search" else [])
    try:
        code, out, err = _run(capsys, [*argv, *extra])
    except SystemExit as exc:  # argparse's own refusal (choices): one line too (harness.cli.args.Parser)
        code, (out, err) = exc.code, capsys.readouterr()
        err = err.strip()
    assert code == 2 and out == "", err
    assert err.startswith("hilprune") and "\n" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not (tmp_path / "c" / "artifacts").exists()  # refused before any work


@pytest.mark.slow
def test_compile_for_a_board_with_no_device_applies_an_empty_database_and_says_so(capsys, tmp_path):
    """No board at hand and an empty database: the rpi4 build succeeds untuned and says how many tasks."""
    code, out, err = _run(capsys, ["compile", "--model", "resnet20", "--input-shape", "1,1,16,16", "--target", "rpi4",
                                   "--tune-trials", "8", "--cache-dir", str(tmp_path / "c"), "--json"])
    assert code == 0, err
    j = json.loads(out)
    header = (Path(j["path"]) / "lib.so").read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    n = j["tuning"]["tasks_total"]
    assert n > 0 and j["tuning"]["tasks_untuned"] == n and j["tuning"]["tasks_tuned_now"] == 0
    notes = [line for line in err.splitlines() if line.startswith("hilprune: note:")]
    assert len(notes) == 1 and f"{n} of {n} tasks have no tuning record for rpi4" in notes[0]
    assert "hilprune tune --target rpi4 --device ssh:BOARD|farm:TAG" in notes[0]
