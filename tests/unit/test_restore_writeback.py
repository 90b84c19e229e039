"""A restored file's pages are handed to the disk while it is written, every WRITEBACK bytes."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from phoenix_backup.repo import keys
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.reader import NodeReader
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Extent, Node
from phoenix_backup.sinks import files
from phoenix_backup.storage.local import LocalBackend

KIB = 1024


def test_a_written_file_goes_to_the_disk_every_two_mib_and_its_bytes_are_the_snapshots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restore's reads of packs and its writes share one disk: a file's written pages are
    handed to it every 2 MiB (8 MiB before; the medium restore 0.03-0.09 s shorter in paired
    medians, docs/benchmarks.md), each range once and in order, so the fsync at the end waits for
    the tail only; the bytes are still those the snapshot's SHA-256 proves."""
    repo = Repository.init(LocalBackend(tmp_path / "repo"), keys.wrap_none, False)
    rng = random.Random(7)
    pieces = [rng.randbytes(256 * KIB) for _ in range(26)]  # 6.5 MiB, no block of zeros
    ids = [repo.save_blob(BlobType.DATA, piece)[0] for piece in pieces]
    repo.flush()
    data = b"".join(pieces)
    node = Node(
        name="db",
        type="file",
        size=len(data),
        content=[Extent(i, 0, 256 * KIB) for i in ids],
        sha256=hashlib.sha256(data).hexdigest(),
    )
    handed: list[tuple[int, int]] = []
    monkeypatch.setattr(files, "start_writeback", lambda _fd, offset, length: handed.append((offset, length)))
    out = os.open(tmp_path / "restored", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        files._write_node(NodeReader(repo, "workspace/db", node), out, None)
    finally:
        os.close(out)
    assert (tmp_path / "restored").read_bytes() == data
    mib = 1024 * KIB
    assert handed == [(0, 2 * mib), (2 * mib, 2 * mib), (4 * mib, 2 * mib)]


def _failing(code: int | None) -> Callable[[], Callable[[int, int, int, int], int] | None]:
    """A C library whose sync_file_range fails with errno `code` (as ctypes calls it: -1, errno
    set, no exception), or has none (`code` None: no such symbol, as on macOS or an old libc)."""

    def sync_file_range(_fd: int, _offset: int, _length: int, _flags: int) -> int:
        assert code is not None
        ctypes.set_errno(code)
        return -1

    return lambda: None if code is None else sync_file_range


@pytest.mark.parametrize(
    "code",
    [errno.ENOSYS, errno.EINVAL, errno.ESPIPE, errno.EIO, None],
    ids=["ENOSYS", "EINVAL", "ESPIPE", "EIO", "absent"],
)
def test_a_writeback_that_fails_or_is_missing_leaves_the_restored_bytes_and_holes_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], code: int | None
) -> None:
    """Held attack (adv-rpar): where sync_file_range fails (a FUSE or 9p mount, a seccomp filter,
    a kernel without it: ENOSYS, EINVAL, ESPIPE, or an EIO the fsync reports anyway) or the C
    library has none, the handing out is a hint only: files of 0 bytes, 2 MiB - 1, exactly 2 MiB
    and 2 MiB + 1, and sparse ones (a hole across the 2 MiB boundaries, one ending in a hole) are
    written whole, their holes left as holes, and nothing is said."""
    monkeypatch.setattr(files, "_sync_file_range", _failing(code))
    repo = Repository.init(LocalBackend(tmp_path / "repo"), keys.wrap_none, False)
    rng = random.Random(11)
    piece = rng.randbytes(256 * KIB)
    zeros = bytes(256 * KIB)
    data_id = repo.save_blob(BlobType.DATA, piece)[0]
    zero_id = repo.save_blob(BlobType.DATA, zeros)[0]
    repo.flush()
    mib = 1024 * KIB

    def run(extents: list[tuple[bytes, int, int]]) -> list[Extent]:
        return [Extent(blob, offset, length) for blob, offset, length in extents]

    full = [(data_id, 0, 256 * KIB)] * 8  # 2 MiB
    cases: dict[str, list[Extent]] = {
        "empty": [],
        "two_mib_minus_one": run([*full[:7], (data_id, 0, 256 * KIB - 1)]),
        "two_mib": run(full),
        "two_mib_plus_one": run([*full, (data_id, 0, 1)]),
        "sparse": run([(data_id, 0, 64 * KIB), *[(zero_id, 0, 256 * KIB)] * 24, (data_id, 0, 5)]),
        "ends_in_a_hole": run([(data_id, 0, 4 * KIB), *[(zero_id, 0, 256 * KIB)] * 20]),
    }
    blobs = {data_id: piece, zero_id: zeros}
    for name, content in cases.items():
        data = b"".join(blobs[e.blob][e.offset : e.offset + e.length] for e in content)
        node = Node(name=name, type="file", size=len(data), content=content, sha256=hashlib.sha256(data).hexdigest())
        path = tmp_path / name
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            files._write_node(NodeReader(repo, f"workspace/{name}", node), out, None)
            os.fsync(out)
        finally:
            os.close(out)
        assert path.read_bytes() == data, name
        if name in ("sparse", "ends_in_a_hole"):  # 6 and 5 MiB, of which 64 KiB and 4 KiB written
            assert path.stat().st_blocks * 512 <= 256 * KIB, (name, path.stat().st_blocks)
    assert (tmp_path / "two_mib").stat().st_size == 2 * mib
    assert capfd.readouterr() == ("", "")
