"""The row merge on real SQLite files: one transaction per store (a failure half way leaves the
store exactly as it was), keyless tables merged as multisets, FTS5 tables that hold their own
content merged by rowid, and dry runs that never write."""

from __future__ import annotations

import hashlib
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenix_backup.errors import MergeFailed
from phoenix_backup.memory.schema import SchemaStatement, TableInfo
from phoenix_backup.memory.values import SqlValue
from phoenix_backup.sample import generate_workspace
from phoenix_backup.sinks import ConflictMode, sqlite_merge
from phoenix_backup.sinks.sqlite_merge import DatabaseMerge, SqliteRowSource, merge_database
from phoenix_backup.sql import quote as sql_quote
from phoenix_backup.sql import tokens, unquote, virtual_table


def dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    con = sqlite3.connect(path)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {n: sorted(con.execute(f"SELECT * FROM {sql_quote(n)}"), key=repr) for n in names}
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

    def distinct_keys(self, table: TableInfo) -> list[tuple[str, str]] | None:
        return self.inner.distinct_keys(table)

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


def store(path: Path, sql: str, rows: dict[str, list[tuple[object, ...]]]) -> Path:
    con = sqlite3.connect(path)
    con.executescript(sql)
    for table, values in rows.items():
        for row in values:
            con.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)
    con.commit()
    con.close()
    return path


def merged(src_path: Path, dst_path: Path, *, mode: ConflictMode = "skip", dry_run: bool = False) -> DatabaseMerge:
    src = SqliteRowSource(src_path)
    try:
        return merge_database(src, "x", dst_path, mode=mode, dry_run=dry_run)
    finally:
        src.close()


def counts(result: DatabaseMerge) -> dict[str, tuple[int, int, int, int, int]]:
    return {t.table: (t.restored, t.skipped, t.updated, t.unchanged, t.failed) for t in result.tables}


def test_a_dry_run_counts_what_the_real_run_does(tmp_path: Path) -> None:
    """The live table gained a NOT NULL column without default and a UNIQUE index since the
    snapshot: the real run fails those rows, and the dry run must say so, not "restored"."""
    src = store(
        tmp_path / "src.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT); CREATE TABLE u (id INTEGER PRIMARY KEY, tag TEXT);",
        {"t": [(1, "a"), (2, "b")], "u": [(1, "x"), (2, "x"), (3, "y")]},
    )
    dst = store(
        tmp_path / "dst.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, owner TEXT NOT NULL);"
        "CREATE TABLE u (id INTEGER PRIMARY KEY, tag TEXT UNIQUE);",
        {"t": [(1, "a", "me")]},
    )
    before = dump(dst)
    dry = merged(src, dst, mode="update", dry_run=True)
    assert dump(dst) == before
    real = merged(src, dst, mode="update")
    assert counts(dry) == counts(real) == {"t": (0, 0, 0, 1, 1), "u": (2, 0, 0, 0, 1)}
    assert dry.warnings == real.warnings and dry.integrity == real.integrity == "ok"


def test_live_triggers_do_not_write_twice_what_the_snapshot_holds(tmp_path: Path) -> None:
    """An audit trigger on the live store fires on every insert; the snapshot already holds the
    audit rows of the rows it restores, so the trigger must not add them a second time."""
    schema = (
        "CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, what TEXT, mid INTEGER);"
        "CREATE TABLE m (id INTEGER PRIMARY KEY, body TEXT);"
        "CREATE TRIGGER m_ai AFTER INSERT ON m BEGIN INSERT INTO audit (what, mid) VALUES ('ins', new.id); END;"
    )
    src = tmp_path / "src.db"
    dst = tmp_path / "dst.db"
    for path, ids in ((src, (1, 2)), (dst, (1,))):
        con = sqlite3.connect(path)
        con.executescript(schema)
        con.executemany("INSERT INTO m VALUES (?, 'body')", [(i,) for i in ids])
        con.commit()
        con.close()
    result = merged(src, dst)
    assert counts(result)["m"] == (1, 0, 0, 1, 0)
    assert dump(dst)["audit"] == [(1, "ins", 1), (2, "ins", 2)]
    con = sqlite3.connect(dst)
    try:  # the trigger is still there and still fires
        con.execute("INSERT INTO m VALUES (3, 'new')")
        assert con.execute("SELECT what, mid FROM audit WHERE id = 3").fetchall() == [("ins", 3)]
    finally:
        con.close()


def test_rows_with_a_null_key_are_not_inserted_again(tmp_path: Path) -> None:
    """A rowid table's TEXT PRIMARY KEY may hold NULLs; such a row equal to a live one is
    unchanged, so merging the same snapshot twice adds nothing."""
    schema = "CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT);"
    src = store(tmp_path / "src.db", schema, {"t": [(None, "x"), (None, "y"), ("a", "z")]})
    dst = store(tmp_path / "dst.db", schema, {"t": [(None, "x")]})
    assert counts(merged(src, dst)) == {"t": (2, 0, 0, 1, 0)}
    assert counts(merged(src, dst)) == {"t": (0, 0, 0, 3, 0)}
    assert dump(dst)["t"] == sorted([(None, "x"), (None, "y"), ("a", "z")], key=repr)


def test_a_unique_index_the_live_rows_break_is_left_out_and_the_rows_merged(tmp_path: Path) -> None:
    """The snapshot has a UNIQUE index the live store dropped and whose rule its rows now break:
    the index is named in a warning and not created; the rows are merged all the same."""
    src = store(
        tmp_path / "src.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT); CREATE UNIQUE INDEX t_name ON t (name);",
        {"t": [(1, "a"), (3, "c")]},
    )
    dst = store(tmp_path / "dst.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT);", {"t": [(1, "a"), (2, "a")]})
    result = merged(src, dst)
    assert counts(result) == {"t": (1, 0, 0, 1, 0)}
    assert result.warnings == ["could not create index t_name (UNIQUE constraint failed: t.name)"]
    assert dump(dst)["t"] == [(1, "a"), (2, "a"), (3, "c")]


