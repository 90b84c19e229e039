"""`phx import`: checksums first, then a merge by primary key that restores deleted rows and, by
conflict mode, keeps (`skip`) or overwrites (`update`) edited ones — one transaction per store,
FTS consistent afterwards, `--dry-run` writing nothing, confirmation required without a TTY."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from e2e_support import Sandbox, assert_error, integrity

from phoenix_backup.sql import quote

MEMORY = "home/.argentos/memory.db"


def rows(path: Path, table: str, key: str = "id") -> dict[Any, tuple[Any, ...]]:
    con = sqlite3.connect(path)
    try:
        cur = con.execute(f'SELECT * FROM "{table}"')
        names = [d[0] for d in cur.description]
        k = names.index(key)
        return {r[k]: tuple(r) for r in cur}
    finally:
        con.close()


def links(path: Path) -> list[tuple[str, int]]:
    con = sqlite3.connect(path)
    try:
        return sorted(con.execute("SELECT item_id, category_id FROM item_categories"))
    finally:
        con.close()


def fts_ok(path: Path) -> None:
    """The FTS5 index matches its content table exactly (`integrity-check` with rank 1 compares the
    index against memory_items), and a search finds what the table holds."""
    con = sqlite3.connect(path)
    try:
        con.execute("INSERT INTO memory_fts(memory_fts, rank) VALUES('integrity-check', 1)")
        n_fts = con.execute("SELECT count(*) FROM memory_fts WHERE memory_fts MATCH 'zebrafish'").fetchone()[0]
        n_rows = con.execute("SELECT count(*) FROM memory_items WHERE content LIKE '%zebrafish%'").fetchone()[0]
        assert n_fts == n_rows
    finally:
        con.close()


def damage(db: Path) -> tuple[list[str], list[str]]:
    """Delete five memories (with their category links) and edit three others; return their ids."""
    con = sqlite3.connect(db)
    try:
        ids = [r[0] for r in con.execute("SELECT id FROM memory_items ORDER BY id LIMIT 8")]
        deleted, edited = ids[:5], ids[5:]
        for i in deleted:
            con.execute("DELETE FROM item_categories WHERE item_id = ?", (i,))
            con.execute("DELETE FROM memory_items WHERE id = ?", (i,))
        for i in edited:
            con.execute(
                "UPDATE memory_items SET content = 'edited after the export: zebrafish', heat = 0.01 WHERE id = ?", (i,)
            )
        con.commit()
    finally:
        con.close()
    return deleted, edited


def test_merge_restores_deleted_rows_and_respects_the_conflict_mode(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    db = sb.db_path(MEMORY)
    export = tmp_path / "export"
    sb.phx("export", "--format", "json", "--output", export)
    original = rows(db, "memory_items")
    links_before = links(db)
    deleted, edited = damage(db)
    links_deleted = sum(1 for item, _cat in links_before if item in deleted)
    damaged = rows(db, "memory_items")

    # A dry run verifies and counts, and writes nothing.
    dry = sb.phx("import", export, "--dry-run", "--json").json()
    assert dry["dryRun"] is True and dry["checkedFiles"] > 0
    mem = next(d for d in dry["databases"] if d["path"] == MEMORY)
    assert mem["tables"]["memory_items"] == {
        "restored": 5,
        "skipped": 3,
        "updated": 0,
        "unchanged": len(original) - 8,
        "failed": 0,
        "created": False,
    }
    assert mem["tables"]["item_categories"]["restored"] == links_deleted
    assert rows(db, "memory_items") == damaged

    # Without a terminal and without --force, nothing happens and --force is named.
    res = sb.phx("import", export, check=2)
    assert_error(res, 2, "--force")
    assert rows(db, "memory_items") == damaged

    # skip: the deleted rows come back exactly (embeddings too); the edited rows stay edited.
    doc = sb.phx("import", export, "--conflict-mode", "skip", "--force", "--json").json()
    mem = next(d for d in doc["databases"] if d["path"] == MEMORY)
    assert mem["tables"]["memory_items"]["restored"] == 5 and mem["tables"]["memory_items"]["skipped"] == 3
    assert mem["ftsRebuilt"] == ["memory_fts"] and mem["integrity"] == "ok"
    after = rows(db, "memory_items")
    assert {i: after[i] for i in deleted} == {i: original[i] for i in deleted}
    assert {i: after[i] for i in edited} == {i: damaged[i] for i in edited}
    assert len(after) == len(original)
    assert links(db) == links_before
    fts_ok(db)
    assert integrity(db) == ["ok"]

    # update: the edited rows are overwritten with the export's version.
    text = sb.phx("import", export, "--conflict-mode", "update", "--force").out
    assert "memory_items" in text and "RESTORED" in text and "UPDATED" in text
    after = rows(db, "memory_items")
    assert after == original
    fts_ok(db)
    # A second merge finds nothing to do.
    again = sb.phx("import", export, "--conflict-mode", "update", "--force", "--json").json()
    assert again["totals"]["restored"] == again["totals"]["updated"] == again["totals"]["skipped"] == 0


def test_import_into_a_new_machine_creates_the_stores(sandbox: Sandbox, make_sandbox: Any, tmp_path: Path) -> None:
    export = tmp_path / "export"
    sandbox.phx("export", "--output", export)
    other = make_sandbox(seed=11)
    for logical in ("home/.argentos/memory.db", "home/.argentos/observations.db", "home/.argentos/data/dashboard.db"):
        for suffix in ("", "-wal", "-shm"):
            Path(str(other.db_path(logical)) + suffix).unlink(missing_ok=True)
    doc = other.phx("import", export, "--force", "--json").json()
    assert all(d["created"] for d in doc["databases"])
    new_db, old_db = other.db_path(MEMORY), sandbox.db_path(MEMORY)
    assert rows(new_db, "memory_items") == rows(old_db, "memory_items")
    assert rows(new_db, "lessons") == rows(old_db, "lessons")
    fts_ok(new_db)
    con = sqlite3.connect(new_db)
    try:
        triggers = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        word = con.execute("SELECT content FROM memory_items LIMIT 1").fetchone()[0].split()[0].strip(".,:;'")
        assert con.execute("SELECT count(*) FROM memory_fts WHERE memory_fts MATCH ?", (f'"{word}"',)).fetchone()[0] > 0
    finally:
        con.close()
    assert triggers == {"memory_items_ai", "memory_items_ad", "memory_items_au"}


def test_tampered_export_imports_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    export = tmp_path / "export"
    sandbox.phx("export", "--output", export)
    db = sandbox.db_path(MEMORY)
    damage(db)
    before = rows(db, "memory_items")
    table = export / "databases" / "memory" / "lessons.json"
    table.write_text(table.read_text().replace("Lesson", "Lessen", 1))
    res = sandbox.phx("import", export, "--force", check=1)
    assert_error(res, 1, "checksums.json", "lessons.json", "nothing was imported")
    assert rows(db, "memory_items") == before

    # A CSV export is for reading: import refuses it and says which format to use.
    csv_export = tmp_path / "csv"
    sandbox.phx("export", "--format", "csv", "--output", csv_export)
    assert_error(sandbox.phx("import", csv_export, "--force", check=2), 2, "--format json")
    assert_error(sandbox.phx("import", tmp_path / "nowhere", "--force", check=2), 2, "not a folder")


def test_no_vectors_export_never_blanks_embeddings(sandbox: Sandbox, tmp_path: Path) -> None:
    export = tmp_path / "lean"
    sandbox.phx("export", "--no-vectors", "--output", export)
    db = sandbox.db_path(MEMORY)
    original = rows(db, "memory_items")
    deleted, edited = damage(db)
    doc = sandbox.phx("import", export, "--conflict-mode", "update", "--force", "--json").json()
    assert any("no embedding vectors" in w for w in doc["warnings"])
    after = rows(db, "memory_items")
    # Edited rows are overwritten from the export, but keep their embedding (column 9).
    assert {i: after[i] for i in edited} == {i: original[i] for i in edited}
    # Deleted rows come back without one.
    assert all(after[i][:9] == original[i][:9] and after[i][9] is None for i in deleted)


def test_a_row_that_breaks_a_constraint_is_reported(sandbox: Sandbox, tmp_path: Path) -> None:
    """A row that cannot be merged is named, the rest goes on, and the run exits 3."""
    export = tmp_path / "export"
    sandbox.phx("export", "--output", export)
    db = sandbox.db_path(MEMORY)
    con = sqlite3.connect(db)
    try:
        # Category 12 ("self") is renamed, and a new category takes its old name: the export's row 12
        # now breaks the UNIQUE(name) constraint when restored after deleting the live row 12.
        con.execute("DELETE FROM categories WHERE id = 12")
        con.execute("INSERT INTO categories(id, name, description, created_at) VALUES (99, 'self', 'x', 'now')")
        con.commit()
    finally:
        con.close()
    res = sandbox.phx("import", export, "--force", "--json", check=3)
    doc = res.json()
    mem = next(d for d in doc["databases"] if d["path"] == MEMORY)
    assert mem["tables"]["categories"]["failed"] == 1
    assert any("UNIQUE" in w for w in mem["warnings"])
    assert "categories" in res.err


def test_tables_with_hostile_names_each_export_and_import_into_themselves(sandbox: Sandbox, tmp_path: Path) -> None:
    """Tables the agent named `ā` (U+0101) and `\\x10` + `1`, `%41` and `A`, `..`, a slash, quotes,
    names too long for a file name:
    each its own file in the export and its own rows back on import. Before, `ā` and `\\x101`
    shared one file: one table's rows were lost and the other's imported into it."""
    sb = sandbox
    db = sb.db_path(MEMORY)
    # Names longer than a file name may be (40 `€` are 360 bytes written %XX; 300 letters): each
    # still its own file. Before, the export stopped with "File name too long".
    names = ["\x101", "ā", "%41", "A", "..", "a/../b", "we\"ird]`'", "\U0001f642", "€" * 40, "x" * 300, "x" * 300 + "y"]
    con = sqlite3.connect(db)
    for i, name in enumerate(names):
        con.execute(f"CREATE TABLE {quote(name)} (id INTEGER PRIMARY KEY, v{i} TEXT)")
        con.execute(f"INSERT INTO {quote(name)} VALUES (?, ?)", (i, name))
    con.commit()
    export = tmp_path / "export"
    sb.phx_here("export", "--output", export, "--json")
    for name in names:
        con.execute(f"DELETE FROM {quote(name)}")
    con.commit()
    sb.phx_here("import", export, "--force", "--json")
    assert {n: con.execute(f"SELECT * FROM {quote(n)}").fetchall() for n in names} == {
        n: [(i, n)] for i, n in enumerate(names)
    }
    con.close()


def test_an_import_whose_later_store_fails_names_the_stores_merged_before_it(sandbox: Sandbox, tmp_path: Path) -> None:
    # Each store is merged in a transaction of its own: when store 3 of 3 failed, the error named
    # only it, and said nothing of the two stores the import had already changed.
    sb = sandbox
    export = tmp_path / "export"
    sb.phx_here("export", "--output", export)
    paths = [d["path"] for d in json.loads((export / "metadata.json").read_text())["databases"]]
    assert len(paths) == 3, paths
    os.mkfifo(f"{sb.db_path(paths[-1])}-journal")  # the last store cannot be merged
    res = sb.phx_here("import", export, "--force", code=1)
    assert_error(res, 1, f"{paths[-1]} was not merged", f"{paths[0]}, {paths[1]} had been merged before it", "again")
