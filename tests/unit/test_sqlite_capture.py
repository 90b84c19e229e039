"""Incremental capture of live SQLite databases, against SQLite's own bytes for the same state.

Each image must be byte-equal to the state SQLite itself writes when it checkpoints a copy of the
files (`checkpointed_bytes`), and whenever the capture claims continuity, every page that differs
from the previous image must be among its `changed` pages: a page missing there would be a
silently stale page in the next snapshot. Random sequences of commits, checkpoints by the
application (PASSIVE, FULL, RESTART, TRUNCATE), checkpoints taken over by the capture, releases and
resumptions from a saved position run against every page size.

Hypothesis runs a small budget by default; `PHX_TEST_HEAVY=1` runs a large one.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from phoenix_backup.sources.sqlite_capture import CaptureError, Image, Position, SqliteCapture
from sqlite_states import checkpointed_bytes, pages_differing

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
EXAMPLES = 250 if HEAVY else 20


def fresh(db: Path, page_size: int = 4096, journal: str = "wal") -> sqlite3.Connection:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    con = sqlite3.connect(db, isolation_level=None, timeout=0)
    con.execute(f"PRAGMA page_size={page_size}")
    con.execute(f"PRAGMA journal_mode={journal}")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    con.execute("CREATE INDEX t_v ON t(v)")
    return con


# Another process committing one row, without waiting for a lock.
WRITE_ONCE = (
    "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=0); c.execute('INSERT INTO t(v) VALUES (1)'); "
    "c.commit()"
)


def whole(image: Image) -> bytes:
    return image[0 : len(image)]


class Checker:
    """Compares every image with the oracle and checks the continuity claims."""

    def __init__(self, db: Path, scratch: Path) -> None:
        self.db, self.scratch = db, scratch
        self.previous: bytes | None = None
        self.claims = 0

    def check(self, image: Image) -> bytes:
        data = whole(image)
        expected = checkpointed_bytes(self.db, self.scratch)
        assert len(data) == len(expected), (len(data), len(expected))
        assert data == expected, "the image differs from the state SQLite itself writes"
        if image.changed is not None and self.previous is not None:
            self.claims += 1
            missed = pages_differing(self.previous, data, image.page_size) - image.changed
            assert not missed, f"pages {sorted(missed)} changed but the capture did not say so"
        self.previous = data
        return data


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("commit"), st.integers(1, 25)),
        st.tuples(st.just("delete"), st.integers(1, 15)),
        st.tuples(st.just("app-checkpoint"), st.sampled_from(["PASSIVE", "FULL", "RESTART", "TRUNCATE"])),
        st.tuples(st.just("capture"), st.just(0)),
        st.tuples(st.just("our-checkpoint"), st.just(0)),
        st.tuples(st.just("release"), st.just(0)),
        st.tuples(st.just("resume"), st.just(0)),
    ),
    min_size=3,
    max_size=25,
)


@given(st.sampled_from([512, 1024, 4096, 65536]), STEPS, st.integers(0, 2**31))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_images_equal_sqlites_own_bytes_and_claim_every_changed_page(
    tmp_path: Path, page_size: int, steps: list[tuple[str, object]], seed: int
) -> None:
    rng = random.Random(seed)
    db = tmp_path / "live.db"
    con = fresh(db, page_size)
    checker = Checker(db, tmp_path / "oracle")
    capture: SqliteCapture | None = SqliteCapture(db)
    saved: Position | None = None
    try:
        assert capture is not None
        checker.check(capture.capture())
        for step, arg in steps:
            if step == "commit":
                con.execute("BEGIN")
                rows = [(rng.randbytes(rng.randint(1, 3000)),) for _ in range(int(str(arg)))]
                con.executemany("INSERT INTO t(v) VALUES (?)", rows)
                con.execute("COMMIT")
            elif step == "delete":
                con.execute("DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT ?)", (arg,))
            elif step == "app-checkpoint":
                # The application's checkpoint: blocked by the capture's reader or not, never wrong.
                con.execute(f"PRAGMA wal_checkpoint({arg})").fetchall()
            elif capture is None:
                # Resumed from the saved position after a gap in which anything may have happened.
                capture = SqliteCapture(db, saved)
                checker.check(capture.capture())
            elif step == "capture":
                checker.check(capture.capture())
            elif step == "our-checkpoint":
                checker.check(capture.capture())
                result = capture.checkpoint()
                assert result is not None and result.checkpointed <= result.wal_frames
            elif step == "release":
                capture.release()
            else:
                saved = Position.from_json(json.loads(json.dumps(capture.position.to_json())))
                capture.close()
                capture = None
        if capture is None:
            capture = SqliteCapture(db, saved)
        final = capture.capture()
        checker.check(final)
        assert final.changed is not None or final.reason
    finally:
        if capture is not None:
            capture.close()
        con.close()


def test_a_position_without_wal_frames_proves_nothing_later(tmp_path: Path) -> None:
    """A position taken when the WAL was empty names no generation: by the next capture a whole
    generation may have been written, checkpointed into the file and reset, so every page is
    compared again."""
    db = tmp_path / "empty-wal.db"
    con = fresh(db)
    con.execute("INSERT INTO t(v) VALUES (x'01')")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    checker = Checker(db, tmp_path / "oracle")
    with SqliteCapture(db) as capture:
        checker.check(capture.capture())
        saved = capture.position
    assert saved is not None and saved.frame == 0
    con.executemany("INSERT INTO t(v) VALUES (?)", [(os.urandom(900),) for _ in range(40)])
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # those pages are now in the file only
    con.execute("INSERT INTO t(v) VALUES (x'02')")
    with SqliteCapture(db, saved) as capture:
        image = capture.capture()
        checker.check(image)
        assert image.changed is None and "restarted" in image.reason
    con.close()


def test_continuity_while_held_even_through_a_restart(tmp_path: Path) -> None:
    """Held since the last image, the capture proves continuity through new frames and through a
    WAL restart after its own checkpoint: only the changed pages are claimed, never all."""
    db = tmp_path / "held.db"
    con = fresh(db)
    for _ in range(300):
        con.execute("INSERT INTO t(v) VALUES (?)", (os.urandom(500),))
    checker = Checker(db, tmp_path / "oracle")
    with SqliteCapture(db) as capture:
        first = capture.capture()
        checker.check(first)
        assert first.changed is None and first.reason == "the first capture"
        assert capture.pinned
        con.execute("UPDATE t SET v = x'00' WHERE id = 7")
        second = capture.capture()
        checker.check(second)
        assert second.changed is not None and 0 < len(second.changed) < second.page_count // 4
        salt = second.position.salt
        result = capture.checkpoint()
        assert result is not None and result.checkpointed == result.wal_frames > 0
        con.execute("UPDATE t SET v = x'01' WHERE id = 8")  # the WAL restarts: a new generation
        third = capture.capture()
        checker.check(third)
        assert third.position.salt != salt, "setup: the WAL restarted"
        assert third.changed is not None and 0 < len(third.changed) < third.page_count // 4
    con.close()


def test_a_wal_restarted_right_after_the_snapshot_was_pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every frame checkpointed, SQLite's reader ignores the WAL, so a writer may restart it
    between the capture pinning its snapshot and reading the WAL's header (seen in a backup beside
    a writer: "... does not belong to the generation its wal-index describes"). The image is then
    the database file, which is the pinned state, and the next capture still names what changed."""
    db = tmp_path / "restart.db"
    con = fresh(db)
    for _ in range(200):
        con.execute("INSERT INTO t(v) VALUES (?)", (os.urandom(500),))
    busy, frames, done = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and frames == done > 0, "setup: every frame is in the database file"
    pinned = checkpointed_bytes(db, tmp_path / "before")
    original = SqliteCapture._wal_image

    def commit_first(self: SqliteCapture, *args: Any) -> Image:
        monkeypatch.setattr(SqliteCapture, "_wal_image", original)
        con.execute("UPDATE t SET v = x'00' WHERE id = 7")  # restarts the WAL: new salts, frame 1
        return original(self, *args)

    monkeypatch.setattr(SqliteCapture, "_wal_image", commit_first)
    checker = Checker(db, tmp_path / "oracle")
    with SqliteCapture(db) as capture:
        first = capture.capture()
        assert whole(first) == pinned
        checker.previous = pinned
        second = capture.capture()
        checker.check(second)
        assert second.changed is not None and 0 < len(second.changed) < second.page_count // 4
        assert second.position.salt and second.position.frame > 0
    con.close()


