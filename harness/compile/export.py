"""Export a torch CNN to ONNX and check the graph against torch eager.

DESIGN.md §4: ``torch.onnx.export(..., opset_version=17)`` with ``dynamo=False``
(the dynamo exporter needs the onnxscript package, absent here), validated with
``onnx.checker`` and compared with ONNX Runtime on a fixed seeded input.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Absolute and relative tolerance for the ORT-vs-torch check, applied as
#: ``|ort - torch| <= ATOL + RTOL * |torch|`` elementwise. Both run fp32 CNNs;
#: differences come from summation order in convolutions and GEMMs (~1e-6
#: relative per layer, growing with depth), so 1e-4 leaves two decades of room
#: for a 20-layer ResNet on logits of order 1-10 while still catching a wrong
#: op (an export bug moves logits by >1e-2).
ATOL = 1e-4
RTOL = 1e-4
#: Seed of the input used for the comparison (standard normal, fp32).
CHECK_SEED = 0


@dataclass(frozen=True, slots=True)
class ExportReport:
    """Result of a successful export.

    Attributes:
        path: the ONNX file written.
        onnx_sha256: hex sha256 of the file's bytes.
        input_name: graph input name (always ``"input"``).
        output_shape: static output shape, e.g. ``(1, 10)``.
        max_abs_diff: max |ORT - torch| on the seeded check input (fp32 units of the output).
        tolerance: description of the tolerance applied, e.g. ``"atol=0.0001 rtol=0.0001"``.
    """

    path: Path
    onnx_sha256: str
    input_name: str
    output_shape: tuple[int, ...]
    max_abs_diff: float
    tolerance: str


class ExportError(Exception):
    """An expected export failure.

    Attributes:
        kind: ``"export_failed"`` (torch.onnx.export raised), ``"invalid_onnx"``
            (onnx.checker refused the graph), ``"ort_failed"`` (ONNX Runtime could
            not load or run it) or ``"mismatch"`` (ORT differs from torch beyond
            ``ATOL``/``RTOL``).
        message: one human-readable line.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_onnx(
    model: torch.nn.Module, input_shape: tuple[int, ...], path: Path, opset: int = 17, *, check: bool = True
) -> ExportReport:
    """Export ``model`` to ONNX at ``path`` and check it with ONNX Runtime.

    The model is deep-copied and put in eval mode; the caller's model is not
    touched. The graph has one fp32 input ``"input"`` of static shape
    ``input_shape`` (NCHW, e.g. ``(1, 1, 28, 28)``) and one output ``"output"``.

    ``check=False`` skips ``onnx.checker`` and the ONNX Runtime comparison: only for graphs that are never
    run, whose tasks are only looked up in the latency table (a predicted latency;
    :mod:`harness.search.latency_mode`); ``max_abs_diff`` is then NaN. A graph that is compiled and
    measured is always checked.

    Raises:
        ExportError: with ``kind`` as documented on ``ExportError``.
        ValueError: ``input_shape`` empty or with a non-positive dimension.
    """
    import onnx
    import onnxruntime as ort

    if not input_shape or any(int(d) <= 0 for d in input_shape):
        raise ValueError(f"input_shape must be positive dims, got {input_shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(model).eval().cpu()
    generator = torch.Generator().manual_seed(CHECK_SEED)
    x = torch.randn(*input_shape, generator=generator, dtype=torch.float32)

    try:
        with torch.no_grad():
            torch.onnx.export(
                net,
                (x,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["output"],
            )
    except Exception as exc:  # torch raises many types here
        raise ExportError("export_failed", f"torch.onnx.export: {type(exc).__name__}: {exc}") from exc

    if not check:
        return ExportReport(path=path, onnx_sha256=sha256_file(path), input_name="input", output_shape=(),
                            max_abs_diff=float("nan"), tolerance="unchecked")
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ExportError("invalid_onnx", f"onnx.checker: {exc}") from exc

    with torch.no_grad():
        expected = net(x).detach().numpy()
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (got,) = session.run(["output"], {"input": x.numpy()})
    except Exception as exc:
        raise ExportError("ort_failed", f"onnxruntime: {exc}") from exc

    if got.shape != expected.shape:
        raise ExportError("mismatch", f"ORT output shape {got.shape} != torch {expected.shape}")
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    max_abs_diff = float(diff.max()) if diff.size else 0.0
    tolerance = f"atol={ATOL} rtol={RTOL}"
    if not np.all(diff <= ATOL + RTOL * np.abs(expected)):
        raise ExportError(
            "mismatch",
            f"ORT differs from torch eager by up to {max_abs_diff:.3g} (allowed {tolerance}, "
            "fp32 summation-order noise); the exported graph computes something else",
        )
    report = ExportReport(
        path=path,
        onnx_sha256=sha256_file(path),
        input_name="input",
        output_shape=tuple(int(d) for d in expected.shape),
        max_abs_diff=max_abs_diff,
        tolerance=tolerance,
    )
    logger.info("exported %s (max |ORT-torch| = %.3g)", path, max_abs_diff)
    return report
