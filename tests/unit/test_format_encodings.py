"""Round trips and damage detection of every byte-level encoding of the repository format.

Properties (hypothesis): each encoding decodes to exactly what was encoded; any single flipped
byte or truncation of a sealed blob, pack header or index object makes opening raise
CorruptObject (never wrong data, never another exception type); decoders given malformed
documents raise the format's own errors.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import struct
import subprocess
import sys
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import blake3
import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from phoenix_backup.errors import CorruptObject, UnsafePath, UnsupportedFormat
from phoenix_backup.repo.crypto import (
    CHECKSUM_SIZE,
    MAX_BLOB_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
    BlobIds,
    BlobType,
    Compression,
    Compressor,
    Sealer,
    Sha256,
    decompress,
    sha256_hex,
)
from phoenix_backup.repo.index import INDEX_AAD, Index, decode_index, encode_index
from phoenix_backup.repo.keys import MasterSecrets
from phoenix_backup.repo.pack import (
    HEADER_AAD,
    PackBuilder,
    PackEntry,
    PackIds,
    blob_aad,
    decode_header,
    encode_header,
    iter_blobs,
    names_content,
    pack_digest,
    pack_name,
    read_header,
)
from phoenix_backup.repo.repository import FORMAT_VERSION, RepoConfig
from phoenix_backup.repo.snapshot import SNAPSHOT_VERSION, DatabaseInfo, Snapshot, SnapshotStats
from phoenix_backup.repo.tree import Extent, Node, decode_extents, decode_tree, encode_extents, encode_tree

KEY = bytes(range(32))
SEALERS = {"aes-256-gcm": Sealer(KEY), "checksum": Sealer(None)}
sealers = st.sampled_from(sorted(SEALERS)).map(SEALERS.__getitem__)

U32 = st.integers(0, 2**32 - 1)
ids = st.binary(min_size=32, max_size=32)
hex_ids = ids.map(bytes.hex)
blob_types = st.sampled_from(list(BlobType))
compressions = st.sampled_from(list(Compression))
# A stored blob's raw length never exceeds MAX_BLOB_SIZE: decoders refuse larger claims.
pack_entries = st.builds(PackEntry, blob_types, compressions, ids, U32, U32, st.integers(0, MAX_BLOB_SIZE))
extents = st.builds(Extent, ids, st.integers(0, 2**40), st.integers(0, 2**40))
blob_extents = st.builds(Extent, ids, st.integers(0, MAX_BLOB_SIZE // 2), st.integers(0, MAX_BLOB_SIZE // 2))

# Names a tree may hold: one path component, never "", ".", "..", nor containing "/" or NUL.
# (A lone surrogate other than the \udc80-\udcff a file system name decodes to is no name: it has no bytes.)
names = st.text(st.characters(exclude_characters="/\0", exclude_categories=("Cs",)), min_size=1, max_size=40).filter(
    lambda s: s not in (".", "..")
)
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
# Anything JSON can carry, including the numbers json.loads accepts but Python ints reject.
wild_json = st.recursive(
    json_scalars | st.floats(allow_nan=True, allow_infinity=True),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def flip(data: bytes, pos: int, mask: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= mask
    return bytes(out)


# ------------------------------------------------------------------------------------------
# extents


@given(st.lists(extents, max_size=30))
def test_extents_round_trip(items: list[Extent]) -> None:
    text = encode_extents(items)
    assert text.isascii()
    assert decode_extents(text) == items


@given(st.lists(extents, min_size=1, max_size=8), st.data())
def test_truncated_extents_raise_corrupt(items: list[Extent], data: st.DataObject) -> None:
    raw = base64.b64decode(encode_extents(items))
    # Cutting inside the last extent is always detectable (an id is 32 bytes, varints end in < 0x80).
    last_start = len(base64.b64decode(encode_extents(items[:-1])))
    cut = data.draw(st.integers(last_start + 1, len(raw) - 1))
    with pytest.raises(CorruptObject):
        decode_extents(base64.b64encode(raw[:cut]).decode())


@pytest.mark.parametrize("text", ["not base64!", "é", "AAAA" * 3, "////" * 9])
def test_malformed_extents_raise_corrupt(text: str) -> None:
    with pytest.raises(CorruptObject):
        decode_extents(text)


# ------------------------------------------------------------------------------------------
# sealing


@given(sealers, st.binary(max_size=4096), st.binary(max_size=64))
def test_seal_open_round_trip(sealer: Sealer, payload: bytes, aad: bytes) -> None:
    sealed = sealer.seal(payload, aad)
    assert len(sealed) == len(payload) + sealer.overhead
    assert sealer.open(sealed, aad, "blob") == payload


def test_overheads() -> None:
    assert Sealer(KEY).overhead == NONCE_SIZE + TAG_SIZE
    assert Sealer(None).overhead == CHECKSUM_SIZE
    assert Sealer(KEY).encrypted and not Sealer(None).encrypted


def test_encryption_hides_the_payload_and_uses_fresh_nonces() -> None:
    payload = b"secret memory note " * 20
    a, b = Sealer(KEY).seal(payload, b"x"), Sealer(KEY).seal(payload, b"x")
    assert a != b
    assert b"secret memory" not in a


@given(sealers, st.binary(max_size=2048), blob_types, ids, st.data())
def test_flipped_byte_in_sealed_blob_raises_corrupt(
    sealer: Sealer, payload: bytes, kind: BlobType, blob_id: bytes, data: st.DataObject
) -> None:
    sealed = sealer.seal(payload, blob_aad(kind, blob_id))
    pos = data.draw(st.integers(0, len(sealed) - 1), label="pos")
    mask = data.draw(st.integers(1, 255), label="mask")
    with pytest.raises(CorruptObject):
        sealer.open(flip(sealed, pos, mask), blob_aad(kind, blob_id), "blob")


@given(sealers, st.binary(max_size=2048), blob_types, ids, st.data())
def test_truncated_sealed_blob_raises_corrupt(
    sealer: Sealer, payload: bytes, kind: BlobType, blob_id: bytes, data: st.DataObject
) -> None:
    sealed = sealer.seal(payload, blob_aad(kind, blob_id))
    cut = data.draw(st.integers(0, len(sealed) - 1))
    with pytest.raises(CorruptObject):
        sealer.open(sealed[:cut], blob_aad(kind, blob_id), "blob")


@given(sealers, st.binary(max_size=512), blob_types, ids, ids)
def test_blob_moved_to_another_id_or_type_fails(
    sealer: Sealer, payload: bytes, kind: BlobType, blob_id: bytes, other: bytes
) -> None:
    sealed = sealer.seal(payload, blob_aad(kind, blob_id))
    if other != blob_id:
        with pytest.raises(CorruptObject):
            sealer.open(sealed, blob_aad(kind, other), "blob")
    other_kind = BlobType.TREE if kind == BlobType.DATA else BlobType.DATA
    with pytest.raises(CorruptObject):
        sealer.open(sealed, blob_aad(other_kind, blob_id), "blob")


def test_wrong_key_fails() -> None:
    sealed = Sealer(KEY).seal(b"payload", b"aad")
    with pytest.raises(CorruptObject):
        Sealer(bytes(32)).open(sealed, b"aad", "blob")


@given(st.binary(max_size=8192) | st.text(max_size=3000).map(str.encode), st.sampled_from(["zstd", "gzip"]))
def test_compression_round_trip(data: bytes, algorithm: str) -> None:
    method, payload = Compressor(True, algorithm=algorithm).compress(data)
    assert decompress(method, bytes(payload), len(data), "blob") == data
    if method != Compression.NONE:
        assert len(payload) < len(data)


def test_blob_ids_are_keyed_and_domain_separated() -> None:
    ids_a, ids_b = BlobIds(KEY), BlobIds(bytes(32))
    data = b"the same bytes"
    assert ids_a.blob_id(BlobType.DATA, data) != ids_a.blob_id(BlobType.TREE, data)
    assert ids_a.blob_id(BlobType.DATA, data) != ids_b.blob_id(BlobType.DATA, data)
    assert ids_a.blob_id(BlobType.DATA, data) == ids_a.blob_id(BlobType.DATA, memoryview(data))
    assert len(ids_a.blob_id(BlobType.DATA, data)) == 32


# ------------------------------------------------------------------------------------------
# pack headers and packs


@given(st.lists(pack_entries, max_size=50))
def test_header_round_trip(entries: list[PackEntry]) -> None:
    assert decode_header(encode_header(entries), "pack") == entries


@given(st.lists(pack_entries, max_size=10), st.data())
def test_truncated_or_padded_header_raises_corrupt(entries: list[PackEntry], data: st.DataObject) -> None:
    raw = encode_header(entries)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(CorruptObject):
        decode_header(raw[:cut], "pack")
    with pytest.raises(CorruptObject):
        decode_header(raw + data.draw(st.binary(min_size=1, max_size=60)), "pack")


def test_header_with_unknown_type_or_compression_raises_corrupt() -> None:
    good = encode_header([PackEntry(BlobType.DATA, Compression.ZSTD, bytes(32), 0, 10, 10)])
    head = 4 + 1 + 4
    for pos, value in ((head, 7), (head + 1, 9)):
        bad = bytearray(good)
        bad[pos] = value
        with pytest.raises(CorruptObject):
            decode_header(bytes(bad), "pack")
    with pytest.raises(CorruptObject):
        decode_header(b"XXXX" + good[4:], "pack")


blob_lists = st.lists(
    st.binary(max_size=3000) | st.text(min_size=64, max_size=2000).map(str.encode), min_size=1, max_size=12
)


def build_pack(sealer: Sealer, kind: BlobType, blobs: list[bytes]) -> tuple[str, bytes, list[PackEntry], dict]:
    ids_ = BlobIds(KEY)
    builder = PackBuilder(kind)
    originals: dict[bytes, bytes] = {}
    for data in blobs:
        bid = ids_.blob_id(kind, data)
        if bid in originals:
            continue
        originals[bid] = data
        method, payload = Compressor(True).compress(data)
        builder.add(bid, method, sealer.seal(payload, blob_aad(kind, bid)), len(data))
    pack_id, raw, entries = builder.finish(sealer)
    return pack_id, raw, entries, originals


def open_pack(sealer: Sealer, raw: bytes) -> dict[bytes, bytes]:
    """Everything a reader does with a pack: header, then every blob opened and checked."""
    out = {}
    for entry, sealed in iter_blobs(raw, read_header(raw, sealer, "pack")):
        payload = sealer.open(sealed, blob_aad(entry.type, entry.id), "blob")
        out[entry.id] = decompress(entry.compression, payload, entry.raw, "blob")
    return out


def test_sha256_is_hashlibs_from_threads_at_once() -> None:
    """Every context shares one algorithm object (repo/crypto.py `_new_sha256`): contexts fed at
    once from several threads, digested in the middle and fed on, give hashlib's digests."""
    pieces = [os.urandom(n) for n in (0, 1, 63, 64, 65, 4096, 100_000)]

    def digests(seed: int) -> list[tuple[str, str]]:
        out, ours, theirs = [], Sha256(), hashlib.sha256()
        for i in range(200):
            piece = pieces[(seed + i) % len(pieces)]
            ours.update(piece)
            theirs.update(piece)
            out.append((ours.hexdigest(), theirs.hexdigest()))
            out.append((sha256_hex(piece), hashlib.sha256(piece).hexdigest()))
        return out

    with ThreadPoolExecutor(4) as pool:
        for result in pool.map(digests, range(8)):
            assert all(a == b for a, b in result)
    assert Sha256(b"abc").digest() == hashlib.sha256(b"abc").digest()


