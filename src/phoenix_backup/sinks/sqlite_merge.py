"""Merging rows into a live SQLite store by primary key: the core of `phx import` and of
`phx restore --merge --conflict-mode skip|update` (ops/import_.py, ops/merge.py).

For each data table of the source (an export's JSON files, or a snapshot's copy of the store):

- a row whose key is absent from the live table is inserted (**restored**);
- a row whose key is present with the same values is **unchanged**;
- a row whose key is present with other values is kept as it is with `skip` (**skipped**) or
  overwritten with `update` (**updated**; only the columns the source has are written, so an
  export made with `--no-vectors` never blanks an embedding);
- a row that breaks another constraint of the live table (a UNIQUE column, a foreign key whose
  parent row is not there) is **failed**, named in a warning, and the merge goes on. Foreign
  keys are enforced; a row refused for want of its parent is written again after all the others.

Tables without a primary key, and rows whose key holds a NULL, are merged as multisets: a source
row counts as present when an equal row exists. SQLite does every comparison, never Python: a key
by the collation of the live key's index and its columns' affinity, other values by the live
columns' affinity (byte for byte), whole rows of a multiset by the live columns' collations; the
keys merged and a multiset's rows are kept in temporary tables, not in memory.
A live trigger that writes into a table the merge fills is dropped for the rows and created again
after them (the source holds what it wrote; one that updates such a table, a counter, is named
in a warning: it did not count the merged rows).
When a live trigger may RAISE(FAIL), each row is written in a savepoint, so a refused row leaves
nothing behind.
Tables, indexes, virtual tables, views and triggers missing from the live store
are created from the source's schema first (triggers and views after the rows); a trigger
or UNIQUE index only on a table the merge created, never on one the store already had (named
in a warning). Everything for
one store happens in one transaction: after the rows, external-content FTS indexes are rebuilt
(`INSERT INTO fts(fts) VALUES('rebuild')`), FTS5 `integrity-check` and `PRAGMA integrity_check`
run, and only when both pass is the transaction committed; otherwise it is rolled back and the
store is exactly as before. `dry_run` runs the same merge on a private copy of the store (read
from it read-only with the backup API) and throws the copy away.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal, Protocol

from phoenix_backup.errors import ExitStatus, MergeFailed
from phoenix_backup.memory.schema import DatabaseSchema, SchemaStatement, TableInfo, inspect, virtual_module
from phoenix_backup.memory.values import SqlValue
from phoenix_backup.sinks import ConflictMode
from phoenix_backup.sources.sqlite import planted_companion, sqlite_uri
from phoenix_backup.sql import fold_name, quote, tokens, unquote
from phoenix_backup.units import human_size

BUSY_TIMEOUT_S = 30.0
_BATCH = 500
_MAX_WARNINGS_PER_TABLE = 5


class RowSource(Protocol):
    """Where merged rows come from: an export's JSON files or a snapshot's copy of a store."""

    @property
    def statements(self) -> list[SchemaStatement]: ...

    @property
    def tables(self) -> list[TableInfo]: ...

    def rows(self, table: TableInfo) -> Iterator[tuple[SqlValue, ...]]:
        """The table's rows, values in `table.columns` order."""
        ...

    def distinct_keys(self, table: TableInfo) -> list[tuple[str, str]] | None:
        """The comparison (`key_comparison`) under which the table's keys are known to be
        distinct, or None when that is not known."""
        ...


class SqliteRowSource:
    """A store read from a (temporary) database file, opened read-only and immutable."""

    def __init__(self, path: Path) -> None:
        self.con = sqlite3.connect(sqlite_uri(path, "mode=ro&immutable=1"), uri=True)
        self.schema: DatabaseSchema = inspect(self.con, detect_vectors=False)

    @property
    def statements(self) -> list[SchemaStatement]:
        return self.schema.statements

    @property
    def tables(self) -> list[TableInfo]:
        return self.schema.tables

    def rows(self, table: TableInfo) -> Iterator[tuple[SqlValue, ...]]:
        yield from self.con.execute(table.select_sql())

    def distinct_keys(self, table: TableInfo) -> list[tuple[str, str]] | None:
        """The store's own key: its index keeps the keys distinct as it compares them."""
        return key_comparison(self.con, table.name, table.key) if table.key else None

    def close(self) -> None:
        self.con.close()


@dataclass
class TableMerge:
    table: str
    restored: int = 0
    skipped: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    created: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "restored": self.restored,
            "skipped": self.skipped,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "created": self.created,
        }


@dataclass
class DatabaseMerge:
    path: str  # logical
    target: str  # real path of the live store
    created: bool = False
    tables: list[TableMerge] = field(default_factory=list)
    fts_rebuilt: list[str] = field(default_factory=list)
    integrity: str = "not checked"
    warnings: list[str] = field(default_factory=list)

    def total(self, what: str) -> int:
        return sum(int(getattr(t, what)) for t in self.tables)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "target": self.target,
            "created": self.created,
            "tables": {t.table: t.to_json() for t in self.tables},
            "ftsRebuilt": self.fts_rebuilt,
            "integrity": self.integrity,
            "warnings": self.warnings,
        }


COUNTS = ("restored", "skipped", "updated", "unchanged", "failed")


@dataclass
class MergeResult:
    """What `phx import` or `phx restore --merge` did (or, with dry_run, would do)."""

    source: str  # the export folder, or the snapshot id
    source_kind: Literal["export", "snapshot"]
    conflict_mode: ConflictMode
    dry_run: bool
    name: str = ""  # the snapshot's name, or the export's time
    databases: list[DatabaseMerge] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked_files: int = 0  # files checked against checksums.json (imports)
    safety_snapshot: str | None = None  # restore --merge: the pre-restore snapshot that undoes it

    def totals(self) -> dict[str, int]:
        return {what: sum(db.total(what) for db in self.databases) for what in COUNTS}

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.PARTIAL if self.totals()["failed"] else ExitStatus.OK

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sourceKind": self.source_kind,
            "name": self.name,
            "conflictMode": self.conflict_mode,
            "dryRun": self.dry_run,
            "checkedFiles": self.checked_files,
            "safetySnapshot": self.safety_snapshot,
            "totals": self.totals(),
            "databases": [db.to_json() for db in self.databases],
            "warnings": self.warnings,
        }


# --------------------------------------------------------------------------------------------
# Merging one store
# --------------------------------------------------------------------------------------------


