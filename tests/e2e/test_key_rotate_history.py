"""`phx key rotate` carries the point-in-time history of `phx watch` over (issues 14 and 19): the
capture segments are re-sealed under the new key, each naming its base snapshot and its
predecessor by their new ids, so `phx restore --at` gives the same state at every time after a
rotation as before it, the timeline covers the same ranges, the repository verifies with its data
read, and the old key opens nothing the rotation wrote. A rotation killed between the segments'
re-seal and the config switch, or after the switch before the old objects are deleted, leaves
everything restorable, and a second run finishes it. Before, a rotation left the segments sealed
under the retired key: no time between snapshots restored, and `verify` failed."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from e2e_support import Sandbox, assert_error
from killpoint import run_killed
from test_watch_thinning import LOGICAL, new_db

from phoenix_backup.config import load_config
from phoenix_backup.ops import pitr
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.repo import captures
from phoenix_backup.repo.crypto import Sealer
from phoenix_backup.repo.replicate import replicate
from phoenix_backup.repo.repository import Repository, sealed_with
from phoenix_backup.repo.walker import walk_tree
from phoenix_backup.storage.local import LocalBackend

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
SEC = 1_000_000  # µs
SEGMENTS = 8  # sealed by the "watch"
STORED = 7  # after two merges: 2-3 (3 left behind) and 5-6 (both deleted)


@contextlib.contextmanager
def _repo(sb: Sandbox) -> Iterator[Repository]:
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    try:
        yield repo
    finally:
        repo.close()


def _rows(db: Path) -> list[tuple[object, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT k, v FROM t ORDER BY k").fetchall()
    finally:
        con.close()


def _history(sb: Sandbox) -> dict[int, list[tuple[object, ...]]]:
    """A backup (the base), then a watch's chain of segments over the ten minutes before now, one
    commit each, as `phx watch` seals them; segments 2 and 3, and 5 and 6, are then merged as a
    thinning does; segments 5 and 6 are deleted, and 3 is left behind (a thinning cut short), so
    one merged segment's `link` (which the next segment names as its previous) names no stored
    segment, and the other's names a stored one. Returns the writer's rows at each commit time
    kept."""
    db = sb.layout.dashboard_db
    con = new_db(sb)
    con.execute("INSERT INTO t VALUES (1, 'before the base')")
    base_snap = sb.backup()["id"]
    now = captures.to_us(datetime.now(UTC))
    rows: dict[int, list[tuple[object, ...]]] = {}
    chain, previous, prev = "d" * 32, None, db.read_bytes()
    written: list[captures.Segment] = []
    with _repo(sb) as repo:
        repo.load_index()
        node = next(n for lg, n in walk_tree(repo, repo.load_snapshot(base_snap).tree) if lg == LOGICAL)
        since = now - 10 * 60 * SEC
        for k in range(SEGMENTS):
            at = since + 20 * SEC
            con.execute("INSERT INTO t VALUES (?, ?)", (k + 10, f"commit {k} " + "x" * 600))
            cur = db.read_bytes()
            count = len(cur) // 1024
            changed = [
                p for p in range(1, count + 1) if cur[(p - 1) * 1024 : p * 1024] != prev[(p - 1) * 1024 : p * 1024]
            ]
            base = captures.Base(base_snap, str(node.sha256)) if k == 0 else None
            part = captures.Part(
                LOGICAL,
                1024,
                at if k == 0 else since,
                at + 40 * SEC,
                (captures.Commit(at, count, tuple(changed)),),
                base,
            )
            seg = captures.build(
                chain, k, previous, "host", [(part, [cur[(p - 1) * 1024 : p * 1024] for p in changed])]
            )
            name, raw = captures.seal(repo, seg)
            repo.backend.write(name, raw)
            seg.id = name.removeprefix(captures.PREFIX)
            written.append(seg)
            rows[at], prev, previous, since = _rows(db), cur, seg.id, at + 40 * SEC
        merged = captures.merge(written[2:4])
        name, raw = captures.seal(repo, merged)
        repo.backend.write(name, raw)
        repo.backend.delete(captures.PREFIX + written[2].id)
        name, raw = captures.seal(repo, captures.merge(written[5:7]))
        repo.backend.write(name, raw)
        for seg in written[5:7]:
            repo.backend.delete(captures.PREFIX + seg.id)
    con.close()
    for seg in (written[2], written[5]):
        rows.pop(seg.parts[0].commits[0].at)  # thinned away by the merges
    return rows


def _times(rows: dict[int, list[tuple[object, ...]]]) -> list[int]:
    """Each kept commit's time, and a time between it and the next one."""
    return sorted({t for at in rows for t in (at, at + 5 * SEC)})


