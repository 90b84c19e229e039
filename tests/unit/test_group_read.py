"""The retry and give-up logic of a store's group read (ops/backup.py `read_while_still`)."""

from __future__ import annotations

import os
from pathlib import Path

from phoenix_backup.ops.backup import read_while_still


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

    result, attempt = read_while_still(lambda: [_stat(f)], read, 5, 0.01, sleep=pauses.append)
    assert attempt == 3
    assert result == b"flush !!" == f.read_bytes()
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

    _, attempt = read_while_still(stats, read, 3, 0.0, sleep=lambda _s: None)
    assert attempt == 2 and seen[0] == [None] and seen[1][0] is not None