def merge_database(
    source: RowSource, logical: str, target: Path, *, mode: ConflictMode, dry_run: bool
) -> DatabaseMerge:
    """Merge every data table of `source` into the store at `target` (created when missing)."""
    result = DatabaseMerge(logical, str(target), created=not target.exists())
    # SQLite would block for ever opening a FIFO planted as the store's -journal or -wal.
    planted = None if result.created else planted_companion(os.path.realpath(target))
    if planted is not None:
        raise MergeFailed(f"{logical} was not merged: {planted}")
    if dry_run:
        # The real merge, on a private copy of the store that is then thrown away: the counts,
        # failures and checks are exactly those of the real run.
        folder = tempfile.gettempdir()
        size = sum(os.path.getsize(p) for p in (target, Path(f"{target}-wal")) if p.is_file())
        room = shutil.disk_usage(folder).free
        if size > room:
            need = f"needs {human_size(size)} for a copy of it, {human_size(room)} free"
            raise MergeFailed(_no_room(target, folder, need))
        with tempfile.TemporaryDirectory(prefix="phx-merge-dry-run-") as scratch:
            copy = Path(scratch) / "store.db"
            try:
                if not result.created:
                    live = sqlite3.connect(sqlite_uri(target, "mode=ro"), uri=True, timeout=BUSY_TIMEOUT_S)
                    dest = sqlite3.connect(copy)
                    try:
                        live.backup(dest)
                    except sqlite3.Error as exc:
                        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                            raise
                        raise MergeFailed(
                            f"cannot read {target} for a dry run ({exc}); nothing was changed — check that the file "
                            "is an SQLite database and try again"
                        ) from exc
                    finally:
                        dest.close()
                        live.close()
                _merge_in_transaction(copy, source, result, mode=mode, commit=False)
            except (sqlite3.Error, MergeFailed) as exc:
                cause = exc if isinstance(exc, sqlite3.Error) else exc.__cause__
                if getattr(cause, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
                    raise
                raise MergeFailed(_no_room(target, folder, "filled up while the copy was merged")) from exc
        return result
    target.parent.mkdir(parents=True, exist_ok=True)
    _merge_in_transaction(target, source, result, mode=mode, commit=True)
    return result


def _no_room(target: Path, folder: str, what: str) -> str:
    return (
        f"a dry run merges into a private copy of {target} in the temporary folder {folder}, which {what}; "
        "nothing was changed — free some room there, or set TMPDIR to a folder with room, and try again"
    )


def _merge_in_transaction(
    path: Path, source: RowSource, result: DatabaseMerge, *, mode: ConflictMode, commit: bool
) -> None:
    """Merge, rebuild and check in one transaction; commit it, or (a dry run's copy) roll it back."""
    con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        con.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        con.execute("PRAGMA foreign_keys = ON")  # no row goes in whose parent row is not there
        unenforceable = _unenforceable_foreign_key(con, source)
        if unenforceable:
            # SQLite leaves foreign keys off by default, so a store can declare one it cannot check
            # (a parent column that is not UNIQUE, a parent table that is gone); enforcing it
            # would refuse every row of the table. It is merged as before, unchecked.
            con.execute("PRAGMA foreign_keys = OFF")
            result.warnings.append(f"{unenforceable}; the rows were merged without checking foreign keys")
        con.execute("BEGIN IMMEDIATE")
        try:
            dangling = None if unenforceable else _deferred_violations(con)
            _merge_all(con, source, result, mode=mode)
            if dangling is not None:
                _check_deferred_keys(con, result, dangling)
            _rebuild_and_check(con, result)
        except BaseException:
            if con.in_transaction:  # SQLite may already have rolled back (a full disk, say)
                con.execute("ROLLBACK")
            raise
        con.execute("COMMIT" if commit else "ROLLBACK")
    except _RolledBack as exc:
        raise MergeFailed(
            f"a trigger of {result.target} refused a merged row with RAISE(ROLLBACK) ({exc.__cause__}), which "
            "ends the whole transaction; the merge was rolled back and the store is unchanged — change that "
            "trigger to RAISE(ABORT) so that only the rows it refuses fail, then merge again"
        ) from exc.__cause__
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_BUSY:
            fix = f"another process (the agent?) kept it locked for {BUSY_TIMEOUT_S:g} s; try again when it is idle"
        elif _NO_COLLATION in str(exc):
            fix = _OWN_COLLATION
        elif code == sqlite3.SQLITE_FULL:  # the store's disk, or the temporary tables' folder
            fix = (
                f"free some room on the store's disk or in the temporary folder {tempfile.gettempdir()} (where "
                "the merge compares keys), or set TMPDIR to a folder with room, and try again"
            )
        else:
            fix = "check that the file is a writable SQLite database and try again"
        raise MergeFailed(
            f"merging into {result.target} failed ({exc}); the transaction was rolled back and the store is "
            f"unchanged — {fix}"
        ) from exc
    finally:
        con.close()


_NO_COLLATION = "no such collation sequence"
_OWN_COLLATION = (
    "the store declares a collation that only the application that made it defines (registering it each time it "
    "opens the store), so Phoenix can neither compare its rows as the store does nor write them — restore the "
    "snapshot in place (phx restore without --merge), or let that application copy the rows"
)


def _merge_all(con: sqlite3.Connection, source: RowSource, result: DatabaseMerge, *, mode: ConflictMode) -> None:
    missing = _missing(con, source)
    late = [s for s in missing if s.type in ("view", "trigger")]
    created_tables: set[str] = set()
    for stmt in missing:
        if stmt.type in ("view", "trigger"):
            continue
        try:
            con.execute(stmt.sql)
            if stmt.type == "table":
                created_tables.add(stmt.name)
            elif stmt.type == "index":
                _keep_only_on_a_created_table(con, stmt, {_fold(t) for t in created_tables}, result)
        except (sqlite3.OperationalError, sqlite3.IntegrityError) as exc:  # a UNIQUE index the live rows break
            lost = "; its rows were not merged" if stmt.type == "table" else ""
            result.warnings.append(f"could not create {stmt.type} {stmt.name} ({exc}){lost}")
    # A live trigger that writes into a table the merge also fills would write twice what the
    # source already holds (an audit row, say): it is dropped for the rows and created again.
    # One that only reads them (a guard) goes on firing.
    merged = {t.name for t in source.tables}
    # One that writes into a virtual table whose module Phoenix cannot load (a sqlite-vec index
    # kept in step with its rows) failed the whole store, 'no such module: vec0': it is dropped
    # for the rows too, and the index named to be re-indexed.
    unloadable = _unloadable_virtual_tables(con)
    quiet = [
        (str(name), str(sql))
        for name, sql in con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
        if _trigger_touches(str(sql), merged | set(unloadable))
    ]
    for name, _sql in quiet:
        con.execute(f"DROP TRIGGER {quote(name)}")
    target = inspect(con, detect_vectors=False)
    undo = _raises_fail(con)
    waiting: list[_Waiting] = []
    for table in source.tables:
        tm = TableMerge(table.name, created=table.name in created_tables)
        result.tables.append(tm)
        # SQLite's names are ASCII letters in any case: the live `notes` is the source's `Notes`.
        live = next((t for t in target.tables if _fold(t.name) == _fold(table.name)), None)
        if live is None:
            tm.failed = sum(1 for _row in source.rows(table))
            result.warnings.append(
                f"table {table.name} is not in the live store and could not be created; its {tm.failed} row(s) "
                "were not merged"
            )
            continue
        distinct = source.distinct_keys(table)
        _merge_table(con, table, live, source.rows(table), tm, result, waiting, mode=mode, undo=undo, distinct=distinct)
    _retry_waiting(con, waiting, result, undo=undo)
    written = any(t.restored or t.updated for t in result.tables)
    for name, sql in quiet:
        con.execute(sql)
        skipped = [v for v in sorted(unloadable) if _trigger_touches(sql, {v})]
        if written and skipped:
            result.warnings.append(
                f"the live trigger {name} did not fire for the merged rows: it writes into {', '.join(skipped)}, "
                f"a virtual table of module {unloadable[skipped[0]]} that Phoenix cannot load — let the agent "
                "re-index it after the merge"
            )
        if written and _trigger_touches(sql, merged, verbs=("UPDATE", "DELETE")):
            result.warnings.append(
                f"the live trigger {name} did not fire for the merged rows: the rows it updates come from the "
                "source as they are, so a value it keeps (a counter, a total) does not count the rows merged "
                "now — recompute it if the agent relies on it"
            )
    created = {_fold(t) for t in created_tables}
    for stmt in late:
        try:
            con.execute(stmt.sql)
        except sqlite3.OperationalError as exc:
            result.warnings.append(f"could not create {stmt.type} {stmt.name} ({exc})")
            continue
        if stmt.type == "view":  # its INSTEAD OF triggers come with it
            created.add(_fold(stmt.name))
        elif stmt.type == "trigger":
            _keep_only_on_a_created_table(con, stmt, created, result)


def _keep_only_on_a_created_table(
    con: sqlite3.Connection, stmt: SchemaStatement, created: set[str], result: DatabaseMerge
) -> None:
    """A trigger or UNIQUE index the source has and the store lacks stays only on a table this
    merge created (a store on a new machine gets its FTS triggers). On a table the store already
    had, a trigger would run code the store's owner never put there whenever the agent writes
    (deleting rows, writing elsewhere), a UNIQUE index refuse the agent's next writes: it is
    dropped again and named. Its table is the one SQLite read from the statement (sqlite_master's
    tbl_name), never what the source says it is; a plain index only speeds reads and stays."""
    row = con.execute(
        "SELECT tbl_name FROM sqlite_master WHERE type = ? AND name = ?", (stmt.type, stmt.name)
    ).fetchone()
    if row is None or _fold(str(row[0])) in created:
        return
    table = str(row[0])
    if stmt.type == "index":
        unique = con.execute('SELECT "unique" FROM pragma_index_list(?) WHERE name = ?', (table, stmt.name)).fetchone()
        if not (unique and unique[0]):
            return
    con.execute(f"DROP {stmt.type.upper()} {quote(stmt.name)}")
    what = "code that runs when the agent writes" if stmt.type == "trigger" else "a constraint on what the agent writes"
    result.warnings.append(
        f"{'UNIQUE ' if stmt.type == 'index' else ''}{stmt.type} {stmt.name} of the source, on table {table} which the "
        f"store already had without it, was not created: a merge adds rows, not {what}; create it by hand if the "
        "agent needs it"
    )


def _unloadable_virtual_tables(con: sqlite3.Connection) -> dict[str, str]:
    """The virtual tables of the store whose module this SQLite cannot load (`vec0` without
    sqlite-vec), with their module."""
    out: dict[str, str] = {}
    for name, sql in con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"):
        module = virtual_module(str(sql or ""))
        if module is None:
            continue
        try:
            con.execute(f"SELECT 1 FROM {quote(str(name))} LIMIT 0").fetchall()
        except sqlite3.OperationalError:
            out[str(name)] = module
    return out


def _unenforceable_foreign_key(con: sqlite3.Connection, source: RowSource) -> str:
    """The first foreign key of the live store, or of a table the merge will create in it, that
    SQLite cannot enforce (with foreign_keys on), named with SQLite's error; empty when all can be.
    The missing tables are created in a transaction rolled back at once: foreign_keys can only be
    turned off outside one."""
    missing = [s for s in _missing(con, source) if s.type == "table"]
    if not missing:
        return _first_unenforceable(con)
    con.execute("BEGIN IMMEDIATE")
    try:
        for stmt in missing:
            try:
                con.execute(stmt.sql)
            except sqlite3.Error:
                continue  # the merge names it when it cannot create it
        return _first_unenforceable(con)
    finally:
        con.execute("ROLLBACK")


def _missing(con: sqlite3.Connection, source: RowSource) -> list[SchemaStatement]:
    """The source's statements whose name the live store lacks, names compared as SQLite compares
    them (a live `notes` is the source's `Notes`: creating it again failed and its rows went unmerged)."""
    existing = {_fold(str(r[0])) for r in con.execute("SELECT name FROM sqlite_master")}
    return [s for s in source.statements if _fold(s.name) not in existing]


def _first_unenforceable(con: sqlite3.Connection) -> str:
    children = con.execute(
        "SELECT m.name FROM sqlite_master AS m WHERE m.type = 'table' "
        "AND EXISTS (SELECT 1 FROM pragma_foreign_key_list(m.name))"
    ).fetchall()
    for (name,) in children:
        try:  # compiling an insert compiles every foreign key of the table: nothing runs
            con.execute(f"EXPLAIN INSERT INTO {quote(str(name))} DEFAULT VALUES").fetchall()
        except sqlite3.OperationalError as exc:
            return f"table {name} declares a foreign key SQLite cannot enforce ({exc})"
    return ""


class _RolledBack(Exception):
    """A live trigger's RAISE(ROLLBACK) ended the merge's transaction: nothing written after it
    may go on (it would be committed row by row)."""


def _write(con: sqlite3.Connection, sql: str, params: Sequence[SqlValue], *, undo: bool = False) -> bool:
    """One merged row's INSERT or UPDATE; an IntegrityError that ended the transaction stops the merge.
    False when a live trigger's `RAISE(IGNORE)` left the row out without an error.

    With `undo` (a live trigger may `RAISE(FAIL)`, which keeps what the statement wrote before it:
    the row itself, a trigger's writes elsewhere) the write runs in a savepoint, rolled back when it
    fails, so a row counted as failed leaves nothing behind."""
    if undo:
        con.execute("SAVEPOINT phx_row")
    try:
        written = con.execute(sql, params).rowcount != 0
    except sqlite3.IntegrityError as exc:
        if not con.in_transaction:
            raise _RolledBack() from exc
        if undo:
            con.execute("ROLLBACK TO phx_row")
            con.execute("RELEASE phx_row")
        raise
    if undo:
        con.execute("RELEASE phx_row")
    return written


_IGNORED = "a trigger of the live store left it out with RAISE(IGNORE)"


def _raises_fail(con: sqlite3.Connection) -> bool:
    """Whether a trigger of the store may `RAISE(FAIL, ...)`."""
    for (sql,) in con.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger'"):
        words = [w.upper() for w in tokens(str(sql or ""))]
        if any(words[i : i + 3] == ["RAISE", "(", "FAIL"] for i in range(len(words) - 2)):
            return True
    return False


def _deferred_violations(con: sqlite3.Connection) -> set[tuple[Any, ...]]:
    """The foreign-key violations of the store, when a table declares a deferred foreign key
    (checked only at COMMIT); an empty set otherwise, cheaply."""
    deferred = con.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND sql LIKE '%DEFERRED%' LIMIT 1"
    ).fetchone()
    return {tuple(r) for r in con.execute("PRAGMA foreign_key_check")} if deferred else set()


