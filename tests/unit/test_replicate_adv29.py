"""The adversary of red29's sync changes: a commit pushed on top of a Git remote deleting the data
a replica's snapshots need (not the snapshots themselves)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_replicate_red29 import _git, git_replica
from test_retention_prune import KB, contents, take_snapshot

from phoenix_backup.errors import RepositoryError
from phoenix_backup.repo import keys
from phoenix_backup.repo.pack import pack_name
from phoenix_backup.repo.pins import Pins
from phoenix_backup.repo.replicate import replicate
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.local import LocalBackend


def _remote_objects(remote: Path) -> set[str]:
    names = _git("ls-tree", "-r", "--name-only", "main", cwd=remote).split()
    return {n for n in names if n.split("/")[0] in ("data", "index", "snapshots")}


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_commit_pushed_on_top_deleting_a_pack_or_changing_a_snapshot_is_repaired(tmp_path: Path) -> None:
    """Someone with push access committed the deletion of a pack on top of the remote (the
    snapshots and index objects left in place). The next sync merged that commit before its push:
    exit 0, and a remote whose snapshot no longer restored (the pack missing), with every sync
    after it saying "ok" too (a sync copies the packs of the index objects a replica lacks, and
    the replica still held the pack's index object). It is copied again now, and said."""
    first = Repository.init(LocalBackend(tmp_path / "first"), keys.wrap_none, False)
    take_snapshot(first, {"a.bin": os.urandom(8 * KB)}, "2026-03-01T02:00:00+00:00")
    take_snapshot(first, {"b.bin": os.urandom(8 * KB)}, "2026-03-02T02:00:00+00:00")
    remote, backend = git_replica(tmp_path)
    assert replicate(first, "git", backend(), print).ok
    other = tmp_path / "other"
    _git("clone", "-q", "-b", "main", str(remote), str(other), cwd=tmp_path)
    pack = sorted(n for n in _remote_objects(remote) if n.startswith("data/"))[0]
    _git("rm", "-q", pack, cwd=other)
    _git("commit", "-q", "-m", "cleanup", cwd=other)
    _git("push", "-q", "origin", "main", cwd=other)

    take_snapshot(first, {"c.bin": os.urandom(8 * KB)}, "2026-03-03T02:00:00+00:00")
    said: list[str] = []
    report = replicate(first, "git", backend(), said.append)
    ours = {info.name for p in ("data/", "index/", "snapshots/") for info in first.backend.list(p)}
    assert pack in _remote_objects(remote), report
    assert _remote_objects(remote) == ours
    assert report.ok, report.error
    assert any("deleted or changed 1 object(s)" in s and pack in s for s in said), said
    _git("clone", "-q", "-b", "main", str(remote), str(tmp_path / "check"), cwd=tmp_path)
    replica = Repository.open(LocalBackend(tmp_path / "check"), keys.Credentials(passphrase=None))
    assert contents(replica) == contents(first)

    # A pack no index object there lists any more (with its index object: a prune of that target
    # by another machine drops them so) is no alarm: the next sync copies the index object again.
    _git("pull", "-q", "origin", "main", cwd=other)
    index = sorted(n for n in _remote_objects(remote) if n.startswith("index/"))[0]
    listed = [pack_name(p) for p in first.read_index_object(index)[0]]
    _git("rm", "-q", index, *listed, cwd=other)
    _git("commit", "-q", "-m", "phoenix prune", cwd=other)
    _git("push", "-q", "origin", "main", cwd=other)
    take_snapshot(first, {"d.bin": os.urandom(8 * KB)}, "2026-03-04T02:00:00+00:00")
    said.clear()
    report = replicate(first, "git", backend(), said.append)
    assert report.ok, report.error
    assert not [s for s in said if "deleted" in s], said

    # A snapshot changed there (other bytes of another size): no sync looked at it again.
    _git("pull", "-q", "origin", "main", cwd=other)
    snap = sorted(n for n in _remote_objects(remote) if n.startswith("snapshots/"))[0]
    (other / snap).write_bytes(b"planted")
    _git("commit", "-q", "-a", "-m", "tidy", cwd=other)
    _git("push", "-q", "origin", "main", cwd=other)
    take_snapshot(first, {"e.bin": os.urandom(8 * KB)}, "2026-03-05T02:00:00+00:00")
    said.clear()
    report = replicate(first, "git", backend(), said.append)
    assert report.ok, report.error
    assert any("deleted or changed 1 object(s)" in s and snap in s for s in said), said
    assert _git("cat-file", "-s", f"main:{snap}", cwd=remote).strip() == str(first.backend.stat(snap).size)


def test_the_rollback_check_of_a_sync_reads_no_snapshot_unless_one_seen_is_gone(tmp_path: Path) -> None:
    """`phx sync` looks for an older copy of the first target put back from its listing: the
    snapshots are read only when one this machine saw there is not listed any more."""
    pins = Pins(tmp_path / "pins.json")
    first = Repository.init(LocalBackend(tmp_path / "first"), keys.wrap_none, False, pins=pins)
    for day in range(1, 6):
        take_snapshot(first, {f"{day}.bin": os.urandom(KB)}, f"2026-03-0{day}T02:00:00+00:00")
    read: list[str] = []

    class Counting(LocalBackend):
        def read(self, name: str) -> bytes:
            read.append(name)
            return super().read(name)

    def opened() -> Repository:
        return Repository.open(Counting(tmp_path / "first"), keys.Credentials(passphrase=None), pins=pins)

    opened().list_snapshots()  # what a backup or `phx list` of this machine records
    again = opened()
    read.clear()
    again.check_rollback_listed()
    again.refuse_if_rolled_back("copying to the replicas")
    assert read == []
    (tmp_path / "first" / "snapshots" / first.list_snapshots()[-1].id).unlink()  # an older copy put back
    again = opened()
    read.clear()
    again.check_rollback_listed()
    assert len([n for n in read if n.startswith("snapshots/")]) == 4
    with pytest.raises(RepositoryError, match="copying to the replicas refused"):
        again.refuse_if_rolled_back("copying to the replicas")


def test_a_damaged_snapshot_on_the_first_target_is_named_not_passed_over(tmp_path: Path) -> None:
    """A snapshot damaged on the first target was left out of a new replica and the sync said
    "ok" (exit 0): the replica lacked a backup and nothing said so. It is named now (the target
    fails, pointing at `phx verify` and `phx repair objects --from`); the rest is copied."""
    first = Repository.init(LocalBackend(tmp_path / "first"), keys.wrap_none, False)
    take_snapshot(first, {"a.bin": os.urandom(8 * KB)}, "2026-03-01T02:00:00+00:00")
    sid = take_snapshot(first, {"b.bin": os.urandom(8 * KB)}, "2026-03-02T02:00:00+00:00")
    damaged = tmp_path / "first" / "snapshots" / sid
    raw = bytearray(damaged.read_bytes())
    raw[-3] ^= 1
    damaged.write_bytes(bytes(raw))
    report = replicate(first, "z", LocalBackend(tmp_path / "z"), print)
    assert not report.ok
    assert f"snapshots/{sid}" in (report.error or "") and "phx repair objects" in (report.error or ""), report.error
    assert report.snapshots == 1
