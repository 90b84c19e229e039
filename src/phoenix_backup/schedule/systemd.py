"""The systemd path: a user service and timer in ~/.config/systemd/user (or $XDG_CONFIG_HOME),
enabled with `systemctl --user`. `Persistent=true` runs a backup missed while the machine was off
as soon as it is on again."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from phoenix_backup.errors import SchedulerUnavailable
from phoenix_backup.schedule.job import NAME, Job
from phoenix_backup.schedule.spec import ScheduleSpec

SERVICE = f"{NAME}.service"
TIMER = f"{NAME}.timer"
_TIMEOUT = 30


def unit_dir(env: Mapping[str, str], home: Path) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(home / ".config")
    return Path(base) / "systemd" / "user"


def _systemctl(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["systemctl", "--user", *args], capture_output=True, text=True, timeout=_TIMEOUT, env=dict(env)
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return subprocess.CompletedProcess(["systemctl"], 127, "", str(exc))


def available(env: Mapping[str, str]) -> str | None:
    """None when a user systemd instance answers, else why not."""
    proc = _systemctl(["show-environment"], env)
    if proc.returncode == 0:
        return None
    reason = (proc.stderr.strip().splitlines() or ["no answer"])[0]
    return f"systemd --user is not running for this user ({reason})"


def _quote(arg: str) -> str:
    """One ExecStart= word: `%` is a specifier and must be doubled; quotes protect spaces."""
    text = arg.replace("%", "%%")
    if any(c in text for c in " \t\"'\\;$"):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def render(spec: ScheduleSpec, job: Job) -> dict[str, str]:
    """The two unit files, by name."""
    env_lines = "".join(f"Environment={_quote(f'{k}={v}')}\n" for k, v in job.env)
    service = (
        "# Written by `phx schedule install`; remove with `phx schedule remove`.\n"
        "[Unit]\n"
        "Description=Phoenix backup of the agent workspace\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"{env_lines}"
        f"ExecStart={' '.join(_quote(a) for a in job.argv)}\n"
        # A backup is background work: it should not make the agent feel slow.
        "Nice=10\n"
        "IOSchedulingClass=idle\n"
    )
    calendars = "".join(f"OnCalendar={c}\n" for c in spec.on_calendar())
    timer = (
        "# Written by `phx schedule install`; remove with `phx schedule remove`.\n"
        f"# {NAME}: {spec.describe()}\n"
        "[Unit]\n"
        f"Description=Phoenix backup, {spec.describe()}\n"
        "\n"
        "[Timer]\n"
        f"{calendars}"
        "Persistent=true\n"
        f"Unit={SERVICE}\n"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )
    return {SERVICE: service, TIMER: timer}


def write_units(spec: ScheduleSpec, job: Job, env: Mapping[str, str]) -> list[Path]:
    folder = unit_dir(env, job.home)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render(spec, job).items():
        path = folder / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        written.append(path)
    return written


def install(spec: ScheduleSpec, job: Job, env: Mapping[str, str]) -> str:
    paths = write_units(spec, job, env)
    for args in (["daemon-reload"], ["enable", "--now", TIMER]):
        proc = _systemctl(args, env)
        if proc.returncode != 0:
            raise SchedulerUnavailable(
                f"wrote {paths[0].parent}/{NAME}.{{service,timer}} but `systemctl --user {' '.join(args)}` failed "
                f"({proc.stderr.strip() or proc.returncode}); start a user session with systemd (or "
                f"`loginctl enable-linger`), then run `systemctl --user enable --now {TIMER}`"
            )
    return "systemd"


def remove(env: Mapping[str, str], home: Path) -> bool:
    folder = unit_dir(env, home)
    paths = [folder / SERVICE, folder / TIMER]
    if not any(p.exists() for p in paths):
        return False
    _systemctl(["disable", "--now", TIMER], env)  # may fail when no user manager runs: files go anyway
    for p in paths:
        p.unlink(missing_ok=True)
    _systemctl(["daemon-reload"], env)
    return True


def installed(env: Mapping[str, str], home: Path) -> dict[str, object] | None:
    folder = unit_dir(env, home)
    timer = folder / TIMER
    if not timer.exists():
        return None
    active = _systemctl(["is-active", TIMER], env).stdout.strip() or "unknown"
    return {"unitDir": str(folder), "active": active}
