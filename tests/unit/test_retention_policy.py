"""The retention policy's rules beyond the golden files: restic's own expected decisions for its
test snapshot list, restic's duration arithmetic, the refusal guard, and invariants that hold
for any list of snapshots (hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenix_backup.errors import ConfigError, RetentionRefused
from phoenix_backup.repo.retention import (
    AGAIN,
    Decision,
    Duration,
    GroupKey,
    Policy,
    apply_policy,
    refuse_if_everything_removed,
)
from phoenix_backup.repo.snapshot import DatabaseInfo


@dataclass(frozen=True)
class Snap:
    id: str
    name: str
    time: str
    host: str = "host"
    scope: str = "full"
    tags: tuple[str, ...] = ()
    incomplete: tuple[object, ...] = ()  # a partial snapshot's unsaved parts
    databases: tuple[DatabaseInfo, ...] = ()


def snaps_at(times: list[datetime]) -> list[Snap]:
    ordered = sorted(times, key=lambda t: t.timestamp())
    return [Snap(f"s{i}", f"s{i}", t.isoformat()) for i, t in enumerate(ordered)]


# restic's TestApplyPolicy snapshot list (internal/restic/snapshot_policy_test.go), all UTC.
RESTIC_TIMES = [
    "2014-09-01 10:20:30",
    "2014-09-02 10:20:30",
    "2014-09-05 10:20:30",
    "2014-09-06 10:20:30",
    "2014-09-08 10:20:30",
    "2014-09-09 10:20:30",
    "2014-09-10 10:20:30",
    "2014-09-11 10:20:30",
    "2014-09-20 10:20:30",
    "2014-09-22 10:20:30",
    "2014-08-08 10:20:30",
    "2014-08-10 10:20:30",
    "2014-08-12 10:20:30",
    "2014-08-13 10:20:30",
    "2014-08-13 10:20:30.1",
    "2014-08-15 10:20:30",
    "2014-08-18 10:20:30",
    "2014-08-20 10:20:30",
    "2014-08-21 10:20:30",
    "2014-08-22 10:20:30",
    "2014-10-01 10:20:30",
    "2014-10-02 10:20:30",
    "2014-10-05 10:20:30",
    "2014-10-06 10:20:30",
    "2014-10-08 10:20:30",
    "2014-10-09 10:20:30",
    "2014-10-10 10:20:30",
    "2014-10-11 10:20:30",
    "2014-10-20 10:20:30",
    "2014-10-22 10:20:30",
    "2014-11-08 10:20:30",
    "2014-11-10 10:20:30",
    "2014-11-12 10:20:30",
    "2014-11-13 10:20:30",
    "2014-11-13 10:20:30.1",
    "2014-11-15 10:20:30",
    "2014-11-18 10:20:30",
    "2014-11-20 10:20:30",
    "2014-11-21 10:20:30",
    "2014-11-22 10:20:30",
    "2015-09-01 10:20:30",
    "2015-09-02 10:20:30",
    "2015-09-05 10:20:30",
    "2015-09-06 10:20:30",
    "2015-09-08 10:20:30",
    "2015-09-09 10:20:30",
    "2015-09-10 10:20:30",
    "2015-09-11 10:20:30",
    "2015-09-20 10:20:30",
    "2015-09-22 10:20:30",
    "2015-08-08 10:20:30",
    "2015-08-10 10:20:30",
    "2015-08-12 10:20:30",
    "2015-08-13 10:20:30",
    "2015-08-13 10:20:30.1",
    "2015-08-15 10:20:30",
    "2015-08-18 10:20:30",
    "2015-08-20 10:20:30",
    "2015-08-21 10:20:30",
    "2015-08-22 10:20:30",
    "2015-10-01 10:20:30",
    "2015-10-02 10:20:30",
    "2015-10-05 10:20:30",
    "2015-10-06 10:20:30",
    "2015-10-08 10:20:30",
    "2015-10-09 10:20:30",
    "2015-10-10 10:20:30",
    "2015-10-11 10:20:30",
    "2015-10-20 10:20:30",
    "2015-10-22 10:20:30",
    "2015-10-22 10:20:30",
    "2015-10-22 10:20:30",
    "2015-10-22 10:20:30",
    "2015-10-22 10:20:30",
    "2015-11-08 10:20:30",
    "2015-11-10 10:20:30",
    "2015-11-12 10:20:30",
    "2015-11-13 10:20:30",
    "2015-11-13 10:20:30.1",
    "2015-11-15 10:20:30",
    "2015-11-18 10:20:30",
    "2015-11-20 10:20:30",
    "2015-11-21 10:20:30",
    "2015-11-22 10:20:30",
    "2016-01-01 01:02:03",
    "2016-01-01 01:03:03",
    "2016-01-01 07:08:03",
    "2016-01-03 07:02:03",
    "2016-01-04 10:23:03",
    "2016-01-04 11:23:03",
    "2016-01-04 12:23:03",
    "2016-01-04 12:24:03",
    "2016-01-04 12:28:03",
    "2016-01-04 12:30:03",
    "2016-01-04 16:23:03",
    "2016-01-05 09:02:03",
    "2016-01-06 08:02:03",
    "2016-01-07 10:02:03",
    "2016-01-08 20:02:03",
    "2016-01-09 21:02:03",
    "2016-01-12 21:02:03",
    "2016-01-12 21:08:03",
    "2016-01-18 12:02:03",
]

# What restic 0.16+ keeps of that list for {Daily: 3, Weekly: 2, Monthly: -1, Yearly: -1}, with its
# reasons (internal/restic/testdata/policy_keep_snapshots_39): an oracle we did not write.
RESTIC_EXPECTED = [
    ("2016-01-18 12:02:03", ["daily", "weekly", "monthly", "yearly"]),
    ("2016-01-12 21:08:03", ["daily", "weekly"]),
    ("2016-01-09 21:02:03", ["daily"]),
    ("2015-11-22 10:20:30", ["monthly", "yearly"]),
    ("2015-10-22 10:20:30", ["monthly"]),
    ("2015-09-22 10:20:30", ["monthly"]),
    ("2015-08-22 10:20:30", ["monthly"]),
    ("2014-11-22 10:20:30", ["monthly", "yearly"]),
    ("2014-10-22 10:20:30", ["monthly"]),
    ("2014-09-22 10:20:30", ["monthly"]),
    ("2014-08-22 10:20:30", ["monthly"]),
    ("2014-08-08 10:20:30", ["monthly", "yearly"]),
]


def test_restic_oracle() -> None:
    snaps = snaps_at([datetime.fromisoformat(t).replace(tzinfo=UTC) for t in RESTIC_TIMES])
    plan = apply_policy(snaps, Policy(daily=3, weekly=2, monthly=-1, yearly=-1), datetime(2030, 1, 1, tzinfo=UTC))
    got = [
        (datetime.fromisoformat(d.snapshot.time).strftime("%Y-%m-%d %H:%M:%S"), [r.rule for r in d.reasons])
        for d in plan.keep
    ]
    assert got == RESTIC_EXPECTED
    # The last one is kept by the oldest-snapshot rule, for both unlimited rules.
    assert all(r.oldest for r in plan.keep[-1].reasons)
    assert len(plan.remove) == len(RESTIC_TIMES) - len(RESTIC_EXPECTED)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", Duration(days=30)),
        ("1y6m", Duration(years=1, months=6)),
        ("36h", Duration(hours=36)),
        ("2y5m7d3h", Duration(2, 5, 7, 3)),
        ("1d2d", Duration(days=2)),
    ],
)
def test_duration_parse(text: str, expected: Duration) -> None:
    assert Duration.parse(text) == expected
    assert str(Duration.parse(str(expected))) == str(expected)


@pytest.mark.parametrize("text", ["", "30", "d", "1w", "-1d", "1.5d", "1d "])
def test_duration_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match=r"retention\.within"):
        Duration.parse(text)


@pytest.mark.parametrize(
    ("when", "duration", "expected"),
    [
        # Go's AddDate normalisation: "2026-02-31" is 2026-03-03.
        ("2026-03-31T12:00:00+00:00", "1m", "2026-03-03T12:00:00+00:00"),
        ("2024-02-29T00:00:00+00:00", "1y", "2023-03-01T00:00:00+00:00"),
        ("2026-01-05T06:00:00+05:30", "10d", "2025-12-26T06:00:00+05:30"),
        ("2026-03-01T01:00:00-05:00", "2h", "2026-02-28T23:00:00-05:00"),
        ("2026-03-15T00:00:00+00:00", "1y2m3d4h", "2025-01-11T20:00:00+00:00"),
    ],
)
def test_duration_before(when: str, duration: str, expected: str) -> None:
    assert Duration.parse(duration).before(datetime.fromisoformat(when)).isoformat() == expected


def test_refusal_guard_names_the_group_and_the_fix() -> None:
    key = GroupKey("laptop", "full", False)
    decisions = [Decision(Snap("a", "a", "2026-01-01T00:00:00+00:00"), key, False, ())]
    with pytest.raises(RetentionRefused, match=r"every snapshot of host laptop, scope full.*retention.last"):
        refuse_if_everything_removed(key, decisions)
    refuse_if_everything_removed(key, [])  # nothing to decide is fine


def test_safety_days_zero_gives_no_protection() -> None:
    now = datetime(2026, 3, 20, tzinfo=UTC)
    snaps = [
        Snap("a", "a", (now - timedelta(days=2)).isoformat(), tags=("pre-restore",)),
        Snap("b", "b", (now - timedelta(days=1)).isoformat(), tags=("pre-restore",)),
    ]
    kept = {d.snapshot.id for d in apply_policy(snaps, Policy(last=1, keep_safety_days=0), now).keep}
    assert kept == {"b"}
    kept = {d.snapshot.id for d in apply_policy(snaps, Policy(last=1, keep_safety_days=3), now).keep}
    assert kept == {"a", "b"}


# -- invariants for any snapshot list -----------------------------------------------------

_offsets = st.sampled_from([timedelta(hours=h) for h in (-8, -5, 0, 1, 5.5, 9, 14)])
_times = st.lists(
    st.tuples(st.integers(0, 3 * 365 * 24 * 60), _offsets).map(
        lambda p: (datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=p[0])).astimezone(timezone(p[1]))
    ),
    min_size=1,
    max_size=60,
)
_count = st.sampled_from([-1, 0, 1, 2, 3, 7])
_policies = st.builds(Policy, last=_count, hourly=_count, daily=_count, weekly=_count, monthly=_count, yearly=_count)


@settings(max_examples=200, deadline=None)
@given(times=_times, policy=_policies)
def test_invariants(times: list[datetime], policy: Policy) -> None:
    snaps = snaps_at(times)
    plan = apply_policy(snaps, policy, datetime(2030, 1, 1, tzinfo=UTC))
    assert len(plan.decisions) == len(snaps)
    assert {d.snapshot.id for d in plan.decisions} == {s.id for s in snaps}
    if policy.empty:
        assert not plan.remove
        return
    # The newest snapshot is always kept, and every kept snapshot says why.
    assert plan.decisions[0].keep
    assert all(d.reasons for d in plan.keep) and all(not d.reasons for d in plan.remove)
    # A positive count never keeps more periods than its budget (the oldest rule adds at most one).
    for rule in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        n = policy.count(rule)
        uses = [r for d in plan.keep for r in d.reasons if r.rule == rule and r.detail != AGAIN]
        if n > 0:
            assert len(uses) <= n
        if n == 0:
            assert not uses
    # Keeping is monotonic in the budget: more budget never removes a snapshot kept before.
    bigger = Policy(
        last=_more(policy.last),
        hourly=_more(policy.hourly),
        daily=_more(policy.daily),
        weekly=_more(policy.weekly),
        monthly=_more(policy.monthly),
        yearly=_more(policy.yearly),
    )
    kept = {d.snapshot.id for d in plan.keep}
    assert kept <= {d.snapshot.id for d in apply_policy(snaps, bigger, datetime(2030, 1, 1, tzinfo=UTC)).keep}


def _more(n: int) -> int:
    return -1 if n == -1 else n + 1


@settings(max_examples=100, deadline=None)
@given(times=_times)
def test_daily_unlimited_keeps_one_per_day_plus_the_oldest(times: list[datetime]) -> None:
    # One offset: with mixed offsets a day's newest snapshot by instant is the newest of its label
    # (test_a_day_seen_again_after_an_offset_change_takes_no_second_slot).
    snaps = snaps_at([t.astimezone(UTC) for t in times])
    plan = apply_policy(snaps, Policy(daily=-1), datetime(2030, 1, 1, tzinfo=UTC))
    days = {datetime.fromisoformat(s.time).date() for s in snaps}
    oldest_day = datetime.fromisoformat(snaps[0].time).date()
    oldest_extra = sum(1 for s in snaps if datetime.fromisoformat(s.time).date() == oldest_day) > 1
    assert len(plan.keep) == len(days) + (1 if oldest_extra and plan.decisions[-1].reasons[0].oldest else 0)


def _db(path: str, integrity: str, engine: str = "sqlite") -> DatabaseInfo:
    return DatabaseInfo(path=path, engine=engine, version="3", integrity=integrity, tables={})


def test_the_last_checked_copy_of_each_database_is_kept() -> None:
    """Per database, the newest snapshot whose copy passed a full integrity check is kept while
    newer ones hold it unchecked or failed; once a newer copy passes, the rules decide again."""
    day = datetime(2026, 12, 1, 2, tzinfo=UTC)
    m, o = "home/.argentos/memory.db", "home/.argentos/observations.db"
    rows = [
        (_db(m, "ok"), _db(o, "ok")),  # s0: both checked
        (_db(m, "ok"), _db(o, "not checked")),  # s1: memory.db checked again, observations not
        (_db(m, "not checked"), _db(o, "not checked")),  # s2
        (_db(m, "row 7 missing from index t_v"), _db(o, "not checked"), _db("postgres/main", "ok", "postgresql")),
    ]
    snaps = [
        Snap(f"s{i}", f"s{i}", (day + timedelta(hours=i)).isoformat(), databases=dbs) for i, dbs in enumerate(rows)
    ]
    plan = apply_policy(snaps, Policy(last=1, keep_safety_days=0), datetime(2030, 1, 1, tzinfo=UTC))
    kept = {d.snapshot.id: d.reasons for d in plan.keep}
    assert set(kept) == {"s3", "s1", "s0"}
    assert [(r.rule, r.detail) for r in kept["s1"]] == [("checked", m)]
    assert [(r.rule, r.detail) for r in kept["s0"]] == [("checked", o)]
    assert "passed a full integrity check" in kept["s1"][0].text()

    # The newest copies pass: nothing beyond the rules is kept.
    fine = [*snaps, Snap("s4", "s4", (day + timedelta(hours=4)).isoformat(), databases=(_db(m, "ok"), _db(o, "ok")))]
    plan = apply_policy(fine, Policy(last=1, keep_safety_days=0), datetime(2030, 1, 1, tzinfo=UTC))
    assert [d.snapshot.id for d in plan.keep] == ["s4"]
    # A database no newer snapshot holds any more decides nothing.
    gone = [snaps[0], Snap("s2", "s2", (day + timedelta(hours=2)).isoformat())]
    plan = apply_policy(gone, Policy(last=1, keep_safety_days=0), datetime(2030, 1, 1, tzinfo=UTC))
    assert [d.snapshot.id for d in plan.keep] == ["s2"]


def test_pre_restore_snapshots_keep_no_checked_copy() -> None:
    """Safety snapshots live keepSafetyDays: an old one is not kept for its checked databases."""
    day = datetime(2026, 12, 1, 2, tzinfo=UTC)
    m = "home/.argentos/memory.db"
    snaps = [
        Snap("old", "old", day.isoformat(), tags=("pre-restore",), databases=(_db(m, "ok"),)),
        Snap(
            "new",
            "new",
            (day + timedelta(days=20)).isoformat(),
            tags=("pre-restore",),
            databases=(_db(m, "not checked"),),
        ),
    ]
    plan = apply_policy(snaps, Policy(last=1, keep_safety_days=7), day + timedelta(days=21))
    assert [d.snapshot.id for d in plan.keep] == ["new"]


def test_a_day_seen_again_after_an_offset_change_takes_no_second_slot() -> None:
    # The machine moved from Berlin to New York: walked newest first, the days read 03-09 (New
    # York), 03-10 (Berlin, 00:30), 03-09 again (Berlin). restic counts 03-09 twice; "daily 3"
    # then kept two days and forgot 03-08.
    times = [
        "2026-03-07T12:00:00+01:00",
        "2026-03-08T12:00:00+01:00",
        "2026-03-09T20:00:00+01:00",
        "2026-03-10T00:30:00+01:00",
        "2026-03-09T19:00:00-05:00",
    ]
    snaps = [Snap(f"s{i}", f"s{i}", t) for i, t in enumerate(times)]
    plan = apply_policy(snaps, Policy(daily=3), datetime(2026, 3, 11, tzinfo=UTC))
    kept = {d.snapshot.id: [r.period for r in d.reasons] for d in plan.keep}
    # s2, 03-09 met again, is kept as restic keeps it, but takes no slot: 03-08 is kept too.
    assert kept == {"s4": ["2026-03-09"], "s3": ["2026-03-10"], "s2": ["2026-03-09"], "s1": ["2026-03-08"]}
    again = next(d for d in plan.keep if d.snapshot.id == "s2")
    assert again.reasons[0].text() == "daily 2026-03-09, met again after a UTC offset change (takes no slot)"


def test_counting_a_period_once_never_keeps_fewer_than_restic() -> None:
    # daily -1 (or a budget the history does not use up): restic kept every snapshot that began a
    # period walking newest first, 03-09 met again after the offset change too; counted once,
    # that one was forgotten with nothing kept in its place.
    times = [
        "2026-03-08T12:00:00+01:00",
        "2026-03-09T20:00:00+01:00",
        "2026-03-10T00:30:00+01:00",
        "2026-03-09T19:00:00-05:00",
    ]
    snaps = [Snap(f"s{i}", f"s{i}", t) for i, t in enumerate(times)]
    for policy in (Policy(daily=-1), Policy(daily=7)):
        plan = apply_policy(snaps, policy, datetime(2026, 3, 11, tzinfo=UTC))
        assert {d.snapshot.id for d in plan.keep} == {"s0", "s1", "s2", "s3"}, policy


@settings(max_examples=100, deadline=None)
@given(times=_times)
def test_each_period_is_kept_once_whatever_the_offsets(times: list[datetime]) -> None:
    plan = apply_policy(snaps_at(times), Policy(daily=-1, weekly=3), datetime(2030, 1, 1, tzinfo=UTC))
    for rule in ("daily", "weekly"):
        periods = [r.period for d in plan.keep for r in d.reasons if r.rule == rule and not r.oldest and not r.detail]
        assert len(periods) == len(set(periods))


def test_a_partial_snapshot_never_pushes_out_its_days_only_complete_one() -> None:
    # 03-08 and 03-09 each: a full backup at 02:00, then a partial one at 14:00 (a file could not
    # be read). Keeping "the newest daily" kept the partial one and forgot the day's full one.
    day = [("03-06", 2, False), ("03-07", 2, False), ("03-08", 2, False), ("03-08", 14, True)]
    day += [("03-09", 2, False), ("03-09", 14, True)]
    snaps = [
        Snap(f"s{i}", f"s{i}", f"2026-{d}T{h:02d}:00:00+00:00", incomplete=("x",) if partial else ())
        for i, (d, h, partial) in enumerate(day)
    ]
    plan = apply_policy(snaps, Policy(daily=7, weekly=4), datetime(2026, 3, 10, tzinfo=UTC))
    assert not plan.remove
    reasons = {d.snapshot.id: [r.text() for r in d.reasons] for d in plan.keep}
    assert reasons["s2"] == [
        "the newest complete snapshot of daily 2026-03-08 (s3, kept for it, is partial)",
        "the newest complete snapshot of weekly 2026-W10 (s3, kept for it, is partial)",
    ]
    # Also when the partial one took the rule's last slot: "daily 2" keeps 03-09 and 03-08.
    plan = apply_policy(snaps, Policy(daily=2), datetime(2026, 3, 10, tzinfo=UTC))
    assert {d.snapshot.id for d in plan.keep} == {"s5", "s4", "s3", "s2"}
    # A day whose newest snapshot is complete keeps that one alone.
    snaps.append(Snap("s6", "s6", "2026-03-08T20:00:00+00:00"))
    plan = apply_policy(sorted(snaps, key=lambda s: s.time), Policy(daily=7), datetime(2026, 3, 10, tzinfo=UTC))
    assert {d.snapshot.id for d in plan.remove} == {"s2", "s3"}


@settings(max_examples=100, deadline=None)
@given(times=_times, partial=st.lists(st.booleans(), min_size=60, max_size=60), daily=st.sampled_from([-1, 1, 2, 5]))
def test_every_day_kept_keeps_its_newest_complete_snapshot(
    times: list[datetime], partial: list[bool], daily: int
) -> None:
    ordered = sorted(times, key=lambda t: t.timestamp())
    snaps = [
        Snap(f"s{i}", f"s{i}", t.isoformat(), incomplete=("x",) if partial[i] else ()) for i, t in enumerate(ordered)
    ]
    plan = apply_policy(snaps, Policy(daily=daily), datetime(2030, 1, 1, tzinfo=UTC))
    kept = {d.snapshot.id for d in plan.keep}
    days = {r.period for d in plan.keep for r in d.reasons if r.rule == "daily"}
    for day in days:
        complete = [s for s in snaps if datetime.fromisoformat(s.time).strftime("%Y-%m-%d") == day and not s.incomplete]
        if complete:
            newest = max(reversed(complete), key=lambda s: datetime.fromisoformat(s.time).timestamp())
            assert newest.id in kept, (day, newest)


@dataclass(frozen=True)
class AgentSnap(Snap):
    username: str = ""
    sources: dict[str, str] | None = None


def _agents_week(agents: dict[str, tuple[str, str]], days: int = 7) -> list[AgentSnap]:
    """One full backup a day for `days` days by each agent (name -> (user, workspace)), one host."""
    out = []
    for day in range(days):
        for minute, (name, (user, workspace)) in enumerate(agents.items()):
            when = datetime(2026, 3, 1 + day, 2, minute, tzinfo=UTC).isoformat()
            sources = {"workspace": workspace, "home": f"/home/{user}"}
            out.append(AgentSnap(f"{name}{day}", f"{name}{day}", when, username=user, sources=sources))
    return out


@pytest.mark.parametrize(
    "agents",
    [
        {"a": ("ann", "/home/ann/.argentos/workspace"), "b": ("bob", "/home/bob/.argentos/workspace")},
        {"a": ("ann", "/home/ann/work-one"), "b": ("ann", "/home/ann/work-two")},
    ],
    ids=["two-users", "two-workspaces"],
)
def test_two_agents_of_one_host_in_one_repository_each_keep_their_days(agents: dict[str, tuple[str, str]]) -> None:
    # One shared repository (a team's bucket), one host, two agents backing up once a day: `daily 7`
    # keeps each agent's seven days. Grouped by host and scope alone, each day kept only the newer
    # agent's snapshot, and the other agent's history was gone but for the oldest snapshot.
    plan = apply_policy(_agents_week(agents), Policy(daily=7), datetime(2026, 3, 8, tzinfo=UTC))
    kept = {d.snapshot.id for d in plan.keep}
    assert kept == {f"{name}{day}" for name in agents for day in range(7)}
    assert len(plan.groups()) == 2


def test_snapshots_without_user_or_workspace_group_by_host_and_scope_as_before() -> None:
    # Recorded before both fields were: one group per host and scope, as they always were.
    old = [
        Snap(f"s{day}{m}", f"s{day}{m}", datetime(2026, 3, 1 + day, 2, m, tzinfo=UTC).isoformat())
        for day in range(3)
        for m in range(2)
    ]
    plan = apply_policy(old, Policy(daily=2), datetime(2026, 3, 8, tzinfo=UTC))
    assert [key for key, _ in plan.groups()] == [GroupKey("host", "full", False)]
    assert {d.snapshot.id for d in plan.keep} == {"s21", "s11"}


def test_a_workspace_that_moved_forms_its_own_group_and_keeps_more() -> None:
    before = _agents_week({"old": ("ann", "/srv/ws")}, days=4)
    after = [
        replace(
            s,
            id=f"new{i}",
            name=f"new{i}",
            time=datetime(2026, 3, 5 + i, 2, tzinfo=UTC).isoformat(),
            sources={"workspace": "/data/ws"},
        )
        for i, s in enumerate(before[:3])
    ]
    plan = apply_policy(before + after, Policy(daily=3), datetime(2026, 3, 9, tzinfo=UTC))
    kept = {d.snapshot.id for d in plan.keep}
    # Its own group for each folder: the old folder's last 3 days stay, the new one's 3 days too.
    assert kept == {"old1", "old2", "old3", "new0", "new1", "new2"}
