"""Attacks on removing a failed run's packs (`Repository.removing_unindexed`): nothing another
process needs may go. docs/reliability.md, "A failed run's packs"."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_failed_run_packs import CREDENTIALS, FullAfter, _blobs, _packs, _setup, open_fresh
from test_retention_prune import file_node

from phoenix_backup.errors import NoSpace
from phoenix_backup.repo import keys
from phoenix_backup.repo.checker import verify_repository
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.local import LocalBackend


def test_a_backup_reading_pack_headers_does_not_deduplicate_against_a_running_backups_packs(tmp_path: Path) -> None:
    """A damaged index object makes a backup read the headers of every pack no index names: the
    packs of a backup running at the same time among them. Had it deduplicated against those, its
    snapshot would refer to blobs that the other run, failing, deletes (no index names them)."""
    path, before = _setup(tmp_path)
    damaged = "index/" + "0" * 64
    blobs = _blobs()[:10]
    running = Repository.open(FullAfter(LocalBackend(path), "data/", 1), CREDENTIALS)
    running.load_index()
    saved: list[bytes] = []
    with pytest.raises(NoSpace), running.removing_unindexed():
        for data in blobs:
            running.save_blob(BlobType.DATA, data)
            if running._new_packs and not saved:
                # Its first pack is written, no index names it yet: another backup starts, and one
                # index object is damaged.
                LocalBackend(path).write(damaged, b"damaged")
                other, _ = open_fresh(path)
                other.load_index()
                assert other.problems.index
                for i, same in enumerate(blobs[:8]):  # the same content: the same blob ids
                    saved.append(file_node(other, f"f{i}", same).content[0].blob)
                other.flush()
                other.close()
        running.flush()  # its last pack finds the disk full
    assert len(_packs(path)) > len(before)
    LocalBackend(path).delete(damaged)
    fresh, _ = open_fresh(path)
    fresh.load_index()
    for bid, data in zip(saved, blobs, strict=False):
        assert fresh.has_blob(bid), "the other backup's blob is in no index"
        assert fresh.load_blob(BlobType.DATA, bid) == data


class LandsThenFails(FullAfter):
    """Writes of objects under `prefix` land, then raise (a remote store's timeout after success)
    once `allowed` of them were written."""

    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        self.inner.write(name, data, exclusive=exclusive)
        if name.startswith(self.prefix):
            if self.allowed == 0:
                raise NoSpace(f"timed out after writing {name}")
            self.allowed -= 1


@pytest.mark.parametrize("parts_before", [0, 1], ids=["first-part", "second-part"])
def test_an_index_write_that_landed_then_failed_keeps_every_pack_it_names(
    tmp_path: Path, parts_before: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phoenix_backup.repo import repository

    monkeypatch.setattr(repository, "INDEX_PART_BLOBS", 4)  # 10 blobs: three parts
    path, before = _setup(tmp_path)
    repo = Repository.open(LandsThenFails(LocalBackend(path), "index/", parts_before), CREDENTIALS)
    repo.load_index()
    blobs = _blobs()[:10]
    with pytest.raises(NoSpace), repo.removing_unindexed():
        for data in blobs:
            repo.save_blob(BlobType.DATA, data)
        repo.flush()
    repo.close()
    assert len(_packs(path)) == len(before) + 2
    fresh, _ = open_fresh(path)
    fresh.load_index()
    for data in blobs[: 4 * (parts_before + 1)]:  # the parts that landed name packs that are there
        assert fresh.load_blob(BlobType.DATA, fresh.ids.blob_id(BlobType.DATA, data)) == data


def test_a_failure_after_the_index_was_written_keeps_everything(tmp_path: Path) -> None:
    """`save_snapshot` failing (or a later step): the index names the run's packs, none goes."""
    path, before = _setup(tmp_path)
    repo = Repository.open(FullAfter(LocalBackend(path), "snapshots/", 0), CREDENTIALS)
    repo.load_index()
    blobs = _blobs()[:10]
    with pytest.raises(NoSpace) as caught, repo.removing_unindexed():
        for data in blobs:
            repo.save_blob_async(BlobType.DATA, data)
        repo.flush()
        repo.backend.write("snapshots/" + "1" * 64, b"x")
    assert "removed" not in str(caught.value)
    repo.close()
    assert len(_packs(path)) == len(before) + 2


def test_two_failing_runs_delete_only_their_own_packs(tmp_path: Path) -> None:
    """Two runs writing the same blobs at once, both failing: each deletes its own packs only, and
    a third run's indexed packs of the very same blobs stay."""
    path, before = _setup(tmp_path)
    blobs = _blobs()[:9]
    done = Repository.open(LocalBackend(path), CREDENTIALS)
    done.load_index()
    one = Repository.open(FullAfter(LocalBackend(path), "data/", 1), CREDENTIALS)
    two = Repository.open(FullAfter(LocalBackend(path), "data/", 1), CREDENTIALS)
    one.load_index()
    two.load_index()
    with pytest.raises(NoSpace) as first, one.removing_unindexed():
        with pytest.raises(NoSpace) as second, two.removing_unindexed():
            for data in blobs:
                one.save_blob(BlobType.DATA, data)
                two.save_blob(BlobType.DATA, data)
                done.save_blob(BlobType.DATA, data)
            done.flush()
            two.flush()
        one.flush()
    for caught in (first, second):
        assert "the 1 pack(s) this run wrote, 8.0 MiB, were removed" in str(caught.value)
    assert len(_packs(path)) == len(before) + 2  # the finished run's two
    fresh, _ = open_fresh(path)
    fresh.load_index()
    for data in blobs:
        assert fresh.load_blob(BlobType.DATA, fresh.ids.blob_id(BlobType.DATA, data)) == data


def test_an_unencrypted_run_does_not_delete_a_pack_another_run_wrote_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unencrypted, a pack's bytes, so its name, follow from what it holds: a run storing the same
    blobs writes the very same object. The failing run must not delete it before the other run's
    index names it (that index would name a pack that is gone)."""
    from types import SimpleNamespace

    from phoenix_backup.repo import pack

    monkeypatch.setattr(pack, "time", SimpleNamespace(time=lambda: 1_800_000_000.0))  # the same second
    path = tmp_path / "repo"
    Repository.init(LocalBackend(path), keys.wrap_none, False).close()
    blobs = _blobs()[:9]
    failing = Repository.open(LocalBackend(path), keys.Credentials(passphrase=None))
    other = Repository.open(LocalBackend(path), keys.Credentials(passphrase=None))
    failing.load_index()
    other.load_index()
    with pytest.raises(NoSpace), failing.removing_unindexed():
        for data in blobs[:8]:
            failing.save_blob(BlobType.DATA, data)
            other.save_blob(BlobType.DATA, data)
        assert set(failing._new_packs) == set(other._new_packs), "the same pack, the same name"
        raise NoSpace("no space left on the device")
    for data in blobs[8:]:
        other.save_blob(BlobType.DATA, data)
    other.flush()
    fresh = Repository.open(LocalBackend(path), keys.Credentials(passphrase=None))
    fresh.load_index()
    for data in blobs:
        assert fresh.load_blob(BlobType.DATA, fresh.ids.blob_id(BlobType.DATA, data)) == data


class StoppedWhileDeleting(FullAfter):
    """A stop (Ctrl-C) arriving during the removal: the first delete of a pack raises it."""

    def delete(self, name: str) -> None:
        if name.startswith("data/"):
            raise KeyboardInterrupt
        self.inner.delete(name)


def test_a_stop_during_the_removal_deletes_nothing_needed(tmp_path: Path) -> None:
    path, before = _setup(tmp_path)
    repo = Repository.open(StoppedWhileDeleting(LocalBackend(path), "data/", 2), CREDENTIALS)
    repo.load_index()
    with pytest.raises(KeyboardInterrupt), repo.removing_unindexed():
        for data in _blobs():
            repo.save_blob(BlobType.DATA, data)
        repo.flush()
    repo.close()
    assert set(before) < set(_packs(path))  # its two packs stay, for prune
    fresh, _ = open_fresh(path)
    result = verify_repository(fresh, read_data=True)
    assert result.ok, result.to_json()
