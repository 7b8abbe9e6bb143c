"""Real artifacts whose latency ratio is known by construction, and a load that stops by itself (test helper).

:func:`build_conv_artifact` writes a two-conv CNN at a given width through
ONNX and TVM (untuned: TVM's naive loops, whose time tracks MACs; DESIGN.md
§4), in the artifact layout of ``tests/devices/conftest.py``. Width 16 vs 32
at input 1x8x16x16: conv1 8->W, conv2 W->W (3x3, pad 1), so MACs are
294,912 + 589,824 = 884,736 vs 589,824 + 2,359,296 = 2,949,120: the wide
model does 3.33x the work of the narrow one.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

INPUT_SHAPE = (1, 8, 16, 16)


def conv_macs(width: int) -> int:
    """MACs of the two convs (the Gemm's W*10 is negligible): output elements x C_in x 3 x 3 each."""
    hw = INPUT_SHAPE[2] * INPUT_SHAPE[3]
    return hw * width * INPUT_SHAPE[1] * 9 + hw * width * width * 9


def build_conv_artifact(out_dir: Path, width: int) -> Path:
    """Conv(8->W,3x3)+Relu, Conv(W->W,3x3)+Relu, GAP, Flatten, Gemm(W->10); input 1x8x16x16 float32.

    Writes manifest.json, lib.so (weights embedded) and model.onnx; returns ``out_dir``.
    """
    import onnx
    import tvm
    from onnx import TensorProto, helper, numpy_helper
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    rng = np.random.default_rng(width)
    c_in = INPUT_SHAPE[1]
    inits = {
        "w1": (rng.standard_normal((width, c_in, 3, 3)) * 0.2).astype(np.float32),
        "w2": (rng.standard_normal((width, width, 3, 3)) * 0.1).astype(np.float32),
        "gw": rng.standard_normal((10, width)).astype(np.float32),
        "gb": rng.standard_normal((10,)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["output"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, f"conv{width}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / "model.onnx"))
    target_dict = {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
                   "mtriple": "x86_64-pc-linux-gnu"}
    target = tvm.target.Target(target_dict)
    mod = from_onnx(model, shape_dict={"input": list(INPUT_SHAPE)})
    with target:
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.get_pipeline("zero")(mod)
    tvm.compile(mod, target=target).export_library(str(out_dir / "lib.so"))

    def sha(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    manifest = {
        "format_version": 1, "library": "lib.so", "params": None, "onnx": "model.onnx",
        "onnx_sha256": sha(out_dir / "model.onnx"), "library_sha256": sha(out_dir / "lib.so"),
        "target": target_dict, "target_preset": "host", "arch": "x86_64", "device_kind": "cpu",
        "input": {"name": "input", "shape": list(INPUT_SHAPE), "dtype": "float32"},
        "output": {"shape": [1, 10], "dtype": "float32"}, "tvm_version": tvm.__version__,
        "tuning": {"tuned": False, "trials_per_task": 0},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out_dir


def start_busy(processes: int, seconds: float) -> list[subprocess.Popen]:
    """Start ``processes`` pure-Python spinning loops that exit by themselves after ``seconds``."""
    code = f"import time\nend = time.monotonic() + {float(seconds)!r}\nwhile time.monotonic() < end:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(processes)]


def stop_busy(procs: list[subprocess.Popen]) -> None:
    """Wait for the busy loops (they end by themselves); kill any still running after a grace period."""
    deadline = time.monotonic() + 30
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
