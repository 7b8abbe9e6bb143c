"""Argument types and actions shared by the ``hilprune`` subcommand modules.

Light on purpose (argparse only): every cli module may import it, so ``--help``
and the fast commands stay fast.
"""

from __future__ import annotations

import argparse

__all__ = ["DeviceAction", "nonneg_int", "pos_int"]


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0 (a count)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give a count >= 0")
    return value


def pos_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = nonneg_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


class DeviceAction(argparse.Action):
    """``--device``: stores the last value in ``dest`` (one-model bench) and all values in ``devices``."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        given = list(getattr(namespace, "devices", None) or [])
        setattr(namespace, "devices", [*given, values])
