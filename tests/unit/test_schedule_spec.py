"""The schedule model: cron fields, the systemd and launchd forms, due times (checked against
`systemd-analyze calendar` itself where it is installed), and the rotation of the run log."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from phoenix_backup.errors import UsageError
from phoenix_backup.schedule.runlog import LOG_NAME, RunLog
from phoenix_backup.schedule.spec import ScheduleSpec

BASE = datetime(2026, 3, 15, 12, 7)  # a Sunday


@pytest.mark.parametrize(
    ("every", "at", "cron", "calendar"),
    [
        ("hourly", None, "0 * * * *", ["*-*-* *:00:00"]),
        ("daily", None, "0 2 * * *", ["*-*-* 02:00:00"]),
        ("daily", "23:45", "45 23 * * *", ["*-*-* 23:45:00"]),
        ("weekly", "04:15", "15 4 * * 0", ["Sun *-*-* 04:15:00"]),
        ("monthly", None, "0 2 1 * *", ["*-*-01 02:00:00"]),
        ("monthly", "03:00", "0 3 1 * *", ["*-*-01 03:00:00"]),
        ("*/20 8-9 * * mon-fri", None, "*/20 8-9 * * mon-fri", ["Mon,Tue,Wed,Thu,Fri *-*-* 08,09:00,20,40:00"]),
        ("0 0 1,15 * 5", None, "0 0 1,15 * 5", ["*-*-01,15 00:00:00", "Fri *-*-* 00:00:00"]),
        ("30 4 29 feb *", None, "30 4 29 feb *", ["*-02-29 04:30:00"]),
        ("5 1 * * 7", None, "5 1 * * 7", ["Sun *-*-* 01:05:00"]),
    ],
)
def test_forms(every: str, at: str | None, cron: str, calendar: list[str]) -> None:
    spec = ScheduleSpec.parse(every, at)
    assert spec.cron() == cron
    assert spec.on_calendar() == calendar


@pytest.mark.parametrize(
    ("every", "at", "message"),
    [
        ("yearly", None, "5-field cron"),
        ("* * * *", None, "5-field cron"),
        ("61 * * * *", None, "minute field"),
        ("0 24 * * *", None, "hour field"),
        ("0 0 0 * *", None, "day of month field"),
        ("0 0 * 13 *", None, "month field"),
        ("0 0 * * 8", None, "day of week field"),
        ("*/0 * * * *", None, "minute field"),
        ("daily", "25:00", "HH:MM"),
        ("monthly", "3am", "HH:MM"),
        ("hourly", "02:00", "only applies to daily, weekly and monthly"),
        ("0 2 * * *", "02:00", "only applies to daily, weekly and monthly"),
    ],
)
def test_bad_schedules_are_refused_with_the_field(every: str, at: str | None, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        ScheduleSpec.parse(every, at)


def test_due_times() -> None:
    daily = ScheduleSpec.parse("daily", "02:00")
    assert daily.next_after(BASE) == datetime(2026, 3, 16, 2, 0)
    assert daily.previous_before(BASE) == datetime(2026, 3, 15, 2, 0)
    assert daily.period(BASE).total_seconds() == 86400
    weekly = ScheduleSpec.parse("weekly", None)
    assert weekly.next_after(BASE) == datetime(2026, 3, 22, 2, 0)
    # cron ORs a restricted day of month with a restricted day of week.
    either = ScheduleSpec.parse("0 0 1,15 * 5")
    assert either.next_after(BASE) == datetime(2026, 3, 20, 0, 0)
    assert either.previous_before(BASE) == datetime(2026, 3, 15, 0, 0)
    # Aware times come back aware, in local time.
    aware = daily.next_after(BASE.astimezone())
    assert aware.tzinfo is not None and aware > BASE.astimezone()


def test_monthly_is_the_first_of_the_month_across_month_ends() -> None:
    monthly = ScheduleSpec.parse("monthly", "03:00")
    assert monthly.describe() == "monthly on the 1st at 03:00"
    assert monthly.next_after(BASE) == datetime(2026, 4, 1, 3, 0)
    assert monthly.previous_before(BASE) == datetime(2026, 3, 1, 3, 0)
    # From the last day of a month, of a short February, at the due time itself, and over a year end.
    assert monthly.next_after(datetime(2026, 1, 31, 23, 59)) == datetime(2026, 2, 1, 3, 0)
    assert monthly.next_after(datetime(2026, 2, 1, 3, 0)) == datetime(2026, 3, 1, 3, 0)
    assert monthly.next_after(datetime(2026, 2, 1, 2, 59)) == datetime(2026, 2, 1, 3, 0)
    assert monthly.next_after(datetime(2026, 12, 31, 12, 0)) == datetime(2027, 1, 1, 3, 0)
    assert monthly.next_after(datetime(2028, 2, 29, 12, 0)) == datetime(2028, 3, 1, 3, 0)
    assert monthly.period(datetime(2026, 2, 15)).days == 28
    assert monthly.period(BASE).days == 31
    assert monthly.period(datetime(2026, 4, 15)).days == 30
    assert monthly.launchd_intervals() == [{"Minute": 0, "Hour": 3, "Day": 1}]
    assert ScheduleSpec.parse("monthly").at is None and ScheduleSpec.parse("monthly").cron() == "0 2 1 * *"


def test_launchd_intervals() -> None:
    assert ScheduleSpec.parse("weekly", "04:15").launchd_intervals() == [{"Minute": 15, "Hour": 4, "Weekday": 0}]
    assert ScheduleSpec.parse("hourly").launchd_intervals() == [{"Minute": 0}]
    assert ScheduleSpec.parse("*/30 * * * *").launchd_intervals() == [{"Minute": 0}, {"Minute": 30}]
    either = ScheduleSpec.parse("0 0 1,15 * 5").launchd_intervals()
    assert {"Minute": 0, "Hour": 0, "Day": 1} in either and {"Minute": 0, "Hour": 0, "Weekday": 5} in either
    with pytest.raises(UsageError, match="launchd entries"):
        ScheduleSpec.parse("0-58 0-22 1-30 * *").launchd_intervals()


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
_ELAPSE = re.compile(r"(?:Next elapse|Iter\. #\d+): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")


def systemd_next(calendar: str, base: datetime, n: int) -> list[datetime]:
    assert SYSTEMD_ANALYZE is not None
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "calendar", f"--base-time={base:%Y-%m-%d %H:%M:%S}", f"--iterations={n}", calendar],
        capture_output=True,
        text=True,
        env={**os.environ, "TZ": "UTC", "SYSTEMD_COLORS": "0"},
        check=True,
    )
    return [datetime.fromisoformat(m) for m in _ELAPSE.findall(proc.stdout)]


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize(
    "every",
    [
        "hourly",
        "daily",
        "weekly",
        "monthly",
        "*/20 8-9 * * mon-fri",
        "0 0 1,15 * 5",
        "30 4 29 2 *",
        "15 3 * jan,jul sat",
    ],
)
def test_next_due_matches_systemd(every: str) -> None:
    """systemd itself computes the due times of our OnCalendar= lines: they must be ours."""
    spec = ScheduleSpec.parse(every)
    theirs = sorted({t for cal in spec.on_calendar() for t in systemd_next(cal, BASE, 6)})[:6]
    ours = []
    when = BASE
    for _ in range(6):
        when = spec.next_after(when)
        ours.append(when)
    assert ours == theirs


def test_run_log_rotates_and_keeps_five(tmp_path: Path) -> None:
    log = RunLog(tmp_path, max_bytes=2000, keep=5)
    for i in range(400):
        if i % 20 == 0:
            log = RunLog(tmp_path, max_bytes=2000, keep=5)  # every run opens the log anew
        log.write(f"line {i:04d} " + "x" * 40)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [LOG_NAME] + [f"{LOG_NAME}.{n}" for n in range(1, 6)]
    assert "line 0399" in (tmp_path / LOG_NAME).read_text()
    assert all(p.stat().st_size < 2000 + 20 * 80 for p in tmp_path.iterdir())
    assert oct((tmp_path / LOG_NAME).stat().st_mode & 0o777) == "0o600"