def test_a_store_the_agent_keeps_locked_names_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent holds a write transaction past the busy timeout: the merge waits, then stops
    with the store unchanged, naming the lock (not "a writable SQLite database")."""
    monkeypatch.setattr(sqlite_merge, "BUSY_TIMEOUT_S", 0.2)
    schema = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);"
    src = store(tmp_path / "src.db", schema, {"t": [(1, "a"), (2, "b")]})
    dst = store(tmp_path / "dst.db", schema, {"t": [(1, "a")]})
    agent = sqlite3.connect(dst, isolation_level=None)
    try:
        agent.execute("BEGIN IMMEDIATE")
        agent.execute("INSERT INTO t VALUES (9, 'live')")
        with pytest.raises(MergeFailed, match=r"kept it locked for 0.2 s; try again when it is idle"):
            merged(src, dst)
        agent.execute("COMMIT")
    finally:
        agent.close()
    assert dump(dst)["t"] == [(1, "a"), (9, "live")]


def test_no_row_goes_in_without_its_parent_row(tmp_path: Path) -> None:
    """A child row whose parent row failed (a UNIQUE name the live store already has) is not
    inserted dangling; children merged before their parents (the child table first, a reply
    before the message it answers) still go in."""
    schema = (
        "CREATE TABLE link (id INTEGER PRIMARY KEY, pid INTEGER NOT NULL REFERENCES p (id) ON DELETE CASCADE);"
        "CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT UNIQUE, reply_to INTEGER REFERENCES p (id));"
    )
    src = store(
        tmp_path / "src.db",
        schema,
        {"p": [(1, "dup", None), (2, "b", 3), (3, "c", None)], "link": [(10, 1), (20, 2)]},
    )
    dst = store(tmp_path / "dst.db", schema, {"p": [(5, "dup", None)]})
    result = merged(src, dst)
    assert counts(result) == {"link": (1, 0, 0, 0, 1), "p": (2, 0, 0, 0, 1)}
    assert dump(dst) == {"link": [(20, 2)], "p": [(2, "b", 3), (3, "c", None), (5, "dup", None)]}
    assert "link: a row could not be inserted (FOREIGN KEY constraint failed: its parent row is not in the store)" in (
        result.warnings
    )
    con = sqlite3.connect(dst)
    try:
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        con.close()


def test_a_live_trigger_that_only_reads_the_merged_tables_goes_on_guarding(tmp_path: Path) -> None:
    """A guard trigger reads a table the merge fills and refuses a row: it is not dropped with
    the triggers that write (only those would write twice), so the row it refuses fails."""
    schema = "CREATE TABLE banned (word TEXT PRIMARY KEY); CREATE TABLE m (id INTEGER PRIMARY KEY, body TEXT);"
    src = store(tmp_path / "src.db", schema, {"banned": [("bad",)], "m": [(1, "ok"), (2, "bad")]})
    dst = store(
        tmp_path / "dst.db",
        schema + "CREATE TRIGGER m_guard BEFORE INSERT ON m BEGIN "
        "SELECT RAISE(ABORT, 'banned word') WHERE EXISTS (SELECT 1 FROM banned WHERE word = new.body); END;",
        {},
    )
    result = merged(src, dst)
    assert counts(result) == {"banned": (1, 0, 0, 0, 0), "m": (1, 0, 0, 0, 1)}
    assert dump(dst)["m"] == [(1, "ok")]


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_live_store_that_is_not_a_database_is_named(tmp_path: Path, dry_run: bool) -> None:
    src = store(tmp_path / "src.db", "CREATE TABLE t (id INTEGER PRIMARY KEY);", {"t": [(1,)]})
    junk = tmp_path / "memory.db"
    junk.write_bytes(b"not a database, " * 512)
    with pytest.raises(MergeFailed, match="check that the file is"):
        merged(src, junk, dry_run=dry_run)
    assert junk.read_bytes() == b"not a database, " * 512


@pytest.mark.parametrize("mode", ["skip", "update"])
def test_a_table_s_on_conflict_replace_never_deletes_a_live_row(tmp_path: Path, mode: ConflictMode) -> None:
    """`UNIQUE ON CONFLICT REPLACE` in the live schema: a merged row whose name another live row
    has fails; it never deletes that row (nor, through ON DELETE CASCADE, its children)."""
    schema = (
        "CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT UNIQUE ON CONFLICT REPLACE);"
        "CREATE TABLE ch (id INTEGER PRIMARY KEY, pid INTEGER REFERENCES p (id) ON DELETE CASCADE);"
    )
    src = store(tmp_path / "src.db", schema, {"p": [(1, "n"), (3, "m")]})
    dst = store(tmp_path / "dst.db", schema, {"p": [(2, "n"), (3, "x"), (4, "m")], "ch": [(1, 2), (2, 4)]})
    result = merged(src, dst, mode=mode)
    assert dump(dst) == {"ch": [(1, 2), (2, 4)], "p": [(2, "n"), (3, "x"), (4, "m")]}
    assert counts(result)["p"] == ((0, 0, 0, 0, 2) if mode == "update" else (0, 1, 0, 0, 1))


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_trigger_s_raise_rollback_stops_the_merge_with_the_store_unchanged(tmp_path: Path, dry_run: bool) -> None:
    """A live guard trigger refuses a row with RAISE(ROLLBACK), which ends the merge's whole
    transaction: the merge stops there; no row after it is committed on its own, the triggers
    are not left doubled, and the error says the store is unchanged (it is)."""
    schema = (
        "CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, mid INTEGER);"
        "CREATE TABLE m (id INTEGER PRIMARY KEY, body TEXT);"
    )
    src = store(tmp_path / "src.db", schema, {"m": [(1, "ok"), (2, "bad"), (3, "late")]})
    dst = store(
        tmp_path / "dst.db",
        schema + "CREATE TRIGGER m_guard BEFORE INSERT ON m BEGIN "
        "SELECT RAISE(ROLLBACK, 'banned word') WHERE new.body = 'bad'; END;"
        "CREATE TRIGGER m_ai AFTER INSERT ON m BEGIN INSERT INTO audit (mid) VALUES (new.id); END;",
        {},
    )
    before = dump(dst)
    with pytest.raises(MergeFailed, match=r"RAISE\(ROLLBACK\) \(banned word\).*the store is unchanged"):
        merged(src, dst, dry_run=dry_run)
    assert dump(dst) == before


def test_a_deferred_foreign_key_fails_the_dry_run_as_the_real_run(tmp_path: Path) -> None:
    """A DEFERRABLE INITIALLY DEFERRED foreign key lets a child row in whose parent row failed
    (a UNIQUE name): only the COMMIT refuses it. The dry run must fail as the real run does,
    naming the row, and a live violation that was there before is not blamed on the merge."""
    schema = (
        "CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT UNIQUE);"
        "CREATE TABLE c (id INTEGER PRIMARY KEY, pid INTEGER REFERENCES p (id) DEFERRABLE INITIALLY DEFERRED);"
    )
    src = store(tmp_path / "src.db", schema, {"p": [(1, "dup"), (2, "ok")], "c": [(10, 1), (20, 2)]})
    dst = store(tmp_path / "dst.db", schema, {"p": [(5, "dup")], "c": [(30, 99)]})  # 30: dangling already
    before = dump(dst)
    for dry_run in (True, False):
        with pytest.raises(MergeFailed, match=r"row 10 of table c .* parent row in p .* unchanged"):
            merged(src, dst, dry_run=dry_run)
        assert dump(dst) == before
    ok = store(tmp_path / "ok.db", schema, {"p": [(2, "ok")], "c": [(20, 2)]})
    assert counts(merged(ok, dst)) == {"p": (1, 0, 0, 0, 0), "c": (1, 0, 0, 0, 0)}


def test_a_dry_run_without_room_for_its_copy_names_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dry run's private copy does not fit in the temporary folder: one error names the
    folder, the room needed and TMPDIR, before anything is copied (it said to check that the
    live store is an SQLite database)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(sqlite_merge.tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(sqlite_merge.shutil, "disk_usage", lambda _p: SimpleNamespace(free=1000))
    schema = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);"
    src = store(tmp_path / "src.db", schema, {"t": [(2, "b")]})
    dst = store(tmp_path / "dst.db", schema, {"t": [(1, "a" * 5000)]})
    expected = rf"in the temporary folder {scratch}, which needs [0-9.]+ KiB for a copy of it, 1000 B free.* TMPDIR"
    with pytest.raises(MergeFailed, match=expected):
        merged(src, dst, dry_run=True)
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("into", ["'audit'", "/* the log */ audit", "-- the log\n  audit"])
def test_a_live_trigger_that_writes_with_a_comment_or_quoted_name_does_not_write_twice(
    tmp_path: Path, into: str
) -> None:
    """The audit trigger spells its table 'audit' (SQLite takes it) or puts a comment before the
    name: it still writes into a merged table and must not add the restored row's audit row twice."""
    schema = (
        "CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, what TEXT, mid INTEGER);"
        "CREATE TABLE m (id INTEGER PRIMARY KEY, body TEXT);"
        f"CREATE TRIGGER m_ai AFTER INSERT ON m BEGIN INSERT INTO {into} (what, mid) VALUES ('ins', new.id); END;"
    )
    src = store(tmp_path / "src.db", schema, {"m": [(1, "body"), (2, "body")]})
    dst = store(tmp_path / "dst.db", schema, {"m": [(1, "body")]})
    assert counts(merged(src, dst)) == {"audit": (1, 0, 0, 1, 0), "m": (1, 0, 0, 1, 0)}
    assert dump(dst)["audit"] == [(1, "ins", 1), (2, "ins", 2)]


