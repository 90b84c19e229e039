"""Restoring a PostgreSQL database from a snapshot into its server (the sink of sources/postgres.py).

Whole database: roles missing on the server are created from `globals.sql` first (so ownership and
policies restore onto a fresh server), then the dump is streamed into
`pg_restore --clean --if-exists --single-transaction --exit-on-error`: the database is either
wholly restored or left as it was. Row counts are compared with the manifest afterwards.

Agent-scoped: each table's rows go through a temporary table into the shared table by primary key
(`--conflict-mode skip` keeps existing rows, `update` overwrites them), in one transaction with
`app.agent_id` set, so row-level security applies; rows of other agents are never written
(sinks/postgres_agent.py). Afterwards every saved row must be present.

`restore_pg_scratch` restores a snapshot's dump into a scratch database for `phx drill`.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from phoenix_backup.config.model import PostgresDb
from phoenix_backup.errors import CorruptObject, PhoenixError, RestoreError, UsageError
from phoenix_backup.repo.reader import read_node, stream_blocks
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Node
from phoenix_backup.shell import child_group, stops_deferred
from phoenix_backup.sinks import ConflictMode, postgres_agent, postgres_roles
from phoenix_backup.sinks.postgres_agent import KeylessMode
from phoenix_backup.sinks.streams import (
    DbRestoreOutcome,
    read_manifest,
)
from phoenix_backup.sources import postgres as pg
from phoenix_backup.sql import pg_statements


def restore_postgres(
    repo: Repository,
    entry: PostgresDb,
    path: str,
    files: dict[str, Node],
    env: Mapping[str, str],
    to_database: str | None = None,
    conflict_mode: ConflictMode = "update",
    keyless: KeylessMode = "add",
) -> DbRestoreOutcome:
    manifest = read_manifest(repo, path, files)
    conn = pg.connection_for(entry, env)
    if manifest.get("kind") == "agent-rows":
        if to_database is not None:
            conn = conn.with_database(to_database)
        return restore_agent_rows(repo, conn, path, files, manifest, conflict_mode, keyless, agent=entry.agent_id)
    if to_database is not None:
        return restore_pg_scratch(repo, conn, path, files, to_database, manifest=manifest, configured=entry.pg_dump)
    return _restore_dump(repo, conn, path, files, manifest, clean=True, configured=entry.pg_dump)


def restore_pg_scratch(
    repo: Repository,
    conn: pg.PgConn,
    path: str,
    files: dict[str, Node],
    database: str,
    *,
    manifest: dict[str, Any] | None = None,
    configured: Any = None,
    drop_after: bool = False,
) -> DbRestoreOutcome:
    """Restore a snapshot's dump into a new database `database` on `conn`'s server and check its
    row counts (for `--to-database` and `phx drill`); the configured database need not exist. It
    refuses a database that exists; on failure it drops what it created. With `drop_after`, the
    database is dropped once checked (a drill), and is owned by the connecting role; otherwise it
    is owned as the original was."""
    manifest = manifest if manifest is not None else read_manifest(repo, path, files)
    if manifest.get("kind") != "dump":
        raise RestoreError(f"{path} holds one agent's rows, not a whole database; restore it in place instead")
    target = conn.with_database(database)
    created: dict[str, int] = {}
    given: set[tuple[int, int]] = set()
    journal = postgres_roles.RolesJournal()
    try:
        outcome = _restore_dump(
            repo,
            target,
            path,
            files,
            manifest,
            clean=False,
            configured=configured,
            as_original=not drop_after,
            roles=created,
            given=given,
            journal=journal,
            drill=drop_after,
            fresh=True,
        )
        if (drop_after or not outcome.ok) and outcome.stats.get("databaseCreated"):
            if not _drop_database(conn, database, outcome):
                journal.keep()  # the next restore or drill against this server drops it
            # A drill leaves the server as it found it: the roles it created for its scratch
            # database go with it (a failed one dropped them already), unless something else
            # came to depend on them meanwhile.
            if (
                drop_after
                and outcome.ok
                and not _drop_created_roles(conn, created, outcome, after="the drill", given=given)
            ):
                journal.keep()
    finally:
        journal.close()
    return outcome


def _server(conn: pg.PgConn) -> str:
    return conn.where.rsplit("/", 1)[0]


def _database_exists(con: psycopg.Connection[Any], database: str) -> bool:
    return con.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is not None


def _drop_database(conn: pg.PgConn, database: str, outcome: DbRestoreOutcome, *, force: bool = True) -> bool:
    """Drop `database` (`force`: ending its sessions); False, with a warning, when it could not be."""
    try:
        with conn.connect_server() as con:
            query = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database))
            con.execute(query + sql.SQL(" WITH (FORCE)") if force else query)
    except (psycopg.Error, PhoenixError) as exc:
        outcome.warnings.append(f"database {database} could not be dropped: {exc}")
        return False
    return True


class _Exists(UsageError):
    """`--to-database` names a database that exists (the restore stops before it changes anything)."""


def _create_database(
    conn: pg.PgConn,
    manifest: dict[str, Any],
    outcome: DbRestoreOutcome,
    journal: postgres_roles.RolesJournal,
    *,
    as_original: bool,
) -> None:
    """Create `conn`'s database, owned as the original was (when that role exists here and this
    role may give it a database), with its encoding and, where this server has them, its locale
    and locale provider (icu, builtin). Its oid goes to `journal` at once (the database the
    journal's `creating` line named is then provably this run's)."""
    name = conn.database
    owner = str(manifest.get("databaseOwner") or "") if as_original else ""
    encoding = str(manifest.get("encoding") or "")
    collate, ctype = str(manifest.get("lcCollate") or ""), str(manifest.get("lcCtype") or "")
    provider = str(manifest.get("localeProvider") or "libc")
    locale = str(manifest.get("locale") or "") if provider in ("icu", "builtin") else ""
    with conn.connect_server() as con:
        me = str((con.execute("SELECT current_user").fetchone() or ("",))[0])
        if owner and not con.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (owner,)).fetchone():
            outcome.warnings.append(f"role {owner}, the owner of database {name}, does not exist here; {me} owns it")
            owner = ""
        while True:
            parts: list[sql.Composable] = [
                sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
            ]
            if owner and owner != me:
                parts.append(sql.SQL(" OWNER {}").format(sql.Identifier(owner)))
            if encoding:
                parts.append(sql.SQL(" ENCODING {}").format(sql.Literal(encoding)))
            if collate and ctype:
                parts.append(sql.SQL(" LC_COLLATE {} LC_CTYPE {}").format(sql.Literal(collate), sql.Literal(ctype)))
            if locale:
                parts.append(
                    sql.SQL(" LOCALE_PROVIDER {} {} {}").format(
                        sql.SQL(provider), sql.SQL(f"{provider.upper()}_LOCALE"), sql.Literal(locale)
                    )
                )
            try:
                # A stop while the server creates it waits for the reply: the database is then
                # known to be this restore's, and a stop drops it (`_restore_dump`).
                with stops_deferred():
                    con.execute(sql.Composed(parts))
                    outcome.stats["databaseCreated"] = True
                    row = con.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,)).fetchone()
                    if row:
                        journal.note({"created": name, "oid": int(row[0])})
                break
            except psycopg.errors.InsufficientPrivilege as exc:
                if not owner or owner == me:
                    raise RestoreError(
                        f"cannot create database {name} on {_server(conn)}: {pg.pg_reason(exc)}; create it (CREATE "
                        f"DATABASE {name}{' OWNER ' + str(manifest.get('databaseOwner')) if as_original else ''}) "
                        "or restore as a role with CREATEDB"
                    ) from exc
                outcome.warnings.append(f"{me} may not give database {name} to {owner}; {me} owns it")
                owner = ""
            except psycopg.Error as exc:
                if locale:
                    outcome.warnings.append(
                        f"this server cannot create database {name} with the {provider} locale {locale!r} of the "
                        f"original ({pg.pg_reason(exc)}); it uses the libc locale"
                    )
                    locale = ""
                    continue
                if not (collate and ctype) or "locale" not in pg.pg_reason(exc).lower() + str(exc).lower():
                    raise RestoreError(
                        f"cannot create database {name} on {_server(conn)}: {pg.pg_reason(exc)}"
                    ) from exc
                outcome.warnings.append(
                    f"this server has no locale {collate!r}/{ctype!r} of the original database {name}; it uses its own"
                )
                collate = ctype = ""
    outcome.warnings.append(
        f"database {name} did not exist on {_server(conn)}; it was created (owner {owner or me}"
        f"{', encoding ' + encoding if encoding else ''})"
    )


def _restore_dump(
    repo: Repository,
    conn: pg.PgConn,
    path: str,
    files: dict[str, Node],
    manifest: dict[str, Any],
    *,
    clean: bool,
    configured: Any,
    as_original: bool = True,
    roles: dict[str, int] | None = None,
    given: set[tuple[int, int]] | None = None,
    journal: postgres_roles.RolesJournal | None = None,
    drill: bool = False,
    fresh: bool = False,
) -> DbRestoreOutcome:
    """pg_restore the dump into `conn`'s database, creating it first when the server lacks it
    (after the roles of globals.sql, so its owner can be one of them); then ANALYZE and count.
    `roles`, when given, is filled with the roles created from globals.sql (name to oid), `given`
    with the memberships of theirs it made; `journal` (the caller's, which closes it) records them
    and the database it creates for the run after a kill (sinks/postgres_roles.py), `drill` says
    the database is a drill's. With `fresh`, a database that exists (once what killed runs left is
    dropped) is refused (UsageError), naming what a killed run left in it."""
    if journal is None:
        journal = postgres_roles.RolesJournal()
        try:
            return _restore_dump(
                repo,
                conn,
                path,
                files,
                manifest,
                clean=clean,
                configured=configured,
                as_original=as_original,
                roles=roles,
                given=given,
                journal=journal,
                drill=drill,
                fresh=fresh,
            )
        finally:
            journal.close()
    outcome = DbRestoreOutcome(path, "postgresql", conn.where, expected=dict(manifest.get("tables", {})))
    created: dict[str, int] = {} if roles is None else roles
    memberships: set[tuple[int, int]] = set() if given is None else given
    committed = False  # pg_restore's transaction committed: the restored objects need the roles
    dump = files.get(pg.DUMP)
    if dump is None:
        outcome.error = f"{path} has no {pg.DUMP} in the snapshot"
        return outcome
    try:
        with conn.connect_server() as con:
            _, num = pg.server_version(con)
            if pg.transaction_pooled(con, conn.connect_server):
                raise RestoreError(f"{pg.transaction_pool_error('restore')}; nothing was changed")
            exists = _database_exists(con, conn.database)
            journal.server = _server_id(con)
        left: dict[str, str] = {}
        if journal.server:
            dropped, left = _clean_killed_runs(conn, journal.server, outcome)
            exists = exists and conn.database not in dropped
        if fresh and exists:
            raise _Exists(_exists_error(conn, left.get(conn.database)))
        dumped_by = tuple(int(p) for p in str(manifest.get("pgDump", {}).get("version", "0")).split(".")[:1])
        need = max(pg.major_of_num(num), dumped_by)
        if configured is not None:
            tool = pg.find_pg_tool("pg_dump", path, need, conn.base_env, configured)
            restore_tool = tool.sibling("pg_restore")
            if restore_tool is None:
                raise RestoreError(f"pg_restore is not beside {tool.path}; install the PostgreSQL client tools")
        else:
            restore_tool = pg.find_pg_tool("pg_restore", path, need, conn.base_env, None).path
        if pg.GLOBALS in files:
            created.update(_apply_globals(repo, conn, path, files[pg.GLOBALS], outcome, journal, memberships))
            outcome.stats["rolesCreated"] = list(created)
        if not exists:
            # Before it is created: were the run killed, the next one finds it (`_clean_killed_runs`).
            journal.note({"drill": conn.database} if drill else {"creating": conn.database})
            _create_database(conn, manifest, outcome, journal, as_original=as_original)
        if journal.started:
            # pg_restore's transaction begins after this one: a table of the database written by
            # a later one says the restore may have committed (`_may_have_committed`).
            # The database by its oid too: renamed since, it still holds what pg_restore committed.
            with conn.connect_server() as con:
                row = con.execute(
                    "SELECT txid_current(), (SELECT oid FROM pg_database WHERE datname = %s)", (conn.database,)
                ).fetchone()
            mark, db_oid = (int(row[0]), row[1]) if row else (0, None)
            journal.note({"restoring": mark, "database": conn.database, "databaseOid": db_oid})
        # Its session's name: the lock watch finds it by that.
        name = f"phoenix-restore-{secrets.token_hex(8)}"
        dbname = make_conninfo(conn.conninfo, application_name=name)
        args = [str(restore_tool), "-w", "--single-transaction", "--exit-on-error", f"--dbname={dbname}"]
        if clean:
            args[1:1] = ["--clean", "--if-exists"]
        what = f"pg_restore of {path}"
        watch = _LockWatch(conn, name)
        try:
            with watch:
                _feed(args, _restore_env(conn), stream_blocks(repo, f"{path}/{pg.DUMP}", dump), what=what)
        except RestoreError as exc:
            # Read once the watch has ended: pg_restore, cancelled, could exit before the watch's
            # thread had the answer of its pg_cancel_backend, and the error did not name the lock.
            if watch.cancelled:
                raise RestoreError(_lock_wait_error(what)) from exc
            raise
        committed = True
        with conn.connect() as con:
            outcome.warnings += _analyze(con, None)
            outcome.found = pg.counts_as_recorded(pg.table_counts(con), outcome.expected)
    except _Exists:
        raise  # nothing was changed
    except (PhoenixError, psycopg.Error) as exc:
        outcome.fail(exc, pg.pg_reason(exc) if isinstance(exc, psycopg.Error) else str(exc))
        if outcome.stats.get("databaseCreated") and not _drop_database(conn, conn.database, outcome):
            journal.keep()  # it did not exist: the next restore or drill against this server drops it
        if not _undo_created_roles(conn, created, outcome, memberships, committed=committed):
            journal.keep()  # the next restore or drill against this server drops them
        return outcome
    except BaseException:
        # A stop (Ctrl-C, SIGTERM, SIGHUP): pg_restore was ended (`_feed`), its transaction rolled
        # back (unless it had committed: the stop came in ANALYZE); a database this restore
        # created is dropped again, never one that was there, and so are the roles it created.
        if outcome.stats.get("databaseCreated") and not _drop_database(conn, conn.database, outcome):
            journal.keep()
        if not _undo_created_roles(conn, created, outcome, memberships, committed=committed):
            journal.keep()
        raise
    wrong = {t: (n, outcome.found.get(t)) for t, n in outcome.expected.items() if outcome.found.get(t) != n}
    if wrong:
        shown = "; ".join(f"{t}: {have} rows, the snapshot {n}" for t, (n, have) in sorted(wrong.items())[:3])
        outcome.error = f"row counts differ after the restore ({shown})"
        return outcome
    outcome.ok = True
    return outcome


def _undo_created_roles(
    conn: pg.PgConn,
    created: dict[str, int],
    outcome: DbRestoreOutcome,
    given: set[tuple[int, int]],
    *,
    committed: bool,
) -> bool:
    """After a restore that failed or was stopped: drop the roles it created unless its
    pg_restore had committed into a database that stays (one that was there: the restored objects
    are theirs, and a LOGIN role nothing in the catalogs ties to them was dropped, leaving the
    restored database without it). False as `_drop_created_roles`."""
    if committed and created and not outcome.stats.get("databaseCreated"):
        outcome.warnings.append(
            f"the roles this restore created from globals.sql ({', '.join(sorted(created))}) stay: pg_restore had "
            f"committed, {conn.database} holds the snapshot's objects, which need them"
        )
        return True
    return _drop_created_roles(conn, created, outcome, given=given)


def _drop_created_roles(
    conn: pg.PgConn,
    created: dict[str, int],
    outcome: DbRestoreOutcome,
    *,
    after: str = "it failed",
    given: set[tuple[int, int]] | None = None,
    killed: bool = False,
) -> bool:
    """After a restore that failed (its pg_restore rolled back), or a drill once its scratch
    database is dropped (`after` says which), or for a run that was killed (`killed`), drop the
    roles that run created from globals.sql (`created`: name to oid), so the server is left as it
    was found. A role is dropped only while it is still the one created (same oid), it is in no
    membership but those the run gave (`given`, (role, member) oids; None: unknown, then only
    those among the roles created), no session is logged in as it, and nothing depends on it in
    any database (DROP ROLE refuses a role that owns or was granted anything; it would silently
    take away a membership another session granted it meanwhile); otherwise it stays and a warning
    names it. False when the server could not be reached (nothing was dropped)."""
    if not created:
        return True
    if not killed:
        outcome.stats["rolesCreated"] = []
    kept: list[str] = []
    dropped: list[str] = []
    oids = list(created.values())
    try:
        with conn.connect_server() as con:
            for role, oid in sorted(created.items()):
                try:
                    with con.transaction():
                        row = con.execute("SELECT oid FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
                        if row is None:
                            continue  # dropped meanwhile
                        if int(row[0]) != oid:
                            kept.append(f"{role} (another role of that name exists now)")
                            continue
                        pairs = con.execute(
                            "SELECT roleid, member FROM pg_auth_members WHERE roleid = %s OR member = %s", (oid, oid)
                        ).fetchall()
                        if given is not None:
                            new = [p for p in pairs if (int(p[0]), int(p[1])) not in given]
                        else:
                            new = [p for p in pairs if int(p[0]) not in oids or int(p[1]) not in oids]
                        if new:
                            kept.append(f"{role} (a membership was granted to it or of it meanwhile)")
                            continue
                        if con.execute("SELECT 1 FROM pg_stat_activity WHERE usesysid = %s", (oid,)).fetchone():
                            kept.append(f"{role} (a session is logged in as it)")
                            continue
                        con.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
                        dropped.append(role)
                except psycopg.Error as exc:
                    kept.append(f"{role} ({pg.pg_reason(exc)})")
    except (psycopg.Error, PhoenixError) as exc:
        again = "the next restore or drill against this server drops them, or"
        outcome.warnings.append(
            f"the roles {'a killed restore' if killed else 'this restore'} created from globals.sql "
            f"({', '.join(sorted(created))}) could not be dropped after {after}: {exc}; {again} drop those you do "
            "not want by hand"
        )
        return False
    if killed and dropped:
        outcome.warnings.append(
            f"role(s) a killed restore or drill created from globals.sql were dropped: {', '.join(dropped)}"
        )
    if kept:
        outcome.warnings.append(
            f"role(s) {'a killed restore or drill' if killed else 'this restore'} created from globals.sql were left "
            f"after {after}, as something depends on them: {'; '.join(kept)}"
        )
    return True


def _server_id(con: psycopg.Connection[Any]) -> str | None:
    """The server's system identifier (another cluster on the same address has another); None
    when this role may not read it (then no journal of created roles is kept)."""
    try:
        with con.transaction():
            row = con.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    except psycopg.Error:
        return None
    return str(row[0]) if row and row[0] else None


def _clean_killed_runs(conn: pg.PgConn, server: str, outcome: DbRestoreOutcome) -> tuple[set[str], dict[str, str]]:
    """Drop what restores and drills against this server that were killed left: a drill's scratch
    database, a restore's new database whose pg_restore never committed (`_killed_restores_database`),
    then the roles they created, unless a restore may have committed (its restored objects depend
    on its roles). See sinks/postgres_roles.py. The databases dropped, and those such a run left
    that stay, each with why."""
    dropped: set[str] = set()
    left: dict[str, str] = {}
    for run, done in postgres_roles.killed_runs(server):
        try:
            if run.drill:
                with conn.connect_server() as con:
                    row = con.execute("SELECT oid FROM pg_database WHERE datname = %s", (run.drill,)).fetchone()
                if row and run.created_oid in (None, int(row[0])) and _drop_database(conn, run.drill, outcome):
                    dropped.add(run.drill)
                    outcome.warnings.append(
                        f"database {run.drill}, the scratch database of a killed drill, was dropped"
                    )
            elif run.creating is not None:
                fate, why = _killed_restores_database(conn, run, outcome)
                if fate == "dropped":
                    dropped.add(run.creating)
                elif why:
                    left[run.creating] = why
                    outcome.warnings.append(f"database {run.creating} on {_server(conn)}: {why}")
                if fate == "kept":
                    continue  # the journal stays: the next restore or drill looks again
                if fate == "unproven":
                    # Its roles go; the journal stays while the database does (doctor names it).
                    after = "the restore that created them was killed"
                    _drop_created_roles(conn, run.roles, outcome, after=after, given=run.memberships, killed=True)
                    continue
                if fate == "complete":
                    done()  # the restore's roles are the restored database's
                    continue
            elif run.restoring is not None and run.database and _may_have_committed(conn, run):
                done()  # the restore's roles are the restored database's
                continue
        except (psycopg.Error, PhoenixError) as exc:
            # This restore goes on; the journal stays for the next one.
            outcome.warnings.append(
                f"what a killed restore or drill left on this server (roles {', '.join(sorted(run.roles)) or 'none'}"
                f"{', database ' + run.left_database if run.left_database else ''}) could not be looked at: "
                f"{pg.pg_reason(exc) if isinstance(exc, psycopg.Error) else exc}; the next restore or drill tries again"
            )
            continue
        after = "the restore or drill that created them was killed"
        if _drop_created_roles(conn, run.roles, outcome, after=after, given=run.memberships, killed=True):
            done()
    return dropped, left


def _killed_restores_database(
    conn: pg.PgConn, run: postgres_roles.KilledRun, outcome: DbRestoreOutcome
) -> tuple[str, str]:
    """What becomes of the database a killed restore created (`run.creating`), and why (words for
    the user). Dropped ("dropped") only when provably that run's and incomplete: it has the oid the
    run recorded and its name, no session is connected to it, and nothing was written to it since
    its pg_restore began (its pg_restore never committed; a run killed before pg_restore: nothing
    at all). "complete": its pg_restore may have committed (it holds the snapshot): it stays, and so
    do the run's roles. "kept": something may still use it (a session, a pg_restore the kill left
    running), so the journal stays. "unproven": the run was killed before it noted the oid of the
    database of that name, or it was renamed or written to since: it stays, named, and so does the
    journal. "gone": nothing of it is left."""
    assert run.creating is not None
    name, drop = run.creating, postgres_roles.drop_statement("DATABASE", run.creating)
    oid = run.created_oid if run.created_oid is not None else run.database_oid
    with conn.connect_server() as con:
        if oid is None:
            there = _database_exists(con, name)
        else:
            # By its oid: renamed since (restored under this name, then put in place), it is still
            # the run's, and its roles may be what it needs.
            row = con.execute("SELECT datname FROM pg_database WHERE oid = %s", (oid,)).fetchone()
            if row is None:
                return "gone", ""  # dropped since
            now = str(row[0])
            busy = con.execute("SELECT 1 FROM pg_stat_activity WHERE datid = %s", (oid,)).fetchone()
    if oid is None:
        if not there:
            return "gone", ""
        return "unproven", (
            "a restore into it was killed as it created it, before it could note which database it created: it "
            f"may be empty or incomplete, and Phoenix cannot prove it is that restore's, so it stays; if it holds "
            f"nothing of yours, drop it ({drop})"
        )
    if busy:
        return "kept", (
            "a restore into it was killed, and a session is connected to it (or that restore's pg_restore still "
            f"runs): it stays, and the next restore or drill looks again; if you do not use it, end those sessions and "
            f"drop it ({drop})"
        )
    # The run created it empty from template0: anything in it now (tables, or only functions or
    # types, which no table's catalog row tells) its pg_restore committed, or someone wrote since.
    if run.restoring is not None and _written_since(conn, now, None):
        return "complete", (
            "a restore into it was killed after its pg_restore committed (or something else wrote to it since): "
            f"it holds the snapshot's objects and rows, but its row counts were not checked; it stays (to restore "
            f"again into it, drop it: {drop})"
        )
    if now != name:
        return "unproven", f"a restore into it was killed, and it was renamed to {now} since: it stays"
    if run.restoring is None and _written_since(conn, now, None):
        return "unproven", (
            f"a restore into it was killed before its pg_restore began, and something wrote to it since: it stays; "
            f"if it holds nothing of yours, drop it ({drop})"
        )
    try:
        with conn.connect_server() as con:
            # Refused while a session is connected to it; gone meanwhile (another run dropped it), no error.
            con.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        return "kept", f"a restore into it was killed; it could not be dropped ({pg.pg_reason(exc)}): {drop}"
    outcome.warnings.append(
        f"database {name}, which a killed restore had created and whose pg_restore never committed, was dropped"
    )
    return "dropped", ""


def _exists_error(conn: pg.PgConn, left: str | None) -> str:
    """The error for a `--to-database` name that exists; `left`: what a killed restore left in it."""
    name = conn.database
    if left is None:
        return f"database {name} already exists on {_server(conn)}; choose another --to-database name or drop it first"
    return (
        f"database {name} already exists on {_server(conn)}: {left}; then run this again, or choose another "
        "--to-database name"
    )


def _may_have_committed(conn: pg.PgConn, run: postgres_roles.KilledRun) -> bool:
    """Whether a transaction that began after the run's mark (a txid_current() taken before
    pg_restore) wrote a relation of its database: then the killed restore's pg_restore may have
    committed. The database is found by its oid (a name alone lost it once renamed, and its roles,
    which the restored objects need, were dropped); a database that is gone holds nothing of it."""
    assert run.database is not None and run.restoring is not None
    database = run.database
    with conn.connect_server() as con:
        if run.database_oid is not None:
            row = con.execute("SELECT datname FROM pg_database WHERE oid = %s", (run.database_oid,)).fetchone()
            if row is None:
                return False
            database = str(row[0])
        elif not _database_exists(con, database):
            return False
    return _written_since(conn, database, run.restoring)


def _written_since(conn: pg.PgConn, database: str, mark: int | None) -> bool:
    """Whether an object of `database` initdb did not make (a schema, table, function, type,
    extension, large object...) was written by a transaction that began after `mark` (a
    txid_current()); None: whether it holds any such object. Told by the rows of user oid in any
    of its own catalogs this role may read, not by its tables alone: a database of functions or
    types holds none."""
    with conn.with_database(database).connect() as con:
        catalogs = [
            str(r[0])
            for r in con.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'oid' "
                "WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind = 'r' AND NOT c.relisshared "
                "AND has_table_privilege(c.oid, 'SELECT')"
            ).fetchall()
        ]
        if not catalogs:
            return True  # nothing can be told: it may hold anything
        since: sql.Composable = sql.SQL("")
        if mark is not None:
            since = sql.SQL(" AND age(xmin) <= txid_current() - {}").format(sql.Literal(mark))
        query = sql.SQL(" UNION ALL ").join(
            sql.SQL("(SELECT 1 FROM pg_catalog.{} WHERE oid >= {}{} LIMIT 1)").format(
                sql.Identifier(c), sql.Literal(_FIRST_USER_OID), since
            )
            for c in catalogs
        )
        return con.execute(sql.SQL("SELECT EXISTS ({})").format(query)).fetchone() == (True,)


# Objects initdb made have lower oids; every one created since (by anyone) has this or a higher one.
_FIRST_USER_OID = 16384


# The first PostgreSQL with pg_locks.waitstart (when a lock wait began).
_WAITSTART_SINCE = 140000


class _LockWatch:
    """While pg_restore runs (its session named `name`, of this role: another role's session that
    took the name, which pg_stat_activity shows to all, is never cancelled), cancel its statement once it has waited
    for a lock another session holds for more than pg.LOCK_WAIT_S (a DROP TABLE of --clean behind
    an open transaction that read the table): it would otherwise wait for as long as that session
    lives. lock_timeout cannot bound it: pg_restore sets `lock_timeout = 0` itself. `cancelled`
    says whether it did."""

    POLL_S = 0.5

    def __init__(self, conn: pg.PgConn, name: str) -> None:
        self.conn, self.name = conn, name
        self.cancelled = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="phx-pg-lock-watch", daemon=True)

    def __enter__(self) -> _LockWatch:
        # Connected here, not in the thread: a server that does not answer is waited for once
        # (as pg_restore would wait for it), and no connect outlives the restore in a thread.
        try:
            self._con: psycopg.Connection[Any] | None = self.conn.connect_server()
        except PhoenixError:
            self._con = None  # no watch: pg_restore's own connect says what is wrong
        else:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._con is not None:
            self._thread.join(5)
            if self._thread.is_alive():  # its query waits on a server that stopped answering
                pg.hang_up(self._con)
                self._thread.join()
            self._con.close()

    def _run(self) -> None:
        assert self._con is not None
        if self._con.info.server_version < _WAITSTART_SINCE:
            self._run_measuring()
            return
        query = (
            "SELECT pg_cancel_backend(a.pid) FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
            "WHERE a.application_name = %s AND a.usename = current_user AND NOT l.granted "
            "AND l.waitstart < now() - make_interval(secs => %s)"
        )
        try:
            while not self._done.wait(self.POLL_S):
                if self._con.execute(query, (self.name, float(pg.LOCK_WAIT_S))).fetchall():
                    self.cancelled = True
        except psycopg.Error:
            pass  # no watch from here on (a server gone fails pg_restore)

    def _run_measuring(self) -> None:
        """No pg_locks.waitstart before PostgreSQL 14: the watch measures the wait itself, from the
        first look that found the statement waiting for a lock, for as long as every look finds
        it still waiting (the same statement: its pid and query_start). The statement's own start
        was taken for the start of its wait: a long statement (a COPY, a CREATE INDEX) seen once
        in a short lock wait was cancelled, and the restore failed, blaming another session."""
        assert self._con is not None
        query = (
            "SELECT a.pid, a.query_start, now() FROM pg_stat_activity a WHERE a.application_name = %s "
            "AND a.usename = current_user AND a.wait_event_type = 'Lock'"
        )
        since: dict[tuple[int, Any], Any] = {}
        try:
            while not self._done.wait(self.POLL_S):
                rows = self._con.execute(query, (self.name,)).fetchall()
                seen = {(int(pid), start): now for pid, start, now in rows}
                since = {key: since.get(key, now) for key, now in seen.items()}
                for (pid, start), now in seen.items():
                    # Still that statement, still waiting: the cancel is for nothing else.
                    if (now - since[(pid, start)]).total_seconds() > pg.LOCK_WAIT_S and self._con.execute(
                        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = %s AND query_start = %s "
                        "AND wait_event_type = 'Lock'",
                        (pid, start),
                    ).fetchall():
                        self.cancelled = True
        except psycopg.Error:
            pass


def _restore_env(conn: pg.PgConn) -> dict[str, str]:
    """pg_restore's environment: with a startup setting (`statement_timeout = 0`, which pg_restore
    sets anyway) that a transaction pooler (pgbouncer) refuses: through one, pg_restore's plain
    `SET`s (`search_path` empty, `row_security = off`) stayed on the pooled server session for
    its next client; now the restore fails before it starts, naming the cause (`_feed`)."""
    env = conn.tool_env()
    env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} -c statement_timeout=0".strip()
    return env


def _lock_wait_error(what: str) -> str:
    return (
        f"{what} failed: another session held a lock on a table it replaces for more than {pg.LOCK_WAIT_S} s "
        "(lock timeout); nothing was changed; end that session's transaction (its pid is in pg_locks, its query "
        "in pg_stat_activity) and run the restore again"
    )


def _feed(args: list[str], env: dict[str, str], blocks: Iterator[bytes], *, what: str) -> None:
    """Run a program with `blocks` on its stdin; raise its last error line if it fails. When the
    blocks fail (damaged data) or a stop comes (Ctrl-C, SIGTERM, SIGHUP), the program is killed
    and waited for, so a single transaction never commits after `phx` said it stopped. It runs in
    a session of its own: a signal to the terminal's group reaches `phx` only, which ends it."""
    start = lambda: subprocess.Popen(  # noqa: E731
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    with child_group(start) as proc:  # a stop while it starts, or a moment later, ends it too
        assert proc.stdin is not None and proc.stderr is not None
        errors: list[bytes] = []
        stderr = proc.stderr
        drain = threading.Thread(target=lambda: errors.append(stderr.read()), daemon=True)
        drain.start()
        try:
            for block in blocks:
                proc.stdin.write(block)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it stopped reading: its exit code and stderr say why
        code = proc.wait()
    drain.join(10)
    if code != 0:
        text = b"".join(errors).decode("utf-8", "replace")
        reason = pg.pooler_fix(_last_line(text), "restore")
        raise RestoreError(f"{what} failed (exit {code}): {reason}; the database was left as it was")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("Command was:")]
    for ln in lines:
        if "error:" in ln:
            return ln.split("error:", 1)[1].strip()
    return lines[-1] if lines else "no message"


