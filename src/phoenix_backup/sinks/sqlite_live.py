"""SQLite databases in place: probing the live database, applying a restored copy into it through
the online backup API, checking it afterwards, and the row deltas of a dry run.

Why the backup API and not a rename: a connection the agent still holds open keeps reading the
inode it opened, so a renamed-in file stays invisible to it (and its next write lands in a file
no one will see again). Writing through SQLite's own pager and locks instead changes the database
those connections use, in one transaction: a crash leaves the old or the new content, never a mix.
An idle connection holds no lock, so "is it open?" cannot be asked reliably: the backup API is used
whenever the live database exists and can be read.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shlex
import sqlite3
import time
from dataclasses import dataclass

from phoenix_backup.errors import RestoreError
from phoenix_backup.sources.sqlite import BUSY_TIMEOUT_MS, planted_companion, sqlite_uri
from phoenix_backup.sql import quote, sqlite_error_text, virtual_table

SQLITE_MAGIC = b"SQLite format 3\0"
COMPANIONS = ("-wal", "-shm", "-journal")
_VIRTUAL = re.compile(r"CREATE\s+VIRTUAL\s+TABLE\b", re.IGNORECASE)
_WITHOUT_ROWID = re.compile(r"\bWITHOUT\s+ROWID\b", re.IGNORECASE)


@dataclass(frozen=True)
class LiveDb:
    """What is at a database's place right now."""

    exists: bool
    readable: bool
    reason: str = ""  # why it is not readable
    page_size: int = 0
    wal: bool = False  # the header says WAL mode


def probe(path: str) -> LiveDb:
    """Is there a live database at `path` that SQLite can open and read? Never follows a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return LiveDb(False, False, "absent")
    except OSError as exc:
        return LiveDb(True, False, exc.strerror or str(exc))
    try:
        try:
            if not _is_regular(fd):
                return LiveDb(True, False, "not a regular file")
            header = os.pread(fd, 100, 0)
        finally:
            os.close(fd)
    except OSError as exc:  # a failing disk: unreadable, as when the open fails
        return LiveDb(True, False, exc.strerror or str(exc))
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        return LiveDb(True, False, "not an SQLite database")
    raw = int.from_bytes(header[16:18], "big")
    page_size = 65536 if raw == 1 else raw
    wal = header[18] == 2 and header[19] == 2
    planted = planted_companion(os.path.realpath(path))
    if planted is not None:  # SQLite would block for ever opening a FIFO: replaced by rename
        return LiveDb(True, False, planted, page_size, wal)
    try:
        con = sqlite3.connect(sqlite_uri(path, "mode=ro" if _has_companion(path) else "mode=ro&immutable=1"), uri=True)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        return LiveDb(True, False, str(exc), page_size, wal)
    return LiveDb(True, True, "", page_size, wal)


def _is_regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


def _has_companion(path: str) -> bool:
    return any(os.path.lexists(path + s) for s in ("-wal", "-journal"))


def page_size_problem(logical: str, live: LiveDb, copy_page_size: int, real: str) -> str | None:
    """The backup API cannot change the page size of a database in WAL mode: say what to do."""
    if not (live.readable and live.wal and copy_page_size and live.page_size != copy_page_size):
        return None
    return (
        f"{logical} uses {live.page_size}-byte pages in WAL mode but the snapshot's copy has {copy_page_size}-byte "
        "pages, and SQLite cannot overwrite a live WAL database with another page size; stop everything that uses "
        f"it and run `sqlite3 {shlex.quote(real)} 'PRAGMA journal_mode=DELETE'` (or move the database aside), "
        "then restore again"
    )


def page_size_of(path: str) -> int:
    """The page size a database file's header records."""
    with open(path, "rb") as f:
        header = f.read(18)
    raw = int.from_bytes(header[16:18], "big")
    return 65536 if raw == 1 else raw


