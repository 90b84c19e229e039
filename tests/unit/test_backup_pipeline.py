"""Issue 20: a backup keeps both cores busy. The whole-file SHA-256 is computed on a thread of its
own from the buffers the backup reads anyway, and packs are named, written and fsynced by a thread
of their own while the sealing threads go on. Neither may change a byte of what is stored or
recorded, nor hold more memory than before.
"""

from __future__ import annotations

import hashlib
import io
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import blake3
import pytest

from phoenix_backup.errors import NoSpace, TransientStorageError
from phoenix_backup.repo import keys
from phoenix_backup.repo.chunker import WHOLE_FILE_LIMIT, file_chunks_of
from phoenix_backup.repo.crypto import BackgroundSha256, BlobType, Compression, Compressor
from phoenix_backup.repo.pack import DATA_PACK_TARGET
from phoenix_backup.repo.repository import MAX_PACKS_WRITING, Repository
from phoenix_backup.storage.base import Backend
from phoenix_backup.storage.local import LocalBackend
from phoenix_backup.storage.wrappers import RetryingBackend

BLOB = 256 * 1024
PER_PACK = DATA_PACK_TARGET // BLOB  # random blobs of BLOB bytes that fill one pack


def test_background_digest_is_the_sha256_of_what_was_fed_whatever_the_feeder_does_next() -> None:
    """The feeder reuses its buffer as soon as `update` returns (a streamed file's chunks do): the
    digest must be of the bytes as they were fed, not as the hashing thread finds them later."""
    rnd = random.Random(1)
    expected = hashlib.sha256()
    reused = bytearray(64 * 1024)
    with BackgroundSha256(limit=100_000) as digest:  # a small limit: the feeder waits often
        for i in range(400):
            size = rnd.choice([0, 1, 100, 4096, 64 * 1024])
            data = rnd.randbytes(size)
            expected.update(data)
            if i % 3 == 0:
                digest.update(data)
            elif i % 3 == 1:
                digest.update(memoryview(data))
            else:
                reused[:size] = data
                digest.update(memoryview(reused)[:size])
                reused[:] = bytes(len(reused))  # overwritten at once
        assert digest.hexdigest() == expected.hexdigest()


def test_background_digest_of_a_streamed_file_equals_sha256sum(tmp_path: Path) -> None:
    """Above WHOLE_FILE_LIMIT the chunker hands out views of one buffer it refills."""
    data = random.Random(2).randbytes(WHOLE_FILE_LIMIT + 5 * 1024 * 1024 + 17)
    chunker = {"min": 512 * 1024, "avg": 1024 * 1024, "max": 8 * 1024 * 1024}
    with BackgroundSha256() as digest:
        for chunk in file_chunks_of(io.BytesIO(data), len(data), chunker, 7):
            digest.update(chunk)
        assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_digest_closed_half_way_lets_go_of_its_thread() -> None:
    """A backup stopped half-way (Ctrl-C) closes the digest: its thread ends, whatever was
    waiting is dropped, and nothing more can be fed."""
    digest = BackgroundSha256()
    for _ in range(40):
        digest.update(bytes(1024 * 1024))
    digest.close()
    assert not [t for t in threading.enumerate() if t.name == "phx-sha256" and t.is_alive()]
    with pytest.raises(ValueError):
        digest.update(b"more")


