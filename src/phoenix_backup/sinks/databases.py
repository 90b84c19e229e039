"""Restoring the PostgreSQL and Redis databases of a snapshot into their servers: which sink takes
each database, what a dry run shows of them, what is said before an in-place restore, and the
drill's check of each.

The restore op (`ops/restore.py`) hands over the snapshot's `postgres/<name>/…` and
`redis/<name>/…` nodes; each database is restored into the server of the current config's entry
of the same name (in place, sinks/postgres.py and sinks/redis.py), or, for PostgreSQL, into a new
database (`--to-database NAME`). `restore --to DIR` needs none of this: the streams are written as
files below DIR.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import psycopg
import redis as redis_lib

from phoenix_backup.config import Config
from phoenix_backup.config.model import PostgresDb, RedisDb
from phoenix_backup.errors import PhoenixError, UsageError
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Node
from phoenix_backup.sinks import ConflictMode, postgres, postgres_agent, redis
from phoenix_backup.sinks.postgres_agent import KeylessMode
from phoenix_backup.sinks.streams import (
    DbRestoreOutcome,
    config_entry,
    group_database_nodes,
    read_manifest,
)
from phoenix_backup.sources import postgres as pg
from phoenix_backup.sources import redis as rds


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
                entry = config_entry(cfg.databases.postgres, "postgres", name)
                assert isinstance(entry, PostgresDb)
                outcomes.append(
                    postgres.restore_postgres(repo, entry, path, files, env, to_database, conflict_mode, keyless)
                )
            else:
                rentry = config_entry(cfg.databases.redis, "redis", name)
                assert isinstance(rentry, RedisDb)
                outcomes.append(redis.restore_redis(repo, rentry, path, files, conflict_mode))
        except PhoenixError as exc:
            if to_database is not None:
                raise  # the one database asked for: its error is the command's
            engine = "postgresql" if root == "postgres" else "redis"
            outcomes.append(DbRestoreOutcome(path, engine, "").fail(exc, str(exc)))
    return outcomes


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
            manifest = read_manifest(repo, path, files)
            if manifest.get("kind") != "agent-rows":
                continue
            entry = config_entry(cfg.databases.postgres, "postgres", name)
            assert isinstance(entry, PostgresDb)
            tables = [pg.AgentTable.from_json(d).key for d in manifest.get("tableInfo", {}).values()]
            with pg.connection_for(entry, env).connect() as con, con.transaction(force_rollback=True):
                warning = postgres_agent.trigger_warning(con, tables)
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
            entry = config_entry(cfg.databases.postgres, "postgres", name)
            assert isinstance(entry, PostgresDb)
            why = postgres.absence(pg.connection_for(entry, env))
        except (PhoenixError, psycopg.Error):
            continue
        if why is not None:
            out[path] = why
    return out


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
            manifest = read_manifest(repo, path, files)
            snap_rows: dict[str, int] = (
                dict(manifest.get("tables", {})) if root == "postgres" else {"keys": int(manifest.get("keys", 0))}
            )
            if root == "postgres":
                entry = config_entry(cfg.databases.postgres, "postgres", name)
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
                live = postgres.live_rows(conn, manifest)
            else:
                rentry = config_entry(cfg.databases.redis, "redis", name)
                assert isinstance(rentry, RedisDb)
                doc.update(action="restore", target=rds.where(rentry.url))
                client = rds.connect(rentry)
                try:
                    live = {"keys": redis.count_matching(client, str(manifest.get("match", rentry.match)))}
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
        entry = config_entry(cfg.databases.postgres, "postgres", name)
        assert isinstance(entry, PostgresDb)
        return postgres.drill_postgres(repo, entry, env, path, files, scratch)
    return redis.drill_redis(repo, path, files)
