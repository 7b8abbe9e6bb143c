"""devices/farm.py on two real loopback sshd boards: parallel queue, failover, quarantine, fallback."""

from __future__ import annotations

import time

import psutil
import pytest

from devices.base import MeasureConfig, MeasureErrorKind
from devices.registry import make_device
from devices.farm import EXHAUSTED, FarmDevice
from devices.inventory import load_inventory
from tests.devices.farm_fixtures import board_toml, client_key, needs_sshd, sshd_pair, write_inventory  # noqa: F401
from tests.devices.sshd_server import LoopbackSshd

pytestmark = [needs_sshd, pytest.mark.slow]
FAST = dict(warmup=1, number=5, repeat=5, min_repeat_ms=0, timeout_s=60)
# ~1 s per measurement whatever the model: 10 blocks of >= 100 ms
SLOW = dict(warmup=1, number=0, repeat=10, min_repeat_ms=100, timeout_s=60)


def test_parallel_queue_uses_both_boards(tmp_path, sshd_pair, client_key, tiny_artifact):
    inv = write_inventory(tmp_path / "farm.toml",
                          [board_toml(f"b{i + 1}", s, client_key) for i, s in enumerate(sshd_pair)])
    farm = make_device("farm:loop", inventory=inv)
    assert isinstance(farm, FarmDevice)
    try:
        futures = [farm.submit(tiny_artifact, MeasureConfig(**SLOW)) for _ in range(4)]
        results = [f.result(timeout=120) for f in futures]
        assert all(r.ok for r in results), [r.error for r in results]
        boards = [r.value.hello["board"] for r in results]
        assert sorted(set(boards)) == ["b1", "b2"] and sum(farm.measured_on.values()) == 4
        assert {r.value.output_sha256 for r in results} == {results[0].value.output_sha256}
        assert all(r.value.device == "farm:loop" for r in results)
        # the boards' leases are held while their sessions are open
        assert farm.leases.holder_of("b1") is not None
    finally:
        farm.close()
    assert farm.leases.holder_of("b1") is None and farm.leases.holder_of("b2") is None


def test_board_killed_mid_measurement(tmp_path, client_key, tiny_artifact):
    pub = " ".join(client_key.with_suffix(".pub").read_text().split()[:2])
    victim, survivor = LoopbackSshd(tmp_path / "v", pub).start(), LoopbackSshd(tmp_path / "s", pub).start()
    inv = write_inventory(tmp_path / "farm.toml",
                          [board_toml("victim", victim, client_key), board_toml("survivor", survivor, client_key)],
                          farm="max_failures = 1")
    farm = make_device("farm:loop", inventory=inv)
    try:
        futures = [farm.submit(tiny_artifact, MeasureConfig(**SLOW)) for _ in range(6)]
        deadline = time.monotonic() + 60  # wait until the victim has finished one and is measuring again
        while time.monotonic() < deadline and not (farm.measured_on["victim"] >= 1 and "victim" in farm._busy):
            time.sleep(0.05)
        assert farm.measured_on["victim"] >= 1
        time.sleep(0.3)
        tmp = farm.boards["victim"].session.tmp
        victim.kill_all()  # sshd and its connections die mid-measurement
        results = [f.result(timeout=180) for f in futures]
        assert all(r.ok for r in results), [r.error for r in results]  # retried on the survivor, nothing lost
        on = [r.value.hello["board"] for r in results]
        assert on.count("victim") == farm.measured_on["victim"] >= 1 and "survivor" in on
        assert "victim" in farm.quarantined and "device_lost" in farm.quarantined["victim"]
        # the victim's daemon died with its SSH session (watchdog: stdin EOF)
        deadline = time.monotonic() + 30  # generous: the loop ends as soon as they are gone
        while time.monotonic() < deadline and _procs_with(tmp):
            time.sleep(0.1)
        assert not _procs_with(tmp)
        # later requests go to the survivor only
        r = farm.measure(tiny_artifact, MeasureConfig(**FAST))
        assert r.ok and r.value.hello["board"] == "survivor"
    finally:
        farm.close()
        victim.stop()
        survivor.stop()


def _procs_with(text: str) -> list:
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(text in a for a in p.info["cmdline"] or ()):
                out.append(p)
        except psutil.Error:
            pass
    return out


@pytest.mark.parametrize("fallback", ["fail", "sim"])
def test_no_healthy_board_left(tmp_path, sshd_pair, client_key, tiny_artifact, fallback):
    bad = board_toml("b1", sshd_pair[0], client_key, host_key=sshd_pair[1].host_key)  # refused: quarantined at once
    inv = load_inventory(write_inventory(tmp_path / "farm.toml", [bad], farm=f'fallback = "{fallback}"'))
    farm = make_device("farm:loop", inventory=inv)
    try:
        r = farm.measure(tiny_artifact, MeasureConfig(**FAST))
        assert "HOST KEY CHANGED" in farm.quarantined["b1"]
        # shared with the controller's other processes through the lease database
        assert "HOST KEY CHANGED" in farm.leases.quarantines()["b1"].reason
        if fallback == "fail":
            assert r.error.kind is MeasureErrorKind.DEVICE_LOST and r.error.message.startswith(EXHAUSTED)
            assert "fallback is 'fail'" in r.error.message and farm.exhausted
        elif r.ok:  # a simulator profile for the board's target exists
            assert r.value.source == "simulated"
        else:
            assert r.error.message.startswith(EXHAUSTED) and "simulator fallback is unavailable" in r.error.message
    finally:
        farm.close()