def _rebuilt(sb: Sandbox, times: list[int], tmp: Path) -> dict[int, bytes]:
    out = {}
    with _repo(sb) as repo:
        repo.load_index()
        tl = captures.timeline(repo)
        for at in times:
            dest = tmp / "rebuilt.db"
            dest.unlink(missing_ok=True)
            pitr.rebuild(repo, tl, LOGICAL, at, dest)
            out[at] = dest.read_bytes()
    return out


def _ranges(sb: Sandbox) -> dict[str, object]:
    """What `phx list --timeline` says of the databases: ranges, gaps, segments, problems."""
    doc = sb.phx_here("list", "--timeline", "--json").json()
    return {k: doc[k] for k in ("databases", "segments", "problems", "brokenChains")}


def _restored_at(sb: Sandbox, at: int, dest: Path) -> list[tuple[object, ...]]:
    when = captures.describe(at, exact=True)
    sb.phx_here("restore", "--at", when, "--to", dest, "--path", LOGICAL, "--json")
    found = [p for p in dest.rglob("dashboard.db") if p.is_file()]
    assert len(found) == 1, found
    return _rows(found[0])


@pytest.fixture
def history(
    sandbox: Sandbox, tmp_path: Path
) -> tuple[Sandbox, dict[int, list[tuple[object, ...]]], dict[int, bytes], dict[str, object]]:
    rows = _history(sandbox)
    before = _rebuilt(sandbox, _times(rows), tmp_path)
    return sandbox, rows, before, _ranges(sandbox)


def test_a_rotation_keeps_every_point_in_time(history, tmp_path: Path) -> None:
    sb, rows, before, ranges = history
    assert [r["kind"] for r in ranges["databases"][LOGICAL]] == [
        "covered",
        "thinned",
        "covered",
        "thinned",
        "covered",
    ], ranges
    between = sorted(rows)[-2] + 5 * SEC  # after a commit, before the next: no snapshot holds it
    assert _restored_at(sb, between, tmp_path / "before") == rows[sorted(rows)[-2]]
    with _repo(sb) as repo:
        old = Sealer(repo.secrets.encryption_key)
        old_segments = set(captures.segment_names(repo))

    doc = sb.phx_here("key", "rotate", "--json").json()

    assert _ranges(sb) == ranges
    assert _restored_at(sb, between, tmp_path / "after") == rows[sorted(rows)[-2]]
    assert _rebuilt(sb, _times(rows), tmp_path) == before
    assert doc["segments"] == STORED, doc
    for at, want in rows.items():
        assert _rows_of(before[at], tmp_path) == want, captures.describe(at)
    verified = sb.phx_here("verify", "--json", "--read-data").json()
    assert verified["ok"] and verified["errors"] == [] and verified["notices"] == [], verified
    assert verified["checked"]["segments"] == STORED, verified
    with _repo(sb) as repo:
        now = set(captures.segment_names(repo))
        assert len(now) == STORED and not now & old_segments
        for prefix in ("captures/", "snapshots/", "index/", "data/"):
            for info in repo.backend.list(prefix):
                assert not sealed_with(repo.backend, info.name, old), f"the old key opens {info.name}"


def _rows_of(data: bytes, tmp: Path) -> list[tuple[object, ...]]:
    db = tmp / "rows.db"
    db.write_bytes(data)
    return _rows(db)


