"""Where Phoenix keeps what is not a cache: the platform data dir (DESIGN §1)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import platformdirs

from phoenix_backup.errors import ConfigError


def data_dir(env: Mapping[str, str]) -> Path:
    """Phoenix's data dir: PHX_DATA_DIR, else the platform's user data dir (XDG on Linux).

    It is always absolute, or a ConfigError: a relative one would move the pin file and the Git
    clones with the working directory. A relative XDG_DATA_HOME is ignored, as the XDG spec says."""
    xdg = env.get("XDG_DATA_HOME", "")
    if env.get("PHX_DATA_DIR"):
        path = Path(env["PHX_DATA_DIR"])
    elif Path(xdg).is_absolute():
        path = Path(xdg) / "phoenix"
    else:
        try:
            path = Path(platformdirs.user_data_dir("phoenix"))
        except RuntimeError:  # no HOME and no passwd entry: platformdirs cannot tell
            path = Path("~")
    if not path.is_absolute():
        raise ConfigError(
            f"Phoenix's data dir {str(path)!r} is not an absolute path (is HOME unset?); set PHX_DATA_DIR "
            "to an absolute path"
        )
    return path
