"""`phx import` runs the CREATE statements of an export's metadata.json (checksums unkeyed:
anyone handing the export over can change them): each must create exactly the object its entry
names, of its type, in one statement."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from hostile import cpu_seconds
from phoenix_backup.errors import NotAnExport
from phoenix_backup.memory import checksums
from phoenix_backup.ops.import_ import ExportRowSource
from phoenix_backup.sinks.sqlite_merge import merge_database

HOSTILE = {
    # created before the rows, as a table; it deleted the agent's row when the export's went in
    "trigger as a table": ("table", "zz", "CREATE TRIGGER zz AFTER INSERT ON notes BEGIN DELETE FROM notes; END"),
    "another name": ("table", "other", "CREATE TABLE notes2(a)"),
    "temp": ("table", "zz", "CREATE TEMP TABLE zz(a)"),
    "schema-qualified": ("table", "zz", "CREATE TABLE main.zz(a)"),
    "two statements": ("table", "zz", "CREATE TABLE zz(a); DROP TABLE notes"),
    "after a trigger": (
        "trigger",
        "zz",
        "CREATE TRIGGER zz AFTER INSERT ON notes BEGIN SELECT 1; END; DROP TABLE t",
    ),
    # ends with END like a trigger: the second ran at merge time ("one statement at a time"),
    # after the stores before it had been merged
    "a trigger after a trigger": (
        "trigger",
        "zz",
        "CREATE TRIGGER zz AFTER INSERT ON notes BEGIN SELECT 1; END; "
        "CREATE TRIGGER yy AFTER INSERT ON notes BEGIN DELETE FROM notes; END",
    ),
    "a CASE after a trigger": (
        "trigger",
        "zz",
        "CREATE TRIGGER zz AFTER INSERT ON notes BEGIN SELECT 1; END; SELECT CASE WHEN 1 THEN 1 END",
    ),
    "NUL past the name": ("table", "zz", "CREATE TABLE zz(a DEFAULT 'x\0y')"),
    "index as a view": ("view", "ix", "CREATE UNIQUE INDEX ix ON notes(body)"),
    "NUL in the name": ("table", "a\0b", 'CREATE TABLE "a\0b"(x)'),
}


def _store(tmp_path: Path, *stmts: tuple[str, str, str]) -> tuple[ExportRowSource, Path]:
    live = tmp_path / "live.db"
    con = sqlite3.connect(live)
    con.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
    con.execute("INSERT INTO notes VALUES (1, 'the agent wrote this')")
    con.commit()
    con.close()
    (tmp_path / "notes.json").write_text('[\n{"id": 2, "body": "from the export"}\n]\n')
    db = {
        "path": "home/x.db",
        "schema": [{"type": typ, "name": name, "table": "notes", "sql": sql} for typ, name, sql in stmts],
        "tableFiles": [{"name": "notes", "columns": ["id", "body"], "primaryKey": ["id"], "file": "notes.json"}],
    }
    return ExportRowSource(tmp_path, db), live


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_statement_creating_other_than_its_entry_names_is_refused(tmp_path: Path, case: str) -> None:
    with pytest.raises(NotAnExport, match="creates something else"):
        source, live = _store(tmp_path, HOSTILE[case])
        merge_database(source, "home/x.db", live, mode="skip", dry_run=False)
    con = sqlite3.connect(tmp_path / "live.db")
    try:
        assert con.execute("SELECT * FROM notes").fetchall() == [(1, "the agent wrote this")]
        assert con.execute("SELECT name FROM sqlite_master").fetchall() == [("notes",)]
    finally:
        con.close()


@pytest.mark.parametrize(
    "sql",
    [
        'create trigger "Zz ""q""" after insert on fresh begin select 1; end',
        # a `;` in a string, a CASE ... END and a comment inside the body end no statement
        'create trigger "Zz ""q""" after insert on fresh begin select \';\' /* ; */; '
        "select case when new.a then 2 end; end -- ;",
    ],
)
def test_a_statement_as_sqlite_master_holds_it_is_run(tmp_path: Path, sql: str) -> None:
    source, live = _store(tmp_path, ("table", "fresh", "CREATE TABLE fresh(a)"), ("trigger", 'Zz "q"', sql))
    merge_database(source, "home/x.db", live, mode="skip", dry_run=False)
    con = sqlite3.connect(live)
    try:
        assert con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall() == [('Zz "q"',)]
    finally:
        con.close()


