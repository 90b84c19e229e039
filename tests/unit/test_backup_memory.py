"""Issue 20: a backup's memory must not grow with the workspace (beyond the index).

Not timed and not RSS (both depend on the machine): each test counts what the writer keeps in
memory while it works, at two sizes or against the size of what it holds.
"""

from __future__ import annotations

import errno
import gc
import io
import json
import os
import random
import time
import tracemalloc
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from phoenix_backup.repo import keys
from phoenix_backup.repo.cache import Cache
from phoenix_backup.repo.chunker import ExtentMap, page_runs
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.pack import DATA_PACK_TARGET
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import TREE_VERSION, Extent, Node, decode_tree, encode_tree
from phoenix_backup.storage.local import LocalBackend

MB = 1024 * 1024


def _futures_alive() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Future))


def test_blobs_handed_to_the_sealing_threads_leave_nothing_behind(tmp_path: Path) -> None:
    """A 3 GB backup hands some 12,000 blobs to the sealing threads; a record kept per blob
    until the end (a future each: ~15 MB) made memory grow with the workspace."""
    repo = _repo(tmp_path)
    count = 3000
    before = _futures_alive()
    ids = [repo.save_blob_async(BlobType.DATA, os.urandom(64) + i.to_bytes(4, "big")) for i in range(count)]
    deadline = time.monotonic() + 60
    while repo.stats.blobs_added < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert repo.stats.blobs_added == count
    # Every blob is sealed and packed: nothing per blob may be left but its index entry.
    assert _futures_alive() - before < 50
    repo.flush()
    repo.close()
    assert all(repo.index.has(bid) for bid in ids)


