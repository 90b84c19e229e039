"""The crontab path: one marked block per job (`phoenix-backup`, `phoenix-drill`) in the user's
crontab, edited through `crontab` itself
(never by writing the spool file), so cron's own checks and permissions apply."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from phoenix_backup.errors import SchedulerUnavailable, UsageError, shown
from phoenix_backup.schedule.job import Job
from phoenix_backup.schedule.spec import ScheduleSpec

_TIMEOUT = 20
# Vixie cron reads a line's command (as written: `\%` is two bytes, é two) into a 1,000-byte buffer
# (MAX_COMMAND). Debian's crontab 3.0pl1-162 refuses a command of 999 bytes or more ("command too
# long", measured); an unpatched Vixie cron drops the rest without a word: the `--config` path or
# its closing quote cut, the job then fails at every run (or runs another config). A longer command
# is refused at install, in Phoenix's words, instead.
MAX_COMMAND_BYTES = 998


def begin(name: str) -> str:
    return f"# BEGIN {name} (written by `phx schedule install`; remove with `phx schedule remove`)"


def end(name: str) -> str:
    return f"# END {name}"


def available(env: Mapping[str, str]) -> str | None:
    """None when crontab can be used, else why not."""
    if shutil.which("crontab", path=env.get("PATH")) is None:
        return "the crontab command is not installed (Debian: apt-get install cron)"
    try:
        _read(env)
    except SchedulerUnavailable as exc:
        return str(exc)
    return None


def line(spec: ScheduleSpec, job: Job) -> str:
    parts = [f"{k}={shlex.quote(v)}" for k, v in job.env]
    parts += [shlex.quote(a) for a in job.argv]
    # Output goes to Phoenix's own rotated log; cron would otherwise mail it (or drop it).
    command = " ".join(parts) + " >/dev/null 2>&1"
    # `%` ends a cron command (the rest becomes stdin) unless escaped as `\%`. A backslash before
    # it cannot be written: cron reads `\\%` as a kept backslash and an unescaped `%`.
    if "\\%" in command:
        raise UsageError(
            f"{shown(job.argv[-1])} (or a passed-through variable) holds a backslash before a `%`, which a crontab "
            "line cannot carry; rename it or use systemd (--scheduler systemd)"
        )
    command = command.replace("%", chr(92) + "%")
    size = len(command.encode("utf-8", "surrogateescape"))
    if size > MAX_COMMAND_BYTES:
        raise UsageError(
            f"the crontab command would be {size} bytes and cron takes at most {MAX_COMMAND_BYTES} "
            "(Debian's crontab refuses a longer one, another cron cuts the rest, the config path included, "
            "without a word); shorten the config's path, "
            "the Python's path or PYTHONPATH and the other passed-through variables, or use systemd "
            "(--scheduler systemd)"
        )
    return f"{spec.cron()} {command}"


def block(spec: ScheduleSpec, job: Job) -> list[str]:
    return [begin(job.name), f"# {job.name}: {spec.describe()}", line(spec, job), end(job.name)]


def _run(args: list[str], env: Mapping[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["crontab", *args], input=stdin, capture_output=True, text=True, timeout=_TIMEOUT, env=dict(env)
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SchedulerUnavailable(f"crontab could not be run ({exc}); check that cron is installed") from exc


def _read(env: Mapping[str, str]) -> list[str]:
    proc = _run(["-l"], env)
    if proc.returncode == 0:
        return proc.stdout.splitlines()
    if "no crontab" in proc.stderr.lower():
        return []
    raise SchedulerUnavailable(
        f"crontab -l failed: {proc.stderr.strip() or proc.returncode}; check /etc/cron.allow and /etc/cron.deny"
    )


def _write(lines: list[str], env: Mapping[str, str]) -> None:
    if not lines:
        proc = _run(["-r"], env)
        if proc.returncode != 0 and "no crontab" not in proc.stderr.lower():
            raise SchedulerUnavailable(f"crontab -r failed: {proc.stderr.strip()}")
        return
    proc = _run(["-"], env, "\n".join(lines) + "\n")
    if proc.returncode != 0:
        raise SchedulerUnavailable(f"crontab refused the new table: {proc.stderr.strip()}; nothing was changed")


def _without_block(lines: list[str], name: str) -> tuple[list[str], list[str]]:
    """(the other lines, the block of the job `name`)."""
    keep: list[str] = []
    ours: list[str] = []
    inside = False
    for text in lines:
        if text.startswith(f"# BEGIN {name} ") or text == f"# BEGIN {name}":
            inside = True
        if inside:
            ours.append(text)
        else:
            keep.append(text)
        if inside and text.startswith(end(name)):
            inside = False
    return keep, ours


def install(spec: ScheduleSpec, job: Job, env: Mapping[str, str]) -> str:
    others, _old = _without_block(_read(env), job.name)
    _write(others + block(spec, job), env)
    return "crontab"


def remove(env: Mapping[str, str], name: str) -> bool:
    lines = _read(env)
    others, ours = _without_block(lines, name)
    if not ours:
        return False
    _write(others, env)
    return True


def installed(env: Mapping[str, str], name: str) -> list[str] | None:
    """The crontab block of the job `name`, or None."""
    try:
        _others, ours = _without_block(_read(env), name)
    except SchedulerUnavailable:
        return None
    return ours or None


def daemon_running() -> bool:
    """Whether a cron daemon runs on this machine (a crontab entry alone runs nothing)."""
    for entry in Path("/proc").glob("[0-9]*/comm"):
        try:
            if entry.read_text().strip() in ("cron", "crond", "cronie", "busybox-crond"):
                return True
        except OSError:
            continue
    return False
