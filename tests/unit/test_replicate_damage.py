"""Damage on either side of a sync: an index object of the first target that does not decode
(planted by anyone who can write that storage, or damaged) must not keep every replica from new
backups, and a replica that lists a pack it no longer holds whole must not count as holding the
backups that need it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pytest import MonkeyPatch
from test_retention_prune import KB, contents, take_snapshot

from phoenix_backup.repo import keys
from phoenix_backup.repo.crypto import BlobType, Compression
from phoenix_backup.repo.pack import PackBuilder, pack_name
from phoenix_backup.repo.replicate import replicate
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.appendonly import AppendOnlyBackend
from phoenix_backup.storage.local import LocalBackend


def stored(root: Path, name: str) -> Path:
    """The file of object `name` (say `index/<id>`) in a local target at `root`."""
    prefix, _, obj = name.partition("/")
    (found,) = [p for p in (root / prefix).rglob(obj) if p.is_file()]
    return found


def opened(path: Path) -> Repository:
    return Repository.open(LocalBackend(path), keys.Credentials(passphrase=None))


def first_target(tmp_path: Path) -> Repository:
    first = Repository.init(LocalBackend(tmp_path / "first"), keys.wrap_none, False)
    take_snapshot(first, {"a.bin": os.urandom(40 * KB)}, "2026-03-01T02:00:00+00:00")
    return first


def backup_index_object(first: Repository, size: int) -> str:
    """A new backup of a `size`-byte file on `first`; the name of the index object it wrote."""
    before = {info.name for info in first.backend.list("index/")}
    take_snapshot(first, {"b.bin": os.urandom(size)}, "2026-03-02T02:00:00+00:00")
    (written,) = {info.name for info in first.backend.list("index/")} - before
    return written


def damage(root: Path, name: str) -> None:
    """Object `name` of the local target at `root`, its last bytes replaced."""
    path = stored(root, name)
    path.write_bytes(path.read_bytes()[:-7] + b"garbage")


def test_junk_under_the_first_targets_index_does_not_stop_the_sync(tmp_path: Path) -> None:
    """A planted object under index/ of the first target (a valid name, bytes that do not decode)
    made every sync fail before any snapshot was copied: no replica got a new backup. It is
    skipped and named, the rest is copied, and the target's outcome says so."""
    first = first_target(tmp_path)
    assert replicate(first, "x", LocalBackend(tmp_path / "x"), print).ok
    junk = "index/" + "ab" * 32
    first.backend.write(junk, b"not an index object")
    take_snapshot(first, {"b.bin": os.urandom(40 * KB)}, "2026-03-02T02:00:00+00:00")
    report = replicate(first, "x", LocalBackend(tmp_path / "x"), print)
    assert not report.ok
    assert report.error is not None and junk in report.error
    assert report.snapshots == 1
    assert contents(opened(tmp_path / "x")) == contents(opened(tmp_path / "first"))


def test_a_damaged_index_object_of_the_first_target_still_replicates_its_packs(tmp_path: Path) -> None:
    """The first target's index object of a backup is damaged: the first target reads its packs'
    headers instead; the replica gets those packs too, listed by an index object of its own, so
    every snapshot copied there restores."""
    first = first_target(tmp_path)
    damaged = backup_index_object(first, 40 * KB)
    damage(tmp_path / "first", damaged)
    reopened = opened(tmp_path / "first")
    report = replicate(reopened, "x", LocalBackend(tmp_path / "x"), print)
    assert not report.ok and report.error is not None and damaged in report.error
    assert report.snapshots == 2
    assert contents(opened(tmp_path / "x")) == contents(opened(tmp_path / "first"))
    again = replicate(reopened, "x", LocalBackend(tmp_path / "x"), print)
    # Nothing rewritten; said again, unless the replica's own index object has the damaged one's
    # name (unencrypted, a name follows from what the object lists: then it is a whole copy of it).
    assert again.objects == 0 and again.damaged in ([], [damaged]) and again.ok is not bool(again.damaged)


