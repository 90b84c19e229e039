"""Prune on a real local repository: what it deletes, what it repacks, the leftovers it keeps while
they are young, and crash safety: a crash injected before every single write or delete prune
makes never loses a blob a remaining snapshot needs, and the next prune finishes the job.

The crash is a wrapper around the real local backend that fails the Nth mutating call and every
call after it (a process that died there does nothing more)."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
from test_repository import plant_lock

from phoenix_backup.errors import RepositoryError, StorageError
from phoenix_backup.repo import keys
from phoenix_backup.repo.checker import verify_repository
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.pack import PackEntry, blob_aad, pack_name
from phoenix_backup.repo.prune import (
    LEFTOVER_MIN_AGE,
    MAX_UNUSED_FRACTION,
    REPACK_MOSTLY_UNUSED,
    PruneState,
    TargetPrune,
    prune_due,
    prune_repository,
    state_key,
)
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.snapshot import Snapshot, SnapshotStats
from phoenix_backup.repo.tree import Extent, Node
from phoenix_backup.storage.base import Backend, ObjectInfo
from phoenix_backup.storage.local import LocalBackend

KB = 1024
T0 = 1_800_000_000.0
HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"


class CrashingBackend(Backend):
    """The real local backend, except that the `fail_at`-th write or delete and all later ones fail."""

    def __init__(self, inner: LocalBackend, fail_at: int | None) -> None:
        self.inner = inner
        self.fail_at = fail_at
        self.mutations = 0
        self.steps: list[str] = []  # each mutation's kind: `write index`, `delete locks`, ...
        self.names: list[str] = []  # and the object it wrote or deleted

    def _mutate(self, op: str, name: str) -> None:
        self.mutations += 1
        self.steps.append(f"{op} {name.split('/')[0]}")
        self.names.append(name)
        if self.fail_at is not None and self.mutations >= self.fail_at:
            raise StorageError(f"injected crash at mutation {self.mutations}")

    @property
    def location(self) -> str:
        return self.inner.location

    def exists(self) -> bool:
        return self.inner.exists()

    def create(self, slots: Mapping[str, bytes] | None = None) -> None:
        self.inner.create(slots)

    def read(self, name: str) -> bytes:
        return self.inner.read(name)

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        return self.inner.read_range(name, offset, length)

    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        self._mutate("write", name)
        self.inner.write(name, data, exclusive=exclusive)

    def delete(self, name: str) -> None:
        self._mutate("delete", name)
        self.inner.delete(name)

    def stat(self, name: str) -> ObjectInfo | None:
        return self.inner.stat(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def list_temporary(self) -> Iterator[ObjectInfo]:
        return self.inner.list_temporary()

    def delete_temporary(self, name: str) -> None:
        self.inner.delete_temporary(name)


def file_node(repo: Repository, name: str, data: bytes) -> Node:
    bid, _ = repo.save_blob(BlobType.DATA, data)
    return Node(name, "file", size=len(data), content=[Extent(bid, 0, len(data))], sha256=sha(data))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def take_snapshot(repo: Repository, files: dict[str, bytes], when: str) -> str:
    nodes = [file_node(repo, name, data) for name, data in sorted(files.items())]
    sub, _ = repo.save_tree(nodes)
    root, _ = repo.save_tree([Node("workspace", "dir", mode=0o755, subtree=sub)])
    repo.flush()
    snap = Snapshot(
        time=when,
        name=when[:16],
        host="h",
        username="u",
        scope="full",
        tags=(),
        tree=root,
        parent=None,
        sources={},
        databases=(),
        stats=SnapshotStats(files=len(files)),
    )
    return repo.save_snapshot(snap)


def contents(repo: Repository) -> dict[str, dict[str, str]]:
    """Per snapshot id, the SHA-256 of every file read back through the index (raises if any
    blob is missing or damaged)."""
    out: dict[str, dict[str, str]] = {}
    repo.load_index()
    for snap in repo.list_snapshots():
        files: dict[str, str] = {}
        for top in repo.load_tree(snap.tree):
            assert top.subtree is not None
            for node in repo.load_tree(top.subtree):
                data = b"".join(
                    repo.load_blob(BlobType.DATA, e.blob)[e.offset : e.offset + e.length] for e in node.content
                )
                assert sha(data) == node.sha256, f"{node.name} in {snap.id[:8]} reads back wrong"
                files[node.name] = sha(data)
        out[snap.id] = files
    return out


def open_fresh(path: Path, fail_at: int | None = None) -> tuple[Repository, CrashingBackend]:
    backend = CrashingBackend(LocalBackend(path), fail_at)
    return Repository.open(backend, keys.Credentials(passphrase=None)), backend


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]], str]:
    """A repository where prune has everything to do: a forgotten snapshot's tree pack to delete,
    a data pack mostly used by it to repack, and an unindexed leftover pack."""
    root = tmp_path_factory.mktemp("prune") / "repo"
    repo = Repository.init(LocalBackend(root), keys.wrap_none, False)
    rnd = os.urandom
    a, b, c, d = rnd(300 * KB), rnd(500 * KB), rnd(100 * KB), rnd(200 * KB)
    old = take_snapshot(repo, {"a.bin": a, "b.bin": b}, "2026-03-01T02:00:00+00:00")
    take_snapshot(repo, {"a.bin": a, "c.bin": c}, "2026-03-02T02:00:00+00:00")
    take_snapshot(repo, {"d.bin": d}, "2026-03-03T02:00:00+00:00")
    # A leftover of a crashed backup: a sealed blob in a pack that no index lists.
    leftover_data = rnd(50 * KB)
    bid = repo.ids.blob_id(BlobType.DATA, leftover_data)
    method, payload = repo.compressor.compress(leftover_data)
    sealed = repo.sealer.seal(payload, blob_aad(BlobType.DATA, bid))
    (leftover,) = repo.repack([(PackEntry(BlobType.DATA, method, bid, 0, len(sealed), len(leftover_data)), sealed)])
    repo.delete_snapshot(old)  # what forget does
    repo.close()
    # Prune runs at T0: the backups' packs were written two hours before, the leftover a minute.
    age_packs(root, T0 - 7200)
    os.utime(root / pack_name(leftover), (T0 - 60, T0 - 60))
    expected = contents(open_fresh(root)[0])
    assert len(expected) == 2
    return root, expected, old


def run_prune(path: Path, state: PruneState, now: float, fail_at: int | None = None) -> tuple[TargetPrune, list[str]]:
    """Prune at `now`, crashing at mutation `fail_at`: the report and the kind of each mutation."""
    repo, backend = open_fresh(path, fail_at)
    report = prune_repository(repo, TargetPrune("local"), dry_run=False, state=state, now=now)
    return report, backend.steps


def crash_points(steps: list[str]) -> list[int]:
    """The mutations (1-based) to crash at, from a run's `steps` (CrashingBackend.steps): every one
    with PHX_TEST_HEAVY=1; by default the first, the middle and the last of each run of steps of
    one kind (`write index` parts, `delete index` of the old objects, ...), so that a crash still
    lands at every kind of step, at each change from one kind to the next, and inside every run."""
    if HEAVY:
        return list(range(1, len(steps) + 1))
    points: set[int] = set()
    start = 0
    for end in range(1, len(steps) + 1):
        if end == len(steps) or steps[end] != steps[start]:
            points |= {start + 1, (start + 1 + end) // 2, end}
            start = end
    return sorted(points)


def copy_with_leftover(src: Path, path: Path, now: float, age: float) -> str:
    """A copy of the pristine repository at `path`, every pack two hours old but the one pack no
    index object names (a run's leftover), `age` seconds old; that pack's name."""
    shutil.copytree(src, path)
    age_packs(path, now - 7200)
    repo, _backend = open_fresh(path)
    repo.load_index()
    leftover = {i.name for i in LocalBackend(path).list("data/")} - {pack_name(p) for p in repo.index.pack_ids()}
    repo.close()
    assert len(leftover) == 1
    (name,) = leftover
    os.utime(path / name, (now - age, now - age))
    return name


def test_prune_deletes_repacks_and_waits_for_young_leftovers(pristine, tmp_path: Path) -> None:
    src, expected, _old = pristine
    path = tmp_path / "repo"
    shutil.copytree(src, path)
    state = PruneState(tmp_path / "prune.json")
    before = {i.name: i.size for i in LocalBackend(path).list("data/")}

    report, _ = run_prune(path, state, T0)
    assert report.deleted_packs == 1, "the forgotten snapshot's tree pack"
    assert report.repacked_packs == 1, "a.bin + b.bin's pack is mostly b.bin, now unused"
    assert report.leftover_packs == 0 and report.young_leftovers == 1, "the leftover is too young to delete"
    assert report.bytes_freed > 500 * KB
    assert contents(open_fresh(path)[0]) == expected
    after = {i.name: i.size for i in LocalBackend(path).list("data/")}
    assert sum(after.values()) < sum(before.values()) - 450 * KB
    assert len(list(LocalBackend(path).list("index/"))) == 1, "one index replaces them all"

    # Once older than the lock stale age, the leftover goes.
    report, _ = run_prune(path, state, T0 + LEFTOVER_MIN_AGE + 1)
    assert report.leftover_packs == 1 and report.young_leftovers == 0
    assert report.deleted_packs == report.repacked_packs == 0
    assert contents(open_fresh(path)[0]) == expected
    result = verify_repository(open_fresh(path)[0], read_data=True)
    assert result.ok and not result.notices, result.to_json()


def test_a_prune_on_a_machine_whose_clock_is_ahead_keeps_young_packs(
    pristine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store keeps the right time; the machine that prunes is an hour ahead. A pack written a
    minute ago by the store's clock looked an hour old by the pruning machine's and was deleted
    (a backup whose lock was lost may still be about to commit it). Its age is read on the
    store's clock now."""
    src, expected, _old = pristine
    path = tmp_path / "repo"
    real = time.time
    name = copy_with_leftover(src, path, real(), 60)
    monkeypatch.setattr(time, "time", lambda: real() + 3600)
    report, _ = run_prune(path, PruneState(tmp_path / "prune.json"), time.time())
    assert report.leftover_packs == 0 and report.young_leftovers == 1, "written a minute ago: kept"
    assert (path / name).exists()
    assert report.deleted_packs == 1 and report.repacked_packs == 1, "the old packs are freed as ever"
    assert contents(open_fresh(path)[0]) == expected


def test_a_dry_run_beside_a_running_backup_keeps_the_packs_written_since_its_lock(pristine, tmp_path: Path) -> None:
    """A backup on another host has run for two hours (its lock taken then, refreshed now). A pack
    no index names yet, written 40 minutes ago (past the 30-minute age), is that backup's, not a
    leftover: written after the oldest other lock present was taken, it is kept. A dry run (a
    shared lock, beside the backup) says so."""
    src, _expected, _old = pristine
    path = tmp_path / "repo"
    now = time.time()
    name = copy_with_leftover(src, path, now, 2400)
    repo, _backend = open_fresh(path)
    plant_lock(repo, host="elsewhere", created=now - 7200, time=now)
    report = prune_repository(repo, TargetPrune("local"), dry_run=True, state=PruneState(tmp_path / "p.json"), now=now)
    assert report.leftover_packs == 0 and report.young_leftovers == 1, "the running backup's pack: kept"
    repo.close()
    assert (path / name).exists()


def test_a_prune_on_a_machine_whose_clock_is_ahead_keeps_another_machines_temporary_file(
    pristine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repository shared over NFS: another machine is writing a pack (its `.tmp-` file, last
    written a minute ago by the store's clock); the machine that prunes is an hour ahead. By its
    clock the file was an hour old and prune deleted it under the writer. Its age is read on the
    store's clock now, as a pack's is; a temporary file old by both clocks still goes."""
    src, expected, _old = pristine
    path = tmp_path / "repo"
    shutil.copytree(src, path)
    real = time.time
    (path / "data" / "zz").mkdir()
    live = path / "data" / "zz" / ".tmp-being-written"
    live.write_bytes(b"half a pack, still growing")
    os.utime(live, (real() - 60, real() - 60))
    dead = path / "data" / "zz" / ".tmp-interrupted"
    dead.write_bytes(b"half a pack")
    os.utime(dead, (real() - 7200, real() - 7200))
    monkeypatch.setattr(time, "time", lambda: real() + 3600)
    report, _ = run_prune(path, PruneState(tmp_path / "prune.json"), time.time())
    assert live.read_bytes() == b"half a pack, still growing", "written a minute ago by the store's clock: kept"
    assert not dead.exists() and report.temporary_files == 1
    assert contents(open_fresh(path)[0]) == expected


def test_a_store_time_planted_on_prunes_own_lock_never_ages_young_packs(pristine, tmp_path: Path) -> None:
    """Whoever may write to the storage can set an object's time (`touch -d`): the prune's own
    lock, dated a year ahead, made the store's clock look a year ahead of ours, every pack a year
    older, and prune deleted a leftover pack written a minute ago. The store's clock now only
    makes packs younger than our clock says, never older: both clocks must agree a pack is old."""
    src, expected, _old = pristine
    path = tmp_path / "repo"
    now = time.time()
    name = copy_with_leftover(src, path, now, 60)
    repo, _backend = open_fresh(path)
    with repo.lock(exclusive=True, command="prune") as held:
        year_ahead = now + 365 * 86400
        os.utime(path / held.name, (year_ahead, year_ahead))
        report = prune_repository(
            repo, TargetPrune("local"), dry_run=False, state=PruneState(tmp_path / "p.json"), now=now, locked=True
        )
    assert report.leftover_packs == 0 and report.young_leftovers == 1, "written a minute ago: kept"
    assert (path / name).exists()
    assert report.deleted_packs == 1 and report.repacked_packs == 1, "the old packs are freed as ever"
    assert contents(open_fresh(path)[0]) == expected


def with_young_leftover(pristine, tmp_path: Path) -> tuple[Path, Repository, str]:
    """A copy of the pristine repository whose packs are two hours old, but for its leftover pack
    (no index lists it), written 10 minutes ago; the repository opened, its index loaded."""
    src, _expected, _old = pristine
    path = tmp_path / "repo"
    shutil.copytree(src, path)
    age_packs(path, time.time() - 7200)
    repo, _backend = open_fresh(path)
    repo.load_index()
    (name,) = {i.name for i in LocalBackend(path).list("data/")} - {pack_name(p) for p in repo.index.pack_ids()}
    os.utime(path / name, (time.time() - 600, time.time() - 600))
    return path, repo, name


def test_our_clock_set_forward_after_prunes_lock_was_written_never_ages_young_packs(
    pristine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prune reads the store's clock from the time the store gives its own lock, less our time
    when it was written. Our clock set forward an hour after that (a step of a wrong time source;
    a backup's retention prunes under a lock last refreshed up to 5 minutes before) made the store
    look an hour behind ours, which it was not, and prune deleted a leftover pack written 10
    minutes ago. `wrote` is now read on our clock as it is set when prune asks."""
    real = time.time
    path, repo, name = with_young_leftover(pristine, tmp_path)
    with repo.lock(exclusive=True, command="prune"):
        monkeypatch.setattr(time, "time", lambda: real() + 3600)
        report = prune_repository(
            repo,
            TargetPrune("local"),
            dry_run=False,
            state=PruneState(tmp_path / "p.json"),
            now=time.time(),
            locked=True,
        )
        monkeypatch.setattr(time, "time", real)
    assert (path / name).exists(), "a pack written 10 minutes ago was deleted"
    assert report.leftover_packs == 0 and report.young_leftovers == 1


def test_our_clock_set_back_during_prune_never_ages_young_packs(
    pristine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a machine an hour ahead, prune reads our clock and writes its lock; our clock is set
    right (NTP) before prune measures the store's clock. The measurement, on the clock as set now,
    met the reading taken before, an hour ahead: every pack looked an hour older, and prune deleted
    a leftover pack written 10 minutes ago. Objects are now aged on our clock as it reads when the
    store's clock is measured, if earlier."""
    real = time.time
    path, repo, name = with_young_leftover(pristine, tmp_path)
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # an hour ahead
    now = time.time()
    with repo.lock(exclusive=True, command="prune"):
        monkeypatch.setattr(time, "time", real)  # set right
        report = prune_repository(
            repo, TargetPrune("local"), dry_run=False, state=PruneState(tmp_path / "p.json"), now=now, locked=True
        )
    assert (path / name).exists(), "a pack written 10 minutes ago was deleted"
    assert report.leftover_packs == 0 and report.young_leftovers == 1


def test_prune_dry_run_changes_nothing(pristine, tmp_path: Path) -> None:
    src, _expected, _old = pristine
    path = tmp_path / "repo"
    shutil.copytree(src, path)
    listing = sorted((p.relative_to(path), p.stat().st_size) for p in path.rglob("*") if p.is_file())
    repo, backend = open_fresh(path)
    report = prune_repository(repo, TargetPrune("local"), dry_run=True, state=PruneState(tmp_path / "p.json"), now=T0)
    assert report.deleted_packs == 1 and report.repacked_packs == 1 and report.bytes_freed > 500 * KB
    assert sorted((p.relative_to(path), p.stat().st_size) for p in path.rglob("*") if p.is_file()) == listing
    assert backend.mutations == 2  # its shared lock, written and removed


def age_packs(path: Path, when: float) -> None:
    for pack in (path / "data").rglob("*"):
        if pack.is_file():
            os.utime(pack, (when, when))


def primed(path: Path, file: Path) -> PruneState:
    """The leftover pack written long ago too, so a prune deletes it and every kind of mutation
    happens."""
    age_packs(path, T0 - 7200)
    return PruneState(file)


def test_a_crash_at_any_point_loses_nothing(pristine, tmp_path: Path) -> None:
    src, expected, _old = pristine
    probe = tmp_path / "probe"
    shutil.copytree(src, probe)
    report, steps = run_prune(probe, primed(probe, tmp_path / "probe.json"), T0)
    total = len(steps)
    assert report.leftover_packs == 1 and report.repacked_packs == 1 and report.deleted_packs == 1
    # Lock, new pack, new index, 3 old index objects, tree pack, repacked pack, leftover, unlock.
    assert total == 10

    for fail_at in range(1, total + 1):
        path = tmp_path / f"crash{fail_at}"
        shutil.copytree(src, path)
        state = primed(path, tmp_path / f"crash{fail_at}.json")
        with pytest.raises(StorageError, match="injected crash"):
            run_prune(path, state, T0, fail_at=fail_at)
        # A crashed prune leaves its lock behind: `phx unlock` removes it.
        for lock in (path / "locks").iterdir():
            lock.unlink()
        assert contents(open_fresh(path)[0]) == expected, f"data lost after a crash at mutation {fail_at}"
        # Later prunes finish the job; packs the crash left unindexed go once they are old enough.
        run_prune(path, state, T0 + LEFTOVER_MIN_AGE + 1)
        run_prune(path, state, T0 + 2 * LEFTOVER_MIN_AGE + 2)
        assert contents(open_fresh(path)[0]) == expected, f"data lost after recovering from mutation {fail_at}"
        result = verify_repository(open_fresh(path)[0], read_data=True)
        assert result.ok and not result.notices, (fail_at, result.to_json())
        assert len(list(LocalBackend(path).list("index/"))) == 1
        shutil.rmtree(path)


def test_prune_refuses_when_a_snapshot_cannot_be_read(pristine, tmp_path: Path) -> None:
    src, _expected, _old = pristine
    path = tmp_path / "repo"
    shutil.copytree(src, path)
    victim = sorted((path / "snapshots").iterdir())[0]
    victim.chmod(0o600)
    victim.write_bytes(b"garbage")
    listing = sorted(p.name for p in path.rglob("*") if p.is_file() and "locks" not in p.parts)
    with pytest.raises(RepositoryError, match="refuses"):
        run_prune(path, PruneState(tmp_path / "p.json"), T0)
    assert sorted(p.name for p in path.rglob("*") if p.is_file() and "locks" not in p.parts) == listing


def test_thresholds_are_what_the_docs_say() -> None:
    assert REPACK_MOSTLY_UNUSED == 0.5
    assert MAX_UNUSED_FRACTION == 0.10
    assert LEFTOVER_MIN_AGE == 30 * 60


# ------------------------------------------------------------------------------------------
# what verify says of unindexed packs (issue 15, failure 7)


def unindexed_notices(path: Path) -> dict[str, str]:
    result = verify_repository(open_fresh(path)[0])
    assert result.ok, result.to_json()
    return {n.split()[0]: n for n in result.notices if "is not in the index" in n}


def crashed_prune(src: Path, path: Path, fail_at: int) -> None:
    shutil.copytree(src, path)
    with pytest.raises(StorageError, match="injected crash"):
        run_prune(path, primed(path, path.with_suffix(".json")), T0, fail_at=fail_at)
    for lock in (path / "locks").iterdir():
        lock.unlink()


def test_verify_says_an_interrupted_prune_left_its_repacked_pack(pristine, tmp_path: Path) -> None:
    """Killed after writing its new pack, before its index: the pack's origin record says prune."""
    src, _expected, _old = pristine
    before = {i.name for i in LocalBackend(src).list("data/")}
    path = tmp_path / "repo"
    crashed_prune(src, path, fail_at=3)  # lock, new pack, then the index write fails
    (new,) = {i.name for i in LocalBackend(path).list("data/")} - before
    notices = unindexed_notices(path)
    assert "written by a prune (repacked blobs)" in notices[new] and "interrupted" in notices[new], notices
    assert "backup" not in notices[new]


def test_verify_says_an_interrupted_prune_left_the_packs_it_was_deleting(pristine, tmp_path: Path) -> None:
    """Killed after its new index, while deleting packs: a superseded index object names them."""
    src, _expected, _old = pristine
    path = tmp_path / "repo"
    crashed_prune(src, path, fail_at=4)  # lock, new pack, new index, then the first delete fails
    notices = unindexed_notices(path)
    retired = [n for n in notices.values() if "interrupted prune, which had already replaced the index" in n]
    assert len(retired) == 2, notices  # the forgotten snapshot's tree pack and the repacked pack
    assert all("backup" not in n for n in retired)


def test_verify_says_a_backup_left_a_pack_it_did_not_commit(tmp_path: Path) -> None:
    repo = Repository.init(LocalBackend(tmp_path / "repo"), keys.wrap_none, False)
    repo.save_blob(BlobType.DATA, os.urandom(1000))
    repo.flush()
    for index in (tmp_path / "repo" / "index").iterdir():
        index.unlink()  # as if killed between its packs and its index
    (notice,) = unindexed_notices(tmp_path / "repo").values()
    assert "written by a backup at" in notice and "did not commit it" in notice, notice


def test_verify_says_when_an_older_phoenix_wrote_the_pack(tmp_path: Path) -> None:
    from phoenix_backup.repo.pack import PackBuilder

    repo = Repository.init(LocalBackend(tmp_path / "repo"), keys.wrap_none, False)
    data = os.urandom(1000)
    bid = repo.ids.blob_id(BlobType.DATA, data)
    builder = PackBuilder(BlobType.DATA)  # no origin record, as before the format recorded one
    method, payload = repo.compressor.compress(data)
    builder.add(bid, method, repo.sealer.seal(payload, blob_aad(BlobType.DATA, bid)), len(data))
    pack_id, raw, _entries = builder.finish(repo.sealer)
    repo.backend.write(pack_name(pack_id), raw)
    (notice,) = unindexed_notices(tmp_path / "repo").values()
    assert "older Phoenix" in notice and "backup or prune" in notice, notice


def test_a_folder_swapped_for_a_link_after_the_listing_keeps_prune_out_of_its_target(pristine, tmp_path: Path) -> None:
    """An old temporary file is listed; then someone who can write the storage swaps its folder
    for a link to a folder of theirs holding a file of the same name. Prune deleted that file
    (by plain path, through the link); now it refuses the link and deletes nothing there."""
    src, expected, _old = pristine
    path = tmp_path / "repo"
    shutil.copytree(src, path)
    (path / "data" / "zz").mkdir()
    (path / "data" / "zz" / ".tmp-interrupted").write_bytes(b"half a pack")
    os.utime(path / "data" / "zz" / ".tmp-interrupted", (T0 - 7200, T0 - 7200))
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    (victim / ".tmp-interrupted").write_bytes(b"someone else's")
    os.utime(victim / ".tmp-interrupted", (T0 - 7200, T0 - 7200))

    class Swapping(LocalBackend):
        def list_temporary(self) -> Iterator[ObjectInfo]:
            listed = list(super().list_temporary())
            shutil.rmtree(path / "data" / "zz")
            (path / "data" / "zz").symlink_to(victim)
            return iter(listed)

    repo = Repository.open(Swapping(path), keys.Credentials(passphrase=None))
    report = prune_repository(
        repo, TargetPrune("local"), dry_run=False, state=PruneState(tmp_path / "p.json"), now=T0 + LEFTOVER_MIN_AGE
    )
    assert report.temporary_files == 1
    assert (victim / ".tmp-interrupted").read_bytes() == b"someone else's"
    (path / "data" / "zz").unlink()
    assert contents(open_fresh(path)[0]) == expected


def test_an_old_temporary_file_dated_at_the_epoch_is_deleted(pristine, tmp_path: Path) -> None:
    """A temporary file whose time is 0 (an archive or a file system that keeps no times) is as
    old as can be: prune deletes it; before, a time of 0 counted as unknown and it stayed for ever."""
    src, expected, _old = pristine
    path = tmp_path / "repo"
    shutil.copytree(src, path)
    (path / "data" / "zz").mkdir()
    (path / "data" / "zz" / ".tmp-interrupted").write_bytes(b"half a pack")
    os.utime(path / "data" / "zz" / ".tmp-interrupted", (0, 0))
    repo = Repository.open(LocalBackend(path), keys.Credentials(passphrase=None))
    report = prune_repository(repo, TargetPrune("local"), dry_run=False, state=PruneState(tmp_path / "p.json"), now=T0)
    assert report.temporary_files == 1
    assert not (path / "data" / "zz" / ".tmp-interrupted").exists()
    assert contents(open_fresh(path)[0]) == expected


def test_verify_says_when_prune_removes_a_temporary_file(pristine, tmp_path: Path) -> None:
    """A backup killed at its lock's temporary file leaves `locks/.tmp-…`. Verify said "prune
    removes it", yet a prune within 30 minutes keeps it as young; it says when now, and prune
    then does."""
    src, _expected, _old = pristine
    path = tmp_path / "repo"
    shutil.copytree(src, path)
    (path / "locks" / ".tmp-0123abcd").write_bytes(b"{")
    os.utime(path / "locks" / ".tmp-0123abcd", (T0, T0))
    (notice,) = [n for n in verify_repository(open_fresh(path)[0]).notices if ".tmp-" in n]
    when = f"once it is {LEFTOVER_MIN_AGE // 60} minutes old"
    assert notice == f"locks/.tmp-0123abcd is a leftover temporary file (prune removes it {when})"
    state = PruneState(tmp_path / "prune.json")
    run_prune(path, state, T0 + 60)
    assert (path / "locks" / ".tmp-0123abcd").exists(), "a minute old: kept, as the notice says"
    run_prune(path, state, T0 + LEFTOVER_MIN_AGE + 1)
    assert not (path / "locks" / ".tmp-0123abcd").exists()


def test_a_last_prune_dated_by_a_clock_that_was_ahead_does_not_stop_the_daily_prune(pristine, tmp_path: Path) -> None:
    """One backup ran with the clock a year ahead: its prune was recorded a year ahead, and every
    backup after the clock was put right said "the last prune ran less than a day ago", for a
    year, the forgotten data kept."""
    repo, _backend = open_fresh(pristine[0])
    state = PruneState(tmp_path / "prune.json")
    assert prune_due(state, repo, "local", T0)
    state.entry(state_key(repo, "local"))["lastPrune"] = T0 - 3600
    assert not prune_due(state, repo, "local", T0)
    state.entry(state_key(repo, "local"))["lastPrune"] = T0 + 365 * 86400
    assert prune_due(state, repo, "local", T0)
    repo.close()


class TimelessBackend(CrashingBackend):
    """A store that gives its objects no time: prune dates a pack from when it first saw it."""

    def stat(self, name: str) -> ObjectInfo | None:
        info = self.inner.stat(name)
        return None if info is None else replace(info, modified=None)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return (replace(info, modified=None) for info in self.inner.list(prefix))


def test_a_leftover_first_seen_by_a_clock_that_was_ahead_is_removed_once_old(pristine, tmp_path: Path) -> None:
    """On a store without times, a leftover pack first seen while the clock was a year ahead stayed
    "young" for that year. It counts as seen when the clock is right again."""
    src, expected, _old = pristine
    path = tmp_path / "repo"
    name = copy_with_leftover(src, path, T0, 60)
    state = PruneState(tmp_path / "prune.json")

    def prune_at(now: float) -> TargetPrune:
        repo = Repository.open(TimelessBackend(LocalBackend(path), None), keys.Credentials(passphrase=None))
        return prune_repository(repo, TargetPrune("local"), dry_run=False, state=state, now=now)

    prune_at(T0 + 365 * 86400)  # the clock a year ahead: every pack first seen then
    assert (path / name).exists()
    report = prune_at(T0)  # put right: the leftover is seen now
    assert (path / name).exists() and report.young_leftovers == 1
    report = prune_at(T0 + LEFTOVER_MIN_AGE + 1)
    assert report.leftover_packs == 1 and not (path / name).exists()
    assert contents(open_fresh(path)[0]) == expected
