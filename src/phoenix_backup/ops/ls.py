"""`phx ls`: browse a snapshot without restoring it (`phx dump` prints one file: ops/dump.py)."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from phoenix_backup.config import Config
from phoenix_backup.ops.context import Environment, find_snapshot, open_repository, require_identity
from phoenix_backup.repo.snapshot import Snapshot
from phoenix_backup.repo.tree import Node
from phoenix_backup.repo.walker import node_at, walk_tree
from phoenix_backup.sources.layout import logical_path

# --------------------------------------------------------------------------------------------
# phx ls
# --------------------------------------------------------------------------------------------


def permissions(node: Node) -> str:
    kind = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(node.type, stat.S_IFREG)
    return stat.filemode(kind | node.mode)


def rfc3339_ns(mtime_ns: int) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)  # one per path listed
class LsEntry:
    path: str
    node: Node

    def to_json(self) -> dict[str, Any]:
        n = self.node
        d: dict[str, Any] = {
            "path": self.path,
            "name": n.name,
            "type": n.type,
            "mode": n.mode,
            "permissions": permissions(n),
            "size": n.size if n.type in ("file", "sqlite") else 0,
            "mtime": rfc3339_ns(n.mtime_ns),
            "mtimeNs": n.mtime_ns,
            "uid": n.uid,
            "gid": n.gid,
        }
        if n.type in ("file", "sqlite"):
            d["sha256"] = n.sha256
        if n.type == "symlink":
            d["linkTarget"] = n.link_target
        return d


@dataclass
class LsResult:
    snapshot: Snapshot
    path: str  # logical; "" for the whole snapshot
    entries: list[LsEntry]

    @property
    def exit_status(self) -> int:
        return 0

    def to_json(self) -> dict[str, Any]:
        s = self.snapshot
        return {
            "snapshot": s.id,
            "name": s.name,
            "time": s.time,
            "path": self.path,
            "entries": [e.to_json() for e in self.entries],
        }


def ls(
    cfg: Config,
    envx: Environment,
    *,
    ref: str,
    path: str | None = None,
    recursive: bool = True,
    target: str | None = None,
) -> LsResult:
    """The nodes at and below PATH (everything when PATH is empty), parents before children."""
    repo = open_repository(cfg, envx, target=target)
    require_identity(repo)
    with repo.lock(exclusive=False, command="ls"):
        repo.load_index()
        snap = find_snapshot(cfg, envx, repo, ref)
        logical = logical_path(snap.sources, path)
        node = node_at(repo, snap, logical)
        entries: list[LsEntry] = []
        if node.type != "dir" or node.subtree is None:
            entries.append(LsEntry(logical, node))
        else:
            if logical:
                entries.append(LsEntry(logical, node))
            if recursive:
                entries += [LsEntry(p, n) for p, n in walk_tree(repo, node.subtree, logical)]
            else:
                entries += [
                    LsEntry(f"{logical}/{n.name}" if logical else n.name, n) for n in repo.load_tree(node.subtree)
                ]
        return LsResult(snap, logical, entries)
