"""A FIFO planted beside a configured SQLite database as its `-journal` or `-wal`, by the agent
the workspace belongs to (docs/security.md, "A compromised or misled agent on the host").

On the code before, `phx backup` blocked for ever on it (SQLite opens a hot journal read-only,
which waits for a writer of the FIFO; Phoenix read the `-wal`'s header the same way), holding and
refreshing its repository lock, so every later prune and key change was locked out too; and
`phx restore` in place, the command run after an agent wrecked its store, blocked the same way on
the live database it was to replace. Now the backup saves everything else and names the file (exit
3, no lock left), and the restore replaces the database, the FIFO removed with its companions.
(tests/unit/test_planted_companions.py: the symbolic-link case, a dry run's row deltas.)
"""

from __future__ import annotations

import os
import sqlite3
import struct
from pathlib import Path

import pytest
from e2e_support import DATABASES, Sandbox, db_dump

from phoenix_backup.sample import generate_workspace


@pytest.mark.parametrize("suffix", ["-journal", "-wal"])
def test_a_fifo_planted_beside_a_database_hangs_neither_a_backup_nor_a_restore(tmp_path: Path, suffix: str) -> None:
    sb = Sandbox(tmp_path, generate_workspace(tmp_path / "sample", size="tiny", seed=11))
    sb.backup()
    db = sb.db_path(DATABASES[0])
    saved = db_dump(db)
    con = sqlite3.connect(db)
    table = con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name LIMIT 1").fetchone()[0]
    con.execute(f'DELETE FROM "{table}"')
    con.commit()
    con.close()
    for companion in ("-wal", "-shm", "-journal"):
        Path(f"{db}{companion}").unlink(missing_ok=True)
    fifo = Path(f"{db}{suffix}")
    os.mkfifo(fifo)
    # Bounded: on the code before, both commands blocked until these timeouts.
    res = sb.phx("backup", check=3, timeout=30)
    assert f"{fifo} is not a regular file" in res.err, res
    assert not list((sb.repo / "locks").iterdir())
    sb.phx("restore", "--latest", "--yes", check=0, timeout=30)
    assert db_dump(db) == saved
    assert not fifo.exists()


