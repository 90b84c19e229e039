"""Splitting content into blobs: FastCDC for files, page-aligned runs for SQLite copies.

Page runs: a database copy is cut into regions of `run_pages` pages. A region that hashes as in
the parent copy reuses the parent's extents; in a changed region every page is hashed, unchanged
pages reuse the parent's extents and each run of changed pages becomes one new blob. A changed
page therefore costs about one page in the repository, however large the database. The page
hashes of the parent live in the local cache (`PageState`); without them a changed region is
stored whole, which costs space, never correctness.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, cast

import blake3

from phoenix_backup.repo.tree import Extent, Extents, ExtentsBuilder, ListedExtents

if TYPE_CHECKING:
    from pyfastcdc import FastCDC

HASH_SIZE = 16


def _fastcdc(chunker: dict[str, int], seed: int) -> FastCDC:
    # Imported here: `phx watch` loads this module for the page hashes only, and pyfastcdc's
    # Cython runtime is about 0.9 MB of its resident memory (docs/benchmarks.md).
    from pyfastcdc import FastCDC

    # pyfastcdc's effective average is avg_size + min_size (cut-point skipping), hence the difference.
    return FastCDC(
        avg_size=max(256, chunker["avg"] - chunker["min"]),
        min_size=chunker["min"],
        max_size=chunker["max"],
        seed=seed,
    )


def file_chunks(data: bytes | memoryview, chunker: dict[str, int], seed: int) -> Iterator[memoryview]:
    """Content-defined chunks of `data` (the whole of it when smaller than the minimum size)."""
    view = memoryview(data)
    if len(view) <= chunker["min"]:
        if len(view):
            yield view
        return
    for c in _fastcdc(chunker, seed).cut_buf(view):
        yield view[c.offset : c.offset + c.length]


# Files up to this size are read in one piece; larger ones are streamed through the chunker.
WHOLE_FILE_LIMIT = 32 * 1024 * 1024


def file_chunks_of(f: BinaryIO, size: int, chunker: dict[str, int], seed: int) -> Iterator[memoryview]:
    """Content-defined chunks of the first `size` bytes of an open file (its size when it was
    stat'ed; fewer if it shrank). A file that grows while it is read is not chased: a writer that
    appends faster than a backup reads would otherwise keep it reading, and storing, for ever.
    Small files are read in one piece of their own size (never a fixed large buffer); large ones
    stream through FastCDC, so cut points do not depend on read boundaries and memory stays bounded."""
    if size <= WHOLE_FILE_LIMIT:
        yield from file_chunks(f.read(size), chunker, seed)
        return
    yield from stream_chunks(cast(BinaryIO, _Prefix(f, size)), seed, chunker)


class _Prefix:
    """The first `left` bytes of a file, as a stream."""

    def __init__(self, f: BinaryIO, left: int) -> None:
        self.f = f
        self.left = left

    def readinto(self, buf: memoryview) -> int:
        if self.left <= 0:
            return 0
        n = self.f.readinto(buf[: self.left]) or 0  # type: ignore[attr-defined]
        self.left -= n
        return n


class PageHashes(Protocol):
    """A database copy's page hashes, HASH_SIZE bytes per page, read by slices: bytes, or
    `SpilledHashes` (a file, so that memory does not grow with the database)."""

    def __len__(self) -> int: ...

    def __getitem__(self, item: slice, /) -> bytes: ...


class SpilledHashes:
    """Page hashes kept in a file (from `offset`, `length` bytes), read with pread; owns `fd`."""

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self.fd = fd
        self.offset = offset
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: slice, /) -> bytes:
        start, stop, _step = item.indices(self.length)
        if stop <= start:
            return b""
        return os.pread(self.fd, stop - start, self.offset + start)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (bytes, SpilledHashes)):
            return NotImplemented
        return len(self) == len(other) and self[:] == other[:]

    __hash__ = None  # type: ignore[assignment]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:  # a backup that failed half-way lets go of it too
        self.close()


class HashSink(Protocol):
    """Where page_runs puts the page hashes of the copy it cuts, in page order."""

    def write(self, data: bytes, /) -> object: ...

    def hashes(self) -> PageHashes: ...


class MemorySink:
    """Page hashes in memory (tests, small copies)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data: bytes, /) -> int:
        self._buf += data
        return len(data)

    def hashes(self) -> bytes:
        return bytes(self._buf)

    def close(self) -> None:
        self._buf = bytearray()


