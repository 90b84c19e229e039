"""Data packs are built in the buffers of packs already written (repo/pack.py `PackBuilder(reuse=)`):
on every kind of store, each pack a backup wrote must hold the bytes its name and the index say,
read back whole (as `phx verify --read-data` reads it), blob for blob (as a restore reads it).
S3 takes the multipart path (parts cut from the buffer), Git writes into its clone and pushes
(Git, ~15 s, only with `PHX_TEST_HEAVY=1`: its objects are written as local files are, and it
reads them from its clone's disk, never from a pack's buffer)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest
from storage_support import KINDS, require_git

from phoenix_backup.repo import keys
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.pack import DATA_PACK_TARGET
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.base import Backend
from phoenix_backup.storage.git import GitBackend

BLOB = 512 * 1024
PACKS = 4  # the second pack on is built in a buffer already written
HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"


def _packs_read_back(backend: Backend, ids: list[bytes], blobs: list[bytes]) -> None:
    repo = Repository.open(backend, keys.Credentials(passphrase="pw"))
    repo.load_index()
    listing = list(backend.list("data/"))
    assert len(listing) >= PACKS
    for info in listing:
        assert blake3.blake3(backend.read(info.name)).hexdigest() == info.name.rsplit("/", 1)[1], info.name
    assert [repo.load_blob(BlobType.DATA, bid) for bid in ids] == blobs


@pytest.mark.parametrize("kind", KINDS)
def test_every_pack_a_backup_wrote_reads_back_as_its_name_says(
    kind: str, make_backend: Callable[..., Backend], tmp_path: Path
) -> None:
    if kind == "git":
        if not HEAVY:
            pytest.skip("Git: PHX_TEST_HEAVY=1")
        require_git()
    extra = {"multipart_threshold": 5 * 1024 * 1024, "part_size": 5 * 1024 * 1024} if kind == "s3" else {}
    backend = make_backend(kind, **extra)
    Repository.init(
        backend, lambda m: keys.wrap_passphrase(m, "pw", kdf_params={"n": 2**10, "r": 8, "p": 1}), encrypted=True
    )
    repo = Repository.open(backend, keys.Credentials(passphrase="pw"))
    repo.load_index()
    rnd = random.Random(kind)
    # Packs of different lengths: a buffer is filled again with a shorter pack than it held.
    blobs: list[bytes] = []
    while sum(map(len, blobs)) < PACKS * DATA_PACK_TARGET + BLOB:
        blobs.append(rnd.randbytes(rnd.choice([BLOB, BLOB // 5])))
    ids = [repo.save_blob_async(BlobType.DATA, b) for b in blobs]
    repo.flush()
    repo.publish_changes("backup")
    repo.close()
    _packs_read_back(backend, ids, blobs)
    if kind == "git":
        # What was pushed, in a clone of its own.
        inner = backend.unwrap()
        assert isinstance(inner, GitBackend)
        clone = GitBackend(
            inner.url,
            "main",
            True,
            tmp_path / "again" / "clone",
            {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
            None,
        )
        try:
            _packs_read_back(clone, ids, blobs)
        finally:
            clone.close()