def test_a_trigger_of_many_statements_is_read_in_linear_time(tmp_path: Path) -> None:
    # The one-statement check asked SQLite about the text up to each `;`: a trigger of 20,000
    # statements (180 KB of a metadata.json that may be 256 MiB) took some 7 CPU seconds before
    # anything was said, one of 200,000 some 12 minutes.
    body = "SELECT 1; " * 20_000
    sql = f"CREATE TRIGGER zz AFTER INSERT ON fresh BEGIN {body}END"
    before = cpu_seconds()
    source, _live = _store(tmp_path, ("table", "fresh", "CREATE TABLE fresh(a)"), ("trigger", "zz", sql))
    assert cpu_seconds() - before < 1.0
    assert [s.name for s in source.statements] == ["fresh", "zz"]


def test_an_export_s_trigger_on_a_table_the_store_had_is_not_added(tmp_path: Path) -> None:
    # A well-formed trigger the live store lacks was created on the agent's own table: from then
    # on each note the agent wrote deleted all the others. The rows go in; the trigger does not.
    wipe = "CREATE TRIGGER wipe AFTER INSERT ON notes BEGIN DELETE FROM notes WHERE id <> new.id; END"
    source, live = _store(tmp_path, ("trigger", "wipe", wipe))
    merged = merge_database(source, "home/x.db", live, mode="skip", dry_run=False)
    assert any("trigger wipe of the source, on table notes" in w for w in merged.warnings), merged.warnings
    con = sqlite3.connect(live)
    try:
        con.execute("INSERT INTO notes VALUES (3, 'the agent goes on')")
        assert con.execute("SELECT id FROM notes ORDER BY id").fetchall() == [(1,), (2,), (3,)]
        assert con.execute("SELECT name FROM sqlite_master").fetchall() == [("notes",)]
    finally:
        con.close()


def test_a_new_store_gets_every_trigger_and_index_of_the_export(tmp_path: Path) -> None:
    # A store on a new machine: its tables' triggers (FTS ones), UNIQUE indexes and a view's
    # INSTEAD OF trigger all come with it.
    source, live = _store(
        tmp_path,
        ("table", "notes", "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)"),
        ("table", "log", "CREATE TABLE log(id)"),
        ("index", "one_body", "CREATE UNIQUE INDEX one_body ON notes(body)"),
        ("view", "recent", "CREATE VIEW recent AS SELECT * FROM notes"),
        ("trigger", "logged", "CREATE TRIGGER logged AFTER INSERT ON notes BEGIN INSERT INTO log VALUES (new.id); END"),
        (
            "trigger",
            "via",
            "CREATE TRIGGER via INSTEAD OF INSERT ON recent BEGIN INSERT INTO notes VALUES (new.id, new.body); END",
        ),
    )
    live.unlink()
    merged = merge_database(source, "home/x.db", live, mode="skip", dry_run=False)
    assert merged.warnings == []
    con = sqlite3.connect(live)
    try:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('index', 'trigger', 'view')")}
        assert names == {"one_body", "recent", "logged", "via"}
    finally:
        con.close()


def test_an_export_s_unique_index_on_a_table_the_store_had_is_not_added(tmp_path: Path) -> None:
    # A UNIQUE index the live rows did not break went in, and refused the agent's next note of
    # the same text ('UNIQUE constraint failed'). A plain index (reads only) is still created.
    source, live = _store(
        tmp_path,
        ("index", "one_body", "CREATE UNIQUE INDEX one_body ON notes(body)"),
        ("index", "by_body", "CREATE INDEX by_body ON notes(body)"),
    )
    merged = merge_database(source, "home/x.db", live, mode="skip", dry_run=False)
    assert any("UNIQUE index one_body of the source, on table notes" in w for w in merged.warnings), merged.warnings
    con = sqlite3.connect(live)
    try:
        con.execute("INSERT INTO notes VALUES (3, 'from the export')")
        assert con.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall() == [("by_body",)]
    finally:
        con.close()


def test_a_table_file_reformatted_by_hand_is_read_whole_only_up_to_a_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A table file not in the one-row-a-line form is read whole (json.load): a 2 GB one took many
    # times its size in memory. Past the bound it is one error, unread (the bound made small here).
    source, _live = _store(tmp_path, ("table", "notes", "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)"))
    (tmp_path / "notes.json").write_text(json.dumps([{"id": i, "body": "x" * 20} for i in range(10)]))
    assert len(list(source.rows(source.tables[0]))) == 10
    monkeypatch.setattr(checksums, "MAX_JSON_BYTES", 100)
    with pytest.raises(NotAnExport, match="one-row-a-line form"):
        list(source.rows(source.tables[0]))