# A role's name as pg_dumpall writes it: quoted, or bare when it is lower case and no keyword. A
# bare name in any other form (`Victim`, `U&"..."`, `current_user`, `public`) is not read as a role
# of the script: the server would take it for another role (`Victim` is `victim`) or for many.
_NAME = r'"(?:[^"]|"")+"|[a-z_][a-z0-9_$]*'
_NOT_A_NAME = frozenset({"all", "current_role", "current_user", "group", "none", "public", "session_user", "user"})
_CREATE_ROLE = re.compile(rf"^CREATE ROLE ({_NAME});$")
# `ALTER ROLE name WITH` and the attributes pg_dumpall writes, nothing else: the statement is run as
# it is, and the rest of a line was once more than attributes (`USER victim` makes `victim` a member;
# a `/* ' */` or `E'\''` that the splitter reads otherwise than the server hid a second statement).
# A string holds no backslash, so it reads the same whatever standard_conforming_strings says.
_STRING = r"'(?:[^'\\]|'')*'"
_ATTRIBUTE = (
    r"(?:NO)?(?:SUPERUSER|INHERIT|CREATEROLE|CREATEDB|LOGIN|REPLICATION|BYPASSRLS)"
    rf"|CONNECTION LIMIT -?[0-9]+|PASSWORD (?:NULL|{_STRING})|VALID UNTIL {_STRING}"
)
_ALTER_ROLE = re.compile(rf"^ALTER ROLE ({_NAME}) WITH((?: (?:{_ATTRIBUTE}))+);$")
_ANY_ALTER_ROLE = re.compile(rf"^ALTER ROLE ({_NAME}) WITH\b")
# The attributes only a superuser may give or take (NOSUPERUSER too); CREATEDB needs CREATEDB.
_SUPERUSER_ONLY = ("SUPERUSER", "REPLICATION", "BYPASSRLS")
_ROLE_SETTING = re.compile(rf"^ALTER ROLE ({_NAME}) (?:IN DATABASE (?:{_NAME}) )?SET ")
# A membership, as pg_dumpall writes it (`WITH ADMIN OPTION` before 16, `WITH INHERIT TRUE, ...` since).
_OPTION = r"(?:ADMIN|INHERIT|SET) (?:OPTION|TRUE|FALSE)"
_GRANT_ROLE = re.compile(
    rf"^GRANT ({_NAME}) TO ({_NAME})(?: WITH {_OPTION}(?:, {_OPTION})*)?(?: GRANTED BY ({_NAME}))?;$"
)


