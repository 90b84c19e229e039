"""A restored copy is written into a live database only if nothing was committed to it since the
safety snapshot: compared while the backup API holds the database's write lock, so a commit made
after the last look and before that lock is never written over either (WAL and rollback-journal)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from phoenix_backup.sinks import sqlite_live


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_a_commit_just_before_the_restore_locks_the_database_is_never_written_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, journal_mode: str
) -> None:
    copy, live = tmp_path / "copy.db", tmp_path / "live.db"
    with contextlib.closing(sqlite3.connect(copy)) as con:
        con.execute("CREATE TABLE t(x)")
        con.executemany("INSERT INTO t VALUES (?)", [(b"x" * 3000,)] * 20)  # more than one page
        con.commit()
    agent = sqlite3.connect(live)
    try:
        agent.execute(f"PRAGMA journal_mode={journal_mode}")
        agent.execute("CREATE TABLE notes(n)")
        agent.execute("INSERT INTO notes VALUES ('before')")
        agent.commit()
        before = sqlite_live.fingerprint(str(live))
        assert sqlite_live.fingerprint(str(live)) == before  # a reader changes nothing
        real = sqlite_live.fingerprint
        looks: list[str] = []

        def look_then_agent_commits(path: str) -> str:
            seen = real(path)
            if not looks:  # right after the restore's last look without the lock
                agent.execute("UPDATE notes SET n = 'the agent, just then'")
                agent.commit()
            looks.append(seen)
            return seen

        monkeypatch.setattr(sqlite_live, "fingerprint", look_then_agent_commits)
        with pytest.raises(sqlite_live.ChangedSince, match="changed since the safety snapshot"):
            sqlite_live.apply_copy(str(copy), str(live), "live.db", before)
        assert agent.execute("SELECT n FROM notes").fetchall() == [("the agent, just then",)]
        monkeypatch.undo()
        # Nothing committed since: the copy is written in.
        now = sqlite_live.fingerprint(str(live))
        sqlite_live.apply_copy(str(copy), str(live), "live.db", now)
        assert agent.execute("SELECT count(*) FROM t").fetchone() == (20,)
    finally:
        agent.close()
