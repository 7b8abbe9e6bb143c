"""The real daemon as a subprocess, spoken to over raw JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DAEMON = Path(__file__).resolve().parents[2] / "devices" / "daemon.py"


class Raw:
    """A daemon subprocess driven line by line."""

    def __init__(self):
        self.p = subprocess.Popen([sys.executable, str(DAEMON)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def send_line(self, line: bytes) -> dict:
        self.p.stdin.write(line + b"\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def send(self, **req) -> dict:
        return self.send_line(json.dumps(req).encode())

    def close(self) -> int:
        self.p.stdin.close()
        rc = self.p.wait(timeout=30)
        self.p.stdout.close()
        return rc


@pytest.fixture()
def raw():
    d = Raw()
    yield d
    if d.p.poll() is None:
        d.p.kill()
        d.p.wait()


def _measure(raw, artifact, **over):
    req = dict(v=1, id="m", op="measure", artifact=str(artifact), backend="tvm", warmup=2,
               number=5, repeat=4, min_repeat_ms=0, seed=0, num_threads=None)
    req.update(over)
    return raw.send(**req)


def test_hello_fields(raw):
    r = raw.send(v=1, id=7, op="hello")
    assert r["v"] == 1 and r["id"] == 7 and r["ok"] is True
    res = r["result"]
    assert res["protocol"] == 1
    assert res["numpy"] == np.__version__
    assert res["tvm"].startswith("0.27")
    assert res["onnxruntime"]
    assert res["machine"] == "x86_64"
    assert isinstance(res["cpu_count"], int) and res["cpu_count"] >= 1
    assert res["python"] == ".".join(map(str, sys.version_info[:3]))
    assert raw.send(v=1, id=8, op="bye") == {"v": 1, "id": 8, "ok": True, "result": {}}
    assert raw.p.wait(timeout=10) == 0


def test_malformed_requests_then_still_serving(raw, tmp_path):
    r = raw.send_line(b"{not json")
    assert r["ok"] is False and r["error"]["kind"] == "bad_request" and r["id"] is None
    r = raw.send_line(b"[1, 2]")
    assert r["error"]["kind"] == "bad_request"
    r = raw.send(v=1, id=1, op="fly")
    assert (r["id"], r["ok"], r["error"]["kind"]) == (1, False, "bad_request")
    assert "fly" in r["error"]["message"]
    r = raw.send(v=2, id=2, op="hello")
    assert (r["id"], r["error"]["kind"]) == (2, "bad_request") and "version" in r["error"]["message"]
    r = raw.send(v=1, id=3, op="measure")  # no artifact
    assert r["error"]["kind"] == "bad_request" and "artifact" in r["error"]["message"]
    r = _measure(raw, tmp_path / "nope")
    assert r["error"]["kind"] == "load_failed" and "does not exist" in r["error"]["message"]
    r = _measure(raw, tmp_path)  # dir without manifest
    assert r["error"]["kind"] == "load_failed" and "manifest.json" in r["error"]["message"]
    r = _measure(raw, tmp_path, repeat=0)
    assert r["error"]["kind"] == "bad_request" and "repeat" in r["error"]["message"]
    r = _measure(raw, tmp_path, number=True)  # bool is not an int
    assert r["error"]["kind"] == "bad_request" and "number" in r["error"]["message"]
    r = raw.send(v=1, id=4, op="hello")
    assert r["ok"] is True and r["result"]["protocol"] == 1
    assert raw.close() == 0  # EOF -> exit 0


def test_measure_round_trip(raw, tiny_artifact, tiny_expected):
    r = _measure(raw, tiny_artifact)
    assert r["ok"] is True, r
    res = r["result"]
    assert len(res["latency_ms"]) == 4 and len(res["warmup_ms"]) == 2
    assert all(0 < v < 1000 for v in res["latency_ms"] + res["warmup_ms"])
    assert res["number"] == 5 and res["backend"] == "tvm"
    assert res["output_shape"] == [1, 10] and res["output_dtype"] == "float32"
    np.testing.assert_allclose(res["output_head"], tiny_expected.reshape(-1), rtol=1e-5, atol=1e-5)
    assert res["load_s"] > 0
    assert isinstance(res["device_state_before"], dict) and isinstance(res["device_state_after"], dict)
    # cached: second measure does not reload; number=0 derives number from min_repeat_ms
    r2 = _measure(raw, tiny_artifact, number=0, min_repeat_ms=50, repeat=2)["result"]
    assert r2["load_s"] == 0.0
    # one call of this model takes well under 5 ms, so a >= 50 ms block needs >= 10 calls (calibration
    # starts with one call: 50 ms, not 5, so a preemption of that call on a loaded machine cannot end it)
    assert r2["number"] >= 10 and len(r2["latency_ms"]) == 2
    assert r2["output_sha256"] == res["output_sha256"]


def test_output_sha_same_across_sessions_and_onnxruntime(tiny_artifact, tiny_expected):
    shas = []
    for _ in range(2):
        d = Raw()
        try:
            r = _measure(d, tiny_artifact, warmup=0, repeat=1, number=1)
            assert r["ok"] is True, r
            shas.append(r["result"]["output_sha256"])
            o = _measure(d, tiny_artifact, backend="onnxruntime", num_threads=1)
            assert o["ok"] is True, o
            assert o["result"]["backend"] == "onnxruntime" and len(o["result"]["latency_ms"]) == 4
            np.testing.assert_allclose(o["result"]["output_head"], tiny_expected.reshape(-1), rtol=1e-6)
            other = _measure(d, tiny_artifact, warmup=0, repeat=1, number=1, seed=1)["result"]
            assert other["output_sha256"] != r["result"]["output_sha256"]  # the seed matters
        finally:
            assert d.close() == 0
    assert shas[0] == shas[1] and len(shas[0]) == 64


def test_tampered_library_is_refused(raw, tiny_artifact, tmp_path):
    art = tmp_path / "bad"
    art.mkdir()
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    manifest["library_sha256"] = "0" * 64
    (art / "manifest.json").write_text(json.dumps(manifest))
    (art / "lib.so").write_bytes((tiny_artifact / "lib.so").read_bytes())
    r = _measure(raw, art)
    assert r["error"]["kind"] == "load_failed" and "library_sha256" in r["error"]["message"]
    assert raw.send(v=1, id=9, op="hello")["ok"] is True


@pytest.mark.parametrize("name", ["daemon.py", "manifest.py"])
def test_daemon_is_self_contained(name):
    """The daemon is uploaded with manifest.py alone: stdlib + numpy at top level (+ the sibling manifest),
    tvm/onnxruntime lazily; manifest.py is stdlib only."""
    import ast

    tree = ast.parse(DAEMON.with_name(name).read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            top.add((node.module or "").split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"__future__"} | ({"numpy", "manifest"} if name == "daemon.py" else set())
    assert top <= allowed, top - allowed
    every = {(n.module or "") if isinstance(n, ast.ImportFrom) else a.name
             for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
             for a in (n.names if isinstance(n, ast.Import) else [None])}
    assert not any(m.split(".")[0] in {"devices", "harness", "agent", "torch", "onnx"} for m in every), every
    assert "tvm.relax" not in every


# ------------------------------------------------------- malformed requests (issue 11)

_DEEP = b"[" * 5000 + b"]" * 5000


@pytest.mark.parametrize("line, kind, words", [
    (_DEEP, "bad_request", "nested too deep"),
    (b'{"v":1,"op":"hello","id":' + b"[" * 2000 + b"]" * 2000 + b"}", "bad_request", "nested too deep"),
    (b"\xff\xfe garbage", "bad_request", "not JSON"),
    (b"[1, 2]", "bad_request", "JSON object"),
    (b'{"v":2,"id":1,"op":"hello"}', "bad_request", "protocol version"),
    (b'{"v":1,"id":1,"op":"fly"}', "bad_request", "unknown op"),
    (b'{"v":1,"id":1,"op":"measure"}', "bad_request", "'artifact'"),
    (b'{"v":1,"id":1,"op":"measure","artifact":"rel/dir"}', "bad_request", "'artifact'"),
    (b'{"v":1,"id":1,"op":"measure","artifact":"/x","repeat":0}', "bad_request", "'repeat'"),
    (b'{"v":1,"id":1,"op":"measure","artifact":"/x","backend":"tensorrt"}', "bad_request", "'backend'"),
    (b'{"v":1,"id":1,"op":"measure","artifact":"/no/such/dir"}', "load_failed", "does not exist"),
    (b'{"v":1,"id":1,"op":"time_func","lib":5}', "bad_request", "'lib'"),
    (b'{"v":1,"id":1,"op":"sleep","s":-1}', "bad_request", "'s'"),
])
def test_malformed_request_answered_and_daemon_lives(raw, line, kind, words):
    r = raw.send_line(line)
    assert r["ok"] is False and r["error"]["kind"] == kind and words in r["error"]["message"], r
    assert raw.send(v=1, id="after", op="hello")["ok"] is True  # still serving


def test_overlong_line_answered_and_skipped(raw):
    from devices import daemon

    r = raw.send_line(b"x" * (daemon.MAX_LINE_BYTES + 10))
    assert r["error"]["kind"] == "bad_request" and "over" in r["error"]["message"]
    assert raw.send(v=1, id=2, op="hello")["id"] == 2


@pytest.mark.parametrize("field, value", [("library", "../../etc/passwd"), ("library", "/etc/passwd"),
                                          ("onnx", "../model.onnx"), ("params", "../p.npz")])
def test_manifest_files_outside_the_artifact_refused(raw, tmp_path, tiny_artifact, field, value):
    import shutil

    art = tmp_path / "a"
    shutil.copytree(tiny_artifact, art)
    m = json.loads((art / "manifest.json").read_text())
    m[field] = value
    m.pop("library_sha256", None)
    (art / "manifest.json").write_text(json.dumps(m))
    r = _measure(raw, art, backend="onnxruntime" if field == "onnx" else "tvm")
    assert r["ok"] is False and r["error"]["kind"] == "load_failed", r
    msg = r["error"]["message"]  # the manifest reader refuses a name with '/', the daemon a path out
    assert ("outside the artifact" in msg or "inside the artifact" in msg) and field in msg, r


def test_symlink_out_of_the_artifact_refused(raw, tmp_path, tiny_artifact):
    import shutil

    art = tmp_path / "a"
    shutil.copytree(tiny_artifact, art)
    m = json.loads((art / "manifest.json").read_text())
    outside = tmp_path / "elsewhere.so"
    shutil.copy(art / m["library"], outside)
    (art / "link.so").symlink_to(outside)
    m["library"] = "link.so"  # same bytes, same library_sha256: only the symlink is wrong
    (art / "manifest.json").write_text(json.dumps(m))
    r = _measure(raw, art)
    assert r["error"]["kind"] == "load_failed" and "outside the artifact" in r["error"]["message"], r


def test_loaded_models_are_bounded_lru(tmp_path, tiny_artifact):
    import shutil

    from devices.daemon import Daemon

    d = Daemon(max_loaded=2)
    arts = []
    for i in range(3):  # three distinct manifests: three cache entries
        art = tmp_path / f"a{i}"
        shutil.copytree(tiny_artifact, art)
        m = json.loads((art / "manifest.json").read_text())
        (art / "manifest.json").write_text(json.dumps({**m, "note": i}))
        arts.append(art)

    def measure(art):
        req = dict(v=1, id=1, op="measure", artifact=str(art), warmup=0, number=1, repeat=1, min_repeat_ms=0)
        reply, keep = d.handle(json.dumps(req).encode())
        assert reply["ok"], reply
        return reply["result"]["load_s"]

    measure(arts[0])
    measure(arts[1])
    assert measure(arts[0]) == 0.0  # cached; now a1 is the least recently used
    measure(arts[2])  # evicts a1
    assert len(d.cache) == 2
    assert measure(arts[0]) == 0.0 and measure(arts[1]) > 0.0  # a0 stayed, a1 was reloaded
    assert Daemon().max_loaded >= 4  # the default keeps interleaved A/B pairs (and more) loaded


def test_time_func_checks_the_digest_sent_with_the_request_and_removes_the_library(raw, tmp_path):
    """The board runner's trial: one upload and one request; the daemon checks the sha256 and deletes the file."""
    import hashlib

    import tvm
    from tvm import te

    n = 64
    a = te.placeholder((n,), name="a", dtype="float32")
    b = te.compute((n,), lambda i: a[i] * 2.0, name="b")
    lib_path = tmp_path / "tune-0123456789abcdef.so"  # the name the SSH device uploads a trial under
    tvm.compile(te.create_prim_func([a, b]), target="llvm").export_library(str(lib_path))
    digest = hashlib.sha256(lib_path.read_bytes()).hexdigest()
    args = [["float32", [n]], ["float32", [n]]]
    other = tmp_path / "precious.so"  # any other file: 'remove' is refused and the file stays
    other.write_bytes(lib_path.read_bytes())
    refused = raw.send(v=1, id=0, op="time_func", lib=str(other), args=args, remove=True)
    assert refused["error"]["kind"] == "bad_request" and "tune-" in refused["error"]["message"] and other.exists()
    bad = raw.send(v=1, id=1, op="time_func", lib=str(lib_path), args=args, sha256="0" * 64, remove=True)
    assert bad["error"]["kind"] == "load_failed" and "sha256" in bad["error"]["message"]
    assert lib_path.exists()  # refused before loading: nothing removed
    ok = raw.send(v=1, id=2, op="time_func", lib=str(lib_path), args=args, number=2, sha256=digest, remove=True)
    assert ok["ok"], ok
    assert len(ok["result"]["costs_s"]) == 1 and 0 < ok["result"]["costs_s"][0] < 1.0
    assert not lib_path.exists()  # loaded, then deleted on the board
