"""The restore's pack schedule (repo/reader.py `PackSchedule`) holds a bounded amount, whatever
the number of files, and lets go of every blob: taken, or left by a file that failed."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from phoenix_backup.repo import keys, reader
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Extent, Node
from phoenix_backup.storage.local import LocalBackend

KIB = 1024


def _files(repo: Repository, count: int) -> list[tuple[str, Node, bytes]]:
    rng = random.Random(count)
    out = []
    for i in range(count):
        data = rng.randbytes(rng.randint(1, 30) * KIB)
        bid, _ = repo.save_blob(BlobType.DATA, data)
        node = Node(
            name=f"f{i}",
            type="file",
            size=len(data),
            content=[Extent(bid, 0, len(data))],
            sha256=hashlib.sha256(data).hexdigest(),
        )
        out.append((f"workspace/f{i}", node, data))
    repo.flush()
    return out


def test_the_schedule_holds_a_bounded_amount_and_lets_go_of_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 files of up to 30 KiB with a 128 KiB bound: each file's blobs are there when it begins,
    what is held never passes the bound plus one file, and once every file ended (half of them
    without taking their blobs, as a failed write) nothing is held."""
    monkeypatch.setattr(reader, "SCHEDULE_AHEAD", 128 * KIB)
    repo = Repository.init(LocalBackend(tmp_path / "repo"), keys.wrap_none, False)
    files = _files(repo, 300)
    schedule = reader.PackSchedule(repo, [(lg, node) for lg, node, _ in files])
    peak = 0
    for i, (logical, node, data) in enumerate(files):
        shared = schedule.begin(logical)
        assert shared is not None
        assert schedule.begin(logical) is None  # begun once: a second writer reads its own
        peak = max(peak, schedule._held)
        if i % 2:
            assert b"".join(shared.take(b) or b"" for b in node.blobs()) == data
        shared.end()
    assert peak <= 128 * KIB + 30 * KIB
    assert schedule._held == 0 and not schedule._blobs and not schedule._owed


def test_a_file_that_never_began_lets_go_when_ended(tmp_path: Path) -> None:
    """A file whose write failed before it read anything (its folder was a symlink) is ended by
    the restore all the same: its blobs are let go, the files after it still get theirs."""
    repo = Repository.init(LocalBackend(tmp_path / "repo"), keys.wrap_none, False)
    files = _files(repo, 3)
    schedule = reader.PackSchedule(repo, [(lg, node) for lg, node, _ in files])
    first = schedule.begin(files[0][0])
    assert first is not None
    schedule.end(files[1][0])  # never began
    third = schedule.begin(files[2][0])
    assert third is not None
    assert b"".join(third.take(b) or b"" for b in files[2][1].blobs()) == files[2][2]
    third.end()
    first.end()
    assert schedule._held == 0 and not schedule._blobs