def integrity(path: str) -> str:
    """`PRAGMA integrity_check` of a database file no one else uses (a restored copy), read-only:
    "ok", or its first problems. Text is decoded leniently: a damaged schema's names (and SQLite's
    messages quoting them) need not be UTF-8."""
    try:
        con = sqlite3.connect(sqlite_uri(path, "mode=ro&immutable=1"), uri=True)
        try:
            con.text_factory = lambda b: b.decode("utf-8", "replace")
            rows = [str(r[0]) for r in con.execute("PRAGMA integrity_check")]
        finally:
            con.close()
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        return sqlite_error_text(exc)
    return "ok" if rows == ["ok"] else "; ".join(rows[:5])


def apply_if_readable(copy: str, live: str, logical: str, shown: str, expected: str = "") -> bool:
    """Write the checked `copy` into the live database through the backup API when there is one
    SQLite can read (True). False when there is none, or it cannot be read: the caller replaces it
    by rename. `shown` is the live database's path as the user knows it, for messages. `expected`:
    the database's `fingerprint` before the safety snapshot ("": not compared)."""
    state = probe(live)
    if not state.readable:
        return False
    problem = page_size_problem(logical, state, page_size_of(copy), shown)
    if problem:
        raise RestoreError(problem)
    apply_copy(copy, live, logical, expected)
    return True


READ_TAGS = ("wal:", "rollback:")  # how a `fingerprint` of a database that could be read starts
ABSENT = "absent"  # what a restore notes for a database it creates: any found there since is another's


class ChangedSince(RestoreError):
    """The live database is not what the safety snapshot read: it was left as it is."""


def changed_since_text(logical: str) -> str:
    return (
        f"{logical} changed since the safety snapshot was taken (the agent wrote it?) and was left as it is, "
        "so nothing is lost; stop the agent (the gateway) and restore again"
    )


