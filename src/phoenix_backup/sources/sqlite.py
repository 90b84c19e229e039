"""Consistent SQLite copies: the online backup API in one step, then checks on the copy.

(A backup reads databases in place instead, see `sqlite_capture`; the copy serves exports. The
checks run on either: `check_connection` takes any connection that reads the state to check.)

The copy is taken with `backup(pages=-1)`, which reads every page inside one read transaction, so
it is consistent even while the agent writes (WAL mode included). The live `.db`, `-wal` and
`-shm` are never read as plain files. Checks run on the copy opened `immutable=1`, which never
creates a `-wal` beside it and never changes its bytes.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phoenix_backup.errors import SourceError
from phoenix_backup.repo.snapshot import NOT_CHECKED
from phoenix_backup.sources.files import COMPANIONS, open_regular
from phoenix_backup.sql import quote, sqlite_error_text, virtual_table

BUSY_TIMEOUT_MS = 30_000
# Room kept free beyond the copy itself, so a backup never fills the cache's disk to the brim.
FREE_SPACE_MARGIN = 64 * 1024 * 1024


@dataclass(frozen=True)
class SourceStat:
    """What identifies a database's state on disk, for the skip-if-unchanged shortcut."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    wal_size: int
    wal_mtime_ns: int
    wal_ctime_ns: int
    wal_inode: int
    wal_header: str  # hex of the WAL header (checkpoint sequence and salts change on every reset)

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "mtimeNs": self.mtime_ns,
            "ctimeNs": self.ctime_ns,
            "inode": self.inode,
            "walSize": self.wal_size,
            "walMtimeNs": self.wal_mtime_ns,
            "walCtimeNs": self.wal_ctime_ns,
            "walInode": self.wal_inode,
            "walHeader": self.wal_header,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SourceStat:
        return cls(
            int(d["size"]),
            int(d["mtimeNs"]),
            int(d["ctimeNs"]),
            int(d["inode"]),
            int(d["walSize"]),
            int(d["walMtimeNs"]),
            int(d["walCtimeNs"]),
            int(d["walInode"]),
            str(d["walHeader"]),
        )

    def latest_change_ns(self) -> int:
        return max(self.mtime_ns, self.ctime_ns, self.wal_mtime_ns, self.wal_ctime_ns)


def planted_companion(real: str | Path) -> str | None:
    """Why the database whose resolved path is `real` must not be opened, or None: a `-wal`,
    `-shm` or `-journal` beside it that is not a regular file (a FIFO, a device, a folder, a
    symbolic link). SQLite never makes one; someone who can write the folder planted it, and
    SQLite would block for ever opening a FIFO (or read through the link)."""
    for suffix in COMPANIONS:
        try:
            mode = os.lstat(f"{real}{suffix}").st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"{real}{suffix} cannot be examined ({exc.strerror or exc})"
        if not stat.S_ISREG(mode):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
            return (
                f"{real}{suffix} is {kind}, which SQLite never makes: the database is not opened; "
                "remove it and try again"
            )
    return _planted_super_journal(f"{real}-journal")


# A rollback journal's last bytes when it names a super-journal (SQLite's pager.c): the name's
# length, its checksum, then the journal's magic. SQLite reads at most a path's length of name.
_JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")
_MAX_SUPER_NAME = 512
# The name SQLite gives a super-journal: its main database's path, "-mj" and 9 hex digits.
_SUPER_JOURNAL_NAME = re.compile(rb"-mj[0-9A-F]{6}9[0-9A-F]{2}\Z")


