"""Packs: many sealed blobs in one object, followed by a sealed header that lists them.

    pack   = [sealed(origin)] || blob_0 || blob_1 || ... || sealed(header) || u32le(len(sealed(header)))
    header = b"PHXH" || u8 version || u32le count || count * entry
    entry  = u8 type || u8 compression || 32-byte id || u32le offset || u32le stored || u32le raw
    origin = b"PHXO" || u8 version || u8 origin || u64le unix time

A pack's object name is the hash of its bytes, so any copy can be checked without the key: BLAKE3
in a format 4 repository (`b3sum`), SHA-256 in older ones (`sha256sum`); `names_content` accepts
either, so a pack is checked the same way whatever wrote it.
The origin record (which command wrote the pack, and when) lies before the first blob, where no
header entry points: readers that do not know it never read it, so packs with and without one
are read alike. It lets `verify` say what left a pack that no index lists.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import cast

import blake3

from phoenix_backup.errors import CorruptObject
from phoenix_backup.repo.crypto import ID_SIZE, MAX_BLOB_SIZE, BlobType, Compression, Sealer, sha256_hex

HEADER_MAGIC = b"PHXH"
HEADER_VERSION = 1
HEADER_AAD = b"phoenix v1 pack header"
# One blob entry (type, compression, id, offset, stored, raw): the same bytes in a pack header and
# in an index object (repo/index.py).
ENTRY = struct.Struct("<BB32sIII")
_HEAD = struct.Struct("<4sBI")
# Packs stay well under Git hosts' 50 MB file limit and keep S3 object counts low. 8 MiB rather
# than 16: two packs are sealed at once, and 16 MiB packs cost ~35 MB more peak memory for no
# measurable speed (medium sample: 131 MB against 166 MB RSS).
DATA_PACK_TARGET = 8 * 1024 * 1024
TREE_PACK_TARGET = 4 * 1024 * 1024
MAX_HEADER = 64 * 1024 * 1024

ORIGIN_MAGIC = b"PHXO"
ORIGIN_VERSION = 1
ORIGIN_AAD = b"phoenix v1 pack origin"
_ORIGIN = struct.Struct("<4sBBQ")
MAX_ORIGIN = 256  # sealed; a first blob further in means there is no origin record to read


class PackOrigin(IntEnum):
    """The command that wrote a pack."""

    BACKUP = 1
    PRUNE = 2  # a repack: the used blobs of mostly unused packs, copied still sealed
    REPAIR = 3  # `phx repair snapshots --rewrite`: repaired trees; `repair index --read-data`: blobs moved

    def describe(self) -> str:
        return {1: "a backup", 2: "a prune (repacked blobs)", 3: "a repair"}[int(self)]


def encode_origin(origin: PackOrigin, when: float) -> bytes:
    return _ORIGIN.pack(ORIGIN_MAGIC, ORIGIN_VERSION, origin, int(when))


def decode_origin(data: bytes, what: str) -> tuple[PackOrigin, float]:
    try:
        magic, version, origin, when = _ORIGIN.unpack(data)
        if magic != ORIGIN_MAGIC or version != ORIGIN_VERSION:
            raise CorruptObject(f"{what} has an unknown origin record (version {version})")
        return PackOrigin(origin), float(when)
    except (struct.error, ValueError) as exc:
        raise CorruptObject(f"{what} has a malformed origin record") from exc


class PackIds(Enum):
    """The hash whose hex digest of a pack's bytes is its name (the config's `packIds`)."""

    SHA256 = "sha256"  # formats 1 to 3
    # Format 4: BLAKE3 (unkeyed) runs about four times as fast as SHA-256 here (5.0 against 1.1-1.7
    # GB/s): naming the 440 MB of packs of the 600 MB sample's full backup costs 0.09 CPU-s, not 0.3-0.4.
    BLAKE3 = "blake3"


def pack_digest(data: bytes | memoryview, pack_ids: PackIds) -> str:
    """The name-giving hash of a pack's bytes (hex)."""
    if pack_ids == PackIds.BLAKE3:
        return blake3.blake3(data).hexdigest()
    return sha256_hex(data)


def names_content(name: str, data: bytes | memoryview, pack_ids: PackIds = PackIds.BLAKE3) -> bool:
    """Whether a content-addressed object's name (`data/..`, `index/..`, `snapshots/..`,
    `captures/..`) is the hash of `data`: SHA-256 for every object, or for a pack also BLAKE3 (a
    format 4 repository names its new packs so, and keeps the SHA-256 names of packs written
    before). Either proves the bytes are the ones written. A pack's hash is tried first as the
    repository names its new packs (`pack_ids`, from its config): a format 2 or 3 repository's
    packs are hashed once, not twice."""
    digest = name.rsplit("/", 1)[-1]
    if not name.startswith("data/"):
        return sha256_hex(data) == digest
    other = PackIds.SHA256 if pack_ids == PackIds.BLAKE3 else PackIds.BLAKE3
    return pack_digest(data, pack_ids) == digest or pack_digest(data, other) == digest


def blob_aad(kind: BlobType, blob_id: bytes) -> bytes:
    return bytes((kind,)) + blob_id


@dataclass(frozen=True, slots=True)
class PackEntry:
    type: BlobType
    compression: Compression
    id: bytes
    offset: int
    stored: int  # sealed length in the pack
    raw: int  # plaintext length


def pack_name(pack_id: str) -> str:
    return f"data/{pack_id[:2]}/{pack_id}"


