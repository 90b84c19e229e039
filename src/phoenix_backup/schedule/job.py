"""What a scheduler runs: `phx schedule run` (the backup job) or `phx schedule run --drill` (the drill
job) with this config, through the Python running now (so a virtualenv's Phoenix keeps being used),
with the few non-secret variables it needs. Each job has its own name: `phoenix-backup` and
`phoenix-drill` name its crontab block, systemd units and launchd label."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from phoenix_backup.errors import UsageError, shown

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


def schedulable(text: str, what: str) -> str:
    """`text` (a config path, the Python's path, a passed-through variable), unchanged, as a
    scheduler's file may carry it: a crontab line ends at a newline, a systemd unit line too, a
    plist takes no control character, and none takes bytes that are not UTF-8. Such a name would
    cut the line and make the rest another crontab entry or unit setting (a command run as you), so
    it is refused with one error instead."""
    bad = any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) < 0xE000 for c in text)
    if bad:
        raise UsageError(
            f"{what} {shown(text)} holds a control character or a byte that is not UTF-8, which a crontab line, "
            "systemd unit or launchd plist cannot carry exactly; rename it (or move the config) and install again"
        )
    return text


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
        argv = tuple(schedulable(a, "the path") for a in argv)
        passed = tuple((k, schedulable(env[k], k)) for k in PASS_THROUGH if env.get(k))
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
