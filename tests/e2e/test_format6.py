"""Format 6 (docs/repository-format.md, "Version 6"): a database node of many extents keeps them in
extent-list blobs. With list sizes made small here (tree.py's module constants), the tiny
sample's databases span several list blobs: every snapshot restores byte for byte, unchanged
regions keep their list blobs from day to day, and every walk that decides what a snapshot needs
(prune, verify, sync, a backup's reuse of its parent) counts the list blobs and the data blobs
they name."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from e2e_support import DATABASES, Sandbox, db_dump
from test_format5 import _watch_once
from test_key_rotate_history import _repo
from test_pack_ids import remake_as_format_2

from phoenix_backup.errors import CorruptObject
from phoenix_backup.repo import tree
from phoenix_backup.repo.pack import pack_name
from phoenix_backup.repo.replicate import replicate
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import ListedExtents, Node
from phoenix_backup.repo.walker import walk_tree
from phoenix_backup.storage.local import LocalBackend

pytestmark = pytest.mark.phx_in_process

MEMORY = "home/.argentos/memory.db"


@pytest.fixture
def small_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lists of at most 4 extents, cut every 16 KiB of a database, for any node of more than 2
    (smaller than conftest.py sets them for every test: here the tests depend on many lists)."""
    monkeypatch.setattr(tree, "INLINE_EXTENTS", 2)
    monkeypatch.setattr(tree, "LIST_SPAN", 16384)
    monkeypatch.setattr(tree, "MAX_LIST_EXTENTS", 4)


def _change(sb: Sandbox, day: int) -> None:
    """A day's writes to memory.db: some rows changed in place, a few added."""
    con = sqlite3.connect(sb.db_path(MEMORY))
    try:
        con.execute("CREATE TABLE IF NOT EXISTS pad (k INTEGER PRIMARY KEY, x BLOB)")
        con.executemany("INSERT OR REPLACE INTO pad VALUES (?, randomblob(1500))", [(day * 7 + i,) for i in range(6)])
        con.execute("UPDATE pad SET x = randomblob(1500) WHERE k % 5 = ?", (day % 5,))
        con.commit()
    finally:
        con.close()


def _node(repo: Repository, snap_id: str, logical: str = MEMORY) -> Node:
    repo.load_index()
    snap = repo.load_snapshot(snap_id)
    return next(n for p, n in walk_tree(repo, snap.tree) if p == logical)


def _refs(sb: Sandbox, snap_id: str) -> list[bytes]:
    with _repo(sb) as repo:
        node = _node(repo, snap_id)
        assert isinstance(node.content, ListedExtents), "memory.db is not listed"
        return [r.blob for r in node.content.refs]


def _history(sb: Sandbox, days: int) -> list[tuple[str, dict[str, Any]]]:
    """A backup a day for `days` days: [(snapshot id, the databases' rows then)]."""
    out = []
    for day in range(days):
        if day:
            _change(sb, day)
        doc = sb.backup()
        out.append((doc["id"], {lg: db_dump(sb.db_path(lg)) for lg in DATABASES}))
    return out


def _restored_rows(sb: Sandbox, snap_id: str, dest: Path) -> dict[str, Any]:
    sb.restore_to(snap_id, dest)
    return {lg: db_dump(dest / lg) for lg in DATABASES}


def test_daily_backups_restore_every_snapshot_and_keep_unchanged_lists(
    make_sandbox: Any, small_lists: None, tmp_path: Path
) -> None:
    sb: Sandbox = make_sandbox()
    assert json.loads((sb.repo / "config").read_text())["version"] == 6
    history = _history(sb, 4)
    lists = [_refs(sb, sid) for sid, _rows in history]
    assert all(len(refs) >= 3 for refs in lists), lists  # several list blobs each day
    # A day's changes rewrite some list blobs; the others keep their ids (the lists dedupe).
    for before, after in itertools.pairwise(lists):
        assert set(before) & set(after), "no list blob kept from one day to the next"
    for i, (sid, rows) in enumerate(history):
        assert _restored_rows(sb, sid, tmp_path / f"r{i}") == rows
    assert sb.verify("--read-data")["ok"] is True
    # A day without a change: every database is its parent's (listed and captured again compare equal).
    assert sb.backup()["databasesCaptured"] == 0


def test_prune_after_forget_keeps_every_list_blob_and_what_it_names(
    make_sandbox: Any, small_lists: None, tmp_path: Path
) -> None:
    sb: Sandbox = make_sandbox()
    history = _history(sb, 3)
    shared = set(_refs(sb, history[1][0])) & set(_refs(sb, history[2][0]))
    assert shared
    # Forget the two older snapshots, prune, then the kept one reads back whole.
    sb.phx_here("forget", history[0][0], history[1][0])
    sb.phx_here("prune")
    kept_id, kept_rows = history[2]
    assert _restored_rows(sb, kept_id, tmp_path / "kept") == kept_rows
    assert sb.verify("--read-data")["ok"] is True
    with _repo(sb) as repo:
        repo.load_index()
        assert all(repo.index.has(b) for b in shared)


