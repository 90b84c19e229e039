"""The retry and give-up logic of a store's group read (ops/backup.py `read_while_still`)."""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import cast

from phoenix_backup.ops.backup import _flushes_done, read_while_still


def _stat(path: Path) -> os.stat_result:
    return os.stat(path)


def test_reads_again_until_the_files_hold_still(tmp_path: Path) -> None:
    f = tmp_path / "header.bin"
    f.write_bytes(b"flush 0")
    reads: list[bytes] = []
    pauses: list[float] = []

    def read(stats: object) -> bytes:
        data = f.read_bytes()
        reads.append(data)
        if len(reads) < 3:  # a flush lands during each of the first two reads
            f.write_bytes(b"flush " + b"!" * len(reads))  # a new size: mtime ticks are coarse
        return data

    def sleep(pause: float) -> None:
        pauses.append(pause)
        time.sleep(pause)

    result, attempt = read_while_still(lambda: [_stat(f)], read, 5, 0.01, sleep=sleep)
    assert attempt == 3
    assert result == b"flush !!" == f.read_bytes()
    # Each pause grows with the attempt, or waits out the tick in which the file last changed.
    assert len(pauses) == 2 and all(0 < p < 0.05 for p in pauses)


def test_gives_up_after_the_last_attempt_and_says_so(tmp_path: Path) -> None:
    f = tmp_path / "data_level0.bin"
    f.write_bytes(b"0")
    checks: list[int] = []
    n = 0

    def read(stats: object) -> int:
        nonlocal n
        n += 1
        f.write_bytes(b"x" * n)  # rewritten during every read
        return n

    result, attempt = read_while_still(lambda: [_stat(f)], read, 4, 0.0, lambda: checks.append(1), lambda _s: None)
    assert (result, attempt) == (4, None)
    assert len(checks) == 3  # the run's stop is checked before each retry


def test_a_file_that_appears_or_vanishes_is_a_change(tmp_path: Path) -> None:
    f = tmp_path / "length.bin"
    seen: list[list[os.stat_result | None]] = []

    def stats() -> list[os.stat_result | None]:
        return [_stat(f) if f.exists() else None]

    def read(before: list[os.stat_result | None]) -> None:
        seen.append(before)
        if len(seen) == 1:
            f.write_bytes(b"new")

    _, attempt = read_while_still(stats, read, 3, 0.0)
    assert attempt == 2 and seen[0] == [None] and seen[1][0] is not None


def _whole_seconds(path: Path) -> os.stat_result:
    """The file's stat as a file system with a clock of seconds gives it (ext3, FAT, some NFS
    servers); a clock of milliseconds behaves the same within one tick."""
    st = os.stat(path)
    second = 1_000_000_000
    fields = {"st_size": st.st_size, "st_ino": st.st_ino}
    fields |= {"st_mtime_ns": st.st_mtime_ns // second * second, "st_ctime_ns": st.st_ctime_ns // second * second}
    return cast(os.stat_result, SimpleNamespace(**fields))


def test_a_rewrite_within_one_tick_of_the_same_size_is_not_taken_for_holding_still(tmp_path: Path) -> None:
    """A flush rewrote both segment files, same sizes, within the tick of the flush before it:
    their stats are equal before and after the read, yet the read took one file from each flush.
    Before, that read counted as holding still (`header.bin` of flush 1, `data_level0.bin` of
    flush 2, attempt 1); now a read of files changed within a tick of it is done again."""
    a, b = tmp_path / "header.bin", tmp_path / "data_level0.bin"
    time.sleep(1 - time.time() % 1 + 0.01)  # the writes below, all within one second
    for f in (a, b):
        f.write_bytes(b"flush 1")
    flushes = 1

    def read(_stats: object) -> tuple[bytes, bytes]:
        nonlocal flushes
        first = a.read_bytes()
        if flushes == 1:  # the next flush lands between the two reads
            flushes = 2
            for f in (a, b):
                f.write_bytes(b"flush 2")
        return first, b.read_bytes()

    result, attempt = read_while_still(lambda: [_whole_seconds(a), _whole_seconds(b)], read, 4, 0.01)
    assert result == (b"flush 2", b"flush 2")
    assert attempt == 2


def test_a_flush_paused_half_way_is_not_taken_for_holding_still(tmp_path: Path) -> None:
    """A writer paused (descheduled, a slow disk) between two files of a flush: the files hold
    still, but `header.bin` is of flush 2 and `index_metadata.pickle` (written last) of flush 1.
    Before, that read counted as holding still; now it waits for the flush to end. (The e2e race
    restored `header.bin` of flush 7 beside `link_lists.bin` of flush 6 and an empty `length.bin`.)"""
    seg = tmp_path / "5f3c1e2a"
    seg.mkdir()
    header, pickle = seg / "header.bin", seg / "index_metadata.pickle"
    pickle.write_bytes(b"flush 1")
    header.write_bytes(b"flush 2")
    old = time.time_ns() - 10_000_000_000
    os.utime(pickle, ns=(old, old))  # flush 1 ended long ago
    os.utime(header, ns=(old + 5_000_000_000, old + 5_000_000_000))  # flush 2 began, then paused
    time.sleep(0.05)  # past the tick of the change times that sets

    def read(_stats: object) -> tuple[bytes, bytes]:
        return header.read_bytes(), pickle.read_bytes()

    def resume(_pause: float) -> None:  # between two reads, the writer ends flush 2
        pickle.write_bytes(b"flush 2")
        os.utime(pickle, ns=(old + 6_000_000_000, old + 6_000_000_000))
        time.sleep(0.05)  # past the tick of the change time that sets

    paths = [header, pickle]
    settled = partial(_flushes_done, [p.name for p in paths], [p.parent for p in paths])
    result, attempt = read_while_still(lambda: [_stat(p) for p in paths], read, 4, 0.01, sleep=resume, settled=settled)
    assert result == (b"flush 2", b"flush 2")
    assert attempt == 2


def test_a_file_dated_in_the_future_is_read_without_waiting_for_that_date(tmp_path: Path) -> None:
    # A file of a database's group dated 2100 (`touch -d`, a clock set wrong) never passed the
    # tick of its change time: the read waited until its date (`sleep` of 2.3 billion seconds),
    # and a backup hung. A time past the clock is no write of this clock's; the read holds still.
    f = tmp_path / "index_metadata.pickle"
    f.write_bytes(b"x")
    later = 4_102_444_800 * 10**9  # 2100-01-01
    os.utime(f, ns=(later, later))
    slept: list[float] = []
    time.sleep(0.03)  # past the tick of the change time the write and utime set (20 ms, fine clock)
    result, attempt = read_while_still(lambda: [_stat(f)], lambda _stats: "read", 3, 0.01, sleep=slept.append)
    assert (result, attempt) == ("read", 1), slept
    assert all(pause < 2 for pause in slept), slept
