"""devices/farm.py bookkeeping without a board: shared quarantines re-read, reported bad results, pinning."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import pytest

from devices.base import Device, LatencyStats, MeasureConfig, MeasureResult, Measurement
from devices.farm import FarmDevice
from devices.inventory import load_inventory
from devices.lease import LeaseManager

BOARD = """
[[board]]
name = "{name}"
host = "10.0.0.11"
user = "bench"
identity_file = "key"
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
target = "rpi4"
tags = ["lab-a"]
"""


@pytest.fixture()
def inv(tmp_path):
    (tmp_path / "key").write_text("not a real key")
    p = tmp_path / "farm.toml"
    p.write_text(BOARD.format(name="pi4-01") + BOARD.format(name="pi4-02"))
    return load_inventory(p)


def _farm(inv, **kw) -> FarmDevice:
    leases = LeaseManager(inv.farm.lease_db, holder="search:1")
    return FarmDevice(inv.tagged("lab-a"), leases=leases, name="farm:lab-a", **kw)


def _measurement(board: str, n: int) -> Measurement:
    return Measurement(device="farm:lab-a", backend="tvm", artifact_sha256=None, latency_ms=(1.0,), warmup_ms=(),
                       number=1, stats=LatencyStats.from_raw([1.0, 1.1, 0.9]), output_sha256="0" * 64,
                       output_head=(0.0,), output_shape=(1,), device_state_before={}, device_state_after={},
                       hello={"board": board}, created_at=float(n))


def test_shared_quarantines_are_reread_rate_limited(inv):
    other = LeaseManager(inv.farm.lease_db, holder="nightly:42")
    farm = _farm(inv, quarantine_refresh_s=0.3)
    reads = []
    real = farm.leases.quarantines
    farm.leases.quarantines = lambda: reads.append(1) or real()
    try:
        other.quarantine("pi4-01", "device_lost: connection reset", for_s=600)
        assert [farm.healthy() for _ in range(20)][-1] == ["pi4-01", "pi4-02"] and not reads  # not due yet
        time.sleep(0.35)
        assert farm.healthy() == ["pi4-02"] and len(reads) == 1
        assert "nightly:42" in farm.quarantined["pi4-01"] and "connection reset" in farm.quarantined["pi4-01"]
        other.clear_quarantine("pi4-01")
        time.sleep(0.35)
        assert farm.healthy() == ["pi4-01", "pi4-02"] and not farm.quarantined
    finally:
        farm.close()


def test_a_shared_quarantine_lifts_when_its_until_passes(inv):
    other = LeaseManager(inv.farm.lease_db, holder="nightly:42")
    other.quarantine("pi4-01", "timeout", for_s=0.4)
    farm = _farm(inv, quarantine_refresh_s=3600)  # no periodic re-read in this test
    try:
        assert farm.healthy() == ["pi4-02"]
        time.sleep(0.5)
        assert farm.healthy() == ["pi4-01", "pi4-02"]
    finally:
        farm.close()


def test_refresh_errors_are_logged_and_ignored(inv, caplog):
    other = LeaseManager(inv.farm.lease_db, holder="nightly:42")
    other.quarantine("pi4-01", "timeout", for_s=0.4)
    other.quarantine("pi4-02", "timeout", for_s=600)
    farm = _farm(inv, quarantine_refresh_s=0)

    def broken():
        raise sqlite3.OperationalError("database is locked")

    farm.leases.quarantines = broken
    try:
        with caplog.at_level(logging.WARNING, logger="devices.farm"):
            assert farm.healthy() == []  # what was known stays
            time.sleep(0.5)
            assert farm.healthy() == ["pi4-01"]  # expired by its own until, database or not
        assert "could not re-read the shared quarantines" in caplog.text and "database is locked" in caplog.text
    finally:
        farm.close()


def test_own_quarantine_from_reported_results_stays_for_the_farms_life(inv):
    other = LeaseManager(inv.farm.lease_db, holder="nightly:42")
    farm = _farm(inv, max_failures=2, quarantine_refresh_s=0)
    try:
        farm.report_bad_result(_measurement("elsewhere", 0), "wrong_output", "not ours")  # ignored
        farm.report_bad_result(_measurement("pi4-01", 1), "wrong_output", "max abs error 4")
        farm.report_bad_result(_measurement("pi4-01", 1), "wrong_output", "same measurement")  # counts once
        assert farm.failures["pi4-01"] == 1 and farm.healthy() == ["pi4-01", "pi4-02"]
        farm.report_bad_result(_measurement("pi4-01", 2), "wrong_output", "max abs error 5")
        assert farm.healthy() == ["pi4-02"]
        assert farm.quarantined["pi4-01"] == "2 consecutive failure(s), last wrong_output: max abs error 5"
        assert other.quarantines()["pi4-01"].holder == "search:1"
        assert other.clear_quarantine("pi4-01")  # a check elsewhere cleared it: this farm keeps its own finding
        assert farm.healthy() == ["pi4-02"] and "max abs error 5" in farm.quarantined["pi4-01"]
    finally:
        farm.close()


def test_pinning_ends_when_the_board_is_quarantined_elsewhere(inv):
    other = LeaseManager(inv.farm.lease_db, holder="nightly:42")
    farm = _farm(inv, quarantine_refresh_s=0)
    try:
        with farm.pinned() as board:
            assert board == "pi4-01"
            farm.measured_on["pi4-01"] = 5  # no longer the least used board, still the pinned one
            assert farm._take(set()) == "pi4-01"
            farm._give_back("pi4-01")
            with farm.pinned() as inner:  # nested: the same board
                assert inner == "pi4-01"
            assert farm._pin == "pi4-01"
            other.quarantine("pi4-01", "device_lost", for_s=600)
            assert farm._take(set()) == "pi4-02" and farm._pin is None
            farm._give_back("pi4-02")
        assert farm._pin is None and farm._pin_depth == 0
    finally:
        farm.close()


class _Plain(Device):
    def hello(self) -> dict:
        return {}

    def measure(self, artifact_dir: Path, config: MeasureConfig) -> MeasureResult:
        return MeasureResult.fail("device_lost", "nothing here")

    def _close(self) -> None:
        pass


def test_device_defaults_pin_and_report_nothing():
    dev = _Plain("plain")
    with dev.pinned() as board:
        assert board is None
    assert dev.report_bad_result(_measurement("x", 0), "wrong_output", "why") is None
