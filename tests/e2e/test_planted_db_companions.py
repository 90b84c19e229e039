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
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from e2e_support import DATABASES, Result, Sandbox, db_dump

from phoenix_backup.sample import generate_workspace
from planted import BOUND


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


@contextmanager
def released_after(fifo: Path) -> Iterator[list[bool]]:
    """Run the block in this process (the main thread: `phx backup` and `phx watch` set signal
    handlers); a command still blocked on `fifo` after BOUND s is released (a writer opens the FIFO
    and closes it, the reader sees its end) and the block's `[True]` says so, failing the test."""
    released: list[bool] = []

    def release() -> None:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            return  # no reader waits on it (ENXIO), or it is gone
        released.append(True)

    timer = threading.Timer(BOUND, release)
    timer.start()
    try:
        yield released
    finally:
        timer.cancel()


def test_a_fifo_in_a_configured_databases_place_hangs_neither_doctor_nor_a_backup(tmp_path: Path) -> None:
    """The agent replaces its store by a FIFO: on the code before, `phx doctor` (the command run
    to find out what is wrong) blocked for ever reading the database's header. The backup saves the
    rest and exits 3 naming it (before: a warning, exit 0, as for a FIFO of the workspace), and
    `phx watch` names it too. Each command runs in this process (a blocked one is released after
    BOUND s and fails the test); PHX_TEST_HEAVY=1 runs them as processes, the watch for 1 s."""
    sb = Sandbox(tmp_path, generate_workspace(tmp_path / "sample", size="tiny", seed=13))
    db = sb.db_path(DATABASES[0])
    db.unlink()
    os.mkfifo(db)
    heavy = os.environ.get("PHX_TEST_HEAVY") == "1"

    def run(*args: str, code: int) -> Result:
        if heavy:
            return sb.phx(*args, check=code, timeout=30)
        with released_after(db) as released:
            res = sb.phx_here(*args, code=code)
        assert not released, f"phx {args[0]} blocked on the FIFO for {BOUND} s"
        return res

    res = run("doctor", code=1)
    assert "is not a regular file (a named pipe, a device or a folder), so it is no SQLite database" in res.out, res
    # A configured database that could not be saved is a partial backup (exit 3), as a planted
    # companion makes it; before, it was said in passing like a special file (exit 0).
    res = run("backup", "--json", code=3)
    assert (
        f"not saved: {DATABASES[0]}: the configured SQLite database is a named pipe now, which holds no data "
        "to back up; remove it and put the database back, or fix the path in databases.sqlite in the config"
    ) in res.err, res
    assert {i["path"] for i in res.json()["incomplete"]} == {DATABASES[0]}, res
    assert DATABASES[1] in {d["path"] for d in res.json()["databases"]}, res
    assert not list((sb.repo / "locks").iterdir())
    # `phx watch` says the same of it (before, it followed the other databases without a word).
    res = run("watch", "--duration", "1" if heavy else "0", "--no-files", "--json", code=0)
    assert f"not followed: {DATABASES[0]}: the configured SQLite database is a named pipe now" in res.out, res


def test_a_folder_in_a_configured_databases_place_is_a_part_not_saved(tmp_path: Path) -> None:
    """The agent replaces its store by a folder: no database is saved under that path. On the code
    before, the backup walked it as a folder and said nothing (exit 0) while `phx doctor` failed on
    it; now the folder's files are saved all the same and the backup names the database as a part
    not saved (exit 3), as for a FIFO in its place, and `phx watch` names it too."""
    sb = Sandbox(tmp_path, generate_workspace(tmp_path / "sample", size="tiny", seed=17))
    db = sb.db_path(DATABASES[0])
    db.unlink()
    db.mkdir()
    (db / "inside.txt").write_text("kept all the same\n")
    res = sb.phx_here("doctor", code=1)
    assert "is not a regular file (a named pipe, a device or a folder), so it is no SQLite database" in res.out, res
    res = sb.phx_here("backup", "--json", code=3)
    assert (
        f"not saved: {DATABASES[0]}: the configured SQLite database is a folder now, which holds no data "
        "to back up; remove it and put the database back, or fix the path in databases.sqlite in the config"
    ) in res.err, res
    assert {i["path"] for i in res.json()["incomplete"]} == {DATABASES[0]}, res
    sid = res.json()["id"]
    res = sb.phx_here("watch", "--duration", "0", "--no-files", "--json")
    assert f"not followed: {DATABASES[0]}: the configured SQLite database is a folder now" in res.out, res
    out = tmp_path / "out"
    sb.phx_here("restore", "--backup", sid, "--to", str(out))
    (inside,) = out.rglob("inside.txt")
    assert inside.read_text() == "kept all the same\n"


HEAVY = pytest.mark.skipif(os.environ.get("PHX_TEST_HEAVY") != "1", reason="the same path: PHX_TEST_HEAVY=1")


@pytest.mark.parametrize(
    "points_to", ["fifo", pytest.param("folder", marks=HEAVY), pytest.param("device", marks=HEAVY)]
)
def test_a_link_in_a_configured_databases_place_to_no_regular_file_is_a_part_not_saved(
    tmp_path: Path, points_to: str
) -> None:
    """A symbolic link to a FIFO, a folder or a device in the database's place: `phx doctor` fails
    it; on the code before, the backup saved the link and said nothing (exit 0) and the watch said
    nothing either. Now the backup names it as a part not saved (exit 3) and the watch too; no
    command blocks on the FIFO behind the link."""
    sb = Sandbox(tmp_path, generate_workspace(tmp_path / "sample", size="tiny", seed=19))
    db = sb.db_path(DATABASES[0])
    db.unlink()
    behind = tmp_path / "behind"
    if points_to == "fifo":
        os.mkfifo(behind)
    elif points_to == "folder":
        behind.mkdir()
    else:
        behind = Path("/dev/null")
    db.symlink_to(behind)
    kind = {"fifo": "named pipe", "folder": "folder", "device": "device"}[points_to]
    with released_after(behind if points_to == "fifo" else tmp_path / "none") as released:
        res = sb.phx_here("doctor", code=1)
        assert "is not a regular file (a named pipe, a device or a folder)" in res.out, res
        res = sb.phx_here("backup", "--json", code=3)
        assert f"not saved: {DATABASES[0]}: the configured SQLite database is a {kind} now" in res.err, res
        res = sb.phx_here("watch", "--duration", "0", "--no-files", "--json")
        assert f"not followed: {DATABASES[0]}: the configured SQLite database is a {kind} now" in res.out, res
    assert not released, "blocked on the FIFO behind the link"


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
