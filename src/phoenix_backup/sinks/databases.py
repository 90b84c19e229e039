"""Restoring PostgreSQL and Redis databases from a snapshot into their servers, and checking them.

The restore op (`ops/restore.py`) hands over the snapshot's `postgres/<name>/…` and
`redis/<name>/…` nodes; each database is restored into the server of the current config's entry
of the same name (in place), or, for PostgreSQL, into a new database (`--to-database NAME`).
`restore --to DIR` needs none of this: the streams are written as files below DIR.

PostgreSQL, whole database: roles missing on the server are created from `globals.sql` first (so
ownership and policies restore onto a fresh server), then the dump is streamed into
`pg_restore --clean --if-exists --single-transaction --exit-on-error`: the database is either
wholly restored or left as it was. Row counts are compared with the manifest afterwards.

PostgreSQL, agent-scoped: each table's rows go through a temporary table into the shared table by
primary key (`--conflict-mode skip` keeps existing rows, `update` overwrites them), in one
transaction with `app.agent_id` set, so row-level security applies; rows of other agents are never
written. Afterwards every saved row must be present.

Redis: `RESTORE … ABSTTL` per key (`REPLACE` unless `--conflict-mode skip`); a key whose expiry
has passed is not restored; a payload the server refuses (from a newer Redis) is written back with
ordinary commands. Afterwards every restored key must exist.

`restore_pg_scratch` restores a snapshot's dump into a scratch database for `phx drill`.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import secrets
import subprocess
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

import psycopg
import redis as redis_lib
from psycopg import sql

from phoenix_backup.config import Config
from phoenix_backup.config.model import PostgresDb, RedisDb
from phoenix_backup.errors import CorruptObject, PhoenixError, RestoreError, SourceError, UsageError
from phoenix_backup.repo.reader import NodeReader, read_node
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Node
from phoenix_backup.sinks import postgres_agent as agent_merge
from phoenix_backup.sinks.postgres_agent import KeylessMode
from phoenix_backup.sources import postgres as pg
from phoenix_backup.sources import redis as rds
from phoenix_backup.sources.layout import DATABASE_ROOTS
from phoenix_backup.sources.streams import IterReader

ConflictMode = Literal["skip", "update"]
CONFLICT_MODES: tuple[ConflictMode, ...] = ("skip", "update")
REDIS_BATCH = 200


@dataclass
class DbRestoreOutcome:
    """What happened to one database; `ok` only when it was restored and its check passed."""

    path: str  # postgres/<name> or redis/<name>
    engine: str
    target: str  # where it went: host:port/db
    ok: bool = False
    expected: dict[str, int] = field(default_factory=dict)  # the snapshot's rows (keys) per table
    found: dict[str, int] = field(default_factory=dict)  # counted after the restore
    stats: dict[str, Any] = field(default_factory=dict)  # inserted/updated/skipped/fallback...
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    not_restored: list[dict[str, str]] = field(default_factory=list)  # Redis: {key, error} per key

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "engine": self.engine,
            "target": self.target,
            "ok": self.ok,
            "integrity": "ok" if self.ok else (self.error or "failed"),
            "expected": dict(sorted(self.expected.items())),
            "found": dict(sorted(self.found.items())),
            "stats": self.stats,
            "warnings": self.warnings,
            "error": self.error,
            "notRestored": self.not_restored,
        }


# -- reading a snapshot's streams ---------------------------------------------------------------


def node_reader(repo: Repository, logical: str, node: Node) -> BinaryIO:
    """A node's bytes as a buffered file, checked before its last block is read."""
    return io.BufferedReader(IterReader(NodeReader(repo, logical, node).blocks()), buffer_size=1 << 20)


def group_database_nodes(nodes: Iterable[tuple[str, Node]]) -> dict[str, dict[str, Node]]:
    """{"postgres/main": {"database.dump": node, "rows/public.t.csv": node, ...}, ...}"""
    out: dict[str, dict[str, Node]] = {}
    for logical, node in nodes:
        parts = logical.split("/")
        if len(parts) < 3 or parts[0] not in DATABASE_ROOTS or node.type != "file":
            continue
        out.setdefault("/".join(parts[:2]), {})["/".join(parts[2:])] = node
    return out


# -- entry point for the restore op -------------------------------------------------------------


