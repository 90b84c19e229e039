"""An in-place restore while the agent keeps writing (no gateway stops it): what the agent writes
after the safety snapshot was taken is never overwritten or deleted by the restore, so the undo
(restoring the safety snapshot) never lacks it. Before, a file the agent changed, or created,
between the safety snapshot and the restore's rename was replaced: the agent's bytes were in no
snapshot at all."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox

from phoenix_backup.ops import restore as restore_op
from phoenix_backup.ops import safety


def test_what_the_agent_writes_after_the_safety_snapshot_is_never_replaced(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb = backed_up
    soul = sb.workspace / "SOUL.md"
    snapshot_soul = soul.read_bytes()
    soul.write_bytes(b"changed before the restore\n")
    note = next(p for p in sorted((sb.workspace / "memory").iterdir()) if p.is_file())
    note.unlink()  # the restore would create it; the agent writes it first
    real_take = safety.take

    def take_then_agent_writes(*args: Any, **kwargs: Any) -> Any:
        taken = real_take(*args, **kwargs)
        soul.write_bytes(b"the agent's work, written after the safety snapshot\n")
        note.write_bytes(b"a note the agent wrote after the safety snapshot\n")
        return taken

    monkeypatch.setattr(safety, "take", take_then_agent_writes)
    res = sb.phx_here("restore", "--latest", "--yes", "--json", code=3)
    doc = res.json()
    assert soul.read_bytes() == b"the agent's work, written after the safety snapshot\n", res
    assert note.read_bytes() == b"a note the agent wrote after the safety snapshot\n"
    assert sorted(e["path"] for e in doc["errors"]) == ["workspace/SOUL.md", f"workspace/memory/{note.name}"], doc
    assert all("changed since the safety snapshot" in e["error"] for e in doc["errors"])
    monkeypatch.undo()
    # Run again, the restore takes its own safety snapshot of the agent's work and restores.
    again = sb.phx_here("restore", "--latest", "--yes", "--json").json()
    assert soul.read_bytes() == snapshot_soul
    sb.phx_here("restore", "--backup", again["safetySnapshot"]["id"], "--yes")
    assert soul.read_bytes() == b"the agent's work, written after the safety snapshot\n"
    assert note.read_bytes() == b"a note the agent wrote after the safety snapshot\n"


def _rows(db: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as con:
        return con.execute("SELECT name FROM phx_agent ORDER BY name").fetchall()


def _commit(db: Path, *sql: str) -> None:
    with contextlib.closing(sqlite3.connect(db)) as con:
        for statement in sql:
            con.execute(statement)
        con.commit()


def _agent_commits_after_the_safety_snapshot(monkeypatch: pytest.MonkeyPatch, db: Path, *sql: str) -> None:
    """The restore's safety snapshot, then at once the agent's commit of `sql` into `db`."""
    real_take = safety.take

    def take_then_agent_commits(*args: Any, **kwargs: Any) -> Any:
        taken = real_take(*args, **kwargs)
        _commit(db, *sql)
        return taken

    monkeypatch.setattr(safety, "take", take_then_agent_commits)


def _left_and_named(doc: dict[str, Any], path: str) -> None:
    assert [e["path"] for e in doc["errors"]] == [path], doc
    assert "changed since the safety snapshot" in doc["errors"][0]["error"]


AFTER = "INSERT INTO phx_agent VALUES ('after the safety snapshot')"


def test_a_row_the_agent_commits_after_the_safety_snapshot_is_never_lost(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race for a database: a row the agent commits into memory.db (WAL mode) between the
    safety snapshot and the restore's write into it. Before, the restore wrote the snapshot's copy
    over it (exit 0) and the row was in no snapshot: after the undo it was gone for good. Now the
    database is left as it is, named (exit 3): the next restore's safety snapshot holds the row."""
    sb = backed_up
    db = sb.layout.memory_db
    with contextlib.closing(sqlite3.connect(db)) as con:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    _commit(db, "CREATE TABLE phx_agent(name TEXT)", "INSERT INTO phx_agent VALUES ('before the restore')")
    _agent_commits_after_the_safety_snapshot(monkeypatch, db, AFTER)
    _left_and_named(sb.phx_here("restore", "--latest", "--yes", "--json", code=3).json(), "home/.argentos/memory.db")
    assert _rows(db) == [("after the safety snapshot",), ("before the restore",)]


