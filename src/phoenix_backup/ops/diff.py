"""`phx diff ID1 ID2 [--rows]`: what changed between two snapshots — files, and with `--rows`
the rows of every database table, by primary key.

Files are compared through the trees: equal subtree ids mean equal folders (trees are content
addressed), so unchanged parts of a snapshot are never walked; a file changed when its SHA-256
(recorded per file in the tree) differs. For rows, the two copies of each changed database are
read from the repository into private scratch files and every data table (see
`memory/schema.py`; FTS and vec0 shadow tables are derived and left out) is compared by a
merge-join of both copies streamed in key order, so memory stays flat however large the tables.
Tables without a primary key are compared as multisets of row hashes (added/removed only).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phoenix_backup.config import Config
from phoenix_backup.errors import ExitStatus
from phoenix_backup.memory.schema import TableInfo, inspect, row_noun
from phoenix_backup.memory.values import SqlValue
from phoenix_backup.ops.context import Environment, agent_latest, open_repository, require_identity, scratch_dir
from phoenix_backup.repo.reader import copy_snapshot_database
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.snapshot import Snapshot
from phoenix_backup.repo.tree import Node
from phoenix_backup.repo.walker import Trees
from phoenix_backup.sources.sqlite import sqlite_uri
from phoenix_backup.sql import quote


@dataclass(frozen=True)
class FileChange:
    path: str
    change: str  # added | removed | changed
    type: str  # file | sqlite | symlink
    old_size: int
    new_size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "change": self.change,
            "type": self.type,
            "oldSize": self.old_size,
            "newSize": self.new_size,
        }


@dataclass
class TableDiff:
    table: str
    rows_before: int = 0
    rows_after: int = 0
    added: int = 0
    removed: int = 0
    changed: int = 0
    keyed: bool = True  # False: compared as whole rows (no primary key)

    @property
    def any(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def to_json(self) -> dict[str, Any]:
        return {
            "rowsBefore": self.rows_before,
            "rowsAfter": self.rows_after,
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "byKey": self.keyed,
        }

    def summary(self) -> str:
        noun = row_noun(self.table)
        parts: list[str] = []
        for n, fmt in ((self.added, "+{n}"), (self.removed, "−{n}"), (self.changed, "{n} changed")):
            if not n:
                continue
            text = fmt.format(n=n)
            if not parts:  # the first figure carries the noun: "+152 memories, −3, 41 changed"
                text = f"{n} {noun} changed" if fmt.endswith("changed") else f"{text} {noun}"
            parts.append(text)
        return ", ".join(parts)


@dataclass
class DatabaseDiff:
    path: str
    change: str  # added | removed | changed | unchanged
    tables: list[TableDiff] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "change": self.change,
            "tables": {t.table: t.to_json() for t in self.tables},
            "summary": "; ".join(t.summary() for t in self.tables if t.any),
            "notes": self.notes,
        }


@dataclass
class DiffResult:
    old: Snapshot
    new: Snapshot
    files: list[FileChange]
    rows: bool
    databases: list[DatabaseDiff] = field(default_factory=list)

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.OK

    def counts(self) -> dict[str, int]:
        out = {"added": 0, "removed": 0, "changed": 0}
        for f in self.files:
            out[f.change] += 1
        return out

    def summary(self) -> str:
        """One line a person reads: files, then rows per table ("+152 memories, −3, 41 changed")."""
        c = self.counts()
        parts = []
        if any(c.values()):
            files = "file" if c["added"] == 1 else "files"
            parts.append(f"{c['added']} {files} added, {c['changed']} changed, {c['removed']} removed")
        else:
            parts.append("no file changed")
        for db in self.databases:
            parts += [t.summary() for t in db.tables if t.any]
        if self.rows and not any(t.any for db in self.databases for t in db.tables):
            parts.append("no row changed")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        def snap(s: Snapshot) -> dict[str, str]:
            return {"id": s.id, "name": s.name, "time": s.time}

        return {
            "from": snap(self.old),
            "to": snap(self.new),
            "files": {
                kind: [f.to_json() for f in self.files if f.change == kind] for kind in ("added", "removed", "changed")
            },
            "counts": self.counts(),
            "rows": self.rows,
            "databases": [d.to_json() for d in self.databases],
            "summary": self.summary(),
        }


def diff(
    cfg: Config, envx: Environment, *, ref1: str, ref2: str, rows: bool = False, target: str | None = None
) -> DiffResult:

    repo = open_repository(cfg, envx, target=target)
    require_identity(repo)
    with repo.lock(exclusive=False, command="diff"):
        repo.load_index()
        snaps = repo.list_snapshots()
        latest = agent_latest(cfg, envx)
        old, new = repo.find_snapshot(ref1, snaps, latest), repo.find_snapshot(ref2, snaps, latest)
        changes: list[FileChange] = []
        db_nodes: dict[str, tuple[Node | None, Node | None]] = {}
        trees = Trees(repo)
        for snap in (old, new):
            trees.load(snap.tree)
            trees.check(snap.tree)
        _compare(trees, old.tree, new.tree, changes, db_nodes)
        result = DiffResult(old, new, sorted(changes, key=lambda f: f.path), rows)
        if rows:
            _row_diffs(repo, db_nodes, result)
        return result


def _compare(
    trees: Trees,
    a: bytes | None,
    b: bytes | None,
    out: list[FileChange],
    dbs: dict[str, tuple[Node | None, Node | None]],
) -> None:
    """Files added, removed and changed between two loaded trees; equal subtrees are skipped."""
    stack: list[tuple[bytes | None, bytes | None, str]] = [(a, b, "")]
    while stack:
        a, b, prefix = stack.pop()
        if a == b:
            continue
        left = {n.name: n for n in trees.nodes.get(a, ())} if a is not None else {}
        right = {n.name: n for n in trees.nodes.get(b, ())} if b is not None else {}
        for name in sorted(set(left) | set(right)):
            path = f"{prefix}/{name}" if prefix else name
            x, y = left.get(name), right.get(name)
            if x is not None and y is not None and x.type == y.type == "dir":
                stack.append((x.subtree, y.subtree, path))
                continue
            if x is not None and y is not None and x.type == y.type:
                if x.type == "symlink":
                    if x.link_target != y.link_target:
                        out.append(FileChange(path, "changed", "symlink", 0, 0))
                elif x.sha256 != y.sha256 or x.size != y.size:
                    out.append(FileChange(path, "changed", x.type, x.size, y.size))
                    if x.type == "sqlite":
                        dbs[path] = (x, y)
                continue
            if x is not None:
                _gone(trees, x, path, "removed", out, dbs)
            if y is not None:
                _gone(trees, y, path, "added", out, dbs)


def _gone(
    trees: Trees,
    node: Node,
    path: str,
    change: str,
    out: list[FileChange],
    dbs: dict[str, tuple[Node | None, Node | None]],
) -> None:
    """Record `node` (and everything below a folder) as added or removed."""
    below = trees.walk(node.subtree, path) if node.type == "dir" and node.subtree is not None else iter(())
    for logical, item in [(path, node), *below]:
        if item.type == "dir":
            continue
        size = item.size if item.type != "symlink" else 0
        out.append(
            FileChange(logical, change, item.type, size if change == "removed" else 0, size if change == "added" else 0)
        )
        if item.type == "sqlite":
            old, new = dbs.get(logical, (None, None))
            dbs[logical] = (item, new) if change == "removed" else (old, item)


def _row_diffs(repo: Repository, dbs: dict[str, tuple[Node | None, Node | None]], result: DiffResult) -> None:
    with scratch_dir("phx-diff-") as scratch:
        for i, (logical, (old, new)) in enumerate(sorted(dbs.items(), key=_store_order)):
            change = "changed" if old is not None and new is not None else ("added" if new is not None else "removed")
            db = DatabaseDiff(logical, change)
            a = copy_snapshot_database(repo, logical, old, scratch / f"{i}-a.db") if old is not None else None
            b = copy_snapshot_database(repo, logical, new, scratch / f"{i}-b.db") if new is not None else None
            try:
                diff_databases(a, b, db)
            finally:
                for p in (a, b):
                    if p is not None:
                        p.unlink(missing_ok=True)
            result.databases.append(db)


def _store_order(item: tuple[str, object]) -> tuple[int, str]:
    """The memory store first, then observations, then the others: the summary leads with memories."""
    name = item[0].rsplit("/", 1)[-1]
    return ({"memory.db": 0, "observations.db": 1}.get(name, 2), item[0])


def _open(path: Path | None) -> sqlite3.Connection | None:
    return sqlite3.connect(sqlite_uri(path, "mode=ro&immutable=1"), uri=True) if path is not None else None


def diff_databases(a: Path | None, b: Path | None, out: DatabaseDiff) -> None:
    """Per data table, rows added, removed and changed from store `a` to store `b` (None = absent)."""
    ca, cb = _open(a), _open(b)
    try:
        sa = inspect(ca, detect_vectors=False).tables if ca is not None else []
        sb = inspect(cb, detect_vectors=False).tables if cb is not None else []
        ta, tb = {t.name: t for t in sa}, {t.name: t for t in sb}
        for name in [t.name for t in sa] + [t.name for t in sb if t.name not in ta]:
            x, y = ta.get(name), tb.get(name)
            td = TableDiff(name)
            if x is not None and ca is not None:
                td.rows_before = _count(ca, x)
            if y is not None and cb is not None:
                td.rows_after = _count(cb, y)
            if x is None or y is None:
                td.added, td.removed = td.rows_after, td.rows_before
            else:
                assert ca is not None and cb is not None
                _diff_table(ca, cb, x, y, td, out)
            out.tables.append(td)
    finally:
        for con in (ca, cb):
            if con is not None:
                con.close()


def _count(con: sqlite3.Connection, t: TableInfo) -> int:
    return int(con.execute(f"SELECT count(*) FROM {quote(t.name)}").fetchone()[0])


class _OutOfOrder(Exception):
    """The rows did not come in the order Python compares keys in (an exotic collation)."""


def _sort_key(values: tuple[SqlValue, ...]) -> tuple[tuple[int, Any], ...]:
    """SQLite's order of values under BINARY collation: NULL, numbers, text, blobs."""
    out: list[tuple[int, Any]] = []
    for v in values:
        if v is None:
            out.append((0, 0))
        elif isinstance(v, (int, float)):
            out.append((1, v))
        elif isinstance(v, str):
            out.append((2, v))
        else:
            out.append((3, bytes(v)))
    return tuple(out)


