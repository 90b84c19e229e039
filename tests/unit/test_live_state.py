"""The state an in-place restore notes of a path before its safety snapshot (sinks/files.py
`live_state`), which the restore compares again before it replaces or deletes the path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from phoenix_backup.sinks import files


def test_a_file_that_keeps_growing_while_it_is_hashed_is_read_a_bounded_amount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small file the agent appends to faster than the restore hashes it. Before, the hash read
    to the end of the file, which never came: the restore hung (here: the 100 MiB stand-in for
    "for ever" ran out). Now it reads at most one byte past the size it saw, and the state it
    notes differs from the settled file's, so the restore leaves that file as changed."""
    path = tmp_path / "log.txt"
    path.write_bytes(b"0123456789")
    settled = files.live_state(path)
    real_read = os.read
    calls = 0

    def growing(fd: int, n: int) -> bytes:
        nonlocal calls
        calls += 1
        if calls > 100:
            raise RuntimeError("read 100 chunks of a 10-byte file: it never ends")
        got = real_read(fd, n)
        return got + b"+" * (n - len(got))  # the agent's appended bytes, always more

    monkeypatch.setattr(os, "read", growing)
    growing_state = files.live_state(path)
    monkeypatch.undo()
    assert growing_state is not None and settled is not None
    assert growing_state[:5] == settled[:5] and growing_state[7] != settled[7]


@pytest.mark.parametrize("size", [files.CHECKED_BYTES, files.CHECKED_BYTES + 1])
def test_a_rewrite_keeping_size_and_times_is_seen_up_to_the_boundary_and_not_past_it(
    tmp_path: Path, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A same-size rewrite with mtime and ctime unchanged (a coarse clock's tick): seen by its
    bytes at exactly CHECKED_BYTES, not one byte past it (as docs/restore.md says) when the file's
    ctime was older than RECENT_NS when noted (then a real write always moves its ctime)."""
    path = tmp_path / "big.bin"
    path.write_bytes(b"A" * size)
    later = path.stat().st_ctime_ns + files.RECENT_NS + 1
    monkeypatch.setattr(files.time, "time_ns", lambda: later)
    before = files.live_state(path)
    assert before is not None
    with path.open("r+b") as f:
        f.write(b"B")
    now = files._state_at(None, path, hashed=before[7] != "")  # as the restore looks again
    assert now is not None
    # The clock's tick, as the test cannot wait for one: the times and inode of before.
    now = (*before[:7], now[7])
    assert files._same_state(before, now) is (size > files.CHECKED_BYTES)


def test_a_large_file_written_within_the_last_ticks_is_compared_by_its_bytes(tmp_path: Path) -> None:
    """A file over CHECKED_BYTES the agent has just written, then rewrites with as many bytes in
    the same tick of the file system's clock (size, mtime and ctime as noted). Before, a file that
    large was compared by stat only: the restore took it for unchanged and replaced the agent's
    latest bytes, which were in no snapshot. Now its ctime is recent when noted, so its bytes are
    hashed too, and again at the second look: the rewrite is seen."""
    path = tmp_path / "big.bin"
    path.write_bytes(b"A" * (files.CHECKED_BYTES + 1))
    before = files.live_state(path)
    assert before is not None and before[7] != ""
    with path.open("r+b") as f:
        f.write(b"B")
    now = files._state_at(None, path, hashed=True)
    assert now is not None
    now = (*before[:7], now[7])  # the same tick: the times and inode of before
    assert not files._same_state(before, now)


def test_a_large_file_untouched_for_longer_than_a_tick_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cost stays where it was: a large file with one name and an old ctime is compared by
    stat (its ctime, which a later write always moves past), its bytes never read."""
    path = tmp_path / "big.bin"
    path.write_bytes(b"A" * (files.CHECKED_BYTES + 1))
    later = path.stat().st_ctime_ns + files.RECENT_NS + 1
    monkeypatch.setattr(files.time, "time_ns", lambda: later)
    monkeypatch.setattr(files, "_digest_at", lambda *a: pytest.fail("read a large file with an old ctime"))
    before = files.live_state(path)
    assert before is not None and before[7] == ""


def test_a_large_file_with_several_names_is_compared_by_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its ctime is not compared (the restore's rename over another name moves it), so an old
    ctime does not spare reading it: a rewrite with its mtime set back is seen by its bytes."""
    path = tmp_path / "big.bin"
    path.write_bytes(b"A" * (files.CHECKED_BYTES + 1))
    os.link(path, tmp_path / "other.bin")
    later = path.stat().st_ctime_ns + files.RECENT_NS + 1
    monkeypatch.setattr(files.time, "time_ns", lambda: later)
    before = files.live_state(path)
    assert before is not None and before[7] != ""
    st = path.stat()
    with path.open("r+b") as f:
        f.write(b"B")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = files._state_at(None, path, hashed=True)
    assert not files._same_state(before, now)
