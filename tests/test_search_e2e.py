"""End to end: ``hilprune search`` on a small Fashion-MNIST subset, real daemon, real TVM builds.

Untuned builds (``--tune-trials 0``) keep this within CI time; tuning has its
own tests in tests/harness/test_tuning.py. The runs are labelled untuned.
"""

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

pytestmark = pytest.mark.slow


def _search_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "search", "--episodes", "2", "--max-steps", "3", "--subset", "1000", "--train-epochs", "1",
        "--eval-samples", "200", "--tune-trials", "0", "--finetune-epochs", "1", "--repeat", "10",
        "--latency-target", "0.5", "--out", str(tmp_path / "runs"), "--db", str(tmp_path / "r.db"),
        "--cache-dir", str(tmp_path / "cache"), "--json", *extra,
    ]


def test_search_end_to_end_writes_rows_and_summary(tmp_path, capsys):
    assert main(_search_args(tmp_path)) == 0
    out = json.loads(capsys.readouterr().out)
    for part in ("baseline", "best"):
        for key in ("top1", "macs", "params", "latency_p50_ms"):
            assert out[part][key] is not None, (part, key)
    assert out["best"]["macs"] < out["baseline"]["macs"]
    assert out["best"]["speedup"] == pytest.approx(out["baseline"]["latency_p50_ms"] / out["best"]["latency_p50_ms"])
    assert len(out["best"]["spec"]) == len(out["baseline"]["spec"])
    assert all(1 <= k <= b for k, b in zip(out["best"]["spec"], out["baseline"]["spec"]))

    run_dir = Path(out["run_dir"])
    assert run_dir.name == out["run_id"] and run_dir.parent == tmp_path / "runs"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run_id"] == out["run_id"] and json.loads((run_dir / "config.json").read_text())["episodes"] == 2

    db = sqlite3.connect(tmp_path / "r.db")
    rows = db.execute("SELECT episode, step, top1, macs, params, latency_p50_ms, latency_raw_ms, reward, source "
                      "FROM candidates WHERE run_id=? ORDER BY episode, step", (out["run_id"],)).fetchall()
    assert rows[0][:2] == (-1, 0)  # the unpruned reference
    steps = rows[1:]
    assert 2 <= len(steps) <= 6 and out["candidates"] == len(steps)
    assert {r[0] for r in steps} == {0, 1}
    for ep, step, top1, macs, params, p50, raw, reward, source in steps:
        assert 1 <= step <= 3 and source == "measured"
        assert reward == reward and abs(reward) < 10  # finite, never NaN
        if p50 is not None:
            assert len(json.loads(raw)) >= 10 and p50 > 0 and 0 <= top1 <= 1
    status = db.execute("SELECT status FROM runs WHERE run_id=?", (out["run_id"],)).fetchone()[0]
    assert status == "finished"
    # the second run hits the latency cache for every architecture the first one measured
    n_meas = db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
    assert main(_search_args(tmp_path, "--finetune-epochs", "0")) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["evaluator"]["latency_cache_hits"] >= 1
    n_meas2 = db.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
    assert n_meas2 - n_meas <= second["evaluator"]["measured"] + 1  # +1: the fresh final measurement
