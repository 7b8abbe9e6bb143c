"""Farm inventory: what each board *is* (pure data, validated on load).

An inventory is a TOML file (read with :mod:`tomllib`) with one ``[[board]]``
table per board and an optional ``[farm]`` table. The board shape is a
contract (issue 7); more keys may be added here, unknown keys are refused so a
typo never silently changes a lab's setup::

    [farm]                       # optional; every key has a default
    lease_db = "farm.leases.sqlite"   # controller-side lease database
    lease_ttl_s = 60             # a lease not renewed for this long expires
    max_failures = 3             # consecutive failures -> board quarantined
    quarantine_s = 1800          # how long other runs on this controller skip it too
    fallback = "fail"            # "fail" | "sim" when no healthy board is left
    dead_link_s = 30             # a board link silent this long is dead (both sides act)
    lease_wait_s = 300           # farm:TAG waits this long for a leased board (0: fail at once)

    [[board]]
    name = "pi4-01"
    host = "10.0.0.11"
    port = 22
    user = "bench"
    identity_file = "keys/farm_ed25519"
    host_key = "ssh-ed25519 AAAA..."      # or: known_hosts = "farm_known_hosts"
    target = "rpi4"
    tags = ["rpi4", "lab-a"]
    python = "/usr/bin/python3"
    env = { TVM_NUM_THREADS = "4" }
    cooldown_s = 5
    # optional limits (seconds): connect_timeout_s = 10, command_timeout_s = 60,
    # upload_timeout_s = 120, session_limit_s = 21600, keepalive_s = 5,
    # remote_tmp = "/tmp", arch = "aarch64" (default: from the target preset),
    # emulated = false (true: `python` runs under qemu-user; the arch comes from
    # the daemon's hello, not `uname -m`, and timings are labelled "emulated")

Relative paths (``identity_file``, ``known_hosts``, ``lease_db``) are taken
relative to the inventory file. Every error is an :class:`InventoryError`
whose message is ONE line naming the file, the board and the field.

This module never imports ``harness/``: the arch of a target preset is the
small table :data:`PRESET_ARCH` (kept in step with ``harness/compile/targets.py``).
"""

from __future__ import annotations

import platform
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Board", "FarmSettings", "Inventory", "InventoryError", "PRESET_ARCH", "load_inventory"]

#: Target preset -> CPU architecture of its libraries ("host": this machine's).
PRESET_ARCH: dict[str, str] = {
    "rpi4": "aarch64",
    "rpi5": "aarch64",
    "jetson-nano": "aarch64",
    "jetson-orin-nano": "aarch64",
}
ARCHES = ("x86_64", "aarch64")
FALLBACKS = ("fail", "sim")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOST_RE = re.compile(r"^[A-Za-z0-9_.:\[\]-]+$")


class InventoryError(ValueError):
    """A bad inventory: the message is one line naming the board and the field."""


def host_arch() -> str:
    """This machine's architecture, normalised to ``x86_64`` or ``aarch64``."""
    return normalise_arch(platform.machine())


def normalise_arch(machine: str) -> str:
    """``uname -m`` spelling -> ``x86_64`` / ``aarch64`` (``arm64``, ``amd64`` mapped)."""
    m = machine.strip().lower()
    return {"arm64": "aarch64", "amd64": "x86_64", "x64": "x86_64"}.get(m, m)