@pytest.mark.parametrize(
    "match",
    [
        "store.write(config",  # every segment re-sealed, the config not switched yet
        "store.delete(captures/",  # switched; no old object deleted yet
        *(["store.write(captures/", "store.delete(snapshots/"] if HEAVY else []),
    ],
)
def test_a_rotation_killed_around_its_commit_point_keeps_the_history(history, tmp_path: Path, match: str) -> None:
    sb, rows, before, ranges = history
    env = sb.env_with(PHX_KILL_AT="1", PHX_KILL_MATCH=match, PHX_KILL_ONLY="changes")
    kind, _n, call = run_killed(["key", "rotate"], env, tmp_path / "kill-report")
    assert kind == "killed", f"the rotation was not killed before {match}"
    times = _times(rows)
    assert _ranges(sb) == ranges, call
    assert _rebuilt(sb, times, tmp_path) == before, call
    verified = sb.phx_here("verify", "--json").json()
    assert verified["ok"], (call, verified)
    sb.phx_here("key", "rotate")
    assert _ranges(sb) == ranges, call
    assert _rebuilt(sb, times, tmp_path) == before, call
    verified = sb.phx_here("verify", "--json", "--read-data").json()
    assert verified["ok"] and verified["notices"] == [], (call, verified)
    assert verified["checked"]["segments"] == STORED, verified


def test_segments_a_watch_sealed_before_a_rotation_are_never_written_after_it(sandbox: Sandbox, tmp_path: Path) -> None:
    """A watch whose segments waited in its spool (the repository out of reach, or the rotation
    holding the lock) across a `phx key rotate`: the next watch deletes them, saying why, rather
    than write segments no key opens."""
    from test_watch_adversary import _commit
    from test_watch_bases import _watcher, cut_off_watcher

    sb = sandbox
    notices: list[str] = []
    with cut_off_watcher(sb, tmp_path, notices) as (w, db, segments):  # the segments wait in the spool
        for k in (2, 3):
            _commit(db, k)
            w.poll()
            w.flush()
        assert len(list(w.spool.iterdir())) == 2
        w.spill_all()
        w.save_hashes(stopping=True)
    segments.unlink()
    (tmp_path / "captures-away").rename(segments)
    ranges = _ranges(sb)
    sb.phx_here("key", "rotate")
    assert _ranges(sb) == ranges  # what was written before the rotation is kept
    with _watcher(sb, notices) as w:
        w.poll()
        w.flush()
        assert not w.queue and list(w.spool.iterdir()) == []
    said = [n for n in notices if "retired" in n]
    assert len(said) == 2 and "stop `phx watch` before rotating the key" in said[0], notices
    verified = sb.phx_here("verify", "--json", "--read-data").json()
    assert verified["ok"] and verified["errors"] == [], verified


def test_a_damaged_segment_stops_the_rotation_before_it_changes_anything(history, tmp_path: Path) -> None:
    """A segment that does not open cannot be re-sealed, and another target may hold a good copy
    that a rotation would retire with the old key: nothing is changed, and the error says what to
    do (before, the rotation went on and left it under the retired key)."""
    sb = history[0]
    damaged = sorted((sb.repo / "captures").iterdir())[0]
    data = bytearray(damaged.read_bytes())
    data[40] ^= 1
    damaged.write_bytes(bytes(data))
    stored = {p: p.read_bytes() for p in sb.repo.rglob("*") if p.is_file()}
    res = sb.phx("key", "rotate", check=None)
    assert_error(res, 1, "1 capture segment(s)", damaged.name, "nothing was changed", "run `phx key rotate` again")
    assert {p: p.read_bytes() for p in sb.repo.rglob("*") if p.is_file() and "locks" not in p.parts} == {
        p: b for p, b in stored.items() if "locks" not in p.parts
    }