def test_a_database_the_agent_commits_to_after_the_safety_snapshot_is_never_deleted(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database the snapshot lacks is deleted by `restore --delete`: a row committed into it after the
    safety snapshot read it was deleted with it (exit 0), in no snapshot. Now it is left, named."""
    sb = backed_up
    db = sb.workspace / "scratch.db"
    _commit(
        db,
        "PRAGMA journal_mode=WAL",
        "CREATE TABLE phx_agent(name TEXT)",
        "INSERT INTO phx_agent VALUES ('before the restore')",
    )
    _agent_commits_after_the_safety_snapshot(monkeypatch, db, AFTER)
    doc = sb.phx_here("restore", "--latest", "--delete", "--yes", "--json", code=3).json()
    _left_and_named(doc, "workspace/scratch.db")
    assert _rows(db) == [("after the safety snapshot",), ("before the restore",)]


def test_a_database_the_agent_creates_after_the_safety_snapshot_is_never_written_over(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """memory.db is absent, so the restore creates it; the agent creates it first, after the safety
    snapshot (which had none). Before, the restore wrote the snapshot's copy into the agent's new
    database through the backup API (exit 0), and its rows were in no snapshot."""
    sb = backed_up
    db = sb.layout.memory_db
    for companion in ("", "-wal", "-shm"):
        Path(f"{db}{companion}").unlink(missing_ok=True)
    _agent_commits_after_the_safety_snapshot(monkeypatch, db, "CREATE TABLE phx_agent(name TEXT)", AFTER)
    _left_and_named(sb.phx_here("restore", "--latest", "--yes", "--json", code=3).json(), "home/.argentos/memory.db")
    assert _rows(db) == [("after the safety snapshot",)]


def test_a_same_size_rewrite_that_keeps_the_old_mtime_is_never_replaced(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent rewrites SOUL.md after the safety snapshot with as many bytes, and its mtime is
    the old one (`os.utime` back to it, or a write within one tick of a coarse clock: many file
    systems stamp in jiffies). Before, the check compared only inode, mode, size and mtime: the
    restore replaced the agent's bytes (exit 0), which were in no snapshot. Now a small file's
    bytes are compared too (and any file's ctime): it is left and named (exit 3)."""
    sb = backed_up
    soul = sb.workspace / "SOUL.md"
    soul.write_bytes(b"B" * 40)
    real_take = safety.take

    def take_then_agent_rewrites(*args: Any, **kwargs: Any) -> Any:
        taken = real_take(*args, **kwargs)
        st = soul.stat()
        with soul.open("r+b") as f:  # in place: the same inode
            f.write(b"A" * 40)
        os.utime(soul, ns=(st.st_atime_ns, st.st_mtime_ns))
        return taken

    monkeypatch.setattr(safety, "take", take_then_agent_rewrites)
    doc = sb.phx_here("restore", "--latest", "--yes", "--json", code=3).json()
    assert soul.read_bytes() == b"A" * 40
    assert [e["path"] for e in doc["errors"]] == ["workspace/SOUL.md"], doc
    assert "changed since the safety snapshot" in doc["errors"][0]["error"]


def test_a_large_hard_linked_file_rewritten_with_its_mtime_set_back_is_never_replaced(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file over 1 MiB with two names, rewritten in place by the agent after the safety snapshot
    with as many bytes, its mtime set back. Its ctime is not compared (the restore's own rename
    over one name changes the other's), and before, its bytes were not either: the restore
    replaced both names (exit 0) and the agent's bytes were in no snapshot. Now a file with
    several names is compared by its bytes: both are left and named (exit 3)."""
    sb = backed_up
    size = 1024 * 1024 + 1
    big, other = sb.workspace / "big.bin", sb.workspace / "big-link.bin"
    big.write_bytes(b"A" * size)
    os.link(big, other)
    sb.phx_here("backup")
    with big.open("r+b") as f:
        f.write(b"B" * size)
    real_take = safety.take

    def take_then_agent_rewrites(*args: Any, **kwargs: Any) -> Any:
        taken = real_take(*args, **kwargs)
        st = big.stat()
        with big.open("r+b") as f:
            f.write(b"C" * size)
        os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
        return taken

    monkeypatch.setattr(safety, "take", take_then_agent_rewrites)
    doc = sb.phx_here("restore", "--latest", "--yes", "--json", code=3).json()
    assert big.read_bytes() == other.read_bytes() == b"C" * size
    assert sorted(e["path"] for e in doc["errors"]) == ["workspace/big-link.bin", "workspace/big.bin"], doc


def _decoy(folder: Path) -> Path:
    """`folder` with a WAL database memory.db, a -wal and no -shm: a reader creates the -shm."""
    folder.mkdir()
    with contextlib.closing(sqlite3.connect(folder / "memory.db")) as con:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE t(x)")
        con.commit()
    (folder / "memory.db-wal").write_bytes(b"")
    assert not (folder / "memory.db-shm").exists()
    return folder


def test_the_database_noted_before_the_safety_snapshot_is_never_read_through_a_swapped_link(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What memory.db holds is noted before the safety snapshot; whoever can change a folder on its
    path (another local user, a root restore's workspace owner) swaps that folder for a link to
    another folder just then. Before, the note was read through the link by path: the restore's
    SQLite opened the other folder's WAL database and created its -shm there (as root: a root-owned
    file in a folder of the other user's choosing). Now it is read through the folders the restore
    opens one by one without following links (sinks/sqlite_folder.py): the link is never followed,
    and memory.db is left as it is, named (exit 3)."""
    sb = backed_up
    home = sb.layout.memory_db.parent
    (sb.workspace / "SOUL.md").write_bytes(b"changed before the restore\n")
    _commit(sb.layout.memory_db, "CREATE TABLE phx_agent(name TEXT)")
    decoy = _decoy(home.parent / "decoy")
    real = home.with_name(home.name + "-real")
    real_live_state = restore_op.live_state
    real_take = safety.take

    def swap_then_note(path: Path) -> Any:
        if not real.exists():
            home.rename(real)
            home.symlink_to(decoy)
        return real_live_state(path)

    def swap_back_then_take(*args: Any, **kwargs: Any) -> Any:
        home.unlink()
        real.rename(home)
        return real_take(*args, **kwargs)

    monkeypatch.setattr(restore_op, "live_state", swap_then_note)
    monkeypatch.setattr(safety, "take", swap_back_then_take)
    doc = sb.phx_here("restore", "--latest", "--yes", "--json", code=3).json()
    assert not (decoy / "memory.db-shm").exists()
    _left_and_named(doc, "home/.argentos/memory.db")
    assert _rows(sb.layout.memory_db) == []


def test_the_plans_first_look_at_a_database_is_never_through_a_swapped_link(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan looks at each database it overwrites first (can the backup API write it: its page
    size, WAL mode), and a dry run previews its rows; whoever can change a folder on its path swaps
    it for a link to another folder just then. Before, that look opened the database by path: SQLite
    followed the link and created the other folder's -shm (as root: a root-owned file where another
    user chose). Now it goes through the folders the restore opens without following links, as the
    restore's writes do: nothing is created there, and the restore then goes on as usual."""
    sb = backed_up
    home = sb.layout.memory_db.parent
    _commit(sb.layout.memory_db, "CREATE TABLE phx_agent(name TEXT)")
    decoy = _decoy(home.parent / "decoy")
    real = home.with_name(home.name + "-real")
    real_problems = restore_op._Restore.database_problems

    def problems_through_a_swapped_link(self: Any, plan: Any) -> Any:
        home.rename(real)
        home.symlink_to(decoy)
        try:
            return real_problems(self, plan)
        finally:
            home.unlink()
            real.rename(home)

    monkeypatch.setattr(restore_op._Restore, "database_problems", problems_through_a_swapped_link)
    doc = sb.phx_here("restore", "--latest", "--dry-run", "--json").json()
    assert not (decoy / "memory.db-shm").exists(), doc
    sb.phx_here("restore", "--latest", "--yes")
    assert not (decoy / "memory.db-shm").exists()
    with pytest.raises(sqlite3.OperationalError):
        _rows(sb.layout.memory_db)  # restored: the table committed since the backup is gone


def test_an_atomic_save_while_the_check_reads_the_file_is_never_replaced(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent saves SOUL.md the usual way (a new file renamed over it) while the restore's last
    check, just before its own rename, reads the old bytes to hash them. Before, the check took the
    path's state before reading: the old file was unchanged, the restore renamed over the agent's
    save (exit 0) and its bytes were in no snapshot. Now the state is taken again after the read:
    the new inode shows, SOUL.md is left and named (exit 3)."""
    sb = backed_up
    soul = sb.workspace / "SOUL.md"
    soul.write_bytes(b"changed before the restore\n")
    real_take, real_read = safety.take, os.read
    armed: list[bool] = []

    def take_then_arm(*args: Any, **kwargs: Any) -> Any:
        taken = real_take(*args, **kwargs)
        armed.append(True)
        return taken

    def read_then_agent_saves(fd: int, n: int) -> bytes:
        got = real_read(fd, n)
        if armed and os.readlink(f"/proc/self/fd/{fd}") == str(soul):
            armed.clear()
            new = soul.with_name(".SOUL.md.tmp")
            new.write_bytes(b"the agent's save, mid-check\n")
            new.rename(soul)
        return got

    monkeypatch.setattr(safety, "take", take_then_arm)
    monkeypatch.setattr(os, "read", read_then_agent_saves)
    doc = sb.phx_here("restore", "--latest", "--yes", "--json", code=3).json()
    monkeypatch.undo()
    assert soul.read_bytes() == b"the agent's save, mid-check\n"
    _left_and_named(doc, "workspace/SOUL.md")
