"""Benchmark suite files (TOML) for nightly latency benchmarks (issue 6).

The contract (more keys may be added; unknown keys are refused so a typo is
never silently ignored)::

    [suite]                          # optional
    name = "nightly"                 # default: the file's stem
    reference = "ref-resnet20-16"    # optional: the suite's reference model, one of its benchmarks (below)

    [[benchmark]]
    name = "resnet20-28"             # required, unique, [A-Za-z0-9._-]+
    model = "resnet20"               # a zoo model, or:  onnx = "models/net.onnx"
    input_shape = [1, 1, 28, 28]     # required: N, C, H, W (positive integers)
    targets = ["host"]               # optional, default ["host"]: TVM target presets or JSON dicts
    devices = ["local"]              # optional, default ["local"]; --device on the command line wins
    # optional extras:
    seed = 0                         # seed of a zoo model's random weights (default 0)
    tune_trials = 0                  # MetaSchedule trials per task; default: bench's --tune-trials
    backend = "tvm"                  # or "onnxruntime"; default: bench's --backend

The reference (issue 12): every other benchmark that measured ok on a
(target, device) is also timed *interleaved* with the reference on that same
(target, device) in one device session (``Pipeline.measure_ratio``), and
``bench compare`` judges the ratio to the reference beside the absolute p50,
so a slower machine night (every absolute p50 up, ratios flat) is told apart
from a slower model (its ratio up). Pick a small model that never changes.

A relative ``onnx`` path is relative to the suite file's folder. Whether the
ONNX file exists is *not* checked here: a missing file is a failure of that
benchmark at run time (recorded with its reason), not of the suite.

Errors: :func:`load_suite` raises :class:`SuiteError` (a ``ValueError``) whose
message has one line per problem, each naming the file, the benchmark (index
and name) and the field, e.g.
``nightly.toml: benchmark #2 'vgg': input_shape: must be 4 positive integers [N, C, H, W], got [1, 3]``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Benchmark", "Suite", "SuiteError", "load_suite", "parse_suite"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_BENCH_KEYS = {"name", "model", "onnx", "input_shape", "targets", "devices", "seed", "tune_trials", "backend"}
_SUITE_KEYS = {"name", "reference"}
_BACKENDS = ("tvm", "onnxruntime")


class SuiteError(ValueError):
    """A suite file that cannot be used; ``problems`` lists each, the message joins them on ONE
    line (``; ``), first problem first."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class Benchmark:
    """One benchmark of a suite (validated).

    Attributes:
        name: unique name within the suite; the key of its history.
        model: zoo model name, or None when ``onnx`` is given.
        onnx: absolute path of the ONNX file, or None when ``model`` is given.
        input_shape: N, C, H, W.
        targets: target presets (or JSON target dicts) to compile for.
        devices: device names to measure on (``local``, ``sim:P``, ``ssh:B``, ``farm:T``).
        seed: seed of a zoo model's random weights.
        tune_trials: MetaSchedule trials per task, or None for the command's default.
        backend: ``tvm`` / ``onnxruntime``, or None for the command's default.
    """

    name: str
    model: str | None
    onnx: Path | None
    input_shape: tuple[int, int, int, int]
    targets: tuple[str, ...] = ("host",)
    devices: tuple[str, ...] = ("local",)
    seed: int = 0
    tune_trials: int | None = None
    backend: str | None = None


@dataclass(frozen=True, slots=True)
class Suite:
    """A validated suite: its name, file, the sha256 of the file's bytes, and its benchmarks in file order.

    Attributes:
        reference: the name of the suite's reference benchmark (``[suite] reference``), or None.
    """

    name: str
    path: Path
    sha256: str
    benchmarks: tuple[Benchmark, ...]
    reference: str | None = None


