"""LocalBackend: objects as files, atomic writes, strict names, temp leftovers kept out of listings."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenix_backup.errors import ObjectNotFound, RepositoryExists, StorageError
from phoenix_backup.repo import keys
from phoenix_backup.repo.replicate import TargetReport, replicate, seed_repository
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.base import TEMP_MARKER, ObjectInfo, validate_name
from phoenix_backup.storage.local import LocalBackend


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    b = LocalBackend(tmp_path / "repo")
    b.create()
    return b


def pack_name(data: bytes) -> str:
    h = hashlib.sha256(data).hexdigest()
    return f"data/{h[:2]}/{h}"


def test_create_makes_the_layout_and_refuses_to_reuse(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path / "repo")
    assert not b.exists()
    b.create()
    for folder in ("keys", "data", "index", "snapshots", "locks", "data/00", "data/ff"):
        assert (tmp_path / "repo" / folder).is_dir()
    assert not b.exists(), "a repository exists only once its config is written"
    b.write("config", b"{}")
    assert b.exists()
    with pytest.raises(RepositoryExists):
        b.create()
    other = tmp_path / "not-empty"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RepositoryExists):
        LocalBackend(other).create()
    assert (other / "notes.txt").read_text() == "mine"
    assert b.location == str(tmp_path / "repo")


def test_create_again_over_an_init_killed_while_it_wrote_the_config(tmp_path: Path) -> None:
    """`phx init` killed between writing the config's temporary file and renaming it leaves the
    folders, a key slot and `.tmp-config.<random>`: nothing used yet, so `phx init` again starts
    over there (as after a kill at any other point) instead of calling the folder foreign."""
    b = LocalBackend(tmp_path / "repo")
    b.create()
    b.write("keys/0123456789abcdef", b"slot of secrets never used")
    (tmp_path / "repo" / ".tmp-config.ee1c2188").write_bytes(b'{"half": ')
    b.create()
    assert sorted(p.name for p in (tmp_path / "repo").iterdir() if p.is_file()) == []
    assert list((tmp_path / "repo" / "keys").iterdir()) == []
    assert not b.exists()
    # Anything else beside it is still someone's folder.
    other = tmp_path / "other"
    LocalBackend(other).create()
    (other / ".tmp-config.0badc0de").write_bytes(b"{")
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RepositoryExists):
        LocalBackend(other).create()
    assert (other / "notes.txt").read_text() == "mine"


def test_write_read_stat_list_delete(backend: LocalBackend) -> None:
    blobs = [os.urandom(n) for n in (0, 1, 1000, 70_000)]
    names = [pack_name(d) for d in blobs]
    for name, data in zip(names, blobs, strict=True):
        backend.write(name, data)
    backend.write("index/" + "ab" * 32, b"index")
    backend.write("snapshots/" + "cd" * 32, b"snapshot")
    backend.write("keys/0123456789abcdef", b"slot")
    backend.write("config", b"config")

    def bare(info: ObjectInfo | None) -> ObjectInfo | None:
        # The time of the write is the file's mtime: prune and lock ageing read it.
        assert info is not None and info.modified is not None and abs(time.time() - info.modified) < 60, info
        return ObjectInfo(info.name, info.size)

    for name, data in zip(names, blobs, strict=True):
        assert backend.read(name) == data
        assert bare(backend.stat(name)) == ObjectInfo(name, len(data))
    assert sorted(map(bare, backend.list("data/")), key=lambda i: i.name if i else "") == sorted(
        (ObjectInfo(n, len(d)) for n, d in zip(names, blobs, strict=True)), key=lambda i: i.name
    )
    assert list(map(bare, backend.list("index/"))) == [ObjectInfo("index/" + "ab" * 32, 5)]
    assert [i.name for i in backend.list("keys/")] == ["keys/0123456789abcdef"]
    assert [i.name for i in backend.list("snapshots")] == ["snapshots/" + "cd" * 32]
    assert list(backend.list("locks/")) == []
    backend.delete(names[2])
    assert backend.stat(names[2]) is None
    with pytest.raises(ObjectNotFound):
        backend.read(names[2])
    backend.delete(names[2])  # deleting what is gone is fine
    assert names[2] not in {i.name for i in backend.list("data/")}


def test_overwrite_replaces_atomically(backend: LocalBackend) -> None:
    name = "locks/" + "12" * 16
    backend.write(name, b"first")
    backend.write(name, b"second, longer")
    assert backend.read(name) == b"second, longer"
    assert list(backend.list_temporary()) == []


@given(st.binary(min_size=1, max_size=5000), st.data())
@settings(max_examples=40, deadline=None)
def test_read_range(tmp_path_factory: pytest.TempPathFactory, data: bytes, draw: st.DataObject) -> None:
    b = LocalBackend(tmp_path_factory.mktemp("range") / "repo")
    name = "index/" + hashlib.sha256(data).hexdigest()
    b.write(name, data)
    offset = draw.draw(st.integers(0, len(data)))
    length = draw.draw(st.integers(0, len(data) - offset))
    assert b.read_range(name, offset, length) == data[offset : offset + length]
    buf = bytearray(length + 1)
    assert b.read_range_into(name, offset, memoryview(buf)[:length]) == length
    assert buf == data[offset : offset + length] + b"\0"
    with pytest.raises(ObjectNotFound):
        b.read_range(name, offset, len(data) - offset + 1)
    with pytest.raises(ObjectNotFound):
        b.read_range_into(name, offset, memoryview(bytearray(len(data) - offset + 1)))


def test_missing_objects(backend: LocalBackend) -> None:
    name = "snapshots/" + "00" * 32
    with pytest.raises(ObjectNotFound):
        backend.read(name)
    with pytest.raises(ObjectNotFound):
        backend.read_range(name, 0, 1)
    assert backend.stat(name) is None
    assert list(LocalBackend(backend.root / "nowhere").list("index/")) == []


def test_exclusive_write_refuses_an_existing_name(backend: LocalBackend) -> None:
    backend.write("config", b"original", exclusive=True)
    with pytest.raises(StorageError, match="already exists"):
        backend.write("config", b"intruder", exclusive=True)
    assert backend.read("config") == b"original"
    assert list(backend.list_temporary()) == [], "the refused write left no temp file"
    backend.write("keys/" + "ab" * 8, b"slot", exclusive=True)
    assert backend.read("keys/" + "ab" * 8) == b"slot"


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "data/zz/short",
        "/abs",
        "/etc/passwd",
        "",
        "config/",
        "keys/../../x",
        "keys/ABCDEF12",
        "keys/1234567",  # shorter than 8 hex digits
        "index/" + "a" * 65,
        "data/a/" + "c" * 64,
        "snapshots/" + "g" * 64,
        "locks",
        "config\n",
        "keys/abcdef12\n",
        "index/abcdef12\x00",
    ],
)
def test_invalid_names_raise_storage_error(backend: LocalBackend, name: str) -> None:
    with pytest.raises(StorageError):
        validate_name(name)
    with pytest.raises(StorageError):
        backend.write(name, b"x")
    with pytest.raises(StorageError):
        backend.read(name)
    with pytest.raises(StorageError):
        backend.delete(name)
    assert not (backend.root.parent / "x").exists()


def test_temp_leftovers_are_found_and_never_listed(backend: LocalBackend) -> None:
    real = pack_name(b"real pack")
    backend.write(real, b"real pack")
    h = hashlib.sha256(b"interrupted").hexdigest()
    leftovers = [
        f"data/{h[:2]}/{TEMP_MARKER}{h}.deadbeef",
        f"index/{TEMP_MARKER}{'ab' * 32}.0badf00d",
        f"snapshots/{TEMP_MARKER}{'cd' * 32}.12345678",
    ]
    for rel in leftovers:
        (backend.root / rel).write_bytes(b"half written")
    assert sorted(i.name for i in backend.list_temporary()) == sorted(leftovers)
    assert [i.name for i in backend.list("data/")] == [real]
    assert list(backend.list("index/")) == []
    assert list(backend.list("snapshots/")) == []


def test_failed_write_leaves_nothing_under_the_real_name(backend: LocalBackend) -> None:
    """A write that cannot complete (its folder is a file) leaves neither the object nor a temp file."""
    h = hashlib.sha256(b"pack").hexdigest()
    folder = backend.root / "data" / h[:2]
    folder.rmdir()
    folder.write_bytes(b"in the way")
    with pytest.raises(StorageError):
        backend.write(f"data/{h[:2]}/{h}", b"pack")
    assert folder.read_bytes() == b"in the way"
    assert list(backend.list_temporary()) == []


def test_write_creates_a_missing_data_folder(backend: LocalBackend) -> None:
    data = b"pack in a removed folder"
    name = pack_name(data)
    (backend.root / name).parent.rmdir()
    backend.write(name, data)
    assert backend.read(name) == data


def test_written_files_are_private(backend: LocalBackend) -> None:
    backend.write("config", b"c")
    assert (backend.root / "config").stat().st_mode & 0o077 == 0
    assert (backend.root / "data").stat().st_mode & 0o077 == 0


def plant(root: Path) -> list[str]:
    """What an attacker with write access to the storage puts under object names: a folder and a
    pipe (which a plain read would wait on forever). Returns their names."""
    names = [f"captures/{'ab' * 32}", f"data/cd/{'cd' * 32}", f"snapshots/{'ef' * 32}", f"checks/{'01' * 32}"]
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if i % 2:
            os.mkfifo(root / name)
        else:
            (root / name).mkdir()
    return names


def test_folders_and_pipes_under_object_names_are_skipped_with_one_notice(backend: LocalBackend) -> None:
    backend.write(f"captures/{'12' * 32}", b"segment")
    planted = plant(backend.root)
    notices: list[str] = []
    backend.notice = notices.append
    for _twice in range(2):
        listed = [i.name for p in ("captures/", "data/", "snapshots/", "checks/") for i in backend.list(p)]
        assert listed == [f"captures/{'12' * 32}"]
    assert len(notices) == len(planted), notices
    assert all("is not a file" in n and "remove it" in n for n in notices), notices
    # Read by name all the same (an index naming it), each is one error at once, never a wait.
    outcome: dict[str, str] = {}

    def read_all() -> None:
        for name in planted:
            for read in (lambda n: backend.read(n), lambda n: backend.read_range(n, 0, 1)):
                try:
                    read(name)
                except StorageError as exc:
                    outcome[name] = str(exc)

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "a read of a planted pipe waits forever"
    assert set(outcome) == set(planted) and all("is not a file" in m for m in outcome.values()), outcome


def test_sync_is_not_failed_by_folders_and_pipes_planted_under_object_names(tmp_path: Path) -> None:
    repo = Repository.init(
        LocalBackend(tmp_path / "r"),
        lambda m: keys.wrap_passphrase(m, "pw", kdf_params={"n": 2**10, "r": 8, "p": 1}),
        True,
    )
    plant(tmp_path / "r")
    replica = LocalBackend(tmp_path / "replica")
    outcome: list[TargetReport] = []
    worker = threading.Thread(target=lambda: outcome.append(replicate(repo, "replica", replica, print)), daemon=True)
    worker.start()
    worker.join(60)
    assert outcome, "sync waits forever on a planted pipe"
    assert outcome[0].ok, outcome[0].error
    assert sorted(i.name for p in ("captures/", "snapshots/", "checks/", "data/") for i in replica.list(p)) == []


def test_a_replica_another_sync_initialises_meanwhile_is_copied_to(tmp_path: Path) -> None:
    """Two `phx sync` to a new target at once: both find it empty, and the second to write its
    `config` used to fail with "object config already exists in …", exit 1. It now takes the
    replica the other made (the same repository) and copies what it lacks."""
    repo = Repository.init(
        LocalBackend(tmp_path / "r"),
        lambda m: keys.wrap_passphrase(m, "pw", kdf_params={"n": 2**10, "r": 8, "p": 1}),
        True,
    )

    class Racing(LocalBackend):
        def exists(self) -> bool:
            found = super().exists()
            if not found:  # the other sync seeds it between this look and this sync's own seeding
                seed_repository(repo.backend, LocalBackend(self.root))
            return found

    report = replicate(repo, "replica", Racing(tmp_path / "replica"), print)
    assert report.ok, report.error
    again = Repository.open(LocalBackend(tmp_path / "replica"), keys.Credentials(passphrase="pw"))
    assert again.config.id == repo.config.id


def test_a_sync_racing_to_initialise_a_target_leaves_it_openable_if_killed(tmp_path: Path) -> None:
    """Two `phx sync` to a new target at once: the second found the first's key slots and no
    `config` yet, took them for an interrupted init's and deleted them, while the first wrote its
    `config`; killed before writing the slots again, it left a target holding the repository that
    nothing opens (until a sync from the first target, maybe lost by then). A slot whose bytes are
    the repository's own is now left in place."""
    repo = Repository.init(
        LocalBackend(tmp_path / "r"),
        lambda m: keys.wrap_passphrase(m, "pw", kdf_params={"n": 2**10, "r": 8, "p": 1}),
        True,
    )

    class Killed(BaseException):
        pass

    first = LocalBackend(tmp_path / "replica")
    first.create()
    for info in repo.backend.list("keys/"):  # the first sync wrote its slots, not yet its config
        first.write(info.name, repo.backend.read(info.name))

    class Second(LocalBackend):
        def _interrupted_init(self) -> bool:
            found = super()._interrupted_init()
            # The first sync writes its config right now, after the second looked for one.
            first.write("config", repo.backend.read("config"), exclusive=True)
            return found

        def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
            raise Killed  # the second sync is killed before it writes a slot again

    with contextlib.suppress(Killed):
        replicate(repo, "replica", Second(tmp_path / "replica"), print)
    alone = Repository.open(LocalBackend(tmp_path / "replica"), keys.Credentials(passphrase="pw"))
    assert alone.config.id == repo.config.id


