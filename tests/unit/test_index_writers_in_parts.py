"""Every writer of the index writes it in parts of at most INDEX_PART_BLOBS blobs
(repo/repository.py `write_index_parts`), not prune's merge alone: the drop of lost packs a backup
does, the write-only conversion and replication's index of the packs the first target lost (the
key rotation's is in tests/e2e/test_index_writers_killed.py). One object of every blob costs its
whole plaintext at once when loaded, and is past the 50 MB a Git host takes.

A crash at each kind of write or delete of each (the storage's, tests/unit/test_retention_prune.py
`CrashingBackend`; the first, a middle and the last of each run of one kind, `crash_points`, every
one with PHX_TEST_HEAVY=1) leaves every snapshot reading back byte for byte, the repository verifying with
its data read, and the next run finishes the job; no old index object is deleted before the parts
that replace it are written."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pyrage
import pytest
from test_index_objects import backups, index_objects
from test_retention_prune import CrashingBackend, contents, crash_points, open_fresh

import phoenix_backup.repo.repository as repository_module
from phoenix_backup.errors import StorageError
from phoenix_backup.repo import keys
from phoenix_backup.repo.checker import verify_repository
from phoenix_backup.repo.replicate import replicate
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.writer import convert
from phoenix_backup.storage.local import LocalBackend

FAST = {"n": 2**10}


def part_sizes(repo: Repository, names: list[str]) -> list[tuple[int, int]]:
    """(blobs listed, index objects superseded) of each of `names`."""
    out = []
    for name in names:
        packs, superseded = repo.read_index_object(name)
        out.append((sum(map(len, packs.values())), len(superseded)))
    return out


def assert_whole(
    opened: Callable[[Path], Repository], path: Path, expected: dict[str, dict[str, str]], what: object
) -> None:
    """Every snapshot at `path` reads back byte for byte and the repository verifies with its data
    read (`opened` opens it afresh)."""
    assert contents(opened(path)) == expected, what
    result = verify_repository(opened(path), read_data=True)
    assert result.ok, (what, result.to_json())


def new_objects(path: Path, before: list[str]) -> list[str]:
    return sorted(set(index_objects(path)) - set(before))


def forget_the_first(path: Path, count: int) -> None:
    """Forget the `count` oldest snapshots and lose their packs (each backup of `backups` writes
    packs only its own snapshot uses): the index then lists packs the store lacks."""
    repo = open_fresh(path)[0]
    data = {p for p in (path / "data").rglob("*") if p.is_file()}
    repo.load_index()
    used_later: set[str] = set()
    snaps = repo.list_snapshots()
    for snap in snaps[count:]:
        for pack_id in packs_of(repo, snap.tree):
            used_later.add(pack_id)
    for snap in snaps[:count]:
        repo.delete_snapshot(snap.id)
    lost = [p for p in data if p.name not in used_later]
    assert lost
    for p in lost:
        p.unlink()


def packs_of(repo: Repository, tree: bytes) -> set[str]:
    found = {loc.pack_id for loc in repo.index.locations(tree)}
    for node in repo.load_tree(tree):
        if node.subtree is not None:
            found |= packs_of(repo, node.subtree)
        for extent in node.content:
            found |= {loc.pack_id for loc in repo.index.locations(extent.blob)}
    return found


@pytest.fixture(scope="module")
def lost(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    """40 backups (120 blobs), the 10 oldest forgotten and their packs lost (90 blobs left)."""
    root = tmp_path_factory.mktemp("lost") / "repo"
    repo = Repository.init(LocalBackend(root), keys.wrap_none, False)
    backups(repo, 0, 40)
    repo.close()
    forget_the_first(root, 10)
    return root, contents(open_fresh(root)[0])


def test_the_drop_of_lost_packs_writes_parts_and_a_crash_between_them_loses_nothing(
    lost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repository_module, "INDEX_PART_BLOBS", 40)
    src, expected = lost
    before = index_objects(src)
    probe = tmp_path / "probe"
    shutil.copytree(src, probe)
    repo, backend = open_fresh(probe)
    repo.load_index()
    assert len(repo.drop_missing_packs()) == 20
    written = new_objects(probe, before)
    sizes = part_sizes(repo, written)
    assert len(written) == backend.mutations >= 3, sizes
    assert all(blobs <= 40 for blobs, _sup in sizes) and sum(b for b, _s in sizes) == 90, sizes
    assert sorted(s for _b, s in sizes) == [0] * (len(sizes) - 1) + [40], "only the last supersedes"
    assert contents(open_fresh(probe)[0]) == expected
    assert verify_repository(open_fresh(probe)[0], read_data=True).ok
    assert set(backend.steps) == {"write index"}, backend.steps
    for fail_at in crash_points(backend.steps):  # the first, a middle and the last part
        path = tmp_path / f"crash{fail_at}"
        shutil.copytree(src, path)
        crashed, _ = open_fresh(path, fail_at)
        crashed.load_index()
        with pytest.raises(StorageError, match="injected crash"):
            crashed.drop_missing_packs()
        assert contents(open_fresh(path)[0]) == expected, fail_at
        again = open_fresh(path)[0]  # the next backup's drop finishes the job
        again.load_index()
        assert len(again.drop_missing_packs()) == 20, fail_at
        assert_whole(lambda p: open_fresh(p)[0], path, expected, fail_at)
        shutil.rmtree(path)


def test_replication_indexes_what_the_first_target_lost_in_parts_and_survives_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first target forgot and lost packs the replica holds; replication writes the replica
    an index of them (repo/replicate.py `_keep_indexed`) before it copies the index objects that
    supersede the replica's: 30 blobs in 20 packs, in parts of 8 here."""
    monkeypatch.setattr(repository_module, "INDEX_PART_BLOBS", 8)
    first, replica = tmp_path / "first", tmp_path / "replica"
    repo = Repository.init(LocalBackend(first), keys.wrap_none, False)
    backups(repo, 0, 40)
    repo.close()
    assert replicate(open_fresh(first)[0], "copy", LocalBackend(replica), lambda _m: None).ok
    expected = contents(open_fresh(replica)[0])
    assert len(expected) == 40
    forget_the_first(first, 10)
    dropping = open_fresh(first)[0]
    dropping.load_index()
    assert len(dropping.drop_missing_packs()) == 20
    saved = tmp_path / "saved"
    shutil.copytree(replica, saved)
    before = index_objects(replica)
    probe_backend = CrashingBackend(LocalBackend(replica), None)
    report = replicate(open_fresh(first)[0], "copy", probe_backend, lambda _m: None)
    assert report.ok, report.error
    source_index = set(index_objects(first))
    own = [n for n in new_objects(replica, before) if n not in source_index]
    sizes = part_sizes(open_fresh(replica)[0], own)
    assert len(own) >= 3 and all(b <= 8 for b, _s in sizes) and sum(b for b, _s in sizes) == 30, sizes
    assert contents(open_fresh(replica)[0]) == expected
    assert verify_repository(open_fresh(replica)[0], read_data=True).ok
    # Each kind of write or delete: the first, a middle and the last of each run of one kind (the
    # replica's own parts apart from the index objects copied after them).
    kinds = [
        f"{step} (own part)" if name in own else step
        for step, name in zip(probe_backend.steps, probe_backend.names, strict=True)
    ]
    for fail_at in crash_points(kinds):
        path = tmp_path / f"crash{fail_at}"
        shutil.copytree(saved, path)
        report = replicate(open_fresh(first)[0], "copy", CrashingBackend(LocalBackend(path), fail_at), lambda _m: None)
        assert not report.ok and "injected crash" in (report.error or ""), (fail_at, report.error)
        assert_whole(lambda p: open_fresh(p)[0], path, expected, fail_at)
        for lock in (path / "locks").iterdir():  # what `phx unlock` does
            lock.unlink()
        report = replicate(open_fresh(first)[0], "copy", LocalBackend(path), lambda _m: None)
        assert report.ok, (fail_at, report.error)
        assert_whole(lambda p: open_fresh(p)[0], path, expected, fail_at)
        shutil.rmtree(path)


