"""devices/lease.py: exclusive leases, heartbeat renewal, a killed client's lease expires."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devices.lease import LeaseManager

REPO = Path(__file__).resolve().parents[2]


def test_exclusive_and_released(tmp_path):
    a = LeaseManager(tmp_path / "l.sqlite", ttl_s=30, holder="a")
    b = LeaseManager(tmp_path / "l.sqlite", ttl_s=30, holder="b")
    lease = a.acquire("b1")
    assert lease is not None and a.holder_of("b1")["holder"] == "a"
    assert b.acquire("b1") is None and b.acquire("b2") is not None  # per board
    a.release(lease)
    assert b.acquire("b1", wait_s=1) is not None
    a.close()
    b.close()


def test_heartbeat_keeps_a_live_lease(tmp_path):
    # ttl 1.5 s (a beat every 0.5 s): a heartbeat thread or SQLite commit held up for a few hundred ms on a
    # loaded machine must not lose the lease
    a = LeaseManager(tmp_path / "l.sqlite", ttl_s=1.5, holder="a")
    lease = a.acquire("b1")
    time.sleep(3.5)  # > 2 ttl: only the heartbeat keeps it
    assert not lease.lost and a.holder_of("b1")["holder"] == "a"
    assert LeaseManager(tmp_path / "l.sqlite", ttl_s=1, holder="b").acquire("b1") is None
    a.close()
    assert a.holder_of("b1") is None


def test_killed_client_lease_expires(tmp_path):
    db = tmp_path / "l.sqlite"
    ttl = 2.0  # a beat every 0.67 s: the live holder keeps its lease through a busy machine's hiccups
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]);"
            "from devices.lease import LeaseManager;"
            f"m = LeaseManager(sys.argv[1], ttl_s={ttl}, holder='doomed'); assert m.acquire('b1');"
            "print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(db), str(REPO)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"held"
        other = LeaseManager(db, ttl_s=5, holder="other")
        time.sleep(3.0)  # > ttl: the heartbeat is renewing it: still held
        assert other.holder_of("b1")["holder"] == "doomed" and other.acquire("b1") is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        t0 = time.monotonic()
        lease = other.acquire("b1", wait_s=10, poll_s=0.1)
        # freed after ttl, long before wait_s (the 2 s slack is for polling on a loaded machine)
        assert lease is not None and time.monotonic() - t0 <= ttl + 2.0
        other.close()
    finally:
        proc.kill()
        proc.wait()


def test_quarantine_shared_expires_and_clears(tmp_path):
    a = LeaseManager(tmp_path / "l.sqlite", ttl_s=30, holder="a")
    b = LeaseManager(tmp_path / "l.sqlite", ttl_s=30, holder="b")
    q = a.quarantine("b1", "host key changed", for_s=600)
    assert 599 < q.until - q.since <= 600
    seen = b.quarantines()
    assert list(seen) == ["b1"] and seen["b1"].reason == "host key changed" and seen["b1"].holder == "a"
    a.quarantine("b2", "timeout", for_s=0.2)
    assert set(b.quarantines()) == {"b1", "b2"}
    time.sleep(0.4)
    assert set(b.quarantines()) == {"b1"}  # b2's quarantine expired
    assert b.clear_quarantine("b2") is False  # expired rows do not count as cleared
    assert b.clear_quarantine("b1") is True and a.quarantines() == {}
    with pytest.raises(ValueError, match="for_s must be > 0"):
        a.quarantine("b1", "x", for_s=0)
