"""The safety snapshot an in-place restore takes before it changes anything.

It holds exactly the paths the restore will overwrite, delete or touch (folders: their mode and
times), and records the paths the restore will create as absent. Restoring it therefore undoes the
restore: what was overwritten comes back, and what the restore created is deleted again.

It is an ordinary snapshot in the repository, tagged `pre-restore`, of scope `pre-restore`, so that
retention groups it apart from regular backups (and keeps it `retention.keepSafetyDays` days), and
so that it never becomes the parent of a regular backup.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from phoenix_backup.config import Config
from phoenix_backup.errors import RestoreError
from phoenix_backup.ops.backup import BackupResult, snapshot_entries
from phoenix_backup.ops.context import Environment
from phoenix_backup.repo.repository import Repository
from phoenix_backup.sinks import sqlite_live
from phoenix_backup.sources.files import SQLITE_SUFFIXES, Entry, EntryKind
from phoenix_backup.sources.layout import Layout
from phoenix_backup.sources.scope import SCOPES

SAFETY_TAG = "pre-restore"
SAFETY_SCOPE = "pre-restore"


def is_safety(scope: str, tags: tuple[str, ...]) -> bool:
    return scope == SAFETY_SCOPE or SAFETY_TAG in tags


def take(
    repo: Repository,
    cfg: Config,
    envx: Environment,
    layout: Layout,
    paths: Mapping[str, str],
    databases: tuple[str, ...] = (),
) -> BackupResult:
    """Snapshot `paths` (logical path -> the kind the restore writes there) as they are now, and
    the server `databases` (postgres/<name>, redis/<name>) the restore will overwrite.

    Paths that do not exist are recorded as absent. A path that cannot be saved aborts the restore
    before anything is written: without it the restore could not be undone. A path below a symlink
    (or a file) in the live tree is neither saved nor absent: the restore never writes through a
    link, so nothing there changes, and the link itself is saved as a link, never followed.
    """
    entries: list[Entry] = []
    absent: list[str] = []
    for logical, hint in sorted(paths.items()):
        real = layout.to_real(logical)
        if _behind_a_link(layout, logical):
            continue
        try:
            st = os.lstat(real)
        except (FileNotFoundError, NotADirectoryError):
            absent.append(logical)
            continue
        except OSError as exc:
            raise RestoreError(
                f"cannot read {real} for the safety snapshot ({exc.strerror}); nothing was restored — fix its "
                "permissions or pass --no-safety-snapshot"
            ) from exc
        entries.append(Entry(logical, real, _kind(real, st, hint), st))
    result = snapshot_entries(
        repo,
        cfg,
        envx,
        entries,
        absent=tuple(absent),
        scope=SAFETY_SCOPE,
        tags=(SAFETY_TAG,),
        parent_scopes=SCOPES,
        databases=databases,
    )
    if result.incomplete:
        first = result.incomplete[0]
        raise RestoreError(
            f"the safety snapshot could not save {first['path']} ({first['error']}); nothing was restored — fix "
            "that or pass --no-safety-snapshot to restore without a way back"
        )
    return result


def _behind_a_link(layout: Layout, logical: str) -> bool:
    """Is a folder on the way to `logical`, below its logical root, a symlink or not a folder?"""
    parts = logical.split("/")
    for i in range(2, len(parts)):
        try:
            st = os.lstat(layout.to_real("/".join(parts[:i])))
        except OSError:
            return False  # absent: the path is absent too
        if not stat.S_ISDIR(st.st_mode):
            return True
    return False


def _kind(real: Path, st: os.stat_result, hint: str) -> EntryKind:
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    if not stat.S_ISREG(st.st_mode):
        raise RestoreError(
            f"{real} is neither a file, a folder nor a link and the restore would replace it; nothing was "
            "restored — move it aside and restore again"
        )
    # A database that SQLite can read is saved through the backup API (consistent, WAL included);
    # one it cannot read is saved byte for byte, so the undo gives it back as it was.
    is_db = hint == "sqlite" or real.name.endswith(SQLITE_SUFFIXES)
    return "sqlite" if is_db and sqlite_live.probe(str(real)).readable else "file"
