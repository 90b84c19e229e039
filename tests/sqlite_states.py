"""Real SQLite states for the capture tests: an oracle for a state's exact bytes, and a writer
process whose every committed state is a known function of its transaction number.

- `checkpointed_bytes(db)`: the exact bytes of a database's latest committed state as SQLite
  itself lays them out: its files copied while nobody writes, then checkpointed by SQLite in the
  copy. A capture of that state must be byte-equal to it.
- `WRITER`: a script run as a separate process. Transaction k (from 1) inserts row k, updates or
  deletes rows named by k, every 25th also a batch of rows large enough to spill into the WAL
  before it commits, and sets `meta.k = k`; only after COMMIT returns is k appended to the log.
  Between transactions it checkpoints (PASSIVE, RESTART, TRUNCATE) and now and then closes and
  reopens its connection. `Simulation` replays the same transactions, so the content of any
  captured state is checked exactly against its k.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path


def checkpointed_bytes(db: Path, scratch: Path) -> bytes:
    """The bytes of `db`'s latest committed state (call it while nothing writes to it)."""
    scratch.mkdir(parents=True, exist_ok=True)
    copy = scratch / "oracle.db"
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(copy) + suffix).unlink(missing_ok=True)
    shutil.copyfile(db, copy)
    wal = Path(str(db) + "-wal")
    if wal.exists():
        shutil.copyfile(wal, str(copy) + "-wal")
    con = sqlite3.connect(copy)
    try:
        # SQLite rebuilds the wal-index from the WAL's valid frames and copies them into the file.
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return copy.read_bytes()


def create_schema(db: Path, journal: str = "wal", page_size: int = 4096) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute(f"PRAGMA page_size={page_size}")
        con.execute(f"PRAGMA journal_mode={journal}")
        con.execute("CREATE TABLE meta(id INTEGER PRIMARY KEY, k INTEGER NOT NULL)")
        con.execute("INSERT INTO meta VALUES (1, 0)")
        con.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        con.execute("CREATE INDEX items_v ON items(v)")
    finally:
        con.close()


def value(k: int, tag: str = "") -> bytes:
    return hashlib.sha256(f"{k}{tag}".encode()).digest() * (1 + k % 40)


# The transaction k, shared by the writer (as text) and the simulation (executed here).
TRANSACTION = textwrap.dedent(
    """
    def transaction(con, k):
        con.execute("INSERT INTO items(id, v) VALUES (?, ?)", (k, value(k)))
        if k % 3 == 0:
            con.execute("UPDATE items SET v = ? WHERE id = ?", (value(k, "u"), k // 3))
        if k % 7 == 0:
            con.execute("DELETE FROM items WHERE id = ?", (k // 2,))
        if k % 25 == 0:
            con.executemany(
                "INSERT INTO items(id, v) VALUES (?, ?)", [(-(k * 1000 + i), value(k, str(i))) for i in range(150)]
            )
        con.execute("UPDATE meta SET k = ? WHERE id = 1", (k,))
    """
)

WRITER = (
    textwrap.dedent(
        """
    import hashlib, os, random, sqlite3, sys, time
    db, log, seed, slow = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    def value(k, tag=""):
        return hashlib.sha256(f"{k}{tag}".encode()).digest() * (1 + k % 40)
    """
    )
    + TRANSACTION
    + textwrap.dedent(
        """
    def connect():
        con = sqlite3.connect(db, timeout=30, isolation_level=None)
        con.execute("PRAGMA cache_size=20")  # large transactions spill frames into the WAL before COMMIT
        return con
    rng = random.Random(seed)
    con = connect()
    k = con.execute("SELECT k FROM meta").fetchone()[0]
    out = open(log, "a")
    print("ready", flush=True)
    while True:
        k += 1
        con.execute("BEGIN IMMEDIATE")
        transaction(con, k)
        if slow:
            time.sleep(rng.uniform(0, slow))  # inside the transaction: a kill lands mid-transaction
        con.execute("COMMIT")
        out.write(f"{k}\\n")
        out.flush()
        if slow:
            time.sleep(rng.uniform(0, slow))  # between transactions, as an agent pauses
        roll = rng.random()
        if roll < 0.04:
            mode = rng.choice(["PASSIVE", "RESTART", "TRUNCATE"])
            con.execute("PRAGMA busy_timeout=0")
            try:
                con.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
            except sqlite3.OperationalError:
                pass
            con.execute("PRAGMA busy_timeout=30000")
        elif roll < 0.05:
            con.close()
            con = connect()
    """
    )
)


def pages_differing(old: bytes, new: bytes, page_size: int) -> set[int]:
    """Pages (from 1) of `new` that `old` does not hold the same (added pages included)."""
    count = len(new) // page_size
    return {
        p + 1
        for p in range(count)
        if old[p * page_size : (p + 1) * page_size] != new[p * page_size : (p + 1) * page_size]
    }


def start_writer(db: Path, log: Path, seed: int, slow: float, more: str = "") -> subprocess.Popen[str]:
    """The writer running on `db`, once it has opened it; `slow` seconds at most of sleep inside
    each transaction and between them (so that a kill lands mid-transaction); `more`, code run in
    its loop after each transaction (indented by four spaces; `roll` is its random draw)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER + more, str(db), str(log), str(seed), str(slow)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise AssertionError(f"the writer did not start: {proc.stderr.read() if proc.stderr else ''}")
    return proc


class Simulation:
    """The rows of `items` after transaction k, for increasing k."""

    def __init__(self) -> None:
        self.k = 0
        self.con = sqlite3.connect(":memory:", isolation_level=None)
        self.con.execute("CREATE TABLE meta(id INTEGER PRIMARY KEY, k INTEGER NOT NULL)")
        self.con.execute("INSERT INTO meta VALUES (1, 0)")
        self.con.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        scope: dict[str, object] = {"value": value}
        exec(TRANSACTION, scope)
        self.transaction = scope["transaction"]  # (connection, k): transaction k on any database

    def items_at(self, k: int) -> list[tuple[int, bytes]]:
        if k < self.k:
            raise AssertionError(f"states went backwards: {k} after {self.k}")
        while self.k < k:
            self.k += 1
            self.transaction(self.con, self.k)  # type: ignore[operator]
        return self.con.execute("SELECT id, v FROM items ORDER BY id").fetchall()


def logged(log: Path) -> int:
    """The last transaction the writer says it committed (0 before any)."""
    try:
        lines = log.read_text().split()
    except FileNotFoundError:
        return 0
    return int(lines[-1]) if lines else 0


def state_of(image_bytes: bytes, scratch: Path) -> tuple[list[str], int, list[tuple[int, bytes]]]:
    """(integrity_check, meta.k, rows of items) of a database image written to a file."""
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / "image.db"
    path.write_bytes(image_bytes)
    con = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        check = [str(r[0]) for r in con.execute("PRAGMA integrity_check")]
        k = int(con.execute("SELECT k FROM meta").fetchone()[0])
        rows = con.execute("SELECT id, v FROM items ORDER BY id").fetchall()
    finally:
        con.close()
    os.unlink(path)
    return check, k, rows
