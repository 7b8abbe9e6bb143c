"""The results store: one embedded SQLite file (default ``results/hilprune.db``).

DESIGN.md §6. Every candidate of every run and every measurement is kept,
with its raw per-repeat latencies, so statistics can be recomputed and nothing
measured is ever lost. The schema is versioned (``meta.schema_version``); WAL
journal mode and a busy timeout let several processes write concurrently.

Tables:
    runs          one row per search run (config, status, summary as JSON)
    measurements  one row per latency measurement (raw values, statistics,
                  device state, source ``measured`` or ``simulated``)
    latency_ratios one row per interleaved ratio candidate / reference measured
                  in one session (schema 4): median, bootstrap interval, pairs,
                  the two absolute p50s; the search's ΔH and its latency cache
    candidates    one row per (run, episode, step): spec, top-1, MACs,
                  params, latency p50, reward terms, error if any; source
                  ``measured``/``simulated``/``predicted``
    table_pairs   one row per measured interleaved ratio with the latency
                  table's sums of candidate and reference (schema 6): what the
                  table's offset is fitted on
    bench_runs    one row per nightly suite run (schema 2): suite, status,
                  metadata (git commit, hilprune/TVM/Python versions,
                  device hello and state), summary
    bench_results one row per (bench run, benchmark, target, device): status
                  ``ok`` (with its measurement) or ``failed`` (kind, reason);
                  in a suite with a reference model, the ratio to it
                  measured interleaved in the same run (schema 4 columns
                  :data:`BENCH_RATIO_COLUMNS`)

Schema history: 1 = runs, measurements, candidates; 2 = + bench_runs,
bench_results (a version-1 file is migrated in place when opened: the new
tables are created, nothing else changes); 3 = + cache_windows; 4 =
``measurements.device_identity`` (who measured: source, board, machine facts
or simulator profile and version; :mod:`devices.identity`) and source
``emulated`` allowed (qemu timings: stored, never a latency). Rows of older
files keep a NULL identity, so the latency cache never serves them; 5 = runs and
bench_runs record their owner (``owner_host``, ``owner_pid``,
``owner_start``: the process's start time, so a reused pid is not taken for
the owner). On open, a ``running`` row of this host whose owner is gone is
marked ``interrupted`` (a controller killed with -9 never says so itself); 6 = ``table_pairs`` (issue 13:
the board's latency table is fitted on them, per device identity, target and
model family; :class:`harness.compile.table.LatencyTable`) and two columns of
``candidates``: ``latency_ratio_predicted`` (the table's ratio, beside a
measured one too) and ``latency_measure_reason`` (why a ``hybrid`` search
measured the candidate). A predicted latency is never a ``measurements`` row.

Opening checks the file first and writes nothing to a bad one: a directory,
a non-SQLite file, an SQLite file that is not a store (no ``meta`` table),
and a corrupted one (``PRAGMA quick_check``) are each a one-line
:class:`StoreError` naming the file.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["CANDIDATE_TABLE_COLUMNS", "ResultsStore", "SCHEMA_VERSION", "StoreError", "check_store_file",
           "open_readonly"]

SCHEMA_VERSION = 6

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_windows (  -- schema 3: where the latency cache of a key starts
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    model TEXT NOT NULL,
    device TEXT NOT NULL,
    target TEXT NOT NULL,
    backend TEXT NOT NULL,
    tuning_key TEXT NOT NULL,
    min_id INTEGER NOT NULL,            -- schema 3 only: no longer read since schema 4 (identities)
    reason TEXT
);
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
    source TEXT NOT NULL CHECK (source IN ('measured', 'simulated', 'emulated', 'predicted')),
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
    metadata_json TEXT,                -- device state before/after, daemon hello, tuning
    device_identity TEXT               -- schema 4: devices.identity.identity_of(hello), NULL before
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
    latency_ratio REAL,                -- schema 4: median interleaved ratio against the unpruned model
    latency_ratio_ci_low REAL,
    latency_ratio_ci_high REAL,
    ratio_id INTEGER REFERENCES latency_ratios(id),
    latency_ratio_predicted REAL,      -- schema 6: the latency table's ratio (NULL: no table in the run)
    latency_measure_reason TEXT,       -- schema 6: why a hybrid search measured it (front, top_k, missing_tasks, cache)
    UNIQUE (run_id, episode, step)
);
CREATE TABLE IF NOT EXISTS latency_ratios (  -- schema 4: a candidate timed interleaved with its reference
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    model TEXT NOT NULL,
    arch_signature TEXT NOT NULL,
    reference_signature TEXT NOT NULL,
    reference_sha256 TEXT NOT NULL,    -- the reference artifact (library, or ONNX file when graph-only)
    device TEXT NOT NULL,
    target TEXT NOT NULL,
    backend TEXT NOT NULL,
    tuning_key TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('measured', 'simulated', 'emulated', 'predicted')),
    device_identity TEXT NOT NULL,
    ratio REAL NOT NULL,               -- median of the per-cycle ratios candidate / reference
    ci_low REAL NOT NULL,
    ci_high REAL NOT NULL,
    confidence REAL NOT NULL,
    pairs INTEGER NOT NULL,
    stop_reason TEXT NOT NULL,
    latency_p50_ms REAL,               -- the candidate's absolute p50 in the session, ms
    reference_p50_ms REAL,             -- the reference's, same session, ms
    measurement_id INTEGER REFERENCES measurements(id),            -- the candidate's absolute values
    reference_measurement_id INTEGER REFERENCES measurements(id),  -- the reference's, same session
    round_ratios TEXT NOT NULL,        -- JSON list, per round
    metadata_json TEXT
);
CREATE INDEX IF NOT EXISTS latency_ratios_key
    ON latency_ratios (model, arch_signature, reference_sha256, device, target, backend, tuning_key);
CREATE TABLE IF NOT EXISTS bench_runs (
    run_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL,              -- running | finished | interrupted
    suite_name TEXT NOT NULL,
    suite_path TEXT NOT NULL,
    suite_sha256 TEXT,
    metadata_json TEXT NOT NULL,       -- git commit, versions, devices' hello and state
    summary_json TEXT
);
CREATE TABLE IF NOT EXISTS bench_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES bench_runs(run_id),
    created_at REAL NOT NULL,
    benchmark TEXT NOT NULL,
    device TEXT NOT NULL,
    target TEXT NOT NULL,
    backend TEXT NOT NULL,
    tuning_key TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('measured', 'simulated')),
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error_kind TEXT,
    error_message TEXT,
    measurement_id INTEGER REFERENCES measurements(id),
    reference_benchmark TEXT,          -- schema 4: the suite's reference benchmark (NULL: the suite has none)
    ratio_id INTEGER REFERENCES latency_ratios(id),  -- this benchmark timed interleaved with the reference
    latency_ratio REAL,                -- its median ratio benchmark / reference (dimensionless)
    latency_ratio_ci_low REAL,         -- bootstrap interval of that median (latency_ratios.confidence)
    latency_ratio_ci_high REAL,
    ratio_error TEXT,                  -- "<kind>: <reason>" when an ok result got no ratio
    CHECK ((status = 'ok') = (measurement_id IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS bench_results_key
    ON bench_results (benchmark, device, target, backend, tuning_key, source);
CREATE TABLE IF NOT EXISTS table_pairs (  -- schema 6: the latency table's fit data (issue 13)
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    device_identity TEXT NOT NULL,     -- devices.identity.identity_of: the board (and machine) that measured
    target TEXT NOT NULL,              -- the tuning database's target (TargetSpec.canonical_json())
    family TEXT NOT NULL,              -- model family, e.g. "resnet20@1x1x28x28": one fit per family
    arch_signature TEXT NOT NULL,
    tasks_ms REAL NOT NULL,            -- the table's sum for the candidate, ms
    reference_signature TEXT NOT NULL,
    reference_tasks_ms REAL NOT NULL,  -- the table's sum for the reference it was timed against, ms
    ratio REAL NOT NULL,               -- measured interleaved median ratio candidate / reference
    latency_p50_ms REAL,               -- the candidate's absolute p50 in that session, ms
    reference_p50_ms REAL,             -- the reference's, same session, ms
    measurement_id INTEGER REFERENCES measurements(id),
    ratio_id INTEGER REFERENCES latency_ratios(id),
    run_id TEXT,
    metadata_json TEXT
);
CREATE INDEX IF NOT EXISTS table_pairs_key ON table_pairs (device_identity, target, family);
"""

