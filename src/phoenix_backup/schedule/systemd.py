"""The systemd path: a user service and timer per job (`phoenix-backup`, `phoenix-drill`) in
~/.config/systemd/user (or $XDG_CONFIG_HOME), enabled with `systemctl --user`. `Persistent=true`
runs a backup (or drill) missed while the machine was off as soon as it is on again."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from phoenix_backup.dirs import fsync_dir, make_dirs, write_private
from phoenix_backup.errors import SchedulerUnavailable
from phoenix_backup.schedule.job import Job
from phoenix_backup.schedule.spec import ScheduleSpec

_TIMEOUT = 30


def service_name(name: str) -> str:
    return f"{name}.service"


def timer_name(name: str) -> str:
    return f"{name}.timer"


def unit_dir(env: Mapping[str, str], home: Path) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(home / ".config")
    return Path(base) / "systemd" / "user"


def systemctl(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["systemctl", "--user", *args], capture_output=True, text=True, timeout=_TIMEOUT, env=dict(env)
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return subprocess.CompletedProcess(["systemctl"], 127, "", str(exc))


def available(env: Mapping[str, str]) -> str | None:
    """None when a user systemd instance answers, else why not."""
    proc = systemctl(["show-environment"], env)
    if proc.returncode == 0:
        return None
    reason = (proc.stderr.strip().splitlines() or ["no answer"])[0]
    return f"systemd --user is not running for this user ({reason})"


def quote(arg: str) -> str:
    """One ExecStart= word: `%` is a specifier and must be doubled; quotes protect spaces."""
    text = arg.replace("%", "%%")
    if any(c in text for c in " \t\"'\\;$"):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def command_line(argv: tuple[str, ...]) -> str:
    """An ExecStart= value running exactly `argv`: systemd expands `$NAME` and `${NAME}` in its
    words, quoted or not (a config path `/srv/a$HOME/backup.json` would name another file), and `$$`
    is its literal `$`. (Environment= expands nothing: its values are `quote`d alone.)"""
    return " ".join(quote(a.replace("$", "$$")) for a in argv)


def render(spec: ScheduleSpec, job: Job) -> dict[str, str]:
    """The two unit files, by name."""
    service_file, timer_file = service_name(job.name), timer_name(job.name)
    env_lines = "".join(f"Environment={quote(f'{k}={v}')}\n" for k, v in job.env)
    service = (
        "# Written by `phx schedule install`; remove with `phx schedule remove`.\n"
        "[Unit]\n"
        f"Description={job.title} of the agent workspace\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"{env_lines}"
        f"ExecStart={command_line(job.argv)}\n"
        # A backup is background work: it should not make the agent feel slow.
        "Nice=10\n"
        "IOSchedulingClass=idle\n"
    )
    calendars = "".join(f"OnCalendar={c}\n" for c in spec.on_calendar())
    timer = (
        "# Written by `phx schedule install`; remove with `phx schedule remove`.\n"
        f"# {job.name}: {spec.describe()}\n"
        "[Unit]\n"
        f"Description={job.title}, {spec.describe()}\n"
        "\n"
        "[Timer]\n"
        f"{calendars}"
        "Persistent=true\n"
        f"Unit={service_file}\n"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )
    return {service_file: service, timer_file: timer}


def write_units(spec: ScheduleSpec, job: Job, env: Mapping[str, str]) -> list[Path]:
    """The service, then the timer, each replaced atomically and durably (`write_private`: a temp
    file fsynced, renamed, the folder fsynced). The timer is what runs the service: written last,
    a stop or a crash between the two leaves a service no timer starts (not installed; the next
    install writes both), never a timer whose service is missing or half-written."""
    folder = unit_dir(env, job.home)
    # 0700, whatever the umask: under umask 000 a folder others could write let them replace a unit
    # (its ExecStart runs as you).
    make_dirs(folder)
    written = []
    for name, text in render(spec, job).items():  # the service first
        path = folder / name
        write_private(path, text.encode())
        written.append(path)
    return written


def install(spec: ScheduleSpec, job: Job, env: Mapping[str, str]) -> str:
    paths = write_units(spec, job, env)
    timer = timer_name(job.name)
    for args in (["daemon-reload"], ["enable", "--now", timer]):
        proc = systemctl(args, env)
        if proc.returncode != 0:
            raise SchedulerUnavailable(
                f"wrote {paths[0].parent}/{job.name}.{{service,timer}} but `systemctl --user {' '.join(args)}` failed "
                f"({proc.stderr.strip() or proc.returncode}); start a user session with systemd (or "
                f"`loginctl enable-linger`), then run `systemctl --user enable --now {timer}`"
            )
    return "systemd"


def remove(env: Mapping[str, str], home: Path, name: str) -> bool:
    folder = unit_dir(env, home)
    paths = [folder / service_name(name), folder / timer_name(name)]
    if not any(p.exists() for p in paths):
        return False
    systemctl(["disable", "--now", timer_name(name)], env)  # may fail when no user manager runs: files go anyway
    # The timer first (the reverse of `write_units`): a stop between the two leaves a service no
    # timer starts, never a timer whose service is gone (reported installed, failing when due).
    for p in reversed(paths):
        p.unlink(missing_ok=True)
    fsync_dir(folder)
    systemctl(["daemon-reload"], env)
    return True


def installed(env: Mapping[str, str], home: Path, name: str) -> dict[str, object] | None:
    folder = unit_dir(env, home)
    timer = folder / timer_name(name)
    if not timer.exists():
        return None
    proc = systemctl(["is-active", timer.name], env)
    # `active` only when systemd says so: unreachable (no user manager) is not running.
    active = proc.stdout.strip() or f"unknown ({(proc.stderr.strip().splitlines() or ['no answer'])[0]})"
    return {"unitDir": str(folder), "active": active}