def _role_name(token: str) -> str | None:
    """The role a name of `globals.sql` stands for; None for a bare word that names no single role."""
    if token.startswith('"'):
        return token[1:-1].replace('""', '"')
    return None if token in _NOT_A_NAME else token


# The first line of a pg_dumpall of 17.6, 16.10, 15.14, 14.19, 13.22 or later, the releases that stopped
# writing a name's line breaks into comment lines (`-- User Config "<name>"`).
_SANITIZING_DUMPALL = re.compile(r"(?:--[^\n]*\n|\s)*\\restrict ")


def _raw_role_name(text: str, statements: list[str]) -> str | None:
    """A role name holding a line break in `globals.sql` of a pg_dumpall that wrote names raw in
    comment lines: past that name's comment, the script cannot be read as the server would run it
    (the name's second line stands outside the comment). None when the script is safe to read."""
    if _SANITIZING_DUMPALL.match(text):
        return None
    # The role's CREATE ROLE comes before any comment naming it, so it is read right.
    for statement in statements:
        m = _CREATE_ROLE.match(statement)
        name = _role_name(m.group(1)) if m else None
        if name is not None and any(c in name for c in "\r\n"):
            return name
    return None


def _apply_globals(
    repo: Repository,
    conn: pg.PgConn,
    path: str,
    node: Node,
    outcome: DbRestoreOutcome,
    journal: postgres_roles.RolesJournal | None = None,
    given: set[tuple[int, int]] | None = None,
) -> dict[str, int]:
    """Create the roles of `globals.sql` that the server lacks, with their attributes, and their
    memberships. Existing roles are left exactly as they are: no membership, attribute, password,
    setting or comment of theirs changes (docs/databases.md). Every other statement not run is
    named in one warning. The roles created: name to oid."""
    text = read_node(repo, f"{path}/{pg.GLOBALS}", node).decode("utf-8", "replace")
    # Statement by statement, never line by line: a role's name may hold a newline, and a line of
    # it (`GRANT pg_read_server_files TO me;`) was run as a statement of its own by the restoring role.
    lines = pg_statements(text)
    raw = _raw_role_name(text, lines)
    if raw is not None:
        outcome.warnings.append(
            f"roles and memberships were not restored: role {raw!r} holds a line break, and the pg_dumpall that "
            "saved them (older than 17.6, 16.10, 15.14, 14.19, 13.22) wrote role names as they are in comment "
            "lines of globals.sql, where such a name can hide statements; create the roles by hand"
        )
        return {}
    created: dict[str, int] = {}
    handled: set[int] = set()
    with conn.connect_server() as con:
        existing = {str(r[0]) for r in con.execute("SELECT rolname FROM pg_roles")}
        for i, ln in enumerate(lines):
            m = _CREATE_ROLE.match(ln)
            role = _role_name(m.group(1)) if m else None
            if role is not None and role not in existing:
                handled.add(i)
                try:
                    with con.transaction():
                        con.execute(ln.encode())
                        row = con.execute("SELECT oid FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
                        if journal is not None and row:
                            # Before it commits: a role the journal names with this oid is this run's.
                            journal.note({"role": role, "oid": int(row[0])})
                    created[role] = int(row[0]) if row else 0
                except psycopg.Error as exc:
                    outcome.warnings.append(f"role {role} could not be created: {pg.pg_reason(exc)}")
        outcome.warnings += _run_for_created(con, lines, set(created), handled)
        if created:
            # The memberships it gave them: any other one was granted meanwhile (`_drop_created_roles`).
            oids = list(created.values())
            rows = con.execute(
                "SELECT roleid, member FROM pg_auth_members WHERE roleid = ANY(%s) OR member = ANY(%s)", (oids, oids)
            ).fetchall()
            pairs = {(int(a), int(b)) for a, b in rows}
            if given is not None:
                given |= pairs
            if journal is not None:
                journal.note({"memberships": sorted(pairs)})
    skipped = [ln for i, ln in enumerate(lines) if i not in handled and not _by_design(ln, existing)]
    if skipped:
        shown = "; ".join(_shown_statement(ln) for ln in skipped[:20])
        more = f"; and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        outcome.warnings.append(
            f"{len(skipped)} statement(s) of globals.sql were not run (Phoenix runs only the CREATE ROLE, ALTER ROLE "
            f"… WITH and GRANT role TO role that pg_dumpall writes for a role it creates): {shown}{more}; run by hand "
            "those you need"
        )
    return created