#: Columns of ``candidates`` added in schema 6 (issue 13, search modes).
CANDIDATE_TABLE_COLUMNS = {"latency_ratio_predicted": "REAL", "latency_measure_reason": "TEXT"}


def _migrate_measurements_to_4(c: sqlite3.Connection) -> None:
    """Schema 3 -> 4: rebuild ``measurements`` with ``device_identity`` and the wider source CHECK.

    SQLite cannot alter a CHECK constraint: the table is rebuilt in the open
    transaction, the documented way (sqlite.org/lang_altertable.html, "making
    other kinds of table schema changes"): new table, copy, drop, rename. The
    connection turns foreign keys on only after this (``ResultsStore.__init__``), so
    the drop leaves ``candidates``' references as they are; the ids do not change.
    """
    cols = [r[1] for r in c.execute("PRAGMA table_info(measurements)").fetchall()]
    if "device_identity" in cols:
        return
    create = _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS measurements"):]
    create = create[:create.index(");") + 2].replace("IF NOT EXISTS measurements", "measurements_v4")
    c.execute(create)
    names = ", ".join(cols)
    c.execute(f"INSERT INTO measurements_v4 ({names}) SELECT {names} FROM measurements")
    c.execute("DROP TABLE measurements")
    c.execute("ALTER TABLE measurements_v4 RENAME TO measurements")
    c.execute("CREATE INDEX IF NOT EXISTS measurements_key "
              "ON measurements (model, arch_signature, device, target, backend, tuning_key)")


