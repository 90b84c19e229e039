"""Format 6 attacked (docs/repository-format.md, "Version 6"): what decides which data a snapshot
needs must count a database's extent-list blobs and the data blobs they name, wherever the
decision is taken. conftest.py makes the lists small, so the tiny sample's databases are listed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import e2e_support
import pytest
from e2e_support import Sandbox, db_dump
from killpoint import read_report
from killpoint_lists import SCRIPT as KILL_SCRIPT
from test_key_rotate_history import _repo
from test_kill_points import (
    World,
    _backup_check,
    check_repository,
    make_template,
    world_from,
)

from phoenix_backup.repo import tree
from phoenix_backup.repo.prune import snapshot_blobs
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import ListedExtents
from phoenix_backup.repo.walker import walk_tree

pytestmark = pytest.mark.phx_in_process

MEMORY = "home/.argentos/memory.db"


def _change(sb: Sandbox, day: int) -> None:
    """A few rows of memory.db changed in one region: the other regions keep their list blobs."""
    con = sqlite3.connect(sb.db_path(MEMORY))
    try:
        con.execute("CREATE TABLE IF NOT EXISTS pad (k INTEGER PRIMARY KEY, x BLOB)")
        con.executemany("INSERT OR REPLACE INTO pad VALUES (?, randomblob(1500))", [(day * 7 + i,) for i in range(6)])
        con.commit()
    finally:
        con.close()


def test_a_backup_confirms_the_packs_of_the_list_blobs_it_reuses(
    make_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daily backup of a changed database writes its lists again and finds most of them already
    stored (a region unchanged keeps its list blob's id). Before it commits, it confirms every pack
    its snapshot needs is still in the store (a prune by another machine may have removed one with
    a forgotten snapshot): the list blobs it found stored were left out of that check, so a
    snapshot could be committed naming list blobs in a pack that was gone (its database lost)."""
    sb: Sandbox = make_sandbox()
    for i in range(3):
        _change(sb, i)
        sb.backup()
    confirmed: set[bytes] = set()
    original = Repository.confirm_present

    def spy(self: Repository, blob_ids: Any) -> None:
        ids = set(blob_ids)
        confirmed.update(ids)
        original(self, ids)

    monkeypatch.setattr(Repository, "confirm_present", spy)
    _change(sb, 9)
    sid = sb.backup()["id"]
    with _repo(sb) as repo:
        repo.load_index()
        snap = repo.load_snapshot(sid)
        node = next(n for p, n in walk_tree(repo, snap.tree) if p == MEMORY)
        assert isinstance(node.content, ListedExtents) and len(node.content.refs) >= 3
        needed = snapshot_blobs(repo, [snap])
    lists = {r.blob for r in node.content.refs}
    assert lists <= needed
    missing = needed - confirmed
    assert not (lists - confirmed), f"{len(lists - confirmed)} of {len(lists)} list blob(s) not confirmed"
    assert not missing, f"{len(missing)} blob(s) the snapshot needs were not confirmed"


