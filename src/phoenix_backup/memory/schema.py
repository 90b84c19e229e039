"""The shape of an SQLite memory store: which tables hold data, by which key, and what is derived.

Export, import, merge and row diff all see a store through `inspect`:

- **Data tables** are the real tables, plus FTS5/FTS4 tables that store their own content (read
  through the module, keyed by rowid). Each has a key: its declared primary key, or none, in which
  case rows are identified by their whole content (a multiset).
- **Derived tables** are left out and rebuilt where possible: the shadow tables of every virtual
  table (FTS5 `_data`, `_idx`, `_content`, `_docsize`, `_config`; FTS3/4 `_segments`, `_segdir`,
  `_stat`...; sqlite-vec `vec0` `_chunks`, `_rowids`, `_info`, `_auxiliary`, `_vector_chunksNN`,
  `_metadatachunksNN`, `_metadatatextNN`; R*Tree `_node`, `_rowid`, `_parent`), external-content
  FTS indexes (rebuilt with `'rebuild'` after an import), contentless FTS indexes, and `vec0`
  tables (their module cannot be loaded by Python's `sqlite3` here, so they are reported).
- **Vector columns** are BLOB columns named like `*embed*` or `*vector*`, or any column whose
  non-NULL values are all BLOBs of 4·n bytes with n ≥ 64 (float32 arrays of 64 or more
  dimensions). A value that does not decode to finite float32s stays a plain BLOB.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Literal

from phoenix_backup.sql import quote, unquote, virtual_table

MIN_VECTOR_DIM = 64

KnownKind = Literal["argentos-memory", "argentos-observations", "argentos-dashboard", "unknown"]

# The ArgentOS stores (as `phoenix_backup.sample` generates them), recognised by the tables they hold.
KNOWN_SCHEMAS: tuple[tuple[KnownKind, frozenset[str]], ...] = (
    ("argentos-memory", frozenset({"memory_items", "entities", "relations"})),
    ("argentos-observations", frozenset({"observations", "sessions"})),
    ("argentos-dashboard", frozenset({"tasks", "projects"})),
)

# The row noun a person reads in a diff summary ("+152 memories"), per table of the known schemas.
ROW_NOUNS: dict[str, str] = {
    "memory_items": "memories",
    "entities": "entities",
    "relations": "relations",
    "reflections": "reflections",
    "lessons": "lessons",
    "categories": "categories",
    "item_categories": "category links",
    "observations": "observations",
    "sessions": "sessions",
    "tasks": "tasks",
    "projects": "projects",
}

# Shadow-table suffixes by module. SQLite's own notion (xShadowName) is "vtab name, underscore,
# a suffix the module owns"; for modules not listed every `<vtab>_*` table counts as shadow.
_SHADOW_SUFFIXES: dict[str, re.Pattern[str]] = {
    "fts5": re.compile(r"(data|idx|content|docsize|config)"),
    "fts4": re.compile(r"(content|segments|segdir|docsize|stat)"),
    "fts3": re.compile(r"(content|segments|segdir|docsize|stat)"),
    "vec0": re.compile(r"(chunks|rowids|info|auxiliary|vector_chunks\d+|metadatachunks\d+|metadatatext\d+)"),
    "rtree": re.compile(r"(node|rowid|parent)"),
    "rtree_i32": re.compile(r"(node|rowid|parent)"),
    "geopoly": re.compile(r"(node|rowid|parent)"),
}

_VECTOR_NAME = re.compile(r"embed|vector", re.IGNORECASE)


@dataclass(frozen=True)
class TableInfo:
    """One data table: its columns (with `rowid` first when the rowid is the key), its key, how
    it was created, and which of its columns hold vectors."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]  # () = no primary key: rows are identified by their whole content
    sql: str
    virtual: str | None = None  # the module of an FTS table that stores its own content
    vector_columns: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "columns": list(self.columns),
            "primaryKey": list(self.key),
            "vectorColumns": list(self.vector_columns),
            "virtual": self.virtual,
            "sql": self.sql,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TableInfo:
        return cls(
            name=str(d["name"]),
            columns=tuple(str(c) for c in d["columns"]),
            key=tuple(str(c) for c in d["primaryKey"]),
            sql=str(d.get("sql") or ""),
            virtual=d.get("virtual"),
            vector_columns=tuple(str(c) for c in d.get("vectorColumns", [])),
        )

    def order_by(self) -> str:
        """An ORDER BY that sorts rows by key in plain byte order, whatever the columns' collation
        (merge-joins in Python rely on it); whole rows for keyless tables."""
        cols = self.key or self.columns
        return ", ".join(f"{quote(c)} COLLATE BINARY" if c != "rowid" else "rowid" for c in cols)

    def select_sql(self, columns: tuple[str, ...] | None = None, *, ordered: bool = False) -> str:
        cols = ", ".join("rowid" if c == "rowid" else quote(c) for c in (columns or self.columns))
        sql = f"SELECT {cols} FROM {quote(self.name)}"
        return f"{sql} ORDER BY {self.order_by()}" if ordered else sql


@dataclass(frozen=True)
class SchemaStatement:
    """One statement of `sqlite_master` (table, index, view, trigger), in creation order."""

    type: str
    name: str
    table: str
    sql: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "name": self.name, "table": self.table, "sql": self.sql}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SchemaStatement:
        return cls(str(d["type"]), str(d["name"]), str(d["table"]), str(d["sql"]))


