"""A database that changed since the last backup is captured as the backup begins, and its SHA-256
computed while the key is derived (issue 19, docs/benchmarks.md): the snapshot holds the state
the database had at that moment, whole and consistent, never a commit made while the repository
was being opened, and its recorded SHA-256 is the restored file's."""

from __future__ import annotations

import hashlib
import shlex
import sqlite3
import sys
from pathlib import Path

from e2e_support import PASSPHRASE, Sandbox, integrity, wait_past_racy_window

LOGICAL = "home/.argentos/observations.db"

# Commits one row (its content given), then prints the passphrase: a commit made while the
# repository is being opened, before a single page could be read the old way.
COMMIT_THEN_PASSPHRASE = (
    "import sqlite3, sys\n"
    "con = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    'con.execute("INSERT INTO observations(session_id, kind, content, created_at) '
    "VALUES ('late', 'message', ?, '2026-10-01T00:00:00Z')\", (sys.argv[2],))\n"
    "con.close()\n"
    "print(sys.argv[3])\n"
)


def _commit_while_opening(sb: Sandbox, tmp_path: Path, marker: str) -> None:
    """The config's passphrase comes from a command that first commits a row marked `marker`."""
    script = tmp_path / "commit_then_passphrase.py"
    script.write_text(COMMIT_THEN_PASSPHRASE)
    db = sb.db_path(LOGICAL)
    command = " ".join(shlex.quote(str(a)) for a in (sys.executable, script, db, marker, PASSPHRASE))
    sb.write_config(encryption={"enabled": True, "method": "passphrase", "passphraseCommand": command})
    sb.env.pop("PHX_PASSPHRASE")


def _rows(db: Path, marker: str) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT count(*) FROM observations WHERE content = ?", (marker,)).fetchone()[0])
    finally:
        con.close()


def _restored(sb: Sandbox, snapshot_id: str, dest: Path) -> Path:
    sb.restore_to(snapshot_id, dest)
    restored = dest / LOGICAL
    assert integrity(restored) == ["ok"]
    return restored


def _recorded_sha256(sb: Sandbox, snapshot_id: str) -> str:
    listing = sb.phx("ls", snapshot_id, "--json").json()
    entries = listing["entries"] if isinstance(listing, dict) else listing
    (node,) = [e for e in entries if e["path"].endswith("observations.db")]
    return str(node["sha256"])


def test_the_snapshot_holds_the_database_as_the_backup_began(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    _commit_while_opening(sb, tmp_path, "first late commit")
    doc = sb.backup()
    db = sb.db_path(LOGICAL)
    assert _rows(db, "first late commit") == 1  # the command did commit, while the repository opened
    restored = _restored(sb, doc["id"], tmp_path / "r1")
    assert _rows(restored, "first late commit") == 0
    assert hashlib.sha256(restored.read_bytes()).hexdigest() == _recorded_sha256(sb, doc["id"])


def test_a_daily_backup_of_a_changed_database_begins_with_it(sandbox: Sandbox, tmp_path: Path) -> None:
    """The second backup: the database changed since the first began (by its files' times), so
    it is captured before the key is derived too; an unchanged one is taken from the parent."""
    sb = sandbox
    sb.backup()
    wait_past_racy_window()
    con = sqlite3.connect(sb.db_path(LOGICAL), isolation_level=None)
    con.execute(
        "INSERT INTO observations(session_id, kind, content, created_at) "
        "VALUES ('day', 'message', 'a change of the day', '2026-10-02T00:00:00Z')"
    )
    con.close()
    _commit_while_opening(sb, tmp_path, "second late commit")
    doc = sb.backup()
    restored = _restored(sb, doc["id"], tmp_path / "r2")
    assert _rows(restored, "a change of the day") == 1
    assert _rows(restored, "second late commit") == 0
    assert hashlib.sha256(restored.read_bytes()).hexdigest() == _recorded_sha256(sb, doc["id"])
    # The next backup stores the late commit (and those of the restores, which ran the command
    # too): nothing is lost, it is only in the next snapshot.
    wait_past_racy_window()
    doc = sb.backup()
    assert _rows(_restored(sb, doc["id"], tmp_path / "r3"), "second late commit") >= 1