@given(sealers, blob_types, blob_lists)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_pack_round_trip(sealer: Sealer, kind: BlobType, blobs: list[bytes]) -> None:
    pack_id, raw, entries, originals = build_pack(sealer, kind, blobs)
    assert pack_id == hashlib.sha256(raw).hexdigest() == sha256_hex(raw)
    assert read_header(raw, sealer, "pack") == entries
    assert [e.type for e in entries] == [kind] * len(originals)
    assert open_pack(sealer, raw) == originals
    # Entries lie back to back from offset 0.
    pos = 0
    for e in entries:
        assert e.offset == pos
        pos += e.stored


@given(sealers, blob_types, blob_lists, st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_flipped_byte_anywhere_in_a_pack_raises_corrupt(
    sealer: Sealer, kind: BlobType, blobs: list[bytes], data: st.DataObject
) -> None:
    _pack_id, raw, _entries, _originals = build_pack(sealer, kind, blobs)
    pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
    mask = data.draw(st.integers(1, 255), label="mask")
    with pytest.raises(CorruptObject):
        open_pack(sealer, flip(raw, pos, mask))


@given(sealers, blob_types, blob_lists, st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_truncated_pack_raises_corrupt(sealer: Sealer, kind: BlobType, blobs: list[bytes], data: st.DataObject) -> None:
    _pack_id, raw, _entries, _originals = build_pack(sealer, kind, blobs)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(CorruptObject):
        open_pack(sealer, raw[:cut])


def test_header_sealed_with_another_aad_fails() -> None:
    sealer = Sealer(KEY)
    _pid, raw, _entries, _orig = build_pack(sealer, BlobType.DATA, [b"a" * 100, b"b" * 200])
    (hlen,) = struct.unpack_from("<I", raw, len(raw) - 4)
    header = sealer.open(raw[len(raw) - 4 - hlen : -4], HEADER_AAD, "header")
    resealed = sealer.seal(header, b"phoenix v1 index")
    forged = raw[: len(raw) - 4 - hlen] + resealed + struct.pack("<I", len(resealed))
    with pytest.raises(CorruptObject):
        read_header(forged, sealer, "pack")


def test_header_listing_a_blob_beyond_the_body_raises_corrupt() -> None:
    sealer = Sealer(None)
    header = sealer.seal(
        encode_header([PackEntry(BlobType.DATA, Compression.NONE, bytes(32), 0, 500, 480)]), HEADER_AAD
    )
    raw = b"x" * 100 + header + struct.pack("<I", len(header))
    with pytest.raises(CorruptObject, match="beyond"):
        read_header(raw, sealer, "pack")


# ------------------------------------------------------------------------------------------
# index objects


packs_maps = st.dictionaries(hex_ids, st.lists(pack_entries, max_size=8), max_size=6)


@given(packs_maps, st.lists(hex_ids, max_size=6))
def test_index_round_trip(packs: dict[str, list[PackEntry]], superseded: list[str]) -> None:
    assert decode_index(encode_index(packs, superseded), "index") == (packs, superseded)


@given(packs_maps, st.lists(hex_ids, max_size=4), sealers, st.data())
def test_flipped_byte_in_index_object_raises_corrupt(
    packs: dict[str, list[PackEntry]], superseded: list[str], sealer: Sealer, data: st.DataObject
) -> None:
    sealed = sealer.seal(encode_index(packs, superseded), INDEX_AAD)
    assert decode_index(sealer.open(sealed, INDEX_AAD, "index"), "index") == (packs, superseded)
    pos = data.draw(st.integers(0, len(sealed) - 1), label="pos")
    mask = data.draw(st.integers(1, 255), label="mask")
    with pytest.raises(CorruptObject):
        decode_index(sealer.open(flip(sealed, pos, mask), INDEX_AAD, "index"), "index")
    cut = data.draw(st.integers(0, len(sealed) - 1), label="cut")
    with pytest.raises(CorruptObject):
        decode_index(sealer.open(sealed[:cut], INDEX_AAD, "index"), "index")


@given(packs_maps, st.lists(hex_ids, max_size=4), st.data())
def test_truncated_or_extended_index_plaintext_raises_corrupt(
    packs: dict[str, list[PackEntry]], superseded: list[str], data: st.DataObject
) -> None:
    plain = zstandard.ZstdDecompressor().decompress(encode_index(packs, superseded))
    cut = data.draw(st.integers(0, len(plain) - 1))
    with pytest.raises(CorruptObject):
        decode_index(zstandard.ZstdCompressor().compress(plain[:cut]), "index")
    extra = data.draw(st.binary(min_size=1, max_size=40))
    with pytest.raises(CorruptObject):
        decode_index(zstandard.ZstdCompressor().compress(plain + extra), "index")


@given(st.binary(max_size=200))
def test_index_garbage_raises_corrupt(garbage: bytes) -> None:
    with pytest.raises(CorruptObject):
        decode_index(garbage, "index")


def test_index_with_unknown_blob_type_raises_corrupt() -> None:
    entry = PackEntry(BlobType.TREE, Compression.ZSTD, bytes(32), 0, 1, 1)
    plain = bytearray(zstandard.ZstdDecompressor().decompress(encode_index({"ab" * 32: [entry]})))
    plain[9 + 36] = 5  # the entry's type byte
    with pytest.raises(CorruptObject):
        decode_index(zstandard.ZstdCompressor().compress(bytes(plain)), "index")


def test_decode_index_work_is_bounded_by_its_input() -> None:
    """A 13-byte index claiming 2**16 superseded ids must be rejected without building them.

    Unencrypted repositories carry an unkeyed checksum, so anyone able to write to the storage can
    craft a valid index object; its claimed counts must not drive allocation.
    """
    plain = struct.pack("<4sBI", b"PHXI", 1, 0) + struct.pack("<I", 2**16)
    blob = zstandard.ZstdCompressor().compress(plain)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptObject):
            decode_index(blob, "index")
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"decoding a {len(plain)}-byte index allocated {peak} bytes"


def _shared_blobs(packs: dict[str, list[PackEntry]]) -> dict[str, list[PackEntry]]:
    """The same packs, each also holding the first blob of the pack before it (blobs held twice)."""
    out: dict[str, list[PackEntry]] = {}
    previous: PackEntry | None = None
    for pack_id, entries in packs.items():
        # Another offset, within the 32 bits an entry record stores.
        out[pack_id] = entries + ([replace(previous, offset=(previous.offset + 1) % 2**32)] if previous else [])
        previous = entries[0] if entries else previous
    return out


@given(packs_maps.map(_shared_blobs))
@settings(max_examples=50)
def test_in_memory_index_lookups(packs: dict[str, list[PackEntry]]) -> None:
    index = Index()
    for pack_id, entries in packs.items():
        index.add_pack(pack_id, entries)
    first: dict[bytes, tuple[str, PackEntry]] = {}
    for pack_id, entries in packs.items():
        for e in entries:
            first.setdefault(e.id, (pack_id, e))
    assert len(index) == len(first)
    for bid, (pack_id, e) in first.items():
        loc = index.get(bid)
        assert loc is not None and index.has(bid)
        assert (loc.pack_id, loc.type, loc.compression, loc.offset, loc.stored, loc.raw) == (
            pack_id,
            e.type,
            e.compression,
            e.offset,
            e.stored,
            e.raw,
        )
    assert index.get(b"\xff" * 31) is None
    assert index.stored_size() == sum(e.stored for _, e in first.values())
    assert dict(index.blobs()).keys() == first.keys()
    # Every pack that holds a blob is one of its locations, the first pack first; once the packs
    # are gone (found missing), the next location is the first, until none is left.
    # Every distinct location, even two in one pack (a wrong entry beside the genuine one).
    held: dict[bytes, list[str]] = {}
    distinct: set[tuple[str, PackEntry]] = set()
    for pack_id, entries in packs.items():
        for e in entries:
            if (pack_id, e) not in distinct:
                distinct.add((pack_id, e))
                held.setdefault(e.id, []).append(pack_id)
    for bid, pack_ids in held.items():
        assert [loc.pack_id for loc in index.locations(bid)] == pack_ids
    gone = list(packs)[:1]
    assert index.remove_packs(gone) == sum(1 for p in held.values() if set(p) <= set(gone))
    for bid, pack_ids in held.items():
        left = [p for p in pack_ids if p not in gone]
        assert [loc.pack_id for loc in index.locations(bid)] == left
        assert index.has(bid) == bool(left)


def test_one_blob_listed_in_many_packs_costs_linear_time() -> None:
    """An index object of a compromised machine that backs up may list one blob in a hundred
    thousand packs, and the genuine entry for it beside a wrong one in the same pack: loading
    stays linear (the quadratic version took minutes), and every distinct location is kept."""
    import time

    blob, index = b"\x01" * 32, Index()
    entry = PackEntry(BlobType.DATA, Compression.NONE, blob, 0, 100, 60)
    start = time.process_time()
    for n in range(100_000):
        index.add_pack(f"{n:064x}", [entry])
    assert time.process_time() - start < 5, "adding a blob's locations is quadratic"
    index.add_pack(f"{0:064x}", [replace(entry, offset=7)])  # a second entry in the first pack
    locations = index.locations(blob)
    assert len(locations) == 100_001 and locations[0].offset == 0 and locations[-1].offset == 7
    assert index.remove_packs([f"{0:064x}"]) == 0 and index.get(blob).pack_id == f"{1:064x}"


# ------------------------------------------------------------------------------------------
# trees


@st.composite
def nodes(draw: st.DrawFn, name: st.SearchStrategy[str] = names) -> Node:
    kind = draw(st.sampled_from(["dir", "file", "symlink", "sqlite"]))
    node = Node(
        name=draw(name),
        type=kind,
        mode=draw(st.integers(0, 0o7777)),
        mtime_ns=draw(st.integers(-(2**63), 2**63 - 1)),
        uid=draw(st.integers(0, 2**32 - 2)),
        gid=draw(st.integers(0, 2**32 - 2)),
    )
    if kind in ("file", "sqlite"):
        # A node's size is exactly its content, and every extent lies within a blob.
        node.content = draw(st.lists(blob_extents, max_size=6))
        node.size = sum(e.length for e in node.content)
        node.inode = draw(st.integers(0, 2**64 - 1))
        node.ctime_ns = draw(st.integers(0, 2**63 - 1))
        node.sha256 = draw(ids.map(bytes.hex))
    if kind == "dir":
        node.subtree = draw(ids)
    if kind == "symlink":
        # What readlink gives: bytes without NUL, as Python decodes them (surrogateescape).
        raw = draw(st.binary(min_size=1, max_size=60).filter(lambda b: b"\0" not in b))
        node.link_target = os.fsdecode(raw)
    if kind == "sqlite" or draw(st.booleans()):
        node.sqlite = draw(st.dictionaries(st.text(max_size=12), json_values, max_size=4))
    return node


trees = st.lists(nodes(), max_size=6, unique_by=lambda n: n.name)


@given(trees)
@settings(max_examples=60)
def test_tree_round_trip(items: list[Node]) -> None:
    assert decode_tree(encode_tree(items)) == sorted(items, key=lambda n: n.name)


@given(trees, st.randoms())
@settings(max_examples=40)
def test_tree_encoding_is_canonical(items: list[Node], rnd) -> None:
    shuffled = list(items)
    rnd.shuffle(shuffled)
    assert encode_tree(shuffled) == encode_tree(items)


def _sound_node(name: str, kind: str) -> Node:
    """A node that decodes: its name is its only possible fault."""
    node = Node(name=name, type=kind, mode=0o644)
    if kind == "file":
        node.size, node.sha256 = 0, hashlib.sha256(b"").hexdigest()
    elif kind == "dir":
        node.subtree = b"\x01" * 32
    else:
        node.link_target = "target"
    return node


@pytest.mark.parametrize("kind", ["file", "dir", "symlink"])
@pytest.mark.parametrize("bad", ["..", ".", "a/b", "", "/", "x\0y", "../etc"])
def test_tree_with_unsafe_name_is_rejected(bad: str, kind: str) -> None:
    # The same tree with a safe name decodes: the refusal below is the name's, not another fault's
    # (the test used to build file nodes without a SHA-256, refused whatever their name).
    fine = [_sound_node("fine", kind), _sound_node("also-fine", kind)]
    assert decode_tree(encode_tree(fine)) == sorted(fine, key=lambda n: n.name)
    with pytest.raises(UnsafePath, match="unsafe name"):
        decode_tree(encode_tree([_sound_node("fine", kind), _sound_node(bad, kind)]))


@given(nodes(), nodes())
@settings(max_examples=40)
def test_tree_with_duplicate_names_is_rejected(a: Node, b: Node) -> None:
    b = replace(b, name=a.name)
    with pytest.raises(CorruptObject):
        decode_tree(encode_tree([a, b]))


@pytest.mark.parametrize(
    "doc",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"version": 2, "nodes": []}',
        b'{"nodes": []}',
        b'{"version": 1, "nodes": [{"name": "a", "type": "fifo", "mode": 0, "mtimeNs": 0}]}',
        b'{"version": 1, "nodes": [{"name": "a", "type": "dir", "mode": 0, "mtimeNs": 0, "subtree": "zz"}]}',
        b'{"version": 1, "nodes": [{"name": "a", "type": "file", "mode": 0, "mtimeNs": 0}]}',
        b'{"version": 1, "nodes": [{"type": "file"}]}',
        b'{"version": 1, "nodes": [7]}',
    ],
)
def test_malformed_tree_raises_corrupt(doc: bytes) -> None:
    with pytest.raises(CorruptObject):
        decode_tree(doc)


