"""Where Phoenix keeps what is not a cache: the platform data dir (DESIGN §1)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import platformdirs


def data_dir(env: Mapping[str, str]) -> Path:
    """Phoenix's data dir: PHX_DATA_DIR, else the platform's user data dir (XDG on Linux)."""
    if env.get("PHX_DATA_DIR"):
        return Path(env["PHX_DATA_DIR"])
    if env.get("XDG_DATA_HOME"):
        return Path(env["XDG_DATA_HOME"]) / "phoenix"
    return Path(platformdirs.user_data_dir("phoenix"))
