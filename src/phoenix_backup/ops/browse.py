"""`phx ls` and `phx dump`: browse a snapshot without restoring it.

Also the small pieces the other read-only use cases (drill, archive, doctor) share: opening the
repository of one target, naming a path inside a snapshot, and streaming a file's bytes out of the
repository with its SHA-256 checked.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, cast

from phoenix_backup.config import Config
from phoenix_backup.errors import CorruptObject, IdentityRequired, UsageError
from phoenix_backup.ops import context
from phoenix_backup.ops.context import Environment
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.pack import pack_name
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.snapshot import Snapshot
from phoenix_backup.repo.tree import Node
from phoenix_backup.repo.walker import walk_tree
from phoenix_backup.sources.layout import ROOTS

# `phx dump` holds a file in memory up to this size before spilling to a temporary file: nothing
# reaches stdout until the whole file matched its SHA-256.
_SPOOL_BYTES = 32 * 1024 * 1024


# --------------------------------------------------------------------------------------------
# Opening the repository of one target
# --------------------------------------------------------------------------------------------


def open_target(cfg: Config, envx: Environment, target: str | None, *, reads: bool = True) -> Repository:
    """The repository of `target`; without one, of `envx.target` (the command's `--target`) or the
    first enabled target. A command that `reads` snapshots' trees and data, which a machine that
    backs up a write-only repository cannot, is told so before anything is done."""
    repo = context.open_repository(cfg, envx, target=target)
    if reads and not repo.can_read:
        repo.close()
        raise IdentityRequired(repo.backend.location, "the trees and data of its snapshots")
    return repo


# --------------------------------------------------------------------------------------------
# Paths inside a snapshot
# --------------------------------------------------------------------------------------------


def logical_path(snap: Snapshot, path: str | None) -> str:
    """The logical path (`workspace/MEMORY.md`) a user means by PATH.

    Accepted: a logical path (`workspace/…`, `home/…`, `root/…`), a path relative to the workspace
    (`MEMORY.md`), `~/…` (the home folder), or an absolute path as it was on the machine that took
    the snapshot (mapped through the snapshot's recorded sources). Empty means the whole snapshot.
    """
    raw = (path or "").strip()
    if raw in ("", "/", "."):
        return ""
    if raw.startswith("~/") or raw == "~":
        rel = raw[2:].strip("/")
        return f"home/{rel}" if rel else "home"
    if raw.startswith("/"):
        # Longest recorded source first: the workspace usually lives below the home folder.
        for root, base in sorted(snap.sources.items(), key=lambda kv: -len(kv[1])):
            try:
                rel_path = PurePosixPath(raw).relative_to(base)
            except ValueError:
                continue
            rel = rel_path.as_posix()
            return root if rel == "." else f"{root}/{rel}"
        return "root" + raw.rstrip("/")
    raw = raw.removeprefix("./").strip("/")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UsageError(f"path {path!r} holds '..'; name a path inside the snapshot (see `phx ls ID`)")
    if parts and parts[0] in ROOTS:
        return "/".join(parts)
    return "/".join(["workspace", *parts])


def find_node(repo: Repository, snap: Snapshot, logical: str) -> Node | None:
    """The node at `logical`, or None. The empty path is the snapshot's root (returned as a dir)."""
    if not logical:
        return Node(name="", type="dir", subtree=snap.tree)
    tree = snap.tree
    parts = logical.split("/")
    for i, part in enumerate(parts):
        match = next((n for n in repo.load_tree(tree) if n.name == part), None)
        if match is None:
            return None
        if i == len(parts) - 1:
            return match
        if match.type != "dir" or match.subtree is None:
            return None
        tree = match.subtree
    return None


def _not_found(snap: Snapshot, logical: str) -> UsageError:
    return UsageError(f"snapshot {snap.name} holds no {logical}; see `phx ls {snap.id[:8]}` for its paths")


# --------------------------------------------------------------------------------------------
# Reading a file's bytes
# --------------------------------------------------------------------------------------------


class NodeReader:
    """A file's or database's bytes, read extent by extent from the repository, hashed as they go.

    `read` is a file-like read (for tarfile); `finish` raises when the bytes did not match the
    snapshot's SHA-256, naming the path.
    """

    def __init__(self, repo: Repository, logical: str, node: Node) -> None:
        self.repo = repo
        self.logical = logical
        self.node = node
        self.digest = hashlib.sha256()
        self._chunks = self._iter()
        self._buffer = b""
        self.total = 0

    def _iter(self) -> Iterator[bytes]:
        last: tuple[bytes, bytes] | None = None  # consecutive extents often share a blob
        for ext in self.node.content:
            if last is None or last[0] != ext.blob:
                last = (ext.blob, self.repo.load_blob(BlobType.DATA, ext.blob))
            data = last[1][ext.offset : ext.offset + ext.length]
            if len(data) != ext.length:
                raise CorruptObject(f"data of {self.logical} is shorter than the snapshot says")
            yield data

    def _next(self) -> bytes | None:
        data = next(self._chunks, None)
        if data is not None:
            self.digest.update(data)
            self.total += len(data)
        return data

    def chunks(self) -> Iterator[bytes]:
        while (data := self._next()) is not None:
            yield data

    def read(self, n: int = -1) -> bytes:
        out = bytearray(self._buffer)
        self._buffer = b""
        while n < 0 or len(out) < n:
            data = self._next()
            if data is None:
                break
            out += data
        if n >= 0 and len(out) > n:
            self._buffer = bytes(out[n:])
            del out[n:]
        return bytes(out)

    def finish(self) -> None:
        if self.total != self.node.size or self.digest.hexdigest() != self.node.sha256:
            raise CorruptObject(
                f"{self.logical} read from the repository does not match its SHA-256 in the snapshot; "
                "run `phx verify --read-data` and use another snapshot or target"
            )


def damaged_pack(repo: Repository, node: Node) -> str | None:
    """The pack holding the first blob of `node` that cannot be read, to name the damaged object."""
    for ext in node.content:
        loc = repo.index.get(ext.blob)
        if loc is None:
            return f"blob {ext.blob.hex()[:16]}"
        try:
            repo.load_blob(BlobType.DATA, ext.blob)
        except CorruptObject:
            return pack_name(loc.pack_id)
        except Exception:  # a storage error names the pack just as well
            return pack_name(loc.pack_id)
    return None


# --------------------------------------------------------------------------------------------
# phx ls
# --------------------------------------------------------------------------------------------


def permissions(node: Node) -> str:
    kind = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(node.type, stat.S_IFREG)
    return stat.filemode(kind | node.mode)


def rfc3339_ns(mtime_ns: int) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
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
    repo = open_target(cfg, envx, target)
    with repo.lock(exclusive=False, command="ls"):
        repo.load_index()
        snap = repo.find_snapshot(ref, latest=envx.latest)
        logical = logical_path(snap, path)
        node = find_node(repo, snap, logical)
        if node is None:
            raise _not_found(snap, logical)
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


# --------------------------------------------------------------------------------------------
# phx dump
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DumpResult:
    snapshot: str
    name: str
    path: str
    type: str
    size: int
    sha256: str

    @property
    def exit_status(self) -> int:
        return 0

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "name": self.name,
            "path": self.path,
            "type": self.type,
            "size": self.size,
            "sha256": self.sha256,
        }


def dump(
    cfg: Config,
    envx: Environment,
    *,
    ref: str,
    path: str,
    out: BinaryIO,
    target: str | None = None,
) -> DumpResult:
    """Write one file's (or database copy's) exact bytes to `out`.

    The bytes are gathered (in memory, spilling to a temporary file past 32 MiB) and checked
    against the snapshot's SHA-256 first, so `out` never receives a damaged or partial file.
    """
    repo = open_target(cfg, envx, target)
    with repo.lock(exclusive=False, command="dump"):
        repo.load_index()
        snap = repo.find_snapshot(ref, latest=envx.latest)
        logical = logical_path(snap, path)
        if not logical:
            raise UsageError("name a file to dump (see `phx ls ID`); use `phx archive` for the whole snapshot")
        node = find_node(repo, snap, logical)
        if node is None:
            raise _not_found(snap, logical)
        if node.type == "dir":
            raise UsageError(f"{logical} is a folder; list it with `phx ls` or take it whole with `phx archive`")
        if node.type == "symlink":
            raise UsageError(f"{logical} is a symlink to {node.link_target!r}; dump the file it points to")
        reader = NodeReader(repo, logical, node)
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
            for chunk in reader.chunks():
                spool.write(chunk)
            reader.finish()
            spool.seek(0)
            shutil.copyfileobj(cast(BinaryIO, spool), out, 1 << 20)
        out.flush()
        assert node.sha256 is not None
        return DumpResult(snap.id, snap.name, logical, node.type, node.size, node.sha256)


def node_real_path(scratch: Path, logical: str) -> Path:
    """Where `logical` lands below a restore destination (`DIR/workspace/…`)."""
    return scratch.joinpath(*logical.split("/"))
