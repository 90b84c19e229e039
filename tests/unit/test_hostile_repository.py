"""Hostile repository input at the library level: what a writer of an unencrypted repository's
storage (or damage) can plant, and the bounds Phoenix keeps against it. Each case failed on the code
before issue 14: a DAG bomb walked 2^33 paths, a 5,000-level tree raised RecursionError, a blob
claiming 10 bytes inflated to hundreds of MB, and a key slot could cost 36 s of scrypt."""

from __future__ import annotations

import json
import secrets
import sys
import tracemalloc
import zlib
from pathlib import Path

import pytest
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hostile import Forger, cpu_seconds, deflate_bomb, dir_node, file_node, tree
from phoenix_backup.errors import CorruptObject, KdfBudgetExceeded, ObjectNotFound
from phoenix_backup.repo import keys
from phoenix_backup.repo.checker import verify_repository
from phoenix_backup.repo.crypto import BlobType, Compression
from phoenix_backup.repo.index import decode_index
from phoenix_backup.repo.pack import PackBuilder, PackEntry, blob_aad, pack_name
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.walker import MAX_DEPTH, walk_tree
from phoenix_backup.storage.local import LocalBackend

MB = 1024 * 1024


@pytest.fixture
def forger(tmp_path: Path) -> Forger:
    return Forger(Repository.init(LocalBackend(tmp_path / "repo"), keys.wrap_none, False))


def dag_bomb(forger: Forger, levels: int) -> bytes:
    """`levels` folders, each naming the one below twice (a and b): 2^levels paths, levels+1 trees."""
    below = forger.tree(file_node("leaf.md"))
    for _ in range(levels):
        below = forger.tree(dir_node("a", below), dir_node("b", below))
    return below


def chain(forger: Forger, depth: int) -> bytes:
    below = forger.tree(file_node("deep.md"))
    for _ in range(depth):
        below = forger.tree(dir_node("d", below))
    return below


def test_a_dag_bomb_is_refused_before_a_single_path_is_walked(forger: Forger) -> None:
    root = dag_bomb(forger, 33)
    forger.repo.flush()
    started = cpu_seconds()
    with pytest.raises(CorruptObject, match=r"names more than the 4,000,000 paths a walk allows"):
        next(walk_tree(forger.repo, root))
    assert cpu_seconds() - started < 2


def test_a_dag_bomb_within_the_path_budget_is_refused_too(forger: Forger) -> None:
    # 20 levels: 3.1 million paths from 21 small trees. Under the path budget, this walked for
    # minutes in gigabytes: `ls` 56 s and 4 GB, `restore --dry-run` 183 s, `archive` 310 s and 5 GB.
    root = dag_bomb(forger, 20)
    sid = forger.snapshot(root, name="bomb")
    forger.repo.flush()
    started = cpu_seconds()
    with pytest.raises(CorruptObject, match=r"names \d[\d,]* paths but only \d+ entries are stored below it"):
        next(walk_tree(forger.repo, root))
    assert cpu_seconds() - started < 2
    result = verify_repository(Repository.open(forger.repo.backend, keys.Credentials()))
    assert [e.snapshot for e in result.errors] == [sid], result.errors


def test_seventy_hard_linked_copies_of_a_folder_are_walked(forger: Forger) -> None:
    # `cp -al` made 70 times of a folder of 1,000 files (pnpm's node_modules has this shape): one
    # tree named by 70 entries, 70,070 paths from 1,070 stored entries, past FREE_PATHS. The walk
    # counted the folder's entries once and refused it as a bomb; they count once per copy.
    files = forger.tree(*(file_node(f"f{i:04}.txt", inode=i + 1) for i in range(1000)))
    copy = forger.tree(dir_node("d", files))
    root = forger.tree(*(dir_node(f"copy{n:03}", copy) for n in range(70)))
    forger.repo.flush()
    started = cpu_seconds()
    assert sum(1 for _ in walk_tree(forger.repo, root)) == 70 * 1002
    assert cpu_seconds() - started < 2
    # Copies of those copies multiply the paths, not the entries naming a tree: still refused.
    outer = forger.tree(*(dir_node(f"outer{n:03}", root) for n in range(70)))
    forger.repo.flush()
    with pytest.raises(CorruptObject, match=r"names 4,909,\d+ paths|paths a walk allows"):
        next(walk_tree(forger.repo, outer))


def test_folders_shared_a_few_times_are_walked(forger: Forger) -> None:
    # Equal folders are one tree (folders of empty folders with the same times, say): a real
    # snapshot may name one tree from a few places, and is walked.
    skeleton = forger.tree(dir_node("x", forger.tree(dir_node("y", forger.tree(dir_node("z", forger.tree()))))))
    root = forger.tree(*(dir_node(f"copy{i:05}", skeleton) for i in range(30_000)))
    forger.repo.flush()
    assert sum(1 for _ in walk_tree(forger.repo, root)) == 120_000


