"""The scheduler's files (systemd units, a launchd plist, the schedule record) under a stop: each
replaced atomically and durably, and the systemd pair consistent whatever moment the stop hits."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from phoenix_backup.schedule import launchd, systemd
from phoenix_backup.schedule.job import Job
from phoenix_backup.schedule.spec import ScheduleSpec

ENV = {"PATH": "/nonexistent"}  # no systemctl: the files alone are at stake


def _job(tmp_path: Path) -> Job:
    return Job.for_config(tmp_path / "backup.json", {}, tmp_path / "home")


def _stop_after_first(monkeypatch: pytest.MonkeyPatch, name: str, below: Path) -> None:
    """`os.NAME` (replace, unlink) raises KeyboardInterrupt (a stop) right after its first call on
    a file below `below` is done."""
    real: Callable[..., Any] = getattr(os, name)
    calls: list[str] = []

    def stopping(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        target = str(args[-1] if name == "replace" else args[0])
        if target.startswith(str(below)):
            calls.append(target)
            if len(calls) == 1:
                raise KeyboardInterrupt
        return result

    monkeypatch.setattr(os, name, stopping)


def _fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the descriptors fsynced from now on."""
    real = os.fsync
    seen: list[str] = []

    def fsync(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_a_stop_between_the_systemd_units_leaves_no_timer_and_the_next_install_writes_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, spec = _job(tmp_path), ScheduleSpec.parse("daily", "03:00")
    folder = systemd.unit_dir(ENV, job.home)
    with monkeypatch.context() as m:
        _stop_after_first(m, "replace", folder)
        with pytest.raises(KeyboardInterrupt):
            systemd.write_units(spec, job, ENV)
    # The service alone, which nothing starts: not installed, and no timer naming a missing unit.
    assert sorted(p.name for p in folder.iterdir()) == ["phoenix-backup.service"]
    assert systemd.installed(ENV, job.home, job.name) is None
    seen = _fsynced(monkeypatch)
    systemd.write_units(spec, job, ENV)
    assert sorted(p.name for p in folder.iterdir()) == ["phoenix-backup.service", "phoenix-backup.timer"]
    # Durable: each file's content before its rename, and the folder after it.
    assert seen.count(str(folder)) >= 2, seen
    assert sum(1 for s in seen if s.startswith(str(folder / ".phoenix-backup."))) == 2, seen


def test_a_stop_between_the_systemd_unlinks_never_leaves_a_timer_without_its_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(tmp_path)
    systemd.write_units(ScheduleSpec.parse("daily", "03:00"), job, ENV)
    folder = systemd.unit_dir(ENV, job.home)
    with monkeypatch.context() as m:
        _stop_after_first(m, "unlink", folder)
        with pytest.raises(KeyboardInterrupt):
            systemd.remove(ENV, job.home, job.name)
    # Before, the service went first: the timer stayed, reported installed, failing when due.
    assert sorted(p.name for p in folder.iterdir()) == ["phoenix-backup.service"]
    assert systemd.installed(ENV, job.home, job.name) is None
    assert systemd.remove(ENV, job.home, job.name)  # the next remove finishes the job
    assert list(folder.iterdir()) == []


def test_the_launchd_plist_is_written_durably(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _job(tmp_path)
    monkeypatch.setattr(launchd, "launchctl", lambda args: subprocess.CompletedProcess(args, 0, "", ""))
    seen = _fsynced(monkeypatch)
    launchd.install(ScheduleSpec.parse("daily", "03:00"), job)
    path = launchd.plist_path(job.home, job.name)
    assert path.exists() and seen.count(str(path.parent)) == 1, seen
    # Its content before the rename: a temporary file beside it (the folders made for it are each
    # made durable too, `make_dirs`: their parents fsynced).
    made = {str(p) for p in path.parent.parents}
    assert [Path(s).parent for s in seen if s != str(path.parent) and s not in made] == [path.parent], seen


def test_a_job_two_schedulers_run_is_said_by_status_and_doctor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `phx schedule install` switching cron -> systemd stopped (SIGKILL) after systemd took the
    job and before cron let it go: both run every backup. `phx schedule status` listed
    "installed with systemd, cron" as if that were one schedule, and doctor said all was well."""
    from phoenix_backup import schedule
    from phoenix_backup.cli.cmd_schedule import _status_text
    from phoenix_backup.ops.context import Environment
    from phoenix_backup.ops.doctor import DoctorResult, _schedule
    from phoenix_backup.schedule import cron

    home = tmp_path / "home"
    monkeypatch.setattr(systemd, "installed", lambda env, home, name: {"active": "active"})
    monkeypatch.setattr(launchd, "installed", lambda home, name: None)
    monkeypatch.setattr(cron, "available", lambda env: None)
    monkeypatch.setattr(cron, "installed", lambda env, name: ["0 3 * * * phx schedule run"])
    monkeypatch.setattr(cron, "daemon_running", lambda: True)
    held = schedule.status({**ENV, "HOME": str(home)}, home)
    assert list(held.installed) == ["systemd", "cron"]
    text = _status_text(held, "backup")
    assert "warning: the backup job is installed with systemd and cron, and each runs it" in text, text
    assert "`phx schedule install --scheduler NAME`" in text
    result = DoctorResult()
    _schedule(Environment(env={**ENV, "HOME": str(home)}), result)
    warned = [c for c in result.checks if c.status == "warn"]
    assert len(warned) == 1 and "each runs it" in warned[0].message, result.checks
    # One scheduler: nothing said.
    monkeypatch.setattr(cron, "installed", lambda env, name: None)
    assert "warning" not in _status_text(schedule.status(ENV, home), "backup")


def test_the_units_and_their_folders_are_private_under_umask_000(tmp_path: Path) -> None:
    """Under umask 000 the `phx watch` service was written mode 0666, and the folders made for the
    units (~/.config/systemd/user) 0777: any user could replace a unit, whose ExecStart runs as
    you. Each folder made is 0700 and each unit 0600, for the backup's units and the watch's."""
    from phoenix_backup.errors import SchedulerUnavailable
    from phoenix_backup.schedule import service

    job, spec = _job(tmp_path), ScheduleSpec.parse("daily", "03:00")
    old = os.umask(0)
    try:
        systemd.write_units(spec, job, ENV)
        with pytest.raises(SchedulerUnavailable):  # no systemctl here: the file is written all the same
            service.install(tmp_path / "backup.json", ENV, job.home, "systemd")
    finally:
        os.umask(old)
    made = [job.home, *job.home.rglob("*")]
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in made}
    assert {
        "home/.config/systemd/user/phoenix-backup.service",
        "home/.config/systemd/user/phoenix-watch.service",
    } <= set(modes), modes
    assert {p: m for p, m in modes.items() if int(m, 8) & 0o077} == {}


def test_a_path_a_scheduler_line_cannot_carry_is_refused_not_written(tmp_path: Path) -> None:
    """A config path (or a passed-through variable) holding a newline cut the crontab line and the
    systemd unit line: the rest became a crontab entry of its own (`* * * * * cmd`, run as you) or
    a unit setting. Such a path is refused with one error naming it, for every scheduler and for
    the watch service; nothing is written."""
    from phoenix_backup.errors import UsageError
    from phoenix_backup.schedule import service

    hostile = tmp_path / "x\n* * * * * touch /tmp/red19-pwned #" / "backup.json"
    with pytest.raises(UsageError, match="control character"):
        Job.for_config(hostile, {}, tmp_path / "home")
    with pytest.raises(UsageError, match="PYTHONPATH"):
        Job.for_config(tmp_path / "backup.json", {"PYTHONPATH": "/src\nExecStartPre=/bin/sh"}, tmp_path / "home")
    with pytest.raises(UsageError, match="control character"):
        service.render_systemd(hostile, {})
    with pytest.raises(UsageError, match="control character"):
        service.render_launchd(tmp_path / "a\x1b[2J" / "backup.json", {})
    assert not (tmp_path / "home").exists()


def test_a_dollar_in_the_config_path_reaches_the_systemd_job_as_it_is(tmp_path: Path) -> None:
    """systemd expands `$NAME` in ExecStart= even inside quotes: a config at `/srv/a$HOME/backup.json`
    ran the job on another file. Read back as systemd reads the line (words unquoted, `$$` a `$`,
    `$NAME` expanded), the job's and the watch's ExecStart name the exact path; `%` and spaces too."""
    import re
    import shlex

    from phoenix_backup.schedule import service

    config = tmp_path / "a$HOME b%h ${USER}" / "backup.json"
    job = Job.for_config(config, {}, tmp_path / "home")
    units = [
        systemd.render(ScheduleSpec.parse("daily", "03:00"), job)["phoenix-backup.service"],
        service.render_systemd(config, {}),
    ]
    for unit in units:
        line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
        words = shlex.split(line.removeprefix("ExecStart="))
        expanded = [
            re.sub(r"\$\$|\$\{\w+\}|\$\w+|%%|%\w", lambda m: {"$$": "$", "%%": "%"}.get(m.group(), "EXPANDED"), w)
            for w in words
        ]
        assert expanded[-1] == str(config), line


def test_a_name_in_a_scheduled_runs_message_forges_no_line_of_its_log(tmp_path: Path) -> None:
    """A scheduled run logs its notices; a file name holding a newline wrote a line of its own,
    such as a forged "scheduled backup starting" that `phx status` took for the last scheduled run
    (hiding a schedule that no longer runs), and an escape sequence reached whoever reads the log.
    Each message is one line, its controls escaped; a report's own lines stay lines."""
    from phoenix_backup.schedule import last_scheduled_run
    from phoenix_backup.schedule.runlog import RunLog

    log = RunLog(tmp_path)
    log.write("phx: warning: not saved: workspace/x\n2026-01-01T03:00:00+00:00 scheduled backup starting\x1b[2J")
    log.write("line one\nline two", report=True)
    text = log.path.read_text()
    assert last_scheduled_run(log.path) is None, text
    assert "\x1b" not in text and len(text.splitlines()) == 3, text


def test_a_name_that_is_not_utf8_is_logged_as_its_bytes_not_a_crash(tmp_path: Path) -> None:
    """A scheduled run's notice or error naming a file whose name is not UTF-8 (`café` in
    Latin-1) raised UnicodeEncodeError in the log's strict UTF-8 writer: the run stopped with a
    traceback and no "finished" line. The log holds the name's bytes, as a terminal gets them."""
    from phoenix_backup.schedule import last_scheduled_run
    from phoenix_backup.schedule.runlog import RunLog

    log = RunLog(tmp_path)
    log.write("scheduled backup starting (config default)")
    name = os.fsdecode(b"workspace/caf\xe9\xff.md")
    log.write(f"phx: error: cannot read {name}")
    raw = log.path.read_bytes()
    assert b"workspace/caf\xe9\xff.md\n" in raw, raw
    assert last_scheduled_run(log.path) is not None


def test_a_secret_of_two_lines_stays_out_of_a_scheduled_runs_log(tmp_path: Path) -> None:
    """A passphrase file of two lines is one secret holding a newline: a report quoting it was cut
    into lines first and each line redacted alone, so neither half was the secret and both went
    into the log as they were. The report is redacted whole, then cut."""
    from phoenix_backup.schedule.runlog import RunLog

    log = RunLog(tmp_path, secrets=lambda: ["correct-horse\nbattery-staple"])
    log.write("hook said: correct-horse\nbattery-staple, done", report=True)
    text = log.path.read_text()
    assert "horse" not in text and "battery" not in text and "hook said: ***, done" in text, text


def _as_cron_runs(line: str) -> list[str]:
    """The words `sh` is given for a crontab line, after cron's own `%` handling (cronie's and
    Vixie's loop: `\\%` is a `%`, an unescaped `%` ends the command)."""
    import shlex

    command, out, escaped = line.split(" ", 5)[5], [], False
    for ch in command:
        if escaped:
            if ch == "%":
                out[-1] = "%"
            else:
                out.append(ch)
            escaped = False
            continue
        if ch == "%":
            break
        out.append(ch)
        escaped = ch == "\\"
    return shlex.split("".join(out))


def test_a_percent_in_the_config_path_reaches_cron_as_it_is_or_is_refused(tmp_path: Path) -> None:
    """`%` ends a cron command unless escaped: a config path holding a backslash before a `%`
    cut the command inside its quotes (the job failed at every run, saying nothing). A path cron
    can carry comes back exact; that one is refused with one error, nothing written."""
    from phoenix_backup.errors import UsageError
    from phoenix_backup.schedule import cron

    spec = ScheduleSpec.parse("daily", "03:00")
    for name in ("a%b", "50% 'off' $HOME", "back\\slash"):
        config = tmp_path / name / "backup.json"
        words = _as_cron_runs(cron.line(spec, Job.for_config(config, {}, tmp_path / "home")))
        assert words[-3:] == [str(config), ">/dev/null", "2>&1"], words
    with pytest.raises(UsageError, match="backslash before a `%`"):
        cron.line(spec, Job.for_config(tmp_path / "a\\%b" / "backup.json", {}, tmp_path / "home"))


def test_a_command_longer_than_cron_keeps_is_refused_not_cut(tmp_path: Path) -> None:
    """Vixie cron keeps 998 bytes of a line's command (a 1,000-byte buffer) and drops the rest
    silently: a long PYTHONPATH or config path left a job whose `--config` path (or its quote) was
    cut, so it failed at every run. Such a command is refused at install with one error; the longest
    one cron keeps whole is written as it is. 998 is measured, not read from the constant: Debian's
    crontab 3.0pl1-162 takes a 998-byte command and refuses 999 bytes ("command too long"), which
    Phoenix passed on as crontab's words."""
    from phoenix_backup.errors import UsageError
    from phoenix_backup.schedule import cron

    spec = ScheduleSpec.parse("daily", "03:00")
    home = tmp_path / "home"
    short = cron.line(spec, Job.for_config(tmp_path / "backup.json", {}, home))
    room = cron.MAX_COMMAND_BYTES - len(short.split(" ", 5)[5].encode())
    fits = {"PYTHONPATH": "/" + "p" * (room - len(" PYTHONPATH=/"))}
    line = cron.line(spec, Job.for_config(tmp_path / "backup.json", fits, home))
    assert len(line.split(" ", 5)[5].encode()) == cron.MAX_COMMAND_BYTES == 998
    assert _as_cron_runs(line)[-3:] == [str(tmp_path / "backup.json"), ">/dev/null", "2>&1"]
    for env, config in (
        ({"PYTHONPATH": fits["PYTHONPATH"] + "p"}, tmp_path / "backup.json"),
        ({}, tmp_path / ("d" * 250) / ("e" * 250) / ("f" * 250) / ("g" * 250) / "backup.json"),
        ({}, tmp_path / ("%" * 450) / "backup.json"),
    ):
        with pytest.raises(UsageError, match="bytes and cron takes at most 998"):
            cron.line(spec, Job.for_config(config, env, home))


def test_the_program_a_job_runs_is_the_python_before_phoenixs_module(tmp_path: Path) -> None:
    """Doctor's `schedule.missing_program` took the first absolute path of the job's line for its
    program: a crontab line edited by hand (`cd DIR && flock -n LOCK PYTHON ...`) failed doctor
    ("runs /srv, which no longer exists") while every run worked; a Python path with a space and
    a `%` (which `cron.line` writes as `\\%` inside quotes, and cron passes on as `%`) was called
    gone; a systemd `ExecStart=-/gone/python ...` named the config file instead of the Python."""
    import sys

    from phoenix_backup.schedule import cron, missing_program

    spec = ScheduleSpec.parse("daily", "03:00")
    venv = tmp_path / "my venv%1" / "bin"
    venv.mkdir(parents=True)
    (venv / "python3").symlink_to(sys.executable)
    config = tmp_path / "backup.json"
    config.write_text("{}")
    job = Job(
        (str(venv / "python3"), "-m", "phoenix_backup.cli.main", "schedule", "run", "--config", str(config)),
        (),
        tmp_path,
    )
    home = tmp_path / "home"
    assert missing_program("cron", {"entry": cron.line(spec, job)}, home) is None
    edited = f"0 3 * * * cd {tmp_path} && flock -n {tmp_path / 'phx.lock'} {sys.executable} -m phoenix_backup.cli.main"
    assert missing_program("cron", {"entry": edited + f" schedule run --config {config}"}, home) is None
    gone = tmp_path / "moved" / "python3"
    units = tmp_path / "units"
    units.mkdir()
    unit = units / systemd.service_name("phoenix-backup")
    unit.write_text(f"[Service]\nExecStart=-{gone} -m phoenix_backup.cli.main schedule run --config {config}\n")
    assert missing_program("systemd", {"unitDir": str(units)}, home) == str(gone)
    moved = f"0 3 * * * {gone} -m phoenix_backup.cli.main schedule run --config {config} >/dev/null 2>&1"
    assert missing_program("cron", {"entry": moved}, home) == str(gone)
