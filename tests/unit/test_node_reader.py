"""The node reader's extents on a real repository: with blobs kept in a bounded cache, it still
gives back exactly the bytes of each extent, in order."""

from __future__ import annotations

import os
import random
import threading
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phoenix_backup.errors import CorruptObject
from phoenix_backup.repo import keys, reader
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.pack import pack_name
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Extent, Extents, ExtentsBuilder
from phoenix_backup.storage.local import LocalBackend

KIB = 1024
T = TypeVar("T")


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Repository, list[tuple[bytes, bytes]]]:
    """A repository holding 12 blobs of 1-40 KiB; returns it with (id, content) of each."""
    rng = random.Random(7)
    repo = Repository.init(LocalBackend(Path(tmp_path_factory.mktemp("repo"))), keys.wrap_none, False)
    blobs = []
    for _ in range(12):
        data = rng.randbytes(rng.randint(1, 40) * KIB)
        bid, _ = repo.save_blob(BlobType.DATA, data)
        blobs.append((bid, data))
    repo.flush()
    return repo, blobs


@st.composite
def extent_lists(draw: st.DrawFn) -> list[tuple[int, float, float]]:
    """(blob number, start fraction, length fraction) per extent; revisits are common, as in a
    database whose unchanged pages keep pointing into the same old blobs."""
    return draw(
        st.lists(
            st.tuples(st.integers(0, 11), st.floats(0, 1), st.floats(0, 1)),
            min_size=0,
            max_size=60,
        )
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    picks=extent_lists(),
    cache_kib=st.sampled_from([1, 24, 64, 1024]),
    ahead_kib=st.sampled_from([1, 50, 4096]),
    range_kib=st.sampled_from([1, 64, 4096]),
    gap_kib=st.sampled_from([0, 64]),
)
def test_extent_bytes_match_the_blobs(
    stored: tuple[Repository, list[tuple[bytes, bytes]]],
    monkeypatch: pytest.MonkeyPatch,
    picks: list[tuple[int, float, float]],
    cache_kib: int,
    ahead_kib: int,
    range_kib: int,
    gap_kib: int,
) -> None:
    """Whatever the cache, the read-ahead batch, the range and the gap merged, each extent gets
    exactly its bytes, in order."""
    repo, blobs = stored
    monkeypatch.setattr(reader, "BLOB_CACHE_BYTES", cache_kib * KIB)
    monkeypatch.setattr(reader, "READ_AHEAD", ahead_kib * KIB)
    monkeypatch.setattr(reader, "READ_RANGE", range_kib * KIB)
    monkeypatch.setattr(reader, "READ_GAP", gap_kib * KIB)
    extents, expected = [], []
    for n, start, length in picks:
        bid, data = blobs[n]
        offset = int(start * (len(data) - 1))
        size = max(1, int(length * (len(data) - offset)))
        extents.append(Extent(bid, offset, size))
        expected.append(data[offset : offset + size])
    assert [bytes(v) for v in reader.extent_bytes(repo, "x", extents)] == expected


def test_an_extent_beyond_its_blob_is_damage(stored: tuple[Repository, list[tuple[bytes, bytes]]]) -> None:
    repo, blobs = stored
    bid, data = blobs[0]
    with pytest.raises(CorruptObject, match="shorter than the snapshot says"):
        list(reader.extent_bytes(repo, "workspace/x", [Extent(bid, len(data) - 10, 20)]))


def test_a_node_whose_bytes_differ_from_its_sha256_is_damage(
    stored: tuple[Repository, list[tuple[bytes, bytes]]],
) -> None:
    """A tree that names the right blobs with the wrong SHA-256 (or size): the reader hands over
    every block but the last, then refuses, so a consumer that commits at the end commits nothing."""
    import hashlib

    from phoenix_backup.repo.reader import NodeReader, read_node
    from phoenix_backup.repo.tree import Node

    repo, blobs = stored
    (b1, d1), (b2, d2) = blobs[0], blobs[1]
    content = [Extent(b1, 0, len(d1)), Extent(b2, 0, len(d2))]
    good = Node(
        name="f", type="file", size=len(d1) + len(d2), content=content, sha256=hashlib.sha256(d1 + d2).hexdigest()
    )
    assert read_node(repo, "workspace/f", good) == d1 + d2
    for bad in (
        Node(name="f", type="file", size=good.size, content=content, sha256=hashlib.sha256(d2 + d1).hexdigest()),
        Node(name="f", type="file", size=good.size + 1, content=content, sha256=good.sha256),
    ):
        got: list[bytes] = []
        with pytest.raises(CorruptObject, match=r"workspace/f read from the repository does not match its SHA-256"):
            for block in NodeReader(repo, "workspace/f", bad).blocks():
                got.append(block)
        assert got == [d1]  # the last block never came


