"""Where things live: the repository root, the shared reference data, the user cache."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def shared_data_dir() -> Path:
    """``$RORO_SHARED_DATA`` if set, else ``../shared/data`` next to the repository (may not exist)."""
    env = os.environ.get("RORO_SHARED_DATA")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data").resolve()


def cache_dir() -> Path:
    """``$RORO_CACHE`` if set, else ``~/.cache/roro_jax`` (outside the repository)."""
    env = os.environ.get("RORO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "roro_jax"