def test_the_write_only_conversion_writes_parts_and_a_crash_between_its_steps_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`phx key add --write-only` replaces every index object by the index under its cover; a crash
    at any of its writes or deletes, then the command run again, loses nothing."""
    monkeypatch.setattr(repository_module, "INDEX_PART_BLOBS", 40)
    src = tmp_path / "src"
    repo = Repository.init(LocalBackend(src), lambda m: keys.wrap_passphrase(m, "pw", kdf_params=FAST), True)
    backups(repo, 0, 40)  # 120 blobs in 40 objects
    repo.close()
    identity = pyrage.x25519.Identity.generate()
    recipients = (str(identity.to_public()),)
    creds = keys.Credentials(passphrase="pw", age_identities=(str(identity),))

    def opened(path: Path, fail_at: int | None = None) -> tuple[Repository, CrashingBackend]:
        backend = CrashingBackend(LocalBackend(path), fail_at)
        return Repository.open(backend, creds), backend

    expected = contents(opened(src)[0])
    before = index_objects(src)
    probe = tmp_path / "probe"
    shutil.copytree(src, probe)
    repo, backend = opened(probe)
    done = convert(repo, recipients, tmp_path / "writer-probe")
    assert done.index_rewritten == 40
    left = index_objects(probe)
    assert not set(left) & set(before), "every old object goes"
    sizes = part_sizes(opened(probe)[0], left)
    assert len(left) >= 3 and all(b <= 40 for b, _s in sizes) and sum(b for b, _s in sizes) == 120, sizes
    assert contents(opened(probe)[0]) == expected
    # Each kind of write or delete: the first, a middle and the last of each run of one kind (the
    # parts, the old objects' deletes, ...).
    for fail_at in crash_points(backend.steps):
        path = tmp_path / f"crash{fail_at}"
        shutil.copytree(src, path)
        crashing, _ = opened(path, fail_at)
        with pytest.raises(StorageError, match="injected crash"):
            convert(crashing, recipients, tmp_path / f"writer{fail_at}")
        assert_whole(lambda p: opened(p)[0], path, expected, fail_at)
        convert(opened(path)[0], recipients, tmp_path / f"writer{fail_at}")  # run again: finishes
        assert_whole(lambda p: opened(p)[0], path, expected, fail_at)
        sizes = part_sizes(opened(path)[0], index_objects(path))
        assert all(b <= 40 for b, _s in sizes) and sum(b for b, _s in sizes) == 120, (fail_at, sizes)
        shutil.rmtree(path)