@pytest.mark.parametrize("file", ["", "databases", "nowhere.json"])
def test_a_table_file_that_is_a_folder_or_missing_is_one_error_naming_it(tmp_path: Path, file: str) -> None:
    # Nothing ties tableFiles to the files checksums.json lists: a folder or a missing file named
    # there ended `phx import` as an internal error (IsADirectoryError, FileNotFoundError).
    (tmp_path / "databases").mkdir()
    db = {
        "path": "home/x.db",
        "schema": [],
        "tableFiles": [{"name": "notes", "columns": ["id"], "primaryKey": ["id"], "file": file}],
    }
    source = ExportRowSource(tmp_path, db)
    with pytest.raises(NotAnExport, match=r"as the rows of table notes of home/x\.db"):
        source.check_rows(source.tables[0])


def _swapped_export(tmp_path: Path) -> tuple[ExportRowSource, Path]:
    """An export whose table file lies in databases/s/, read through a link to its folder (as a
    user may give it), and a file outside holding a row of someone else's."""
    real = tmp_path / "real"
    (real / "databases" / "s").mkdir(parents=True)
    (real / "databases" / "s" / "notes.json").write_text('[\n{"id": 2, "body": "from the export"}\n]\n')
    (tmp_path / "given").symlink_to(real)
    outside = tmp_path / "outside"
    (outside / "s").mkdir(parents=True)
    (outside / "s" / "notes.json").write_text('[\n{"id": 9, "body": "a secret of another store"}\n]\n')
    db = {
        "path": "home/x.db",
        "schema": [],
        "tableFiles": [
            {"name": "notes", "columns": ["id", "body"], "primaryKey": ["id"], "file": "databases/s/notes.json"}
        ],
    }
    return ExportRowSource(tmp_path / "given", db), outside


@pytest.mark.parametrize("swapped", ["file", "folder"])
def test_a_link_swapped_in_after_the_checks_is_never_read(tmp_path: Path, swapped: str) -> None:
    # checksums.json is checked (no links), then the table files are opened by name: a file or a
    # folder replaced by a link in between (whoever can write the export) had the rows of a file
    # outside the export imported.
    source, outside = _swapped_export(tmp_path)
    assert list(source.rows(source.tables[0])) == [(2, "from the export")]  # the folder given as a link
    store = tmp_path / "real" / "databases" / "s"
    if swapped == "file":
        (store / "notes.json").unlink()
        (store / "notes.json").symlink_to(outside / "s" / "notes.json")
    else:
        (store / "notes.json").unlink()
        store.rmdir()
        store.symlink_to(outside / "s")
    with pytest.raises(NotAnExport, match="symbolic link or lies below one"):
        source.check_rows(source.tables[0])


@pytest.mark.parametrize("second", ["notes", "NOTES"])
def test_a_table_given_twice_is_refused(tmp_path: Path, second: str) -> None:
    # Each tableFiles entry was merged on its own into the one live table (SQLite's names ignore
    # ASCII case): the second file's row 1 went over the live row with `update`, past the
    # duplicate-key check, which reads one entry at a time.
    source, live = _store(tmp_path)
    (tmp_path / "other.json").write_text('[\n{"id": 1, "body": "written by whoever edited it"}\n]\n')
    db = {
        "path": "home/x.db",
        "schema": [],
        "tableFiles": [
            {"name": "notes", "columns": ["id", "body"], "primaryKey": ["id"], "file": "notes.json"},
            {"name": second, "columns": ["id", "body"], "primaryKey": ["id"], "file": "other.json"},
        ],
    }
    with pytest.raises(NotAnExport, match=f"gives table {second} of home/x.db twice"):
        source = ExportRowSource(tmp_path, db)
        merge_database(source, "home/x.db", live, mode="update", dry_run=False)
    con = sqlite3.connect(live)
    try:
        assert con.execute("SELECT * FROM notes").fetchall() == [(1, "the agent wrote this")]
    finally:
        con.close()


