"""Interleaved measurement over real OpenSSH servers on 127.0.0.1 (SshDevice, FarmDevice)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from devices.base import MeasureErrorKind
from devices.inventory import load_inventory
from devices.interleaved import InterleavedConfig
from devices.local import LocalDevice
from devices.registry import make_device
from devices.ssh import SshDevice
from tests.devices.farm_fixtures import board_toml, client_key, needs_sshd, sshd_pair, write_inventory  # noqa: F401
from tests.devices.interleaved_fixtures import build_conv_artifact
from tests.devices.test_interleaved import REAL, check_ratio_holds, load_phases, measure_under_changing_load

pytestmark = [needs_sshd, pytest.mark.slow]
ROUNDS = 90


@pytest.fixture(scope="module")
def convs(tmp_path_factory):
    root = tmp_path_factory.mktemp("convs_ssh")
    return build_conv_artifact(root / "w16", 16), build_conv_artifact(root / "w32", 32)


def test_ssh_ratio_holds_under_changing_load(tmp_path, sshd_pair, client_key, convs):
    narrow, wide = convs
    inv = write_inventory(tmp_path / "b1.toml", [board_toml("b1", sshd_pair[0], client_key)])
    dev = SshDevice(load_inventory(inv).board("b1"))
    local = LocalDevice()
    try:
        quiet, loaded, window = measure_under_changing_load(dev, narrow, wide, rounds=ROUNDS)
        tmp = dev.session.tmp
        uploaded = sorted(Path(tmp, "a").iterdir())
        assert len(uploaded) == 2  # each artifact uploaded once, the twin reuses the reference's upload
        assert loaded.device == "ssh:b1" and loaded.hello["board"] == "b1" and loaded.source == "measured"
        lo = local.measure_interleaved([narrow, wide], InterleavedConfig(min_pairs=2, max_pairs=2, **REAL))
        assert lo.ok, lo.error
        assert [a.output_sha256 for a in loaded.artifacts[:2]] == [a.output_sha256 for a in lo.value.artifacts]
    finally:
        dev.close()
        local.close()
    assert not Path(tmp).exists()  # the session's temp dir went with it
    check_ratio_holds(quiet, loaded, rounds=ROUNDS)
    assert load_phases(loaded, window)


def test_ssh_refuses_wrong_arch_before_connecting(tmp_path, sshd_pair, client_key, convs):
    arm = tmp_path / "arm"
    shutil.copytree(convs[1], arm)
    manifest = json.loads((arm / "manifest.json").read_text())
    (arm / "manifest.json").write_text(json.dumps({**manifest, "arch": "aarch64"}))
    inv = write_inventory(tmp_path / "b1.toml", [board_toml("b1", sshd_pair[0], client_key)])
    dev = SshDevice(load_inventory(inv).board("b1"))
    try:
        r = dev.measure_interleaved([convs[0], arm], InterleavedConfig(**REAL))
        assert r.error.kind is MeasureErrorKind.LOAD_FAILED and "built for aarch64" in r.error.message
        assert dev.session is None
    finally:
        dev.close()


def test_farm_measures_all_artifacts_on_one_board(tmp_path, sshd_pair, client_key, convs):
    inv = load_inventory(write_inventory(tmp_path / "farm.toml",
                                         [board_toml(f"b{i + 1}", s, client_key) for i, s in enumerate(sshd_pair)]))
    farm = make_device("farm:loop", inventory=inv)
    cfg = InterleavedConfig(min_pairs=4, max_pairs=4, **REAL)
    try:
        with farm.pinned() as board:
            boards = []
            for _ in range(2):
                r = farm.measure_interleaved(list(convs), cfg)
                assert r.ok, r.error
                boards.append(r.value.hello["board"])
                assert r.value.pairs == 4 and r.value.ratios[0].median > 1.5
        assert boards == [board, board]  # the caller's pin holds across interleaved measurements
        queued = farm.submit_interleaved(list(convs), cfg)  # through the dispatcher, like submit()
        assert queued.result(timeout=120).value.hello["board"] in ("b1", "b2")
        # a request error that is not the board's fault is answered, not retried or counted
        bad = farm.measure_interleaved([convs[0]], cfg)
        assert bad.error.kind is MeasureErrorKind.BAD_REQUEST and farm.failures == {"b1": 0, "b2": 0}
    finally:
        farm.close()
