"""Which files and databases a backup takes: includes expanded, excludes applied, databases found.

The result is a flat, sorted list of entries with their logical paths; reading them is the backup
op's job. A live SQLite database is never listed as a plain file, nor are its `-wal`, `-shm` and
`-journal` companions.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from phoenix_backup.sources.layout import Layout
from phoenix_backup.sources.patterns import ExcludeSet, Include, has_magic

EntryKind = Literal["dir", "file", "symlink", "sqlite"]
# A restore's temporary file: .phx-tmp-<pid>-<process start>-<random>, and SQLite's companions of
# a temporary database copy. Never saved (a killed restore's leftover is not the user's data);
# sinks/leftovers.py removes those of dead processes.
RESTORE_TEMP = re.compile(r"^\.phx-tmp-(\d+)-(\d+)-[0-9a-f]+(?:-wal|-shm|-journal)?$")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
SQLITE_MAGIC = b"SQLite format 3\0"
COMPANIONS = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class Entry:
    logical: str
    path: Path
    kind: EntryKind
    st: os.stat_result


@dataclass
class Selection:
    entries: dict[str, Entry]  # logical path -> entry (folders on the way included)
    missing: list[str]  # configured paths that do not exist (reported, not fatal)
    errors: list[tuple[str, str]]  # (path, message) for folders that could not be listed


def is_sqlite_file(path: Path) -> bool:
    if not path.name.endswith(SQLITE_SUFFIXES):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def select(
    layout: Layout,
    includes: Iterable[str],
    excludes: Iterable[str],
    databases: Iterable[Path],
    *,
    detect_databases: bool = True,
    optional: Iterable[str] = (),
) -> Selection:
    """Walk the includes; `databases` are added (if they exist) whether or not they are included.
    Includes in `optional` that match nothing are not reported as missing.

    What exists but cannot be read (a folder without permission) goes into `errors`, never into
    `missing`: "does not exist" is said only of what does not exist."""
    exclude = ExcludeSet(tuple(excludes), layout.workspace)
    sel = Selection({}, [], [])
    db_paths = {Path(p) for p in databases}
    quiet = set(optional)
    roots: list[Path] = []
    include_list = list(includes) or [""]
    for raw in include_list:
        inc = Include.parse(raw, layout.workspace)
        unreadable: list[tuple[str, str]] = []
        found = list(inc.expand(unreadable))
        for error in unreadable:
            if error not in sel.errors:
                sel.errors.append(error)
        if not found and raw and not unreadable and raw not in quiet:
            sel.missing.append(raw)
        # A glob walks folders, and excludes apply on the way: a match below an excluded folder
        # (`**/*.md` inside `node_modules/`) is dropped. The literal part of a pattern names what
        # the user asked for, so folders above it are not checked.
        literal = inc.base.joinpath(*_literal_prefix(inc.pattern))
        roots.extend(p for p in found if not _excluded_between(exclude, literal, p))
    for db in sorted(db_paths):
        try:
            os.lstat(db)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                sel.missing.append(str(db))
            else:
                sel.errors.append((str(db), exc.strerror or str(exc)))
            continue
        roots.append(db)
    roots = _outermost(roots, db_paths, exclude, layout.workspace)

    def add(path: Path, st: os.stat_result) -> None:
        if _is_companion(path):
            return  # a live database's journal, even when the database itself is excluded
        if RESTORE_TEMP.match(path.name):
            return  # a temporary file of a restore
        kind: EntryKind
        if stat.S_ISLNK(st.st_mode):
            kind = "symlink"
        elif stat.S_ISDIR(st.st_mode):
            kind = "dir"
        elif stat.S_ISREG(st.st_mode):
            if path in db_paths or (detect_databases and is_sqlite_file(path)):
                kind = "sqlite"
                db_paths.add(path)
            else:
                kind = "file"
        else:
            return  # sockets, fifos, devices: not agent data
        logical = layout.to_logical(path)
        sel.entries[logical] = Entry(logical, path, kind, st)
        _add_parents(layout, path, sel)

    def walk(path: Path) -> None:
        try:
            with os.scandir(path) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            sel.errors.append((str(path), exc.strerror or str(exc)))
            return
        for child in children:
            cpath = Path(child.path)
            try:
                st = child.stat(follow_symlinks=False)
            except OSError as exc:
                sel.errors.append((str(cpath), exc.strerror or str(exc)))
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if exclude.excluded(cpath, is_dir):
                continue
            add(cpath, st)
            if is_dir:
                walk(cpath)

    for root in roots:
        try:
            st = root.lstat()
        except OSError as exc:
            sel.errors.append((str(root), exc.strerror or str(exc)))
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        if root not in db_paths and exclude.excluded(root, is_dir) and root != layout.workspace:
            continue
        add(root, st)
        if is_dir:
            walk(root)

    # A database's journal files are part of the database, read through SQLite, never as files.
    for db in db_paths:
        for suffix in COMPANIONS:
            sel.entries.pop(layout.to_logical(Path(str(db) + suffix)), None)
    # A folder both a pattern and a walk could not read is one problem.
    sel.errors = list(dict.fromkeys(sel.errors))
    return sel


def _outermost(roots: list[Path], databases: set[Path], exclude: ExcludeSet, workspace: Path) -> list[Path]:
    """The roots in order, without duplicates and without those the walk of another root reaches
    (a full backup includes the whole workspace and SOUL.md): each folder is walked once.
    Databases stay, since they are marked as databases when added."""
    # Roots that are walked (an excluded root is not, unless it is the workspace itself).
    folders = {r for r in roots if r not in databases and (r == workspace or not exclude.excluded(r, True))}
    out: list[Path] = []
    seen: set[Path] = set()
    for root in roots:
        if root in seen:
            continue
        seen.add(root)
        if root not in databases and any(
            parent in folders and not _excluded_between(exclude, parent, root) and parent != root
            for parent in root.parents
        ):
            continue
        out.append(root)
    return out


def _literal_prefix(pattern: str) -> list[str]:
    parts: list[str] = []
    for seg in pattern.split("/") if pattern else []:
        if has_magic(seg):
            break
        parts.append(seg)
    return parts


def _excluded_between(exclude: ExcludeSet, top: Path, path: Path) -> bool:
    """Whether a folder strictly between `top` and `path` is excluded."""
    for parent in path.parents:
        if parent == top or top not in parent.parents:
            return False
        if exclude.excluded(parent, True):
            return True
    return False


def _is_companion(path: Path) -> bool:
    name = path.name
    return any(name.endswith(suffix) and is_sqlite_file(path.with_name(name[: -len(suffix)])) for suffix in COMPANIONS)


def _root_base(layout: Layout, path: Path) -> Path:
    """The folder a logical root stands for: the workspace, the home folder, or `/`."""
    for base in (layout.workspace, layout.home):
        if path == base or base in path.parents:
            return base
    return Path("/")


def _add_parents(layout: Layout, path: Path, sel: Selection) -> None:
    """Record the folders between a logical root and `path`, with their real metadata (never the
    root's own folder or what lies above it)."""
    base = _root_base(layout, path)
    parent = path.parent
    while path != base and parent != base and base in parent.parents:
        logical = layout.to_logical(parent)
        if logical in sel.entries:
            return
        try:
            st = parent.lstat()
        except OSError:
            return
        sel.entries[logical] = Entry(logical, parent, "dir", st)
        parent = parent.parent