def _str_list(value: Any) -> list[str] | None:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        return None
    return [v.strip() for v in value]


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_suite(data: dict[str, Any], path: Path, sha256: str = "") -> Suite:
    """Validate a parsed suite document.

    Args:
        data: the TOML document as a dict.
        path: the suite file (names in messages; base of relative ``onnx`` paths).
        sha256: hex sha256 of the file's bytes (recorded with each run).

    Raises:
        SuiteError: every problem found, one line each.
    """
    where = path.name
    problems: list[str] = []
    for key in sorted(set(data) - {"benchmark", "suite"}):
        hint = "; write it under [suite]: reference = \"NAME\"" if key == "reference" else ""
        problems.append(f"{where}: unknown top-level key {key!r}; expected [[benchmark]] tables and an optional "
                        f"[suite]{hint}")
    suite_table = data.get("suite", {})
    suite_name = path.stem
    reference = None
    if not isinstance(suite_table, dict):
        problems.append(f"{where}: [suite] must be a table")
    else:
        for key in sorted(set(suite_table) - _SUITE_KEYS):
            problems.append(f"{where}: [suite]: unknown key {key!r}; allowed: {', '.join(sorted(_SUITE_KEYS))}")
        if "name" in suite_table:
            if isinstance(suite_table["name"], str) and _NAME_RE.match(suite_table["name"]):
                suite_name = suite_table["name"]
            else:
                problems.append(f"{where}: [suite]: name: must be a string of letters, digits, '.', '_', '-'")
        if "reference" in suite_table:
            reference = suite_table["reference"]
            if not isinstance(reference, str) or not reference.strip():
                problems.append(f"{where}: [suite]: reference: must be the name of one of the suite's benchmarks, "
                                f"got {reference!r}")
                reference = None
    raw = data.get("benchmark")
    if raw is None:
        problems.append(f"{where}: no [[benchmark]] tables; a suite needs at least one")
        raise SuiteError(problems)
    if not isinstance(raw, list):
        raise SuiteError(problems + [f"{where}: 'benchmark' must be an array of tables: write [[benchmark]]"])
    benchmarks: list[Benchmark] = []
    seen: set[str] = set()
    for i, table in enumerate(raw, start=1):
        name = table.get("name") if isinstance(table, dict) else None
        label = f"{where}: benchmark #{i}" + (f" {name!r}" if isinstance(name, str) else "")
        if not isinstance(table, dict):
            problems.append(f"{label}: must be a table")
            continue
        errs: list[str] = []

        def err(field: str, why: str) -> None:
            errs.append(f"{label}: {field}: {why}")

        for key in sorted(set(table) - _BENCH_KEYS):
            err(key, f"unknown key; allowed: {', '.join(sorted(_BENCH_KEYS))}")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            err("name", "required: a string of letters, digits, '.', '_', '-' (e.g. \"resnet20-28\")")
        elif name in seen:
            err("name", "duplicate; every benchmark needs its own name (it keys the history)")
        else:
            seen.add(name)
        model, onnx = table.get("model"), table.get("onnx")
        if (model is None) == (onnx is None):
            err("model/onnx", "give exactly one: model = \"resnet20\" (a zoo model) or onnx = \"path/to/net.onnx\"")
        elif model is not None:
            from harness.models import MODELS

            if not isinstance(model, str) or model not in MODELS:
                err("model", f"unknown zoo model {model!r}; valid: {', '.join(sorted(MODELS))}")
        elif not isinstance(onnx, str) or not onnx.strip():
            err("onnx", "must be a path string to an .onnx file")
        shape = table.get("input_shape")
        if not (isinstance(shape, list) and len(shape) == 4 and all(_int(d) and d >= 1 for d in shape)):
            err("input_shape", f"required: 4 positive integers [N, C, H, W], e.g. [1, 1, 28, 28]; got {shape!r}")
        targets = ["host"]
        if "targets" in table:
            targets = _str_list(table["targets"]) or []
            if not targets:
                err("targets", "must be a non-empty list of target presets, e.g. [\"host\", \"rpi4\"]")
            else:
                from harness.compile.targets import resolve_target

                for t in targets:
                    try:
                        resolve_target(t)
                    except ValueError as exc:
                        err("targets", str(exc).splitlines()[0])
        devices = ["local"]
        if "devices" in table:
            devices = _str_list(table["devices"]) or []
            if not devices:
                err("devices", "must be a non-empty list of device names, e.g. [\"local\", \"sim:rpi4\"]")
            for d in devices:
                if not (d == "local" or re.match(r"^(sim|ssh|farm):\S+$", d)):
                    err("devices", f"unknown device {d!r}; valid: 'local', 'sim:PROFILE', 'ssh:BOARD', 'farm:TAG'")
        seed = table.get("seed", 0)
        if not (_int(seed) and seed >= 0):
            err("seed", f"must be an integer >= 0, got {seed!r}")
        trials = table.get("tune_trials")
        if trials is not None and not (_int(trials) and trials >= 0):
            err("tune_trials", f"must be an integer >= 0 (0 = untuned), got {trials!r}")
        backend = table.get("backend")
        if backend is not None and backend not in _BACKENDS:
            err("backend", f"must be one of {', '.join(_BACKENDS)}, got {backend!r}")
        if errs:
            problems.extend(errs)
            continue
        onnx_path = None
        if onnx is not None:
            onnx_path = Path(onnx).expanduser()
            if not onnx_path.is_absolute():
                onnx_path = (path.parent / onnx_path).resolve()
        benchmarks.append(Benchmark(
            name=name, model=model, onnx=onnx_path, input_shape=tuple(shape),  # type: ignore[arg-type]
            targets=tuple(dict.fromkeys(targets)), devices=tuple(dict.fromkeys(devices)), seed=seed,
            tune_trials=trials, backend=backend,
        ))
    if reference is not None and reference not in seen:
        problems.append(f"{where}: [suite]: reference: {reference!r} is not a benchmark of this suite; "
                        f"name one of: {', '.join(sorted(seen)) or '(none)'}")
    elif reference is not None and len(seen) == 1:
        problems.append(f"{where}: [suite]: reference: {reference!r} is the suite's only benchmark; a reference "
                        "needs other benchmarks to compare (add one, or drop the reference)")
    if problems:
        raise SuiteError(problems)
    return Suite(name=suite_name, path=path, sha256=sha256, benchmarks=tuple(benchmarks), reference=reference)


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite TOML file.

    Raises:
        FileNotFoundError: no such file.
        SuiteError: not TOML, or invalid (one line per problem, naming benchmark and field).
    """
    import hashlib

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"suite file {str(path)!r} not found; pass a TOML file with [[benchmark]] tables")
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SuiteError([f"{path.name}: not valid TOML ({exc})"]) from None
    return parse_suite(data, path, hashlib.sha256(raw).hexdigest())
