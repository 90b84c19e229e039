"""Restoring an SQLite database from a snapshot, beside the file writer of sinks/files.py.

The snapshot's copy is written beside the database's place under a temporary name, hashed from
the very buffers it is written from and checked against its SHA-256, then applied. `PRAGMA
integrity_check` ran on that same copy at backup time (the snapshot records the result), or
later on bytes equal to it (a drill, a restore: the repository records it, repo/checks.py): bytes
equal to it hash for hash give the same answer, so the check is run again only when neither says
it passed (docs/restore-checks.md). The copy is applied: through the online backup API
into a live database that can be read, so that connections the agent holds open see the restored
content (sinks/sqlite_live.py says why), else by rename, stale -wal/-shm removed first. In place
the live database is checked afterwards. Every step works in one folder descriptor, and SQLite
reaches the files only as sinks/sqlite_folder.py allows: never through a path someone else can
redirect.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phoenix_backup.errors import PhoenixError, RestoreError, UnsafePath, shown
from phoenix_backup.repo import checks
from phoenix_backup.repo.crypto import sha256_hex
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.snapshot import NOT_CHECKED, Snapshot
from phoenix_backup.repo.tree import Node
from phoenix_backup.sinks import sqlite_folder, sqlite_live
from phoenix_backup.sinks.files import FileWriter, discard, rename_over, unsafe_or_error, write_content
from phoenix_backup.storage.local import os_error


def checked_at_backup(node: Node) -> bool:
    """Whether the snapshot records that the copy it holds passed `integrity_check` at backup time."""
    return node.sqlite is not None and node.sqlite.get("integrity") == "ok"


@dataclass(frozen=True)
class Copy:
    """A database's copy written beside its place: its temporary name, and how its integrity is
    known (`{"ran": bool, "by": ..., "checkedAt": ...}`, the restore's `copyCheck`)."""

    name: str
    check: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordedChecks:
    """The repository's integrity check records (repo/checks.py) and the snapshot a restore reads:
    a passing record of the very bytes counts like the backup's own check, and a check run now is
    recorded."""

    book: checks.CheckBook
    snapshot: str


def known_check(node: Node, recorded: RecordedChecks | None) -> dict[str, Any] | None:
    """How the copy's passing `integrity_check` is known without running it: the snapshot records
    that this very copy passed at backup, or the repository holds a passing record of its SHA-256
    (and none that failed). None when it must be run."""
    if checked_at_backup(node):
        return {"ran": False, "by": "backup"}
    failed_at_backup = node.sqlite is not None and node.sqlite.get("integrity") not in (None, "ok", NOT_CHECKED)
    if recorded is None or node.sha256 is None or failed_at_backup:
        return None
    rec = recorded.book.passed(node.sha256, node.size)
    if rec is None:
        return None
    return {"ran": False, "by": rec.by, "checkedAt": rec.checked_at, "snapshot": rec.snapshot}


def write_copy(
    writer: FileWriter, logical: str, node: Node, *, check: bool = True, recorded: RecordedChecks | None = None
) -> Copy:
    """Write a database's copy beside its place, its bytes proven against the snapshot's SHA-256
    as they are written; run integrity_check on it unless those very bytes are known to pass it
    (`known_check`), or `check` is false (a drill checks what it wrote itself). A check run here is
    recorded in the repository when `recorded` is given. Nothing else is touched:
    `restore_database` applies the copy."""
    with writer.parent_dir(logical) as (fd, _name):
        tmp = writer.write_temp(fd, logical, node)
        known = known_check(node, recorded) if check else None
        if not check or known is not None:
            return Copy(tmp, known or {})
        # Only a check of bytes no one else could have swapped in is a verdict on the bytes written.
        own = recorded is not None and sqlite_folder.private(fd)
        try:
            integrity = sqlite_folder.run(fd, "integrity", [tmp])
        except BaseException:
            discard(fd, tmp)
            raise
        if recorded is not None and own and node.sha256 is not None and not checks.could_not_run(integrity):
            rec = checks.record(
                node.sha256, node.size, integrity, "restore", recorded.snapshot, logical, sqlite3.sqlite_version
            )
            recorded.book.add([rec])
        if integrity != "ok":
            discard(fd, tmp)
            raise RestoreError(
                f"the restored copy of {logical} fails integrity_check ({integrity}); the database was not "
                "replaced — restore it from another snapshot"
            )
    return Copy(tmp, {"ran": True, "by": "restore"})


def discard_copy(writer: FileWriter, logical: str, copy: Copy) -> None:
    """Remove a copy `write_copy` wrote that will not be applied (a clean-up after another error).
    A folder that cannot be opened any more is the error of the restore's own step for it."""
    with contextlib.suppress(PhoenixError), writer.parent_dir(logical, create=False) as (fd, _name):
        _discard_after_error(writer, fd, logical, copy.name)


def _discard_after_error(writer: FileWriter, fd: int, logical: str, tmp: str) -> None:
    """Remove the copy `tmp` of `logical` (in the folder `fd`) after another error, which is the
    one said: one that cannot be removed stays for the next restore's `clean_leftovers`, and the
    warning naming it is noted in `writer.kept_copies` (the restore says them, bounded)."""
    try:
        discard(fd, tmp)
    except OSError as exc:
        path = writer.layout.to_real(logical, writer.to).parent / tmp
        writer.kept_copies.append(
            f"{shown(path)}, a copy of a database this restore wrote and did not apply, could not be removed "
            f"({exc.strerror}); the next restore into that folder removes it, or remove it yourself"
        )


def restore_database(
    writer: FileWriter, logical: str, node: Node, *, in_place: bool, copy: Copy | None = None, check_copy: bool = True
) -> dict[str, Any]:
    """Apply a checked copy of a database (written now, or earlier by `write_copy`): through the
    backup API into a live database that can be read, else by rename (stale -wal/-shm removed
    first). In place the live database is checked afterwards (`integrity`, `fts`). `check_copy` is
    `write_copy`'s `check`."""
    written = copy if copy is not None else write_copy(writer, logical, node, check=check_copy)
    tmp = written.name
    with writer.parent_dir(logical) as (fd, name):
        try:
            shown = str(writer.layout.to_real(logical, writer.to))
            try:
                expected = writer.db_before.get(logical, "")
                applied = in_place and sqlite_folder.run(fd, "apply_if_readable", [tmp, name], logical, shown, expected)
            except OSError as exc:  # a full or failing disk under the live database (sqlite_live.apply_copy)
                raise writer.destination_error(exc, logical, node.size) from exc
            try:
                if applied:
                    _set_live_metadata(writer, fd, name, node, logical)
                    method = "backup-api"
                else:
                    # Absent or unreadable: the new file replaces it, and journals of the old one go
                    # first (SQLite would replay a stale -wal into the new file). One the agent
                    # created since the safety snapshot, or that it could read then, is left.
                    if writer.db_before.get(logical, "").startswith(sqlite_live.READ_TAGS):
                        raise UnsafePath(sqlite_live.changed_since_text(logical))
                    writer.unchanged_since_planned(fd, name, logical)
                    sqlite_live.remove_companions(fd, name)
                    method = "rename"
            except OSError as exc:  # its fchmod, fsync or unlink: the destination's disk
                raise writer.destination_error(exc, logical) from exc
            if not applied:
                rename_over(fd, tmp, name, logical, writer.destination_error)
        except BaseException:
            _discard_after_error(writer, fd, logical, tmp)  # the error is this one, not the copy's
            raise
        try:
            discard(fd, tmp)  # the copy left after the backup API applied it
        except OSError as exc:
            raise writer.destination_error(exc, logical) from exc
        try:
            os.fsync(fd)  # the rename on disk
        except OSError as exc:
            raise writer.destination_error(exc, logical) from exc
        info: dict[str, Any] = {"path": logical, "integrity": "ok", "method": method}
        if written.check:
            info["copyCheck"] = written.check
        if in_place:
            check: sqlite_live.LiveCheck = sqlite_folder.run(fd, "check_live", [name])
            info["integrity"] = check.integrity
            info["fts"] = check.fts
    return info


def _set_live_metadata(writer: FileWriter, fd: int, name: str, node: Node, logical: str) -> None:
    try:
        f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
    except OSError as exc:
        raise unsafe_or_error(exc, logical) from exc
    try:
        if not stat.S_ISREG(os.fstat(f).st_mode):
            raise UnsafePath(f"{logical} in the destination is not a file any more; move it aside and restore again")
        writer.owner_mode(f, logical, node)
        os.fsync(f)
    finally:
        os.close(f)


def row_deltas(repo: Repository, logical: str, node: Node, live: str, folder: Path) -> dict[str, dict[str, int]]:
    """A dry run's row deltas per table: the snapshot's copy (written to `folder`, removed
    afterwards) against the live database at `live`."""
    copy = folder / f"{sha256_hex(logical.encode())[:16]}.db"
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        write_content(repo, fd, logical, node)
    except OSError as exc:
        raise os_error(exc, f"copying {logical} for the dry run into {folder}") from exc
    finally:
        os.close(fd)
    try:
        deltas = sqlite_live.row_deltas(str(copy), live)
    except sqlite3.Error as exc:
        raise RestoreError(f"cannot compare {logical} with the live database ({exc}); restore with --to") from exc
    finally:
        copy.unlink(missing_ok=True)
    return {t: d.to_json() for t, d in deltas.items()}


def page_size(node: Node, snap: Snapshot, logical: str) -> int:
    """The page size of a database's copy in a snapshot (0 when the snapshot does not say)."""
    if node.sqlite and isinstance(node.sqlite.get("pageSize"), int):
        return int(node.sqlite["pageSize"])
    info = next((d for d in snap.databases if d.path == logical), None)
    return info.page_size if info else 0


def pending_journal(path: Path) -> bool:
    """Whether the database at `path` has commits in its -wal or -journal (the .db alone then
    says nothing of its content)."""
    for suffix in ("-wal", "-journal"):
        try:
            if os.lstat(f"{path}{suffix}").st_size > 0:
                return True
        except OSError:
            continue
    return False


def has_magic(path: Path) -> bool:
    """Whether the regular file at `path` starts as an SQLite database does; never follows a link
    to it, never waits on a FIFO swapped in."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.pread(fd, 16, 0) == sqlite_live.SQLITE_MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)