@given(wild_json)
@example(None)
@example({"name": "a", "type": "file", "mode": float("inf"), "mtimeNs": 0, "size": 0, "content": "", "sha256": None})
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_decode_tree_raises_only_format_errors(nodes_value: object) -> None:
    """Whatever a (damaged) tree document holds, decoding fails with the format's own errors."""
    for doc in ({"version": 1, "nodes": nodes_value}, {"version": 1, "nodes": [nodes_value]}):
        with contextlib.suppress(CorruptObject, UnsafePath):
            decode_tree(json.dumps(doc).encode())


# ------------------------------------------------------------------------------------------
# snapshots


database_infos = st.builds(
    DatabaseInfo,
    path=st.text(min_size=1, max_size=40),
    engine=st.just("sqlite"),
    version=st.text(max_size=10),
    integrity=st.text(max_size=40),
    tables=st.dictionaries(st.text(max_size=20), st.integers(0, 2**40), max_size=6),
    virtual_tables=st.dictionaries(st.text(max_size=20), st.sampled_from(["fts5", "vec0", "rtree"]), max_size=3),
    page_size=st.sampled_from([0, 512, 1024, 4096, 65536]),
)
stats = st.builds(
    SnapshotStats,
    files=st.integers(0, 2**40),
    dirs=st.integers(0, 2**40),
    size=st.integers(0, 2**60),
    added=st.integers(0, 2**60),
    blobs_added=st.integers(0, 2**40),
    files_read=st.integers(0, 2**40),
    duration=st.integers(0, 10**9).map(lambda ms: ms / 1000),
)
# Every time a snapshot records can be sorted and printed: years well inside the calendar.
times = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.timezones()).map(
    lambda d: d.isoformat()
)
# Timestamp names, and the plain words older tests used: never a path separator or control character.
snapshot_names = st.from_regex(r"[0-9A-Za-z][0-9A-Za-z._-]{0,30}", fullmatch=True)
snapshots = st.builds(
    Snapshot,
    time=times,
    name=snapshot_names,
    host=st.text(max_size=30),
    username=st.text(max_size=20),
    scope=st.sampled_from(["full", "memory", "databases", "identity"]),
    tags=st.lists(st.text(max_size=10), max_size=4).map(tuple),
    tree=ids,
    parent=st.none() | hex_ids,
    sources=st.dictionaries(st.sampled_from(["workspace", "home", "root"]), st.text(max_size=30)),
    databases=st.lists(database_infos, max_size=3).map(tuple),
    stats=stats,
    incomplete=st.lists(
        st.fixed_dictionaries({"path": st.text(max_size=20), "error": st.text(max_size=20)}), max_size=3
    ).map(tuple),
    phoenix_version=st.text(max_size=10),
    started=times,
)