def _add_columns(c: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """``ALTER TABLE ADD COLUMN`` for each of ``columns`` (name -> type) the table lacks."""
    have = {r[1] for r in c.execute(f"PRAGMA table_info({table})").fetchall()}
    for name, kind in columns.items():
        if name not in have:
            c.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


#: Columns of ``bench_results`` for the ratio to the suite's reference model (issue 12; schema 4, unreleased when
#: they came: added in place to any file that lacks them, like ``candidates``' ratio columns).
BENCH_RATIO_COLUMNS = {"reference_benchmark": "TEXT", "ratio_id": "INTEGER REFERENCES latency_ratios(id)",
                       "latency_ratio": "REAL", "latency_ratio_ci_low": "REAL", "latency_ratio_ci_high": "REAL",
                       "ratio_error": "TEXT"}


class StoreError(RuntimeError):
    """The store file is unusable (newer schema, not a SQLite file, corrupted, a directory)."""


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _check_file(path: Path) -> None:
    """Refuse, before SQLite touches it, a path that is a directory or a non-empty non-SQLite file.

    Raises:
        StoreError: one line naming the file and the fix.
    """
    if path.is_dir():
        raise StoreError(f"results database {path} is a directory; pass a file path to --db "
                         f"(e.g. {path / 'hilprune.db'})")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"results database {path} cannot be read ({exc.strerror}); pass another --db") from None
    if head and head != _SQLITE_MAGIC:
        raise StoreError(f"results database {path} is not an SQLite file; nothing was written to it: "
                         f"pass another --db")


def check_store_file(path: Path | str, *, must_exist: bool = True) -> None:
    """Refuse a results database path before anything opens it: missing (when ``must_exist``),
    a directory, not an SQLite file.

    Raises:
        StoreError: one line naming the file and the fix.
    """
    path = Path(path)
    _check_file(path)
    if must_exist and not path.is_file():
        raise StoreError(f"results database {path} not found; pass the --db of your runs")