@dataclass(frozen=True, slots=True)
class Board:
    """One board of the farm (immutable; built only by :func:`load_inventory`).

    Attributes:
        name: unique board name (letters, digits, ``_.-``); ``ssh:NAME``.
        host, port, user: SSH endpoint.
        identity_file: private key file (absolute path).
        host_key: pinned public host key ``"TYPE BASE64"``, or None.
        known_hosts: a farm known_hosts file (absolute), or None; exactly one
            of ``host_key`` and ``known_hosts`` is set.
        target: target preset name (``rpi4``, ``host``, ...).
        arch: CPU architecture the board runs (``x86_64``/``aarch64``).
        tags: tags for ``farm:TAG``.
        python: absolute path of the Python interpreter on the board.
        env: extra environment of the daemon on the board.
        cooldown_s: pause before re-measuring after a throttled sample.
        connect_timeout_s: TCP connect, banner and auth timeouts, each.
        command_timeout_s: limit of every short remote command.
        upload_timeout_s: limit of one artifact upload (all files).
        session_limit_s: hard limit of one remote daemon's life.
        keepalive_s: SSH keepalive interval.
        remote_tmp: directory on the board for the per-run temp dirs.
        emulated: the board's Python runs under qemu-user: functional checks
            only; measurements say ``source="emulated"`` (never a latency).
        dead_link_s: seconds without a sign of life after which the link is
            dead: the controller drops the session (``device_lost``) and the
            board's watchdog kills the daemon group and removes the temp dir
            (``[farm] dead_link_s``; a board may override it).
    """

    name: str
    host: str
    port: int
    user: str
    identity_file: Path
    host_key: str | None
    known_hosts: Path | None
    target: str
    arch: str
    tags: tuple[str, ...]
    python: str
    env: tuple[tuple[str, str], ...] = ()
    cooldown_s: float = 5.0
    connect_timeout_s: float = 10.0
    command_timeout_s: float = 60.0
    upload_timeout_s: float = 120.0
    session_limit_s: float = 6 * 3600.0
    keepalive_s: float = 5.0
    remote_tmp: str = "/tmp"
    emulated: bool = False
    dead_link_s: float = 30.0

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


@dataclass(frozen=True, slots=True)
class FarmSettings:
    """The optional ``[farm]`` table.

    Attributes:
        lease_db: SQLite file of the controller-side leases (absolute).
        lease_ttl_s: lease expiry; a heartbeat renews it every ttl/3.
        max_failures: consecutive failures that quarantine a board.
        quarantine_s: seconds a quarantine is shared through ``lease_db`` with
            the controller's other processes (the run that found the fault
            skips the board until it ends); ``hilprune devices check`` clears
            it early when the board answers again.
        fallback: ``"fail"`` or ``"sim"`` when no healthy board is left.
        dead_link_s: default of every board's ``dead_link_s`` (seconds, <= 300).
        lease_wait_s: how long (seconds) a ``farm:TAG`` device waits for a
            board leased by another holder when no board of the tag is free.
    """

    lease_db: Path
    lease_ttl_s: float = 60.0
    max_failures: int = 3
    quarantine_s: float = 1800.0
    fallback: str = "fail"
    dead_link_s: float = 30.0
    lease_wait_s: float = 300.0


@dataclass(frozen=True, slots=True)
class Inventory:
    """A validated inventory: boards in file order plus farm settings."""

    path: Path
    boards: tuple[Board, ...]
    farm: FarmSettings = field(default=None)  # type: ignore[assignment]

    def board(self, name: str) -> Board:
        """The board called ``name``.

        Raises:
            InventoryError: no such board (the message lists the names).
        """
        for b in self.boards:
            if b.name == name:
                return b
        raise InventoryError(f"{self.path}: no board named {name!r}; boards: "
                             f"{', '.join(b.name for b in self.boards) or '(none)'}")

    def tagged(self, tag: str) -> tuple[Board, ...]:
        """Boards carrying ``tag`` (in file order)."""
        return tuple(b for b in self.boards if tag in b.tags)


# --------------------------------------------------------------------- loading

_BOARD_KEYS = {
    "name", "host", "port", "user", "identity_file", "host_key", "known_hosts", "target", "tags",
    "python", "env", "cooldown_s", "connect_timeout_s", "command_timeout_s", "upload_timeout_s",
    "session_limit_s", "keepalive_s", "remote_tmp", "arch", "emulated", "dead_link_s",
}
_FARM_KEYS = {"lease_db", "lease_ttl_s", "max_failures", "quarantine_s", "fallback", "dead_link_s",
              "lease_wait_s"}
MAX_DEAD_LINK_S = 300.0