# A statement of globals.sql about one role: when that role existed before the restore, it is not
# run by design (an existing role is left as it is) and needs no warning.
_ROLE_STATEMENTS = (
    _CREATE_ROLE,
    _ANY_ALTER_ROLE,
    _ROLE_SETTING,
    re.compile(rf"^COMMENT ON ROLE ({_NAME}) IS "),
    re.compile(rf"^GRANT (?:{_NAME}) TO ({_NAME})[ ;]"),
)
# pg_dumpall's session settings at the top (after psql's `\restrict` line), nothing to restore.
_SESSION_SET = re.compile(r"^(?:\\[^\n]*\n\s*)*SET [a-z_]+ = [^;]*;$")
_PASSWORD = re.compile(r"(PASSWORD\s+)(?:E?'(?:[^']|'')*'?|\S+)", re.IGNORECASE)


def _by_design(statement: str, existing: set[str]) -> bool:
    """A statement that is left out without a warning: a session setting, or one about a role that
    was there before the restore."""
    if _SESSION_SET.match(statement):
        return True
    for pattern in _ROLE_STATEMENTS:
        m = pattern.match(statement)
        if m and _role_name(m.group(1)) in existing:
            return True
    return False


def _shown_statement(statement: str) -> str:
    """A statement not run, as a warning shows it: a password it holds left out, line breaks and
    other control characters escaped, at most 200 characters."""
    text = _PASSWORD.sub(r"\1'…'", statement)
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return text if len(text) <= 200 else text[:199] + "…"


