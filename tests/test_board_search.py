"""Searches on loopback OpenSSH boards (real sshd, real daemon, real TVM, real SQLite).

- tuning trials are timed on the board that measures, and every stored row names that board;
- a farm whose only board dies mid-search stops (resumably) by default, and with ``--fallback sim``
  the whole run moves to the simulator: every stored latency of the run is then ``simulated``.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

from harness.search.env import PruningEnv
from harness.search.run import SearchAborted, SearchConfig, resume_search, run_search
from tests.devices.farm_fixtures import client_key, needs_sshd, write_inventory  # noqa: F401
from tests.devices.sshd_server import LoopbackSshd, board_toml

pytestmark = [needs_sshd, pytest.mark.slow]

SMALL = dict(episodes=1, subset=600, train_epochs=1, eval_samples=100, finetune_epochs=0, repeat=5,
             env=dict(max_steps=2, target_ratio=0.5), cache_drift_tolerance=math.inf)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One baseline cache for the module (trained once), separate stores per test."""
    return tmp_path_factory.mktemp("boardsearch")


def _board(root: Path, client_key: Path) -> LoopbackSshd:
    pub = " ".join(client_key.with_suffix(".pub").read_text().split()[:2])
    return LoopbackSshd(root, pub).start()


def _inventory(tmp_path: Path, sshd: LoopbackSshd, client_key: Path, farm: str = "") -> Path:
    return write_inventory(tmp_path / "farm.toml", [board_toml("b1", sshd, client_key)],
                           farm="max_failures = 1\n" + farm)


def _config(tmp_path: Path, shared: Path, inv: Path, **over) -> SearchConfig:
    return SearchConfig(**{**SMALL, **over}, device="farm:loop", inventory=str(inv), out=str(tmp_path / "runs"),
                        db=str(tmp_path / "r.db"), cache_dir=str(shared / "cache"))


def _kill_before_step(monkeypatch, sshd: LoopbackSshd, step: int) -> None:
    """The board loses power (sshd and its sessions SIGKILLed) just before the env's ``step``-th step."""
    real = PruningEnv.step
    calls = {"n": 0}

    def step_then_die(self, action):
        calls["n"] += 1
        if calls["n"] == step:
            sshd.kill_all()
        return real(self, action)

    monkeypatch.setattr(PruningEnv, "step", step_then_die)


def test_search_on_a_board_tunes_there_and_every_row_names_the_board(tmp_path, shared, client_key):
    from harness.compile.targets import resolve_target
    from harness.compile.tuning import database_dir_for, database_info

    sshd = _board(tmp_path / "sshd", client_key)
    try:
        out = run_search(_config(tmp_path, shared, _inventory(tmp_path, sshd, client_key), tune_trials=1),
                         progress=False)
    finally:
        sshd.stop()
    assert out["board"] == "b1" and out["latency_source"] == "measured" and out["board_changes"] == []
    # `host` on a board is the board's own CPU (from its hello), an x86-64 ISA level, not the controller's mcpu
    assert out["target"] == "host@b1" and out["target_dict"]["mcpu"].startswith("x86-64")
    db = sqlite3.connect(tmp_path / "r.db")
    rows = db.execute("SELECT device, target, source, device_identity, metadata_json FROM measurements").fetchall()
    assert len(rows) >= 3  # the unpruned model, candidates, final rounds
    for device, target, source, identity, meta in rows:
        meta = json.loads(meta)
        assert (device, target, source) == ("farm:loop", "host@b1", "measured")
        assert identity.startswith("measured|board=b1|") and meta["hello"]["board"] == "b1"
    tuned = [json.loads(m)["tuning"] for (*_, m) in rows]
    assert any(t["tasks_tuned_now"] > 0 and t["runner"] == "farm:loop" for t in tuned)  # trials timed on b1
    assert all(t["tasks_untuned"] == 0 and t["trials_per_task"] == 1 for t in tuned)
    board_db = database_dir_for(Path(shared / "cache"), json.dumps(out["target_dict"], sort_keys=True,
                                                                  separators=(",", ":")), _tuning())
    assert database_info(board_db).records > 0
    controller_db = database_dir_for(Path(shared / "cache"), resolve_target("host").canonical_json(), _tuning())
    assert database_info(controller_db).records == 0  # nothing was tuned for (or on) the controller
    cands = db.execute("SELECT device, source FROM candidates WHERE run_id=?", (out["run_id"],)).fetchall()
    assert cands and all(c == ("farm:loop", "measured") for c in cands)


