"""Reading a file's or a database's bytes back out of the repository: the one node reader every
command uses (restore, dump, archive, export, diff, the database sinks), as restic's dump code
serves tar and zip alike.

A node's content is a list of extents, each a slice of one data blob. The reader loads each blob
once while it is in use, keeps the recent ones (a database's extents come back to the same blobs
again and again), hashes the bytes as they go and checks them against the snapshot's SHA-256 and
size: a consumer that commits only after `finish` (or reads `blocks`, which checks before the last
block) never commits damaged data.
"""

from __future__ import annotations

import functools
import itertools
import os
import queue
import shutil
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from phoenix_backup.errors import CorruptObject, NoSpace, ObjectNotFound, PhoenixError
from phoenix_backup.repo.crypto import BackgroundSha256, BlobType, Sha256
from phoenix_backup.repo.index import BlobLocation
from phoenix_backup.repo.pack import pack_name
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Extent, Extents, ListedExtents, Node

# A database's extents come back to the same page-run blobs again and again (the pages that did
# not change since it was first stored): blobs the node needs again are kept instead of being
# loaded anew, up to this many bytes. On the 7-day benchmark repository 2 MiB already avoids all
# but 8 of 5,839 loads of memory.db. A blob the node does not need again is dropped at once.
BLOB_CACHE_BYTES = 2 * 1024 * 1024
# Reading ahead (restic's restorer schedules by pack too): the blobs a node needs next are read
# pack by pack, in the order they sit in each pack, neighbours less than READ_GAP apart merged into
# one range of at most READ_RANGE bytes, and opened (decrypted, decompressed) on the decode pool
# while the consumer writes the bytes before them. A new batch of READ_AHEAD bytes starts when
# less than half a batch is still on the way, so at most one and a half batches (and the range
# being read) of a node's blobs are in memory at once: the bound on what reading ahead adds. A
# batch is cut into ranges of at most half a batch, so both threads of the decode pool open one
# node's blobs at once: with batches of one range (1 MiB batches in 2 MiB ranges, before) the
# writer of the largest database waited for one decoding thread while the other had nothing to
# do (py-spy, issue 20). A range stays at most READ_RANGE (a blob larger than half a batch is still
# read into the thread's buffer); 2 MiB batches add 1.5 MiB per node being read (docs/benchmarks.md).
READ_AHEAD = 2 * 1024 * 1024
READ_RANGE = 2 * 1024 * 1024
READ_GAP = 64 * 1024
# A node at least this large is hashed on a thread of its own (`BackgroundSha256`), from the very
# blobs its consumer writes, while it writes them: the largest database of a restore was written
# and hashed one after the other on one core, the end of the restore (docs/benchmarks.md, issue
# 20). Smaller nodes are hashed in line: a thread per small file would cost more than it saves.
BACKGROUND_HASH = 4 * 1024 * 1024
# How far the hashing thread may fall behind the writer: the blobs waiting for it stay in memory.
HASH_BEHIND = 256 * 1024
# A node of at most this many bytes whose blobs are one range is read in its consumer's thread,
# not on the decode pool (`_Ahead.plan`).
INLINE_READ = 1024 * 1024
# A scratch copy of a database (diff, export, restore --merge) needs this much room besides.
COPY_MARGIN = 16 * 1024 * 1024

Opened = dict[bytes, "bytes | PhoenixError"]
T = TypeVar("T")


class NodeMismatch(CorruptObject):
    """A node's bytes, every blob opened by its tag, do not make its size or SHA-256: a blob's copy
    may hold other plaintext under a valid tag (`prove_node` looks for one that proves)."""


_pool_lock = threading.Lock()
_pool: _DecodePool | None = None


class _DecodePool:
    """The process-wide threads that read and open blobs ahead of every node reader: one per core,
    at least two (so that reading overlaps opening). Their tasks never wait for one another.

    The ranges of the largest node being read go first: a restore writes two nodes at once, and
    its end is the end of its largest database's copy, hashed, written and then checked by
    `integrity_check` (which needs the whole copy) while the other writer restores the small
    files. Served in turn, the largest copy finished with the last small file, and its check ran
    alone on one core at the end. Each node reads at most READ_AHEAD and a half ahead, so a
    smaller node waits at most that long for its turn, never for the whole larger one."""

    def __init__(self, workers: int) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Future[Opened], Callable[[], Opened]]] = queue.PriorityQueue()
        self._order = itertools.count()
        for i in range(workers):
            threading.Thread(target=self._work, name=f"phx-decode_{i}", daemon=True).start()

    def submit(self, size: int, call: Callable[[], Opened]) -> Future[Opened]:
        """Run `call` for a node of `size` bytes: the largest node's first, each node's in order."""
        fut: Future[Opened] = Future()
        self._queue.put((-size, next(self._order), fut, call))
        return fut

    def _work(self) -> None:
        while True:
            _size, _n, fut, call = self._queue.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(call())
            except BaseException as exc:  # handed to the node reader, which raises it
                fut.set_exception(exc)


def _decode_pool() -> _DecodePool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _DecodePool(max(2, os.cpu_count() or 2))
        return _pool


