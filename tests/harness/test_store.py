"""The SQLite results store: rows round-trip, the latency cache key, concurrent writers."""

import json
import multiprocessing as mp
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.store import SCHEMA_VERSION, ResultsStore, StoreError

STATS = dict(p50=1.5, p90=1.9, mean=1.6, std=0.1, min=1.4, max=2.0, cov=0.0625, n=3, unstable=False)
KEY = dict(model="resnet20", arch_signature="16-8", device="local", target="host", backend="tvm", tuning_key="trials=8")


ME = "measured|board=local@h|machine=x86_64|cpu=EPYC|cores=2"


def test_measurement_round_trip_and_cache_key(tmp_path):
    s = ResultsStore(tmp_path / "r.db")
    mid = s.add_measurement(**KEY, source="measured", stats=STATS, latency_raw_ms=[1.4, 1.5, 2.0], device_identity=ME)
    hit = s.find_measurement(**KEY, identity=ME)
    assert hit["id"] == mid and hit["latency_p50_ms"] == 1.5 and hit["latency_raw_ms"] == [1.4, 1.5, 2.0]
    # another tuning budget, device or architecture is a miss: latencies never mix
    for field, other in (("tuning_key", "untuned"), ("device", "ssh:pi"), ("arch_signature", "16-16")):
        assert s.find_measurement(**{**KEY, field: other}, identity=ME) is None
    # the first measurement stays the cached value; later ones are history (a resumed run sees the same numbers)
    s.add_measurement(**KEY, source="measured", stats={**STATS, "p50": 9.0}, latency_raw_ms=[9.0], device_identity=ME)
    assert s.find_measurement(**KEY, identity=ME)["latency_p50_ms"] == 1.5


def test_latency_cache_refuses_another_source_board_or_profile_version(tmp_path):
    from devices.identity import identity_of

    s = ResultsStore(tmp_path / "r.db")
    b1 = {"board": "pi-01", "machine": "aarch64", "cpu_part": "0xd08", "cpu_count": 4, "hostname": "pi"}
    sim = {"simulator": True, "profile": "rpi4", "profile_version": 3}
    s.add_measurement(**KEY, source="simulated", stats=STATS, latency_raw_ms=[1.5], device_identity=identity_of(sim))
    s.add_measurement(**KEY, source="measured", stats={**STATS, "p50": 2.5}, latency_raw_ms=[2.5],
                      device_identity=identity_of(b1))
    # a measured run on pi-01 gets pi-01's row, never the simulated one stored first
    assert s.find_measurement(**KEY, identity=identity_of(b1))["latency_p50_ms"] == 2.5
    assert s.find_measurement(**KEY, identity=identity_of(b1))["source"] == "measured"
    # another board of the same model, the same board with another CPU count, a newer profile: misses
    for other in ({**b1, "board": "pi-02"}, {**b1, "cpu_count": 2}):
        assert s.find_measurement(**KEY, identity=identity_of(other)) is None
    assert s.find_measurement(**KEY, identity=identity_of({**sim, "profile_version": 4})) is None
    assert s.find_measurement(**KEY, identity=identity_of(sim))["source"] == "simulated"


def test_schema_3_file_migrates_and_its_rows_are_history_not_cache(tmp_path):
    path = tmp_path / "old.db"
    s = ResultsStore(path)
    s.create_run("r1", model="m", dataset="d", device="local", target="host", seed=0, config={})
    mid = s.add_measurement(**KEY, source="measured", stats=STATS, latency_raw_ms=[1.5])
    s.add_candidate("r1", dict(episode=0, step=1, arch_signature="x", spec_json="[1]", reward=0.1, device="local",
                               target="host", source="measured", measurement_id=mid))
    s.close()
    c = sqlite3.connect(path)  # make it the schema-3 file an older hilprune wrote
    c.executescript("""
        PRAGMA foreign_keys=OFF;
        CREATE TABLE m3 AS SELECT id, created_at, model, arch_signature, device, target, backend, tuning_key,
            source, artifact_sha256, onnx_sha256, latency_p50_ms, latency_p90_ms, latency_mean_ms, latency_std_ms,
            latency_min_ms, latency_max_ms, latency_cov, n, unstable, latency_raw_ms, warmup_ms, metadata_json
            FROM measurements;
        DROP TABLE measurements; ALTER TABLE m3 RENAME TO measurements;
        UPDATE meta SET value='3' WHERE key='schema_version';""")
    c.commit(); c.close()
    s = ResultsStore(path)
    assert s.query("SELECT value FROM meta WHERE key='schema_version'")[0]["value"] == str(SCHEMA_VERSION)
    (row,) = s.query("SELECT id, latency_p50_ms, device_identity FROM measurements")
    assert row["id"] == mid and row["latency_p50_ms"] == 1.5 and row["device_identity"] is None  # kept, never served
    assert s.find_measurement(**KEY, identity=ME) is None
    assert s.candidates("r1")[0]["measurement_id"] == mid
    # emulated timings can be stored now (labelled, never a latency); the CHECK still refuses nonsense
    s.add_measurement(**KEY, source="emulated", stats=STATS, latency_raw_ms=[1.0], device_identity="emulated|x")
    with pytest.raises(sqlite3.IntegrityError):
        s.add_measurement(**KEY, source="guessed", stats=STATS, latency_raw_ms=[1.0])
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_runs_and_candidates(tmp_path):
    s = ResultsStore(tmp_path / "r.db")
    s.create_run("r1", model="resnet20", dataset="fashion-mnist", device="local", target="host", seed=0, config={"a": 1})
    with pytest.raises(StoreError, match="exists"):
        s.create_run("r1", model="m", dataset="d", device="local", target="host", seed=0, config={})
    for step in (2, 1):
        s.add_candidate("r1", dict(episode=0, step=step, arch_signature="x", spec_json="[1]", reward=0.1 * step,
                                   device="local", target="host", source="measured"))
    assert [c["step"] for c in s.candidates("r1")] == [1, 2]
    s.finish_run("r1", "finished", {"best": 1})
    run = s.get_run("r1")
    assert run["status"] == "finished" and run["summary"] == {"best": 1} and run["config"] == {"a": 1}


