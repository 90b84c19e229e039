"""Acceptance 3: a backup taken while another process keeps writing to a WAL-mode database restores
to a database that passes integrity_check (and FTS5's own integrity-check), whose row count lies
between the counts before and after the backup, and matches the snapshot's manifest."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from e2e_support import Sandbox, integrity, row_count

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
