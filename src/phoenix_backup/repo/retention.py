"""The retention policy: which snapshots `forget` keeps, and why (pure: no repository, no clock).

Semantics are restic's `forget` as of 0.16, so a restic user can reason about them:

- Snapshots are grouped by host, user, workspace folder and scope (restic's host and paths: two
  agents of one host sharing a repository never push each other out; a `--memory-only` snapshot
  never pushes out a full one); `pre-restore` safety snapshots form groups of their own, so an
  undo record taken after the nightly backup never takes that day's slot from it.
- Within a group, walking snapshots newest first, each rule (`last`, `hourly`, `daily`, `weekly`,
  `monthly`, `yearly`) keeps the newest snapshot of each of the N most recent periods that hold
  one. Periods are read in the snapshot's recorded UTC offset; weeks are ISO weeks (2021-01-01 is
  in 2020-W53). `-1` means every period, `0` switches the rule off. A period met again after an
  offset change is not counted twice (restic counts it, and the oldest period it promised is
  lost); its snapshot is kept as restic keeps it, taking no slot, so never fewer are kept.
- A partial snapshot kept as the newest of its period also keeps the period's newest complete one.
- A rule that still has budget when it reaches the group's oldest snapshot keeps that one too,
  which maximises the history kept while the budget allows.
- `within` keeps every snapshot newer than the duration, counted back from the group's newest
  snapshot that is not in the future (restic's `--keep-within`).
- Rules are independent and OR-ed; every kept snapshot lists the rules that keep it.
- `pre-restore` snapshots younger than `keepSafetyDays` days are kept whatever the rules say.
- A snapshot carrying a user's tag (any tag but `pre-restore`) is kept: only an explicit
  `phx forget ID` removes it. The snapshot a backup has just made is kept by that backup's run.
- The newest complete snapshot of a group is kept while newer ones are partial (they lack what
  could not be read): partial runs never push out the last snapshot that holds everything.
- For each SQLite database, the newest snapshot whose copy of it passed a full `integrity_check`
  is kept while newer ones hold it unchecked (between checks on their cadence) or failed: a
  damage found late never leaves only copies that may carry it (docs/integrity-cadence.md).
  `pre-restore` groups are left to `keepSafetyDays`.
- A snapshot dated in the future (more than FUTURE_SLACK ahead of `now`: a clock set wrong, or
  `--time`) is kept, takes no period and no budget, and is reported: it never pushes out the
  snapshots of the present.
- A policy with no positive or `-1` rule and no `within` is no policy: nothing is forgotten.
- A plan that would remove every snapshot of a group is refused (`RetentionRefused`).
- Every removed snapshot says why no rule kept it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

from phoenix_backup.config import Retention
from phoenix_backup.errors import ConfigError, RetentionRefused
from phoenix_backup.repo.snapshot import CAPTURE_SCOPES, FUTURE_SLACK, recorded_agent

SAFETY_TAG = "pre-restore"
# The rules that count periods, in restic's order (which is also the order reasons are listed in).
COUNT_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")

# A count rule's reason for a period met again after a UTC offset change (kept, takes no slot).
AGAIN = "again"

_DURATION_PART = re.compile(r"([0-9]+)([ymdh])")


class Candidate(Protocol):
    """What the policy needs to know of a snapshot (a `Snapshot` has all of it)."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def time(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def scope(self) -> str: ...

    @property
    def tags(self) -> tuple[str, ...]: ...

    @property
    def incomplete(self) -> Sequence[object]: ...

    @property
    def databases(self) -> Sequence[CheckedDatabase]: ...


class CheckedDatabase(Protocol):
    """What the policy needs to know of a snapshot's database (a `DatabaseInfo` has it)."""

    @property
    def path(self) -> str: ...

    @property
    def engine(self) -> str: ...

    @property
    def integrity(self) -> str: ...