def _forget_pool() -> None:
    """A forked child has none of its parent's threads: the pool it inherited would never run a
    task, and every read waiting for one would wait for ever (a restore in a child forked after one
    in the parent, through the Python API). It starts its own, under a lock no thread holds."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


_buffers = threading.local()


def _range_buffer(length: int) -> memoryview:
    """Room for one ranged read of `length` bytes, at most READ_RANGE. Each reading thread reads
    every such range into the same buffer: a new buffer of megabytes would be new pages for the
    kernel to map and zero (a page fault per 4 KiB restored). Opening a blob copies it out (its
    plaintext is a new object), so the buffer is free again once `read_blobs` returns. A thread's
    buffer shorter than the range (made while READ_RANGE was smaller) is replaced: a slice of it
    would be short, and the blobs past its end would read as damaged."""
    buf: bytearray | None = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < length:
        buf = _buffers.buf = bytearray(READ_RANGE)
    return memoryview(buf)[:length]


def read_blobs(repo: Repository, pack: str, blobs: list[tuple[bytes, BlobLocation]], prove: bool = False) -> Opened:
    """Read `blobs` (neighbours in one pack, in offset order) with one ranged read and open each.
    Each blob gets its bytes or its own error: a damaged blob fails itself, never its neighbours.
    When the range cannot be read whole (a pack cut short or missing), each blob is read on its
    own, so every one ends exactly as a read of that blob alone would; a failing store (a network
    error) raises, as a read of one blob does. With `prove`, each blob's plaintext is hashed
    against its id too, and one that does not match is taken from the first copy that does
    (`Repository.load_proving`), or is its error naming the blob and every pack tried."""
    start = blobs[0][1].offset
    end = max(loc.offset + loc.stored for _b, loc in blobs)
    out: Opened = {}
    try:
        if end - start > READ_RANGE:
            # One blob above READ_RANGE: read as it is, with no buffer made first. Its length
            # comes from the index, which may claim gigabytes of a pack far shorter (a write-only
            # repository's index objects come from the machine that backs up): the store refuses
            # such a read before it allocates anything.
            view = memoryview(repo.backend.read_range(pack, start, end - start))
        else:
            buf = _range_buffer(end - start)
            view = buf[: repo.backend.read_range_into(pack, start, buf)]
    except (CorruptObject, ObjectNotFound):
        for blob, _loc in blobs:
            try:
                out[blob] = load_blob(repo, blob, prove)
            except PhoenixError as exc:
                out[blob] = exc
        return out
    for blob, loc in blobs:
        sealed = view[loc.offset - start : loc.offset - start + loc.stored]
        what = f"blob {blob.hex()[:16]} in pack {loc.pack_id[:16]}"
        try:
            out[blob] = repo.open_blob(BlobType.DATA, blob, loc.compression, sealed, loc.raw, what, check_id=prove)
        except CorruptObject as exc:
            try:  # another pack may hold it whole
                if prove:
                    out[blob] = repo.load_proving(BlobType.DATA, blob, (loc, exc.with_traceback(None)))[2]
                else:
                    out[blob] = repo.load_blob_elsewhere(BlobType.DATA, blob, loc, exc)
            except PhoenixError as again:
                out[blob] = again
        except PhoenixError as exc:
            out[blob] = exc
    return out


def load_blob(repo: Repository, blob: bytes, prove: bool) -> bytes:
    """A data blob read on its own: with `prove`, from the first copy whose plaintext hashes to its
    id (`Repository.load_proving`); else the first that opens (`Repository.load_blob`)."""
    if prove:
        return repo.load_proving(BlobType.DATA, blob)[2]
    return repo.load_blob(BlobType.DATA, blob)


def pack_ranges(
    located: list[tuple[bytes, BlobLocation]], limit: int | None = None
) -> list[tuple[str, list[tuple[bytes, BlobLocation]]]]:
    """Blobs grouped by pack, in offset order, cut into ranges: a new range where the gap to the
    previous blob exceeds READ_GAP or the range would exceed `limit` (READ_RANGE at most)."""
    limit = READ_RANGE if limit is None else min(limit, READ_RANGE)
    by_pack: dict[str, list[tuple[bytes, BlobLocation]]] = {}
    for item in located:
        by_pack.setdefault(item[1].pack_id, []).append(item)
    out: list[tuple[str, list[tuple[bytes, BlobLocation]]]] = []
    for pack_id, items in by_pack.items():
        items.sort(key=lambda x: x[1].offset)
        run: list[tuple[bytes, BlobLocation]] = []
        for blob, loc in items:
            if run:
                first, last = run[0][1], run[-1][1]
                if (
                    loc.offset - (last.offset + last.stored) > READ_GAP
                    or loc.offset + loc.stored - first.offset > limit
                ):
                    out.append((pack_name(pack_id), run))
                    run = []
            run.append((blob, loc))
        out.append((pack_name(pack_id), run))
    return out


# Buckets a node's blob ids are sorted into to find those named twice: 16 an extent (two bytes).
_REPEAT_BUCKETS = 16


def repeated_blobs(extents: Extents, *more: Extents) -> dict[bytes, int]:
    """How many extents of `extents` and `more` (a listed node's window of list blobs, `_Ahead`)
    name each blob that more than one names; a blob missing from it is named once. Held by a
    node's reader while it is read, so it costs only what repeats (a region written once, the
    common case, costs nothing): the ids are first sorted into a bit a bucket by their
    first bytes (blob ids are keyed hashes), and only those whose bucket an earlier id had set are
    counted (every id named twice, and about one id in 32 besides, dropped again after)."""
    parts = (extents, *more)
    n = sum(map(len, parts))
    if n < 2:
        return {}
    buckets = n * _REPEAT_BUCKETS
    seen = bytearray((buckets + 7) // 8)
    counts: Counter[bytes] = Counter()  # the ids whose bucket an earlier id had set, then their uses
    for blob in itertools.chain.from_iterable(part.blobs() for part in parts):
        h = int.from_bytes(blob[:8], "little") % buckets
        bit = 1 << (h & 7)
        if seen[h >> 3] & bit:
            counts[blob] = 0
        else:
            seen[h >> 3] |= bit
    del seen
    if not counts:
        return {}
    # Counted and pruned in place, keyed by the first pass's ids: a set of them, a Counter of the
    # second pass's ids and a dict of those named twice held twice as much at their peak as a
    # count of every blob did, for a node whose every blob is named twice (14.6 MB against 6.8 MB
    # at 91,000 extents, tracemalloc; tests/unit/test_node_reader.py).
    counts.update(filter(counts.__contains__, itertools.chain.from_iterable(part.blobs() for part in parts)))
    candidates = len(counts)
    for blob in [blob for blob, k in counts.items() if k < 2]:
        del counts[blob]
    # A dict keeps its table when entries go: one left with fewer than half of them is copied.
    return counts if 2 * len(counts) >= candidates else dict(counts)


class _Ahead:
    """A node's blobs, read ahead in coalesced ranges and opened on the decode pool, handed out in
    the order of its extents; blobs needed again later are kept (bounded), others dropped.

    A listed node (format 6, `ListedExtents`) is read through a window of at most two list blobs:
    the one whose extents are handed out and the next, which the reading ahead reaches into. What
    is "needed again later" is counted over that window alone (`repeated_blobs` of its two lists,
    counted afresh as the window moves): a blob named again further on (in list 1 and list 5) is
    dropped and read again on its turn, like one evicted from the kept ones. Nothing of the node
    is held whole: what it holds is bounded by two list blobs, not by the database's size."""

    def __init__(
        self,
        repo: Repository,
        extents: Sequence[Extent],
        shared: ScheduledNode | None = None,
        proven: Mapping[bytes, BlobLocation] | None = None,
        prove: bool = False,
    ) -> None:
        self.repo = repo
        # Every blob hashed against its id before it is handed out, a copy that does not match
        # replaced by one that does (`read_blobs`): a streaming reader emits only proven bytes.
        self.prove = prove
        # Blobs proven by their id after the node failed its SHA-256 (`prove_node`): read from the
        # location that proved, on their turn (one at a time, kept like any other while needed
        # again), instead of the copy read first.
        self.proven = proven or {}
        # A node of a restore's `PackSchedule`: its blobs were read with those of the nodes around
        # it, pack by pack; this reader plans no read of its own.
        self.shared = shared
        # A listed node's lists, read one list blob at a time into `window`; any other node is
        # one part, packed (a decoded node's already are): blob ids by position, read from the
        # records. A restore asks for each extent's blob twice and iterates the node twice; as
        # `Extent` objects made on each access that cost ~0.2 CPU-s on a 91,000-extent database.
        self.listed = extents if isinstance(extents, ListedExtents) else None
        self.window: dict[int, Extents] = {}  # part -> its extents: the consumer's part and the next
        if self.listed is None:
            self.extents: Extents | None = Extents.of(extents)
            self.counts: tuple[int, ...] = (len(self.extents),)
            self.window[0] = self.extents
            self.size = self.extents.size  # the decode pool serves the largest first
        else:
            self.extents = None  # never held whole
            self.counts = tuple(ref.count for ref in self.listed.refs)
            self.size = self.listed.size
        self.part = 0  # the part whose extents are handed out
        self.base = 0  # the index of its first extent in the node
        self.planned_part = 0
        self.planned = 0  # planned_part[:planned] and every part before have their blobs kept, ready or on the way
        self.pending: dict[bytes, tuple[Future[Opened], int]] = {}  # blob -> (its range, raw size)
        self.in_flight = 0  # raw bytes planned and not yet handed out the first time
        self.kept: OrderedDict[bytes, bytes] = OrderedDict()
        self.kept_bytes = 0
        # The uses of each blob named more than once in the window (any other is used once): a
        # count of every blob was a dict entry and a 32-byte key an extent, ~95 bytes
        # (tracemalloc), 1.07 MB for the 3 GB sample's three databases (11,221 regions) while they
        # are written, 0.21 MB at 600 MB: it grew with the database (tests/unit/test_node_reader.py).
        self.uses: dict[bytes, int] = {}
        self._enter(0)

    def _extents_of(self, part: int) -> Extents:
        got = self.window.get(part)
        if got is None:
            assert self.listed is not None  # an unlisted node's only part is always there
            got = self.window[part] = self.listed.read(part)
        return got

    def _enter(self, part: int) -> None:
        """Hand out the extents of `part` from now on: the window moves to it and the next part,
        and the blobs named again in it are counted afresh."""
        self.part = part
        for old in [k for k in self.window if k < part]:
            del self.window[old]
        if self.planned_part < part:
            self.planned_part, self.planned = part, 0
        if part >= len(self.counts):
            self.uses = {}
            return
        parts = [self._extents_of(part)]
        if part + 1 < len(self.counts):
            parts.append(self._extents_of(part + 1))
        self.uses = repeated_blobs(*parts)

    def _planned_all(self) -> bool:
        return self.planned_part == len(self.counts) - 1 and self.planned >= self.counts[-1]

    def plan(self) -> None:
        """Start reading the next READ_AHEAD bytes of blobs (of the window's parts at most)."""
        if self.shared is not None:
            return
        located: list[tuple[bytes, BlobLocation]] = []
        seen: set[bytes] = set()
        budget = READ_AHEAD
        while budget > 0:
            if self.planned >= self.counts[self.planned_part]:
                if self.planned_part > self.part or self.planned_part + 1 >= len(self.counts):
                    break  # the window's end: planned on when the writer enters the next part
                self.planned_part, self.planned = self.planned_part + 1, 0
                continue
            blob = self._extents_of(self.planned_part).blob(self.planned)
            self.planned += 1
            if blob in self.kept or blob in self.pending or blob in seen or blob in self.proven:
                continue
            loc = self.repo.index.get(blob)
            if loc is None or loc.type != BlobType.DATA:
                continue  # loaded on its own when its turn comes, which names the problem
            seen.add(blob)
            located.append((blob, loc))
            budget -= loc.raw
        ranges = pack_ranges(located, READ_AHEAD // 2)  # two ranges a batch or more: both decoders
        # A node read whole in one range (a small file) has nothing to overlap its read with: its
        # writer would only wait for a decoding thread, and the waking of each (with the GIL held
        # by the other threads) cost a workspace file ~3 ms, the 287 files of the medium sample
        # ~1 s of waiting on 0.2 CPU-s (py-spy, issue 20). It is read in the writer's thread.
        inline = self.size <= INLINE_READ and self._planned_all() and len(ranges) == 1
        pool = None if inline else _decode_pool()
        for pack, run in ranges:
            call = functools.partial(read_blobs, self.repo, pack, run, self.prove)
            if pool is not None:
                fut = pool.submit(self.size, call)
            else:
                fut = Future()
                try:
                    fut.set_result(call())
                except Exception as exc:  # raised when its blob is asked for, as from the pool
                    fut.set_exception(exc)
            for blob, loc in run:
                self.pending[blob] = (fut, loc.raw)
                self.in_flight += loc.raw

    def each(self) -> Iterator[tuple[bytes, int, int]]:
        """(the blob's bytes, offset, length) of each extent, in order."""
        index = 0
        for part in range(len(self.counts)):
            for _id, offset, length in self._extents_of(part).records():
                yield self.get(index), offset, length
                index += 1

    def get(self, index: int) -> bytes:
        """The blob of extent `index` (called in order)."""
        while index >= self.base + self.counts[self.part]:
            self.base += self.counts[self.part]
            self._enter(self.part + 1)
        if self.in_flight < READ_AHEAD // 2:
            self.plan()
        blob = self._extents_of(self.part).blob(index - self.base)
        left = self.uses.pop(blob, 1) - 1  # its uses after this one
        if left:
            self.uses[blob] = left
        data = self.kept.get(blob)
        if data is not None:
            self.kept.move_to_end(blob)
            if not left:
                self.kept_bytes -= len(self.kept.pop(blob))
            return data
        waiting = self.pending.pop(blob, None)
        shared = None if waiting is not None or self.shared is None else self.shared.take(blob)
        if shared is not None:
            data = shared
        elif waiting is None:  # never planned (not in the index, or proven) or dropped from the kept ones
            proven = self.proven.get(blob)
            if proven is None:
                data = load_blob(self.repo, blob, self.prove)
            else:
                data = self.repo.load_proven(BlobType.DATA, blob, proven)
        else:
            fut, raw = waiting
            self.in_flight -= raw
            got = fut.result().pop(blob)  # the range's other blobs stay for their turn
            if isinstance(got, PhoenixError):
                raise got
            data = got
        if left:
            self.kept[blob] = data
            self.kept_bytes += len(data)
            while self.kept_bytes > BLOB_CACHE_BYTES and len(self.kept) > 1:
                self.kept_bytes -= len(self.kept.popitem(last=False)[1])
        return data


# A restore's small files are read by one `PackSchedule`: the files of at most this many bytes, in
# the order the restore writes them, their blobs read pack by pack for many files at once. Read one
# by one, the 287 workspace files of the medium benchmark were 287 reads of a few kB each, and each
# a hand-off between threads (issue 20).
SCHEDULE_NODE = INLINE_READ
# What the schedule holds: the blobs of the files planned and not yet written, at most about this
# many bytes (a batch of half as many is planned when less than half is left, plus one file).
SCHEDULE_AHEAD = 8 * 1024 * 1024
# What a planned file weighs at least: its bookkeeping (its entries, its blob's location, range and
# opened bytes object: about 1 KiB each, 2 KiB while planning). Weighed by their bytes alone, 24,000
# files of 8 bytes were one batch, 16 MB held for a bound of 8 MiB (0.7 MB now, tracemalloc), and
# the more and smaller the files, the more.
SCHEDULE_FILE = 4 * 1024
# The decode pool serves the schedule's reads before those of any single node: a file waits for
# them, and there is at most SCHEDULE_AHEAD of them, while a database reads at most one and a half
# READ_AHEAD ahead of its writer.
_SCHEDULE_FIRST = 1 << 62


class PackSchedule:
    """The blobs of many small files of a restore, read pack by pack (restic's restorer does the
    same): the files are planned in the order they will be written, in batches; a batch's blobs are
    grouped by pack, in the order they sit there, and read in ranges of up to READ_RANGE, opened on
    the decode pool. The blobs of many files come from one read, and each range is one hand-off
    between threads, not one per file. A file's reader takes its blobs from here (`begin`); a blob
    the schedule could not plan (not in the index) is loaded by the reader itself, which names the
    problem. A damaged blob is that blob's error alone (`read_blobs`, which tries another copy), so
    it fails its file only. Memory: the blobs of the files planned and not yet ended, at most about
    SCHEDULE_AHEAD bytes of blobs plus those of one file, while the files begin in order."""

    def __init__(self, repo: Repository, nodes: Sequence[tuple[str, Node]]) -> None:
        self.repo = repo
        self._lock = threading.Lock()
        self._order: list[tuple[str, list[bytes], int]] = []  # (logical, its blobs once each, size)
        self._position: dict[str, int] = {}
        for logical, node in nodes:
            if node.size <= SCHEDULE_NODE and logical not in self._position:
                self._position[logical] = len(self._order)
                self._order.append((logical, list(dict.fromkeys(node.blobs())), node.size))
        self._planned = 0  # _order[:_planned] have their blobs on the way
        self._held = 0  # bytes of the files planned and not yet ended (`_plan`: what each weighs)
        self._sizes: dict[str, int] = {}  # planned, not ended: logical -> its weight
        self._owed: dict[str, set[bytes]] = {}  # planned, not ended: logical -> blobs not yet taken
        self._begun: set[str] = set()
        self._ended: set[str] = set()
        self._blobs: dict[bytes, _Wanted] = {}

    def begin(self, logical: str) -> ScheduledNode | None:
        """The handle `logical`'s reader takes its blobs through, or None when the schedule does not
        read it (a large file, one not listed, or one begun before: it reads its blobs itself)."""
        with self._lock:
            position = self._position.get(logical)
            if position is None or logical in self._begun:
                return None
            self._begun.add(logical)
            while self._planned <= position or (self._held < SCHEDULE_AHEAD // 2 and self._planned < len(self._order)):
                self._plan()
        return ScheduledNode(self, logical)

    def _plan(self) -> None:
        """Plan the next batch of files (the lock held): at least one, about SCHEDULE_AHEAD / 2. A
        file weighs its size or the plaintext of its blobs, whichever is more (a few bytes of a
        file may be a slice of a large blob), so the bound holds in blobs held, not file sizes; and
        at least SCHEDULE_FILE, so that it holds for many tiny files too."""
        # Had first: planned files whose reads were never submitted would wait for them for ever.
        pool = _decode_pool()
        located: list[tuple[bytes, BlobLocation]] = []
        batch = 0
        while self._planned < len(self._order) and (not batch or batch < SCHEDULE_AHEAD // 2):
            logical, blobs, size = self._order[self._planned]
            self._planned += 1
            if logical in self._ended:
                continue  # ended before it was planned (its write failed first): nothing to read
            owed: set[bytes] = set()
            raw = 0
            for blob in blobs:
                wanted = self._blobs.get(blob)
                if wanted is None:
                    loc = self.repo.index.get(blob)
                    if loc is None or loc.type != BlobType.DATA:
                        continue  # its reader loads it, which names the problem
                    wanted = self._blobs[blob] = _Wanted(loc.raw)
                    located.append((blob, loc))
                wanted.uses += 1
                raw += wanted.raw
                owed.add(blob)
            weight = max(size, raw, SCHEDULE_FILE)
            batch += weight
            self._owed[logical] = owed
            self._sizes[logical] = weight
            self._held += weight
        for pack, run in pack_ranges(located):
            fut = pool.submit(_SCHEDULE_FIRST, functools.partial(read_blobs, self.repo, pack, run))
            for blob, _loc in run:
                self._blobs[blob].fut = fut

    def take(self, logical: str, blob: bytes) -> bytes | None:
        """`blob` for `logical`'s reader, once; None when the schedule does not hold it for it."""
        with self._lock:
            owed = self._owed.get(logical)
            if owed is None or blob not in owed:
                return None
            owed.discard(blob)
            fut = self._blobs[blob].fut
        try:
            got = fut.result().get(blob)  # a failing store raises here, for this file
        finally:
            with self._lock:
                self._release(blob)
        if isinstance(got, PhoenixError):
            raise got
        return got

    def end(self, logical: str) -> None:
        """`logical` is written (or failed): what it did not take is let go. Called again, nothing."""
        with self._lock:
            self._ended.add(logical)
            for blob in self._owed.pop(logical, ()):
                self._release(blob)
            self._held -= self._sizes.pop(logical, 0)

    def _release(self, blob: bytes) -> None:
        wanted = self._blobs[blob]
        wanted.uses -= 1
        if not wanted.uses:
            del self._blobs[blob]
            wanted.fut.add_done_callback(functools.partial(_drop_opened, blob))


class _Wanted:
    """A blob of a `PackSchedule`: the read that brings it, how many files have yet to take it, and
    its plaintext size."""

    __slots__ = ("fut", "raw", "uses")

    def __init__(self, raw: int) -> None:
        self.fut: Future[Opened] = Future()  # replaced by its range's, in the same `_plan`
        self.raw = raw
        self.uses = 0


def _drop_opened(blob: bytes, fut: Future[Opened]) -> None:
    """Let go of `blob` in its range's results, once no file needs it."""
    if not fut.cancelled() and fut.exception() is None:
        fut.result().pop(blob, None)


class ScheduledNode:
    """One file's share of a `PackSchedule` (see `PackSchedule.begin`)."""

    __slots__ = ("logical", "schedule")

    def __init__(self, schedule: PackSchedule, logical: str) -> None:
        self.schedule, self.logical = schedule, logical

    def take(self, blob: bytes) -> bytes | None:
        return self.schedule.take(self.logical, blob)

    def end(self) -> None:
        self.schedule.end(self.logical)


def extent_ranges(
    repo: Repository,
    logical: str,
    extents: Sequence[Extent],
    shared: ScheduledNode | None = None,
    proven: Mapping[bytes, BlobLocation] | None = None,
    prove: bool = False,
) -> Iterator[tuple[bytes, int, int]]:
    """(blob, start, end) of each extent in order: its bytes are blob[start:end]; with `prove`,
    from blobs each proven by its id (`_Ahead`)."""
    ahead = _Ahead(repo, extents, shared, proven, prove)
    for blob, offset, length in ahead.each():
        if offset + length > len(blob):
            raise NodeMismatch(f"data of {logical} is shorter than the snapshot says (damaged)")
        yield blob, offset, offset + length


def extent_bytes(repo: Repository, logical: str, extents: Sequence[Extent]) -> Iterator[memoryview]:
    """The bytes of each extent in order; each is valid until the next one is asked for."""
    for blob, start, end in extent_ranges(repo, logical, extents):
        yield memoryview(blob)[start:end]


class NodeReader:
    """A file's or database's bytes, read extent by extent from the repository, hashed as they go.

    `ranges` gives (blob, start, end) for writers that look into the blob (sparse files); `chunks`
    the bytes; `read` is a file-like read (for tarfile); `blocks` holds back the last block until
    the whole node matched. `finish` raises when the bytes did not match the snapshot's SHA-256 or
    size, naming the path.

    A reader whose bytes go out before `finish` can run (a stream: `phx dump`, `archive`,
    `export`'s files, the PostgreSQL and Redis restores) is made with `prove=True` (`stream_blocks`):
    each blob's plaintext is hashed against its id before any of its bytes are handed out, and a
    copy that opens but holds other bytes is replaced by the first copy that proves, so no byte it
    hands out is unproven; with no copy that proves, it raises naming the blob and the packs tried
    before handing out any of that blob. Readers that commit only after `finish` (a restore's files
    and databases) skip that hash and prove the blobs only when the SHA-256 fails (`read_proving`).
    """

    def __init__(
        self,
        repo: Repository,
        logical: str,
        node: Node,
        shared: ScheduledNode | None = None,
        proven: Mapping[bytes, BlobLocation] | None = None,
        *,
        prove: bool = False,
    ) -> None:
        self.repo = repo
        self.logical = logical
        self.prove = prove  # each blob proven by its id before its bytes are handed out
        self.node = node
        self.shared = shared  # the restore's schedule this node's blobs are read by (`PackSchedule.begin`)
        self.proven = proven  # blobs proven by their id (`prove_node`), used instead of the first copy
        self.digest: Sha256 | BackgroundSha256 = Sha256()
        self._hex: str | None = None  # the digest once read: reading it ends the hashing thread
        self.total = 0
        self._chunks = self.chunks()
        self._buffer = b""

    def ranges(self) -> Iterator[tuple[bytes, int, int]]:
        """Each extent's bytes as (blob, start, end), hashed from that very buffer: in line, or for
        a node of BACKGROUND_HASH bytes or more on a second thread while the consumer writes them
        (the blobs are immutable bytes, shared, not copied). Either way `finish` compares the
        digest of every byte handed out before the consumer may commit anything."""
        if self.node.size >= BACKGROUND_HASH:
            self.digest = BackgroundSha256(HASH_BEHIND)  # started here: a reader never read has no thread
        try:
            for blob, start, end in extent_ranges(
                self.repo, self.logical, self.node.content, self.shared, self.proven, self.prove
            ):
                view = memoryview(blob)[start:end]
                if isinstance(self.digest, BackgroundSha256) and 2 * (end - start) < len(blob):
                    # A bytes waiting for the hashing thread holds its whole blob: a small part of a
                    # large blob (a database's pages) waits as a copy of its own, so what waits
                    # holds at most twice HASH_BEHIND, not up to HASH_BEHIND's worth of whole blobs.
                    self.digest.update(view.tobytes())
                else:
                    self.digest.update(view)
                self.total += end - start
                yield blob, start, end
        except BaseException as exc:  # damaged data, a failed write or an abandoned reader: the thread ends
            if isinstance(self.digest, BackgroundSha256):
                self.digest.close()
            if self.prove and isinstance(exc, CorruptObject) and not isinstance(exc, NodeMismatch):
                raise unreadable(self.logical, exc) from exc
            raise
        # Every byte handed out: the digest is read now, which ends the hashing thread, whether the
        # consumer then calls `finish` or fails first (a write after the last extent, a size that
        # differs); `finish` compares what is read here.
        self._hexdigest()

    def _hexdigest(self) -> str:
        if self._hex is None:
            self._hex = self.digest.hexdigest()
        return self._hex

    def chunks(self) -> Iterator[memoryview]:
        for blob, start, end in self.ranges():
            yield memoryview(blob)[start:end]

    def read(self, n: int = -1) -> bytes:
        out = bytearray(self._buffer)
        self._buffer = b""
        while n < 0 or len(out) < n:
            data = next(self._chunks, None)
            if data is None:
                break
            out += data
        if n >= 0 and len(out) > n:
            self._buffer = bytes(out[n:])
            del out[n:]
        return bytes(out)

    def blocks(self) -> Iterator[bytes]:
        """The bytes block by block, the last one only once everything matched (`finish`)."""
        pending: bytes | None = None
        for chunk in self.chunks():
            if pending is not None:
                yield pending
            pending = bytes(chunk)
        self.finish()
        if pending is not None:
            yield pending

    def finish(self) -> None:
        digest = self._hexdigest()  # read even when the size differs: the hashing thread ends
        if self.total != self.node.size or digest != self.node.sha256:
            raise NodeMismatch(
                f"{self.logical} read from the repository does not match its SHA-256 in the snapshot (damaged); "
                "run `phx verify --read-data` and use another snapshot or target"
            )


def prove_node(repo: Repository, logical: str, node: Node, error: NodeMismatch) -> dict[bytes, BlobLocation]:
    """For a node whose bytes failed their SHA-256 (`error`, from `NodeReader`): its blobs whose
    first copy does not hash to its id (`read_blobs` opens without that check, for speed), each with
    the location of a copy that does (`Repository.prove_blob`, which names the packs that failed),
    to read the node again with (its plaintext is not kept: read again on its turn). Raises `error`
    when every first copy proves (the fault is not in a blob), and CorruptObject naming the blob and
    its packs when one has no copy that proves."""
    proven: dict[bytes, BlobLocation] = {}
    for blob in _distinct_blobs(node):
        try:
            loc = repo.prove_blob(BlobType.DATA, blob)
        except CorruptObject as exc:
            raise CorruptObject(
                f"{logical} read from the repository does not match its SHA-256 in the snapshot (damaged): {exc}; "
                "run `phx verify --read-data` and use another snapshot or target"
            ) from error
        if loc is not None:
            proven[blob] = loc
    if not proven:
        raise error
    return proven


def _distinct_blobs(node: Node) -> Iterator[bytes]:
    """The node's blob ids, each once; a listed node's once a list blob (read one at a time: one
    named in two lists comes twice), so no set of a database's every id is held."""
    content = node.content
    if isinstance(content, ListedExtents):
        for i in range(len(content.refs)):
            yield from dict.fromkeys(content.read(i).blobs())
    else:
        yield from dict.fromkeys(node.blobs())


def read_proving(
    repo: Repository,
    logical: str,
    node: Node,
    use: Callable[[NodeReader, bool], T],
    shared: ScheduledNode | None = None,
) -> T:
    """`use(reader, False)` with a reader of the node; when its bytes fail their SHA-256 (a blob's
    copy with other plaintext under a valid tag), `use(reader, True)` once more with a reader whose
    wrong copies are taken from copies that prove (`prove_node`): `use` starts its output afresh."""
    try:
        return use(NodeReader(repo, logical, node, shared), False)
    except NodeMismatch as exc:
        failed = exc.with_traceback(None)  # its frames hold the first reading's blobs
    finally:
        if shared is not None:
            shared.end()
    return use(NodeReader(repo, logical, node, proven=prove_node(repo, logical, node, failed)), True)


def stream_blocks(repo: Repository, logical: str, node: Node) -> Iterator[bytes]:
    """A node's bytes for a consumer that passes them on as they come (stdout, an archive, a pipe to
    pg_restore, a database's loader): every blob proven by its id before any of its bytes is
    yielded, a copy that does not prove replaced by one that does, and the last block held back
    until the whole node matched its size and SHA-256 (`NodeReader.blocks`)."""
    return NodeReader(repo, logical, node, prove=True).blocks()


def read_node(repo: Repository, logical: str, node: Node) -> bytes:
    """A node's whole content, checked."""
    return read_proving(repo, logical, node, lambda reader, _again: b"".join(reader.blocks()))


def copy_snapshot_database(repo: Repository, logical: str, node: Node, dest: Path) -> Path:
    """Write a snapshot's copy of a database to `dest`, checked against its SHA-256."""
    need = node.size + COPY_MARGIN
    free = shutil.disk_usage(dest.parent).free
    if free < need:
        raise NoSpace(
            f"not enough free space in {dest.parent} for a copy of {logical} ({node.size // 2**20} MiB); "
            "free some space or set TMPDIR to a larger disk"
        )

    def write(reader: NodeReader, _again: bool) -> None:
        with open(dest, "wb") as f:  # afresh when read again
            for chunk in reader.chunks():
                f.write(chunk)
        reader.finish()

    try:
        read_proving(repo, logical, node, write)
    except CorruptObject as exc:  # named with its path (export, diff, merge said only the blob)
        if isinstance(exc, NodeMismatch):
            raise
        raise unreadable(logical, exc) from exc
    return dest


def unreadable(logical: str, exc: CorruptObject) -> CorruptObject:
    """A node's damaged or missing data, named with its path and what to do."""
    return CorruptObject(
        f"{logical} cannot be read from the repository: {exc}; "
        "run `phx verify --read-data` and use another snapshot or target"
    )


def damaged_pack(repo: Repository, node: Node) -> str | None:
    """The pack holding the first blob of `node` that cannot be read, to name the damaged object:
    its extent-list blobs first (format 6), whose extents name the rest. A list that cannot be
    read raised out of here, out of the handler naming the damage (a drill of a database whose
    list blob is damaged ended as a bare error, its report lost); a list that opens but does
    not match its node names no pack (None)."""
    for list_id in node.list_blobs():
        loc = repo.index.get(list_id)
        if loc is None:
            return f"extent list {list_id.hex()[:16]}"
        try:
            repo.load_list(list_id)
        except Exception:  # damaged, or a storage error: the pack is named just the same
            return pack_name(loc.pack_id)
    try:
        for blob in node.blobs():
            loc = repo.index.get(blob)
            if loc is None:
                return f"blob {blob.hex()[:16]}"
            try:
                repo.load_blob(BlobType.DATA, blob)
            except CorruptObject:
                return pack_name(loc.pack_id)
            except Exception:  # a storage error names the pack just as well
                return pack_name(loc.pack_id)
    except CorruptObject:
        return None
    return None


def damage_text(exc: PhoenixError) -> str:
    return f"its data is damaged or missing in the repository ({exc})"


def check_data(
    repo: Repository, nodes: list[tuple[str, Node]], progress: Callable[[int, int], None] | None = None
) -> dict[str, str]:
    """Read, decrypt and authenticate every blob the nodes need; return the paths whose data is
    damaged or missing, each with the reason. `progress(done, total)` is told the bytes of blobs
    read so far, and their total.

    The AEAD tag (or, unencrypted, the checksum) binds each blob to its id, so a damaged or
    substituted blob is found here, before a restore touches anything. Every path that needs a
    bad blob is named, not only the first.
    """
    needed: dict[bytes, tuple[list[str], int]] = {}  # blob -> (the paths using it, the end of its furthest extent)
    for logical, node in nodes:
        content = node.content
        records = content.records() if isinstance(content, (Extents, ListedExtents)) else Extents.of(content).records()
        for blob, offset, length in records:  # a listed node's one list blob at a time
            users, prev = needed.get(blob, ([], 0))
            if not users or users[-1] != logical:
                users.append(logical)
            needed[blob] = (users, max(prev, offset + length))
    damaged: dict[str, str] = {}
    for blob, (users, _end) in needed.items():
        if not repo.index.has(blob):
            for logical in users:
                damaged.setdefault(logical, f"its data is missing from the repository (blob {blob.hex()[:16]})")

    def check(item: tuple[str, list[tuple[bytes, BlobLocation]]]) -> int:
        pack, run = item
        for blob, got in read_blobs(repo, pack, run).items():
            users, end = needed[blob]
            if isinstance(got, (CorruptObject, ObjectNotFound)):
                for logical in users:
                    damaged.setdefault(logical, damage_text(got))
            elif isinstance(got, PhoenixError):
                raise got  # the storage failed, not the data: the command stops, as for any read
            elif len(got) < end:
                for logical in users:
                    damaged.setdefault(logical, "its data is shorter than the snapshot says (damaged)")
        return sum(loc.raw for _blob, loc in run)

    # Read pack by pack in coalesced ranges, as a restore does (extent_ranges).
    located: list[tuple[bytes, BlobLocation]] = []
    for blob in needed:
        loc = repo.index.get(blob)
        if loc is None:
            continue
        if loc.type != BlobType.DATA:  # load_blob refuses it and says why
            try:
                repo.load_blob(BlobType.DATA, blob)
            except (CorruptObject, ObjectNotFound) as exc:
                for logical in needed[blob][0]:
                    damaged.setdefault(logical, damage_text(exc))
            continue
        located.append((blob, loc))
    workers = max(2, os.cpu_count() or 2)
    done = 0
    total = sum(loc.raw for _blob, loc in located)
    if progress is not None:
        progress(0, total)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="phx-check") as pool:
        for size in pool.map(check, pack_ranges(located)):
            done += size
            if progress is not None:
                progress(done, total)
    return damaged