def _damage_list_blob(sb: Sandbox, snap_id: str) -> None:
    """One byte of memory.db's last list blob flipped where its pack stores it (the trees of the
    same pack stay intact)."""
    with _repo(sb) as repo:
        node = _node(repo, snap_id)
        assert isinstance(node.content, ListedExtents)
        loc = repo.index.get(node.content.refs[-1].blob)
        assert loc is not None
        pack = sb.repo / pack_name(loc.pack_id)
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.stored // 2] ^= 0x40
    pack.write_bytes(bytes(raw))


def test_verify_names_the_database_of_a_damaged_list_blob_and_restore_refuses_it(
    make_sandbox: Any, small_lists: None, tmp_path: Path
) -> None:
    sb: Sandbox = make_sandbox()
    sid = sb.backup()["id"]
    _damage_list_blob(sb, sid)
    doc = sb.verify(check=1)
    assert doc["ok"] is False
    assert any(e["path"] == MEMORY for e in doc["errors"]), doc["errors"]
    res = sb.phx_here("restore", "--backup", sid, "--to", tmp_path / "r", "--path", MEMORY, code=1)
    assert "memory.db" in str(res) and "extent list" in str(res), res
    assert not (tmp_path / "r" / MEMORY).exists(), res


def test_a_planted_list_blob_is_named_with_the_database_path(
    make_sandbox: Any, small_lists: None, tmp_path: Path
) -> None:
    """A list blob that covers other bytes than its node says (a valid list of another day's
    database, sealed with the key: what a key holder could plant) is damage named with the path,
    and a restore writes no byte of the database."""
    sb: Sandbox = make_sandbox()
    sid = sb.backup()["id"]
    with _repo(sb) as repo:
        node = _node(repo, sid)
        assert isinstance(node.content, ListedExtents)
        first = node.content.refs[0]
        # Another list of the same count, its first extent one byte shorter: other bytes covered.
        ext = node.content.read(0)
        records = list(ext.records())
        blob, offset, length = records[0]
        records[0] = (blob, offset, max(length - 1, 0))
        planted = tree.encode_list(records)
        planted_id = repo.save_list(planted)
        repo.flush()
        refs = (tree.ListRef(planted_id, first.size, first.count), *node.content.refs[1:])
        fake = dataclasses.replace(node, content=ListedExtents(refs, repo.load_list, node.name))
        problem = None
        try:
            list(fake.content.records())
        except CorruptObject as exc:
            problem = exc
        assert problem is not None and "memory.db" in str(problem) and "not the node's" in str(problem), problem


def test_sync_to_a_new_replica_restores_from_the_replica_alone(
    make_sandbox: Any, small_lists: None, tmp_path: Path
) -> None:
    sb: Sandbox = make_sandbox()
    history = _history(sb, 2)
    replica = tmp_path / "replica"
    with _repo(sb) as repo:
        replicate(repo, "replica", LocalBackend(replica), lambda _m: None)
    assert json.loads((replica / "config").read_text())["version"] == 6
    shutil.rmtree(sb.repo)  # the first target gone: the replica alone, where it was
    replica.rename(sb.repo)
    for i, (sid, rows) in enumerate(history):
        assert _restored_rows(sb, sid, tmp_path / f"r{i}") == rows
    assert sb.verify("--read-data")["ok"] is True


def test_an_older_format_keeps_inline_extents(make_sandbox: Any, small_lists: None, tmp_path: Path) -> None:
    sb: Sandbox = make_sandbox()
    remake_as_format_2(sb)
    history = _history(sb, 2)
    assert json.loads((sb.repo / "config").read_text())["version"] == 2
    with _repo(sb) as repo:
        for sid, _rows in history:
            node = _node(repo, sid)
            assert not isinstance(node.content, ListedExtents) and len(node.content) > tree.INLINE_EXTENTS
    for i, (sid, rows) in enumerate(history):
        assert _restored_rows(sb, sid, tmp_path / f"r{i}") == rows
    assert sb.backup()["databasesCaptured"] == 0


def test_a_watch_writes_no_config_to_a_format_6_repository(make_sandbox: Any, tmp_path: Path) -> None:
    """Format 6 is format 5 and more: it may hold capture segments, so a watch has nothing to mark."""
    sb: Sandbox = make_sandbox()
    sb.backup()
    before = (sb.repo / "config").read_bytes()
    _watch_once(sb)
    assert any((sb.repo / "captures").iterdir())
    assert (sb.repo / "config").read_bytes() == before
    assert sb.verify()["ok"] is True