@pytest.mark.parametrize("fk", ["REFERENCES p (name) DEFERRABLE INITIALLY DEFERRED", "REFERENCES gone (id)"])
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_foreign_key_sqlite_cannot_enforce_does_not_refuse_the_store(tmp_path: Path, fk: str, dry_run: bool) -> None:
    """SQLite leaves foreign keys off by default, so a store may declare one it cannot enforce (a
    parent column that is not UNIQUE, a parent table that is gone). Enforcing it refused the whole
    store, saying to check that the file is writable: its rows are merged, with a warning."""
    schema = (
        f"CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT); CREATE TABLE c (id INTEGER PRIMARY KEY, pn TEXT {fk});"
    )
    src = store(tmp_path / "src.db", schema, {"p": [(1, "a")], "c": [(10, "a"), (11, "b")]})
    dst = store(tmp_path / "dst.db", schema, {"c": [(11, "b")]})
    result = merged(src, dst, dry_run=dry_run)
    assert counts(result) == {"p": (1, 0, 0, 0, 0), "c": (1, 0, 0, 1, 0)}
    assert any("table c declares a foreign key SQLite cannot enforce" in w for w in result.warnings), result.warnings
    assert dump(dst)["c"] == ([(11, "b")] if dry_run else [(10, "a"), (11, "b")])


@pytest.mark.parametrize("shuffled", [False, True])
def test_a_chain_of_rows_each_pointing_to_the_next_goes_in_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shuffled: bool
) -> None:
    """Each row points to the next one (`next`, `superseded_by`): in key order every row but the
    last waits for its parent. Retried in one direction, one row went in per pass, so the writes
    grew with the square of the rows (3,000 rows: about 30 s); all go in with a few writes a row,
    and the chain is whole. Keys in shuffled order along the chain took a pass for every few rows
    even going back and forth (300 rows: 29,000 writes; 2,000 rows: 7 s)."""
    writes = 0
    write = sqlite_merge._write

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal writes
        writes += 1
        return write(*args, **kwargs)

    monkeypatch.setattr(sqlite_merge, "_write", counted)
    n = 300
    schema = "CREATE TABLE m (id INTEGER PRIMARY KEY, next INTEGER REFERENCES m (id));"
    ids = list(range(1, n + 1))
    if shuffled:
        random.Random(7).shuffle(ids)
    rows = [(ids[i], ids[i + 1] if i + 1 < n else None) for i in range(n)]
    src = store(tmp_path / "src.db", schema, {"m": sorted(rows)})
    dst = store(tmp_path / "dst.db", schema, {})
    assert counts(merged(src, dst)) == {"m": (n, 0, 0, 0, 0)}
    assert writes <= 3 * n, writes  # one direction: n * (n + 1) / 2 = 45,150
    assert len(dump(dst)["m"]) == n


@pytest.mark.parametrize(
    "spelled",
    ['"au""dit"', '"au--dit"', '"au/*dit"', "`au``dit`", '"AU""DIT"', "au€dit", "a\u0301udit"],
)
def test_a_live_trigger_writing_into_a_table_with_a_hostile_name_does_not_write_twice(
    tmp_path: Path, spelled: str
) -> None:
    """The audit table's name holds a quote, `--`, `/*`, a space or a backtick (the agent chose
    it), or unquoted holds characters beyond ASCII (`€`, a combining accent: SQLite takes them into
    an unquoted name): the trigger writing into it is still seen, and the restored row's audit row
    is not added a second time (nor a comment-looking piece of the name taken for a comment, nor
    `au€dit` read as `au`)."""
    name = {'"': '"', "[": "]", "`": "`", "'": "'"}
    close = name.get(spelled[0])
    table = spelled[1:-1].replace(close * 2, close).lower() if close else spelled
    quoted = sql_quote(table)
    schema = (
        f"CREATE TABLE {quoted} (id INTEGER PRIMARY KEY AUTOINCREMENT, what TEXT, mid INTEGER);"
        "CREATE TABLE m (id INTEGER PRIMARY KEY, body TEXT);"
        f"CREATE TRIGGER m_ai AFTER INSERT ON m BEGIN INSERT INTO {spelled} (what, mid) VALUES ('ins', new.id); END;"
    )
    src = store(tmp_path / "src.db", schema, {"m": [(1, "body"), (2, "body")]})
    dst = store(tmp_path / "dst.db", schema, {"m": [(1, "body")]})
    assert counts(merged(src, dst)) == {table: (1, 0, 0, 1, 0), "m": (1, 0, 0, 1, 0)}
    assert dump(dst)[table] == [(1, "ins", 1), (2, "ins", 2)]


