"""SQLite source on real databases: consistent copies (WAL included), checks, row counts, stats."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from phoenix_backup.errors import NoSpace, SourceError
from phoenix_backup.sources.sqlite import (
    SourceStat,
    check_database,
    header_problems,
    page_size_of,
    source_stat,
)
from phoenix_backup.sources.sqlite_capture import copy_database


def open_wal(path: Path) -> sqlite3.Connection:
    """A writer in WAL mode that never checkpoints on its own, like a busy agent."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    return con


def rows_in_main_file_only(path: Path, table: str) -> int:
    """Rows visible in the .db file alone, ignoring its -wal (what a plain file copy would hold)."""
    lonely = path.parent / "lonely.db"
    shutil.copyfile(path, lonely)  # the main file only: the test's own evidence, not a backup
    con = sqlite3.connect(f"file:{lonely}?immutable=1", uri=True)
    try:
        return int(con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        con.close()
        lonely.unlink()


def companions(path: Path) -> list[str]:
    return [s for s in ("-wal", "-shm", "-journal") if Path(str(path) + s).exists()]


def test_wal_copy_contains_uncheckpointed_commits(tmp_path: Path) -> None:
    db = tmp_path / "memory.db"
    con = open_wal(db)
    try:
        con.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the schema reaches the main file ...
        for i in range(250):
            con.execute("INSERT INTO notes(body) VALUES (?)", (f"note {i} " * 20,))  # ... these do not
        assert Path(str(db) + "-wal").stat().st_size > 0
        assert rows_in_main_file_only(db, "notes") == 0, "setup: the commits live in the -wal only"

        copy = tmp_path / "cache" / "copy.db"
        copy.parent.mkdir()
        copy_database(db, copy)
        assert companions(copy) == []
        check = check_database(copy)
        assert check.integrity == "ok"
        assert check.tables == {"notes": 250}
        assert companions(copy) == [], "checking the copy leaves nothing beside it"
        bodies = sqlite3.connect(f"file:{copy}?immutable=1", uri=True).execute("SELECT body FROM notes").fetchall()
        assert bodies[249] == ("note 249 " * 20,)

        # The writer carries on unharmed, and its WAL was not checkpointed away by the copy.
        con.execute("INSERT INTO notes(body) VALUES ('after the copy')")
        assert con.execute("SELECT COUNT(*) FROM notes").fetchone()[0] == 251
    finally:
        con.close()


def test_copy_is_consistent_while_a_transaction_is_open(tmp_path: Path) -> None:
    db = tmp_path / "memory.db"
    con = open_wal(db)
    try:
        con.execute("CREATE TABLE t(x)")
        con.execute("INSERT INTO t VALUES (1)")
        con.execute("BEGIN")
        con.execute("INSERT INTO t VALUES (2)")  # not committed while the copy runs
        copy = tmp_path / "copy.db"
        copy_database(db, copy)
        con.execute("COMMIT")
        assert check_database(copy).tables == {"t": 1}
    finally:
        con.close()


def test_rollback_journal_database_copy(tmp_path: Path) -> None:
    db = tmp_path / "plain.sqlite"
    con = sqlite3.connect(db)
    con.execute("PRAGMA page_size=1024")
    con.execute("CREATE TABLE a(x)")
    con.executemany("INSERT INTO a VALUES (?)", [(i,) for i in range(1000)])
    con.commit()
    con.close()
    copy = tmp_path / "copy.db"
    copy_database(db, copy)
    assert companions(copy) == []
    assert page_size_of(copy) == 1024
    assert check_database(copy).tables == {"a": 1000}


def test_check_counts_real_tables_and_lists_fts5_as_virtual(tmp_path: Path) -> None:
    db = tmp_path / "memory.db"
    con = sqlite3.connect(db)
    odd = '"odd ""name"""'  # the table odd "name, quoted
    con.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
    con.execute(f"CREATE TABLE {odd}(k TEXT PRIMARY KEY, v) WITHOUT ROWID")
    con.execute("CREATE TABLE empty(x)")
    con.execute("CREATE INDEX notes_body ON notes(body)")
    con.execute("CREATE VIRTUAL TABLE notes_fts USING fts5(body)")
    con.executemany("INSERT INTO notes(body) VALUES (?)", [(f"remember item {i}",) for i in range(123)])
    con.executemany(f"INSERT INTO {odd} VALUES (?, ?)", [(str(i), i) for i in range(7)])
    con.executemany("INSERT INTO notes_fts(body) VALUES (?)", [(f"searchable text {i}",) for i in range(41)])
    con.commit()
    con.close()

    copy = tmp_path / "copy.db"
    copy_database(db, copy)
    check = check_database(copy)
    assert check.integrity == "ok"
    assert check.version == sqlite3.sqlite_version
    assert check.virtual_tables == {"notes_fts": "fts5"}
    assert check.tables["notes"] == 123
    assert check.tables['odd "name"'] == 7
    assert check.tables["empty"] == 0
    # The FTS5 shadow tables are real tables, counted like any other.
    assert check.tables["notes_fts_content"] == 41
    assert check.tables["notes_fts_docsize"] == 41
    assert check.tables["notes_fts_config"] == 1
    con = sqlite3.connect(db)
    for shadow in ("notes_fts_data", "notes_fts_idx"):
        assert check.tables[shadow] == con.execute(f"SELECT COUNT(*) FROM {shadow}").fetchone()[0]
    con.close()
    assert set(check.tables) == {
        "notes",
        'odd "name"',
        "empty",
        "notes_fts_content",
        "notes_fts_docsize",
        "notes_fts_config",
        "notes_fts_data",
        "notes_fts_idx",
    }
    assert "notes_fts" not in check.tables


def test_every_user_table_is_counted(tmp_path: Path) -> None:
    """Only SQLite's own `sqlite_` tables are internal; `sqlite3_cache` or `sqliteX` are user tables."""
    db = tmp_path / "memory.db"
    con = sqlite3.connect(db)
    for name in ("sqlite3_cache", "sqlitebrowser_state", "SQLiteNotes"):
        con.execute(f'CREATE TABLE "{name}"(x)')
        con.execute(f'INSERT INTO "{name}" VALUES (1)')
    con.commit()
    con.close()
    copy = tmp_path / "copy.db"
    copy_database(db, copy)
    assert check_database(copy).tables == {"sqlite3_cache": 1, "sqlitebrowser_state": 1, "SQLiteNotes": 1}


@pytest.mark.parametrize(
    "ddl",
    [
        "CREATE VIRTUAL TABLE v USING fts5(body)",
        "create virtual table v using FTS5 (body)",
        "CREATE VIRTUAL TABLE v\nUSING fts5(body)",
        'CREATE VIRTUAL TABLE "v"\tUSING\tfts5(body)',
    ],
    ids=["plain", "lowercase", "newline", "tabs"],
)
def test_virtual_table_module_whatever_the_spacing(tmp_path: Path, ddl: str) -> None:
    db = tmp_path / "v.db"
    con = sqlite3.connect(db)
    con.execute(ddl)
    con.commit()
    con.close()
    copy = tmp_path / "copy.db"
    copy_database(db, copy)
    assert check_database(copy).virtual_tables == {"v": "fts5"}


def test_virtual_table_of_a_missing_module_is_never_queried(tmp_path: Path) -> None:
    """A vec0 table (module absent here) is listed as virtual; the check never fails on it."""
    db = tmp_path / "vec.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t(x)")
    con.commit()
    con.close()
    # Plant a virtual table whose module this SQLite lacks, as a database written with sqlite-vec looks.
    con = sqlite3.connect(db)
    con.execute("PRAGMA writable_schema=ON")
    con.execute(
        "INSERT INTO sqlite_master(type, name, tbl_name, rootpage, sql) VALUES "
        "('table', 'embeddings', 'embeddings', 0, 'CREATE VIRTUAL TABLE embeddings USING vec0(v float[4])')"
    )
    con.commit()
    con.close()
    copy = tmp_path / "copy.db"
    copy_database(db, copy)
    check = check_database(copy)
    assert check.virtual_tables == {"embeddings": "vec0"}
    assert check.tables == {"t": 0}


