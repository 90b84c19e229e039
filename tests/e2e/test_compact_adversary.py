"""Compaction of `phx watch`'s capture days (ops/compact.py) against what goes wrong: a day whose
segments cross a new base, or not, and whose state cannot be made a snapshot (its copy fails
its check) stays as segments: every state, the sound ones before the damage above all, still
rebuilds byte for byte; a compaction killed just before it forgets the watch's base, or just before it
writes its segment, is finished by the next forget: no base nor compacted snapshot left behind."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import killpoint
from e2e_support import Sandbox, retention_only
from test_watch_thinning import DAY, HEAVY, HOUR, LOGICAL, MIN, _repo, new_db

from phoenix_backup.ops import pitr
from phoenix_backup.repo import captures
from phoenix_backup.repo.walker import walk_tree


def _base(sb: Sandbox, at: int) -> captures.Base:
    """A base as the watch takes one: a snapshot of scope `watch` of the database as it is now."""
    sb.backup("--time", datetime.fromtimestamp(at / 1e6, UTC).isoformat(timespec="seconds"))
    with _repo(sb) as (repo, _tl):
        full = repo.load_snapshot(sb.snapshots()[-1]["id"])
        sid = repo.save_snapshot(dataclasses.replace(full, scope="watch", tags=("watch",), id=""))
        repo.delete_snapshot(full.id)
        node = next(n for logical, n in walk_tree(repo, repo.load_snapshot(sid).tree) if logical == LOGICAL)
        return captures.Base(sid, str(node.sha256))


def _old_day(sb: Sandbox, configure: bool = True) -> tuple[Path, sqlite3.Connection, int]:
    """The dashboard database (a fresh table `t`), a connection to it, and the start of the day
    three days ago: older than `capturesHourlyWithin` (2 days, written unless `configure` is off),
    so forget compacts it."""
    if configure:
        sb.write_config(retention={"capturesHourlyWithin": "2d"})
    now = captures.to_us(datetime.now(UTC))
    return sb.layout.dashboard_db, new_db(sb), (now - 3 * DAY) // DAY * DAY


def _pages(old: bytes, new: bytes) -> list[int]:
    count = len(new) // 1024
    return [p for p in range(1, count + 1) if new[(p - 1) * 1024 : p * 1024] != old[(p - 1) * 1024 : p * 1024]]


def test_a_day_across_a_new_base_whose_state_fails_its_check_keeps_every_kept_state(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = sandbox
    db, con, day = _old_day(sb)
    con.executemany("INSERT INTO t VALUES (?, ?)", [(k, "a" * 200) for k in range(40)])
    t = [day + 2 * HOUR + k * 30 * MIN for k in range(5)]
    t[2] = t[1] + MIN + 1_000_000  # the new base is taken a second after the last segment's end
    states: dict[int, bytes] = {}
    chain, previous, since = "d" * 32, None, t[0]
    b1 = _base(sb, t[0] - MIN)
    s0 = db.read_bytes()
    con.executemany("INSERT OR REPLACE INTO t VALUES (?, ?)", [(k, "b" * 150) for k in range(0, 40, 3)])
    s1 = db.read_bytes()
    # The watch takes a new base (say, the database was replaced by another copy of it).
    con.executemany("INSERT OR REPLACE INTO t VALUES (?, ?)", [(k, "c" * 250) for k in range(40, 90)])
    con.execute("DELETE FROM t WHERE k % 5 = 0")
    con.close()
    s2 = db.read_bytes()
    b2 = _base(sb, t[2] - MIN)
    # Then the database is damaged (the watch captures what it sees): its last state that day
    # fails `PRAGMA integrity_check`, so compaction cannot make it a snapshot.
    s3 = bytearray(s2)
    s3[2 * 1024 + 100 : 2 * 1024 + 400] = b"\xff" * 300
    s3 = bytes(s3)
    plan = [  # (commit time, base, state before, state)
        (t[0], b1, s0, s0),
        (t[1], None, s0, s1),
        (t[2], b2, s2, s2),
        (t[3], None, s2, s3),
    ]
    with _repo(sb) as (repo, _tl):
        for i, (at, base, before, state) in enumerate(plan):
            changed = _pages(before, state)
            commit = captures.Commit(at, len(state) // 1024, tuple(changed))
            part = captures.Part(LOGICAL, 1024, at if base else since, at + MIN, (commit,), base)
            seg = captures.build(
                chain, i, previous, "host", [(part, [state[(p - 1) * 1024 : p * 1024] for p in changed])]
            )
            name, raw = captures.seal(repo, seg)
            repo.backend.write(name, raw)
            os.utime(sb.repo / name, ((at + MIN) / 1e6,) * 2)
            previous, since = name.removeprefix(captures.PREFIX), at + MIN
            states[at] = state

    for attempt in (1, 2):  # a second forget tries again, and changes nothing
        for seg_file in (sb.repo / "captures").iterdir():  # (the merged segments look as old as their day)
            os.utime(seg_file, ((t[3] + MIN) / 1e6,) * 2)
        res = sb.phx("forget", "--json")
        thinned = res.json()["targets"]["local"]["captures"]
        assert any("fails its checks" in n for n in thinned["notices"]), res
        with _repo(sb) as (repo, tl):
            # Kept as segments: the last state before the new base and the day's last state too.
            for at in (t[3], t[1]):
                rng = tl.at(LOGICAL, at)
                assert rng is not None and (rng.points is None or at in rng.points), (attempt, at, tl.ranges)
                dest = tmp_path / f"at-{attempt}-{at}.db"
                pitr.rebuild(repo, tl, LOGICAL, at, dest)
                assert dest.read_bytes() == states[at], f"the kept state at {captures.describe(at)} changed"


def _day(
    sb: Sandbox, rows: int = 20, chain: str = "e" * 32, shift: int = 0, value: str = "v", configure: bool = True
) -> tuple[captures.Base, list[int], dict[int, bytes]]:
    """Three segments of a watch's day three days ago from its base (scope `watch`): the base,
    the commit times, and the database's bytes at each."""
    db, con, day = _old_day(sb, configure)
    t = [day + 2 * HOUR + shift + k * 30 * MIN for k in range(3)]
    base = _base(sb, t[0] - MIN)
    states: dict[int, bytes] = {}
    before, previous, since = db.read_bytes(), None, t[0]
    with _repo(sb) as (repo, _tl):
        for i, at in enumerate(t):
            con.executemany("INSERT OR REPLACE INTO t VALUES (?, ?)", [(k * (i + 1), value * 90) for k in range(rows)])
            state = db.read_bytes()
            changed = _pages(before, state)
            commit = captures.Commit(at, len(state) // 1024, tuple(changed))
            part = captures.Part(LOGICAL, 1024, at if i == 0 else since, at + MIN, (commit,), base if i == 0 else None)
            seg = captures.build(
                chain, i, previous, "host", [(part, [state[(p - 1) * 1024 : p * 1024] for p in changed])]
            )
            name, raw = captures.seal(repo, seg)
            repo.backend.write(name, raw)
            os.utime(sb.repo / name, ((at + MIN) / 1e6,) * 2)
            previous, since, before, states[at] = name.removeprefix(captures.PREFIX), at + MIN, state, state
    con.close()
    return base, t, states


def test_a_compaction_killed_before_it_forgets_the_base_is_finished_by_the_next_forget(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = sandbox
    base, t, states = _day(sb)
    pristine = tmp_path / "pristine"
    shutil.copytree(sb.repo, pristine)
    # This machine's state as it was then too: it remembers the snapshots it saw, and an older
    # copy of the repository put back under it is a rollback (e2e/test_rollback.py).
    data = Path(sb.env["XDG_DATA_HOME"])
    shutil.copytree(data, tmp_path / "pristine-data")

    def killed_forget(point: int, match: str) -> subprocess.CompletedProcess[str]:
        # Counted: the changes to objects under `match` only (snapshots/: the compacted snapshot
        # written, the base deleted).
        env = sb.env_with(
            PHX_KILL_AT=str(point),
            PHX_KILL_ONLY="changes",
            PHX_KILL_MATCH=match,
            PHX_KILL_REPORT=str(tmp_path / "report"),
        )
        argv = [sys.executable, str(killpoint.SCRIPT), "forget"]
        return subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)

    done = killed_forget(0, f"{sb.repo}/snapshots/")
    assert done.returncode == 0, done.stderr
    changes = int((tmp_path / "report").read_text().split()[-1])
    ids = {s["id"] for s in sb.phx("list", "--all", "--json").json()}
    assert base.snapshot not in ids, "the base no segment names any longer is forgotten"

    compacted = {s["id"] for s in sb.phx("list", "--all", "--json").json() if "compacted" in s["tags"]}
    assert len(compacted) == 1

    # Killed just before the base is deleted, or just before the compacted segment is written
    # (its snapshot is: the repository's commit point). The next forget finishes either way.
    # (The second with PHX_TEST_HEAVY=1: the default run's budget.)
    points = [(f"{sb.repo}/snapshots/", changes), (f"{sb.repo}/captures/", 1)]
    for match, point in points if HEAVY else points[:1]:
        shutil.rmtree(sb.repo)
        shutil.copytree(pristine, sb.repo)
        shutil.rmtree(data)
        shutil.copytree(tmp_path / "pristine-data", data)
        shutil.rmtree(sb.cache, ignore_errors=True)
        killed = killed_forget(point, match)
        assert killed.returncode == -9, killed.stderr
        hit = (tmp_path / "report").read_text()
        assert (match + base.snapshot if point == changes else match) in hit, hit
        again = sb.phx("forget", "--json")
        assert again.code == 0, again
        snaps = sb.phx("list", "--all", "--json").json()
        assert base.snapshot not in {s["id"] for s in snaps}, f"{hit}: the next forget forgets the base"
        assert len([s for s in snaps if "compacted" in s["tags"]]) == 1, f"{hit}: no stray compacted snapshot"

        with _repo(sb) as (repo, tl):
            dest = tmp_path / "last.db"
            dest.unlink(missing_ok=True)
            pitr.rebuild(repo, tl, LOGICAL, t[-1], dest)
            assert dest.read_bytes() == states[t[-1]]
        assert sb.verify()["ok"]


def test_a_compaction_without_room_to_rebuild_is_a_notice_and_thins_as_before(
    sandbox: Sandbox, tmp_path: Path, tmpfs: Callable[[str], Path]
) -> None:
    # The databases are rebuilt in the temporary folder: a small /tmp (a tmpfs) has no room for them.
    sb = sandbox
    _, t, states = _day(sb, rows=300)
    assert len(states[t[-1]]) >= 64 * 1024
    small = tmpfs("16k")
    res = sb.phx("forget", "--json", env=sb.env_with(TMPDIR=str(small)), check=None)
    assert res.code == 0, res
    thinned = res.json()["targets"]["local"]["captures"]
    assert any("No space left" in n and "TMPDIR" in n for n in thinned["notices"]), thinned
    with _repo(sb) as (repo, tl):
        dest = tmp_path / "last.db"
        pitr.rebuild(repo, tl, LOGICAL, t[-1], dest)
        assert dest.read_bytes() == states[t[-1]]


def test_each_chain_is_compacted_from_its_own_history(sandbox: Sandbox, tmp_path: Path) -> None:
    # Two watches (two machines) follow a database of the same logical path into one repository,
    # at overlapping times: each chain's day is compacted into its own state, not the other's.
    sb = sandbox
    sb.write_config(retention=retention_only())  # the bases' backups forget nothing meanwhile
    _, ta, states_a = _day(sb, chain="a" * 32, value="a", configure=False)
    _, tb, states_b = _day(sb, chain="b" * 32, shift=10 * MIN, value="b", configure=False)
    sb.write_config(retention={"capturesHourlyWithin": "2d"})
    assert states_a[ta[-1]] != states_b[tb[1]]
    res = sb.phx("forget", "--json")
    thinned = res.json()["targets"]["local"]["captures"]
    assert len(thinned["compacted"]) == 2, thinned
    compacted = sorted(
        (s for s in sb.phx("list", "--all", "--json").json() if "compacted" in s["tags"]), key=lambda s: s["time"]
    )
    for snap, want in zip(compacted, (states_a[ta[-1]], states_b[tb[-1]]), strict=True):
        dest = tmp_path / snap["id"][:8]
        sb.phx("restore", "--backup", snap["id"], "--to", str(dest), "--yes")
        assert next(dest.rglob("dashboard.db")).read_bytes() == want, "a chain compacted into another's state"


def test_a_day_whose_last_state_fails_its_check_keeps_the_good_states_before_it(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The database was damaged at the end of a day: compaction cannot make that state a snapshot,
    and the day's earlier, sound states are not thinned away in favour of the damaged one (as a
    retention policy keeps the last snapshot that passed its check): every state stays, and so on
    at the next forget."""
    sb = sandbox
    db, con, day = _old_day(sb)
    con.executemany("INSERT INTO t VALUES (?, ?)", [(k, "a" * 200) for k in range(40)])
    t = [day + 2 * HOUR + k * 30 * MIN for k in range(3)]
    base = _base(sb, t[0] - MIN)
    s0 = db.read_bytes()
    con.executemany("INSERT OR REPLACE INTO t VALUES (?, ?)", [(k, "b" * 150) for k in range(0, 40, 3)])
    con.close()
    s1 = db.read_bytes()
    s2 = bytearray(s1)
    s2[2 * 1024 + 100 : 2 * 1024 + 400] = b"\xff" * 300  # damaged: fails `PRAGMA integrity_check`
    states = {t[0]: s0, t[1]: s1, t[2]: bytes(s2)}
    chain, previous, since, before = "f" * 32, None, t[0], s0
    with _repo(sb) as (repo, _tl):
        for i, at in enumerate(t):
            state = states[at]
            changed = _pages(before, state)
            commit = captures.Commit(at, len(state) // 1024, tuple(changed))
            part = captures.Part(LOGICAL, 1024, since, at + MIN, (commit,), base if i == 0 else None)
            seg = captures.build(
                chain, i, previous, "host", [(part, [state[(p - 1) * 1024 : p * 1024] for p in changed])]
            )
            name, raw = captures.seal(repo, seg)
            repo.backend.write(name, raw)
            os.utime(sb.repo / name, ((at + MIN) / 1e6,) * 2)
            previous, since, before = name.removeprefix(captures.PREFIX), at + MIN, state

    for attempt in (1, 2):
        res = sb.phx("forget", "--json")
        thinned = res.json()["targets"]["local"]["captures"]
        (said,) = [n for n in thinned["notices"] if "fails its checks" in n]
        # Which captures are kept whole, and for how long: a day damaged for good is kept for ever.
        assert f"captures from {captures.describe(t[0], up=True)} to " in said, said
        assert "every `phx forget` tries again, and until one compacts them they are kept whole" in said, said
        with _repo(sb) as (repo, tl):
            for at in t:  # the sound states before the damage above all
                dest = tmp_path / f"at-{attempt}-{at}.db"
                pitr.rebuild(repo, tl, LOGICAL, at, dest)
                assert dest.read_bytes() == states[at], f"the state at {captures.describe(at)} is gone ({attempt})"