@dataclass
class DatabaseSchema:
    tables: list[TableInfo]
    statements: list[SchemaStatement]  # what recreates the store (shadow tables excluded)
    derived: dict[str, str] = field(default_factory=dict)  # table -> why it is left out
    virtual: dict[str, str] = field(default_factory=dict)  # virtual table -> module
    fts_rebuild: list[str] = field(default_factory=list)  # external-content FTS tables
    kind: KnownKind = "unknown"

    def table(self, name: str) -> TableInfo | None:
        return next((t for t in self.tables if t.name == name), None)


def virtual_module(sql: str | None) -> str | None:
    """The module of a `CREATE VIRTUAL TABLE` statement, lower-cased; None for other statements."""
    using = virtual_table(sql)
    return None if using is None else using[0]


def fts_content_option(sql: str) -> str | None:
    """The `content=` option of an FTS table: None when absent (it stores its own content), ""
    for a contentless table, else the external content table's name."""
    using = virtual_table(sql)
    args = using[1] if using else []
    for i in range(len(args) - 3):
        if args[i] in ("(", ",") and args[i + 1].lower() == "content" and args[i + 2] == "=":
            return unquote(args[i + 3])
    return None


def _is_shadow(name: str, vtab: str, module: str) -> bool:
    prefix = vtab + "_"
    if not name.startswith(prefix):
        return False
    rx = _SHADOW_SUFFIXES.get(module)
    return True if rx is None else rx.fullmatch(name[len(prefix) :]) is not None


def known_kind(table_names: set[str] | frozenset[str]) -> KnownKind:
    for kind, needed in KNOWN_SCHEMAS:
        if needed <= table_names:
            return kind
    return "unknown"


def inspect(con: sqlite3.Connection, *, detect_vectors: bool = True) -> DatabaseSchema:
    """The data tables, derived tables and schema statements of the store behind `con`."""
    master = con.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master "
        "WHERE sql IS NOT NULL AND substr(name, 1, 7) <> 'sqlite_' ORDER BY rowid"
    ).fetchall()
    virtual: dict[str, str] = {}
    for typ, name, _tbl, sql in master:
        module = virtual_module(sql) if typ == "table" else None
        if module is not None:
            virtual[str(name)] = module
    shadow: dict[str, str] = {}
    for typ, name, _tbl, _sql in master:
        if typ != "table" or name in virtual:
            continue
        for vtab, module in virtual.items():
            if _is_shadow(str(name), vtab, module):
                shadow[str(name)] = f"{module} shadow table of {vtab}"
                break

    schema = DatabaseSchema([], [], virtual=virtual)
    schema.derived.update(shadow)
    for typ, name, tbl, sql in master:
        name, tbl, sql = str(name), str(tbl), str(sql)
        if name in shadow or tbl in shadow:
            continue  # created by their virtual table, never by hand
        schema.statements.append(SchemaStatement(str(typ), name, tbl, sql))
        if typ != "table":
            continue
        module = virtual.get(name)
        if module is None:
            schema.tables.append(_real_table(con, name, sql))
        elif module in ("fts5", "fts4", "fts3"):
            content = fts_content_option(sql)
            if content is None:
                cols = tuple(str(r[1]) for r in con.execute(f"PRAGMA table_info({quote(name)})"))
                schema.tables.append(TableInfo(name, ("rowid", *cols), ("rowid",), sql, virtual=module))
            elif content == "":
                schema.derived[name] = f"contentless {module} index (holds no content to export)"
            else:
                schema.derived[name] = f"{module} index of {content}, rebuilt on import"
                schema.fts_rebuild.append(name)
        elif module == "vec0":
            schema.derived[name] = "sqlite-vec vec0 index, derived from the vectors it indexes"
        else:
            schema.derived[name] = f"virtual table of module {module}, left out"
    if detect_vectors:
        schema.tables = [_with_vectors(con, t) for t in schema.tables]
    schema.kind = known_kind({t.name for t in schema.tables})
    return schema


def _real_table(con: sqlite3.Connection, name: str, sql: str) -> TableInfo:
    info = con.execute(f"PRAGMA table_info({quote(name)})").fetchall()
    cols = tuple(str(r[1]) for r in info)
    pk = tuple(str(r[1]) for r in sorted((r for r in info if r[5]), key=lambda r: int(r[5])))
    return TableInfo(name, cols, pk, sql)


def _with_vectors(con: sqlite3.Connection, table: TableInfo) -> TableInfo:
    if table.virtual is not None:
        return table
    decl = {str(r[1]): str(r[2] or "").upper() for r in con.execute(f"PRAGMA table_info({quote(table.name)})")}
    named = [c for c in table.columns if _VECTOR_NAME.search(c) and ("BLOB" in decl.get(c, "") or not decl.get(c))]
    candidates = [c for c in table.columns if c not in named and c != "rowid" and c not in table.key]
    by_values: list[str] = []
    if candidates:
        # One scan for every column: how many non-NULL values, and how many look like vectors.
        parts = []
        for c in candidates:
            q = quote(c)
            parts.append(f"count({q})")
            parts.append(
                f"sum(CASE WHEN typeof({q}) = 'blob' AND length({q}) % 4 = 0 "
                f"AND length({q}) >= {4 * MIN_VECTOR_DIM} THEN 1 ELSE 0 END)"
            )
        row = con.execute(f"SELECT {', '.join(parts)} FROM {quote(table.name)}").fetchone()
        for i, c in enumerate(candidates):
            present, vector_like = int(row[2 * i] or 0), int(row[2 * i + 1] or 0)
            if present and present == vector_like:
                by_values.append(c)
    vectors = tuple(c for c in table.columns if c in named or c in by_values)
    return TableInfo(table.name, table.columns, table.key, table.sql, table.virtual, vectors)


def row_noun(table: str) -> str:
    return ROW_NOUNS.get(table, f"{table} rows")
