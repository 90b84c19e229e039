"""Backing up the configured PostgreSQL and Redis databases: their streams into the repository.

Each stream a source yields (a pg_dump, one agent's rows of a table, a Redis record file, a
manifest) is cut by content-defined chunking as it arrives and saved through the repository's
blob saving, so nothing is staged on disk and unchanged data deduplicates from one day to the
next. A database goes into the snapshot only when every one of its streams was read to the end
and its producer reported success: a dump that fails midway leaves only unreferenced blobs (a
later prune frees them), never a snapshot claiming a database it does not hold in full.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from phoenix_backup.config import Config
from phoenix_backup.config.model import PostgresDb, RedisDb
from phoenix_backup.errors import ConfigError, SourceError
from phoenix_backup.repo.chunker import stream_chunks
from phoenix_backup.repo.crypto import Sha256
from phoenix_backup.repo.snapshot import DatabaseInfo
from phoenix_backup.repo.tree import ExtentsBuilder, Node, TreePaths
from phoenix_backup.shell import StopScope
from phoenix_backup.sources.streams import Stream

STREAM_MODE = 0o600


@dataclass(frozen=True)
class DbJob:
    """One configured database to back up."""

    engine: str  # "postgresql" or "redis"
    entry: PostgresDb | RedisDb

    @property
    def logical(self) -> str:
        root = "postgres" if self.engine == "postgresql" else "redis"
        return f"{root}/{self.entry.name}"


@dataclass
class DbOutcome:
    nodes: dict[str, Node]
    info: DatabaseInfo
    warnings: list[str] = field(default_factory=list)


def database_jobs(cfg: Config, scope: str, only: tuple[str, ...] = ()) -> list[DbJob]:
    """The PostgreSQL and Redis databases a backup of `scope` covers: every configured one for a
    full or databases-only backup (the `databases` component is every configured database).
    `only` (logical paths such as "postgres/main") names them explicitly whatever the scope: a
    safety snapshot saves the databases a restore is about to overwrite."""
    jobs = [DbJob("postgresql", e) for e in cfg.databases.postgres]
    jobs += [DbJob("redis", e) for e in cfg.databases.redis]
    if only:
        jobs = [j for j in jobs if j.logical in only]
    elif scope not in ("full", "databases"):
        return []
    for job in jobs:
        if job.entry.name in (".", ".."):
            raise ConfigError(f"a database may not be named {job.entry.name!r}; rename it in databases")
    return jobs


def save_stream(stream: Stream, seed: int, save: Callable[[memoryview], bytes], when_ns: int) -> Node:
    """Read a stream to its end into the repository; raises the producer's error, if any."""
    digest = Sha256()
    extents = ExtentsBuilder(merge=False)  # held packed: a 1 GB dump is some 16,000 extents
    size = 0
    try:
        for chunk in stream_chunks(stream.reader, seed):
            digest.update(chunk)
            size += len(chunk)
            extents.add(save(chunk), 0, len(chunk))
    finally:
        # Whatever happened, the producer is told the reading is over before its verdict is asked.
        stream.reader.close()
    stream.finish()
    return Node(
        name=stream.name.rsplit("/", 1)[-1],
        type="file",
        mode=STREAM_MODE,
        mtime_ns=when_ns,
        size=size,
        uid=os.getuid(),
        gid=os.getgid(),
        content=extents.build(),
        sha256=digest.hexdigest(),
    )


def _save_all(
    streams: Iterator[Stream], logical: str, seed: int, save: Callable[[memoryview], bytes]
) -> dict[str, Node]:
    when_ns = time.time_ns()
    nodes: dict[str, Node] = {}
    paths = TreePaths()
    for stream in streams:
        problem = paths.problem(stream.name)
        if problem is not None:
            # Saved, it would make the whole snapshot unrestorable, the files too.
            stream.reader.close()
            raise SourceError(
                f"{logical}: {problem}, so nothing of {logical} was saved; rename the table (or schema) it comes from"
            )
        nodes[f"{logical}/{stream.name}"] = save_stream(stream, seed, save, when_ns)
    return nodes


def back_up(
    job: DbJob, env: dict[str, str], seed: int, save: Callable[[memoryview], bytes], stops: StopScope
) -> DbOutcome:
    """Back up one database; raises a PhoenixError naming it when any part fails. What it starts
    or waits on (pg_dump, its connections) is in `stops`, which the backup ends when it stops."""
    # The database drivers are imported here, not at module level: every `phx` run would
    # otherwise pay for psycopg and redis (~0.15 s), even with no server configured.
    from phoenix_backup.sources import postgres, redis

    if isinstance(job.entry, PostgresDb):
        source: AbstractContextManager[Any]
        if job.entry.agent_id is not None:
            source = postgres.AgentRows(job.entry, env, stops)
        else:
            source = postgres.PostgresDump(job.entry, env, stops)
        with source as src:
            nodes = _save_all(src.streams(), job.logical, seed, save)
            summary: postgres.PgSummary | None = src.summary
        assert summary is not None
        details: dict[str, Any] = {"database": summary.database, "serverVersionNum": summary.server_version_num}
        if job.entry.agent_id is not None:
            details["agentId"] = job.entry.agent_id
        else:
            details["pgDump"] = summary.manifest.get("pgDump", {})
        info = DatabaseInfo(
            path=job.logical,
            engine="postgresql",
            version=summary.server_version,
            integrity="ok",
            tables=summary.tables,
            extensions=summary.extensions,
            details=details,
        )
        return DbOutcome(nodes, info, summary.warnings)
    assert isinstance(job.entry, RedisDb)
    with redis.RedisReader(job.entry, stops) as reader:
        nodes = _save_all(reader.streams(), job.logical, seed, save)
        rsum = reader.summary
        assert rsum is not None
    info = DatabaseInfo(
        path=job.logical,
        engine="redis",
        version=rsum.server_version,
        integrity="ok",
        tables={"keys": rsum.keys},
        details={"db": reader.db, "match": job.entry.match, "types": rsum.types, "rdbVersion": rsum.rdb_version},
    )
    return DbOutcome(nodes, info, rsum.warnings)
