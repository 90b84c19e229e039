"""The WAL and wal-index parsers against files SQLite itself wrote: random commit sequences,
checkpoints and restarts, every page size; and a frame of another generation, or a last frame
that is not the one the wal-index records, is caught.

Hypothesis runs a small budget by default; `PHX_TEST_HEAVY=1` runs a large one.
"""

from __future__ import annotations

import os
import random
import sqlite3
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phoenix_backup.sources.sqlite_wal import (
    FRAME_HEADER_SIZE,
    INDEX_READ_SIZE,
    WAL_HEADER_SIZE,
    FrameHeader,
    IndexHeader,
    WalFormatError,
    WalHeader,
    check_frame,
    frame_offset,
    wal_checksum,
)

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
EXAMPLES = 300 if HEAVY else 25
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def reference_checksum(data: bytes, big_endian: bool, s0: int = 0, s1: int = 0) -> tuple[int, int]:
    """The checksum as the file format document states it, one 32-bit word at a time."""
    order = "big" if big_endian else "little"
    for i in range(0, len(data), 8):
        s0 = (s0 + int.from_bytes(data[i : i + 4], order) + s1) % 2**32
        s1 = (s1 + int.from_bytes(data[i + 4 : i + 8], order) + s0) % 2**32
    return s0, s1


@given(
    st.binary(max_size=600).map(lambda b: b[: len(b) // 8 * 8]),
    st.booleans(),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)
@settings(max_examples=EXAMPLES * 4, deadline=None)
def test_checksum_follows_the_format(data: bytes, big: bool, s0: int, s1: int) -> None:
    assert wal_checksum(data, big, s0, s1) == reference_checksum(data, big, s0, s1)


def test_checksum_refuses_a_partial_word_pair() -> None:
    with pytest.raises(ValueError):
        wal_checksum(b"1234567", False)


# -- real WALs ------------------------------------------------------------------------------------


def parse_all(db: Path) -> tuple[IndexHeader, list[FrameHeader]]:
    """The wal-index header and every frame up to its mxFrame, each checked (check_frame, the last
    one against the wal-index), and their checksums chained as the format document states."""
    index = IndexHeader.parse(Path(str(db) + "-shm").read_bytes()[:INDEX_READ_SIZE])
    raw = Path(str(db) + "-wal").read_bytes()
    frames: list[FrameHeader] = []
    if index.max_frame == 0:
        return index, frames
    header = WalHeader.parse(raw[:WAL_HEADER_SIZE])
    assert header.salt == index.salt
    assert header.page_size == index.page_size
    checksum = header.checksum
    for number in range(1, index.max_frame + 1):
        at = frame_offset(number, header.page_size)
        last = index.frame_checksum if number == index.max_frame else None
        frame = check_frame(raw[at : at + FRAME_HEADER_SIZE], header, last)
        data = raw[at : at + 8] + raw[at + FRAME_HEADER_SIZE : at + FRAME_HEADER_SIZE + header.page_size]
        checksum = reference_checksum(data, header.big_endian, *checksum)
        assert frame.checksum == checksum, "SQLite's frames chain as the format document states"
        frames.append(frame)
    assert checksum == index.frame_checksum, "the chain ends where the wal-index says"
    return index, frames


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("commit"), st.integers(1, 30), st.integers(0, 3000)),
        st.tuples(st.just("checkpoint"), st.sampled_from(["PASSIVE", "FULL", "RESTART", "TRUNCATE"]), st.just(0)),
        st.tuples(st.just("delete"), st.integers(1, 20), st.just(0)),
    ),
    min_size=1,
    max_size=12,
)


@given(st.sampled_from([512, 1024, 4096, 8192, 65536]), OPERATIONS, st.integers(0, 2**31))
@SETTINGS
def test_wal_written_by_sqlite_parses_and_chains(tmp_path: Path, page_size: int, ops: list, seed: int) -> None:
    """After every commit, checkpoint and restart, frames 1..mxFrame all check (salts, chained
    checksums), the chain ends at the wal-index's checksum, and the last frame ends a transaction
    whose database size is the wal-index's."""
    rng = random.Random(seed)
    db = tmp_path / f"db-{seed}-{page_size}-{len(ops)}.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute(f"PRAGMA page_size={page_size}")
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA wal_autocheckpoint=0")
        con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        for op, a, b in ops:
            if op == "commit":
                con.execute("BEGIN")
                con.executemany("INSERT INTO t(v) VALUES (?)", [(rng.randbytes(b),) for _ in range(a)])
                con.execute("COMMIT")
            elif op == "delete":
                con.execute("DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT ?)", (a,))
            else:
                con.execute(f"PRAGMA wal_checkpoint({a})").fetchall()
            index, frames = parse_all(db)
            if frames:
                assert frames[-1].commit == index.pages
                assert all(f.commit == 0 or f.commit >= 1 for f in frames)
            assert index.page_size == page_size
            assert index.backfilled <= index.max_frame
    finally:
        con.close()


@st.composite
def damage(draw: st.DrawFn) -> tuple[int, int, int]:
    frame = draw(st.integers(1, 40))
    where = draw(st.integers(8, FRAME_HEADER_SIZE - 1))  # the salts and the checksum
    bit = draw(st.integers(0, 7))
    return frame, where, bit