@pytest.mark.parametrize(
    ("table", "columns", "bare"),
    [
        ("notes(, content='')", "body", False),
        ("x USING vec0", "body", False),
        ("y", "\"a, content=''\", body", False),
        ("n€USING", "body", True),
    ],
)
def test_an_fts_table_keeping_its_own_rows_is_merged_whatever_its_names_hold(
    tmp_path: Path, table: str, columns: str, bare: bool
) -> None:
    """An FTS5 table that stores its own rows, whose name or column name reads like an option
    (`content=''`) or a module (`USING vec0`), or is named `n€USING` unquoted (SQLite reads `€`
    as part of the name): its rows are merged. Before, it was taken for a contentless index, a
    vector index or a table of a module `using`, and its rows were left out without a word (and
    the shadow tables of one taken for vec0 were merged as tables of their own)."""
    ref = table if bare else sql_quote(table)
    schema = f"CREATE VIRTUAL TABLE {ref} USING fts5({columns});"
    src = store(tmp_path / "src.db", schema, {})
    con = sqlite3.connect(src)
    con.executemany(f"INSERT INTO {ref} (rowid, body) VALUES (?, ?)", [(1, "one"), (2, "zebrafish")])
    con.commit()
    con.close()
    dst = store(tmp_path / "dst.db", schema, {})
    result = merged(src, dst)
    assert counts(result) == {table: (2, 0, 0, 0, 0)}
    con = sqlite3.connect(dst)
    try:
        assert con.execute(f"SELECT rowid FROM {ref} WHERE {ref} MATCH 'zebrafish'").fetchall() == [(2,)]
    finally:
        con.close()


@settings(max_examples=150, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=8))
def test_any_name_sqlite_accepts_is_read_back_as_that_name(name: str) -> None:
    """For any name, in each spelling SQLite accepts ("..", `..`, [..], '..', bare): the token
    after INTO in a trigger's body is the table SQLite made, and a virtual table so named is fts5."""
    quoted = [
        '"' + name.replace('"', '""') + '"',
        "`" + name.replace("`", "``") + "`",
        "'" + name.replace("'", "''") + "'",
    ]
    for spelled in [*quoted, *([] if "]" in name else [f"[{name}]"]), name]:
        con = sqlite3.connect(":memory:")
        try:
            con.execute(
                f"CREATE VIRTUAL TABLE {spelled} USING fts5(body)" if spelled == name else f"CREATE TABLE {spelled} (x)"
            )
            made = con.execute("SELECT name FROM sqlite_master").fetchall()
        except sqlite3.Error:
            continue  # not a spelling SQLite takes
        finally:
            con.close()
        words = tokens(f"CREATE TRIGGER g AFTER INSERT ON m BEGIN INSERT INTO {spelled} VALUES (1); END")
        assert unquote(words[words.index("INTO") + 1]) == made[0][0], (spelled, words)
        if spelled == name:
            assert virtual_table(f"CREATE VIRTUAL TABLE {name} USING fts5(body)") == ("fts5", ["(", "body", ")"])


def test_a_row_a_trigger_refuses_leaves_nothing_and_is_failed_for_its_reason(tmp_path: Path) -> None:
    """RAISE(FAIL) keeps what its statement wrote before it (unlike ABORT): the refused row and
    the trigger's write elsewhere stayed in the store while the row was counted as failed. A row
    RAISE(IGNORE) leaves out was counted as restored; one refused when written again after its
    parent was said to lack its parent."""
    schema = "CREATE TABLE m (id INTEGER PRIMARY KEY, body TEXT, up INTEGER REFERENCES m (id));"
    rows = [(1, "ok", None), (2, "bad", 4), (3, "skip", None), (4, "ok", None)]
    src = store(tmp_path / "src.db", schema, {"m": rows})
    dst = store(
        tmp_path / "dst.db",
        schema + "CREATE TABLE side (mid INTEGER);"
        "CREATE TRIGGER t AFTER INSERT ON m BEGIN INSERT INTO side VALUES (new.id); "
        "SELECT RAISE(FAIL, 'refused') WHERE new.body = 'bad'; END;"
        "CREATE TRIGGER i BEFORE INSERT ON m BEGIN SELECT RAISE(IGNORE) WHERE new.body = 'skip'; END;",
        {},
    )
    result = merged(src, dst)
    assert counts(result) == {"m": (2, 0, 0, 0, 2)}
    assert dump(dst) == {"m": [(1, "ok", None), (4, "ok", None)], "side": [(1,), (4,)]}
    assert result.warnings == [
        "m: a row could not be inserted (a trigger of the live store left it out with RAISE(IGNORE))",
        "m: a row could not be inserted (refused)",
    ]


def test_a_live_counter_trigger_that_did_not_fire_is_named(tmp_path: Path) -> None:
    """A trigger that updates a table the merge fills (a counter) is dropped for the rows, as one
    that inserts (an audit log) is: the counter row comes from the source as it is (kept with
    skip), so it does not count the merged rows. The merge says so, naming the trigger."""
    schema = (
        "CREATE TABLE m (id INTEGER PRIMARY KEY); CREATE TABLE stats (k TEXT PRIMARY KEY, n INTEGER);"
        "CREATE TRIGGER bump AFTER INSERT ON m BEGIN UPDATE stats SET n = n + 1 WHERE k = 'm'; END;"
    )
    src = store(tmp_path / "src.db", schema, {"stats": [("m", 0)], "m": [(1,), (2,)]})
    dst = store(tmp_path / "dst.db", schema, {"stats": [("m", 0)], "m": [(3,)]})
    result = merged(src, dst)
    assert dump(dst) == {"m": [(1,), (2,), (3,)], "stats": [("m", 1)]}
    assert any(w.startswith("the live trigger bump did not fire for the merged rows") for w in result.warnings), (
        result.warnings
    )


