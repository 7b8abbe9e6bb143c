"""The artifact manifest: the one typed value that crosses from compile to measure.

DESIGN.md §2: the boundary between compile and measure is an artifact
directory with a manifest. This module is its only reader and its only
writer (:func:`read_manifest`, :func:`write_manifest`); the compiler
(``harness/compile/build.py``), the graph-only artifacts of the ONNX Runtime
backend and the simulator, every device and the on-board daemon go through it.

It imports only the standard library and never the rest of hilprune, because
it is uploaded to boards beside ``daemon.py`` (which imports it as
``manifest``). It avoids ``slots=True`` so a board's Python 3.8 can import it.

Layout of an artifact directory::

    manifest.json   this value, as JSON (format_version 1)
    lib.so          the TVM library (absent in a graph-only artifact)
    params.npz      weights, keys "p0000", ... in main()'s order after the input
    model.onnx      the ONNX graph (ONNX Runtime backend, output check, simulator)

Every file name is a plain name inside the directory: a manifest that names
``../x`` or ``/etc/passwd`` is refused, so nothing outside the artifact is
ever loaded or uploaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

__all__ = ["FORMAT_VERSION", "MANIFEST_FILE", "Manifest", "ManifestError", "TensorSig", "read_manifest",
           "write_manifest"]

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
#: dtypes an artifact's input may have (numpy names).
DTYPES = ("float32", "float16", "float64", "int32", "int64", "uint8", "int8")
DEVICE_KINDS = ("cpu", "cuda")
ARCHES = ("x86_64", "aarch64")


class ManifestError(ValueError):
    """A manifest that is missing, not JSON, or has a bad field (the message names the file and field)."""


@dataclass(frozen=True)
class TensorSig:
    """Name, shape and dtype of an input or output tensor.

    Attributes:
        name: graph name (None for the output).
        shape: static dims, each > 0.
        dtype: a numpy dtype name from :data:`DTYPES` (input) or any string (output).
    """

    name: Optional[str]
    shape: tuple
    dtype: str


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of one artifact (format version 1), validated.

    Attributes:
        input, output: the model's single input and output.
        library: file name of the TVM library, or None (a graph-only artifact:
            ONNX Runtime backend or the simulator; no TVM build).
        library_sha256: hex sha256 of the library (None without one).
        params: file name of the weights (``.npz``) or None.
        onnx: file name of the ONNX graph, or None.
        onnx_sha256: hex sha256 of the ONNX file, or None.
        arch: ``x86_64`` / ``aarch64`` the library runs on; None for a
            graph-only artifact (any machine with ONNX Runtime).
        device_kind: ``cpu`` or ``cuda``.
        target: the TVM target dict the library was built for (None graph-only).
        target_preset: preset name (``host``, ``rpi4``, ...) or ``custom``.
        tvm_version: the compiler's version (None graph-only).
        build_s: wall seconds of the build (s).
        tuning: how the library was tuned: ``tuned``, ``trials_per_task``,
            ``database``, ``tasks_total``, ``tasks_from_db``,
            ``tasks_tuned_now``, ``tasks_untuned`` (tasks with no record,
            compiled with the default schedule), ``tune_s`` (s), ``runner``
            (``local``, ``board:NAME``, or None when nothing was tuned).
        format_version: 1.
        sha256: hex sha256 of the manifest file's bytes as read (not written
            to the file; "" for a value not read from disk).
    """

    input: TensorSig
    output: TensorSig
    library: Optional[str] = None
    library_sha256: Optional[str] = None
    params: Optional[str] = None
    onnx: Optional[str] = None
    onnx_sha256: Optional[str] = None
    arch: Optional[str] = None
    device_kind: str = "cpu"
    target: Optional[dict] = None
    target_preset: Optional[str] = None
    tvm_version: Optional[str] = None
    build_s: Optional[float] = None
    tuning: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    sha256: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        _validate(self, "manifest")

    @property
    def graph_only(self) -> bool:
        """True when there is no TVM library (ONNX Runtime backend or simulator)."""
        return self.library is None

    @property
    def tuned(self) -> bool:
        """True when the library was built with a tuning database applied."""
        return bool(self.tuning.get("tuned"))

    def files(self, backend: str) -> list:
        """File names a daemon needs to run ``backend`` (``tvm`` or ``onnxruntime``), manifest first.

        Raises:
            ManifestError: the artifact has no file for that backend.
        """
        if backend == "tvm":
            if self.library is None:
                raise ManifestError("the artifact has no TVM library (a graph-only artifact); "
                                    "measure it with backend 'onnxruntime' or compile it for a target")
            names = [self.library] + ([self.params] if self.params else [])
        elif backend == "onnxruntime":
            if self.onnx is None:
                raise ManifestError("the artifact has no ONNX file; the onnxruntime backend needs one")
            names = [self.onnx]
        else:
            raise ManifestError(f"unknown backend {backend!r}; use 'tvm' or 'onnxruntime'")
        return [MANIFEST_FILE] + names

    def to_dict(self) -> dict:
        """The JSON object written to ``manifest.json`` (without ``sha256``)."""
        out = asdict(self)
        out.pop("sha256")
        out["input"] = {"name": self.input.name, "shape": list(self.input.shape), "dtype": self.input.dtype}
        out["output"] = {"shape": list(self.output.shape), "dtype": self.output.dtype}
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest", sha256: str = "") -> "Manifest":
        """Build from the parsed JSON object; unknown keys are ignored (newer writers may add some).

        Raises:
            ManifestError: a missing or bad field, named with ``where``.
        """
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: must be a JSON object, got {type(data).__name__}")
        if data.get("format_version") != FORMAT_VERSION:
            raise ManifestError(f"{where}: format_version must be {FORMAT_VERSION}, got "
                                f"{data.get('format_version')!r}; rebuild the artifact with this hilprune")
        values = {}
        for name in ("input", "output"):
            sig = data.get(name)
            if not isinstance(sig, dict) or not isinstance(sig.get("shape"), list) \
                    or not isinstance(sig.get("dtype"), str):
                raise ManifestError(f"{where}: {name} must be {{'name', 'shape': [ints > 0], 'dtype'}}, got {sig!r}")
            values[name] = TensorSig(sig.get("name") if name == "input" else None, tuple(sig["shape"]),
                                     sig["dtype"])
        for key in ("library", "library_sha256", "params", "onnx", "onnx_sha256", "arch", "device_kind",
                    "target", "target_preset", "tvm_version", "build_s", "tuning"):
            if key in data and data[key] is not None:
                values[key] = data[key]
        try:
            return cls(**values, sha256=sha256)
        except ManifestError as exc:
            raise ManifestError(str(exc).replace("manifest:", f"{where}:", 1)) from None