def test_a_reading_thread_whose_buffer_was_made_for_smaller_ranges_still_reads_every_blob_whole(
    stored: tuple[Repository, list[tuple[bytes, bytes]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each reading thread keeps the buffer of its first ranged read. One made while READ_RANGE
    was smaller (a test above sets it to 64 KiB) must not cut a later, larger range short: the
    blobs past its end then read as damaged (this made the restore tests fail at random, by which
    decode thread happened to be new during the small-range test)."""
    import threading

    repo, blobs = stored
    located = []
    for bid, _data in blobs:
        loc = repo.index.get(bid)
        assert loc is not None
        located.append((bid, loc))
    located.sort(key=lambda x: (x[1].pack_id, x[1].offset))
    pack = located[0][1].pack_id
    run = [item for item in located if item[1].pack_id == pack]
    assert sum(loc.stored for _b, loc in run) > 64 * KIB  # wider than the small buffer
    want = dict(blobs)
    got: list[reader.Opened] = []

    def reading_thread() -> None:
        with monkeypatch.context() as m:
            m.setattr(reader, "READ_RANGE", 64 * KIB)
            got.append(reader.read_blobs(repo, pack_name(pack), run[:1]))  # this thread's buffer: 64 KiB
        got.append(reader.read_blobs(repo, pack_name(pack), run))  # READ_RANGE is its usual size again

    t = threading.Thread(target=reading_thread)
    t.start()
    t.join()
    assert len(got) == 2
    for opened in got:
        assert {b: (v if isinstance(v, bytes) else repr(v)) for b, v in opened.items()} == {b: want[b] for b in opened}


def test_restores_reading_at_once_in_one_process_each_get_exactly_their_own_bytes(tmp_path: Path) -> None:
    """Two readers of each of three files and a data check at once in one process (the Python
    API), in an unencrypted repository of incompressible blobs, some above READ_RANGE: the
    plaintext is then a copy of a slice of the reading thread's reused buffer, and no reader may
    get bytes another read put there. PHX_TEST_HEAVY=1 runs ten rounds."""
    import hashlib
    import os
    from concurrent.futures import ThreadPoolExecutor

    from phoenix_backup.repo.tree import Node

    repo = Repository.init(LocalBackend(tmp_path / "repo"), keys.wrap_none, False)
    rng = random.Random(13)
    nodes: list[tuple[str, Node]] = []
    for n in range(3):
        pieces = [rng.randbytes(rng.randint(1, 600) * KIB) for _ in range(8)]
        if n == 0:
            pieces.insert(3, rng.randbytes(reader.READ_RANGE + 5 * KIB))  # a range of its own buffer
        content = []
        for piece in pieces:
            bid, _ = repo.save_blob(BlobType.DATA, piece)
            content.append(Extent(bid, 0, len(piece)))
        data = b"".join(pieces)
        nodes.append(
            (
                f"workspace/f{n}",
                Node(
                    name=f"f{n}", type="file", size=len(data), content=content, sha256=hashlib.sha256(data).hexdigest()
                ),
            )
        )
    repo.flush()
    for _round in range(10 if os.environ.get("PHX_TEST_HEAVY") == "1" else 1):
        with ThreadPoolExecutor(max_workers=7) as pool:
            reads = [
                pool.submit(reader.read_node, repo, logical, node) for _twice in range(2) for logical, node in nodes
            ]
            checked = pool.submit(reader.check_data, repo, nodes)
            for fut, (_logical, node) in zip(reads, nodes * 2, strict=True):
                assert hashlib.sha256(fut.result()).hexdigest() == node.sha256
            assert checked.result() == {}


def test_a_restore_holds_at_most_a_few_mib_of_a_node_in_memory_at_once(tmp_path: Path) -> None:
    """A restore's memory beyond start-up is what the node readers hold: the blobs read ahead, the
    blobs kept for extents that come back to them, and each reading thread's range buffer. A 40 MiB
    node of 256 KiB blobs whose second half points back into the first (a database whose unchanged
    pages keep their old blobs), read the way a restore reads it, must never hold more than 6 MiB of
    blobs at once besides the reading threads' buffers (10 MiB before: a restore peaked 10 MB
    above restic, issue 20)."""
    import hashlib
    import tracemalloc

    from phoenix_backup.repo.tree import Node

    repo = Repository.init(LocalBackend(tmp_path / "repo"), keys.wrap_none, False)
    rng = random.Random(21)
    pieces = [rng.randbytes(256 * KIB) for _ in range(80)]
    ids = [repo.save_blob(BlobType.DATA, piece)[0] for piece in pieces]
    repo.flush()
    # The first 80 blobs in order, then 80 slices that go back to them, each 16 blobs behind.
    picks = [(i, 0, 256 * KIB) for i in range(80)]
    picks += [((i * 7) % 80, (i % 4) * 64 * KIB, 64 * KIB) for i in range(80)]
    data = b"".join(pieces[i][start : start + length] for i, start, length in picks)
    node = Node(
        name="db",
        type="file",
        size=len(data),
        content=[Extent(ids[i], start, length) for i, start, length in picks],
        sha256=hashlib.sha256(data).hexdigest(),
    )
    del data, pieces
    assert reader.read_node(repo, "workspace/db", node)  # each reading thread makes its range buffer now
    tracemalloc.start()
    try:
        got = hashlib.sha256()
        r = reader.NodeReader(repo, "workspace/db", node)
        for chunk in r.chunks():
            got.update(chunk)
        r.finish()
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.hexdigest() == node.sha256
    assert peak <= 6 * 1024 * KIB, f"{peak / 2**20:.1f} MiB held at once"


def test_a_large_node_is_hashed_beside_its_writer_and_still_refused_when_it_differs(
    stored: tuple[Repository, list[tuple[bytes, bytes]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node of BACKGROUND_HASH bytes or more is hashed on a thread of its own while its consumer
    writes (a restore's largest database was written, then hashed, on one core): every byte is
    still hashed, a good node reads whole, and a node whose bytes differ from its SHA-256 is
    refused before its last block, as in line."""
    import hashlib

    from phoenix_backup.repo import crypto
    from phoenix_backup.repo.reader import NodeReader, read_node
    from phoenix_backup.repo.tree import Node

    repo, blobs = stored
    monkeypatch.setattr(reader, "BACKGROUND_HASH", 1, raising=False)  # every node here is "large"
    hashed_on: set[str] = set()
    update = crypto.Sha256.update

    def recording(self: crypto.Sha256, data: bytes | bytearray | memoryview) -> None:
        if len(data):
            hashed_on.add(threading.current_thread().name)
        update(self, data)

    monkeypatch.setattr(crypto.Sha256, "update", recording)
    content = [Extent(b, 0, len(d)) for b, d in blobs[:4]]
    whole = b"".join(d for _b, d in blobs[:4])
    good = Node(name="f", type="file", size=len(whole), content=content, sha256=hashlib.sha256(whole).hexdigest())
    assert read_node(repo, "workspace/f", good) == whole
    assert hashed_on and threading.current_thread().name not in hashed_on
    bad = Node(name="f", type="file", size=good.size, content=content, sha256=hashlib.sha256(whole[::-1]).hexdigest())
    got: list[bytes] = []
    with pytest.raises(CorruptObject, match=r"workspace/f read from the repository does not match its SHA-256"):
        for block in NodeReader(repo, "workspace/f", bad).blocks():
            got.append(block)
    assert b"".join(got) == whole[: -len(blobs[3][1])]  # the last block never came


def test_a_batch_read_ahead_is_opened_by_both_decoding_threads(tmp_path: Path) -> None:
    """The blobs a node reads ahead, neighbours in one pack, are cut into more than one range, so
    both threads of the decode pool open them at once (one range per batch kept the writer of the
    largest database waiting on one thread while the other was idle); what is read ahead stays
    within its bound."""
    rng = random.Random(3)
    repo = Repository.init(LocalBackend(tmp_path), keys.wrap_none, False)
    extents = []
    for _ in range(3 * reader.READ_AHEAD // (100 * KIB)):
        data = rng.randbytes(100 * KIB)  # incompressible: stored as large as it is
        bid, _ = repo.save_blob(BlobType.DATA, data)
        extents.append(Extent(bid, 0, len(data)))
    repo.flush()
    ahead = reader._Ahead(repo, extents)
    ahead.plan()
    ranges = {id(fut) for fut, _raw in ahead.pending.values()}
    assert len(ranges) >= 2
    assert reader.READ_AHEAD <= ahead.in_flight < reader.READ_AHEAD + 100 * KIB
    for i in range(len(extents)):
        ahead.get(i)


def test_a_reader_stopped_midway_ends_its_hashing_thread(
    stored: tuple[Repository, list[tuple[bytes, bytes]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer that stops on an error (a failed write, a damaged blob) after the first extent
    leaves no hashing thread behind: the reader's generator ends it when it is closed."""
    from phoenix_backup.repo.reader import NodeReader
    from phoenix_backup.repo.tree import Node

    repo, blobs = stored
    monkeypatch.setattr(reader, "BACKGROUND_HASH", 1, raising=False)
    content = [Extent(b, 0, len(d)) for b, d in blobs[:4]]
    node = Node(name="f", type="file", size=sum(e.length for e in content), content=content, sha256="0" * 64)

    def hashing() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "phx-sha256"]

    before = hashing()
    r = NodeReader(repo, "workspace/f", node)
    chunks = r.chunks()
    next(chunks)
    assert len(hashing()) == len(before) + 1
    with pytest.raises(OSError):
        for _chunk in chunks:
            raise OSError(28, "No space left on device")
    chunks.close()  # what the garbage collector does to the reader of a failed write
    for t in hashing():
        t.join(timeout=5)
    assert [t for t in hashing() if t not in before] == []


def _hashing_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "phx-sha256"]


def test_a_large_node_shorter_than_its_snapshot_says_is_refused_and_leaves_no_hashing_thread(
    stored: tuple[Repository, list[tuple[bytes, bytes]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tampered tree that claims more bytes than its extents hold: every extent is handed out,
    then `finish` refuses the size; the hashing thread ended with the last extent, not never (the
    size was compared first and the digest, which ends the thread, never read: a thread left in a
    library user's process for every such file)."""
    import hashlib

    from phoenix_backup.repo.tree import Node
    from phoenix_backup.sinks.files import write_content

    repo, blobs = stored
    monkeypatch.setattr(reader, "BACKGROUND_HASH", 1)
    content = [Extent(b, 0, len(d)) for b, d in blobs[:4]]
    whole = b"".join(d for _b, d in blobs[:4])
    node = Node(name="f", type="file", size=len(whole) + 1, content=content, sha256=hashlib.sha256(whole).hexdigest())
    before = _hashing_threads()
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with pytest.raises(CorruptObject, match=r"workspace/f read from the repository does not match its SHA-256"):
            write_content(repo, fd, "workspace/f", node)
    finally:
        os.close(fd)
    assert [t for t in _hashing_threads() if t not in before] == []


def test_a_write_failing_after_the_last_extent_leaves_no_hashing_thread(
    stored: tuple[Repository, list[tuple[bytes, bytes]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO from the file system after the last extent was written (the ftruncate of a file ending
    in a hole), before `finish`: the restore of that file fails, and no hashing thread is left."""
    import errno
    import hashlib

    from phoenix_backup.repo.tree import Node
    from phoenix_backup.sinks import files

    repo, blobs = stored
    tail = 16 * KIB + -sum(len(d) for _b, d in blobs[:3]) % 4096  # the file ends in a whole block of zeros
    zeros, _ = repo.save_blob(BlobType.DATA, bytes(tail))
    repo.flush()
    monkeypatch.setattr(reader, "BACKGROUND_HASH", 1)
    content = [Extent(b, 0, len(d)) for b, d in blobs[:3]] + [Extent(zeros, 0, tail)]
    whole = b"".join(d for _b, d in blobs[:3]) + bytes(tail)
    node = Node(name="f", type="file", size=len(whole), content=content, sha256=hashlib.sha256(whole).hexdigest())

    def eio(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(files.os, "ftruncate", eio)
    before = _hashing_threads()
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with pytest.raises(OSError, match="Input/output error"):
            files.write_content(repo, fd, "workspace/f", node)
    finally:
        os.close(fd)
    assert [t for t in _hashing_threads() if t not in before] == []


def test_bytes_waiting_for_the_hashing_thread_do_not_hold_whole_blobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database's extents are small parts of larger blobs. A part waiting for the hashing thread
    (up to HASH_BEHIND of them) held its whole blob: with the hashing thread behind by its limit,
    16 extents of 16 KiB held 16 MiB of blobs, past the bound of a node in memory. A small part
    of a large blob now waits as a copy of its own."""
    import hashlib
    import time
    import tracemalloc

    from phoenix_backup.repo import crypto
    from phoenix_backup.repo.tree import Node

    rng = random.Random(5)
    repo = Repository.init(LocalBackend(tmp_path), keys.wrap_none, False)
    content, whole = [], bytearray()
    for _ in range(48):
        data = rng.randbytes(1024 * KIB)
        bid, _ = repo.save_blob(BlobType.DATA, data)
        content.append(Extent(bid, 0, 16 * KIB))
        whole += data[: 16 * KIB]
    repo.flush()
    node = Node(name="f", type="file", size=len(whole), content=content, sha256=hashlib.sha256(whole).hexdigest())
    monkeypatch.setattr(reader, "BACKGROUND_HASH", 1)  # 768 KiB of a database: hashed on its thread
    r = reader.NodeReader(repo, "workspace/f", node)
    update = crypto.Sha256.update

    def behind(self: crypto.Sha256, data: bytes | bytearray | memoryview) -> None:
        # The hashing thread starts only once its writer is HASH_BEHIND ahead (a busy machine).
        deadline = time.monotonic() + 30
        while threading.current_thread().name == "phx-sha256" and r.total < reader.HASH_BEHIND:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        update(self, data)

    monkeypatch.setattr(crypto.Sha256, "update", behind)
    tracemalloc.start()
    try:
        for _chunk in r.chunks():
            pass
        r.finish()
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 8 * 1024 * KIB, f"{peak / 2**20:.1f} MiB held at once"


def test_a_small_node_in_one_range_is_read_in_its_readers_thread_and_damage_still_fails_it(
    stored: tuple[Repository, list[tuple[bytes, bytes]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20: a workspace file's writer waited for a decoding thread to wake, read its one
    range and wake it back, ~3 ms a file on a busy machine. A node of at most INLINE_READ bytes
    whose blobs are one range is read in the reader's own thread; its bytes, and the refusal of
    bytes that differ from its SHA-256, are the same."""
    import hashlib

    from phoenix_backup.repo.tree import Node

    repo, blobs = stored
    (b1, d1), (b2, d2) = blobs[0], blobs[1]
    threads: list[str] = []
    real = reader.read_blobs

    def spy(*args: object, **kwargs: object) -> reader.Opened:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(reader, "read_blobs", spy)
    content = [Extent(b1, 0, len(d1)), Extent(b2, 0, len(d2))]
    node = Node(
        name="f", type="file", size=len(d1) + len(d2), content=content, sha256=hashlib.sha256(d1 + d2).hexdigest()
    )
    assert len(reader.pack_ranges([(b, loc) for b in (b1, b2) if (loc := repo.index.get(b)) is not None])) == 1
    assert reader.read_node(repo, "workspace/f", node) == d1 + d2
    assert threads == [threading.current_thread().name]
    bad = Node(name="f", type="file", size=node.size, content=content, sha256=hashlib.sha256(d2 + d1).hexdigest())
    with pytest.raises(CorruptObject, match="does not match its SHA-256"):
        reader.read_node(repo, "workspace/f", bad)


def test_a_store_failing_under_a_small_node_read_in_line_raises_from_the_reader(
    stored: tuple[Repository, list[tuple[bytes, bytes]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read in the reader's thread that fails (a store error, not damage) is raised when the
    blob is asked for, as one from the decode pool is."""
    from phoenix_backup.errors import StorageError
    from phoenix_backup.repo.tree import Node

    repo, blobs = stored
    b1, d1 = blobs[2]

    def failing(*_args: object, **_kwargs: object) -> reader.Opened:
        raise StorageError("the store went away")

    monkeypatch.setattr(reader, "read_blobs", failing)
    node = Node(name="g", type="file", size=len(d1), content=[Extent(b1, 0, len(d1))], sha256="0" * 64)
    with pytest.raises(StorageError, match="the store went away"):
        reader.read_node(repo, "workspace/g", node)


def _distinct_extents(count: int, seed: int) -> Extents:
    """A database node as a full backup writes it: each region its own blob."""
    rng = random.Random(seed)
    out = ExtentsBuilder(merge=False)
    for _ in range(count):
        out.add(rng.randbytes(32), 0, 256 * KIB)
    return out.build()


def _peak(make: Callable[[Extents], T], extents: Extents) -> tuple[T, int, int]:
    """`make(extents)`, and what it held at its peak and after (tracemalloc)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = make(extents)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak - base, held - base


def _reader_holds(repo: Repository, extents: Extents) -> int:
    ahead, _peak_bytes, held = _peak(lambda e: reader._Ahead(repo, e), extents)
    assert len(ahead.extents) == len(extents)
    return held


def test_a_node_reader_holds_no_more_for_a_database_twice_as_large(
    stored: tuple[Repository, list[tuple[bytes, bytes]]],
) -> None:
    """What a restore's reader of a database holds beside the node's own extents does not grow with
    the node: it counted every blob's uses (a dict entry and a key an extent: 1.9 MB for the
    smaller node here), now only those of blobs named more than once."""
    repo, _ = stored
    small = _reader_holds(repo, _distinct_extents(20_000, 1))
    large = _reader_holds(repo, _distinct_extents(40_000, 2))
    assert small < 64 * KIB and large < 64 * KIB, (small, large)


def test_the_blobs_a_node_names_again_are_counted_exactly() -> None:
    """Every blob named more than once gets its number of uses, including ids whose first bytes
    are the same (a tree may name any ids); a blob named once is left out (used once)."""
    rng = random.Random(5)
    ids = [rng.randbytes(32) for _ in range(300)]
    ids += [ids[0][:8] + rng.randbytes(24) for _ in range(50)]  # the same bucket, other blobs
    out = ExtentsBuilder(merge=False)
    names = [rng.choice(ids) for _ in range(2_000)] + ids
    for bid in names:
        out.add(bid, 0, KIB)
    expected = {bid: k for bid, k in Counter(names).items() if k > 1}
    assert reader.repeated_blobs(out.build()) == expected
    assert reader.repeated_blobs(_distinct_extents(1_000, 3)) == {}


@pytest.mark.parametrize("kind", ["each blob named twice", "ids alike in their first bytes"])
def test_finding_the_blobs_named_again_peaks_no_higher_than_counting_every_blob(kind: str) -> None:
    """The count of repeats is made before a node's first byte is read; at its peak it held each
    candidate id twice (a set of the first pass's ids, a Counter of the second's) and a dict of the
    repeated besides: 2.7 times what a count of every blob held here for a node whose every blob
    is named twice (a repeated page pattern), 2.8 times for distinct ids whose first bytes are
    alike (a tree may name any ids). It may hold at most the bitmap (two bytes an extent) or the list of
    the candidates it drops (eight) more: a count of every blob is ~95 bytes a distinct blob."""
    rng = random.Random(7)
    if kind == "each blob named twice":
        half = [rng.randbytes(32) for _ in range(10_000)]
        ids = half + half
        rng.shuffle(ids)
    else:
        prefix = rng.randbytes(8)
        ids = [prefix + rng.randbytes(24) for _ in range(20_000)]
    out = ExtentsBuilder(merge=False)
    for bid in ids:
        out.add(bid, 0, 4 * KIB)
    extents = out.build()
    every, every_peak, _ = _peak(lambda e: Counter(e.blobs()), extents)
    repeated, peak, held = _peak(reader.repeated_blobs, extents)
    assert repeated == {bid: k for bid, k in every.items() if k > 1}
    assert peak <= every_peak + 10 * len(extents) + 16 * KIB, (peak, every_peak)
    if not repeated:  # what it keeps after: no table sized for the candidates it dropped
        assert held < 4 * KIB, held
