"""PostgreSQL: a consistent `pg_dump`, or one agent's rows, read as named streams.

Whole database (`databases.postgres[]` without `agentId`):

- one connection opens a REPEATABLE READ transaction and exports its snapshot; `pg_dump
  --snapshot` dumps exactly that snapshot while the same transaction counts every table's rows,
  so the counts in the manifest are the rows in the dump;
- the dump is custom format without compression (`-Fc -Z0`), streamed from pg_dump's stdout:
  no temporary copy, and the repository's content-defined chunking sees the table data as it is,
  so unchanged rows deduplicate from day to day;
- `pg_dumpall --globals-only` (roles, memberships, tablespaces) is kept beside it;
- `manifest.json` records the server version, extensions, row counts and how it was made.

Agent-scoped (`agentId` set): every table with an `agent_id` column contributes that agent's rows
(`COPY (SELECT … WHERE agent_id = …) TO STDOUT` as CSV with a header, ordered by primary key),
read in one REPEATABLE READ transaction with `app.agent_id` set so row-level security applies.

pg_dump must be at least the server's major version; it is looked for at `pgDump`, on PATH and in
the usual install places, and the newest one found is used.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from phoenix_backup.config.model import PostgresDb
from phoenix_backup.errors import SourceError, ToolMissing
from phoenix_backup.redaction import redact_quoted
from phoenix_backup.shell import StopScope, child_group
from phoenix_backup.sources.streams import Stream, bytes_stream, iter_stream

MANIFEST = "manifest.json"
DUMP = "database.dump"
GLOBALS = "globals.sql"
ROWS_DIR = "rows"
MANIFEST_FORMAT = "phoenix-postgres"
MANIFEST_VERSION = 1
CONNECT_TIMEOUT = 10
# How long a read waits for a lock another session holds (a LOCK TABLE, an ALTER TABLE, a VACUUM
# FULL): pg_dump's --lock-wait-timeout and the lock_timeout of the reads over phx's own connection.
LOCK_WAIT_S = 120
# The setting ArgentOS's row-level security policies read (seed 003).
AGENT_SETTING = "app.agent_id"

# Where PostgreSQL's client programs usually live, besides PATH (Debian/Ubuntu, RHEL's PGDG
# packages, source builds, Homebrew, Postgres.app).
USUAL_PLACES = (
    "/usr/lib/postgresql/*/bin",
    "/usr/pgsql-*/bin",
    "/usr/local/pgsql/bin",
    "/usr/local/opt/postgresql@*/bin",
    "/opt/homebrew/opt/postgresql@*/bin",
    "/opt/homebrew/bin",
    "/Applications/Postgres.app/Contents/Versions/*/bin",
)

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


# -- connecting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgConn:
    """How to reach one configured database; the password never goes into a command line."""

    name: str  # the config entry's name
    conninfo: str  # libpq connection string without the password
    password: str | None
    base_env: Mapping[str, str]

    @property
    def where(self) -> str:
        d = conninfo_to_dict(self.conninfo)
        host = d.get("host") or "localhost"
        port = d.get("port") or "5432"
        return f"{host}:{port}/{d.get('dbname') or d.get('user') or ''}"

    @property
    def database(self) -> str:
        """The database this connects to (libpq's default: the user's name)."""
        d = conninfo_to_dict(self.conninfo)
        return str(d.get("dbname") or d.get("user") or os.environ.get("USER", ""))

    def connect_server(self) -> psycopg.Connection[Any]:
        """A connection to the same server for what is done outside the database itself (create
        it, check it exists): to the `postgres` maintenance database, else `template1`."""
        error: SourceError | None = None
        for maintenance in ("postgres", "template1"):
            try:
                return self.with_database(maintenance).connect()
            except SourceError as exc:
                error = error or exc
        assert error is not None
        raise error

    def with_database(self, database: str) -> PgConn:
        d = conninfo_to_dict(self.conninfo)
        d["dbname"] = database
        return PgConn(self.name, make_conninfo("", **d), self.password, self.base_env)

    def tool_env(self) -> dict[str, str]:
        """The environment for pg_dump and friends: the caller's, plus the password."""
        env = dict(self.base_env)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        env.setdefault("PGCONNECT_TIMEOUT", str(CONNECT_TIMEOUT))
        return env

    def connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self.conninfo,
                password=self.password,
                connect_timeout=CONNECT_TIMEOUT,
                autocommit=True,
                # Never a prepared statement (psycopg prepares a query run 5 times): it is state
                # of the server session, which a transaction pooler gives to other clients.
                prepare_threshold=None,
                application_name="phoenix-backup",
                # Text as str whatever the database's encoding: a SQL_ASCII database would
                # otherwise give bytes (names, the snapshot id handed to pg_dump).
                client_encoding="UTF8",
            )
        except psycopg.Error as exc:
            raise SourceError(
                f"cannot connect to PostgreSQL database `{self.name}` ({self.where}): {pg_reason(exc)}; "
                "check that the server runs and the credentials (user, passwordEnv) are right"
            ) from exc


_UNSET_PASSWORD = re.compile(r"takes its password from \$([A-Za-z_][A-Za-z0-9_]*), which is not set;")


def unset_password_variable(error: str) -> str | None:
    """The variable named by `connection_for`'s error for a `passwordEnv` that is not set, as a
    backup records it (a failed part's error); None for any other error."""
    found = _UNSET_PASSWORD.search(error)
    return found.group(1) if found else None