def _planted_super_journal(journal: str) -> str | None:
    """Why a regular `-journal` must not be rolled back, or None: it names a super-journal that
    exists and is not one SQLite made. A connection that may write rolls a hot journal back, then
    opens the super-journal it names (for ever on a FIFO) and deletes it when no journal it lists
    points back (any file this user may delete, named by whoever wrote the journal)."""
    try:
        fd = os.open(journal, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{journal} cannot be examined ({exc.strerror or exc})"
    try:
        size = os.fstat(fd).st_size
        tail = os.pread(fd, 16, size - 16) if size >= 16 else b""
        length = int.from_bytes(tail[:4], "big") if len(tail) == 16 else 0
        if tail[8:] != _JOURNAL_MAGIC or not 0 < length <= min(_MAX_SUPER_NAME, size - 16):
            return None
        name = os.pread(fd, length, size - 16 - length).split(b"\0", 1)[0]
    except OSError as exc:
        return f"{journal} cannot be examined ({exc.strerror or exc})"
    finally:
        os.close(fd)
    try:
        mode = os.stat(name).st_mode  # SQLite follows a link there
    except FileNotFoundError:
        return None  # SQLite neither opens nor deletes a super-journal that does not exist
    except OSError as exc:
        return f"{journal} names a super-journal that cannot be examined ({exc.strerror or exc})"
    if stat.S_ISREG(mode) and _SUPER_JOURNAL_NAME.search(name):
        return None
    shown = os.fsdecode(name)
    return (
        f"{journal} names {shown!r} as its super-journal, which SQLite never made (rolling the journal back "
        "would open that file, and delete it): the database is not opened; check that file, remove the "
        "journal and try again"
    )


def source_stat(path: Path) -> SourceStat:
    st = os.stat(path)
    real = os.path.realpath(path)
    problem = planted_companion(real)
    if problem is not None:
        raise SourceError(problem)
    wal = real + "-wal"
    try:
        opened = open_regular(wal, follow_links=False)  # never a FIFO's open, which blocks
    except FileNotFoundError:
        header, w = "", (0, 0, 0, 0)
    except OSError as exc:
        raise SourceError(f"{wal} cannot be read ({exc.strerror or exc})") from exc
    else:
        if opened is None:
            raise SourceError(f"{wal} is not a regular file, which SQLite never makes; remove it and back up again")
        fd, wst = opened
        with os.fdopen(fd, "rb") as f:
            header = f.read(32).hex()
        w = (wst.st_size, wst.st_mtime_ns, wst.st_ctime_ns, wst.st_ino)
    return SourceStat(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, *w, header)


@dataclass(frozen=True)
class DatabaseCheck:
    integrity: str  # "ok" or the first problems
    tables: dict[str, int]
    virtual_tables: dict[str, str]
    version: str


def page_size_of(copy: Path) -> int:
    with open(copy, "rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        raise SourceError(f"{copy} is not an SQLite database")
    size = int.from_bytes(header[16:18], "big")
    return 65536 if size == 1 else size


def sqlite_uri(path: Path | str, query: str) -> str:
    """A `file:` URI for `path`; `#`, `?` and `%` in names are escaped (else SQLite would open
    another file, or create an empty one)."""
    return f"{Path(path).absolute().as_uri()}?{query}"


def check_database(copy: Path) -> DatabaseCheck:
    """`PRAGMA integrity_check` and row counts on a copy, without modifying it."""
    con = sqlite3.connect(sqlite_uri(copy, "mode=ro&immutable=1"), uri=True)
    try:
        return check_connection(con)
    finally:
        con.close()


def check_connection(con: sqlite3.Connection, *, full: bool = True) -> DatabaseCheck:
    """`PRAGMA integrity_check` and row counts of the state `con` reads (a copy, or the read
    transaction a capture holds on the live database). Without `full`, only the row counts (a
    few milliseconds, against about 0.8 s of integrity_check for the medium sample's stores):
    the integrity is NOT_CHECKED unless a table cannot even be read."""
    try:
        integrity = NOT_CHECKED
        if full:
            try:
                rows = con.execute("PRAGMA integrity_check").fetchall()
                problems = [str(r[0]) for r in rows]
                integrity = "ok" if problems == ["ok"] else "; ".join(problems[:5])
            except (sqlite3.Error, UnicodeDecodeError) as exc:  # a damaged schema's names need not be UTF-8
                integrity = f"integrity_check failed: {sqlite_error_text(exc)}"
        tables, virtual, unreadable = count_rows(con)
        if unreadable:
            problem = f"tables that cannot be read: {', '.join(unreadable)}"
            integrity = problem if integrity in ("ok", NOT_CHECKED) else f"{integrity}; {problem}"
        version = str(con.execute("SELECT sqlite_version()").fetchone()[0])
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read a database to check it: {sqlite_error_text(exc)}") from exc
    return DatabaseCheck(integrity, tables, virtual, version)


def header_problems(page1: bytes, page_count: int) -> str:
    """What is wrong with a database's header (its first 100 bytes) for an image of `page_count`
    pages, "" when nothing: the cheap sanity check of an image that gets no full integrity_check.
    The size in the header counts only when it is valid for the last change (fileformat2.html,
    "in-header database size")."""
    if len(page1) < 100 or not page1.startswith(b"SQLite format 3\0"):
        return "the first page is not an SQLite header"
    raw_size = int.from_bytes(page1[16:18], "big")
    page_size = 65536 if raw_size == 1 else raw_size
    if page_size < 512 or page_size & (page_size - 1) or len(page1) != page_size:
        return f"the header's page size ({raw_size}) is not the database's ({len(page1)})"
    counter, valid_for = page1[24:28], page1[92:96]
    size = int.from_bytes(page1[28:32], "big")
    if counter == valid_for and size and size != page_count:
        return f"the header says {size} pages, the database has {page_count}"
    trunk, free = int.from_bytes(page1[32:36], "big"), int.from_bytes(page1[36:40], "big")
    if trunk > page_count or free >= page_count or (free == 0) != (trunk == 0):
        return f"the header's freelist (trunk page {trunk}, {free} pages) does not fit {page_count} pages"
    return ""


def count_rows(con: sqlite3.Connection) -> tuple[dict[str, int], dict[str, str], list[str]]:
    """Rows per real table, virtual tables with their module, and tables that cannot be read.

    Virtual tables (FTS5, vec0) are never queried, since their module may be missing; their
    shadow tables are real tables and are counted like any other. A damaged table is reported,
    not raised: the backup still keeps the database, marked with what is wrong.
    """
    tables: dict[str, int] = {}
    virtual: dict[str, str] = {}
    unreadable: list[str] = []
    rows = con.execute(
        "SELECT name, sql FROM sqlite_master WHERE type='table' AND substr(name, 1, 7) <> 'sqlite_' ORDER BY name"
    ).fetchall()
    for name, sql in rows:
        text = (sql or "").lstrip()
        using = virtual_table(text)
        if using is not None:
            virtual[name] = using[0]
            continue
        quoted = quote(name)
        try:
            tables[name] = int(con.execute(f"SELECT COUNT(*) FROM {quoted}").fetchone()[0])
        except sqlite3.DatabaseError:
            unreadable.append(name)
    return tables, virtual, unreadable