def _check_deferred_keys(con: sqlite3.Connection, result: DatabaseMerge, before: set[tuple[Any, ...]]) -> None:
    """A row left without its parent under a DEFERRABLE INITIALLY DEFERRED foreign key goes in
    without an error and makes the COMMIT fail: say so now, the same in a dry run."""
    new = sorted(_deferred_violations(con) - before, key=repr)
    if new:
        table, rowid, parent = new[0][:3]
        more = f" and {len(new) - 1} more" if len(new) > 1 else ""
        raise MergeFailed(
            f"row {rowid} of table {table} in {result.target}{more} would be left without its parent row in "
            f"{parent} (a deferred foreign key, checked only when the merge commits); the merge was rolled back "
            "and the store is unchanged — restore the snapshot in place, or add the missing parent rows and merge again"
        )


def _trigger_touches(text: str, tables: set[str], verbs: tuple[str, ...] = ("INTO", "UPDATE", "DELETE")) -> bool:
    """Whether a trigger's body (after BEGIN) writes into one of `tables` (a trigger that only
    reads them, a guard, goes on firing), with one of `verbs` (INTO: an insert). Read token by
    token: comments may stand anywhere (`INSERT INTO /* log */ audit`), SQLite takes a name in any
    quotes ('audit' too), and a name may hold a quote, `--` or `/*` (`"au""dit"`, `"au--dit"`)."""
    words = tokens(text)
    upper = [w.upper() for w in words]
    start = upper.index("BEGIN") + 1 if "BEGIN" in upper else len(words)
    wanted = {_fold(t) for t in tables}
    for i in range(start, len(words)):
        at = i + 1
        if upper[i] not in verbs:
            continue
        if upper[i] == "UPDATE" and at + 1 < len(words) and upper[at] == "OR":
            at += 2  # UPDATE OR REPLACE name
        elif upper[i] == "DELETE":
            if at >= len(words) or upper[at] != "FROM":
                continue
            at += 1
        if at < len(words) and _fold(unquote(words[at])) in wanted:
            return True
    return False