def connection_for(entry: PostgresDb, env: Mapping[str, str]) -> PgConn:
    """The connection of a `databases.postgres[]` entry: `dsn`, or host/port/database/user."""
    password: str | None = None
    if entry.password_env:
        password = env.get(entry.password_env)
        if password is None:
            # `unset_password_variable` reads this sentence back (doctor's fix for a partial backup).
            raise SourceError(
                f"PostgreSQL database `{entry.name}` takes its password from ${entry.password_env}, which is "
                f"not set; export {entry.password_env} before running phx"
            )
    try:
        if entry.dsn:
            params = conninfo_to_dict(entry.dsn)
            if entry.user:
                params["user"] = entry.user
            if entry.database:
                params["dbname"] = entry.database
        else:
            params = {"host": entry.host, "port": str(entry.port)}
            if entry.database:
                params["dbname"] = entry.database
            if entry.user:
                params["user"] = entry.user
    except psycopg.ProgrammingError as exc:
        # libpq quotes the part it could not parse, and that part may be the password.
        reason = redact_quoted(str(exc))
        raise SourceError(f"the dsn of PostgreSQL database `{entry.name}` is malformed ({reason}); fix it") from None
    inline = params.pop("password", None)
    if password is None and inline is not None:
        password = str(inline)
    return PgConn(entry.name, make_conninfo("", **params), password, env)


# pgbouncer's refusal of every transaction (pool_mode=statement): each read and merge is one.
_STATEMENT_POOL = "statement pooling mode"
_STATEMENT_POOL_FIX = (
    "; Phoenix reads and restores in transactions: point it at a pool in transaction or session mode, "
    "or at the server itself"
)


# A transaction pooler (pgbouncer) refuses the startup parameter `options` (PGOPTIONS) that pg_dump
# and pg_restore are given: a whole-database backup or restore needs a server session of its own.
_POOLER_REFUSAL = "unsupported startup parameter: options"


def pooler_fix(text: str, what: str) -> str:
    """`text` (a client program's last error line) followed by the cause and the fix when it is a
    connection pooler's refusal of `options`; `text` as it is otherwise. pgbouncer refuses `options`
    in session mode too: a session pool serves a whole-database entry only when it ignores it."""
    if _POOLER_REFUSAL not in text:
        return text
    return (
        f"{text} (a connection pooler such as pgbouncer is in between: a whole-database {what} needs a server "
        "session of its own; point the entry at the PostgreSQL server itself, usually port 5432, or at a pool in "
        "session mode that ignores that parameter: pgbouncer refuses it in every mode unless told "
        "`ignore_startup_parameters = options`)"
    )


# Seconds the probe's second client waits for a server session: one that waits is held by a
# session pool for the first client (no transaction pooler hands it over).
_POOL_PROBE_WAIT_S = 3
# The most clients `transaction_pooled` opens, each holding a server session for a moment (in a
# session pool, sessions its applications wait for).
_POOL_PROBE_CLIENTS = 4


def transaction_pooled(first: psycopg.Connection[Any], connect: Callable[[], psycopg.Connection[Any]]) -> bool:
    """Whether a pooler in transaction (or statement) mode stands between phx and the server: the
    server session `first` (outside a transaction) used is handed to another client (`connect`
    opens them as `first` was opened) while `first` is still connected, or `first` itself is given
    another session for its next statement, which only such a pool does (the server itself, or a
    pool in session mode, gives each client a session of its own). Through one, the plain `SET`s
    of pg_dump and pg_restore (`search_path = ''`, `row_security = off`) stay on a pooled session
    for the next client; a pooler told `ignore_startup_parameters = options` does not refuse them,
    so `pooler_fix` does not see it.

    Which idle session a pool hands out is its choice (pgbouncer: the one used last, or the oldest
    with `server_round_robin`), so the other clients are opened one by one, each holding its
    session in an open transaction, until one is handed `first`'s session (pooled), one is given a
    session started after the probe began (no idle session was left, and `first`'s was not among
    them: the server itself, or a session pool), one waits for a session (a full session pool), or
    `_POOL_PROBE_CLIENTS` were opened (a pool handing out its idle sessions in no order, with more
    of them than that, may then go unseen). The server alone costs one client, as before."""
    # The time as microseconds since the epoch: a timestamp would be parsed by the session's
    # DateStyle, which psycopg cannot read in every form.
    row = first.execute("SELECT pg_backend_pid(), (extract(epoch FROM clock_timestamp()) * 1e6)::bigint").fetchone()
    assert row is not None
    pid, began = row
    again = first.execute("SELECT pg_backend_pid()").fetchone()
    if again is not None and again[0] != pid:
        return True  # `first` was given another session between two statements
    held: list[psycopg.Connection[Any]] = []
    query = (
        "SELECT pg_backend_pid(), extract(epoch FROM backend_start) * 1e6 >= %s "
        "FROM pg_stat_activity WHERE pid = pg_backend_pid()"
    )
    try:
        for _ in range(_POOL_PROBE_CLIENTS):
            other = connect()
            held.append(other)
            # Hung up, not cancelled: pgbouncer does not end a client's wait for a server session on a cancel.
            timer = threading.Timer(_POOL_PROBE_WAIT_S, hang_up, (other,))
            timer.start()
            try:
                other.execute("BEGIN")
                got = other.execute(query, (began,)).fetchone()
            except psycopg.Error as exc:
                if _STATEMENT_POOL in pg_reason(exc):
                    raise  # a pool in statement mode: its words, and the fix (`pg_reason`)
                return False  # it waited for a session of its own: a session pool
            finally:
                timer.cancel()
            if got is None or got[0] == pid:
                return got is not None
            if got[1]:
                return False  # a session started for it: `first`'s was not idle in a pool
        return False
    finally:
        for other in held:
            with contextlib.suppress(psycopg.Error):
                other.execute("ROLLBACK")  # its session goes back to the pool (closed in a transaction, it ends)
            with contextlib.suppress(psycopg.Error):
                other.close()