def _diff_table(
    ca: sqlite3.Connection, cb: sqlite3.Connection, x: TableInfo, y: TableInfo, td: TableDiff, db: DatabaseDiff
) -> None:
    common = tuple(c for c in x.columns if c in y.columns)
    if set(x.columns) != set(y.columns):
        db.notes.append(
            f"{x.name}: columns changed ({', '.join(sorted(set(x.columns) ^ set(y.columns)))}); "
            "rows compared on the columns both have"
        )
    key = x.key if x.key and x.key == y.key and all(k in common for k in x.key) else ()
    if not key:
        td.keyed = False
        _diff_multiset(ca, cb, x, y, common, td)
        return
    xi = TableInfo(x.name, common, key, x.sql, x.virtual)
    yi = TableInfo(y.name, common, key, y.sql, y.virtual)
    key_idx = [common.index(k) for k in key]
    try:
        _merge_join(ca.execute(xi.select_sql(ordered=True)), cb.execute(yi.select_sql(ordered=True)), key_idx, td)
    except _OutOfOrder:
        td.added = td.removed = td.changed = 0
        _diff_by_hash(ca, cb, xi, yi, key_idx, td)


def _ordered(rows: Iterator[tuple[SqlValue, ...]], key_idx: list[int]) -> Iterator[tuple[Any, tuple[SqlValue, ...]]]:
    last: Any = None
    for row in rows:
        k = _sort_key(tuple(row[i] for i in key_idx))
        if last is not None and k <= last:
            raise _OutOfOrder
        last = k
        yield k, tuple(row)