def _declares_on_conflict(sql: str) -> bool:
    """Whether a table's declaration gives a constraint an ON CONFLICT clause."""
    words = [w.upper() for w in tokens(sql)]
    return any(words[i : i + 2] == ["ON", "CONFLICT"] for i in range(len(words) - 1))


_fold = fold_name


def _merge_table(
    con: sqlite3.Connection,
    table: TableInfo,
    live: TableInfo,
    rows: Iterable[tuple[SqlValue, ...]],
    tm: TableMerge,
    result: DatabaseMerge,
    waiting: list[_Waiting],
    *,
    mode: ConflictMode,
    undo: bool,
    distinct: list[tuple[str, str]] | None = None,
) -> None:
    # SQLite's names are ASCII letters in any case: the live `id` is the snapshot's `ID` (it was
    # taken for a column the live table lacks, and the merge failed, 'syntax error').
    live_cols = {_fold(c) for c in live.columns} | {"rowid"}
    positions = [i for i, c in enumerate(table.columns) if _fold(c) in live_cols]
    common = tuple(table.columns[i] for i in positions)
    dropped = [c for c in table.columns if _fold(c) not in live_cols]
    if not common:  # a statement with no column was an SQLite 'syntax error' that failed the whole store
        tm.failed = sum(1 for _row in rows)
        result.warnings.append(
            f"table {table.name}: none of its columns ({', '.join(table.columns)}) is in the live table; its "
            f"{tm.failed} row(s) were not merged"
        )
        return
    if dropped:
        result.warnings.append(
            f"{table.name}: column(s) {', '.join(dropped)} are not in the live table; their values were not merged"
        )
    key = table.key if table.key and all(k in common for k in table.key) else ()
    if table.key and not key:
        result.warnings.append(f"{table.name}: the live table lacks key column(s); rows were merged as whole rows")
    q = quote(table.name)
    col_sql = ", ".join("rowid" if c == "rowid" else quote(c) for c in common)
    # OR ABORT overrides a table's own ON CONFLICT REPLACE, which would delete the live row that
    # is in the way (and cascade to its children) instead of failing the merged one. It also
    # overrides the conflict clause of every statement a live trigger runs for the row, so it is
    # written only for a table that declares one: a trigger's `INSERT OR REPLACE INTO stats` (a
    # table the merge does not fill) then failed every merged row.
    abort = " OR ABORT" if _declares_on_conflict(live.sql) else ""
    insert_sql = f"INSERT{abort} INTO {q} ({col_sql}) VALUES ({', '.join('?' * len(common))})"
    warned = 0

    def insert(values: tuple[SqlValue, ...]) -> None:
        nonlocal warned
        try:
            if _write(con, insert_sql, values, undo=undo):
                tm.restored += 1
                return
            why = _IGNORED
        except sqlite3.IntegrityError as exc:
            if _FOREIGN_KEY in str(exc):
                waiting.append(_Waiting(tm, "inserted", insert_sql, values, common))
                return
            why = str(exc)
        tm.failed += 1
        if warned < _MAX_WARNINGS_PER_TABLE:
            warned += 1
            result.warnings.append(f"{table.name}: a row could not be inserted ({why})")

    projected = (tuple(row[i] for i in positions) for row in rows)
    if not key:
        _merge_multiset(con, live, common, projected, tm, insert)
        return

    key_idx = [common.index(k) for k in key]
    value_idx = [i for i, c in enumerate(common) if c not in key]
    comparison = key_comparison(con, live.name, key)
    # The live row is updated through its own key, compared as its index compares it.
    where = " AND ".join(
        f"{'rowid' if k == 'rowid' else quote(k)} = (? COLLATE {quote(coll)})"
        for k, (_aff, coll) in zip(key, comparison, strict=True)
    )
    sets = ", ".join(quote(common[i]) + " = ?" for i in value_idx)
    update_sql = f"UPDATE{abort} {q} SET {sets} WHERE {where}" if value_idx else ""
    # A NULL never equals a key, and a (legacy) rowid table's key may hold NULLs, as many as it
    # likes: those rows are merged as whole rows against the live rows with a NULL key. They wait
    # in a temporary table, untyped (values as they are), not in memory: a list of them held every
    # such row, embeddings and all, until the table's end.
    null_t = quote(_temp_name(con, "phx_null"))
    marks = ", ".join("?" * len(common))
    con.execute(f"CREATE TEMP TABLE {null_t} ({', '.join(f'c{i}' for i in range(len(common)))})")
    null_keyed = 0
    # Two rows of the source that are one row of the live table (its key compares 'Alice' and
    # 'alice' as one, the source's did not): the second went over the first, or was counted
    # skipped, without a word. Keys the source keeps distinct as the live table compares them
    # (a snapshot of the same table, an export checked against the key it declares) are not kept.
    seen = None if distinct == comparison else SameKeys(con, comparison)
    try:
        for whole in _batched(projected, _BATCH):
            batch = []
            for values in whole:
                if None in (values[i] for i in key_idx):
                    con.execute(f"INSERT INTO temp.{null_t} VALUES ({marks})", values)
                    null_keyed += 1
                else:
                    batch.append(values)
            if not batch:
                continue
            keys = [tuple(values[i] for i in key_idx) for values in batch]
            twice = seen.add(keys) if seen is not None else [None] * len(batch)
            existing = _existing(con, q, common, key_idx, comparison, batch)
            for at, values in enumerate(batch):
                k = tuple(values[i] for i in key_idx)
                if twice[at] is not None:
                    tm.failed += 1
                    if warned < _MAX_WARNINGS_PER_TABLE:
                        warned += 1
                        result.warnings.append(
                            f"{table.name}: a row was not merged: its key {k!r:.80} is the key {twice[at]!r:.80} of "
                            "a row of the source merged before it, as the live table compares keys (one row there)"
                        )
                    continue
                found = existing.get(at)
                if found is None:
                    insert(values)
                    continue
                old, same, holders = found
                if same:
                    tm.unchanged += 1
                elif mode == "skip":
                    tm.skipped += 1
                elif holders > 1:
                    # The live table does not keep this key unique (not its key since a migration):
                    # the update went into every live row holding it, counted once.
                    tm.failed += 1
                    if warned < _MAX_WARNINGS_PER_TABLE:
                        warned += 1
                        result.warnings.append(
                            f"{table.name}: a row was not updated: {holders} rows of the live table hold its key "
                            f"{k!r:.80} (it is not the live table's key), and which one it is cannot be told"
                        )
                else:
                    if update_sql:
                        params = (*(values[i] for i in value_idx), *(old[i] for i in key_idx))
                        try:
                            why = "" if _write(con, update_sql, params, undo=undo) else _IGNORED
                        except sqlite3.IntegrityError as exc:
                            if _FOREIGN_KEY in str(exc):
                                waiting.append(_Waiting(tm, "updated", update_sql, params))
                                continue
                            why = str(exc)
                        if why:
                            tm.failed += 1
                            if warned < _MAX_WARNINGS_PER_TABLE:
                                warned += 1
                                result.warnings.append(f"{table.name}: a row could not be updated ({why})")
                            continue
                    tm.updated += 1
        if null_keyed:
            null_where = " OR ".join(f"{'rowid' if k == 'rowid' else quote(k)} IS NULL" for k in key)
            waiting_rows = (tuple(r) for r in con.execute(f"SELECT * FROM temp.{null_t} ORDER BY rowid"))
            _merge_multiset(con, live, common, waiting_rows, tm, insert, where=null_where)
    finally:
        if seen is not None:
            seen.close()
        con.execute(f"DROP TABLE IF EXISTS temp.{null_t}")


