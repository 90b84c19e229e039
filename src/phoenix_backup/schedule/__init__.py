"""Scheduled backups: a systemd user timer where a user systemd runs, else a crontab entry, and
a launchd agent on macOS. `install`, `remove` and `status` work on whichever holds Phoenix's
schedule; `~/.argentos/backup/schedule.json` records what was installed (for `phx status`).
Scheduled runs execute `phx schedule run`, which logs to ~/.argentos/backup/logs/ (rotated).

Two jobs can be scheduled, each by the same code under its own name (see `job.KINDS`): the
backup (`phoenix-backup`) and a restore drill of the latest snapshot (`phoenix-drill`, `phx
schedule install --drill monthly`; recorded in drill-schedule.json, logged to drill.log).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from phoenix_backup.config import Config
from phoenix_backup.dirs import make_dirs, write_private
from phoenix_backup.errors import SchedulerUnavailable, UsageError
from phoenix_backup.schedule import cron, launchd, systemd
from phoenix_backup.schedule.job import KINDS, Job, job_name
from phoenix_backup.schedule.runlog import log_dir, log_name, running
from phoenix_backup.schedule.spec import AT_WORDS, ScheduleSpec

SCHEDULERS = ("systemd", "cron", "launchd")
# A drill restores the latest snapshot: by default an hour after the default 02:00 backup.
DRILL_AT = "03:00"

__all__ = [
    "DRILL_AT",
    "KINDS",
    "SCHEDULERS",
    "InstallResult",
    "RemoveResult",
    "ScheduleSpec",
    "ScheduleStatus",
    "detect",
    "expected_spec",
    "install",
    "last_scheduled_run",
    "record_path",
    "remove",
    "status",
]


def record_path(home: Path, kind: str = "backup") -> Path:
    """schedule.json for the backup job, drill-schedule.json for the drill job."""
    return home / ".argentos" / "backup" / ("drill-schedule.json" if kind == "drill" else "schedule.json")


def read_record(home: Path, kind: str = "backup") -> dict[str, Any] | None:
    try:
        data = json.loads(record_path(home, kind).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def detect(env: Mapping[str, str], *, platform: str = sys.platform) -> str:
    """The scheduler to use here: launchd on macOS, else systemd --user when it answers, else cron."""
    if platform == "darwin":
        return "launchd"
    why_not_systemd = systemd.available(env)
    if why_not_systemd is None:
        return "systemd"
    why_not_cron = cron.available(env)
    if why_not_cron is None:
        return "cron"
    raise SchedulerUnavailable(
        f"no scheduler is usable: {why_not_systemd}, and {why_not_cron}; install cron "
        "(apt-get install cron) or run in a session with systemd --user, then try again"
    )


@dataclass
class InstallResult:
    scheduler: str
    spec: ScheduleSpec
    command: list[str]
    next_due: datetime
    log: Path
    warnings: list[str] = field(default_factory=list)
    kind: str = "backup"

    def to_json(self) -> dict[str, object]:
        return {
            "job": self.kind,
            "scheduler": self.scheduler,
            "every": self.spec.every,
            "at": self.spec.at,
            "description": self.spec.describe(),
            "command": self.command,
            "nextDue": self.next_due.isoformat(timespec="seconds"),
            "log": str(self.log),
            "warnings": self.warnings,
        }


def install(
    cfg: Config,
    env: Mapping[str, str],
    home: Path,
    *,
    every: str | None = None,
    at: str | None = None,
    scheduler: str | None = None,
    notice: Callable[[str], None] | None = None,
    kind: str = "backup",
) -> InstallResult:
    """Install (or replace) the schedule of the job `kind` (the other job's stays); `notice`
    hears the warnings before anything is attempted, so they are said even when installing fails."""
    if cfg.source is None:
        raise UsageError("the config has no file to point the schedule at; write one with `phx init`")
    if kind == "drill":
        # The config's `schedule` is the backup's; a drill runs at --at, else DRILL_AT.
        chosen_every = every or "monthly"
        chosen_at = at if at is not None else (DRILL_AT if chosen_every in AT_WORDS else None)
    else:
        chosen_every = every or cfg.schedule.every
        # The config's time applies to the config's (or a given) daily/weekly schedule unless --at says.
        chosen_at = at if at is not None else (cfg.schedule.at if chosen_every in AT_WORDS else None)
    spec = ScheduleSpec.parse(chosen_every, chosen_at)
    job = Job.for_config(cfg.source.resolve(), env, home, kind)
    warnings = passphrase_warnings(cfg, env)
    for warning in warnings:
        (notice or (lambda _w: None))(warning)
    chosen = scheduler or detect(env)
    record = {
        "job": kind,
        "scheduler": chosen,
        "every": spec.every,
        "at": spec.at,
        "config": str(cfg.source.resolve()),
        "installed": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    # The record is written only once the scheduler has taken the job: a job whose activation
    # failed is not installed (its unit files or plist stay, ready to be enabled by hand).
    if chosen == "systemd":
        systemd.install(spec, job, env)
    elif chosen == "cron":
        why_not = cron.available(env)
        if why_not is not None:
            raise SchedulerUnavailable(f"cannot use cron: {why_not}")
        cron.install(spec, job, env)
    elif chosen == "launchd":
        launchd.install(spec, job)
    else:
        raise UsageError(f"unknown scheduler {chosen!r}; use one of {', '.join(SCHEDULERS)}")
    # One schedule per job. The chosen scheduler's install replaced its own old entry; the job
    # leaves the others only now that the new one is in place, so an install that fails (cron
    # refused, no user manager) leaves the old schedule running instead of none.
    _remove_job(env, home, kind, keep=chosen)
    _write_record(home, kind, record)
    make_dirs(log_dir(home))
    return InstallResult(
        chosen, spec, list(job.argv), spec.next_after(datetime.now().astimezone()), log_dir(home), warnings, kind
    )


def _write_record(home: Path, kind: str, record: Mapping[str, object]) -> None:
    path = record_path(home, kind)
    make_dirs(path.parent)
    write_private(path, (json.dumps(record, indent=2) + "\n").encode())


def passphrase_warnings(cfg: Config, env: Mapping[str, str]) -> list[str]:
    enc = cfg.encryption
    if enc.enabled and enc.method == "passphrase" and not (enc.passphrase_command or env.get("PHX_PASSPHRASE_FILE")):
        return [
            "scheduled runs have no terminal and no PHX_PASSPHRASE: set encryption.passphraseCommand in the "
            "config, or install again with PHX_PASSPHRASE_FILE set, or the scheduled runs will fail"
        ]
    return []


@dataclass
class RemoveResult:
    removed: list[str]  # the schedulers the backup job was removed from
    drill_removed: list[str] = field(default_factory=list)  # ... and the drill job

    def to_json(self) -> dict[str, object]:
        return {"removed": self.removed, "drillRemoved": self.drill_removed}


def _remove_job(env: Mapping[str, str], home: Path, kind: str, keep: str | None = None) -> list[str]:
    """Remove the job `kind` from every scheduler that holds it but `keep`; return those."""
    name = job_name(kind)
    removed = []
    if keep != "systemd" and systemd.remove(env, home, name):
        removed.append("systemd")
    if keep != "cron" and cron.available(env) is None and cron.remove(env, name):
        removed.append("cron")
    if keep != "launchd" and launchd.remove(home, name):
        removed.append("launchd")
    return removed


def remove(env: Mapping[str, str], home: Path, kinds: tuple[str, ...] = KINDS) -> RemoveResult:
    """Remove the jobs `kinds` (both by default) everywhere, with their records."""
    result = RemoveResult([])
    for kind in kinds:
        removed = _remove_job(env, home, kind)
        record_path(home, kind).unlink(missing_ok=True)
        if kind == "drill":
            result.drill_removed = removed
        else:
            result.removed = removed
    return result


@dataclass
class ScheduleStatus:
    installed: dict[str, object]  # scheduler -> details, for each that holds the job and runs it
    spec: ScheduleSpec | None  # the installed schedule, when known
    next_due: datetime | None
    log: Path
    last_log_line: str | None
    # scheduler -> details, for each that holds the job's files but does not run them (a systemd
    # timer that is not active, a plist launchd has not loaded)
    inactive: dict[str, object] = field(default_factory=dict)
    last_run: datetime | None = None  # the start of the last scheduled run, from its log
    unfinished: datetime | None = None  # ... when its log has no end for it (killed, or running)
    running: bool = False  # a scheduled run holds its lock now (the unfinished one is still going)

    @property
    def scheduler(self) -> str | None:
        return next(iter(self.installed), None)

    def twice(self, kind: str = "backup") -> str | None:
        """Why the job runs more than once, when more than one scheduler runs it (a `phx schedule
        install` stopped after the new scheduler took it, before the old one let go)."""
        if len(self.installed) < 2:
            return None
        drill = " --drill" if kind == "drill" else ""
        return (
            f"the {kind} job is installed with {' and '.join(self.installed)}, and each runs it (a `phx schedule "
            f"install` stopped midway); `phx schedule install{drill} --scheduler NAME` keeps it with NAME only"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "installed": bool(self.installed),
            "scheduler": self.scheduler,
            "details": self.installed,
            "inactive": self.inactive,
            "lastRun": self.last_run.isoformat(timespec="seconds") if self.last_run else None,
            "every": self.spec.every if self.spec else None,
            "at": self.spec.at if self.spec else None,
            "description": self.spec.describe() if self.spec else None,
            "nextDue": self.next_due.isoformat(timespec="seconds") if self.next_due else None,
            "log": str(self.log),
            "lastLogLine": self.last_log_line,
        }


def missing_program(scheduler: str, details: object, home: Path, kind: str = "backup") -> str | None:
    """The program an installed job runs (the Python of the virtualenv `phx schedule install` ran
    from) when it is no longer an executable file, or None: a venv moved or removed leaves the job
    in place, and every scheduled run then fails before Phoenix starts, with its output nowhere.
    The program is the word before `-m phoenix_backup.cli.main`, as the job is written: in a line
    edited by hand (`cd DIR && flock -n LOCK PYTHON ...`) the first absolute path is a folder or
    another file, and a line of another shape is not judged."""
    words: list[str] = []
    try:
        if scheduler == "cron" and isinstance(details, dict):
            # cron passes `\%` on as `%` (`cron.line` escapes each `%` so), before the shell reads quotes.
            words = shlex.split(str(details.get("entry") or "").replace("\\%", "%"))
        elif scheduler == "systemd" and isinstance(details, dict):
            unit = Path(str(details.get("unitDir"))) / systemd.service_name(job_name(kind))
            line = next((x for x in unit.read_text().splitlines() if x.startswith("ExecStart=")), "")
            words = [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line.removeprefix("ExecStart="))]
            # ExecStart= prefixes: `-` (failure ignored), `@`, `:`, `+`, `!` (how it runs)
            words = [words[0].lstrip("-@:+!"), *words[1:]] if words else words
    except (OSError, ValueError):
        return None
    at = next((i for i in range(1, len(words) - 1) if words[i : i + 2] == ["-m", "phoenix_backup.cli.main"]), None)
    program = words[at - 1] if at is not None else None
    if program is None or not program.startswith("/") or (os.path.isfile(program) and os.access(program, os.X_OK)):
        return None
    return program


def status(env: Mapping[str, str], home: Path, kind: str = "backup") -> ScheduleStatus:
    """Where the job `kind` is installed, and when it runs next."""
    name = job_name(kind)
    found: dict[str, object] = {}
    inactive: dict[str, object] = {}
    for scheduler, details in (
        ("systemd", systemd.installed(env, home, name)),
        ("launchd", launchd.installed(home, name)),
    ):
        if details is not None:
            (found if details.get("active") == "active" else inactive)[scheduler] = details
    entry = cron.installed(env, name) if cron.available(env) is None else None
    if entry is not None:
        line = next((line for line in entry if not line.startswith("#")), "")
        found["cron"] = {"entry": line, "daemonRunning": cron.daemon_running()}
    spec = installed_spec(home, kind) if found else None
    next_due = spec.next_after(datetime.now().astimezone()) if spec else None
    log = log_dir(home) / log_name(kind)
    return ScheduleStatus(
        found,
        spec,
        next_due,
        log_dir(home),
        _last_line(log),
        inactive,
        last_scheduled_run(log, kind),
        unfinished_run(log, kind),
        running(log_dir(home), log_name(kind)),
    )


def unfinished_run(log: Path, kind: str = "backup") -> datetime | None:
    """The start of the last scheduled run of the job when no "finished" line follows it in its
    log: a run killed by the OOM killer or a reboot (SIGKILL) writes no end, and no state file
    either, so the state's last backup still reads as the night before's. Or a run still going."""
    lines: list[str] = []
    for path in (log.with_name(f"{log.name}.1"), log):  # oldest first
        try:
            lines += path.read_text(errors="replace").splitlines()
        except OSError:
            continue
    for line in reversed(lines):
        said = line.partition(" ")[2]
        if said.startswith(f"scheduled {kind} finished"):
            return None
        if said.startswith(f"scheduled {kind} starting"):
            try:
                return datetime.fromisoformat(line.split(" ", 1)[0])
            except ValueError:
                return None
    return None


def last_scheduled_run(log: Path, kind: str = "backup") -> datetime | None:
    """When the last scheduled run of the job started, from its log (and the newest rotated one)."""
    # The line's own words, after its time stamp: a message naming a file (a notice, shown escaped
    # on one line) may hold the same words anywhere else in its line.
    marker = f"scheduled {kind} starting"
    for path in (log, log.with_name(f"{log.name}.1")):
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in reversed(lines):
            if line.partition(" ")[2].startswith(marker):
                try:
                    return datetime.fromisoformat(line.split(" ", 1)[0])
                except ValueError:
                    continue
    return None


def installed_spec(home: Path, kind: str = "backup") -> ScheduleSpec | None:
    record = read_record(home, kind)
    if not record or not isinstance(record.get("every"), str):
        return None
    try:
        return ScheduleSpec.parse(record["every"], record.get("at"))
    except UsageError:
        return None


def expected_spec(cfg: Config, home: Path) -> tuple[ScheduleSpec, bool]:
    """The schedule backups are expected on: the installed one, else the config's `schedule`;
    and whether it is installed."""
    spec = installed_spec(home)
    if spec is not None:
        return spec, True
    return ScheduleSpec.parse(cfg.schedule.every, cfg.schedule.at), False


def _last_line(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    return lines[-1] if lines else None