def restore_databases(
    repo: Repository,
    cfg: Config,
    env: Mapping[str, str],
    nodes: Iterable[tuple[str, Node]],
    *,
    to_database: str | None = None,
    conflict_mode: ConflictMode = "update",
    keyless: KeylessMode = "add",
) -> list[DbRestoreOutcome]:
    """Restore every database among `nodes` in place (or into `to_database`); one outcome each.
    A database that fails is reported in its outcome; the others are still restored."""
    groups = group_database_nodes(nodes)
    pg_groups = [k for k in groups if k.startswith("postgres/")]
    if to_database is not None and len(pg_groups) != 1:
        raise UsageError(
            f"--to-database restores one PostgreSQL database, and this restore selects {len(pg_groups)}; "
            "pick one with --path 'postgres/<name>/*'"
        )
    outcomes: list[DbRestoreOutcome] = []
    for path, files in sorted(groups.items()):
        root, name = path.split("/", 1)
        try:
            if root == "postgres":
                entry = _entry(cfg.databases.postgres, "postgres", name)
                assert isinstance(entry, PostgresDb)
                outcomes.append(restore_postgres(repo, entry, path, files, env, to_database, conflict_mode, keyless))
            else:
                rentry = _entry(cfg.databases.redis, "redis", name)
                assert isinstance(rentry, RedisDb)
                outcomes.append(restore_redis(repo, rentry, path, files, conflict_mode))
        except PhoenixError as exc:
            if to_database is not None:
                raise  # the one database asked for: its error is the command's
            outcomes.append(DbRestoreOutcome(path, "postgresql" if root == "postgres" else "redis", "", error=str(exc)))
    return outcomes


def _entry(entries: Iterable[PostgresDb | RedisDb], kind: str, name: str) -> PostgresDb | RedisDb:
    for e in entries:
        if e.name == name:
            return e
    raise RestoreError(
        f"the snapshot holds {kind}/{name} but the config has no databases.{kind} entry named {name}; add one "
        f"pointing at the server to restore into, or write it as files with --to DIR"
    )


def _manifest(repo: Repository, path: str, files: dict[str, Node]) -> dict[str, Any]:
    node = files.get(pg.MANIFEST)
    if node is None:
        raise CorruptObject(f"{path} has no manifest.json in the snapshot; it cannot be restored into a server")
    try:
        doc = json.loads(read_node(repo, f"{path}/{pg.MANIFEST}", node))
    except ValueError as exc:
        raise CorruptObject(f"{path}/manifest.json is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise CorruptObject(f"{path}/manifest.json is not a JSON object")
    return doc


# -- PostgreSQL ----------------------------------------------------------------------------------


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
    manifest = _manifest(repo, path, files)
    conn = pg.connection_for(entry, env)
    if manifest.get("kind") == "agent-rows":
        if to_database is not None:
            conn = conn.with_database(to_database)
        return _restore_agent_rows(repo, conn, path, files, manifest, conflict_mode, keyless, agent=entry.agent_id)
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
    manifest = manifest if manifest is not None else _manifest(repo, path, files)
    if manifest.get("kind") != "dump":
        raise RestoreError(f"{path} holds one agent's rows, not a whole database; restore it in place instead")
    with conn.connect_server() as con:
        if _database_exists(con, database):
            raise UsageError(
                f"database {database} already exists on {_server(conn)}; choose another --to-database name or "
                "drop it first"
            )
    target = conn.with_database(database)
    outcome = _restore_dump(
        repo, target, path, files, manifest, clean=False, configured=configured, as_original=not drop_after
    )
    if (drop_after or not outcome.ok) and outcome.stats.get("databaseCreated"):
        _drop_database(conn, database, outcome)
    return outcome


def _server(conn: pg.PgConn) -> str:
    return conn.where.rsplit("/", 1)[0]


def _database_exists(con: psycopg.Connection[Any], database: str) -> bool:
    return con.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is not None


def _drop_database(conn: pg.PgConn, database: str, outcome: DbRestoreOutcome) -> None:
    try:
        with conn.connect_server() as con:
            con.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
    except (psycopg.Error, PhoenixError) as exc:
        outcome.warnings.append(f"database {database} could not be dropped: {exc}")


def _create_database(
    conn: pg.PgConn, manifest: dict[str, Any], outcome: DbRestoreOutcome, *, as_original: bool
) -> None:
    """Create `conn`'s database, owned as the original was (when that role exists here and this
    role may give it a database), with its encoding and, where this server has them, its locale
    and locale provider (icu, builtin)."""
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
                con.execute(sql.Composed(parts))
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
    outcome.stats["databaseCreated"] = True
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
) -> DbRestoreOutcome:
    """pg_restore the dump into `conn`'s database, creating it first when the server lacks it
    (after the roles of globals.sql, so its owner can be one of them); then ANALYZE and count."""
    outcome = DbRestoreOutcome(path, "postgresql", conn.where, expected=dict(manifest.get("tables", {})))
    dump = files.get(pg.DUMP)
    if dump is None:
        outcome.error = f"{path} has no {pg.DUMP} in the snapshot"
        return outcome
    try:
        with conn.connect_server() as con:
            _, num = pg.server_version(con)
            exists = _database_exists(con, conn.database)
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
            outcome.stats["rolesCreated"] = _apply_globals(repo, conn, path, files[pg.GLOBALS], outcome)
        if not exists:
            _create_database(conn, manifest, outcome, as_original=as_original)
        args = [str(restore_tool), "-w", "--single-transaction", "--exit-on-error", f"--dbname={conn.conninfo}"]
        if clean:
            args[1:1] = ["--clean", "--if-exists"]
        _feed(args, conn.tool_env(), NodeReader(repo, f"{path}/{pg.DUMP}", dump).blocks(), what=f"pg_restore of {path}")
        with conn.connect() as con:
            outcome.warnings += _analyze(con, None)
            outcome.found = pg.table_counts(con)
    except (PhoenixError, psycopg.Error) as exc:
        outcome.error = pg.pg_reason(exc) if isinstance(exc, psycopg.Error) else str(exc)
        if outcome.stats.get("databaseCreated"):
            _drop_database(conn, conn.database, outcome)  # it did not exist: it is left so
        return outcome
    wrong = {t: (n, outcome.found.get(t)) for t, n in outcome.expected.items() if outcome.found.get(t) != n}
    if wrong:
        shown = "; ".join(f"{t}: {have} rows, the snapshot {n}" for t, (n, have) in sorted(wrong.items())[:3])
        outcome.error = f"row counts differ after the restore ({shown})"
        return outcome
    outcome.ok = True
    return outcome


