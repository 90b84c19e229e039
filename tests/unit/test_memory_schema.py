"""Schema knowledge of memory stores: data tables and keys, derived FTS5/vec0 shadow tables,
vector columns by name and by value shape, on the generated ArgentOS stores and on crafted ones."""

from __future__ import annotations

import random
import sqlite3
import struct
from pathlib import Path

import pytest

from phoenix_backup.memory.schema import fts_content_option, inspect, known_kind
from phoenix_backup.sample import generate_workspace


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return generate_workspace(tmp_path_factory.mktemp("schema") / "s", size="tiny", seed=3)


def test_argentos_memory_store(sample) -> None:  # type: ignore[no-untyped-def]
    con = sqlite3.connect(sample.memory_db)
    schema = inspect(con)
    names = [t.name for t in schema.tables]
    assert names == ["categories", "memory_items", "item_categories", "entities", "relations", "reflections", "lessons"]
    assert schema.kind == "argentos-memory"
    # The FTS5 index over memory_items is derived: it and its shadow tables are left out.
    assert schema.virtual == {"memory_fts": "fts5"}
    assert schema.fts_rebuild == ["memory_fts"]
    assert set(schema.derived) == {
        "memory_fts",
        "memory_fts_data",
        "memory_fts_idx",
        "memory_fts_docsize",
        "memory_fts_config",
    }
    items = schema.table("memory_items")
    assert items is not None and items.key == ("id",) and items.vector_columns == ("embedding",)
    links = schema.table("item_categories")
    assert links is not None and links.key == ("item_id", "category_id") and links.vector_columns == ()
    entities = schema.table("entities")
    assert entities is not None and entities.vector_columns == ("embedding",)
    # Shadow tables never appear among the statements that recreate the store; triggers do.
    stmt_names = {s.name for s in schema.statements}
    assert "memory_fts" in stmt_names and "memory_items_ai" in stmt_names
    assert not any(n.startswith("memory_fts_") for n in stmt_names)
    con.close()


def test_other_stores_are_recognised(sample) -> None:  # type: ignore[no-untyped-def]
    for path, kind in ((sample.observations_db, "argentos-observations"), (sample.dashboard_db, "argentos-dashboard")):
        con = sqlite3.connect(path)
        assert inspect(con).kind == kind
        con.close()
    assert known_kind({"foo", "bar"}) == "unknown"


def _vec(n: int, rng: random.Random) -> bytes:
    return struct.pack(f"<{n}f", *(rng.uniform(-1, 1) for _ in range(n)))


def test_vector_columns_by_name_and_by_shape(tmp_path: Path) -> None:
    rng = random.Random(1)
    con = sqlite3.connect(tmp_path / "x.db")
    con.execute(
        "CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT, vec_blob BLOB, thumbs BLOB, small BLOB, "
        "embedding_model TEXT, mixed BLOB, nan_blob BLOB)"
    )
    for i in range(20):
        con.execute(
            "INSERT INTO docs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                i,
                f"doc {i}",
                _vec(128, rng),  # named like *vector*: a vector column
                _vec(64, rng) if i % 3 else None,  # 256-byte float arrays (NULLs allowed): by shape
                _vec(16, rng),  # 64 bytes: too short to be a vector
                "nomic-embed-text",  # named like *embed* but TEXT: not a vector column
                _vec(64, rng) if i else "text",  # one value is not a BLOB: not a vector column
                b"\xff" * 256,  # 4·64 bytes, and a vector column by shape (values decode to NaN: kept as BLOBs)
            ),
        )
    con.commit()
    docs = inspect(con).table("docs")
    assert docs is not None
    assert docs.vector_columns == ("vec_blob", "thumbs", "nan_blob")
    assert docs.key == ("id",)
    con.close()


def test_vec0_and_fts_variants(tmp_path: Path) -> None:
    """A store made by an agent that uses sqlite-vec: Python's sqlite3 cannot load the module, so
    the vec0 table is written into sqlite_master by hand, the way SQLite itself stores it."""
    path = tmp_path / "vec.db"
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT);
        CREATE VIRTUAL TABLE notes_own USING fts5(text);
        CREATE VIRTUAL TABLE notes_contentless USING fts5(text, content='');
        CREATE VIRTUAL TABLE notes_ext USING fts5(text, content="notes", content_rowid='id');
        CREATE TABLE vec_notes_info (key TEXT PRIMARY KEY, value ANY);
        CREATE TABLE vec_notes_chunks (chunk_id INTEGER PRIMARY KEY, size INTEGER, validity BLOB, rowids BLOB);
        CREATE TABLE vec_notes_rowids (rowid INTEGER PRIMARY KEY, id, chunk_id INTEGER, chunk_offset INTEGER);
        CREATE TABLE vec_notes_vector_chunks00 (rowid PRIMARY KEY, vectors BLOB NOT NULL);
        CREATE TABLE vec_notes_history (id INTEGER PRIMARY KEY, note TEXT);
        INSERT INTO notes_own(rowid, text) VALUES (7, 'seven');
        """
    )
    con.execute("PRAGMA writable_schema=ON")
    con.execute(
        "INSERT INTO sqlite_master(type, name, tbl_name, rootpage, sql) VALUES "
        "('table', 'vec_notes', 'vec_notes', 0, 'CREATE VIRTUAL TABLE vec_notes USING vec0(embedding float[4])')"
    )
    con.commit()
    con.close()
    con = sqlite3.connect(path)
    schema = inspect(con)
    names = [t.name for t in schema.tables]
    # vec_notes_history is not a vec0 shadow name: it is the user's own table.
    assert names == ["notes", "notes_own", "vec_notes_history"]
    own = schema.table("notes_own")
    assert own is not None and own.key == ("rowid",) and own.columns == ("rowid", "text") and own.virtual == "fts5"
    assert schema.fts_rebuild == ["notes_ext"]
    for shadow in ("vec_notes_info", "vec_notes_chunks", "vec_notes_rowids", "vec_notes_vector_chunks00"):
        assert "vec0 shadow" in schema.derived[shadow]
    assert "vec0" in schema.derived["vec_notes"]
    assert "contentless" in schema.derived["notes_contentless"]
    assert "notes_own_data" in schema.derived and "notes_own_content" in schema.derived
    con.close()


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("CREATE VIRTUAL TABLE f USING fts5(a, content='items', content_rowid='rowid')", "items"),
        ('CREATE VIRTUAL TABLE f USING fts5(a,content="it""s")', 'it"s'),
        ("CREATE VIRTUAL TABLE f USING fts5(content, summary)", None),
        ("CREATE VIRTUAL TABLE f USING fts5(a, content='')", ""),
        ("CREATE VIRTUAL TABLE f USING fts4(a, content=items)", "items"),
    ],
)
def test_fts_content_option(sql: str, expected: str | None) -> None:
    assert fts_content_option(sql) == expected