def test_a_chain_with_a_missing_segment_stops_the_rotation_before_it_changes_anything(history) -> None:
    """A segment gone from the first target's chain: another target may hold it, and after a
    rotation replication deletes that copy (the old key sealed it), so the states after the gap
    would be lost on every target. Nothing is changed, and the error says what to do; deleting
    the later segments (which no reader reaches) gives them up, and the rotation then runs
    (before, it went on, exit 0, and the next `phx sync` deleted a replica's good copy)."""
    sb, _rows, _before, ranges = history
    with _repo(sb) as repo:
        chain = captures.timeline(repo).chains["d" * 32]
    gone = sb.repo / captures.PREFIX / chain[1].id
    kept = gone.read_bytes()
    gone.unlink()
    stored = {p: p.read_bytes() for p in sb.repo.rglob("*") if p.is_file() and "locks" not in p.parts}
    res = sb.phx("key", "rotate", check=None)
    assert_error(res, 1, "segment 1 of chain dddddddd", "nothing was changed", "run `phx key rotate` again")
    assert {p: p.read_bytes() for p in sb.repo.rglob("*") if p.is_file() and "locks" not in p.parts} == stored
    (sb.repo / captures.PREFIX / chain[1].id).write_bytes(kept)  # copied back from another target
    sb.phx_here("key", "rotate")
    assert _ranges(sb) == ranges


@pytest.mark.skipif(not HEAVY or shutil.which("git") is None, reason="heavy (PHX_TEST_HEAVY=1), with git")
def test_a_replica_keeps_the_segment_the_first_target_lost_across_a_rotation(history) -> None:
    """The case the refusal above is for: the first target lost a segment a Git replica holds.
    The rotation refuses, the next `phx sync` keeps the replica's copy, and once it is copied
    back the rotation runs and both targets give every state (before, the rotation went on and
    that sync deleted the replica's copy: the chain was broken on every target)."""
    sb, _rows, _before, ranges = history
    remote = sb.root / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    sb.env["PHX_DATA_DIR"] = str(sb.root / "data")
    git = {"enabled": True, "repo": str(remote), "branch": "main", "autoCommit": True}
    sb.write_config(targets={"local": {"enabled": True}, "git": git})
    sb.phx("sync")
    with _repo(sb) as repo:
        lost = captures.PREFIX + captures.timeline(repo).chains["d" * 32][1].id
    kept = (sb.repo / lost).read_bytes()
    (sb.repo / lost).unlink()
    assert sb.phx("key", "rotate", check=None).code == 1
    sb.phx("sync")
    tree = subprocess.run(
        ["git", "--git-dir", str(remote), "show", f"main:{lost}"], capture_output=True, check=True
    ).stdout
    assert tree == kept  # the replica's copy is still there
    (sb.repo / lost).write_bytes(tree)
    sb.phx_here("key", "rotate")
    assert _ranges(sb) == ranges
    doc = sb.phx_here("list", "--timeline", "--json", "--target", "git").json()
    assert {k: doc[k] for k in ranges} == ranges


def test_a_replica_keeps_the_last_segment_the_first_target_lost_across_a_rotation(history, tmp_path: Path) -> None:
    """The end of a chain lost on the first target only: its timeline still looks whole, so the
    rotation runs (exit 0), but it did not re-seal that segment and its record does not name it:
    the sync keeps the replica's copy (and the replica's old key, which opens it) and says so;
    that replica still gives every state (before, the sync deleted the copy: the last states of
    the chain were lost on every target)."""
    sb, _rows, _before, ranges = history
    replica = tmp_path / "replica"
    with _repo(sb) as repo:
        assert replicate(repo, "replica", LocalBackend(replica), print).ok
        lost = captures.PREFIX + captures.timeline(repo).chains["d" * 32][-1].id
    kept = (replica / lost).read_bytes()
    (sb.repo / lost).unlink()
    sb.phx_here("key", "rotate")
    with _repo(sb) as repo:
        report = replicate(repo, "replica", LocalBackend(replica), print)
    assert (replica / lost).exists(), report  # before: deleted
    assert (replica / lost).read_bytes() == kept
    assert not report.ok and report.error is not None and "0 snapshot(s) and 1 capture segment(s)" in report.error
    sb.write_config(targets={"local": {"enabled": True, "path": str(replica)}})
    fresh = sb.env_with(PHX_DATA_DIR=str(tmp_path / "fresh-data"))
    doc = sb.phx("list", "--timeline", "--json", env=fresh).json()
    assert {k: doc[k] for k in ranges} == ranges
