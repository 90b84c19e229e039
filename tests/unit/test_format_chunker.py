"""Chunking: FastCDC for files, page-aligned runs for SQLite copies, and the extent helpers.

Page-run properties work on random "database" byte strings with a dict as the blob store: the
extents always reassemble the data exactly, and against a parent only changed pages are stored.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenix_backup.errors import CorruptObject
from phoenix_backup.repo.cache import Cache
from phoenix_backup.repo.chunker import STREAM_CHUNKER, ExtentMap, PageState, file_chunks, merge_extents, page_runs
from phoenix_backup.repo.repository import CHUNK_AVG, CHUNK_MAX, CHUNK_MIN, RepoConfig
from phoenix_backup.repo.tree import Extent

SMALL = {"min": 4096, "avg": 16384, "max": 65536}
REAL = {"min": CHUNK_MIN, "avg": CHUNK_AVG, "max": CHUNK_MAX}
PAGE_KEY = bytes(range(32))
SEEDS = st.integers(1, 2**63 - 1)
MB = 1024 * 1024


def rand_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# ------------------------------------------------------------------------------------------
# file_chunks


@given(st.integers(0, 3 * MB), st.integers(0, 2**32), SEEDS, st.sampled_from(["small", "real"]))
@settings(max_examples=40, deadline=None)
def test_chunks_concatenate_to_the_input_within_bounds(size: int, data_seed: int, seed: int, params: str) -> None:
    chunker = SMALL if params == "small" else REAL
    data = rand_bytes(data_seed, size)
    chunks = [bytes(c) for c in file_chunks(data, chunker, seed)]
    assert b"".join(chunks) == data
    assert all(chunks), "no empty chunk"
    for c in chunks[:-1]:
        assert chunker["min"] <= len(c) <= chunker["max"]
    if chunks:
        assert len(chunks[-1]) <= chunker["max"]
    if 0 < size <= chunker["min"]:
        assert len(chunks) == 1


@pytest.mark.parametrize("data", [b"", b"x", bytes(4096), bytes(3 * MB), b"abc" * MB])
def test_chunking_edge_inputs(data: bytes) -> None:
    chunks = [bytes(c) for c in file_chunks(data, SMALL, 7)]
    assert b"".join(chunks) == data
    assert all(SMALL["min"] <= len(c) <= SMALL["max"] for c in chunks[:-1])


def test_chunking_accepts_memoryview_and_yields_views() -> None:
    data = rand_bytes(1, MB)
    chunks = list(file_chunks(memoryview(data), SMALL, 3))
    assert all(isinstance(c, memoryview) for c in chunks)
    assert b"".join(chunks) == data


@given(st.integers(SMALL["max"], MB), st.integers(0, 2**32), SEEDS)
@settings(max_examples=20, deadline=None)
def test_chunking_is_deterministic_for_a_seed(size: int, data_seed: int, seed: int) -> None:
    data = rand_bytes(data_seed, size)
    first = [bytes(c) for c in file_chunks(data, SMALL, seed)]
    assert [bytes(c) for c in file_chunks(data, SMALL, seed)] == first


def cut_points(data: bytes, chunker: dict[str, int], seed: int) -> list[int]:
    out, pos = [], 0
    for c in file_chunks(data, chunker, seed):
        pos += len(c)
        out.append(pos)
    return out


# The bits of the seed that change where chunks are cut (docs/repository-format.md §3): FastCDC's
# rolling hash carries bits upward only, and its masks test bits below 48 at every chunk size.
EFFECTIVE_SEED_BITS = 48


@given(st.integers(0, 2**32), SEEDS, st.integers(1, 2**EFFECTIVE_SEED_BITS - 1))
@settings(max_examples=20, deadline=None)
def test_boundaries_depend_on_the_seed(data_seed: int, seed: int, flip: int) -> None:
    """Seeds that differ in any of their low 48 bits cut differently."""
    other = seed ^ flip
    data = rand_bytes(data_seed, MB)
    assert cut_points(data, SMALL, seed) != cut_points(data, SMALL, other)


@pytest.mark.parametrize("chunker", [SMALL, STREAM_CHUNKER], ids=["small", "stream"])
def test_each_of_the_48_low_seed_bits_changes_the_cut_points(chunker: dict[str, int]) -> None:
    data = rand_bytes(7, 4 * MB)
    base = cut_points(data, chunker, 12345)
    same = [bit for bit in range(63) if cut_points(data, chunker, 12345 ^ (1 << bit)) == base]
    assert same == list(range(EFFECTIVE_SEED_BITS, 63))


@given(st.integers(0, 2**32), SEEDS, st.integers(0, 8192), st.binary(min_size=1, max_size=300))
@settings(max_examples=25, deadline=None)
def test_insertion_near_the_start_keeps_later_chunks(data_seed: int, seed: int, pos: int, inserted: bytes) -> None:
    data = rand_bytes(data_seed, 2 * MB)
    edited = data[:pos] + inserted + data[pos:]
    before = [hashlib.sha256(c).digest() for c in file_chunks(data, SMALL, seed)]
    after = {hashlib.sha256(c).digest() for c in file_chunks(edited, SMALL, seed)}
    kept = sum(1 for h in before if h in after)
    # Content-defined: boundaries re-synchronise within a chunk or two of the edit.
    assert kept >= len(before) - 4, f"only {kept} of {len(before)} chunks survived an insertion at {pos}"


def test_insertion_with_real_parameters_keeps_later_chunks() -> None:
    data = rand_bytes(99, 12 * MB)
    edited = data[:1000] + b"inserted note" + data[1000:]
    before = [hashlib.sha256(c).digest() for c in file_chunks(data, REAL, 12345)]
    after = {hashlib.sha256(c).digest() for c in file_chunks(edited, REAL, 12345)}
    assert len(before) >= 6
    assert sum(1 for h in before if h in after) >= len(before) - 2


@pytest.mark.parametrize(
    "chunker",
    [
        SMALL,
        REAL,
        {"min": 64, "avg": 64, "max": 64},  # max below FastCDC's 1 KiB floor
        {"min": 2 * MB, "avg": 4 * MB, "max": 8 * MB},  # min above FastCDC's 1 MiB ceiling
        {"min": 64, "avg": 12 * MB, "max": 16 * MB},  # avg - min above FastCDC's 4 MiB ceiling
    ],
    ids=["small", "real", "tiny-max", "huge-min", "huge-avg"],
)
def test_every_chunker_config_the_repository_accepts_can_chunk(chunker: dict[str, int]) -> None:
    """RepoConfig.from_bytes must reject chunker sizes file_chunks cannot use, not let a backup crash."""
    doc = {
        "format": "phoenix-repository",
        "version": 1,
        "id": "ab" * 16,
        "created": "2026-01-01T00:00:00+00:00",
        "encryption": "none",
        "chunker": {"algorithm": "fastcdc-2020", **chunker},
        "sqliteRunPages": 64,
    }
    try:
        config = RepoConfig.from_bytes(json.dumps(doc).encode(), "repo")
    except CorruptObject:
        return
    data = rand_bytes(5, config.chunker["min"] + 5000)
    assert b"".join(file_chunks(data, config.chunker, 1)) == data


# ------------------------------------------------------------------------------------------
# page runs


class Store:
    """A blob store for page_runs: content-addressed dict, counting the bytes each call saves."""

    def __init__(self) -> None:
        self.blobs: dict[bytes, bytes] = {}
        self.saved = 0

    def save(self, view: memoryview) -> bytes:
        data = bytes(view)
        bid = hashlib.sha256(data).digest()
        self.blobs[bid] = data
        self.saved += len(data)
        return bid

    def resolve(self, extents: list[Extent]) -> bytes:
        out = bytearray()
        for e in extents:
            blob = self.blobs[e.blob]
            assert e.offset >= 0 and e.offset + e.length <= len(blob), "extent outside its blob"
            out += blob[e.offset : e.offset + e.length]
        return bytes(out)


PAGE_SIZES = st.sampled_from([512, 1024, 2048, 4096])
RUN_PAGES = st.integers(4, 64)


def runs(store: Store, data: bytes, page_size: int, run_pages: int, parent=None):
    return page_runs(memoryview(data), page_size, run_pages, PAGE_KEY, store.save, parent)


@given(st.integers(0, 2**32), PAGE_SIZES, RUN_PAGES, st.integers(0, 300), st.integers(0, 4095))
@settings(max_examples=60, deadline=None)
def test_page_runs_reassemble_exactly(seed: int, page_size: int, run_pages: int, pages: int, tail: int) -> None:
    data = rand_bytes(seed, pages * page_size + tail % page_size)
    store = Store()
    extents, state = runs(store, data, page_size, run_pages)
    assert store.resolve(extents) == data
    assert store.saved == len(data)
    assert state.page_size == page_size and state.run_pages == run_pages
    assert len(state.pages) == 16 * -(-len(data) // page_size)
    assert len(state.regions) == 16 * -(-len(data) // (page_size * run_pages))
    assert all(e.length > 0 for e in extents)


@st.composite
def database_versions(draw: st.DrawFn):
    page_size = draw(PAGE_SIZES)
    run_pages = draw(RUN_PAGES)
    npages = draw(st.integers(1, 300))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    data = rnd.randbytes(npages * page_size)
    changed = sorted(draw(st.sets(st.integers(0, npages - 1), max_size=min(npages, 12))))
    new = bytearray(data)
    for p in changed:
        page = rnd.randbytes(page_size)
        while page == data[p * page_size : (p + 1) * page_size]:
            page = rnd.randbytes(page_size)
        new[p * page_size : (p + 1) * page_size] = page
    return page_size, run_pages, data, bytes(new), changed


@given(database_versions())
@settings(max_examples=60, deadline=None)
def test_changed_pages_cost_at_most_their_size(case) -> None:
    page_size, run_pages, old, new, changed = case
    store = Store()
    parent = runs(store, old, page_size, run_pages)
    before = store.saved
    extents, state = runs(store, new, page_size, run_pages, parent)
    assert store.resolve(extents) == new
    assert store.saved - before <= len(changed) * page_size
    # The returned state is as good as a fresh one for the next generation.
    fresh = runs(Store(), new, page_size, run_pages)[1]
    assert (state.regions, state.pages) == (fresh.regions, fresh.pages)
    # Unchanged since: nothing new at all.
    again = store.saved
    extents2, _ = runs(store, new, page_size, run_pages, (extents, state))
    assert store.saved == again
    assert store.resolve(extents2) == new


@given(database_versions(), st.integers(1, 3))
@settings(max_examples=30, deadline=None)
def test_chain_of_generations_stays_exact(case, generations: int) -> None:
    page_size, run_pages, old, new, _changed = case
    store = Store()
    parent = runs(store, old, page_size, run_pages)
    rnd = random.Random(len(new))
    data = new
    for _ in range(generations):
        parent = runs(store, data, page_size, run_pages, parent)
        assert store.resolve(parent[0]) == data
        p = rnd.randrange(len(data) // page_size)
        data = data[: p * page_size] + rnd.randbytes(page_size) + data[(p + 1) * page_size :]
    extents, _ = runs(store, data, page_size, run_pages, parent)
    assert store.resolve(extents) == data


@given(database_versions(), st.integers(1, 100))
@settings(max_examples=40, deadline=None)
def test_growing_database_stores_only_the_new_pages(case, added: int) -> None:
    page_size, run_pages, old, _new, _changed = case
    store = Store()
    parent = runs(store, old, page_size, run_pages)
    before = store.saved
    grown = old + random.Random(added).randbytes(added * page_size)
    extents, _ = runs(store, grown, page_size, run_pages, parent)
    assert store.resolve(extents) == grown
    assert store.saved - before <= added * page_size


@given(database_versions(), st.data())
@settings(max_examples=40, deadline=None)
def test_shrinking_database_stores_nothing(case, data: st.DataObject) -> None:
    page_size, run_pages, old, _new, _changed = case
    keep = data.draw(st.integers(0, len(old) // page_size))
    store = Store()
    parent = runs(store, old, page_size, run_pages)
    before = store.saved
    shrunk = old[: keep * page_size]
    extents, _ = runs(store, shrunk, page_size, run_pages, parent)
    assert store.resolve(extents) == shrunk
    assert store.saved == before


@given(database_versions(), PAGE_SIZES, RUN_PAGES)
@settings(max_examples=30, deadline=None)
def test_parent_with_other_page_size_or_run_length_is_ignored(case, page_size2: int, run_pages2: int) -> None:
    page_size, run_pages, old, new, _changed = case
    if (page_size2, run_pages2) == (page_size, run_pages):
        return
    store = Store()
    parent = runs(store, old, page_size, run_pages)
    extents, state = runs(store, new, page_size2, run_pages2, parent)
    assert store.resolve(extents) == new
    assert state.page_size == page_size2


def test_parent_state_without_hashes_is_safe() -> None:
    """A truncated cache file (fewer hashes than pages) costs space, never correctness."""
    store = Store()
    old = rand_bytes(1, 4096 * 40)
    extents, state = runs(store, old, 4096, 8)
    short = PageState("", 4096, 8, state.regions[:16], state.pages[:160])
    new = old[:4096] + b"\x01" * 4096 + old[8192:]
    out, _ = runs(store, new, 4096, 8, (extents, short))
    assert store.resolve(out) == new


# ------------------------------------------------------------------------------------------
# ExtentMap and merge_extents


@st.composite
def extent_lists(draw: st.DrawFn, min_size: int = 0):
    """Extents into a few random blobs, some adjacent in the same blob (mergeable), some empty."""
    nblobs = draw(st.integers(1, 4))
    blobs = {hashlib.sha256(bytes([i])).digest(): rand_bytes(i, 512) for i in range(nblobs)}
    keys = list(blobs)
    out: list[Extent] = []
    for _ in range(draw(st.integers(min_size, 12))):
        if out and draw(st.booleans()):
            last = out[-1]
            start = last.offset + last.length
            if start < 512:
                out.append(Extent(last.blob, start, draw(st.integers(0, 512 - start))))
                continue
        blob = draw(st.sampled_from(keys))
        off = draw(st.integers(0, 511))
        out.append(Extent(blob, off, draw(st.integers(0, 512 - off))))
    store = Store()
    store.blobs.update(blobs)
    return store, out


@given(extent_lists(), st.data())
def test_extent_map_slice_resolves_to_the_same_bytes(case, data: st.DataObject) -> None:
    store, extents = case
    whole = store.resolve(extents)
    emap = ExtentMap(extents)
    assert emap.size == len(whole)
    offset = data.draw(st.integers(0, len(whole)), label="offset")
    length = data.draw(st.integers(0, len(whole) - offset), label="length")
    sliced = emap.slice(offset, length)
    assert store.resolve(sliced) == whole[offset : offset + length]
    assert all(e.length > 0 for e in sliced)


@given(extent_lists())
def test_merge_extents_preserves_content(case) -> None:
    store, extents = case
    merged = merge_extents(extents)
    assert store.resolve(merged) == store.resolve(extents)
    assert len(merged) <= len(extents)
    assert merge_extents(merged) == merged
    for a, b in itertools.pairwise(merged):
        assert not (a.blob == b.blob and a.offset + a.length == b.offset), "adjacent extents left unmerged"


# ------------------------------------------------------------------------------------------
# the page-hash cache (an accelerator only: anything doubtful reads as absent)


def test_page_state_survives_the_cache_and_doubt_reads_as_absent(tmp_path: Path) -> None:
    store = Store()
    data = rand_bytes(3, 4096 * 100)
    extents, state = runs(store, data, 4096, 16)
    state.sha256 = hashlib.sha256(data).hexdigest()
    cache = Cache("repo-id", root=tmp_path)
    cache.save_pages("home/.argentos/memory.db", state)
    assert cache.load_pages("home/.argentos/memory.db", state.sha256) == state
    assert cache.load_pages("home/.argentos/memory.db", "0" * 64) is None  # another copy
    assert cache.load_pages("workspace/other.db", state.sha256) is None
    (path,) = (tmp_path / "repo-id" / "sqlite").iterdir()
    path.write_bytes(path.read_bytes()[:-1])  # truncated: distrusted
    assert cache.load_pages("home/.argentos/memory.db", state.sha256) is None
    path.write_bytes(b"garbage")
    assert cache.load_pages("home/.argentos/memory.db", state.sha256) is None
    # A state read back from the cache drives the next generation exactly.
    cache.save_pages("home/.argentos/memory.db", state)
    loaded = cache.load_pages("home/.argentos/memory.db", state.sha256)
    new = data[: 4096 * 50] + b"\x07" * 4096 + data[4096 * 51 :]
    before = store.saved
    out, _ = runs(store, new, 4096, 16, (extents, loaded))
    assert store.resolve(out) == new
    assert store.saved - before == 4096


def test_run_dir_clears_leftovers_of_dead_runs_only(tmp_path: Path) -> None:
    cache = Cache("repo-id", root=tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    tmp = tmp_path / "repo-id" / "tmp"
    dead = tmp / f"run-{proc.pid}-12345"
    (dead / "x.db").parent.mkdir(parents=True)
    (dead / "x.db").write_bytes(b"leftover copy")
    mine = cache.run_dir()
    assert not dead.exists()
    assert mine.is_dir() and mine.stat().st_mode & 0o777 == 0o700
    assert mine.name.startswith(f"run-{os.getpid()}-")
    (mine / "copy.db").write_bytes(b"in use")
    assert cache.run_dir() == mine and (mine / "copy.db").exists(), "a live run's copies stay"


def test_large_files_stream_to_the_same_chunks_as_one_buffer() -> None:
    """Above WHOLE_FILE_LIMIT a file streams through FastCDC: cut points must not depend on how
    it was read, so the chunks equal those of the file read in one piece."""
    import io

    from phoenix_backup.repo.chunker import WHOLE_FILE_LIMIT, file_chunks_of

    chunker = {"min": CHUNK_MIN, "avg": CHUNK_AVG, "max": CHUNK_MAX}
    data = rand_bytes(5, WHOLE_FILE_LIMIT + 3 * CHUNK_MAX + 12345)
    streamed = [bytes(c) for c in file_chunks_of(io.BytesIO(data), len(data), chunker, 99)]
    assert streamed == [bytes(c) for c in file_chunks(data, chunker, 99)]
    small = rand_bytes(6, 3 * CHUNK_MAX)
    assert b"".join(bytes(c) for c in file_chunks_of(io.BytesIO(small), len(small), chunker, 99)) == small


@pytest.mark.parametrize("size", [3 * CHUNK_MAX, 32 * 1024 * 1024 + 3 * CHUNK_MAX])
def test_a_file_that_grew_after_its_stat_is_read_only_to_that_size(tmp_path: Path, size: int) -> None:
    """A backup reads the size it stat'ed, never what was appended since: a writer appending faster
    than the backup reads (a log, `yes > file`) kept it reading, and storing, until the disk was
    full (a 40 MiB file was stored as 640 MiB). The retry then sees the change; see
    tests/e2e/test_resources.py::test_files_changing_while_read."""
    from phoenix_backup.repo.chunker import file_chunks_of

    chunker = {"min": CHUNK_MIN, "avg": CHUNK_AVG, "max": CHUNK_MAX}
    data = rand_bytes(7, size)
    path = tmp_path / "growing.log"
    path.write_bytes(data + rand_bytes(8, 5 * CHUNK_MAX))  # appended after the stat that said `size`
    with open(path, "rb") as f:
        read = b"".join(bytes(c) for c in file_chunks_of(f, size, chunker, 99))
    assert len(read) == size and read == data
