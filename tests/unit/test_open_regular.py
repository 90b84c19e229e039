"""`sources.files.open_regular`, the one way Phoenix opens a file it reads as a regular file's
bytes (a backup's file read, `phx export`'s live file read, the database sniff `regular_head`,
the `-wal` header of `source_stat`): a regular file is read, a link is followed only when asked,
and a named pipe, a folder or a device is refused without waiting and without keeping a
descriptor open. Each of the four callers' own answer to each kind is checked below too."""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from phoenix_backup.errors import ExportError, SourceError
from phoenix_backup.ops.export import _file_reader
from phoenix_backup.sources.files import Entry, open_regular, regular_head
from phoenix_backup.sources.sqlite import source_stat
from planted import backup_run, bounded

DATA = b"SQLite format 3\0 and more bytes\n"
KINDS = ("regular", "symlink", "fifo", "folder", "device", "socket")


def _open_fds() -> int:
    """How many descriptors this process holds (the listing's own counted each time alike)."""
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_fd_left() -> Iterator[None]:
    before = _open_fds()
    yield
    assert _open_fds() == before, "a descriptor was left open"


def _make(kind: str, path: Path, tmp_path: Path) -> tuple[Path, Any]:
    """`path` made as `kind` (a device: /dev/null itself, as a device node can be made by root
    only), and what must stay alive while it is used (a bound socket)."""
    keep = None
    if kind == "regular":
        path.write_bytes(DATA)
    elif kind == "symlink":
        (tmp_path / "target").write_bytes(DATA)
        path.symlink_to(tmp_path / "target")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "device":
        return Path("/dev/null"), None
    elif kind == "socket":
        keep = socket.socket(socket.AF_UNIX)
        keep.bind(str(path))
    return path, keep


def _either(call: Callable[[], Any], fifo: Path) -> Any:
    """`call()`'s result, or the exception it raised (failing the test if it blocks)."""
    result, exc = bounded(call, fifo)
    return result if exc is None else exc


@pytest.mark.parametrize("follow_links", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_a_regular_file_is_opened_and_anything_else_refused_without_waiting(
    tmp_path: Path, kind: str, follow_links: bool, no_fd_left: None
) -> None:
    path, keep = _make(kind, tmp_path / "name", tmp_path)
    try:
        got = _either(lambda: open_regular(path, follow_links=follow_links), path)
    finally:
        if keep is not None:
            keep.close()
    if kind == "symlink" and not follow_links:
        assert isinstance(got, OSError) and got.errno == errno.ELOOP, got
    elif kind == "regular" or kind == "symlink":
        assert isinstance(got, tuple), got
        fd, st = got
        try:
            assert st.st_size == len(DATA)
            assert os.pread(fd, 100, 0) == DATA
            assert os.fstat(fd).st_ino == st.st_ino
        finally:
            os.close(fd)
    elif kind == "socket":
        assert isinstance(got, OSError) and got.errno == errno.ENXIO, got  # a socket cannot be opened
    else:
        assert got is None, got


def test_a_missing_file_is_said_as_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "gone", follow_links=False)


# What each caller answers for each kind put at the name it reads (after its scan or listing).
# A folder: the backup's and the export's read said "[Errno 21] Is a directory" on the code
# before (and kept the descriptor open); they now give their own sentence, as for a FIFO.
NOT_REGULAR = ("fifo", "folder", "device")


@pytest.mark.parametrize("kind", KINDS)
def test_each_caller_reads_a_regular_file_and_refuses_the_rest_with_its_own_sentence(
    tmp_path: Path, kind: str, no_fd_left: None
) -> None:
    path, keep = _make(kind, tmp_path / "memory.db", tmp_path)
    try:
        head = _either(lambda: regular_head(path, 16), path)
        exported = _either(lambda: b"".join(_file_reader(path)()), path)
    finally:
        if keep is not None:
            keep.close()
    if kind in ("regular", "symlink"):
        assert head == DATA[:16]
        assert exported == DATA
    elif kind in NOT_REGULAR:
        assert head is None
        assert isinstance(exported, ExportError), exported
        assert (
            str(exported) == f"{path} is no longer a regular file (it was replaced since it was listed); export again"
        )
    else:
        assert isinstance(head, OSError) and isinstance(exported, OSError)


@pytest.mark.parametrize("kind", KINDS)
def test_the_wal_header_read_refuses_all_but_a_regular_file(tmp_path: Path, kind: str, no_fd_left: None) -> None:
    db = tmp_path / "memory.db"
    db.write_bytes(DATA)
    wal = Path(f"{db}-wal")
    if kind == "device":
        try:
            os.mknod(wal, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
        except PermissionError:
            pytest.skip("a device node can be made by root only")
        keep = None
    else:
        _, keep = _make(kind, wal, tmp_path)
    try:
        got = _either(lambda: source_stat(db), wal)
    finally:
        if keep is not None:
            keep.close()
    if kind == "regular":
        assert not isinstance(got, BaseException), got
        assert got.wal_size == len(DATA) and got.wal_header == DATA[:32].hex()
    else:
        # A link or anything not regular is refused before it is opened (`planted_companion`).
        assert isinstance(got, SourceError), got
        assert f"{wal} is " in str(got) and "which SQLite never makes" in str(got)


@pytest.mark.parametrize("kind", KINDS)
def test_the_backups_file_read_refuses_all_but_a_regular_file(tmp_path: Path, kind: str) -> None:
    written = tmp_path / "notes.md"
    written.write_bytes(DATA)
    st = written.stat()
    run = backup_run(tmp_path)
    try:
        written.unlink()
        before = _open_fds()
        path, keep = _make(kind, written, tmp_path)
        entry = Entry("workspace/notes.md", path, "file", st)
        try:
            got = _either(lambda: run.file_node(entry), path)
        finally:
            if keep is not None:
                keep.close()
        assert _open_fds() == before, "a descriptor was left open"
    finally:
        run.aux.shutdown()
    if kind == "regular":
        assert not isinstance(got, BaseException), got
        assert got.size == len(DATA) and run.files_read == 1
    elif kind in NOT_REGULAR:
        assert isinstance(got, SourceError), got
        assert str(got) == f"{path} is no longer a regular file"
    elif kind == "symlink":
        assert isinstance(got, OSError) and got.errno == errno.ELOOP, got  # never followed
    else:
        assert isinstance(got, OSError) and got.errno == errno.ENXIO, got