def fingerprint(path: str) -> str:
    """What the database at `path` holds, committed: a digest of its schema, user_version and every
    table's rows, read in one transaction, after "rollback:N:" (N: the header's change counter,
    which each commit in rollback-journal mode raises) or "wal:"; "" when it cannot be read. Equal
    before and after a checkpoint or a reader; different after any commit that changed a row.
    Never follows a link to the database itself (`probe`)."""
    if not probe(path).readable:
        return ""
    digest = hashlib.sha256()
    try:
        # Unlocked (immutable) only for a WAL database no one has open (no -wal: nothing to read
        # there, and read-only SQLite could not create it); in rollback-journal mode the shared
        # lock keeps commits out while the rows and the change counter are read.
        idle_wal = _journal_tag(path) == "wal:" and not _has_companion(path)
        query = "mode=ro&immutable=1" if idle_wal else "mode=ro"
        con = sqlite3.connect(sqlite_uri(path, query), uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            con.text_factory = bytes
            con.execute("BEGIN")
            digest.update(repr(con.execute("PRAGMA user_version").fetchone()).encode())
            tag = _journal_tag(path)  # under the transaction's shared lock
            schema = con.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()
            for kind, name, sql in schema:
                digest.update(repr((kind, name, sql)).encode())
                if kind != b"table" or _VIRTUAL.match((sql or b"").decode("utf-8", "replace").lstrip()):
                    continue  # a virtual table's rows are those of its shadow tables, digested too
                for row in con.execute(f"SELECT * FROM {quote(name.decode('utf-8', 'surrogateescape'))}"):
                    digest.update(repr(row).encode())
        finally:
            con.close()
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        return f"unreadable: {sqlite_error_text(exc)}"
    return f"{tag}{digest.hexdigest()}"


def _journal_tag(path: str) -> str:
    """ "wal:", or "rollback:N:" with the header's change counter N ("" if the header cannot be read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            header = os.pread(fd, 100, 0)
        finally:
            os.close(fd)
    except OSError:
        return ""
    if len(header) < 100:
        return ""
    if header[18] == 2 and header[19] == 2:
        return "wal:"
    return f"rollback:{int.from_bytes(header[24:28], 'big')}:"


def _unchanged_while_locked(path: str, expected: str) -> bool:
    """Whether the live database the backup API holds locked (its first step done, nothing of it
    written yet) is still what `expected` describes. In rollback-journal mode that lock keeps
    readers out too: the header's change counter, which every commit raises, is compared."""
    tag = _journal_tag(path)
    if tag.startswith("rollback:"):
        return expected.startswith(tag)
    return fingerprint(path) == expected


# SQLite's result codes for a write the disk refused (SQLITE_FULL: no space; SQLITE_IOERR and its
# extended codes: an I/O error, a quota used up), as the errno the destination message knows.
_DISK_ERRORS = {sqlite3.SQLITE_FULL: errno.ENOSPC, sqlite3.SQLITE_IOERR: errno.EIO}


def apply_copy(copy: str, live: str, logical: str, expected: str = "") -> None:
    """Copy the checked restored copy into the live database through the backup API. With
    `expected` (its `fingerprint` before the safety snapshot), the live database is compared while
    the backup holds its write lock, before any page of it is written: a commit made since (in no
    snapshot) leaves it as it is (ChangedSince). The agent waits (busy timeout) as for any write."""
    if expected and fingerprint(live) != expected:
        raise ChangedSince(changed_since_text(logical))
    src = sqlite3.connect(sqlite_uri(copy, "mode=ro&immutable=1"), uri=True)
    try:
        dst = sqlite3.connect(live, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            dst.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
            compared = not expected

            def progress(_status: int, remaining: int, _total: int) -> None:
                nonlocal compared
                # After the first step the backup holds the live database's write lock (until its
                # last step commits) and has written no page to it: what is committed now is
                # what is replaced. (A one-page copy is done in one step: compared just before.)
                if not compared and remaining > 0:
                    compared = True
                    if not _unchanged_while_locked(live, expected):
                        raise ChangedSince(changed_since_text(logical))
                # Python retries a busy step forever; a writer that never lets go must not hang us.
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{logical} stayed locked by another process")

            # One page a step when compared (Python's backup cannot change the step's size).
            src.backup(dst, pages=1 if expected else -1, progress=progress)
        finally:
            dst.close()
    except ChangedSince:
        raise
    except (sqlite3.Error, TimeoutError) as exc:
        failed = _DISK_ERRORS.get(getattr(exc, "sqlite_errorcode", 0) & 0xFF)
        if failed is not None:  # the destination's disk, full or failing: the caller names it
            raise OSError(failed, f"{os.strerror(failed)} ({exc})") from exc
        raise RestoreError(
            f"cannot write the restored {logical} into the live database ({exc}); it is unchanged — stop the "
            "processes that use it (or configure gateway.stop) and restore again"
        ) from exc
    finally:
        src.close()


@dataclass(frozen=True)
class LiveCheck:
    integrity: str
    fts: dict[str, str]  # FTS5 table -> "ok" or the problem


def check_live(path: str) -> LiveCheck:
    """`PRAGMA integrity_check`, then FTS5's own `integrity-check` on every FTS5 table."""
    try:
        con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        return LiveCheck(f"cannot be checked: {exc}", {})
    try:
        rows = [str(r[0]) for r in con.execute("PRAGMA integrity_check")]
        integrity = "ok" if rows == ["ok"] else "; ".join(rows[:5])
        fts: dict[str, str] = {}
        for name, sql in con.execute("SELECT name, sql FROM sqlite_master WHERE type='table'").fetchall():
            text = (sql or "").lstrip()
            using = virtual_table(text)
            if using is None or using[0] != "fts5":
                continue
            q = quote(name)
            try:
                con.execute(f"INSERT INTO {q}({q}) VALUES('integrity-check')")
                fts[name] = "ok"
            except sqlite3.Error as exc:
                fts[name] = str(exc)
        con.commit()
    except (sqlite3.Error, UnicodeDecodeError) as exc:  # a damaged schema's names need not be UTF-8
        return LiveCheck(f"cannot be checked: {sqlite_error_text(exc)}", {})
    finally:
        con.close()
    return LiveCheck(integrity, fts)


def remove_companions(dir_fd: int, name: str) -> None:
    """Stale -wal/-shm/-journal belong to the file being replaced: SQLite would apply them to the new one."""
    for suffix in COMPANIONS:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name + suffix, dir_fd=dir_fd)


# -- dry run: row deltas -----------------------------------------------------------------------


@dataclass(frozen=True)
class TableDelta:
    added: int
    removed: int
    changed: int

    def to_json(self) -> dict[str, int]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed}


