"""devices/inventory.py: the TOML contract, one clear line per mistake."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from devices.registry import make_device
from devices.inventory import InventoryError, load_inventory

EXAMPLE = Path(__file__).resolve().parents[2] / "devices" / "examples" / "farm.toml"

GOOD = """
[[board]]
name = "pi4-01"
host = "10.0.0.11"
port = 22
user = "bench"
identity_file = "key"
host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
target = "rpi4"
tags = ["rpi4", "lab-a"]
python = "/usr/bin/python3"
env = { TVM_NUM_THREADS = "4" }
cooldown_s = 5
"""


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "key").write_text("not a real key")
    p = tmp_path / "farm.toml"
    p.write_text(text)
    return p


def test_example_inventory_loads(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "farm.toml")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "farm_ed25519").write_text("x")
    (tmp_path / "farm_known_hosts").write_text("")
    inv = load_inventory(tmp_path / "farm.toml")
    pi4, pi5 = inv.boards
    assert pi4.name == "pi4-01" and pi4.port == 22 and pi4.arch == "aarch64" and pi4.tags == ("rpi4", "lab-a")
    assert pi4.identity_file == tmp_path / "keys" / "farm_ed25519" and pi4.env_dict == {"TVM_NUM_THREADS": "4"}
    assert pi5.known_hosts == tmp_path / "farm_known_hosts" and pi5.host_key is None and pi5.port == 22
    assert inv.tagged("lab-a") == (pi4, pi5) and inv.board("pi5-01") is pi5
    assert inv.farm.fallback == "fail" and inv.farm.lease_db == tmp_path / "farm.leases.sqlite"
    assert inv.farm.quarantine_s == 1800.0


@pytest.mark.parametrize("edit, field, words", [
    (lambda t: t.replace('host = "10.0.0.11"\n', ""), "host", "is missing"),
    (lambda t: t.replace("port = 22", 'port = "22"'), "port", "integer in 1..65535"),
    (lambda t: t.replace('tags = ["rpi4", "lab-a"]', 'tags = "rpi4"'), "tags", "list of names"),
    (lambda t: t.replace('python = "/usr/bin/python3"', 'python = "python3"'), "python", "absolute path"),
    (lambda t: t.replace("cooldown_s = 5", "cooldown_s = -1"), "cooldown_s", ">= 0"),
    (lambda t: t.replace("cooldown_s = 5", "cooldwon_s = 5"), "cooldwon_s", "not a known key"),
    (lambda t: t.replace('identity_file = "key"', 'identity_file = "nokey"'), "identity_file", "does not exist"),
    (lambda t: t.replace("host_key = ", "#"), "host_key", "never auto-added"),
    (lambda t: t.replace('target = "rpi4"', 'target = "z80"'), "arch", "not a known preset"),
    (lambda t: t.replace('env = { TVM_NUM_THREADS = "4" }', 'env = { "A;B" = "4" }'), "env", "NAME"),
    (lambda t: t.replace('host = "10.0.0.11"', 'host = "h; rm -rf /"'), "host", "host name"),
])
def test_bad_field_is_one_clear_line(tmp_path, edit, field, words):
    with pytest.raises(InventoryError) as info:
        load_inventory(_write(tmp_path, edit(GOOD)))
    msg = str(info.value)
    assert "\n" not in msg and "'pi4-01'" in msg and f"'{field}'" in msg and words in msg, msg


def test_file_level_errors(tmp_path):
    with pytest.raises(InventoryError, match="not valid TOML"):
        load_inventory(_write(tmp_path, "[[board]\n"))
    with pytest.raises(InventoryError, match=r"no \[\[board\]\] tables"):
        load_inventory(_write(tmp_path, "[farm]\n"))
    with pytest.raises(InventoryError, match="used by two boards"):
        load_inventory(_write(tmp_path, GOOD + GOOD))
    with pytest.raises(InventoryError, match="'fallback' must be one of"):
        load_inventory(_write(tmp_path, '[farm]\nfallback = "pray"\n' + GOOD))
    with pytest.raises(InventoryError, match=r"\[farm\]: field 'quarantine_s' must be a number > 0"):
        load_inventory(_write(tmp_path, '[farm]\nquarantine_s = 0\n' + GOOD))
    with pytest.raises(InventoryError, match="cannot read"):
        load_inventory(tmp_path / "missing.toml")


def test_make_device_needs_inventory_and_known_names(tmp_path):
    with pytest.raises(ValueError, match="need an inventory"):
        make_device("ssh:pi4-01")
    inv = _write(tmp_path, GOOD)
    with pytest.raises(ValueError, match="no board named 'nope'"):
        make_device("ssh:nope", inventory=inv)
    with pytest.raises(ValueError, match="no board .* has tag 'x86'"):
        make_device("farm:x86", inventory=inv)
    with pytest.raises(ValueError, match="valid names"):
        make_device("telnet:pi")


def test_farm_filters_by_target(tmp_path):
    inv = _write(tmp_path, GOOD + GOOD.replace('"pi4-01"', '"pi5-01"').replace('target = "rpi4"', 'target = "rpi5"')
                 .replace('tags = ["rpi4", "lab-a"]', 'tags = ["lab-a"]'))
    farm = make_device("farm:lab-a", inventory=inv, target="rpi5")
    try:
        assert list(farm.boards) == ["pi5-01"]
    finally:
        farm.close()
    with pytest.raises(ValueError, match="target 'host'"):
        make_device("farm:lab-a", inventory=inv, target="host")
    farm = make_device("farm:lab-a", inventory=inv, target='{"kind": "llvm"}', fallback="sim")
    try:
        assert list(farm.boards) == ["pi4-01", "pi5-01"] and farm.fallback == "sim"
    finally:
        farm.close()


def test_quarantine_is_shared_through_the_lease_database(tmp_path):
    """A board quarantined by one process is skipped by a farm made later; clearing puts it back."""
    from devices.lease import LeaseManager

    inv = load_inventory(_write(tmp_path, GOOD + GOOD.replace('"pi4-01"', '"pi4-02"')))
    other = LeaseManager(inv.farm.lease_db, holder="nightly:42")
    other.quarantine("pi4-01", "3 consecutive failure(s), last device_lost: connection reset", for_s=600)
    farm = make_device("farm:lab-a", inventory=inv)
    try:
        assert farm.healthy() == ["pi4-02"]
        assert "nightly:42" in farm.quarantined["pi4-01"] and "connection reset" in farm.quarantined["pi4-01"]
    finally:
        farm.close()
    assert other.clear_quarantine("pi4-01") is True and other.clear_quarantine("pi4-01") is False
    farm = make_device("farm:lab-a", inventory=inv)
    try:
        assert farm.healthy() == ["pi4-01", "pi4-02"] and not farm.quarantined
    finally:
        farm.close()