def _feed(args: list[str], env: dict[str, str], blocks: Iterator[bytes], *, what: str) -> None:
    """Run a program with `blocks` on its stdin; raise its last error line if it fails. When the
    blocks fail (damaged data), the program is killed before its input ends, so a single
    transaction never commits."""
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
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
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    code = proc.wait()
    drain.join(10)
    if code != 0:
        text = b"".join(errors).decode("utf-8", "replace")
        raise RestoreError(f"{what} failed (exit {code}): {_last_line(text)}; the database was left as it was")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("Command was:")]
    for ln in lines:
        if "error:" in ln:
            return ln.split("error:", 1)[1].strip()
    return lines[-1] if lines else "no message"


_CREATE_ROLE = re.compile(r'^CREATE ROLE ("(?:[^"]|"")+"|[^\s;]+);$')
_ALTER_ROLE = re.compile(r'^ALTER ROLE ("(?:[^"]|"")+"|[^\s;]+) WITH ')
_GRANT = re.compile(r"^GRANT .+ TO .+;$")


def _role_name(token: str) -> str:
    return token[1:-1].replace('""', '"') if token.startswith('"') else token


def _apply_globals(repo: Repository, conn: pg.PgConn, path: str, node: Node, outcome: DbRestoreOutcome) -> list[str]:
    """Create the roles of `globals.sql` that the server lacks, with their attributes, and their
    memberships. Existing roles are left exactly as they are (their passwords included)."""
    text = read_node(repo, f"{path}/{pg.GLOBALS}", node).decode("utf-8", "replace")
    lines = [ln.strip() for ln in text.splitlines()]
    created: list[str] = []
    with conn.connect_server() as con:
        existing = {str(r[0]) for r in con.execute("SELECT rolname FROM pg_roles")}
        for ln in lines:
            m = _CREATE_ROLE.match(ln)
            if m and _role_name(m.group(1)) not in existing:
                role = _role_name(m.group(1))
                try:
                    con.execute(ln.encode())
                    created.append(role)
                except psycopg.Error as exc:
                    outcome.warnings.append(f"role {role} could not be created: {pg.pg_reason(exc)}")
        for ln in lines:
            m = _ALTER_ROLE.match(ln)
            if m and _role_name(m.group(1)) in created:
                try:
                    con.execute(ln.encode())
                except psycopg.Error as exc:
                    outcome.warnings.append(f"role {_role_name(m.group(1))}: {pg.pg_reason(exc)}")
            elif created and _GRANT.match(ln):
                with contextlib.suppress(psycopg.Error):
                    con.execute(ln.encode())  # memberships that exist already are only a notice
    return created


