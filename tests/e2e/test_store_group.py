"""A chromadb store under a live writer is saved as one state (ops/backup.py `_Run.group_read`).

chromadb keeps `chroma.sqlite3` (rollback journal) and, per collection, a segment folder of HNSW
files (`header.bin`, `data_level0.bin`, `length.bin`, `link_lists.bin`, `index_metadata.pickle`)
that each flush rewrites in place (same inode: truncated and written, the pickle last), outside
the database's transactions; only then does the database record the flush and purge the log
entries the files now hold. The writer here follows that protocol with files that name their
flush, and every restored store must be one the library could open: all segment files of one
flush, and the database's log holding every entry after that flush (none purged past it, none
the files hold that the database lacks).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from e2e_support import Sandbox

SEGMENT_FILES = ("header.bin", "data_level0.bin", "length.bin", "link_lists.bin", "index_metadata.pickle")

# argv: store, stop file, pause between log batches (s). Appends log entries (one transaction per
# batch, `top` raised in the same transaction); every SYNC entries it flushes: each segment file
# rewritten in place naming the flush and the highest entry it holds (data_level0.bin padded to
# a size that grows), then the database records the flush and purges what the files hold.
WRITER = textwrap.dedent(
    """
    import os, sqlite3, sys, time
    store, stop, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
    seg = os.path.join(store, "5f3c1e2a-0b7d-4c9e-9a51-3f2f6d1c8e47")
    os.makedirs(seg, exist_ok=True)
    con = sqlite3.connect(os.path.join(store, "chroma.sqlite3"), isolation_level=None, timeout=30)
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute("CREATE TABLE IF NOT EXISTS log(seq INTEGER PRIMARY KEY, item TEXT)")
    con.execute("CREATE TABLE IF NOT EXISTS meta(top INTEGER, max_seq INTEGER)")
    con.execute("INSERT INTO meta SELECT 0, 0 WHERE NOT EXISTS (SELECT 1 FROM meta)")
    names = ("header.bin", "data_level0.bin", "length.bin", "link_lists.bin", "index_metadata.pickle")
    def flush(n, upto):
        for name in names:
            body = f"flush {n} upto {upto}\\n".encode()
            if name == "data_level0.bin":
                body += bytes([n % 251]) * (1_000_000 + 2_000 * (n % 50))
            mode = "r+b" if os.path.exists(os.path.join(seg, name)) else "wb"
            with open(os.path.join(seg, name), mode) as f:
                f.truncate(0)
                f.write(body)
        con.execute("BEGIN IMMEDIATE")
        con.execute("UPDATE meta SET max_seq = ?", (upto,))
        con.execute("DELETE FROM log WHERE seq <= ?", (upto,))
        con.execute("COMMIT")
    seq = 0; flushed = 0; n = 0
    flush(0, 0)
    print("ready", flush=True)
    while not os.path.exists(stop):
        con.execute("BEGIN IMMEDIATE")
        for _ in range(5):
            seq += 1
            con.execute("INSERT INTO log VALUES (?, ?)", (seq, "x" * 200))
        con.execute("UPDATE meta SET top = ?", (seq,))
        con.execute("COMMIT")
        if seq - flushed >= 10:
            n += 1
            flush(n, seq)
            flushed = seq
        time.sleep(pause)
    print(n, flush=True)
    """
)


def start_writer(store: Path, stop: Path, pause: float) -> subprocess.Popen[str]:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store), str(stop), str(pause)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "ready", writer.stderr.read() if writer.stderr else ""
    return writer


def stop_writer(writer: subprocess.Popen[str], stop: Path) -> int:
    stop.touch()
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    stop.unlink()
    return int(out.split()[-1])


def store_state(store: Path) -> tuple[int, int]:
    """The restored store as the library would open it: (flush, highest entry) of its segment
    files, which must all be of one flush and agree with the database's log."""
    seg = next(p for p in store.iterdir() if p.is_dir())
    heads = {name: (seg / name).read_bytes().split(b"\n", 1)[0].decode() for name in SEGMENT_FILES}
    assert len(set(heads.values())) == 1, f"segment files of different flushes: {heads}"
    _, flush, _, upto = next(iter(heads.values())).split()
    con = sqlite3.connect(store / "chroma.sqlite3")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        top, max_seq = con.execute("SELECT top, max_seq FROM meta").fetchone()
        seqs = [r[0] for r in con.execute("SELECT seq FROM log ORDER BY seq")]
    finally:
        con.close()
    files_upto = int(upto)
    # The database never records a flush the files lack (the files hold every entry it purged),
    # and the files never hold an entry the database has not logged.
    assert max_seq <= files_upto <= top, (
        f"files of flush {flush} hold entries up to {files_upto}; database {max_seq=} {top=}"
    )
    # Every entry after the files' flush is still in the log, to be replayed on opening.
    assert set(range(files_upto + 1, top + 1)) <= set(seqs), f"log lacks entries after {files_upto}: {seqs[:5]}"
    return int(flush), files_upto


