"""Index objects do not pile up with history: a prune merges them once more than MAX_INDEX_OBJECTS
are live, even when it has nothing else to do (repo/prune.py), safely at every step; and the
index in memory costs a bounded number of bytes per blob, whatever the number of objects."""

from __future__ import annotations

import os
import shutil
import tracemalloc
from pathlib import Path

import pytest
from test_retention_prune import (
    T0,
    CrashingBackend,
    age_packs,
    contents,
    crash_points,
    open_fresh,
    run_prune,
    take_snapshot,
)

from phoenix_backup.errors import StorageError
from phoenix_backup.repo import keys
from phoenix_backup.repo.checker import verify_repository
from phoenix_backup.repo.crypto import BlobType, Compression
from phoenix_backup.repo.index import Index
from phoenix_backup.repo.pack import PackEntry
from phoenix_backup.repo.prune import LEFTOVER_MIN_AGE, MAX_INDEX_OBJECTS, PruneState, TargetPrune, prune_repository
from phoenix_backup.repo.repair import rebuild_index
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.local import LocalBackend

KB = 1024


def index_objects(path: Path) -> list[str]:
    return sorted(i.name for i in LocalBackend(path).list("index/"))


def backups(repo: Repository, first: int, count: int) -> None:
    """`count` backups, each of one new small file (one index object each)."""
    for day in range(first, first + count):
        take_snapshot(
            repo, {f"day{day}.txt": os.urandom(2 * KB)}, f"2026-03-01T02:{day % 60:02d}:{day // 60:02d}+00:00"
        )


@pytest.fixture(scope="module")
def piled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    """A repository of MAX_INDEX_OBJECTS + 2 backups and as many index objects, nothing to prune."""
    root = tmp_path_factory.mktemp("piled") / "repo"
    repo = Repository.init(LocalBackend(root), keys.wrap_none, False)
    backups(repo, 0, MAX_INDEX_OBJECTS + 2)
    repo.close()
    age_packs(root, T0 - 7200)
    assert len(index_objects(root)) == MAX_INDEX_OBJECTS + 2
    return root, contents(open_fresh(root)[0])


