"""Capture segments (repo/captures.py, repository format §15): sealed and authenticated as a
whole, every field checked on read, and a timeline that names covered ranges and gaps and never
bridges a missing or forged segment."""

from __future__ import annotations

import dataclasses
import json
import secrets
import struct
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import zstandard

from phoenix_backup.config import parse_config
from phoenix_backup.errors import CorruptObject, ToolMissing, UsageError
from phoenix_backup.ops import forget, pitr
from phoenix_backup.ops.context import Environment, captures_cache
from phoenix_backup.repo import captures, keys
from phoenix_backup.repo.captures import Base, Commit, Part
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.retention import Policy, apply_policy
from phoenix_backup.storage.local import LocalBackend

PS = 512
S = 1_000_000  # µs


FAST = {"n": 2**10, "r": 8, "p": 1}


def _init(path: Path) -> Repository:
    return Repository.init(LocalBackend(path), lambda m: keys.wrap_passphrase(m, "pw", kdf_params=FAST), True)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return _init(tmp_path / "repo")


def _page(n: int) -> bytes:
    return bytes([n % 256]) * PS


def _segment(chain: str, seq: int, prev: str | None, since: int, until: int, base: bool = False) -> captures.Segment:
    commits = (Commit(since, 4, (1, 3)), Commit(until, 5, (5,)))
    part = Part("home/a.db", PS, since, until, commits, Base("a" * 64, "b" * 64) if base else None)
    return captures.build(chain, seq, prev, "host", [(part, [_page(1), _page(3), _page(5)])])


def _write(repo: Repository, seg: captures.Segment) -> str:
    repo.backend.write("snapshots/" + "a" * 64, b"the base snapshot's object")
    name, raw = captures.seal(repo, seg)
    repo.backend.write(name, raw)
    return name.removeprefix(captures.PREFIX)


def test_a_segment_round_trips_and_its_pages_are_where_it_says(repo: Repository) -> None:
    chain = secrets.token_hex(16)
    sid = _write(repo, _segment(chain, 0, None, 10 * S, 11 * S, base=True))
    seg = captures.load(repo, captures.PREFIX + sid)
    part = seg.parts[0]
    assert seg.chain == chain and part.base == Base("a" * 64, "b" * 64)
    assert [c.pages for c in part.commits] == [(1, 3), (5,)]
    assert seg.page(part, part.commits[0], 1) == _page(3)
    assert seg.page(part, part.commits[1], 0) == _page(5)