def test_a_table_the_merge_creates_with_a_foreign_key_sqlite_cannot_enforce_is_merged(tmp_path: Path) -> None:
    """Only the live store's foreign keys were checked before enforcing them: a table the merge
    created with one SQLite cannot enforce (a parent column that is not UNIQUE) failed the whole
    store, saying to check that the file is writable."""
    src = store(
        tmp_path / "src.db",
        "CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT);"
        "CREATE TABLE c (id INTEGER PRIMARY KEY, pn TEXT REFERENCES p (name));",
        {"p": [(1, "a")], "c": [(10, "a")]},
    )
    dst = store(tmp_path / "dst.db", "CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT);", {})
    result = merged(src, dst)
    assert counts(result) == {"p": (1, 0, 0, 0, 0), "c": (1, 0, 0, 0, 0)}
    assert any("table c declares a foreign key SQLite cannot enforce" in w for w in result.warnings), result.warnings
    assert dump(dst) == {"p": [(1, "a")], "c": [(10, "a")]}


@pytest.mark.parametrize("without_rowid", ["", " WITHOUT ROWID"])
@pytest.mark.parametrize("mode", ["skip", "update"])
def test_a_key_the_live_table_compares_without_case_is_the_live_row(
    tmp_path: Path, without_rowid: str, mode: ConflictMode
) -> None:
    """A key declared COLLATE NOCASE: the snapshot's 'Alice' is the live 'alice' (the table's
    UNIQUE index says so). It was taken for a new row, whose insert failed ('UNIQUE constraint
    failed', exit 3): an unchanged row counted failed, an update never made."""
    sql = f"CREATE TABLE t (k TEXT COLLATE NOCASE PRIMARY KEY, v TEXT){without_rowid};"
    src = store(tmp_path / "src.db", sql, {"t": [("Alice", "1"), ("Bob", "new"), ("carol", "c")]})
    dst = store(tmp_path / "dst.db", sql, {"t": [("alice", "1"), ("BOB", "old")]})
    result = merged(src, dst, mode=mode)
    assert counts(result) == {"t": (1, 1, 0, 1, 0) if mode == "skip" else (1, 0, 1, 1, 0)}
    assert result.warnings == []
    bob = "old" if mode == "skip" else "new"
    assert dump(dst)["t"] == [("BOB", bob), ("alice", "1"), ("carol", "c")]


def test_a_table_named_in_another_case_is_the_live_table(tmp_path: Path) -> None:
    """SQLite's names are ASCII letters in any case: the snapshot's table `Notes` is the live
    `notes`. Creating it again failed, its rows were not merged and none was counted failed (exit 0)."""
    src = store(
        tmp_path / "src.db",
        "CREATE TABLE Notes (id INTEGER PRIMARY KEY, body TEXT); CREATE INDEX Notes_Body ON Notes (body);",
        {"Notes": [(1, "a"), (2, "b")]},
    )
    dst = store(
        tmp_path / "dst.db",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); CREATE INDEX notes_body ON notes (body);",
        {"notes": [(1, "a")]},
    )
    result = merged(src, dst)
    assert counts(result) == {"Notes": (1, 0, 0, 1, 0)}
    assert result.warnings == []
    assert dump(dst)["notes"] == [(1, "a"), (2, "b")]


def test_rows_of_a_table_that_cannot_be_created_are_counted_failed(tmp_path: Path) -> None:
    """The live store holds a view where the snapshot has a table: its rows cannot be merged, and
    they are counted failed (exit 3), not left out of every count (exit 0)."""
    sql = "CREATE TABLE log (id INTEGER PRIMARY KEY, m TEXT);"
    src = store(tmp_path / "src.db", sql, {"log": [(1, "a"), (2, "b")]})
    dst = store(tmp_path / "dst.db", "CREATE TABLE t (x); CREATE VIEW log AS SELECT x FROM t;", {})
    result = merged(src, dst)
    assert counts(result) == {"log": (0, 0, 0, 0, 2)}
    assert result.warnings[-1] == (
        "table log is not in the live store and could not be created; its 2 row(s) were not merged"
    )


@pytest.mark.parametrize("clause", ["OR REPLACE", "OR IGNORE"])
@pytest.mark.parametrize("mode", ["skip", "update"])
def test_a_live_trigger_s_own_conflict_clause_is_kept(tmp_path: Path, clause: str, mode: ConflictMode) -> None:
    """A live trigger keeps a table the merge does not fill (added since the snapshot) with
    `INSERT OR REPLACE` / `INSERT OR IGNORE`. The merge's `INSERT OR ABORT` overrode that clause,
    so every merged row failed ('UNIQUE constraint failed: stats.k', exit 3)."""
    schema = "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);"
    src = store(tmp_path / "src.db", schema, {"notes": [(1, "a"), (2, "b"), (3, "c"), (4, "d")]})
    dst = store(
        tmp_path / "dst.db",
        schema + "CREATE TABLE stats (k TEXT PRIMARY KEY, n INTEGER);",
        {"notes": [(1, "a"), (2, "x")], "stats": [("last", 2), ("edit", 0)]},
    )
    store(
        dst,
        f"CREATE TRIGGER last_note AFTER INSERT ON notes BEGIN INSERT {clause} INTO stats VALUES ('last', NEW.id); END;"
        f"CREATE TRIGGER edited AFTER UPDATE ON notes BEGIN INSERT {clause} INTO stats VALUES ('edit', NEW.id); END;",
        {},
    )
    result = merged(src, dst, mode=mode)
    assert counts(result) == {"notes": (2, 1, 0, 1, 0) if mode == "skip" else (2, 0, 1, 1, 0)}
    assert [r[0] for r in dump(dst)["notes"]] == [1, 2, 3, 4]
    last = 4 if clause == "OR REPLACE" else 2
    edit = 2 if clause == "OR REPLACE" and mode == "update" else 0
    assert dump(dst)["stats"] == [("edit", edit), ("last", last)]


