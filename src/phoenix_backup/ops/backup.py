"""`phx backup`: one consistent snapshot of the workspace and its databases.

Files and databases are read in a thread pool; chunking, hashing, compressing and sealing run in
native code that releases the GIL, so the pool keeps both cores busy. Trees are written bottom-up
once every entry is done, then the index, then the snapshot object (the commit point).
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from phoenix_backup import __version__
from phoenix_backup.config import Config
from phoenix_backup.errors import ExitStatus, PhoenixError, SourceError, UsageError
from phoenix_backup.ops.context import Environment, cache_for, open_repository
from phoenix_backup.ops.scope import Scope, source_plan
from phoenix_backup.repo.cache import Cache
from phoenix_backup.repo.chunker import FileView, file_chunks, page_runs
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.snapshot import DatabaseInfo, Snapshot, SnapshotStats
from phoenix_backup.repo.tree import Extent, Node
from phoenix_backup.sources import sqlite as sqlite_source
from phoenix_backup.sources.files import Entry, Selection, select
from phoenix_backup.sources.layout import Layout
from phoenix_backup.state import TargetOutcome, write_state

# Files up to this size are read in one piece; larger ones are read in windows of this size.
READ_WINDOW = 64 * 1024 * 1024
# A file modified this close to the parent backup's start may have changed within the same
# timestamp tick after it was read, so it is read again.
RACY_NS = 1_000_000_000


@dataclass(frozen=True)
class PlannedItem:
    path: str
    kind: str
    size: int


@dataclass
class BackupResult:
    id: str | None
    name: str | None
    time: str
    scope: str
    files: int
    size: int
    added: int
    files_read: int
    databases: list[DatabaseInfo]
    targets: dict[str, TargetOutcome]
    incomplete: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False
    planned: list[PlannedItem] = field(default_factory=list)
    duration: float = 0.0

    @property
    def exit_status(self) -> ExitStatus:
        failed_target = any(not t.ok for t in self.targets.values())
        bad_db = any(d.integrity != "ok" for d in self.databases)
        return ExitStatus.PARTIAL if (self.incomplete or failed_target or bad_db) else ExitStatus.OK

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "id": self.id,
            "name": self.name,
            "time": self.time,
            "scope": self.scope,
            "files": self.files,
            "size": self.size,
            "added": self.added,
            "filesRead": self.files_read,
            "duration": round(self.duration, 3),
            "databases": [d.to_json() for d in self.databases],
            "targets": {k: v.to_json() for k, v in self.targets.items()},
            "incomplete": self.incomplete,
            "warnings": self.warnings,
            "dryRun": self.dry_run,
        }
        if self.dry_run:
            doc["planned"] = [{"path": p.path, "kind": p.kind, "size": p.size} for p in self.planned]
        return doc


def parse_time(text: str | None) -> datetime:
    if text is None:
        return datetime.now().astimezone().replace(microsecond=0)
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(f"--time {text!r} is not RFC 3339; use e.g. 2026-03-15T14:30:00+01:00") from exc
    if when.tzinfo is None:
        raise UsageError(f"--time {text!r} has no UTC offset; add one, e.g. {text}+00:00 or {text}Z")
    return when


def seed_name(when: datetime, taken: set[str]) -> str:
    base = when.strftime("%Y-%m-%d-%H-%M")
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def select_sources(cfg: Config, scope: Scope, envx: Environment) -> tuple[Layout, Selection]:
    if not cfg.workspace.is_dir():
        raise SourceError(
            f"the workspace {cfg.workspace} does not exist or is not a folder; fix `workspace` in "
            f"{cfg.source or 'the config'}"
        )
    layout = Layout(cfg.workspace, envx.home)
    plan = source_plan(cfg, scope)
    if plan.walk_files:
        sel = select(layout, plan.includes, cfg.exclude, plan.databases)
    else:
        sel = select(layout, [], cfg.exclude, plan.databases)
        # Databases only: drop the workspace walk that an empty include list implies.
        sel.entries = {
            k: v
            for k, v in sel.entries.items()
            if v.kind == "sqlite"
            or any(e.logical.startswith(k + "/") and e.kind == "sqlite" for e in sel.entries.values())
        }
    return layout, sel


def backup(
    cfg: Config,
    envx: Environment,
    *,
    scope: Scope = "full",
    tags: tuple[str, ...] = (),
    time_text: str | None = None,
    dry_run: bool = False,
) -> BackupResult:
    started = time.time()
    when = parse_time(time_text)
    try:
        layout, sel = select_sources(cfg, scope, envx)
        if dry_run:
            return _plan(sel, when, scope, cfg, started)
        result = _snapshot(cfg, envx, layout, sel, scope, tags, when, started)
        # After the commit point: later steps (replication, retention, notification) report into
        # `result` and never undo the snapshot.
    except PhoenixError as exc:
        _record_state(cfg, envx, started, scope, None, exc)
        raise
    _record_state(cfg, envx, started, scope, result, None)
    return result


def _plan(sel: Selection, when: datetime, scope: Scope, cfg: Config, started: float) -> BackupResult:
    """`--dry-run`: what would be saved, with sizes."""
    planned = [
        PlannedItem(e.logical, e.kind, e.st.st_size if e.kind in ("file", "sqlite") else 0)
        for e in sorted(sel.entries.values(), key=lambda e: e.logical)
    ]
    files = sum(1 for p in planned if p.kind in ("file", "sqlite", "symlink"))
    return BackupResult(
        id=None,
        name=None,
        time=when.isoformat(),
        scope=scope,
        files=files,
        size=sum(p.size for p in planned),
        added=0,
        files_read=0,
        databases=[],
        targets={},
        incomplete=[{"path": p, "error": m} for p, m in sel.errors],
        warnings=_missing_warnings(cfg, sel),
        dry_run=True,
        planned=planned,
        duration=time.time() - started,
    )


def _snapshot(
    cfg: Config,
    envx: Environment,
    layout: Layout,
    sel: Selection,
    scope: Scope,
    tags: tuple[str, ...],
    when: datetime,
    started: float,
) -> BackupResult:
    """Take the snapshot into the first target's repository (created on first use)."""
    repo = open_repository(cfg, envx, create=True)
    try:
        with repo.lock(exclusive=False, command="backup"):
            result = _run(repo, cfg, envx, layout, sel, scope, tags, when, started)
    finally:
        repo.close()
    result.warnings[:0] = _missing_warnings(cfg, sel)
    result.targets = {"local": TargetOutcome(True)}
    return result


