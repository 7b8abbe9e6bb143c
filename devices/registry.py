"""Device names to devices: ``make_device("local" | "sim:PROFILE" | "ssh:BOARD" | "farm:TAG")``.

The one place that knows every kind of device; it sits above them (``devices/base.py``
holds only the values and the interface they share), so no import runs in a circle.
"""

from __future__ import annotations

from typing import Any

from devices.base import Device

__all__ = ["make_device"]


def make_device(name: str, *, inventory: Any = None, fallback: str | None = None,
                target: str | None = None) -> Device:
    """Build a device from its name.

    Args:
        name: ``"local"`` (this machine, via a daemon subprocess),
            ``"sim:PROFILE"`` (the latency simulator with a profile name from
            ``devices/profiles/`` or a profile ``.json`` path; results are
            ``source="simulated"``), ``"ssh:BOARD"`` (one inventory board over
            SSH) or ``"farm:TAG"`` (any healthy inventory board with that tag).
        inventory: for ``ssh:``/``farm:``: an inventory TOML path or a loaded
            :class:`devices.inventory.Inventory`.
        fallback: for ``farm:``: ``"fail"`` or ``"sim"`` when no healthy board
            is left; None = the inventory's ``[farm] fallback``.
        target: for ``farm:``: only boards of this target preset (a JSON
            target dict does not filter; the artifact's arch is still checked).

    Raises:
        ValueError: any other name, an unknown simulator profile, a missing
            inventory, or an unknown board/tag; the message says which.
        devices.inventory.InventoryError: a bad inventory (one line).
    """
    if name == "local":
        from devices.local import LocalDevice

        return LocalDevice()
    if name.startswith("sim:"):
        from devices.sim.device import SimDevice

        return SimDevice(name[len("sim:"):], name=name)
    if name.startswith(("ssh:", "farm:")):
        from devices.farm import make_farm_device

        return make_farm_device(name, inventory, fallback=fallback, target=target)
    raise ValueError(f"unknown device {name!r}: valid names are 'local', 'sim:PROFILE', 'ssh:BOARD', 'farm:TAG' "
                     f"(the last two need an inventory)")