@pytest.mark.parametrize("mode", ["skip", "update"])
def test_a_live_trigger_keeping_a_sqlite_vec_index_does_not_fail_the_store(tmp_path: Path, mode: ConflictMode) -> None:
    """A store made with sqlite-vec keeps its vec0 index in step with a trigger; Phoenix's SQLite
    cannot load vec0. The trigger fired for the first merged row and the whole store failed ('no
    such module: vec0 ... check that the file is a writable SQLite database'). Now it is left out
    for the rows, created again, and named with the index to re-index."""
    paths = []
    for name, rows in (("src.db", [(1, "a"), (2, "b")]), ("dst.db", [(1, "old")])):
        path = store(tmp_path / name, "CREATE TABLE mem (id INTEGER PRIMARY KEY, body TEXT);", {"mem": rows})
        con = sqlite3.connect(path)  # what `CREATE VIRTUAL TABLE ... USING vec0` writes, without sqlite-vec here
        con.execute("PRAGMA writable_schema = ON")
        con.execute(
            "INSERT INTO sqlite_master VALUES "
            "('table', 'mem_vec', 'mem_vec', 0, 'CREATE VIRTUAL TABLE mem_vec USING vec0(embedding float[4])')"
        )
        con.commit()
        con.close()
        paths.append(path)
    src, dst = paths
    trigger = (
        "CREATE TRIGGER mem_vec_{0} AFTER {0} ON mem BEGIN "
        "INSERT INTO mem_vec (rowid, embedding) VALUES (NEW.id, NEW.body); END;"
    )
    store(dst, trigger.format("INSERT") + trigger.format("UPDATE"), {})
    result = merged(src, dst, mode=mode)
    assert counts(result) == {"mem": (1, 1, 0, 0, 0) if mode == "skip" else (1, 0, 1, 0, 0)}
    con = sqlite3.connect(dst)
    assert con.execute("SELECT * FROM mem").fetchall() == [(1, "old" if mode == "skip" else "a"), (2, "b")]
    assert {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")} == {
        "mem_vec_INSERT",
        "mem_vec_UPDATE",
    }
    con.close()
    named = [w for w in result.warnings if w.startswith("the live trigger mem_vec_")]
    assert len(named) == 2 and all("mem_vec, a virtual table of module vec0" in w for w in named)


def test_rows_that_are_each_other_s_parents_go_in_together(tmp_path: Path) -> None:
    """Two notes pointing to each other, and a person and a team that point to each other, are
    in the snapshot (written with the foreign keys off, SQLite's default): no row of a cycle can
    go in before the others, so each was failed as lacking its parent row, which the source held.
    They go in together now; a row whose parent is nowhere still fails, leaving nothing."""
    schema = (
        "CREATE TABLE note (id INTEGER PRIMARY KEY, next INTEGER REFERENCES note (id));"
        "CREATE TABLE team (id INTEGER PRIMARY KEY, lead INTEGER REFERENCES person (id));"
        "CREATE TABLE person (id INTEGER PRIMARY KEY, team INTEGER REFERENCES team (id));"
    )
    rows: dict[str, list[tuple[object, ...]]] = {
        "note": [(1, 2), (2, 1), (3, 3)],
        "team": [(10, 20)],
        "person": [(20, 10)],
    }
    src = store(tmp_path / "src.db", schema, rows)
    dst = store(tmp_path / "dst.db", schema, {})
    result = merged(src, dst)
    assert counts(result) == {"note": (3, 0, 0, 0, 0), "team": (1, 0, 0, 0, 0), "person": (1, 0, 0, 0, 0)}
    assert dump(dst) == {k: sorted(v, key=repr) for k, v in rows.items()}
    orphan = store(tmp_path / "orphan.db", schema, {"note": [(4, 5), (5, 4), (6, 99)]})
    result = merged(orphan, dst)
    assert counts(result)["note"] == (0, 0, 0, 0, 3)
    assert dump(dst) == {k: sorted(v, key=repr) for k, v in rows.items()}


def test_a_keyless_row_holding_a_large_blob_is_compared_without_a_copy_of_it(tmp_path: Path) -> None:
    """Keyless tables' rows are compared by SQLite, one row read at a time: no copy of a blob per
    row (the repr of an 8 MiB blob was a 32 MiB string and its 32 MiB of bytes, for each row),
    nor a batch of such rows. Values of other types still differ from equal-looking ones ('1',
    b'1', NULL), as SQLite compares them (1 and 1.0 are one value to it)."""
    import tracemalloc

    blob = bytes(8 << 20)
    sql = "CREATE TABLE t (n, b BLOB, s TEXT);"
    src = store(tmp_path / "src.db", sql, {"t": [(1, blob, "x"), (2, blob, "x"), (3, blob, "x")]})
    dst = store(tmp_path / "dst.db", sql, {"t": [(1, blob, "x"), (2, blob, "x"), (3, blob, "x")]})
    del blob
    tracemalloc.start()
    try:
        result = merged(src, dst)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counts(result) == {"t": (0, 0, 0, 3, 0)}
    assert peak < 20 << 20
    values: list[object] = [1.0, "1", b"1", None]
    src = store(tmp_path / "src2.db", "CREATE TABLE u (v);", {"u": [(v,) for v in values]})
    dst = store(tmp_path / "dst2.db", "CREATE TABLE u (v);", {"u": [(1,)]})
    result = merged(src, dst)
    assert counts(result) == {"u": (3, 0, 0, 1, 0)}
    assert dump(dst)["u"] == sorted([(1,), ("1",), (b"1",), (None,)], key=repr)


@pytest.mark.parametrize("unique", ["", " UNIQUE"])
def test_keyless_rows_are_compared_as_sqlite_compares_them(tmp_path: Path, unique: str) -> None:
    """A keyless table's `COLLATE NOCASE` column: the snapshot's ('Alice', 1) is the live
    ('alice', 1), as SQLite's DISTINCT would say. It was inserted again beside it (a duplicate
    row), or with a UNIQUE index on that column failed ('UNIQUE constraint failed', exit 3)."""
    sql = f"CREATE TABLE t (tag TEXT COLLATE NOCASE{unique}, n INTEGER);"
    src = store(tmp_path / "src.db", sql, {"t": [("Alice", "1"), ("Bob", 2), ("carol", 3)]})
    dst = store(tmp_path / "dst.db", sql, {"t": [("alice", 1), ("BOB", 2)]})
    result = merged(src, dst)
    assert counts(result) == {"t": (1, 0, 0, 2, 0)}
    assert result.warnings == []
    assert dump(dst)["t"] == [("BOB", 2), ("alice", 1), ("carol", 3)]


@pytest.mark.parametrize("mode", ["skip", "update"])
def test_two_source_rows_the_live_key_takes_for_one_are_not_merged_twice(tmp_path: Path, mode: ConflictMode) -> None:
    """The snapshot's key compared case (BINARY), the live key does not (NOCASE, since a
    migration): the snapshot's 'Alice' and 'alice' are one live row. The second went over the
    first without a word (update: 2 rows counted updated, the live row holding the second's
    value), or both were counted skipped; the second is now failed, named in a warning."""
    src = store(
        tmp_path / "src.db", "CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT);", {"t": [("Alice", "1"), ("alice", "2")]}
    )
    dst = store(
        tmp_path / "dst.db", "CREATE TABLE t (k TEXT COLLATE NOCASE PRIMARY KEY, v TEXT);", {"t": [("ALICE", "0")]}
    )
    result = merged(src, dst, mode=mode)
    assert counts(result) == {"t": (0, 1, 0, 0, 1) if mode == "skip" else (0, 0, 1, 0, 1)}
    assert result.warnings == [
        "t: a row was not merged: its key ('alice',) is the key ('Alice',) of a row of the source merged before it, "
        "as the live table compares keys (one row there)"
    ]
    assert dump(dst)["t"] == [("ALICE", "0" if mode == "skip" else "1")]


