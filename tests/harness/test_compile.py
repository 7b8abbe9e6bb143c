"""Tests of harness/compile/build.py: the artifact contract the device daemon reads."""

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

import harness.compile.build as compile_mod
from harness.compile.build import CompileResult, compile_onnx
from harness.compile.export import export_onnx
from harness.compile.targets import resolve_target
from harness.compile.tuning import TuningConfig
from tests.harness.small_net import small_net

UNTUNED = TuningConfig(trials_per_task=0)
EM_AARCH64 = 183  # ELF e_machine of AArch64 (ELF for the Arm 64-bit Architecture)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    export_onnx(small_net(), (1, 1, 28, 28), path)
    return path


def run_artifact(artifact_dir, x: np.ndarray) -> np.ndarray:
    """Run an artifact exactly as the daemon does: runtime-only API, main(input, *params)."""
    import tvm
    import tvm.runtime.vm

    manifest = json.loads((artifact_dir / "manifest.json").read_text())
    lib = tvm.runtime.load_module(str(artifact_dir / manifest["library"]))
    vm = tvm.runtime.vm.VirtualMachine(lib, tvm.cpu(0))
    params = np.load(artifact_dir / manifest["params"])
    keys = sorted(params.files)
    assert keys == [f"p{i:04d}" for i in range(len(keys))]
    out = vm["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(params[k]) for k in keys])
    return out.numpy()


def _e_machine(path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and header[4] == 2 and header[5] == 1  # 64-bit, little endian
    return int.from_bytes(header[18:20], "little")


@pytest.mark.slow
def test_host_artifact_runs_and_matches_torch(onnx_path, tmp_path):
    result = compile_onnx(onnx_path, resolve_target("host"), tmp_path, UNTUNED)
    assert result.error is None and result.artifact is not None
    art = result.artifact
    assert art.cache_hit is False
    assert art.path.parent == tmp_path / "artifacts"
    assert sorted(p.name for p in art.path.iterdir()) == ["lib.so", "manifest.json", "model.onnx", "params.npz"]
    m = art.manifest.to_dict()
    assert m == json.loads((art.path / "manifest.json").read_text())
    assert m["format_version"] == 1
    assert (m["library"], m["params"], m["onnx"]) == ("lib.so", "params.npz", "model.onnx")
    assert m["library_sha256"] == art.library_sha256 == hashlib.sha256((art.path / "lib.so").read_bytes()).hexdigest()
    assert m["onnx_sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert (art.path / "model.onnx").read_bytes() == onnx_path.read_bytes()
    assert m["input"] == {"name": "input", "shape": [1, 1, 28, 28], "dtype": "float32"}
    assert m["output"] == {"shape": [1, 10], "dtype": "float32"}
    assert (m["target_preset"], m["arch"], m["device_kind"]) == ("host", "x86_64", "cpu")
    assert m["target"] == resolve_target("host").target
    assert m["tuning"] == {"tuned": False, "trials_per_task": 0, "database": None, "tasks_total": 0,
                           "tasks_from_db": 0, "tasks_tuned_now": 0, "tasks_untuned": 0, "tune_s": 0.0,
                           "runner": None}
    assert m["build_s"] > 0 and m["tvm_version"].startswith("0.27")
    assert _e_machine(art.path / "lib.so") == 62  # x86-64
    assert (art.path / "lib.so").stat().st_size < 2_000_000  # weights are not embedded

    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    expected = small_net()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(run_artifact(art.path, x), expected, atol=1e-4, rtol=1e-4)

    again = compile_onnx(onnx_path, resolve_target("host"), tmp_path, UNTUNED)
    assert again.artifact is not None and again.artifact.cache_hit is True
    assert again.artifact.path == art.path and again.artifact.manifest == art.manifest
    assert [p.name for p in (tmp_path / "artifacts").iterdir()] == [art.path.name]  # no temp dirs left


@pytest.mark.slow
def test_rpi4_artifact_is_aarch64_elf(onnx_path, tmp_path):
    result = compile_onnx(onnx_path, resolve_target("rpi4"), tmp_path, UNTUNED)
    assert result.error is None, result.error
    assert _e_machine(result.artifact.path / "lib.so") == EM_AARCH64
    assert result.artifact.manifest.arch == "aarch64"
    assert result.artifact.manifest.target["mcpu"] == "cortex-a72"


@pytest.mark.slow
def test_jetson_orin_nano_builds_without_gpu(onnx_path, tmp_path):
    # CUDA kernels are stored as source; the board compiles them at load (DESIGN.md §4 CUDA).
    result = compile_onnx(onnx_path, resolve_target("jetson-orin-nano"), tmp_path, UNTUNED)
    assert result.error is None, result.error
    assert result.artifact.manifest.device_kind == "cuda"
    assert _e_machine(result.artifact.path / "lib.so") == EM_AARCH64


def test_unreadable_onnx_is_import_failed(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    result = compile_onnx(bad, resolve_target("host"), tmp_path / "cache", UNTUNED)
    assert result.artifact is None and result.error.kind == "import_failed"
    assert result.error.message
    assert list((tmp_path / "cache" / "artifacts").iterdir()) == []


@pytest.mark.slow
def test_bad_cross_linker_is_link_failed(onnx_path, tmp_path):
    spec = dataclasses.replace(resolve_target("rpi4"), cross_cc="/nonexistent/aarch64-g++")
    result = compile_onnx(onnx_path, spec, tmp_path, UNTUNED)
    assert result.artifact is None and result.error.kind == "link_failed"
    assert list((tmp_path / "artifacts").iterdir()) == []


def test_killed_build_leaves_no_artifact(onnx_path, tmp_path, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compile_mod, "_build", killed)
    with pytest.raises(KeyboardInterrupt):
        compile_onnx(onnx_path, resolve_target("host"), tmp_path, UNTUNED)
    assert list((tmp_path / "artifacts").iterdir()) == []


@pytest.mark.slow
def test_a_board_target_with_no_runner_applies_the_database_and_counts_untuned_tasks(onnx_path, tmp_path):
    """Nothing here can time aarch64 code: the build applies the (empty) database instead of failing."""
    from harness.compile.tuning import database_dir_for, database_info

    target, tuning = resolve_target("rpi4"), TuningConfig(trials_per_task=2)
    result = compile_onnx(onnx_path, target, tmp_path, tuning)
    assert result.error is None, result.error
    info = result.artifact.manifest.tuning
    assert info["tasks_total"] > 0 and info["tasks_untuned"] == info["tasks_total"]
    assert info["tasks_tuned_now"] == 0 and info["tasks_from_db"] == 0 and info["runner"] is None
    assert _e_machine(result.artifact.path / "lib.so") == 183  # EM_AARCH64
    assert database_info(database_dir_for(tmp_path, target.canonical_json(), tuning)).records == 0  # nothing tuned
    again = compile_onnx(onnx_path, target, tmp_path, tuning)
    assert again.artifact.cache_hit and again.artifact.path == result.artifact.path


def test_cache_key_separates_targets_and_tuning(onnx_path):
    data = onnx_path.read_bytes()
    host, rpi4 = resolve_target("host"), resolve_target("rpi4")
    keys = {
        compile_mod.artifact_key(data, host, UNTUNED),
        compile_mod.artifact_key(data, rpi4, UNTUNED),
        compile_mod.artifact_key(data, host, TuningConfig(trials_per_task=8)),
        compile_mod.artifact_key(data + b"x", host, UNTUNED),
    }
    assert len(keys) == 4
    assert compile_mod.artifact_key(data, host, UNTUNED) == compile_mod.artifact_key(data, host, UNTUNED)


def test_compile_result_holds_exactly_one():
    with pytest.raises(ValueError):
        CompileResult(None, None)


def test_stale_temp_dirs_of_killed_builds_are_removed(tmp_path):
    import os
    import time

    root = tmp_path / "cache" / "artifacts"
    stale, fresh = root / ".tmp-stale", root / ".tmp-fresh"
    stale.mkdir(parents=True)
    fresh.mkdir()
    old = time.time() - compile_mod.STALE_TMP_S - 60
    os.utime(stale, (old, old))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    compile_onnx(bad, resolve_target("host"), tmp_path / "cache", UNTUNED)
    assert not stale.exists()
    assert fresh.exists()  # may belong to a build still running in another process