def row_deltas(snapshot_copy: str, live: str) -> dict[str, TableDelta]:
    """Rows the restore would add, remove and change per table, matched by primary key (or rowid).

    Virtual tables and their shadow tables are left out: they are indexes of real tables. Both
    databases are only read; the live one is opened `immutable` when no journal or WAL is beside it
    (a read-only open of a WAL database would otherwise leave -wal/-shm files behind).
    """
    con = sqlite3.connect(sqlite_uri(snapshot_copy, "mode=ro&immutable=1"), uri=True)
    try:
        # A companion planted that is not a file (a FIFO SQLite would block on) is not read.
        planted = planted_companion(os.path.realpath(live)) is not None
        query = "mode=ro" if _has_companion(live) and not planted else "mode=ro&immutable=1"
        con.execute("ATTACH DATABASE ? AS live", (sqlite_uri(live, query),))
        snap_tables = _tables(con, "main")
        live_tables = _tables(con, "live")
        out: dict[str, TableDelta] = {}
        for name in sorted(set(snap_tables) | set(live_tables)):
            q = quote(name)
            if name not in live_tables:
                out[name] = TableDelta(_count(con, f"main.{q}"), 0, 0)
            elif name not in snap_tables:
                out[name] = TableDelta(0, _count(con, f"live.{q}"), 0)
            else:
                out[name] = _delta(con, name, snap_tables[name], live_tables[name])
        return out
    finally:
        con.close()


def _tables(con: sqlite3.Connection, schema: str) -> dict[str, tuple[list[str], list[str]]]:
    """Real tables of `schema`: name -> (columns, key columns; empty = rowid)."""
    rows = con.execute(
        f"SELECT name, sql FROM {schema}.sqlite_master WHERE type='table' AND substr(name, 1, 7) <> 'sqlite_'"
    ).fetchall()
    virtual = [n for n, sql in rows if _VIRTUAL.match((sql or "").lstrip())]
    out: dict[str, tuple[list[str], list[str]]] = {}
    for name, sql in rows:
        if name in virtual or any(name.startswith(v + "_") for v in virtual):
            continue
        info = con.execute(f"PRAGMA {schema}.table_info({quote(name)})").fetchall()
        columns = [str(r[1]) for r in info]
        pk = [str(r[1]) for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
        if not _WITHOUT_ROWID.search(sql or "") and len(pk) == 1 and _is_rowid_alias(info, pk[0]):
            pk = []  # INTEGER PRIMARY KEY is the rowid itself
        out[name] = (columns, pk)
    return out


def _is_rowid_alias(info: list[tuple[object, ...]], column: str) -> bool:
    return any(str(r[1]) == column and str(r[2]).upper() == "INTEGER" for r in info)


def _delta(
    con: sqlite3.Connection, name: str, snap: tuple[list[str], list[str]], live: tuple[list[str], list[str]]
) -> TableDelta:
    q = quote(name)
    keys = snap[1] if snap[1] == live[1] else []
    on = " AND ".join(f"l.{quote(k)} IS s.{quote(k)}" for k in keys) if keys else "l.rowid = s.rowid"
    common = [c for c in snap[0] if c in live[0] and c not in keys]
    added = _scalar(
        con, f"SELECT count(*) FROM main.{q} AS s WHERE NOT EXISTS (SELECT 1 FROM live.{q} AS l WHERE {on})"
    )
    removed = _scalar(
        con, f"SELECT count(*) FROM live.{q} AS l WHERE NOT EXISTS (SELECT 1 FROM main.{q} AS s WHERE {on})"
    )
    changed = 0
    if common or snap[0] != live[0]:
        differs = " OR ".join(f"s.{quote(c)} IS NOT l.{quote(c)}" for c in common) or "1"
        if snap[0] != live[0]:
            differs = "1"  # other columns: every matched row changes
        changed = _scalar(con, f"SELECT count(*) FROM main.{q} AS s JOIN live.{q} AS l ON {on} WHERE {differs}")
    return TableDelta(added, removed, changed)


def _count(con: sqlite3.Connection, table: str) -> int:
    return _scalar(con, f"SELECT count(*) FROM {table}")


def _scalar(con: sqlite3.Connection, sql: str) -> int:
    return int(con.execute(sql).fetchone()[0])