def _run_for_created(con: psycopg.Connection[Any], lines: list[str], created: set[str], handled: set[int]) -> list[str]:
    """Run the statements of `globals.sql` that give a role created now its attributes
    (`ALTER ROLE … WITH`) and its memberships (`GRANT role TO it`); the warnings. Nothing else
    runs: not a membership of a role that was here (`GRANT new TO old` changes `old`), not a
    privilege on a parameter or a tablespace, not a role's settings (`ALTER ROLE … SET`: one such
    as session_preload_libraries loads a library at the role's next login), comment or label.
    The statements dealt with (run, or named in a warning of their own) are added to `handled`."""
    warnings: list[str] = []
    settings: set[str] = set()
    if not created:
        return warnings
    me = "SELECT rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user"
    su, createdb = con.execute(me).fetchone() or (False, False)
    cannot = frozenset(() if su else (*_SUPERUSER_ONLY, *(() if createdb else ("CREATEDB",))))
    for i, ln in enumerate(lines):
        alter, grant = _ALTER_ROLE.match(ln), _GRANT_ROLE.match(ln)
        if alter and _role_name(alter.group(1)) in created:
            handled.add(i)
            warnings += _alter_created(con, alter, cannot)
        elif (odd := _ANY_ALTER_ROLE.match(ln)) and _role_name(odd.group(1)) in created:
            handled.add(i)
            warnings.append(
                f"role {_role_name(odd.group(1))}'s attributes were not restored: its ALTER ROLE in globals.sql "
                "holds more than the attributes pg_dumpall writes; give the role its attributes by hand"
            )
        elif grant and _role_name(grant.group(2)) in created and _role_name(grant.group(1)) is not None:
            handled.add(i)
            try:
                con.execute(ln.encode())  # a membership that exists already is only a notice
            except psycopg.Error as exc:
                warnings.append(
                    f"role {_role_name(grant.group(2))} was not made a member of {_role_name(grant.group(1))}: "
                    f"{pg.pg_reason(exc)}"
                )
        elif (setting := _ROLE_SETTING.match(ln)) and _role_name(setting.group(1)) in created:
            handled.add(i)
            settings.add(str(_role_name(setting.group(1))))
    if settings:
        warnings.append(
            f"the settings of role(s) {', '.join(sorted(settings))} (ALTER ROLE … SET in globals.sql) were not "
            "restored, as a setting such as session_preload_libraries loads a library at the role's next login; "
            "set the ones you need by hand"
        )
    return warnings


