"""``hilprune devices list|check`` on loopback sshd boards (one healthy, one with a changed host key)."""

from __future__ import annotations

import json

import pytest

from devices.registry import make_device
from harness.cli import main
from tests.devices.farm_fixtures import board_toml, client_key, needs_sshd, sshd_pair, write_inventory  # noqa: F401

pytestmark = [needs_sshd, pytest.mark.slow]


def test_devices_list_and_check(tmp_path, sshd_pair, client_key, tiny_artifact, capsys):
    good = write_inventory(tmp_path / "good.toml", [board_toml("b1", sshd_pair[0], client_key)])
    assert main(["devices", "list", "--inventory", str(good)]) == 0
    out = capsys.readouterr().out
    assert "b1" in out and "pinned" in out and "free" in out
    assert main(["devices", "check", "--inventory", str(good), "--golden", str(tiny_artifact), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["boards"][0]
    assert row["healthy"] and row["machine"] == "x86_64" and row["arch_ok"] and row["tvm"] and row["glibc"]
    assert row["golden_p50_ms"] > 0 and row["problem"] is None

    bad = write_inventory(tmp_path / "bad.toml", [
        board_toml("b1", sshd_pair[0], client_key),
        board_toml("b2", sshd_pair[1], client_key, host_key=sshd_pair[0].host_key)])
    assert main(["devices", "check", "--inventory", str(bad), "--no-measure"]) == 1
    captured = capsys.readouterr()
    assert "b2: " in captured.err and "HOST KEY CHANGED" in captured.err and "quarantined until" in captured.err
    assert captured.out.splitlines()[0].split()[:3] == ["name", "endpoint", "target"]
    # the unhealthy board is quarantined for the controller's other runs; a farm made now skips it
    assert main(["devices", "list", "--inventory", str(bad), "--json"]) == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)["boards"]}
    assert listed["b1"]["quarantine"] is None and listed["b1"]["health"] == "ok"
    assert "HOST KEY CHANGED" in listed["b2"]["quarantine"]["reason"]
    assert listed["b2"]["health"].startswith("quarantined until")
    farm = make_device("farm:loop", inventory=bad)
    try:
        assert farm.healthy() == ["b1"]
    finally:
        farm.close()
    # b2's key is fixed: check finds it healthy and clears the quarantine
    fixed = write_inventory(tmp_path / "bad.toml", [
        board_toml("b1", sshd_pair[0], client_key), board_toml("b2", sshd_pair[1], client_key)])
    assert main(["devices", "check", "--inventory", str(fixed), "--no-measure", "--board", "b2"]) == 0
    assert "b2: healthy again, quarantine cleared" in capsys.readouterr().err
    assert main(["devices", "list", "--inventory", str(fixed), "--json"]) == 0
    assert all(r["quarantine"] is None for r in json.loads(capsys.readouterr().out)["boards"])


def test_devices_bad_inventory_exit_2(tmp_path, capsys):
    p = tmp_path / "inv.toml"
    p.write_text('[[board]]\nname = "x"\n')
    assert main(["devices", "list", "--inventory", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hilprune: error: inventory") and "'x'" in err and len(err.strip().splitlines()) == 1


def test_devices_check_busy_board_is_not_a_failure(tmp_path, sshd_pair, client_key, capsys):
    from devices.inventory import load_inventory
    from devices.lease import LeaseManager

    inv = write_inventory(tmp_path / "farm.toml", [board_toml(f"b{i + 1}", s, client_key)
                                                   for i, s in enumerate(sshd_pair)])
    other = LeaseManager(load_inventory(inv).farm.lease_db, holder="nightly:42")
    assert other.acquire("b1") is not None
    try:
        args = ["devices", "check", "--inventory", str(inv), "--no-measure", "--lease-wait-s", "0"]
        assert main(args + ["--json"]) == 0
        rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["boards"]}
        assert rows["b1"]["busy"] and rows["b1"]["state"] == "busy" and not rows["b1"]["healthy"]
        assert rows["b1"]["quarantine"] is None and rows["b1"]["leased_by"] == "nightly:42"
        assert rows["b2"]["state"] == "healthy"
        assert main(args) == 0
        captured = capsys.readouterr()
        table = {line.split()[0]: line.split()[-1] for line in captured.out.splitlines()[1:]}
        assert table == {"b1": "busy", "b2": "healthy"}
        assert "b1: busy: leased by nightly:42 until" in captured.err and "not quarantined" in captured.err
        assert other.quarantines() == {}
    finally:
        other.close()


def test_devices_check_quarantines_only_board_faults(tmp_path, sshd_pair, client_key, tiny_artifact, capsys):
    import shutil

    from devices.inventory import load_inventory
    from devices.lease import LeaseManager

    # a golden artifact the board cannot load is the controller's problem: reported, exit 1, no quarantine
    golden = tmp_path / "golden"
    shutil.copytree(tiny_artifact, golden)
    manifest = json.loads((golden / "manifest.json").read_text())
    (golden / "manifest.json").write_text(json.dumps(dict(manifest, arch="aarch64")))
    inv = write_inventory(tmp_path / "farm.toml", [board_toml("b1", sshd_pair[0], client_key)])
    assert main(["devices", "check", "--inventory", str(inv), "--golden", str(golden), "--json"]) == 1
    row = json.loads(capsys.readouterr().out)["boards"][0]
    assert row["problem"].startswith("golden measurement: load_failed") and row["state"] == "unhealthy"
    assert row["board_fault"] is False and row["quarantine"] is None
    assert LeaseManager(load_inventory(inv).farm.lease_db).quarantines() == {}
    assert main(["devices", "check", "--inventory", str(inv), "--golden", str(golden)]) == 1
    assert "(not quarantined: not a fault of the board)" in capsys.readouterr().err

    # one --golden artifact for boards of two targets: refused before contacting anything
    mixed = write_inventory(tmp_path / "mixed.toml", [
        board_toml("b1", sshd_pair[0], client_key),
        board_toml("pi", sshd_pair[1], client_key).replace('target = "host"', 'target = "rpi4"')])
    assert main(["devices", "check", "--inventory", str(mixed), "--golden", str(tiny_artifact)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hilprune: error: --golden") and "host, rpi4" in err and len(err.strip().splitlines()) == 1
