"""Default locations shared by the commands (search, train, compile/bench/tune, nightly, devices)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """Cache root for baselines, artifacts and tuning databases: ``$HILPRUNE_CACHE`` or ``results/cache``."""
    return Path(os.environ.get("HILPRUNE_CACHE", "results/cache"))