def test_a_replica_pack_listed_but_not_whole_is_copied_again(tmp_path: Path) -> None:
    """A replica that lists a pack truncated there (or as a 0-byte object) was taken for holding
    it: the sync never copied it again, and the replica's backups needing it did not restore. A
    pack whose size there is not the first target's is copied again."""
    first = first_target(tmp_path)
    assert replicate(first, "x", LocalBackend(tmp_path / "x"), print).ok
    packs = sorted(info.name for info in first.backend.list("data/"))
    stored(tmp_path / "x", packs[0]).write_bytes(b"")
    damaged = stored(tmp_path / "x", packs[-1])
    damaged.write_bytes(damaged.read_bytes()[:-1])
    take_snapshot(first, {"b.bin": os.urandom(4 * KB)}, "2026-03-02T02:00:00+00:00")
    report = replicate(first, "x", LocalBackend(tmp_path / "x"), print)
    assert report.ok, report.error
    assert contents(opened(tmp_path / "x")) == contents(opened(tmp_path / "first"))


def test_a_pack_damaged_on_the_first_target_never_replaces_a_replicas_whole_copy(tmp_path: Path) -> None:
    """The sizes differ the other way round: the first target's copy is the truncated one. The
    replica keeps its whole copy (the one `phx repair objects --from` brings back), and the sync
    names the first target's pack instead of exiting 0."""
    first = first_target(tmp_path)
    assert replicate(first, "x", LocalBackend(tmp_path / "x"), print).ok
    pack = sorted(info.name for info in first.backend.list("data/"))[0]
    whole = stored(tmp_path / "x", pack).read_bytes()
    stored(tmp_path / "first", pack).write_bytes(whole[:-1])
    report = replicate(first, "x", LocalBackend(tmp_path / "x"), print)
    assert (report.ok, report.damaged) == (False, [pack])
    assert report.error is not None and "phx repair objects --from" in report.error
    assert stored(tmp_path / "x", pack).read_bytes() == whole


def test_an_index_object_of_another_repository_does_not_stop_the_sync(tmp_path: Path) -> None:
    """An index object of another repository planted under the first target's index/ decodes
    (and, unencrypted, matches its name), but none of the packs it lists is there: the copy of
    the first one failed ("is missing"), so every sync failed before any snapshot, for good. It is
    skipped and named, and the rest is copied."""
    first = first_target(tmp_path)
    assert replicate(first, "x", LocalBackend(tmp_path / "x"), print).ok
    other = Repository.init(LocalBackend(tmp_path / "other"), keys.wrap_none, False)
    take_snapshot(other, {"z.bin": os.urandom(4 * KB)}, "2026-03-01T02:00:00+00:00")
    (planted,) = [info.name for info in other.backend.list("index/")]
    first.backend.write(planted, other.backend.read(planted))
    take_snapshot(first, {"b.bin": os.urandom(4 * KB)}, "2026-03-02T02:00:00+00:00")
    report = replicate(opened(tmp_path / "first"), "x", LocalBackend(tmp_path / "x"), print)
    assert (report.ok, report.damaged, report.snapshots) == (False, [planted], 1)
    assert report.error is not None and planted in report.error
    assert contents(opened(tmp_path / "x")) == contents(opened(tmp_path / "first"))


