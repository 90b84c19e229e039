"""Which files and databases a backup takes: includes expanded, excludes applied, databases found.

The result is a flat, sorted list of entries with their logical paths; reading them is the backup
op's job. A live SQLite database is never listed as a plain file, nor are its `-wal`, `-shm` and
`-journal` companions.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from phoenix_backup.sources.layout import Layout
from phoenix_backup.sources.patterns import ExcludeSet, Include, has_magic

EntryKind = Literal["dir", "file", "symlink", "sqlite"]
# A restore's temporary file: .phx-tmp-<pid>-<process start>-<random>, and SQLite's companions of
# a temporary database copy. Never saved (a killed restore's leftover is not the user's data);
# sinks/leftovers.py removes those of dead processes.
# `-é` (in NFC, or NFD as a file system that normalizes lists it): a restore's probe of whether a
# file system ignores Unicode normal form (sinks/files.py `folds_forms`).
RESTORE_TEMP = re.compile(r"^\.phx-tmp-(\d+)-(\d+)-[0-9a-f]+(?:-wal|-shm|-journal|-\u00e9|-e\u0301)?$")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
SQLITE_MAGIC = b"SQLite format 3\0"
COMPANIONS = ("-wal", "-shm", "-journal")


@dataclass(frozen=True, slots=True)  # one per file and folder selected
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
    # Kept paths (components) that are symlinks: the link's logical path -> its target's, saved too.
    followed: dict[str, str] = field(default_factory=dict)
    # Kept paths that an exclude matches (saved all the same), and includes that lie behind a
    # symlink which is saved as a link, never followed: (pattern, link).
    overridden: list[str] = field(default_factory=list)
    behind_links: list[tuple[str, str]] = field(default_factory=list)
    # Named pipes, sockets and devices met: (logical path, what it is). They hold no data to back
    # up, so they are said as not saved, never recorded as a failure (the run is not partial).
    special: list[tuple[str, str]] = field(default_factory=list)
    # What the caller left out of the walk and must say (a key file inside the workspace): warnings.
    left_out: list[str] = field(default_factory=list)


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "named pipe"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def open_regular(path: Path | str, *, follow_links: bool) -> tuple[int, os.stat_result] | None:
    """The file at `path` opened for reading, and its status: (descriptor, stat), the caller's to
    close; or None when it is no regular file (a named pipe, a socket, a device, a folder), closed
    again. OSError when it cannot be opened (with `follow_links=False`, ELOOP when it is a symbolic
    link). One open and one fstat, nothing more (a backup reads each file through it). Never blocks:
    the workspace's writer may have put a FIFO in a file's place since it was listed, and an
    ordinary open of one waits for a writer for ever; a regular file's reads are not changed by
    O_NONBLOCK. The one way Phoenix opens a file it then reads as a regular file's bytes."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if stat.S_ISREG(st.st_mode):
        return fd, st
    os.close(fd)
    return None


def unsaved_database(kind: str) -> str:
    """Why a configured SQLite database of `kind` (a named pipe, socket or device) was not saved."""
    return (
        f"the configured SQLite database is a {kind} now, which holds no data to back up; remove it and put "
        "the database back, or fix the path in databases.sqlite in the config"
    )