class _Fields:
    """Typed getters for one TOML table that raise one-line InventoryErrors."""

    def __init__(self, where: str, table: dict[str, Any]) -> None:
        self.where = where
        self.t = table

    def err(self, key: str, why: str) -> InventoryError:
        return InventoryError(f"{self.where}: field {key!r} {why}")

    def str(self, key: str, default: Any = ..., pattern: re.Pattern | None = None, hint: str = "") -> Any:
        if key not in self.t:
            if default is ...:
                raise self.err(key, "is missing")
            return default
        v = self.t[key]
        if not isinstance(v, str) or not v.strip():
            raise self.err(key, f"must be a non-empty string, got {v!r}")
        if pattern is not None and not pattern.match(v):
            raise self.err(key, f"{hint}, got {v!r}")
        return v

    def num(self, key: str, default: float, minimum: float = 0.0, strict: bool = True) -> float:
        v = self.t.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > minimum if strict else v >= minimum):
            raise self.err(key, f"must be a number {'>' if strict else '>='} {minimum:g}, got {v!r}")
        return float(v)

    def int(self, key: str, default: Any, lo: int, hi: int) -> int:
        if key not in self.t and default is ...:
            raise self.err(key, "is missing")
        v = self.t.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.err(key, f"must be an integer in {lo}..{hi}, got {v!r}")
        return v

    def unknown(self, allowed: set[str]) -> None:
        extra = sorted(set(self.t) - allowed)
        if extra:
            raise self.err(extra[0], f"is not a known key (known: {', '.join(sorted(allowed))})")


