"""Format 6's extent lists (repo/tree.py `ListedExtents`, docs/repository-format.md "Version 6"):
a database node of many extents keeps them in list blobs, so a walk of a snapshot's trees holds
their ids, not the extents; every list blob is checked against its node when it is read."""

from __future__ import annotations

import gc
import hashlib
import json
import random
import tracemalloc
from pathlib import Path

import pytest

import hostile
from phoenix_backup.errors import CorruptObject
from phoenix_backup.repo import keys, tree
from phoenix_backup.repo import reader as reader_module
from phoenix_backup.repo.checker import verify_repository
from phoenix_backup.repo.chunker import ExtentMap
from phoenix_backup.repo.crypto import MAX_BLOB_SIZE, BlobType
from phoenix_backup.repo.reader import NodeReader
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.snapshot import Snapshot, SnapshotStats
from phoenix_backup.repo.tree import ExtentsBuilder, ListedExtents, ListRef, Node, cut_lists, decode_tree, encode_list
from phoenix_backup.repo.walker import Trees, used_blobs
from phoenix_backup.storage.local import LocalBackend

MB = 1024 * 1024


def _repo(tmp_path: Path, **kwargs: bool) -> Repository:
    return Repository.init(
        LocalBackend(tmp_path / "repo"),
        lambda m: keys.wrap_passphrase(m, "pw", kdf_params={"n": 2**10, "r": 8, "p": 1}),
        encrypted=True,
        **kwargs,
    )


def _save_snapshot(repo: Repository, root: bytes, files: int) -> None:
    """One snapshot of the tree `root`, of host "h" and user "u"."""
    repo.save_snapshot(
        Snapshot(
            time="2026-01-01T00:00:00+00:00",
            name="2026-01-01T00:00",
            host="h",
            username="u",
            scope="full",
            tags=(),
            tree=root,
            parent=None,
            sources={},
            databases=(),
            stats=SnapshotStats(files=files),
        )
    )


