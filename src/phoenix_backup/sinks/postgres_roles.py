"""The journal of the roles a whole-database PostgreSQL restore or drill creates from `globals.sql`,
read again by the next restore or drill against the same server when the run was killed.

A failed restore, and a drill once its scratch database is dropped, drop the roles they created
(sinks/postgres.py `_drop_created_roles`). A run that is SIGKILLed, or whose machine loses power,
cannot: its roles (with LOGIN and the snapshot's passwords) would stay on the server for ever. So
before its first role, a run starts a journal, `pg-roles-journal/<pid>-<start>-<random>` in the
cache folder, whose first line names the process (as sinks/leftovers.py's) and the server (its
`system_identifier`, never its address: another cluster on the same port is another server). Each
role is created in a transaction that writes its line (name and oid) to the journal, fsynced,
before it commits: a role the journal does not name was not created by the run, and one it names
is that run's only while it has that oid (a role the user created again since has another). Later
lines record the memberships the run gave, the database it creates (a drill's scratch database, or
a restore's new one: named before CREATE DATABASE, its oid noted at once after) and
the moment pg_restore starts (the server's transaction id then, and its database's oid: a
database renamed since is still found). A run that ends but could not
drop its roles or its new database (the server went away) keeps its journal, marked as ended.

The next restore or drill against that server reads the journals of runs that ended so or
provably no longer run (`ProcessTag.gone`). A drill's scratch database is dropped, then its roles.
A restore's new database is dropped only while it has the oid recorded, no session is connected
to it and its pg_restore never committed; one whose pg_restore committed is complete and stays
(sinks/postgres.py `_killed_restores_database`). A restore's roles
are kept when its pg_restore may have committed (a table of its database was written by a
transaction that began after the journal's mark: the restored objects depend on those roles);
otherwise each is dropped as after a failed restore, only while it has the oid recorded, no
membership was added to it since, no session is logged in as it, and nothing depends on it (DROP
ROLE refuses a role that owns objects or holds privileges). A journal whose server cannot be
reached is kept for the next run, so is one with a damaged line before its last (a line the kill
cut short is the last, and what it announced never happened): it drops nothing. A run that ends
deletes its journal.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phoenix_backup.dirs import make_dirs
from phoenix_backup.errors import PhoenixError
from phoenix_backup.repo.locks import ProcessTag, own_start_time
from phoenix_backup.sinks import leftovers
from phoenix_backup.storage.local import os_error

# A journal line is a small JSON object; a longer one is not Phoenix's.
_MAX_LINE = 1024 * 1024


def journal_dir() -> Path:
    from phoenix_backup.repo.cache import cache_root  # not at import (as sinks/leftovers.py)

    return cache_root() / "pg-roles-journal"


class RolesJournal:
    """The roles one run creates on the server `server` (its system identifier, set once known;
    none: no journal is kept), recorded before each commits. Nothing is written until the first
    `note`; `close` deletes it, unless `keep` was called (what it names is still to be dropped)."""

    def __init__(self, notice: Callable[[str], None] | None = None) -> None:
        self.server: str | None = None
        self.name = f"{os.getpid()}-{own_start_time()}-{os.urandom(4).hex()}"
        self.path = journal_dir() / self.name
        self._notice = notice or (lambda _msg: None)
        self._dir: int | None = None
        self._off = False
        self._keep = False

    @property
    def started(self) -> bool:
        return self._dir is not None

    def keep(self) -> None:
        self._keep = True

    def note(self, line: dict[str, Any]) -> None:
        """Append `line`, fsynced, before the caller does what it announces."""
        if self._off or not self.server:
            return
        new = self._dir is None
        if new:
            with contextlib.suppress(OSError):
                make_dirs(self.path.parent)
            self._dir = leftovers.own_folder(self.path.parent)
            if self._dir is None:
                self._off = True
                self._notice(
                    f"warning: {self.path.parent} cannot be created, or is not a folder of this user that only it can "
                    "write, so this restore keeps no journal of the roles it creates: were it killed, they would "
                    "stay on the server; set PHX_CACHE_DIR to a writable folder of your own"
                )
                return
        assert self._dir is not None
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            with os.fdopen(os.open(self.name, flags, 0o600, dir_fd=self._dir), "a", encoding="utf-8") as f:
                if new:
                    me = ProcessTag.current()
                    head = {"host": me.host, "bootId": me.boot_id, "pidNamespace": me.pid_ns}
                    head |= {"timeNamespace": me.time_ns, "pid": me.pid, "start": me.start, "server": self.server}
                    f.write(json.dumps(head) + "\n")
                f.write(json.dumps(line) + "\n")
                f.flush()
                os.fsync(f.fileno())
            if new:
                os.fsync(self._dir)
        except OSError as exc:
            what = f"writing the journal of created roles {self.path} (set PHX_CACHE_DIR to keep it on another disk)"
            raise os_error(exc, what, destination=self.path) from exc

    def close(self) -> None:
        if self._dir is not None:
            if self._keep:
                # This run is over: the next one may drop what it names, even while this
                # process runs on (the Python API).
                with contextlib.suppress(PhoenixError):
                    self.note({"ended": True})
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.name, dir_fd=self._dir)
            os.close(self._dir)
            self._dir = None


@dataclass
class KilledRun:
    """What one journal of a killed run says: roles (name to oid), the memberships it gave (None
    when it was killed before it recorded them), a drill's scratch database, pg_restore's mark."""

    name: str
    roles: dict[str, int] = field(default_factory=dict)
    memberships: set[tuple[int, int]] | None = None
    drill: str | None = None
    database: str | None = None
    database_oid: int | None = None
    restoring: int | None = None
    ended: bool = False
    # The database a restore was creating (named before CREATE DATABASE), and the oid it got
    # (noted at once after it; a run killed in between left a database no journal can prove its).
    creating: str | None = None
    created_oid: int | None = None
    server: str = ""
    damaged: bool = False  # a line before the last is not the run's: nothing it names is dropped

    @property
    def left_database(self) -> str | None:
        """The database the run created (a drill's scratch database, or a restore's new one)."""
        return self.drill or self.creating


def drop_statement(kind: str, name: str) -> str:
    """`DROP DATABASE "name";` (`kind` DATABASE or ROLE), the name quoted as the server reads it."""
    from psycopg import sql

    return f"DROP {kind} {sql.Identifier(name).as_string(None)};"


def killed_runs(server: str) -> Iterator[tuple[KilledRun, Callable[[], None]]]:
    """The journals of runs against `server` that no longer run, each with the function that
    deletes it (called once it is handled). Undecodable or foreign journals are skipped; one that
    cannot be decoded at all is removed once a minute old (as sinks/leftovers.py's)."""
    folder = leftovers.own_folder(journal_dir())
    if folder is None:
        return
    try:
        for name in sorted(os.listdir(folder)):
            run = _read(folder, name, server)
            if run is not None and not run.damaged:
                yield run, functools.partial(_unlink, folder, name)
    finally:
        os.close(folder)


def kept_runs() -> list[KilledRun]:
    """The journals of runs against any server that no longer run, damaged ones too (`damaged`),
    read only: nothing is deleted or written (for `phx doctor`)."""
    folder = leftovers.own_folder(journal_dir())
    if folder is None:
        return []
    try:
        runs = [_read(folder, name, None, tidy=False) for name in sorted(os.listdir(folder))]
    except OSError:
        runs = []
    finally:
        os.close(folder)
    return [run for run in runs if run is not None]


def _unlink(folder: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=folder)


def _read(folder: int, name: str, server: str | None, *, tidy: bool = True) -> KilledRun | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    except OSError:
        return None
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        regular = False
    if not regular:
        # A folder of that name (reading it ended the restore as an internal error): it names
        # nothing this run may drop.
        os.close(fd)
        return None
    try:
        return _read_open(fd, folder, name, server, tidy=tidy)
    except OSError:
        return None  # unreadable (an I/O error): kept for a later run


def _oid(value: Any) -> int:
    if type(value) is not int or not 0 < value < 2**32:
        raise ValueError(f"not an oid: {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"not a name: {value!r}")
    value.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate
    return value


def _read_open(fd: int, folder: int, name: str, server: str | None, *, tidy: bool) -> KilledRun | None:
    """The journal `name` of a run against `server` (None: any) that no longer runs, else None;
    with `tidy`, one that cannot be decoded is removed once a minute old."""
    with os.fdopen(fd, "r", encoding="utf-8", errors="surrogateescape") as f:
        first = f.readline(_MAX_LINE)
        head = leftovers.journal_header(first)
        if head is None:
            if tidy and time.time() - os.fstat(fd).st_mtime > 60:
                _unlink(folder, name)
            return None
        try:
            its = json.loads(first).get("server")
        except (ValueError, RecursionError, AttributeError):
            return None
        if not isinstance(its, str) or not its or (server is not None and its != server):
            return None
        run = KilledRun(name, server=its)
        torn = False
        while line := f.readline(_MAX_LINE):
            if torn:
                # A line that is not the run's, and more after it: not a line the kill cut short
                # (whose step never happened), so what this journal says cannot be trusted, a
                # pg_restore mark may be the one lost. It is kept, and nothing it names dropped.
                run.damaged = True
                break
            try:
                _parse(json.loads(line), run)
            except (ValueError, RecursionError, TypeError, AttributeError, OverflowError, KeyError):
                # An infinite number or a name that is no text (a lone surrogate) ended the
                # restore as an internal error.
                torn = True
        return run if run.ended or head.gone(reboot_proves=True) else None


def _parse(item: Any, run: KilledRun) -> None:
    """One line of the journal into `run`, each value as the run wrote it, else ValueError."""
    if not isinstance(item, dict):
        raise ValueError("not a journal line")
    if "role" in item:
        run.roles[_text(item["role"])] = _oid(item["oid"])
    elif "memberships" in item:
        run.memberships = {(_oid(a), _oid(b)) for a, b in item["memberships"]}
    elif "drill" in item:
        run.drill = _text(item["drill"])
    elif "creating" in item:
        run.creating = _text(item["creating"])
    elif "created" in item:
        if _text(item["created"]) != run.left_database:
            raise ValueError("not the database the run was creating")
        run.created_oid = _oid(item["oid"])
    elif "restoring" in item:
        if type(item["restoring"]) is not int or not 0 <= item["restoring"] < 2**63:
            raise ValueError("not a transaction id")
        db_oid = None if item.get("databaseOid") is None else _oid(item["databaseOid"])
        run.restoring, run.database = item["restoring"], _text(item["database"])
        run.database_oid = db_oid
    elif item.get("ended") is True:
        run.ended = True
    else:
        raise ValueError("not a journal line")