@given(snapshots, hex_ids)
@settings(max_examples=60)
def test_snapshot_round_trip(snap: Snapshot, sid: str) -> None:
    raw = snap.to_json_bytes()
    back = Snapshot.from_json_bytes(raw, sid)
    assert back == replace(snap, id=sid)
    assert back.to_json_bytes() == raw  # canonical


@given(snapshots, st.integers(SNAPSHOT_VERSION + 1, 10**6))
@settings(max_examples=25)
def test_newer_snapshot_version_is_unsupported(snap: Snapshot, version: int) -> None:
    doc = json.loads(snap.to_json_bytes())
    doc["version"] = version
    with pytest.raises(UnsupportedFormat):
        Snapshot.from_json_bytes(json.dumps(doc).encode(), "ab" * 32)


@given(snapshots, st.sampled_from(["time", "name", "host", "scope", "tags", "tree", "stats"]), wild_json)
@example(
    Snapshot("2026-01-01T00:00:00+00:00", "n", "h", "u", "full", (), bytes(32), None, {}, (), SnapshotStats()),
    "stats",
    {"files": float("inf"), "dirs": 0, "size": 0, "added": 0},
)
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
def test_damaged_snapshot_raises_only_format_errors(snap: Snapshot, key: str, value: object) -> None:
    doc = json.loads(snap.to_json_bytes())
    doc[key] = value
    with contextlib.suppress(CorruptObject, UnsupportedFormat):
        Snapshot.from_json_bytes(json.dumps(doc).encode(), "ab" * 32)


