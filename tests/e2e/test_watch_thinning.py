"""Thinning of `phx watch`'s capture segments by `phx forget` (docs/continuous.md): four days of
segments, built with the capture module's API at injected times from a real database, thin to
every state for a day, one an hour for the next, one a day before that; every kept state restores
byte for byte, a time in a thinned hour gives the newest kept state at or before it, the timeline
says which ranges are thinned, and a kill at any change of the thinning loses no kept state."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import killpoint
import pytest
from e2e_support import Sandbox, integrity

from phoenix_backup.config import load_config
from phoenix_backup.ops import pitr
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.repo import captures, checks
from phoenix_backup.repo.crypto import sha256_hex
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.walker import walk_tree
from phoenix_backup.storage.base import TEMP_MARKER

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
LOGICAL = "home/.argentos/data/dashboard.db"
MIN = 60 * 1_000_000  # µs
HOUR, DAY = 60 * MIN, 24 * 60 * MIN
SEGMENTS = 188
# Segment k of the grid ends 4 days - k half hours before now (-7 minutes): 96 to 143 are in the
# hourly zone. Left out: 110 and 125; the neighbours of each, one of which is then alone in its
# hour, hold one state (110) and two states (125).
LEFT_OUT = (110, 125)
ONE_STATE, TWO_STATES = (109, 111), (124, 126)


@dataclass
class History:
    now: int  # µs, when the segments were made
    states: dict[int, bytes]  # commit time -> the database's bytes then
    ends: list[int]  # each segment's end, in order
    commits: list[list[int]]  # each segment's commit times
    kept: list[int]  # the commit times thinning keeps


@contextlib.contextmanager
def _repo(sb: Sandbox) -> Iterator[tuple[Repository, captures.Timeline]]:
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    try:
        repo.load_index()
        yield repo, captures.timeline(repo)
    finally:
        repo.close()


def new_db(sb: Sandbox) -> sqlite3.Connection:
    """The sandbox's dashboard database made anew: rollback journal, 1 KiB pages, one table `t`."""
    db = sb.layout.dashboard_db
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute("PRAGMA page_size=1024")
    con.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)")
    return con


def _make_history(sb: Sandbox, *, watch_base: bool = False) -> History:
    db = sb.layout.dashboard_db
    con = new_db(sb)
    now = captures.to_us(datetime.now(UTC))
    start = now - 4 * DAY
    base_time = datetime.fromtimestamp((start - 2 * HOUR) / 1e6, UTC).isoformat(timespec="seconds")
    sb.backup("--time", base_time)
    snap = sb.snapshots()[-1]["id"]
    if watch_base:  # the base a watch takes: an ordinary snapshot of scope `watch`
        with _repo(sb) as (repo, _tl):
            full = repo.load_snapshot(snap)
            snap = repo.save_snapshot(dataclasses.replace(full, scope="watch", tags=("watch",), id=""))
            repo.delete_snapshot(full.id)
    rng = random.Random(7)
    states: dict[int, bytes] = {}
    ends: list[int] = []
    commits_of: list[list[int]] = []
    prev = b""
    previous: str | None = None
    chain = "c" * 32
    with contextlib.ExitStack() as stack:
        stack.callback(con.close)
        repo, _tl = stack.enter_context(_repo(sb))
        node = next(n for logical, n in walk_tree(repo, repo.load_snapshot(snap).tree) if logical == LOGICAL)
        since = 0
        # A segment every 30 minutes, ending 7 minutes off the half hour: none within minutes of
        # a thinning boundary (one and two days before now). Two are left out (the watch sealed
        # nothing then), so that, at any time of day, an hour of the hourly zone holds one segment
        # with two states (thinned to one) and another one segment with one state (kept as it is:
        # covered between thinned ranges). Where the hour of a boundary holds one segment on its
        # side depends on the minute of `now`: `_groups` says what is expected either way.
        for i, k in enumerate(k for k in range(SEGMENTS + len(LEFT_OUT)) if k not in LEFT_OUT):
            end = start + k * 30 * MIN + 7 * MIN
            two = k in TWO_STATES or (k not in ONE_STATE and k % 3 != 0)
            ats = [end - 20 * MIN, end - 5 * MIN] if two else [end - 5 * MIN]
            commits, pages = [], []
            for at in ats:
                for _ in range(rng.randint(1, 4)):
                    con.execute(
                        "INSERT OR REPLACE INTO t VALUES (?, ?)", (rng.randint(1, 400), "x" * rng.randint(10, 300))
                    )
                cur = db.read_bytes()
                count = len(cur) // 1024
                changed = [
                    p for p in range(1, count + 1) if cur[(p - 1) * 1024 : p * 1024] != prev[(p - 1) * 1024 : p * 1024]
                ]
                commits.append(captures.Commit(at, count, tuple(changed)))
                pages += [cur[(p - 1) * 1024 : p * 1024] for p in changed]
                states[at], prev = cur, cur
            base = captures.Base(snap, str(node.sha256)) if i == 0 else None
            part = captures.Part(LOGICAL, 1024, ats[0] if i == 0 else since, end, tuple(commits), base)
            seg = captures.build(chain, i, previous, "host", [(part, pages)])
            name, raw = captures.seal(repo, seg)
            repo.backend.write(name, raw)
            os.utime(sb.repo / name, (end / 1e6, end / 1e6))  # written when sealed, as by the watch
            previous, since = name.removeprefix(captures.PREFIX), end
            ends.append(end)
            commits_of.append(ats)
    kept = _kept(now, ends, commits_of)
    return History(now, states, ends, commits_of, kept)


