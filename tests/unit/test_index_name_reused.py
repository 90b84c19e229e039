"""An unencrypted repository seals nothing, so an index object's name follows from what it lists:
a backup that stores again the very packs of a forgotten snapshot writes an index object under the
name of the one that listed them. A prune stopped between its index and the deletion of the old
objects leaves that old one present and superseded; the backup's object, under the same name, was
superseded with it, and the new snapshot's blobs were listed by no live index object (restore and
verify failed: "tree blob ... is not in the index"). repo/repository.py `write_index` gives the
object another name when one of its name is there already."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_retention_prune import T0, CrashingBackend, age_packs, contents, open_fresh, take_snapshot

from phoenix_backup.errors import StorageError
from phoenix_backup.repo import keys
from phoenix_backup.repo.checker import verify_repository
from phoenix_backup.repo.prune import PruneState, TargetPrune, prune_repository
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.local import LocalBackend


class StopsBeforeIndexDeletes(CrashingBackend):
    """A prune killed after its new index and its pack deletions, before the old index objects go."""

    def delete(self, name: str) -> None:
        if name.startswith("index/"):
            raise StorageError("injected crash before the old index objects are deleted")
        super().delete(name)


def index_objects(path: Path) -> set[str]:
    return {i.name for i in LocalBackend(path).list("index/")}


def test_a_backup_of_forgotten_data_after_a_stopped_prune_stays_listed(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    repo = Repository.init(LocalBackend(root), keys.wrap_none, False)
    again = os.urandom(3000)
    first = take_snapshot(repo, {"x.txt": again}, "2026-03-01T02:00:00+00:00")
    take_snapshot(repo, {"y.txt": os.urandom(3000)}, "2026-03-01T02:01:00+00:00")
    repo.close()
    forgotten = index_objects(root)
    opened, _ = open_fresh(root)
    opened.load_index()
    opened.delete_snapshot(first)
    age_packs(root, T0 - 7200)
    stopping = Repository.open(StopsBeforeIndexDeletes(LocalBackend(root), None), keys.Credentials(passphrase=None))
    with pytest.raises(StorageError, match="injected crash"):
        prune_repository(stopping, TargetPrune("local"), dry_run=False, state=PruneState(tmp_path / "p.json"), now=T0)
    for lock in (root / "locks").iterdir():  # what `phx unlock` does
        lock.unlink()
    assert forgotten < index_objects(root), "the old objects are there, superseded"

    repo, _ = open_fresh(root)
    take_snapshot(repo, {"x.txt": again}, "2026-03-01T02:02:00+00:00")  # the forgotten file again
    repo.close()
    restored = contents(open_fresh(root)[0])
    assert len(restored) == 2
    result = verify_repository(open_fresh(root)[0], read_data=True)
    assert result.ok, result.to_json()