def test_folders_nested_deeper_than_any_path_are_refused_without_recursion(forger: Forger) -> None:
    root = chain(forger, 5000)
    forger.repo.flush()
    with pytest.raises(CorruptObject, match="nests folders more than 2,048 deep"):
        list(walk_tree(forger.repo, root))


def test_a_tree_deeper_than_pythons_stack_but_within_the_limit_is_walked(forger: Forger) -> None:
    depth = 1500  # beyond the interpreter's recursion limit (1000), within MAX_DEPTH
    assert sys.getrecursionlimit() < depth < MAX_DEPTH
    root = chain(forger, depth)
    forger.repo.flush()
    paths = [p for p, _node in walk_tree(forger.repo, root)]
    assert len(paths) == depth + 1
    assert paths[-1] == "/".join(["d"] * depth + ["deep.md"])


def test_a_tree_that_contains_itself_is_refused(forger: Forger) -> None:
    # The index may say anything in an unencrypted repository: a tree id mapped to a tree naming it.
    loop = b"\x42" * 32
    forger.raw_blob(
        loop, tree(dir_node("again", loop)), Compression.NONE, len(tree(dir_node("again", loop))), BlobType.TREE
    )
    with pytest.raises(CorruptObject, match="contains itself"):
        list(walk_tree(forger.repo, loop))


def test_verify_reports_each_bad_snapshot_and_checks_the_rest(forger: Forger) -> None:
    good = forger.tree(forger.file_node("MEMORY.md", b"hello\n"))
    good_sid = forger.snapshot(good, name="good")
    bomb_sid = forger.snapshot(dag_bomb(forger, 33), name="bomb")
    deep_sid = forger.snapshot(chain(forger, 3000), name="deep")
    forger.repo.flush()
    started = cpu_seconds()
    result = verify_repository(Repository.open(forger.repo.backend, keys.Credentials()))
    assert cpu_seconds() - started < 10
    assert result.checked["snapshots"] == 3
    bad = {e.snapshot: e.message for e in result.errors}
    assert set(bad) == {bomb_sid, deep_sid}, result.errors
    assert "paths a walk allows" in bad[bomb_sid] and "2,048 deep" in bad[deep_sid]
    assert good_sid not in bad


def test_verify_reads_many_tiny_packs_in_time_linear_in_their_number(forger: Forger, tmp_path: Path) -> None:
    # A writer of the storage adds thousands of packs of one small blob each (a megabyte in all).
    # verify --read-data scanned the whole index once per pack: 8,000 such packs took 169 s.
    repo = forger.repo
    packs: dict[str, list[PackEntry]] = {}
    for i in range(2500):
        data = i.to_bytes(4, "little") * 4
        blob_id = repo.ids.blob_id(BlobType.DATA, data)
        packer = PackBuilder(BlobType.DATA)
        packer.add(blob_id, Compression.NONE, repo.sealer.seal(data, blob_aad(BlobType.DATA, blob_id)), len(data))
        pack_id, raw, entries = packer.finish(repo.sealer)
        path = tmp_path / "repo" / pack_name(pack_id)  # as the storage writer does, without an fsync each
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(raw)
        packs[pack_id] = entries
    repo.write_index(packs, [])
    started = cpu_seconds()
    result = verify_repository(Repository.open(repo.backend, keys.Credentials()), read_data=True)
    assert cpu_seconds() - started < 3  # 10 s before, growing with the square of the count
    assert result.ok and result.checked["packs"] == 2500


# ---------------------------------------------------------------------------------------------
# Decompression is bounded by the declared length and a global cap