def _missing_warnings(cfg: Config, sel: Selection) -> list[str]:
    return [f"{p} does not exist (skipped)" for p in sel.missing if not _is_default_db(cfg, p)]


def _record_state(
    cfg: Config, envx: Environment, started: float, scope: str, result: BackupResult | None, error: PhoenixError | None
) -> None:
    """The state file, on success and on failure alike."""
    if result is not None:
        targets = result.targets
        failed = [f"{name}: {t.error}" for name, t in targets.items() if not t.ok]
        message = "; ".join(failed) or None
    else:
        targets = {name: TargetOutcome(False, str(error)) for name in cfg.targets.enabled_names()}
        message = str(error)
    write_state(
        timestamp=started,
        backup_path=str(cfg.repository_path),
        compression=cfg.compression.enabled,
        success=result is not None,
        snapshot_id=result.id if result else None,
        snapshot_name=result.name if result else None,
        error=message,
        targets=targets,
        scope=scope,
        path=envx.home / ".argentos" / "backup" / ".last-backup",
    )


def _is_default_db(cfg: Config, path: str) -> bool:
    return path.endswith(("observations.db", "memory.db", "dashboard.db")) and ".argentos" in path


class _Run:
    """The state of one backup run, shared by the worker threads."""

    def __init__(self, repo: Repository, cache: Cache, parent: Snapshot | None, envx: Environment) -> None:
        self.repo = repo
        self.cache = cache
        self.parent = parent
        self.envx = envx
        self.parent_nodes: dict[str, Node] = {}
        self.parent_started_ns = 0
        if parent is not None:
            self.parent_nodes = dict(walk_tree(repo, parent.tree))
            self.parent_started_ns = int(datetime.fromisoformat(parent.started or parent.time).timestamp() * 1e9)
        self.tmp = cache.run_dir()
        self.files_read = 0
        self.incomplete: list[dict[str, str]] = []
        self.databases: list[DatabaseInfo] = []
        self.aux = ThreadPoolExecutor(max_workers=2, thread_name_prefix="phx-check")

    def save_data(self, data: memoryview | bytes, blob_id: bytes | None = None) -> bytes:
        return self.repo.save_blob_async(BlobType.DATA, data, blob_id)

    def data_id(self, data: memoryview | bytes) -> bytes:
        return self.repo.ids.blob_id(BlobType.DATA, data)

    def unchanged(self, node: Node | None, st: os.stat_result, kind: str) -> bool:
        return (
            node is not None
            and node.type == kind
            and node.size == st.st_size
            and node.mtime_ns == st.st_mtime_ns
            and node.ctime_ns == st.st_ctime_ns
            and node.inode == st.st_ino
            and max(st.st_mtime_ns, st.st_ctime_ns) < self.parent_started_ns - RACY_NS
        )

    def file_node(self, entry: Entry) -> Node:
        st = entry.st
        prev = self.parent_nodes.get(entry.logical)
        if self.unchanged(prev, st, "file"):
            assert prev is not None
            return _renamed(prev, entry.path.name)
        extents: list[Extent] = []
        digest = hashlib.sha256()
        size = 0
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            fst = os.fstat(f.fileno())
            if not stat.S_ISREG(fst.st_mode):
                raise SourceError(f"{entry.path} is no longer a regular file")
            for window in _windows(f):
                digest.update(window)
                size += len(window)
                for chunk in file_chunks(window, self.repo.config.chunker, self.repo.secrets.chunker_seed):
                    extents.append(Extent(self.save_data(chunk), 0, len(chunk)))
        self.files_read += 1
        return Node(
            name=entry.path.name,
            type="file",
            mode=stat.S_IMODE(fst.st_mode),
            mtime_ns=fst.st_mtime_ns,
            size=size,
            inode=fst.st_ino,
            ctime_ns=fst.st_ctime_ns,
            uid=fst.st_uid,
            gid=fst.st_gid,
            content=extents,
            sha256=digest.hexdigest(),
        )

    def sqlite_node(self, entry: Entry) -> tuple[Node, DatabaseInfo]:
        src = sqlite_source.source_stat(entry.path)
        prev = self.parent_nodes.get(entry.logical)
        if (
            prev is not None
            and prev.type == "sqlite"
            and prev.sqlite is not None
            and prev.sqlite.get("source") == src.to_json()
            and src.latest_change_ns() < self.parent_started_ns - RACY_NS
            and self.parent is not None
        ):
            info = next((d for d in self.parent.databases if d.path == entry.logical), None)
            if info is not None:
                return _renamed(prev, entry.path.name), info
        copy = self.tmp / f"{hashlib.sha256(entry.logical.encode()).hexdigest()[:16]}.db"
        sqlite_source.copy_database(entry.path, copy)
        try:
            # The integrity check and the SHA-256 read the copy in their own threads while this
            # one cuts it into page runs: the three overlap instead of adding up.
            check: Future[sqlite_source.DatabaseCheck] = self.aux.submit(sqlite_source.check_database, copy)
            sha = hashlib.sha256()
            page_size = sqlite_source.page_size_of(copy)
            parent_state = None
            if prev is not None and prev.type == "sqlite" and prev.sha256:
                pages = self.cache.load_pages(entry.logical, prev.sha256)
                if pages is not None:
                    parent_state = (prev.content, pages)
            fd = os.open(copy, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                extents, state = page_runs(
                    FileView(fd, size),
                    page_size,
                    self.repo.config.sqlite_run_pages,
                    self.repo.ids.page_key,
                    self.save_data,
                    parent_state,
                    region_id=self.data_id,
                    digest=sha,
                )
            finally:
                os.close(fd)
            digest = sha.hexdigest()
            result = check.result()
        finally:
            copy.unlink(missing_ok=True)
        state.sha256 = digest
        self.cache.save_pages(entry.logical, state)
        info = DatabaseInfo(
            path=entry.logical,
            engine="sqlite",
            version=result.version,
            integrity=result.integrity,
            tables=result.tables,
            virtual_tables=result.virtual_tables,
            page_size=page_size,
        )
        st = os.stat(entry.path)
        node = Node(
            name=entry.path.name,
            type="sqlite",
            mode=stat.S_IMODE(st.st_mode),
            mtime_ns=st.st_mtime_ns,
            size=size,
            inode=st.st_ino,
            ctime_ns=st.st_ctime_ns,
            uid=st.st_uid,
            gid=st.st_gid,
            content=extents,
            sha256=digest,
            sqlite={"pageSize": page_size, "integrity": result.integrity, "source": src.to_json()},
        )
        return node, info


def _windows(f: object) -> Iterator[bytes]:
    read = f.read  # type: ignore[attr-defined]
    first = True
    while True:
        block: bytes = read(READ_WINDOW)
        if not block:
            if first:
                yield b""
            return
        first = False
        yield block


def _renamed(node: Node, name: str) -> Node:
    copy = Node(**{**node.__dict__}) if hasattr(node, "__dict__") else _copy_node(node)
    copy.name = name
    return copy


def _copy_node(node: Node) -> Node:
    import dataclasses

    return dataclasses.replace(node)


def walk_tree(repo: Repository, tree_id: bytes, prefix: str = "") -> Iterator[tuple[str, Node]]:
    """(logical path, node) for every node below a tree, depth first."""
    for node in repo.load_tree(tree_id):
        path = f"{prefix}/{node.name}" if prefix else node.name
        yield path, node
        if node.type == "dir" and node.subtree is not None:
            yield from walk_tree(repo, node.subtree, path)


def _run(
    repo: Repository,
    cfg: Config,
    envx: Environment,
    layout: Layout,
    sel: Selection,
    scope: Scope,
    tags: tuple[str, ...],
    when: datetime,
    started: float,
) -> BackupResult:
    repo.load_index()
    snapshots = repo.list_snapshots()
    host = socket.gethostname()
    parents = [s for s in snapshots if s.host == host and s.scope == scope]
    parent = parents[-1] if parents else None
    run = _Run(repo, cache_for(repo, envx), parent, envx)
    nodes: dict[str, Node] = {}
    total = len(sel.entries)
    done = 0
    workers = max(2, min(8, (os.cpu_count() or 2) + 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="phx-read") as pool:
        futures: dict[str, Future[Node]] = {}
        db_futures: dict[str, Future[tuple[Node, DatabaseInfo]]] = {}
        # Databases first: they are the largest items, so they start while files fill the gaps.
        for entry in sorted(sel.entries.values(), key=lambda e: (e.kind != "sqlite", e.logical)):
            if entry.kind == "file":
                futures[entry.logical] = pool.submit(run.file_node, entry)
            elif entry.kind == "sqlite":
                db_futures[entry.logical] = pool.submit(run.sqlite_node, entry)
            elif entry.kind == "symlink":
                nodes[entry.logical] = _symlink_node(entry)
        for logical, fut in db_futures.items():
            try:
                node, info = fut.result()
            except (OSError, PhoenixError) as exc:
                run.incomplete.append({"path": logical, "error": _reason(exc)})
                continue
            nodes[logical] = node
            run.databases.append(info)
            done += 1
            _progress(envx, done, total)
        for logical, ffut in futures.items():
            try:
                nodes[logical] = ffut.result()
            except (OSError, PhoenixError) as exc:
                run.incomplete.append({"path": logical, "error": _reason(exc)})
            done += 1
            _progress(envx, done, total)
    run.aux.shutdown()
    for path, message in sel.errors:
        run.incomplete.append({"path": layout.to_logical(Path(path)), "error": message})
    root = _write_trees(repo, layout, sel, nodes)
    repo.flush()
    files = sum(1 for n in nodes.values() if n.type in ("file", "sqlite", "symlink"))
    size = sum(n.size for n in nodes.values() if n.type in ("file", "sqlite"))
    dirs = sum(1 for e in sel.entries.values() if e.kind == "dir")
    name = seed_name(when, {s.name for s in snapshots})
    duration = time.time() - started
    snap = Snapshot(
        time=when.isoformat(),
        name=name,
        host=socket.gethostname(),
        username=_username(),
        scope=scope,
        tags=tags,
        tree=root,
        parent=parent.id if parent else None,
        sources={"workspace": str(layout.workspace), "home": str(layout.home)},
        databases=tuple(sorted(run.databases, key=lambda d: d.path)),
        stats=SnapshotStats(files, dirs, size, 0, repo.stats.blobs_added, run.files_read, duration),
        incomplete=tuple(run.incomplete),
        phoenix_version=__version__,
        started=datetime.fromtimestamp(started).astimezone().isoformat(),
    )
    # The snapshot records the bytes it added: packs and index are known; the snapshot object
    # itself is small and is counted by the repository after it is written.
    added = repo.stats.bytes_added
    snap = _with_added(snap, added)
    sid = repo.save_snapshot(snap)
    return BackupResult(
        id=sid,
        name=name,
        time=snap.time,
        scope=scope,
        files=files,
        size=size,
        added=added,
        files_read=run.files_read,
        databases=list(snap.databases),
        targets={},
        incomplete=run.incomplete,
        duration=time.time() - started,
    )


def _with_added(snap: Snapshot, added: int) -> Snapshot:
    import dataclasses

    return dataclasses.replace(snap, stats=dataclasses.replace(snap.stats, added=added))


def _symlink_node(entry: Entry) -> Node:
    st = entry.st
    return Node(
        name=entry.path.name,
        type="symlink",
        mode=stat.S_IMODE(st.st_mode),
        mtime_ns=st.st_mtime_ns,
        uid=st.st_uid,
        gid=st.st_gid,
        link_target=os.readlink(entry.path),
    )


def _write_trees(repo: Repository, layout: Layout, sel: Selection, nodes: dict[str, Node]) -> bytes:
    """Write directory trees bottom-up; return the root tree's id."""
    children: dict[str, list[Node]] = {}
    dirs: dict[str, Entry] = {k: e for k, e in sel.entries.items() if e.kind == "dir"}
    for logical in nodes:
        for parent in _ancestors(logical):
            dirs.setdefault(parent, Entry(parent, layout.to_real(parent), "dir", _stat_or_default(layout, parent)))
    for logical, node in nodes.items():
        children.setdefault(_parent_of(logical), []).append(node)
    for logical in sorted(dirs, key=lambda p: p.count("/"), reverse=True):
        entry = dirs[logical]
        subtree, _ = repo.save_tree(children.get(logical, []))
        st = entry.st
        node = Node(
            name=logical.rsplit("/", 1)[-1],
            type="dir",
            mode=stat.S_IMODE(st.st_mode),
            mtime_ns=st.st_mtime_ns,
            uid=st.st_uid,
            gid=st.st_gid,
            subtree=subtree,
        )
        children.setdefault(_parent_of(logical), []).append(node)
    root, _ = repo.save_tree(children.get("", []))
    return root


def _ancestors(logical: str) -> list[str]:
    parts = logical.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _parent_of(logical: str) -> str:
    return logical.rsplit("/", 1)[0] if "/" in logical else ""


def _stat_or_default(layout: Layout, logical: str) -> os.stat_result:
    try:
        return os.lstat(layout.to_real(logical))
    except OSError:
        return os.stat_result((0o40755, 0, 0, 0, 0, 0, 0, 0, 0, 0))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _progress(envx: Environment, done: int, total: int) -> None:
    if envx.progress is not None:
        envx.progress("backup", done, total)


def _username() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