def open_readonly(path: Path | str) -> sqlite3.Connection:
    """A read-only connection to an existing store, checked (``PRAGMA quick_check``) first.

    For readers that must not import the rest of the harness (``sim calibrate``).

    Raises:
        StoreError: missing, a directory, not SQLite, or corrupted (one line naming the file).
    """
    path = Path(path)
    check_store_file(path)
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        bad = [r[0] for r in con.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        con.close()
        raise StoreError(f"results database {path} is corrupted or not a results store "
                         f"({' '.join(str(exc).split())}); restore it from a backup or pass another --db") from None
    if bad != ["ok"]:
        con.close()
        raise StoreError(f"results database {path} is corrupted (PRAGMA quick_check: "
                         f"{' / '.join(' '.join(str(b).split()) for b in bad[:2])[:300]}); restore it from a "
                         f"backup or pass another --db")
    return con


def _start_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - psutil missing or the process gone
        return None


def _alive(pid: int | None, start: float | None) -> bool:
    """The process ``pid`` exists and (when ``start`` is known) started at ``start`` (not a reused pid)."""
    if pid is None:
        return True  # a row from before owners were recorded: cannot tell, keep it running
    now_start = _start_time(pid)
    if now_start is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return start is None
    return start is None or abs(now_start - start) < 1.0


class ResultsStore:
    """Thread-safe access to the results database.

    Args:
        path: the SQLite file; parent folders are created.

    Raises:
        StoreError: the file is not a hilprune store or has a newer schema.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        _check_file(self.path)  # before sqlite3 writes anything into a file that is not ours
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = None
        try:
            self._conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA busy_timeout=30000")
            bad = [r[0] for r in self._conn.execute("PRAGMA quick_check").fetchall()]
            if bad != ["ok"]:
                raise StoreError(f"results database {self.path} is corrupted (PRAGMA quick_check: "
                                 f"{' / '.join(' '.join(str(b).split()) for b in bad[:2])[:300]}); nothing was written to it: restore it from a "
                                 f"backup or pass another --db")
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "meta" not in tables:
                raise StoreError(f"{self.path} is an SQLite database but not a hilprune results store (tables: "
                                 f"{', '.join(sorted(tables)[:4])}); pass another --db")
            self._conn.execute("PRAGMA journal_mode=WAL")
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
                elif int(row[0]) < SCHEMA_VERSION:  # the CREATE IF NOT EXISTS above adds new tables
                    if int(row[0]) < 4:
                        _migrate_measurements_to_4(c)
                        _add_columns(c, "candidates", {"latency_ratio": "REAL", "latency_ratio_ci_low": "REAL",
                                                       "latency_ratio_ci_high": "REAL",
                                                       "ratio_id": "INTEGER REFERENCES latency_ratios(id)"})
                    c.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
                # schema 4 was not released when the bench ratio columns came: files of any version up to 4
                # (from v2, when bench_results came, to early v4 files) get them; idempotent
                _add_columns(c, "bench_results", BENCH_RATIO_COLUMNS)
                for table in ("runs", "bench_runs"):  # schema 5: who runs it (host, pid, process start)
                    _add_columns(c, table, {"owner_host": "TEXT", "owner_pid": "INTEGER", "owner_start": "REAL"})
                _add_columns(c, "candidates", CANDIDATE_TABLE_COLUMNS)  # schema 6 (table_pairs: CREATE above)
            self._conn.execute("PRAGMA foreign_keys=ON")  # after a migration's table rebuild
            self.reap_interrupted()
        except StoreError:
            if self._conn is not None:
                self._conn.close()
            raise
        except (sqlite3.DatabaseError, ValueError) as exc:
            if self._conn is not None:
                self._conn.close()
            raise StoreError(f"results database {self.path} is corrupted or not a results store "
                             f"({' '.join(str(exc).split())}); nothing "
                             f"was written to it: restore it from a backup or pass another --db") from None

    # -- owners of running rows: a run whose process is gone is interrupted ----
    def reap_interrupted(self) -> list[str]:
        """Mark ``interrupted`` every ``running`` run and bench run whose owner process, on this
        host, is gone (pid absent, or reused by a process that started later). Rows owned by
        another host are left alone (their pid means nothing here). Returns the run ids marked.
        """
        host = socket.gethostname()
        marked = []
        with self._lock:
            rows = [(t, r[0], r[1], r[2]) for t in ("runs", "bench_runs") for r in self._conn.execute(
                f"SELECT run_id, owner_pid, owner_start FROM {t} WHERE status='running' AND owner_host=?", (host,))]
        for table, run_id, pid, start in rows:
            if not _alive(pid, start):
                with self._tx() as c:
                    c.execute(f"UPDATE {table} SET status='interrupted', finished_at=COALESCE(finished_at, ?) "
                              f"WHERE run_id=? AND status='running' AND owner_pid=?", (time.time(), run_id, pid))
                marked.append(run_id)
        return marked

    def _claim(self, c: sqlite3.Connection, table: str, run_id: str) -> None:
        c.execute(f"UPDATE {table} SET owner_host=?, owner_pid=?, owner_start=? WHERE run_id=?",
                  (socket.gethostname(), os.getpid(), _start_time(os.getpid()), run_id))

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
            if self._conn is not None:
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
                self._claim(c, "runs", run_id)
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
        device_identity: str | None = None,
    ) -> int:
        """Store one measurement; returns its id.

        Args:
            stats: keys p50, p90, mean, std, min, max, cov, n, unstable (ms where a latency).
            latency_raw_ms: raw per-repeat latencies, ms.
            source: ``measured``, ``simulated``, ``predicted`` or ``emulated`` (never mixed in history;
                ``emulated`` is never a latency).
            device_identity: who measured (:func:`devices.identity.identity_of`); the latency
                cache serves a row only to the same identity (None: never served).
        """
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO measurements (created_at, model, arch_signature, device, target, backend, tuning_key, source, "
                "artifact_sha256, onnx_sha256, latency_p50_ms, latency_p90_ms, latency_mean_ms, latency_std_ms, "
                "latency_min_ms, latency_max_ms, latency_cov, n, unstable, latency_raw_ms, warmup_ms, metadata_json, "
                "device_identity) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    time.time(), model, arch_signature, device, target, backend, tuning_key, source,
                    artifact_sha256, onnx_sha256, stats["p50"], stats.get("p90"), stats.get("mean"), stats.get("std"),
                    stats.get("min"), stats.get("max"), stats.get("cov"), stats.get("n"), int(bool(stats.get("unstable"))),
                    json.dumps(list(latency_raw_ms)), json.dumps(list(warmup_ms or [])),
                    json.dumps(metadata or {}, sort_keys=True, default=str), device_identity,
                ),
            )
            return int(cur.lastrowid)

    def add_device_measurement(self, m: Any, *, model: str, arch_signature: str, target: str, tuning_key: str,
                               device: str | None = None, backend: str | None = None,
                               artifact_sha256: str | None = None, onnx_sha256: str | None = None,
                               metadata: dict | None = None) -> int:
        """Store a device's :class:`devices.base.Measurement` ``m``; returns its id.

        Statistics, raw and warm-up latencies, source, device and backend come
        from ``m`` (``device``/``backend`` override them, e.g. a farm's name);
        the metadata always holds the device state before/after, the daemon's
        hello, ``m.tuning``, ``remeasured``, ``number`` and ``output_sha256``,
        updated with ``metadata`` (which wins, e.g. the manifest's tuning). The
        row's ``device_identity`` is read from ``m.hello``
        (:func:`devices.identity.identity_of`).
        """
        from devices.identity import identity_of

        st = m.stats
        meta = {"device_state_before": m.device_state_before, "device_state_after": m.device_state_after,
                "hello": m.hello, "tuning": m.tuning, "remeasured": m.remeasured, "number": m.number,
                "output_sha256": m.output_sha256, **(metadata or {})}
        return self.add_measurement(
            model=model, arch_signature=arch_signature, device=device or m.device, target=target,
            backend=backend or m.backend, tuning_key=tuning_key, source=m.source,
            stats=dict(p50=st.p50_ms, p90=st.p90_ms, mean=st.mean_ms, std=st.std_ms, min=st.min_ms, max=st.max_ms,
                       cov=st.cov, n=st.n, unstable=st.unstable),
            latency_raw_ms=list(m.latency_ms), warmup_ms=list(m.warmup_ms),
            artifact_sha256=artifact_sha256, onnx_sha256=onnx_sha256, metadata=meta,
            device_identity=identity_of(m.hello or {}, default_name=m.device))

    def find_measurement(
        self, *, model: str, arch_signature: str, device: str, target: str, backend: str, tuning_key: str,
        identity: str,
    ) -> dict | None:
        """The first measurement of this (architecture, device, target, backend, tuning), or None.

        This is the latency cache of DESIGN.md §6: a revisited architecture is
        never exported, compiled or measured again. The *first* measurement is
        the cached value, whatever came later (fresh final measurements,
        benchmarks): a later search, and a resumed run, see exactly the
        latencies the earlier steps saw, so they make the same choices. A
        result flagged unstable (after the device's own re-measurements) is
        still the value the search used; its flag stays in the row.

        ``identity``: only rows measured by this identity
        (:func:`devices.identity.identity_of`: source, board and machine facts,
        or simulator profile and version) are served; a simulated row never
        answers a measured run, nor one board's row another board, and rows
        stored before identities were recorded (NULL) are never served.
        """
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM measurements WHERE model=? AND arch_signature=? AND device=? AND target=? "
                "AND backend=? AND tuning_key=? AND device_identity=? ORDER BY id ASC LIMIT 1",
                (model, arch_signature, device, target, backend, tuning_key, identity),
            ).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["latency_raw_ms"] = json.loads(out["latency_raw_ms"])
        return out

    # -- latency ratios (schema 4) ----------------------------------------------
    def add_ratio(self, *, model: str, arch_signature: str, reference_signature: str, reference_sha256: str,
                  device: str, target: str, backend: str, tuning_key: str, source: str, device_identity: str,
                  ratio: float, ci_low: float, ci_high: float, confidence: float, pairs: int, stop_reason: str,
                  round_ratios: list[float], latency_p50_ms: float | None = None,
                  reference_p50_ms: float | None = None, measurement_id: int | None = None,
                  reference_measurement_id: int | None = None, metadata: dict | None = None) -> int:
        """Store one interleaved ratio (candidate / reference, same session); returns its id.

        Args:
            ratio, ci_low, ci_high: median ratio and its bootstrap interval (``confidence``).
            pairs: interleaved pairs measured; stop_reason: ``converged`` / ``max_pairs`` / ``simulated``.
            round_ratios: the raw per-round ratios, in order.
            latency_p50_ms, reference_p50_ms: the two absolute p50s of the session, ms.
            measurement_id, reference_measurement_id: the two artifacts' absolute values of the session.
        """
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO latency_ratios (created_at, model, arch_signature, reference_signature, reference_sha256, "
                "device, target, backend, tuning_key, source, device_identity, ratio, ci_low, ci_high, confidence, "
                "pairs, stop_reason, latency_p50_ms, reference_p50_ms, measurement_id, reference_measurement_id, "
                "round_ratios, metadata_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (time.time(), model, arch_signature, reference_signature, reference_sha256, device, target, backend,
                 tuning_key, source, device_identity, ratio, ci_low, ci_high, confidence, pairs, stop_reason,
                 latency_p50_ms, reference_p50_ms, measurement_id, reference_measurement_id,
                 json.dumps(list(round_ratios)),
                 json.dumps(metadata or {}, sort_keys=True, default=str)))
            return int(cur.lastrowid)

    def find_ratio(self, *, model: str, arch_signature: str, reference_sha256: str, device: str, target: str,
                   backend: str, tuning_key: str, identity: str) -> dict | None:
        """The latency cache of ratios: the first ratio of this architecture against *this* reference
        artifact, by this identity (source, board, machine / simulator profile and version), or None.

        A ratio is only meaningful against the reference it was measured with: another reference
        build (other tuning, compiler, weights) or another device never reuses it.
        """
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM latency_ratios WHERE model=? AND arch_signature=? AND reference_sha256=? AND device=? "
                "AND target=? AND backend=? AND tuning_key=? AND device_identity=? ORDER BY id ASC LIMIT 1",
                (model, arch_signature, reference_sha256, device, target, backend, tuning_key, identity)).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["round_ratios"] = json.loads(out["round_ratios"])
        return out

    def measurement(self, measurement_id: int) -> dict | None:
        """One ``measurements`` row (``latency_raw_ms`` parsed), or None."""
        with self._lock:
            row = self._conn.execute("SELECT * FROM measurements WHERE id=?", (measurement_id,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["latency_raw_ms"] = json.loads(out["latency_raw_ms"])
        return out

    # -- the latency table's pairs (schema 6) -----------------------------------
    def add_table_pair(self, *, device_identity: str, target: str, family: str, arch_signature: str,
                       tasks_ms: float, reference_signature: str, reference_tasks_ms: float, ratio: float,
                       latency_p50_ms: float | None = None, reference_p50_ms: float | None = None,
                       measurement_id: int | None = None, ratio_id: int | None = None, run_id: str | None = None,
                       metadata: dict | None = None) -> int:
        """Store one (table sums, measured interleaved ratio) pair of a board; returns its id.

        Args:
            device_identity: who measured the ratio (:func:`devices.identity.identity_of`).
            target: the tuning database's target (canonical JSON).
            family: the model family the fit is for (e.g. ``resnet20@1x1x28x28``).
            tasks_ms, reference_tasks_ms: the table's Σ weight × recorded time of candidate and reference, ms.
            ratio: the measured median ratio candidate / reference, timed interleaved in one session.
            latency_p50_ms, reference_p50_ms: the two absolute p50s of that session, ms.
            measurement_id, ratio_id: the session's rows in ``measurements`` and ``latency_ratios``.
        """
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO table_pairs (created_at, device_identity, target, family, arch_signature, tasks_ms, "
                "reference_signature, reference_tasks_ms, ratio, latency_p50_ms, reference_p50_ms, measurement_id, "
                "ratio_id, run_id, metadata_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (time.time(), device_identity, target, family, arch_signature, float(tasks_ms), reference_signature,
                 float(reference_tasks_ms), float(ratio), latency_p50_ms, reference_p50_ms, measurement_id, ratio_id,
                 run_id, json.dumps(metadata or {}, sort_keys=True, default=str)))
            return int(cur.lastrowid)

    def table_pairs(self, *, device_identity: str, target: str, family: str) -> list[dict]:
        """Every stored pair of one (board identity, target, family), oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM table_pairs WHERE device_identity=? AND target=? AND family=? ORDER BY id",
                (device_identity, target, family)).fetchall()
        return [dict(r) for r in rows]

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

    def update_candidate_latency(self, run_id: str, episode: int, step: int, result: Any, terms: Any = None) -> None:
        """Rewrite one candidate row's latency, source, measurement and (with ``terms``) ΔH and reward.

        For a search that switched to the simulator as a whole: its earlier rows are re-predicted so the
        run never holds measured and simulated latencies together (DESIGN.md §5).

        Args:
            result: a ``CandidateResult`` (``latency_p50_ms``, ``latency_raw_ms``, ``measurement_id``, ``source``,
                ``latency_cache_hit``; a failed one sets its error).
            terms: its ``RewardTerms`` against the new reference (None: reward terms unchanged).
        """
        values = {"latency_p50_ms": result.latency_p50_ms, "latency_raw_ms": json.dumps(list(result.latency_raw_ms)),
                  "measurement_id": result.measurement_id, "source": result.source,
                  "latency_ratio": result.latency_ratio, "latency_ratio_ci_low": result.ratio_ci[0],
                  "latency_ratio_ci_high": result.ratio_ci[1], "ratio_id": result.ratio_id,
                  "latency_cache_hit": int(bool(result.latency_cache_hit)), "error_kind": result.error_kind,
                  "error_message": result.error_message}
        if terms is not None:
            values.update(reward=terms.reward, delta_p=terms.delta_p, delta_c=terms.delta_c, delta_h=terms.delta_h)
        with self._tx() as c:
            c.execute(f"UPDATE candidates SET {', '.join(f'{k}=?' for k in values)} "
                      "WHERE run_id=? AND episode=? AND step=?", (*values.values(), run_id, episode, step))

    def set_run_status(self, run_id: str, status: str) -> None:
        """Set a run's status without touching its summary (e.g. back to ``running`` on resume,
        which makes this process the run's owner)."""
        with self._tx() as c:
            c.execute("UPDATE runs SET status=? WHERE run_id=?", (status, run_id))
            if status == "running":
                self._claim(c, "runs", run_id)

    def candidates(self, run_id: str) -> list[dict]:
        """All candidate rows of a run, in (episode, step) order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM candidates WHERE run_id=? ORDER BY episode, step", (run_id,)
            ).fetchall()
        return [dict(r) for r in rows]

    # -- nightly benchmarks (since schema 2) ----------------------------------
    def create_bench_run(self, run_id: str, *, suite_name: str, suite_path: str, suite_sha256: str | None,
                         metadata: dict) -> None:
        """Insert a bench run with status ``running``.

        Raises:
            StoreError: the run id exists already.
        """
        try:
            with self._tx() as c:
                c.execute(
                    "INSERT INTO bench_runs (run_id, created_at, status, suite_name, suite_path, suite_sha256, "
                    "metadata_json) VALUES (?, ?, 'running', ?, ?, ?, ?)",
                    (run_id, time.time(), suite_name, suite_path, suite_sha256,
                     json.dumps(metadata, sort_keys=True, default=str)),
                )
                self._claim(c, "bench_runs", run_id)
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"bench run {run_id!r} exists already in {self.path}") from exc

    def finish_bench_run(self, run_id: str, status: str, *, metadata: dict | None = None,
                         summary: dict | None = None) -> None:
        """Set a bench run's final status (``finished`` / ``interrupted``), metadata (if given) and summary."""
        with self._tx() as c:
            if metadata is not None:
                c.execute("UPDATE bench_runs SET metadata_json=? WHERE run_id=?",
                          (json.dumps(metadata, sort_keys=True, default=str), run_id))
            c.execute("UPDATE bench_runs SET status=?, finished_at=?, summary_json=? WHERE run_id=?",
                      (status, time.time(), json.dumps(summary, sort_keys=True, default=str)
                       if summary is not None else None, run_id))

    def add_bench_result(self, run_id: str, *, benchmark: str, device: str, target: str, backend: str,
                         tuning_key: str, source: str, status: str, measurement_id: int | None = None,
                         error_kind: str | None = None, error_message: str | None = None,
                         reference_benchmark: str | None = None, ratio_id: int | None = None,
                         latency_ratio: float | None = None, ratio_ci: tuple[float, float] | None = None,
                         ratio_error: str | None = None) -> int:
        """Store one (benchmark, target, device) outcome of a bench run; returns its id.

        Args:
            status: ``ok`` (``measurement_id`` required) or ``failed`` (``error_kind`` and
                ``error_message`` say why; no measurement).
            source: ``measured`` or ``simulated`` (what the device is / produced).
            reference_benchmark: the suite's reference benchmark, None when the suite has none.
            ratio_id: the ``latency_ratios`` row of this benchmark timed interleaved with the reference
                (same run, target and device; ``latency_ratios.reference_p50_ms`` is the reference's p50
                of that session).
            latency_ratio: its median ratio benchmark / reference (dimensionless).
            ratio_ci: (low, high) bootstrap interval of that median.
            ratio_error: ``"<kind>: <reason>"`` when an ok result has a reference but got no ratio.
        """
        lo, hi = ratio_ci if ratio_ci is not None else (None, None)
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO bench_results (run_id, created_at, benchmark, device, target, backend, tuning_key, "
                "source, status, error_kind, error_message, measurement_id, reference_benchmark, ratio_id, "
                "latency_ratio, latency_ratio_ci_low, latency_ratio_ci_high, ratio_error) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, time.time(), benchmark, device, target, backend, tuning_key, source, status,
                 error_kind, error_message, measurement_id, reference_benchmark, ratio_id, latency_ratio, lo, hi,
                 ratio_error),
            )
            return int(cur.lastrowid)

    def bench_runs(self) -> list[dict]:
        """Every bench run, oldest first (metadata and summary parsed)."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM bench_runs ORDER BY created_at, rowid").fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["metadata"] = json.loads(d.pop("metadata_json") or "{}")
            s = d.pop("summary_json")
            d["summary"] = json.loads(s) if s else None
            out.append(d)
        return out

    def bench_results(self, run_id: str | None = None) -> list[dict]:
        """Bench results joined with their measurement's latency statistics, oldest run first.

        Each row: the ``bench_results`` columns, ``run_created_at``, ``run_status`` and
        ``latency_p50_ms``, ``latency_p90_ms``, ``latency_mean_ms``, ``latency_min_ms``,
        ``latency_cov``, ``n``, ``unstable``, ``onnx_sha256``, ``artifact_sha256`` (None when failed);
        with a ratio to the reference also ``ratio_confidence``, ``ratio_pairs``, and the two absolute
        p50s of the interleaved session, ``ratio_latency_p50_ms`` and ``ratio_reference_p50_ms`` (ms).
        """
        sql = ("SELECT r.*, b.created_at AS run_created_at, b.status AS run_status, m.latency_p50_ms, "
               "m.latency_p90_ms, m.latency_mean_ms, m.latency_min_ms, m.latency_cov, m.n, m.unstable, "
               "m.onnx_sha256, m.artifact_sha256, q.confidence AS ratio_confidence, q.pairs AS ratio_pairs, "
               "q.latency_p50_ms AS ratio_latency_p50_ms, q.reference_p50_ms AS ratio_reference_p50_ms "
               "FROM bench_results r JOIN bench_runs b ON b.run_id = r.run_id "
               "LEFT JOIN measurements m ON m.id = r.measurement_id LEFT JOIN latency_ratios q ON q.id = r.ratio_id")
        params: tuple = ()
        if run_id is not None:
            sql += " WHERE r.run_id = ?"
            params = (run_id,)
        sql += " ORDER BY b.created_at, b.rowid, r.id"
        with self._lock:
            return [dict(r) for r in self._conn.execute(sql, params).fetchall()]

    def query(self, sql: str, params: tuple = ()) -> list[dict]:
        """Read-only helper for reports and exports: rows of ``sql`` as dicts."""
        with self._lock:
            return [dict(r) for r in self._conn.execute(sql, params).fetchall()]
