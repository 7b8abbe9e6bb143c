"""Is the compiled library's output right? The device's output against ONNX Runtime's.

A latency is only worth something for a program that computes the model: a
wrong tuned schedule, a bad cross-compile or a broken board runtime can be
fast *and* wrong, and a search would reward it. Every measurement reply of
the device daemon carries the first 16 output values for the fixed input
``numpy.random.default_rng(seed).standard_normal(shape)`` (``devices/daemon.py``,
protocol v1); :func:`check_device_output` runs the artifact's ONNX file with
ONNX Runtime on the same input and compares.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["OUTPUT_ATOL", "OUTPUT_RTOL", "OutputCheck", "check_artifact_output", "check_device_output", "check_measurement",
           "device_input"]

#: Tolerance of the device-vs-ONNX Runtime check: ``|device - ort| <= OUTPUT_ATOL + OUTPUT_RTOL * max|ort|``
#: elementwise. Ten times the export check's 1e-4 (``harness/compile/export.py``): a tuned TVM schedule
#: reorders fp32 reductions and an aarch64 board rounds differently (both measured at <= 1e-5 relative
#: here, e.g. the emulated rpi4 at 1.2e-7), while a wrong program is off by the order of the outputs.
OUTPUT_ATOL = 1e-3
OUTPUT_RTOL = 1e-3


def device_input(shape: Sequence[int], dtype: str, seed: int) -> np.ndarray:
    """The daemon's fixed input: ``default_rng(seed).standard_normal(shape).astype(dtype)`` (same rule)."""
    return np.random.default_rng(seed).standard_normal(list(shape)).astype(dtype)


@dataclass(frozen=True, slots=True)
class OutputCheck:
    """Result of one comparison.

    Attributes:
        ok: every compared value is within tolerance and the shapes agree.
        max_abs_diff: largest ``|device - ort|`` over the compared values.
        bound: the allowed difference, ``OUTPUT_ATOL + OUTPUT_RTOL * max|ort|``.
        compared: how many values were compared (<= 16).
        message: one line saying what differs ("" when ok).
    """

    ok: bool
    max_abs_diff: float
    bound: float
    compared: int
    message: str = ""


@functools.lru_cache(maxsize=64)
def _reference_output(onnx_path: str, _mtime_ns: int, _size: int, input_name: str, input_shape: tuple,
                      input_dtype: str, seed: int) -> np.ndarray:
    """ONNX Runtime's output on the daemon's input; cached, since the final rounds and every device of a
    nightly benchmark check the same artifact again (keyed by the file's mtime and size too)."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        ref = np.asarray(sess.run(None, {input_name: device_input(input_shape, input_dtype, seed)})[0])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception classes
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"cannot check the device's output: ONNX Runtime cannot run {onnx_path}: {first[:300]}; "
                         "use an ONNX file that ONNX Runtime runs") from None
    ref.setflags(write=False)  # shared by every caller of the cache
    return ref


def check_device_output(onnx_path: Path, input_name: str, input_shape: Sequence[int], input_dtype: str,
                        seed: int, output_head: Sequence[float], output_shape: Sequence[int]) -> OutputCheck:
    """Compare a daemon reply's output with ONNX Runtime's on the same input.

    Args:
        onnx_path: the ONNX file the artifact was compiled from.
        input_name, input_shape, input_dtype: the artifact manifest's input.
        seed: the measurement's input seed (``MeasureConfig.seed``).
        output_head: the first values of the device's flattened output.
        output_shape: the device's output shape.

    Returns:
        An :class:`OutputCheck`. ``ok`` is False on a shape mismatch, any value
        beyond the bound, or a non-finite device value.

    Raises:
        ValueError: ONNX Runtime cannot load or run the ONNX file (a model the
            harness exported always ran there; a user's ``--onnx`` file may not),
            so the output cannot be checked; the message names the file.
    """
    stat = Path(onnx_path).stat()
    ref = _reference_output(str(onnx_path), stat.st_mtime_ns, stat.st_size, input_name, tuple(input_shape),
                            input_dtype, seed)
    if tuple(ref.shape) != tuple(output_shape):
        return OutputCheck(False, float("inf"), 0.0, 0,
                           f"device output shape {tuple(output_shape)} is not ONNX Runtime's {tuple(ref.shape)}")
    flat = ref.reshape(-1).astype(np.float64)
    head = np.asarray(output_head, dtype=np.float64)
    n = min(len(head), flat.size)
    if n == 0:
        return OutputCheck(False, float("inf"), 0.0, 0, "the device reply carries no output values to check")
    bound = OUTPUT_ATOL + OUTPUT_RTOL * float(np.abs(flat).max())
    diff = np.abs(head[:n] - flat[:n])
    if not np.all(np.isfinite(head[:n])):
        return OutputCheck(False, float("inf"), bound, n, "the device output holds NaN or inf")
    worst = int(diff.argmax())
    ok = bool(diff[worst] <= bound)
    msg = "" if ok else (f"device output differs from ONNX Runtime's: |diff| {diff[worst]:.3g} at index {worst} "
                         f"(device {head[worst]:.6g}, ort {flat[worst]:.6g}) > bound {bound:.3g} "
                         f"= {OUTPUT_ATOL:g} + {OUTPUT_RTOL:g} x max|ort|")
    return OutputCheck(ok, float(diff[worst]), bound, n, msg)


def check_artifact_output(artifact_dir: Path, manifest, seed: int, output_head: Sequence[float],
                          output_shape: Sequence[int]) -> OutputCheck:
    """:func:`check_device_output` for a compiled artifact directory: its own ``model.onnx`` and input.

    Args:
        artifact_dir: the artifact (``manifest.json``, the library, ``model.onnx``).
        manifest: its :class:`devices.manifest.Manifest`.
        seed, output_head, output_shape: from the measurement.

    Raises:
        ValueError: a manifest without an ONNX file.
    """
    if manifest.onnx is None:
        raise ValueError(f"{artifact_dir}: the manifest names no ONNX file to check the output against")
    inp = manifest.input
    return check_device_output(Path(artifact_dir) / manifest.onnx, inp.name, list(inp.shape), inp.dtype,
                               seed, output_head, output_shape)


def check_measurement(artifact_dir: Path, manifest, measurement, seed: int) -> OutputCheck | None:
    """Check a :class:`devices.base.Measurement` of an artifact; None when nothing ran (``simulated``).

    Args:
        artifact_dir, manifest: the measured artifact and its :class:`devices.manifest.Manifest`.
        measurement: the device's Measurement (``output_head``, ``output_shape``, ``source``).
        seed: the input seed it was measured with (``MeasureConfig.seed``).
    """
    if measurement.source == "simulated":
        return None
    return check_artifact_output(artifact_dir, manifest, seed, measurement.output_head, measurement.output_shape)