def _plain_name(value: Any) -> bool:
    return (isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\\" not in value
            and not value.startswith(".") and "\x00" not in value)


def _validate(m: Manifest, where: str) -> None:
    def bad(field_name: str, want: str) -> ManifestError:
        return ManifestError(f"{where}: {field_name} must be {want}, got {getattr(m, field_name)!r}")

    for name in ("input", "output"):
        sig = getattr(m, name)
        if not isinstance(sig, TensorSig) or not sig.shape or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in sig.shape):
            raise ManifestError(f"{where}: {name}.shape must be a list of ints > 0, got {sig!r}")
    if m.input.dtype not in DTYPES:
        raise ManifestError(f"{where}: input.dtype must be one of {DTYPES}, got {m.input.dtype!r}")
    for name in ("library", "params", "onnx"):
        value = getattr(m, name)
        if value is not None and not _plain_name(value):
            raise bad(name, "a plain file name inside the artifact directory (no '/', not hidden)")
    if m.library is None and m.onnx is None:
        raise ManifestError(f"{where}: needs a library or an onnx file (it has neither)")
    if m.library is not None and not isinstance(m.library_sha256, str):
        raise bad("library_sha256", "the hex sha256 of the library")
    if m.arch is not None and m.arch not in ARCHES:
        raise bad("arch", f"one of {ARCHES} (or null for a graph-only artifact)")
    if m.library is not None and m.arch is None:
        raise bad("arch", f"one of {ARCHES} when there is a library")
    if m.device_kind not in DEVICE_KINDS:
        raise bad("device_kind", f"one of {DEVICE_KINDS}")
    if m.target is not None and not isinstance(m.target, dict):
        raise bad("target", "a TVM target dict")
    if not isinstance(m.tuning, dict):
        raise bad("tuning", "an object")
    if m.format_version != FORMAT_VERSION:
        raise bad("format_version", str(FORMAT_VERSION))


def read_manifest(artifact_dir: Any) -> Manifest:
    """Read and validate ``artifact_dir/manifest.json``.

    Args:
        artifact_dir: the artifact directory (str or Path).

    Returns:
        The :class:`Manifest`, with ``sha256`` of the file's bytes.

    Raises:
        ManifestError: no such directory or file, not JSON, or a bad field.
    """
    path = os.path.join(str(artifact_dir), MANIFEST_FILE)
    if not os.path.isdir(str(artifact_dir)):
        raise ManifestError(f"artifact dir {str(artifact_dir)!r} does not exist")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from None
    return Manifest.from_dict(data, where=path, sha256=hashlib.sha256(raw).hexdigest())


def write_manifest(artifact_dir: Any, manifest: Manifest) -> Path:
    """Write ``manifest`` as ``artifact_dir/manifest.json`` (atomically: temp file + rename).

    Returns:
        The path written.
    """
    path = Path(artifact_dir) / MANIFEST_FILE
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=str(artifact_dir))
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(manifest.to_dict(), fh, indent=2, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
