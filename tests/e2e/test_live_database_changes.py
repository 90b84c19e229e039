"""Adversarial changes to a live database between and during backups: the page size, the
journal mode and the file's size change, the file is swapped by rename, pending commits live
only in the -wal. Every backup must restore the exact bytes SQLite writes for the committed
state at that moment, pass integrity_check, or name the database as not saved."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import pytest
from e2e_support import Sandbox, integrity

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sqlite_states import checkpointed_bytes

LOGICAL = "home/.argentos/data/dashboard.db"


def _fresh(db: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(db) + suffix).unlink(missing_ok=True)


def _fill(con: sqlite3.Connection, start: int, count: int) -> None:
    con.execute("BEGIN")
    for i in range(start, start + count):
        con.execute("INSERT INTO t(id, v) VALUES (?, ?)", (i, os.urandom(300 + i % 700)))
    con.execute("COMMIT")


def test_structural_changes_between_backups_restore_sqlites_own_bytes(sandbox: Sandbox, tmp_path: Path) -> None:
    """Each step leaves a connection open (so its commits stay in the -wal where WAL mode is on)
    and backs up: a growing WAL, a shrinking VACUUM in WAL mode (the file then holds more pages
    than the state), a page size change with VACUUM in rollback-journal mode, back to WAL, an
    auto_vacuum database that shrinks, and a file swapped in by rename. The parent's page state
    is reused by every next backup, whatever its page size was."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _fresh(db)
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")

    def wal_step() -> None:
        pass

    def shrink_in_wal() -> None:
        con.execute("DELETE FROM t WHERE id % 3 <> 0")
        con.execute("VACUUM")

    def page_size_change() -> None:
        con.execute("PRAGMA journal_mode=DELETE")
        con.execute("PRAGMA page_size=1024")
        con.execute("VACUUM")
        _fill(con, 5000, 50)

    def back_to_wal() -> None:
        con.execute("PRAGMA journal_mode=WAL")
        _fill(con, 6000, 80)

    def auto_vacuum_shrink() -> None:
        con.execute("PRAGMA journal_mode=DELETE")
        con.execute("PRAGMA page_size=8192")
        con.execute("PRAGMA auto_vacuum=FULL")
        con.execute("VACUUM")
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("DELETE FROM t WHERE id % 2 = 0")

    steps = [wal_step, shrink_in_wal, page_size_change, back_to_wal, auto_vacuum_shrink]
    try:
        _fill(con, 0, 400)
        for n, step in enumerate(steps):
            step()
            _fill(con, 10_000 + 100 * n, 20)
            expected = checkpointed_bytes(db, tmp_path / f"oracle-{n}")
            doc = sb.backup()
            dest = tmp_path / f"restored-{n}"
            sb.restore_to(doc["id"], dest)
            assert integrity(dest / LOGICAL) == ["ok"], step.__name__
            assert (dest / LOGICAL).read_bytes() == expected, f"after {step.__name__}"
    finally:
        con.close()
    # The file swapped for another one (VACUUM INTO, then rename), its stale -wal/-shm gone.
    other = tmp_path / "other.db"
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute(f"VACUUM INTO '{other}'")
    finally:
        con.close()
    extra = sqlite3.connect(other, isolation_level=None)
    try:
        _fill(extra, 90_000, 30)
    finally:
        extra.close()
    os.replace(other, db)
    expected = checkpointed_bytes(db, tmp_path / "oracle-swap")
    doc = sb.backup()
    sb.restore_to(doc["id"], tmp_path / "restored-swap")
    assert (tmp_path / "restored-swap" / LOGICAL).read_bytes() == expected


@pytest.mark.skipif(os.environ.get("PHX_TEST_HEAVY") != "1", reason="waits the 30 s busy timeout")
def test_a_writer_in_exclusive_locking_mode_leaves_the_database_named_not_saved(sandbox: Sandbox) -> None:
    """An application holding the database with `locking_mode=EXCLUSIVE` lets no reader in: the
    backup waits the busy timeout, then names the database as not saved (exit 3) and keeps the
    rest."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _fresh(db)
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("PRAGMA locking_mode=EXCLUSIVE")
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        _fill(con, 0, 50)
        doc = sb.backup(check=3)
    finally:
        con.close()
    incomplete = {i["path"]: i["error"] for i in doc["incomplete"]}
    assert set(incomplete) == {LOGICAL}, incomplete
    assert "locked" in incomplete[LOGICAL]
    assert doc["files"] > 0