def test_each_sync_after_junk_under_index_reads_only_that_object(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    """With junk under the first target's index/ and a replica holding every pack, each sync read
    every index object of the first target (the whole index, looking for packs known only from
    their headers). It reads the junk alone."""
    first = first_target(tmp_path)
    take_snapshot(first, {"b.bin": os.urandom(4 * KB)}, "2026-03-02T02:00:00+00:00")
    assert replicate(first, "x", LocalBackend(tmp_path / "x"), print).ok
    junk = "index/" + "ab" * 32
    first.backend.write(junk, b"not an index object")
    read: list[str] = []
    real = LocalBackend.read

    def counted(self: LocalBackend, name: str) -> bytes:
        read.append(name)
        return real(self, name)

    monkeypatch.setattr(LocalBackend, "read", counted)
    for _ in range(2):
        read.clear()
        report = replicate(opened(tmp_path / "first"), "x", LocalBackend(tmp_path / "x"), print)
        assert (report.ok, report.damaged, report.objects) == (False, [junk], 0)
        assert [n for n in read if n.startswith("index/")] == [junk]


def test_a_short_pack_on_an_append_only_replica_does_not_stop_its_syncs(tmp_path: Path) -> None:
    """An append-only replica refuses the copy of a pack it lists at another size (truncated
    there, or a listing that gives another size): that refusal stopped every sync there before
    any new snapshot was copied. The rest is copied, and the target fails naming the refusal."""
    first = first_target(tmp_path)

    def replica() -> AppendOnlyBackend:
        return AppendOnlyBackend(LocalBackend(tmp_path / "x"), "x")

    assert replicate(first, "x", replica(), print).ok
    pack = sorted(info.name for info in first.backend.list("data/"))[-1]
    short = stored(tmp_path / "x", pack)
    short.write_bytes(short.read_bytes()[:-1])
    take_snapshot(first, {"b.bin": os.urandom(4 * KB)}, "2026-03-02T02:00:00+00:00")
    report = replicate(first, "x", replica(), print)
    assert (report.ok, report.snapshots) == (False, 1)
    assert report.error is not None and pack in report.error and "append-only" in report.error
    snapshots = {info.name for info in first.backend.list("snapshots/")}
    assert {info.name for info in replica().list("snapshots/")} == snapshots


def test_a_sync_stopped_before_the_replicas_own_index_object_leaves_no_snapshot_unindexed(
    tmp_path: Path, monkeypatch: MonkeyPatch
) -> None:
    """The first target's index object of a backup is damaged. A sync stopped after copying the
    packs it listed but before the replica's own index object listing them left the replica
    holding those packs with no index object: the next sync took them for held and indexed, and
    copied the snapshot that needs them, which did not restore there ("not in the index")."""
    first = first_target(tmp_path)
    damaged = backup_index_object(first, 4 * KB)
    damage(tmp_path / "first", damaged)
    real = LocalBackend.write

    def stopped(self: LocalBackend, name: str, data: bytes, **kw: bool) -> None:
        if name.startswith("index/") and self.root == tmp_path / "x":
            raise KeyboardInterrupt("stopped")
        real(self, name, data, **kw)

    monkeypatch.setattr(LocalBackend, "write", stopped)
    with pytest.raises(KeyboardInterrupt):
        replicate(opened(tmp_path / "first"), "x", LocalBackend(tmp_path / "x"), print)
    monkeypatch.setattr(LocalBackend, "write", real)
    assert not LocalBackend(tmp_path / "x").stat("snapshots/" + opened(tmp_path / "first").list_snapshots()[0].id)
    report = replicate(opened(tmp_path / "first"), "x", LocalBackend(tmp_path / "x"), print)
    assert report.snapshots == 2 and report.damaged == [damaged]
    assert contents(opened(tmp_path / "x")) == contents(opened(tmp_path / "first"))


def test_a_planted_pack_claiming_the_blobs_of_a_damaged_index_object_does_not_hide_them(tmp_path: Path) -> None:
    """The first target's index object of a backup is damaged, and packs are planted whose headers
    claim every blob of that backup (other bytes). The first target still restores (each blob's
    other location); the replica got only the first location of each blob, often the planted
    one: the genuine packs were never copied, and the backup did not restore there."""
    first = first_target(tmp_path)
    damaged = backup_index_object(first, 4 * KB)
    first.load_index()
    claimed = [e for entries in first.index.by_pack().values() for e in entries]
    damage(tmp_path / "first", damaged)
    genuine = min(first.index.by_pack())
    for kind in BlobType:
        entries = [e for e in claimed if e.type == kind]
        for salt in range(200):  # one that sorts before the genuine packs (read first)
            builder = PackBuilder(kind, None, first.sealer)
            for entry in entries:
                builder.add(entry.id, Compression.NONE, os.urandom(64 + salt), 64 + salt)
            pack_id, data, _ = builder.finish(first.sealer, first.config.pack_ids)
            if pack_id < genuine:
                first.backend.write(pack_name(pack_id), bytes(data))
                break
    expected = contents(opened(tmp_path / "first"))
    report = replicate(opened(tmp_path / "first"), "x", LocalBackend(tmp_path / "x"), print)
    assert (report.snapshots, report.damaged) == (2, [damaged])
    assert contents(opened(tmp_path / "x")) == expected
