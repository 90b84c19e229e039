"""Issue 20, attacked: the whole-file SHA-256 is computed on a thread of its own from the buffers
the backup reads (a streamed file's chunker refills one buffer; a database is cut in regions).

Whatever the sizes (empty, 1 MiB and one byte either side of the threshold of that thread, a
sparse file streamed through the chunker) and whatever changes while the backup reads (a file
rewritten, databases in WAL and rollback-journal mode under a writer), every SHA-256 the
snapshot records is that of the bytes it stored: `phx restore` gives back bytes whose
`sha256sum` is the recorded one, and a file that did not change is restored as it was.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import threading
from pathlib import Path
from typing import Any

from e2e_support import Sandbox

from phoenix_backup.ops.backup import BACKGROUND_DIGEST
from phoenix_backup.repo.chunker import WHOLE_FILE_LIMIT

MIB = 1024 * 1024


def _still_files(base: Path) -> dict[str, bytes]:
    rnd = random.Random(20)
    files = {
        "empty.bin": b"",
        "one.bin": b"x",
        "below.bin": rnd.randbytes(BACKGROUND_DIGEST - 1),
        "exact.bin": rnd.randbytes(BACKGROUND_DIGEST),
        "above.bin": rnd.randbytes(BACKGROUND_DIGEST + 1),
    }
    for name, data in files.items():
        (base / name).write_bytes(data)
    # Streamed through the chunker's one buffer (above WHOLE_FILE_LIMIT), mostly a hole, with
    # islands of distinct data that land in that buffer at different places.
    sparse = bytearray(WHOLE_FILE_LIMIT + 3 * MIB + 7)
    with open(base / "sparse.bin", "wb") as f:
        f.truncate(len(sparse))
        for k in range(6):
            at = k * (len(sparse) // 6) + 4093
            island = rnd.randbytes(300_000)
            f.seek(at)
            f.write(island)
            sparse[at : at + len(island)] = island
    files["sparse.bin"] = bytes(sparse)
    return files


def _database(path: Path, mode: str) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute(f"PRAGMA journal_mode={mode}")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    con.executemany("INSERT INTO t (body) VALUES (?)", [(os.urandom(2000),) for _ in range(1000)])
    con.close()


def _writers(base: Path, stop: threading.Event) -> list[threading.Thread]:
    """One thread rewrites a 2 MiB file over and over; one writes to each database."""

    def rewrite() -> None:
        rnd = random.Random(21)
        while not stop.is_set():
            with open(base / "changing.bin", "r+b") as f:
                f.write(rnd.randbytes(2 * MIB))

    def insert(path: Path) -> None:
        con = sqlite3.connect(path, timeout=30, isolation_level=None)
        while not stop.is_set():
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT INTO t (body) VALUES (?)", (os.urandom(3000),))
            con.execute("DELETE FROM t WHERE id = (SELECT min(id) FROM t)")
            con.execute("COMMIT")
        con.close()

    threads = [
        threading.Thread(target=rewrite),
        threading.Thread(target=insert, args=(base / "wal.db",)),
        threading.Thread(target=insert, args=(base / "journal.db",)),
    ]
    for t in threads:
        t.start()
    return threads


def test_recorded_sha256_is_that_of_the_bytes_stored(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    base = sb.workspace / "digests"
    base.mkdir()
    still = _still_files(base)
    (base / "changing.bin").write_bytes(bytes(2 * MIB))
    _database(base / "wal.db", "wal")
    _database(base / "journal.db", "delete")
    stop = threading.Event()
    threads = _writers(base, stop)
    try:
        doc = sb.backup(check=None)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert doc.get("id"), doc
    dest = tmp_path / "restored"
    sb.restore_to(doc["id"], dest)
    listed: dict[str, dict[str, Any]] = {
        e["path"]: e for e in sb.phx("ls", doc["id"], "workspace/digests", "--json").json()["entries"]
    }
    changed = {i["path"] for i in doc["incomplete"]}
    recorded = 0
    for name in [*still, "changing.bin", "wal.db", "journal.db"]:
        logical = f"workspace/digests/{name}"
        if logical in changed:
            assert name == "changing.bin", doc["incomplete"]  # only what changed may be left out
            continue
        entry = listed[logical]
        restored = (dest / logical).read_bytes()
        assert len(restored) == entry["size"], (logical, entry)
        recorded_sha = entry["sha256"]
        assert hashlib.sha256(restored).hexdigest() == recorded_sha, f"{logical}: SHA-256 not of the bytes"
        if name in still:
            assert restored == still[name], f"{logical} restored other bytes"
        recorded += 1
    assert recorded >= len(still) + 2
    for name in ("wal.db", "journal.db"):
        con = sqlite3.connect(dest / "workspace/digests" / name)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