@dataclass(frozen=True)
class Duration:
    """restic's duration: years, months, days and hours (`1y6m`, `30d`, `36h`)."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> Duration:
        parts = _DURATION_PART.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise ConfigError(f'retention.within must look like "30d" or "1y6m" (got {text!r}); fix the config')
        values = {"y": 0, "m": 0, "d": 0, "h": 0}
        for number, unit in parts:
            values[unit] = int(number)  # a repeated unit wins, as in restic
        return cls(values["y"], values["m"], values["d"], values["h"])

    @property
    def zero(self) -> bool:
        return not (self.years or self.months or self.days or self.hours)

    def before(self, when: datetime) -> datetime:
        """`when` minus this duration, with Go's `AddDate` normalisation (restic's arithmetic):
        2026-03-31 minus one month is "2026-02-31", that is 2026-03-03."""
        month_index = when.year * 12 + (when.month - 1) - self.years * 12 - self.months
        year, month0 = divmod(month_index, 12)
        # Day overflow rolls into the next month, exactly like Go's time.Date.
        base = date(year, month0 + 1, 1) + timedelta(days=when.day - 1 - self.days)
        return when.replace(year=base.year, month=base.month, day=base.day) - timedelta(hours=self.hours)

    def __str__(self) -> str:
        out = ""
        for value, unit in ((self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h")):
            if value:
                out += f"{value}{unit}"
        return out or "0h"


@dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None
    keep_safety_days: int = 7
    # phx watch's capture segments (repo/captures.py `thinning`): every state this long, then
    # one an hour up to `captures_hourly_within`, then one a day.
    captures_within: Duration = field(default_factory=lambda: Duration(days=1))
    captures_hourly_within: Duration = field(default_factory=lambda: Duration(days=7))

    @classmethod
    def from_config(cls, retention: Retention) -> Policy:
        within = Duration.parse(retention.within) if retention.within else None
        return cls(
            last=retention.last,
            hourly=retention.hourly,
            daily=retention.daily,
            weekly=retention.weekly,
            monthly=retention.monthly,
            yearly=retention.yearly,
            within=within,
            keep_safety_days=retention.keep_safety_days,
            captures_within=Duration.parse(retention.captures_within),
            captures_hourly_within=Duration.parse(retention.captures_hourly_within),
        )

    def count(self, rule: str) -> int:
        value: int = getattr(self, rule)
        return value

    @property
    def empty(self) -> bool:
        """No positive or -1 rule and no `within`: no policy at all, so nothing is forgotten."""
        return all(self.count(r) == 0 for r in COUNT_RULES) and (self.within is None or self.within.zero)

    def describe(self) -> str:
        keeps = []
        for rule in COUNT_RULES:
            n = self.count(rule)
            label = "latest" if rule == "last" else rule
            if n > 0:
                keeps.append(f"{n} {label}")
            elif n == -1:
                keeps.append(f"all {label}")
        parts = [f"keep {', '.join(keeps)} snapshots"] if keeps else []
        if self.within is not None and not self.within.zero:
            parts.append(f"keep all snapshots within {self.within} of the newest")
        if not parts:
            parts.append("no retention rule (nothing is forgotten)")
        if self.keep_safety_days > 0:
            parts.append(f"keep {SAFETY_TAG} snapshots {self.keep_safety_days} days")
        return "; ".join(parts)

    def to_json(self) -> dict[str, object]:
        return {
            "last": self.last,
            "hourly": self.hourly,
            "daily": self.daily,
            "weekly": self.weekly,
            "monthly": self.monthly,
            "yearly": self.yearly,
            "within": str(self.within) if self.within is not None else None,
            "keepSafetyDays": self.keep_safety_days,
            "capturesWithin": str(self.captures_within),
            "capturesHourlyWithin": str(self.captures_hourly_within),
        }


@dataclass(frozen=True)
class Reason:
    """Why a snapshot is kept: one rule, the period it stands for, and whether it is kept as the
    oldest snapshot of a rule that still had budget."""

    rule: str  # last|hourly|daily|weekly|monthly|yearly|within|safety|empty|tag|new|future|complete|checked
    period: str | None = None
    oldest: bool = False
    detail: str | None = None

    def text(self) -> str:
        if self.rule == "empty":
            return "no retention rule: nothing is forgotten"
        if self.rule == "tag":
            return f"tagged {self.detail} (removed only by `phx forget ID`)"
        if self.rule == "new":
            return "just taken by this backup"
        if self.rule == "future":
            return f"dated {self.detail} in the future (kept, not counted)"
        if self.rule == "complete" and self.detail:
            return f"the newest complete snapshot of {self.detail}"
        if self.rule == "complete":
            return "the newest complete snapshot (the newer ones are partial)"
        if self.rule == "checked":
            return (
                f"the newest snapshot whose {self.detail} passed a full integrity check "
                "(newer ones are unchecked or failed)"
            )
        if self.rule == "within":
            return f"within {self.detail} of the newest"
        if self.rule == "safety":
            return f"{SAFETY_TAG} safety snapshot, kept {self.detail}"
        label = "last" if self.rule == "last" else self.rule
        if self.detail == AGAIN:
            return f"{label} {self.period}, met again after a UTC offset change (takes no slot)"
        if self.oldest:
            return f"oldest snapshot, {label} budget left ({self.period})"
        return f"{label} {self.period}"

    def to_json(self) -> dict[str, object]:
        return {"rule": self.rule, "period": self.period, "oldest": self.oldest, "text": self.text()}


@dataclass(frozen=True)
class GroupKey:
    host: str
    scope: str
    safety: bool
    # restic's paths: the user and workspace folder that made the snapshot ("" for a snapshot that
    # does not record them, which groups by host and scope as before).
    user: str = ""
    workspace: str = ""

    def __str__(self) -> str:
        agent = (f", user {self.user}" if self.user else "") + (
            f", workspace {self.workspace}" if self.workspace else ""
        )
        return f"host {self.host}{agent}, scope {self.scope}" + (f", {SAFETY_TAG}" if self.safety else "")

    def to_json(self) -> dict[str, object]:
        return {
            "host": self.host,
            "user": self.user,
            "workspace": self.workspace,
            "scope": self.scope,
            "safety": self.safety,
        }


@dataclass(frozen=True)
class Decision:
    snapshot: Candidate
    group: GroupKey
    keep: bool
    reasons: tuple[Reason, ...]
    why_removed: tuple[str, ...] = ()  # a removed snapshot: why each rule passed it over

    def removal_text(self) -> str:
        return "; ".join(self.why_removed) or "no rule keeps it"

    def to_json(self) -> dict[str, object]:
        s = self.snapshot
        doc: dict[str, object] = {
            "id": s.id,
            "name": s.name,
            "time": s.time,
            "host": s.host,
            "scope": s.scope,
            "tags": list(s.tags),
            "keep": self.keep,
            "reasons": [r.to_json() for r in self.reasons],
        }
        if not self.keep:
            doc["why"] = self.removal_text()
        return doc


@dataclass
class Plan:
    """Every snapshot's decision, groups in a stable order, newest first within a group."""

    policy: Policy
    decisions: list[Decision] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # clock skew: snapshots dated in the future

    @property
    def keep(self) -> list[Decision]:
        return [d for d in self.decisions if d.keep]

    @property
    def remove(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]

    def groups(self) -> list[tuple[GroupKey, list[Decision]]]:
        out: dict[GroupKey, list[Decision]] = {}
        for d in self.decisions:
            out.setdefault(d.group, []).append(d)
        return list(out.items())