def test_a_pack_is_held_once_while_it_is_finished(tmp_path: Path) -> None:
    """Two packs are finished at once by the sealing threads: a pack that is copied whole to be
    written (its blobs, then their concatenation) cost a second pack's size each."""
    repo = _repo(tmp_path)
    rnd = random.Random(7)
    # Random, so stored as they are: the last of these takes the pack past its target size.
    blobs = [rnd.randbytes(256 * 1024) for _ in range(DATA_PACK_TARGET // (256 * 1024))]
    ids = [repo.save_blob(BlobType.DATA, blob)[0] for blob in blobs[:-1]]
    assert not repo.index.pack_ids(), "the pack must not be written before its last blob"
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        ids.append(repo.save_blob(BlobType.DATA, blobs[-1])[0])  # fills the pack: it is written
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert len(repo.index.pack_ids()) == 1
    assert peak < DATA_PACK_TARGET // 4, f"writing an 8 MiB pack allocated {peak >> 20} MiB more"
    # The pack is whole: a fresh repository object reads every blob back through the index.
    repo.flush()
    repo.close()
    again = Repository.open(LocalBackend(tmp_path / "repo"), keys.Credentials(passphrase="pw"))
    again.load_index()
    assert [again.load_blob(BlobType.DATA, bid) for bid in ids] == blobs


def _repo(tmp_path: Path) -> Repository:
    return Repository.init(
        LocalBackend(tmp_path / "repo"),
        lambda m: keys.wrap_passphrase(m, "pw", kdf_params={"n": 2**10, "r": 8, "p": 1}),
        encrypted=True,
    )


class _Database:
    """`pages` pages of a database that is never in memory: each region made when read."""

    def __init__(self, pages: int, page_size: int, changed: frozenset[int] = frozenset()) -> None:
        self.pages, self.page_size, self.changed = pages, page_size, changed

    def __len__(self) -> int:
        return self.pages * self.page_size

    def __getitem__(self, item: slice) -> bytes:
        start, stop, _ = item.indices(len(self))
        out = bytearray()
        for page in range(start // self.page_size, -(-stop // self.page_size)):
            mark = b"new" if page in self.changed else b"old"
            out += (mark + page.to_bytes(8, "big")) * (self.page_size // 11) + b"\0" * (self.page_size % 11)
        return bytes(out[start % self.page_size : start % self.page_size + stop - start])


def _cut_twice(tmp_path: Path, pages: int) -> tuple[int, int]:
    """Traced peak (bytes) of cutting a database of `pages` 512-byte pages the way a backup does,
    first without a parent, then a version with a few changed pages against the first."""
    cache = Cache("repo-id", root=tmp_path / f"cache-{pages}")
    key = b"k" * 32
    saved = 0

    def save(view: memoryview | bytes, blob_id: bytes | None = None) -> bytes:
        nonlocal saved
        saved += len(view)
        return (blob_id or os.urandom(32))[:32]

    peaks = []
    parent = None
    for db in (_Database(pages, 512), _Database(pages, 512, frozenset({1, pages // 2, pages - 1}))):
        sink = cache.page_sink()
        tracemalloc.start()
        try:
            extents, state = page_runs(db, 512, 64, key, save, parent, sink=sink)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        state.sha256 = f"{len(peaks):064x}"
        cache.save_pages("db", state)
        state.close()
        sink.close()
        if parent is not None:
            parent[1].close()
        loaded = cache.load_pages("db", state.sha256)
        assert loaded is not None and len(loaded.pages) == 16 * pages
        parent = (extents, loaded)
    assert parent is not None
    parent[1].close()
    return peaks[0], peaks[1]


def test_a_database_page_hashes_stay_out_of_memory(tmp_path: Path) -> None:
    """16 bytes of hashes a page, for every page, were held while a database was cut (12 MB for a
    3 GB database, twice over with its parent's): 8 times the database may cost little more."""
    small = _cut_twice(tmp_path, 4096)  # 2 MB
    large = _cut_twice(tmp_path, 8 * 4096)  # 16 MB, 512 KiB of page hashes
    for before, after in zip(small, large, strict=True):
        assert after < before + 256 * 1024, f"cutting 8x the pages took {(after - before) >> 10} KiB more"


class _FullDisk(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_page_hashes_the_cache_cannot_take_cost_deduplication_only(tmp_path: Path) -> None:
    """A cache on a full disk must not keep a database from being saved: the hashes are dropped
    and no half state is kept for the next backup."""
    cache = Cache("repo-id", root=tmp_path)
    sink = cache.page_sink()
    sink._file.close()  # type: ignore[union-attr]
    sink._file = io.BufferedWriter(_FullDisk(), buffer_size=16)  # type: ignore[union-attr]
    saved: dict[bytes, bytes] = {}

    def save(view: memoryview | bytes, blob_id: bytes | None = None) -> bytes:
        bid = os.urandom(32)
        saved[bid] = bytes(view)
        return bid

    db = _Database(600, 512)
    extents, state = page_runs(db, 512, 64, b"k" * 32, save, None, sink=sink)
    assert b"".join(saved[e.blob][e.offset : e.offset + e.length] for e in extents) == db[0 : len(db)]
    state.sha256 = "1" * 64
    cache.save_pages("db", state)
    assert cache.load_pages("db", state.sha256) is None


# Run in a process of its own, set up as `phx` sets up glibc's malloc, then `phx backup` (which
# stops at once on a missing config: the heap settings are made before anything else). The
# freed 256 KiB buffers at the top of the heap are either kept (`keepcost`, what a trim could
# release) or handed back to the kernel, to be faulted in again by the next ones.
_KEPT_AFTER_BACKUP = """
import ctypes, sys
from click.testing import CliRunner
from phoenix_backup.cli.main import _limit_malloc_arenas, cli
_limit_malloc_arenas()
result = CliRunner().invoke(cli, ["backup", "--config", sys.argv[1]])
assert result.exit_code != 0, result.output


class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]


mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Mallinfo2
# Holes the run left in the heap are filled first (kept), so that the six buffers come from its
# top, whatever the run freed where: freed, they are the top's free space (keepcost).
fillers = [bytearray(256 * 1024) for _ in range(24)]
buffers = [bytearray(256 * 1024) for _ in range(6)]
del buffers
print(mallinfo2().keepcost)
"""


def test_a_backup_keeps_the_heap_it_frees(tmp_path: Path) -> None:
    """A backup's 256 KiB reads, copies and sealed outputs freed at the top of the heap stay
    there (up to 2 MiB) for the next ones, instead of being handed back to the kernel and faulted
    in again: fewer page faults, the peak memory unchanged (docs/benchmarks.md)."""
    import ctypes
    import subprocess
    import sys

    import pytest

    if not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("glibc's malloc (mallinfo2) only")
    script = tmp_path / "kept.py"
    script.write_text(_KEPT_AFTER_BACKUP)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "missing.json")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    kept = int(out.stdout.strip().splitlines()[-1])
    assert kept >= 1 * MB, f"{kept} bytes kept at the top of the heap"
    assert kept <= 3 * MB


def test_a_decoded_node_holds_its_extents_packed() -> None:
    """A parent's fragmented database costs about its stored bytes in memory: 91,000 extents (one
    a page of a 373 MB database) held in under 60 bytes an extent, its map in under 80 (the
    list of `Extent` objects took over 200; docs/benchmarks.md)."""
    rng = random.Random(5)
    ids = [rng.randbytes(32) for _ in range(20_000)]
    extents = [Extent(ids[rng.randrange(len(ids))], 4096 * rng.randrange(64), 4096) for _ in range(91_000)]
    node = Node("memory.db", "sqlite", size=91_000 * 4096, content=extents, sha256="0" * 64)
    tree = encode_tree([node])
    del node, extents
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        (held,) = decode_tree(tree)
        node_bytes = tracemalloc.get_traced_memory()[0] - base
        emap = ExtentMap(held.content)
        map_bytes = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert emap.size == 91_000 * 4096
    assert node_bytes < 60 * 91_000, node_bytes
    assert map_bytes < 80 * 91_000, map_bytes


def _fragmented_database(extents: int) -> Node:
    """memory.db after 30 simulated days: a patchwork of page runs (about 25,000 extents)."""
    rng = random.Random(7)
    ids = [rng.randbytes(32) for _ in range(extents // 4)]
    content = [Extent(ids[rng.randrange(len(ids))], 4096 * rng.randrange(64), 4096) for _ in range(extents)]
    return Node("memory.db", "sqlite", size=extents * 4096, content=content, sha256="0" * 64)


def test_a_fragmented_databases_tree_is_encoded_in_about_twice_its_bytes() -> None:
    """The tree that holds memory.db grows with its extents (one a page at most); writing it held
    its text five times over (extents' string, document string, its parts, its bytes): 3.0 times
    the tree's bytes at the peak, now 2.3 (docs/benchmarks.md, "The daily backup's peak over 30
    days"). The bytes are those of one `json.dumps` of the whole document."""
    node = _fragmented_database(30_000)
    small = Node("notes.md", "file", size=5, content=[Extent(b"\1" * 32, 0, 5)], sha256="1" * 64)
    folder = Node("data", "dir", subtree=b"\2" * 32)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        tree = encode_tree([small, node, folder])
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    doc = {"version": TREE_VERSION, "nodes": [n.to_json() for n in (folder, node, small)]}
    assert tree == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    decoded = [(n.name, len(n.content)) for n in decode_tree(tree)]
    assert decoded == [("data", 0), ("memory.db", 30_000), ("notes.md", 1)]
    assert peak < 2.6 * len(tree), (peak, len(tree))


def test_a_fragmented_databases_tree_is_saved_holding_it_three_times_at_most(tmp_path: Path) -> None:
    """Saving that tree: its bytes, their sealed copy and the pack they are copied into; the
    compressed bytes (tree ids barely compress) no longer wait beside them: 3.6 times the tree's
    bytes before, now 3.1."""
    repo = _repo(tmp_path)
    node = _fragmented_database(30_000)
    size = len(encode_tree([node]))
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        repo.save_tree([node])
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    repo.flush()
    assert peak < 3.35 * size, (peak, size)


def _workspace(tmp_path: Path, files: int, monkeypatch: Any) -> Path:
    """A repository and a workspace of `files` small files in one folder; the config's path."""
    from click.testing import CliRunner

    from phoenix_backup.cli.main import cli

    root = tmp_path / f"w{files}"
    many = root / "workspace" / "many"
    many.mkdir(parents=True)
    (root / "home").mkdir()
    for i in range(files):
        (many / f"file{i:06d}.js").write_text(f"module.exports = {i};\n")
    monkeypatch.setenv("HOME", str(root / "home"))
    monkeypatch.setenv("PHX_PASSPHRASE", "pw")
    monkeypatch.setenv("PHX_CACHE_DIR", str(root / "cache"))
    workspace, repo, config = root / "workspace", root / "repo", root / "phx.json"
    init = ["init", "--config", str(root / "init.json"), "--workspace", str(workspace), "--repo", str(repo)]
    assert CliRunner().invoke(cli, [*init, "--encryption", "passphrase"]).exit_code == 0
    # The whole workspace, nothing excluded.
    doc = {"workspace": str(workspace), "backupDir": str(repo), "include": [], "exclude": [], "retention": {"last": -1}}
    config.write_text(json.dumps(doc))
    return config


def _held_at(module: Any, name: str, monkeypatch: Any, *args: str | Path) -> tuple[int, str]:
    """`phx ARGS` in this process: the most Python memory (traced, bytes) held at any call of
    `module.name`, a point where only what the run keeps is alive (no read or write in flight,
    whose buffers come and go with the threads' timing); and the command's output."""
    from click.testing import CliRunner

    from phoenix_backup.cli.main import cli

    held = [0]
    original = getattr(module, name)

    def sampled(*a: Any, **k: Any) -> Any:
        held[0] = max(held[0], tracemalloc.get_traced_memory()[0])
        return original(*a, **k)

    monkeypatch.setattr(module, name, sampled)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result = CliRunner().invoke(cli, [str(a) for a in args])
    finally:
        tracemalloc.stop()
        monkeypatch.setattr(module, name, original)
    assert result.exit_code == 0, result.output
    assert held[0], f"{name} was never called"
    return held[0] - base, result.stdout


def test_a_backup_of_many_small_files_holds_little_a_file(tmp_path: Path, monkeypatch: Any) -> None:
    """A workspace of 200,000 small files (a node_modules) took a gigabyte to back up, ~5 KB a
    file: every file waited as a future (~1.3 KB) until all were read, and each node kept a
    `__dict__`. Files are handed to the reading threads a bounded number at a time (a small
    bound here, so that a few files show it), nodes and entries have slots: once every file is
    read, each file more holds under 2.8 KB (docs/benchmarks.md)."""
    from phoenix_backup.ops import backup

    monkeypatch.setattr(backup, "READ_AHEAD", 64)
    held = []
    for files in (300, 3300):
        config = _workspace(tmp_path, files, monkeypatch)
        kept, out = _held_at(backup, "_write_trees", monkeypatch, "backup", "--config", config, "--json")
        assert json.loads(out)["files"] >= files
        held.append(kept)
    per_file = (held[1] - held[0]) / 3000
    assert per_file < 2800, f"{per_file:.0f} bytes a file"  # 3,770 before, 1,960 now


def test_a_restore_of_many_small_files_holds_little_a_file(tmp_path: Path, monkeypatch: Any) -> None:
    """Restoring them took 1.1 GB: every file waited as one or two futures until all were
    written. Files are handed to the writing threads a bounded number at a time: while files
    are written, each file more holds under 4 KB (docs/benchmarks.md)."""
    from click.testing import CliRunner

    from phoenix_backup.cli.main import cli
    from phoenix_backup.ops import restore

    monkeypatch.setattr(restore, "WRITE_AHEAD", 64)
    held = []
    for files in (300, 1500):
        config = _workspace(tmp_path, files, monkeypatch)
        assert CliRunner().invoke(cli, ["backup", "--config", str(config)]).exit_code == 0
        dest = tmp_path / f"restored{files}"
        kept, _ = _held_at(
            restore, "_record", monkeypatch, "restore", "--latest", "--to", dest, "--yes", "--config", config
        )
        restored = sorted(p.name for p in (dest / "workspace" / "many").iterdir())
        assert restored == [f"file{i:06d}.js" for i in range(files)]
        assert (dest / "workspace" / "many" / "file000299.js").read_text() == "module.exports = 299;\n"
        held.append(kept)
    per_file = (held[1] - held[0]) / 1200
    assert per_file < 4000, f"{per_file:.0f} bytes a file"  # 5,550 before, 2,300-2,600 now
