"""Where things are: the repository, the binaries, the virtual environment's tools."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")


def binary(name: str, profile: str = "debug") -> Path:
    """order-worker / spot-sim: $ORDER_WORKER_BIN / $SPOT_SIM_BIN, else ${CARGO_TARGET_DIR:-target}/<profile>/."""
    env = {"order-worker": "ORDER_WORKER_BIN", "spot-sim": "SPOT_SIM_BIN"}.get(name)
    if env and os.environ.get(env):
        return Path(os.environ[env])
    return target_dir() / profile / name


def venv_bin(name: str) -> Path:
    """A tool of the project's virtual environment (ministack, aws, python), else the name (found on PATH)."""
    p = REPO / ".venv" / "bin" / name
    return p if p.exists() else Path(name)
