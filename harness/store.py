"""The results store: one embedded SQLite file (default ``results/hilprune.db``).

DESIGN.md §6. Every candidate of every run and every measurement is kept,
with its raw per-repeat latencies, so statistics can be recomputed and nothing
measured is ever lost. The schema is versioned (``meta.schema_version``); WAL
journal mode and a busy timeout let several processes write concurrently.

Tables:
    runs          one row per search run (config, status, summary as JSON)
    measurements  one row per latency measurement (raw values, statistics,
                  device state, source ``measured`` or ``simulated``)
    candidates    one row per (run, episode, step): spec, top-1, MACs,
                  params, latency p50, reward terms, error if any
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["ResultsStore", "SCHEMA_VERSION", "StoreError"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL,              -- running | finished | failed | interrupted
    model TEXT NOT NULL,
    dataset TEXT NOT NULL,
    device TEXT NOT NULL,
    target TEXT NOT NULL,
    seed INTEGER NOT NULL,
    config_json TEXT NOT NULL,
    summary_json TEXT
);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    model TEXT NOT NULL,
    arch_signature TEXT NOT NULL,
    device TEXT NOT NULL,
    target TEXT NOT NULL,
    backend TEXT NOT NULL,
    tuning_key TEXT NOT NULL,          -- e.g. "trials=8" or "untuned": latencies of different tuning never mix
    source TEXT NOT NULL CHECK (source IN ('measured', 'simulated')),
    artifact_sha256 TEXT,
    onnx_sha256 TEXT,
    latency_p50_ms REAL NOT NULL,
    latency_p90_ms REAL,
    latency_mean_ms REAL,
    latency_std_ms REAL,
    latency_min_ms REAL,
    latency_max_ms REAL,
    latency_cov REAL,
    n INTEGER,
    unstable INTEGER,
    latency_raw_ms TEXT NOT NULL,      -- JSON list, per-repeat ms
    warmup_ms TEXT,                    -- JSON list, discarded warm-ups
    metadata_json TEXT                 -- device state before/after, daemon hello, tuning
);
CREATE INDEX IF NOT EXISTS measurements_key
    ON measurements (model, arch_signature, device, target, backend, tuning_key);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    episode INTEGER NOT NULL,
    step INTEGER NOT NULL,
    action INTEGER,
    arch_signature TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    top1 REAL,
    macs INTEGER,
    params INTEGER,
    latency_p50_ms REAL,
    latency_raw_ms TEXT,
    measurement_id INTEGER REFERENCES measurements(id),
    device TEXT NOT NULL,
    target TEXT NOT NULL,
    source TEXT NOT NULL,
    reward REAL NOT NULL,
    delta_p REAL,
    delta_c REAL,
    delta_h REAL,
    latency_cache_hit INTEGER NOT NULL DEFAULT 0,
    error_kind TEXT,
    error_message TEXT,
    created_at REAL NOT NULL,
    UNIQUE (run_id, episode, step)
);
"""


class StoreError(RuntimeError):
    """The store file is unusable (newer schema, not a SQLite file)."""