def _alter_created(con: psycopg.Connection[Any], alter: re.Match[str], cannot: frozenset[str]) -> list[str]:
    """Give a role created now its attributes, all but those the restoring role may not give
    (`cannot`; their NO forms go too, the defaults of a new role): the role then has less than it
    had, never more, and LOGIN, its password and the rest still come. The warnings."""
    role = _role_name(alter.group(1))
    words = re.findall(rf" ({_ATTRIBUTE})(?= |$)", alter.group(2))
    kept = " ".join(w for w in words if w.removeprefix("NO") not in cannot)
    try:
        if kept:
            con.execute(f"ALTER ROLE {alter.group(1)} WITH {kept};".encode())
    except psycopg.Error as exc:
        return [f"role {role}: {pg.pg_reason(exc)}"]
    left = [w for w in words if w in cannot]
    return [f"role {role} was created without {', '.join(left)}: the restoring role may not give them"] if left else []


def restore_agent_rows(
    repo: Repository,
    conn: pg.PgConn,
    path: str,
    files: dict[str, Node],
    manifest: dict[str, Any],
    mode: ConflictMode,
    keyless: KeylessMode = "add",
    *,
    agent: str | None,
    drill: bool = False,
) -> DbRestoreOutcome:
    """The agent's saved rows merged into the shared tables (`sinks/postgres_agent.py`), in one
    transaction; with `drill`, into a scratch copy of them, always rolled back. `agent`: the
    agentId configured now; rows saved for another agent are refused."""
    saved_agent = str(manifest["agentId"])
    where = f"{conn.where} (agent {saved_agent}{', scratch copy of the live tables' if drill else ''})"
    outcome = DbRestoreOutcome(path, "postgresql", where, expected=dict(manifest["tables"]))
    try:
        setting = _agent_setting(path, manifest)
    except CorruptObject as exc:
        outcome.error = str(exc)
        return outcome
    if agent is not None and agent != saved_agent:
        outcome.error = (
            f"{path} holds the rows of agent {saved_agent}, and the configuration names agent {agent}; restore a "
            f"snapshot of agent {agent}, or set agentId to {saved_agent} to restore that agent's rows"
        )
        return outcome
    agent = saved_agent
    tables = [pg.AgentTable.from_json(d) for d in manifest.get("tableInfo", {}).values()]
    for t in tables:
        if t.file not in files:
            outcome.error = f"{path}/{t.file} is missing from the snapshot"
            return outcome

    def rows_of(t: pg.AgentTable) -> Iterator[bytes]:
        return stream_blocks(repo, f"{path}/{t.file}", files[t.file])

    try:
        with conn.connect() as con:
            with con.transaction(force_rollback=drill):
                # For the merge's transaction only: never left on the session for a pooler to
                # hand to another client.
                con.execute("SELECT set_config(%s, %s, true)", (setting, agent))
                pg.bound_lock_wait(con)  # a table another session holds locked: an error, no endless wait
                pg.exact_text(con)
                result = postgres_agent.merge(con, tables, rows_of, agent, mode=mode, keyless=keyless, drill=drill)
            if not drill:
                written = [
                    sql.Identifier(t.schema, t.table)
                    for t in tables
                    if (st := result.stats[t.key])["inserted"] or st.get("updated") or st.get("deleted")
                ]
                outcome.warnings += _analyze(con, written)
    except (PhoenixError, psycopg.Error) as exc:
        if isinstance(exc, psycopg.errors.LockNotAvailable) or isinstance(
            exc.__cause__, psycopg.errors.LockNotAvailable
        ):
            return outcome.fail(exc, _lock_wait_error(f"the {'drill' if drill else 'merge'} of agent {agent}'s rows"))
        reason = pg.pg_reason(exc) if isinstance(exc, psycopg.Error) else str(exc)
        return outcome.fail(
            exc,
            reason
            + ("; the merge would fail (nothing was written)" if drill else "; nothing was changed (one transaction)"),
        )
    outcome.stats = {**result.stats, "userTriggers": "not fired" if result.triggers_off else "fired"}
    outcome.found = result.found
    outcome.warnings += result.warnings
    for key, n in outcome.expected.items():
        if key in result.stats and result.stats[key]["saved"] != n:
            result.problems.append(
                f"{key}: the snapshot's file holds {result.stats[key]['saved']} rows, its manifest {n}"
            )
    if result.problems:
        shown = "; ".join(result.problems[:3]) + (
            f"; and {len(result.problems) - 3} more" if len(result.problems) > 3 else ""
        )
        outcome.error = (
            f"after the {'drill' if drill else 'restore'} not every saved row of agent {agent} is as saved ({shown})"
        )
        return outcome
    outcome.ok = True
    return outcome


