"""What a restore still refuses now that it reads packs in coalesced ranges and trusts a database
copy that passed integrity_check at backup time (docs/restore-checks.md): bytes that do not match
the snapshot, a damaged blob anywhere in a coalesced range, a copy whose check failed at backup.
Each ends in an error and leaves nothing at the restored path, not even a temporary file."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phoenix_backup.errors import CorruptObject, PhoenixError, RestoreError
from phoenix_backup.repo import keys, reader
from phoenix_backup.repo.crypto import BlobType, Compression
from phoenix_backup.repo.pack import PackEntry, pack_name
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Extent, Node
from phoenix_backup.sinks import files
from phoenix_backup.sinks import sqlite as sqlite_sink
from phoenix_backup.sinks.files import FileWriter, _Pending, _write_sparse
from phoenix_backup.sinks.leftovers import journal_dir
from phoenix_backup.sources.layout import Layout
from phoenix_backup.storage.local import LocalBackend

PASSPHRASE = "restore checks"
DB = "home/.argentos/memory.db"


def _repo(path: Path) -> Repository:
    def slot(master: keys.MasterSecrets) -> keys.KeySlot:
        return keys.wrap_passphrase(master, PASSPHRASE, kdf_params={"n": 2**10, "r": 8, "p": 1})

    return Repository.init(LocalBackend(path), slot, True)


def _store(repo: Repository, data: bytes, piece: int) -> list[Extent]:
    """`data` saved as blobs of `piece` bytes (the last shorter), in order, as one node's extents."""
    extents = []
    for i in range(0, len(data), piece):
        part = data[i : i + piece]
        bid, _ = repo.save_blob(BlobType.DATA, part)
        extents.append(Extent(bid, 0, len(part)))
    repo.flush()
    return extents


def _database(path: Path, rows: int = 400) -> bytes:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, body TEXT)")
    rng = random.Random(3)
    con.executemany("INSERT INTO m (body) VALUES (?)", [(rng.randbytes(300).hex(),) for _ in range(rows)])
    con.commit()
    con.close()
    return path.read_bytes()


def _node(name: str, data: bytes, extents: list[Extent], integrity: str = "ok", *, sha: str | None = None) -> Node:
    return Node(
        name=name,
        type="sqlite",
        mode=0o600,
        size=len(data),
        content=extents,
        sha256=sha or hashlib.sha256(data).hexdigest(),
        sqlite={"pageSize": 4096, "integrity": integrity},
    )


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[tuple[Repository, FileWriter, Path]]:
    repo = _repo(tmp_path / "repo")
    to = tmp_path / "to"
    w = FileWriter(repo, Layout(tmp_path / "ws", tmp_path / "home"), to)
    yield repo, w, to
    w.close()


def test_a_database_copy_equal_to_the_checked_one_is_restored_byte_for_byte(
    writer: tuple[Repository, FileWriter, Path], tmp_path: Path
) -> None:
    repo, w, to = writer
    data = _database(tmp_path / "src.db")
    node = _node("memory.db", data, _store(repo, data, 8192))
    info = sqlite_sink.restore_database(w, DB, node, in_place=False)
    assert info["integrity"] == "ok"
    assert (to / DB).read_bytes() == data
    assert _left(to) == ["memory.db"]


