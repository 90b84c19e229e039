"""SQLite's write-ahead log and wal-index, read as bytes: headers, frames, checksums.

Everything here follows SQLite's documented file formats (https://www.sqlite.org/fileformat2.html
section 4, https://www.sqlite.org/walformat.html) and nothing else: it parses, it never writes.

- The WAL file: a 32-byte header (magic, format version, page size, checkpoint sequence, two
  salts, a checksum of the first 24 bytes), then frames of a 24-byte header (page number, the
  database size in pages for the last frame of a transaction and 0 otherwise, the two salts, a
  checksum) and one page. A frame belongs to the WAL's current generation when its salts equal
  the header's and its checksum, which continues the previous frame's (the first frame continues
  the header's), is right. Each reset of the WAL (a restart after a complete checkpoint)
  increments salt 1 and draws a new salt 2, so frames left over from an earlier generation
  never pass for current ones.
- The wal-index (`-shm`): two copies of a 48-byte header that SQLite updates on every commit
  (its `mxFrame` is the last frame that readers may use), then the checkpoint information
  (`nBackfill`: frames already copied into the database file). Native byte order, since it is
  never moved between machines; a copy is only trusted when both copies agree and its own
  checksum is right, as SQLite's readers do.

The checksum is a pair of 32-bit sums over the data's 32-bit words, two at a time:
`s0 += x[i] + s1; s1 += x[i+1] + s0`. It is computed here for the two headers only. Frames are
not summed: SQLite itself checks frame checksums only when it rebuilds a wal-index (recovery,
after a crash), and its readers then trust every frame up to the wal-index's `mxFrame`, which a
writer publishes only after the frames are written. A reader that uses the same `mxFrame` under a
read transaction reads exactly what SQLite's readers read, so `check_frame` checks what tells
the WAL file apart from the state the wal-index describes: the frame's salts (a frame left over
from an earlier generation, or a WAL reset under the reader) and, for the last frame, the
checksum SQLite stored in it against the one the wal-index records. In Python a frame's sum cost
60-80 microseconds per 4 KiB page, most of `phx watch`'s CPU.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass

WAL_MAGIC_LE = 0x377F0682  # checksums over little-endian words
WAL_MAGIC_BE = 0x377F0683  # checksums over big-endian words
WAL_VERSION = 3007000
WAL_HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
INDEX_HEADER_SIZE = 48
INDEX_READ_SIZE = 2 * INDEX_HEADER_SIZE + 4  # both copies, then nBackfill
MASK = 0xFFFFFFFF


class WalFormatError(ValueError):
    """Bytes that are not what SQLite writes (a damaged or foreign file)."""


def page_size_field(raw: int) -> int:
    """A page size as SQLite stores it in a 16-bit field: 1 means 65536."""
    return 65536 if raw == 1 else raw


def valid_page_size(size: int) -> bool:
    return 512 <= size <= 65536 and size & (size - 1) == 0


# -- checksums ----------------------------------------------------------------------------------


def wal_checksum(data: bytes | memoryview, big_endian: bool, s0: int = 0, s1: int = 0) -> tuple[int, int]:
    """SQLite's WAL checksum of `data` (a multiple of 8 bytes), continuing from (s0, s1)."""
    if len(data) % 8:
        raise ValueError("WAL checksums cover a multiple of 8 bytes")
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for a, b in zip(words[0::2], words[1::2], strict=True):
        s0 = (s0 + a + s1) & MASK
        s1 = (s1 + b + s0) & MASK
    return s0, s1


# -- the WAL file -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WalHeader:
    big_endian: bool
    page_size: int
    checkpoint_seq: int
    salt: bytes  # salt 1 and salt 2, the 8 bytes as stored
    checksum: tuple[int, int]

    @classmethod
    def parse(cls, raw: bytes) -> WalHeader:
        """The header of a WAL file; WalFormatError when it is not a valid one (an empty WAL,
        one being created, or a damaged file: SQLite then ignores the whole WAL, and so do we)."""
        if len(raw) < WAL_HEADER_SIZE:
            raise WalFormatError("the WAL is shorter than its header")
        magic, version, page_size, seq = struct.unpack(">4I", raw[:16])
        c0, c1 = struct.unpack(">2I", raw[24:32])
        if magic not in (WAL_MAGIC_LE, WAL_MAGIC_BE):
            raise WalFormatError("the WAL header has no WAL magic number")
        if version != WAL_VERSION:
            raise WalFormatError(f"the WAL header has the unknown format version {version}")
        if not valid_page_size(page_size):
            raise WalFormatError(f"the WAL header names the impossible page size {page_size}")
        big = magic == WAL_MAGIC_BE
        if wal_checksum(raw[:24], big) != (c0, c1):
            raise WalFormatError("the WAL header's checksum is wrong")
        return cls(big, page_size, seq, bytes(raw[16:24]), (c0, c1))