def _period(end: int, now: int) -> tuple[str, int] | None:
    if end >= now - DAY:
        return None
    if end >= now - 2 * DAY:
        return ("hour", end // HOUR)
    return ("day", end // DAY)


def _groups(now: int, ends: list[int], commits: list[list[int]]) -> dict[tuple[str, int], list[int]]:
    """The commit times per thinning period, oldest first: each segment of the last day alone
    ("every"), the segments of each hour of the day before, of each day before that."""
    out: dict[tuple[str, int], list[int]] = {}
    for end, ats in zip(ends, commits, strict=True):
        out.setdefault(_period(end, now) or ("every", end), []).extend(ats)
    return out


def _kept(now: int, ends: list[int], commits: list[list[int]]) -> list[int]:
    """Every commit of the last day; the last commit of each hour of the day before; the last of
    each day before that."""
    groups = _groups(now, ends, commits)
    return sorted(t for key, ats in groups.items() for t in (ats if key[0] == "every" else ats[-1:]))


def _expected_timeline(h: History) -> tuple[list[str], list[int]]:
    """The kinds of the timeline's ranges and the points of its thinned ones: a period whose
    states thin to one is thinned; one that had one state only (a segment alone in its hour or
    day) keeps every state it had, so it is covered, like the last day."""
    kinds: list[str] = []
    points: list[int] = []
    for key, ats in _groups(h.now, h.ends, h.commits).items():
        kind = "thinned" if key[0] != "every" and len(ats) > 1 else "covered"
        points += ats[-1:] if kind == "thinned" else []
        if not kinds or kinds[-1] != kind:
            kinds.append(kind)
    return kinds, points


def _expected_segments(h: History) -> int:
    return len({_period(e, h.now) or ("every", e) for e in h.ends})


def _assert_every_kept_state(sb: Sandbox, h: History, tmp: Path, what: str) -> None:
    with _repo(sb) as (repo, tl):
        for at in h.kept:
            dest = tmp / "rebuilt.db"
            dest.unlink(missing_ok=True)
            pitr.rebuild(repo, tl, LOGICAL, at, dest)
            assert dest.read_bytes() == h.states[at], f"{what}: the state at {captures.describe(at)} differs"


def _segment_count(sb: Sandbox) -> int:
    """The segments stored; the temporary file of a write killed before its rename is a leftover
    that `phx prune` removes (docs/repository-format.md §1), not a segment."""
    return sum(1 for f in (sb.repo / "captures").iterdir() if TEMP_MARKER not in f.name)


def _forget(sb: Sandbox, *args: str) -> dict[str, object]:
    """`phx forget --json ARGS`, in this process (`phx_here`): the point is what it leaves in the
    repository; the forgets that are killed, and those that fail, are real `phx` processes."""
    res = sb.phx_here("forget", "--json", *args)
    assert res.code == 0, res
    return res.json()  # type: ignore[no-any-return]


@pytest.fixture
def history(sandbox: Sandbox) -> History:
    sandbox.write_config(retention={"capturesHourlyWithin": "2d"})
    return _make_history(sandbox)


def _pristine(sb: Sandbox, pristine: Path) -> None:
    """The repository as it was before the first forget, and no header cached (repo/captures.py
    `cached_header`): each run makes the same changes, so a kill point names the same one."""
    shutil.rmtree(sb.repo)
    shutil.copytree(pristine, sb.repo)
    # This machine's state as it was then too: it remembers the snapshots it saw, and an older
    # copy of the repository put back under it is a rollback (e2e/test_rollback.py).
    data = Path(sb.env["XDG_DATA_HOME"])
    shutil.rmtree(data)
    shutil.copytree(pristine.with_name("pristine-data"), data)
    for cached in sb.cache.glob("*/captures"):
        shutil.rmtree(cached)


def _killpoint_forget(sb: Sandbox, report: Path, point: int = 0) -> subprocess.CompletedProcess[str]:
    """`phx forget` SIGKILLed just before its `point`th change (0: not killed; tests/e2e/killpoint.py)."""
    env = sb.env_with(PHX_KILL_AT=str(point), PHX_KILL_ONLY="changes", PHX_KILL_REPORT=str(report))
    argv = [sys.executable, str(killpoint.SCRIPT), "forget"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def test_thinning_keeps_the_policy_points_byte_for_byte_even_when_killed(
    sandbox: Sandbox, history: History, tmp_path: Path
) -> None:
    sb, h = sandbox, history
    assert _segment_count(sb) == SEGMENTS
    _assert_every_kept_state(sb, h, tmp_path, "before thinning")
    size_before = sum(f.stat().st_size for f in (sb.repo / "captures").iterdir())
    pristine = tmp_path / "pristine"
    shutil.copytree(sb.repo, pristine)
    shutil.copytree(sb.env["XDG_DATA_HOME"], tmp_path / "pristine-data")

    dry = _forget(sb, "--dry-run")
    merges = dry["targets"]["local"]["captures"]["merges"]  # type: ignore[index]
    assert merges and _segment_count(sb) == SEGMENTS, "a dry run says what it would merge and merges nothing"
    text = sb.phx("forget", "--dry-run").out
    assert "would merge" in text and "keeping the state seen" in text
    assert "would thin segment" in text, "a segment alone in its hour with two states thins to one"

    report = tmp_path / "kill-report"
    run = _killpoint_forget(sb, report)
    assert run.returncode == 0, run.stderr
    changes = int(report.read_text().split()[-1])
    assert _segment_count(sb) == _expected_segments(h) < SEGMENTS - 40
    size_after = sum(f.stat().st_size for f in (sb.repo / "captures").iterdir())
    assert size_after < size_before
    _assert_every_kept_state(sb, h, tmp_path, "after thinning")

    # A time inside a thinned hour: the newest kept state at or before it.
    thinned_hour = [
        ats for end, ats in zip(h.ends, h.commits, strict=True) if _period(end, h.now) == ("hour", end // HOUR)
    ]
    dropped = next(ats[0] for ats in thinned_hour if len(ats) == 2 and ats[0] not in h.kept)
    expected_at = max(t for t in h.kept if t <= dropped)
    assert expected_at < dropped
    when = captures.describe(dropped, exact=True)
    dest = tmp_path / "at"
    res = sb.phx_here("restore", "--at", when, "--to", str(dest), "--path", LOGICAL, "--yes", "--json")
    assert res.code == 0, res
    restored = next(dest.rglob("dashboard.db"))
    assert restored.read_bytes() == h.states[expected_at]
    assert integrity(restored) == ["ok"]
    listed = sb.phx_here("list", "--at", when, "--json").json()
    assert listed[0]["thinned"] is True and listed[0]["seen"] == captures.describe(expected_at, exact=True)

    # The timeline says which ranges keep every state and which keep points: a segment alone in
    # its hour with one state is covered between thinned ranges (thinned, covered, thinned,
    # covered at the least; more where the hour of a zone's boundary has one segment on its side).
    tl = sb.phx_here("list", "--timeline", "--json").json()
    rows = tl["databases"][LOGICAL]
    kinds, points = _expected_timeline(h)
    assert [row["kind"] for row in rows] == kinds and len(kinds) >= 4, ([row["kind"] for row in rows], kinds)
    listed_points = [p for row in rows for p in row.get("points", ())]
    assert listed_points == [captures.describe(t, exact=True) for t in points]
    assert "thinned" in sb.phx("list", "--timeline").out

    # Thinning again changes nothing.
    again = _forget(sb)
    left = again["targets"]["local"]["captures"]  # type: ignore[index]
    assert left is None or left["merges"] == [], left  # None: every segment left is younger than a day
    assert _segment_count(sb) == _expected_segments(h)

    # Killed at any change (one in the middle; every one with PHX_TEST_HEAVY=1): every kept state is still
    # there, and the next forget finishes the thinning.
    for point in range(1, changes + 1) if HEAVY else [changes // 2]:
        _pristine(sb, pristine)
        killed = _killpoint_forget(sb, report, point)
        assert killed.returncode == -9, (point, killed.stderr)
        hit = report.read_text().strip()
        _assert_every_kept_state(sb, h, tmp_path, f"killed at change {point} of {changes} ({hit})")
        _forget(sb)
        assert _segment_count(sb) == _expected_segments(h), f"{hit} of {changes}: the next forget finishes"

    # A segment that does not open stops the thinning with one clear error; nothing is merged.
    # (With no header cached: a header cached before the damage is trusted, and the damage is
    # found when the segment's pages are read, see docs/continuous.md "The header cache".)
    _pristine(sb, pristine)
    victim = sorted((sb.repo / "captures").iterdir())[5]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(bytes(data))
    res = sb.phx("forget", check=None)
    assert res.code == 1, res
    assert f"captures/{victim.name} cannot be read" in res.out and "phx sync" in res.out
    assert _segment_count(sb) == SEGMENTS, "nothing was merged"


def test_list_hides_the_watchs_snapshots_unless_asked(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.backup()
    with _repo(sb) as (repo, _tl):
        full = repo.list_snapshots()[-1]
        for i, scope in enumerate(("watch", "watch-files", "watch-files")):
            repo.save_snapshot(dataclasses.replace(full, scope=scope, id="", time=f"2026-01-0{i + 1}T00:00:00+00:00"))
    ids = [s["id"] for s in sb.snapshots()]
    assert ids == [full.id], "phx list --json shows only the backups"
    text = sb.phx("list").out
    assert "3 snapshots of `phx watch` hidden" in text and "--all" in text
    assert len(sb.phx_here("list", "--all", "--json").json()) == 4
    only = sb.phx_here("list", "--scope", "watch-files", "--json").json()
    assert [s["scope"] for s in only] == ["watch-files", "watch-files"]
    assert "hidden" not in sb.phx("list", "--all").out


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed (scripts/test.sh installs it)")
def test_every_target_is_thinned_alike(sandbox: Sandbox, history: History) -> None:
    sb, h = sandbox, history
    remote = sb.root / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    sb.env["PHX_DATA_DIR"] = str(sb.root / "data")
    sb.write_config(
        targets={
            "local": {"enabled": True},
            "git": {"enabled": True, "repo": str(remote), "branch": "main", "autoCommit": True},
        },
        retention={"capturesHourlyWithin": "2d"},
    )
    sb.phx("sync")  # the replica's copies are dated now: thinned because the first target was
    done = _forget(sb)["targets"]
    for name in ("local", "git"):
        c = done[name]["captures"]  # type: ignore[index]
        assert c["segmentsBefore"] == SEGMENTS, (name, c)
        assert c["segmentsBefore"] - c["deleted"] + len(c["merges"]) == _expected_segments(h), (name, c)
    again = sb.phx_here("forget", "--dry-run", "--target", "git", "--json").json()["targets"]["git"]["captures"]
    assert again is None or again["merges"] == [], again
    assert sb.verify("--target", "git")["ok"]


def _day_points(h: History) -> list[int]:
    """The states kept a day at a time (older than capturesHourlyWithin): compacted into snapshots."""
    return sorted(ats[-1] for key, ats in _groups(h.now, h.ends, h.commits).items() if key[0] == "day")


def test_compaction_makes_daily_states_ordinary_snapshots_and_drops_the_base(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    sb.write_config(retention={"capturesHourlyWithin": "2d"})
    h = _make_history(sb, watch_base=True)
    base = next(s["id"] for s in sb.phx_here("list", "--all", "--json").json() if s["scope"] == "watch")
    pristine = tmp_path / "pristine"
    shutil.copytree(sb.repo, pristine)
    shutil.copytree(sb.env["XDG_DATA_HOME"], tmp_path / "pristine-data")
    report = tmp_path / "kill-report"
    run = _killpoint_forget(sb, report)
    assert run.returncode == 0, run.stderr
    changes = int(report.read_text().split()[-1])

    watch = [s for s in sb.phx_here("list", "--scope", "watch", "--json").json()]
    compacted = sorted((s for s in watch if "compacted" in s["tags"]), key=lambda s: s["time"])
    days = _day_points(h)
    assert len(compacted) == len(days) >= 2, (compacted, days)
    assert base not in {s["id"] for s in watch}, "the watch's base, which no segment names any longer, is forgotten"
    assert _segment_count(sb) == _expected_segments(h)
    sb.phx("prune")  # the base's data that no compacted snapshot shares goes
    assert sb.verify()["ok"]
    _assert_every_kept_state(sb, h, tmp_path, "after compaction and prune")
    rows = sb.phx_here("list", "--timeline", "--json").json()["databases"][LOGICAL]
    kinds, points = _expected_timeline(h)
    assert [row["kind"] for row in rows] == kinds, ([row["kind"] for row in rows], kinds)
    assert [p for row in rows for p in row.get("points", ())] == [captures.describe(t, exact=True) for t in points]

    # Each compacted snapshot is an ordinary one: a plain restore gives the state kept that day,
    # dated when the watch saw it, its copy checked in full, and it cost only the changed pages.
    size = len(h.states[days[-1]])
    for snap, at in zip(compacted, days, strict=True):
        assert snap["time"] == datetime.fromtimestamp(at / 1e6, UTC).astimezone().isoformat(), snap
        dest = tmp_path / f"plain-{snap['id'][:8]}"
        res = sb.phx_here("restore", "--backup", snap["id"], "--to", str(dest), "--yes", "--json")
        assert res.code == 0, res
        restored = next(dest.rglob("dashboard.db"))
        assert restored.read_bytes() == h.states[at]
        with _repo(sb) as (repo, _tl):
            assert [d.integrity for d in repo.load_snapshot(snap["id"]).databases] == ["ok"]
            # ... and that check recorded in the repository, for these bytes wherever they are.
            book = checks.CheckBook(repo).load()
            assert [(r.by, r.result) for r in book[sha256_hex(h.states[at])] if r.snapshot == snap["id"]] == [
                ("compaction", "ok")
            ]
    drill = sb.phx("drill", "--backup", compacted[-1]["id"], check=None)
    assert drill.code == 0, drill
    with _repo(sb) as (repo, _tl):
        added = repo.load_snapshot(compacted[-1]["id"]).stats.added
    assert added < size // 2, (added, size)

    # A second forget compacts nothing again; killed at a change, nothing kept is lost.
    again = _forget(sb)["targets"]["local"]["captures"]  # type: ignore[index]
    assert again is None or again["merges"] == [], again
    # (The last changes are the deletions of the merged segments and of the base; a later `now`
    # may make a few fewer changes, hence not the very last.)
    for point in range(1, changes - 4) if HEAVY else [changes // 2]:
        _pristine(sb, pristine)
        killed = _killpoint_forget(sb, report, point)
        assert killed.returncode == -9, (point, killed.stderr)
        _assert_every_kept_state(sb, h, tmp_path, f"compaction killed at change {point} of {changes}")
        _forget(sb)
        sb.phx("prune")
        assert _segment_count(sb) == _expected_segments(h), f"killed at change {point}: the next forget finishes"
        _assert_every_kept_state(sb, h, tmp_path, f"compaction killed at change {point}, finished, pruned")