def test_a_database_crossing_the_list_threshold_and_back_restores_every_day(
    make_sandbox: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """memory.db inline, then listed (more extents than the threshold), then inline again, then
    every page changed (VACUUM) while listed; a day unchanged between each: every snapshot restores
    its rows, the unchanged days capture nothing, and a prune after forgetting all but the last
    two keeps what they need."""
    sb: Sandbox = make_sandbox()
    days: list[tuple[str, Any]] = []

    def day(limit: int, change: int | None, vacuum: bool = False) -> None:
        monkeypatch.setattr(tree, "INLINE_EXTENTS", limit)
        if change is not None:
            _change(sb, change)
        if vacuum:
            con = sqlite3.connect(sb.db_path(MEMORY))
            con.execute("UPDATE pad SET x = randomblob(1500)")
            con.commit()
            con.execute("VACUUM")
            con.close()
        doc = sb.backup()
        days.append((doc["id"], db_dump(sb.db_path(MEMORY))))
        with _repo(sb) as repo:
            repo.load_index()
            node = next(n for p, n in walk_tree(repo, repo.load_snapshot(doc["id"]).tree) if p == MEMORY)
        if change is None:  # unchanged: its parent's node, inline or listed as it was
            assert doc["databasesCaptured"] == 0, doc
        else:
            assert isinstance(node.content, ListedExtents) == (len(node.content) > limit), (limit, len(node.content))

    day(10**6, 0)  # inline
    day(2, 1)  # listed
    day(2, None)  # unchanged: the listed parent's node
    day(10**6, 2)  # inline again, its parent listed
    day(2, None)  # unchanged, inline parent kept
    day(2, 3, vacuum=True)  # every page changed, listed
    for i, (sid, rows) in enumerate(days):
        sb.restore_to(sid, tmp_path / f"r{i}", "--path", MEMORY)
        assert db_dump(tmp_path / f"r{i}" / MEMORY) == rows, f"day {i}"
    sb.phx_here("forget", *[sid for sid, _rows in days[:-2]])
    sb.phx_here("prune")
    for sid, rows in days[-2:]:
        sb.restore_to(sid, tmp_path / f"p{sid[:8]}", "--path", MEMORY)
        assert db_dump(tmp_path / f"p{sid[:8]}" / MEMORY) == rows
    assert sb.verify("--read-data")["ok"] is True


@pytest.fixture(scope="module")
def listed_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The kill suite's world backed up in this process with small lists, so its databases are
    listed whatever ran before in this worker (a `phx` subprocess writes lists only past the real
    sizes; the autouse fixture of each test comes after a module's fixtures)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (("INLINE_EXTENTS", 2), ("LIST_SPAN", 16384), ("MAX_LIST_EXTENTS", 4)):
            mp.setattr(tree, name, value)
        mp.setattr(e2e_support, "HELPERS_IN_PROCESS", True)
        return make_template(tmp_path_factory)


def _killed_backup(w: World, kill_at: int) -> tuple[str, int, str]:
    """`phx backup` with small lists (killpoint_lists.py), killed before its `kill_at`th pack write
    (0: counted, not killed)."""
    report = w.sb.root / f"kill-report-{kill_at}"
    env = dict(w.sb.env, PHX_KILL_AT=str(kill_at), PHX_KILL_MATCH="store.write(data/*", PHX_KILL_SEED="1")
    proc = subprocess.run(
        [sys.executable, str(KILL_SCRIPT), "backup", "--json"],
        env={**env, "PHX_KILL_REPORT": str(report)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=180,
    )
    outcome = read_report(report)
    assert outcome[0] == "killed" or proc.returncode == 0, proc.stderr[-2000:]
    return outcome


def test_a_backup_killed_before_its_list_pack_leaves_the_repository_consistent(
    listed_template: tuple[Path, dict[str, Any]],
    tmp_path: Path,
) -> None:
    """A `phx backup` process that writes list blobs (killpoint_lists.py makes them small there),
    SIGKILLed before it writes the pack of its trees and list blobs:
    verify --read-data passes, every snapshot restores its state, the next backup and a prune
    work, and the snapshot a run not killed writes names new list blobs (so the kills hit them)."""
    w = world_from(listed_template, tmp_path / "count")
    kind, writes, _call = _killed_backup(w, 0)
    assert kind == "calls" and writes >= 2, (kind, writes)
    newest = max(w.sb.snapshots(), key=lambda s: s["time"])["id"]
    with _repo(w.sb) as repo:
        repo.load_index()
        node = next(n for p, n in walk_tree(repo, repo.load_snapshot(newest).tree) if p == MEMORY)
    assert isinstance(node.content, ListedExtents), "the killed process wrote no list"
    # The last pack written holds the trees and list blobs (the data packs come first); every pack
    # write was killed once when this test was written (all held), the suite keeps the last one.
    w = world_from(listed_template, tmp_path / "killed")
    assert _killed_backup(w, writes)[0] == "killed"
    _backup_check(w, "killed before its last pack write")
    w.sb.phx_here("prune")
    check_repository(w, "killed before its last pack write, then a prune", expect=w.states, again=True)
