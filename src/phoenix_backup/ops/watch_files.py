"""The files part of `phx watch`: file-system events (inotify, FSEvents or kqueue, through
`watchdog`) on the workspace and the other folders a backup reads, debounced, then a snapshot of
every file the config selects, databases aside (scope `watch-files`, no tag: retention keeps every
one for a day, then one an hour up to three days, then by the policy, repo/retention.py). Its parent is
the newest snapshot of this host, so only the files that changed are read and stored: the cost is
proportional to the change. A point in time of the files is the newest such snapshot at or before it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

from phoenix_backup.config import Config
from phoenix_backup.dirs import data_dir
from phoenix_backup.errors import PhoenixError
from phoenix_backup.ops.context import Environment
from phoenix_backup.ops.selection import select_sources
from phoenix_backup.repo.cache import cache_root
from phoenix_backup.sources.files import SQLITE_SUFFIXES, Selection

FILES_SCOPE = "watch-files"
# A snapshot once events stopped for QUIET_SECONDS, and at most MAX_DELAY_SECONDS after the first
# event of a burst (so a file written all the time is still saved every few seconds).
QUIET_SECONDS = 2.0
MAX_DELAY_SECONDS = 8.0
RECHECK_SECONDS = 4.0  # how often the folders watched are checked to be those at their paths
_COMPANIONS = ("-wal", "-shm", "-journal")
# The events that can change a file, asked of the kernel (inotify's mask): not its opening or a
# read, which every snapshot of the files causes itself.
_CHANGES: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]
# Folders outside the workspace are watched for the files a backup reads there, beside the
# databases (ArgentOS keeps its stores in ~/.argentos): without each write, which a live
# database's -wal gets several times per commit (hundreds of events a second, each handled in
# Python: measured 4.4 % of a core against 0.6 % for the databases' capture). A file there is seen
# when it is closed after writing, created, moved or deleted.
_CHANGES_BUT_WRITES = [e for e in _CHANGES if e is not FileModifiedEvent]


def _roots(workspace: Path, sel: Selection) -> list[tuple[Path, bool, list[type[FileSystemEvent]]]]:
    """The folders to watch: (folder, recursive, the events asked). The workspace, whole; outside
    it, each folder a backup reads (a component's symlink target, `memory/ -> ~/synced/memory`)
    whole too, since folders made there later hold notes as well, and the folder of each other
    file it reads. Writes are asked everywhere except in a folder that holds a database (its -wal
    would wake the watch at every commit, see _CHANGES_BUT_WRITES): a file there is seen when it
    is closed after writing, created, moved or deleted, not while a process keeps writing to it."""
    entries = list(sel.entries.values())
    targets = [sel.entries[t] for t in sel.followed.values() if t in sel.entries]
    whole = {workspace} | {e.path for e in targets if e.kind == "dir" and not e.path.is_relative_to(workspace)}
    whole = {d for d in whole if not any(d != o and d.is_relative_to(o) for o in whole)}
    shallow = {
        e.path.parent
        for e in entries
        if e.kind in ("file", "symlink") and not any(e.path.parent.is_relative_to(d) for d in whole)
    }
    databases = [e.path.parent for e in entries if e.kind == "sqlite"]
    out = []
    for root in sorted(whole | shallow):
        if root.is_dir():
            recursive = root in whole
            busy = any(d == root or (recursive and d.is_relative_to(root)) for d in databases)
            # The workspace is asked for writes whatever it holds: its files change most.
            kinds = _CHANGES_BUT_WRITES if busy and root != workspace else _CHANGES
            out.append((root, recursive, kinds))
    return out


def _folder(path: Path) -> tuple[int, int]:
    """The device and inode of a folder, (0, 0) when there is none at `path`."""
    try:
        st = os.stat(path)
    except OSError:
        return 0, 0
    return st.st_dev, st.st_ino


# A folder watched: its path, device and inode, whether below it too, the events asked.
_WatchKey = tuple[Path, int, int, bool, tuple[str, ...]]


class _Events(FileSystemEventHandler):
    def __init__(self, ignored: tuple[str, ...]) -> None:
        self.ignored = ignored
        self.lock = threading.Lock()
        self.first = 0.0
        self.last = 0.0

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write") or (event.is_directory and event.event_type == "modified"):
            return  # a folder's own "modified" is a change of an entry inside, seen on its own
        paths = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
        if all(not p or self._ignored(p) for p in paths):
            return
        now = time.monotonic()
        with self.lock:
            if not self.first:
                self.first = now
            self.last = now

    def _ignored(self, path: str) -> bool:
        name = path.rsplit("/", 1)[-1]
        if name.endswith(SQLITE_SUFFIXES) or any(name.endswith(s) for s in _COMPANIONS):
            return True  # the databases are captured page by page
        return any(path == root or path.startswith(root + "/") for root in self.ignored)

    def take(self, now: float) -> bool:
        """Whether a burst of events is due for a snapshot (and forget it)."""
        with self.lock:
            if not self.first:
                return False
            if now - self.last < QUIET_SECONDS and now - self.first < MAX_DELAY_SECONDS:
                return False
            self.first = self.last = 0.0
            return True


class FileWatch:
    """Events on the folders a backup reads, and the snapshot of the files when they are due."""

    def __init__(self, cfg: Config, envx: Environment) -> None:
        self.cfg = cfg
        self.envx = envx
        own = [Path(envx.env.get("PHX_CACHE_DIR") or cache_root()), data_dir(envx.env)]
        if cfg.targets.local.enabled:
            own.append(cfg.repository_path)
        self.events = _Events(tuple(str(p) for p in own))
        self.observer = Observer()
        self.pending = True  # the first snapshot: what changed while no watch ran
        self.snapshots = 0
        self.watches: dict[_WatchKey, ObservedWatch] = {}
        self.recheck = time.monotonic() + RECHECK_SECONDS
        self._schedule()
        self.observer.start()

    def _schedule(self) -> None:
        """Watch the folders the backup reads now: a folder a component points to may have been
        renamed away and made again (a sync tool's way), and a watch follows the folder it was
        put on (the kernel watches a folder, not its name)."""
        _layout, sel = select_sources(self.cfg, "full", self.envx)
        wanted: dict[_WatchKey, list[type[FileSystemEvent]]] = {}
        for root, recursive, kinds in _roots(self.cfg.workspace, sel):
            wanted[(root, *_folder(root), recursive, tuple(k.__name__ for k in kinds))] = kinds
        for key in [k for k in self.watches if k not in wanted]:
            self.observer.unschedule(self.watches.pop(key))
        for key, kinds in wanted.items():
            if key not in self.watches:
                root, recursive = key[0], key[3]
                watch = self.observer.schedule(self.events, str(root), recursive=recursive, event_filter=kinds)
                self.watches[key] = watch

    def due(self) -> bool:
        now = time.monotonic()
        burst = self.events.take(now)
        if burst:
            self.pending = True
        if burst or now >= self.recheck:
            # A folder watched that is not the one at its path any more (renamed away, made
            # again) reports nothing of the new one: the watch moves to it, and a snapshot reads it.
            self.recheck = now + RECHECK_SECONDS
            if any(_folder(key[0]) != key[1:3] for key in self.watches):
                self.pending = True
                with contextlib.suppress(OSError, PhoenixError):
                    self._schedule()
        return self.pending

    def taken(self) -> None:
        """A snapshot of the files (every file the config selects, databases aside: scope
        FILES_SCOPE, its parent the newest snapshot of this host) was taken: by the watch, in a
        child process (ops/watch_child.py)."""
        self.pending = False
        self.snapshots += 1

    def close(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)