def _tuning():
    from harness.compile.tuning import TuningConfig

    return TuningConfig(trials_per_task=1)


def test_a_dead_farm_stops_the_run_resumably(tmp_path, shared, client_key, monkeypatch):
    from devices.lease import LeaseManager

    sshd = _board(tmp_path / "sshd", client_key)
    inv = _inventory(tmp_path, sshd, client_key)
    _kill_before_step(monkeypatch, sshd, 2)
    with pytest.raises(SearchAborted, match="no healthy board left.*--resume"):
        run_search(_config(tmp_path, shared, inv, tune_trials=0), progress=False)
    monkeypatch.undo()
    db = sqlite3.connect(tmp_path / "r.db")
    run_id, status = db.execute("SELECT run_id, status FROM runs").fetchone()
    assert status == "failed"
    steps = db.execute("SELECT episode, step, source FROM candidates WHERE run_id=? ORDER BY id",
                       (run_id,)).fetchall()
    assert steps == [(-1, 0, "measured"), (0, 1, "measured")]  # the step the board died in is not stored
    assert db.execute("SELECT COUNT(*) FROM measurements WHERE source != 'measured'").fetchone()[0] == 0

    # the lab fixes the board (back on another port) and lifts its quarantine: the run goes on from step 2
    sshd.stop()
    fixed = _board(tmp_path / "sshd2", client_key)
    try:
        _inventory(tmp_path, fixed, client_key)
        leases = LeaseManager(tmp_path / "leases.sqlite")
        assert leases.clear_quarantine("b1")
        leases.close()
        out = resume_search(run_id, out=str(tmp_path / "runs"), progress=False)
    finally:
        fixed.stop()
    assert out["board"] == "b1" and out["latency_source"] == "measured"
    steps = db.execute("SELECT episode, step, source FROM candidates WHERE run_id=? AND episode >= 0 ORDER BY step",
                       (run_id,)).fetchall()
    # the run died in its first episode: --resume restarts it from its first step (episode boundaries), and
    # step 2, lost with the board, is made on resume
    assert [s[:2] for s in steps] == [(0, 1), (0, 2)]
    assert {s[2] for s in steps} == {"measured"}
    assert db.execute("SELECT status FROM runs").fetchone()[0] == "finished"


def test_fallback_sim_moves_the_whole_run_to_the_simulator(tmp_path, shared, client_key, monkeypatch):
    sshd = _board(tmp_path / "sshd", client_key)
    inv = _inventory(tmp_path, sshd, client_key)
    _kill_before_step(monkeypatch, sshd, 2)
    try:
        out = run_search(_config(tmp_path, shared, inv, tune_trials=0, fallback="sim"), progress=False)
    finally:
        sshd.stop()
    assert out["latency_source"] == "simulated"
    switch = out["source_switch"]
    assert switch["from"] == "farm:loop" and switch["to"] == "sim:host" and (switch["episode"], switch["step"]) == (0, 2)
    db = sqlite3.connect(tmp_path / "r.db")
    rows = db.execute("SELECT c.episode, c.step, c.source, c.latency_p50_ms, c.delta_h, m.source, m.latency_p50_ms "
                      "FROM candidates c LEFT JOIN measurements m ON m.id = c.measurement_id WHERE c.run_id=? "
                      "ORDER BY c.id", (out["run_id"],)).fetchall()
    assert [r[:2] for r in rows][:2] == [(-1, 0), (0, 1)] and len(rows) >= 2
    base = rows[0]
    for episode, step, source, p50, delta_h, m_source, m_p50 in rows:
        if p50 is None:  # a failed step has no latency
            continue
        assert source == m_source == "simulated" and p50 == m_p50  # every stored latency of the run
        if episode >= 0:  # ΔH compares simulated with simulated (reward.py: relative change of p50)
            assert delta_h == pytest.approx(p50 / base[3] - 1.0, rel=1e-9)
    assert out["baseline"]["source"] == "simulated"
    assert out["best"] is None or out["best"]["source"] == "simulated"
