"""Who measured a latency: the identity that keys the latency cache (DESIGN.md §5).

Two boards of one model differ (thermal design, SD card, firmware), a board
whose CPU or core count changed is another machine, and a simulator profile
changes with its version: a latency is reused only for the same identity. The
identity is read from a daemon's hello (or a simulator's), which every
:class:`devices.base.Measurement` carries, so a stored row and a device about
to measure are compared the same way.
"""

from __future__ import annotations

__all__ = ["identity_of", "source_of"]


def source_of(hello: dict) -> str:
    """``simulated`` (a simulator's hello), ``emulated`` (a qemu board) or ``measured``."""
    if hello.get("simulator"):
        return "simulated"
    if hello.get("emulated"):
        return "emulated"
    return "measured"


def identity_of(hello: dict, default_name: str = "local") -> str:
    """A stable one-line identity of what answers with ``hello``.

    Measured (and emulated): ``measured|board=NAME|machine=M|cpu=MODEL/PART|cores=N`` where
    NAME is the inventory board (``hello["board"]``) or ``default_name@hostname`` for this
    machine. Simulated: ``simulated|profile=NAME|version=V``.

    Args:
        hello: a daemon's hello (``devices/daemon.py``) or a simulator's
            (:meth:`devices.sim.device.SimDevice.hello`).
        default_name: the device's name, used when the hello names no board.
    """
    source = source_of(hello)
    if source == "simulated":
        return f"simulated|profile={hello.get('profile')}|version={hello.get('profile_version')}"
    board = hello.get("board") or f"{default_name}@{hello.get('hostname')}"
    cpu = hello.get("cpu_model") or hello.get("cpu_part") or "?"
    return f"{source}|board={board}|machine={hello.get('machine')}|cpu={cpu}|cores={hello.get('cpu_count')}"