def transaction_pool_error(what: str) -> str:
    return (
        f"a connection pooler in transaction mode (pgbouncer pool_mode = transaction) is in between: a whole-database "
        f"{what} needs a server session of its own (pg_dump's and pg_restore's session settings, search_path = '' "
        "and row_security = off, would stay on a pooled session for its next client); point the entry at the "
        "PostgreSQL server itself, usually port 5432, or at a pool in session mode (pool_mode = session, with "
        "ignore_startup_parameters = options)"
    )


def pg_reason(exc: BaseException) -> str:
    """The server's or libpq's own words, on one line, without psycopg's preamble (and, where
    they do not say it, what to do about a pooler in statement mode)."""
    reason = _pg_words(exc)
    return reason + _STATEMENT_POOL_FIX if _STATEMENT_POOL in reason else reason


def _pg_words(exc: BaseException) -> str:
    text = str(exc).strip()
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if primary:
        return str(primary)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "FATAL:" in ln:
            return ln.split("FATAL:", 1)[1].strip()
    last = lines[-1] if lines else type(exc).__name__
    return re.sub(r"^connection (failed|is bad):\s*", "", last)


def server_version(con: psycopg.Connection[Any]) -> tuple[str, int]:
    row = con.execute("SELECT current_setting('server_version'), current_setting('server_version_num')::int").fetchone()
    assert row is not None
    return str(row[0]).split()[0], int(row[1])


def major_of_num(num: int) -> tuple[int, ...]:
    """Major version from server_version_num: 180006 -> (18,), 90624 -> (9, 6)."""
    return (num // 10000,) if num >= 100000 else (num // 10000, num // 100 % 100)


def major_text(major: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in major)


# -- finding pg_dump -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    path: Path
    version: str  # e.g. "18.6"
    major: tuple[int, ...]

    def sibling(self, name: str) -> Path | None:
        """pg_restore, pg_dumpall, psql of the same installation."""
        p = self.path.parent / name
        return p if p.exists() and os.access(p, os.X_OK) else None


def tool_version(path: Path, env: Mapping[str, str] | None = None) -> Tool | None:
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=30, check=False, env=env
        ).stdout
    except (OSError, subprocess.TimeoutExpired):  # not a tool that answers: looked for elsewhere, or named as missing
        return None
    m = _VERSION.search(out)
    if m is None:
        return None
    first, second = int(m.group(1)), int(m.group(2) or 0)
    major = (first,) if first >= 10 else (first, second)
    version = f"{first}.{second}" if m.group(2) else str(first)
    return Tool(path, version, major)


def _candidates(name: str, env: Mapping[str, str]) -> list[Path]:
    found: list[Path] = []
    on_path = shutil.which(name, path=env.get("PATH", os.defpath))
    if on_path:
        found.append(Path(on_path))
    for pattern in USUAL_PLACES:
        for folder in sorted(glob.glob(pattern)):
            p = Path(folder) / name
            if p.exists() and os.access(p, os.X_OK) and p not in found:
                found.append(p)
    return found


def find_pg_tool(
    name: str, entry_name: str, server_major: tuple[int, ...], env: Mapping[str, str], configured: Path | None
) -> Tool:
    """A `name` (pg_dump, pg_restore) of at least the server's major version, or a clear error."""
    need = major_text(server_major)
    if configured is not None:
        path = Path(configured) if os.sep in str(configured) else None
        if path is None:
            which = shutil.which(str(configured), path=env.get("PATH", os.defpath))
            path = Path(which) if which else None
        if path is None or not path.exists():
            raise ToolMissing(
                f"{name} for PostgreSQL database `{entry_name}`: {configured}: No such file or directory; "
                f"install the PostgreSQL {need} client tools or fix databases.postgres[].pgDump"
            )
        tool = tool_version(path)
        if tool is None:
            raise ToolMissing(
                f"{path} (databases.postgres[].pgDump of `{entry_name}`) does not run as {name}; "
                f"point pgDump at the {name} of PostgreSQL {need} or newer"
            )
        if tool.major < server_major:
            raise ToolMissing(_too_old(name, entry_name, tool, need))
        return tool
    tools = [t for t in (tool_version(p) for p in _candidates(name, env)) if t is not None]
    if not tools:
        raise ToolMissing(
            f"{name}: No such file or directory (needed for PostgreSQL database `{entry_name}`); install the "
            f"PostgreSQL {need} client tools (e.g. apt install postgresql-client-{need}, brew install "
            f"postgresql@{need}) or set databases.postgres[].pgDump to its path"
        )
    best = max(tools, key=lambda t: t.major)
    if best.major < server_major:
        raise ToolMissing(_too_old(name, entry_name, best, need))
    return best


