"""Real OpenSSH servers on 127.0.0.1 acting as boards (test helper).

Each :class:`LoopbackSshd` runs ``/usr/sbin/sshd -D -e -f CONFIG`` with its own
throw-away host key, an authorized_keys holding a throw-away client key, and a
random free port. Nothing of root's ``~/.ssh`` or ``/etc/ssh`` is used
(``-f`` replaces the system config; host key, authorized keys and pid file are
in the temp dir). ``StrictModes no`` and ``UsePAM no`` so it runs anywhere as
root or as the user running the tests.
"""

from __future__ import annotations

import getpass
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

SSHD = "/usr/sbin/sshd"


def keygen(path: Path) -> str:
    """Make an ed25519 key pair at ``path`` (no passphrase); returns the public line ``TYPE BASE64``."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hilprune-test", "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def _sshd_version() -> tuple[int, int]:
    out = subprocess.run([SSHD, "-V"], capture_output=True, text=True, check=False)
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stdout + out.stderr)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackSshd:
    """One sshd on 127.0.0.1:port. ``host_key`` is its public key line."""

    def __init__(self, root: Path, client_pub: str, client_alive: bool = True) -> None:
        """``client_alive=False``: no ``ClientAliveInterval`` (sshd's default), so sshd itself never
        notices a silent client -- a partition is then the harness's to detect."""
        self.client_alive = client_alive
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.host_key = keygen(root / "host_ed25519")
        self.remote_tmp = root / "remote-tmp"  # the board's temp dirs live under pytest's tmp, never /tmp
        self.remote_tmp.mkdir(exist_ok=True)
        (root / "authorized_keys").write_text(client_pub + "\n")
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.client_pub = client_pub

    def start(self) -> "LoopbackSshd":
        try:
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege-separation dir sshd insists on
        except PermissionError:  # not root: sshd says why in its log if it needs it
            pass
        for _ in range(5):
            self.port = free_port()
            cfg = self.root / "sshd_config"
            cfg.write_text("\n".join([
                f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.root / 'host_ed25519'}",
                f"PidFile {self.root / 'sshd.pid'}", f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
                "StrictModes no", "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", f"AllowUsers {getpass.getuser()}",
                "Subsystem sftp internal-sftp", "LogLevel ERROR", "MaxStartups 100:30:200", "MaxSessions 100",
                *(["ClientAliveInterval 2", "ClientAliveCountMax 3"] if self.client_alive else []),
                # OpenSSH >= 9.8 penalises 127.0.0.1 after the wrong-key test; boards here must stay reachable
                *(["PerSourcePenalties no"] if _sshd_version() >= (9, 8) else []), "",
            ]))
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=open(self.root / "sshd.log", "ab"),
                                         start_new_session=True)
            deadline = time.monotonic() + 30  # generous: the loop ends at the banner
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                        if s.recv(64).startswith(b"SSH-"):
                            return self
                except OSError:
                    time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"sshd did not start; log:\n{(self.root / 'sshd.log').read_text()[-2000:]}")

    def kill_all(self) -> None:
        """SIGKILL the listener and every per-connection sshd (an sshd crash / board power loss)."""
        if self.proc is None:
            return
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            procs = []
        sshds = [p for p in procs if p.name().startswith("sshd")]
        for p in [psutil.Process(self.proc.pid), *sshds]:
            try:
                p.kill()
            except psutil.Error:
                pass
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None


def board_toml(name: str, sshd: LoopbackSshd, key: Path, *, tags=("loop",), python: str = sys.executable,
               extra: str = "", host_key: str | None = None) -> str:
    """One ``[[board]]`` table for a loopback board of the host's target."""
    return (f'[[board]]\nname = "{name}"\nhost = "127.0.0.1"\nport = {sshd.port}\nuser = "{getpass.getuser()}"\n'
            f'identity_file = "{key}"\nhost_key = "{host_key or sshd.host_key}"\ntarget = "host"\n'
            f'tags = {list(tags)!r}\npython = "{python}"\nenv = {{ TVM_NUM_THREADS = "1" }}\n'
            f'cooldown_s = 0.2\nconnect_timeout_s = 30\ncommand_timeout_s = 60\nremote_tmp = "{sshd.remote_tmp}"\n'
            f'{extra}\n').replace("'", '"')
