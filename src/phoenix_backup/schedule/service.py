"""`phx schedule install --watch`: `phx watch` as a service that runs all the time, restarted when it
stops: a systemd user service (`phoenix-watch.service`, no timer) or, on macOS, a launchd agent with
KeepAlive. Cron runs jobs at times and cannot keep a process running: it is refused."""

from __future__ import annotations

import os
import plistlib
import sys
from collections.abc import Mapping
from pathlib import Path

from phoenix_backup.dirs import make_dirs, write_private
from phoenix_backup.errors import SchedulerUnavailable, UsageError
from phoenix_backup.schedule import launchd, systemd
from phoenix_backup.schedule.job import PASS_THROUGH, schedulable

NAME = "phoenix-watch"
# systemd waits this long for the last segment after SIGTERM before it kills the watch.
STOP_SECONDS = 60


def argv(config_path: Path) -> tuple[str, ...]:
    words = (sys.executable, "-m", "phoenix_backup.cli.main", "watch", "--config", str(config_path))
    return tuple(schedulable(w, "the path") for w in words)


def _env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: schedulable(env[k], k) for k in PASS_THROUGH if env.get(k)}


def render_systemd(config_path: Path, env: Mapping[str, str]) -> str:
    env_lines = "".join(f"Environment={systemd.quote(f'{k}={v}')}\n" for k, v in _env(env).items())
    return (
        "# Written by `phx schedule install --watch`; remove with `phx schedule remove --watch`.\n"
        "[Unit]\n"
        "Description=Phoenix continuous capture of the agent's databases (phx watch)\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"{env_lines}"
        f"ExecStart={systemd.command_line(argv(config_path))}\n"
        "Restart=always\n"
        "RestartSec=5\n"
        "KillSignal=SIGTERM\n"
        f"TimeoutStopSec={STOP_SECONDS}\n"
        "Nice=10\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def render_launchd(config_path: Path, env: Mapping[str, str]) -> bytes:
    doc: dict[str, object] = {
        "Label": launchd.label(NAME),
        "ProgramArguments": list(argv(config_path)),
        "RunAtLoad": True,
        "KeepAlive": True,
        "ExitTimeOut": STOP_SECONDS,
        "StandardOutPath": "/dev/null",
        "StandardErrorPath": "/dev/null",
        "ProcessType": "Background",
    }
    passed = _env(env)
    if passed:
        doc["EnvironmentVariables"] = passed
    return plistlib.dumps(doc)


def install(config_path: Path, env: Mapping[str, str], home: Path, scheduler: str) -> Path:
    """Write and start the service; the file written."""
    if scheduler == "cron":
        raise UsageError(
            "cron starts jobs at times and cannot keep `phx watch` running; use systemd (--scheduler systemd) "
            "or launchd, or run `phx watch` under another supervisor"
        )
    if scheduler == "launchd":
        path = launchd.plist_path(home, NAME)
        make_dirs(path.parent)
        domain = f"gui/{os.getuid()}"
        launchd.launchctl(["bootout", domain, str(path)])
        write_private(path, render_launchd(config_path, env))
        proc = launchd.launchctl(["bootstrap", domain, str(path)])
        if proc.returncode != 0:
            raise SchedulerUnavailable(
                f"wrote {path} but `launchctl bootstrap {domain}` failed ({proc.stderr.strip() or proc.returncode}); "
                f"load it from a logged-in session with `launchctl bootstrap {domain} {path}`"
            )
        return path
    folder = systemd.unit_dir(env, home)
    make_dirs(folder)  # as the backup's units (`systemd.write_units`): 0700 folders, a 0600 file, any umask
    path = folder / systemd.service_name(NAME)
    write_private(path, render_systemd(config_path, env).encode())
    for args in (["daemon-reload"], ["enable", "--now", path.name]):
        proc = systemd.systemctl(args, env)
        if proc.returncode != 0:
            why = proc.stderr.strip() or proc.returncode
            raise SchedulerUnavailable(
                f"wrote {path} but `systemctl --user {' '.join(args)}` failed ({why}); "
                f"start a user session with systemd (or `loginctl enable-linger`), then run "
                f"`systemctl --user enable --now {path.name}`"
            )
    return path


def remove(env: Mapping[str, str], home: Path) -> list[str]:
    """Stop and remove the service wherever it is installed; the schedulers it was removed from."""
    removed = []
    unit = systemd.unit_dir(env, home) / systemd.service_name(NAME)
    if unit.exists():
        systemd.systemctl(["disable", "--now", unit.name], env)  # SIGTERM: the watch writes its last segment
        unit.unlink(missing_ok=True)
        systemd.systemctl(["daemon-reload"], env)
        removed.append("systemd")
    if launchd.remove(home, NAME):
        removed.append("launchd")
    return removed