def _too_old(name: str, entry_name: str, tool: Tool, need: str) -> str:
    return (
        f"{name} {tool.version} ({tool.path}) is older than the server of PostgreSQL database `{entry_name}` "
        f"(PostgreSQL {need}) and cannot dump it; install the PostgreSQL {need} client tools (e.g. apt install "
        f"postgresql-client-{need}) or set databases.postgres[].pgDump to a pg_dump of version {need} or newer"
    )


# -- what a database holds -----------------------------------------------------------------------


def extensions(con: psycopg.Connection[Any]) -> dict[str, str]:
    return {str(n): str(v) for n, v in con.execute("SELECT extname, extversion FROM pg_extension ORDER BY 1")}


def user_tables(con: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(schema, table) of every ordinary table pg_dump dumps the data of (extension members aside)."""
    rows = con.execute(
        """
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg_temp%%'
          AND n.nspname NOT LIKE 'pg_toast_temp%%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                          AND d.objid = c.oid AND d.deptype = 'e')
        ORDER BY 1, 2
        """,
        (list(_SYSTEM_SCHEMAS),),
    ).fetchall()
    return [(str(s), str(t)) for s, t in rows]


def database_settings(con: psycopg.Connection[Any]) -> dict[str, str]:
    """The current database's owner, encoding and locale (with its provider, PostgreSQL 15+:
    `icu` or, 17+, `builtin`; libc otherwise): what CREATE DATABASE needs to make it again as it
    was."""
    row = con.execute(
        """
        SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype,
               coalesce(to_jsonb(d) ->> 'datlocprovider', 'c'),
               coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale', '')
        FROM pg_database d WHERE datname = current_database()
        """
    ).fetchone()
    if row is None:
        return {}
    provider = {"i": "icu", "b": "builtin"}.get(str(row[4]), "libc")
    out = {"owner": str(row[0]), "encoding": str(row[1]), "collate": str(row[2]), "ctype": str(row[3])}
    if provider != "libc" and row[5]:
        out |= {"provider": provider, "locale": str(row[5])}
    return out


def table_key(schema: str, table: str) -> str:
    """A table's key in a manifest's row counts: `schema.table`, a part holding `.` or `"` quoted
    as SQL quotes it (`"a.b".c`, `a."b.c"`), so two tables never share one key (both were `a.b.c`,
    and the count of one was never checked)."""

    def part(name: str) -> str:
        return '"' + name.replace('"', '""') + '"' if "." in name or '"' in name else name

    return f"{part(schema)}.{part(table)}"


def legacy_key(key: str) -> str:
    """The key a manifest written before `table_key` quoted gave the table `key` names: `a.b.c`."""
    parts: list[str] = []
    i = 0
    while i <= len(key):
        if key.startswith('"', i):
            j = i + 1
            text = ""
            while j < len(key):
                if key[j] == '"':
                    if key.startswith('""', j):
                        text += '"'
                        j += 2
                        continue
                    break
                text += key[j]
                j += 1
            parts.append(text)
            i = j + 2  # past the closing quote and the dot
        else:
            end = key.find(".", i)
            end = len(key) if end < 0 or len(parts) else end
            parts.append(key[i:end])
            i = end + 1
    return ".".join(parts)


def counts_as_recorded(found: dict[str, int], recorded: Mapping[str, int]) -> dict[str, int]:
    """`found` keyed as the manifest `recorded` keys its tables: an old one's keys (`a.b.c`) stand
    for a table whose new key is quoted."""
    if all(k in found for k in recorded):
        return found
    out: dict[str, int] = {}
    for key, n in found.items():
        old = legacy_key(key)
        out[old if key not in recorded and old in recorded else key] = n
    return out


def count_rows(con: psycopg.Connection[Any], tables: list[tuple[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for schema, table in tables:
        row = con.execute(
            sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        ).fetchone()
        out[table_key(schema, table)] = int(row[0]) if row else 0
    return out


def table_counts(con: psycopg.Connection[Any]) -> dict[str, int]:
    """Rows of every user table, read with row security off (as pg_dump reads them): off for this
    transaction only (a savepoint inside the caller's), never for the session."""
    with con.transaction():
        con.execute("SET LOCAL row_security = off")
        return count_rows(con, user_tables(con))


def rls_blockers(con: psycopg.Connection[Any]) -> tuple[str, list[str]]:
    """(role, tables) whose row-level security would stop pg_dump: it reads with row security off,
    which fails for a role that neither owns a table with RLS (forced RLS binds owners too) nor has
    BYPASSRLS or superuser."""
    row = con.execute(
        "SELECT current_user, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    assert row is not None
    role, superuser, bypass = str(row[0]), bool(row[1]), bool(row[2])
    if superuser or bypass:
        return role, []
    rows = con.execute(
        """
        SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relrowsecurity AND c.relkind IN ('r', 'p') AND n.nspname <> ALL(%s)
          AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE'))
        ORDER BY 1
        """,
        (list(_SYSTEM_SCHEMAS),),
    ).fetchall()
    return role, [str(r[0]) for r in rows]


def rls_error(name: str, role: str, tables: list[str]) -> SourceError:
    shown = ", ".join(tables[:3]) + (f" and {len(tables) - 3} more" if len(tables) > 3 else "")
    return SourceError(
        f"PostgreSQL database `{name}` cannot be dumped by role {role}: {shown} use row-level security and "
        f"{role} neither owns them nor has BYPASSRLS, and pg_dump reads with row security off; back up as the "
        f"tables' owner, grant it (ALTER ROLE {role} BYPASSRLS), or set agentId to back up one agent's rows"
    )


# -- the whole-database dump ---------------------------------------------------------------------


@dataclass
class PgSummary:
    """What the manifest and the snapshot's database entry say."""

    database: str
    server_version: str
    server_version_num: int
    extensions: dict[str, str]
    tables: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)


class _Tail:
    """The last bytes a child wrote to stderr, read in a thread so the child never blocks on it."""

    def __init__(self, stream: Any) -> None:
        self.data = b""
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: Any) -> None:
        for block in iter(lambda: stream.read(65536), b""):
            self.data = (self.data + block)[-65536:]

    def text(self) -> str:
        self._thread.join(10)
        return self.data.decode("utf-8", "replace").strip()


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error:" in ln:
            return ln.split("error:", 1)[1].strip()
    return lines[-1] if lines else "no message"