def _writer(path, k, n):
    s = ResultsStore(path)
    for i in range(n):
        s.add_measurement(**{**KEY, "arch_signature": f"p{k}-{i}"}, source="measured", stats=STATS, latency_raw_ms=[1.0])
    s.close()


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "r.db"
    ResultsStore(path).close()
    procs = [mp.get_context("spawn").Process(target=_writer, args=(path, k, 40)) for k in range(3)]
    for p in procs:
        p.start()
    s = ResultsStore(path)
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda i: s.add_measurement(**{**KEY, "arch_signature": f"t{i}"}, source="measured",
                                                stats=STATS, latency_raw_ms=[1.0]), range(40)))
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    n = sqlite3.connect(path).execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
    assert n == 3 * 40 + 40
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newer_schema_and_garbage_file_are_clear_errors(tmp_path):
    path = tmp_path / "r.db"
    ResultsStore(path).close()
    c = sqlite3.connect(path)
    c.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    c.commit(); c.close()
    with pytest.raises(StoreError, match="newer"):
        ResultsStore(path)
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="--db"):
        ResultsStore(bad)


def test_source_must_be_measured_or_simulated(tmp_path):
    s = ResultsStore(tmp_path / "r.db")
    with pytest.raises(sqlite3.IntegrityError):
        s.add_measurement(**KEY, source="guessed", stats=STATS, latency_raw_ms=[1.0])


def test_schema_1_file_is_migrated_and_keeps_its_rows(tmp_path):
    """A store written before the nightly tables (schema 1) opens, gains bench_runs/bench_results, keeps its rows."""
    path = tmp_path / "old.db"
    s = ResultsStore(path)
    mid = s.add_measurement(**KEY, source="measured", stats=STATS, latency_raw_ms=[1.4, 1.5, 2.0], device_identity=ME)
    s.close()
    c = sqlite3.connect(path)
    c.execute("DROP TABLE bench_results"); c.execute("DROP TABLE bench_runs")
    c.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    c.commit(); c.close()
    s = ResultsStore(path)
    assert s.find_measurement(**KEY, identity=ME)["id"] == mid
    s.create_bench_run("b1", suite_name="nightly", suite_path="/s.toml", suite_sha256=None, metadata={"x": 1})
    s.add_bench_result("b1", benchmark="r20", device="local", target="host", backend="tvm", tuning_key="untuned",
                       source="measured", status="ok", measurement_id=mid)
    s.add_bench_result("b1", benchmark="gone", device="local", target="host", backend="tvm", tuning_key="untuned",
                       source="measured", status="failed", error_kind="onnx_missing", error_message="no file")
    with pytest.raises(sqlite3.IntegrityError):  # ok needs its measurement; failed has none
        s.add_bench_result("b1", benchmark="x", device="local", target="host", backend="tvm",
                           tuning_key="untuned", source="measured", status="ok")
    s.finish_bench_run("b1", "finished", summary={"ok": 1})
    rows = s.bench_results("b1")
    assert [(r["benchmark"], r["status"], r["latency_p50_ms"]) for r in rows] == [("r20", "ok", 1.5),
                                                                                   ("gone", "failed", None)]
    assert s.bench_runs()[0]["metadata"] == {"x": 1} and s.bench_runs()[0]["summary"] == {"ok": 1}
    s.close()
    assert sqlite3.connect(path).execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)


