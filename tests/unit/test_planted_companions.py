"""A `-wal` or `-journal` planted beside a live SQLite database that is not a regular file: a FIFO
(SQLite opens a hot journal read-only, which blocks on a FIFO until someone writes to it; Phoenix
read the `-wal`'s header the same way) or a symbolic link (docs/security.md, "A compromised or
misled agent on the host").

On the code before, each call below blocked for ever on the FIFO: the backup's skip-if-unchanged
look (`source_stat`), the capture every backup and `phx watch` make, the restore's look at the
live database it replaces (`probe`) and a dry run's row deltas. Each runs in a thread here; one
still blocked after BOUND seconds is released (the FIFO opened for writing) and the test fails.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from pathlib import Path

import pytest

from phoenix_backup.errors import ExportError, MergeFailed, SourceError
from phoenix_backup.ops.export import _file_reader
from phoenix_backup.sinks import sqlite_live
from phoenix_backup.sinks.sqlite_merge import SqliteRowSource, merge_database
from phoenix_backup.sources.files import Entry
from phoenix_backup.sources.sqlite import planted_companion, source_stat
from phoenix_backup.sources.sqlite_capture import CaptureError, SqliteCapture
from planted import backup_run
from planted import bounded as _bounded


def _database(path: Path, journal: str) -> Path:
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA journal_mode={journal}")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    con.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i}",) for i in range(20)])
    con.commit()
    con.close()
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


@pytest.mark.parametrize("suffix", ["-wal", "-journal"])
def test_the_backups_look_at_a_database_refuses_a_planted_fifo(tmp_path: Path, suffix: str) -> None:
    db = _database(tmp_path / "memory.db", "wal")
    os.mkfifo(f"{db}{suffix}")
    _, exc = _bounded(lambda: source_stat(db), Path(f"{db}{suffix}"))
    assert isinstance(exc, SourceError)
    assert f"{db}{suffix} is not a regular file" in str(exc)


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_a_capture_refuses_a_fifo_planted_as_a_hot_journal(tmp_path: Path, journal: str) -> None:
    db = _database(tmp_path / "memory.db", journal)
    fifo = Path(f"{db}-journal")
    os.mkfifo(fifo)

    def capture() -> None:
        with SqliteCapture(db) as cap:
            cap.capture()

    _, exc = _bounded(capture, fifo)
    assert isinstance(exc, CaptureError)
    assert f"{fifo} is not a regular file" in str(exc)
    assert fifo.exists()  # a backup deletes nothing in the workspace


def test_a_symbolic_link_planted_as_a_wal_is_not_read(tmp_path: Path) -> None:
    db = _database(tmp_path / "memory.db", "wal")
    secret = tmp_path / "id_ed25519"
    secret.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    os.symlink(secret, f"{db}-wal")
    with pytest.raises(SourceError, match="-wal is a symbolic link"):
        source_stat(db)
    with pytest.raises(CaptureError, match="-wal is a symbolic link"), SqliteCapture(db) as cap:
        cap.capture()
    assert secret.read_bytes() == b"-----BEGIN OPENSSH PRIVATE KEY-----\n"


def test_a_restore_replaces_a_database_beside_a_planted_fifo_and_a_dry_run_compares_it(tmp_path: Path) -> None:
    live = _database(tmp_path / "memory.db", "delete")
    copy = _database(tmp_path / "copy.db", "delete")
    con = sqlite3.connect(copy)
    con.execute("DELETE FROM t WHERE id <= 5")
    con.commit()
    con.close()
    fifo = Path(f"{live}-journal")
    os.mkfifo(fifo)
    state, exc = _bounded(lambda: sqlite_live.probe(str(live)), fifo)
    assert exc is None
    # Not readable through SQLite: the restore replaces it by rename and removes the FIFO with the
    # other companions of the file it replaces.
    assert state.exists and not state.readable
    assert "-journal is not a regular file" in state.reason
    deltas, exc = _bounded(lambda: sqlite_live.row_deltas(str(copy), str(live)), fifo)
    assert exc is None
    assert deltas["t"].to_json() == {"added": 0, "removed": 5, "changed": 0}


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_merge_into_a_store_beside_a_planted_fifo_is_refused(tmp_path: Path, dry_run: bool) -> None:
    """`phx restore --merge` and `phx import` write into the live store (or read it, in a dry run): on the
    code before, SQLite blocked for ever on the FIFO."""
    live = _database(tmp_path / "memory.db", "delete")
    copy = _database(tmp_path / "copy.db", "delete")
    before = live.read_bytes()
    fifo = Path(f"{live}-journal")
    os.mkfifo(fifo)
    source = SqliteRowSource(copy)
    _, exc = _bounded(lambda: merge_database(source, "memory.db", live, mode="skip", dry_run=dry_run), fifo)
    assert isinstance(exc, MergeFailed)
    assert f"memory.db was not merged: {fifo} is not a regular file" in str(exc)
    assert live.read_bytes() == before


def _hot_journal_naming(db: Path, super_journal: Path) -> None:
    """A `-journal` beside `db` as SQLite leaves one after a crash in a commit to several
    databases: a header (the database's own page size and count) with no page records, then the
    super-journal's name (pager.c's layout)."""
    raw = int.from_bytes(db.read_bytes()[16:18], "big")
    page_size = 65536 if raw == 1 else raw
    magic = bytes.fromhex("d9d505f920a163d7")
    pages = db.stat().st_size // page_size
    header = (magic + struct.pack(">IIIII", 0, 12345, pages, 512, page_size)).ljust(512, b"\0")
    name = os.fsencode(super_journal)
    trailer = struct.pack(">I", 0x40000000 // page_size + 1) + name
    trailer += struct.pack(">II", len(name), sum(name) & 0xFFFFFFFF) + magic
    Path(f"{db}-journal").write_bytes(header + trailer)


def test_a_capture_refuses_a_planted_journal_that_names_another_file(tmp_path: Path) -> None:
    """Every backup and `phx watch` capture opens the database to write (SQLite may need to), so
    SQLite rolled a planted journal back: on the code before, a FIFO it named as its
    super-journal blocked the backup for ever, and a regular file it named was deleted."""
    db = _database(tmp_path / "memory.db", "delete")
    fifo = tmp_path / "memory.db-mjABCDEF901"
    os.mkfifo(fifo)
    _hot_journal_naming(db, fifo)

    def capture() -> None:
        with SqliteCapture(db) as cap:
            cap.capture()

    _, exc = _bounded(capture, fifo)
    assert isinstance(exc, CaptureError), exc
    assert f"names '{fifo}' as its super-journal, which SQLite never made" in str(exc)
    secret = tmp_path / "id_ed25519"
    secret.write_bytes(b"key\n")
    _hot_journal_naming(db, secret)
    _, exc = _bounded(capture, secret)
    assert secret.read_bytes() == b"key\n"
    assert isinstance(exc, CaptureError), exc


def test_a_merge_refuses_a_planted_journal_that_names_a_fifo_as_its_super_journal(tmp_path: Path) -> None:
    """A regular `-journal`, planted, naming a FIFO as its super-journal: SQLite, opening the store
    to write, rolls the journal back and then opens the FIFO, for ever (on the code before,
    `phx restore --merge` and `phx import` blocked there)."""
    live = _database(tmp_path / "memory.db", "delete")
    copy = _database(tmp_path / "copy.db", "delete")
    before = live.read_bytes()
    fifo = tmp_path / "memory.db-mjABCDEF901"
    os.mkfifo(fifo)
    _hot_journal_naming(live, fifo)
    source = SqliteRowSource(copy)
    _, exc = _bounded(lambda: merge_database(source, "memory.db", live, mode="skip", dry_run=False), fifo)
    assert isinstance(exc, MergeFailed), exc
    assert f"names '{fifo}' as its super-journal, which SQLite never made" in str(exc)
    assert live.read_bytes() == before


def test_a_planted_journal_cannot_make_sqlite_delete_the_file_it_names(tmp_path: Path) -> None:
    """The same journal naming a regular file: SQLite, finding no journal that file lists pointing
    back at it, deletes it after the rollback. On the code before, a merge deleted the file named
    (here a private key); now the store is refused and the file kept. SQLite's own super-journal
    (named after its database, `-mj` and 9 hex digits) is still rolled back as SQLite does."""
    live = _database(tmp_path / "memory.db", "delete")
    copy = _database(tmp_path / "copy.db", "delete")
    secret = tmp_path / "id_ed25519"
    secret.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    _hot_journal_naming(live, secret)
    # The source is opened in the thread that reads it (SQLite's connections stay in theirs).
    call = lambda: merge_database(SqliteRowSource(copy), "memory.db", live, mode="skip", dry_run=False)  # noqa: E731
    _, exc = _bounded(call, secret)
    assert secret.read_bytes() == b"-----BEGIN OPENSSH PRIVATE KEY-----\n"
    assert isinstance(exc, MergeFailed), exc
    assert f"names '{secret}' as its super-journal" in str(exc)
    own = tmp_path / "memory.db-mj0A1B2C93D"
    own.write_bytes(b"")
    _hot_journal_naming(live, own)
    assert planted_companion(live) is None
    merge_database(SqliteRowSource(copy), "memory.db", live, mode="skip", dry_run=False)
    assert not Path(f"{live}-journal").exists()


def test_a_workspace_file_swapped_for_a_fifo_after_the_scan_is_not_waited_on(tmp_path: Path) -> None:
    """The scan saw a regular file; before the backup reads it, an agent puts a FIFO in its place.
    The read's open blocked on it (the backup then holding its lock for ever); now it is refused."""
    path = tmp_path / "notes.md"
    path.write_text("a note\n")
    entry = Entry("workspace/notes.md", path, "file", path.stat())
    path.unlink()
    os.mkfifo(path)
    run = backup_run(tmp_path)
    _, exc = _bounded(lambda: run.file_node(entry), path)
    assert isinstance(exc, SourceError), exc
    assert f"{path} is no longer a regular file" in str(exc)


def test_an_exported_file_swapped_for_a_fifo_after_the_listing_is_not_waited_on(tmp_path: Path) -> None:
    """`phx export` of the live workspace lists its files, then reads them: on the code before, a
    FIFO an agent put in a listed file's place blocked that read for ever."""
    path = tmp_path / "MEMORY.md"
    path.write_text("a note\n")
    read = _file_reader(path)
    assert b"".join(read()) == b"a note\n"
    path.unlink()
    os.mkfifo(path)
    _, exc = _bounded(lambda: b"".join(read()), path)
    assert isinstance(exc, ExportError), exc
    assert f"{path} is no longer a regular file" in str(exc)