def encode_header(entries: list[PackEntry]) -> bytes:
    parts = [_HEAD.pack(HEADER_MAGIC, HEADER_VERSION, len(entries))]
    parts.extend(ENTRY.pack(e.type, e.compression, e.id, e.offset, e.stored, e.raw) for e in entries)
    return b"".join(parts)


def decode_header(data: bytes, what: str) -> list[PackEntry]:
    if len(data) < _HEAD.size:
        raise CorruptObject(f"{what} has a truncated header")
    magic, version, count = _HEAD.unpack_from(data)
    if magic != HEADER_MAGIC or version != HEADER_VERSION:
        raise CorruptObject(f"{what} has an unknown header (magic {magic!r}, version {version})")
    if len(data) != _HEAD.size + count * ENTRY.size:
        raise CorruptObject(f"{what} header length does not match its {count} entries")
    entries = []
    for i in range(count):
        t, c, bid, off, stored, raw = ENTRY.unpack_from(data, _HEAD.size + i * ENTRY.size)
        try:
            entries.append(PackEntry(BlobType(t), Compression(c), bid, off, stored, raw))
        except ValueError as exc:
            raise CorruptObject(f"{what} lists a blob of unknown type or compression") from exc
        if raw > MAX_BLOB_SIZE:
            raise CorruptObject(f"{what} lists a blob of {raw} bytes, more than any blob holds")
    return entries


class PackBuilder:
    """Accumulates sealed blobs of one type; `finish` returns the pack's bytes and entries.
    With an `origin` (and the `sealer` that will finish it), the pack begins with a sealed origin
    record, for which room is kept from the start.

    The pack grows in one buffer, which `finish` hands over as it is: a list of parts joined at
    the end held every pack twice while it was written (two packs at once, ~17 MB at the peak).
    `reuse`: the buffer of a pack already written, filled again from its start (a new buffer's
    pages are each faulted in by the kernel as the blobs are copied in: 110,000 page faults for
    the 440 MB of packs of a 600 MB backup); whatever it held beyond the new pack is cut off."""

    def __init__(
        self,
        kind: BlobType,
        origin: PackOrigin | None = None,
        sealer: Sealer | None = None,
        reuse: bytearray | None = None,
    ) -> None:
        self.kind = kind
        self.origin = origin
        # The sealed origin record's length: its plaintext plus what sealing adds (nonce and tag,
        # or checksum), the same for every sealer.
        self.room = _ORIGIN.size + sealer.overhead if origin is not None and sealer is not None else 0
        if origin is not None and sealer is None:
            raise ValueError("a pack with an origin record needs the sealer that will finish it")
        self.buf = reuse if reuse is not None else bytearray()
        if len(self.buf) < self.room:
            self.buf += bytes(self.room - len(self.buf))
        self.entries: list[PackEntry] = []
        self.size = 0  # bytes of blobs so far

    def add(self, blob_id: bytes, compression: Compression, sealed: bytes, raw_len: int) -> None:
        assert len(blob_id) == ID_SIZE
        at = self.room + self.size
        self.entries.append(PackEntry(self.kind, compression, blob_id, at, len(sealed), raw_len))
        # Into the bytes already there (a reused buffer), growing the buffer only past its end.
        self.buf[at : at + len(sealed)] = sealed
        self.size += len(sealed)

    def finish(self, sealer: Sealer, pack_ids: PackIds = PackIds.SHA256) -> tuple[str, bytes, list[PackEntry]]:
        """The pack's id (the `pack_ids` hash of its bytes), its bytes and its entries. The bytes
        are the builder's own buffer (a bytearray: every backend writes any bytes-like object),
        which the builder lets go of."""
        buf, self.buf = self.buf, bytearray()
        del buf[self.room + self.size :]  # a reused buffer's older bytes
        if self.origin is not None:
            record = sealer.seal(encode_origin(self.origin, time.time()), ORIGIN_AAD)
            if len(record) != self.room:
                raise ValueError("the origin record is not the length its room was kept for")
            buf[: self.room] = record
        header = sealer.seal(encode_header(self.entries), HEADER_AAD)
        buf += header
        buf += struct.pack("<I", len(header))
        # A bytearray passes for bytes with every backend (os.write, botocore's Body, comparisons).
        return pack_digest(memoryview(buf), pack_ids), cast(bytes, buf), self.entries


def origin_length(entries: list[PackEntry]) -> int:
    """The length of a pack's sealed origin record (0: the pack has none), from its entries."""
    first = min((e.offset for e in entries), default=0)
    return first if 0 < first <= MAX_ORIGIN else 0


def read_header(pack: bytes, sealer: Sealer, what: str) -> list[PackEntry]:
    """Entries of a whole pack's bytes, checking they lie inside the blob area."""
    if len(pack) < 4:
        raise CorruptObject(f"{what} is truncated")
    (hlen,) = struct.unpack_from("<I", pack, len(pack) - 4)
    if hlen > min(MAX_HEADER, len(pack) - 4):
        raise CorruptObject(f"{what} has an impossible header length")
    body_end = len(pack) - 4 - hlen
    header = sealer.open(pack[body_end : len(pack) - 4], HEADER_AAD, f"{what} header")
    entries = decode_header(header, what)
    for e in entries:
        if e.offset + e.stored > body_end:
            raise CorruptObject(f"{what} lists a blob beyond its end")
    return entries


def iter_blobs(pack: bytes, entries: list[PackEntry]) -> Iterator[tuple[PackEntry, bytes]]:
    for e in entries:
        yield e, pack[e.offset : e.offset + e.stored]
