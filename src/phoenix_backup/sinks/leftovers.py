"""Temporary files of a killed restore, found again and removed by the next command.

A restore writes each file, and each database's full-size copy, to
`.phx-tmp-<pid>-<start>-<hex>` beside its place, then renames it. Killed (SIGKILL, a power cut),
it cannot remove them; they would stay in the user's folders, where nothing looks for them. So
before its first temporary file in a folder, a restore appends that folder (the one a symlink
leads to) to its journal, `restore-journal/<pid>-<start>-<random>` in the cache folder
(`PHX_CACHE_DIR`, else e.g. `~/.cache/phoenix`), whose first line names the process (host name,
boot id, PID namespace, time namespace, pid, start time); the random part keeps apart two
restores of one process (the Python API), each of which deletes only its own journal. Every
command that loads the config then reads the journals:

- a journal whose process provably no longer runs (`repo.locks.ProcessTag.gone`: this host, and
  another boot; or the same boot and PID namespace, and the pid gone or started at another time
  in the same time namespace) has that process's temporary files removed from the folders it
  lists, then is deleted;
- only names of that exact shape, with that pid and start time, are removed; a folder that is
  gone, not a folder or a symlink is skipped;
- a journal of a process that may still run (it runs, or runs in another PID namespace, where its
  pid means nothing here, or on another host sharing the cache folder over NFS) is left alone; so
  is one of an older Phoenix (no host recorded) from another boot, which cannot be told from
  another machine's;
- journals are trusted only in a journal folder of this user that no one else can write (reached
  without following a symlink at its last step): a folder another user planted, or shared, names
  no folder this process cleans and receives no journal of it (the restore then keeps none, and
  says so). A journal that cannot be decoded is removed once a minute old (a restore may be writing
  its first line); its lines are read at most 64 KiB each.

A restore that ends, failed or not, deletes its own journal: its temporary files are gone by then.
An export's temporary folder (ops/export.py) is named and journalled the same way, and removed
whole (never through a symlink).
Backups never save such names (sources/files.py).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from phoenix_backup.dirs import make_dirs
from phoenix_backup.errors import shown
from phoenix_backup.repo.locks import ProcessTag, own_start_time
from phoenix_backup.storage.local import os_error

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A journal line is one folder path as JSON: PATH_MAX bytes, each escaped in at most 6 characters.
_MAX_LINE = 64 * 1024
# Seconds during which a journal that cannot be decoded may still be getting its first line.
_WRITING = 60


def journal_dir() -> Path:
    """In the cache folder: losing it costs at most some leftover files, never data, and the user's
    folders (which an undo must be able to empty) stay free of it."""
    from phoenix_backup.repo.cache import cache_root  # not at import: every command imports this module

    return cache_root() / "restore-journal"


class Journal:
    """The folders one restore writes temporary files into, recorded before the first one."""

    def __init__(self, notice: Callable[[str], None] | None = None) -> None:
        self.name = f"{os.getpid()}-{own_start_time()}-{os.urandom(4).hex()}"
        self.path = journal_dir() / self.name
        self._notice = notice or (lambda _msg: None)
        self._folders: set[str] = set()
        self._asked: set[str] = set()  # the spellings of the folders noted (or not to be: `_off`)
        self._dir: int | None = None  # the journal folder, once it was found to be ours
        self._off = False  # the journal folder is not ours alone: no journal is kept
        self._lock = threading.Lock()

    def record(self, folder: Path) -> None:
        """Note `folder` (once); the line is written before the caller creates its file there. The
        folder it leads to is noted, not a symlink to it: the clean-up follows none at the last step.
        A folder already noted under the same spelling is not resolved again: a restore asks once
        per file, and resolved every path anew (a system call per component, issue 20)."""
        spelled = str(folder)
        if spelled in self._asked:
            return
        key = os.path.realpath(folder)
        with self._lock:
            if key in self._folders or self._off:
                self._asked.add(spelled)
                return
            new = not self._folders
            if new:
                with contextlib.suppress(OSError):
                    make_dirs(self.path.parent)
                self._dir = own_folder(self.path.parent)
                if self._dir is None:
                    self._off = True
                    self._notice(
                        f"warning: {self.path.parent} cannot be created, or is not a folder of this user that only it "
                        "can write, so this restore keeps no journal: were it killed, its temporary files (.phx-tmp-…) "
                        "would stay; set PHX_CACHE_DIR to a writable folder of your own"
                    )
                    return
            assert self._dir is not None
            try:
                self._append(key, new)
            except OSError as exc:  # a full, failing or read-only cache disk; a file system without fsync
                what = f"writing the restore journal {self.path} (set PHX_CACHE_DIR to keep it on another disk)"
                raise os_error(exc, what, destination=self.path) from exc
            self._folders.add(key)
            self._asked.add(spelled)

    def _append(self, key: str, new: bool) -> None:
        assert self._dir is not None
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(self.name, flags, 0o600, dir_fd=self._dir), "a", encoding="utf-8") as f:
            if new:
                me = ProcessTag.current()
                header = {"host": me.host, "bootId": me.boot_id, "pidNamespace": me.pid_ns}
                header |= {"timeNamespace": me.time_ns, "pid": me.pid, "start": me.start}
                f.write(json.dumps(header) + "\n")
            # JSON's \\udcXX escapes keep a folder name that is not UTF-8 exact.
            f.write(json.dumps(key) + "\n")
            f.flush()
            os.fsync(f.fileno())  # before the file it announces (a power cut, not only a kill)
        if new:
            os.fsync(self._dir)  # and its name in the journal folder

    def close(self) -> None:
        with self._lock:
            if self._dir is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.name, dir_fd=self._dir)
                os.close(self._dir)
                self._dir = None
            self._folders.clear()
            self._asked.clear()  # its file is gone: a folder recorded again is written again


def own_folder(path: Path) -> int | None:
    """A descriptor of the folder `path` when it is this user's and no one else can write it, and
    its last step is no symlink; else None. What such a folder holds was written by this user."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError:
        return None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        return None
    return fd