def _blob(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


def _fragmented(count: int, page: int = 4096) -> Node:
    """A database of `count` pages, each page an extent of another blob (one a page, after many days)."""
    out = ExtentsBuilder(merge=False)
    for i in range(count):
        out.add(_blob(i % 5000), (i // 5000) * page, page)
    content = out.build()
    return Node(name="memory.db", type="sqlite", size=content.size, content=content, sha256="0" * 64)


def test_a_walk_of_the_trees_does_not_hold_a_databases_extents(tmp_path: Path) -> None:
    """200,000 extents (9.6 MB packed, 8 MB of base64 in the tree): a restore's walk held them with
    the trees (format 5); in format 6 the tree names a few list blobs and the walk holds those."""
    repo = _repo(tmp_path)
    node = _fragmented(200_000)
    tree_id, _added = repo.save_tree([node])
    repo.flush()
    del node
    gc.collect()
    tracemalloc.start()
    try:
        trees = Trees(repo)
        trees.load(tree_id)
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    [loaded] = trees.nodes[tree_id]
    assert loaded.size == 200_000 * 4096
    assert held < 1 * MB, f"the walk holds {held / MB:.1f} MB"
    repo.close()


def test_a_listed_node_reads_back_the_extents_it_was_written_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tree, "INLINE_EXTENTS", 10)
    monkeypatch.setattr(tree, "LIST_SPAN", 64 * 4096)
    monkeypatch.setattr(tree, "MAX_LIST_EXTENTS", 50)
    repo = _repo(tmp_path)
    node = _fragmented(1000)
    tree_id, _added = repo.save_tree([node])
    repo.flush()
    [loaded] = repo.load_tree(tree_id)
    assert (
        isinstance(loaded.content, ListedExtents) and len(loaded.content.refs) == 1000 // 64 * 2 + 1
    )  # 50 + 14 a span
    assert loaded.content == node.content and list(loaded.content.records()) == list(node.content.records())
    assert loaded.content[777] == node.content[777] and len(loaded.content) == 1000
    # Every list blob and every data blob they name is used by a snapshot holding the tree.
    snap = Snapshot.__new__(Snapshot)
    object.__setattr__(snap, "tree", tree_id)
    used = used_blobs([snap], repo.load_tree)
    assert set(loaded.list_blobs()) <= used and set(node.blobs()) <= used
    # A format 4 repository keeps the same node inline.
    old = _repo(tmp_path / "old", extent_lists=False)
    old_tree, _added = old.save_tree([node])
    old.flush()
    [inline] = old.load_tree(old_tree)
    assert not isinstance(inline.content, ListedExtents) and inline.content == node.content
    repo.close()
    old.close()


def test_an_unchanged_region_keeps_its_list_blob(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut at fixed offsets of the database: a day that changes one page rewrites one list blob."""
    monkeypatch.setattr(tree, "LIST_SPAN", 16 * 4096)
    monkeypatch.setattr(tree, "MAX_LIST_EXTENTS", 1000)
    day1 = _fragmented(200).content
    out = ExtentsBuilder(merge=False)
    for i, record in enumerate(day1.records()):
        out.add(*((_blob(99_999), 0, 4096) if i == 100 else record))
    day2 = out.build()
    lists1 = [data for data, _size, _count in cut_lists(day1.records())]
    lists2 = [data for data, _size, _count in cut_lists(day2.records())]
    assert len(lists1) == len(lists2) == 13
    assert [a == b for a, b in zip(lists1, lists2, strict=True)].count(False) == 1
    # An extent crossing a cut is split there: each list covers exactly LIST_SPAN bytes.
    sizes = [size for _data, size, _count in cut_lists([(_blob(1), 0, 40 * 4096)])]
    assert sizes == [16 * 4096, 16 * 4096, 8 * 4096]


def _listed(data: bytes, ref: ListRef, name: str = "memory.db") -> ListedExtents:
    return ListedExtents((ref,), lambda _bid: data, name)


@pytest.mark.parametrize(
    "case",
    ["other bytes", "another count", "beyond a blob", "not a list", "a data blob", "huge"],
)
def test_a_planted_list_blob_is_corrupt_object_naming_the_database(case: str) -> None:
    records = [(_blob(1), 0, 4096), (_blob(2), 4096, 4096)]
    ref = ListRef(b"\1" * 32, 8192, 2)
    data = encode_list(records)
    if case == "other bytes":
        data = encode_list([(_blob(1), 0, 4096), (_blob(2), 4096, 4095)])
    elif case == "another count":
        data = encode_list([*records, (_blob(3), 0, 0)])
    elif case == "beyond a blob":
        data = encode_list([(_blob(1), MAX_BLOB_SIZE, 4096), (_blob(2), 4096, 4096)])
    elif case == "not a list":
        data = b'{"nodes":[],"version":1}'
    elif case == "a data blob":
        data = bytes(range(256)) * 16
    elif case == "huge":
        data = encode_list([(_blob(1), 0, 1)] * 100_000)
    with pytest.raises(CorruptObject, match=r"memory\.db"):
        list(_listed(data, ref).records())


def test_a_node_whose_lists_do_not_add_up_is_refused() -> None:
    node = Node(
        name="memory.db", type="sqlite", size=8192, content=ListedExtents((ListRef(b"\1" * 32, 8192, 2),), None)
    )
    node.sha256 = "0" * 64
    doc = json.loads(tree.encode_tree([node]))
    assert decode_tree(json.dumps(doc).encode())[0].size == 8192
    for change in (
        {"size": 8191},
        {"contentLists": []},
        {"contentLists": [{"id": "ab", "size": 8192, "count": 2}]},
        {"contentLists": [{"id": "01" * 32, "size": 8192, "count": 0}]},
        {"contentLists": [{"id": "01" * 32, "size": 8192, "count": tree.LIST_EXTENTS_LIMIT + 1}]},
        {"contentLists": "x"},
        {"content": tree.encode_extents([tree.Extent(b"\2" * 32, 0, 1)])},
    ):
        bad = json.loads(json.dumps(doc))
        bad["nodes"][0].update(change)
        with pytest.raises(CorruptObject, match=r"memory\.db|size|count|id"):
            decode_tree(json.dumps(bad).encode(), "tree x")


def test_a_list_blob_is_a_tree_blob_of_the_repository(tmp_path: Path) -> None:
    """Sealed and packed as trees are (the same keys, tree packs): a data blob's id is no list."""
    repo = _repo(tmp_path)
    data_id, _ = repo.save_blob(BlobType.DATA, b"x" * 100)
    list_id = repo.save_list(encode_list([(data_id, 0, 100)]))
    repo.flush()
    assert repo.index.get(list_id) is not None and repo.index.get(list_id).type == BlobType.TREE  # type: ignore[union-attr]
    with pytest.raises(CorruptObject, match=r"memory\.db"):
        list(ListedExtents((ListRef(data_id, 100, 1),), repo.load_list, "memory.db").records())
    assert list(ListedExtents((ListRef(list_id, 100, 1),), repo.load_list, "memory.db").records()) == [
        (data_id, 0, 100)
    ]
    repo.close()


def test_a_listed_node_equals_the_inline_node_of_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list splits an extent at its cuts; the same database captured again (inline, merged) is
    the same node, so a daily backup that finds it unchanged keeps its parent's node and tree."""
    monkeypatch.setattr(tree, "INLINE_EXTENTS", 2)
    monkeypatch.setattr(tree, "LIST_SPAN", 16 * 4096)
    repo = _repo(tmp_path)
    out = ExtentsBuilder()
    for i in range(10):
        out.add(_blob(i), 0, 40 * 4096)  # each crosses a cut
    content = out.build()
    node = Node(name="memory.db", type="sqlite", size=content.size, content=content, sha256="0" * 64)
    tree_id, _added = repo.save_tree([node])
    repo.flush()
    [loaded] = repo.load_tree(tree_id)
    assert isinstance(loaded.content, ListedExtents) and len(loaded.content) > len(content)
    assert loaded == node and node == loaded and loaded.content == content
    other = ExtentsBuilder()
    other.add(_blob(99), 0, content.size)
    assert loaded.content != other.build()
    repo.close()


def test_a_daily_backups_comparison_with_a_listed_parent_holds_one_list_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backup's comparison (`ExtentMap`, region by region in order) over a parent of 50,000
    extents: loading its tree and slicing every region held the node whole (2.4 MB packed, an
    11 MB peak decoding the tree); over a listed node (lists of 4 MiB here), one list at a time."""
    monkeypatch.setattr(tree, "INLINE_EXTENTS", 1024)
    monkeypatch.setattr(tree, "LIST_SPAN", 4 * MB)
    repo = _repo(tmp_path)
    node = _fragmented(50_000)
    tree_id, _added = repo.save_tree([node])
    repo.flush()
    del node
    gc.collect()
    region = 256 * 4096
    tracemalloc.start()
    try:
        [parent] = repo.load_tree(tree_id)
        prev = ExtentMap(parent.content)
        sliced = 0
        for start in range(0, prev.size, region):
            sliced += prev.slice(start, region).size
        _held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sliced == 50_000 * 4096
    assert peak < 0.5 * MB, f"the comparison's peak: {peak / MB:.2f} MB"
    repo.close()


def test_a_tree_naming_one_huge_list_from_many_nodes_is_refused() -> None:
    """A list is stored once: a small hostile tree naming a list of 2^20 extents from 100 nodes
    would have every walk read 100 million extents. A tree's lists name at most what one tree blob
    could hold inline."""
    ref = {"id": "01" * 32, "size": 1 << 32, "count": tree.LIST_EXTENTS_LIMIT}
    nodes = [
        {
            "content": "",
            "contentLists": [ref],
            "gid": 0,
            "inode": 0,
            "ctimeNs": 0,
            "mode": 420,
            "mtimeNs": 0,
            "name": f"db{i}",
            "sha256": "0" * 64,
            "size": 1 << 32,
            "type": "sqlite",
            "uid": 0,
        }
        for i in range(100)
    ]
    with pytest.raises(CorruptObject, match="more extents in extent lists"):
        decode_tree(json.dumps({"nodes": nodes, "version": 1}).encode(), "tree x")
    assert len(decode_tree(json.dumps({"nodes": nodes[:7], "version": 1}).encode(), "tree x")) == 7


def _repeating_database(repo: Repository, count: int, blobs: int, piece: int = 64) -> tuple[Node, bytes]:
    """A database of `count` extents of `piece` bytes over `blobs` data blobs, each named again in
    every list blob (blob k at extents k, k + blobs, ...), and its bytes."""
    rng = random.Random(7)
    datas = [rng.randbytes(16 * piece) for _ in range(blobs)]
    ids = [repo.save_blob(BlobType.DATA, d)[0] for d in datas]
    out = ExtentsBuilder(merge=False)
    whole = bytearray()
    for i in range(count):
        k, at = i % blobs, (i // blobs) % 16 * piece
        out.add(ids[k], at, piece)
        whole += datas[k][at : at + piece]
    content = out.build()
    sha = hashlib.sha256(whole).hexdigest()
    return Node(name="memory.db", type="sqlite", size=content.size, content=content, sha256=sha), bytes(whole)


def test_a_restores_reader_of_a_listed_database_holds_two_lists_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restore's reader (`NodeReader`, `_Ahead`) of a node of 30,000 extents whose 500 blobs
    are named again in each of its 30 lists: it packed the node whole and counted its repeated
    blobs over all of it; now it holds the list blob handed out and the next (and its read-ahead,
    bounded, made small here), and the bytes it hands out are the database's, proven by its
    SHA-256."""
    monkeypatch.setattr(tree, "INLINE_EXTENTS", 1024)
    monkeypatch.setattr(tree, "LIST_SPAN", 64 * 1024)
    for bound in ("READ_AHEAD", "READ_RANGE", "BLOB_CACHE_BYTES"):
        monkeypatch.setattr(reader_module, bound, 64 * 1024)
    repo = _repo(tmp_path)
    node, whole = _repeating_database(repo, 30_000, 500)
    expected = hashlib.sha256(whole).hexdigest()
    tree_id, _added = repo.save_tree([node])
    repo.flush()
    del node, whole
    gc.collect()
    tracemalloc.start()
    try:
        [loaded] = repo.load_tree(tree_id)
        assert isinstance(loaded.content, ListedExtents) and len(loaded.content.refs) == 30
        reader = NodeReader(repo, "memory.db", loaded)
        digest = hashlib.sha256()
        for chunk in reader.chunks():
            digest.update(chunk)
        reader.finish()
        _held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest.hexdigest() == expected
    assert peak < 1 * MB, f"the restore's reader's peak: {peak / MB:.2f} MB"
    repo.close()


@pytest.mark.parametrize("cache", [reader_module.BLOB_CACHE_BYTES, 1])
def test_a_listed_database_whose_blobs_repeat_across_lists_restores_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: int
) -> None:
    """A blob named in list 1 and again in list 5 (and in none between), and blobs repeated within
    a list: the bytes read back are the database's, in the restore's reader, a stream's (`prove`)
    and `read_node`, whether the blob is still kept or was dropped and is read again (a cache of
    one blob)."""
    monkeypatch.setattr(tree, "INLINE_EXTENTS", 4)
    monkeypatch.setattr(tree, "LIST_SPAN", 8 * 4096)
    monkeypatch.setattr(reader_module, "BLOB_CACHE_BYTES", cache)
    repo = _repo(tmp_path)
    rng = random.Random(5)
    datas = [rng.randbytes(4 * 4096) for _ in range(12)]
    ids = [repo.save_blob(BlobType.DATA, d)[0] for d in datas]
    # 8 pages a list: list 1 (the second) and list 5 name blob 0; list 2 names blob 1 four times.
    pages = [(2 + i % 10, i % 4) for i in range(7 * 8)]
    pages[8] = pages[5 * 8 + 3] = (0, 1)
    for i in range(2 * 8, 2 * 8 + 4):
        pages[i] = (1, i % 4)
    out = ExtentsBuilder(merge=False)
    whole = bytearray()
    for k, page in pages:
        out.add(ids[k], page * 4096, 4096)
        whole += datas[k][page * 4096 : (page + 1) * 4096]
    content = out.build()
    node = Node(
        name="memory.db",
        type="sqlite",
        size=content.size,
        content=content,
        sha256=hashlib.sha256(whole).hexdigest(),
    )
    tree_id, _added = repo.save_tree([node])
    repo.flush()
    [loaded] = repo.load_tree(tree_id)
    assert isinstance(loaded.content, ListedExtents) and len(loaded.content.refs) == 7
    assert reader_module.read_node(repo, "memory.db", loaded) == whole
    assert b"".join(reader_module.stream_blocks(repo, "memory.db", loaded)) == whole
    r = NodeReader(repo, "memory.db", loaded)
    assert b"".join(bytes(c) for c in r.chunks()) == whole
    r.finish()
    repo.close()


def test_verify_read_data_of_a_listed_database_holds_two_lists_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`verify --read-data` of a snapshot holding a listed database of 30,000 extents: its walk
    packed the node whole to key it (`Extents.of`) and held it to the end with the nodes to prove;
    now the node is keyed by its list blobs and proved through the restore's reader, a window of
    list blobs at a time; it still proves the bytes (ok) and checks every extent against the index."""
    monkeypatch.setattr(tree, "INLINE_EXTENTS", 1024)
    monkeypatch.setattr(tree, "LIST_SPAN", 64 * 1024)
    for bound in ("READ_AHEAD", "READ_RANGE", "BLOB_CACHE_BYTES"):
        monkeypatch.setattr(reader_module, bound, 64 * 1024)
    repo = _repo(tmp_path)
    node, whole = _repeating_database(repo, 30_000, 500)
    sub, _added = repo.save_tree([node])
    root, _added = repo.save_tree([Node("workspace", "dir", mode=0o755, subtree=sub)])
    repo.flush()
    _save_snapshot(repo, root, files=1)
    del node, whole
    gc.collect()
    tracemalloc.start()
    try:
        result = verify_repository(repo, read_data=True)
        _held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not result.errors and result.checked["files"] == 1
    assert peak < 2 * MB, f"verify's peak: {peak / MB:.2f} MB"
    repo.close()


def test_the_blobs_a_listed_database_needs_are_named_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`Node.needed_blobs` (a backup's commit check, a damaged restore's packs): a fragmented
    database of 20,000 extents over 5,000 blobs gave 20,000 ids and its lists; now each once."""
    monkeypatch.setattr(tree, "INLINE_EXTENTS", 1024)
    monkeypatch.setattr(tree, "LIST_SPAN", 4 * MB)
    repo = _repo(tmp_path)
    node = _fragmented(20_000)
    tree_id, _added = repo.save_tree([node])
    repo.flush()
    [loaded] = repo.load_tree(tree_id)
    needed = loaded.needed_blobs()
    assert needed is not None and len(loaded.list_blobs()) == 20
    assert needed == [*loaded.list_blobs(), *(_blob(i) for i in range(5000))]
    repo.close()


def _one_list_many_trees(path: Path, trees: int) -> tuple[Repository, bytes]:
    """A repository of a snapshot of `trees` small trees, each a database naming the same stored
    lists of 60,000 extents (as a key holder could plant them), reopened; and a blob of them."""
    repo = _repo(path)
    node, _whole = _repeating_database(repo, 60_000, 500)
    dirs = []
    for i in range(trees):
        db = Node(name=f"db{i}", type="sqlite", size=node.size, content=node.content, sha256=node.sha256)
        sub, _added = repo.save_tree([db])
        dirs.append(Node(f"d{i}", "dir", mode=0o755, subtree=sub))
    root, _added = repo.save_tree(dirs)
    repo.flush()
    _save_snapshot(repo, root, files=trees)
    repo.close()
    return Repository.open(LocalBackend(path / "repo"), keys.Credentials(passphrase="pw")), node.content[0].blob


def _verify_cost(path: Path, trees: int) -> tuple[float, list[str]]:
    repo, _blob = _one_list_many_trees(path, trees)
    start = hostile.cpu_seconds()
    result = verify_repository(repo)
    cost = hostile.cpu_seconds() - start
    repo.close()
    return cost, [e.path for e in result.errors]


def test_verify_reads_a_list_named_from_many_trees_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key holder who wrote N small trees each naming the same stored list of 2^20 extents had
    `phx verify` read the list again for each tree (1.97 CPU-s for one tree, 15.0 for eight): now
    each distinct list is read once a run, and 16 trees cost about what one does."""
    monkeypatch.setattr(tree, "INLINE_EXTENTS", 1024)
    monkeypatch.setattr(tree, "LIST_SPAN", 1 * MB)
    one, errors = _verify_cost(tmp_path / "one", 1)
    many, errors_many = _verify_cost(tmp_path / "many", 16)
    assert errors == errors_many == []
    assert many < 3 * one + 0.2, f"verify of 16 trees naming one list: {many:.2f} CPU-s, of one: {one:.2f}"


def test_a_damaged_blob_of_a_list_named_from_several_trees_names_every_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list is read once a run, under the first path naming it: a damaged blob it names is
    still reported under every path naming the list."""
    monkeypatch.setattr(tree, "INLINE_EXTENTS", 1024)
    monkeypatch.setattr(tree, "LIST_SPAN", 1 * MB)
    repo, blob = _one_list_many_trees(tmp_path, 3)
    repo.load_index()
    loc = repo.index.get(blob)
    assert loc is not None
    pack = next((tmp_path / "repo").glob(f"data/*/{loc.pack_id}*"))
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.stored // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    result = verify_repository(repo, read_data=True)
    assert {e.path for e in result.errors} == {"d0/db0", "d1/db1", "d2/db2"}
    repo.close()


def test_a_tree_whose_lists_name_more_than_a_reader_takes_is_never_written(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every reader refuses a tree whose databases' lists name more than TREE_LIST_EXTENTS_LIMIT
    # extents together (7,895,160: a folder of fragmented databases of some 32 GB at 4 KiB pages);
    # a backup wrote one with exit 0, and ls, verify and restore refused the snapshot as damaged.
    # It is refused as too large, as a tree past MAX_BLOB_SIZE is, so the backup stores nothing.
    monkeypatch.setattr(tree, "TREE_LIST_EXTENTS_LIMIT", 10_000)

    def db(name: str, count: int) -> Node:
        refs = (ListRef(b"\x01" * 32, count * 4096, count),)
        return Node(
            name=name, type="sqlite", size=count * 4096, content=ListedExtents(refs, None, name), sha256="0" * 64
        )

    decode_tree(tree.encode_tree([db("a.db", 6_000), db("b.db", 4_000)]))  # at the limit: written and read
    with pytest.raises(tree.TreeTooLarge, match=r"name 10,001 extents together, more than the 10,000"):
        tree.encode_tree([db("a.db", 6_000), db("b.db", 4_001)])


def test_a_backup_commits_no_snapshot_whose_list_it_cannot_read_back() -> None:
    """The commit's last check confirms every blob a database needs; a node whose list blob cannot
    be read back confirmed none of its data blobs (`needed_blobs() or ()`) and the snapshot was
    committed on trust. It stops the commit, naming the database."""
    from phoenix_backup.ops import backup as backup_module

    def unreadable(blob: bytes) -> bytes:
        raise CorruptObject("the extent list fails authentication")

    refs = (ListRef(b"\x01" * 32, 4096, 1),)
    node = Node("memory.db", "sqlite", size=4096, content=ListedExtents(refs, unreadable, "memory.db"), sha256="0" * 64)
    plain = Node("notes.md", "file", size=0, content=[], sha256="0" * 64)
    with pytest.raises(CorruptObject, match=r"memory\.db.*no snapshot was written"):
        backup_module._needed_blobs({"workspace/notes.md": plain, "home/.argentos/memory.db": node})
    assert backup_module._needed_blobs({"workspace/notes.md": plain}) == set()
