"""A capture whose files are changed under it by name, between two captures.

A database moved over the one a capture holds (an application's atomic replace) leaves the old
file's connections behind; the last of them to close deletes `-wal` and `-shm` by name, and the
next connection makes new ones. A capture kept for hours (`phx watch`) must follow: it read its
wal-index through a descriptor of the deleted `-shm`, found nobody else locking it, and refused
every capture from then on, saying the file was read-only for this user."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from phoenix_backup.sources.sqlite_capture import SqliteCapture


def _rows(image_bytes: bytes, scratch: Path) -> tuple[list[str], list[int]]:
    path = scratch / "image.db"
    path.write_bytes(image_bytes)
    con = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return [r[0] for r in con.execute("PRAGMA integrity_check")], [r[0] for r in con.execute("SELECT x FROM t")]
    finally:
        con.close()
        path.unlink()


def _commit(db: Path, x: int) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("INSERT INTO t VALUES (?)", (x,))
    finally:
        con.close()


def test_a_wal_index_deleted_by_name_between_captures_is_followed(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t(x INTEGER)")
    con.execute("INSERT INTO t VALUES (1)")
    con.close()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with SqliteCapture(db) as capture:
        image = capture.capture()
        assert _rows(image[0 : len(image)], scratch) == (["ok"], [1])
        capture.release()
        os.unlink(f"{db}-shm")  # as the last connection to a file moved away does, by name
        _commit(db, 2)  # a new connection: a new -shm
        for expected in ([1, 2], [1, 2, 3]):
            image = capture.capture()
            assert _rows(image[0 : len(image)], scratch) == (["ok"], expected)
            capture.release()
            _commit(db, 3)