@pytest.mark.parametrize("version", ["3", "4"])
def test_bench_results_gain_the_ratio_columns_in_place(tmp_path, version):
    """A schema-3 file, and an early schema-4 file (before the suite reference), get bench_results' ratio columns;
    old rows keep their values with NULL ratios; a new row stores and joins its ratio."""
    from harness.store import BENCH_RATIO_COLUMNS

    path = tmp_path / "old.db"
    s = ResultsStore(path)
    mid = s.add_measurement(**KEY, source="measured", stats=STATS, latency_raw_ms=[1.5], device_identity=ME)
    s.create_bench_run("b1", suite_name="nightly", suite_path="/s.toml", suite_sha256=None, metadata={})
    s.add_bench_result("b1", benchmark="r20", device="local", target="host", backend="tvm", tuning_key="untuned",
                       source="measured", status="ok", measurement_id=mid)
    s.close()
    c = sqlite3.connect(path)
    for col in BENCH_RATIO_COLUMNS:
        c.execute(f"ALTER TABLE bench_results DROP COLUMN {col}")
    c.execute("UPDATE meta SET value=? WHERE key='schema_version'", (version,))
    c.commit(); c.close()
    s = ResultsStore(path)
    cols = {r["name"] for r in s.query("PRAGMA table_info(bench_results)")}
    assert set(BENCH_RATIO_COLUMNS) <= cols
    (old,) = s.bench_results("b1")
    assert old["latency_p50_ms"] == 1.5 and old["latency_ratio"] is None and old["reference_benchmark"] is None
    rid = s.add_ratio(model="r20", arch_signature="z", reference_signature="ref", reference_sha256="f" * 64,
                      device="local", target="host", backend="tvm", tuning_key="untuned", source="measured",
                      device_identity=ME, ratio=2.5, ci_low=2.45, ci_high=2.56, confidence=0.95, pairs=16,
                      stop_reason="converged", round_ratios=[2.5] * 8, latency_p50_ms=1.5, reference_p50_ms=0.6)
    s.create_bench_run("b2", suite_name="nightly", suite_path="/s.toml", suite_sha256=None, metadata={})
    s.add_bench_result("b2", benchmark="r20", device="local", target="host", backend="tvm", tuning_key="untuned",
                       source="measured", status="ok", measurement_id=mid, reference_benchmark="ref", ratio_id=rid,
                       latency_ratio=2.5, ratio_ci=(2.45, 2.56))
    (new,) = s.bench_results("b2")
    assert (new["reference_benchmark"], new["ratio_id"], new["latency_ratio"], new["latency_ratio_ci_low"],
            new["latency_ratio_ci_high"], new["ratio_error"]) == ("ref", rid, 2.5, 2.45, 2.56, None)
    assert (new["ratio_confidence"], new["ratio_pairs"], new["ratio_latency_p50_ms"],
            new["ratio_reference_p50_ms"]) == (0.95, 16, 1.5, 0.6)
    s.close()
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ---------------------------------------------------------- bad files, dead owners (issue 11)

def _corrupt(path):
    s = ResultsStore(path)
    for i in range(200):
        s.add_measurement(**{**KEY, "arch_signature": f"c{i}"}, source="measured", stats=STATS, latency_raw_ms=[1.0])
    s.close()
    sqlite3.connect(path).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    data = bytearray(path.read_bytes())
    for off in range(4096 + 100, len(data), 4096):  # scribble over every page after the first
        data[off:off + 64] = b"\xa5" * 64
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("make, words", [
    (_corrupt, "corrupted"),
    (lambda p: p.write_bytes(b"not a database at all\n" * 10), "not an SQLite file"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: sqlite3.connect(p).execute("CREATE TABLE leases (board TEXT)").connection.commit(),
     "not a hilprune results store"),
])
def test_bad_database_named_and_untouched(tmp_path, make, words):
    import hashlib

    path = tmp_path / "r.db"
    make(path)
    before = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    with pytest.raises(StoreError) as info:
        ResultsStore(path)
    msg = str(info.value)
    assert words in msg and str(path) in msg and "\n" not in msg, msg
    if before is not None:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # nothing written
        assert not (tmp_path / "r.db-wal").exists() or (tmp_path / "r.db-wal").stat().st_size == 0


def _create_and_die(path):
    s = ResultsStore(path)
    s.create_run("dead", model="m", dataset="d", device="local", target="host", seed=0, config={})
    s.create_bench_run("dead-bench", suite_name="s", suite_path="/s", suite_sha256=None, metadata={})
    s.close()  # exits with both rows 'running', as a controller killed with -9 leaves them