def test_pages_only_a_checkpoint_read_are_named_in_the_next_image(tmp_path: Path) -> None:
    """checkpoint() reads the last commits itself (under the write lock): the caller's next image
    still names their pages, or they would be missing from everything built on the images."""
    db = tmp_path / "carry.db"
    con = fresh(db)
    for _ in range(200):
        con.execute("INSERT INTO t(v) VALUES (?)", (os.urandom(300),))
    checker = Checker(db, tmp_path / "oracle")
    with SqliteCapture(db) as capture:
        checker.check(capture.capture())
        con.execute("UPDATE t SET v = x'05' WHERE id = 9")
        assert capture.checkpoint() is not None
        image = capture.capture()
        checker.check(image)
        assert image.changed
    con.close()


def test_resumes_from_a_saved_position_when_the_wal_kept_its_generation(tmp_path: Path) -> None:
    """Across processes: the position proves continuity when the WAL was only appended to, and
    not after another process checkpointed and restarted it."""
    db = tmp_path / "resume.db"
    con = fresh(db)
    for _ in range(100):
        con.execute("INSERT INTO t(v) VALUES (?)", (os.urandom(400),))
    checker = Checker(db, tmp_path / "oracle")
    with SqliteCapture(db) as capture:
        checker.check(capture.capture())
        saved = capture.position.to_json()
    con.execute("UPDATE t SET v = x'02' WHERE id = 3")
    with SqliteCapture(db, Position.from_json(saved)) as capture:
        image = capture.capture()
        checker.check(image)
        assert image.changed is not None and image.reason == ""
        saved = capture.position.to_json()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("UPDATE t SET v = x'03' WHERE id = 4")
    with SqliteCapture(db, Position.from_json(saved)) as capture:
        image = capture.capture()
        checker.check(image)
        assert image.changed is None and "restarted" in image.reason
    con.close()


