"""A restored file's pages are handed to the disk while it is written, every WRITEBACK bytes."""

from __future__ import annotations

import hashlib
import os
import random
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