_FOREIGN_KEY = "FOREIGN KEY constraint failed"
_NO_PARENT = f"{_FOREIGN_KEY}: its parent row is not in the store"


@dataclass
class _Waiting:
    """A row whose parent row was not in the store yet when it was written."""

    tm: TableMerge
    verb: Literal["inserted", "updated"]
    sql: str
    params: tuple[SqlValue, ...]
    columns: tuple[str, ...] = ()  # an insert's, in `params` order
    why: str = _NO_PARENT  # why it failed


def _retry_waiting(con: sqlite3.Connection, waiting: list[_Waiting], result: DatabaseMerge, *, undo: bool) -> None:
    """Write again the rows a foreign key refused (a table merged before its parent table, a row
    before its parent in the same table) until no more goes in; the rest failed.

    The passes go one way, then back, and so on: a chain of rows each pointing to the next
    (`next`, `superseded_by`) goes in in one pass whichever way it is ordered, where passes in one
    direction wrote one row of it per pass (2,000 rows: 14.6 s). The inserts are first put parents
    first (by the values of their foreign keys), so that a chain in any order, shuffled too, goes
    in in the first pass; the passes after it catch what that order misses (an update, a value
    spelled otherwise)."""
    waiting = _parents_first(con, waiting)
    backwards = False
    failed: list[_Waiting] = []
    while waiting:
        left = []
        for w in reversed(waiting) if backwards else waiting:
            try:
                written = _write(con, w.sql, w.params, undo=undo)
            except sqlite3.IntegrityError as exc:
                # its parent may be in by now, and a trigger or another constraint refuse it
                w.why = _NO_PARENT if _FOREIGN_KEY in str(exc) else str(exc)
                left.append(w)
                continue
            if not written:
                w.why = _IGNORED
                failed.append(w)
            elif w.verb == "inserted":
                w.tm.restored += 1
            else:
                w.tm.updated += 1
        if backwards:
            left.reverse()
        if len(left) == len(waiting):
            break
        waiting = left
        backwards = not backwards
    if waiting and all(w.why == _NO_PARENT for w in waiting) and _write_together(con, waiting, undo=undo):
        waiting = []
    warned: Counter[str] = Counter()
    for w in failed + waiting:
        w.tm.failed += 1
        if warned[w.tm.table] < _MAX_WARNINGS_PER_TABLE:
            warned[w.tm.table] += 1
            result.warnings.append(f"{w.tm.table}: a row could not be {w.verb} ({w.why})")