def _resident_pages(path: Path) -> tuple[int, int]:
    """(pages of `path` in the page cache, pages of `path`), by mincore(2) on a mapping of it."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        vec = (ctypes.c_ubyte * pages)()
        addr = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
        if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
            pytest.skip(f"mincore failed: {os.strerror(ctypes.get_errno())}")
        resident = sum(v & 1 for v in vec)
    return resident, pages


def test_small_objects_stay_in_the_page_cache_and_packs_leave_it(backend: LocalBackend) -> None:
    """A data pack leaves the page cache once written (it is rarely read soon, and kept it would
    push the user's files out); the index object, the snapshot and small tree packs stay, since
    the retention after a backup and the next command read them again at once."""
    small = os.urandom(200 * 1024)
    pack = os.urandom(8 * 1024 * 1024)
    backend.write("index/" + "a" * 64, small)
    backend.write(pack_name(pack), pack)
    resident, pages = _resident_pages(backend.root / "index" / ("a" * 64))
    assert resident == pages, f"{resident} of {pages} pages of the index object are cached"
    resident, pages = _resident_pages(backend.root / pack_name(pack))
    if resident == pages:
        pytest.skip("this file system keeps every page cached (posix_fadvise does nothing here)")
    assert resident < pages // 2, f"{resident} of {pages} pages of the pack stay cached"


def _pack_descriptors(root: Path) -> list[str]:
    """The descriptors this process holds open on files below `root`/data."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(root / "data") + "/"):
                out.append(target)
    return out


def test_ranged_reads_of_a_pack_open_it_once_and_close_releases_it(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20: a restore reads thousands of ranges, most of them from the pack the one before
    came from; each used to open the repository's folders and the pack again (eleven system calls
    a range). The pack is opened once; every range still gets exactly its bytes, one past the
    end is refused, and `close` (or `delete`) lets go of the descriptor."""
    data = os.urandom(64 * 1024)
    name = pack_name(data)
    backend.write(name, data)
    opened: list[str] = []
    real_open = os.open

    def counting_open(path: str | os.PathLike[str], *args: object, **kwargs: object) -> int:
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", counting_open)
    for offset in range(0, len(data), 4096):
        buf = bytearray(4096)
        assert backend.read_range_into(name, offset, memoryview(buf)) == 4096
        assert buf == data[offset : offset + 4096]
    with pytest.raises(ObjectNotFound, match="shorter than the index says"):
        backend.read_range_into(name, len(data) - 10, memoryview(bytearray(11)))
    monkeypatch.undo()
    assert opened.count(name.rsplit("/", 1)[1]) == 1, opened
    assert len(_pack_descriptors(backend.root)) == 1
    backend.close()
    assert _pack_descriptors(backend.root) == []
    buf = bytearray(10)
    backend.read_range_into(name, 0, memoryview(buf))
    assert len(_pack_descriptors(backend.root)) == 1
    backend.delete(name)  # a pruned pack is not kept open: its space is freed
    assert _pack_descriptors(backend.root) == []
    with pytest.raises(ObjectNotFound, match="missing"):
        backend.read_range_into(name, 0, memoryview(buf))


def test_threads_reading_more_packs_than_are_kept_open_each_get_their_own_bytes(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packs kept open are evicted while other threads read them: a descriptor is closed only
    once no thread reads through it (else its number, reused by the next open, could hand one
    thread another pack's bytes), and none stays open after `close`."""
    import phoenix_backup.storage.local as local

    monkeypatch.setattr(local, "OPEN_PACKS", 2)
    packs = {}
    for _ in range(7):
        data = os.urandom(32 * 1024)
        packs[pack_name(data)] = data
        backend.write(pack_name(data), data)
    names = sorted(packs)
    errors: list[str] = []

    def read(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            name = rng.choice(names)
            offset = rng.randrange(0, 32 * 1024 - 512)
            buf = bytearray(rng.randrange(1, 512))
            backend.read_range_into(name, offset, memoryview(buf))
            if buf != packs[name][offset : offset + len(buf)]:
                errors.append(f"{name} at {offset}")

    threads = [threading.Thread(target=read, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(_pack_descriptors(backend.root)) <= 2
    backend.close()
    assert _pack_descriptors(backend.root) == []


def test_a_pack_replaced_by_a_symlink_is_refused_when_first_opened(backend: LocalBackend, tmp_path: Path) -> None:
    """The descriptor kept open was opened as every object is: a symbolic link planted under a
    pack's name is refused, never followed, on the first read as on any read before."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"x" * 4096)
    name = pack_name(b"planted")
    (backend.root / name).parent.mkdir(parents=True, exist_ok=True)
    (backend.root / name).symlink_to(outside)
    with pytest.raises(StorageError, match="symbolic link"):
        backend.read_range_into(name, 0, memoryview(bytearray(10)))
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            held.append(os.readlink(f"/proc/self/fd/{fd}"))
    assert str(outside) not in held


def test_a_pack_written_again_is_read_anew_not_through_the_descriptor_kept_of_its_old_file(
    backend: LocalBackend,
) -> None:
    """A pack written again under its name (`phx repair objects` puts a good copy over a damaged
    one; `write` replaces the file) is read from its new file: a descriptor kept open from a read
    before would read the replaced, damaged bytes until it is evicted."""
    good = os.urandom(16 * 1024)
    damaged = bytearray(good)
    damaged[100] ^= 0xFF
    name = pack_name(good)
    backend.write(name, bytes(damaged))
    buf = bytearray(200)
    backend.read_range_into(name, 0, memoryview(buf))
    assert buf == damaged[:200]
    backend.write(name, good)
    backend.read_range_into(name, 0, memoryview(buf))
    assert buf == good[:200]
    assert len(_pack_descriptors(backend.root)) == 1


def test_a_pack_deleted_while_a_thread_opens_it_is_not_kept_open(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack opened by one thread while another deletes it (prune's repack in the same process)
    serves that one read and is not kept: a kept descriptor would hold the deleted pack's disk
    space, and its bytes, for as long as the backend lives."""
    data = os.urandom(16 * 1024)
    name = pack_name(data)
    backend.write(name, data)
    real = backend._open_reader

    def open_then_deleted(opened: str) -> tuple[int, int]:
        got = real(opened)
        backend.delete(opened)  # between the open and its being kept, as another thread may
        return got

    monkeypatch.setattr(backend, "_open_reader", open_then_deleted)
    buf = bytearray(100)
    backend.read_range_into(name, 0, memoryview(buf))
    assert buf == data[:100]
    assert _pack_descriptors(backend.root) == []


def test_too_many_open_files_suggests_a_limit_above_the_present_one() -> None:
    """EMFILE (this process out of descriptors, in a pack read as in a folder) names the soft limit
    and suggests one above it; ENFILE (the system's table full) is its own sentence. Before, a
    process allowed 8,192 files was told to "raise that limit (`ulimit -n 4096`)", and ENFILE was
    the bare strerror."""
    import errno
    import re
    import resource

    from phoenix_backup.storage.local import os_error

    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = min(8192, before[1]) if before[1] != resource.RLIM_INFINITY else 8192
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        said = str(os_error(OSError(errno.EMFILE, "Too many open files"), "reading the pack data/ab/abcd"))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)
    assert f"while reading the pack data/ab/abcd: this process may open {soft} files (`ulimit -n`)" in said, said
    suggested = re.search(r"`ulimit -n (\d+)`", said)
    assert suggested is not None and int(suggested.group(1)) > soft, said
    system = str(os_error(OSError(errno.ENFILE, "Too many open files in system"), "reading the pack x"))
    assert "fs.file-max" in system and "while reading the pack x" in system, system


def test_a_sync_to_a_folder_of_other_files_says_so(tmp_path: Path) -> None:
    """A target pointed at a folder that holds other files, and no repository: the sync refuses
    with the reason and the fix, not "object config is missing" (what it said once a failed
    initialisation was taken for another sync's)."""
    repo = Repository.init(
        LocalBackend(tmp_path / "r"),
        lambda m: keys.wrap_passphrase(m, "pw", kdf_params={"n": 2**10, "r": 8, "p": 1}),
        True,
    )
    (tmp_path / "replica").mkdir()
    (tmp_path / "replica" / "notes.txt").write_text("mine")
    report = replicate(repo, "replica", LocalBackend(tmp_path / "replica"), print)
    assert not report.ok
    assert "is not empty and holds no Phoenix repository; choose an empty or new folder" in (report.error or "")
    assert (tmp_path / "replica" / "notes.txt").read_text() == "mine"