@pytest.mark.parametrize("mode", ["skip", "update"])
def test_a_value_the_live_column_stores_as_the_same_is_unchanged(tmp_path: Path, mode: ConflictMode) -> None:
    """The source holds the text '5' where the live INTEGER column holds 5, which is what SQLite
    would store for '5': the row is unchanged. It was counted skipped (a conflict that is none),
    or updated to itself."""
    src = store(tmp_path / "src.db", "CREATE TABLE t (k INTEGER PRIMARY KEY, n);", {"t": [(1, "5"), (2, "6")]})
    dst = store(tmp_path / "dst.db", "CREATE TABLE t (k INTEGER PRIMARY KEY, n INTEGER);", {"t": [(1, 5), (2, 7)]})
    result = merged(src, dst, mode=mode)
    assert counts(result) == {"t": (0, 1, 0, 1, 0) if mode == "skip" else (0, 0, 1, 1, 0)}
    assert dump(dst)["t"] == [(1, 5), (2, 7 if mode == "skip" else 6)]


@pytest.mark.parametrize("mode", ["skip", "update"])
def test_a_key_whose_index_has_its_own_collation_is_the_live_row(tmp_path: Path, mode: ConflictMode) -> None:
    """`PRIMARY KEY (k COLLATE NOCASE)` over a column that compares case: the key's index says
    'Alice' is the live 'alice', the column does not. Read back through the column, the row was
    taken for a new one, whose insert failed ('UNIQUE constraint failed', exit 3)."""
    sql = "CREATE TABLE t (k TEXT, v TEXT, PRIMARY KEY (k COLLATE NOCASE));"
    src = store(tmp_path / "src.db", sql, {"t": [("Alice", "1"), ("Bob", "new")]})
    dst = store(tmp_path / "dst.db", sql, {"t": [("alice", "1"), ("BOB", "old")]})
    result = merged(src, dst, mode=mode)
    assert counts(result) == {"t": (0, 1, 0, 1, 0) if mode == "skip" else (0, 0, 1, 1, 0)}
    assert result.warnings == []
    assert dump(dst)["t"] == [("BOB", "old" if mode == "skip" else "new"), ("alice", "1")]


@pytest.mark.parametrize("name", ["s", "phx_k", "phx_s", "phx_l", "phx_rows", "phx_keys", "phx_probe"])
@pytest.mark.parametrize("key", [" PRIMARY KEY", ""])
def test_a_table_named_as_the_merge_s_own_names_is_merged(tmp_path: Path, name: str, key: str) -> None:
    """The merge reads the live rows in queries of its own (a WITH clause, temporary tables): a
    live table of one of their names is still the one read. A table named like the WITH clause
    (`phx_k`) had the clause read in its place: every row taken for a new one, its insert failed."""
    sql = f"CREATE TABLE {name} (k TEXT COLLATE NOCASE{key}, v TEXT);"
    src = store(tmp_path / "src.db", sql, {name: [("Alice", "1"), ("Bob", "2")]})
    dst = store(tmp_path / "dst.db", sql, {name: [("alice", "1")]})
    result = merged(src, dst)
    assert counts(result) == {name: (1, 0, 0, 1, 0)}
    assert result.warnings == []
    assert dump(dst)[name] == [("Bob", "2"), ("alice", "1")]


