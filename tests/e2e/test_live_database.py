"""Acceptance 3: a backup taken while another process keeps writing to a WAL-mode database restores
to a database that passes integrity_check (and FTS5's own integrity-check), whose row count lies
between the counts before and after the backup, and matches the snapshot's manifest.

And, since databases are read in place (sources/sqlite_capture.py): under a writer that records
each transaction it committed, checkpoints with every mode and reconnects, in WAL and in
rollback-journal mode, every restored database is exactly one committed state; a writer killed
inside a transaction leaves its last commit; a transaction still open is never in a backup."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_support import Sandbox, integrity, row_count

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sqlite_states import Simulation, checkpointed_bytes, create_schema, logged, start_writer

# The sandboxes' helpers (the backups that set a test up, the checks after) run phx in this process;
# the commands under test stay real `phx` processes (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

# Inserts observations (with their FTS trigger) one transaction at a time until STOP exists;
# checkpoints often so the WAL is reset and the .db rewritten while the backup reads.
WRITER = textwrap.dedent(
    """
    import os, sqlite3, sys, time
    db, stop = sys.argv[1], sys.argv[2]
    con = sqlite3.connect(db, timeout=30, isolation_level=None)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.execute("PRAGMA wal_autocheckpoint=50")
    n = 0
    while not os.path.exists(stop):
        con.execute("BEGIN IMMEDIATE")
        con.execute(
            "INSERT INTO observations(session_id, kind, content, created_at, embedding) "
            "VALUES (?, 'message', ?, '2026-10-01T00:00:00Z', ?)",
            ("writer", f"concurrent write {n} " + "lorem ipsum " * 40, os.urandom(3072)),
        )
        con.execute("COMMIT")
        n += 1
        if n == 50:
            print("ready", flush=True)
    con.close()
    print(n, flush=True)
    """
)


def test_backup_while_a_process_writes(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    db = sb.layout.observations_db
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    before = row_count(db, "observations")

    stop = tmp_path / "stop-writer"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(stop)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read() if writer.stderr else ""
        at_start = row_count(db, "observations")
        started = time.monotonic()
        doc = sb.backup()
        took = time.monotonic() - started
        at_end = row_count(db, "observations")
    finally:
        stop.touch()
        _out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    after = row_count(db, "observations")
    assert at_end > at_start, f"the writer made no progress during the {took:.2f} s backup"

    info = {d["path"]: d for d in doc["databases"]}["home/.argentos/observations.db"]
    assert info["integrity"] == "ok"

    dest = tmp_path / "restored"
    sb.restore_to(doc["id"], dest)
    restored = dest / "home/.argentos/observations.db"
    assert integrity(restored) == ["ok"]
    con = sqlite3.connect(restored)
    try:
        # FTS5 checks its index against the content table: a torn copy would fail here.
        con.execute("INSERT INTO observations_fts(observations_fts) VALUES('integrity-check')")
        count = int(con.execute("SELECT COUNT(*) FROM observations").fetchone()[0])
        docsize = int(con.execute("SELECT COUNT(*) FROM observations_fts_docsize").fetchone()[0])
    finally:
        con.close()
    assert before + 50 <= count <= after, (before, count, after)
    assert docsize == count, "FTS index and content table disagree"
    assert info["tables"]["observations"] == count, "the manifest's row count differs from the restored copy"


# -- the state restored is one the writer committed, exactly ---------------------------------------

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
ROUNDS = 6 if HEAVY else 2
# The sample's dashboard store, replaced by the writer's database (it is in the default config).
LOGICAL = "home/.argentos/data/dashboard.db"


def writer_database(sb: Sandbox, journal: str) -> Path:
    db = sb.layout.dashboard_db
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    create_schema(db, journal)
    return db


def restored_state(sb: Sandbox, doc: dict[str, object], dest: Path) -> tuple[int, list[tuple[int, bytes]], int]:
    """(meta.k, rows of items, the manifest's row count of items) of the snapshot's copy, after
    checking it passes integrity_check."""
    sb.restore_to(str(doc["id"]), dest)
    restored = dest / LOGICAL
    assert integrity(restored) == ["ok"]
    con = sqlite3.connect(f"file:{restored}?immutable=1", uri=True)
    try:
        k = int(con.execute("SELECT k FROM meta").fetchone()[0])
        rows = con.execute("SELECT id, v FROM items ORDER BY id").fetchall()
    finally:
        con.close()
    databases = doc["databases"]
    assert isinstance(databases, list)
    info = {d["path"]: d for d in databases}[LOGICAL]
    assert info["integrity"] == "ok"
    return k, rows, int(info["tables"]["items"])


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_each_backup_under_a_writer_restores_a_state_it_committed(
    sandbox: Sandbox, tmp_path: Path, journal: str
) -> None:
    """A writer commits, checkpoints with every mode and reconnects while backups run: each
    restored database is exactly the state after one of its transactions (every row equal), a
    transaction between the last one it had logged before the backup and the one after the last
    logged after it, and passes integrity_check. In rollback-journal mode the writer waits
    while the pages are read (the SHARED lock), and goes on after."""
    sb = sandbox
    db = writer_database(sb, journal)
    log = tmp_path / "committed.log"
    simulation = Simulation()
    writer = start_writer(db, log, seed=3, slow=0.001)
    seen: list[int] = []
    try:
        for round_ in range(ROUNDS):
            time.sleep(0.3)
            low = logged(log)
            doc = sb.backup()
            high = logged(log)
            k, rows, manifest = restored_state(sb, doc, tmp_path / f"restored-{round_}")
            assert low <= k <= high + 1, (low, k, high)
            assert rows == simulation.items_at(k), f"the restored state (k={k}) is not one the writer committed"
            assert manifest == len(rows), "the manifest counts another state than the one saved"
            seen.append(k)
    finally:
        writer.kill()
        writer.wait()
    assert seen[-1] > seen[0], "the writer made no progress between the backups"


def test_a_writer_killed_mid_transaction_leaves_its_last_commit(sandbox: Sandbox, tmp_path: Path) -> None:
    """SIGKILL of the writer inside a transaction (it sleeps there most of the time): the next
    backup holds its last committed state, never part of the interrupted transaction."""
    sb = sandbox
    db = writer_database(sb, "wal")
    log = tmp_path / "committed.log"
    writer = start_writer(db, log, seed=5, slow=0.02)
    time.sleep(0.5)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    last = logged(log)
    assert last > 0, "setup: the writer committed before it was killed"
    k, rows, _ = restored_state(sb, sb.backup(), tmp_path / "restored")
    assert k in (last, last + 1), (k, last)  # the last COMMIT may have returned without being logged
    assert rows == Simulation().items_at(k)


# Opens a transaction large enough to spill into the WAL, says so, commits when told.
OPEN_TRANSACTION = textwrap.dedent(
    """
    import os, sqlite3, sys
    con = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
    con.execute("PRAGMA cache_size=10")
    con.execute("BEGIN IMMEDIATE")
    con.executemany("INSERT INTO items(id, v) VALUES (?, ?)", [(-i, os.urandom(900)) for i in range(1, 800)])
    con.execute("UPDATE meta SET k = -1")
    print("open", flush=True)
    sys.stdin.readline()
    con.execute("COMMIT")
    print("committed", flush=True)
    """
)


def test_a_transaction_still_open_is_not_in_the_backup(sandbox: Sandbox, tmp_path: Path) -> None:
    """Another process has written a large transaction into the WAL without committing it: the
    backup holds the state before it; after its COMMIT, the next backup holds it whole."""
    sb = sandbox
    db = writer_database(sb, "wal")
    wal_before = Path(str(db) + "-wal").stat().st_size if Path(str(db) + "-wal").exists() else 0
    proc = subprocess.Popen(
        [sys.executable, "-c", OPEN_TRANSACTION, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "open", proc.stderr.read() if proc.stderr else ""
        assert Path(str(db) + "-wal").stat().st_size > wal_before + 100_000, "setup: the transaction spilled"
        k, rows, _ = restored_state(sb, sb.backup(), tmp_path / "before")
        assert (k, rows) == (0, [])
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "committed"
    finally:
        proc.kill()
        proc.wait()
    k, rows, manifest = restored_state(sb, sb.backup(), tmp_path / "after")
    assert k == -1 and len(rows) == manifest == 799


def test_the_restored_database_is_byte_identical_to_the_state_sqlite_writes(sandbox: Sandbox, tmp_path: Path) -> None:
    """The snapshot holds the database's own pages: restored, the file is byte for byte what
    SQLite itself writes for that state (its files copied and checkpointed), commits that live
    only in the -wal included. (A copy through the online backup API rewrote header fields.)"""
    sb = sandbox
    db = writer_database(sb, "wal")
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("PRAGMA wal_autocheckpoint=0")
        simulation = Simulation()
        for k in range(1, 60):
            con.execute("BEGIN")
            simulation.transaction(con, k)
            con.execute("COMMIT")
        assert Path(str(db) + "-wal").stat().st_size > 0, "setup: the commits live in the -wal"
        expected = checkpointed_bytes(db, tmp_path / "oracle")
        doc = sb.backup()  # the connection stays open: nothing checkpoints the WAL meanwhile
    finally:
        con.close()
    dest = tmp_path / "restored"
    sb.restore_to(doc["id"], dest)
    assert (dest / LOGICAL).read_bytes() == expected
    # Its connection closed, the live file is that state too: a restore in place leaves it alone.
    plan = sb.phx("restore", "--latest", "--dry-run", "--json").json()
    assert {i["path"]: i["action"] for i in plan["items"]}[LOGICAL] == "unchanged"


def test_no_temporary_copy_of_a_database_is_written(sandbox: Sandbox, tmpfs: Callable[[str], Path]) -> None:
    """The cache's disk has less room than the database: the backup reads it in place and
    succeeds (it used to stop with "not enough free space ... to copy")."""
    sb = sandbox
    db = writer_database(sb, "wal")
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.executemany("INSERT INTO items(id, v) VALUES (?, ?)", [(-i, os.urandom(4000)) for i in range(1, 3000)])
    finally:
        con.close()
    assert db.stat().st_size > 12_000_000
    small = tmpfs("6m")
    env = sb.env_with(PHX_CACHE_DIR=str(small / "cache"))
    doc = sb.phx("backup", "--json", env=env).json()
    assert doc["incomplete"] == []
    info = {d["path"]: d for d in doc["databases"]}[LOGICAL]
    assert info["integrity"] == "ok" and info["tables"]["items"] == 2999
