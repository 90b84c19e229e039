"""A prune on a replica beside a sync from the first target: what the replica's prune dropped and
the first target still needs comes back usable (not only copied) at the next sync."""

from __future__ import annotations

import os
from pathlib import Path

from test_retention_prune import KB, T0, age_packs, contents, take_snapshot

from phoenix_backup.errors import StorageError
from phoenix_backup.repo import keys
from phoenix_backup.repo.prune import PruneState, TargetPrune, prune_repository
from phoenix_backup.repo.replicate import replicate
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.local import LocalBackend


class Down(LocalBackend):
    """A replica that goes down when its sync reaches the snapshots (packs and index copied)."""

    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        if name.startswith("snapshots/"):
            raise StorageError(f"{self.location} went down")
        super().write(name, data, exclusive=exclusive, cold=cold)


def test_packs_a_replicas_prune_dropped_are_usable_there_after_the_next_sync(tmp_path: Path) -> None:
    """A replication stopped after copying a backup's packs and index object, before its
    snapshot; a prune of the replica half an hour later found those packs used by no snapshot
    there and dropped them, its new index object superseding the backup's. The next sync copied
    the backup's index object and packs again and then the snapshot, exit 0; but a superseded
    index object is not read, so the snapshot's data was listed by no index there: not restorable
    from the replica (and its next prune deleted the packs again)."""
    first = pruned_replica(tmp_path)
    report = replicate(first, "x", LocalBackend(tmp_path / "x"), print)
    assert report.ok, report.error
    again = Repository.open(LocalBackend(tmp_path / "x"), keys.Credentials(passphrase=None))
    assert contents(again) == contents(first)


def pruned_replica(tmp_path: Path) -> Repository:
    """The first target, and a replica `x` whose prune dropped the packs of a backup whose
    replication stopped before its snapshot."""
    first = Repository.init(LocalBackend(tmp_path / "first"), keys.wrap_none, False)
    take_snapshot(first, {"a.bin": os.urandom(40 * KB)}, "2026-03-01T02:00:00+00:00")
    assert replicate(first, "x", LocalBackend(tmp_path / "x"), print).ok
    take_snapshot(first, {"b.bin": os.urandom(40 * KB)}, "2026-03-02T02:00:00+00:00")

    assert not replicate(first, "x", Down(tmp_path / "x"), print).ok
    age_packs(tmp_path / "x", T0 - 7200)
    replica = Repository.open(LocalBackend(tmp_path / "x"), keys.Credentials(passphrase=None))
    prune_repository(replica, TargetPrune("x"), dry_run=False, state=PruneState(tmp_path / "state"), now=T0)
    replica.close()
    return first


def test_syncs_after_a_replicas_prune_do_not_read_its_index_again(tmp_path: Path) -> None:
    """Each sync after a prune of the replica looked for the index objects the replica's own
    supersede: it read every one of them (after a prune, the replica's whole index, twice) at each
    backup. What an index object supersedes never changes (its name is its hash): it is read once."""
    first = pruned_replica(tmp_path)
    read: list[str] = []

    class Counting(LocalBackend):
        def read(self, name: str) -> bytes:
            read.append(name)
            return super().read(name)

    assert replicate(first, "x", Counting(tmp_path / "x"), print).ok
    for when in ("2026-03-03T02:00:00+00:00", "2026-03-04T02:00:00+00:00"):
        take_snapshot(first, {f"{when}.bin": os.urandom(4 * KB)}, when)
        read.clear()
        report = replicate(first, "x", Counting(tmp_path / "x"), print)
        assert report.ok, report.error
        assert [name for name in read if name.startswith("index/")] == []
    again = Repository.open(LocalBackend(tmp_path / "x"), keys.Credentials(passphrase=None))
    assert contents(again) == contents(first)


def test_a_sync_stopped_again_and_a_second_prune_of_the_replica_lose_nothing_there(tmp_path: Path) -> None:
    """The sync after the replica's prune stopped too, before the snapshot, having listed the
    packs again in an index object of the replica's own; a second prune of the replica dropped
    them again, superseding that object. The next sync listed them again in an object of the very
    same bytes, so the same name (an unencrypted repository), which the second prune's
    supersedes: the snapshot copied then had its data listed by no index there (prune: "tree
    blob … is not in the index")."""
    first = pruned_replica(tmp_path)

    assert not replicate(first, "x", Down(tmp_path / "x"), print).ok
    for now in (T0 + 3600, T0 + 7200):
        age_packs(tmp_path / "x", now - 7200)
        replica = Repository.open(LocalBackend(tmp_path / "x"), keys.Credentials(passphrase=None))
        pruned = prune_repository(replica, TargetPrune("x"), dry_run=False, state=PruneState(tmp_path / "s"), now=now)
        replica.close()
        assert pruned.ok, pruned.error
        report = replicate(first, "x", LocalBackend(tmp_path / "x"), print)
        assert report.ok, report.error
    again = Repository.open(LocalBackend(tmp_path / "x"), keys.Credentials(passphrase=None))
    assert contents(again) == contents(first)
