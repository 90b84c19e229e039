"""A `-wal` planted beside a configured SQLite database by the agent the workspace belongs to
(docs/security.md, "A compromised or misled agent on the host"): a FIFO, or a symbolic link to a
secret of the user's, in place of the database's write-ahead log.

On the code before, `phx backup` opened the planted `-wal` by name to read its header for the
skip-if-unchanged shortcut (`sources/sqlite.source_stat`): a FIFO blocked the backup for ever,
holding (and refreshing) its repository lock, so every later prune and key change was locked out
too; a link was read through (its target's first 32 bytes) and then refused by SQLite as "unable
to open database file". Now neither Phoenix nor SQLite opens a companion that is not a regular
file, and a planted one ends that database's capture in one error naming the file, the rest of
the backup intact.
"""

from __future__ import annotations

import os
from pathlib import Path

from e2e_support import DATABASES, Sandbox

from phoenix_backup.sample import generate_workspace

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"


def _sandbox(tmp_path: Path) -> tuple[Sandbox, Path]:
    sb = Sandbox(tmp_path, generate_workspace(tmp_path / "sample", size="tiny", seed=11))
    db = sb.db_path(DATABASES[0])
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    return sb, db


def test_a_fifo_planted_as_a_databases_wal_does_not_hang_the_backup(tmp_path: Path) -> None:
    sb, db = _sandbox(tmp_path)
    os.mkfifo(str(db) + "-wal")
    # Bounded: on the code before, the backup blocked in open() of the FIFO until this timeout.
    res = sb.phx("backup", "--json", check=False, timeout=30)
    assert res.code != 0, res
    assert f"{db}-wal" in res.err, res
    assert "not a regular file" in res.err, res
    # Nothing was left locked: an exclusive command runs at once.
    sb.phx("unlock", check=True, timeout=60)
    assert not list((sb.repo / "locks").iterdir())


def test_a_link_to_a_secret_planted_as_a_databases_wal_is_not_read(tmp_path: Path) -> None:
    sb, db = _sandbox(tmp_path)
    secret = tmp_path / "id_ed25519"
    secret.write_bytes(SECRET)
    os.symlink(secret, str(db) + "-wal")
    res = sb.phx("backup", "--json", check=False, timeout=60)
    assert res.code != 0, res
    assert f"{db}-wal" in res.err, res
    assert "link" in res.err, res
    assert secret.read_bytes() == SECRET