def test_a_restored_database_that_does_not_match_its_sha256_is_not_restored(
    writer: tuple[Repository, FileWriter, Path], tmp_path: Path
) -> None:
    """The integrity_check the restore no longer runs is replaced by the SHA-256: a copy recorded
    as checked at backup whose bytes differ from the snapshot's hash is refused, nothing kept."""
    repo, w, to = writer
    data = _database(tmp_path / "src.db")
    other = bytearray(data)
    other[len(other) // 2] ^= 1  # still a database SQLite opens, not the one that was checked
    node = _node("memory.db", data, _store(repo, bytes(other), 8192))
    with pytest.raises(CorruptObject, match=rf"{DB} read from the repository does not match its SHA-256"):
        sqlite_sink.restore_database(w, DB, node, in_place=False)
    assert _left(to) == []
    short = _node("memory.db", data, _store(repo, data[:-4096], 8192), sha=hashlib.sha256(data).hexdigest())
    with pytest.raises(CorruptObject, match="does not match its SHA-256"):
        sqlite_sink.restore_database(w, DB, short, in_place=False)
    assert _left(to) == []


def test_a_copy_that_failed_integrity_check_at_backup_is_checked_again_and_refused(
    writer: tuple[Repository, FileWriter, Path], tmp_path: Path
) -> None:
    repo, w, to = writer
    data = bytearray(_database(tmp_path / "src.db"))
    data[4096 * 2 : 4096 * 2 + 200] = bytes(200)  # a table page's header zeroed: the tree is broken
    node = _node("memory.db", bytes(data), _store(repo, bytes(data), 8192), integrity="*** in database main ***")
    with pytest.raises(RestoreError, match="fails integrity_check"):
        sqlite_sink.restore_database(w, DB, node, in_place=False)
    assert _left(to) == []


def _flip_blob(repo: Repository, blob: bytes) -> None:
    """Flip one stored byte inside `blob`'s sealed bytes in its pack file."""
    loc = repo.index.get(blob)
    assert loc is not None
    assert isinstance(repo.backend, LocalBackend)
    path = repo.backend.root / pack_name(loc.pack_id)
    fd = os.open(path, os.O_RDWR)
    try:
        at = loc.offset + loc.stored // 2
        byte = os.pread(fd, 1, at)
        os.pwrite(fd, bytes([byte[0] ^ 0x40]), at)
    finally:
        os.close(fd)


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_a_damaged_blob_inside_a_coalesced_range_fails_with_no_byte_written(
    writer: tuple[Repository, FileWriter, Path], which: str
) -> None:
    """Many small blobs of one file sit side by side in one pack and are read as one range: a
    damaged one among them still fails the file, whose temporary file is removed; nothing lands
    at its path, and a file beside it from the same pack is restored intact."""
    repo, w, to = writer
    rng = random.Random(11)
    data = rng.randbytes(300 * 1024)
    beside = rng.randbytes(50 * 1024)
    extents = _store(repo, data, 6 * 1024)
    beside_extents = _store(repo, beside, 6 * 1024)
    victim = {"first": extents[0], "middle": extents[len(extents) // 2], "last": extents[-1]}[which].blob
    _flip_blob(repo, victim)
    node = Node(name="f.bin", type="file", size=len(data), content=extents, sha256=hashlib.sha256(data).hexdigest())
    with pytest.raises(CorruptObject):
        w.content("workspace/f.bin", node)
    assert _left(to) == []
    good = Node(
        name="g.bin", type="file", size=len(beside), content=beside_extents, sha256=hashlib.sha256(beside).hexdigest()
    )
    assert w.content("workspace/g.bin", good) == "ok"
    assert (to / "workspace/g.bin").read_bytes() == beside
    assert _left(to) == ["g.bin"]


def test_a_pack_cut_short_fails_only_the_blobs_it_lost(writer: tuple[Repository, FileWriter, Path]) -> None:
    """When a coalesced range cannot be read whole, each blob is read on its own: those before the
    cut come back intact, each lost one gets its own error, none gets another's bytes."""
    repo, _w, _to = writer
    rng = random.Random(5)
    parts = [rng.randbytes(20 * 1024) for _ in range(6)]
    extents = _store(repo, b"".join(parts), 20 * 1024)
    located = []
    for ext in extents:
        loc = repo.index.get(ext.blob)
        assert loc is not None
        located.append((ext.blob, loc))
    assert len({loc.pack_id for _b, loc in located}) == 1
    assert isinstance(repo.backend, LocalBackend)
    pack = pack_name(located[0][1].pack_id)
    ordered = sorted(located, key=lambda x: x[1].offset)
    cut = ordered[3][1].offset + 10
    os.truncate(repo.backend.root / pack, cut)
    got = reader.read_blobs(repo, pack, ordered)
    for (blob, loc), data in zip(located, parts, strict=True):
        if loc.offset + loc.stored <= cut:
            assert got[blob] == data
        else:
            assert isinstance(got[blob], PhoenixError)
    assert sum(isinstance(v, PhoenixError) for v in got.values()) == 3


def test_an_index_entry_claiming_hundreds_of_mib_is_refused_before_they_are_allocated(
    writer: tuple[Repository, FileWriter, Path],
) -> None:
    """A blob listed as stored over 512 MiB of a pack of a few KiB (an index object a compromised
    machine that backs up added to a write-only repository): the store refuses the read before a
    buffer of that size is allocated and zeroed, and the blob ends in its own error."""
    import tracemalloc

    repo, _w, _to = writer
    [ext] = _store(repo, random.Random(9).randbytes(20 * 1024), 20 * 1024)
    loc = repo.index.get(ext.blob)
    assert loc is not None
    claimed = bytes(range(32))
    repo.index.add_pack(loc.pack_id, [PackEntry(BlobType.DATA, Compression.NONE, claimed, 0, 512 << 20, 100)])
    claim = repo.index.get(claimed)
    assert claim is not None and claim.stored == 512 << 20
    tracemalloc.start()
    try:
        got = reader.read_blobs(repo, pack_name(loc.pack_id), [(claimed, claim)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(got[claimed], PhoenixError), got
    assert peak < 32 << 20, f"{peak >> 20} MiB allocated for a claim the pack cannot hold"


BLOCK = 4096


@given(
    st.lists(st.tuples(st.booleans(), st.integers(1, 3 * BLOCK)), min_size=1, max_size=12),
    st.integers(0, 2 * BLOCK),
    st.integers(0, 2 * BLOCK),
    st.integers(0, 2 * BLOCK),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_sparse_writer_writes_every_byte_and_leaves_exactly_the_aligned_zero_blocks_as_holes(
    tmp_path: Path, runs: list[tuple[bool, int]], pos: int, cut_front: int, cut_back: int
) -> None:
    """Runs of zeros and of data at any offset in the blob and in the file: the file holds
    blob[start:end] at `pos`, and a block of the file is a hole exactly when it is whole within
    the written range and all zeros (where the file system reports holes)."""
    rng = random.Random(len(runs) * 7919 + pos)
    blob = b"".join(bytes(n) if zero else bytes(rng.randrange(1, 256) for _ in range(n)) for zero, n in runs)
    start = min(cut_front, len(blob))
    end = max(start, len(blob) - cut_back)
    path = tmp_path / f"sparse-{os.urandom(8).hex()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"\1" * pos)  # what the file held before this blob's turn
        pending = _Pending(fd)
        _write_sparse(pending, blob, start, end, pos)
        pending.flush()
        assert os.lseek(fd, 0, os.SEEK_CUR) == pos + end - start
        os.ftruncate(fd, pos + end - start)
        assert os.pread(fd, end - start + 1, pos) == blob[start:end]
        size = pos + end - start
        holes = {b for b in range(-(-size // BLOCK)) if _no_data(fd, b * BLOCK, min(size, (b + 1) * BLOCK))}
    finally:
        os.close(fd)
    expected = {
        b
        for b in range(-(-pos // BLOCK), (pos + end - start) // BLOCK)
        if not any(blob[start + b * BLOCK - pos : start + (b + 1) * BLOCK - pos])
    }
    if not holes and expected and os.stat(path).st_blocks * 512 >= size:
        pytest.skip("this file system does not report holes")
    assert holes == expected


def _writes(monkeypatch: pytest.MonkeyPatch, limit: int | None = None) -> list[int]:
    """Count the write and writev calls into restore temporary files (each call's byte count);
    with `limit`, each call writes at most that many bytes, as a short write would."""
    calls: list[int] = []
    real_write, real_writev = os.write, os.writev

    def ours(fd: int) -> bool:
        try:
            return files.TMP_PREFIX in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False

    def write(fd: int, data: bytes | memoryview) -> int:
        if not ours(fd):
            return real_write(fd, data)
        done = real_write(fd, memoryview(data)[:limit] if limit else data)
        calls.append(done)
        assert sum(calls) <= 64 << 20, "bytes written again and again"
        return done

    def writev(fd: int, views: list[memoryview]) -> int:
        if not ours(fd):
            return real_writev(fd, views)
        if limit:
            joined = b"".join(views)[:limit]
            done = real_write(fd, joined)
        else:
            done = real_writev(fd, views)
        calls.append(done)
        # A writer that never moves on past a short write would fill the disk, not fail.
        assert sum(calls) <= 64 << 20, "bytes written again and again"
        return done

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "writev", writev)
    return calls


def test_a_file_of_many_extents_is_written_a_few_extents_a_call_every_byte_in_place(
    writer: tuple[Repository, FileWriter, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20: memory.db of the medium benchmark is 9,478 extents, and one write each handed the
    GIL to the decoding and hashing threads and back as often (futex calls ~290,000 for that file
    alone). Extents are gathered PENDING_VIEWS to a writev; the bytes land exactly as before, and
    a block of zeros between them is still left as a hole."""
    repo, w, to = writer
    rng = random.Random(21)
    data = rng.randbytes(96 * 1024) + bytes(3 * 4096) + rng.randbytes(90 * 1024 + 5)
    extents = _store(repo, data, 4096)
    node = Node(name="f.bin", type="file", size=len(data), content=extents, sha256=hashlib.sha256(data).hexdigest())
    calls = _writes(monkeypatch)
    assert w.content("workspace/f.bin", node) == "ok"
    monkeypatch.undo()
    assert (to / "workspace/f.bin").read_bytes() == data
    assert sum(calls) == len(data) - 3 * 4096  # the zero blocks were skipped, not written
    assert len(calls) <= len(extents) // files.PENDING_VIEWS + 3, len(calls)


def test_short_writes_of_gathered_extents_are_written_again_from_where_they_stopped(
    writer: tuple[Repository, FileWriter, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writev may write less than it was given (a signal, a nearly full quota): the rest is
    written from the first byte not written, never skipped or written twice."""
    repo, w, to = writer
    data = random.Random(22).randbytes(70 * 1024 + 17)
    extents = _store(repo, data, 5 * 1024 + 3)
    node = Node(name="s.bin", type="file", size=len(data), content=extents, sha256=hashlib.sha256(data).hexdigest())
    calls = _writes(monkeypatch, limit=3001)
    assert w.content("workspace/s.bin", node) == "ok"
    monkeypatch.undo()
    assert (to / "workspace/s.bin").read_bytes() == data
    assert sum(calls) == len(data) and max(calls) <= 3001


@given(
    st.lists(
        st.tuples(
            st.lists(st.tuples(st.booleans(), st.integers(0, 2 * BLOCK + 1)), min_size=1, max_size=6),
            st.integers(0, BLOCK + 3),
            st.integers(0, BLOCK + 3),
        ),
        min_size=1,
        max_size=24,
    ),
    st.one_of(st.none(), st.integers(1, 3 * BLOCK)),
)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_extents_gathered_into_writevs_land_byte_equal_with_their_aligned_zero_blocks_as_holes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    layout: list[tuple[list[tuple[bool, int]], int, int]],
    limit: int | None,
) -> None:
    """Many extents of any length (zero too), each any part of its blob, following one another
    and holes at every alignment, gathered PENDING_VIEWS to a writev that may write short at any
    byte: the file is their bytes in order, and a block is a hole exactly when it lies whole in
    one extent and is all zeros."""
    rng = random.Random(len(layout) * 31 + (limit or 0))
    real_writev = os.writev
    written = [0]

    def short_writev(fd: int, views: list[memoryview]) -> int:
        done = real_writev(fd, views) if limit is None else os.write(fd, b"".join(views)[:limit])
        written[0] += done
        # The layout is at most ~1.2 MiB: a writer that writes the same bytes again fails here,
        # not after filling the disk.
        assert written[0] <= 4 << 20, "bytes written again and again"
        return done

    monkeypatch.setattr(os, "writev", short_writev)
    path = tmp_path / f"extents-{os.urandom(8).hex()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    expected_bytes = bytearray()
    expected_holes: set[int] = set()
    try:
        pending = _Pending(fd)
        pos = 0
        for runs, cut_front, cut_back in layout:
            blob = b"".join(bytes(n) if zero else bytes(rng.randrange(1, 256) for _ in range(n)) for zero, n in runs)
            start = min(cut_front, len(blob))
            end = max(start, len(blob) - cut_back)
            _write_sparse(pending, blob, start, end, pos)
            expected_holes |= {
                b
                for b in range(-(-pos // BLOCK), (pos + end - start) // BLOCK)
                if not any(blob[start + b * BLOCK - pos : start + (b + 1) * BLOCK - pos])
            }
            expected_bytes += blob[start:end]
            pos += end - start
        pending.flush()
        monkeypatch.undo()
        assert os.lseek(fd, 0, os.SEEK_CUR) == pos
        os.ftruncate(fd, pos)
        assert os.pread(fd, pos + 1, 0) == expected_bytes
        holes = {b for b in range(-(-pos // BLOCK)) if _no_data(fd, b * BLOCK, min(pos, (b + 1) * BLOCK))}
    finally:
        os.close(fd)
    if not holes and expected_holes and os.stat(path).st_blocks * 512 >= pos:
        pytest.skip("this file system does not report holes")
    assert holes == expected_holes


def _no_data(fd: int, start: int, end: int) -> bool:
    """Whether the file holds no data in [start, end) (SEEK_DATA finds the next data after it)."""
    try:
        return os.lseek(fd, start, os.SEEK_DATA) >= end
    except OSError:  # ENXIO: no data from `start` to the end of the file
        return True


def test_each_folder_is_fsynced_once_after_its_files_are_renamed_into_it(
    writer: tuple[Repository, FileWriter, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder's fsync makes the renames into it durable; one after the last rename does it for
    all of them (not one per file), and it happens before the writer reports the folders done."""
    repo, w, to = writer
    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            synced.append((st.st_dev, st.st_ino))
        real_fsync(fd)

    files = {f"workspace/{d}/f{i}.md": os.urandom(100 + i) for d in ("notes", "memory") for i in range(30)}
    nodes = {
        logical: Node(
            name=logical.rsplit("/", 1)[1],
            type="file",
            mode=0o644,
            size=len(data),
            content=_store(repo, data, 64),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        for logical, data in files.items()
    }
    # The journal's folder is made on first use, and each folder a new one is made in is fsynced
    # too: expected only for those that do not exist yet (run alone, the cache folder is new).
    made_in, missing = [], journal_dir()
    while not missing.exists():
        made_in.append(missing.parent)
        missing = missing.parent
    monkeypatch.setattr(os, "fsync", fsync)  # the restore's own, not the repository's
    for logical, node in nodes.items():
        assert w.content(logical, node) == "ok"
    w.finish_dirs()
    for logical, data in files.items():
        assert (to / logical).read_bytes() == data
    folders = {(s.st_dev, s.st_ino) for s in ((to / "workspace" / d).stat() for d in ("notes", "memory"))}
    # And each folder that a new folder was created in, once: `to`'s parent (`to` is new), `to`
    # (it holds the new `workspace`) and `workspace` (it holds the new `notes` and `memory`).
    folders |= {(s.st_dev, s.st_ino) for s in (to.parent.stat(), to.stat(), (to / "workspace").stat())}
    # And the folder of the restore's journal, once, for the journal's own name there.
    folders |= {(s.st_dev, s.st_ino) for s in (journal_dir().stat(), *(p.stat() for p in made_in))}
    assert sorted(synced) == sorted(folders)