def test_a_flipped_byte_or_another_key_is_refused(repo: Repository, tmp_path: Path) -> None:
    name, raw = captures.seal(repo, _segment(secrets.token_hex(16), 0, None, S, 2 * S, base=True))
    for i in (0, len(raw) // 2, len(raw) - 1):
        bad = bytearray(raw)
        bad[i] ^= 1
        with pytest.raises(CorruptObject):
            captures.open_segment(repo, name, bytes(bad))
    # Renamed to match its bytes, a forged segment still fails authentication.
    from phoenix_backup.repo.crypto import sha256_hex

    other = _init(tmp_path / "other")
    _n, forged = captures.seal(other, _segment(secrets.token_hex(16), 0, None, S, 2 * S, base=True))
    with pytest.raises(CorruptObject):
        captures.open_segment(repo, captures.PREFIX + sha256_hex(forged), forged)


def _body(doc: dict[str, object], data: bytes) -> bytes:
    header = json.dumps(doc).encode()
    return struct.pack("<4sBI", b"PHXC", 1, len(header)) + header + data


GOOD: dict[str, object] = {
    "version": 1,
    "chain": "c" * 32,
    "sequence": 0,
    "previous": None,
    "host": "h",
    "databases": [
        {
            "path": "home/a.db",
            "pageSize": PS,
            "since": 1,
            "until": 5,
            "commits": [{"at": 2, "pageCount": 3, "pages": [1, 2]}],
            "base": {"snapshot": "a" * 64, "sha256": "b" * 64},
        }
    ],
}


def _with(**changes: object) -> dict[str, object]:
    doc = json.loads(json.dumps(GOOD))
    part = doc["databases"][0]
    for key, value in changes.items():
        if key in part:
            part[key] = value
        else:
            doc[key] = value
    return doc


@pytest.mark.parametrize(
    "doc",
    [
        _with(version=2),
        _with(sequence=1),  # a later segment without a previous one
        _with(previous="f" * 64),  # the first with one
        _with(chain="xyz"),
        _with(pageSize=1000),
        _with(pageSize=128),
        _with(until=0),  # until before since
        _with(commits=[{"at": 9, "pageCount": 3, "pages": [1, 2]}]),  # a commit after until
        _with(commits=[{"at": 2, "pageCount": 3, "pages": [2, 1]}]),  # pages out of order
        _with(commits=[{"at": 2, "pageCount": 3, "pages": [1, 4]}]),  # a page beyond the size
        _with(commits=[{"at": 2, "pageCount": 3, "pages": [1]}]),  # less data than pages
        _with(commits=[]),  # a base without a commit
        _with(path="home/../../etc/passwd"),
        _with(path=7),
        _with(base={"snapshot": "a" * 63, "sha256": "b" * 64}),
    ],
)
def test_a_malformed_segment_is_refused_with_its_name(doc: dict[str, object]) -> None:
    with pytest.raises(CorruptObject, match="captures/x"):
        captures.decode(_body(doc, bytes(2 * PS)), "captures/x")


def test_a_well_formed_body_decodes_and_a_wrong_magic_or_short_header_does_not() -> None:
    assert captures.decode(_body(GOOD, bytes(2 * PS)), "x").parts[0].commits[0].pages == (1, 2)
    with pytest.raises(CorruptObject):
        captures.decode(b"PHXX" + _body(GOOD, bytes(2 * PS))[4:], "x")
    with pytest.raises(CorruptObject):
        captures.decode(struct.pack("<4sBI", b"PHXC", 1, 1 << 30), "x")


def test_a_segment_that_inflates_beyond_the_limit_is_refused_before_it_is_inflated(repo: Repository) -> None:
    bomb = zstandard.ZstdCompressor().compress(bytes(captures.MAX_SEGMENT_SIZE + 1))
    raw = repo.sealer.seal(bomb, captures.CAPTURE_AAD)
    from phoenix_backup.repo.crypto import sha256_hex

    with pytest.raises(CorruptObject, match="inflate"):
        captures.open_segment(repo, captures.PREFIX + sha256_hex(raw), raw)


def test_the_timeline_joins_touching_segments_and_shows_a_missing_one_as_the_end(repo: Repository) -> None:
    chain = secrets.token_hex(16)
    a = _write(repo, _segment(chain, 0, None, 10 * S, 11 * S, base=True))
    b = _write(repo, _segment(chain, 1, a, 11 * S, 12 * S))
    # A restart 5 s later: a gap, then covered again without a new base.
    c = _write(repo, _segment(chain, 2, b, 17 * S, 18 * S))
    tl = captures.timeline(repo)
    spans = [(r.start, r.end) for r in tl.for_path("home/a.db")]
    assert spans == [(10 * S, 12 * S), (17 * S, 18 * S)]
    assert tl.at("home/a.db", 14 * S) is None
    rng = tl.at("home/a.db", 17 * S + 1)
    assert rng is not None
    base, parts = captures.lineage(tl, rng, 17 * S + 1)
    assert base.snapshot == "a" * 64 and [s.sequence for s, _p in parts] == [0, 1, 2]
    # Segment 1 deleted: the chain ends at 0, nothing after it is covered.
    repo.backend.delete(captures.PREFIX + b)
    tl = captures.timeline(repo)
    assert [(r.start, r.end) for r in tl.for_path("home/a.db")] == [(10 * S, 11 * S)]
    assert chain in tl.broken
    # A forged segment 1 (another chain's bytes renamed) is unreadable, never a bridge.
    repo.backend.write(captures.PREFIX + b, repo.backend.read(captures.PREFIX + c))
    tl = captures.timeline(repo)
    assert captures.PREFIX + b in tl.problems
    assert [(r.start, r.end) for r in tl.for_path("home/a.db")] == [(10 * S, 11 * S)]


def test_a_zstandard_that_cannot_be_loaded_stops_the_timeline_and_blames_no_segment(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    # zstandard is loaded at its first use (issue 20): for `phx list --timeline` that is a
    # segment's reading, where a segment that cannot be read is listed as unreadable (exit 3). A
    # package that cannot be loaded is one sentence instead: before, every segment was "unreadable".
    _write(repo, _segment(secrets.token_hex(16), 0, None, 10 * S, 11 * S, base=True))
    monkeypatch.setitem(sys.modules, "zstandard", None)  # what `import zstandard` then raises: ImportError
    with pytest.raises(ToolMissing, match="package zstandard, which compresses the repository's data, cannot be"):
        captures.timeline(repo)


def test_a_forgotten_base_uncovers_its_history(repo: Repository) -> None:
    chain = secrets.token_hex(16)
    a = _write(repo, _segment(chain, 0, None, 10 * S, 11 * S, base=True))
    _write(repo, _segment(chain, 1, a, 11 * S, 12 * S))
    assert captures.timeline(repo).for_path("home/a.db")
    repo.backend.delete("snapshots/" + "a" * 64)
    tl = captures.timeline(repo)
    assert tl.for_path("home/a.db") == [] and "is gone" in tl.problems[captures.PREFIX + a]


def test_list_at_names_the_state_a_restore_gives_when_commits_share_a_time(repo: Repository) -> None:
    """With the clock set back, the watch records its commits at the latest time it had reached
    (ops/watch.py `now`): several states share a time. A restore at that time applies every one
    of them, up to the last; `phx list --at` names that same state, not the first of them."""
    chain = secrets.token_hex(16)
    a = _write(repo, _segment(chain, 0, None, 10 * S, 11 * S, base=True))  # states of 4 and 5 pages
    part = Part("home/a.db", PS, 11 * S, 11 * S, (Commit(11 * S, 6, (6,)), Commit(11 * S, 7, (7,))))
    _write(repo, captures.build(chain, 1, a, "host", [(part, [_page(6), _page(7)])]))
    tl = captures.timeline(repo)
    (state,) = pitr.states_at(tl, 11 * S)
    assert (state.covered, state.page_count) == (True, 7)
    (state,) = pitr.states_at(tl, 11 * S - 1)
    assert state.page_count == 4


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-05T14:03:07.25z",
        "2026-12-05t14:03:07.25Z",
        "2026-12-05 14:03:07.25+00:00",
        "2026-12-05T15:03:07.25+01:00",
    ],
)
def test_at_takes_every_rfc_3339_spelling_of_a_time(text: str) -> None:
    """RFC 3339 (§5.6, its note) allows a lower-case `t` and `z`, and a space for the `T`: each is
    the same time, not "is not RFC 3339"."""
    assert pitr.parse_at(text) == captures.to_us(datetime(2026, 12, 5, 14, 3, 7, 250_000, tzinfo=UTC))


