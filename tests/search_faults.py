"""A search killed with -9 mid-run, then ``--resume``: shared by ``tests/test_search_faults.py``
and ``benchmarks/faults.py``.

The smallest search the CLI runs: ResNet-20 on a 1,000-image Fashion-MNIST
subset, 1 training epoch, 2 episodes x 3 steps, the simulator as device
(``sim:host``: no TVM build, deterministic latencies), no fine-tuning.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--episodes", "2", "--max-steps", "3", "--subset", "1000", "--train-epochs", "1", "--eval-samples", "200",
        "--tune-trials", "0", "--finetune-epochs", "0", "--repeat", "10", "--target-ratio", "0.5",
        "--device", "sim:host", "--seed", "0"]


def cli(args: list[str], **kw) -> subprocess.Popen:
    """``python -m harness.cli ARGS`` of this worktree's code, as a subprocess."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=str(REPO), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **kw)


def _rows(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # the tables do not exist yet
        return []
    finally:
        con.close()


def actions(db: Path, run_id: str) -> list[tuple]:
    """(episode, step, action, arch_signature) of every candidate of a run."""
    return _rows(db, "SELECT episode, step, action, arch_signature FROM candidates WHERE run_id=? "
                     "ORDER BY episode, step", (run_id,))


def kill_and_resume(root: Path, timeout_s: float = 900.0) -> dict:
    """Run the tiny search uninterrupted (reference), run it again and kill it with -9 once it
    stored a step, then ``--resume`` it. Returns what happened (see the keys)."""
    common = ["--out", str(root / "runs"), "--db", str(root / "r.db"), "--cache-dir", str(root / "cache"), "--json"]
    db = root / "r.db"
    ref = cli(["search", *TINY, *common])
    out, err = ref.communicate(timeout=timeout_s)
    assert ref.returncode == 0, err.decode()[-2000:]
    ref_id = json.loads(out)["run_id"]

    victim = cli(["search", *TINY, *common])
    t0 = time.monotonic()
    run_id = None
    while time.monotonic() - t0 < timeout_s and victim.poll() is None:
        rows = _rows(db, "SELECT run_id FROM runs WHERE run_id != ? ORDER BY created_at DESC LIMIT 1", (ref_id,))
        if rows:
            run_id = rows[0][0]
            done = _rows(db, "SELECT COUNT(*) FROM candidates WHERE run_id=? AND episode >= 0", (run_id,))
            if done and done[0][0] >= 1:
                break
        time.sleep(0.05)
    killed_at = time.monotonic()
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(60)
    before = {r[0]: r for r in _rows(db, "SELECT id, episode, step, arch_signature FROM candidates WHERE run_id=?",
                                     (run_id,))}
    measurements_before = _rows(db, "SELECT COUNT(*) FROM measurements")[0][0]
    status_raw = _rows(db, "SELECT status FROM runs WHERE run_id=?", (run_id,))[0][0]

    from harness.store import ResultsStore

    store = ResultsStore(db)  # opening reaps the dead owner's row
    status_seen = store.get_run(run_id)["status"]
    store.close()
    detect_s = time.monotonic() - killed_at

    resumed = cli(["search", "--resume", run_id, "--out", str(root / "runs"), "--db", str(db), "--json"])
    rout, rerr = resumed.communicate(timeout=timeout_s)
    ckpt_rows = actions(db, run_id)
    integrity = _rows(db, "PRAGMA integrity_check")[0][0]
    after_ids = {r[0] for r in _rows(db, "SELECT id FROM candidates WHERE run_id=?", (run_id,))}
    return {
        "ref_id": ref_id, "run_id": run_id, "finished_before_kill": victim.returncode == 0,
        "status_raw": status_raw, "status_seen": status_seen, "detect_s": detect_s,
        "candidates_at_kill": len(before), "resume_rc": resumed.returncode, "resume_err": rerr.decode()[-2000:],
        "same_actions": ckpt_rows == actions(db, ref_id), "integrity": integrity,
        "measurements_lost": max(0, measurements_before - _rows(db, "SELECT COUNT(*) FROM measurements")[0][0]),
        # rows up to the last checkpoint are kept as they were; later ones are redone identically
        "kept_rows": len(set(before) & after_ids),
        "summary": json.loads(rout) if resumed.returncode == 0 else None,
    }
