"""The row merge on real SQLite files: one transaction per store (a failure half way leaves the
store exactly as it was), keyless tables merged as multisets, FTS5 tables that hold their own
content merged by rowid, and dry runs that never write."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from phoenix_backup.errors import MergeFailed
from phoenix_backup.memory.schema import SchemaStatement, TableInfo
from phoenix_backup.memory.values import SqlValue
from phoenix_backup.sample import generate_workspace
from phoenix_backup.sinks.sqlite_merge import SqliteRowSource, merge_database


def dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    con = sqlite3.connect(path)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {n: sorted(con.execute(f'SELECT * FROM "{n}"'), key=repr) for n in names}
    finally:
        con.close()


class Exploding:
    """A source whose rows of one table fail after a few have been merged."""

    def __init__(self, inner: SqliteRowSource, table: str, after: int) -> None:
        self.inner, self.table, self.after = inner, table, after

    @property
    def statements(self) -> list[SchemaStatement]:
        return self.inner.statements

    @property
    def tables(self) -> list[TableInfo]:
        return self.inner.tables

    def rows(self, table: TableInfo) -> Iterator[tuple[SqlValue, ...]]:
        for i, row in enumerate(self.inner.rows(table)):
            if table.name == self.table and i == self.after:
                raise sqlite3.OperationalError("disk I/O error (simulated)")
            yield row


def test_a_failed_merge_leaves_the_store_unchanged(tmp_path: Path) -> None:
    source_layout = generate_workspace(tmp_path / "a", size="tiny", seed=5)
    target_layout = generate_workspace(tmp_path / "b", size="tiny", seed=6)  # other ids: every row is new
    before = dump(target_layout.memory_db)
    src = SqliteRowSource(source_layout.memory_db)
    try:
        with pytest.raises(MergeFailed, match="rolled back"):
            merge_database(
                Exploding(src, "entities", 10),
                "home/.argentos/memory.db",
                target_layout.memory_db,
                mode="update",
                dry_run=False,
            )
        # categories and memory_items were merged before entities failed: all of it is gone again.
        assert dump(target_layout.memory_db) == before
        result = merge_database(src, "home/.argentos/memory.db", target_layout.memory_db, mode="skip", dry_run=False)
    finally:
        src.close()
    counts = {t.table: (t.restored, t.unchanged, t.skipped) for t in result.tables}
    assert counts["memory_items"][0] == len(dump(source_layout.memory_db)["memory_items"])
    assert result.integrity == "ok" and result.fts_rebuilt == ["memory_fts"]


def test_dry_run_never_writes(tmp_path: Path) -> None:
    layout = generate_workspace(tmp_path / "a", size="tiny", seed=5)
    other = generate_workspace(tmp_path / "b", size="tiny", seed=6)
    wal = Path(str(other.memory_db) + "-wal")
    digest = hashlib.sha256(other.memory_db.read_bytes()).hexdigest()
    src = SqliteRowSource(layout.memory_db)
    try:
        result = merge_database(src, "m", other.memory_db, mode="update", dry_run=True)
        missing = tmp_path / "nowhere" / "memory.db"
        fresh = merge_database(src, "m", missing, mode="skip", dry_run=True)
    finally:
        src.close()
    assert hashlib.sha256(other.memory_db.read_bytes()).hexdigest() == digest
    # A WAL reader may create an empty -wal beside the store (SQLite does, to read it); no frame is written.
    assert not wal.exists() or wal.stat().st_size == 0
    assert sum(t.restored for t in result.tables) > 0
    assert fresh.created and not missing.parent.exists()
    assert all(t.created for t in fresh.tables)


def test_keyless_tables_and_own_content_fts(tmp_path: Path) -> None:
    src_path, dst_path = tmp_path / "src.db", tmp_path / "dst.db"
    for path, log, notes in (
        (src_path, [("a", 1), ("a", 1), ("b", 2)], [(1, "alpha beta"), (2, "gamma")]),
        (dst_path, [("a", 1), ("c", 3)], [(1, "alpha changed"), (5, "epsilon")]),
    ):
        con = sqlite3.connect(path)
        con.executescript("CREATE TABLE log (what TEXT, n INTEGER); CREATE VIRTUAL TABLE notes USING fts5(body);")
        con.executemany("INSERT INTO log VALUES (?, ?)", log)
        con.executemany("INSERT INTO notes(rowid, body) VALUES (?, ?)", notes)
        con.commit()
        con.close()
    src = SqliteRowSource(src_path)
    try:
        result = merge_database(src, "x", dst_path, mode="skip", dry_run=False)
    finally:
        src.close()
    by = {t.table: t for t in result.tables}
    assert (by["log"].restored, by["log"].unchanged) == (2, 1)  # one more ("a", 1) and ("b", 2)
    assert (by["notes"].restored, by["notes"].skipped) == (1, 1)
    con = sqlite3.connect(dst_path)
    try:
        assert sorted(con.execute("SELECT what, n FROM log")) == [("a", 1), ("a", 1), ("b", 2), ("c", 3)]
        assert sorted(con.execute("SELECT rowid, body FROM notes")) == [
            (1, "alpha changed"),
            (2, "gamma"),
            (5, "epsilon"),
        ]
        assert con.execute("SELECT rowid FROM notes WHERE notes MATCH 'gamma'").fetchall() == [(2,)]
    finally:
        con.close()