def make_notes_db(path: Path, rows: int = 500) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
    con.executemany("INSERT INTO notes(body) VALUES (?)", [("x" * 200,) for _ in range(rows)])
    con.commit()
    con.close()


def leaf_pages(copy: Path) -> tuple[int, list[int]]:
    """Page size and the numbers of the table b-tree leaf pages (type byte 0x0d) of a database."""
    data = copy.read_bytes()
    size = page_size_of(copy)
    pages = []
    for n in range(2, len(data) // size + 1):
        if data[(n - 1) * size] == 0x0D:
            pages.append(n)
    return size, pages


def test_corrupted_cells_fail_the_integrity_check(tmp_path: Path) -> None:
    db = tmp_path / "src.db"
    make_notes_db(db)
    copy = tmp_path / "copy.db"
    copy_database(db, copy)
    size, leaves = leaf_pages(copy)
    assert leaves
    raw = bytearray(copy.read_bytes())
    start = (leaves[len(leaves) // 2] - 1) * size
    raw[start + 100 : start + 1000] = bytes((i * 37 + 11) % 256 for i in range(900))
    copy.write_bytes(bytes(raw))
    check = check_database(copy)
    assert check.integrity != "ok"
    assert companions(copy) == []


def test_corrupted_page_header_is_reported_not_raised(tmp_path: Path) -> None:
    """A page so damaged that counting its table fails still yields a check saying so.

    The snapshot records each database's integrity result; a damaged database must not make the
    check itself blow up (which would leave the database out of the backup instead).
    """
    db = tmp_path / "src.db"
    make_notes_db(db)
    copy = tmp_path / "copy.db"
    copy_database(db, copy)
    size, leaves = leaf_pages(copy)
    raw = bytearray(copy.read_bytes())
    start = (leaves[len(leaves) // 2] - 1) * size
    raw[start : start + 8] = b"\xff" * 8
    copy.write_bytes(bytes(raw))
    check = check_database(copy)
    assert check.integrity != "ok"


def test_check_of_something_that_is_not_a_database(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"definitely not SQLite" * 100)
    with pytest.raises(SourceError):
        page_size_of(bogus)
    with pytest.raises(SourceError):
        copy_database(bogus, tmp_path / "copy.db")
    assert not (tmp_path / "copy.db").exists()


def test_copy_of_a_missing_database_raises(tmp_path: Path) -> None:
    with pytest.raises((SourceError, FileNotFoundError)):
        copy_database(tmp_path / "absent.db", tmp_path / "copy.db")
    assert not (tmp_path / "absent.db").exists(), "a copy never creates the source"


@pytest.mark.parametrize("name", ["what#now.db", "ask?.db", "100%.db", "spaced name.db"])
def test_copy_of_a_database_whose_path_needs_uri_escaping(tmp_path: Path, name: str) -> None:
    """The source path goes into an SQLite URI: `#`, `?` and `%` must not change what is opened."""
    folder = tmp_path / "agent"
    folder.mkdir()
    db = folder / name
    make_notes_db(db, rows=17)
    copy = tmp_path / "copy.db"
    try:
        copy_database(db, copy)
        result = check_database(copy).tables
    except SourceError as exc:  # refusing clearly is acceptable; copying the wrong file is not
        result = {"error": str(exc)}
    if "error" not in result:
        assert result == {"notes": 17}, "the copy holds the database at that path"
    assert sorted(p.name for p in folder.iterdir()) == [name], "nothing created beside the source"


def test_source_stat_changes_with_every_commit(tmp_path: Path) -> None:
    db = tmp_path / "memory.db"
    con = open_wal(db)
    try:
        con.execute("CREATE TABLE t(x)")
        before = source_stat(db)
        assert before == source_stat(db), "stable while nothing happens"
        assert SourceStat.from_json(before.to_json()) == before
        con.execute("INSERT INTO t VALUES (1)")
        after = source_stat(db)
        assert after != before
        assert after.wal_size > before.wal_size
        # A checkpoint that resets the WAL, then a commit of the same size: the WAL header differs.
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("INSERT INTO t VALUES (2)")
        first_cycle = source_stat(db)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("INSERT INTO t VALUES (3)")
        second_cycle = source_stat(db)
        assert first_cycle.wal_size == second_cycle.wal_size
        assert first_cycle.wal_header != second_cycle.wal_header
        assert first_cycle != second_cycle
        assert second_cycle.latest_change_ns() >= first_cycle.latest_change_ns()
    finally:
        con.close()


def test_source_stat_without_wal(tmp_path: Path) -> None:
    db = tmp_path / "plain.db"
    make_notes_db(db, rows=1)
    st = source_stat(db)
    assert (st.wal_size, st.wal_inode, st.wal_header) == (0, 0, "")
    assert st.size == db.stat().st_size and st.inode == db.stat().st_ino
    con = sqlite3.connect(db)
    con.executemany("INSERT INTO notes(body) VALUES (?)", [("y" * 500,) for _ in range(50)])
    con.commit()
    con.close()
    assert source_stat(db) != st


def test_copy_refuses_when_the_destination_lacks_space(tmp_path: Path) -> None:
    """A database genuinely larger than the free space of the copy's folder.

    The database is made sparse: its header says it has more pages than the disk could hold, so a
    copy would really need that much room; the check must refuse before writing anything.
    """
    db = tmp_path / "huge.db"
    make_notes_db(db, rows=10)
    size = page_size_of(db)
    free = shutil.disk_usage(tmp_path).free
    pages = (free + 2**30) // size + 1
    raw = bytearray(db.read_bytes())
    raw[28:32] = pages.to_bytes(4, "big")  # in-header database size ...
    raw[92:96] = raw[24:28]  # ... valid: version-valid-for equals the change counter
    if pages >= 2**32:
        pytest.skip("the free space is beyond what one SQLite database can describe")
    db.write_bytes(bytes(raw))
    try:
        os.truncate(db, pages * size)
    except OSError as exc:
        pytest.skip(f"this file system cannot hold a sparse file that large: {exc}")
    try:
        con = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
        assert con.execute("PRAGMA page_count").fetchone()[0] == pages
        con.close()
        copy = tmp_path / "cache" / "copy.db"
        copy.parent.mkdir()
        with pytest.raises(NoSpace):
            copy_database(db, copy)
        assert list(copy.parent.iterdir()) == []
    finally:
        db.unlink()  # never leave a file of that apparent size for other tools to trip over


def test_header_problems(tmp_path: Path) -> None:
    """The header check of an image between full checks: SQLite's own file passes; a wrong
    in-header page count, a page size that is not the image's, a freelist beyond the end and a
    foreign first page are named."""
    db = tmp_path / "h.db"
    con = sqlite3.connect(db)
    con.execute("PRAGMA page_size=1024")
    con.execute("CREATE TABLE t(x)")
    con.execute("CREATE TABLE u(x)")
    con.executemany("INSERT INTO t VALUES (?)", [(i * 1000,) for i in range(3000)])
    con.executemany("INSERT INTO u VALUES (?)", [(i * 1000,) for i in range(3000)])
    con.commit()
    con.execute("DROP TABLE u")  # its pages go to the freelist
    con.commit()
    con.close()
    data = db.read_bytes()
    pages = len(data) // 1024
    first = data[:1024]
    assert int.from_bytes(first[36:40], "big") > 0, "setup: the freelist is not empty"
    assert header_problems(first, pages) == ""
    assert "says" in header_problems(first, pages + 1)
    bad_size = first[:28] + (pages + 5).to_bytes(4, "big") + first[32:]
    assert f"header says {pages + 5} pages" in header_problems(bad_size, pages)
    assert "page size" in header_problems(first[:16] + (2048).to_bytes(2, "big") + first[18:], pages)
    trunk = first[:32] + (pages + 9).to_bytes(4, "big") + first[36:]
    assert "freelist" in header_problems(trunk, pages)
    assert "not an SQLite header" in header_problems(b"\0" * 1024, pages)
