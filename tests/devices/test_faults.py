"""Fault suite (``pytest -m faults``): real OpenSSH boards on 127.0.0.1, one fault each.

After each fault: the controller got a clear error in bounded time, no process
of ours is left on the board, no temp dir is left, nothing measured was lost.
Bounds are generous (a loaded 2-core CI machine); every wait returns as soon
as its condition holds. Scenarios live in ``tests/devices/faults.py`` (shared
with ``benchmarks/faults.py``).
"""

from __future__ import annotations

import pytest

from tests.devices import faults
from tests.devices.farm_fixtures import client_key, needs_sshd  # noqa: F401

pytestmark = [needs_sshd, pytest.mark.faults, pytest.mark.slow]


def _clean(out: faults.FaultOutcome) -> None:
    assert out.orphans == 0, out
    assert out.temp_dirs == 0, out
    assert out.board_clean_s is not None, out


def test_partition_detected_on_both_sides_within_dead_link_s(tmp_path, client_key):
    out = faults.partition(tmp_path, client_key)
    # the controller: a device_lost naming the dead link, long before the 600 s request timeout
    assert out.detect_s is not None and out.detect_s < faults.DEAD_LINK_S + 30, out
    assert "dead_link_s" in out.error and "link dead" in out.error, out.error
    # the board: the watchdog heard no heartbeat for dead_link_s and killed the group, removed the dir
    _clean(out)
    assert out.board_clean_s < faults.DEAD_LINK_S + 30, out


def test_hang_killed_at_the_request_timeout(tmp_path, client_key):
    out = faults.hang(tmp_path, client_key)
    assert out.notes["kind"] == "timeout" and out.detect_s < 30, out
    _clean(out)


def test_output_flood_is_a_faulty_board(tmp_path, client_key):
    out = faults.flood(tmp_path, client_key)
    assert "nobody asked for" in out.error and out.detect_s < 60, out
    _clean(out)


def test_hello_wait_follows_the_request_timeout(tmp_path, client_key):
    out = faults.hello_hang(tmp_path, client_key, timeout_s=3.0)
    assert out.notes["kind"] == "daemon_start" and "did not say hello" in out.error, out
    assert out.detect_s < 60, out  # 3 s of hello wait plus set-up; it was a fixed 120 s
    _clean(out)


def test_sshd_killed_mid_measure(tmp_path, client_key):
    out = faults.sshd_killed(tmp_path, client_key)
    assert out.detect_s is not None and out.detect_s < 30, out
    _clean(out)


@pytest.mark.parametrize("second_board", [True, False], ids=["takes-free-board", "waits-for-lease"])
def test_controller_killed_holding_a_lease(tmp_path, client_key, second_board):
    out = faults.controller_killed(tmp_path, client_key, second_board=second_board)
    assert out.detect_s is not None, out  # the board's daemon died with its controller
    assert out.lost == 0, out.error
    assert out.notes["lease_db_integrity"] == "ok"
    _clean(out)
    if second_board:
        assert out.notes["board"] == "b2", out
    else:
        assert out.notes["board"] == "b1", out
        # a progress line names the dead holder and the expiry in local ISO time
        msg = out.notes["progress"]
        assert msg and "leased by" in msg and "waiting" in msg, out
        assert faults.iso_in(msg), msg


def test_leftover_temp_dir_swept_by_next_session(tmp_path, client_key):
    out = faults.stale_dir_swept(tmp_path, client_key)
    assert out.notes["left_before_next"] == 1, out  # the fault really left it
    assert out.temp_dirs == 0 and out.orphans == 0, out
