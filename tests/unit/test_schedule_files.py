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
