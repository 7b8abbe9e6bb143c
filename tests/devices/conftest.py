"""Fixtures for devices/ tests: a tiny real artifact built here (not via harness/)."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `.venv/bin/pytest` does not put the repo root on sys.path
    sys.path.insert(0, str(REPO))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_tiny_artifact(out_dir: Path) -> Path:
    """Conv(1->4, 1x1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(4->10), input 1x1x8x8 float32.

    Writes the artifact directory of the compile/measure contract: manifest.json,
    lib.so (Relax VM executable, weights embedded, "params": null), model.onnx.
    """
    import onnx
    import tvm
    from onnx import TensorProto, helper, numpy_helper
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    rng = np.random.default_rng(0)
    inits = {
        "w": rng.standard_normal((4, 1, 1, 1)).astype(np.float32),
        "b": rng.standard_normal((4,)).astype(np.float32),
        "gw": rng.standard_normal((10, 4)).astype(np.float32),
        "gb": rng.standard_normal((10,)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["output"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / "model.onnx"))

    t0 = time.perf_counter()
    target_dict = {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
                   "mtriple": "x86_64-pc-linux-gnu"}
    target = tvm.target.Target(target_dict)
    mod = from_onnx(model, shape_dict={"input": [1, 1, 8, 8]})
    with target:
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.get_pipeline("zero")(mod)
    executable = tvm.compile(mod, target=target)
    executable.export_library(str(out_dir / "lib.so"))
    manifest = {
        "format_version": 1, "library": "lib.so", "params": None, "onnx": "model.onnx",
        "onnx_sha256": _sha256(out_dir / "model.onnx"), "library_sha256": _sha256(out_dir / "lib.so"),
        "target": target_dict, "target_preset": "host", "arch": "x86_64", "device_kind": "cpu",
        "input": {"name": "input", "shape": [1, 1, 8, 8], "dtype": "float32"},
        "output": {"shape": [1, 10], "dtype": "float32"},
        "tvm_version": tvm.__version__, "build_s": time.perf_counter() - t0,
        "tuning": {"tuned": False, "trials_per_task": 0, "database": None, "tasks_total": 0,
                   "tasks_from_db": 0, "tasks_tuned_now": 0},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out_dir


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory) -> Path:
    """Path of the tiny artifact directory (built once per test session)."""
    return build_tiny_artifact(tmp_path_factory.mktemp("artifact") / "tiny")


@pytest.fixture(scope="session")
def tiny_expected(tiny_artifact) -> np.ndarray:
    """ONNX Runtime's output of the tiny model on the seed-0 input, shape (1, 10) float32."""
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(str(tiny_artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]
