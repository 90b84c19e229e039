"""Temporary files of a killed restore, found again and removed by the next command.

A restore writes each file, and each database's full-size copy, to `.phx-tmp-<pid>-<start>-<hex>`
beside its place, then renames it. Killed (SIGKILL, a power cut), it cannot remove them; they
would stay in the user's folders, where nothing looks for them. So before its first temporary
file in a folder, a restore appends that folder to its journal, `restore-journal/<pid>-<start>`
in the cache folder (`PHX_CACHE_DIR`, else e.g. `~/.cache/phoenix`), whose first line names the
process (boot id, PID namespace, pid, start time). Every command that loads the config then reads
the journals:

- a journal whose process provably no longer runs (another boot; or the same boot and PID
  namespace, and the pid gone or started at another time) has that process's temporary files
  removed from the folders it lists, then is deleted;
- only names of that exact shape, with that pid and start time, are removed; a folder that is
  gone, not a folder or a symlink is skipped;
- a journal of a process that may still run (it runs, or runs in another PID namespace, where its
  pid means nothing here) is left alone.

A restore that ends, failed or not, deletes its own journal: its temporary files are gone by then.
Backups never save such names (sources/files.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path

from phoenix_backup.repo.cache import cache_root
from phoenix_backup.repo.locks import boot_id, own_start_time, pid_namespace, process_start_time
from phoenix_backup.sources.files import RESTORE_TEMP

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def journal_dir() -> Path:
    """In the cache folder: losing it costs at most some leftover files, never data, and the user's
    folders (which an undo must be able to empty) stay free of it."""
    return cache_root() / "restore-journal"


class Journal:
    """The folders one restore writes temporary files into, recorded before the first one."""

    def __init__(self) -> None:
        self.path = journal_dir() / f"{os.getpid()}-{own_start_time()}"
        self._folders: set[str] = set()
        self._lock = threading.Lock()

    def record(self, folder: Path) -> None:
        """Note `folder` (once); the line is written before the caller creates its file there."""
        key = str(folder)
        with self._lock:
            if key in self._folders:
                return
            new = not self._folders
            if new:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(self.path, "a", encoding="utf-8") as f:
                if new:
                    header = {"bootId": boot_id(), "pidNamespace": pid_namespace(), "pid": os.getpid()}
                    f.write(json.dumps({**header, "start": own_start_time()}) + "\n")
                # JSON's \\udcXX escapes keep a folder name that is not UTF-8 exact.
                f.write(json.dumps(key) + "\n")
                f.flush()
                os.fsync(f.fileno())  # before the file it announces (a power cut, not only a kill)
            self._folders.add(key)

    def close(self) -> None:
        with self._lock:
            if self._folders:
                self.path.unlink(missing_ok=True)
            self._folders.clear()


def clean() -> list[str]:
    """Remove what killed restores left (see the module docstring); return the paths removed."""
    folder = journal_dir()
    try:
        journals = sorted(folder.iterdir())
    except OSError:
        return []
    removed: list[str] = []
    for journal in journals:
        with contextlib.suppress(OSError, ValueError):
            removed += _clean_one(journal)
    return removed


def _clean_one(journal: Path) -> list[str]:
    lines = journal.read_text(encoding="utf-8").splitlines()
    if not lines:
        journal.unlink()
        return []
    head = json.loads(lines[0])
    pid, start = int(head["pid"]), int(head["start"])
    if not _gone(str(head.get("bootId", "")), int(head.get("pidNamespace", 0)), pid, start):
        return []
    removed = []
    for line in lines[1:]:
        removed += _remove_temporaries(Path(json.loads(line)), pid, start)
    journal.unlink()
    return removed


def _gone(boot: str, namespace: int, pid: int, start: int) -> bool:
    """True only when the process is provably dead (its pid elsewhere means nothing here)."""
    ours = boot_id()
    if boot and ours and boot != ours:
        return True  # the machine has rebooted since
    if not namespace or namespace != pid_namespace():
        return False
    now = process_start_time(pid)
    return now is None or (now != 0 and now != start)


def _remove_temporaries(folder: Path, pid: int, start: int) -> list[str]:
    try:
        dfd = os.open(folder, _DIR_FLAGS)
    except OSError:
        return []
    removed = []
    try:
        for name in os.listdir(dfd):
            m = RESTORE_TEMP.match(name)
            if m is None or int(m.group(1)) != pid or int(m.group(2)) != start:
                continue
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                os.unlink(name, dir_fd=dfd)
                removed.append(str(folder / name))
    finally:
        os.close(dfd)
    return removed