@pytest.mark.parametrize("doc", [b"", b"[1]", b"null", b'{"version": 1}', b'{"version": 1, "stats": {}}'])
def test_malformed_snapshot_raises_corrupt(doc: bytes) -> None:
    with pytest.raises(CorruptObject):
        Snapshot.from_json_bytes(doc, "ab" * 32)


# ------------------------------------------------------------------------------------------
# repository config


@st.composite
def repo_configs(draw: st.DrawFn) -> RepoConfig:
    # The ranges the repository accepts (pyfastcdc's own limits).
    lo = draw(st.integers(64, 2**20))
    avg = draw(st.integers(lo + 256, lo + 4 * 2**20))
    hi = draw(st.integers(max(avg, 1024), 16 * 2**20))
    secrets = MasterSecrets(draw(ids), draw(ids), draw(st.integers(1, 2**63 - 1)))
    return RepoConfig(
        id=draw(st.binary(min_size=16, max_size=16)).hex(),
        version=FORMAT_VERSION,
        created=draw(times),
        encrypted=draw(st.booleans()),
        chunker={"min": lo, "avg": avg, "max": hi},
        sqlite_run_pages=draw(st.integers(1, 4096)),
    ).signed(secrets)


@given(repo_configs())
def test_repo_config_round_trip(config: RepoConfig) -> None:
    raw = config.to_bytes()
    assert RepoConfig.from_bytes(raw, "repo") == config
    assert json.loads(raw)["format"] == "phoenix-repository"


