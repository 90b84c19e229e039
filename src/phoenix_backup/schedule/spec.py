"""When scheduled backups (and drills) run: `hourly`, `daily`, `weekly`, `monthly` (the 1st of the
month; these three with `--at HH:MM`) or a 5-field cron expression, in the machine's local time.
One model (the sets of minutes, hours, days of the month, months and days of the week a cron line
allows) gives the crontab line, systemd's `OnCalendar=`, launchd's `StartCalendarInterval`, and
the next and previous due times that `phx status` reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from itertools import product

from phoenix_backup.errors import UsageError

WORDS = ("hourly", "daily", "weekly", "monthly")
# The words that take a time of day (`--at`).
AT_WORDS = ("daily", "weekly", "monthly")
DEFAULT_AT = "02:00"
_TIME = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])\Z")
_MONTHS = {
    m: i for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)
}
_DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_SYSTEMD_DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
# (low, high) of each cron field: minute, hour, day of month, month, day of week (0 = Sunday).
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
_FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week")
# launchd needs one dictionary per combination; beyond this an expression is refused there.
MAX_LAUNCHD_ENTRIES = 1000


@dataclass(frozen=True)
class ScheduleSpec:
    every: str  # hourly | daily | weekly | monthly | a cron expression
    at: str | None = None  # HH:MM for daily, weekly and monthly

    @classmethod
    def parse(cls, every: str, at: str | None = None) -> ScheduleSpec:
        every = " ".join(every.split())
        if every not in WORDS:
            fields = every.split(" ")
            if len(fields) != 5:
                raise UsageError(
                    f'--every must be hourly, daily, weekly, monthly or a 5-field cron expression such as "30 3 * * *" '
                    f"(got {every!r})"
                )
            if at is not None:
                raise UsageError(
                    "--at only applies to daily, weekly and monthly; put the time into the cron expression"
                )
            spec = cls(every)
            spec.fields()  # validate
            return spec
        if at is not None and every == "hourly":
            raise UsageError("--at only applies to daily, weekly and monthly; hourly runs at minute 0")
        if at is not None and not _TIME.match(at):
            raise UsageError(f'--at must be a time "HH:MM" such as "02:00" (got {at!r})')
        return cls(every, at if every != "hourly" else None)

    @property
    def time_of_day(self) -> tuple[int, int]:
        m = _TIME.match(self.at or DEFAULT_AT)
        assert m is not None
        return int(m.group(1)), int(m.group(2))

    def cron(self) -> str:
        """The five cron fields."""
        if self.every == "hourly":
            return "0 * * * *"
        if self.every in AT_WORDS:
            hour, minute = self.time_of_day
            day_of_month = "1" if self.every == "monthly" else "*"
            return f"{minute} {hour} {day_of_month} * {'0' if self.every == 'weekly' else '*'}"
        return self.every

    def describe(self) -> str:
        if self.every == "hourly":
            return "hourly (minute 0)"
        if self.every == "daily":
            return f"daily at {self.at or DEFAULT_AT}"
        if self.every == "weekly":
            return f"weekly on Sunday at {self.at or DEFAULT_AT}"
        if self.every == "monthly":
            return f"monthly on the 1st at {self.at or DEFAULT_AT}"
        return f"cron {self.every!r}"

    def fields(self) -> tuple[frozenset[int], ...]:
        parts = self.cron().split()
        return tuple(_field(text, i) for i, text in enumerate(parts))

    def restricted(self) -> tuple[bool, bool]:
        """Whether day of month and day of week are restricted (cron ORs them when both are)."""
        parts = self.cron().split()
        return parts[2] not in ("*", "?"), parts[4] not in ("*", "?")

    # -- due times -------------------------------------------------------------------

    def _day_matches(self, day: date) -> bool:
        _mins, _hours, doms, months, dows = self.fields()
        if day.month not in months:
            return False
        dom_r, dow_r = self.restricted()
        dom_ok = day.day in doms
        dow_ok = (day.isoweekday() % 7) in dows
        if dom_r and dow_r:
            return dom_ok or dow_ok  # cron's rule
        return dom_ok and dow_ok

    def _times(self) -> list[time]:
        mins, hours, *_ = self.fields()
        return [time(h, m) for h in sorted(hours) for m in sorted(mins)]

    def next_after(self, when: datetime) -> datetime:
        """The first due time strictly after `when` (local time; `when` is aware or naive)."""
        base = _local_naive(when)
        times = self._times()
        for offset in range(0, 366 * 8):
            day = base.date() + timedelta(days=offset)
            if not self._day_matches(day):
                continue
            for t in times:
                moment = datetime.combine(day, t)
                if moment > base:
                    return _back(moment, when.tzinfo is not None)
        raise UsageError(f"the schedule {self.describe()} never comes due; fix the cron expression")

    def previous_before(self, when: datetime) -> datetime | None:
        """The last due time at or before `when`, or None within eight years."""
        base = _local_naive(when)
        times = list(reversed(self._times()))
        for offset in range(0, 366 * 8):
            day = base.date() - timedelta(days=offset)
            if not self._day_matches(day):
                continue
            for t in times:
                moment = datetime.combine(day, t)
                if moment <= base:
                    return _back(moment, when.tzinfo is not None)
        return None

    def period(self, around: datetime) -> timedelta:
        """The gap between the due time before `around` and the next one: the interval the
        schedule implies there (constant for hourly/daily/weekly; 28 to 31 days for monthly)."""
        prev = self.previous_before(around)
        if prev is None:
            return timedelta(days=366)
        return self.next_after(prev) - prev

    # -- scheduler syntaxes ------------------------------------------------------------

    def on_calendar(self) -> list[str]:
        """systemd `OnCalendar=` values (two when cron's day-of-month OR day-of-week applies)."""
        mins, hours, doms, months, dows = self.fields()
        clock = f"{_sd(hours, 0, 23)}:{_sd(mins, 0, 59)}:00"
        month = _sd(months, 1, 12)
        dom_r, dow_r = self.restricted()
        dow_text = ",".join(_SYSTEMD_DAYS[d] for d in sorted(dows))
        if dom_r and dow_r:
            return [f"*-{month}-{_sd(doms, 1, 31)} {clock}", f"{dow_text} *-{month}-* {clock}"]
        prefix = f"{dow_text} " if dow_r else ""
        return [f"{prefix}*-{month}-{_sd(doms, 1, 31)} {clock}"]

    def launchd_intervals(self) -> list[dict[str, int]]:
        """launchd `StartCalendarInterval` dictionaries (an unrestricted field is left out)."""
        mins, hours, doms, months, dows = self.fields()
        keys = (("Minute", mins, 0, 59), ("Hour", hours, 0, 23), ("Month", months, 1, 12))
        fixed = [(k, sorted(v)) for k, v, lo, hi in keys if len(v) != hi - lo + 1]
        dom_r, dow_r = self.restricted()
        day_choices: list[list[tuple[str, int]]] = []
        if dom_r:
            day_choices.append([("Day", d) for d in sorted(doms)])
        if dow_r:
            day_choices.append([("Weekday", d) for d in sorted(dows)])
        # cron ORs the two day fields: one dictionary per day value of either.
        days: list[tuple[str, int] | None] = [c for choice in day_choices for c in choice] or [None]
        count = len(days)
        for _k, values in fixed:
            count *= len(values)
        if count > MAX_LAUNCHD_ENTRIES:
            raise UsageError(
                f"the schedule {self.describe()} needs {count} launchd entries; use a simpler cron expression"
            )
        out = []
        for combo in product(*[[(k, v) for v in values] for k, values in fixed]):
            for day in days:
                entry = dict(combo)
                if day is not None:
                    entry[day[0]] = day[1]
                out.append(entry)
        return out


def _local_naive(when: datetime) -> datetime:
    """Schedules run in the machine's local time: an aware time is converted to it first."""
    return when.astimezone().replace(tzinfo=None) if when.tzinfo is not None else when


def _back(moment: datetime, aware: bool) -> datetime:
    # A naive local time's astimezone() applies the local offset of that very moment (DST-safe).
    return moment.astimezone() if aware else moment


def _sd(values: frozenset[int], lo: int, hi: int) -> str:
    """One systemd calendar component: `*` for the full range, else a comma list (2-digit)."""
    if len(values) == hi - lo + 1:
        return "*"
    return ",".join(f"{v:02d}" for v in sorted(values))


def _field(text: str, index: int) -> frozenset[int]:
    lo, hi = _RANGES[index]
    top = 7 if index == 4 else hi  # cron accepts 7 for Sunday too
    names = _MONTHS if index == 3 else _DAYS if index == 4 else {}
    out: set[int] = set()
    for raw in text.lower().split(","):
        part, step = raw, 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            step = _number(step_text, {}, index)
            if step < 1:
                raise _bad(text, index)
        if part in ("*", "?"):
            start, end = lo, hi
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = _number(a, names, index), _number(b, names, index)
        else:
            start = _number(part, names, index)
            end = top if step != 1 else start  # "5/15" means 5, 20, 35, 50
        if not lo <= start <= end <= top:
            raise _bad(text, index)
        out.update(range(start, end + 1, step))
    if index == 4 and 7 in out:
        out.discard(7)
        out.add(0)
    return frozenset(out)


def _number(text: str, names: dict[str, int], index: int) -> int:
    if text in names:
        return names[text]
    if not text.isdigit():
        raise _bad(text, index)
    return int(text)


def _bad(text: str, index: int) -> UsageError:
    lo, hi = _RANGES[index]
    return UsageError(
        f"the cron {_FIELD_NAMES[index]} field {text!r} is not valid (values {lo}-{hi}, lists, ranges, steps); fix it"
    )
