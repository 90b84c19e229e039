"""What a restore still refuses now that it reads packs in coalesced ranges and trusts a database
copy that passed integrity_check at backup time (docs/restore-checks.md): bytes that do not match
the snapshot, a damaged blob anywhere in a coalesced range, a copy whose check failed at backup.
Each ends in an error and leaves nothing at the restored path, not even a temporary file."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from phoenix_backup.errors import CorruptObject, PhoenixError, RestoreError
from phoenix_backup.repo import keys, reader
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.pack import pack_name
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Extent, Node
from phoenix_backup.sinks import sqlite as sqlite_sink
from phoenix_backup.sinks.files import FileWriter
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
