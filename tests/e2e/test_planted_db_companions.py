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