def _agent_setting(path: str, manifest: dict[str, Any]) -> str:
    """The setting the policies read the agent from: always `app.agent_id`. A manifest naming
    another (search_path, a setting of an extension) is refused, not obeyed."""
    setting = str(manifest.get("agentSetting", pg.AGENT_SETTING))
    if setting != pg.AGENT_SETTING:
        raise CorruptObject(
            f"{path or 'the snapshot'}/manifest.json names the setting {setting[:80]!r} for the agent, where "
            f"Phoenix sets {pg.AGENT_SETTING} only; the snapshot was altered: restore another one"
        )
    return setting


def _analyze(con: psycopg.Connection[Any], tables: list[sql.Identifier] | None) -> list[str]:
    """ANALYZE what a restore wrote (`None`: the whole database), so the planner knows the new rows
    at once (an HNSW index is used from the first query, not after autovacuum's next round). A
    table the role may not analyze is a warning, never a failure."""
    skipped: list[str] = []

    def notice(diag: psycopg.errors.Diagnostic) -> None:
        if diag.severity_nonlocalized == "WARNING" and diag.message_primary:
            skipped.append(diag.message_primary)

    con.add_notice_handler(notice)
    try:
        if tables is None:
            con.execute("ANALYZE")
        for table in tables or []:
            con.execute(sql.SQL("ANALYZE {}").format(table))
    except psycopg.Error as exc:
        return [f"ANALYZE after the restore failed ({pg.pg_reason(exc)}); autovacuum will analyze the tables later"]
    finally:
        con.remove_notice_handler(notice)
    if skipped:
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        return [f"ANALYZE after the restore: {skipped[0]}{more}; autovacuum will analyze them later"]
    return []


