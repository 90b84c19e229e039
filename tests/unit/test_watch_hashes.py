"""The watch's page hashes (ops/watch.py `WorkingHashes`, `_hash_all`, `_update`, `_differ`)
against a database whose changed pages sit at the edges of a read (256 pages) and of a
comparison block (4096 pages), and a cache folder that takes no file: the pages found changed
are exactly those whose bytes differ."""

from __future__ import annotations

import resource
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from phoenix_backup.ops.watch import WorkingHashes, _differ, _hash_all, _update
from phoenix_backup.sources.sqlite_capture import SqliteCapture
from sqlite_states import pages_differing

KEY = bytes(range(32))
PAGE = 1024
EDGES = (2, 255, 256, 257, 4095, 4096, 4097, 4098, 4400)


def _database(path: Path, pages: int) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute(f"PRAGMA page_size={PAGE}")
    con.execute("PRAGMA journal_mode=delete")
    con.execute("CREATE TABLE t(b BLOB)")
    con.execute("INSERT INTO t VALUES (zeroblob(?))", ((pages - 3) * PAGE,))
    con.close()


def _poke(path: Path, pages: tuple[int, ...], byte: int) -> None:
    """One byte of each of `pages` (from 1) changed in place, as a writer's commit would."""
    with open(path, "r+b") as f:
        for p in pages:
            f.seek((p - 1) * PAGE + PAGE // 2)
            f.write(bytes([byte]))


def _check(folder: Path, db: Path) -> None:
    capture = SqliteCapture(db)
    try:
        image = capture.capture()
        before, old = image[:], _hash_all(image, KEY, folder)
        capture.release()
        for n, pages in enumerate([(4096,), (4097,), (256, 257), EDGES, ()]):
            _poke(db, pages, n + 1)
            image = capture.capture()
            after, new = image[:], _hash_all(image, KEY, folder)
            found = _differ(old, new, image.page_count)
            assert found == pages_differing(before, after, PAGE) == set(pages)
            # In place, the changed pages only: the same hashes as a whole pass.
            _update(old, image, frozenset(pages), KEY)
            assert old[:] == new[:]
            capture.release()
            new.close()
            before = after
        old.close()
    finally:
        capture.close()


def test_changed_pages_at_every_block_edge_are_found(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    _database(db, 4400)
    _check(tmp_path / "cache", db)


def test_a_cache_folder_that_takes_no_file_keeps_the_hashes_in_memory(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    _database(db, 4400)
    blocked = tmp_path / "not-a-folder"
    blocked.write_bytes(b"")  # a file where the folder should be: no file can be made there
    hashes = WorkingHashes(blocked, b"\x01" * 32)
    assert hashes.failure is not None and hashes[:] == b"\x01" * 32
    hashes.resize(64)
    hashes.put(48, b"\x02" * 16)
    assert hashes[:] == b"\x01" * 32 + bytes(16) + b"\x02" * 16
    _check(blocked, db)


def test_hashes_that_outgrow_the_file_move_to_memory_whole(tmp_path: Path) -> None:
    """A write the file takes only in part (`ulimit -f`, a full disk) moves what it held to memory."""
    hashes = WorkingHashes(tmp_path, b"\x03" * 48)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (56, hard))  # Python ignores SIGXFSZ: a short write
    try:
        hashes.put(32, b"\x04" * 32)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert hashes.failure is not None and hashes.fd == -1
    assert hashes[:] == b"\x03" * 32 + b"\x04" * 32 and len(hashes) == 64