@pytest.mark.parametrize(
    ("method", "refusal"), [(Compression.ZSTD, "would inflate"), (Compression.GZIP, "inflates to more than the 10")]
)
def test_a_blob_claiming_ten_bytes_is_refused_before_it_inflates(
    forger: Forger, method: Compression, refusal: str
) -> None:
    if method == Compression.ZSTD:
        bomb = zstandard.ZstdCompressor().compress(b"\0" * (256 * MB))
    else:
        bomb = deflate_bomb(10, 256 * MB)
    forger.raw_blob(b"\x07" * 32, bomb, method, 10)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptObject, match=refusal):
            forger.repo.load_blob(BlobType.DATA, b"\x07" * 32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MB


@pytest.mark.parametrize("sized", [True, False], ids=["frame-says-its-size", "frame-without-size"])
def test_an_index_object_inflating_past_16_times_its_size_is_refused_in_little_memory(sized: bool) -> None:
    # 32 MiB of zeros stores in a few KB: far past 16 times that (plus the 1 MiB a tiny object may
    # inflate to). A frame that says its size is refused before it inflates; one that does not
    # stops at the limit.
    bomb = zstandard.ZstdCompressor(write_content_size=sized).compress(b"\0" * (32 * MB))
    tracemalloc.start()
    try:
        with pytest.raises(CorruptObject, match="claims to inflate beyond" if sized else "does not decompress"):
            decode_index(bomb, "index/test")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MB, f"{peak // MB} MiB spent on an index object of {len(bomb)} bytes"


def test_a_blob_claiming_more_than_any_blob_holds_is_refused(forger: Forger) -> None:
    forger.raw_blob(b"\x09" * 32, zlib.compress(b"\0" * 1000), Compression.GZIP, 2**32 - 1)
    fresh = Repository.open(forger.repo.backend, keys.Credentials())
    fresh.load_index()
    # The index object and the pack's own header both say so: neither is used, and verify says why.
    assert [m for m in fresh.problems.index.values() if "more than any blob holds" in m]
    with pytest.raises(CorruptObject, match="not in the index"):
        fresh.load_blob(BlobType.DATA, b"\x09" * 32)


def test_an_index_entry_past_the_end_of_its_pack_allocates_nothing(forger: Forger) -> None:
    # An index entry may claim 4 GiB of stored bytes in a pack of a few hundred: reading it
    # allocated those 4 GiB first (a MemoryError traceback on a machine with less).
    forger.raw_blob(b"\x0b" * 32, b"0123456789", Compression.NONE, 10)
    pack_id = forger.repo.index.pack_ids()[-1]
    forger.repo.write_index({pack_id: [PackEntry(BlobType.DATA, Compression.NONE, b"\x0c" * 32, 0, 2**32 - 1, 10)]}, [])
    fresh = Repository.open(forger.repo.backend, keys.Credentials())
    fresh.load_index()
    tracemalloc.start()
    try:
        with pytest.raises(ObjectNotFound, match="shorter than the index says"):
            fresh.load_blob(BlobType.DATA, b"\x0c" * 32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MB


# ---------------------------------------------------------------------------------------------
# Key derivation is bounded per slot, in total, and in the number of slots tried


def hostile_slot(n: int, r: int, p: int) -> keys.KeySlot:
    doc = {
        "version": 1,
        "id": secrets.token_hex(8),
        "type": "passphrase",
        "created": "2026-01-01T00:00:00Z",
        "host": "x",
        "username": "x",
        "label": "passphrase",
        "params": {"kdf": "scrypt", "n": n, "r": r, "p": p, "salt": "AAAAAAAAAAAAAAAAAAAAAA=="},
        "data": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    }
    return keys.KeySlot.from_json(json.dumps(doc).encode())


def test_a_slot_asking_for_36_seconds_of_scrypt_is_skipped() -> None:
    master = keys.MasterSecrets.generate()
    own = keys.wrap_passphrase(master, "pw", kdf_params={"n": 2**10, "r": 8, "p": 1})
    costly = [hostile_slot(2**20, 8, 16) for _ in range(3)]  # 36 s each before the budget
    started = cpu_seconds()
    slot, opened = keys.open_any([*costly, own], keys.Credentials(passphrase="pw"))
    assert (slot.id, opened) == (own.id, master)
    assert cpu_seconds() - started < 2


def test_opening_spends_a_bounded_total_on_many_slots() -> None:
    master = keys.MasterSecrets.generate()
    own = keys.wrap_passphrase(master, "pw", kdf_params={"n": 2**10, "r": 8, "p": 1})
    at_the_cap = [hostile_slot(2**15, 8, 8) for _ in range(6)]  # each at the per-slot ceiling, 32 MiB
    started = cpu_seconds()
    with pytest.raises(KdfBudgetExceeded, match="delete the keys/ objects you did not create"):
        keys.open_any([*at_the_cap, own], keys.Credentials(passphrase="pw"))
    # Two slots at the per-slot ceiling fill the budget: 8x the default slot each (about 1.5 CPU-s
    # here, six would be 4.5). CPU time, not wall time: other jobs on the machine do not count.
    assert cpu_seconds() - started < 6


def test_opening_tries_a_bounded_number_of_slots() -> None:
    master = keys.MasterSecrets.generate()
    own = keys.wrap_passphrase(master, "pw", kdf_params={"n": 2**10, "r": 8, "p": 1})
    cheap = [hostile_slot(2, 1, 1) for _ in range(keys.MAX_PASSPHRASE_SLOTS_TRIED)]
    with pytest.raises(KdfBudgetExceeded):
        keys.open_any([*cheap, own], keys.Credentials(passphrase="pw"))
    # One slot fewer and the owner's slot is reached.
    slot, _ = keys.open_any([*cheap[1:], own], keys.Credentials(passphrase="pw"))
    assert slot.id == own.id


def test_a_new_slot_never_asks_for_more_than_a_slot_may_spend() -> None:
    with pytest.raises(Exception, match="n\\*r\\*p"):
        keys.wrap_passphrase(keys.MasterSecrets.generate(), "pw", kdf_params={"n": 2**20, "r": 8, "p": 1})