@pytest.mark.parametrize("version", [7, 99, 2**40])
def test_repo_config_of_a_newer_version_is_unsupported(version: int) -> None:
    config = RepoConfig(
        "ab" * 16, FORMAT_VERSION, "2026-01-01T00:00:00+00:00", False, {"min": 64, "avg": 128, "max": 256}, 64
    )
    doc = json.loads(config.to_bytes())
    doc["version"] = version
    with pytest.raises(UnsupportedFormat):
        RepoConfig.from_bytes(json.dumps(doc).encode(), "repo")


@pytest.mark.parametrize(
    "change",
    [
        {"format": "restic"},
        {"version": "1"},
        {"chunker": {"min": 10, "avg": 20, "max": 30}},
        {"chunker": {"min": 4096, "avg": 1024, "max": 65536}},
        {"chunker": {"min": 4096, "avg": 8192, "max": 2**30}},
        {"sqliteRunPages": 0},
        {"sqliteRunPages": 5000},
        {"chunker": None},
    ],
)
def test_repo_config_with_impossible_values_is_corrupt(change: dict) -> None:
    config = RepoConfig(
        "ab" * 16, FORMAT_VERSION, "2026-01-01T00:00:00+00:00", True, {"min": 64, "avg": 128, "max": 256}, 64
    )
    doc = {**json.loads(config.to_bytes()), **change}
    with pytest.raises(CorruptObject):
        RepoConfig.from_bytes(json.dumps(doc).encode(), "repo")