@given(damage())
@settings(max_examples=EXAMPLES * 4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_frame_of_another_generation_or_state_is_caught(
    wal_file: tuple[bytes, IndexHeader], hit: tuple[int, int, int]
) -> None:
    """A bit flipped in any frame's salts, or in the checksum of the frame the wal-index ends at,
    makes that frame fail: a frame that is not of the WAL's generation, or a WAL that is not the
    state the wal-index describes, is never taken for a committed one."""
    raw, index = wal_file
    header = WalHeader.parse(raw[:WAL_HEADER_SIZE])
    frame, where, bit = hit
    frame = 1 + (frame - 1) % index.max_frame
    if where >= 16:
        frame = index.max_frame  # a checksum is compared for the last frame only
    last = index.frame_checksum if frame == index.max_frame else None
    at = frame_offset(frame, header.page_size)
    good = bytearray(raw[at : at + FRAME_HEADER_SIZE])
    check_frame(good, header, last)
    good[where] ^= 1 << bit
    with pytest.raises(WalFormatError):
        check_frame(good, header, last)


def test_a_last_frame_that_ends_no_transaction_is_refused(wal_file: tuple[bytes, IndexHeader]) -> None:
    raw, index = wal_file
    header = WalHeader.parse(raw[:WAL_HEADER_SIZE])
    at = frame_offset(index.max_frame, header.page_size)
    frame = bytearray(raw[at : at + FRAME_HEADER_SIZE])
    frame[4:8] = bytes(4)
    with pytest.raises(WalFormatError, match="wal-index"):
        check_frame(frame, header, index.frame_checksum)
    with pytest.raises(WalFormatError, match="ends inside"):
        check_frame(frame[:20], header, index.frame_checksum)


@pytest.fixture(scope="module")
def wal_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, IndexHeader]:
    db = tmp_path_factory.mktemp("wal") / "frames.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA page_size=1024")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("CREATE TABLE t(v BLOB)")
    for i in range(30):
        con.execute("INSERT INTO t VALUES (?)", (random.Random(i).randbytes(700),))
    index = IndexHeader.parse(Path(str(db) + "-shm").read_bytes()[:INDEX_READ_SIZE])
    raw = Path(str(db) + "-wal").read_bytes()
    con.close()
    return raw, index


def test_frames_of_an_earlier_generation_are_refused(tmp_path: Path) -> None:
    """After a checkpoint restarts the WAL, the old frames beyond the new ones keep their old
    salts: they fail as frames of an earlier generation, whatever their checksums."""
    db = tmp_path / "gen.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("CREATE TABLE t(v BLOB)")
    for i in range(20):
        con.execute("INSERT INTO t VALUES (?)", (bytes(2000) + bytes([i]),))
    old = IndexHeader.parse(Path(str(db) + "-shm").read_bytes()[:INDEX_READ_SIZE])
    con.execute("PRAGMA wal_checkpoint(RESTART)")
    con.execute("INSERT INTO t VALUES (x'01')")
    index, _frames = parse_all(db)
    assert index.salt != old.salt and index.max_frame < old.max_frame
    raw = Path(str(db) + "-wal").read_bytes()
    header = WalHeader.parse(raw[:WAL_HEADER_SIZE])
    stale = index.max_frame + 1
    at = frame_offset(stale, header.page_size)
    leftover = raw[at : at + FRAME_HEADER_SIZE + header.page_size]
    assert FrameHeader.parse(leftover).salt == old.salt, "setup: a frame of the old generation is still there"
    with pytest.raises(WalFormatError, match="earlier generation"):
        check_frame(leftover, header)
    con.close()


def test_a_damaged_or_foreign_wal_header_is_refused() -> None:
    good = bytearray(struct.pack(">4I", 0x377F0682, 3007000, 4096, 0) + os.urandom(8))
    good += struct.pack(">2I", *wal_checksum(bytes(good), False))
    assert WalHeader.parse(bytes(good)).page_size == 4096
    cases = {
        "magic": (0, b"\x00\x00\x00\x00"),
        "format version": (4, struct.pack(">I", 3007001)),
        "page size": (8, struct.pack(">I", 1000)),
        "checksum": (20, b"\xff"),
    }
    for expected, (at, patch) in cases.items():
        bad = bytearray(good)
        bad[at : at + len(patch)] = patch
        with pytest.raises(WalFormatError, match=expected):
            WalHeader.parse(bytes(bad))
    with pytest.raises(WalFormatError, match="shorter"):
        WalHeader.parse(bytes(good[:20]))


def test_a_torn_or_uninitialised_index_header_is_refused(tmp_path: Path) -> None:
    """SQLite's readers trust the wal-index header only when both copies agree and its checksum
    is right: a read that tears while SQLite updates it is read again, never trusted."""
    db = tmp_path / "index.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t(v)")
    raw = Path(str(db) + "-shm").read_bytes()[:INDEX_READ_SIZE]
    con.close()
    index = IndexHeader.parse(raw)
    assert index.max_frame > 0
    native = "<" if sys.byteorder == "little" else ">"

    def patched(offset: int, data: bytes, both: bool) -> bytes:
        out = bytearray(raw)
        out[offset : offset + len(data)] = data
        if both:
            out[48 + offset : 48 + offset + len(data)] = data
        return bytes(out)

    torn = patched(16, struct.pack(native + "I", index.max_frame + 1), both=False)
    with pytest.raises(WalFormatError, match="copies"):
        IndexHeader.parse(torn)
    forged = patched(16, struct.pack(native + "I", index.max_frame + 1), both=True)
    with pytest.raises(WalFormatError, match="checksum"):
        IndexHeader.parse(forged)
    with pytest.raises(WalFormatError, match="not initialised"):
        IndexHeader.parse(patched(12, b"\x00", both=True))
    with pytest.raises(WalFormatError, match="shorter"):
        IndexHeader.parse(raw[:60])