def absence(conn: pg.PgConn) -> str | None:
    """Why there is nothing of `conn`'s database to save before a restore (it does not exist on
    its server: the restore creates it), or None when it exists."""
    with conn.connect_server() as con:
        if _database_exists(con, conn.database):
            return None
    return f"database {conn.database} does not exist on {_server(conn)}"


def live_rows(conn: pg.PgConn, manifest: dict[str, Any]) -> dict[str, int]:
    with conn.connect() as con:
        if manifest.get("kind") != "agent-rows":
            return pg.counts_as_recorded(pg.table_counts(con), manifest.get("tables", {}))
        agent = str(manifest["agentId"])
        out: dict[str, int] = {}
        with con.transaction():  # the agent is set for this transaction only
            con.execute("SELECT set_config(%s, %s, true)", (_agent_setting("", manifest), agent))
            saved = [pg.AgentTable.from_json(d) for d in manifest.get("tableInfo", {}).values()]
            for t in postgres_agent.live_tables(con, saved):
                query = sql.SQL("SELECT count(*) FROM {} WHERE ").format(t.rows)
                row = con.execute(query + pg.agent_filter(t), (agent,)).fetchone()
                out[t.key] = int(row[0]) if row else 0
        return out


def drill_postgres(
    repo: Repository, entry: PostgresDb, env: Mapping[str, str], path: str, files: dict[str, Node], scratch: str
) -> DbRestoreOutcome:
    """A whole-database dump restored into the new database `scratch` and dropped once checked;
    agent-scoped rows merged into a scratch copy of the live tables, rolled back."""
    manifest = read_manifest(repo, path, files)
    conn = pg.connection_for(entry, env)
    if manifest.get("kind") == "dump":
        return restore_pg_scratch(
            repo, conn, path, files, scratch, manifest=manifest, configured=entry.pg_dump, drop_after=True
        )
    return restore_agent_rows(repo, conn, path, files, manifest, "update", "add", agent=entry.agent_id, drill=True)