# The warnings of one clean-up said one by one; past them, one line counts the rest (a folder of
# 10,000 files no one may remove is not 10,000 lines before a command's output).
SHOWN_PROBLEMS = 3


def unremovable(path: Path, exc: OSError) -> str:
    """The warning for a temporary file a killed restore left at `path` that could not be removed."""
    return (
        f"{shown(path)}, a temporary file a killed restore left, could not be removed ({exc.strerror}); "
        "remove it yourself"
    )


def unsearchable(folder: Path, exc: OSError) -> str:
    """The warning for a folder that could not be searched for a killed restore's temporary files."""
    return (
        f"the folder {shown(folder)} could not be searched for temporary files killed restores left "
        f"({exc.strerror}); any there stay"
    )


def bounded(problems: list[str], what: str | None = None) -> list[str]:
    """The warnings of a clean-up as they are said: the first SHOWN_PROBLEMS, then one counting the
    rest (`what` they are and what to do, after the count; by default a killed restore's files)."""
    if len(problems) <= SHOWN_PROBLEMS + 1:
        return problems
    rest = len(problems) - SHOWN_PROBLEMS
    what = what or (
        "more temporary files killed restores left could not be removed, or folders holding them searched, for "
        "the same kinds of reason; remove them yourself"
    )
    return [*problems[:SHOWN_PROBLEMS], f"{rest} {what}"]


# The count of the database copies a restore could not remove after an error (`bounded`).
KEPT_COPIES = (
    "more copies of databases this restore wrote and did not apply could not be removed, for the same kinds of "
    "reason; the next restore into their folders removes them, or remove them yourself"
)