def test_runs_of_a_dead_controller_are_interrupted(tmp_path):
    path = tmp_path / "r.db"
    p = mp.get_context("spawn").Process(target=_create_and_die, args=(path,))
    p.start()
    p.join(60)
    s = ResultsStore(path)
    s.create_run("alive", model="m", dataset="d", device="local", target="host", seed=0, config={})
    s.close()
    s = ResultsStore(path)  # reopening: this process still owns "alive"
    assert s.get_run("dead")["status"] == "interrupted"
    assert {b["run_id"]: b["status"] for b in s.bench_runs()} == {"dead-bench": "interrupted"}
    assert s.get_run("alive")["status"] == "running"
    assert s.query("PRAGMA integrity_check") == [{"integrity_check": "ok"}]


def test_a_cached_ratio_serves_only_its_own_reference_artifact_and_identity(tmp_path):
    s = ResultsStore(tmp_path / "r.db")
    key = dict(model="resnet20", arch_signature="8-8", device="local", target="host", backend="tvm",
               tuning_key="ms:t8")
    rid = s.add_ratio(**key, reference_signature="16-16", reference_sha256="ref-a", source="measured",
                      device_identity=ME, ratio=0.83, ci_low=0.82, ci_high=0.84, confidence=0.95, pairs=24,
                      stop_reason="converged", round_ratios=[0.82, 0.83, 0.84], latency_p50_ms=1.66,
                      reference_p50_ms=2.0)
    hit = s.find_ratio(**key, reference_sha256="ref-a", identity=ME)
    assert hit["id"] == rid and hit["ratio"] == 0.83 and hit["round_ratios"] == [0.82, 0.83, 0.84]
    # the same architecture against another build of the reference (other tuning, weights, compiler): a miss
    assert s.find_ratio(**key, reference_sha256="ref-b", identity=ME) is None
    # the same reference on another board or as a simulated answer: a miss
    assert s.find_ratio(**key, reference_sha256="ref-a", identity=ME.replace("local@h", "pi-01")) is None
    assert s.find_ratio(**key, reference_sha256="ref-a", identity="simulated|profile=host|version=1") is None


def test_schema_5_file_gains_the_table_pairs_and_the_candidates_prediction_columns(tmp_path):
    """Schema 5 -> 6 (issue 13): a file without ``table_pairs`` and without the candidates' predicted-ratio and
    measure-reason columns opens, keeps its rows (NULL in the new columns), and stores and reads pairs."""
    from harness.store import CANDIDATE_TABLE_COLUMNS

    path = tmp_path / "v5.db"
    s = ResultsStore(path)
    s.create_run("r1", model="m", dataset="d", device="local", target="host", seed=0, config={})
    s.add_candidate("r1", dict(episode=0, step=1, arch_signature="x", spec_json="[1]", reward=0.1, device="local",
                               target="host", source="measured", latency_ratio=0.9))
    s.close()
    c = sqlite3.connect(path)  # make it the schema-5 file the previous hilprune wrote
    c.execute("DROP TABLE table_pairs")
    for col in CANDIDATE_TABLE_COLUMNS:
        c.execute(f"ALTER TABLE candidates DROP COLUMN {col}")
    c.execute("UPDATE meta SET value='5' WHERE key='schema_version'")
    c.commit(); c.close()
    assert "table_pairs" not in {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    s = ResultsStore(path)
    assert SCHEMA_VERSION == 6
    assert s.query("SELECT value FROM meta WHERE key='schema_version'")[0]["value"] == "6"
    (old,) = s.candidates("r1")
    assert old["latency_ratio"] == 0.9 and old["latency_ratio_predicted"] is None
    assert old["latency_measure_reason"] is None
    s.add_candidate("r1", dict(episode=0, step=2, arch_signature="y", spec_json="[1]", reward=0.2, device="local",
                               target="host", source="predicted", latency_ratio=0.8, latency_ratio_predicted=0.8))
    assert [r["source"] for r in s.candidates("r1")] == ["measured", "predicted"]
    pid = s.add_table_pair(device_identity=ME, target="{}", family="resnet20@1x1x28x28", arch_signature="y",
                           tasks_ms=1.2, reference_signature="z", reference_tasks_ms=2.0, ratio=0.7,
                           latency_p50_ms=1.1, reference_p50_ms=1.6, run_id="r1")
    (pair,) = s.table_pairs(device_identity=ME, target="{}", family="resnet20@1x1x28x28")
    assert pair["id"] == pid and (pair["tasks_ms"], pair["reference_tasks_ms"], pair["ratio"]) == (1.2, 2.0, 0.7)
    # another board, target or family has no pairs: one fit per (board, target, family)
    assert s.table_pairs(device_identity=ME + "x", target="{}", family="resnet20@1x1x28x28") == []
    assert s.table_pairs(device_identity=ME, target="{}", family="vgg11@1x1x28x28") == []
    s.close()
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