def _write_together(con: sqlite3.Connection, waiting: list[_Waiting], *, undo: bool) -> bool:
    """Write the rows no pass could write, with the foreign keys checked once all are in: rows
    that are each other's parents (two notes pointing to each other, a longer cycle) go in only
    together. They were failed as lacking a parent the source held. In a savepoint, rolled back
    unless every one goes in and no row is left without its parent; counted when kept."""
    tables = sorted({w.tm.table for w in waiting} | {str(r[2]) for w in waiting for r in _fk_list(con, w.tm.table)})
    before = _fk_violations(con, tables)
    con.execute("SAVEPOINT phx_together")
    con.execute("PRAGMA defer_foreign_keys = ON")
    kept = False
    try:
        kept = all(_write(con, w.sql, w.params, undo=undo) for w in waiting)
        kept = kept and not (_fk_violations(con, tables) - before)
    except sqlite3.IntegrityError:
        kept = False
    finally:
        if con.in_transaction:
            if not kept:
                con.execute("ROLLBACK TO phx_together")
            con.execute("RELEASE phx_together")
            con.execute("PRAGMA defer_foreign_keys = OFF")
    if kept:
        for w in waiting:
            if w.verb == "inserted":
                w.tm.restored += 1
            else:
                w.tm.updated += 1
    return kept


def _fk_list(con: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in con.execute("SELECT * FROM pragma_foreign_key_list(?)", (table,))]


def _fk_violations(con: sqlite3.Connection, tables: list[str]) -> Counter[tuple[Any, ...]]:
    """The foreign-key violations of `tables`, counted (a WITHOUT ROWID table's have no rowid)."""
    return Counter(tuple(r) for t in tables for r in con.execute(f"PRAGMA foreign_key_check({quote(t)})"))


def _parents_first(con: sqlite3.Connection, waiting: list[_Waiting]) -> list[_Waiting]:
    """The waiting rows, each insert after the waiting inserts holding the parent keys it refers
    to (a depth-first walk, so linear in the rows); a cycle is cut anywhere."""
    fks: dict[str, list[tuple[str, tuple[str, ...], tuple[str, ...]]]] = {}  # child -> (parent, from, to)
    for table in {w.tm.table for w in waiting}:
        groups: dict[int, list[tuple[str, str, str | None]]] = {}
        for row in con.execute('SELECT id, "table", "from", "to" FROM pragma_foreign_key_list(?)', (table,)):
            groups.setdefault(int(row[0]), []).append((str(row[1]), str(row[2]), row[3]))
        for cols in groups.values():
            parent = cols[0][0]
            parent_cols = [str(c[2]) for c in cols]
            if any(c[2] is None for c in cols):  # the parent's primary key
                pk = sorted((int(r[5]), str(r[1])) for r in con.execute("PRAGMA table_info(" + quote(parent) + ")"))
                parent_cols = [name for n, name in pk if n]
            if len(parent_cols) == len(cols):
                fks.setdefault(_fold(table), []).append((_fold(parent), tuple(c[1] for c in cols), tuple(parent_cols)))
    if not fks:
        return waiting
    referenced = {(parent, to) for refs in fks.values() for parent, _from, to in refs}
    holders: dict[tuple[Any, ...], list[int]] = {}
    for i, w in enumerate(waiting):
        table = _fold(w.tm.table)
        for parent, to in referenced:
            if parent == table and all(c in w.columns for c in to):
                holders.setdefault((parent, to, *(w.params[w.columns.index(c)] for c in to)), []).append(i)
    needs: list[list[int]] = []
    for i, w in enumerate(waiting):
        found: list[int] = []
        for parent, frm, to in fks.get(_fold(w.tm.table), []):
            if all(c in w.columns for c in frm):
                found += holders.get((parent, to, *(w.params[w.columns.index(c)] for c in frm)), [])
        needs.append([j for j in found if j != i])
    state = [0] * len(waiting)  # 0 not seen, 1 on the walk, 2 placed
    order: list[int] = []
    for start in range(len(waiting)):
        if state[start]:
            continue
        state[start] = 1
        stack = [(start, iter(needs[start]))]
        while stack:
            at, rest = stack[-1]
            nxt = next(rest, None)
            if nxt is None:
                stack.pop()
                state[at] = 2
                order.append(at)
            elif not state[nxt]:
                state[nxt] = 1
                stack.append((nxt, iter(needs[nxt])))
    return [waiting[i] for i in order]