def clean() -> tuple[list[str], list[str]]:
    """Remove what killed restores left (see the module docstring): (the paths removed, a warning
    for each file that could not be removed or folder that could not be searched). Such a file
    is said once: its journal is deleted as the others are."""
    folder = own_folder(journal_dir())
    if folder is None:
        return [], []
    removed: list[str] = []
    problems: list[str] = []
    unread: list[tuple[str, OSError]] = []
    try:
        for name in sorted(os.listdir(folder)):
            try:
                removed += _clean_one(folder, name, problems)
            except FileNotFoundError:
                continue  # removed meanwhile (another command cleaning up)
            except OSError as exc:  # kept, and tried again by the next command: nothing is lost
                unread.append((name, exc))
    finally:
        os.close(folder)
    if unread:  # one warning for them all: a journal folder of 1,000 such is one line
        first, why = unread[0]
        more = f" (and {len(unread) - 1} more there)" if len(unread) > 1 else ""
        problems.append(
            f"the restore journal {shown(journal_dir() / first)}{more} could not be read ({why.strerror}), so the "
            "temporary files of the killed restore it names, if any, stay; it is kept and read again by the next "
            "command: make it readable by this user, or remove it once no restore runs"
        )
    return removed, problems


def _clean_one(folder: int, name: str, problems: list[str]) -> list[str]:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    with os.fdopen(fd, "r", encoding="utf-8", errors="surrogateescape") as f:
        lines = _lines(f)
        head = journal_header(next(lines, ""))
        if head is None:
            # Empty, or damaged beyond use: it can name no file to remove. Unless a restore is
            # writing its first line right now (its file exists before its header is complete).
            if time.time() - os.fstat(fd).st_mtime > _WRITING:
                os.unlink(name, dir_fd=folder)
            return []
        if not head.gone(reboot_proves=True):
            return []
        pid, start = head.pid, head.start
        removed = []
        seen: set[str] = set()
        for line in lines:
            with contextlib.suppress(ValueError, RecursionError):
                path = json.loads(line)
                if isinstance(path, str) and path.startswith("/") and path not in seen:
                    seen.add(path)
                    removed += _remove_temporaries(Path(path), pid, start, problems)
    os.unlink(name, dir_fd=folder)
    return removed


def _lines(f: IO[str]) -> Iterator[str]:
    """The lines of `f`, each at most _MAX_LINE characters; a longer one is skipped, unread."""
    while line := f.readline(_MAX_LINE + 1):
        if len(line) <= _MAX_LINE or line.endswith("\n"):
            yield line
            continue
        while (rest := f.readline(_MAX_LINE)) and not rest.endswith("\n"):
            pass


def journal_header(line: str) -> ProcessTag | None:
    """The writer named by a journal's first line; None when it is not one (shared with the journal
    of created roles, sinks/postgres_roles.py, whose first line names its writer the same way). A journal of an older
    Phoenix has no host and no time namespace: unknown, so that only the same boot id says it is
    this machine's, and only a pid that no longer runs proves its death (ProcessTag.gone)."""
    try:
        head = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(head, dict):
        return None
    boot, host = head.get("bootId"), head.get("host")
    numbers = [head.get(k) for k in ("pidNamespace", "pid", "start")] + [head.get("timeNamespace", 0)]
    if not isinstance(boot, str) or not (host is None or isinstance(host, str)):
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        return None
    namespace, pid, start, time_ns = (n for n in numbers if isinstance(n, int))
    if pid <= 0:
        return None
    return ProcessTag(host, boot, namespace, time_ns, pid, start)


def _remove_temporaries(folder: Path, pid: int, start: int, problems: list[str]) -> list[str]:
    """Remove the temporary files of the restore `pid`/`start` in `folder`; the paths removed. A
    folder gone, not a folder or a symlink holds none; one that cannot be searched, or a file that
    cannot be removed, is a warning added to `problems`."""
    from phoenix_backup.sources.files import RESTORE_TEMP  # only when a killed restore left a journal

    try:
        dfd = os.open(folder, _DIR_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            problems.append(unsearchable(folder, exc))
        return []
    removed = []
    try:
        for name in os.listdir(dfd):
            m = RESTORE_TEMP.match(name)
            if m is None or int(m.group(1)) != pid or int(m.group(2)) != start:
                continue
            try:
                try:
                    os.unlink(name, dir_fd=dfd)
                except IsADirectoryError:  # a killed export's temporary folder (ops/export.py)
                    shutil.rmtree(name, dir_fd=dfd)
            except FileNotFoundError:
                continue  # removed by another command meanwhile
            except OSError as exc:
                problems.append(unremovable(folder / name, exc))
                continue
            removed.append(str(folder / name))
    finally:
        os.close(dfd)
    return removed