class _Reader:
    """A read of one configured database over one connection: a context manager that opens the
    connection and lets the subclass inspect the server in `_prepare`; any failure closes it and
    becomes one SourceError naming the database."""

    def __init__(self, entry: PostgresDb, env: Mapping[str, str], stops: StopScope | None = None) -> None:
        self.entry = entry
        self.env = env
        self.conn = connection_for(entry, env)
        self._con: psycopg.Connection[Any] | None = None
        self.summary: PgSummary | None = None
        # The backup's: its stop ends what this read waits on (`hang_up`) and pg_dump.
        self.stops = stops
        self._ending = contextlib.ExitStack()
        self.client_checked = False  # the server ends this read's queries once phx is gone

    def _prepare(self, con: psycopg.Connection[Any]) -> None:
        raise NotImplementedError

    def _begin(self, con: psycopg.Connection[Any]) -> None:
        """Open the read's transaction (one snapshot, read only) with its bounds on waiting
        (`_check_client`, `bound_lock_wait`) set for that transaction only: nothing of them stays
        on the server session once it ends, for a pooler to hand to the next client."""
        con.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if self.stops is not None:
            self.client_checked = _check_client(con)
        bound_lock_wait(con)

    def __enter__(self) -> Self:
        if self.stops is not None:  # a stop does not wait for a server that does not answer
            self._con = self.stops.connecting(self.conn.connect, lambda con: con.close())
        else:
            self._con = self.conn.connect()
        try:
            if self.stops is not None:
                con = self._con
                # Before the session's first statement: a server that stops answering once
                # connected would keep it, and the stop, waiting for ever.
                self._ending.enter_context(self.stops.ending(lambda: hang_up(con)))
            self._prepare(self._con)
        except psycopg.Error as exc:
            self.close()
            raise SourceError(f"reading PostgreSQL database `{self.entry.name}` failed: {pg_reason(exc)}") from exc
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._ending.close()  # before the connection closes: its socket is not ended after
        if self._con is not None:
            with contextlib.suppress(psycopg.Error):
                self._con.close()
            self._con = None


# How often (ms) the server checks, while a query of a backup's read runs or waits for a lock,
# that phx is still there (client_connection_check_interval, PostgreSQL 14 on).
CLIENT_CHECK_MS = 1000


def _check_client(con: psycopg.Connection[Any]) -> bool:
    """Inside a transaction, for the rest of it: have the server end this session's query soon
    after `hang_up` (or phx's end) shuts its socket: otherwise a query waiting for a lock runs on
    until the lock is granted, keeping its snapshot and the locks it took, and queueing others
    behind it. Before PostgreSQL 14, or on a server's platform without the check (Windows), the
    transaction is as it was (the refused SET is undone by its savepoint): False."""
    if con.info.server_version < 140000:
        return False
    try:
        with con.transaction():
            con.execute(f"SET LOCAL client_connection_check_interval = {CLIENT_CHECK_MS}")
    except psycopg.Error:
        return False
    return True


def bound_lock_wait(con: psycopg.Connection[Any]) -> None:
    """Inside a transaction, for the rest of it: make a statement waiting for a lock fail after
    LOCK_WAIT_S (as pg_dump's --lock-wait-timeout does) rather than wait for as long as another
    session holds it: a backup would otherwise wait for ever. A shorter lock_timeout the session
    already has (the role's, PGOPTIONS) stays."""
    row = con.execute("SELECT setting::bigint FROM pg_settings WHERE name = 'lock_timeout'").fetchone()
    current = int(row[0]) if row else 0
    if current == 0 or current > LOCK_WAIT_S * 1000:
        con.execute(f"SET LOCAL lock_timeout = {LOCK_WAIT_S * 1000}")


def table_read_error(name: str, table: str, exc: psycopg.Error, midway: bool = False) -> SourceError:
    """The error of a read of `table` that failed; a lock it waited for too long is named so."""
    how = "failed midway" if midway else "failed"
    kept = "; nothing of it was kept in this snapshot" if midway else ""
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return SourceError(
            f"reading table {table} of PostgreSQL database `{name}` {how}: another session held a lock on it "
            f"for more than {LOCK_WAIT_S} s ({pg_reason(exc)}){kept}; end that session's transaction (its pid is "
            "in pg_locks, its query in pg_stat_activity) and run the backup again"
        )
    return SourceError(f"reading table {table} of PostgreSQL database `{name}` {how}: {pg_reason(exc)}{kept}")