# -- periods ------------------------------------------------------------------------------


def _period(rule: str, when: datetime, rank: int) -> str:
    """The period a snapshot falls in, in its own recorded offset (`when` keeps its tzinfo)."""
    if rule == "last":
        return f"#{rank + 1}"
    if rule == "hourly":
        return when.strftime("%Y-%m-%d %H:00")
    if rule == "daily":
        return when.strftime("%Y-%m-%d")
    if rule == "weekly":
        iso = when.isocalendar()
        return f"{iso.year}-W{iso.week:02d}"
    if rule == "monthly":
        return when.strftime("%Y-%m")
    return f"{when.year:04d}"


def parse_time(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        # A snapshot always records its offset; treat a bare time as UTC rather than fail.
        when = when.replace(tzinfo=UTC)
    return when


def group_key(s: Candidate) -> GroupKey:
    """Host, user, workspace folder and scope, as restic groups by host and paths: two agents of one
    host backing up into one repository (two users, two workspaces) never push each other out."""
    user, workspace = recorded_agent(s)
    return GroupKey(s.host, s.scope, SAFETY_TAG in s.tags, user, workspace)


# -- the policy ---------------------------------------------------------------------------


def apply_policy(snapshots: Iterable[Candidate], policy: Policy, now: datetime, *, protect: Iterable[str] = ()) -> Plan:
    """Decide keep/remove for every snapshot. `snapshots` are given oldest first (the repository's
    order); of snapshots with equal times the one given later counts as newer. The ids in
    `protect` (the snapshot a backup has just made) are always kept."""
    groups: dict[GroupKey, list[Candidate]] = {}
    for s in snapshots:
        groups.setdefault(group_key(s), []).append(s)
    plan = Plan(policy)
    kept = frozenset(protect)
    for key in sorted(groups, key=lambda k: (k.host, k.user, k.workspace, k.scope, k.safety)):
        rules = capture_policy(policy) if key.scope in CAPTURE_SCOPES else policy
        decisions = _apply_group(key, groups[key], rules, now, kept)
        refuse_if_everything_removed(key, decisions)
        plan.decisions.extend(decisions)
        plan.notices += [_future_notice(d.snapshot, now) for d in decisions if _is_future(d.snapshot, now)]
    return plan


def capture_policy(policy: Policy) -> Policy:
    """The policy for `phx watch`'s snapshots of the files: every one for a day, then one an hour up to
    three days, then as the policy says (its daily, weekly, ... rules); no policy, nothing forgotten."""
    if policy.empty:
        return policy
    day = Duration(days=1)
    within = (
        policy.within
        if policy.within is not None and policy.within.before(_EPOCH_PROBE) < day.before(_EPOCH_PROBE)
        else day
    )
    hourly = policy.hourly if policy.hourly < 0 else max(policy.hourly, 72)
    return replace(policy, within=within, hourly=hourly)


_EPOCH_PROBE = datetime(2000, 3, 1, tzinfo=UTC)  # durations are compared by what they take from one date


def user_tags(s: Candidate) -> tuple[str, ...]:
    """The tags a user gave (`--tag`); `pre-restore` is Phoenix's own."""
    return tuple(t for t in s.tags if t != SAFETY_TAG)


def _is_future(s: Candidate, now: datetime) -> bool:
    return parse_time(s.time) - now > FUTURE_SLACK


def _future_notice(s: Candidate, now: datetime) -> str:
    ahead = _span(parse_time(s.time) - now)
    return (
        f"snapshot {s.name} ({s.id[:8]}) of host {s.host} is dated {s.time}, {ahead} ahead of this clock: "
        f"it is kept and does not count for the retention rules; check the clock of {s.host}, and if its "
        f"date is wrong remove it with `phx forget {s.id[:8]}`"
    )


def _span(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} hours"


def refuse_if_everything_removed(key: GroupKey, decisions: Sequence[Decision]) -> None:
    """The last line of defence: with restic's rules any positive rule keeps a group's newest
    snapshot, so this only fires on a bug, and then nothing at all is forgotten."""
    if decisions and not any(d.keep for d in decisions):
        raise RetentionRefused(
            f"the retention policy would remove every snapshot of {key} ({len(decisions)}); "
            "nothing was forgotten; add a rule that keeps something, such as retention.last: 1"
        )


def _apply_group(
    key: GroupKey, members: Sequence[Candidate], policy: Policy, now: datetime, protect: frozenset[str] = frozenset()
) -> list[Decision]:
    # Newest first; `sorted` is stable, so reversing first makes later-given ties count as newer.
    ordered = sorted(reversed(members), key=lambda s: parse_time(s.time).timestamp(), reverse=True)
    if policy.empty:
        return [Decision(s, key, True, (Reason("empty"),)) for s in ordered]

    # Snapshots from the future are kept and set aside: counted, they would take the newest
    # periods and budget from the snapshots of the present.
    decisions = [
        Decision(s, key, True, (Reason("future", detail=_span(parse_time(s.time) - now)),))
        for s in ordered
        if _is_future(s, now)
    ]
    present = [s for s in ordered if not _is_future(s, now)]
    budgets = {rule: policy.count(rule) for rule in COUNT_RULES}
    # Each rule's periods already kept, and the snapshot kept for each. A set, not the previous
    # period: after the host's UTC offset changed (a machine moved west, its TZ reset), walking
    # newest first can come back to a period already kept ("2026-03-09" at 19:00-05:00, then
    # "2026-03-10" at 00:30+01:00, then "2026-03-09" at 20:00+01:00); counted again, it took a
    # slot, and the oldest period the rule promised was forgotten.
    holder: dict[tuple[str, str], str] = {}  # (rule, period) -> the snapshot kept for it
    # Each rule's periods whose kept snapshot is partial while no complete one of them was met
    # yet: a partial snapshot that is the newest of its period does not push out the period's
    # newest complete one.
    lacking: dict[str, set[str]] = {rule: set() for rule in COUNT_RULES}
    # Each rule's period of the snapshot it kept last: a period met again after other periods (the
    # offset change above) is kept as restic keeps it, but takes no slot, so counting each period
    # once never keeps fewer snapshots than restic (with `-1`, or a budget not spent).
    last_period: dict[str, str | None] = dict.fromkeys(COUNT_RULES)
    within_start = _within_start(ordered, policy.within, now)
    safety_until = timedelta(days=policy.keep_safety_days)
    complete = next((s for s in present if not s.incomplete), None)
    newest_complete = complete.id if complete is not None and complete is not present[0] else None
    # `pre-restore` undo records live keepSafetyDays, whatever their databases' checks say.
    last_good = {} if key.safety else _last_checked(present)

    for rank, snap in enumerate(present):
        when = parse_time(snap.time)
        reasons: list[Reason] = []
        passed: list[str] = []
        if key.safety and policy.keep_safety_days > 0 and now - when < safety_until:
            until = (when + safety_until).isoformat()
            reasons.append(Reason("safety", detail=f"{policy.keep_safety_days} days (until {until})"))
        if within_start is not None:
            if when > within_start:
                reasons.append(Reason("within", detail=str(policy.within)))
            else:
                passed.append(f"older than {policy.within} before the newest")
        is_oldest = rank == len(present) - 1
        for rule in COUNT_RULES:
            if policy.count(rule) == 0:
                continue
            if budgets[rule] == 0 and (snap.incomplete or not lacking[rule]):
                passed.append(f"beyond the {policy.count(rule)} {_unit(rule)} kept")
                continue
            period = _period(rule, when, rank)
            slot = (rule, period)
            if period in lacking[rule] and not snap.incomplete and snap.id != newest_complete:
                # The one kept for this period is partial: its newest complete snapshot is kept
                # too (also when that partial one spent the rule's last slot).
                detail = f"{rule} {period} ({holder[slot]}, kept for it, is partial)"
                reasons.append(Reason("complete", period, detail=detail))
            elif budgets[rule] == 0:
                passed.append(f"beyond the {policy.count(rule)} {_unit(rule)} kept")
            elif slot not in holder or is_oldest:
                reasons.append(Reason(rule, period, oldest=slot in holder))
                if slot not in holder and snap.incomplete:
                    lacking[rule].add(period)
                holder.setdefault(slot, snap.name)
                last_period[rule] = period
                if budgets[rule] > 0:
                    budgets[rule] -= 1
            elif period != last_period[rule]:
                reasons.append(Reason(rule, period, detail=AGAIN))
                last_period[rule] = period
            else:
                passed.append(f"{rule} keeps a newer snapshot of {period} ({holder[slot]})")
            if not snap.incomplete:
                lacking[rule].discard(period)
        tags = user_tags(snap)
        if tags:
            reasons.append(Reason("tag", detail=", ".join(tags)))
        if snap.id in protect:
            reasons.append(Reason("new"))
        if snap.id == newest_complete:
            reasons.append(Reason("complete"))
        if snap.id in last_good:
            reasons.append(Reason("checked", detail=", ".join(last_good[snap.id])))
        decisions.append(Decision(snap, key, bool(reasons), tuple(reasons), () if reasons else tuple(passed)))
    return decisions


def _last_checked(newest_first: Sequence[Candidate]) -> dict[str, list[str]]:
    """snapshot id -> the SQLite databases for which it is the newest snapshot whose copy passed a
    full integrity check, while a newer snapshot holds that database unchecked or failed."""
    out: dict[str, list[str]] = {}
    settled: set[str] = set()  # databases whose newest passing copy is found, or needs no keeping
    doubtful: set[str] = set()  # databases held unchecked or failed by a newer snapshot
    for snap in newest_first:
        for db in snap.databases:
            if db.engine != "sqlite" or db.path in settled:
                continue
            if db.integrity != "ok":
                doubtful.add(db.path)
                continue
            settled.add(db.path)
            if db.path in doubtful:
                out.setdefault(snap.id, []).append(db.path)
    return out


def _unit(rule: str) -> str:
    return {
        "last": "latest snapshots",
        "hourly": "hourly snapshots",
        "daily": "daily snapshots",
        "weekly": "weekly snapshots",
        "monthly": "monthly snapshots",
        "yearly": "yearly snapshots",
    }[rule]


def _within_start(ordered: Sequence[Candidate], within: Duration | None, now: datetime) -> datetime | None:
    """Snapshots after this instant are kept by `within`; None when the rule is off."""
    if within is None or within.zero:
        return None
    latest: datetime | None = None
    for s in ordered:
        when = parse_time(s.time)
        # The newest snapshot that is not in the future, like restic: a clock set wrong on one run
        # must not make `within` forget everything else.
        if when < now and (latest is None or when > latest):
            latest = when
    if latest is None:
        return datetime.min.replace(tzinfo=UTC)  # every snapshot is in the future: keep them all
    return within.before(latest)


def render_plan(plan: Plan, show: Callable[[Candidate], str] | None = None) -> list[str]:
    """Plain-text lines: per group a header, then one line per snapshot with its reasons."""
    label = show or (lambda s: f"{s.id[:8]} {s.time}")
    lines: list[str] = []
    for key, decisions in plan.groups():
        kept = sum(1 for d in decisions if d.keep)
        lines.append(f"{key}: keep {kept}, remove {len(decisions) - kept}")
        for d in decisions:
            why = reasons_text(d.reasons) if d.keep else d.removal_text()
            lines.append(f"  {'keep  ' if d.keep else 'remove'}  {label(d.snapshot)}" + (f"  {why}" if why else ""))
    return lines


def reasons_text(reasons: Sequence[Reason]) -> str:
    """The reasons a snapshot is kept, each said once: several rules that keep it as the oldest
    snapshot while they have budget left are named together ("oldest snapshot, daily (2026-12-05)
    and weekly (2026-W49) budget left"), not each with the same words."""
    oldest = [r for r in reasons if r.oldest]
    if len(oldest) < 2:
        return ", ".join(r.text() for r in reasons)
    rules = [f"{r.rule} ({r.period})" for r in oldest]
    combined = f"oldest snapshot, {', '.join(rules[:-1])} and {rules[-1]} budget left"
    parts: list[str] = []
    for r in reasons:
        if not r.oldest:
            parts.append(r.text())
        elif r is oldest[0]:
            parts.append(combined)
    return ", ".join(parts)
