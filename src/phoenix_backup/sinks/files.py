"""Writing a snapshot's files to disk safely: the restore's writer (and the drill's, which proves it).

Every write goes through folder file descriptors opened with O_NOFOLLOW, one path component at a
time, so a restore can never leave its destination or write through a symlink it finds there.
Files are written to a temporary name in their folder, checked against the snapshot's SHA-256,
fsynced and renamed into place: a file is either old or new, never torn. The owner (as root), mode
and times follow the snapshot. Temporary names carry the writer's pid and start time, so a later
restore removes those a killed run left behind (sinks/leftovers.py keeps the journal of the
folders they are in). Databases are written by sinks/sqlite.py through this writer's folders.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import resource
import secrets
import stat
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, cast

from phoenix_backup.dirs import kernel_file_system, make_dirs
from phoenix_backup.errors import PhoenixError, RestoreError, StorageError, UnsafePath, UsageError, shown
from phoenix_backup.repo.crypto import Sha256
from phoenix_backup.repo.locks import own_start_time, process_start_time
from phoenix_backup.repo.reader import NodeReader, PackSchedule, read_proving
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Node, check_name
from phoenix_backup.reporting import Reporter
from phoenix_backup.sinks import leftovers, sqlite_folder, sqlite_live
from phoenix_backup.sources.files import RESTORE_TEMP
from phoenix_backup.sources.layout import Layout, split_logical
from phoenix_backup.storage.local import os_error

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Why os.link can fail where copying the content still works: another file system, a file system
# without hard links, too many links to one inode, the first name gone or not ours to link.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOENT})
TMP_PREFIX = ".phx-tmp-"
# Folder descriptors a writer keeps (`FileWriter._folder`), the ones used last: a file's folder is
# opened from its parent's kept descriptor (or a child's, going up), not from the root component
# after component, which made a chain of N folders cost N²/2 opens a pass (issue: deep folders).
KEPT_FOLDERS = 64


def kept_folders() -> int:
    """How many folder descriptors a writer keeps: KEPT_FOLDERS, fewer where the process may open
    few files (`ulimit -n`): a sixteenth of its limit, the rest for the files waiting for their
    fsync (ops/restore.py `sync_backlog`), the packs and the databases. With `ulimit -n 64` the
    writer kept 64 and a restore of more folders failed half-way with "too many open files"."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return KEPT_FOLDERS
    return max(1, min(KEPT_FOLDERS, soft // 16))


# Holes: a whole aligned block of zeros is skipped with lseek instead of written, so a sparse file
# (a VM image, a preallocated log) comes back sparse. 4 KiB is the block of the common Linux file
# systems; a smaller run of zeros costs a block anyway.
_HOLE = 4096
_ZERO_BLOCK = bytes(_HOLE)
# Written pages are handed to the disk every this many bytes (see write_content). The restore's
# reads of packs and its writes share one disk: every 2 MiB instead of 8, the medium restore's
# writes go out in smaller pieces beside the decoders' reads, 0.03-0.09 s shorter (paired medians
# of 52 alternated cold restores, faster in 40), for the same CPU (docs/benchmarks.md).
WRITEBACK = 2 * 1024 * 1024
# Extents gathered into one writev (see _Pending): at most this many bytes and views. Eight views
# is what Linux copies without an allocation (UIO_FASTIOV); with 64 the system time of writing
# memory.db of the medium benchmark rose (0.40-0.55 -> 0.56-0.65 s, bench/restore_writes.py).
PENDING_BYTES = 1024 * 1024
PENDING_VIEWS = 8
_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of the dirty pages in the range, do not wait


def write_content(
    repo: Repository,
    out: int,
    logical: str,
    node: Node,
    progress: Reporter | None = None,
    schedule: PackSchedule | None = None,
) -> None:
    """Write a node's bytes to the new, empty file `out` (whole zero blocks left as holes),
    checking them against the snapshot's SHA-256; `progress` is told the bytes written. A node of
    `schedule` takes its blobs from there (read with those of the files around it).

    Blobs are opened without hashing their plaintext against their ids (for speed: the SHA-256
    proves the bytes): when the SHA-256 fails, the blobs whose first copy does not hash to its id
    are taken from another copy that does, and the file is written again and proved anew
    (`read_proving`); only when no copy proves does it fail, naming the blob and its packs."""

    def write(reader: NodeReader, again: bool) -> None:
        if again:  # its bytes were counted once
            os.ftruncate(out, 0)
            os.lseek(out, 0, os.SEEK_SET)
        _write_node(reader, out, None if again else progress)

    read_proving(repo, logical, node, write, schedule.begin(logical) if schedule is not None else None)


def _write_node(reader: NodeReader, out: int, progress: Reporter | None) -> None:
    pending = _Pending(out)
    pos = flushed = 0
    for blob, start, end in reader.ranges():
        _write_sparse(pending, blob, start, end, pos)
        pos += end - start
        if progress is not None:
            progress.advance(size=end - start)
        if pos - flushed >= WRITEBACK:
            pending.flush()
            start_writeback(out, flushed, pos - flushed)
            flushed = pos
    pending.flush()
    if os.fstat(out).st_size != pos:
        os.ftruncate(out, pos)  # the file ends in a hole: seeking alone does not extend it
    reader.finish()


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range from the C library, or None where there is none."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], fn)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing these pages of `fd` to disk now, while the next ones are decoded and hashed,
    so that the fsync at the end waits for the tail only. POSIX_FADV_DONTNEED, used before, also
    started the writeback, but then tried to drop the pages: pages still dirty cannot be dropped,
    so Linux drained the page lists of every CPU (waiting on each, costly on a busy machine) and
    moved the pages to the inactive list, first in line for reclaim, though a restored database
    is read again at once by its integrity_check. A hint only: where sync_file_range is missing or
    fails, the fsync does it all."""
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _write_sparse(out: _Pending, blob: bytes, start: int, end: int, pos: int) -> None:
    """Write blob[start:end] at the current position `pos` of `out`, seeking over every block of
    zeros aligned in the file. Only aligned blocks can become holes, so only they are looked at:
    first by their first byte, all gathered in one strided slice, then in full where that byte is
    zero (a search for 4 KiB of zeros anywhere in the data cost ten times as much)."""
    i = start  # written up to here
    k = start + (-pos) % _HOLE  # the first block boundary in the file at or after pos
    n = max(0, (end - k) // _HOLE)  # whole blocks from k
    firsts = blob[k : k + n * _HOLE : _HOLE]
    c = firsts.find(0)
    while c >= 0:
        b = k + c * _HOLE
        c += 1
        if blob.startswith(_ZERO_BLOCK, b):
            j = b + _HOLE
            while c < n and not firsts[c] and blob.startswith(_ZERO_BLOCK, j):
                j += _HOLE
                c += 1
            out.add(blob, i, b)
            out.skip(j - b)
            i = j
        c = firsts.find(0, c)
    out.add(blob, i, end)


class _Pending:
    """The extents of a node waiting to be written to `fd`, written with one writev when they reach
    PENDING_BYTES or PENDING_VIEWS, or before a hole is skipped: a database's copy is thousands of
    extents of tens of kB, and a write each handed the GIL to the decoding and hashing threads and
    back thousands of times (issue 20). The views keep their blobs alive until written: at most
    PENDING_BYTES of their bytes and PENDING_VIEWS blobs."""

    __slots__ = ("fd", "size", "views")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.views: list[memoryview] = []
        self.size = 0

    def add(self, blob: bytes, start: int, end: int) -> None:
        if end <= start:
            return
        self.views.append(memoryview(blob)[start:end])
        self.size += end - start
        if self.size >= PENDING_BYTES or len(self.views) >= PENDING_VIEWS:
            self.flush()

    def skip(self, length: int) -> None:
        """Leave a hole of `length` bytes after what is pending."""
        self.flush()
        os.lseek(self.fd, length, os.SEEK_CUR)

    def flush(self) -> None:
        views, self.views, self.size = self.views, [], 0
        while views:
            done = os.writev(self.fd, views)
            while views and done >= views[0].nbytes:  # a short write: the rest again
                done -= views.pop(0).nbytes
            if views and done:
                views[0] = views[0][done:]


def _tmp_name() -> str:
    return f"{TMP_PREFIX}{os.getpid()}-{own_start_time()}-{secrets.token_hex(6)}"


def fold_name(name: str) -> str:
    """`name` as a file system that ignores case and Unicode normal form compares it (macOS,
    vfat/exFAT on a USB stick): two names folded alike are one file there, the second written
    over the first."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


def folds_names(folder: Path) -> bool:
    """Whether the file system of `folder` (an existing folder) ignores case: a probe file is looked
    up in upper case, then removed. One that ignores case is taken to ignore Unicode normal form
    too (macOS does both; `fold_name`)."""
    probe = _tmp_name()  # lowercase, and a restore's temporary name: the next restore clears one a kill left
    return _same_file(folder, probe, probe.upper())


def folds_forms(folder: Path) -> bool:
    """Whether the file system of `folder` (an existing folder) ignores Unicode normal form, case
    or not (APFS formatted case-sensitive, ZFS with normalization): a probe named with `é` in
    NFC is looked up in NFD, then removed."""
    probe = f"{_tmp_name()}-\u00e9"  # still a restore's temporary name (RESTORE_TEMP)
    return _same_file(folder, probe, unicodedata.normalize("NFD", probe))


SEEN_ENTRIES = 1000  # entries of a folder `seen_folding` looks at, at most: a huge folder costs no more


def seen_folding(folder: Path, what: Literal["case", "form"]) -> bool | None:
    """`folds_names` ("case") or `folds_forms` ("form") for a dry run, which writes nothing: an
    entry already there (one of `folder`'s, else `folder` itself or a folder above it, looked up in
    its parent while that is on the same file system) is looked up under its name in the other
    case (ASCII letters swapped) or normal form, and compared by device and inode (a file of more
    than one hard link tells nothing). None when no name there has another case or form (an empty
    folder, names of digits only)."""
    other = _swapped_case if what == "case" else _other_form
    # A destination that is a link (~/usb -> /media/usb) is written where it points: its own name
    # and the folders above it are another file system's (the restore's probe file goes there too).
    folder = Path(os.path.realpath(folder))
    try:
        device = os.lstat(folder).st_dev
        with os.scandir(folder) as entries:
            listed = {entry.name for _, entry in zip(range(SEEN_ENTRIES), entries, strict=False)}
    except OSError:
        return None  # not readable: nothing there tells
    for name in sorted(listed):
        alt = other(name)
        if alt is not None and alt in listed:
            return False  # both names listed: two entries (a file system that folds them lists one)
    pairs = [(folder, name) for name in sorted(listed)]
    for path in (folder, *folder.parents):
        if path == path.parent:
            break
        try:
            if os.lstat(path.parent).st_dev != device:
                break  # its name is looked up by the file system mounted above
        except OSError:
            break
        pairs.append((path.parent, path.name))
    for parent, name in pairs:
        alt = other(name)
        if alt is None:
            continue
        try:
            st = os.lstat(parent / name)
        except OSError:
            continue  # gone since it was listed
        try:
            seen = os.lstat(parent / alt)
        except FileNotFoundError:
            return False
        except OSError:
            continue
        if (seen.st_dev, seen.st_ino) != (st.st_dev, st.st_ino):
            return False
        if stat.S_ISDIR(st.st_mode) or st.st_nlink < 2:
            return True
        # A second hard link of one file (a name past the entries listed) tells nothing.
    return None


_ASCII_SWAP = str.maketrans(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


def _swapped_case(name: str) -> str | None:
    """`name` with its ASCII letters in the other case (a case-insensitive file system folds
    those, whatever it does with others), None without one."""
    swapped = name.translate(_ASCII_SWAP)
    return swapped if swapped != name else None


def _other_form(name: str) -> str | None:
    """`name` in NFD if that differs, else in NFC if that does, else None."""
    for form in ("NFD", "NFC"):
        other = unicodedata.normalize(form, name)
        if other != name:
            return other
    return None


def _same_file(folder: Path, probe: str, other: str) -> bool:
    """Whether `other` names the file `probe`, made new in `folder` (then removed)."""
    f = os.open(folder / probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(f)
        try:
            seen = os.lstat(folder / other)
        except OSError:
            return False
        return (seen.st_dev, seen.st_ino) == (st.st_dev, st.st_ino)
    finally:
        os.close(f)
        with contextlib.suppress(OSError):
            os.unlink(folder / probe)


def _leftover(name: str) -> bool:
    """A temporary file of a restore whose process no longer runs."""
    m = RESTORE_TEMP.match(name)
    if m is None:
        return False
    start = process_start_time(int(m.group(1)))
    return start is None or (start != 0 and str(start) != m.group(2))


# Regular files up to this size are compared by their bytes too (`live_state`): a rewrite with as
# many bytes inside one tick of the file system's clock (most stamp in jiffies) keeps size, mtime
# and ctime. Larger ones are compared by ctime (which `os.utime` cannot set back), and by their
# bytes too when the ctime cannot tell: a file with several names (the restore's own rename over
# one of them changes the ctime of the others, so it is not compared), or one whose ctime is within
# RECENT_NS of the clock when it was noted (a write in that same tick would keep it).
CHECKED_BYTES = 1024 * 1024
# Wider than any file system's tick (jiffies; 1 s on ext3/HFS+, 2 s on FAT), as git's racy check.
RECENT_NS = 3_000_000_000

# (device, inode, type and mode, size, mtime, ctime, link count, SHA-256 of a regular file or "")
LiveState = tuple[int, int, int, int, int, int, int, str] | None


def _state(st: os.stat_result, digest: str) -> tuple[int, int, int, int, int, int, int, str]:
    return (st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink, digest)


def _hashed(st: os.stat_result) -> bool:
    """Whether `live_state` compares this regular file by its bytes (see CHECKED_BYTES)."""
    return st.st_size <= CHECKED_BYTES or st.st_nlink > 1 or st.st_ctime_ns >= time.time_ns() - RECENT_NS


def _state_at(fd: int | None, name: str | Path, hashed: bool | None = None) -> LiveState:
    """The state of `name` in the folder `fd` (never following a link); raises OSError from lstat.
    `hashed`: whether a regular file's bytes are hashed (None: as `_hashed` says; a second look
    hashes when the first did, so both states compare alike).
    A hashed file's state is taken by a second lstat after its bytes were hashed: a write or a
    rename over it while they were read shows in its times or inode, so what is lost between the
    check and the rename is only what lands after that last lstat, as without the hash."""
    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode) or not (_hashed(st) if hashed is None else hashed):
        return _state(st, "")
    digest = _digest_at(fd, name, st)
    return _state(os.stat(name, dir_fd=fd, follow_symlinks=False), digest)


def _same_state(before: LiveState, now: LiveState) -> bool:
    if before is None or now is None:
        return before == now
    # The ctime only of a file with one name: the restore's own rename over one name of a
    # hard-linked file changes the inode's link count, and so its ctime, under its other names
    # (whose bytes are compared instead, `_hashed`).
    ctime = before[6] == 1
    return before[:5] == now[:5] and before[7] == now[7] and (not ctime or before[5] == now[5])


def _digest_at(fd: int | None, name: str | Path, st: os.stat_result) -> str:
    """The SHA-256 of the regular file `name` (in the folder `fd`) whose lstat is `st`; "?" when it
    cannot be read or is another file by now (then a second look differs: left as changed)."""
    try:
        f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    except OSError:
        return "?"
    try:
        got = os.fstat(f)
        if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
            return "?"
        # At most one byte more than the lstat's size: a file the agent keeps growing while it is
        # read differs by that byte (or by size), and is never read for ever.
        h = Sha256()  # the SHA-256 every digest of Phoenix uses (repo/crypto.py), not a second one
        left = st.st_size + 1
        while left > 0 and (chunk := os.read(f, min(left, 1 << 20))):
            h.update(chunk)
            left -= len(chunk)
        return h.hexdigest()
    except OSError:
        return "?"
    finally:
        os.close(f)


def live_state(path: Path) -> LiveState:
    """What is at `path` now (never following a link), to compare with what a restore finds
    there just before it replaces or deletes it (`FileWriter.unchanged_since_planned`)."""
    try:
        return _state_at(None, path)
    except OSError:  # absent, or not reachable (what the restore meets there is its own error)
        return None


class FileWriter:
    def __init__(
        self,
        repo: Repository,
        layout: Layout,
        to: Path | None,
        progress: Reporter | None = None,
        *,
        durable: bool = True,
    ) -> None:
        self.repo = repo
        self.progress = progress  # told the bytes of every file written
        self.layout = layout
        self.to = to
        self._roots: dict[str, int] = {}
        # Folders below the roots, by logical path: descriptors of the last used (at most
        # KEPT_FOLDERS), and the (device, inode) of each folder opened, which proves a folder
        # reached again from a kept child through ".." is the very one opened down to before.
        self._kept: OrderedDict[str, int] = OrderedDict()
        self._keep_most = kept_folders()
        self._ids: dict[str, tuple[int, int]] = {}
        # The roots' (device, inode) and the files put in each folder, for `check_folders`.
        self._root_ids: dict[str, tuple[int, int]] = {}
        self._files_in: dict[str, int] = {}
        self._dir_meta: list[tuple[str, Node]] = []
        self._roots_lock = threading.Lock()
        # Folders a file was renamed into, or a folder created in, since they were last fsynced:
        # each is fsynced once, by `sync_dirs`, rather than after every file (one folder holds many
        # files). Without `durable` (a drill's scratch space) created folders are not noted.
        self._unsynced: set[str] = set()
        self._durable = durable
        # (device, inode) of each file written or checked, so that a hard link is made only to
        # the very file this restore put there.
        self._inodes: dict[str, tuple[int, int]] = {}
        # The folders holding this restore's temporary files, for the next command should it be
        # killed (sinks/leftovers.py).
        self.journal = leftovers.Journal(repo.notice)
        # A warning for each database copy that could not be removed after another error
        # (sinks/sqlite.py `discard_copy`): the restore says them at its end, `leftovers.bounded`.
        self.kept_copies: list[str] = []
        # The paths whose owner could not be restored, each with why (`owner_mode`): the restore
        # says them at its end, `leftovers.bounded`.
        self.owners_kept: list[str] = []
        # The restore's small files, read pack by pack for many at once (repo/reader.py); None:
        # each file reads its own blobs.
        self.schedule: PackSchedule | None = None
        # In place, what each path the restore replaces or deletes was just before the safety
        # snapshot read it (`live_state`; None: absent): a path changed since (the agent wrote it)
        # is left alone, as an error, for its new bytes are in no snapshot. None: not checked.
        self.before: dict[str, LiveState] | None = None
        # In place, each database the restore overwrites or deletes as `sqlite_live.fingerprint`
        # found it just before the safety snapshot read it: compared under the write lock the
        # restore takes to write into it, or just before it is deleted.
        self.db_before: dict[str, str] = {}

    def unchanged_since_planned(self, fd: int, name: str, logical: str) -> None:
        """Raise UnsafePath when `logical` (`name` in the folder `fd`) is not what it was before
        the safety snapshot: replacing or deleting it would lose what no snapshot holds."""
        if self.before is None or logical not in self.before:
            return
        before = self.before[logical]
        try:
            now = _state_at(fd, name, hashed=None if before is None else before[7] != "")
        except FileNotFoundError:
            now = None
        except OSError:
            return  # what the rename or unlink meets there is its own error
        if not _same_state(before, now):
            raise UnsafePath(
                f"{logical} changed since the safety snapshot was taken (the agent wrote it?) and was left as it is, "
                "so nothing is lost; stop the agent (the gateway) and restore again"
            )

    def _temp_name(self, logical: str) -> str:
        """A new temporary name for `logical`'s folder, noted in the journal first."""
        self.journal.record(self.layout.to_real(logical, self.to).parent)
        return _tmp_name()

    def close(self) -> None:
        for fd in [*self._roots.values(), *self._kept.values()]:
            os.close(fd)
        self._roots.clear()
        self._kept.clear()
        self.journal.close()

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
                self._make_dirs(base)
                fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise os_error(exc, f"opening the restore destination {base}") from exc
        else:
            # Below --to, the root folder itself must not be a link leading out of DIR.
            self._not_kernel(kernel_file_system(self.to))  # before a folder is made there
            try:
                self._make_dirs(self.to)
                top = os.open(self.to, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise os_error(exc, f"opening the restore destination {self.to}") from exc
            try:
                # The folder opened, which a link put at --to since the check above may have led elsewhere.
                self._not_kernel(kernel_file_system(top))
                with contextlib.suppress(FileExistsError):
                    os.mkdir(root, 0o700, dir_fd=top)
                    if self._durable:
                        os.fsync(top)  # once per root and restore: not worth batching
                fd = os.open(root, _DIR_FLAGS, dir_fd=top)
            except OSError as exc:
                raise self.folder_error(exc, root, "creating or opening") from exc
            finally:
                os.close(top)
        st = os.fstat(fd)
        self._roots[root] = fd
        self._root_ids[root] = (st.st_dev, st.st_ino)
        return fd

    def _not_kernel(self, kernel: tuple[str, str] | None) -> None:
        """--to on a kernel file system (`kernel_file_system`: its type and mount point): one usage error."""
        if kernel is not None:
            raise UsageError(
                f"the restore destination {shown(self.to)} is on {kernel[1]}, a {kernel[0]} file system the "
                "kernel makes of its own state, not a disk: nothing restored there would be kept; choose a "
                "folder on a disk with --to"
            )

    def _reopen_root(self, root: str) -> int:
        """A new descriptor of the root `root` at its path, opened as `_open_base` did (no folder created)."""
        if self.to is None:
            return os.open(self.layout.to_real(root), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        top = os.open(self.to, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return os.open(root, _DIR_FLAGS, dir_fd=top)
        finally:
            os.close(top)

    def check_folders(self) -> None:
        """Every folder this restore opened (and so wrote into) is still at its path: reached from
        the destination's root one component at a time with O_NOFOLLOW, it is the very folder
        (device and inode) opened while writing. A folder moved away since, with a link or another
        folder put in its place, took the files written after that with it (they were written
        through the descriptor kept, never through the link): the path now shows something else,
        and the restore must not say it restored them. One depth-first pass, each folder opened
        once going down, ".." (checked by device and inode) going back up: linear in the folders.
        RestoreError naming the first such folder, what is there now and the files written in it."""
        with self._roots_lock:
            ids, roots, files_in = dict(self._ids), dict(self._root_ids), dict(self._files_in)
        folders: dict[str, list[str]] = {}  # each folder and those above it -> the folders in it
        for path in ids:
            while path not in folders:
                folders[path] = []
                if "/" not in path:
                    break
                path = path.rpartition("/")[0]
        for path in sorted(folders):
            if "/" in path:
                folders[path.rpartition("/")[0]].append(path)
        for root in sorted(roots):
            problem = self._check_tree(root, roots[root], ids, folders)
            if problem is None:
                continue
            where, what = problem
            shown = self.to / where if self.to is not None else self.layout.to_real(where)
            count = sum(n for f, n in files_in.items() if f == where or f.startswith(where + "/"))
            raise RestoreError(
                f"the folder {shown} {what} since this restore wrote into it: the {count} file(s) it put there are "
                "not at their paths (they are in the folder that was moved, wherever it is now); nothing was "
                "deleted — see who moved it, then restore again"
            )

    def _check_tree(
        self, root: str, root_id: tuple[int, int], ids: dict[str, tuple[int, int]], folders: dict[str, list[str]]
    ) -> tuple[str, str] | None:
        """(folder, what is there now) for the first folder below `root` (itself included) not
        at its path any more; None when each is."""
        try:
            fd = self._reopen_root(root)
        except OSError as exc:
            return root, _now_there(exc)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != root_id:
                return root, "was replaced by another folder"
            seen = {root: root_id}
            at = root
            todo = list(reversed(folders.get(root, [])))
            while todo:
                path = todo.pop()
                parent = path.rpartition("/")[0]
                while at != parent:  # back up to the parent, through "..", checked
                    at = at.rpartition("/")[0]
                    try:
                        nfd = os.open("..", _DIR_FLAGS, dir_fd=fd)
                    except OSError as exc:
                        return at, _now_there(exc)
                    os.close(fd)
                    fd = nfd
                    st = os.fstat(fd)
                    if (st.st_dev, st.st_ino) != seen[at]:
                        return at, "was moved while it was checked"
                try:
                    nfd = os.open(path.rpartition("/")[2], _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    return path, _now_there(exc)
                st = os.fstat(nfd)
                if path in ids and (st.st_dev, st.st_ino) != ids[path]:
                    os.close(nfd)
                    return path, "was moved away and another folder put in its place"
                os.close(fd)
                fd, at = nfd, path
                seen[path] = (st.st_dev, st.st_ino)
                todo.extend(reversed(folders.get(path, [])))
        finally:
            os.close(fd)
        return None

    def _make_dirs(self, path: Path) -> None:
        if self._durable:
            make_dirs(path)
        else:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _created_in(self, folder: str) -> None:
        """A folder was just created in the logical folder `folder`: its entry there is made
        durable by `sync_dirs`, with the renames."""
        if self._durable:
            with self._roots_lock:
                self._unsynced.add(folder)

    @contextlib.contextmanager
    def parent_dir(self, logical: str, create: bool = True) -> Iterator[tuple[int, str]]:
        """(descriptor of the folder holding `logical`, its last component), never following links."""
        parts = split_logical(logical)
        fd = self._folder(parts[:-1], logical, create=create)
        try:
            yield fd, check_name(parts[-1])
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def open_dir(self, logical: str) -> Iterator[int]:
        """A descriptor of the existing folder `logical` (no link followed)."""
        dfd = self._folder(split_logical(logical), logical, create=False, last_as_is=True)
        try:
            yield dfd
        finally:
            os.close(dfd)

    def _folder(self, parts: list[str], logical: str, *, create: bool, last_as_is: bool = False) -> int:
        """A new descriptor of the folder `parts` (its root first), every component opened with
        O_NOFOLLOW from the folder above it (created when missing, with `create`): from the nearest
        kept descriptor (`_kept`) above it, or, below it, through ".." from a kept child when that
        reaches the very folder (device and inode) opened before: a restore goes down and back up
        its folders one open each. A kept descriptor is of the folder this restore opened, checked
        as a folder: a link put in its place since is never followed (the writes go on in the
        folder itself, wherever it is now). A symlink or a file met on the way is UnsafePath (the
        last component's error as it is with `last_as_is`); a folder missing without `create` is
        FileNotFoundError; any other error is `folder_error`'s sentence naming the folder."""
        base = self._base(parts[0])
        with self._roots_lock:
            path = "/".join(parts)
            if len(parts) == 1:
                return self._dup(base, path)
            if (kept := self._kept.get(path)) is not None:
                self._kept.move_to_end(path)
                return self._dup(kept, path)
            depth, fd = 1, base
            for known, kfd in self._kept.items():  # the deepest kept folder above (KEPT_FOLDERS at most)
                n = known.count("/") + 1
                if n > depth and path.startswith(known) and path[len(known)] == "/":
                    depth, fd = n, kfd
            up = self._up_from_child(path, len(parts) - depth)
            if up is not None:
                return up
            fd = self._dup(fd, "/".join(parts[:depth]))
            try:
                for i in range(depth, len(parts)):
                    nfd = self._open_below(
                        fd, parts, i, logical, create=create, as_is=last_as_is and i == len(parts) - 1
                    )
                    os.close(fd)
                    fd = nfd
                    self._keep("/".join(parts[: i + 1]), fd)
            except BaseException:
                os.close(fd)
                raise
            return fd

    def _open_below(self, fd: int, parts: list[str], i: int, logical: str, *, create: bool, as_is: bool) -> int:
        """Open (and note) `parts[i]` in the folder `fd` (`parts[:i]`); the caller holds `_roots_lock`."""
        comp = check_name(parts[i])
        try:
            try:
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(comp, 0o700, dir_fd=fd)
                if self._durable:
                    self._unsynced.add("/".join(parts[:i]))  # `_created_in`, under the lock held here
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and not create:
                raise  # the callers that do not create skip a folder that is not there
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and as_is:
                raise  # the callers of `open_dir` tell the last component's symlink or file apart
            raise self.folder_error(
                exc, "/".join(parts[: i + 1]), "creating or opening" if create else "opening"
            ) from exc
        st = os.fstat(nfd)
        self._ids["/".join(parts[: i + 1])] = (st.st_dev, st.st_ino)
        return nfd

    def _dup(self, fd: int, logical: str) -> int:
        """A new descriptor of the folder `logical`, open as `fd` (none left: `ulimit -n`)."""
        try:
            return os.dup(fd)
        except OSError as exc:
            raise self.folder_error(exc, logical, "opening") from exc

    def folder_error(self, exc: OSError, logical: str, doing: str) -> PhoenixError:
        """An error `doing` (creating, opening, syncing...) the folder `logical` of the destination:
        one sentence naming it by its logical and its real path, and what to check (the folder's
        owner and mode, an immutable attribute, a read-only mount, a full disk, `ulimit -n`); a
        symlink or a file in its place is UnsafePath, as everywhere a restore meets one."""
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return self.not_a_folder(logical)
        return self.destination_error(
            exc, logical, what=f"{doing} the folder {shown(logical)} in the destination ({shown(self._real(logical))})"
        )

    def not_a_folder(self, logical: str) -> UnsafePath:
        """A symlink or a file where the folder `logical` of the destination goes."""
        return UnsafePath(
            f"the folder {shown(logical)} in the destination ({shown(self._real(logical))}) is a symlink or not a "
            "folder; Phoenix "
            "never writes through links — move it aside and restore again"
        )

    def _up_from_child(self, path: str, most: int) -> int | None:
        """A descriptor of the folder `path` through ".." of its nearest kept folder below (fewer
        than `most` levels below), when each step reaches the folder (device and inode) opened
        before at that place; else None."""
        if path not in self._ids:
            return None
        below = [k for k in self._kept if k.startswith(path) and k[len(path)] == "/"]
        if not below:
            return None
        start = min(below, key=lambda k: k.count("/"))
        if start.count("/") - path.count("/") >= most:
            return None  # down from the kept folder above is as short
        fd = os.dup(self._kept[start])
        at = start
        try:
            while at != path:
                at = at.rpartition("/")[0]
                nfd = os.open("..", _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != self._ids.get(at):
                    os.close(fd)  # moved since: reached from above instead, component by component
                    return None
                self._keep(at, fd)
        except OSError:
            os.close(fd)
            return None
        return fd

    def _keep(self, path: str, fd: int) -> None:
        """Keep a copy of `fd` (the folder `path`), letting go of the least used beyond `kept_folders`."""
        old = self._kept.pop(path, None)
        if old is not None:
            os.close(old)
        while len(self._kept) >= self._keep_most:
            os.close(self._kept.popitem(last=False)[1])
        try:
            self._kept[path] = os.dup(fd)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            # Out of descriptors: none is kept (each folder is then opened from its root down,
            # as before the cache); the restore goes on with the room they held.
            for kept in self._kept.values():
                os.close(kept)
            self._kept.clear()

    def _forget_folder(self, logical: str) -> None:
        """The folder `logical` was removed (empty: what it held was removed first, and forgotten
        then): its kept descriptor and its identity go."""
        with self._roots_lock:
            self._ids.pop(logical, None)
            if (fd := self._kept.pop(logical, None)) is not None:
                os.close(fd)

    def clean_leftovers(self, folders: list[str]) -> None:
        """Remove temporary files that killed restores left in the folders this one writes to. One
        that cannot be removed, or a folder opened that cannot be listed, is one warning naming it
        and why (the restore goes on); a folder not there yet, or not a folder, holds none of ours,
        and a file gone already is what was wanted."""
        problems: list[str] = []
        for logical in folders:
            try:
                with self.open_dir(logical) as dfd:
                    for name in os.listdir(dfd):
                        if not _leftover(name):
                            continue
                        try:
                            os.unlink(name, dir_fd=dfd)
                        except FileNotFoundError:
                            continue
                        except OSError as exc:
                            problems.append(leftovers.unremovable(self._real(logical) / name, exc))
            except (FileNotFoundError, NotADirectoryError, PhoenixError):
                # Not there yet, or not a folder (a symlink or a file): nothing of ours in it. A
                # folder that cannot be opened (PhoenixError, `folder_error`) is the error of the
                # restore's own step for it, said once, there.
                continue
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    continue
                problems.append(leftovers.unsearchable(self._real(logical), exc))
        for problem in leftovers.bounded(problems):
            self.repo.notice(f"warning: {problem}")

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
                self._created_in(logical.rpartition("/")[0])
                exists = False
            except FileExistsError:
                exists = True
            except OSError as exc:
                raise self.folder_error(exc, logical, "creating") from exc
            if exists:
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError as exc:
                    raise self.folder_error(exc, logical, "opening") from exc
                if not stat.S_ISDIR(st.st_mode):
                    raise self.not_a_folder(logical)
        self._dir_meta.append((logical, node))

    def finish_dirs(self) -> None:
        """Modes and times of folders last (deepest first), after their content is written (and
        the renames of its files are on disk)."""
        self.sync_dirs()
        for logical, node in sorted(self._dir_meta, key=lambda x: x[0].count("/"), reverse=True):
            try:
                with self.open_dir(logical) as dfd:
                    self.owner_mode(dfd, logical, node)
                    os.utime(dfd, ns=(node.mtime_ns, node.mtime_ns))
            except FileNotFoundError:
                continue  # removed since (its creation failed and was reported)
            except OSError as exc:
                raise self.folder_error(exc, logical, "setting the mode and times of") from exc

    def symlink(self, logical: str, node: Node) -> None:
        assert node.link_target is not None
        with self.parent_dir(logical) as (fd, name):
            tmp = self._temp_name(logical)
            try:
                os.symlink(node.link_target, tmp, dir_fd=fd)
            except OSError as exc:  # the folder takes no new entry (its mode, an immutable attribute, a full disk)
                raise unsafe_or_error(exc, logical, self.destination_error) from exc
            try:
                self.owner_kept(logical, set_link_owner(fd, tmp, node, logical))
                self.unchanged_since_planned(fd, name, logical)
            except BaseException:
                _drop_temp(fd, tmp)
                raise
            rename_over(fd, tmp, name, logical, self.destination_error)
            self._put_in(logical.rpartition("/")[0])
            with contextlib.suppress(OSError, NotImplementedError):
                os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=fd, follow_symlinks=False)

    def link_times(self, logical: str, node: Node) -> None:
        with self.parent_dir(logical, create=False) as (fd, name), contextlib.suppress(OSError, NotImplementedError):
            os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=fd, follow_symlinks=False)

    def metadata(self, logical: str, node: Node) -> str:
        """Mode, owner and times of a file whose content already matches."""
        with self.parent_dir(logical, create=False) as (fd, name):
            try:
                f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
            except OSError as exc:  # not readable by this user, a symlink swapped in
                raise unsafe_or_error(exc, logical, self.destination_error) from exc
            try:
                if grants_privilege(node, os.fstat(f)):  # swapped in since the plan saw it
                    raise UnsafePath(
                        f"{logical} in the destination changed since this restore planned it, and it would have "
                        "been given to another owner or the setuid/setgid bits; it was left alone: restore again"
                    )
                self.owner_mode(f, logical, node)
                os.utime(f, ns=(node.mtime_ns, node.mtime_ns))
                self.remember(logical, f)
            finally:
                os.close(f)
        return "ok"

    def owner_mode(self, fd: int, logical: str, node: Node) -> None:
        """`set_owner_mode`, noting a path whose owner could not be restored."""
        self.owner_kept(logical, set_owner_mode(fd, node))

    def owner_kept(self, logical: str, problem: str | None) -> None:
        if problem is not None:
            self.owners_kept.append(f"{logical}: {problem}")

    def remember(self, logical: str, fd: int) -> None:
        st = os.fstat(fd)
        self._inodes[logical] = (st.st_dev, st.st_ino)

    def hardlink(self, logical: str, node: Node, first: str) -> str:
        """Make `logical` another name of the file just restored at `first` (a temporary link,
        checked to be that very inode, renamed into place). Where no link can be made (another
        file system, a file system without links, `first` not restored), the content is written."""
        inode = self._inodes.get(first)
        if inode is not None:
            try:
                with self.parent_dir(first, create=False) as (src, src_name), self.parent_dir(logical) as (fd, name):
                    tmp = self._temp_name(logical)
                    os.link(src_name, tmp, src_dir_fd=src, dst_dir_fd=fd, follow_symlinks=False)
                    st = os.stat(tmp, dir_fd=fd, follow_symlinks=False)
                    if (st.st_dev, st.st_ino) != inode:
                        discard(fd, tmp)  # `first` was swapped since it was written: copy instead
                    else:
                        try:
                            self.unchanged_since_planned(fd, name, logical)
                        except BaseException:
                            _drop_temp(fd, tmp)
                            raise
                        rename_over(fd, tmp, name, logical, self.destination_error)
                        os.fsync(fd)
                        self._put_in(logical.rpartition("/")[0])
                        return "ok"
            except OSError as exc:
                if exc.errno not in _NO_LINK:
                    raise unsafe_or_error(exc, logical, self.destination_error) from exc
        return self.content(logical, node)

    def write_temp(self, fd: int, logical: str, node: Node) -> str:
        """Write the node's content to a temporary file in the folder `fd`; check its SHA-256."""
        tmp, out = self._write_unsynced(fd, logical, node)
        try:
            os.fsync(out)
            self.remember(logical, out)
        except BaseException as exc:
            _drop_temp(fd, tmp)
            if isinstance(exc, OSError):
                raise self.destination_error(exc, logical, node.size) from exc
            raise
        finally:
            os.close(out)
        return tmp

    def _write_unsynced(self, fd: int, logical: str, node: Node) -> tuple[str, int]:
        """The node's content written to a new temporary file in the folder `fd`, checked against
        its SHA-256, owner, mode and times set: (its name, its open descriptor), not yet fsynced.
        On any failure the temporary file is gone."""
        tmp = self._temp_name(logical)
        try:
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)
        except OSError as exc:  # the folder takes no new file (its mode, an immutable attribute, a full disk)
            raise unsafe_or_error(exc, logical, self.destination_error) from exc
        try:
            write_content(self.repo, out, logical, node, self.progress, self.schedule)
            self.owner_mode(out, logical, node)
            os.utime(out, ns=(node.mtime_ns, node.mtime_ns))
        except BaseException as exc:
            os.close(out)
            _drop_temp(fd, tmp)
            if isinstance(exc, OSError):
                raise self.destination_error(exc, logical, node.size) from exc
            raise
        return tmp, out

    def _real(self, logical: str) -> Path:
        """Where the logical path `logical` is in the destination."""
        return self.to / logical if self.to is not None else self.layout.to_real(logical)

    def destination_error(self, exc: OSError, logical: str, need: int = 0, what: str | None = None) -> PhoenixError:
        """An error of writing `logical` in the destination: a full disk or an I/O error names
        the destination's path and disk, never the repository (storage/local.py `os_error`)."""
        where = self._real(logical)
        backend = self.repo.backend
        repository = Path(backend.location) if backend.kind == "local" else None
        return os_error(exc, what or f"restoring {logical}", destination=where, need=need, repository=repository)

    def write_bytes(self, logical: str, data: bytes, mode: int) -> None:
        """Replace a file with `data` atomically (temp file, fsync, rename)."""
        with self.parent_dir(logical) as (fd, name):
            tmp = self._temp_name(logical)
            try:
                out = os.open(
                    tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd
                )
            except OSError as exc:
                raise unsafe_or_error(exc, logical, self.destination_error) from exc
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(out, view) :]
                os.fchmod(out, mode)
                os.fsync(out)
            except OSError as exc:
                os.close(out)
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=fd)
                raise self.destination_error(exc, logical, len(data)) from exc
            os.close(out)
            rename_over(fd, tmp, name, logical, self.destination_error)
            os.fsync(fd)
            self._put_in(logical.rpartition("/")[0])

    def content(self, logical: str, node: Node) -> str:
        """Restore a file: written beside its place, checked, fsynced, renamed. A database goes
        through sinks/sqlite.py instead (`restore_database`)."""
        return self.content_written(logical, node).finish()

    def content_written(self, logical: str, node: Node) -> Written:
        """A file written beside its place and checked against the snapshot's SHA-256; its
        `finish` fsyncs it and renames it into place, and may run on another thread: a restore
        hands the fsyncs of its files to threads of their own, where the file system commits
        many of them at once, while its writers go on with the next files
        (docs/restore-checks.md)."""
        with self.parent_dir(logical) as (fd, name):
            tmp, out = self._write_unsynced(fd, logical, node)
            try:
                dfd = os.dup(fd)
            except BaseException as exc:
                os.close(out)
                _drop_temp(fd, tmp)
                if isinstance(exc, OSError):  # out of descriptors (`ulimit -n`)
                    raise os_error(exc, f"restoring {logical}") from exc
                raise
        return Written(self, logical, name, tmp, out, dfd)

    def renamed_into(self, folder: str) -> None:
        """A file was just renamed into the logical folder `folder`: `sync_dirs` makes it durable."""
        with self._roots_lock:
            self._unsynced.add(folder)
        self._put_in(folder)

    def _put_in(self, folder: str) -> None:
        """A file (or link) was put in the logical folder `folder`: counted for `check_folders`."""
        with self._roots_lock:
            self._files_in[folder] = self._files_in.get(folder, 0) + 1

    def sync_dirs(self) -> None:
        """fsync each folder a file was renamed into or a folder created in: the renames and the
        new folders are on disk when this returns. Called before a restore applies its databases
        and before it reports anything done."""
        with self._roots_lock:
            folders, self._unsynced = sorted(self._unsynced), set()
        for folder in folders:
            try:
                with self.open_dir(folder) as dfd:
                    os.fsync(dfd)
            except FileNotFoundError:
                continue  # removed since (by this restore's deletions): nothing of ours to keep
            except OSError as exc:
                raise self.folder_error(exc, folder, "syncing") from exc

    def remove(self, logical: str, kind: str) -> str:
        """Delete a path the restore's plan deletes (a database with its -wal, -shm and -journal)."""
        try:
            with self.parent_dir(logical, create=False) as (fd, name):
                if kind == "dir":
                    try:
                        os.rmdir(name, dir_fd=fd)
                    except OSError as exc:
                        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                            raise UnsafePath(f"{logical} is not empty any more; it was kept") from exc
                        raise
                    self._forget_folder(logical)
                else:
                    self.unchanged_since_planned(fd, name, logical)
                    expected = self.db_before.get(logical) if kind == "sqlite" else None
                    if expected is not None and sqlite_folder.run(fd, "fingerprint", [name]) != expected:
                        raise UnsafePath(sqlite_live.changed_since_text(logical))
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=fd)
                    if kind == "sqlite":
                        sqlite_live.remove_companions(fd, name)
                os.fsync(fd)
        except FileNotFoundError:
            pass  # a folder on the way is gone already
        except OSError as exc:
            raise self.destination_error(exc, logical, what=f"deleting {logical}") from exc
        return "ok"


class Written:
    """A file `FileWriter.content_written` wrote and checked under a temporary name, still open:
    `finish` makes it durable and puts it in place, `abandon` removes it. Exactly one of them is
    called, once."""

    def __init__(self, writer: FileWriter, logical: str, name: str, tmp: str, out: int, dfd: int) -> None:
        self.writer, self.logical, self.name, self.tmp, self.out, self.dfd = writer, logical, name, tmp, out, dfd

    def finish(self) -> str:
        """fsync the file, then rename it over its place (the folder is noted for `sync_dirs`)."""
        try:
            try:
                os.fsync(self.out)
                self.writer.remember(self.logical, self.out)
            except OSError as exc:
                _drop_temp(self.dfd, self.tmp)
                raise self.writer.destination_error(exc, self.logical) from exc
            try:
                self.writer.unchanged_since_planned(self.dfd, self.name, self.logical)
            except BaseException:
                _drop_temp(self.dfd, self.tmp)
                raise
            rename_over(self.dfd, self.tmp, self.name, self.logical, self.writer.destination_error)
            self.writer.renamed_into(self.logical.rpartition("/")[0])
        finally:
            self._close()
        return "ok"

    def abandon(self) -> None:
        _drop_temp(self.dfd, self.tmp)
        self._close()

    def _close(self) -> None:
        # An error closing (NFS may report one) says nothing new: the file was fsynced and renamed,
        # or its failure is being raised; the descriptor is released either way.
        with contextlib.suppress(OSError):
            os.close(self.out)
        with contextlib.suppress(OSError):
            os.close(self.dfd)


def _now_there(exc: OSError) -> str:
    """What `check_folders` found at a folder's path, from the error opening it there."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return "was moved away and a symlink or a file put in its place"
    if exc.errno == errno.ENOENT:
        return "was moved away or removed"
    return f"cannot be opened any more ({exc.strerror})"


def _drop_temp(fd: int, tmp: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp, dir_fd=fd)


DestinationError = Callable[[OSError, str], PhoenixError]


def rename_over(fd: int, tmp: str, name: str, logical: str, destination: DestinationError | None = None) -> None:
    """Rename `tmp` over `name` in the folder `fd`; when that fails, `tmp` is removed and what is
    in place stays. `destination`: `FileWriter.destination_error`, which names the destination's
    disk for a full or failing one."""
    try:
        os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=fd)
        raise unsafe_or_error(exc, logical, destination) from exc


def unsafe_or_error(exc: OSError, logical: str, destination: DestinationError | None = None) -> PhoenixError:
    if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.ENOTDIR):
        return UnsafePath(f"{logical} exists in the destination as a folder; move it aside and restore again")
    if exc.errno == errno.ELOOP:
        return UnsafePath(
            f"{logical} in the destination is a symlink now; Phoenix never writes through links — move it aside "
            "and restore again"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        # The names such an error carries are relative to the folder (the temporary file's): name
        # what the user can check instead.
        folder = logical.rpartition("/")[0] or "."
        return StorageError(
            f"permission denied while restoring {logical}; check the owner and mode of the folder {folder} in the "
            f"destination and of {logical} there, if it exists (an immutable or append-only attribute counts too)"
        )
    if exc.errno in (errno.EXDEV, errno.EBUSY):
        # The renamed copy lies beside its place, so only a mount on the place itself (a file
        # bind-mounted there, as containers do) or a file system that refuses renames says this.
        return StorageError(
            f"cannot put the restored {logical} in place: the destination refused the rename over it "
            f"({exc.strerror}), as it does when {logical} is a mount point (a file bind-mounted there); "
            f"it was left as it was — restore with --to DIR and copy it over yourself"
        )
    if destination is not None:
        return destination(exc, logical)
    return os_error(exc, f"restoring {logical}")


def discard(fd: int, tmp: str) -> None:
    """Remove a temporary database copy and any journal SQLite left beside it."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=fd)
    sqlite_live.remove_companions(fd, tmp)


def grants_privilege(node: Node, st: os.stat_result) -> bool:
    """Whether restoring `node`'s owner and mode onto the existing file `st` (as root) would give it
    setuid or setgid rights it does not have now. Such a file is written anew, never changed in
    place: whoever could write the old inode (its owner; a writable mapping outlives a chown, and
    writes through it keep the bits) would own a program running with another's rights. The same
    for a file of one user that would be given to another (root, say): its old owner could keep it
    open for writing, and write a file its new owner trusts as their own; and for a file whose group
    or others could write it and would not any more (any of them could hold it open)."""
    if os.geteuid() != 0:
        return False
    if st.st_uid not in (0, node.uid):
        return True
    if st.st_mode & ~node.mode & (stat.S_IWGRP | stat.S_IWOTH) or (st.st_mode & stat.S_IWGRP and st.st_gid != node.gid):
        return True
    if not node.mode & (stat.S_ISUID | stat.S_ISGID):
        return False
    return (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (node.uid, node.gid, node.mode)


def owner_differs(node: Node, st: os.stat_result) -> bool:
    """As root, whether the existing path's owner or group is not `node`'s, which a restore sets
    (`set_owner_mode`): work for a restore in place as much as another mode is."""
    return os.geteuid() == 0 and (st.st_uid, st.st_gid) != (node.uid, node.gid)


def set_link_owner(fd: int, name: str, node: Node, logical: str) -> str | None:
    """As root, the owner of the symlink `name` this restore just made in the folder `fd` (the link
    itself, never what it points to): a link has no mode of its own, but its owner decides who may
    rename or delete it in a sticky folder (/tmp), and whether root follows it there. The link is
    opened (O_PATH, never followed) and checked to be this process's own, pointing where the
    snapshot's does, before that very inode is given away: in a folder another user can write, a
    link of theirs swapped in under the temporary name is refused, never made root's. Why the
    owner could not be set, or None (as `set_owner_mode`)."""
    if os.geteuid() != 0:
        return None
    link = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    try:
        st = os.fstat(link)
        if (
            not stat.S_ISLNK(st.st_mode)
            or st.st_uid != os.geteuid()
            or os.readlink("", dir_fd=link) != node.link_target
        ):
            raise UnsafePath(
                f"{logical} in the destination was replaced while this restore made it (its temporary link is "
                "not the one it made); it was left alone: restore again"
            )
        chown = _fchownat()
        if chown is None or (st.st_uid, st.st_gid) == (node.uid, node.gid):
            return None
        if chown(link, b"", node.uid, node.gid, _AT_EMPTY_PATH) != 0:
            return os.strerror(ctypes.get_errno())
        st = os.fstat(link)
        if (st.st_uid, st.st_gid) != (node.uid, node.gid):
            return f"the file system kept owner {st.st_uid}:{st.st_gid}"
        return None
    finally:
        os.close(link)


_AT_EMPTY_PATH = 0x1000


@functools.cache
def _fchownat() -> Callable[[int, bytes, int, int, int], int] | None:
    """fchownat from the C library (os.chown takes no AT_EMPTY_PATH, which changes the very inode
    an O_PATH descriptor holds), or None where there is none."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).fchownat
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_int]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, bytes, int, int, int], int], fn)


def set_owner_mode(fd: int, node: Node) -> str | None:
    """The owner (as root) first, then the mode: Linux clears the setuid and setgid bits on every
    chown, root's included, so the other order loses them (tar and restic chown first too).

    Why the owner could not be set, or None: a file system that keeps no owners (vfat, exFAT), NFS
    with root squashed, a user namespace that maps no such id refuse the chown or ignore it. The
    mode is set all the same, and the restore says which paths kept another owner (`FileWriter.owner_mode`):
    an agent running as its own user cannot write a memory file left root's."""
    problem = None
    if os.geteuid() == 0:
        try:
            os.fchown(fd, node.uid, node.gid)
        except OSError as exc:
            problem = exc.strerror or str(exc)
        else:
            st = os.fstat(fd)
            if (st.st_uid, st.st_gid) != (node.uid, node.gid):
                problem = f"the file system kept owner {st.st_uid}:{st.st_gid}"
    os.fchmod(fd, node.mode)
    return problem