def hang_up(con: psycopg.Connection[Any]) -> None:
    """End every wait on `con` at once, from another thread: its socket is shut down, so the read
    under way returns (a query waiting for a lock, a server that stopped answering) and every
    later statement fails, with no round trip to a server that may not answer. The server's side
    of a query waiting for a lock ends when it is granted and finds the client gone."""
    with contextlib.suppress(OSError, psycopg.Error):
        fd = con.pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)


class PostgresDump(_Reader):
    """A whole-database backup of one entry; use as a context manager, then iterate `streams()`."""

    def __init__(self, entry: PostgresDb, env: Mapping[str, str], stops: StopScope | None = None) -> None:
        super().__init__(entry, env, stops)
        self._proc: subprocess.Popen[bytes] | None = None
        self.tool: Tool | None = None
        self.database: dict[str, str] = {}

    def _prepare(self, con: psycopg.Connection[Any]) -> None:
        version, num = server_version(con)
        if transaction_pooled(con, self.conn.connect):
            raise SourceError(
                f"cannot back up PostgreSQL database `{self.entry.name}`: {transaction_pool_error('backup')}"
            )
        self.tool = find_pg_tool("pg_dump", self.entry.name, major_of_num(num), self.env, self.entry.pg_dump)
        self._begin(con)  # the dump's own transaction is begun in `streams`
        role, blocked = rls_blockers(con)
        if blocked:
            raise rls_error(self.entry.name, role, blocked)
        row = con.execute("SELECT current_database()").fetchone()
        assert row is not None
        self.summary = PgSummary(str(row[0]), version, num, extensions(con), {})
        self.database = database_settings(con)
        con.execute("COMMIT")

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        super().close()

    def _dump_env(self) -> dict[str, str]:
        """pg_dump's environment: its session checks that pg_dump is still there as phx's does
        (`_check_client`), so that once killed at a stop it does not wait on for a lock, holding
        the locks on every table it has locked so far."""
        env = self.conn.tool_env()
        if self.client_checked:
            check = f"-c client_connection_check_interval={CLIENT_CHECK_MS}"
            env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} {check}".strip()
        return env

    def streams(self) -> Iterator[Stream]:
        """database.dump, then globals.sql (when it can be read), then manifest.json."""
        assert self._con is not None and self.summary is not None and self.tool is not None
        con, summary, tool = self._con, self.summary, self.tool
        try:
            self._begin(con)  # held until pg_dump is done: it reads the snapshot exported here
            row = con.execute("SELECT pg_export_snapshot()").fetchone()
            assert row is not None
            snapshot = str(row[0])
        except psycopg.Error as exc:
            raise SourceError(f"reading PostgreSQL database `{self.entry.name}` failed: {pg_reason(exc)}") from exc
        # A table locked exclusively (ALTER TABLE, VACUUM FULL) makes pg_dump fail after a while
        # instead of hanging the whole backup.
        cmd = [
            str(tool.path),
            "-Fc",
            "-Z0",
            "-w",
            f"--lock-wait-timeout={LOCK_WAIT_S}s",
            f"--snapshot={snapshot}",
            f"--dbname={self.conn.conninfo}",
        ]
        # A session of its own (`child_group`): a stop of the backup ends it at once
        # (`_Run.stop_on_error`), even while it hangs (a stuck server), and the read waiting on its
        # pipe with it; in phx's process group it ran on, and the stop waited for it.
        with child_group(
            lambda: subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=self._dump_env(),
                start_new_session=True,
            ),
            self.stops,
        ) as proc:
            self._proc = proc
            assert proc.stdout is not None and proc.stderr is not None
            tail = _Tail(proc.stderr)
            # The counts read the same snapshot as pg_dump, in parallel with it.
            counted: dict[str, Any] = {}

            def count() -> None:
                try:
                    counted["tables"] = table_counts(con)
                except psycopg.Error as exc:
                    counted["error"] = exc

            counter = threading.Thread(target=count, name="phx-pg-count", daemon=True)
            counter.start()

            def finish() -> None:
                code = proc.wait()
                counter.join()
                with contextlib.suppress(psycopg.Error):
                    con.execute("COMMIT")
                if code != 0:
                    text = tail.text()
                    last = _last_error(text)
                    # --lock-wait-timeout ends pg_dump's LOCK TABLE with a statement timeout.
                    waited = (
                        f"another session held a lock on a table it reads for more than {LOCK_WAIT_S} s ("
                        if "statement timeout" in text and "Query was: LOCK TABLE" in text
                        else ""
                    )
                    raise SourceError(
                        f"pg_dump of PostgreSQL database `{self.entry.name}` failed (exit {code}): "
                        + (f"{waited}{_last_error(text)}); " if waited else f"{pooler_fix(last, 'backup')}; ")
                        + "nothing of it was kept in this snapshot"
                        + (
                            "; end that session's transaction (its pid is in pg_locks, its query in "
                            "pg_stat_activity) and run the backup again"
                            if waited
                            else ""
                        )
                    )
                if "error" in counted:
                    raise SourceError(
                        f"counting the rows of PostgreSQL database `{self.entry.name}` failed: "
                        f"{pg_reason(counted['error'])}"
                    )
                summary.tables = counted["tables"]

            yield Stream(DUMP, proc.stdout, finish)  # type: ignore[arg-type]  # a pipe is a BinaryIO
        self._proc = None
        globals_sql = self._globals(tool)
        if globals_sql is not None:
            yield bytes_stream(GLOBALS, globals_sql)
        summary.manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "kind": "dump",
            "name": self.entry.name,
            "database": summary.database,
            "serverVersion": summary.server_version,
            "serverVersionNum": summary.server_version_num,
            "pgDump": {"path": str(tool.path), "version": tool.version},
            # How to create the database again on a server that lacks it (a restore does).
            "databaseOwner": self.database.get("owner"),
            "encoding": self.database.get("encoding"),
            "lcCollate": self.database.get("collate"),
            "lcCtype": self.database.get("ctype"),
            "localeProvider": self.database.get("provider", "libc"),
            "locale": self.database.get("locale"),  # icu and builtin: the provider's own locale
            "dumpFormat": "custom, uncompressed (pg_dump -Fc -Z0)",
            "extensions": summary.extensions,
            "tables": summary.tables,
            "files": [DUMP, *([GLOBALS] if globals_sql is not None else [])],
            "warnings": summary.warnings,
        }
        yield bytes_stream(MANIFEST, manifest_bytes(summary.manifest))

    def _globals(self, tool: Tool) -> bytes | None:
        """Roles and tablespaces; without role passwords when the role may not read pg_authid."""
        dumpall = tool.sibling("pg_dumpall")
        if dumpall is None:
            self._warn(f"pg_dumpall is not beside {tool.path}; roles and grants were not saved")
            return None
        attempts: list[list[str]] = [[], ["--no-role-passwords"]]
        reason = ""
        for extra in attempts:
            res = subprocess.run(
                [str(dumpall), "--globals-only", "-w", *extra, f"--dbname={self.conn.conninfo}"],
                capture_output=True,
                env=self.conn.tool_env(),
                stdin=subprocess.DEVNULL,
                check=False,
            )
            if res.returncode == 0:
                if extra:
                    self._warn("roles were saved without their passwords (the role may not read pg_authid)")
                return res.stdout
            reason = _last_error(res.stderr.decode("utf-8", "replace"))
        self._warn(f"roles and grants were not saved: pg_dumpall failed: {reason}")
        return None

    def _warn(self, message: str) -> None:
        assert self.summary is not None
        self.summary.warnings.append(f"PostgreSQL database `{self.entry.name}`: {message}")