def test_a_full_temporary_folder_fails_the_merge_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The merge keeps the keys it merged in a temporary table: a full temporary folder rolls the
    store back and names the folder and TMPDIR, not 'check that the file is a writable SQLite
    database'. (The live key compares without case, the snapshot's did not: the snapshot's keys
    are not known distinct as the live table compares them, so they are kept.)"""
    src = store(tmp_path / "src.db", "CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT);", {"t": [("a", "a")]})
    dst = store(tmp_path / "dst.db", "CREATE TABLE t (k TEXT COLLATE NOCASE PRIMARY KEY, v TEXT);", {"t": [("b", "b")]})

    def full(self: object, keys: object) -> None:
        exc = sqlite3.OperationalError("database or disk is full")
        exc.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
        raise exc

    monkeypatch.setattr(sqlite_merge.SameKeys, "add", full)
    with pytest.raises(MergeFailed, match=r"store is unchanged — free some room .* temporary folder .* TMPDIR"):
        merged(src, dst)
    assert dump(dst)["t"] == [("b", "b")]


def test_a_source_key_the_live_table_lacks_is_compared_by_the_live_columns(tmp_path: Path) -> None:
    """The snapshot's table had `k` as its key, the live one has no key (since a migration): the
    source's 'Alice' is still the live 'alice' as the live column compares it (`COLLATE NOCASE`),
    not a new row beside it."""
    src = store(
        tmp_path / "src.db", "CREATE TABLE t (k TEXT COLLATE NOCASE PRIMARY KEY, v TEXT);", {"t": [("Alice", "1")]}
    )
    dst = store(tmp_path / "dst.db", "CREATE TABLE t (k TEXT COLLATE NOCASE, v TEXT);", {"t": [("alice", "1")]})
    result = merged(src, dst)
    assert counts(result) == {"t": (0, 0, 0, 1, 0)}
    assert dump(dst)["t"] == [("alice", "1")]


def test_an_int_key_holding_text_or_a_fraction_is_merged(tmp_path: Path) -> None:
    """The live key is `INT PRIMARY KEY` (not the rowid: it holds 'abc' and 1.5 as SQLite lets
    it), the snapshot's a TEXT one: the keys merged were kept in a temporary table whose single
    INTEGER key was its rowid, which refused 'abc' ('datatype mismatch': the whole merge failed,
    'check that the file is a writable SQLite database')."""
    rows: list[tuple[object, ...]] = [("abc", 1), ("1.5", 2), ("7", 3)]
    src = store(tmp_path / "src.db", "CREATE TABLE t (k TEXT PRIMARY KEY, v);", {"t": rows})
    dst = store(tmp_path / "dst.db", "CREATE TABLE t (k INT PRIMARY KEY, v);", {"t": [(7, 3)]})
    result = merged(src, dst, mode="update")
    assert counts(result) == {"t": (2, 0, 0, 1, 0)}
    assert dump(dst)["t"] == [("abc", 1), (1.5, 2), (7, 3)]


@pytest.mark.parametrize("coll", ["", " COLLATE NOCASE"])
def test_a_key_several_live_rows_hold_is_not_updated_into_all_of_them(tmp_path: Path, coll: str) -> None:
    """The snapshot's key `k` is no longer the live table's key (a migration gave it an id): two
    live rows hold 'a' (or 'Alice' and 'alice' in a NOCASE column). With `update` the one source
    row was written over both, counted once as updated, exit 0; it is failed and named."""
    src = store(tmp_path / "src.db", "CREATE TABLE t (k TEXT PRIMARY KEY, v);", {"t": [("a", "new"), ("b", "x")]})
    dst = store(
        tmp_path / "dst.db",
        f"CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT{coll}, v);",
        {"t": [(1, "a", "x"), (2, "A" if coll else "a", "y"), (3, "b", "x")]},
    )
    result = merged(src, dst, mode="update")
    assert counts(result) == {"t": (0, 0, 0, 1, 1)}
    assert result.warnings == [
        "t: a row was not updated: 2 rows of the live table hold its key ('a',) (it is not the live table's key), "
        "and which one it is cannot be told"
    ]
    assert dump(dst)["t"] == [(1, "a", "x"), (2, "A" if coll else "a", "y"), (3, "b", "x")]


@pytest.mark.parametrize(
    "sql", ["CREATE TABLE t (k TEXT PRIMARY KEY COLLATE app, v)", "CREATE TABLE t (k TEXT COLLATE app, v)"]
)
def test_a_collation_only_the_app_defines_is_one_clear_error(tmp_path: Path, sql: str) -> None:
    """The app registers `app` (case-blind) each time it opens the store; Python's SQLite lacks it.
    A keyed table failed 'check that the file is a writable SQLite database'; a keyless one was
    compared byte for byte and the snapshot's 'B' went in beside the live 'b' the store takes for
    it. Both now name the cause and the way out, the store unchanged."""

    def made(path: Path, rows: list[tuple[str, str]]) -> Path:
        con = sqlite3.connect(path)
        con.create_collation("app", lambda a, b: (a.lower() > b.lower()) - (a.lower() < b.lower()))
        con.execute(sql)
        con.executemany("INSERT INTO t VALUES (?, ?)", rows)
        con.commit()
        con.close()
        return path

    src = made(tmp_path / "src.db", [("B", "n"), ("c", "m")])
    dst = made(tmp_path / "dst.db", [("b", "o")])
    with pytest.raises(MergeFailed, match=r"collation.*only the application that made it defines.*without --merge"):
        merged(src, dst, mode="update")
    assert dump(dst) == {"t": [("b", "o")]}


@pytest.mark.parametrize("key", [" PRIMARY KEY", ""])
def test_a_column_named_rowid_is_compared_as_declared(tmp_path: Path, key: str) -> None:
    """A column named rowid is no rowid: its `COLLATE NOCASE` makes the snapshot's 'a' the live
    'A'. It was compared as an integer rowid, BINARY: the keyed row was taken for a new one and
    failed ('UNIQUE constraint failed: t.rowid', exit 3; int updated it)."""
    sql = f"CREATE TABLE t (rowid TEXT COLLATE NOCASE{key}, v);"
    src = store(tmp_path / "src.db", sql, {"t": [("a", "n" if key else "o")]})
    dst = store(tmp_path / "dst.db", sql, {"t": [("A", "o")]})
    result = merged(src, dst, mode="update")
    assert counts(result) == {"t": (0, 0, 1, 0, 0) if key else (0, 0, 0, 1, 0)}
    assert dump(dst)["t"] == [("A", "n" if key else "o")]


@pytest.mark.parametrize(
    ("src_sql", "dst_sql", "expected", "rows"),
    [
        (
            "CREATE TABLE t (ID TEXT PRIMARY KEY, Body);",
            "CREATE TABLE t (id TEXT COLLATE NOCASE PRIMARY KEY, body);",
            (1, 0, 1, 0, 0),
            [("A", "new"), ("b", "x")],
        ),
        (
            "CREATE TABLE t (ID TEXT, Body);",
            "CREATE TABLE t (id TEXT COLLATE NOCASE, body);",
            (1, 0, 0, 1, 0),
            [("A", "new"), ("b", "x")],
        ),
        ("CREATE TABLE t (other);", "CREATE TABLE t (id, body);", (0, 0, 0, 0, 2), [("A", "old")]),
    ],
)
def test_columns_are_matched_as_sqlite_names_them(
    tmp_path: Path, src_sql: str, dst_sql: str, expected: tuple[int, ...], rows: list[tuple[object, ...]]
) -> None:
    """The snapshot's `ID` is the live `id` (SQLite's names are ASCII letters in any case). It was
    taken for a column the live table lacks, and with no column left the merge failed the whole
    store ('near ")": syntax error', 'check that the file is a writable SQLite database'); a table
    that shares no column with the live one has its rows failed and named."""
    src_rows: list[tuple[object, ...]] = [("a", "new"), ("b", "x")] if "Body" in src_sql else [("a",), ("b",)]
    src = store(tmp_path / "src.db", src_sql, {"t": src_rows})
    dst = store(tmp_path / "dst.db", dst_sql, {"t": [("A", "new" if expected[3] else "old")]})
    result = merged(src, dst, mode="update")
    assert counts(result) == {"t": expected}
    assert dump(dst)["t"] == sorted(rows, key=repr)


def test_rows_whose_key_holds_a_null_are_not_held_in_memory(tmp_path: Path) -> None:
    """A rowid table's key may hold NULLs: such rows are merged as whole rows after the others.
    They were kept in a list until the table's end, embeddings and all, however many (3,200 rows
    of 8 KiB: a peak over 25 MiB, where the other rows are read 500 at a time); they wait in a
    temporary table, and the counts are the same."""
    import tracemalloc

    sql = "CREATE TABLE t (a, b, e BLOB, PRIMARY KEY (a, b));"
    src = store(tmp_path / "src.db", sql, {"t": [(i, None, i.to_bytes(4) * 2048) for i in range(3200)]})
    dst = store(tmp_path / "dst.db", sql, {"t": [(0, None, (0).to_bytes(4) * 2048)]})
    tracemalloc.start()
    try:
        result = merged(src, dst)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counts(result) == {"t": (3199, 0, 0, 1, 0)}
    assert peak < 14 << 20
