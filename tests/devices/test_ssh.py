"""devices/ssh.py against real OpenSSH servers on 127.0.0.1 (boards of the host's target)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import psutil
import pytest

from devices.base import DeviceUnavailable, MeasureConfig, MeasureErrorKind
from devices.inventory import load_inventory
from devices.local import LocalDevice
from devices.ssh import SshDevice
from tests.devices.farm_fixtures import board_toml, client_key, needs_sshd, sshd_pair, write_inventory  # noqa: F401
from tests.devices.sshd_server import keygen

pytestmark = [needs_sshd, pytest.mark.slow]
FAST = dict(warmup=2, number=5, repeat=5, min_repeat_ms=0, timeout_s=60)
# for comparing latencies: blocks of >= 10 ms, so a preemption on a loaded machine moves a block by
# a fraction rather than many times over (a block of 5 calls of the tiny model lasts ~0.1 ms)
TIMED = dict(warmup=2, number=0, repeat=5, min_repeat_ms=10, timeout_s=60)


def _board(tmp_path, sshd, key, name="b1", **kw):
    inv = write_inventory(tmp_path / f"{name}.toml", [board_toml(name, sshd, key, **kw)])
    return load_inventory(inv).board(name)


def _procs_with(text: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(text in a for a in p.info["cmdline"] or ()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _group_alive(pgid: int) -> list[int]:
    alive = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return alive


def _wait_until(cond, timeout_s=30.0):  # generous: returns as soon as cond() holds
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def test_ssh_measure_matches_local(tmp_path, sshd_pair, client_key, tiny_artifact, tiny_expected):
    import numpy as np

    dev = SshDevice(_board(tmp_path, sshd_pair[0], client_key))
    local = LocalDevice()
    try:
        hello = dev.hello()
        assert hello["protocol"] == 1 and hello["machine"] == "x86_64" and hello["board"] == "b1"
        tmp = dev.session.tmp
        assert tmp.startswith(f"{sshd_pair[0].remote_tmp}/hilprune-run.") and Path(tmp, "daemon.py").is_file()
        r = dev.measure(tiny_artifact, MeasureConfig(**TIMED))
        assert r.ok, r.error
        r2 = dev.measure(tiny_artifact, MeasureConfig(backend="onnxruntime", **FAST))
        assert r2.ok, r2.error
        assert dev.session.hello["pid"] == hello["pid"]  # one daemon session for many measurements
        # one thread like the board (TVM_NUM_THREADS=1): a 2-thread pool on a loaded 2-core machine waits
        # for its descheduled worker at every operator and can run many times slower
        lo = local.measure(tiny_artifact, MeasureConfig(num_threads=1, **TIMED))
        assert lo.ok, lo.error
        m = r.value
        assert m.device == "ssh:b1" and m.source == "measured" and m.output_sha256 == lo.value.output_sha256
        np.testing.assert_allclose(m.output_head, tiny_expected.reshape(-1), rtol=1e-5, atol=1e-5)
        ratio = m.stats.p50_ms / lo.value.stats.p50_ms
        assert 0.1 < ratio < 10, (m.stats.p50_ms, lo.value.stats.p50_ms)  # same order
        assert "loadavg" in m.device_state_before and "loadavg" in m.device_state_after
    finally:
        dev.close()
        local.close()
    assert not Path(tmp).exists() and not _procs_with(tmp)  # temp dir removed, daemon gone


def test_arch_mismatch_never_uploads(tmp_path, sshd_pair, client_key, tiny_artifact):
    arm = tmp_path / "arm"
    shutil.copytree(tiny_artifact, arm)
    manifest = json.loads((arm / "manifest.json").read_text())
    (arm / "manifest.json").write_text(json.dumps({**manifest, "arch": "aarch64"}))
    dev = SshDevice(_board(tmp_path, sshd_pair[0], client_key))
    try:
        r = dev.measure(arm, MeasureConfig(**FAST))
        assert r.error.kind is MeasureErrorKind.LOAD_FAILED
        assert "built for aarch64 but board 'b1' is x86_64" in r.error.message
        assert dev.session is None  # refused before connecting
    finally:
        dev.close()


def test_changed_host_key_refused(tmp_path, sshd_pair, client_key, tiny_artifact):
    other = sshd_pair[1].host_key  # a valid key, but not this server's: a "changed" host key
    dev = SshDevice(_board(tmp_path, sshd_pair[0], client_key, host_key=other))
    try:
        r = dev.measure(tiny_artifact, MeasureConfig(**FAST))
        assert r.error.kind is MeasureErrorKind.DEVICE_LOST and "HOST KEY CHANGED" in r.error.message
        assert "refusing to connect" in r.error.message and dev.last_fatal
        # both keys as OpenSSH fingerprints (the base64 prefix every ed25519 key shares said nothing)
        import subprocess

        def lf(pub: Path) -> str:
            return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                                  check=True).stdout.split()[1]

        assert lf(sshd_pair[0].root / "host_ed25519.pub") in r.error.message, r.error.message
        assert lf(sshd_pair[1].root / "host_ed25519.pub") in r.error.message, r.error.message
        assert "AAAAC3NzaC1lZDI1NTE5" not in r.error.message
        with pytest.raises(DeviceUnavailable, match="HOST KEY CHANGED"):
            dev.hello()
    finally:
        dev.close()


def test_wrong_client_key_is_a_clear_auth_error(tmp_path, sshd_pair, tiny_artifact):
    keygen(tmp_path / "stranger")
    dev = SshDevice(_board(tmp_path, sshd_pair[0], tmp_path / "stranger"))
    try:
        with pytest.raises(DeviceUnavailable) as info:
            dev.hello()
        msg = str(info.value)
        assert "authentication failed" in msg and "stranger" in msg and "authorized_keys" in msg, msg
    finally:
        dev.close()


def test_hanging_daemon_killed_at_limit(tmp_path, sshd_pair, client_key):
    dev = SshDevice(_board(tmp_path, sshd_pair[0], client_key))
    try:
        pgid = dev.hello()["pid"]  # the daemon leads its own process group
        tmp = dev.session.tmp
        assert os.getpgid(pgid) == pgid and os.getsid(pgid) == pgid  # own session (setsid)
        t0 = time.monotonic()
        reply = dev.call("sleep", timeout_s=2.0, s=120, child=True)  # test-only op: the child sleeps too
        # killed at the 2 s limit, not after the 120 s sleep (the bound leaves room for a loaded machine's cleanup)
        assert reply.error.kind is MeasureErrorKind.TIMEOUT and time.monotonic() - t0 < 30
        assert _wait_until(lambda: not _group_alive(pgid)), _group_alive(pgid)
        assert _wait_until(lambda: not _procs_with(tmp)) and not Path(tmp).exists()
        assert dev.session is None  # the next call opens a fresh session
        assert dev.hello()["pid"] != pgid
    finally:
        dev.close()


def test_dead_connection_kills_the_daemon(tmp_path, sshd_pair, client_key):
    dev = SshDevice(_board(tmp_path, sshd_pair[0], client_key))
    try:
        pgid = dev.hello()["pid"]
        dev.session.client.get_transport().sock.close()  # the controller's TCP connection dies abruptly
        assert _wait_until(lambda: not _group_alive(pgid), 30), _group_alive(pgid)
    finally:
        dev.close()


def test_inventory_fields_cannot_inject_shell(tmp_path, sshd_pair, client_key, tiny_artifact):
    pwned = tmp_path / "pwned"
    dev = SshDevice(_board(tmp_path, sshd_pair[0], client_key, python=f"/no/python; touch {pwned}"))
    try:
        r = dev.measure(tiny_artifact, MeasureConfig(**FAST))
        assert r.error.kind is MeasureErrorKind.DAEMON_START and "did not say hello" in r.error.message
        assert not pwned.exists()
    finally:
        dev.close()


def test_throttled_sample_is_invalid_and_repeated_after_cooldown(tmp_path, sshd_pair, client_key, tiny_artifact):
    fake = tmp_path / "bin"
    fake.mkdir()
    count = tmp_path / "calls"
    # a Pi's vcgencmd that reports "throttled now" (bit 2) for the first measurement (2 calls), then 0
    (fake / "vcgencmd").write_text(f"#!/bin/sh\nn=$(($(cat {count} 2>/dev/null || echo 0)+1)); echo $n > {count}\n"
                                   f"if [ $n -le 2 ]; then echo throttled=0x4; else echo throttled=0x0; fi\n")
    (fake / "vcgencmd").chmod(0o755)
    inv = tmp_path / "thr.toml"
    inv.write_text(board_toml("b1", sshd_pair[0], client_key).replace(
        'env = { TVM_NUM_THREADS = "1" }', f'env = {{ TVM_NUM_THREADS = "1", PATH = "{fake}:/usr/bin:/bin" }}'))
    board = load_inventory(inv).board("b1")
    dev = SshDevice(board)
    try:
        t0 = time.monotonic()
        # max_cov huge: only throttling may cause a re-measurement here, not the CoV of a loaded CI machine
        r = dev.measure(tiny_artifact, MeasureConfig(max_cov=1e9, **FAST))
        assert r.ok, r.error
        assert r.value.remeasured == 1 and r.value.device_state_after["throttled"] == 0
        assert time.monotonic() - t0 >= board.cooldown_s
        count.write_text("-100")  # throttled from now on
        r = dev.measure(tiny_artifact, MeasureConfig(max_cov=1e9, max_remeasure=1, **FAST))
        assert r.error.kind is MeasureErrorKind.UNSTABLE and "throttled in all 2" in r.error.message
    finally:
        dev.close()


def test_watchdog_hard_limit(tmp_path, sshd_pair, client_key):
    # 5 s: each session's daemon must start and say hello within the limit, also on a loaded machine
    dev = SshDevice(_board(tmp_path, sshd_pair[0], client_key, extra="session_limit_s = 5"))
    try:
        pgid = dev.hello()["pid"]
        assert _wait_until(lambda: not _group_alive(pgid), 30), "the daemon outlived session_limit_s"
        # near the limit the device starts a fresh session instead of sending a request to a dead daemon
        assert dev.hello()["pid"] != pgid
    finally:
        dev.close()


def test_uploaded_artifacts_are_bounded_on_the_board(tmp_path, sshd_pair, client_key, tiny_artifact, monkeypatch):
    import devices.ssh as ssh_mod

    monkeypatch.setattr(ssh_mod, "MAX_UPLOADED_ARTIFACTS", 2)
    arts = []
    for i in range(3):  # three distinct manifests: three uploads
        art = tmp_path / f"a{i}"
        shutil.copytree(tiny_artifact, art)
        m = json.loads((art / "manifest.json").read_text())
        (art / "manifest.json").write_text(json.dumps({**m, "note": i}))
        arts.append(art)
    dev = SshDevice(_board(tmp_path, sshd_pair[0], client_key))
    try:
        for art in arts:
            assert dev.measure(art, MeasureConfig(**FAST)).ok
        remote = Path(dev.session.tmp) / "a"
        assert len(list(remote.iterdir())) == 2  # the oldest upload was removed from the board
        assert dev.measure(arts[0], MeasureConfig(**FAST)).ok  # and is uploaded again when needed
    finally:
        dev.close()
