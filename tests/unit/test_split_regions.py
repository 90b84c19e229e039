"""Issue 20: a database's regions split across idle reader threads (`page_runs` with `helpers`).

Whatever thread cuts which region, and in whatever order they finish, the result is the one a
single thread gives: the same extents (blob ids), region hashes, page hashes for the cache and
whole-file SHA-256 (fed in order); at most `SPLIT_AHEAD_BYTES` of regions wait for their turn; a
thread's error is raised by the caller once no thread reads any more; and a live WAL database's
pinned image reads the same from four threads as from one while a writer commits.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from phoenix_backup.repo.chunker import SPLIT_AHEAD_BYTES, ExtentMap, PageState, page_runs
from phoenix_backup.repo.tree import Extents
from phoenix_backup.sources.sqlite_capture import SqliteCapture

PAGE_KEY = bytes(range(32))


class _Store:
    """Content-addressed blobs, safe for several threads (as the repository's saves are)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.blobs: dict[bytes, bytes] = {}

    def save(self, view: memoryview | bytes, blob_id: bytes | None = None) -> bytes:
        data = bytes(view)
        bid = blob_id if blob_id is not None else hashlib.sha256(data).digest()
        with self.lock:
            self.blobs[bid] = data
        return bid

    def resolve(self, extents: Extents) -> bytes:
        return b"".join(self.blobs[b][o : o + n] for b, o, n in extents.records())


def _region_id(view: memoryview) -> bytes:
    return hashlib.blake2b(view, digest_size=32).digest()


class _Data:
    """Bytes sliced by region; some reads are slow (so regions finish out of order), and every
    read is recorded with the number of bytes the digest had been fed when it began."""

    def __init__(self, data: bytes, digest: _Digest, slow: set[int], region: int) -> None:
        self.data, self.digest, self.slow, self.region = data, digest, slow, region
        self.lock = threading.Lock()
        self.reads: list[tuple[int, int, str]] = []  # (region, digest bytes before, thread)
        self.done = False
        self.late = 0  # reads begun after page_runs returned

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: slice) -> bytes:
        start = item.start or 0
        with self.lock:
            self.late += self.done
            self.reads.append((start // self.region, self.digest.fed, threading.current_thread().name))
        if start // self.region in self.slow:
            time.sleep(0.01)
        return self.data[item]


class _Digest:
    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.fed = 0

    def update(self, data: memoryview | bytes) -> None:
        self.sha.update(data)
        self.fed += len(data)


def _threads(count: int) -> tuple[Callable[[Callable[[], None]], None], list[threading.Thread]]:
    """A stand-in for the reader pool: `count` more threads that each run the job once."""
    started: list[threading.Thread] = []

    def offer(job: Callable[[], None]) -> None:
        for k in range(count):
            t = threading.Thread(target=job, name=f"helper-{k}")
            t.start()
            started.append(t)

    return offer, started


def _cut(
    data: bytes, page_size: int, run_pages: int, parent: Any, helpers: int, slow: set[int] | None = None
) -> tuple[Extents, PageState, str, _Store, _Data]:
    store = _Store()
    digest = _Digest()
    src = _Data(data, digest, slow or set(), page_size * run_pages)
    offer, started = _threads(helpers)
    extents, state = page_runs(
        src,
        page_size,
        run_pages,
        PAGE_KEY,
        store.save,
        parent,
        region_id=_region_id,
        digest=digest,
        helpers=offer if helpers else None,
    )
    src.done = True
    for t in started:
        t.join(10)
    return extents, state, digest.sha.hexdigest(), store, src


@pytest.mark.parametrize("helpers", [1, 2, 3])
def test_split_regions_give_what_one_thread_gives_with_and_without_a_parent(helpers: int) -> None:
    rnd = random.Random(helpers)
    page_size, run_pages = 512, 8
    region = page_size * run_pages
    data = rnd.randbytes(region * 40 + page_size * 3 + 100)  # a short last region, a partial page
    slow = {0, 3, 4, 11, 20, 21, 39}
    one = _cut(data, page_size, run_pages, None, 0)
    many = _cut(data, page_size, run_pages, None, helpers, slow)
    assert many[0] == one[0] and many[2] == one[2] == hashlib.sha256(data).hexdigest()
    assert (many[1].regions, many[1].pages) == (one[1].regions, one[1].pages)
    assert many[3].resolve(many[0]) == data
    assert len({t for _, _, t in many[4].reads}) > 1, "no region was cut by a helper"
    # Against a parent: some regions unchanged, some with a few pages changed.
    changed = bytearray(data)
    for r in (2, 5, 6, 30):
        at = r * region + page_size * rnd.randrange(run_pages)
        changed[at : at + 10] = rnd.randbytes(10)
    changed = bytes(changed)
    parent = (one[0], one[1])
    one_next = _cut(changed, page_size, run_pages, parent, 0)
    many_next = _cut(changed, page_size, run_pages, parent, helpers, slow)
    assert many_next[0] == one_next[0] and many_next[2] == one_next[2] == hashlib.sha256(changed).hexdigest()
    assert (many_next[1].regions, many_next[1].pages) == (one_next[1].regions, one_next[1].pages)
    both = _Store()
    both.blobs = {**one[3].blobs, **many_next[3].blobs}
    assert both.resolve(many_next[0]) == changed
    # Only the changed pages were stored again (as with one thread).
    assert sorted(map(len, many_next[3].blobs.values())) == sorted(map(len, one_next[3].blobs.values()))
    assert ExtentMap(many_next[0]).size == len(changed)


def test_split_regions_wait_within_the_reorder_bound() -> None:
    """No region is read while more than the bound's worth of regions wait for the digest: a
    slow first region holds the others back instead of piling them up in memory."""
    page_size, run_pages = 4096, 64
    region = page_size * run_pages
    ahead = max(2, SPLIT_AHEAD_BYTES // region)
    data = random.Random(5).randbytes(region * (3 * ahead) + 1)
    _, _, sha, _, src = _cut(data, page_size, run_pages, None, 3, slow={0, ahead, 2 * ahead})
    assert sha == hashlib.sha256(data).hexdigest()
    for r, fed, _thread in src.reads:
        assert r < fed // region + ahead, (r, fed, ahead)
    assert sorted(r for r, _, _ in src.reads) == list(range(3 * ahead + 1))


def test_a_helpers_read_error_is_raised_once_no_thread_reads() -> None:
    """A read that fails in any thread fails the whole cut with that error, and nothing reads the
    image once page_runs has returned (the capture closes its descriptors then)."""

    class _Failing(_Data):
        def __getitem__(self, item: slice) -> bytes:
            if (item.start or 0) // self.region == 7:
                time.sleep(0.02)
                raise OSError(5, "Input/output error")
            return super().__getitem__(item)

    for attempt in range(5):
        digest = _Digest()
        src = _Failing(random.Random(attempt).randbytes(512 * 8 * 30), digest, {1, 2}, 512 * 8)
        offer, started = _threads(3)
        with pytest.raises(OSError, match="Input/output error"):
            page_runs(src, 512, 8, PAGE_KEY, _Store().save, None, digest=digest, helpers=offer)
        src.done = True
        for t in started:
            t.join(10)
        assert src.late == 0
        assert not any(t.is_alive() for t in started)


def test_an_error_feeding_the_digest_stops_every_thread() -> None:
    """The digest raises when the run stops (Ctrl-C, SIGTERM): whichever thread feeds it, that
    error is the one raised, and no region is read after it."""

    class _Stopping(_Digest):
        def update(self, data: memoryview | bytes) -> None:
            if self.fed >= 10 * 4096:
                raise KeyboardInterrupt
            super().update(data)

    digest = _Stopping()
    src = _Data(random.Random(9).randbytes(4096 * 60), digest, {3}, 4096)
    offer, started = _threads(2)
    with pytest.raises(KeyboardInterrupt):
        page_runs(src, 512, 8, PAGE_KEY, _Store().save, None, digest=digest, helpers=offer)
    src.done = True
    for t in started:
        t.join(10)
    assert src.late == 0
    ahead = max(2, SPLIT_AHEAD_BYTES // 4096)
    assert max(r for r, _, _ in src.reads) < 10 + ahead + 1


def test_a_live_wal_image_reads_the_same_from_four_threads_as_from_one(tmp_path: Path) -> None:
    """The pinned state of a WAL database whose newest pages are in WAL frames, while a writer
    commits: every thread reads the image of the one read transaction (pread of the same frozen
    frame map), so the split cut stores exactly the bytes a single read of that image gives."""
    path = tmp_path / "live.db"
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=wal")
    con.execute("PRAGMA wal_autocheckpoint=0")  # the changes stay in WAL frames
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    con.executemany("INSERT INTO t (body) VALUES (?)", [(os.urandom(1500),) for _ in range(300)])
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.executemany("UPDATE t SET body = ? WHERE id = ?", [(os.urandom(1500), i) for i in range(1, 300, 7)])
    stop = threading.Event()

    def write() -> None:
        w = sqlite3.connect(path, timeout=30, isolation_level=None)
        for _ in range(300):  # bounded
            if stop.is_set():
                break
            w.execute("UPDATE t SET body = ? WHERE id = ?", (os.urandom(1500), random.randrange(1, 300)))
        w.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        with SqliteCapture(path) as capture:
            image = capture.capture()
            assert image.journal == "wal" and image.wal_frames > 0
            whole = image[0 : len(image)]
            store, digest = _Store(), _Digest()
            offer, started = _threads(3)
            extents, _state = page_runs(
                image, image.page_size, 4, PAGE_KEY, store.save, None, digest=digest, helpers=offer
            )
            for t in started:
                t.join(10)
            assert store.resolve(extents) == whole
            assert digest.sha.hexdigest() == hashlib.sha256(whole).hexdigest()
            check = capture.connection.execute("PRAGMA integrity_check").fetchone()[0]
            assert check == "ok"
    finally:
        stop.set()
        writer.join(30)
        con.close()
    assert len(whole) == image.page_count * image.page_size