def _path(base: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else (base / p)


def _dead_link(f: _Fields, default: float) -> float:
    v = f.num("dead_link_s", default)
    if not 1.0 <= v <= MAX_DEAD_LINK_S:
        raise f.err("dead_link_s", f"must be a number of seconds in 1..{MAX_DEAD_LINK_S:g}, got {v:g}")
    return v


def _board(f: _Fields, base: Path, dead_link_s: float = 30.0) -> Board:
    f.unknown(_BOARD_KEYS)
    host_key = f.str("host_key", None)
    known_hosts = f.str("known_hosts", None)
    if (host_key is None) == (known_hosts is None):
        raise f.err("host_key", "or 'known_hosts' is required (exactly one of them): host keys are never "
                                "auto-added")
    if host_key is not None:
        parts = host_key.split()
        if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-")):
            raise f.err("host_key", f"must be 'TYPE BASE64' as in a .pub file (e.g. 'ssh-ed25519 AAAA...'), "
                                    f"got {host_key[:40]!r}")
        import base64
        import binascii

        try:
            blob = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raise f.err("host_key", "has a key part that is not base64") from None
        try:
            import paramiko

            paramiko.PKey.from_type_string(parts[0], blob)
        except Exception as exc:  # noqa: BLE001 - paramiko raises several types for a bad key
            raise f.err("host_key", f"is not a valid {parts[0]} public key ({exc}); copy the line from the "
                                    f"board's /etc/ssh/ssh_host_*_key.pub") from None
    kh = _path(base, known_hosts) if known_hosts is not None else None
    if kh is not None and not kh.is_file():
        raise f.err("known_hosts", f"file {kh} does not exist; create it with `ssh-keyscan -p PORT HOST > {kh}` "
                                   "(checking the key out of band), or pin the board's key with host_key")
    ident = _path(base, f.str("identity_file"))
    if not ident.is_file():
        raise f.err("identity_file", f"file {ident} does not exist; point it at the private key that logs in to the "
                                     f"board, or make one (`ssh-keygen -t ed25519 -N '' -f {ident}`) and append its "
                                     ".pub to the board's ~/.ssh/authorized_keys")
    target = f.str("target", pattern=_NAME_RE, hint="must be a target preset name such as 'rpi4' or 'host'")
    arch_default = PRESET_ARCH.get(target, host_arch() if target == "host" else None)
    arch = f.str("arch", arch_default)
    if arch is None:
        raise f.err("arch", f"is needed for target {target!r}, which is not a known preset "
                            f"({', '.join(['host', *PRESET_ARCH])})")
    if normalise_arch(arch) not in ARCHES:
        raise f.err("arch", f"must be one of {ARCHES}, got {arch!r}")
    tags = f.t.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and _NAME_RE.match(t) for t in tags):
        raise f.err("tags", f"must be a list of names (letters, digits, _.-), got {tags!r}")
    python = f.str("python", "/usr/bin/python3")
    if not python.startswith("/"):
        raise f.err("python", f"must be an absolute path on the board, got {python!r}")
    env = f.t.get("env", {})
    if not isinstance(env, dict):
        raise f.err("env", f"must be a table of NAME = \"value\", got {env!r}")
    for k, v in env.items():
        if not _ENV_RE.match(k) or not isinstance(v, str):
            raise f.err("env", f"entry {k!r} must be NAME = \"string\" (NAME: letters, digits, _)")
    emulated = f.t.get("emulated", False)
    if not isinstance(emulated, bool):
        raise f.err("emulated", f"must be true or false, got {emulated!r}")
    remote_tmp = f.str("remote_tmp", "/tmp")
    if not remote_tmp.startswith("/"):
        raise f.err("remote_tmp", f"must be an absolute path, got {remote_tmp!r}")
    return Board(
        name=f.str("name", pattern=_NAME_RE, hint="must be 1-64 letters, digits, '_', '.', '-'"),
        host=f.str("host", pattern=_HOST_RE, hint="must be a host name or IP address"),
        port=f.int("port", 22, 1, 65535),
        user=f.str("user", pattern=re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"), hint="must be a user name"),
        identity_file=ident, host_key=host_key, known_hosts=kh, target=target,
        arch=normalise_arch(arch), tags=tuple(tags), python=python,
        env=tuple(sorted(env.items())),
        cooldown_s=f.num("cooldown_s", 5.0, strict=False),
        connect_timeout_s=f.num("connect_timeout_s", 10.0),
        command_timeout_s=f.num("command_timeout_s", 60.0),
        upload_timeout_s=f.num("upload_timeout_s", 120.0),
        session_limit_s=f.num("session_limit_s", 6 * 3600.0),
        keepalive_s=f.num("keepalive_s", 5.0),
        remote_tmp=remote_tmp.rstrip("/") or "/",
        emulated=emulated,
        dead_link_s=_dead_link(f, dead_link_s),
    )


def load_inventory(path: str | Path) -> Inventory:
    """Read and validate an inventory file.

    Args:
        path: the TOML file.

    Returns:
        The :class:`Inventory`.

    Raises:
        InventoryError: unreadable file, bad TOML, or a missing/wrong field
            (one line: file, board, field, what is expected).
    """
    path = Path(path).expanduser().resolve()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise InventoryError(f"inventory {path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InventoryError(f"inventory {path}: not a text file (not UTF-8); give a TOML inventory") from None
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"inventory {path}: not valid TOML: {exc}") from None
    base = path.parent
    extra = sorted(set(data) - {"board", "farm"})
    if extra:
        raise InventoryError(f"inventory {path}: unknown top-level key {extra[0]!r} (expected [[board]] and [farm])")
    farm_raw = data.get("farm", {})
    if not isinstance(farm_raw, dict):
        raise InventoryError(f"inventory {path}: [farm] must be a table")
    ff = _Fields(f"inventory {path}: [farm]", farm_raw)
    ff.unknown(_FARM_KEYS)
    fallback = ff.str("fallback", "fail")
    if fallback not in FALLBACKS:
        raise ff.err("fallback", f"must be one of {FALLBACKS}, got {fallback!r}")
    lease_db = _path(base, ff.str("lease_db", f"{path.stem}.leases.sqlite"))
    if lease_db.is_dir():
        raise ff.err("lease_db", f"is a directory ({lease_db}); name an SQLite file, e.g. "
                                 f"'{path.stem}.leases.sqlite'")
    farm = FarmSettings(
        lease_db=lease_db,
        lease_ttl_s=ff.num("lease_ttl_s", 60.0),
        max_failures=ff.int("max_failures", 3, 1, 1000),
        quarantine_s=ff.num("quarantine_s", 1800.0),
        fallback=fallback,
        dead_link_s=_dead_link(ff, 30.0),
        lease_wait_s=ff.num("lease_wait_s", 300.0, strict=False),
    )
    raw_boards = data.get("board")
    if not isinstance(raw_boards, list) or not raw_boards:
        raise InventoryError(f"inventory {path}: no [[board]] tables")
    boards: list[Board] = []
    for i, raw in enumerate(raw_boards):
        label = raw.get("name") if isinstance(raw, dict) and isinstance(raw.get("name"), str) else f"#{i + 1}"
        if not isinstance(raw, dict):
            raise InventoryError(f"inventory {path}: board {label}: must be a [[board]] table")
        boards.append(_board(_Fields(f"inventory {path}: board {label!r}", raw), base, farm.dead_link_s))
    seen: set[str] = set()
    for b in boards:
        if b.name in seen:
            raise InventoryError(f"inventory {path}: board {b.name!r}: field 'name' is used by two boards")
        seen.add(b.name)
    return Inventory(path=path, boards=tuple(boards), farm=farm)
