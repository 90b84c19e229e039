"""A capture by a user who cannot write the database's -shm (the database belongs to another user).

SQLite then uses the -shm file only while another process has it open and keeps it current;
with nobody else there it rebuilds a private wal-index from the WAL, and the file's header may
be older than the state SQLite reads: a writer in exclusive locking mode never updates it, and
one killed leaves it stale. Pinning the snapshot by that header would then store an older state
than the committed one (while `integrity_check` and row counts describe the newer one): the
capture must refuse, naming the database, and must work when the agent has the database open.

Needs root (to run the capture as another user); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sqlite_states import checkpointed_bytes

SRC = Path(__file__).resolve().parents[2] / "src"
NOBODY = 65534

# Captures argv[1] as the unprivileged user, writes the image to argv[2], prints the outcome.
CAPTURE = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[3])
    from phoenix_backup.sources.sqlite_capture import CaptureError, SqliteCapture
    try:
        with SqliteCapture(sys.argv[1]) as capture:
            image = capture.capture()
            data = image[0 : len(image)]
            k = capture.connection.execute("SELECT k FROM meta").fetchone()[0]
    except CaptureError as exc:
        print(json.dumps({"error": str(exc)}))
    else:
        open(sys.argv[2], "wb").write(data)
        print(json.dumps({"k": k}))
    """
)


def _as_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _interpreter() -> str | None:
    """A Python the unprivileged user can run and import Phoenix's capture with (its own
    standard library only)."""
    if os.geteuid() != 0:
        return None
    for candidate in (os.path.realpath(sys.executable), shutil.which("python3") or "", "/usr/bin/python3"):
        if not candidate:
            continue
        code = f"import sys; sys.path.insert(0, {str(SRC)!r}); import phoenix_backup.sources.sqlite_capture"
        try:
            probe = subprocess.run([candidate, "-c", code], preexec_fn=_as_nobody, capture_output=True)
        except OSError:
            continue  # not executable for that user (an interpreter under /root)
        if probe.returncode == 0:
            return candidate
    return None


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder the unprivileged user can enter (pytest's tmp_path is root's alone)."""
    with tempfile.TemporaryDirectory(prefix="phx-shm-") as d:
        os.chmod(d, 0o755)
        out = Path(d) / "out"
        out.mkdir()
        os.chmod(out, 0o777)
        yield Path(d)


def _held_then_killed(code: str) -> None:
    """Run `code` (which prints a line once it committed), then SIGKILL it."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _stale_wal_index(db: Path) -> None:
    """k=1 committed with the -shm current, then k=2 committed by a writer in exclusive locking
    mode (the -shm untouched), both writers killed: the -wal holds k=2, the -shm says k=1."""
    _held_then_killed(
        textwrap.dedent(
            f"""
            import sqlite3, time
            con = sqlite3.connect({str(db)!r}, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA wal_autocheckpoint=0")
            con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
            con.execute("CREATE TABLE meta(k)")
            con.execute("INSERT INTO meta VALUES (1)")
            con.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40) "
                "INSERT INTO t(v) SELECT randomblob(2000) FROM n"
            )
            print("ready", flush=True)
            time.sleep(60)
            """
        )
    )
    shm = Path(str(db) + "-shm").read_bytes()
    _held_then_killed(
        textwrap.dedent(
            f"""
            import sqlite3, time
            con = sqlite3.connect({str(db)!r}, isolation_level=None)
            con.execute("PRAGMA locking_mode=EXCLUSIVE")
            con.execute("PRAGMA wal_autocheckpoint=0")
            con.execute("UPDATE t SET v = randomblob(2000)")
            con.execute("UPDATE meta SET k = 2")
            print("ready", flush=True)
            time.sleep(60)
            """
        )
    )
    assert Path(str(db) + "-shm").read_bytes() == shm, "setup: the exclusive writer left the -shm alone"


def _capture_as_nobody(python: str, db: Path, out: Path) -> dict[str, object]:
    res = subprocess.run(
        [python, "-c", CAPTURE, str(db), str(out), str(SRC)],
        preexec_fn=_as_nobody,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    doc: dict[str, object] = json.loads(res.stdout)
    return doc


def test_a_stale_read_only_wal_index_is_refused_not_captured(shared: Path) -> None:
    python = _interpreter()
    if python is None:
        pytest.skip("needs root and a Python the unprivileged user can run")
    db = shared / "agent.db"
    _stale_wal_index(db)
    out = shared / "out" / "image.db"
    doc = _capture_as_nobody(python, db, out)
    if "error" not in doc:
        image = sqlite3.connect(f"file:{out}?immutable=1", uri=True)
        stored = image.execute("SELECT k FROM meta").fetchone()[0]
        image.close()
        pytest.fail(f"captured through a -shm SQLite does not use: it checked k={doc['k']}, the image holds k={stored}")
    assert str(db) in str(doc["error"]) and "-shm" in str(doc["error"]) and "read-only" in str(doc["error"])
    # With the agent holding the database open (it rebuilt the -shm when it opened it), the same
    # user captures the latest committed state, byte for byte.
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        assert holder.execute("SELECT k FROM meta").fetchone()[0] == 2
        expected = checkpointed_bytes(db, shared / "oracle")
        doc = _capture_as_nobody(python, db, out)
        assert doc == {"k": 2}
        assert out.read_bytes() == expected
    finally:
        holder.close()
