"""Pytest fixtures for the SSH/farm tests: a throw-away client key and loopback sshd boards.

Import the fixtures into a test module (``from tests.devices.farm_fixtures import *``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.devices.sshd_server import LoopbackSshd, board_toml, keygen

__all__ = ["client_key", "sshd_pair", "write_inventory", "board_toml", "needs_sshd"]

needs_sshd = pytest.mark.skipif(not Path("/usr/sbin/sshd").exists() or shutil.which("ssh-keygen") is None,
                                reason="Debian openssh-server is not installed (scripts/setup.sh installs it)")


@pytest.fixture(scope="session")
def client_key(tmp_path_factory) -> Path:
    """A throw-away ed25519 client key (the inventory's identity_file)."""
    d = tmp_path_factory.mktemp("clientkey")
    keygen(d / "client")
    return d / "client"


@pytest.fixture(scope="module")
def sshd_pair(tmp_path_factory, client_key):
    """Two real sshd servers on 127.0.0.1 (boards b1, b2); stopped at the end."""
    pub = " ".join(client_key.with_suffix(".pub").read_text().split()[:2])
    root = tmp_path_factory.mktemp("sshd")
    servers = []
    try:
        for n in ("s1", "s2"):
            servers.append(LoopbackSshd(root / n, pub).start())
        yield servers
    finally:
        for s in servers:
            s.stop()


def write_inventory(path: Path, boards: list[str], farm: str = "") -> Path:
    """Write an inventory of board tables (from ``board_toml``) plus a [farm] table."""
    path.write_text(f"[farm]\nlease_db = \"{path.parent / 'leases.sqlite'}\"\n{farm}\n\n" + "\n".join(boards))
    return path