def test_index_objects_stay_bounded_over_many_backups_and_daily_prunes(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    repo = Repository.init(LocalBackend(path), keys.wrap_none, False)
    repo.close()
    state = PruneState(tmp_path / "prune.json")
    for day in range(8):  # ten backups a day, a prune after each day's backups
        repo = Repository.open(LocalBackend(path), keys.Credentials(passphrase=None))
        backups(repo, 10 * day, 10)
        repo.close()
        age_packs(path, T0 + day * 86400 - 7200)
        report, _ = run_prune(path, state, T0 + day * 86400)
        assert report.deleted_packs == report.repacked_packs == 0, "nothing to free: only the index is merged"
        assert len(index_objects(path)) <= MAX_INDEX_OBJECTS, f"day {day}: {len(index_objects(path))} index objects"
    expected = contents(open_fresh(path)[0])
    assert len(expected) == 80 and all(len(files) == 1 for files in expected.values())
    result = verify_repository(open_fresh(path)[0], read_data=True)
    assert result.ok and not result.notices, result.to_json()


def test_a_prune_merges_only_past_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    repo = Repository.init(LocalBackend(path), keys.wrap_none, False)
    backups(repo, 0, MAX_INDEX_OBJECTS)
    repo.close()
    age_packs(path, T0 - 7200)
    report, steps = run_prune(path, PruneState(tmp_path / "p.json"), T0)
    assert report.indexes_replaced == 0 and len(steps) == 2, "at the bound: its lock, written and removed"
    assert len(index_objects(path)) == MAX_INDEX_OBJECTS


def crashed_and_recovered(src: Path, tmp_path: Path, fail_at: int, expected: dict[str, dict[str, str]]) -> Path:
    """A copy of `src` whose prune crashed at mutation `fail_at` (every snapshot still reads back,
    the repository verifies), then pruned again later; returns it."""
    path = tmp_path / f"crash{fail_at}"
    shutil.copytree(src, path)
    state = PruneState(tmp_path / f"crash{fail_at}.json")
    with pytest.raises(StorageError, match="injected crash"):
        run_prune(path, state, T0, fail_at=fail_at)
    for lock in (path / "locks").iterdir():  # what `phx unlock` does
        lock.unlink()
    assert contents(open_fresh(path)[0]) == expected, f"a snapshot lost after a crash at mutation {fail_at}"
    result = verify_repository(open_fresh(path)[0], read_data=True)
    assert result.ok, (fail_at, result.to_json())
    run_prune(path, state, T0 + LEFTOVER_MIN_AGE + 1)  # the next prune finishes the merge
    assert contents(open_fresh(path)[0]) == expected, f"a snapshot lost after recovering from mutation {fail_at}"
    result = verify_repository(open_fresh(path)[0], read_data=True)
    assert result.ok and not result.notices, (fail_at, result.to_json())
    return path


def test_a_crash_at_every_step_of_the_merge_loses_nothing(piled, tmp_path: Path) -> None:
    src, expected = piled
    probe = tmp_path / "probe"
    shutil.copytree(src, probe)
    report, steps = run_prune(probe, PruneState(tmp_path / "probe.json"), T0)
    assert report.indexes_replaced == MAX_INDEX_OBJECTS + 2 and len(index_objects(probe)) == 1
    # Lock, the new index, each old index object, unlock.
    assert steps == ["write locks", "write index", *["delete index"] * (MAX_INDEX_OBJECTS + 2), "delete locks"]
    # Each kind of step, the first, the middle and the last old object's delete (every one with
    # PHX_TEST_HEAVY=1).
    for fail_at in crash_points(steps):
        path = crashed_and_recovered(src, tmp_path, fail_at, expected)
        assert len(index_objects(path)) == 1, fail_at
        shutil.rmtree(path)


class BackupDuringMerge(CrashingBackend):
    """When prune writes its merged index, a backup that did not see prune's lock has just written
    a pack and its index object (its snapshot not committed yet)."""

    def __init__(self, inner: LocalBackend) -> None:
        super().__init__(inner, None)
        self.concurrent: list[str] = []
        self.blob = b""

    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        if name.startswith("index/") and not self.concurrent:
            before = set(index_objects(Path(self.inner.location)))
            other = Repository.open(LocalBackend(Path(self.inner.location)), keys.Credentials(passphrase=None))
            self.blob, _ = other.save_blob(BlobType.DATA, os.urandom(4 * KB))
            other.flush()
            other.close()
            self.concurrent = sorted(set(index_objects(Path(self.inner.location))) - before)
        super().write(name, data, exclusive=exclusive, cold=cold)


def test_an_index_object_written_during_the_merge_survives_it(piled, tmp_path: Path) -> None:
    src, expected = piled
    path = tmp_path / "repo"
    shutil.copytree(src, path)
    backend = BackupDuringMerge(LocalBackend(path))
    repo = Repository.open(backend, keys.Credentials(passphrase=None))
    report = prune_repository(repo, TargetPrune("local"), dry_run=False, state=PruneState(tmp_path / "p.json"), now=T0)
    assert report.indexes_replaced == MAX_INDEX_OBJECTS + 2
    assert len(backend.concurrent) == 1, "the concurrent backup wrote its index object"
    left = index_objects(path)
    assert len(left) == 2 and backend.concurrent[0] in left, left
    fresh = open_fresh(path)[0]
    fresh.load_index()
    assert fresh.index.has(backend.blob), "the concurrent backup's blob is still indexed"
    assert contents(open_fresh(path)[0]) == expected
    result = verify_repository(open_fresh(path)[0], read_data=True)
    assert result.ok and not result.notices, result.to_json()


def test_the_index_in_memory_costs_a_bounded_number_of_bytes_per_blob(tmp_path: Path) -> None:
    """What loading an index of 20,000 blobs allocates at its peak, and keeps, per blob, whether
    they come in one index object or in forty (here 135 and at most 181 bytes; the old form: 210 and 342)."""
    blobs = 20_000
    for objects in (1, 40):
        path = tmp_path / f"repo{objects}"
        repo = Repository.init(LocalBackend(path), keys.wrap_none, False)
        ids = [os.urandom(32) for _ in range(blobs)]
        per = blobs // objects
        for n in range(objects):
            chunk = ids[n * per : (n + 1) * per]
            entries = [PackEntry(BlobType.DATA, Compression.ZSTD, b, i * 100, 100, 200) for i, b in enumerate(chunk)]
            repo.write_index({f"{n:064x}": entries}, [])
        repo.close()
        fresh = open_fresh(path)[0]
        tracemalloc.start()
        fresh.load_index()
        kept, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(fresh.index) == blobs
        assert kept / blobs < 170, f"{objects} object(s): {kept / blobs:.0f} bytes kept per blob"
        assert peak / blobs < 220, f"{objects} object(s): {peak / blobs:.0f} bytes at the peak per blob"


def test_a_large_merge_is_written_in_parts_and_a_crash_between_them_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts of at most INDEX_PART_BLOBS blobs (40 here), only the last superseding the old objects:
    a crash before it leaves the old ones live and complete, the parts written so far duplicates."""
    import phoenix_backup.repo.repository as repository_module

    monkeypatch.setattr(repository_module, "INDEX_PART_BLOBS", 40)
    src = tmp_path / "src"
    repo = Repository.init(LocalBackend(src), keys.wrap_none, False)
    backups(repo, 0, 40)  # a file blob and two trees each: 120 blobs; 40 objects > 32 + 120 / 40
    repo.close()
    age_packs(src, T0 - 7200)
    expected = contents(open_fresh(src)[0])
    loaded = open_fresh(src)[0]
    loaded.load_index()
    blobs = len(loaded.index)
    probe = tmp_path / "probe"
    shutil.copytree(src, probe)
    report, steps = run_prune(probe, PruneState(tmp_path / "probe.json"), T0)
    assert report.indexes_replaced == 40
    parts = [open_fresh(probe)[0].read_index_object(name) for name in index_objects(probe)]
    # A pack's entries are never split: parts of 39 (a tree pack of two entries does not fit).
    assert len(parts) >= 3 and all(sum(map(len, packs.values())) <= 40 for packs, _sup in parts)
    assert sorted(len(sup) for _packs, sup in parts) == [0] * (len(parts) - 1) + [40], "only the last supersedes"
    # Lock, the parts, the old objects, unlock.
    assert steps == ["write locks", *["write index"] * len(parts), *["delete index"] * 40, "delete locks"]
    # Each kind of step: the first, a middle and the last part and old object (every one with
    # PHX_TEST_HEAVY=1).
    for fail_at in crash_points(steps):
        path = crashed_and_recovered(src, tmp_path, fail_at, expected)
        # Merged again, in parts (how many depends on the packs' order), every blob listed once.
        left = [open_fresh(path)[0].read_index_object(name) for name in index_objects(path)]
        sizes = [sum(map(len, packs.values())) for packs, _sup in left]
        assert max(sizes) <= 40 and sum(sizes) == blobs and len(left) <= len(parts) + 1, (fail_at, sizes)
        shutil.rmtree(path)


def test_a_merge_is_not_done_again_by_the_next_prune_with_nothing_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack's entries are never split between parts, so packs of a little more than half a part
    each fill one part apiece: the bound counts the parts a merge would write, not the blobs
    divided by a part's size, or every later prune merges the index again (the whole index
    rewritten each day). Parts of 5 blobs here; each backup writes a data pack of 4 blobs and a
    tree pack of 2."""
    import phoenix_backup.repo.repository as repository_module

    monkeypatch.setattr(repository_module, "INDEX_PART_BLOBS", 5)
    path = tmp_path / "repo"
    repo = Repository.init(LocalBackend(path), keys.wrap_none, False)
    for day in range(100):
        files = {f"{name}{day}.txt": os.urandom(KB) for name in "abcd"}
        take_snapshot(repo, files, f"2026-03-01T02:{day % 60:02d}:{day // 60:02d}+00:00")
    repo.close()
    age_packs(path, T0 - 7200)
    forgetting = open_fresh(path)[0]
    forgetting.delete_snapshot(sorted(s.id for s in forgetting.list_snapshots())[0])
    state = PruneState(tmp_path / "prune.json")
    report, _ = run_prune(path, state, T0)
    # Each backup's index in two parts too (6 blobs, parts of 5): 200 objects.
    assert report.deleted_packs > 0 and report.indexes_replaced == 200, "the forgotten snapshot's packs go"
    merged = index_objects(path)
    expected = contents(open_fresh(path)[0])
    for day in (1, 2):  # the next days' prunes: nothing forgotten, nothing to free
        report, steps = run_prune(path, state, T0 + day * 86400)
        assert report.indexes_replaced == 0 and len(steps) == 2, f"day {day}: merged again ({report.indexes_replaced})"
        assert index_objects(path) == merged
    assert contents(open_fresh(path)[0]) == expected


@pytest.mark.parametrize("bad", [-1, -(1 << 40), 1 << 32])
def test_a_location_one_int_cannot_hold_is_refused_not_read_as_another(bad: int) -> None:
    """Offsets and lengths are 32 bits in one int with the pack number above them: a negative one
    would turn the whole location into another pack's, type and compression."""
    index = Index()
    index.add_pack("a" * 64, [PackEntry(BlobType.DATA, Compression.NONE, b"x" * 32, 0, 10, 10)])
    for field in range(3):
        values = [0, 10, 10]
        values[field] = bad
        with pytest.raises(ValueError, match="beyond 32 bits"):
            index.add_pack("b" * 64, [PackEntry(BlobType.DATA, Compression.NONE, b"y" * 32, *values)])
    assert index.locations(b"y" * 32) == [] and [loc.pack_id for loc in index.locations(b"x" * 32)] == ["a" * 64]


def test_repair_index_after_a_half_merge_writes_parts_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`phx repair index` writes the index it rebuilds in parts as a merge does (one object of every
    blob would be past what loading one should cost, and past the 50 MB a Git host takes), after
    a merge that stopped between its parts. Parts of 40 blobs here."""
    import phoenix_backup.repo.repository as repository_module

    monkeypatch.setattr(repository_module, "INDEX_PART_BLOBS", 40)
    path = tmp_path / "repo"
    repo = Repository.init(LocalBackend(path), keys.wrap_none, False)
    backups(repo, 0, 40)  # 120 blobs
    repo.close()
    age_packs(path, T0 - 7200)
    expected = contents(open_fresh(path)[0])
    with pytest.raises(StorageError, match="injected crash"):
        run_prune(path, PruneState(tmp_path / "p.json"), T0, fail_at=3)  # its lock, one part written
    for lock in (path / "locks").iterdir():
        lock.unlink()
    assert len(index_objects(path)) == 41
    report = rebuild_index(open_fresh(path)[0])
    assert report.replaced == 41 and report.blobs == 120
    repo = open_fresh(path)[0]
    sizes = [sum(map(len, repo.read_index_object(name)[0].values())) for name in index_objects(path)]
    assert len(sizes) >= 3 and max(sizes) <= 40 and sum(sizes) == 120, sizes
    assert contents(open_fresh(path)[0]) == expected
    result = verify_repository(open_fresh(path)[0], read_data=True)
    assert result.ok and not result.notices, result.to_json()
