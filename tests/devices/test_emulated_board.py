"""Opt-in: an aarch64 board emulated with qemu-user behind a real loopback sshd.

Prepare it once with ``scripts/setup_emulated_board.sh [DIR]`` (default
``.cache/emulated-aarch64``), then run with ``HILPRUNE_EMULATED_BOARD=DIR`` (or
with the default dir present). Skipped otherwise: CI does not download the
~110 MB of arm64 packages and wheels, and TVM's import under qemu costs
10-20 s on 2 busy cores.

The rpi4 (Cortex-A72, aarch64) build of the tiny model runs on the emulated
board through the same daemon and SSH path; its output must match the host
(x86_64) ONNX Runtime result within rtol = atol = 1e-5 — float rounding differs
across ISAs (FMA contraction, NEON vs AVX reductions), so outputs are compared
with a tolerance, not by sha256. Its timings are labelled ``emulated`` and are
never a latency.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from devices.base import MeasureConfig, MeasureErrorKind
from devices.inventory import load_inventory
from devices.ssh import SshDevice
from tests.devices.farm_fixtures import board_toml, client_key, needs_sshd, sshd_pair, write_inventory  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
EMU = Path(os.environ.get("HILPRUNE_EMULATED_BOARD", REPO / ".cache" / "emulated-aarch64"))
pytestmark = [needs_sshd, pytest.mark.slow,
              pytest.mark.skipif(not (EMU / "python").exists(),
                                 reason=f"emulated aarch64 board not prepared ({EMU}); run "
                                        f"scripts/setup_emulated_board.sh and set HILPRUNE_EMULATED_BOARD")]
RTOL = ATOL = 1e-5


def build_tiny_aarch64(tiny_dir: Path, out_dir: Path) -> Path:
    """The tiny ONNX model of conftest compiled for the rpi4 preset, linked with aarch64-linux-gnu-g++."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    target_dict = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"],
                   "num-cores": 4}
    target = tvm.target.Target(target_dict)
    mod = from_onnx(onnx.load(str(tiny_dir / "model.onnx")), shape_dict={"input": [1, 1, 8, 8]})
    with target:
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.get_pipeline("zero")(mod)
    out_dir.mkdir(parents=True)
    tvm.compile(mod, target=target).export_library(str(out_dir / "lib.so"), cc="aarch64-linux-gnu-g++")
    manifest = json.loads((tiny_dir / "manifest.json").read_text())
    manifest.update(target=target_dict, target_preset="rpi4", arch="aarch64",
                    library_sha256=hashlib.sha256((out_dir / "lib.so").read_bytes()).hexdigest())
    (out_dir / "manifest.json").write_text(json.dumps(manifest))
    (out_dir / "model.onnx").write_bytes((tiny_dir / "model.onnx").read_bytes())
    return out_dir


def test_rpi4_artifact_on_emulated_board(tmp_path, sshd_pair, client_key, tiny_artifact, tiny_expected):
    arm = build_tiny_aarch64(tiny_artifact, tmp_path / "arm")
    text = board_toml("emu", sshd_pair[0], client_key, python=str(EMU / "python"), tags=("emu",),
                      extra="emulated = true").replace('target = "host"', 'target = "rpi4"')
    board = load_inventory(write_inventory(tmp_path / "emu.toml", [text])).board("emu")
    assert board.arch == "aarch64" and board.emulated
    dev = SshDevice(board)
    try:
        t0 = time.monotonic()
        hello = dev.hello()
        assert hello["machine"] == "aarch64" and hello["emulated"] is True
        # an x86 library is never sent to this board
        host = dev.measure(tiny_artifact, MeasureConfig(warmup=0, number=1, repeat=1, timeout_s=300))
        assert host.error.kind is MeasureErrorKind.LOAD_FAILED and "x86_64" in host.error.message
        r = dev.measure(arm, MeasureConfig(warmup=0, number=1, repeat=2, min_repeat_ms=0, timeout_s=300,
                                           max_remeasure=0))
        assert r.ok, r.error
        assert r.value.source == "emulated"  # timings under qemu are not a latency
        np.testing.assert_allclose(r.value.output_head, tiny_expected.reshape(-1), rtol=RTOL, atol=ATOL)
        print(f"emulated board: hello+measure {time.monotonic() - t0:.1f} s, max |diff| "
              f"{np.max(np.abs(np.array(r.value.output_head) - tiny_expected.reshape(-1))):.2e}")
    finally:
        dev.close()


def test_rpi4_build_tuned_through_the_board_runner_on_the_emulated_board(tmp_path, sshd_pair, client_key,
                                                                         tiny_artifact, tiny_expected):
    """Functional: trials of an rpi4 build are timed by the (emulated) board's daemon, records land in the
    database, and the tuned artifact's output on the board matches ONNX Runtime. The timings are labelled
    ``emulated``: stored, never a latency."""
    from harness.compile.targets import resolve_target
    from harness.compile.tuning import TuningConfig, database_dir_for, database_info
    from harness.pipeline import Pipeline, PipelineError, StoreKey
    from harness.store import ResultsStore

    text = board_toml("emu", sshd_pair[0], client_key, python=str(EMU / "python"), tags=("emu",),
                      extra="emulated = true").replace('target = "host"', 'target = "rpi4"')
    board = load_inventory(write_inventory(tmp_path / "emu.toml", [text])).board("emu")
    dev = SshDevice(board)
    store = ResultsStore(tmp_path / "r.db")
    target, tuning = resolve_target("rpi4"), TuningConfig(trials_per_task=2, num_trials_per_iter=2, num_threads=1)
    try:
        pipeline = Pipeline.for_device(dev, target, tuning, MeasureConfig(warmup=0, number=1, repeat=2,
                                                                          min_repeat_ms=0, timeout_s=300,
                                                                          max_remeasure=0),
                                       tmp_path / "cache", store, runner_timeout_s=300)
        prepared = pipeline.compile(tiny_artifact / "model.onnx")
        assert not isinstance(prepared, PipelineError), prepared
        info = prepared.manifest.tuning
        assert info["tasks_total"] >= 1 and info["tasks_tuned_now"] == info["tasks_total"]
        assert info["runner"] == "ssh:emu" and info["tasks_untuned"] == 0
        assert database_info(database_dir_for(tmp_path / "cache", target.canonical_json(), tuning)).records >= 1
        result = pipeline.measure(prepared, StoreKey("tiny", "tiny-rpi4"))
        assert result.ok, result.error
        assert result.measurement.source == "emulated" and not result.is_latency
        np.testing.assert_allclose(result.measurement.output_head, tiny_expected.reshape(-1), rtol=RTOL, atol=ATOL)
        (row,) = store.query("SELECT source, device_identity FROM measurements")
        assert row["source"] == "emulated" and row["device_identity"].startswith("emulated|board=emu|")
    finally:
        dev.close()
        store.close()