def manifest_bytes(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


# -- one agent's rows ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentTable:
    schema: str
    table: str
    columns: tuple[str, ...]  # copied columns (generated ones left out: they are recomputed)
    primary_key: tuple[str, ...]
    agent_type: str  # the agent_id column's type, for comparing with a typed literal
    identity_always: bool
    # Read from the catalog, never kept in the manifest: a partitioned table is read whole, any
    # other without the tables that inherit from it (they are saved as tables of their own).
    partitioned: bool = False

    @property
    def rows(self) -> sql.Composable:
        """The table's own rows, for FROM, UPDATE and DELETE."""
        name = sql.Identifier(self.schema, self.table)
        return name if self.partitioned else sql.SQL("ONLY {}").format(name)

    @property
    def key(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def file(self) -> str:
        return f"{ROWS_DIR}/{self.schema}.{self.table}.csv"

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "table": self.table,
            "columns": list(self.columns),
            "primaryKey": list(self.primary_key),
            "agentIdType": self.agent_type,
            "identityAlways": self.identity_always,
            "file": self.file,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AgentTable:
        return cls(
            str(d["schema"]),
            str(d["table"]),
            tuple(str(c) for c in d["columns"]),
            tuple(str(c) for c in d["primaryKey"]),
            str(d["agentIdType"]),
            bool(d.get("identityAlways", False)),
        )


def agent_tables(con: psycopg.Connection[Any]) -> list[AgentTable]:
    """Every table (the role may read) with an `agent_id` column."""
    rows = con.execute(
        """
        SELECT n.nspname, c.relname, c.oid, format_type(a.atttypid, a.atttypmod), c.relkind = 'p'
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'agent_id' AND NOT a.attisdropped
        WHERE c.relkind IN ('r', 'p') AND n.nspname <> ALL(%s) AND has_table_privilege(c.oid, 'SELECT')
          AND NOT c.relispartition
        ORDER BY 1, 2
        """,
        (list(_SYSTEM_SCHEMAS),),
    ).fetchall()
    out: list[AgentTable] = []
    for schema, table, oid, agent_type, partitioned in rows:
        cols = con.execute(
            """
            SELECT attname, attidentity FROM pg_attribute
            WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
            ORDER BY attnum
            """,
            (oid,),
        ).fetchall()
        pk = con.execute(
            """
            SELECT a.attname FROM pg_index i
            JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
            WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord
            """,
            (oid,),
        ).fetchall()
        out.append(
            AgentTable(
                str(schema),
                str(table),
                tuple(str(c[0]) for c in cols),
                tuple(str(p[0]) for p in pk),
                str(agent_type),
                any(c[1] == "a" for c in cols),
                bool(partitioned),
            )
        )
    return out


def exact_text(con: psycopg.Connection[Any]) -> None:
    """Inside a transaction, for the rest of it (never the session's: a pooler would hand it to
    the next client): fix how values are written and read as text (agent rows' CSV), whatever the
    server, database, role or environment (PGDATESTYLE, PGTZ, PGOPTIONS) set: ISO dates (a
    `SQL, DMY` date read back as `MDY` swaps day and month), UTC with numeric offsets (a zone
    abbreviation can be read back as another zone), and floats with every digit."""
    con.execute(
        "SELECT set_config('DateStyle', 'ISO, MDY', true), set_config('IntervalStyle', 'postgres', true), "
        "set_config('TimeZone', 'UTC', true), set_config('extra_float_digits', '3', true)"
    )


def agent_filter(t: AgentTable) -> sql.Composable:
    """`agent_id = %s::<its type>`: a typed comparison, so an index on agent_id is used."""
    return sql.SQL("{} = CAST(%s AS {})").format(sql.Identifier("agent_id"), sql.SQL(t.agent_type))


class AgentRows(_Reader):
    """One agent's rows of a shared database; use as a context manager, then iterate `streams()`."""

    def __init__(self, entry: PostgresDb, env: Mapping[str, str], stops: StopScope | None = None) -> None:
        assert entry.agent_id is not None
        super().__init__(entry, env, stops)
        self.agent_id: str = entry.agent_id
        self.tables: list[AgentTable] = []

    def _prepare(self, con: psycopg.Connection[Any]) -> None:
        version, num = server_version(con)
        self._begin(con)  # one transaction for every table, ended in `streams`
        # For this transaction only: the policies see it in every statement of it, and no other
        # client of the server session (through a pooler) ever does.
        con.execute("SELECT set_config(%s, %s, true)", (AGENT_SETTING, self.agent_id))
        exact_text(con)
        row = con.execute("SELECT current_database()").fetchone()
        assert row is not None
        self.tables = agent_tables(con)
        saved_as: dict[str, AgentTable] = {}
        for t in self.tables:
            # Two tables whose schema and table names joined by a dot are the same ("a.b".c and
            # a."b.c") would share one file of rows, and one table's rows were lost without a word.
            if any(part in ("", ".", "..") for part in t.file.split("/")):
                # A snapshot holding such a name restores nothing at all, not even the files.
                name = sql.Identifier(t.schema, t.table).as_string(con)
                raise SourceError(
                    f"PostgreSQL database `{self.entry.name}`: table {name} "
                    f"would be saved as {t.file}, a path no snapshot may hold, so nothing of it was saved; "
                    "rename it (ALTER TABLE ... RENAME) or its schema"
                )
            other = saved_as.setdefault(t.file, t)
            if other is not t:
                names = " and ".join(sql.Identifier(x.schema, x.table).as_string(con) for x in (other, t))
                raise SourceError(
                    f"PostgreSQL database `{self.entry.name}`: tables {names} would both be saved as {t.file}, "
                    "so nothing of it was saved; rename one of them (ALTER TABLE ... RENAME) or its schema"
                )
        self.summary = PgSummary(str(row[0]), version, num, extensions(con), {})
        if not self.tables:
            self.summary.warnings.append(
                f"PostgreSQL database `{self.entry.name}`: no table with an agent_id column is readable; "
                f"nothing of agent {self.agent_id} was saved"
            )

    def streams(self) -> Iterator[Stream]:
        assert self._con is not None and self.summary is not None
        con, summary = self._con, self.summary
        for t in self.tables:
            where = agent_filter(t)
            try:
                row = con.execute(
                    sql.SQL("SELECT count(*) FROM {} WHERE ").format(t.rows) + where,
                    (self.agent_id,),
                ).fetchone()
            except psycopg.Error as exc:
                raise table_read_error(self.entry.name, t.key, exc) from exc
            summary.tables[t.key] = int(row[0]) if row else 0
            order = sql.SQL(", ").join(sql.Identifier(c) for c in (t.primary_key or t.columns))
            query = sql.SQL(
                "COPY (SELECT {} FROM {} WHERE {} ORDER BY {}) TO STDOUT WITH (FORMAT csv, HEADER true)"
            ).format(
                sql.SQL(", ").join(sql.Identifier(c) for c in t.columns),
                t.rows,
                where,
                order,
            )
            yield self._copy_stream(con, t, query)
        summary.manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "kind": "agent-rows",
            "name": self.entry.name,
            "database": summary.database,
            "agentId": self.agent_id,
            "agentSetting": AGENT_SETTING,
            "serverVersion": summary.server_version,
            "serverVersionNum": summary.server_version_num,
            "extensions": summary.extensions,
            "tables": summary.tables,
            "tableInfo": {t.key: t.to_json() for t in self.tables},
            "rowFormat": "CSV with a header row (COPY ... WITH (FORMAT csv, HEADER true)), ordered by primary key",
            "files": [t.file for t in self.tables],
            "warnings": summary.warnings,
        }
        with contextlib.suppress(psycopg.Error):
            con.execute("COMMIT")
        yield bytes_stream(MANIFEST, manifest_bytes(summary.manifest))

    def _copy_stream(self, con: psycopg.Connection[Any], t: AgentTable, query: sql.Composed) -> Stream:
        failed: list[BaseException] = []

        def blocks() -> Iterator[bytes]:
            try:
                with con.cursor() as cur, cur.copy(query, (self.agent_id,)) as copy:
                    for block in copy:
                        yield bytes(block)
            except psycopg.Error as exc:
                failed.append(exc)

        def finish() -> None:
            if failed:
                assert isinstance(failed[0], psycopg.Error)
                raise table_read_error(self.entry.name, t.key, failed[0], midway=True)

        return iter_stream(t.file, blocks(), finish)
