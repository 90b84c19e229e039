"""The macOS path: a launchd agent per job (`com.argentos.phoenix-backup`, `…phoenix-drill`) in
~/Library/LaunchAgents, loaded with `launchctl`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from phoenix_backup.dirs import fsync_dir, make_dirs, write_private
from phoenix_backup.errors import SchedulerUnavailable
from phoenix_backup.schedule.job import Job
from phoenix_backup.schedule.spec import ScheduleSpec

_TIMEOUT = 30


def label(name: str) -> str:
    return f"com.argentos.{name}"


def plist_path(home: Path, name: str) -> Path:
    return home / "Library" / "LaunchAgents" / f"{label(name)}.plist"


def render(spec: ScheduleSpec, job: Job) -> bytes:
    intervals = spec.launchd_intervals()
    doc: dict[str, object] = {
        "Label": label(job.name),
        "ProgramArguments": list(job.argv),
        "StartCalendarInterval": intervals[0] if len(intervals) == 1 else intervals,
        "EnvironmentVariables": dict(job.env),
        # The runner writes its own rotated log; launchd's output files would grow forever.
        "StandardOutPath": "/dev/null",
        "StandardErrorPath": "/dev/null",
        "ProcessType": "Background",
        "LowPriorityIO": True,
    }
    if not job.env:
        del doc["EnvironmentVariables"]
    import plistlib  # macOS's install only: not at every `phx status` (it loads an XML parser)

    return plistlib.dumps(doc)


def launchctl(args: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["launchctl", *args], capture_output=True, text=True, timeout=_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        return subprocess.CompletedProcess(["launchctl"], 127, "", str(exc))


def install(spec: ScheduleSpec, job: Job) -> str:
    path = plist_path(job.home, job.name)
    make_dirs(path.parent)  # 0700, whatever the umask: a folder others could write is theirs to plant a job in
    domain = f"gui/{os.getuid()}"
    launchctl(["bootout", domain, str(path)])  # an older version, if loaded
    write_private(path, render(spec, job))  # atomic and durable: never a half-written plist
    proc = launchctl(["bootstrap", domain, str(path)])
    if proc.returncode != 0:
        raise SchedulerUnavailable(
            f"wrote {path} but `launchctl bootstrap {domain}` failed ({proc.stderr.strip() or proc.returncode}); "
            f"load it from a logged-in session with `launchctl bootstrap {domain} {path}`"
        )
    return "launchd"


def remove(home: Path, name: str) -> bool:
    path = plist_path(home, name)
    if not path.exists():
        return False
    launchctl(["bootout", f"gui/{os.getuid()}", str(path)])
    path.unlink()
    fsync_dir(path.parent)
    return True


def installed(home: Path, name: str) -> dict[str, object] | None:
    """The agent's plist, and whether launchd has it loaded (`active`)."""
    path = plist_path(home, name)
    if not path.exists():
        return None
    loaded = launchctl(["print", f"gui/{os.getuid()}/{label(name)}"]).returncode == 0
    return {"plist": str(path), "active": "active" if loaded else "not loaded"}