def _merge_join(ra: Iterator[Any], rb: Iterator[Any], key_idx: list[int], td: TableDiff) -> None:
    ia, ib = _ordered(ra, key_idx), _ordered(rb, key_idx)
    a, b = next(ia, None), next(ib, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[0] < b[0]):
            td.removed += 1
            a = next(ia, None)
        elif a is None or b[0] < a[0]:
            td.added += 1
            b = next(ib, None)
        else:
            if a[1] != b[1]:
                td.changed += 1
            a, b = next(ia, None), next(ib, None)


def _row_hash(row: tuple[SqlValue, ...]) -> bytes:
    return hashlib.blake2b(repr(row).encode(), digest_size=16).digest()


def _diff_by_hash(
    ca: sqlite3.Connection, cb: sqlite3.Connection, x: TableInfo, y: TableInfo, key_idx: list[int], td: TableDiff
) -> None:
    """Fallback when rows do not stream in a usable order: key → row hash of the old copy."""
    before: dict[bytes, bytes] = {}
    for row in ca.execute(x.select_sql()):
        before[_row_hash(tuple(row[i] for i in key_idx))] = _row_hash(tuple(row))
    for row in cb.execute(y.select_sql()):
        k = _row_hash(tuple(row[i] for i in key_idx))
        old = before.pop(k, None)
        if old is None:
            td.added += 1
        elif old != _row_hash(tuple(row)):
            td.changed += 1
    td.removed = len(before)


def _diff_multiset(
    ca: sqlite3.Connection, cb: sqlite3.Connection, x: TableInfo, y: TableInfo, common: tuple[str, ...], td: TableDiff
) -> None:
    before: Counter[bytes] = Counter(_row_hash(tuple(r)) for r in ca.execute(x.select_sql(common)))
    for row in cb.execute(y.select_sql(common)):
        h = _row_hash(tuple(row))
        if before[h] > 0:
            before[h] -= 1
        else:
            td.added += 1
    td.removed = sum(before.values())