def test_a_replaced_database_file_is_scanned_again(tmp_path: Path) -> None:
    db = tmp_path / "replaced.db"
    con = fresh(db)
    con.execute("INSERT INTO t(v) VALUES (x'01')")
    other = tmp_path / "other.db"
    con2 = fresh(other)
    con2.execute("INSERT INTO t(v) VALUES (?)", (b"other" * 100,))
    con2.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con2.close()
    checker = Checker(db, tmp_path / "oracle")
    with SqliteCapture(db) as capture:
        checker.check(capture.capture())
        saved = capture.position
    con.close()
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    os.replace(other, db)
    with SqliteCapture(db, saved) as capture:
        image = capture.capture()
        checker.check(image)
        assert image.changed is None and "replaced" in image.reason


def test_uncommitted_frames_in_the_wal_are_never_captured(tmp_path: Path) -> None:
    """A transaction large enough to spill pages into the WAL before it commits: its frames lie
    past the wal-index's last frame, and the image is the state before it."""
    db = tmp_path / "spill.db"
    con = fresh(db)
    con.execute("INSERT INTO t(v) VALUES (x'01')")
    before = checkpointed_bytes(db, tmp_path / "oracle")
    wal_before = Path(str(db) + "-wal").stat().st_size
    con.execute("PRAGMA cache_size=10")
    con.execute("BEGIN")
    con.executemany("INSERT INTO t(v) VALUES (?)", [(os.urandom(1000),) for _ in range(400)])
    assert Path(str(db) + "-wal").stat().st_size > wal_before, "setup: the open transaction spilled into the WAL"
    with SqliteCapture(db) as capture:
        image = capture.capture()
        assert whole(image) == before
        assert capture.connection.execute("SELECT count(*) FROM t").fetchone()[0] == 1
        con.execute("COMMIT")
        after = capture.capture()
        assert after.changed is not None and len(after.changed) > 50
        assert whole(after) == checkpointed_bytes(db, tmp_path / "oracle")
    con.close()


