"""Incremental capture of a live SQLite database: one committed state at a time, read in place.

A capture is an object kept for as long as its caller likes (one `phx backup`, or a process that
polls a database every second). Each `capture()` returns an `Image`: one committed state of the
database, as SQLite's own readers see it, readable page by page, plus the pages that changed
since the previous image when that can be proven (`changed`), or the reason why not (then the
caller compares every page by its hash). Nothing is copied: pages are read where they are,
in the database file or in its write-ahead log.

**How a state is held still.** The capture keeps one connection with a read transaction open
(`BEGIN` and a read): SQLite then never checkpoints WAL frames past that reader's snapshot into
the database file, and never restarts the WAL over frames it may still need. In rollback-journal
mode the same read transaction holds a SHARED lock, which no writer can commit through.

**Which state (WAL mode).** The connection's snapshot is pinned by reading the wal-index header
(`-shm`) before and after the `BEGIN`: when both reads agree, the snapshot is the one that header
describes (`mxFrame`, the salts, the checksum of the last frame), so `PRAGMA integrity_check` and
row counts on the same connection describe exactly the pages this module reads. Frames past
`mxFrame` (a transaction being written, or one whose writer was killed before it published its
commit) are never used, as by SQLite's readers.

**Where each page is.** In WAL mode, a page's newest frame up to `mxFrame` holds it; frames up to
`nBackfill` are already in the database file, so only the headers of the frames after it are
read, each checked (salts equal to the header's; the last one ends a transaction and carries the
checksum the wal-index records, and the WAL file reaches its end). Frame checksums are not summed:
SQLite's readers trust every frame up to `mxFrame` too (sources/sqlite_wal.py says why). Every
other page comes from the database file. This is stable while the read
transaction lasts: a checkpoint only copies frames the snapshot already overrides, and a restart
of the WAL is impossible while a reader uses it (a reader that ignores the WAL, taken when it is
fully checkpointed, only ever reads the database file, which no checkpoint can then change).

**Continuity (the `changed` pages).** Three cases prove that the previous image plus the new
frames is the new state:
- the read transaction was held since the previous image and the WAL kept its generation: the
  new frames are appended after the previous position;
- it was held and the WAL restarted: SQLite restarts a WAL only when every frame was
  checkpointed and no reader uses it, so the held reader was one that ignores the WAL and nothing
  could be checkpointed into the database file since it began (its size and time are checked
  too): the previous image is the file, and the new generation's frames apply on top of it;
- it was not held (a new process, after `release()`), but the WAL still has the generation of
  the previous position and the frame at that position still carries the recorded checksum:
  frames are never rewritten within a generation, so again only new frames were added.
Anything else (another process checkpointed and restarted the WAL in between, the database file
was replaced, the page size changed, a rollback-journal database) gives `changed=None` with the
reason: the caller scans every page.

**Checkpoints.** A capture that holds its position keeps other processes' checkpoints from
finishing, so the WAL grows; `checkpoint()` takes that over. It takes the write lock (no commit can
happen), reads the last frames, lets go of the read transaction, runs a PASSIVE checkpoint, pins
the same state again and releases the write lock; the next writer then restarts the WAL, which
the second case above recognises.

**File descriptors.** The database, `-wal` and `-shm` are opened once and closed only after the
connection: closing any descriptor of a file drops every POSIX lock this process holds on it,
SQLite's read locks included. For the same reason, while another capture in this process holds
the same file, descriptors are parked until the last of them closes (as SQLite does for its own).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import sqlite3
import stat
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phoenix_backup.errors import NoSpace, SourceError
from phoenix_backup.sources.sqlite import BUSY_TIMEOUT_MS, FREE_SPACE_MARGIN, planted_companion, sqlite_uri
from phoenix_backup.sources.sqlite_wal import (
    FRAME_HEADER_SIZE,
    INDEX_READ_SIZE,
    WAL_HEADER_SIZE,
    FrameHeader,
    IndexHeader,
    WalFormatError,
    WalHeader,
    check_frame,
    frame_offset,
)

# Reads of the wal-index header around BEGIN, before a commit landing in between is given up on:
# each attempt takes microseconds, and a commit must land exactly inside one to spoil it.
PIN_ATTEMPTS = 200
# How long checkpoint() waits for another writer to finish before it leaves the checkpoint for
# the next call: a writer in the middle of a long transaction is not worth blocking for.
CHECKPOINT_WAIT_MS = 1000
# The WAL size (frames) at which a capture that follows a database takes over a checkpoint:
# SQLite's own automatic checkpoint threshold, which the held read transaction keeps from finishing.
CHECKPOINT_FRAMES = 1000
# The wal-index's "dead man switch" lock byte (WALINDEX_LOCK_OFFSET 120 + 8): every process that
# uses the -shm holds a lock on it (SQLite's os_unix.c).
SHM_DMS_BYTE = 128


class CaptureError(SourceError):
    """The database could not be captured (it is locked, damaged, or changed in a way that
    cannot be read consistently)."""


@dataclass(frozen=True)
class Position:
    """Where a capture stands in a database's history; enough to prove next time that only new
    WAL frames were added since (see the module's docstring). Saved as JSON between processes."""

    device: int
    inode: int
    page_size: int
    page_count: int
    salt: str = ""  # hex of the WAL generation's salts, "" when the image used no WAL frame
    frame: int = 0  # frames of that generation in the image
    checksum: tuple[int, int] = (0, 0)  # the checksum of frame `frame`

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "inode": self.inode,
            "pageSize": self.page_size,
            "pageCount": self.page_count,
            "salt": self.salt,
            "frame": self.frame,
            "checksum": list(self.checksum),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Position:
        """ValueError when `d` is not a position (a damaged state file: capture without one)."""
        try:
            c0, c1 = (int(x) for x in d["checksum"])
            return cls(
                int(d["device"]),
                int(d["inode"]),
                int(d["pageSize"]),
                int(d["pageCount"]),
                str(d["salt"]),
                int(d["frame"]),
                (c0, c1),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a capture position: {exc}") from exc


@dataclass(frozen=True)
class Image:
    """One committed state of a database: `page_count` pages of `page_size` bytes, read in place.

    Sliceable like a file's bytes (`image[a:b]`), and valid until its capture's next `capture()`,
    `checkpoint()`, `release()` or `close()`: reading it afterwards raises CaptureError.
    """

    page_size: int
    page_count: int
    journal: str  # "wal" or "rollback"
    changed: frozenset[int] | None  # pages (from 1) that may differ from the previous image; None: unknown
    reason: str  # why `changed` is None ("" otherwise)
    position: Position
    wal_frames: int  # frames in the WAL's current generation (what checkpoints are decided on)
    _capture: SqliteCapture = field(repr=False, compare=False)
    _generation: int = field(repr=False, compare=False)

    def __len__(self) -> int:
        return self.page_count * self.page_size

    def __getitem__(self, item: slice) -> bytes:
        start, stop, step = item.indices(len(self))
        if step != 1:
            raise ValueError("an image is read in contiguous ranges")
        return self._capture._read(self._generation, start, stop)

    def page(self, number: int) -> bytes:
        """Page `number` (from 1)."""
        if not 1 <= number <= self.page_count:
            raise IndexError(f"page {number} is outside the database's {self.page_count} pages")
        return self[(number - 1) * self.page_size : number * self.page_size]


@dataclass(frozen=True)
class CheckpointResult:
    wal_frames: int  # frames in the WAL when the checkpoint ran
    checkpointed: int  # of which now in the database file
    busy: bool  # another reader kept part of the WAL from being checkpointed


class _OpenFiles:
    """Descriptors of files that captures in this process hold, by (device, inode): closed only
    when no capture holds that file any more."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users: dict[tuple[int, int], int] = {}
        self.parked: dict[tuple[int, int], list[int]] = {}

    def open(self, path: str) -> int:
        # O_NONBLOCK: a FIFO swapped in for a file does not block the open (its type is checked).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        st = os.fstat(fd)
        with self.lock:
            key = (st.st_dev, st.st_ino)
            self.users[key] = self.users.get(key, 0) + 1
        return fd

    def close(self, fd: int) -> None:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        with self.lock:
            left = self.users.get(key, 1) - 1
            if left > 0:
                self.users[key] = left
                self.parked.setdefault(key, []).append(fd)
                return
            self.users.pop(key, None)
            fds = [*self.parked.pop(key, []), fd]
        for each in fds:
            os.close(each)


_FILES = _OpenFiles()


def _pread_exactly(fd: int, length: int, offset: int) -> bytes:
    """`length` bytes at `offset`; fewer only where the file ends."""
    parts: list[bytes] = []
    while length > 0:
        block = os.pread(fd, length, offset)
        if not block:
            break
        parts.append(block)
        length -= len(block)
        offset += len(block)
    return b"".join(parts)


class SqliteCapture:
    """Captures of one database, each continuing from the last (see the module's docstring).

    A process that follows a database polls it, consumes each image before the next call, and
    takes over checkpoints::

        capture = SqliteCapture(path, saved_position)  # None: the first capture scans every page
        while running:
            image = capture.capture()
            pages = image.changed if image.changed is not None else range(1, image.page_count + 1)
            ...  # read image.page(n) for n in pages (compare hashes when changed is None)
            saved_position = capture.position  # persisted: a restart resumes from it
            if image.wal_frames >= CHECKPOINT_FRAMES:
                capture.checkpoint()
            sleep(...)

    In rollback-journal mode the read transaction blocks writers: call `release()` as soon as
    the image is consumed (the next capture compares every page anyway).

    Not thread-safe: one thread calls its methods, though `connection` may be used by another
    thread (an integrity check) while the first one reads the image.
    """

    def __init__(self, path: Path | str, position: Position | None = None) -> None:
        self.path = Path(path)
        self.position = position
        # SQLite puts -wal and -shm beside the file a symbolic link points to.
        self._real = os.path.realpath(self.path)
        self._con: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._db_fd = -1
        self._wal_fd = -1
        self._shm_fd = -1
        self._held = False  # the read transaction is open
        self._pinned_state = False  # the last image is the read transaction's own snapshot
        self._journal = ""
        self._generation = 0
        # The state the last image describes (WAL mode).
        self._index: IndexHeader | None = None  # the wal-index header the image was read by
        self._wal: WalHeader | None = None  # the generation whose frames the image uses
        self._frame = 0  # frames of that generation in the image
        self._checksum = (0, 0)
        self._frames: dict[int, int] = {}  # page -> newest frame holding it (after the backfilled ones)
        self._page_size = 0
        self._page_count = 0
        self._file_stamp: tuple[int, int] = (0, 0)  # database file (size, mtime) when pinned
        # Pages changed in images the caller never saw (taken inside checkpoint()); None with a
        # reason once such an image could not prove continuity.
        self._carry: set[int] | None = set()
        self._carry_reason = ""

    # -- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> SqliteCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The connection whose read transaction holds the last image's state: a query on it
        (integrity_check, row counts) reads exactly that state, until the capture moves on. Only
        right after a capture that pinned its state (not after a held poll that read new frames:
        `pinned` says which)."""
        if self._con is None or not self._held:
            raise CaptureError(f"{self.path} is not captured at the moment")
        return self._con

    @property
    def pinned(self) -> bool:
        """Whether the last image is exactly the state `connection` reads."""
        return self._held and self._pinned_state

    def close(self) -> None:
        """End the read transaction and close everything; the position stays for a later capture."""
        self._generation += 1
        self._held = False
        for con in (self._writer, self._con):
            if con is not None:
                with contextlib.suppress(sqlite3.Error):
                    con.close()
        self._con = self._writer = None
        # Only now: closing a descriptor drops the connection's POSIX locks on that file.
        for fd in (self._db_fd, self._wal_fd, self._shm_fd):
            if fd >= 0:
                _FILES.close(fd)
        self._db_fd = self._wal_fd = self._shm_fd = -1

    def release(self) -> None:
        """End the read transaction: other processes may checkpoint and restart the WAL again.
        The next capture proves continuity only if the WAL kept its generation meanwhile."""
        self._generation += 1
        if self._con is not None and self._held:
            with contextlib.suppress(sqlite3.Error):
                self._con.execute("ROLLBACK")
        self._held = False

    # -- capturing ------------------------------------------------------------------------

    def capture(self) -> Image:
        """The database's current committed state (see the class and module docstrings); its
        `changed` pages are those since the previous image this method returned."""
        image = self._capture()
        carry, reason = self._carry, self._carry_reason
        self._carry, self._carry_reason = set(), ""
        if image.changed is None or (carry is not None and not carry):
            return image
        if carry is None:
            return dataclasses.replace(image, changed=None, reason=reason)
        merged = frozenset(p for p in image.changed | carry if p <= image.page_count)
        return dataclasses.replace(image, changed=merged)

    def _capture(self) -> Image:
        self._generation += 1
        if self._con is None:
            self._open()
        if self._held and self._journal == "wal":
            if self._same_files():
                return self._poll()
            reason = f"{self.path} was replaced while it was captured"
            self.close()
            self._open()
            return self._pin(reason)
        self.release()
        self._generation += 1
        if not self._same_files():
            # The database, its -wal or its -shm is another file than the one held (a database
            # moved over this one, whose old connection's close deleted the -wal and -shm by
            # name): the connection is tied to the old ones, so it is opened again. The position
            # tells whether continuity survived.
            self.close()
            self._open()
        return self._pin()

    def unseen(self, image: Image) -> None:
        """An image the caller does not use (taken for the capture's own purposes, or to be taken
        again): its changes go to the next one `capture` returns."""
        if image.changed is None:
            self._carry, self._carry_reason = None, image.reason
        elif self._carry is not None:
            self._carry |= image.changed

    def checkpoint(self) -> CheckpointResult | None:
        """A PASSIVE checkpoint without losing the position (WAL mode, after a capture). None when
        another process is writing (try again later) or the database is not in WAL mode.

        Take it over from SQLite's automatic checkpoints, which cannot finish while this capture
        holds its read transaction: call it when `Image.wal_frames` grows past a threshold."""
        if self._con is None or self._journal != "wal" or not self._held:
            return None
        if not self._same_files():
            return None  # the next capture sees the new file and starts over
        if self._writer is None:
            self._writer = self._connect(CHECKPOINT_WAIT_MS)
        try:
            self._writer.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                return None
            raise CaptureError(f"cannot lock {self.path} for a checkpoint: {exc}") from exc
        try:
            # Nobody can commit now: this poll reaches the last commit there will be until the
            # write lock is released, so nothing can be missed across the gap below.
            before = self._capture()
            self.unseen(before)
            index = self._index
            self.release()
            try:
                busy, log, done = self._con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                raise CaptureError(f"cannot checkpoint {self.path}: {exc}") from exc
            after = self._pin(expect=index)
            if after.changed != frozenset() or after.position != before.position:
                raise CaptureError(f"{self.path} changed while its write lock was held for a checkpoint")
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._writer.execute("ROLLBACK")
        return CheckpointResult(int(log), int(done), bool(busy))

    # -- opening and pinning --------------------------------------------------------------

    def _connect(self, timeout_ms: int) -> sqlite3.Connection:
        try:
            # Read-write, as SQLite's readers of a WAL database may need to create -shm and
            # replay a hot journal; nothing is written through it (checkpoints aside).
            con = sqlite3.connect(
                sqlite_uri(self.path, "mode=rw"),
                uri=True,
                timeout=timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            con.execute(f"PRAGMA busy_timeout={timeout_ms}")
        except sqlite3.Error as exc:
            raise CaptureError(f"cannot open database {self.path}: {exc}") from exc
        return con

    def _open(self) -> None:
        try:
            self._db_fd = _FILES.open(self._real)
        except OSError as exc:
            raise CaptureError(f"cannot open database {self.path}: {exc.strerror or exc}") from exc
        if not stat.S_ISREG(os.fstat(self._db_fd).st_mode):
            self.close()
            raise CaptureError(f"{self.path} is not a regular file")
        # SQLite opens the companions by name and would block for ever on a planted FIFO.
        problem = planted_companion(self._real)
        if problem is not None:
            self.close()
            raise CaptureError(problem)
        self._con = self._connect(BUSY_TIMEOUT_MS)

    def _begin(self) -> None:
        """BEGIN and a read: the read transaction starts (and its lock is taken) at the read."""
        assert self._con is not None
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                self._con.execute("BEGIN")
                self._con.execute("SELECT count(*) FROM sqlite_master").fetchone()
                self._held = True
                return
            except sqlite3.OperationalError as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._con.execute("ROLLBACK")
                if not _busy(exc) or time.monotonic() > deadline:
                    raise CaptureError(f"cannot read database {self.path}: {exc}") from exc
                time.sleep(0.05)
            except sqlite3.DatabaseError as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._con.execute("ROLLBACK")
                raise CaptureError(f"cannot read database {self.path}: {exc}") from exc

    def _pin(self, reason: str = "", expect: IndexHeader | None = None) -> Image:
        """Begin a read transaction and describe exactly the state it sees."""
        assert self._con is not None
        for _attempt in range(PIN_ATTEMPTS):
            live = self._index_is_live()
            before = self._read_index()
            self._begin()
            self._journal = "wal" if self._pragma("journal_mode") == "wal" else "rollback"
            if self._journal != "wal":
                return self._rollback_image()
            self._open_companions()
            after = self._read_index()
            if before is not None and after is not None and before.same_snapshot(after):
                if not (live and self._index_is_live()):
                    self.release()
                    raise CaptureError(
                        f"cannot capture {self.path}: its wal-index ({self.path}-shm) is read-only for this user "
                        "and no other process has the database open, so it may be out of date; run the backup "
                        "as the database's owner, or while the application has it open"
                    )
                return self._wal_image(after, reason, expect)
            self.release()
            time.sleep(0.0005)
        raise CaptureError(
            f"cannot capture {self.path}: its wal-index (-shm) changed at every attempt to read it; "
            "try again when the database is less busy"
        )

    def _pragma(self, name: str) -> Any:
        assert self._con is not None
        try:
            return self._con.execute(f"PRAGMA {name}").fetchone()[0]
        except sqlite3.Error as exc:
            raise CaptureError(f"cannot read database {self.path}: {exc}") from exc

    def _open_companions(self) -> None:
        """The -wal and -shm exist once a WAL read transaction began; opened once, kept open."""
        for suffix in ("-shm", "-wal"):
            fd = self._shm_fd if suffix == "-shm" else self._wal_fd
            if fd >= 0:
                continue
            try:
                fd = _FILES.open(self._real + suffix)
            except OSError as exc:
                raise CaptureError(f"cannot open {self.path}{suffix}: {exc.strerror or exc}") from exc
            if suffix == "-shm":
                self._shm_fd = fd
            else:
                self._wal_fd = fd

    def _index_is_live(self) -> bool:
        """Whether SQLite reads the -shm file itself (checked before and after BEGIN). One this
        process cannot write is used by SQLite only while another process has it open and keeps
        it current; otherwise SQLite rebuilds a private wal-index from the WAL, and the file's
        header, left by a writer that stopped updating it (a killed one in exclusive locking
        mode, a copied -shm), may describe an older state than the one SQLite reads."""
        if self._shm_fd < 0 or os.access(self._real + "-shm", os.W_OK):
            return True  # SQLite opens it read-write, and rebuilds it when it is the first to use it
        try:
            answer = fcntl.fcntl(self._shm_fd, fcntl.F_GETLK, _flock(fcntl.F_WRLCK, SHM_DMS_BYTE))
        except OSError:
            return False
        return _flock_type(answer) != fcntl.F_UNLCK

    def _read_index(self) -> IndexHeader | None:
        if self._shm_fd < 0:
            return None
        try:
            return IndexHeader.parse(os.pread(self._shm_fd, INDEX_READ_SIZE, 0))
        except WalFormatError:
            return None

    def _same_files(self, companions: bool = True) -> bool:
        """The files the descriptors hold are still the ones at the database's path (the -wal
        and -shm too, unless `companions` is false: a rollback-journal database has none)."""
        held = ((self._db_fd, ""), (self._wal_fd, "-wal"), (self._shm_fd, "-shm"))
        for fd, suffix in held if companions else held[:1]:
            if fd < 0:
                continue
            try:
                st = os.stat(self._real + suffix)
            except OSError:
                return False
            mine = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):
                return False
        return True

    def _identity(self) -> tuple[int, int]:
        st = os.fstat(self._db_fd)
        return st.st_dev, st.st_ino

    def _stamp(self) -> tuple[int, int]:
        st = os.fstat(self._db_fd)
        return st.st_size, st.st_mtime_ns

    def _geometry(self) -> tuple[int, int]:
        page_size = int(self._pragma("page_size"))
        page_count = int(self._pragma("page_count"))
        return page_size, page_count

    def _rollback_image(self) -> Image:
        if not self._same_files(companions=False):
            raise CaptureError(f"{self.path} was replaced while it was opened; try again")
        self._pinned_state = True
        self._page_size, self._page_count = self._geometry()
        self._frames = {}
        self._wal = None
        device, inode = self._identity()
        self.position = Position(device, inode, self._page_size, self._page_count)
        return self._image(None, "a rollback-journal database: every page is compared by its hash", 0)

    def _wal_image(self, index: IndexHeader, reason: str, expect: IndexHeader | None) -> Image:
        if not self._same_files():
            raise CaptureError(f"{self.path} was replaced while it was opened; try again")
        self._pinned_state = True
        self._index = index
        self._file_stamp = self._stamp()
        page_size, page_count = self._geometry()
        if index.max_frame and index.page_size != page_size:
            raise CaptureError(f"{self.path}: the wal-index's page size differs from the database's")
        if index.max_frame and index.pages != page_count:
            raise CaptureError(f"{self.path}: the wal-index's database size differs from SQLite's")
        self._page_size, self._page_count = page_size, page_count
        try:
            return self._frames_image(index, reason, expect)
        except CaptureError:
            if not self._restarted_since(index):
                raise
        # Every frame was in the database file when the snapshot was pinned, so SQLite's reader
        # ignores the WAL, and a writer restarted it before its frames were read: the pinned
        # state is the database file alone (no checkpoint can change it while the reader lasts).
        return self._frames_image(dataclasses.replace(index, max_frame=0, frame_checksum=(0, 0)), reason, expect)

    def _restarted_since(self, index: IndexHeader) -> bool:
        """Whether the WAL may have been restarted since `index` was read by a reader pinned at
        it: only a fully checkpointed WAL can be, and SQLite rewrites the wal-index before the WAL."""
        if not index.max_frame or index.backfilled < index.max_frame:
            return False
        for _attempt in range(PIN_ATTEMPTS):
            now = self._read_index()
            if now is not None:
                return not now.same_snapshot(index)
            time.sleep(0.0005)
        return True  # left half-written: a writer moved on from `index`

    def _frames_image(self, index: IndexHeader, reason: str, expect: IndexHeader | None) -> Image:
        page_size, page_count = self._page_size, self._page_count
        device, inode = self._identity()
        prev = self.position
        backfilled = index.backfilled if index.backfilled <= index.max_frame else 0
        # Continuity across a gap in the read transaction: the same WAL generation, not reset
        # since the previous position (whose frame still carries its checksum).
        start = backfilled
        since: int | None = None  # frames after this one are new since the previous image
        if expect is not None and expect.same_snapshot(index):
            since = index.max_frame
        elif not reason and prev is not None:
            reason = self._continues(prev, index, device, inode, page_size)
            if not reason:
                since = prev.frame
                start = min(start, prev.frame)
        elif not reason:
            reason = "the first capture"
        self._frames = {}
        self._wal = None
        changed: set[int] = set()
        if index.max_frame:
            wal = self._wal_header(index)
            self._wal = wal
            for number, frame in self._frame_headers(wal, start + 1, index):
                if number > backfilled:
                    self._frames[frame.page] = number
                if since is not None and number > since:
                    changed.add(frame.page)
        self._frame = index.max_frame
        self._checksum = index.frame_checksum if index.max_frame else (0, 0)
        self.position = Position(
            device,
            inode,
            page_size,
            page_count,
            index.salt.hex() if index.max_frame else "",
            self._frame,
            self._checksum,
        )
        if since is None:
            return self._image(None, reason, index.max_frame)
        if prev is not None and page_count > prev.page_count:
            changed.update(range(prev.page_count + 1, page_count + 1))
        return self._image(frozenset(changed), "", index.max_frame)

    def _continues(self, prev: Position, index: IndexHeader, device: int, inode: int, page_size: int) -> str:
        """ "" when the previous position continues into this state (same WAL generation, its last
        frame intact), else why not."""
        if (prev.device, prev.inode) != (device, inode):
            return "the database file was replaced since the last capture"
        if prev.page_size != page_size:
            return "the page size changed since the last capture"
        if not prev.salt or prev.salt != index.salt.hex() or prev.frame > index.max_frame:
            return "the WAL was checkpointed and restarted since the last capture"
        if prev.frame:
            wal = self._wal_header(index)
            raw = _pread_exactly(self._wal_fd, FRAME_HEADER_SIZE, frame_offset(prev.frame, wal.page_size))
            if len(raw) < FRAME_HEADER_SIZE or FrameHeader.parse(raw).checksum != prev.checksum:
                return "the WAL was rewritten since the last capture"
        return ""

    def _wal_header(self, index: IndexHeader) -> WalHeader:
        try:
            wal = WalHeader.parse(_pread_exactly(self._wal_fd, WAL_HEADER_SIZE, 0))
        except WalFormatError as exc:
            raise CaptureError(f"{self.path}-wal: {exc}") from exc
        if wal.salt != index.salt or wal.page_size != self._page_size:
            raise CaptureError(f"{self.path}-wal does not belong to the generation its wal-index describes")
        return wal

    def _frame_headers(self, wal: WalHeader, first: int, index: IndexHeader) -> list[tuple[int, FrameHeader]]:
        """The headers of frames `first` to the wal-index's last one, each of the WAL's generation
        (check_frame; the last one is checked even when `first` is past it): the frames SQLite's
        readers use, whose pages are read in place later. Their checksums are not summed again:
        see sources/sqlite_wal.py."""
        last = index.max_frame
        if os.fstat(self._wal_fd).st_size < frame_offset(last + 1, wal.page_size):
            raise CaptureError(f"{self.path}-wal is shorter than its wal-index says")
        out = []
        for number in range(min(first, last), last + 1):
            raw = _pread_exactly(self._wal_fd, FRAME_HEADER_SIZE, frame_offset(number, wal.page_size))
            try:
                frame = check_frame(raw, wal, index.frame_checksum if number == last else None)
            except WalFormatError as exc:
                raise CaptureError(f"{self.path}-wal, frame {number}: {exc}") from exc
            if number >= first:
                out.append((number, frame))
        return out

    # -- polling while held ---------------------------------------------------------------

    def _poll(self) -> Image:
        """New commits since the last image, the read transaction held all along."""
        index = None
        for _attempt in range(PIN_ATTEMPTS):
            index = self._read_index()
            if index is not None:
                break
            time.sleep(0.0005)
        if index is None:
            # Left half-written by a writer that was killed: SQLite rebuilds it when a read
            # transaction begins, and the position tells whether continuity survived.
            return self._rescan("")
        self._pinned_state = False
        self._index = index
        wal: WalHeader | None
        if self._wal is not None and index.salt == self._wal.salt:
            if index.max_frame < self._frame:
                raise CaptureError(f"{self.path}: its WAL lost frames while a read transaction held them")
            wal, first = self._wal, self._frame + 1
        elif self._wal is None and index.max_frame == 0:
            wal, first = None, 1  # still no frame
        else:
            # A new generation: only possible while this reader ignored the WAL (see the module's
            # docstring), so the database file, unchanged since, holds the previous image.
            if self._stamp() != self._file_stamp:
                return self._rescan("the WAL restarted and the database file changed while it was held")
            self._frames, self._wal, self._frame, self._checksum = {}, None, 0, (0, 0)
            wal = self._wal_header(index) if index.max_frame else None
            first = 1
        changed: set[int] = set()
        page_count = self._page_count
        if wal is not None and index.max_frame >= first:
            for number, frame in self._frame_headers(wal, first, index):
                self._frames[frame.page] = number
                changed.add(frame.page)
                page_count = frame.commit  # the last frame's: it ends a transaction (check_frame)
            self._wal, self._frame, self._checksum = wal, index.max_frame, index.frame_checksum
        if page_count > self._page_count:
            changed.update(range(self._page_count + 1, page_count + 1))
        self._page_count = page_count
        assert self.position is not None
        self.position = Position(
            self.position.device,
            self.position.inode,
            self._page_size,
            page_count,
            self._wal.salt.hex() if self._wal is not None and self._frame else "",
            self._frame,
            self._checksum,
        )
        return self._image(frozenset(p for p in changed if p <= page_count), "", self._frame)

    def _rescan(self, reason: str) -> Image:
        """Pin again; with no reason, continuity is then proven (or not) from the position."""
        self.release()
        self._generation += 1
        return self._pin(reason)

    # -- reading --------------------------------------------------------------------------

    def _image(self, changed: frozenset[int] | None, reason: str, wal_frames: int) -> Image:
        assert self.position is not None
        return Image(
            self._page_size,
            self._page_count,
            self._journal,
            changed,
            reason,
            self.position,
            wal_frames,
            self,
            self._generation,
        )

    def _read(self, generation: int, start: int, stop: int) -> bytes:
        if generation != self._generation or not self._held:
            raise CaptureError(f"an image of {self.path} was read after its capture moved on")
        if start >= stop:
            return b""
        ps = self._page_size
        first, last = start // ps, (stop - 1) // ps  # pages from 0
        span = (last - first + 1) * ps
        whole = start == first * ps and stop == first * ps + span
        if whole and not (self._frames and any(p in self._frames for p in range(first + 1, last + 2))):
            # Whole pages, all in the database file (the common case): read straight into the
            # bytes returned, without a zeroed buffer and a copy of it (a pass over every byte).
            block = os.pread(self._db_fd, span, first * ps)
            if len(block) == span:
                return block
        data = bytearray(span)  # never-written pages (the lock-byte page) stay zeros
        view = memoryview(data)
        _read_into(self._db_fd, view, first * ps)
        for page in range(first + 1, last + 2) if self._frames else ():
            number = self._frames.get(page)
            if number is not None:
                at = (page - 1 - first) * ps
                offset = frame_offset(number, ps) + FRAME_HEADER_SIZE
                if _read_into(self._wal_fd, view[at : at + ps], offset) != ps:
                    raise CaptureError(f"{self.path}-wal ended while a read transaction held it")
        if whole:
            return bytes(data)
        return bytes(view[start - first * ps : stop - first * ps])


def copy_database(path: Path, dest: Path) -> None:
    """Write one committed state of a live database into `dest` (which must not exist): the image
    a capture reads in place (sources/sqlite_capture.py), byte for byte the file SQLite writes for
    that state. The read transaction is held only while the pages are copied."""
    need = os.stat(path).st_size
    wal = Path(str(path) + "-wal")
    if wal.exists():
        need += wal.stat().st_size
    free = shutil.disk_usage(dest.parent).free
    if free < need + FREE_SPACE_MARGIN:
        raise NoSpace(
            f"not enough free space in {dest.parent} to copy {path} ({need // 2**20} MiB needed, "
            f"{free // 2**20} MiB free); free some space there or set TMPDIR to a folder on a larger disk"
        )
    step = 1 << 20
    try:
        with SqliteCapture(path) as capture, open(dest, "xb") as out:
            image = capture.capture()
            for offset in range(0, len(image), step):
                out.write(image[offset : offset + step])
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        raise


def _read_into(fd: int, buffer: memoryview, offset: int) -> int:
    """Fill `buffer` from `offset` as far as the file goes; the number of bytes read."""
    done = 0
    while done < len(buffer):
        n = os.preadv(fd, [buffer[done:]], offset + done)
        if n <= 0:
            break
        done += n
    return done


# struct flock: Linux orders l_type, l_whence, l_start, l_len, l_pid; the BSDs and macOS l_start,
# l_len, l_pid, l_type, l_whence.
_LINUX_FLOCK = sys.platform.startswith("linux")


def _flock(kind: int, offset: int) -> bytes:
    """A struct flock for one byte at `offset`, for fcntl(F_GETLK)."""
    if _LINUX_FLOCK:
        return struct.pack("hhqqi4x", kind, os.SEEK_SET, offset, 1, 0)
    return struct.pack("qqihh", offset, 1, 0, kind, os.SEEK_SET)


def _flock_type(raw: bytes) -> int:
    return int(struct.unpack("hhqqi4x", raw)[0] if _LINUX_FLOCK else struct.unpack("qqihh", raw)[3])


def _busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text
