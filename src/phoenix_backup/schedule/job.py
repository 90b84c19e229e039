"""What a scheduler runs: `phx schedule run` with this config, through the Python running now (so
a virtualenv's Phoenix keeps being used), with the few non-secret variables it needs."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Passed through to scheduled runs when set at install time. Never a passphrase itself: a
# crontab or unit file is no place for a secret (PHX_PASSPHRASE_FILE names a file instead).
# PYTHONPATH too: a Phoenix run from a source tree must find itself again under the scheduler.
PASS_THROUGH = (
    "PHX_PASSPHRASE_FILE",
    "PHX_CACHE_DIR",
    "GNUPGHOME",
    "XDG_CACHE_HOME",
    "XDG_DATA_HOME",
    "PYTHONPATH",
)
NAME = "phoenix-backup"


@dataclass(frozen=True)
class Job:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    home: Path

    @classmethod
    def for_config(cls, config_path: Path, env: Mapping[str, str], home: Path) -> Job:
        argv = (sys.executable, "-m", "phoenix_backup.cli.main", "schedule", "run", "--config", str(config_path))
        passed = tuple((k, env[k]) for k in PASS_THROUGH if env.get(k))
        return cls(argv, passed, home)

    @property
    def log_dir(self) -> Path:
        return self.home / ".argentos" / "backup" / "logs"