def test_rollback_journal_database_is_held_with_a_shared_lock(tmp_path: Path) -> None:
    """A rollback-journal database: the image is the file's pages, every page compared by its
    hash (changed is None), and no other process can commit while the image is read, even
    after the capture opened and read the file's descriptors itself."""
    db = tmp_path / "journal.db"
    con = fresh(db, 1024, journal="delete")
    con.executemany("INSERT INTO t(v) VALUES (?)", [(os.urandom(300),) for _ in range(50)])
    con.close()
    on_disk = db.read_bytes()  # before the capture: closing a descriptor would drop its lock
    writer = WRITE_ONCE
    with SqliteCapture(db) as capture:
        image = capture.capture()
        assert image.journal == "rollback" and image.changed is None and "hash" in image.reason
        data = whole(image)
        assert data == on_disk
        blocked = subprocess.run([sys.executable, "-c", writer, str(db)], capture_output=True, text=True)
        assert blocked.returncode != 0 and "locked" in blocked.stderr
        assert whole(image) == data
        capture.release()
        done = subprocess.run([sys.executable, "-c", writer, str(db)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        again = capture.capture()
        assert whole(again) == db.read_bytes() != data


def test_an_image_cannot_be_read_after_its_capture_moved_on(tmp_path: Path) -> None:
    db = tmp_path / "stale.db"
    con = fresh(db)
    con.execute("INSERT INTO t(v) VALUES (x'01')")
    with SqliteCapture(db) as capture:
        old = capture.capture()
        assert old.page(1)[:16] == b"SQLite format 3\0"
        capture.capture()
        with pytest.raises(CaptureError, match="moved on"):
            old.page(1)
    with pytest.raises(CaptureError, match="moved on"):
        old[0:10]
    con.close()


def test_what_cannot_be_captured_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(CaptureError, match="cannot open database"), SqliteCapture(missing) as capture:
        capture.capture()
    assert not missing.exists(), "a capture never creates a database"
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 300)
    with pytest.raises(CaptureError, match=r"junk\.db"), SqliteCapture(junk) as capture:
        capture.capture()
    folder = tmp_path / "folder.db"
    folder.mkdir()
    with pytest.raises(CaptureError, match=r"folder\.db"), SqliteCapture(folder) as capture:
        capture.capture()


def test_a_second_capture_of_the_same_file_keeps_the_first_ones_lock(tmp_path: Path) -> None:
    """Two captures of one database in one process (two configured paths naming the same file):
    the one that finishes first must not drop the other's read lock by closing its descriptors."""
    db = tmp_path / "twice.db"
    con = fresh(db, 1024, journal="delete")
    con.execute("INSERT INTO t(v) VALUES (x'01')")
    con.close()
    writer = WRITE_ONCE
    with SqliteCapture(db) as first:
        image = first.capture()
        with SqliteCapture(tmp_path / "." / "twice.db") as second:
            second.capture()
        blocked = subprocess.run([sys.executable, "-c", writer, str(db)], capture_output=True, text=True)
        assert blocked.returncode != 0 and "locked" in blocked.stderr, "the first capture's lock was dropped"
        assert whole(image)[:16] == b"SQLite format 3\0"
    done = subprocess.run([sys.executable, "-c", writer, str(db)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_database_named_through_a_symbolic_link(tmp_path: Path) -> None:
    """SQLite keeps -wal and -shm beside the file a link points to: the capture reads them there."""
    real = tmp_path / "data" / "real.db"
    real.parent.mkdir()
    con = fresh(real)
    con.executemany("INSERT INTO t(v) VALUES (?)", [(os.urandom(700),) for _ in range(30)])
    link = tmp_path / "link.db"
    link.symlink_to(real)
    with SqliteCapture(link) as capture:
        image = capture.capture()
        assert image.wal_frames > 0, "setup: commits live in the -wal"
        assert whole(image) == checkpointed_bytes(real, tmp_path / "oracle")
    assert not Path(str(link) + "-wal").exists()
    con.close()


def test_a_saved_position_round_trips_and_a_damaged_one_is_refused() -> None:
    position = Position(1, 2, 4096, 10, "00ff" * 4, 7, (3, 4))
    assert Position.from_json(json.loads(json.dumps(position.to_json()))) == position
    good = position.to_json()
    for bad in ({}, [], {**good, "checksum": [1]}, {**good, "frame": "x"}, {**good, "checksum": None}):
        with pytest.raises(ValueError, match="not a capture position"):
            Position.from_json(bad)  # type: ignore[arg-type]