def test_a_chromadb_store_is_saved_as_one_flush(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    store = sb.workspace / "stores" / "chroma"
    store.mkdir(parents=True)
    stop = tmp_path / "stop"
    writer = start_writer(store, stop, 0.02)
    saved: list[str] = []
    try:
        for _ in range(6):
            doc = sb.backup(check=None)
            # Complete, or the store named as not saved consistently (then it is not checked).
            if not doc["incomplete"]:
                saved.append(doc["id"])
            else:
                assert [i["path"] for i in doc["incomplete"]] == ["workspace/stores/chroma"], doc["incomplete"]
                assert doc["incomplete"][0]["error"].startswith("not saved consistently:")
    finally:
        flushes = stop_writer(writer, stop)
    assert flushes > 20, f"the writer flushed only {flushes} times"
    assert len(saved) >= 4, f"only {len(saved)} of 6 backups held the store still"
    states = set()
    for i, sid in enumerate(saved):
        dest = tmp_path / f"restore-{i}"
        sb.restore_to(sid, dest)
        states.add(store_state(dest / "workspace" / "stores" / "chroma"))
    assert len(states) > 1, "every backup saw the same flush: the writer did not race them"


def test_a_store_that_never_holds_still_is_named(sandbox: Sandbox, tmp_path: Path) -> None:
    """Segment files rewritten without pause (a flush that never ends): no read finds them
    unchanged, and the backup says so for that store (exit 3), never a silently inconsistent
    snapshot."""
    sb = sandbox
    store = sb.workspace / "stores" / "chroma"
    store.mkdir(parents=True)
    stop = tmp_path / "stop"
    stop_writer(start_writer(store, stop, 0.0), stop)
    header = next(p for p in store.iterdir() if p.is_dir()) / "header.bin"
    churn = subprocess.Popen([sys.executable, "-c", CHURN, str(header), str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        assert churn.stdout is not None and churn.stdout.readline().strip() == "ready"
        started = time.monotonic()
        res = sb.phx("backup", "--json", check=3)
    finally:
        stop.touch()
        churn.communicate(timeout=60)
    assert time.monotonic() - started < 120
    failed = {i["path"]: i["error"] for i in res.json()["incomplete"]}
    assert list(failed) == ["workspace/stores/chroma"], failed
    error = failed["workspace/stores/chroma"]
    assert error.startswith("not saved consistently:"), error
    assert "hooks.preBackup" in error


# argv: file, stop file. Rewrites the file in place, again and again, until the stop file exists.
CHURN = textwrap.dedent(
    """
    import os, sys
    path, stop = sys.argv[1], sys.argv[2]
    n = 0
    print("ready", flush=True)
    while not os.path.exists(stop):
        n += 1
        with open(path, "r+b") as f:
            f.truncate(0)
            f.write(f"churn {n}\\n".encode())
    """
)


# argv: store, stop file. Adds a collection after another: its segment folder's files first, then
# the database records it (as chromadb records a flush after writing its files).
ADDER = textwrap.dedent(
    """
    import os, sqlite3, sys, time, uuid
    store, stop = sys.argv[1], sys.argv[2]
    con = sqlite3.connect(os.path.join(store, "chroma.sqlite3"), isolation_level=None, timeout=30)
    con.execute("CREATE TABLE IF NOT EXISTS segments(name TEXT PRIMARY KEY)")
    n = 0
    print("ready", flush=True)
    while not os.path.exists(stop):
        name = str(uuid.UUID(int=n))
        os.makedirs(os.path.join(store, name))
        for f in ("header.bin", "data_level0.bin", "length.bin", "link_lists.bin", "index_metadata.pickle"):
            with open(os.path.join(store, name, f), "wb") as out:
                out.write(f"{name} {f}".encode())
        con.execute("INSERT INTO segments VALUES (?)", (name,))
        n += 1
        time.sleep(0.003)
    print(n, flush=True)
    """
)


def test_a_collection_added_during_the_backup_is_never_silently_missing(sandbox: Sandbox, tmp_path: Path) -> None:
    """A collection added after the walk listed the store's files: the database captured later
    records it, the snapshot would lack its folder. Before, such a snapshot was complete (exit 0)
    and restored a store whose database names segments it does not have; now the store is named
    as not saved consistently."""
    sb = sandbox
    store = sb.workspace / "stores" / "chroma"
    store.mkdir(parents=True)
    stop = tmp_path / "stop"
    adder = subprocess.Popen([sys.executable, "-c", ADDER, str(store), str(stop)], stdout=subprocess.PIPE, text=True)
    named = 0
    try:
        assert adder.stdout is not None and adder.stdout.readline().strip() == "ready"
        for i in range(3):
            doc = sb.backup(check=None)
            if doc["incomplete"]:
                assert [x["path"] for x in doc["incomplete"]] == ["workspace/stores/chroma"], doc["incomplete"]
                assert doc["incomplete"][0]["error"].startswith("not saved consistently: segment folder(s) ")
                named += 1
                continue
            dest = tmp_path / f"restore-{i}"
            sb.restore_to(doc["id"], dest)
            restored = dest / "workspace" / "stores" / "chroma"
            con = sqlite3.connect(restored / "chroma.sqlite3")
            try:
                recorded = {r[0] for r in con.execute("SELECT name FROM segments")}
            finally:
                con.close()
            missing = sorted(n for n in recorded if not (restored / n / "header.bin").is_file())
            assert not missing, f"a complete snapshot whose database records segments it lacks: {missing[:3]}"
    finally:
        stop.touch()
        adder.communicate(timeout=60)
    assert named, "no backup met a collection added during it: the adder did not race them"


# argv: file, stop file. Appends a line every millisecond until the stop file exists.
APPENDER = textwrap.dedent(
    """
    import os, sys, time
    path, stop = sys.argv[1], sys.argv[2]
    print("ready", flush=True)
    with open(path, "a") as f:
        while not os.path.exists(stop):
            f.write("event\\n")
            f.flush()
            time.sleep(0.001)
    """
)


def test_a_busy_file_beside_index_files_does_not_make_a_store(sandbox: Sandbox, tmp_path: Path) -> None:
    """A user's folder that happens to hold a database and, in a folder beside it, `header.bin`
    and `data_level0.bin` with a log being written: only the HNSW index's own files are read with
    the database. Before, the log was part of the group, changed during every read, and the
    database's folder was named as not saved consistently (exit 3)."""
    sb = sandbox
    proj = sb.workspace / "proj"
    (proj / "cache").mkdir(parents=True)
    con = sqlite3.connect(proj / "app.db")
    con.execute("CREATE TABLE t(x)")
    con.execute("INSERT INTO t VALUES (1)")
    con.commit()
    con.close()
    for name in ("header.bin", "data_level0.bin"):
        (proj / "cache" / name).write_bytes(name.encode())
    stop = tmp_path / "stop"
    log = proj / "cache" / "events.log"
    argv = [sys.executable, "-c", APPENDER, str(log), str(stop)]
    appender = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert appender.stdout is not None and appender.stdout.readline().strip() == "ready"
        time.sleep(0.1)
        doc = sb.backup(check=None)
    finally:
        stop.touch()
        appender.communicate(timeout=60)
    assert doc["incomplete"] == [], doc["incomplete"]
    assert "workspace/proj/app.db" in {d["path"] for d in doc["databases"]}


def test_watch_says_it_does_not_cover_a_chromadb_stores_index_files(sandbox: Sandbox, tmp_path: Path) -> None:
    """`phx watch` follows `chroma.sqlite3` only: a `restore --at` would pair its state at that
    time with index files of another flush. The watch says so for that store (before, nothing)."""
    sb = sandbox
    store = sb.workspace / "stores" / "chroma"
    store.mkdir(parents=True)
    stop = tmp_path / "stop"
    stop_writer(start_writer(store, stop, 0.0), stop)
    res = sb.phx("watch", "--duration", "1", "--no-files", "--json").json()
    (warning,) = [w for w in res["warnings"] if "chromadb" in w]
    assert warning.startswith("workspace/stores/chroma/chroma.sqlite3 is a chromadb store: the watch follows its")
    assert "phx backup" in warning
