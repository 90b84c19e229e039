"""The index: where every blob lives (pack, offset, lengths), in memory and as index objects.

Index object plaintext (then zstd-compressed and sealed):

    b"PHXI" || u8 version || u32le pack_count || packs || u32le superseded_count || 32-byte ids
    pack   = 32-byte pack id || u32le entry_count || entries (the pack header's entry encoding)

In memory each blob costs one dict slot, its 32-byte id and one int that packs its location (pack
number, type, compression, offset, stored and raw lengths): about 150 bytes, whatever the number of
snapshots or index objects, and nothing the garbage collector has to visit. A loaded index object
goes into it straight from its entry records, without a PackEntry per blob (`decode_index_records`).
A blob that several packs hold (two runs stored it, or someone sealed other bytes under its id)
keeps its other locations aside, so that a read that fails its check can try them.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from phoenix_backup.errors import CorruptObject
from phoenix_backup.repo.crypto import MAX_BLOB_SIZE, BlobType, Compression, zstandard_module
from phoenix_backup.repo.pack import ENTRY, PackEntry

INDEX_MAGIC = b"PHXI"
INDEX_VERSION = 1
INDEX_AAD = b"phoenix v1 index"
_HEAD = struct.Struct("<4sBI")
_PACK = struct.Struct("<32sI")
_TYPES = {int(t): t for t in BlobType}
_COMPRESSIONS = {int(c): c for c in Compression}
# An index object's plaintext at most (46 bytes per blob: tens of millions of blobs). Its entries
# are mostly random ids, which do not compress: a plaintext more than 16 times its stored size (plus
# a little for tiny ones) is refused before it is inflated.
MAX_INDEX_SIZE = 1 << 31
MAX_INDEX_RATIO = 16


@dataclass(frozen=True, slots=True)
class BlobLocation:
    pack_id: str
    type: BlobType
    compression: Compression
    offset: int
    stored: int
    raw: int


def encode_index(packs: dict[str, list[PackEntry]], superseded: Iterable[str] = ()) -> bytes:
    parts = [_HEAD.pack(INDEX_MAGIC, INDEX_VERSION, len(packs))]
    for pack_id, entries in packs.items():
        parts.append(_PACK.pack(bytes.fromhex(pack_id), len(entries)))
        parts.extend(ENTRY.pack(e.type, e.compression, e.id, e.offset, e.stored, e.raw) for e in entries)
    sup = list(superseded)
    parts.append(struct.pack("<I", len(sup)))
    parts.extend(bytes.fromhex(s) for s in sup)
    packed: bytes = zstandard_module().ZstdCompressor(level=3).compress(b"".join(parts))
    return packed


def decode_index_records(blob: bytes, what: str) -> tuple[dict[str, bytes], list[str]]:
    """An index object's packs, each with its entry records as they are stored (ENTRY, checked:
    known types and compressions, no blob larger than any blob holds), and the superseded ids."""
    # zstandard (2 MB resident with its library) is loaded at its first use, not with the module:
    # a command's scrypt (32 MiB, before the index is read) then runs without it in memory.
    zstandard = zstandard_module()
    try:
        # A frame that records its size is decompressed into a buffer of that size whatever
        # `max_output_size` says: check the recorded size first.
        limit = min(MAX_INDEX_SIZE, MAX_INDEX_RATIO * len(blob) + (1 << 20))
        if zstandard.frame_content_size(blob) > limit:
            raise CorruptObject(f"{what} claims to inflate beyond {limit} bytes (damaged or hostile)")
        data = zstandard.ZstdDecompressor().decompress(blob, max_output_size=limit)
    except zstandard.ZstdError as exc:
        raise CorruptObject(f"{what} does not decompress") from exc
    try:
        magic, version, npacks = _HEAD.unpack_from(data)
        if magic != INDEX_MAGIC or version != INDEX_VERSION:
            raise CorruptObject(f"{what} has an unknown format (version {version})")
        if _HEAD.size + npacks * _PACK.size > len(data):
            raise CorruptObject(f"{what} claims more packs than it holds")
        pos = _HEAD.size
        packs: dict[str, bytes] = {}
        for _ in range(npacks):
            pid, count = _PACK.unpack_from(data, pos)
            pos += _PACK.size
            # Counts come from storage: check them against the bytes before allocating anything.
            if pos + count * ENTRY.size > len(data):
                raise CorruptObject(f"{what} claims more entries than it holds")
            records = data[pos : pos + count * ENTRY.size]
            _check_records(records, what)
            pos += count * ENTRY.size
            packs[pid.hex()] = records
        (nsup,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if pos + 32 * nsup != len(data):
            raise CorruptObject(f"{what} has a wrong length")
        superseded = [data[pos + 32 * i : pos + 32 * (i + 1)].hex() for i in range(nsup)]
    except (struct.error, ValueError, KeyError) as exc:
        raise CorruptObject(f"{what} is malformed") from exc
    return packs, superseded


def _check_records(records: bytes, what: str) -> None:
    """Every record's type and compression known and its raw length at most MAX_BLOB_SIZE, by
    strided slices (one pass in C per field: an index lists every blob of the repository)."""
    n = ENTRY.size
    if not set(records[0::n]) <= _TYPES.keys() or not set(records[1::n]) <= _COMPRESSIONS.keys():
        raise CorruptObject(f"{what} is malformed")
    # The raw length is the record's last u32 (little-endian): below 2**28 its top byte is < 16.
    if records and max(records[n - 1 :: n]) >= MAX_BLOB_SIZE >> 24:
        for *_rest, raw in ENTRY.iter_unpack(records):
            if raw > MAX_BLOB_SIZE:
                raise CorruptObject(f"{what} lists a blob of {raw} bytes, more than any blob holds")


def entries_of(records: bytes) -> list[PackEntry]:
    # Dict lookups, not enum calls: an index lists every blob of the repository.
    return [
        PackEntry(_TYPES[t], _COMPRESSIONS[c], bid, off, stored, raw)
        for t, c, bid, off, stored, raw in ENTRY.iter_unpack(records)
    ]


def decode_index(blob: bytes, what: str) -> tuple[dict[str, list[PackEntry]], list[str]]:
    packs, superseded = decode_index_records(blob, what)
    return {pack_id: entries_of(records) for pack_id, records in packs.items()}, superseded


# A location in memory: one int, (pack number, type, compression, offset, stored, raw) from its
# high bits to its low ones, each length and offset in 32 bits as the entry records store them.
_U32 = 0xFFFFFFFF


def _loc(no: int, t: int, c: int, off: int, stored: int, raw: int) -> int:
    # A negative field would set every higher bit: another pack, type and compression.
    if not (0 <= off <= _U32 and 0 <= stored <= _U32 and 0 <= raw <= _U32):
        raise ValueError(f"a blob location beyond 32 bits (offset {off}, stored {stored}, raw {raw})")
    return no << 112 | t << 104 | c << 96 | off << 64 | stored << 32 | raw


def _fields(v: int) -> tuple[int, int, int, int, int, int]:
    return v >> 112, (v >> 104) & 0xFF, (v >> 96) & 0xFF, (v >> 64) & _U32, (v >> 32) & _U32, v & _U32


class Index:
    """Blob id -> location, plus the pending blobs of the running backup (thread-safe)."""

    def __init__(self) -> None:
        self._packs: list[str] = []
        self._pack_no: dict[str, int] = {}
        # id -> location (`_loc`: one int)
        self._blobs: dict[bytes, int] = {}
        # The other locations of blobs listed more than once (rare: only those pay for it), in the
        # order they were added; a dict so that a hostile index repeating one blob in many packs
        # costs linear time, not quadratic.
        self._more: dict[bytes, dict[int, None]] = {}
        self._lock = threading.Lock()

    def _number(self, pack_id: str) -> int:
        no = self._pack_no.get(pack_id)
        if no is None:
            no = len(self._packs)
            self._packs.append(pack_id)
            self._pack_no[pack_id] = no
        return no

    def add_pack(self, pack_id: str, entries: Iterable[PackEntry]) -> None:
        with self._lock:
            no = self._number(pack_id)
            self._add((e.id, _loc(no, e.type, e.compression, e.offset, e.stored, e.raw)) for e in entries)

    def add_records(self, pack_id: str, records: bytes) -> None:
        """Add a pack's entry records as an index object stores them (`decode_index_records`, which
        checked them), without a PackEntry per blob."""
        with self._lock:
            base = self._number(pack_id) << 112
            self._add(
                (bid, base | t << 104 | c << 96 | off << 64 | stored << 32 | raw)
                for t, c, bid, off, stored, raw in ENTRY.iter_unpack(records)
            )

    def _add(self, locations: Iterable[tuple[bytes, int]]) -> None:
        setdefault = self._blobs.setdefault  # an index lists every blob: keep the loop lean
        for bid, loc in locations:
            first = setdefault(bid, loc)
            # Another location, even in the same pack: an index object of the machine that backs
            # up, read first, may list a genuine pack with a wrong entry for a blob.
            if first != loc:
                self._more.setdefault(bid, {})[loc] = None

    def remove_packs(self, pack_ids: Iterable[str]) -> int:
        """Forget every location in `pack_ids` (packs found missing); returns how many blobs have none left."""
        with self._lock:
            numbers = {self._pack_no[p] for p in pack_ids if p in self._pack_no}
            for bid in list(self._more):
                kept = dict.fromkeys(m for m in self._more[bid] if m >> 112 not in numbers)
                if kept:
                    self._more[bid] = kept
                else:
                    del self._more[bid]
            gone = 0
            for bid in [bid for bid, loc in self._blobs.items() if loc >> 112 in numbers]:
                more = self._more.pop(bid, None)
                if more:  # another pack holds it: that location becomes the first
                    first, *rest = more
                    self._blobs[bid] = first
                    if rest:
                        self._more[bid] = dict.fromkeys(rest)
                else:
                    del self._blobs[bid]
                    gone += 1
            return gone

    def by_pack(self) -> dict[str, list[PackEntry]]:
        """Every pack with the entries of the blobs located in it."""
        out: dict[str, list[PackEntry]] = {}
        with self._lock:
            for bid, loc in self._blobs.items():
                no, t, c, off, stored, raw = _fields(loc)
                out.setdefault(self._packs[no], []).append(
                    PackEntry(_TYPES[t], _COMPRESSIONS[c], bid, off, stored, raw)
                )
        return out

    def has(self, blob_id: bytes) -> bool:
        return blob_id in self._blobs

    def get(self, blob_id: bytes) -> BlobLocation | None:
        loc = self._blobs.get(blob_id)
        return None if loc is None else self._location(loc)

    def locations(self, blob_id: bytes) -> list[BlobLocation]:
        """Every location of a blob, the one `get` gives first."""
        first = self._blobs.get(blob_id)
        if first is None:
            return []
        return [self._location(loc) for loc in (first, *self._more.get(blob_id, ()))]

    def data_packs(self, blob_id: bytes) -> list[str]:
        """The packs listed as holding a blob as a data blob, the one `get` gives first, without a
        BlobLocation (verify's pack pass asks for every node's blobs)."""
        first = self._blobs.get(blob_id)
        if first is None:
            return []
        more = self._more.get(blob_id)
        locs = (first,) if more is None else (first, *more)
        return [self._packs[loc >> 112] for loc in locs if (loc >> 104) & 0xFF == BlobType.DATA]

    def _location(self, loc: int) -> BlobLocation:
        no, t, c, off, stored, raw = _fields(loc)
        # Dict lookups, not enum calls: a backup looks up every blob of its snapshot.
        return BlobLocation(self._packs[no], _TYPES[t], _COMPRESSIONS[c], off, stored, raw)

    def raw_length(self, blob_id: bytes) -> int | None:
        """The plaintext length of a blob as its (first) index entry records it, without a BlobLocation."""
        loc = self._blobs.get(blob_id)
        return None if loc is None else loc & _U32

    def end_in_pack(self, blob_id: bytes) -> tuple[str, int] | None:
        """The pack holding a blob and where the blob ends in it, without a BlobLocation."""
        loc = self._blobs.get(blob_id)
        return None if loc is None else (self._packs[loc >> 112], ((loc >> 64) & _U32) + ((loc >> 32) & _U32))

    def pack_ends(self) -> dict[str, int]:
        """Every pack with blobs, and where its last blob ends: how long the pack must be."""
        ends: dict[int, int] = {}
        for loc in list(self._blobs.values()):
            no, end = loc >> 112, ((loc >> 64) & _U32) + ((loc >> 32) & _U32)
            if end > ends.get(no, -1):
                ends[no] = end
        return {self._packs[no]: end for no, end in ends.items()}

    def __len__(self) -> int:
        return len(self._blobs)

    def pack_ids(self) -> list[str]:
        return list(self._packs)

    def blobs(self) -> Iterator[tuple[bytes, BlobLocation]]:
        for blob_id in list(self._blobs):
            loc = self.get(blob_id)
            assert loc is not None
            yield blob_id, loc

    def stored_size(self) -> int:
        return sum((v >> 32) & _U32 for v in self._blobs.values())

    def raw_size(self) -> int:
        return sum(v & _U32 for v in self._blobs.values())
