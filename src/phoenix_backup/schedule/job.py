"""What a scheduler runs: `phx schedule run` (the backup job) or `phx schedule run --drill` (the drill
job) with this config, through the Python running now (so a virtualenv's Phoenix keeps being used),
with the few non-secret variables it needs. Each job has its own name: `phoenix-backup` and
`phoenix-drill` name its crontab block, systemd units and launchd label."""

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
# The scheduled jobs: a backup, and a restore drill of the latest snapshot (`phx drill`).
KINDS = ("backup", "drill")


def job_name(kind: str) -> str:
    """`phoenix-backup` or `phoenix-drill`."""
    return f"phoenix-{kind}"


@dataclass(frozen=True)
class Job:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    home: Path
    kind: str = "backup"  # one of KINDS

    @classmethod
    def for_config(cls, config_path: Path, env: Mapping[str, str], home: Path, kind: str = "backup") -> Job:
        flags = ("--drill",) if kind == "drill" else ()
        argv = (
            sys.executable,
            "-m",
            "phoenix_backup.cli.main",
            "schedule",
            "run",
            *flags,
            "--config",
            str(config_path),
        )
        passed = tuple((k, env[k]) for k in PASS_THROUGH if env.get(k))
        return cls(argv, passed, home, kind)

    @property
    def name(self) -> str:
        return job_name(self.kind)

    @property
    def title(self) -> str:
        """What the job does, for unit descriptions."""
        return "Phoenix restore drill" if self.kind == "drill" else "Phoenix backup"

    @property
    def log_dir(self) -> Path:
        return self.home / ".argentos" / "backup" / "logs"