class _SlowDisk(LocalBackend):
    """A local store whose pack writes wait until `release` is set (a slow or busy disk)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.release = threading.Event()
        self.waiting = threading.Event()
        self.fail: BaseException | None = None

    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        if name.startswith("data/"):
            if self.fail is not None:
                raise self.fail
            self.waiting.set()
            self.release.wait(60)
        super().write(name, data, exclusive=exclusive, cold=cold)


class _CountingCompressor(Compressor):
    """Counts how many threads compress at once while the disk holds a pack."""

    def __init__(self, disk: _SlowDisk) -> None:
        super().__init__(True)
        self.disk = disk
        self.lock = threading.Lock()
        self.now = 0
        self.most_while_waiting = 0

    def compress(self, data: bytes | memoryview) -> tuple[Compression, bytes | memoryview]:
        with self.lock:
            self.now += 1
            if self.disk.waiting.is_set() and not self.disk.release.is_set():
                self.most_while_waiting = max(self.most_while_waiting, self.now)
        try:
            time.sleep(0.005)  # long enough for the other sealing thread to overlap
            return super().compress(data)
        finally:
            with self.lock:
                self.now -= 1


def _repo(root: Path, backend: Backend) -> Repository:
    Repository.init(
        LocalBackend(root),
        lambda m: keys.wrap_passphrase(m, "pw", kdf_params={"n": 2**10, "r": 8, "p": 1}),
        encrypted=True,
    )
    repo = Repository.open(backend, keys.Credentials(passphrase="pw"))
    repo.load_index()
    return repo


def test_both_sealing_threads_go_on_while_the_disk_writes_a_pack(tmp_path: Path) -> None:
    """A sealing thread that wrote the pack it filled (and fsynced it) left one core to seal the
    next pack while the disk was busy. Now both seal on, and no more packs are held than before:
    the one being written, one waiting, the one filling."""
    disk = _SlowDisk(tmp_path / "repo")
    repo = _repo(tmp_path / "repo", disk)
    counting = _CountingCompressor(disk)
    repo.compressor = counting
    rnd = random.Random(3)
    blobs = [rnd.randbytes(BLOB) for _ in range(3 * PER_PACK)]
    ids: list[bytes] = []
    feeder = threading.Thread(target=lambda: ids.extend(repo.save_blob_async(BlobType.DATA, b) for b in blobs))
    feeder.start()
    assert disk.waiting.wait(60), "the first pack never reached the disk"
    # Sealing goes on until the packs the writer may hold are full, then waits for the disk.
    deadline = time.monotonic() + 60
    last, still = -1, 0
    while time.monotonic() < deadline and still < 10:
        sealed = repo.stats.blobs_added
        still = still + 1 if sealed == last else 0
        last = sealed
        time.sleep(0.05)
    held = repo.stats.blobs_added
    disk.release.set()
    feeder.join(60)
    repo.flush()
    repo.close()
    assert counting.most_while_waiting == 2, "only one thread sealed while the disk wrote a pack"
    # The writer's pack, one waiting, and the blobs the two sealing threads had begun: as many as
    # when each sealing thread held the pack it was writing.
    assert held <= MAX_PACKS_WRITING * PER_PACK + 2
    again = Repository.open(LocalBackend(tmp_path / "repo"), keys.Credentials(passphrase="pw"))
    again.load_index()
    assert [again.load_blob(BlobType.DATA, bid) for bid in ids] == blobs


def test_a_pack_the_writer_thread_cannot_write_fails_the_flush(tmp_path: Path) -> None:
    """A full disk met by the pack writer thread is the backup's error: `flush` raises it, and no
    index object lists a pack that was never written."""
    disk = _SlowDisk(tmp_path / "repo")
    disk.release.set()
    disk.fail = NoSpace("no space left on the device while writing a pack; free some space and run again")
    repo = _repo(tmp_path / "repo", disk)
    rnd = random.Random(4)
    with pytest.raises(NoSpace):
        for _ in range(3 * PER_PACK):
            repo.save_blob_async(BlobType.DATA, rnd.randbytes(BLOB))
        repo.flush()
    repo.close()
    assert not list(LocalBackend(tmp_path / "repo").list("index/"))


# Run in a process of its own, set up as `phx` sets up glibc's malloc (a fixed mmap threshold:
# every pack buffer is a mapping of its own, returned to the system when freed).
_PACK_FAULTS = """
import hashlib, random, resource, sys
from pathlib import Path
from phoenix_backup.cli.main import _limit_malloc_arenas, keep_freed_heap
_limit_malloc_arenas()
keep_freed_heap()  # the blobs' own buffers stay in the heap: only the packs' pages are counted
sys.path.insert(0, sys.argv[2])
from test_backup_pipeline import BLOB, _repo
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.storage.local import LocalBackend
root = Path(sys.argv[1])
rnd = random.Random(5)
# Text-like (it compresses to about half, as database pages do), stored again under new ids: no
# new input buffers.
block = bytes(rnd.choices(b"abcdefghijklmnop", k=BLOB))
repo = _repo(root, LocalBackend(root))
ids = iter(hashlib.sha256(str(i).encode()).digest() for i in range(1_000_000))
while repo.stats.bytes_added < 4 * 8 * 2**20:  # the buffers first made
    repo.save_blob_async(BlobType.DATA, block, next(ids))