@pytest.mark.parametrize("text", ["2016-12-31T23:59:60Z", "2017-01-01T00:59:60.5+01:00", "2016-12-31t23:59:60z"])
def test_at_takes_a_leap_second_as_the_end_of_the_second_before_it(text: str) -> None:
    """RFC 3339 (§5.6) allows a leap second, `23:59:60`, which a datetime cannot hold: it is the last
    microsecond of the second before it (before: "is not RFC 3339", exit 2)."""
    assert pitr.parse_at(text) == captures.to_us(datetime(2016, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC))


def test_a_leap_second_without_an_offset_is_refused_for_its_missing_offset() -> None:
    """`23:59:60` without a UTC offset is refused as any time without one is, naming the fix (before:
    "is not RFC 3339", which hid that only the offset was missing)."""
    with pytest.raises(UsageError, match=r"has no UTC offset; add one, e\.g\. 2016-12-31T23:59:60\+00:00"):
        pitr.parse_at("2016-12-31T23:59:60")


# -- the header cache ---------------------------------------------------------------------------


def _spans(tl: captures.Timeline) -> list[tuple[int, int, tuple[int, ...] | None]]:
    return [(r.start, r.end, r.points) for r in tl.for_path("home/a.db")]


def test_the_header_cache_spares_every_read_and_a_tampered_entry_only_costs_one(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = secrets.token_hex(16)
    a = _write(repo, _segment(chain, 0, None, 10 * S, 11 * S, base=True))
    b = _write(repo, _segment(chain, 1, a, 11 * S, 12 * S))
    c = _write(repo, _segment(chain, 2, b, 12 * S, 13 * S))
    reads: list[str] = []
    read = repo.backend.read

    def counted(name: str) -> bytes:
        reads.append(name)
        return read(name)

    monkeypatch.setattr(repo.backend, "read", counted)
    cache = tmp_path / "cache"
    truth = captures.timeline(repo)
    assert len(reads) == 3
    reads.clear()
    first = captures.timeline(repo, cache)
    assert len(reads) == 3 and _spans(first) == _spans(truth)
    reads.clear()
    again = captures.timeline(repo, cache)
    assert reads == [], "a segment whose header is cached is not read again"
    assert _spans(again) == _spans(truth)
    assert {k: (s.stored_size, s.header()) for k, s in again.segments.items()} == {
        k: (s.stored_size, s.header()) for k, s in truth.segments.items()
    }
    _base, parts = captures.lineage(again, again.ranges[0], 12 * S + 1)
    assert [captures.with_pages(repo, s).page(p, p.commits[0], 0) for s, p in parts] == [_page(1)] * 3

    # An attacker who can write the cache: c's entry under b's name, b's header edited (its MAC
    # kept), an entry made with another repository's key, garbage. Each costs one read of the
    # segment, and the timeline stays the truth.
    entry_b, entry_c = (cache / b).read_bytes(), (cache / c).read_bytes()
    edited = entry_b.replace(str(12 * S).encode(), str(19 * S).encode())
    assert edited != entry_b
    other = _init(tmp_path / "other")
    foreign = tmp_path / "foreign"
    captures.cache_header(
        foreign, dataclasses.replace(captures.load(repo, captures.PREFIX + b), id=b), captures._cache_key(other)
    )
    for forged in (entry_c, edited, (foreign / b).read_bytes(), b"PHXH1" + b"\0" * 100, b""):
        (cache / b).write_bytes(forged)
        reads.clear()
        tl = captures.timeline(repo, cache)
        assert reads == [captures.PREFIX + b] and _spans(tl) == _spans(truth)
    # A cached header never stands for a segment the store no longer holds.
    repo.backend.delete(captures.PREFIX + b)
    assert [(r.start, r.end) for r in captures.timeline(repo, cache).for_path("home/a.db")] == [(10 * S, 11 * S)]


# -- thinning: merged segments ----------------------------------------------------------------


def test_a_merged_segment_holds_the_newest_pages_and_the_chain_runs_through_it(repo: Repository) -> None:
    chain = secrets.token_hex(16)
    a = _write(repo, _segment(chain, 0, None, 10 * S, 11 * S, base=True))
    b = _write(repo, _segment(chain, 1, a, 11 * S, 12 * S))
    c = _write(repo, _segment(chain, 2, b, 12 * S, 13 * S))
    d = _write(repo, _segment(chain, 3, c, 13 * S, 14 * S))
    tl = captures.timeline(repo)
    # The timeline holds headers only (a busy day of segments is gigabytes of pages).
    assert all(s.bare and not s.data for s in tl.segments.values())
    merged = captures.merge([tl.segments[b], tl.segments[c]], lambda s: captures.with_pages(repo, s))
    part = merged.parts[0]
    assert (merged.sequence, merged.through, merged.previous, merged.link) == (1, 2, a, c)
    assert part.thinned and (part.since, part.until) == (11 * S, 13 * S)
    assert [(x.at, x.page_count, x.pages) for x in part.commits] == [(13 * S, 5, (1, 3, 5))]
    m = _write(repo, merged)
    assert captures.load(repo, captures.PREFIX + m).link == c
    # The merged segment and the ones it stands for side by side (a thinning cut short): the
    # chain goes through the merged one, on to segment 3; the others are superseded.
    tl = captures.timeline(repo)
    assert [s.id for s in tl.chains[chain]] == [a, m, d] and sorted(tl.superseded) == sorted([b, c])
    assert not tl.problems and not tl.broken
    for sid in (b, c):
        repo.backend.delete(captures.PREFIX + sid)
    tl = captures.timeline(repo)
    assert [s.id for s in tl.chains[chain]] == [a, m, d] and not tl.superseded
    # Covered every state up to 11 s, thinned from 11 to 13 s (one kept state at 13 s), then every state.
    ranges = [(r.start, r.end, r.points) for r in tl.for_path("home/a.db")]
    assert ranges == [(10 * S, 11 * S, None), (11 * S, 13 * S, (13 * S,)), (13 * S, 14 * S, None)]
    # A time in the thinned range: the newest kept state at or before it (segment 0's last one).
    rng = tl.at("home/a.db", 12 * S)
    assert rng is not None and rng.points == (13 * S,)
    _base, parts = captures.lineage(tl, rng, 12 * S)
    applied = [c.at for _s, p in parts for c in p.commits if c.at <= 12 * S]
    assert max(applied) == 11 * S


def test_thinning_merges_by_hour_then_day_and_never_across_a_gap(repo: Repository) -> None:
    chain = secrets.token_hex(16)
    H = 3600 * S
    now = 10 * 24 * H
    ends = [now - 2 * H + 60 * S, now - 2 * H + 120 * S]  # within `every`: kept as they are
    ends += [now - 30 * H + k * 600 * S for k in range(3)]  # one hour, hourly zone
    ends += [now - 5 * 24 * H + k * 600 * S for k in range(3)]  # one day, daily zone
    ends.sort()
    prev, since, ids = None, ends[0] - S, []
    for i, end in enumerate(ends):
        gap = i == 5  # a restart: this segment does not touch the one before
        prev = _write(repo, _segment(chain, i, prev, end - S if gap or i == 0 else since, end, base=i == 0))
        since = end
        ids.append(prev)
    tl = captures.timeline(repo)
    runs = captures.thinning(tl, now, 24 * H, 3 * 24 * H, None)
    # Segment 5 is alone in its hour after the gap, with two states: thinned to one by itself.
    assert [[s.sequence for s in run] for run in runs] == [[0, 1, 2], [3, 4], [5]]
    assert captures.thinning(tl, now, 24 * H, 3 * 24 * H, now - 3 * 24 * H)[0][0].sequence == 0
    horizon_runs = captures.thinning(tl, now, 24 * H, 3 * 24 * H, now - 3 * H)
    assert [[s.sequence for s in run] for run in horizon_runs] == [[0, 1, 2, 3, 4], [5]]


@pytest.mark.parametrize("minute", [0, 20, 50])
def test_thinning_keeps_one_state_a_period_whatever_the_minute_of_now(repo: Repository, minute: int) -> None:
    """Unless `now` is near the hour, the UTC hour of each zone's limit has a segment on one side
    alone (from minute 7 to 37 here): it is thinned too when it holds several states. A merged
    segment wins over the one it stands for while both are there (a thinning cut short)."""
    chain = secrets.token_hex(16)
    H, M = 3600 * S, 60 * S
    now = 10 * 24 * H + minute * M + 30 * S
    every, hourly = 3 * H, 6 * H
    ends = [now // H * H - 9 * H + 7 * M + k * 30 * M for k in range(19)]  # :07 and :37, 9 h to now
    prev: str | None = None
    seen: dict[tuple[str, int], list[int]] = {}
    for i, end in enumerate(ends):
        ats = (end - 20 * M, end - 5 * M)
        part = Part("home/a.db", PS, end - 30 * M, end, tuple(Commit(at, 4, (1,)) for at in ats), None)
        if i == 0:
            part = dataclasses.replace(part, base=Base("a" * 64, "b" * 64))
        prev = _write(repo, captures.build(chain, i, prev, "host", [(part, [_page(i), _page(i + 1)])]))
        key = (
            ("every", end)
            if end >= now - every
            else ("hour", end // H)
            if end >= now - hourly
            else ("day", end // 24 // H)
        )
        seen.setdefault(key, []).extend(ats)
    expected = sorted(t for key, ats in seen.items() for t in (ats if key[0] == "every" else ats[-1:]))
    tl = captures.timeline(repo)
    runs = captures.thinning(tl, now, every, hourly, None)
    merged = [_write(repo, captures.merge(run, lambda s: captures.with_pages(repo, s))) for run in runs]
    tl = captures.timeline(repo)
    assert set(merged) <= {s.id for s in tl.chains[chain]}, "the merged segments are read, not the originals"
    assert sorted(tl.superseded) == sorted(s.id for run in runs for s in run)
    for sid in tl.superseded:
        repo.backend.delete(captures.PREFIX + sid)
    tl = captures.timeline(repo)
    held = sorted(c.at for s in tl.chains[chain] for p in s.parts for c in p.commits)
    assert held == expected
    every_state = [t for ats in seen.values() for t in ats]
    for r in tl.for_path("home/a.db"):
        inside = [t for t in every_state if r.start <= t <= r.end]
        if r.points is None:
            assert set(inside) <= set(held), "a range shown covered keeps every state seen in it"
        else:
            assert list(r.points) == [t for t in held if r.start <= t <= r.end] != inside


@pytest.mark.parametrize(
    "changes",
    [
        {"part": True},  # thinned only in a merged segment
        {"version": 2, "through": 0},  # a merged segment without its link
        {"version": 2, "through": 0, "link": "x" * 64},
        {"version": 2, "link": "a" * 64},  # without through
        {"version": 2, "through": 0, "link": "a" * 64, "part": "yes"},
    ],
)
def test_a_malformed_merged_segment_is_refused(changes: dict[str, object]) -> None:
    doc = _with(**{k: v for k, v in changes.items() if k != "part"})
    if "part" in changes:
        doc["databases"][0]["thinned"] = changes["part"]  # type: ignore[index]
    header_version = int(doc["version"])  # type: ignore[call-overload]
    header = json.dumps(doc).encode()
    body = struct.pack("<4sBI", b"PHXC", header_version, len(header)) + header + bytes(2 * PS)
    with pytest.raises(CorruptObject, match="captures/x"):
        captures.decode(body, "captures/x")


# -- retention of phx watch's snapshots of the files -------------------------------------------


@dataclass(frozen=True)
class _Snap:
    id: str
    name: str
    time: str
    scope: str
    host: str = "host"
    tags: tuple[str, ...] = ()
    incomplete: tuple[object, ...] = ()
    databases: tuple[object, ...] = ()


def test_snapshots_of_the_files_are_kept_every_one_for_a_day_then_hourly_then_by_the_policy() -> None:
    now = datetime(2030, 1, 10, 12, 0, tzinfo=UTC)
    times = [now - timedelta(minutes=10 * i) for i in range(6 * 24 * 5)]  # every 10 minutes for 5 days
    snaps = [
        _Snap(f"{scope}{i}", f"{scope}{i}", t.isoformat(), scope)
        for scope in ("watch-files", "full")
        for i, t in enumerate(reversed(times))
    ]
    plan = apply_policy(snaps, Policy(daily=7), now)
    kept = {d.snapshot.id for d in plan.keep}
    files = [s for s in snaps if s.scope == "watch-files" and s.id in kept]
    ages = sorted((now - datetime.fromisoformat(s.time)).total_seconds() / 3600 for s in files)
    assert sum(1 for a in ages if a <= 24) == 6 * 24 + 1  # every one of the last day
    # then one an hour: 72 clock hours counted from now, of which the last day spans 25
    assert sum(1 for a in ages if 24 < a <= 72) == 72 - 25
    # then one a day (the policy's daily rule)
    cut = now - timedelta(hours=72)
    older = [s for s in snaps if s.scope == "watch-files" and datetime.fromisoformat(s.time) < cut]
    kept_days = [datetime.fromisoformat(s.time).date() for s in older if s.id in kept]
    # (restic's rule: a daily budget left at the oldest snapshot keeps that one too)
    assert 0 < len(kept_days) <= len(set(kept_days)) + 1 < len(older)
    # Ordinary snapshots keep the policy alone.
    full_days = {datetime.fromisoformat(s.time).date() for s in snaps if s.scope == "full"}
    assert sum(1 for s in snaps if s.scope == "full" and s.id in kept) <= len(full_days) + 1


def test_a_merged_segment_damaged_in_the_store_after_its_header_was_cached_stops_the_thinning(
    repo: Repository, tmp_path: Path
) -> None:
    # A thinning was cut short after writing the merged segment M (its segments a and b are still
    # there); a reader cached M's header; then M was damaged in the store (bit rot, a bad copy).
    # The next thinning must not delete a and b on the word of the cached header: they are the
    # only readable copy of those states.
    chain = secrets.token_hex(16)
    a = _write(repo, _segment(chain, 0, None, 10 * S, 11 * S, base=True))
    b = _write(repo, _segment(chain, 1, a, 11 * S, 12 * S))
    _write(repo, _segment(chain, 2, b, 12 * S, 13 * S))
    merged = captures.merge([captures.load(repo, captures.PREFIX + s) for s in (a, b)])
    m = _write(repo, merged)
    envx = Environment(env={"HOME": str(tmp_path), "PHX_CACHE_DIR": str(tmp_path / "cache")})
    tl = captures.timeline(repo, captures_cache(repo, envx))
    assert sorted(tl.superseded) == sorted([a, b])
    raw = bytearray((repo.backend.root / "captures" / m).read_bytes())
    raw[len(raw) // 2] ^= 1
    (repo.backend.root / "captures" / m).write_bytes(bytes(raw))

    cfg = parse_config({"workspace": str(tmp_path / "w"), "backupDir": str(tmp_path / "b")}, env=envx.env)
    policy = Policy(last=1)
    now = datetime.fromtimestamp(14, UTC)
    with pytest.raises(CorruptObject, match=m):
        forget.thin_captures(
            repo, policy, apply_policy([], policy, now), now, dry_run=False, eager=True, compactor=(cfg, envx)
        )
    assert {a, b} <= {n.removeprefix(captures.PREFIX) for n in captures.segment_names(repo)}


def test_pages_are_never_read_through_a_cached_header_other_than_the_segments_own(
    repo: Repository, tmp_path: Path
) -> None:
    # Where the cache's key is no secret (an unencrypted repository), whoever can write the cache
    # can make an entry that authenticates: pages are then read by the store's header, never by
    # the cached one's offsets (which would give another page's bytes as this one's).
    chain = secrets.token_hex(16)
    a = _write(repo, _segment(chain, 0, None, 10 * S, 11 * S, base=True))
    real = captures.load(repo, captures.PREFIX + a)
    part = real.parts[0]
    swapped = (Commit(10 * S, 5, (1, 5)), Commit(11 * S, 5, (3,)))
    forged = dataclasses.replace(real, parts=[dataclasses.replace(part, commits=swapped)])
    cache = tmp_path / "cache"
    captures.cache_header(cache, forged, captures._cache_key(repo))
    tl = captures.timeline(repo, cache)
    assert tl.segments[a].parts[0].commits[0].pages == (1, 5), "the forged entry authenticates"
    with pytest.raises(CorruptObject, match="cache"):
        captures.with_pages(repo, tl.segments[a])


def test_a_restarted_watch_says_how_far_the_clock_went_back_not_counting_its_gap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A watch restarted after the clock was set back 30 s records its first polls more than 2 s
    after its chain's last segment (the restart's gap) and says that the clock went back 30 s (before:
    32 s, the gap counted in); a clock 1 s behind it says nothing, as in a running watch."""
    from phoenix_backup.ops import watch

    last = captures.to_us(datetime(2026, 12, 7, 1, 0, 0, tzinfo=UTC))
    for back, said in ((30, ["the clock went back 30 s"]), (1, [])):
        w = object.__new__(watch.Watcher)
        warned: list[str] = []
        w.clock, w.clock_warned, w.clock_ahead = 0, False, 0
        monkeypatch.setattr(w, "warn", warned.append, raising=False)
        w._resume_clock(last)
        monkeypatch.setattr(watch, "now_us", lambda back=back: last - back * 1_000_000)
        assert w.now() == last + captures.TOUCH_US + 1
        assert [m.split(";")[0] for m in warned] == said, warned