class FileSink:
    """Page hashes written to an anonymous file in `folder` (16 bytes a page would otherwise be
    held in memory: 12 MB for a 3 GB database); `hashes()` reads them back from it."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self._file = tempfile.TemporaryFile(dir=folder, buffering=256 * 1024)  # noqa: SIM115 - owned, closed by the hashes
        self._length = 0
        self._failed = False

    def write(self, data: bytes, /) -> int:
        if not self._failed:
            try:
                self._file.write(data)
            except OSError:
                self._failed = True  # a full disk: the state is incomplete and is not kept
        self._length += len(data)
        return len(data)

    def hashes(self) -> PageHashes:
        """The hashes written; none when the file could not take them all (the next backup then
        compares whole regions only, which costs space, never correctness)."""
        if not self._failed:
            try:
                self._file.flush()
                return SpilledHashes(os.dup(self._file.fileno()), 0, self._length)
            except OSError:
                self._failed = True
        return b""

    def close(self) -> None:
        # Closing flushes the buffer again: on a full disk that raises the ENOSPC `write` and
        # `hashes` took in their stride, and the database would be "not saved". The file is closed
        # all the same; its hashes are not kept.
        with contextlib.suppress(OSError):
            self._file.close()


@dataclass
class PageState:
    """Keyed hashes of a database copy's regions and pages, for the next backup's comparison."""

    sha256: str  # of the copy these hashes describe (ties them to one tree node)
    page_size: int
    run_pages: int
    regions: bytes  # HASH_SIZE bytes per region
    pages: PageHashes  # HASH_SIZE bytes per page

    def region(self, i: int) -> bytes | None:
        s = self.regions[i * HASH_SIZE : (i + 1) * HASH_SIZE]
        return s if len(s) == HASH_SIZE else None

    def close(self) -> None:
        """Let go of the file spilled page hashes are read from (nothing for bytes)."""
        if isinstance(self.pages, SpilledHashes):
            self.pages.close()


class ExtentMap:
    """Byte ranges of an earlier copy, resolved to its extents. Over packed `Extents` (the
    node's own, not a copy) and the start of each extent in an array: 8 bytes an extent beside
    the 48 of the records; extents are unpacked only for the slices asked. A node in extent lists
    (format 6) is mapped one list blob at a time: the list holding the bytes asked is read when
    they are (a backup asks region by region, in order), so the parent's extents are never held
    whole (issue 20)."""

    def __init__(self, extents: Sequence[Extent]) -> None:
        self._listed = extents if isinstance(extents, ListedExtents) else None
        self._part = -1  # the list blob mapped (listed), or 0: the whole node
        if self._listed is not None:
            self._bounds = array("Q", itertools.accumulate((r.size for r in self._listed.refs), initial=0))
            self.size = self._bounds[-1]
            self._set(Extents(), 0)
        else:
            self._bounds = array("Q", [0])
            self._part = 0
            self._set(Extents.of(extents), 0)
            self.size = self._end

    def _set(self, extents: Extents, base: int) -> None:
        self.extents = extents
        self._base = base  # where the mapped extents start in the copy
        self.starts = array("Q", itertools.accumulate(self.extents.lengths(), initial=base))
        self._end = self.starts.pop()

    def _map(self, offset: int) -> bool:
        """Map the list blob holding byte `offset` (listed); False when none holds it."""
        if self._listed is None:
            return True
        part = bisect.bisect_right(self._bounds, offset) - 1
        if not 0 <= part < len(self._listed.refs):
            return False
        if part != self._part:
            self._set(Extents(), 0)  # the last list goes before the next is read
            self._set(self._listed.read(part), self._bounds[part])
            self._part = part
        return True

    def slice(self, offset: int, length: int) -> Extents:
        """The extents of bytes [offset, offset + length) of the copy (as many as it has)."""
        out = ExtentsBuilder(merge=False)
        self.slice_into(out, offset, length)
        return out.build()

    def slice_into(self, out: ExtentsBuilder, offset: int, length: int) -> None:
        """Append the extents of bytes [offset, offset + length) to `out`."""
        end = offset + length
        while offset < end and self._map(offset):
            self._slice_mapped(out, offset, min(end, self._end) - offset)
            if self._listed is None or self._end <= offset:
                break
            offset = self._end

    def _slice_mapped(self, out: ExtentsBuilder, offset: int, length: int) -> None:
        i = bisect.bisect_right(self.starts, offset) - 1
        end = offset + length
        while length > 0 and 0 <= i < len(self.starts):
            start = self.starts[i]
            blob, e_offset, e_length = self.extents.record(i)
            lo = max(offset, start)
            hi = min(end, start + e_length)
            if hi > lo:
                out.add(blob, e_offset + (lo - start), hi - lo)
            if start + e_length >= end:
                break
            i += 1


def merge_extents(extents: Iterable[Extent]) -> Extents:
    """`extents` with each one that continues the last in the same blob joined to it."""
    out = ExtentsBuilder()
    for e in extents:
        out.add(e.blob, e.offset, e.length)
    return out.build()


class PageData(Protocol):
    """What page_runs reads: a database's bytes, sliced region by region (bytes, or a captured
    image of a live database, read in place)."""

    def __len__(self) -> int: ...

    def __getitem__(self, item: slice, /) -> bytes | memoryview: ...


def page_runs(
    data: PageData,
    page_size: int,
    run_pages: int,
    page_key: bytes,
    save: Callable[..., bytes],
    parent: tuple[Sequence[Extent], PageState] | None,
    *,
    region_id: Callable[[memoryview], bytes] | None = None,
    digest: Any = None,
    sink: HashSink | None = None,
) -> tuple[Extents, PageState]:
    """Extents for a database copy (packed, merged); `save(bytes)` stores a new blob and returns its id.

    With `region_id` (the repository's blob id function), a region's hash is the first bytes of
    its blob id, and a whole region is saved with `save(region, blob_id=id)`: one hash pass, not
    two. `digest` (a `crypto.Sha256`) is fed every byte, so the copy is read only once. The new
    page hashes go to `sink` (memory by default; `FileSink` keeps memory flat however large the
    database), the parent's are read a region at a time.
    """
    region_size = page_size * run_pages
    prev_map = ExtentMap(parent[0]) if parent else None
    prev_state = parent[1] if parent else None
    usable = (
        prev_state is not None
        and prev_map is not None
        and prev_state.page_size == page_size
        and prev_state.run_pages == run_pages
    )
    extents = ExtentsBuilder()
    regions = bytearray()
    pages: HashSink = sink if sink is not None else MemorySink()
    for start in range(0, len(data), region_size):
        region = memoryview(data[start : start + region_size])
        if digest is not None:
            digest.update(region)
        full_id = region_id(region) if region_id is not None else None
        rhash = (
            full_id[:HASH_SIZE] if full_id is not None else blake3.blake3(region, key=page_key).digest(length=HASH_SIZE)
        )
        regions += rhash
        r = start // region_size
        if usable:
            assert prev_state is not None and prev_map is not None
            if prev_state.region(r) == rhash and start + len(region) <= prev_map.size:
                prev_map.slice_into(extents, start, len(region))
                first = r * run_pages * HASH_SIZE
                pages.write(prev_state.pages[first : first + (len(region) // page_size) * HASH_SIZE])
                continue
        # Pages sliced from bytes rather than from the view: a third less time a page.
        raw = region.obj if type(region.obj) is bytes and len(region.obj) == len(region) else bytes(region)
        hashes = [
            blake3.blake3(raw[o : o + page_size], key=page_key).digest(length=HASH_SIZE)
            for o in range(0, len(raw), page_size)
        ]
        pages.write(b"".join(hashes))
        if not usable:
            bid = save(region, blob_id=full_id) if full_id is not None else save(region)
            extents.add(bid, 0, len(region))
            continue
        assert prev_state is not None and prev_map is not None
        first_page = start // page_size
        # The parent's hashes of this region's pages, read once (they may be in a file).
        before = prev_state.pages[first_page * HASH_SIZE : (first_page + len(hashes)) * HASH_SIZE]
        same_pages = [
            (first_page + k + 1) * page_size <= prev_map.size and before[k * HASH_SIZE : (k + 1) * HASH_SIZE] == h
            for k, h in enumerate(hashes)
        ]
        i = 0
        while i < len(hashes):
            same = same_pages[i]
            j = i + 1
            while j < len(hashes) and same_pages[j] == same:
                j += 1
            lo, hi = i * page_size, min(j * page_size, len(region))
            if same:
                prev_map.slice_into(extents, start + lo, hi - lo)
            else:
                extents.add(save(region[lo:hi]), 0, hi - lo)
            i = j
    state = PageState("", page_size, run_pages, bytes(regions), pages.hashes())
    return extents.build(), state


# Database streams (PostgreSQL dumps, one agent's rows, Redis record files) change in many small
# places a day (an updated row moves, a key's value changes) rather than in whole files, so they
# are cut finer than files: a change costs about one 64 KiB chunk instead of one 1 MiB chunk,
# while a 1 GB dump still stays near 16,000 extents. Only deduplication depends on these sizes;
# reading never does (a stream is the concatenation of its extents).
STREAM_CHUNKER = {"min": 16 * 1024, "avg": 64 * 1024, "max": 256 * 1024}


def stream_chunks(f: BinaryIO, seed: int, chunker: dict[str, int] = STREAM_CHUNKER) -> Iterator[memoryview]:
    """Content-defined chunks of a stream read to its end (a pipe, a generated file): cut points
    depend only on the content, never on how the producer's writes happened to arrive.
    Each chunk is valid until the next one is requested."""
    for c in _fastcdc(chunker, seed).cut_stream(f):
        yield memoryview(c.data)
