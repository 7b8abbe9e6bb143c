"""Measured latencies -> simulator calibration rows (issue 5).

Three sources, each giving :class:`devices.sim.calibrate.CalibrationRow` s:

- :func:`ncnn_rows`: the published ncnn table (``../shared/data/ncnn_benchmark.csv``,
  columns device, run_idx, num_threads, gpu_device, loop_count, model,
  min_ms, max_ms, avg_ms), one board and CPU or GPU, ``avg_ms`` as the
  latency, for the models whose graphs are given (the zoo's classics);
- :func:`csv_rows`: a plain CSV with columns ``onnx`` (path, relative to
  the CSV's folder or absolute), ``latency_ms`` and optionally ``threads``
  and ``group``;
- :func:`db_rows`: the results store's ``measured`` rows of one device and
  backend; each row's graph is found by its ``onnx_sha256`` among the
  ``.onnx`` files under the given folders.

No torch, no TVM here.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from pathlib import Path
from typing import Iterable, Mapping

from devices.sim.calibrate import CalibrationRow
from devices.sim.graph import load_features

logger = logging.getLogger(__name__)

__all__ = ["NCNN_BOARDS", "csv_rows", "db_rows", "is_ncnn_csv", "ncnn_rows"]

#: Profile name -> (device string of the ncnn table, exact; gpu_device: -1 CPU, 0 GPU).
NCNN_BOARDS: dict[str, tuple[str, int]] = {
    "rpi4": ("Raspberry Pi 4 Model B Broadcom BCM2711B0, Cortex-A72 (ARMv8) (1.8GHz x 4)", -1),
    "rpi5": ("Raspberry Pi 5 Broadcom BCM2712, Cortex-A76 (ARMv8) (2.4GHz x 4)", -1),
    "jetson-nano": ("NVIDIA Jetson Nano", -1),
    "jetson-nano-gpu": ("NVIDIA Jetson Nano", 0),
    "jetson-orin-nano": ("NVIDIA Jetson Orin Nano", -1),
    "jetson-orin-nano-gpu": ("NVIDIA Jetson Orin Nano", 0),
}
_NCNN_COLUMNS = {"device", "num_threads", "gpu_device", "model", "avg_ms"}


def is_ncnn_csv(path: Path) -> bool:
    """True when the CSV's header has the ncnn table's columns."""
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    return _NCNN_COLUMNS <= set(header)


def ncnn_rows(path: Path, profile: str, graphs: Mapping[str, Path], *, board: str | None = None,
              gpu_device: int | None = None) -> list[CalibrationRow]:
    """Rows of one board of the ncnn table for the models in ``graphs``.

    Args:
        path: the ncnn CSV.
        profile: profile name; picks the board from :data:`NCNN_BOARDS`
            unless ``board`` is given.
        graphs: {ncnn model name: ONNX path}; other models are skipped.
        board: exact ``device`` string of the table (overrides the profile's).
        gpu_device: -1 for CPU rows, >= 0 for a GPU (default: the profile's).

    Returns:
        One row per (model, num_threads) with ``latency_ms = avg_ms``,
        ``threads = num_threads`` (for GPU rows too: the CPU threads of
        the run; a GPU profile's ``cores=1`` caps it, so it only separates
        the rows when a ranking is scored), ``group`` = model name.

    Raises:
        ValueError: unknown profile without ``board``, or no matching row.
    """
    if board is None:
        if profile not in NCNN_BOARDS:
            raise ValueError(f"no ncnn board for profile {profile!r}; known: {', '.join(NCNN_BOARDS)} "
                             "(or pass --board with the table's exact device name)")
        board, default_gpu = NCNN_BOARDS[profile]
        gpu_device = default_gpu if gpu_device is None else gpu_device
    gpu_device = -1 if gpu_device is None else gpu_device
    rows = []
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            if rec["device"] != board or int(rec["gpu_device"]) != gpu_device or rec["model"] not in graphs:
                continue
            # a GPU profile has cores=1, so its prediction ignores the count; it is kept so that a
            # ranking is scored within one thread count (devices.sim.calibrate.ranking_scores)
            threads = int(rec["num_threads"])
            rows.append(CalibrationRow(load_features(graphs[rec["model"]]), float(rec["avg_ms"]), threads,
                                       label=f"{rec['model']}@{rec['num_threads']}t", group=rec["model"]))
    if not rows:
        raise ValueError(f"{path}: no rows for board {board!r} gpu_device {gpu_device} and models {sorted(graphs)}")
    return rows


def csv_rows(path: Path) -> list[CalibrationRow]:
    """Rows of a plain CSV (``onnx``, ``latency_ms``[, ``threads``, ``group``]).

    Raises:
        ValueError: missing columns or a bad value (names the line).
    """
    path = Path(path)
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"onnx", "latency_ms"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; need onnx, latency_ms "
                             "[, threads, group] (or the ncnn table's columns)")
        for line, rec in enumerate(reader, start=2):
            onnx_path = Path(rec["onnx"])
            if not onnx_path.is_absolute():
                onnx_path = path.parent / onnx_path
            try:
                lat = float(rec["latency_ms"])
                threads = int(rec.get("threads") or 1)
            except ValueError as exc:
                raise ValueError(f"{path}:{line}: {exc}") from None
            rows.append(CalibrationRow(load_features(onnx_path), lat, threads, label=onnx_path.stem,
                                       group=rec.get("group") or onnx_path.stem))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _index_onnx(dirs: Iterable[Path], wanted: set[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in dirs:
        if not Path(d).is_dir():
            continue
        for p in sorted(Path(d).rglob("*.onnx")):
            if len(found) == len(wanted):
                return found
            try:
                digest = _sha256(p)
            except OSError:
                continue
            if digest in wanted and digest not in found:
                found[digest] = p
    return found


def db_rows(db: Path, device: str, backend: str, onnx_dirs: Iterable[Path], *, threads: int = 1,
            model: str | None = None, statistic: str = "p50") -> list[CalibrationRow]:
    """The store's stable ``measured`` rows of ``device`` and ``backend``, one per graph.

    The latency of a graph is the smallest ``statistic`` (``p50``, or ``min``:
    the fastest block, robust on a loaded machine) of its measurements.

    Args:
        db: results store file.
        device: device name (e.g. ``local``, ``ssh:pi4-01``); ``sim:`` devices
            are refused (a simulator is never calibrated on its own output).
        backend: ``tvm`` or ``onnxruntime``.
        onnx_dirs: folders searched (recursively) for ``.onnx`` files whose
            sha256 matches a row's ``onnx_sha256``; unmatched rows are skipped
            with a warning.
        threads: thread count the measurements ran with (the store does not
            record it).
        model: keep only this model's rows.
        statistic: ``p50`` or ``min``.

    Raises:
        ValueError: a ``sim:`` device, a missing store, or no usable row (the
            message says which filters matched what).
    """
    if device.startswith("sim:"):
        raise ValueError(f"refusing to calibrate on simulated rows of {device!r}; pick a measured device")
    if statistic not in ("p50", "min"):
        raise ValueError(f"statistic must be 'p50' or 'min', got {statistic!r}")
    from harness.store import StoreError, open_readonly

    db = Path(db)
    try:
        con = open_readonly(db)
    except StoreError as exc:
        raise ValueError(str(exc)) from None
    try:
        q = (f"SELECT id, model, arch_signature, backend, onnx_sha256, latency_{statistic}_ms FROM measurements "
             "WHERE device=? AND source='measured' AND unstable=0")
        args: list = [device]
        if model:
            q += " AND model=?"
            args.append(model)
        recs = con.execute(q, args).fetchall()
    finally:
        con.close()
    if not recs:
        raise ValueError(f"{db}: no stable measured rows for device {device!r}"
                         + (f" and model {model!r}" if model else ""))
    backends = sorted({r[3] for r in recs})
    recs = [r for r in recs if r[3] == backend]
    if not recs:
        raise ValueError(f"{db}: device {device!r} has no rows with backend {backend!r} (it has {backends})")
    # the smallest p50 per graph: repeated measurements of one graph on a shared
    # machine differ by interference, which only ever adds time
    by_sha: dict[str, tuple] = {}
    for r in recs:
        if r[4] and (r[4] not in by_sha or r[5] < by_sha[r[4]][5]):
            by_sha[r[4]] = r
    paths = _index_onnx([Path(d) for d in onnx_dirs], set(by_sha))
    rows = [CalibrationRow(load_features(paths[sha]), float(r[5]), threads, label=f"{r[1]}:{r[2]}", group=r[1])
            for sha, r in by_sha.items() if sha in paths]
    skipped = len(by_sha) - len(rows)
    if skipped:
        logger.warning("%d of %d measured graphs have no ONNX file under %s; skipped", skipped, len(by_sha),
                       [str(d) for d in onnx_dirs])
    if not rows:
        raise ValueError(f"{db}: none of the {len(by_sha)} measured graphs of {device!r} was found under "
                         f"{[str(d) for d in onnx_dirs]} (matched by onnx_sha256); pass --onnx-dir")
    return rows