@given(
    repo_configs(), st.sampled_from(["id", "created", "encryption", "chunker", "sqliteRunPages", "version"]), wild_json
)
@example(
    RepoConfig("ab" * 16, FORMAT_VERSION, "t", False, {"min": 64, "avg": 128, "max": 1024}, 64),
    "sqliteRunPages",
    float("inf"),
)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_damaged_repo_config_raises_only_format_errors(config: RepoConfig, key: str, value: object) -> None:
    doc = json.loads(config.to_bytes())
    doc[key] = value
    with contextlib.suppress(CorruptObject, UnsupportedFormat):
        RepoConfig.from_bytes(json.dumps(doc).encode(), "repo")


@given(st.binary(max_size=100))
def test_repo_config_garbage_raises_corrupt(raw: bytes) -> None:
    with pytest.raises((CorruptObject, UnsupportedFormat)):
        RepoConfig.from_bytes(raw, "repo")


def test_a_pack_name_may_be_its_blake3_or_its_sha256_and_nothing_else() -> None:
    data = b"sealed blobs and a header" * 100
    b3, sha = blake3.blake3(data).hexdigest(), hashlib.sha256(data).hexdigest()
    assert pack_digest(data, PackIds.BLAKE3) == b3 and pack_digest(data, PackIds.SHA256) == sha
    # Whichever hash the repository names its new packs by is tried first; either is accepted.
    for ids in PackIds:
        for name in (pack_name(b3), pack_name(sha)):
            assert names_content(name, data, ids)
            assert not names_content(name, data[:-1] + b"!", ids), "one changed byte"
        # Only packs are named by BLAKE3: an index object, snapshot or capture segment keeps SHA-256.
        for prefix in ("index/", "snapshots/", "captures/"):
            assert names_content(prefix + sha, data, ids) and not names_content(prefix + b3, data, ids)
        # A pack named by the other hash of other bytes, or by a keyed BLAKE3, is no match.
        assert not names_content(pack_name(blake3.blake3(data, key=b"k" * 32).hexdigest()), data, ids)


def test_sha256_file_of_many_small_files_faults_in_no_fresh_memory(tmp_path: Path) -> None:
    """A restore hashes each file in its way, memory checksums each exported file: with phx's
    malloc settings (cli/main.py), a 1 MiB buffer per file was mapped, zero-filled and unmapped
    again, 30 times the time of hashing a 2 KB note. Hashing 300 notes faults in (almost) no pages."""
    for i in range(300):
        (tmp_path / f"n{i}.md").write_bytes(os.urandom(2000 + i))
    script = (
        "import resource, sys, hashlib, pathlib\n"
        "from phoenix_backup.cli.main import _limit_malloc_arenas\n"
        "from phoenix_backup.repo.crypto import sha256_file\n"
        "_limit_malloc_arenas()\n"
        "paths = sorted(pathlib.Path(sys.argv[1]).iterdir())\n"
        "sha256_file(paths[0])\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for p in paths:\n"
        "    assert sha256_file(p) == hashlib.sha256(p.read_bytes()).hexdigest()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True)
    assert int(done.stdout) < 1000, done.stdout  # 256 pages a file before: 76,800