def _restore_agent_rows(
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
    """The agent's saved rows merged into the shared tables (`ops/agent_merge.py`), in one
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
        return NodeReader(repo, f"{path}/{t.file}", files[t.file]).blocks()

    try:
        with conn.connect() as con:
            con.execute("SELECT set_config(%s, %s, false)", (setting, agent))
            pg.exact_text(con)
            with con.transaction(force_rollback=drill):
                result = agent_merge.merge(con, tables, rows_of, agent, mode=mode, keyless=keyless, drill=drill)
            if not drill:
                written = [
                    sql.Identifier(t.schema, t.table)
                    for t in tables
                    if (st := result.stats[t.key])["inserted"] or st.get("updated") or st.get("deleted")
                ]
                outcome.warnings += _analyze(con, written)
    except (PhoenixError, psycopg.Error) as exc:
        outcome.error = pg.pg_reason(exc) if isinstance(exc, psycopg.Error) else str(exc)
        outcome.error += (
            "; the merge would fail (nothing was written)" if drill else "; nothing was changed (one transaction)"
        )
        return outcome
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


# -- Redis ---------------------------------------------------------------------------------------

# How many keys not restored are named one by one in the warnings (all are in --json).
SHOWN_KEYS = 50
_UNKNOWN_REDIS = (99,)  # a server that does not say its version: every command is tried
# How long the fallback's temporary key outlives a restore that dies before renaming it.
TEMP_KEY_TTL_MS = 3_600_000


def _is_payload_refused(exc: BaseException) -> bool:
    text = str(exc)
    return "payload version or checksum" in text or "Bad data format" in text


@dataclass(frozen=True)
class RedisFeatures:
    """What the server restored into can do, by its version (INFO server's redis_version), so the
    fallback sends only commands it has: XSETID's ENTRIESADDED/MAXDELETEDID and XGROUP CREATE's
    ENTRIESREAD came with 7.0, XGROUP CREATECONSUMER with 6.2, streams and RESTORE ... ABSTTL
    with 5.0, HSET of several fields with 4.0."""

    version: tuple[int, ...]

    @classmethod
    def of(cls, text: str) -> RedisFeatures:
        """From a version text; a server that does not say is taken to have every command."""
        parts = tuple(int(p) for p in re.findall(r"\d+", text)[:3])
        return cls(parts or _UNKNOWN_REDIS)

    @property
    def text(self) -> str:
        return "of an unknown version" if self.version == _UNKNOWN_REDIS else ".".join(map(str, self.version))

    def has(self, *version: int) -> bool:
        return self.version >= version


class RedisWriter:
    """Writes records into one server: `RESTORE` (exact), or the logical form when the server
    refuses the payload. One key that cannot be written is recorded in `failed` and the others
    carry on."""

    def __init__(self, client: redis_lib.Redis, mode: ConflictMode, features: RedisFeatures) -> None:
        self.client = client
        self.mode = mode
        self.features = features
        self.stats = {"restored": 0, "skipped": 0, "expired": 0, "fallback": 0}
        self.failed: list[tuple[bytes, str]] = []
        self.done: list[tuple[bytes, int]] = []  # (key, saved expiry): restored, or kept (skip mode)

    def now_ms(self) -> int:
        """The server's clock, which decides when a key expires (this host's may differ)."""
        seconds, micros = rds.command(self.client, "TIME")
        return int(seconds) * 1000 + int(micros) // 1000

    def restore(self, batch: list[rds.Record]) -> list[bytes]:
        """Write a batch; the keys restored, or kept as they were (skip mode)."""
        now_ms = self.now_ms()
        live = [r for r in batch if r.expire_at_ms == rds.NO_EXPIRY or r.expire_at_ms > now_ms]
        self.stats["expired"] += len(batch) - len(live)
        pipe = self.client.pipeline(transaction=False)
        for r in live:
            rds.command(pipe, *self._restore_args(r, now_ms))
        replies = pipe.execute(raise_on_error=False)
        done: list[bytes] = []
        for r, reply in zip(live, replies, strict=True):
            if not isinstance(reply, Exception):
                self.stats["restored"] += 1
                done.append(r.key)
            elif "BUSYKEY" in str(reply):
                self.stats["skipped"] += 1  # --conflict-mode skip: the live key stays
                done.append(r.key)
            elif _is_payload_refused(reply) and r.type in rds.TYPES:
                if self._fallback(r):
                    done.append(r.key)
            elif _is_payload_refused(reply):
                self.failed.append(
                    (r.key, f"Redis {self.features.text} refuses its payload and a module type has no other form")
                )
            else:
                self.failed.append((r.key, _redis_reason(reply)))
        expiry = {r.key: r.expire_at_ms for r in live}
        self.done += [(k, expiry[k]) for k in done]
        return done

    def check(self) -> tuple[int, int]:
        """(keys there, keys missing) of those written or kept: each must exist now, unless its
        saved expiry has passed since on the server's clock (it expired as it would have; counted
        in `expired`)."""
        missing: list[tuple[bytes, int]] = []
        for i in range(0, len(self.done), 1000):
            chunk = self.done[i : i + 1000]
            if int(rds.command(self.client, "EXISTS", *(k for k, _ in chunk))) == len(chunk):
                continue
            pipe = self.client.pipeline(transaction=False)
            for k, _ in chunk:
                rds.command(pipe, "EXISTS", k)
            missing += [c for c, there in zip(chunk, pipe.execute(), strict=True) if not int(there)]
        now = self.now_ms()
        expired = sum(1 for _, at in missing if at != rds.NO_EXPIRY and at <= now)
        self.stats["expired"] += expired
        return len(self.done) - len(missing), len(missing) - expired

    def _restore_args(self, r: rds.Record, now_ms: int) -> list[Any]:
        expires = r.expire_at_ms != rds.NO_EXPIRY
        if not expires:
            ttl = 0
        elif self.features.has(5, 0):
            ttl = r.expire_at_ms
        else:
            ttl = max(1, r.expire_at_ms - now_ms)  # no ABSTTL before 5.0: the time left
        args: list[Any] = ["RESTORE", r.key, ttl, r.payload]
        if expires and self.features.has(5, 0):
            args.append("ABSTTL")
        if self.mode == "update":
            args.append("REPLACE")
        return args

    def _fallback(self, r: rds.Record) -> bool:
        """The logical form of a refused payload; False when it could not be written."""
        try:
            if self.mode == "skip" and int(rds.command(self.client, "EXISTS", r.key)):
                self.stats["skipped"] += 1
                return True
            write_logical(self.client, r, self.features)
        except (RestoreError, redis_lib.RedisError) as exc:
            self.failed.append((r.key, _redis_reason(exc)))
            return False
        self.stats["fallback"] += 1
        self.stats["restored"] += 1
        return True


def _redis_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _key_text(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def restore_redis(
    repo: Repository, entry: RedisDb, path: str, files: dict[str, Node], mode: ConflictMode = "update"
) -> DbRestoreOutcome:
    node = files.get(rds.RECORDS)
    outcome = DbRestoreOutcome(path, "redis", rds.where(entry.url))
    if node is None:
        outcome.error = f"{path} has no {rds.RECORDS} in the snapshot"
        return outcome
    try:
        client = rds.connect(entry)
    except SourceError as exc:
        outcome.error = str(exc)
        return outcome
    writer: RedisWriter | None = None
    try:
        features = RedisFeatures.of(rds.server_info(client).get("redis_version", ""))
        writer = RedisWriter(client, mode, features)
        # Redis restores key by key, not in one transaction: the record file is checked whole
        # (SHA-256) before the first key is written.
        for _ in NodeReader(repo, f"{path}/{rds.RECORDS}", node).blocks():
            pass
        header, records = rds.read_records(node_reader(repo, f"{path}/{rds.RECORDS}", node))
        batch: list[rds.Record] = []
        count = 0
        for rec in records:
            count += 1
            batch.append(rec)
            if len(batch) >= REDIS_BATCH:
                writer.restore(batch)
                batch = []
        if batch:
            writer.restore(batch)
        present, missing = writer.check()
        outcome.expected = {"keys": count - writer.stats["expired"]}
        outcome.found = {"keys": present}
        outcome.stats = {
            **writer.stats,
            "notRestored": len(writer.failed),
            "sourceServerVersion": str(header.get("serverVersion")),
            "serverVersion": features.text,
        }
    except (PhoenixError, redis_lib.RedisError) as exc:
        outcome.stats = dict(writer.stats) if writer else {}
        outcome.error = str(exc)
        return outcome
    finally:
        client.close()
    failed = writer.failed
    outcome.not_restored = [{"key": _key_text(k), "error": e} for k, e in failed]
    outcome.warnings += [f"{path}: key {_key_text(k)!r} not restored: {e}" for k, e in failed[:SHOWN_KEYS]]
    if len(failed) > SHOWN_KEYS:
        outcome.warnings.append(f"{path}: {len(failed) - SHOWN_KEYS} more keys not restored (all in --json)")
    if failed:
        first = f"{_key_text(failed[0][0])!r}: {failed[0][1]}"
        outcome.error = (
            f"{len(failed)} of {outcome.expected['keys']} keys were not restored (the first, {first}); the others were"
        )
        return outcome
    if missing:
        outcome.error = f"{missing} restored key(s) are missing right after the restore"
        return outcome
    outcome.ok = True
    return outcome


def write_logical(client: redis_lib.Redis, r: rds.Record, features: RedisFeatures) -> None:
    """Write a key back with ordinary commands that `features` has. The value is built under a
    temporary name and renamed onto the key only when every command succeeded, so a key is
    replaced whole or not at all. The temporary key expires on its own (TEMP_KEY_TTL_MS) should
    this process die before the rename, and is deleted when the rename is refused."""
    if r.type == "stream" and not features.has(5, 0):
        raise RestoreError(f"streams need Redis 5.0 or newer, and this server is {features.text}")
    tmp = r.key + b".phx-restore." + secrets.token_hex(4).encode()
    pipe = client.pipeline(transaction=True)
    value = r.logical
    if r.type == "string":
        rds.command(pipe, "SET", tmp, value)
    elif r.type == "list":
        for part in _chunks(value):
            rds.command(pipe, "RPUSH", tmp, *part)
    elif r.type == "set":
        for part in _chunks(value):
            rds.command(pipe, "SADD", tmp, *part)
    elif r.type == "zset":
        flat = [x for i in range(0, len(value), 2) for x in (value[i + 1], value[i])]  # score, member
        for part in _chunks(flat, 2000):
            rds.command(pipe, "ZADD", tmp, *part)
    elif r.type == "hash":
        for part in _chunks(value, 2000):
            rds.command(pipe, "HSET" if features.has(4, 0) else "HMSET", tmp, *part)
    elif r.type == "stream":
        _stream_commands(pipe, tmp, value, features)
    rds.command(pipe, "PEXPIRE", tmp, TEMP_KEY_TTL_MS)
    try:
        replies = pipe.execute(raise_on_error=False)
        problem = next((x for x in replies if isinstance(x, Exception)), None)
    except redis_lib.RedisError as exc:  # refused when queued (EXECABORT): nothing was written
        problem = exc
    if problem is not None:
        rds.command(client, "DEL", tmp)
        raise RestoreError(_redis_reason(problem))
    pipe = client.pipeline(transaction=True)
    rds.command(pipe, "RENAME", tmp, r.key)
    if r.expire_at_ms != rds.NO_EXPIRY:
        rds.command(pipe, "PEXPIREAT", r.key, r.expire_at_ms)
    else:
        rds.command(pipe, "PERSIST", r.key)  # RENAME kept the temporary key's expiry
    try:
        pipe.execute()
    except redis_lib.RedisError:
        with contextlib.suppress(redis_lib.RedisError):
            rds.command(client, "DEL", tmp)
        raise


def _chunks(items: list[Any], size: int = 1000) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _stream_commands(pipe: Any, key: bytes, value: list[Any], features: RedisFeatures) -> None:
    entries, meta, groups = value
    for eid, fields in entries:
        rds.command(pipe, "XADD", key, eid, *fields)
    last_id, entries_added, max_deleted = meta
    if not entries:
        # An empty stream exists only through a group: MKSTREAM makes it, then the group is dropped
        # and made again below with its own position.
        rds.command(pipe, "XGROUP", "CREATE", key, "phx-restore-tmp", "$", "MKSTREAM")
        rds.command(pipe, "XGROUP", "DESTROY", key, "phx-restore-tmp")
    if features.has(7, 0):
        rds.command(pipe, "XSETID", key, last_id, "ENTRIESADDED", entries_added, "MAXDELETEDID", max_deleted)
    else:
        rds.command(pipe, "XSETID", key, last_id)  # before 7.0 a stream keeps neither counter
    for name, last_delivered, entries_read, consumers, pending in groups:
        args: list[Any] = ["XGROUP", "CREATE", key, name, last_delivered]
        if entries_read is not None and features.has(7, 0):
            args += ["ENTRIESREAD", entries_read]
        rds.command(pipe, *args)
        for consumer in consumers:
            if features.has(6, 2):
                rds.command(pipe, "XGROUP", "CREATECONSUMER", key, name, consumer)
            else:
                # Before 6.2 a consumer is made by naming it; reading its own (still empty)
                # history delivers nothing.
                rds.command(pipe, "XREADGROUP", "GROUP", name, consumer, "COUNT", 1, "STREAMS", key, "0")
        for eid, consumer, deliveries in pending:
            rds.command(pipe, "XCLAIM", key, name, consumer, 0, eid, "FORCE", "JUSTID", "RETRYCOUNT", deliveries)


def describe(outcomes: list[DbRestoreOutcome]) -> list[dict[str, Any]]:
    return [o.to_json() for o in outcomes]


def check_conflict_mode(value: str) -> ConflictMode:
    if value not in CONFLICT_MODES:
        raise UsageError(f"--conflict-mode must be skip or update (got {value!r})")
    return value


# Kept for callers that want one line per database.
def summary_line(o: DbRestoreOutcome) -> str:
    if o.ok:
        total = sum(o.found.values())
        return f"{o.path}: restored into {o.target}, {total} rows/keys checked"
    return f"{o.path}: NOT restored: {o.error}"


# -- for `phx drill` -----------------------------------------------------------------------------


def drill_database(
    repo: Repository, cfg: Config, env: Mapping[str, str], path: str, files: dict[str, Node], scratch: str
) -> DbRestoreOutcome:
    """Prove one database of a snapshot without touching the live one.

    PostgreSQL, a whole-database dump: restored into the new database `scratch` on the configured
    server, row counts compared with the manifest, then dropped. Agent-scoped rows: the restore's
    own merge run against a scratch copy of the live tables (temporary tables of the configured
    database, rolled back), so the drill fails where the restore would. Redis: every record parsed
    and counted against the manifest (a drill never writes into a shared server).
    `files` is one entry of `group_database_nodes`."""
    root, name = path.split("/", 1)
    if root == "postgres":
        manifest = _manifest(repo, path, files)
        entry = _entry(cfg.databases.postgres, "postgres", name)
        assert isinstance(entry, PostgresDb)
        conn = pg.connection_for(entry, env)
        if manifest.get("kind") == "dump":
            return restore_pg_scratch(
                repo, conn, path, files, scratch, manifest=manifest, configured=entry.pg_dump, drop_after=True
            )
        return _restore_agent_rows(repo, conn, path, files, manifest, "update", "add", agent=entry.agent_id, drill=True)
    outcome = DbRestoreOutcome(path, "redis", "(records parsed)")
    node = files.get(rds.RECORDS)
    try:
        manifest = _manifest(repo, path, files)
        if node is None:
            raise CorruptObject(f"{path} has no {rds.RECORDS} in the snapshot")
        _header, records = rds.read_records(node_reader(repo, f"{path}/{rds.RECORDS}", node))
        outcome.expected = {"keys": int(manifest.get("keys", -1))}
        outcome.found = {"keys": sum(1 for _ in records)}
    except PhoenixError as exc:
        outcome.error = str(exc)
        return outcome
    outcome.ok = outcome.found == outcome.expected
    if not outcome.ok:
        outcome.error = "the record file's key count differs from the manifest"
    return outcome


# -- said before an in-place restore ------------------------------------------------------------


def server_warnings(
    repo: Repository, cfg: Config, env: Mapping[str, str], nodes: Iterable[tuple[str, Node]]
) -> list[str]:
    """What restoring these server databases in place will do besides restoring them, to be said
    before it starts (the restore asks, or needs --yes): the user triggers an agent-scoped merge
    will fire because the role may not turn them off. Reads the servers; writes nothing. A server
    that cannot be asked is left to the restore, which reports it."""
    out: list[str] = []
    for path, files in sorted(group_database_nodes(nodes).items()):
        root, name = path.split("/", 1)
        if root != "postgres":
            continue
        try:
            manifest = _manifest(repo, path, files)
            if manifest.get("kind") != "agent-rows":
                continue
            entry = _entry(cfg.databases.postgres, "postgres", name)
            assert isinstance(entry, PostgresDb)
            tables = [pg.AgentTable.from_json(d).key for d in manifest.get("tableInfo", {}).values()]
            with pg.connection_for(entry, env).connect() as con, con.transaction(force_rollback=True):
                warning = agent_merge.trigger_warning(con, tables)
        except (PhoenixError, psycopg.Error):
            continue
        if warning:
            out.append(f"{path}: {warning}")
    return out


def absent_databases(cfg: Config, env: Mapping[str, str], paths: Iterable[str]) -> dict[str, str]:
    """The PostgreSQL databases among `paths` (postgres/<name>) that do not exist on their server,
    each with the sentence saying so: a restore creates them, and there is nothing of them to save
    beforehand. A server that cannot be asked is left to whoever connects next, to report."""
    out: dict[str, str] = {}
    for path in paths:
        root, name = path.split("/", 1)
        if root != "postgres":
            continue
        try:
            entry = _entry(cfg.databases.postgres, "postgres", name)
            assert isinstance(entry, PostgresDb)
            conn = pg.connection_for(entry, env)
            with conn.connect_server() as con:
                exists = _database_exists(con, conn.database)
        except (PhoenixError, psycopg.Error):
            continue
        if not exists:
            out[path] = f"database {conn.database} does not exist on {_server(conn)}"
    return out


# -- for `phx restore --dry-run` -----------------------------------------------------------------


def preview_databases(
    repo: Repository,
    cfg: Config,
    env: Mapping[str, str],
    nodes: Iterable[tuple[str, Node]],
    *,
    to_database: str | None = None,
) -> list[dict[str, Any]]:
    """Per database, what a restore would do: where it goes and, per table, the snapshot's rows
    against the live rows (PostgreSQL) or keys (Redis). Reads the servers; writes nothing."""
    out: list[dict[str, Any]] = []
    for path, files in sorted(group_database_nodes(nodes).items()):
        root, name = path.split("/", 1)
        doc: dict[str, Any] = {"path": path, "engine": "postgresql" if root == "postgres" else "redis"}
        try:
            manifest = _manifest(repo, path, files)
            snap_rows: dict[str, int] = (
                dict(manifest.get("tables", {})) if root == "postgres" else {"keys": int(manifest.get("keys", 0))}
            )
            if root == "postgres":
                entry = _entry(cfg.databases.postgres, "postgres", name)
                assert isinstance(entry, PostgresDb)
                conn = pg.connection_for(entry, env)
                if to_database is not None:
                    doc.update(action="create", target=f"{conn.where.rsplit('/', 1)[0]}/{to_database}")
                    doc["tables"] = {t: _delta(n, 0) for t, n in sorted(snap_rows.items())}
                    out.append(doc)
                    continue
                doc.update(action="restore", target=conn.where, kind=manifest.get("kind"))
                if manifest.get("kind") == "dump" and path in absent_databases(cfg, env, [path]):
                    doc["action"] = "create"  # nothing there yet: every row is added
                    doc["tables"] = {t: _delta(n, 0) for t, n in sorted(snap_rows.items())}
                    out.append(doc)
                    continue
                live = _live_pg_rows(conn, manifest)
            else:
                rentry = _entry(cfg.databases.redis, "redis", name)
                assert isinstance(rentry, RedisDb)
                doc.update(action="restore", target=rds.where(rentry.url))
                client = rds.connect(rentry)
                try:
                    live = {"keys": _count_matching(client, str(manifest.get("match", rentry.match)))}
                finally:
                    client.close()
            doc["tables"] = {t: _delta(snap_rows.get(t, 0), live.get(t, 0)) for t in sorted(set(snap_rows) | set(live))}
        except (PhoenixError, psycopg.Error, redis_lib.RedisError) as exc:
            doc["error"] = pg.pg_reason(exc) if isinstance(exc, psycopg.Error) else str(exc)
        out.append(doc)
    return out


def _delta(snapshot: int, live: int) -> dict[str, int]:
    """Counts only: a server database is not diffed row by row, so `changed` is not known (0)."""
    return {
        "snapshot": snapshot,
        "live": live,
        "added": max(0, snapshot - live),
        "removed": max(0, live - snapshot),
        "changed": 0,
    }


def _live_pg_rows(conn: pg.PgConn, manifest: dict[str, Any]) -> dict[str, int]:
    with conn.connect() as con:
        if manifest.get("kind") != "agent-rows":
            return pg.table_counts(con)
        agent = str(manifest["agentId"])
        con.execute("SELECT set_config(%s, %s, false)", (_agent_setting("", manifest), agent))
        out: dict[str, int] = {}
        saved = [pg.AgentTable.from_json(d) for d in manifest.get("tableInfo", {}).values()]
        for t in agent_merge.live_tables(con, saved):
            query = sql.SQL("SELECT count(*) FROM {} WHERE ").format(t.rows)
            row = con.execute(query + pg.agent_filter(t), (agent,)).fetchone()
            out[t.key] = int(row[0]) if row else 0
        return out


def _count_matching(client: redis_lib.Redis, match: str) -> int:
    count, cursor = 0, 0
    while True:
        reply = rds.command(client, "SCAN", cursor, "MATCH", match, "COUNT", 1000)
        cursor = int(reply[0])
        count += len(reply[1])
        if cursor == 0:
            return count
