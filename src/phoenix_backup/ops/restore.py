"""`phx restore`: all or part of a snapshot, in place or below `--to DIR`.

Every write goes through folder file descriptors opened with O_NOFOLLOW, one path component at a
time, so a restore can never leave its destination or write through a symlink it finds there.
Files are written to a temporary name in their folder, checked against the snapshot's SHA-256,
fsynced and renamed into place: a file is either old or new, never torn.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import secrets
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from phoenix_backup.config import Config
from phoenix_backup.errors import (
    ConfirmationRequired,
    CorruptObject,
    ExitStatus,
    PhoenixError,
    RestoreError,
    UnsafePath,
)
from phoenix_backup.ops.backup import walk_tree
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.ops.scope import LogicalMatcher, Scope, component_patterns
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.snapshot import Snapshot
from phoenix_backup.repo.tree import Node, check_name
from phoenix_backup.sources.layout import Layout, split_logical
from phoenix_backup.sources.patterns import glob_regex
from phoenix_backup.storage.local import os_error

T = TypeVar("T")
Action = Literal["create", "overwrite", "unchanged"]
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class PlanItem:
    path: str  # logical
    target: str  # real path
    kind: str
    action: Action
    size: int


@dataclass
class RestoreResult:
    snapshot: str
    name: str
    destination: str  # "in place" or the --to folder
    items: list[PlanItem]
    dry_run: bool
    restored: int = 0
    databases: list[dict[str, str]] = field(default_factory=list)  # {path, integrity}
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.PARTIAL if self.errors else ExitStatus.OK

    def counts(self) -> dict[str, int]:
        out = {"create": 0, "overwrite": 0, "unchanged": 0}
        for item in self.items:
            out[item.action] += 1
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "snapshot": self.snapshot,
            "name": self.name,
            "destination": self.destination,
            "dryRun": self.dry_run,
            "restored": self.restored,
            "counts": self.counts(),
            "items": [
                {"path": i.path, "target": i.target, "kind": i.kind, "action": i.action, "size": i.size}
                for i in self.items
            ],
            "databases": self.databases,
            "errors": self.errors,
        }


def select_nodes(
    repo: Repository, snap: Snapshot, cfg: Config, envx: Environment, scope: Scope, paths: tuple[str, ...]
) -> list[tuple[str, Node]]:
    """The snapshot's nodes in the restore's scope, parents before children."""
    layout = Layout(cfg.workspace, envx.home)
    all_nodes = list(walk_tree(repo, snap.tree))
    wanted: list[tuple[str, Node]] = []
    scope_matcher = None
    if scope not in ("full", "databases"):
        scope_matcher = LogicalMatcher.for_patterns(component_patterns(cfg, scope), layout)
    path_rx = [glob_regex(p.strip("/")) for p in paths]
    wanted_dirs: set[str] = set()
    for logical, node in all_nodes:
        if scope == "databases" and node.type != "sqlite":
            continue
        if scope_matcher is not None and not scope_matcher.matches(logical):
            continue
        if path_rx and not any(_path_matches(rx, logical) for rx in path_rx):
            continue
        if node.type == "dir":
            wanted_dirs.add(logical)  # folders are restored too, empty ones included
        else:
            wanted.append((logical, node))
    # And the folders on the way to what is restored, with their modes and times.
    keep_dirs = wanted_dirs | {a for logical, _ in wanted for a in _ancestors(logical)}
    keep_dirs |= {a for d in wanted_dirs for a in _ancestors(d)}
    dirs = [(lg, n) for lg, n in all_nodes if n.type == "dir" and lg in keep_dirs]
    return dirs + wanted


def _path_matches(rx: object, logical: str) -> bool:
    """`--path` globs match the logical path, or the path inside its root (workspace-relative)."""
    import re

    assert isinstance(rx, re.Pattern)
    parts = logical.split("/")
    for start in (0, 1):
        for end in range(len(parts), start, -1):
            if rx.fullmatch("/".join(parts[start:end])):
                return True
    return False


def _ancestors(logical: str) -> list[str]:
    parts = logical.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def restore(
    cfg: Config,
    envx: Environment,
    *,
    ref: str = "latest",
    scope: Scope = "full",
    paths: tuple[str, ...] = (),
    to: Path | None = None,
    dry_run: bool = False,
    yes: bool = False,
) -> RestoreResult:
    repo = open_repository(cfg, envx)
    with repo.lock(exclusive=False, command="restore"):
        repo.load_index()
        snap = repo.find_snapshot(ref)
        selected = select_nodes(repo, snap, cfg, envx, scope, paths)
        layout = Layout(cfg.workspace, envx.home)
        items = [_plan_item(layout, to, lg, n) for lg, n in selected if n.type != "dir"]
        result = RestoreResult(snap.id, snap.name, str(to) if to else "in place", items, dry_run)
        if dry_run:
            return result
        overwrites = [i for i in items if i.action == "overwrite"]
        if to is None and overwrites and not yes:
            question = f"Restore {snap.name} in place, overwriting {len(overwrites)} file(s)?"
            if not envx.interactive or envx.confirm is None:
                raise ConfirmationRequired(
                    f"this restore would overwrite {len(overwrites)} file(s) in place; pass --yes to confirm "
                    "(or --dry-run to see the plan)"
                )
            if not envx.confirm(question):
                raise ConfirmationRequired("restore cancelled; nothing was changed")
        _check_data(repo, selected)
        writer = _Writer(repo, layout, to)
        try:
            # Folders first, then file contents in parallel (each file is written, checked, fsynced
            # and renamed on its own), then links, then folder modes and times.
            for logical, node in selected:
                if node.type == "dir":
                    _record(result, logical, functools.partial(writer.directory, logical, node))
            workers = max(2, (os.cpu_count() or 2) + 1)
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="phx-restore") as pool:
                jobs = [
                    (logical, node, pool.submit(writer.content, logical, node, to is None))
                    for logical, node in selected
                    if node.type in ("file", "sqlite")
                ]
                for logical, node, job in jobs:
                    integrity = _record(result, logical, job.result)
                    if integrity is not None:
                        result.restored += 1
                        if node.type == "sqlite":
                            result.databases.append({"path": logical, "integrity": integrity})
            for logical, node in selected:
                if node.type == "symlink":
                    _record(result, logical, functools.partial(writer.symlink, logical, node))
            writer.finish_dirs()
        finally:
            writer.close()
        return result


def _record(result: RestoreResult, logical: str, action: Callable[[], T]) -> T | None:
    """Run one restore step; an unsafe path is reported for that path and the restore goes on."""
    try:
        return action()
    except UnsafePath as exc:
        result.errors.append({"path": logical, "error": str(exc)})
        return None


def _plan_item(layout: Layout, to: Path | None, logical: str, node: Node) -> PlanItem:
    target = layout.to_real(logical, to)
    action: Action = "create"
    try:
        st = os.lstat(target)
        action = "overwrite"
        if node.type in ("file", "sqlite") and stat.S_ISREG(st.st_mode) and st.st_size == node.size:
            if _sha256_file(target) == node.sha256:
                action = "unchanged"
        elif node.type == "symlink" and stat.S_ISLNK(st.st_mode) and os.readlink(target) == node.link_target:
            action = "unchanged"
    except OSError:
        pass
    return PlanItem(logical, str(target), node.type, action, node.size)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _check_data(repo: Repository, selected: list[tuple[str, Node]]) -> None:
    """Every blob the restore needs must be in the index before anything is touched."""
    for logical, node in selected:
        for ext in node.content:
            if not repo.index.has(ext.blob):
                raise CorruptObject(
                    f"data of {logical} is missing from the repository (blob {ext.blob.hex()[:16]}); "
                    "run `phx verify` and restore from another snapshot or target"
                )


class _Writer:
    def __init__(self, repo: Repository, layout: Layout, to: Path | None) -> None:
        self.repo = repo
        self.layout = layout
        self.to = to
        self._roots: dict[str, int] = {}
        self._dir_meta: list[tuple[str, Node]] = []
        self._roots_lock = threading.Lock()

    def close(self) -> None:
        for fd in self._roots.values():
            os.close(fd)
        self._roots.clear()

    def _base(self, root: str) -> int:
        """A descriptor of the folder a logical root maps to (created below --to if needed)."""
        with self._roots_lock:
            return self._open_base(root)

    def _open_base(self, root: str) -> int:
        if root in self._roots:
            return self._roots[root]
        if self.to is None:
            # In place the roots are the configured workspace, the home folder and "/": the
            # user's own paths, opened as they are.
            base = self.layout.to_real(root)
            try:
                base.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise os_error(exc, f"opening the restore destination {base}") from exc
        else:
            # Below --to, the root folder itself must not be a link leading out of DIR.
            try:
                self.to.mkdir(parents=True, exist_ok=True, mode=0o700)
                top = os.open(self.to, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise os_error(exc, f"opening the restore destination {self.to}") from exc
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(root, 0o700, dir_fd=top)
                fd = os.open(root, _DIR_FLAGS, dir_fd=top)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(
                        f"{self.to / root} is a symlink or not a folder; Phoenix never writes through links "
                        "— move it aside and restore again"
                    ) from exc
                raise os_error(exc, f"opening the restore destination {self.to / root}") from exc
            finally:
                os.close(top)
        self._roots[root] = fd
        return fd

    @contextlib.contextmanager
    def parent_dir(self, logical: str, create: bool = True) -> Iterator[tuple[int, str]]:
        """(descriptor of the folder holding `logical`, its last component), never following links."""
        parts = split_logical(logical)
        fd = os.dup(self._base(parts[0]))
        try:
            for comp in parts[1:-1]:
                check_name(comp)
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(comp, 0o700, dir_fd=fd)
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a symlink or a file in the way
                        raise UnsafePath(
                            f"{comp} in the destination of {logical} is a symlink or not a folder; "
                            "Phoenix never writes through links — move it aside and restore again"
                        ) from exc
                    raise
                os.close(fd)
                fd = nfd
            yield fd, check_name(parts[-1])
        finally:
            os.close(fd)

    def directory(self, logical: str, node: Node) -> None:
        if "/" not in logical:
            self._base(logical)
            # A root's own mode and time apply below --to and to the workspace in place; the real
            # home folder and "/" are never changed.
            if self.to is not None or logical == "workspace":
                self._dir_meta.append((logical, node))
            return
        with self.parent_dir(logical) as (fd, name):
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
            except FileExistsError:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise UnsafePath(
                        f"{logical} exists in the destination and is not a folder; move it aside and restore again"
                    ) from None
        self._dir_meta.append((logical, node))

    def finish_dirs(self) -> None:
        """Modes and times of folders last (deepest first), after their content is written."""
        for logical, node in sorted(self._dir_meta, key=lambda x: x[0].count("/"), reverse=True):
            if "/" not in logical:
                dfd = self._base(logical)
                os.fchmod(dfd, node.mode)
                _chown(dfd, node)
                os.utime(dfd, ns=(node.mtime_ns, node.mtime_ns))
                continue
            with self.parent_dir(logical, create=False) as (fd, name):
                dfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                try:
                    os.fchmod(dfd, node.mode)
                    _chown(dfd, node)
                    os.utime(dfd, ns=(node.mtime_ns, node.mtime_ns))
                finally:
                    os.close(dfd)

    def symlink(self, logical: str, node: Node) -> None:
        assert node.link_target is not None
        with self.parent_dir(logical) as (fd, name):
            tmp = f".phx-tmp-{secrets.token_hex(6)}"
            os.symlink(node.link_target, tmp, dir_fd=fd)
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            with contextlib.suppress(OSError, NotImplementedError):
                os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=fd, follow_symlinks=False)

    def _write_temp(self, fd: int, logical: str, node: Node) -> str:
        """Write the node's content to a temporary file in the folder `fd`; check its SHA-256."""
        tmp = f".phx-tmp-{secrets.token_hex(6)}"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)
        digest = hashlib.sha256()
        last: tuple[bytes, bytes] | None = None  # consecutive extents often share a blob
        try:
            for ext in node.content:
                if last is None or last[0] != ext.blob:
                    last = (ext.blob, self.repo.load_blob(BlobType.DATA, ext.blob))
                data = memoryview(last[1])[ext.offset : ext.offset + ext.length]
                if len(data) != ext.length:
                    raise CorruptObject(f"data of {logical} is shorter than the snapshot says")
                digest.update(data)
                while data:
                    n = os.write(out, data)
                    data = data[n:]
            if digest.hexdigest() != node.sha256:
                raise CorruptObject(f"restored {logical} does not match its SHA-256 in the snapshot")
            os.fchmod(out, node.mode)
            _chown(out, node)
            os.utime(out, ns=(node.mtime_ns, node.mtime_ns))
            os.fsync(out)
        except BaseException as exc:
            os.close(out)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            if isinstance(exc, OSError):
                raise os_error(exc, f"restoring {logical}") from exc
            raise
        os.close(out)
        return tmp

    def content(self, logical: str, node: Node, in_place: bool) -> str:
        """Restore a file or database; returns "ok" or the database's integrity result."""
        if node.type == "sqlite":
            return self.database(logical, node, in_place=in_place)
        with self.parent_dir(logical) as (fd, name):
            tmp = self._write_temp(fd, logical, node)
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            os.fsync(fd)
        return "ok"

    def database(self, logical: str, node: Node, *, in_place: bool) -> str:
        """Write the database copy, check it, and put it in place; returns the integrity result."""
        with self.parent_dir(logical) as (fd, name):
            tmp = self._write_temp(fd, logical, node)
            integrity = _integrity(f"/proc/self/fd/{fd}/{tmp}")
            if integrity != "ok":
                os.unlink(tmp, dir_fd=fd)
                raise RestoreError(
                    f"the restored copy of {logical} fails integrity_check ({integrity}); nothing replaced"
                )
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            if in_place:
                # The old WAL and shared-memory index belong to the replaced file.
                for suffix in ("-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name + suffix, dir_fd=fd)
            os.fsync(fd)
        return integrity


def _integrity(path: str) -> str:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        try:
            rows = [str(r[0]) for r in con.execute("PRAGMA integrity_check")]
        finally:
            con.close()
    except sqlite3.Error as exc:
        return str(exc)
    return "ok" if rows == ["ok"] else "; ".join(rows[:5])


def _chown(fd: int, node: Node) -> None:
    if os.geteuid() == 0:
        with contextlib.suppress(OSError):
            os.fchown(fd, node.uid, node.gid)


def describe_error(exc: PhoenixError) -> str:
    return str(exc)