def key_comparison(con: sqlite3.Connection, table: str, key: tuple[str, ...]) -> list[tuple[str, str]]:
    """(affinity, collation) of each column of `key` of `table` as SQLite compares it: the
    affinity of the column's declared type, and the collation of the table's primary key index
    when `key` is its key (`PRIMARY KEY (k COLLATE NOCASE)` over a BINARY column too), else the
    column's own (a table without that key: its `=` compares so); a rowid is an INTEGER."""
    pk = con.execute("SELECT name FROM pragma_index_list(?) WHERE origin = 'pk'", (table,)).fetchone()
    if pk is not None:
        cols = {_fold(str(r[2])) for r in con.execute("SELECT * FROM pragma_index_xinfo(?)", (pk[0],)) if r[5]}
        if cols == {_fold(k) for k in key}:
            return _compared(con, table, key, str(pk[0]))
    if all(k == "rowid" for k in key):
        return [("INTEGER", "BINARY")] * len(key)
    row = con.execute("SELECT sql FROM main.sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    return column_comparison(str(row[0]) if row else "", table, key)


def _compared(con: sqlite3.Connection, table: str, columns: Sequence[str], index: str | None) -> list[tuple[str, str]]:
    """(affinity, collation) of each of `columns` of `table`: the affinity of its declared type,
    the collation `index` gives it (BINARY without one); a rowid is an INTEGER."""
    decl = {_fold(str(r[1])): str(r[2] or "") for r in con.execute("SELECT * FROM pragma_table_info(?)", (table,))}
    coll: dict[str, str] = {}
    if index is not None:
        coll = {
            _fold(str(r[2])): str(r[4]) for r in con.execute("SELECT * FROM pragma_index_xinfo(?)", (index,)) if r[5]
        }
    return [
        # A column may be named rowid (`rowid TEXT COLLATE NOCASE PRIMARY KEY`): it is no rowid then.
        ("INTEGER", "BINARY")
        if c == "rowid" and c not in decl
        else (_affinity(decl.get(_fold(c), "")), coll.get(_fold(c), "BINARY"))
        for c in columns
    ]


def _affinity(declared: str) -> str:
    """The affinity SQLite gives a column of this declared type (sqlite.org/datatype3.html 3.1),
    as a type name of that affinity; "" for none (BLOB)."""
    d = declared.upper()
    if "INT" in d:
        return "INTEGER"
    if "CHAR" in d or "CLOB" in d or "TEXT" in d:
        return "TEXT"
    if "BLOB" in d or not d:
        return ""
    if "REAL" in d or "FLOA" in d or "DOUB" in d:
        return "REAL"
    return "NUMERIC"


class SameKeys:
    """The keys of the rows seen so far, kept in a table of `con`'s temporary schema (on disk past
    SQLite's page cache, not in memory) and compared as SQLite compares the primary key they are
    keys of, `comparison` (its `key_comparison`): 'Alice' and 'alice' are one key of a
    `COLLATE NOCASE` key, '1' and 1 one of an INTEGER one."""

    def __init__(self, con: sqlite3.Connection, comparison: list[tuple[str, str]]) -> None:
        self.con, self.name, self.width, self.seen = con, quote(_temp_name(con, "phx_keys")), len(comparison), 0
        # INT, not INTEGER: `k0 INTEGER` alone in the PRIMARY KEY is the rowid, which refuses what
        # an INT key holds besides integers ('abc', 1.5: 'datatype mismatch', the whole merge failed).
        types = ["INT" if aff == "INTEGER" else aff for aff, _coll in comparison]
        cols = ", ".join(f"k{i} {types[i]} COLLATE {quote(coll)}" for i, (_aff, coll) in enumerate(comparison))
        pk = ", ".join(f"k{i}" for i in range(self.width))
        con.execute(f"CREATE TEMP TABLE {self.name} ({cols}, phx_n INTEGER, PRIMARY KEY ({pk}))")
        marks = ", ".join("?" * (self.width + 1))
        self._insert = f"INSERT OR IGNORE INTO temp.{self.name} VALUES ({marks})"
        where = " AND ".join(f"k{i} = ?" for i in range(self.width))
        self._find = (
            f"SELECT phx_n, {', '.join(f'k{i}' for i in range(self.width))} FROM temp.{self.name} WHERE {where}"
        )

    def add(self, keys: Sequence[tuple[SqlValue, ...]]) -> list[tuple[SqlValue, ...] | None]:
        """Add a batch of keys (none holding a NULL); for each, None when it is new, else the key
        as first seen (an earlier row of the batch, or of a batch before it)."""
        first = self.seen
        self.seen += len(keys)
        before = self.con.total_changes
        self.con.executemany(self._insert, [(*k, first + i) for i, k in enumerate(keys)])
        if self.con.total_changes - before == len(keys):
            return [None] * len(keys)
        out: list[tuple[SqlValue, ...] | None] = []
        for i, k in enumerate(keys):
            row = self.con.execute(self._find, k).fetchone()
            out.append(None if row is None or row[0] == first + i else tuple(row[1:]))
        return out

    def close(self) -> None:
        self.con.execute(f"DROP TABLE IF EXISTS temp.{self.name}")


def _temp_name(con: sqlite3.Connection, base: str) -> str:
    """A name for a temporary table that no table of the store, nor a temporary one, has: SQLite
    looks an unqualified name up in the temporary schema first, so a temporary `phx_rows` took
    the place of the store's own `phx_rows` in the merge's inserts ('has no column named k')."""
    taken = {
        fold_name(str(r[0]))
        for schema in ("main", "temp")
        for r in con.execute(f"SELECT name FROM {schema}.sqlite_master")
    }
    name, n = base, 1
    while fold_name(name) in taken:
        n += 1
        name = f"{base}{n}"
    return name


def _existing(
    con: sqlite3.Connection,
    q: str,
    common: tuple[str, ...],
    key_idx: list[int],
    comparison: list[tuple[str, str]],
    batch: Sequence[tuple[SqlValue, ...]],
) -> dict[int, tuple[tuple[SqlValue, ...], bool, int]]:
    """The live row (common columns) of each row of a batch whose key the live table holds, by
    the row's place in the batch, and whether SQLite finds its other values the same. SQLite
    compares: the key by the live key's collation and affinity, as the table's own index does (a
    NOCASE key's 'Alice' is the live 'alice'; read back by its own value, such a row was taken for
    a new one, whose insert then failed the UNIQUE constraint), the other values by the live
    columns' affinity, byte for byte (the text '5' is the 5 an INTEGER column holds: it was
    counted skipped, or updated to itself). The last of the three is how many live rows hold
    that key: more than one where the live table does not have it as its key (a migration)."""
    found: dict[int, tuple[tuple[SqlValue, ...], bool, int]] = {}
    cols = ", ".join("t.rowid" if c == "rowid" else f"t.{quote(c)}" for c in common)
    names = ["phx_i", *(f"c{i}" for i in range(len(common)))]
    on = " AND ".join(
        f"{'t.rowid' if common[i] == 'rowid' else f't.{quote(common[i])}'} = (phx_s.c{i} COLLATE {quote(coll)})"
        for i, (_aff, coll) in zip(key_idx, comparison, strict=True)
    )
    same = " AND ".join(
        f"({'t.rowid' if c == 'rowid' else f't.{quote(c)}'} IS (phx_s.c{i} COLLATE BINARY))"
        for i, c in enumerate(common)
        if i not in key_idx
    )
    per = max(1, con.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(names))
    for at in range(0, len(batch), per):
        part = batch[at : at + per]
        row_marks = "(" + ", ".join("?" * len(names)) + ")"
        sql = (
            f"WITH phx_s({', '.join(names)}) AS (VALUES {', '.join([row_marks] * len(part))}) "
            f"SELECT phx_s.phx_i, {same or '1'}, {cols} FROM phx_s JOIN main.{q} AS t ON {on}"
        )
        params = [x for i, values in enumerate(part, start=at) for x in (i, *values)]
        for i, is_same, *row in con.execute(sql, params):
            before = found.get(int(i))
            if before is None:
                found[int(i)] = (tuple(row), bool(is_same), 1)
            else:  # several live rows hold the key: the row is unchanged when one of them is it
                found[int(i)] = (before[0], before[1] or bool(is_same), before[2] + 1)
    return found


def column_comparison(sql: str, table: str, columns: Sequence[str]) -> list[tuple[str, str]]:
    """(affinity, collation) with which SQLite compares each of `columns` of the table `sql`
    creates (a store's own statement): its declared type's affinity and its `COLLATE`, read back
    by SQLite from an index on them over an empty copy of the table in memory; a rowid is an
    INTEGER. A statement that cannot be made there compares values as they are."""
    scratch = sqlite3.connect(":memory:")
    try:
        scratch.execute(sql)
        declared = {str(r[1]) for r in scratch.execute("SELECT * FROM pragma_table_info(?)", (table,))}
        named = [c for c in columns if c != "rowid" or c in declared]
        index = "phx_probe" if fold_name(table) != "phx_probe" else "phx_probe2"
        if named:
            scratch.execute(f"CREATE INDEX {index} ON {quote(table)} ({', '.join(quote(c) for c in named)})")
        return _compared(scratch, table, columns, index if named else None)
    except sqlite3.Error as exc:
        if _NO_COLLATION in str(exc):
            # Compared byte for byte instead, a keyless table's 'B' went in beside the live 'b'
            # that the store's own collation takes for it.
            raise MergeFailed(
                f"table {table} compares its rows with a collation this SQLite lacks ({exc}); nothing "
                f"was changed — {_OWN_COLLATION}"
            ) from exc
        return [("INTEGER", "BINARY") if c == "rowid" else ("", "BINARY") for c in columns]
    finally:
        scratch.close()


def _merge_multiset(
    con: sqlite3.Connection,
    live: TableInfo,
    common: tuple[str, ...],
    rows: Iterable[tuple[SqlValue, ...]],
    tm: TableMerge,
    insert: Any,
    *,
    where: str = "",
) -> None:
    """Merge rows without a key as a multiset: a source row is unchanged while an equal live row is
    left to match it, else inserted. SQLite compares, each column by the live column's collation
    and affinity (a `COLLATE NOCASE` column's 'Alice' is the live 'alice': it was inserted again
    beside it, or failed a UNIQUE index on that column), on tables in its temporary schema:
    neither the source's rows nor the live ones are held in memory."""
    comparison = column_comparison(live.sql, live.name, common)
    cs = ", ".join(f"c{i}" for i in range(len(common)))
    decls = ", ".join(f"c{i} {aff} COLLATE {quote(coll)}" for i, (aff, coll) in enumerate(comparison))
    live_cols = ", ".join(
        f"{'rowid' if c == 'rowid' else quote(c)} COLLATE {quote(coll)} AS c{i}"
        for i, (c, (_aff, coll)) in enumerate(zip(common, comparison, strict=True))
    )
    equal = " AND ".join(f"l.c{i} IS s.c{i}" for i in range(len(common)))
    rows_t = quote(_temp_name(con, "phx_rows"))
    con.execute(f"CREATE TEMP TABLE {rows_t} (phx_i INTEGER PRIMARY KEY, {decls})")
    new_t = quote(_temp_name(con, "phx_new"))
    try:
        # One row at a time: a row may hold a 40 MiB embedding.
        insert_sql = f"INSERT INTO temp.{rows_t} VALUES (?, {', '.join('?' * len(common))})"
        con.executemany(insert_sql, ((i, *values) for i, values in enumerate(rows)))
        total = int(con.execute(f"SELECT count(*) FROM temp.{rows_t}").fetchone()[0])
        if not total:
            return
        # Equal rows are numbered within their class on each side; a source row whose number no
        # equal live row has is new (two equal source rows, one live row: one is inserted).
        con.execute(f"CREATE TEMP TABLE {new_t} (phx_i INTEGER PRIMARY KEY)")
        con.execute(
            f"INSERT INTO temp.{new_t} "
            f"WITH phx_s AS (SELECT phx_i, {cs}, row_number() OVER (PARTITION BY {cs} ORDER BY phx_i) AS phx_n "
            f"FROM temp.{rows_t}), "
            f"phx_l AS (SELECT {cs}, row_number() OVER (PARTITION BY {cs}) AS phx_n "
            f"FROM (SELECT {live_cols} FROM main.{quote(live.name)}{f' WHERE {where}' if where else ''})) "
            f"SELECT phx_i FROM phx_s AS s WHERE NOT EXISTS "
            f"(SELECT 1 FROM phx_l AS l WHERE l.phx_n = s.phx_n AND {equal})"
        )
        new = 0
        after = -1
        one = f"SELECT {cs} FROM temp.{rows_t} WHERE phx_i = ?"
        # The new rows' numbers a batch at a time, their rows one at a time (a row may be large).
        while ids := con.execute(
            f"SELECT phx_i FROM temp.{new_t} WHERE phx_i > ? ORDER BY phx_i LIMIT {_BATCH}", (after,)
        ).fetchall():
            for (i,) in ids:
                insert(tuple(con.execute(one, (i,)).fetchone()))
            new += len(ids)
            after = ids[-1][0]
        tm.unchanged += total - new
    finally:
        con.execute(f"DROP TABLE IF EXISTS temp.{rows_t}")
        con.execute(f"DROP TABLE IF EXISTS temp.{new_t}")


def _batched(rows: Iterable[tuple[SqlValue, ...]], n: int) -> Iterator[list[tuple[SqlValue, ...]]]:
    it = iter(rows)
    while batch := list(islice(it, n)):
        yield batch


def _rebuild_and_check(con: sqlite3.Connection, result: DatabaseMerge) -> None:
    """Rebuild external-content FTS indexes, then check them and the whole store, inside the
    merge's transaction: a failure rolls everything back."""
    schema = inspect(con, detect_vectors=False)
    changed = any(t.restored or t.updated or t.created for t in result.tables)
    for fts in schema.fts_rebuild:
        if changed:
            con.execute(f"INSERT INTO {quote(fts)}({quote(fts)}) VALUES('rebuild')")
            result.fts_rebuilt.append(fts)
    for name, module in schema.virtual.items():
        if module == "fts5" and name in schema.fts_rebuild:
            try:
                con.execute(f"INSERT INTO {quote(name)}({quote(name)}, rank) VALUES('integrity-check', 1)")
            except sqlite3.DatabaseError as exc:
                raise MergeFailed(
                    f"the full-text index {name} of {result.target} is inconsistent after the merge ({exc}); "
                    "the merge was rolled back"
                ) from exc
        elif module == "vec0":
            result.warnings.append(
                f"{name} is a sqlite-vec index that Phoenix cannot load; let the agent re-index it after the merge"
            )
    problems = [str(r[0]) for r in con.execute("PRAGMA integrity_check")]
    result.integrity = "ok" if problems == ["ok"] else "; ".join(problems[:5])
    if result.integrity != "ok":
        raise MergeFailed(
            f"{result.target} fails integrity_check after the merge ({result.integrity}); the merge was rolled back"
        )