repo.wait()
written, before = repo.stats.bytes_added, resource.getrusage(resource.RUSAGE_SELF).ru_minflt
while repo.stats.bytes_added < written + 8 * 8 * 2**20:
    repo.save_blob_async(BlobType.DATA, block, next(ids))
repo.wait()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, repo.stats.bytes_added - written)
repo.flush()
repo.close()
"""


def test_data_packs_are_built_in_the_buffers_of_packs_already_written(tmp_path: Path) -> None:
    """Every new 8 MiB pack buffer had each of its pages faulted in by the kernel as blobs were
    copied into it (110,000 page faults for the 440 MB of packs of a 600 MB backup). Packs are
    built in the buffers of packs already written: once the first few are written, the next
    eight cost far fewer page faults than they have pages."""
    proc = subprocess.run(
        [sys.executable, "-c", _PACK_FAULTS, str(tmp_path / "repo"), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    faults, written = (int(n) for n in proc.stdout.split())
    pack_pages = written // 4096
    assert faults < pack_pages // 3, f"{faults} page faults for {pack_pages} pages of packs"


def test_packs_built_in_reused_buffers_read_back_blob_for_blob(tmp_path: Path) -> None:
    """Each pack of a reused buffer holds its own blobs only, whatever the longer pack before it left
    there (a pack's end is cut where its blobs end)."""
    rnd = random.Random(7)
    # Packs of different lengths, so a buffer is reused for a shorter pack than it held.
    blobs = [rnd.randbytes(rnd.choice([BLOB, BLOB // 3, 7])) for _ in range(5 * PER_PACK)]
    repo = _repo(tmp_path / "repo", LocalBackend(tmp_path / "repo"))
    ids = [repo.save_blob_async(BlobType.DATA, b) for b in blobs]
    repo.flush()
    repo.close()
    again = Repository.open(LocalBackend(tmp_path / "repo"), keys.Credentials(passphrase="pw"))
    again.load_index()
    assert [again.load_blob(BlobType.DATA, bid) for bid in ids] == blobs
    for info in LocalBackend(tmp_path / "repo").list("data/"):
        entries = again.read_pack_header(info.name.rsplit("/", 1)[1])
        assert max(e.offset + e.stored for e in entries) < info.size


class _KeepingStore(LocalBackend):
    """A store that keeps what it is handed (as one that uploads later would)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.kept: dict[str, bytes] = {}

    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        super().write(name, data, exclusive=exclusive, cold=cold)
        if name.startswith("data/"):
            self.kept[name] = data


def _count_as_cpython_3_14(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `sys.getrefcount` count as CPython 3.14 does: the call's argument is lent by the
    caller's frame (LOAD_FAST_BORROW), not counted, so an object one name holds counts 1, not 2."""
    real = sys.getrefcount
    lent = 0

    def getrefcount(obj: object) -> int:
        return real(obj) - lent

    def held_by_one_name() -> int:
        obj = bytearray()
        return getrefcount(obj)

    lent = held_by_one_name() - 1
    monkeypatch.setattr(sys, "getrefcount", getrefcount)


@pytest.mark.parametrize("counting", ["3.11", "3.14"])
def test_a_pack_buffer_the_store_kept_is_never_filled_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counting: str
) -> None:
    """A buffer is filled again only when nothing else holds it: a store that kept the bytes it
    was handed must still hold every pack as written (each hashes to its own name). Python 3.11
    and later are supported, and 3.14 no longer counts a call's argument: "nothing else holds
    it" cannot be a count of 2 (there it is one holder more)."""
    if counting == "3.14":
        _count_as_cpython_3_14(monkeypatch)
    store = _KeepingStore(tmp_path / "repo")
    repo = _repo(tmp_path / "repo", store)
    rnd = random.Random(6)
    for _ in range(5 * PER_PACK):
        repo.save_blob_async(BlobType.DATA, rnd.randbytes(BLOB))
    repo.flush()
    repo.close()
    assert len(store.kept) >= 5
    for name, data in store.kept.items():
        assert blake3.blake3(bytes(data)).hexdigest() == name.rsplit("/", 1)[1]


def test_pack_buffers_are_filled_again_whatever_the_interpreter_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted as CPython 3.14 counts, a buffer nothing else holds is still filled again (the
    packs of a run live in a few buffers, not one each), and every pack reads back as written."""
    _count_as_cpython_3_14(monkeypatch)
    buffers: set[int] = set()

    class _Noting(LocalBackend):
        def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
            if name.startswith("data/"):
                buffers.add(id(data))
            super().write(name, data, exclusive=exclusive, cold=cold)

    repo = _repo(tmp_path / "repo", _Noting(tmp_path / "repo"))
    rnd = random.Random(9)
    blobs = [rnd.randbytes(BLOB) for _ in range(8 * PER_PACK)]
    ids = [repo.save_blob_async(BlobType.DATA, b) for b in blobs]
    repo.flush()
    repo.close()
    packs = list(LocalBackend(tmp_path / "repo").list("data/"))
    assert len(packs) >= 8
    assert len(buffers) <= MAX_PACKS_WRITING + 2, f"{len(buffers)} buffers for {len(packs)} packs"
    again = Repository.open(LocalBackend(tmp_path / "repo"), keys.Credentials(passphrase="pw"))
    again.load_index()
    assert [again.load_blob(BlobType.DATA, bid) for bid in ids] == blobs


class _HoldingStore(LocalBackend):
    """A store whose first attempt at half the data packs fails transiently (a 503, a timeout) after
    something was done with the pack's bytes; `hold` says what: a torn object under the pack's
    name that the retry replaces, a view of the bytes kept to look at later, or the bytes kept
    to write to a later target when the store is closed."""

    def __init__(self, root: Path, hold: str) -> None:
        super().__init__(root)
        self.hold = hold
        self.tried: dict[str, int] = {}  # each pack's place in the order of first attempts
        self.views: dict[str, memoryview] = {}
        self.later: list[tuple[str, bytes]] = []
        self.second = LocalBackend(root.with_name("second"))

    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        # Every other pack, the first among them: the others' buffers are filled again meanwhile.
        first = name.startswith("data/") and name not in self.tried
        self.tried[name] = self.tried.get(name, len(self.tried))
        if first and self.tried[name] % 2 == 0:
            if self.hold == "torn":
                super().write(name, bytes(memoryview(data)[: len(data) // 2]))
            elif self.hold == "view":
                self.views[name] = memoryview(data)[len(data) // 3 :]
            else:
                self.later.append((name, data))
            raise TransientStorageError(f"{name}: 503 Slow Down")
        super().write(name, data, exclusive=exclusive, cold=cold)

    def close(self) -> None:
        for name, data in self.later:
            self.second.write(name, data)
        super().close()


@pytest.mark.parametrize("counting", ["3.11", "3.14"])
@pytest.mark.parametrize("hold", ["torn", "view", "later"])
def test_a_pack_retried_after_a_transient_failure_stays_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hold: str, counting: str
) -> None:
    """Retried writes, views kept past the call and bytes kept for a later target: every copy of
    every pack still hashes to its name, wherever it went, and every blob reads back."""
    if counting == "3.14":
        _count_as_cpython_3_14(monkeypatch)
    store = _HoldingStore(tmp_path / "repo", hold)
    repo = _repo(tmp_path / "repo", RetryingBackend(store, sleep=lambda _s: None))
    rnd = random.Random(hold)
    blobs = [rnd.randbytes(rnd.choice([BLOB, BLOB // 3])) for _ in range(8 * PER_PACK)]
    ids = [repo.save_blob_async(BlobType.DATA, b) for b in blobs]
    repo.flush()
    repo.close()
    store.close()
    copies = [(info.name, LocalBackend(tmp_path / "repo").read(info.name)) for info in store.list("data/")]
    copies += [(info.name, store.second.read(info.name)) for info in store.second.list("data/")]
    assert len(copies) >= 5 and (hold != "later" or store.later)
    for name, raw in copies:
        assert blake3.blake3(raw).hexdigest() == name.rsplit("/", 1)[1], name
        if name in store.views:
            assert bytes(store.views[name]) == raw[len(raw) // 3 :], name
    again = Repository.open(LocalBackend(tmp_path / "repo"), keys.Credentials(passphrase="pw"))
    again.load_index()
    assert [again.load_blob(BlobType.DATA, bid) for bid in ids] == blobs