@pytest.mark.parametrize(
    ("sql", "first", "second"),
    [
        ("CREATE TABLE notes(id TEXT COLLATE NOCASE PRIMARY KEY, body TEXT)", "Alice", "alice"),
        ("CREATE TABLE notes(id TEXT COLLATE RTRIM PRIMARY KEY, body TEXT)", "a", "a  "),
        ("CREATE TABLE notes(id INT PRIMARY KEY, body TEXT)", 1, "1"),
        ("CREATE TABLE notes(id TEXT, body TEXT, PRIMARY KEY (id COLLATE NOCASE)) WITHOUT ROWID", "Bob", "BOB"),
    ],
)
def test_two_rows_the_table_s_key_takes_for_one_are_refused(
    tmp_path: Path, sql: str, first: object, second: object
) -> None:
    # A hand-edited export holding 'Alice' and 'alice' in a NOCASE key: the duplicate-key check
    # compared them as Python does and let them through; the merge then failed the second as a
    # UNIQUE violation after the stores before it were merged, or with `update` wrote it over the
    # first. Keys are compared as SQLite compares the table's key, before any write.
    (tmp_path / "notes.json").write_text(
        "[\n" + json.dumps({"id": first, "body": "a"}) + ",\n" + json.dumps({"id": second, "body": "b"}) + "\n]\n"
    )
    db = {
        "path": "home/x.db",
        "schema": [{"type": "table", "name": "notes", "table": "notes", "sql": sql}],
        "tableFiles": [
            {"name": "notes", "columns": ["id", "body"], "primaryKey": ["id"], "file": "notes.json", "sql": sql}
        ],
    }
    source = ExportRowSource(tmp_path, db)
    with pytest.raises(
        NotAnExport, match=r"notes\.json of the export holds two rows with the key .* \(the second is row 2\)"
    ):
        source.check_rows(source.tables[0])


def test_the_duplicate_key_check_keeps_no_key_in_memory(tmp_path: Path) -> None:
    # The read-ahead kept every key of a table in a Python set: 120 bytes a row, 120 MiB for a
    # million rows (docs/benchmarks.md). They are kept in a temporary SQLite file: the peak does
    # not grow with the rows (20,000 rows: 4.2 MiB before, under 1 MiB now).
    import tracemalloc

    sql = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)"
    rows = 20_000
    lines = ",\n".join(json.dumps({"id": i, "body": f"note {i}"}) for i in range(rows))
    (tmp_path / "notes.json").write_text("[\n" + lines + "\n]\n")
    del lines
    db = {
        "path": "home/x.db",
        "schema": [{"type": "table", "name": "notes", "table": "notes", "sql": sql}],
        "tableFiles": [
            {"name": "notes", "columns": ["id", "body"], "primaryKey": ["id"], "file": "notes.json", "sql": sql}
        ],
    }
    source = ExportRowSource(tmp_path, db)
    tracemalloc.start()
    try:
        source.check_rows(source.tables[0])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_full_temporary_folder_fails_the_duplicate_key_check_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The keys are kept in a temporary SQLite file: a full temporary folder is one error naming
    # it and TMPDIR, before any write, not an internal error.
    from phoenix_backup.errors import MergeFailed
    from phoenix_backup.ops import import_

    source, _live = _store(tmp_path, ("table", "notes", "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)"))

    def full(self: object, keys: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(import_.SameKeys, "add", full)
    with pytest.raises(MergeFailed, match=r"duplicate-key check of notes\.json .* temporary folder .* TMPDIR"):
        source.check_rows(source.tables[0])


def test_an_int_key_holding_text_or_a_fraction_passes_the_duplicate_key_check(tmp_path: Path) -> None:
    # `id INT PRIMARY KEY` is not the rowid: SQLite lets it hold 'abc' and 1.5. The read-ahead kept
    # the keys in a temporary table whose single INTEGER key was its rowid, which refused them
    # ('datatype mismatch', reported as a full temporary folder; nothing imported).
    sql = "CREATE TABLE notes(id INT PRIMARY KEY, body TEXT)"
    rows = [{"id": "abc", "body": "a"}, {"id": 1.5, "body": "b"}, {"id": "1.5", "body": "c"}]
    (tmp_path / "notes.json").write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    db = {
        "path": "home/x.db",
        "schema": [{"type": "table", "name": "notes", "table": "notes", "sql": sql}],
        "tableFiles": [
            {"name": "notes", "columns": ["id", "body"], "primaryKey": ["id"], "file": "notes.json", "sql": sql}
        ],
    }
    source = ExportRowSource(tmp_path, db)
    with pytest.raises(NotAnExport, match=r"two rows with the key \('1\.5',\) \(the second is row 3\)"):
        source.check_rows(source.tables[0])
    rows.pop()
    (tmp_path / "notes.json").write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    source = ExportRowSource(tmp_path, db)
    source.check_rows(source.tables[0])