@dataclass(frozen=True)
class FrameHeader:
    page: int  # page number, from 1
    commit: int  # database size in pages after the transaction this frame ends, else 0
    salt: bytes
    checksum: tuple[int, int]

    @classmethod
    def parse(cls, raw: bytes | memoryview) -> FrameHeader:
        page, commit = struct.unpack(">2I", raw[:8])
        c0, c1 = struct.unpack(">2I", raw[16:24])
        return cls(page, commit, bytes(raw[8:16]), (c0, c1))


def frame_offset(frame: int, page_size: int) -> int:
    """Byte offset of frame `frame` (from 1) in the WAL file."""
    return WAL_HEADER_SIZE + (frame - 1) * (FRAME_HEADER_SIZE + page_size)


def check_frame(raw: bytes | memoryview, header: WalHeader, last: tuple[int, int] | None = None) -> FrameHeader:
    """The header of a frame of the WAL header's generation, or WalFormatError: `raw` is the
    frame's 24-byte header (what follows it is not read); `last`, for the frame the wal-index ends
    at, is the checksum the wal-index records for it (see the module's docstring)."""
    if len(raw) < FRAME_HEADER_SIZE:
        raise WalFormatError("the WAL ends inside a frame")
    fh = FrameHeader.parse(raw)
    if fh.salt != header.salt:
        raise WalFormatError("a frame's salts differ from the WAL header's (a frame of an earlier generation)")
    if fh.page == 0:
        raise WalFormatError("a frame names page 0")
    if last is not None and (fh.checksum != last or not fh.commit):
        raise WalFormatError("the last frame differs from what the wal-index records")
    return fh


# -- the wal-index (-shm) -----------------------------------------------------------------------

_NATIVE = "<" if sys.byteorder == "little" else ">"


@dataclass(frozen=True)
class IndexHeader:
    """What SQLite's readers see when they begin: the wal-index header, and how far the database
    file has been brought up to date by checkpoints."""

    change: int  # incremented by every commit
    big_endian: bool
    page_size: int
    max_frame: int  # the last frame readers use (0: none)
    pages: int  # the database's size in pages as of max_frame
    frame_checksum: tuple[int, int]  # the checksum of frame max_frame
    salt: bytes  # the WAL header's salts, as stored
    backfilled: int  # nBackfill: frames 1..backfilled are in the database file

    @classmethod
    def parse(cls, raw: bytes) -> IndexHeader:
        """WalFormatError unless both copies agree, the header is initialised and its checksum is
        right (a torn read while SQLite writes it fails here and is read again by the caller)."""
        if len(raw) < INDEX_READ_SIZE:
            raise WalFormatError("the wal-index is shorter than its header")
        first, second = raw[:INDEX_HEADER_SIZE], raw[INDEX_HEADER_SIZE : 2 * INDEX_HEADER_SIZE]
        if first != second:
            raise WalFormatError("the two copies of the wal-index header differ")
        version, _unused, change, is_init, big, size, mx, npage = struct.unpack(_NATIVE + "3I2BH2I", first[:24])
        if not is_init or version != WAL_VERSION:
            raise WalFormatError("the wal-index header is not initialised")
        f0, f1 = struct.unpack(_NATIVE + "2I", first[24:32])
        k0, k1 = struct.unpack(_NATIVE + "2I", first[40:48])
        if wal_checksum(first[:40], sys.byteorder == "big") != (k0, k1):
            raise WalFormatError("the wal-index header's checksum is wrong")
        (backfilled,) = struct.unpack(_NATIVE + "I", raw[2 * INDEX_HEADER_SIZE : INDEX_READ_SIZE])
        return cls(change, bool(big), page_size_field(size), mx, npage, (f0, f1), bytes(first[32:40]), backfilled)

    def same_snapshot(self, other: IndexHeader) -> bool:
        """Whether both describe the same committed state (checkpoint progress aside)."""
        return (self.change, self.max_frame, self.pages, self.frame_checksum, self.salt, self.page_size) == (
            other.change,
            other.max_frame,
            other.pages,
            other.frame_checksum,
            other.salt,
            other.page_size,
        )