class ResultsStore:
    """Thread-safe access to the results database.

    Args:
        path: the SQLite file; parent folders are created.

    Raises:
        StoreError: the file is not a hilprune store or has a newer schema.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.execute("PRAGMA foreign_keys=ON")
            with self._tx() as c:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if row is None:
                    c.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif int(row[0]) > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path}: schema version {row[0]} is newer than this hilprune's {SCHEMA_VERSION}; "
                        "upgrade hilprune or pass another --db"
                    )
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a usable results store ({exc}); pass another --db") from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()

    # -- runs -----------------------------------------------------------------
    def create_run(self, run_id: str, *, model: str, dataset: str, device: str, target: str, seed: int, config: dict) -> None:
        """Insert a run row with status ``running``.

        Raises:
            StoreError: the run id exists already.
        """
        try:
            with self._tx() as c:
                c.execute(
                    "INSERT INTO runs (run_id, created_at, status, model, dataset, device, target, seed, config_json) "
                    "VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                    (run_id, time.time(), model, dataset, device, target, seed, json.dumps(config, sort_keys=True)),
                )
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"run {run_id!r} exists already in {self.path}") from exc

    def finish_run(self, run_id: str, status: str, summary: dict | None = None) -> None:
        """Set a run's final status (``finished``, ``failed``, ``interrupted``) and summary."""
        with self._tx() as c:
            c.execute(
                "UPDATE runs SET status=?, finished_at=?, summary_json=? WHERE run_id=?",
                (status, time.time(), json.dumps(summary, sort_keys=True) if summary is not None else None, run_id),
            )

    def get_run(self, run_id: str) -> dict | None:
        """The run row as a dict (config and summary parsed), or None."""
        with self._lock:
            row = self._conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["config"] = json.loads(out.pop("config_json"))
        summary_json = out.pop("summary_json")
        out["summary"] = json.loads(summary_json) if summary_json else None
        return out

    # -- measurements ---------------------------------------------------------
    def add_measurement(
        self,
        *,
        model: str,
        arch_signature: str,
        device: str,
        target: str,
        backend: str,
        tuning_key: str,
        source: str,
        stats: dict[str, Any],
        latency_raw_ms: list[float],
        warmup_ms: list[float] | None = None,
        artifact_sha256: str | None = None,
        onnx_sha256: str | None = None,
        metadata: dict | None = None,
    ) -> int:
        """Store one measurement; returns its id.

        Args:
            stats: keys p50, p90, mean, std, min, max, cov, n, unstable (ms where a latency).
            latency_raw_ms: raw per-repeat latencies, ms.
            source: ``measured`` or ``simulated`` (never mixed in history).
        """
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO measurements (created_at, model, arch_signature, device, target, backend, tuning_key, source, "
                "artifact_sha256, onnx_sha256, latency_p50_ms, latency_p90_ms, latency_mean_ms, latency_std_ms, "
                "latency_min_ms, latency_max_ms, latency_cov, n, unstable, latency_raw_ms, warmup_ms, metadata_json) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    time.time(), model, arch_signature, device, target, backend, tuning_key, source,
                    artifact_sha256, onnx_sha256, stats["p50"], stats.get("p90"), stats.get("mean"), stats.get("std"),
                    stats.get("min"), stats.get("max"), stats.get("cov"), stats.get("n"), int(bool(stats.get("unstable"))),
                    json.dumps(list(latency_raw_ms)), json.dumps(list(warmup_ms or [])),
                    json.dumps(metadata or {}, sort_keys=True, default=str),
                ),
            )
            return int(cur.lastrowid)

    def find_measurement(
        self, *, model: str, arch_signature: str, device: str, target: str, backend: str, tuning_key: str
    ) -> dict | None:
        """The newest stable measurement for this (architecture, device, target, backend, tuning), or None.

        This is the latency cache of DESIGN.md §6: a revisited architecture is
        never exported, compiled or measured again.
        """
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM measurements WHERE model=? AND arch_signature=? AND device=? AND target=? "
                "AND backend=? AND tuning_key=? AND unstable=0 ORDER BY id DESC LIMIT 1",
                (model, arch_signature, device, target, backend, tuning_key),
            ).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["latency_raw_ms"] = json.loads(out["latency_raw_ms"])
        return out

    # -- candidates -----------------------------------------------------------
    def add_candidate(self, run_id: str, row: dict[str, Any]) -> int:
        """Store one candidate row of a run; returns its id.

        Args:
            row: column values of ``candidates`` (episode, step, arch_signature,
                spec_json, reward, device, target, source required).
        """
        cols = ["run_id", "created_at", *row.keys()]
        vals = [run_id, time.time(), *row.values()]
        with self._tx() as c:
            cur = c.execute(
                f"INSERT INTO candidates ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", vals
            )
            return int(cur.lastrowid)

    def delete_candidates_after(self, run_id: str, episode: int, step: int) -> int:
        """Remove a run's candidate rows after (episode, step): rows a killed run wrote
        after its last checkpoint, which ``--resume`` will produce again. Returns the count."""
        with self._tx() as c:
            cur = c.execute(
                "DELETE FROM candidates WHERE run_id=? AND (episode > ? OR (episode = ? AND step > ?))",
                (run_id, episode, episode, step),
            )
            return cur.rowcount

    def set_run_status(self, run_id: str, status: str) -> None:
        """Set a run's status without touching its summary (e.g. back to ``running`` on resume)."""
        with self._tx() as c:
            c.execute("UPDATE runs SET status=? WHERE run_id=?", (status, run_id))

    def candidates(self, run_id: str) -> list[dict]:
        """All candidate rows of a run, in (episode, step) order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM candidates WHERE run_id=? ORDER BY episode, step", (run_id,)
            ).fetchall()
        return [dict(r) for r in rows]