def test_a_file_ended_before_it_was_planned_is_never_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that failed before its turn came is not planned when its batch comes: nothing of
    it is read or held."""
    monkeypatch.setattr(reader, "SCHEDULE_AHEAD", 2)  # a batch of one file
    repo = Repository.init(LocalBackend(tmp_path / "repo"), keys.wrap_none, False)
    files = _files(repo, 3)
    schedule = reader.PackSchedule(repo, [(lg, node) for lg, node, _ in files])
    schedule.end(files[1][0])  # failed before anything was planned for it
    third = schedule.begin(files[2][0])  # plans the first, skips the second, plans the third
    assert third is not None
    assert set(schedule._owed) == {files[0][0], files[2][0]}
    schedule.end(files[0][0])
    third.end()
    assert schedule._held == 0 and not schedule._blobs


def test_a_forked_child_reads_through_a_decode_pool_of_its_own(tmp_path: Path) -> None:
    """A process that read through the decode pool, then forked (the Python API in a
    multiprocessing worker): the child has none of the pool's threads, and its schedule's reads
    waited for ever on the inherited pool. The child starts its own and gets every byte."""
    import os
    import signal
    import time

    repo = Repository.init(LocalBackend(tmp_path / "repo"), keys.wrap_none, False)
    files = _files(repo, 5)
    schedule = reader.PackSchedule(repo, [(lg, node) for lg, node, _ in files[:1]])
    shared = schedule.begin(files[0][0])  # the parent's pool exists, its threads have run
    assert shared is not None and shared.take(next(iter(files[0][1].blobs()))) is not None
    shared.end()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            signal.alarm(20)  # a child that hangs ends; the parent below gives up at 20 s anyway
            child = reader.PackSchedule(repo, [(lg, node) for lg, node, _ in files[1:]])
            ok = True
            for logical, node, data in files[1:]:
                mine = child.begin(logical)
                assert mine is not None
                ok = ok and b"".join(mine.take(b) or b"" for b in node.blobs()) == data
                mine.end()
            code = 0 if ok else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's reads waited for the parent's decode pool")
    assert os.waitstatus_to_exitcode(status) == 0


def test_many_tiny_files_hold_no_more_than_the_bound(tmp_path: Path) -> None:
    """24,000 files of 8 bytes: weighed by their bytes alone, all were one batch, planned at the
    first file, and their bookkeeping (entries, locations, opened blobs) held 16 MB for a
    bound of SCHEDULE_AHEAD (8 MiB). What the first file's planning allocates (the decode threads'
    range buffers aside) stays within the bound."""
    import tracemalloc

    repo = Repository.init(LocalBackend(tmp_path / "repo"), keys.wrap_none, False)
    nodes = []
    for i in range(24_000):
        data = i.to_bytes(8, "big")
        bid, _ = repo.save_blob(BlobType.DATA, data)
        digest = hashlib.sha256(data).hexdigest()
        nodes.append(
            (f"workspace/t/f{i}", Node(name=f"f{i}", type="file", size=8, content=[Extent(bid, 0, 8)], sha256=digest))
        )
    repo.flush()
    schedule = reader.PackSchedule(repo, nodes)
    tracemalloc.start()
    try:
        first = schedule.begin(nodes[0][0])
        assert first is not None
        for wanted in list(schedule._blobs.values()):
            wanted.fut.result(timeout=30)  # every range planned is read and opened
        held = sum(t.size for t in tracemalloc.take_snapshot().traces if t.size < reader.READ_RANGE)
    finally:
        tracemalloc.stop()
    assert held <= reader.SCHEDULE_AHEAD, f"{held} bytes held after the first file's planning"
    assert first.take(nodes[0][1].content[0].blob) == (0).to_bytes(8, "big")


def test_a_batch_whose_reads_could_not_start_leaves_no_file_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decode pool could not be had when a batch was planned (its threads could not start: a
    process limit, no memory): that file fails with the error, and the batch was half planned, its
    files owed blobs whose reads were never submitted; the next file's take waited for ever. Now
    nothing is planned before the pool is had: the next file plans its batch again and gets its
    bytes."""
    import threading

    repo = Repository.init(LocalBackend(tmp_path / "repo"), keys.wrap_none, False)
    files = _files(repo, 4)
    schedule = reader.PackSchedule(repo, [(lg, node) for lg, node, _ in files])
    real = reader._decode_pool

    def no_threads() -> reader._DecodePool:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(reader, "_decode_pool", no_threads)
    with pytest.raises(RuntimeError):
        schedule.begin(files[0][0])
    schedule.end(files[0][0])  # as the restore ends a file that failed
    monkeypatch.setattr(reader, "_decode_pool", real)
    logical, node, data = files[1]
    got: list[bytes] = []

    def read() -> None:
        shared = schedule.begin(logical)
        assert shared is not None
        got.append(b"".join(shared.take(b) or b"" for b in node.blobs()))
        shared.end()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "the second file waits for a read that was never submitted"
    assert got == [data]
