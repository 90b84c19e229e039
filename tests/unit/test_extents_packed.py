"""Packed extents (issue 20, memory): a parent's extents held as their stored bytes, not as
`Extent` objects, must give exactly what the list-based code gave.

The oracles are the algorithms this replaced, kept here verbatim in substance: `ExtentMap` over a
list of `Extent` with a list of starts, `merge_extents` over a list, the byte encoding of
extents, and `page_runs` building a list of `Extent` objects and merging it at the end. Trees
written from packed extents must be byte-identical to those written from lists.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import pickle
import random
from collections.abc import Callable

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenix_backup.errors import CorruptObject
from phoenix_backup.repo.chunker import HASH_SIZE, ExtentMap, PageState, merge_extents, page_runs
from phoenix_backup.repo.tree import Extent, Extents, Node, decode_extents, decode_tree, encode_extents, encode_tree

PAGE_KEY = bytes(range(32))
BLOB_IDS = [hashlib.sha256(bytes([i])).digest() for i in range(6)]


# ------------------------------------------------------------------------------------------
# The oracles: the list-based code as it was before packed extents.


class OldExtentMap:
    def __init__(self, extents: list[Extent]) -> None:
        self.extents = extents
        self.starts: list[int] = []
        pos = 0
        for e in extents:
            self.starts.append(pos)
            pos += e.length
        self.size = pos

    def slice(self, offset: int, length: int) -> list[Extent]:
        out: list[Extent] = []
        i = bisect.bisect_right(self.starts, offset) - 1
        end = offset + length
        while length > 0 and 0 <= i < len(self.extents):
            e, start = self.extents[i], self.starts[i]
            lo = max(offset, start)
            hi = min(end, start + e.length)
            if hi > lo:
                out.append(Extent(e.blob, e.offset + (lo - start), hi - lo))
            if start + e.length >= end:
                break
            i += 1
        return out


def old_merge_extents(extents: list[Extent]) -> list[Extent]:
    out: list[Extent] = []
    for e in extents:
        if out and out[-1].blob == e.blob and out[-1].offset + out[-1].length == e.offset:
            last = out[-1]
            out[-1] = Extent(last.blob, last.offset, last.length + e.length)
        else:
            out.append(e)
    return out


def _varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def old_encode_extents(extents: list[Extent]) -> str:
    out = bytearray()
    for e in extents:
        out += e.blob
        _varint(out, e.offset)
        _varint(out, e.length)
    return base64.b64encode(bytes(out)).decode("ascii")


def old_page_runs(
    data: bytes,
    page_size: int,
    run_pages: int,
    save: Callable[[bytes], bytes],
    parent: tuple[list[Extent], PageState] | None,
) -> list[Extent]:
    """The extents of page_runs before packed extents (no region ids: keyed page hashes)."""
    region_size = page_size * run_pages
    prev_map = OldExtentMap(parent[0]) if parent else None
    prev_state = parent[1] if parent else None
    usable = prev_state is not None and prev_state.page_size == page_size and prev_state.run_pages == run_pages
    extents: list[Extent] = []
    for start in range(0, len(data), region_size):
        region = data[start : start + region_size]
        rhash = blake3.blake3(region, key=PAGE_KEY).digest(length=HASH_SIZE)
        r = start // region_size
        if usable:
            assert prev_state is not None and prev_map is not None
            if prev_state.region(r) == rhash and start + len(region) <= prev_map.size:
                extents.extend(prev_map.slice(start, len(region)))
                continue
        hashes = [
            blake3.blake3(region[o : o + page_size], key=PAGE_KEY).digest(length=HASH_SIZE)
            for o in range(0, len(region), page_size)
        ]
        if not usable:
            extents.append(Extent(save(region), 0, len(region)))
            continue
        assert prev_state is not None and prev_map is not None
        first_page = start // page_size
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
                extents.extend(prev_map.slice(start + lo, hi - lo))
            else:
                extents.append(Extent(save(region[lo:hi]), 0, hi - lo))
            i = j
    return old_merge_extents(extents)


# ------------------------------------------------------------------------------------------
# Strategies


@st.composite
def extent_lists(draw: st.DrawFn) -> list[Extent]:
    """Extents into a few blobs, some continuing the last one (mergeable), some empty, offsets and
    lengths of one to four varint bytes."""
    out: list[Extent] = []
    sizes = st.one_of(st.integers(0, 200), st.integers(0, 70_000), st.integers(0, 4096 * 65536 // 2))
    for _ in range(draw(st.integers(0, 40))):
        if out and draw(st.booleans()):
            last = out[-1]
            out.append(Extent(last.blob, last.offset + last.length, draw(sizes)))
            continue
        out.append(Extent(draw(st.sampled_from(BLOB_IDS)), draw(sizes), draw(sizes)))
    return out


def packed(extents: list[Extent]) -> Extents:
    """The extents as a tree gives them back: decoded from their stored text."""
    return decode_extents(encode_extents(extents))


# ------------------------------------------------------------------------------------------
# The packed form against the oracles


@given(extent_lists())
def test_packed_extents_encode_decode_and_index_as_the_list(extents: list[Extent]) -> None:
    text = old_encode_extents(extents)
    assert encode_extents(extents) == text
    got = decode_extents(text)
    assert isinstance(got, Extents)
    assert list(got) == extents and got == extents and len(got) == len(extents)
    assert encode_extents(got) == text  # what is written again is the very bytes read
    assert got.size == sum(e.length for e in extents)
    for i in range(-len(extents), len(extents)):
        assert got[i] == extents[i]
    assert got[1:-1:2] == extents[1:-1:2]
    with pytest.raises(IndexError):
        got[len(extents)]
    # `phx watch` hands outcomes to its parent pickled.
    assert pickle.loads(pickle.dumps(got, protocol=pickle.HIGHEST_PROTOCOL)) == got


@given(extent_lists(), st.data())
def test_extent_map_slice_equals_the_old_map(extents: list[Extent], data: st.DataObject) -> None:
    old = OldExtentMap(extents)
    for emap in (ExtentMap(extents), ExtentMap(packed(extents))):
        assert emap.size == old.size
        for _ in range(5):
            offset = data.draw(st.integers(0, old.size + 10), label="offset")
            length = data.draw(st.integers(0, old.size + 10 - offset), label="length")
            assert list(emap.slice(offset, length)) == old.slice(offset, length)


@given(extent_lists())
def test_merge_extents_equals_the_old_merge(extents: list[Extent]) -> None:
    assert list(merge_extents(extents)) == old_merge_extents(extents)
    assert list(merge_extents(packed(extents))) == old_merge_extents(extents)


@st.composite
def histories(draw: st.DrawFn) -> tuple[int, int, list[bytes]]:
    """A database over a few days: pages rewritten, appended and cut off at random."""
    page_size = draw(st.sampled_from([512, 1024]))
    run_pages = draw(st.integers(2, 16))
    rng = random.Random(draw(st.integers(0, 2**32)))
    pages = [rng.randbytes(page_size) for _ in range(draw(st.integers(0, 120)))]
    days = [b"".join(pages)]
    for _ in range(draw(st.integers(1, 6))):
        for _ in range(draw(st.integers(0, 30))):
            if pages:
                pages[rng.randrange(len(pages))] = rng.randbytes(page_size)
        pages += [rng.randbytes(page_size) for _ in range(draw(st.integers(0, 8)))]
        del pages[len(pages) - draw(st.integers(0, min(4, len(pages)))) :]
        days.append(b"".join(pages))
    return page_size, run_pages, days


def _tree(name: str, data: bytes, content: list[Extent] | Extents) -> bytes:
    node = Node(name, "sqlite", size=len(data), content=content, sha256=hashlib.sha256(data).hexdigest())
    return encode_tree([node])


def _split(extents: list[Extent], rng: random.Random) -> list[Extent]:
    """The same bytes with some extents cut in two (a parent stored unmerged): what page runs
    slice from it must be merged again, as before."""
    out: list[Extent] = []
    for e in extents:
        if e.length > 1 and rng.random() < 0.5:
            cut = rng.randrange(1, e.length)
            out += [Extent(e.blob, e.offset, cut), Extent(e.blob, e.offset + cut, e.length - cut)]
        else:
            out.append(e)
    return out


@given(histories(), st.booleans(), st.integers(0, 2**32))
@settings(max_examples=60, deadline=None)
def test_page_runs_write_the_trees_the_old_code_wrote(
    case: tuple[int, int, list[bytes]], split: bool, seed: int
) -> None:
    """Day after day, the new page runs (their parent decoded from the stored tree, packed) and
    the old ones (their parent a list) give byte-identical trees, and the bytes read back; with
    `split`, each parent is stored with some extents cut in two, which both merge again."""
    page_size, run_pages, days = case
    rng = random.Random(seed)
    blobs: dict[bytes, bytes] = {}

    def save(view: bytes | memoryview, blob_id: bytes | None = None) -> bytes:
        bid = hashlib.sha256(view).digest()
        blobs[bid] = bytes(view)
        return bid

    new_parent: tuple[Extents, PageState] | None = None
    old_parent: tuple[list[Extent], PageState] | None = None
    for data in days:
        extents, state = page_runs(memoryview(data), page_size, run_pages, PAGE_KEY, save, new_parent)
        old = old_page_runs(data, page_size, run_pages, save, old_parent)
        tree = _tree("memory.db", data, extents)
        assert tree == _tree("memory.db", data, old)
        assert b"".join(blobs[e.blob][e.offset : e.offset + e.length] for e in extents) == data
        if split:
            old = _split(old, rng)
            tree = _tree("memory.db", data, old)
        (node,) = decode_tree(tree)
        assert isinstance(node.content, Extents)
        assert encode_tree([node]) == tree
        new_parent = (node.content, state)
        old_parent = (old, state)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x01" * 31, "truncated content extents"),
        (b"\x01" * 32 + b"\x80", "a malformed varint in content extents"),
        (b"\x01" * 32 + b"\xff" * 10 + b"\x01\x00", "a malformed varint in content extents"),
    ],
)
def test_malformed_packed_extents_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(CorruptObject, match=message):
        decode_extents(base64.b64encode(raw).decode())


def test_an_extent_beyond_any_blob_is_refused_naming_the_node() -> None:
    big = Node("memory.db", "sqlite", size=1, content=[Extent(BLOB_IDS[0], 2**40 - 1, 1)], sha256="0" * 64)
    with pytest.raises(CorruptObject, match=r"'memory\.db' points beyond the end of a blob"):
        decode_tree(encode_tree([big]))