def test_a_fifo_named_like_a_database_beside_a_wal_does_not_hang_the_scan(tmp_path: Path) -> None:
    """A file named `*-wal` makes the scan look at the database it would belong to before that
    one's type is known: on the code before, a FIFO there (or a link to one) blocked every backup
    for ever in its scan."""
    sb = Sandbox(tmp_path, generate_workspace(tmp_path / "sample", size="tiny", seed=12))
    os.mkfifo(sb.workspace / "notes.db")
    (sb.workspace / "notes.db-wal").write_bytes(b"x" * 32)
    os.mkfifo(tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", sb.workspace / "linked.db")
    (sb.workspace / "linked.db-journal").write_bytes(b"y" * 32)
    res = sb.phx("backup", check=0, timeout=30)
    assert "not saved: workspace/notes.db (a named pipe holds no data to back up)" in res.out, res
    sb.restore_to("latest", tmp_path / "back")
    back = tmp_path / "back" / "workspace"
    assert (back / "notes.db-wal").read_bytes() == b"x" * 32
    assert os.readlink(back / "linked.db") == str(tmp_path / "elsewhere")


def test_a_fifo_in_a_configured_databases_place_hangs_neither_doctor_nor_a_backup(tmp_path: Path) -> None:
    """The agent replaces its store by a FIFO: on the code before, `phx doctor` (the command run
    to find out what is wrong) blocked for ever reading the database's header. The backup saves the
    rest and exits 3 naming it (before: a warning, exit 0, as for a FIFO of the workspace), and
    `phx watch` names it too."""
    sb = Sandbox(tmp_path, generate_workspace(tmp_path / "sample", size="tiny", seed=13))
    db = sb.db_path(DATABASES[0])
    db.unlink()
    os.mkfifo(db)
    res = sb.phx("doctor", check=1, timeout=30)
    assert "is not a regular file (a named pipe, a device or a folder), so it is no SQLite database" in res.out, res
    # A configured database that could not be saved is a partial backup (exit 3), as a planted
    # companion makes it; before, it was said in passing like a special file (exit 0).
    res = sb.phx("backup", "--json", check=3, timeout=30)
    assert (
        f"not saved: {DATABASES[0]}: the configured SQLite database is a named pipe now, which holds no data "
        "to back up; remove it and put the database back, or fix the path in databases.sqlite in the config"
    ) in res.err, res
    assert {i["path"] for i in res.json()["incomplete"]} == {DATABASES[0]}, res
    assert DATABASES[1] in {d["path"] for d in res.json()["databases"]}, res
    assert not list((sb.repo / "locks").iterdir())
    # `phx watch` says the same of it (before, it followed the other databases without a word).
    res = sb.phx("watch", "--duration", "1", "--no-files", "--json", check=0, timeout=30)
    assert f"not followed: {DATABASES[0]}: the configured SQLite database is a named pipe now" in res.out, res


def test_a_planted_journal_naming_a_file_neither_deletes_it_nor_hangs_a_backup(tmp_path: Path) -> None:
    """A regular `-journal` planted beside a configured database, naming a file outside the
    workspace as its super-journal: on the code before, the backup's capture (which opens the
    database to write) let SQLite roll it back and delete that file; naming a FIFO, it blocked."""
    sb = Sandbox(tmp_path, generate_workspace(tmp_path / "sample", size="tiny", seed=15))
    sb.backup()
    db = sb.db_path(DATABASES[0])
    saved = db_dump(db)
    con = sqlite3.connect(db)  # changed since: the next backup captures it
    table = con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name LIMIT 1").fetchone()[0]
    con.execute(f'DELETE FROM "{table}"')
    con.commit()
    con.close()
    for companion in ("-wal", "-shm"):
        Path(f"{db}{companion}").unlink(missing_ok=True)
    secret = tmp_path / "id_ed25519"
    secret.write_bytes(b"key\n")
    raw = int.from_bytes(db.read_bytes()[16:18], "big")
    page_size = 65536 if raw == 1 else raw
    magic = bytes.fromhex("d9d505f920a163d7")
    header = magic + struct.pack(">IIIII", 0, 1, db.stat().st_size // page_size, 512, page_size)
    name = os.fsencode(secret)
    trailer = struct.pack(">I", 0x40000000 // page_size + 1) + name
    trailer += struct.pack(">II", len(name), sum(name) & 0xFFFFFFFF) + magic
    journal = Path(f"{db}-journal")
    journal.write_bytes(header.ljust(512, b"\0") + trailer)
    res = sb.phx("backup", check=None, timeout=30)
    assert secret.read_bytes() == b"key\n"
    assert res.code == 3, res
    assert f"{journal} names '{secret}' as its super-journal, which SQLite never made" in res.err, res
    assert not list((sb.repo / "locks").iterdir())
    sb.phx("restore", "--latest", "--yes", check=0, timeout=30)
    assert db_dump(db) == saved
    assert not journal.exists()
    assert secret.read_bytes() == b"key\n"


def test_doctor_names_a_planted_companion_the_backup_refuses(tmp_path: Path) -> None:
    """On the code before, `phx doctor` called a database beside a FIFO `-wal` a "readable SQLite
    database" while every backup refused it (exit 3)."""
    sb = Sandbox(tmp_path, generate_workspace(tmp_path / "sample", size="tiny", seed=16))
    db = sb.db_path(DATABASES[0])
    for companion in ("-wal", "-shm", "-journal"):
        Path(f"{db}{companion}").unlink(missing_ok=True)
    os.mkfifo(f"{db}-wal")
    res = sb.phx("doctor", check=1, timeout=30)
    assert f"{db}-wal is not a regular file, which SQLite never makes: the database is not opened" in res.out, res
    assert f"{db}: readable SQLite database" not in res.out, res
