"""A run that fails after writing packs no index names removes them (`Repository.removing_unindexed`),
and only them: a pack whose index write was attempted stays, whatever came of that write (it may
have landed on a remote store). docs/reliability.md, "A failed run's packs"."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from test_retention_prune import CrashingBackend, take_snapshot

from phoenix_backup.errors import NoSpace
from phoenix_backup.repo import keys
from phoenix_backup.repo.checker import verify_repository
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.local import LocalBackend

BLOB = 1024 * 1024
# Encrypted: unsealed, a pack's name follows from its bytes and a failed run deletes none
# (test_failed_run_packs_adversary.py).
CREDENTIALS = keys.Credentials(passphrase="pw")
BLOBS = 20  # random MiB blobs: two full 8 MiB data packs and a partial third


class FullAfter(CrashingBackend):
    """The real local backend, except that writes of objects under `prefix` fail with "no space"
    once `allowed` of them were written."""

    def __init__(self, inner: LocalBackend, prefix: str, allowed: int) -> None:
        super().__init__(inner, None)
        self.prefix, self.allowed = prefix, allowed

    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        if name.startswith(self.prefix):
            if self.allowed == 0:
                raise NoSpace(f"no space left on the device while writing {name}; free some space and run again")
            self.allowed -= 1
        self.inner.write(name, data, exclusive=exclusive)


def _packs(path: Path) -> list[str]:
    return sorted(i.name for i in LocalBackend(path).list("data/"))


def open_fresh(path: Path) -> tuple[Repository, CrashingBackend]:
    backend = CrashingBackend(LocalBackend(path), None)
    return Repository.open(backend, CREDENTIALS), backend


def _blobs() -> list[bytes]:
    rnd = random.Random(3)
    return [rnd.randbytes(BLOB) for _ in range(BLOBS)]


def _setup(tmp_path: Path) -> tuple[Path, list[str]]:
    path = tmp_path / "repo"
    repo = Repository.init(LocalBackend(path), lambda m: keys.wrap_passphrase(m, "pw", kdf_params={"n": 2**10}), True)
    take_snapshot(repo, {"a.txt": b"kept\n"}, "2026-01-01T00:00:00+00:00")
    repo.close()
    return path, _packs(path)


def _save(repo: Repository, blobs: list[bytes], threads: bool) -> None:
    for data in blobs:
        if threads:
            repo.save_blob_async(BlobType.DATA, data)
        else:
            repo.save_blob(BlobType.DATA, data)
    repo.flush()


@pytest.mark.parametrize("threads", [False, True], ids=["in-line", "pack-writer-threads"])
def test_a_failed_pack_write_removes_the_packs_written_before(tmp_path: Path, threads: bool) -> None:
    path, before = _setup(tmp_path)
    backend = FullAfter(LocalBackend(path), "data/", 2)  # the third pack finds the disk full
    repo = Repository.open(backend, CREDENTIALS)
    repo.load_index()
    blobs = _blobs()
    with pytest.raises(NoSpace) as caught, repo.removing_unindexed():
        _save(repo, blobs, threads)
    assert "the 2 pack(s) this run wrote, 16.0 MiB, were removed: no index names them" in str(caught.value)
    assert _packs(path) == before
    # The same repository object stores them again rather than deduplicating against what is gone.
    ids = [repo.ids.blob_id(BlobType.DATA, b) for b in blobs]
    assert not any(repo.has_blob(i) for i in ids)
    repo.close()
    fresh, _ = open_fresh(path)
    result = verify_repository(fresh, read_data=True)
    assert result.ok and not result.notices, result.to_json()


def test_a_failed_index_write_keeps_its_packs(tmp_path: Path) -> None:
    path, before = _setup(tmp_path)
    backend = FullAfter(LocalBackend(path), "index/", 0)
    repo = Repository.open(backend, CREDENTIALS)
    repo.load_index()
    with pytest.raises(NoSpace) as caught, repo.removing_unindexed():
        _save(repo, _blobs(), threads=True)
    assert "removed" not in str(caught.value)
    written = [p for p in _packs(path) if p not in before]
    assert len(written) == 3, "the packs whose index write was attempted are kept"
    repo.close()


def test_a_pack_another_index_names_is_kept(tmp_path: Path) -> None:
    """A pack this run wrote that an index object it did not read names (another process's pack
    of the same bytes) stays."""
    path, before = _setup(tmp_path)
    backend = FullAfter(LocalBackend(path), "data/", 1)
    repo = Repository.open(backend, CREDENTIALS)
    repo.load_index()
    other = Repository.open(LocalBackend(path), CREDENTIALS)
    with pytest.raises(NoSpace) as caught, repo.removing_unindexed():
        for data in _blobs():
            repo.save_blob(BlobType.DATA, data)
            if repo._new_packs and not other._new_packs:
                # Another process's index names the pack just written.
                other.write_index_parts(dict(repo._new_packs), [])
                other._new_packs = dict(repo._new_packs)
    assert "1 pack(s) this run wrote were kept: an index object of another process names them" in str(caught.value)
    assert len(_packs(path)) == len(before) + 1
    repo.close()
    result = verify_repository(open_fresh(path)[0], read_data=True)
    assert result.ok, result.to_json()
