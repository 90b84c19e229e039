"""Format 6 attacked (docs/repository-format.md, "Version 6"): what decides which data a snapshot
needs must count a database's extent-list blobs and the data blobs they name, wherever the
decision is taken. conftest.py makes the lists small, so the tiny sample's databases are listed."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from e2e_support import Sandbox
from test_key_rotate_history import _repo

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