def test_busy_board_is_skipped_not_blamed(tmp_path, sshd_pair, client_key, tiny_artifact):
    inv = load_inventory(write_inventory(tmp_path / "farm.toml",
                                         [board_toml(f"b{i + 1}", s, client_key) for i, s in enumerate(sshd_pair)]))
    other = make_device("ssh:b1", inventory=inv)  # another controller holds b1
    farm = make_device("farm:loop", inventory=inv)
    try:
        assert other.hello()["board"] == "b1"
        results = [farm.measure(tiny_artifact, MeasureConfig(**FAST)) for _ in range(2)]
        assert all(r.ok and r.value.hello["board"] == "b2" for r in results)
        assert farm.failures["b1"] == 0 and not farm.quarantined
    finally:
        farm.close()
        other.close()


def _two_boards(tmp_path, sshd_pair, client_key, farm: str = ""):
    return load_inventory(write_inventory(tmp_path / "farm.toml",
                                          [board_toml(f"b{i + 1}", s, client_key) for i, s in enumerate(sshd_pair)],
                                          farm=farm))


def test_reported_bad_results_quarantine_the_board(tmp_path, sshd_pair, client_key, tiny_artifact):
    """The output check runs after the farm counted a success: the report must still add up to a quarantine."""
    farm = make_device("farm:loop", inventory=_two_boards(tmp_path, sshd_pair, client_key, "max_failures = 2"))
    try:
        first = farm.measure(tiny_artifact, MeasureConfig(**FAST))
        bad = first.value.hello["board"]
        good = ({"b1", "b2"} - {bad}).pop()
        farm.report_bad_result(first.value, "wrong_output", "max abs error 3.1 against ONNX Runtime")
        farm.report_bad_result(first.value, "wrong_output", "the same one again")  # counts once
        assert farm.failures[bad] == 1 and bad not in farm.quarantined
        for _ in range(3):  # the load is spread: the bad board gets another request soon
            r = farm.measure(tiny_artifact, MeasureConfig(**FAST))
            assert r.ok
            if r.value.hello["board"] == bad:
                break
        assert r.value.hello["board"] == bad and farm.failures[bad] == 0  # a success, as far as the farm knows
        farm.report_bad_result(r.value, "wrong_output", "max abs error 2.7 against ONNX Runtime")
        assert "wrong_output" in farm.quarantined[bad] and "max abs error 2.7" in farm.quarantined[bad]
        assert farm.quarantined[bad].startswith("2 consecutive failure(s)")
        assert "max abs error 2.7" in farm.leases.quarantines()[bad].reason  # shared like any quarantine
        assert [farm.measure(tiny_artifact, MeasureConfig(**FAST)).value.hello["board"]
                for _ in range(2)] == [good, good]
    finally:
        farm.close()


def test_pinned_sends_every_request_to_one_board(tmp_path, sshd_pair, client_key, tiny_artifact):
    farm = make_device("farm:loop", inventory=_two_boards(tmp_path, sshd_pair, client_key))
    try:
        outside = [farm.measure(tiny_artifact, MeasureConfig(**FAST)).value.hello["board"] for _ in range(2)]
        assert sorted(outside) == ["b1", "b2"]
        with farm.pinned() as board:
            assert board in ("b1", "b2")
            inside = [farm.measure(tiny_artifact, MeasureConfig(**FAST)).value.hello["board"] for _ in range(4)]
            futures = [farm.submit(tiny_artifact, MeasureConfig(**FAST)) for _ in range(2)]  # wait for the pin
            inside += [f.result(timeout=120).value.hello["board"] for f in futures]
        assert inside == [board] * 6
        after = [farm.measure(tiny_artifact, MeasureConfig(**FAST)).value.hello["board"] for _ in range(2)]
        assert set(after) == {({"b1", "b2"} - {board}).pop()}  # unpinned: back to spreading the load
    finally:
        farm.close()


def test_pinned_board_quarantined_ends_pinning(tmp_path, sshd_pair, client_key, tiny_artifact):
    farm = make_device("farm:loop", inventory=_two_boards(tmp_path, sshd_pair, client_key, "max_failures = 2"))
    try:
        with farm.pinned() as board:
            for _ in range(2):
                r = farm.measure(tiny_artifact, MeasureConfig(**FAST))
                assert r.value.hello["board"] == board
                farm.report_bad_result(r.value, "wrong_output", "output differs from ONNX Runtime")
            assert "output differs" in farm.quarantined[board]
            r = farm.measure(tiny_artifact, MeasureConfig(**FAST))
            assert r.ok and r.value.hello["board"] != board and farm._pin is None
    finally:
        farm.close()
