"""Attacks on removing a failed run's packs (`Repository.removing_unindexed`): nothing another
process needs may go. docs/reliability.md, "A failed run's packs"."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_failed_run_packs import BLOB, FullAfter, _blobs, _packs, _setup
from test_retention_prune import file_node, open_fresh

from phoenix_backup.errors import NoSpace
from phoenix_backup.repo import keys
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
    running = Repository.open(FullAfter(LocalBackend(path), "data/", 1), keys.Credentials(passphrase=None))
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
    assert BLOB
