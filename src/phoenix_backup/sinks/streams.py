"""A PostgreSQL or Redis database as a snapshot holds it (`postgres/<name>/…`, `redis/<name>/…`:
its streams and its manifest), read back for its sink; the config entry it is restored into; and
the outcome of restoring it. Shared by sinks/postgres.py, sinks/redis.py and sinks/databases.py.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from phoenix_backup.config.model import PostgresDb, RedisDb
from phoenix_backup.errors import CorruptObject, ObjectNotFound, RestoreError
from phoenix_backup.repo.reader import read_node, stream_blocks
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Node
from phoenix_backup.sources.layout import DATABASE_ROOTS
from phoenix_backup.sources.postgres import MANIFEST
from phoenix_backup.sources.streams import IterReader


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
    # Not restored because its data in the repository is damaged or has no copy that proves (the
    # restore reports it as damaged data, exit 1, with the targets that may hold it intact).
    damaged: bool = False
    not_restored: list[dict[str, str]] = field(default_factory=list)  # Redis: {key, error} per key

    def fail(self, exc: BaseException, text: str) -> DbRestoreOutcome:
        """Not restored because of `exc`, said as `text`; damaged when the repository's data is."""
        self.error = text
        self.damaged = isinstance(exc, (CorruptObject, ObjectNotFound))
        return self

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


def node_reader(repo: Repository, logical: str, node: Node) -> BinaryIO:
    """A node's bytes as a buffered file, checked before its last block is read."""
    return io.BufferedReader(IterReader(stream_blocks(repo, logical, node)), buffer_size=1 << 20)


def group_database_nodes(nodes: Iterable[tuple[str, Node]]) -> dict[str, dict[str, Node]]:
    """{"postgres/main": {"database.dump": node, "rows/public.t.csv": node, ...}, ...}"""
    out: dict[str, dict[str, Node]] = {}
    for logical, node in nodes:
        parts = logical.split("/")
        if len(parts) < 3 or parts[0] not in DATABASE_ROOTS or node.type != "file":
            continue
        out.setdefault("/".join(parts[:2]), {})["/".join(parts[2:])] = node
    return out


def config_entry(entries: Iterable[PostgresDb | RedisDb], kind: str, name: str) -> PostgresDb | RedisDb:
    for e in entries:
        if e.name == name:
            return e
    raise RestoreError(
        f"the snapshot holds {kind}/{name} but the config has no databases.{kind} entry named {name}; add one "
        f"pointing at the server to restore into, or write it as files with --to DIR"
    )


def read_manifest(repo: Repository, path: str, files: dict[str, Node]) -> dict[str, Any]:
    node = files.get(MANIFEST)
    if node is None:
        raise CorruptObject(f"{path} has no manifest.json in the snapshot; it cannot be restored into a server")
    try:
        doc = json.loads(read_node(repo, f"{path}/{MANIFEST}", node))
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than json can read
        raise CorruptObject(f"{path}/manifest.json is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise CorruptObject(f"{path}/manifest.json is not a JSON object")
    return doc
