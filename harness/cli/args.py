"""Argument types and actions shared by the ``hilprune`` subcommand modules.

Light on purpose (argparse only): every cli module may import it, so ``--help``
and the fast commands stay fast.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["DeviceAction", "Parser", "nonneg_float", "nonneg_int", "pos_int"]


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}")
    return value


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0 (a count; 0 usually means "none")."""
    return _int_at_least(text, 0)


def pos_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def nonneg_float(text: str) -> float:
    """argparse type: a finite number >= 0 (seconds, usually)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{value:g} must be a finite number >= 0")
    return value


class DeviceAction(argparse.Action):
    """``--device``: stores the last value in ``dest`` (one-model bench) and all values in ``devices``."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        given = list(getattr(namespace, "devices", None) or [])
        setattr(namespace, "devices", [*given, values])


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are ONE line naming the fix, exit status 2.

    argparse's own ``error`` prints the whole usage block first; for a command
    with 30 options that buries the one line that matters. Subparsers made
    with ``add_subparsers`` are of this class too (argparse's default).
    """

    def error(self, message: str):  # noqa: D102 - argparse's hook
        print(f"{self.prog}: error: {message} (see: {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