def _unsaved_behind_link(path: Path) -> str | None:
    """Why a configured SQLite database that is a symbolic link to a named pipe, socket, device or
    folder was not saved (`phx doctor` fails it, as when that is in its place); None when the link
    points to a regular file or to nothing (said as before). A stat, never an open: a FIFO's open
    would block."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISREG(st.st_mode):
        return None
    return unsaved_database("folder" if stat.S_ISDIR(st.st_mode) else _special_kind(st.st_mode))


def regular_head(path: Path, size: int) -> bytes | None:
    """The first `size` bytes of the file at `path` (a link followed), or None when it is no
    regular file (OSError when it cannot be opened or read). Never blocks (`open_regular`)."""
    opened = open_regular(path, follow_links=True)
    if opened is None:
        return None
    fd, _ = opened
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def is_sqlite_file(path: Path) -> bool:
    if not path.name.endswith(SQLITE_SUFFIXES):
        return False
    try:
        # A FIFO named like a database (beside a planted `-wal`, this is asked of it before its
        # type is known) is no database.
        return regular_head(path, 16) == SQLITE_MAGIC
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
    keep: Iterable[str] = (),
    skip: Iterable[Path] = (),
) -> Selection:
    """Walk the includes; `databases` are added (if they exist) whether or not they are included.
    Includes in `optional` that match nothing are not reported as missing.

    Includes in `keep` (the components) are saved whole whatever `excludes` say. One that is a
    symlink is saved as a link, and what it points to is saved too, at its own logical path: a
    memory folder kept on another disk and linked into the workspace is still the agent's memory.
    The workspace itself is walked through a symlink (~/argent -> /data/argent).

    Folders in `skip` (Phoenix's own repository and cache) are never saved, whatever includes
    them: a backup must not store itself.

    What exists but cannot be read (a folder without permission) goes into `errors`, never into
    `missing`: "does not exist" is said only of what does not exist."""
    exclude = ExcludeSet(tuple(excludes), layout.workspace, layout.home)
    sel = Selection({}, [], [])
    db_paths = {Path(p) for p in databases}
    quiet = set(optional)
    kept_patterns = set(keep)
    kept: set[Path] = set()  # paths saved with everything below them, excludes or not
    roots: list[Path] = []
    include_list = list(includes) or [""]
    for raw in include_list:
        inc = Include.parse(raw, layout.workspace, layout.home)
        unreadable: list[tuple[str, str]] = []
        found = list(inc.expand(unreadable))
        link = _link_on_the_way(inc)
        if raw in kept_patterns and not found and link is not None and link == inc.base / inc.pattern:
            found = [link]  # `memory/` is a symlink to a folder: the component is what it points to
        for error in unreadable:
            if error not in sel.errors:
                sel.errors.append(error)
        if raw in kept_patterns:
            for path in found:
                kept.add(path)
                if _excluded_on_the_way(layout, exclude, path):
                    sel.overridden.append(layout.to_logical(path))
                if path.is_symlink():
                    target = _follow(layout, path, sel)
                    if target is not None:
                        hops = _hops(path)
                        kept.update([*hops, target])
                        found = [*found, *hops, target]
        elif not found and raw and not unreadable and raw not in quiet:
            if link is not None:
                sel.behind_links.append((raw, str(link)))
            else:
                sel.missing.append(raw)
        # A glob walks folders, and excludes apply on the way: a match below an excluded folder
        # (`**/*.md` inside `node_modules/`) is dropped. The literal part of a pattern names what
        # the user asked for, so folders above it are not checked.
        literal = inc.base.joinpath(*_literal_prefix(inc.pattern))
        roots.extend(p for p in found if p in kept or not _excluded_between(exclude, literal, p))
    for db in sorted(db_paths):
        try:
            st = os.lstat(db)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                sel.missing.append(str(db))
            else:
                sel.errors.append((str(db), exc.strerror or str(exc)))
            continue
        roots.append(db)
        if stat.S_ISLNK(st.st_mode):
            target = _linked_database(layout, db, sel)
            if target is not None:
                hops = _hops(db)
                kept.update(hops)
                db_paths.add(target)
                roots.extend([*hops, target])
    # A followed component link is saved with what it points to: nothing behind it is skipped.
    sel.behind_links = [(raw, link) for raw, link in sel.behind_links if Path(link) not in kept]
    never = {Path(os.path.abspath(p)) for p in skip}
    roots = [r for r in _outermost(roots, db_paths, exclude, layout.workspace, kept) if not _below(r, never)]

    def add(path: Path, st: os.stat_result) -> None:
        if _is_companion(path):
            return  # a live database's journal, even when the database itself is excluded
        if RESTORE_TEMP.match(path.name):
            return  # a temporary file of a restore
        kind: EntryKind
        if stat.S_ISLNK(st.st_mode):
            kind = "symlink"
            if path in db_paths and (why := _unsaved_behind_link(path)) is not None:
                sel.errors.append((str(path), why))  # the link is saved all the same
        elif stat.S_ISDIR(st.st_mode):
            kind = "dir"
            if path in db_paths:
                # A configured database replaced by a folder: no database saved under its path, a
                # partial backup as for a FIFO in its place (`phx doctor` fails on it); the folder's
                # files are saved all the same.
                sel.errors.append((str(path), unsaved_database("folder")))
        elif stat.S_ISREG(st.st_mode):
            if path in db_paths or (detect_databases and is_sqlite_file(path)):
                kind = "sqlite"
                db_paths.add(path)
            else:
                kind = "file"
        elif path in db_paths:
            # A configured database replaced by a FIFO, socket or device: a database that was not
            # saved, so a partial backup (exit 3) as a planted companion makes it, not a special
            # file of the workspace said in passing (exit 0).
            sel.errors.append((str(path), unsaved_database(_special_kind(st.st_mode))))
            return
        else:
            sel.special.append((layout.to_logical(path), _special_kind(st.st_mode)))
            return
        logical = layout.to_logical(path)
        sel.entries[logical] = Entry(logical, path, kind, st)
        _add_parents(layout, path, sel)

    def listing(path: Path) -> Iterator[os.DirEntry[str]] | None:
        try:
            with os.scandir(path) as it:
                return iter(sorted(it, key=lambda e: e.name))
        except OSError as exc:
            sel.errors.append((str(path), _unreadable_reason(exc)))
            return None

    def walk(top: Path, whole: bool) -> None:
        """Depth first, each folder's entries by name, with a stack of its own rather than
        recursion: a folder thousands of levels deep is saved like any other."""
        first = listing(top)
        stack = [(top, first, whole)] if first is not None else []
        while stack:
            folder, children, whole_here = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                continue
            cpath = folder / child.name  # not Path(child.path): that parses every level again
            try:
                st = child.stat(follow_symlinks=False)
            except FileNotFoundError as exc:
                # A rollback journal lives only as long as its transaction: one listed and gone
                # before its stat is a database's companion, never saved as a file anyway. Any
                # other file gone meanwhile may have been renamed, so it stays named as not saved.
                if not _is_companion(cpath):
                    sel.errors.append((str(cpath), exc.strerror or str(exc)))
                continue
            except OSError as exc:
                sel.errors.append((str(cpath), _unreadable_reason(exc)))
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if cpath in never:
                continue
            keep_it = whole_here or cpath in kept
            if not keep_it and exclude.excluded(cpath, is_dir):
                continue
            add(cpath, st)
            if is_dir:
                below = listing(cpath)
                if below is not None:
                    stack.append((cpath, below, keep_it))

    for root in roots:
        try:
            # The workspace is the user's own folder, wherever a link puts it.
            st = root.stat() if root == layout.workspace else root.lstat()
        except OSError as exc:
            sel.errors.append((str(root), exc.strerror or str(exc)))
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        if root not in db_paths and root not in kept and exclude.excluded(root, is_dir) and root != layout.workspace:
            continue
        add(root, st)
        if is_dir:
            walk(root, root in kept)

    # A database's journal files are part of the database, read through SQLite, never as files.
    for db in db_paths:
        for suffix in COMPANIONS:
            sel.entries.pop(layout.to_logical(Path(str(db) + suffix)), None)
    # A folder both a pattern and a walk could not read is one problem.
    sel.errors = list(dict.fromkeys(sel.errors))
    return sel


def _unreadable_reason(exc: OSError) -> str:
    """Why a folder or file met by the walk was not saved. A path past PATH_MAX (a folder about
    2,000 levels deep) is said as such, with the fix: the system's "File name too long" reads as
    if one name were too long."""
    if exc.errno == errno.ENAMETOOLONG:
        return (
            "its path is longer than the 4,096 bytes (PATH_MAX) a file system call takes, so it and what lies "
            "below it are not saved; move that folder higher up (or the workspace to a shorter path), or leave "
            "it out (`exclude`)"
        )
    return exc.strerror or str(exc)


def _outermost(
    roots: list[Path], databases: set[Path], exclude: ExcludeSet, workspace: Path, kept: set[Path]
) -> list[Path]:
    """The roots in order, without duplicates and without those the walk of another root reaches
    (a full backup includes the whole workspace and SOUL.md): each folder is walked once.
    Databases stay, since they are marked as databases when added."""
    # Roots that are walked (an excluded root is not, unless it is the workspace or kept).
    folders = {
        r for r in roots if r not in databases and (r == workspace or r in kept or not exclude.excluded(r, True))
    }
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


def _below(path: Path, folders: set[Path]) -> bool:
    return path in folders or any(p in folders for p in path.parents)


def _link_on_the_way(inc: Include) -> Path | None:
    """The first symlink along the literal part of a pattern (`memory` of `memory/*.md`), if any:
    links are saved as links, so nothing behind one is found."""
    path = inc.base
    for part in _literal_prefix(inc.pattern):
        path = path / part
        if path.is_symlink():
            return path
    return None


def _linked_database(layout: Layout, link: Path, sel: Selection) -> Path | None:
    """What a configured database that is a symbolic link points to, followed as a component's link
    is (`_follow`: the link saved as a link, the database at its own path, a dangling link said as
    missing), when that is a SQLite database; a regular file that is none is said as not saved
    (one warning, as for a missing store). A folder, FIFO or device there is `_unsaved_behind_link`'s."""
    try:
        st = os.stat(link)
    except OSError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        return None
    target = _follow(layout, link, sel)
    if target is None or st is None:
        return target
    try:
        if st.st_size == 0 or regular_head(target, len(SQLITE_MAGIC)) == SQLITE_MAGIC:
            return target
    except OSError:
        return target  # unreadable: the backup says so, as of any database it cannot read
    del sel.followed[layout.to_logical(link)]
    sel.left_out.append(
        f"{link} in databases.sqlite is a symbolic link to {target}, which is no SQLite database: only the "
        "link is saved; fix the path in databases.sqlite in the config"
    )
    return None


def _follow(layout: Layout, link: Path, sel: Selection) -> Path | None:
    """What a kept symlink points to, followed to the end; a target that does not exist is
    reported as missing, one that cannot be reached (a loop, no permission) as not saved."""
    try:
        target = Path(os.path.realpath(link, strict=True))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            sel.missing.append(f"{os.path.realpath(link)}, which the symlink {layout.to_logical(link)} points to,")
        else:
            sel.errors.append((str(link), exc.strerror or str(exc)))
        return None
    sel.followed[layout.to_logical(link)] = layout.to_logical(target)
    return target


def _hops(link: Path) -> list[Path]:
    """The links a followed link leads through before what it points to (`chain.db -> mid.db ->
    agent.db`: mid.db), each at the path its folder really has: saved as links beside the first,
    so that a restore puts back a chain that resolves (not `chain.db` to a `mid.db` in no snapshot).
    A link in a folder's part of a target (`dir/mid.db` with `dir` a link) is resolved, not saved."""
    out: list[Path] = []
    path = link
    for _ in range(40):  # the system's own bound on links followed (ELOOP)
        try:
            text = os.readlink(path)
        except OSError:
            break
        nxt = Path(os.path.realpath(path.parent)) / text
        if nxt.name in ("", ".", ".."):
            break  # a folder: what the chain points to, no link
        nxt = Path(os.path.realpath(nxt.parent)) / nxt.name
        if not nxt.is_symlink() or nxt in out:
            break
        out.append(nxt)
        path = nxt
    return out


def excluded(layout: Layout, excludes: Iterable[str], path: Path) -> bool:
    """Whether the `excludes` patterns leave `path` out: they match it or a folder between its
    logical root (the workspace, the home folder) and it."""
    return _excluded_on_the_way(layout, ExcludeSet(tuple(excludes), layout.workspace, layout.home), path)


def _excluded_on_the_way(layout: Layout, exclude: ExcludeSet, path: Path) -> bool:
    """Whether an exclude matches `path` or a folder between its logical root and it."""
    base = _root_base(layout, path)
    if exclude.excluded(path, path.is_dir() and not path.is_symlink()):
        return True
    return any(exclude.excluded(p, True) for p in path.parents if base in p.parents)


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
    for suffix in COMPANIONS:
        if name.endswith(suffix):
            base = path.with_name(name[: -len(suffix)])
            # A database that cannot be read is still a database: its journal is never a file.
            if is_sqlite_file(base) or (base.name.endswith(SQLITE_SUFFIXES) and _unreadable(base)):
                return True
    return False


def _unreadable(path: Path) -> bool:
    """Whether `path` exists but this user may not read it (mode 000, say)."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))  # a FIFO's open never waits
        return False
    except OSError as exc:
        return exc.errno in (errno.EACCES, errno.EPERM)


def _root_base(layout: Layout, path: Path) -> Path:
    """The folder a logical root stands for: the workspace, the home folder, or `/`."""
    for base in (layout.workspace, layout.home):
        if path.is_relative_to(base):  # not `base in path.parents`: a Path for each of thousands of levels
            return base
    return Path("/")


def _add_parents(layout: Layout, path: Path, sel: Selection) -> None:
    """Record the folders between a logical root and `path`, with their real metadata (never the
    root's own folder or what lies above it)."""
    if layout.to_logical(path.parent) in sel.entries:
        # The walk adds each folder before what it holds: for nearly every path its folder is
        # known, said on the path's text. `_root_base`'s pathlib comparisons for each of 200,000
        # files were a fifth of a backup's time when nothing had changed.
        return
    base = _root_base(layout, path)
    parent = path.parent
    while path != base and parent != base and parent.is_relative_to(base):
        logical = layout.to_logical(parent)
        if logical in sel.entries:
            return
        try:
            st = parent.lstat()
        except OSError:
            return
        sel.entries[logical] = Entry(logical, parent, "dir", st)
        parent = parent.parent


# The files hnswlib writes for one index, as chromadb keeps them in a segment folder beside its
# `chroma.sqlite3` (`<uuid>/header.bin`, `data_level0.bin`, `length.bin`, `link_lists.bin`, with
# `index_metadata.pickle`): rewritten in place on each flush, outside the database's transactions.
SEGMENT_MARKERS = ("header.bin", "data_level0.bin")
# The files of a segment folder read with the database: only these (any other file there, of the
# user's, is read on its own, and its changes never make the store read again).
SEGMENT_FILES = frozenset((*SEGMENT_MARKERS, "length.bin", "link_lists.bin", "index_metadata.pickle"))


def database_groups(entries: dict[str, Entry]) -> dict[str, list[str]]:
    """The databases whose application keeps part of their state in files beside them, each with
    those files (logical paths, sorted): a SQLite database and the HNSW index files
    (`SEGMENT_FILES`) of every folder next to it that holds them (a chromadb store). They are
    read as one unit (ops/backup.py)."""
    by_folder: dict[str, list[str]] = {}
    for logical, e in entries.items():
        if e.kind == "file":
            by_folder.setdefault(logical.rpartition("/")[0], []).append(logical)
    segments: dict[str, list[str]] = {}  # the folder holding segment folders -> their files
    for folder, files in by_folder.items():
        names = {f.rpartition("/")[2] for f in files}
        if all(m in names for m in SEGMENT_MARKERS) and "/" in folder:
            index = [f for f in files if f.rpartition("/")[2] in SEGMENT_FILES]
            segments.setdefault(folder.rpartition("/")[0], []).extend(index)
    out: dict[str, list[str]] = {}
    for logical, e in entries.items():
        beside = segments.get(logical.rpartition("/")[0])
        if e.kind == "sqlite" and beside:
            out[logical] = sorted(beside)
    # One database per store: two databases beside the same segment folders are one store each
    # only if neither claims the files twice (the first by name keeps them).
    claimed: set[str] = set()
    for logical in sorted(out):
        files = [f for f in out[logical] if f not in claimed]
        claimed.update(files)
        out[logical] = files
    return {k: v for k, v in out.items() if v}


def segment_folders(store: Path) -> dict[str, os.stat_result]:
    """The folders in `store` that hold an HNSW index's files (`SEGMENT_MARKERS`), by name, with
    their stats (none when the store cannot be listed)."""
    out: dict[str, os.stat_result] = {}
    try:
        with os.scandir(store) as it:
            for d in it:
                if d.is_dir(follow_symlinks=False) and all((Path(d.path) / m).is_file() for m in SEGMENT_MARKERS):
                    with contextlib.suppress(FileNotFoundError):
                        out[d.name] = d.stat(follow_symlinks=False)
    except OSError:
        return {}
    return out