@pytest.mark.parametrize("lowered", [5, 4])
def test_a_format_6_config_put_back_as_a_lower_format_is_refused(make_sandbox: Any, lowered: int) -> None:
    """Signed by the same key, so only the pin (6) tells it: refused as a downgrade, nothing read."""
    sb: Sandbox = make_sandbox()
    sb.backup()
    with _repo(sb) as repo:
        config = dataclasses.replace(repo.config, extent_lists=False, captures=lowered == 5).signed(repo.secrets)
    assert config.version == lowered
    (sb.repo / "config").write_bytes(config.to_bytes())
    res = sb.phx_here("list", code=1)
    assert f"is format {lowered}" in res.err and "saw it format 6" in res.err and "downgraded" in res.err, res


def test_a_key_rotation_reseals_the_list_blobs(make_sandbox: Any, small_lists: None, tmp_path: Path) -> None:
    """The list blobs are tree blobs: a rotation re-seals them with the trees; every snapshot restores."""
    sb: Sandbox = make_sandbox()
    history = _history(sb, 2)
    refs = _refs(sb, history[-1][0])
    sb.phx_here("key", "rotate")
    rotated = [s["id"] for s in sorted(sb.snapshots(), key=lambda s: s["time"])]  # re-sealed: new ids
    assert len(rotated) == len(history)
    assert _refs(sb, rotated[-1]) == refs  # the same list blobs: nothing rewritten, only re-sealed
    for i, (sid, (_old, rows)) in enumerate(zip(rotated, history, strict=True)):
        assert _restored_rows(sb, sid, tmp_path / f"r{i}") == rows
    assert sb.verify("--read-data")["ok"] is True


def test_a_write_only_machine_reuses_its_listed_databases_and_the_reader_restores(
    make_sandbox: Any, small_lists: None, tmp_path: Path
) -> None:
    """The machine that backs up a write-only repository reads its parent's lists from its own tree
    cache (it can open nothing in the repository): an unchanged database is its parent's, a
    changed one is compared region by region; the reading machine restores every snapshot."""
    from test_write_only import Reader, writer

    sb, identity = writer(make_sandbox, tmp_path)
    assert json.loads((sb.repo / "config").read_text())["version"] == 6
    history = _history(sb, 3)
    assert len(_refs(sb, history[-1][0])) >= 3  # read from the machine's own tree cache
    doc = sb.backup()
    assert doc["databasesCaptured"] == 0, doc  # nothing changed: every database is its parent's
    reader = Reader(sb, tmp_path / "reader", identity)
    for i, (sid, rows) in enumerate(history):
        reader.phx("restore", "--backup", sid, "--to", tmp_path / f"r{i}")
        assert {lg: db_dump(tmp_path / f"r{i}" / lg) for lg in DATABASES} == rows
    assert reader.phx("verify", "--read-data", "--json").json()["ok"] is True


def test_a_drill_of_a_database_whose_list_blob_is_damaged_names_it_and_checks_the_rest(
    make_sandbox: Any, small_lists: None
) -> None:
    """A drill names a file that cannot be restored with the pack holding its damage, found by
    reading its blobs again: a listed database's damaged list blob raised out of that search, so
    the drill ended as a bare error and its report (every other file and database) was lost."""
    sb: Sandbox = make_sandbox()
    sid = sb.backup()["id"]
    _damage_list_blob(sb, sid)
    with _repo(sb) as repo:
        node = _node(repo, sid)
        assert isinstance(node.content, ListedExtents)
        loc = repo.index.get(node.content.refs[-1].blob)
        assert loc is not None
    doc = sb.phx_here("drill", "--backup", sid, "--json", code=1).json()
    [error] = doc["errors"]
    assert error["path"] == MEMORY and error["object"] == pack_name(loc.pack_id), error
    assert "extent list" in error["message"] and "memory.db" in error["message"], error
    assert {d["path"] for d in doc["databases"] if d["ok"]} == {
        "home/.argentos/data/dashboard.db",
        "home/.argentos/observations.db",
    }


def test_an_export_of_a_database_whose_data_is_damaged_names_it(
    make_sandbox: Any, small_lists: None, tmp_path: Path
) -> None:
    """An export copies each database of the snapshot through the restore's reader: a damaged data
    blob of memory.db was said as the blob alone ("blob … fails authentication"), naming neither
    the database nor what to do; it is named with its path and the fix, as `phx dump` says it."""
    sb: Sandbox = make_sandbox()
    sid = sb.backup()["id"]
    with _repo(sb) as repo:
        node = _node(repo, sid)
        blob = list(node.content.blobs())[len(node.content) // 2]
        loc = repo.index.get(blob)
        assert loc is not None
        pack = sb.repo / pack_name(loc.pack_id)
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.stored // 2] ^= 0x40
    pack.write_bytes(bytes(raw))
    res = sb.phx_here("export", "--backup", sid, "--output", tmp_path / "x", code=1)
    assert f"{MEMORY} cannot be read from the repository" in str(res), res
    assert "phx verify --read-data" in str(res), res
