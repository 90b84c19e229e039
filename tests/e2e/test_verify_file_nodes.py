"""`phx verify` proves what `phx restore` proves: a file node's extents assemble the bytes its
SHA-256 names (issue readdata).

A snapshot is written by the real writer (`phx backup`), then one file node is re-written with the
repository's key (as a buggy writer, a merge or a repair could): an extent past its blob's end, two
extents swapped, overlapping extents, a wrong size, a wrong SHA-256. Plain `verify` must refuse
what the index alone shows (an extent past its blob's end; a size the extents do not add up to),
`verify --read-data` all of them, naming the snapshot and the path; `restore` refuses the same
file. A clean repository, and a large file deduplicated within itself and with a copy, still pass.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import PHX, Sandbox, flip_byte

from phoenix_backup.config import load_config
from phoenix_backup.errors import ThawPending
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.repo import captures, checker, prover
from phoenix_backup.repo.checker import SUBSET_CURSOR, VerifyError, VerifyResult, verify_repository
from phoenix_backup.repo.crypto import BlobType, Compression, sha256_hex
from phoenix_backup.repo.index import BlobLocation
from phoenix_backup.repo.pack import pack_name
from phoenix_backup.repo.reader import READ_GAP, READ_RANGE
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Extent, Extents, Node
from phoenix_backup.repo.walker import Trees

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process


@pytest.fixture(autouse=True)
def _inline_databases(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pack pass's proofs of nodes of several extents: databases kept inline here (the suite's
    conftest lists any of more than 2 extents). A listed database is never taken into the pass: the
    restore's reader proves it a window of list blobs at a time (tests/unit/test_extent_lists.py)."""
    from phoenix_backup.repo import tree

    monkeypatch.setattr(tree, "INLINE_EXTENTS", 4096)


PLANTED = "planted.txt"
TEXT = b"hello, world"  # one blob: extents (b, 0, 7) and (b, 7, 5) are "hello, " and "world"


def _repo(sb: Sandbox) -> Repository:
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    repo.load_index()
    return repo


def _nodes_by_name(repo: Repository, sid: str) -> dict[str, Node]:
    """The nodes of snapshot `sid` by name (the last of a name wins)."""
    trees = Trees(repo)
    trees.load(repo.find_snapshot(sid).tree)
    return {n.name: n for ns in trees.nodes.values() for n in ns}


def _rewrite(repo: Repository, tree_id: bytes, change: Callable[[Node], Node]) -> bytes | None:
    """The id of a copy of the tree whose node PLANTED is `change`d (None: not below this tree)."""
    nodes = repo.load_tree(tree_id)
    for i, node in enumerate(nodes):
        if node.type == "file" and node.name == PLANTED:
            nodes[i] = change(node)
        elif node.type == "dir" and node.subtree is not None:
            sub = _rewrite(repo, node.subtree, change)
            if sub is None:
                continue
            nodes[i] = dataclasses.replace(node, subtree=sub)
        else:
            continue
        return repo.save_tree(nodes)[0]
    return None


def plant(sb: Sandbox, base: str, change: Callable[[Node], Node]) -> str:
    """A new snapshot: snapshot `base` with the node of PLANTED changed, sealed with the repository's
    key. Returns its id."""
    repo = _repo(sb)
    try:
        latest = next(s for s in repo.list_snapshots() if s.id == base)
        root = _rewrite(repo, latest.tree, change)
        assert root is not None, f"{PLANTED} is not in the snapshot"
        repo.flush()
        return repo.save_snapshot(dataclasses.replace(latest, tree=root))
    finally:
        repo.close()


def with_extents(node: Node, *extents: tuple[int, int], size: int | None = None) -> Node:
    blob = next(node.blobs())
    content = Extents.of([Extent(blob, offset, length) for offset, length in extents])
    return dataclasses.replace(node, content=content, size=content.size if size is None else size)


CASES: dict[str, tuple[Callable[[Node], Node], bool]] = {
    # name: (the change, whether plain `verify` (no data read) must see it)
    "extent past its blob's end": (lambda n: with_extents(n, (0, len(TEXT) + 1)), True),
    "two extents swapped": (lambda n: with_extents(n, (7, 5), (0, 7)), False),
    "overlapping extents": (lambda n: with_extents(n, (0, 7), (0, 5)), False),
    "a wrong size": (lambda n: with_extents(n, (0, 7), (7, 5), size=len(TEXT) + 1), True),
    "a wrong SHA-256": (lambda n: dataclasses.replace(n, sha256="0" * 64), False),
}


def _errors(doc: dict[str, Any], sid: str) -> list[dict[str, Any]]:
    """The errors of snapshot `sid` naming the planted file (its path; or, for a node its tree
    refuses to decode, the message: the path is then the tree's folder)."""
    return [e for e in doc["errors"] if e["snapshot"] == sid and PLANTED in (e["path"] or "") + e["message"]]


def test_verify_refuses_file_nodes_that_do_not_assemble_their_sha256(backed_up: Sandbox, tmp_path: Path) -> None:
    """Each case planted in a snapshot of its own (one repository, so one run of each command
    checks them all): plain verify names those the index shows, --read-data all of them, each in
    its own snapshot with its path; restore refuses the file from each; a --subset cycle finds
    every one."""
    sb = backed_up
    (sb.workspace / PLANTED).write_bytes(TEXT)
    base = sb.backup()["id"]
    planted = {case: plant(sb, base, change) for case, (change, _structural) in CASES.items()}

    plain = sb.phx("verify", "--json", check=None)
    assert plain.code == 1, plain
    for case, sid in planted.items():
        structural = CASES[case][1]
        assert bool(_errors(plain.json(), sid)) == structural, (case, plain.json()["errors"])

    deep = sb.phx("verify", "--read-data", "--json", check=None)
    assert deep.code == 1, deep
    errors = deep.json()["errors"]
    for case, sid in planted.items():
        assert _errors(deep.json(), sid), (case, errors)
    assert {e["snapshot"] for e in errors} == set(planted.values()), errors  # the base snapshot is clean

    ok = sb.phx_here("restore", "--backup", base, "--to", tmp_path / "base", "--path", f"**/{PLANTED}", "--json")
    assert [p.read_bytes() for p in (tmp_path / "base").rglob(PLANTED)] == [TEXT], ok
    for case, sid in planted.items():
        out = tmp_path / sid[:12]
        res = sb.phx("restore", "--backup", sid, "--to", out, "--path", f"**/{PLANTED}", check=None)
        assert res.code != 0 and PLANTED in res.out + res.err, (case, res)
        assert [p.read_bytes() for p in out.rglob(PLANTED)] in ([], [TEXT]), case

    # --subset: a run proves the nodes whose first blob lies in a pack it reads, so a cycle of
    # runs covering every pack finds every planted node (here all in one pack: one run finds all).
    found: set[str] = set()
    for _ in range(4):
        res = sb.phx("verify", "--subset", "25", "--json", check=None)
        hits = {sid for sid in planted.values() if _errors(res.json(), sid)}
        assert res.code == (1 if hits else 0), res
        found |= hits
    assert found == set(planted.values())


def test_a_clean_repository_and_a_large_deduplicated_file_pass(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    block = os.urandom(3 << 20)
    big = block * 3 + block[: 1 << 20]  # the same chunks again and again within the file
    (sb.workspace / "big.bin").write_bytes(big)
    (sb.workspace / "big-copy.bin").write_bytes(big)  # and the very same node again
    sb.backup()
    doc = sb.verify("--read-data")
    assert doc["ok"] is True and doc["errors"] == [], doc
    # Every distinct file node proved once: the copy is the same content, so it is not read twice.
    repo = _repo(sb)
    try:
        trees = Trees(repo)
        for snap in repo.list_snapshots():
            trees.load(snap.tree)
        contents = {
            (Extents.of(node.content), node.size, node.sha256)
            for nodes in trees.nodes.values()
            for node in nodes
            if node.type in ("file", "sqlite")
        }
    finally:
        repo.close()
    assert doc["checked"]["files"] == len(contents), doc["checked"]
    sb.restore_to("latest", tmp_path / "out")
    assert [p.read_bytes() == big for p in sorted((tmp_path / "out").rglob("big*.bin"))] == [True, True]


def test_verify_reads_the_capture_segments_that_restore_at_rebuilds_from(sandbox: Sandbox) -> None:
    """`phx restore --at` rebuilds a database from the watch's capture segments: `verify
    --read-data` reads every segment from the store (a damaged one is an error naming it), and
    plain `verify` names a chain that lost a segment (the states after it cannot be rebuilt)."""
    sb = sandbox
    watch = subprocess.Popen(
        [PHX, "watch", "--no-files", "--duration", "4"], env=sb.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    time.sleep(1.5)
    con = sqlite3.connect(sb.layout.dashboard_db)
    try:
        for i in range(6):
            con.execute("CREATE TABLE IF NOT EXISTS planted(x)")
            con.execute("INSERT INTO planted VALUES (?)", (str(i) * 1000,))
            con.commit()
            time.sleep(0.3)
    finally:
        con.close()
    assert watch.wait(timeout=120) == 0, watch.communicate()
    repo = _repo(sb)
    try:
        chain = sorted(
            (captures.load(repo, name) for name in captures.segment_names(repo)), key=lambda s: (s.chain, s.sequence)
        )
    finally:
        repo.close()
    assert len(chain) >= 3 and len({s.chain for s in chain}) == 1, chain
    doc = sb.verify("--read-data")
    assert doc["checked"]["segments"] == len(chain), doc
    assert sb.verify()["checked"]["segments"] == len(chain)  # and the header cache holds every header

    middle = sb.repo / "captures" / chain[1].id
    kept = middle.read_bytes()
    flip_byte(middle)  # a header in the cache does not stand for the segment in the store
    res = sb.phx_here("verify", "--read-data", "--json", code=1)
    objects = {e["object"] for e in res.json()["errors"]}
    assert f"captures/{chain[1].id}" in objects and f"chain {chain[1].chain[:8]}" in objects, res
    assert "phx restore --at" in res.out, res

    middle.unlink()
    res = sb.phx_here("verify", "--json", code=1)
    errors = res.json()["errors"]
    assert [e["object"] for e in errors] == [f"chain {chain[1].chain[:8]}"], errors
    assert "segment 1 of this watch's chain" in errors[0]["message"], errors
    middle.write_bytes(kept)
    assert sb.verify("--read-data")["ok"] is True


def test_a_subset_run_names_the_pack_of_the_blob_that_fails_not_the_nodes_first(backed_up: Sandbox) -> None:
    """A `--subset` run proves the nodes whose first blob lies in the packs it reads, reading
    their other blobs wherever they lie: one of those damaged is named by its own pack (the JSON's
    `object`, what a script copies back), not by the pack of the node's first blob, which is fine."""
    sb = backed_up
    first, second = b"A" * 5000, b"B" * 7000
    (sb.workspace / "first.bin").write_bytes(first)
    (sb.workspace / PLANTED).write_bytes(TEXT)
    sb.backup()
    (sb.workspace / "second.bin").write_bytes(second)  # another backup: another pack
    base = sb.backup()["id"]
    repo = _repo(sb)
    try:
        nodes = _nodes_by_name(repo, base)
        blob_a, blob_b = next(nodes["first.bin"].blobs()), next(nodes["second.bin"].blobs())
        loc_a, loc_b = repo.index.get(blob_a), repo.index.get(blob_b)
        assert loc_a is not None and loc_b is not None
    finally:
        repo.close()
    pack_a, pack_b = pack_name(loc_a.pack_id), pack_name(loc_b.pack_id)
    assert pack_a != pack_b

    def spanning(node: Node) -> Node:
        content = Extents.of([Extent(blob_a, 0, len(first)), Extent(blob_b, 0, len(second))])
        return dataclasses.replace(node, content=content, size=content.size, sha256=sha256_hex(first + second))

    sid = plant(sb, base, spanning)
    assert sb.verify("--read-data")["ok"] is True  # a node may span packs
    flip_byte(sb.repo / pack_b, loc_b.offset + loc_b.stored // 2)
    sb.phx("verify", "--subset", "1", check=None)  # leaves its cursor in the cache
    (cursor,) = sb.cache.rglob(SUBSET_CURSOR)
    cursor.write_text(json.dumps({"all": pack_a}))  # the next run reads the pack of the first blob alone
    res = sb.phx_here("verify", "--subset", "1", "--json", code=1)
    assert res.json()["subset"]["packs"] == 1 and res.json()["subset"]["first"] == pack_a, res
    errors = [e for e in res.json()["errors"] if e["snapshot"] == sid and e["path"].endswith(PLANTED)]
    assert errors and {e["object"] for e in errors} == {pack_b}, res.json()["errors"]


def test_a_failing_node_is_named_in_every_snapshot_sharing_its_tree(backed_up: Sandbox, tmp_path: Path) -> None:
    """The walk reads each tree once, under the first snapshot holding it; a failing node is still
    named in every snapshot that holds it through a shared tree (the message says to restore it
    from another snapshot: naming only the first sent the user to one that fails as well)."""
    sb = backed_up
    (sb.workspace / PLANTED).write_bytes(TEXT)
    base = sb.backup()["id"]
    bad = plant(sb, base, lambda n: dataclasses.replace(n, sha256="0" * 64))
    repo = _repo(sb)
    try:
        snap = next(s for s in repo.list_snapshots() if s.id == bad)
        shared = repo.save_snapshot(dataclasses.replace(snap, time="2030-01-01T00:00:00+00:00"))  # the same tree
    finally:
        repo.close()
    res = sb.phx_here("verify", "--read-data", "--json", code=1)
    named = {e["snapshot"] for e in res.json()["errors"] if (e["path"] or "").endswith(PLANTED)}
    assert named == {bad, shared}, res.json()["errors"]
    out = sb.phx("restore", "--backup", shared, "--to", tmp_path / "out", "--path", f"**/{PLANTED}", check=None)
    assert out.code != 0 and PLANTED in out.err, out  # what verify now names does fail to restore


def test_a_subset_run_that_stops_leaves_the_cursor_so_the_next_run_reads_those_packs(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `--subset` run that stops (its packs still thawing from cold storage: "run the command
    again once S3 has thawed them"; a store gone away) leaves the cursor where it was: the next run
    reads the packs it did not. Before, the cursor moved on when the run began, so the run asked
    to be repeated read the next packs instead, and the skipped ones waited a whole cycle."""
    sb = backed_up
    for i in range(3):
        (sb.workspace / f"more-{i}.bin").write_bytes(bytes([i]) * 3000)
        sb.backup()
    cursor = tmp_path / SUBSET_CURSOR
    repo = _repo(sb)
    try:
        verify_repository(repo, read_data=True, subset=25, cursor=cursor)
        start = json.loads(cursor.read_text())["all"]
        thawed = repo.backend.prepare_read

        def still_thawing(names: Iterable[str]) -> None:
            raise ThawPending("packs are still being restored from cold storage; run the command again")

        monkeypatch.setattr(repo.backend, "prepare_read", still_thawing)
        with pytest.raises(ThawPending):
            verify_repository(repo, read_data=True, subset=25, cursor=cursor)
        assert json.loads(cursor.read_text())["all"] == start
        monkeypatch.setattr(repo.backend, "prepare_read", thawed)
        again = verify_repository(repo, read_data=True, subset=25, cursor=cursor)
        assert again.ok and again.subset is not None and again.subset["first"] == start, again.subset
        assert json.loads(cursor.read_text())["all"] != start  # done: the next run goes on
    finally:
        repo.close()


def test_a_one_extent_node_of_another_blob_of_the_right_length_fails(backed_up: Sandbox, tmp_path: Path) -> None:
    """A node of one extent is proved by the pack pass, from the plaintext it opens: an extent
    inside a blob of the right length but the wrong blob (plain `verify` cannot see it: the index
    says the extent fits) fails `--read-data` naming the path, as `phx restore` refuses it; the
    same node with its own blob and a non-zero offset passes."""
    sb = backed_up
    (sb.workspace / PLANTED).write_bytes(TEXT)
    (sb.workspace / "same-length.txt").write_bytes(TEXT.upper())
    (sb.workspace / "tail.txt").write_bytes(b"world")  # TEXT[7:] as a file of its own
    base = sb.backup()["id"]
    repo = _repo(sb)
    try:
        trees = Trees(repo)
        trees.load(repo.find_snapshot(base).tree)
        other = next(n for ns in trees.nodes.values() for n in ns if n.name == "same-length.txt")
    finally:
        repo.close()
    wrong = plant(sb, base, lambda n: dataclasses.replace(n, content=Extents.of(other.content)))
    tail = plant(sb, base, lambda n: dataclasses.replace(with_extents(n, (7, 5)), sha256=sha256_hex(TEXT[7:])))
    assert sb.verify()["ok"] is True
    res = sb.phx_here("verify", "--read-data", "--json", code=1)
    assert {e["snapshot"] for e in res.json()["errors"]} == {wrong}, res.json()["errors"]
    assert "do not match the SHA-256" in _errors(res.json(), wrong)[0]["message"]
    bad = sb.phx("restore", "--backup", wrong, "--to", tmp_path / "w", "--path", f"**/{PLANTED}", check=None)
    assert bad.code != 0 and PLANTED in bad.err, bad
    sb.restore_to(tail, tmp_path / "t", "--path", f"**/{PLANTED}")
    assert [p.read_bytes() for p in (tmp_path / "t").rglob(PLANTED)] == [b"world"]


# --------------------------------------------------------------------------------------------
# Each blob decrypted once: the pack pass proves nodes of several blobs too (repo/prover.py)
# --------------------------------------------------------------------------------------------


def _distinct_nodes(repo: Repository) -> set[tuple[Extents, int, str | None]]:
    trees = Trees(repo)
    for snap in repo.list_snapshots():
        trees.load(snap.tree)
    return {
        (Extents.of(node.content), node.size, node.sha256)
        for nodes in trees.nodes.values()
        for node in nodes
        if node.type in ("file", "sqlite")
    }


_Record = tuple[str, int, int]  # an extent of a planted node: (file a, b or c, offset, length)


class _Shapes:
    """Three files of random bytes, A and B stored by one backup (one pack), C by the next (another
    pack), and nodes planted over their blobs, each in a snapshot of its own with the SHA-256 of
    the bytes its extents assemble: sharing blobs at other offsets, out of pack order, repeating a
    blob, spanning both packs, and a long node of 300 extents over all three."""

    def __init__(self, sb: Sandbox) -> None:
        self.data = {name: os.urandom(size) for name, size in (("a", 3000), ("b", 4000), ("c", 5000))}
        (sb.workspace / PLANTED).write_bytes(TEXT)
        (sb.workspace / "a.bin").write_bytes(self.data["a"])
        (sb.workspace / "b.bin").write_bytes(self.data["b"])
        sb.backup()
        (sb.workspace / "c.bin").write_bytes(self.data["c"])
        self.base = sb.backup()["id"]
        repo = _repo(sb)
        try:
            trees = Trees(repo)
            trees.load(repo.find_snapshot(self.base).tree)
            nodes = {n.name: n for ns in trees.nodes.values() for n in ns}
            self.blob = {name: next(nodes[f"{name}.bin"].blobs()) for name in self.data}
            self.pack = {name: repo.index.get(blob).pack_id for name, blob in self.blob.items()}  # type: ignore[union-attr]
        finally:
            repo.close()
        assert self.pack["a"] == self.pack["b"] != self.pack["c"], self.pack
        assert all(len(Extents.of(nodes[f"{n}.bin"].content)) == 1 for n in self.data)  # one blob each
        long = [("abc"[i % 3], (i * 7) % 900, 10 + i % 50) for i in range(300)]
        self.shapes: dict[str, list[_Record]] = {
            "shares A and B at other offsets": [("a", 0, 100), ("b", 50, 250)],
            "shares them too, the other way": [("b", 0, 50), ("a", 100, 100)],
            "out of pack order": [("b", 0, 4000), ("a", 0, 3000)],
            "repeats a blob": [("a", 0, 10), ("b", 0, 4000), ("a", 10, 2990), ("a", 0, 3000)],
            "spans two packs": [("c", 0, 1000), ("a", 0, 3000), ("c", 1000, 4000), ("b", 0, 4000)],
            "long": long,
        }

    def bytes_of(self, records: list[_Record]) -> bytes:
        return b"".join(self.data[name][off : off + length] for name, off, length in records)

    def node(self, records: list[_Record], sha_of: list[_Record] | None = None) -> Callable[[Node], Node]:
        """The change planting a node of `records`, with the SHA-256 of `sha_of` (default: its own)."""
        content = Extents.of([Extent(self.blob[name], off, length) for name, off, length in records])
        sha = sha256_hex(self.bytes_of(records if sha_of is None else sha_of))
        return lambda n: dataclasses.replace(n, content=content, size=content.size, sha256=sha)


def _location(sb: Sandbox, blob: bytes) -> BlobLocation:
    """The copy of `blob` the index lists first (the one a restore reads)."""
    repo = _repo(sb)
    try:
        loc = repo.index.get(blob)
    finally:
        repo.close()
    assert loc is not None
    return loc


def _opened_per_blob(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> Counter[bytes]:
    """How often each data blob is opened (decrypted and decompressed) from now on."""
    opened: Counter[bytes] = Counter()
    real = repo.open_blob

    def counting(kind: BlobType, blob_id: bytes, *args: Any, **kwargs: Any) -> bytes:
        if kind == BlobType.DATA:
            opened[blob_id] += 1
        return real(kind, blob_id, *args, **kwargs)

    monkeypatch.setattr(repo, "open_blob", counting)
    return opened


def test_verify_decrypts_each_blob_once_and_proves_nodes_of_many_blobs(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nodes whose extents share blobs, come out of pack order, repeat a blob, span packs or run
    to 300 extents are proved by `verify --read-data` (checked.files counts every distinct node)
    while each data blob is opened once (once per copy: the pack pass opens every blob of every
    pack), and once more at most when it was kept for a node further on (its sealed bytes, not its
    plaintext, are kept: the long node alternating between A, B and C opens each once more, not
    100 times). Before, every node of more than one extent was read again through the restore's
    reader, its blobs decrypted a second time. What verify proves, restore writes: byte-equal."""
    sb = backed_up
    shapes = _Shapes(sb)
    planted = {name: plant(sb, shapes.base, shapes.node(records)) for name, records in shapes.shapes.items()}
    assert sb.verify("--read-data")["ok"] is True
    repo = _repo(sb)
    try:
        opened = _opened_per_blob(repo, monkeypatch)
        res = verify_repository(repo, read_data=True)
        assert res.ok, res.errors
        assert res.checked["files"] == len(_distinct_nodes(repo)), res.checked
        copies = {
            blob: len(repo.index.locations(blob)) for blob, loc in repo.index.blobs() if loc.type == BlobType.DATA
        }
        # Each copy opened once by the pack pass; a blob kept for a node further on (as its sealed
        # bytes) is opened again when the node gets there: at most once per node needing it and
        # blob whose arrival moves that node on, however often the node needs it.
        bound: Counter[bytes] = Counter()
        for content, _size, _sha in _distinct_nodes(repo):
            if len(content) > 1:
                for blob in set(content.blobs()):
                    bound[blob] += len(set(content.blobs()))
        again = {b: n - copies[b] for b, n in opened.items() if n != copies[b]}
        assert all(0 < n <= bound[b] for b, n in again.items()), (again, bound)
        assert set(opened) == set(copies)
    finally:
        repo.close()
    for name in ("spans two packs", "long"):
        out = tmp_path / name.replace(" ", "-")
        sb.restore_to(planted[name], out, "--path", f"**/{PLANTED}")
        assert [p.read_bytes() for p in out.rglob(PLANTED)] == [shapes.bytes_of(shapes.shapes[name])], name


def test_nodes_of_many_blobs_that_do_not_match_are_each_named(backed_up: Sandbox) -> None:
    """Each shape planted with the SHA-256 of other bytes (its last two extents swapped, or for the
    long node one middle extent a byte further on) fails `verify --read-data` with its snapshot
    and path, as `restore` refuses it; the same shapes planted right, beside them, pass."""
    sb = backed_up
    shapes = _Shapes(sb)
    good = {name: plant(sb, shapes.base, shapes.node(records)) for name, records in shapes.shapes.items()}
    bad = {}
    for name, records in shapes.shapes.items():
        if name == "long":  # the stored extents are the right ones but for one in the middle
            blob, off, length = records[150]
            shifted = [*records[:150], (blob, off + 1, length), *records[151:]]
            bad[name] = plant(sb, shapes.base, shapes.node(shifted, sha_of=records))
        else:
            bad[name] = plant(sb, shapes.base, shapes.node(records, sha_of=[*records[:-2], records[-1], records[-2]]))
    res = sb.phx_here("verify", "--read-data", "--json", code=1)
    errors = res.json()["errors"]
    for name, sid in bad.items():
        found = _errors(res.json(), sid)
        assert found and all("do not match the SHA-256" in e["message"] for e in found), (name, errors)
    assert {e["snapshot"] for e in errors} == set(bad.values()), errors  # none of the good ones
    assert not set(good.values()) & {e["snapshot"] for e in errors}


def test_a_damaged_blob_in_the_middle_of_a_long_node_names_every_node_that_needs_it(backed_up: Sandbox) -> None:
    """A byte flipped in blob C, which the long node reads a third of its 300 extents from (the
    first from A): the pack pass names C's pack with every path that needs C (the long node, the
    node spanning two packs, c.bin), exit 1; the nodes of A and B alone are not named."""
    sb = backed_up
    shapes = _Shapes(sb)
    planted = {name: plant(sb, shapes.base, shapes.node(records)) for name, records in shapes.shapes.items()}
    loc = _location(sb, shapes.blob["c"])
    flip_byte(sb.repo / pack_name(loc.pack_id), loc.offset + loc.stored // 2)
    res = sb.phx_here("verify", "--read-data", "--json", code=1)
    errors = res.json()["errors"]
    named = {e["snapshot"] for e in errors if (e["path"] or "").endswith(PLANTED)}
    assert named == {planted["long"], planted["spans two packs"]}, errors
    assert {e["object"] for e in errors} == {pack_name(loc.pack_id)}, errors
    assert any(e["path"].endswith("c.bin") for e in errors), errors


def _read_back(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the nodes read back through the restore's reader after the pack pass."""
    paths: list[str] = []
    real = checker._assembly_problem

    def noting(repo: Repository, path: str, node: Node) -> tuple[str, str] | None:
        paths.append(path)
        return real(repo, path, node)

    monkeypatch.setattr(checker, "_assembly_problem", noting)
    return paths


def _watch_prover(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The most nodes of several extents a pass took (`waiting`: the pack pass, or a further pass of
    the nodes refused past its cap) and the most it held at once."""
    seen = {"waiting": 0, "held": 0}

    class Watched(prover.NodeProver):
        def order(self, names: list[str]) -> list[str]:
            waiting = len({id(n) for ns in self.waiting.values() for n in ns if not isinstance(n, tuple)})
            seen["waiting"] = max(seen["waiting"], waiting)
            return super().order(names)

        def close(self) -> None:
            seen["held"] = max(seen["held"], self.peak_held)
            super().close()

    monkeypatch.setattr(checker, "NodeProver", Watched)
    return seen


def test_nodes_past_the_budget_stay_in_the_pass_and_are_still_proved(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing to hold (a budget of 0 bytes), every node that needs a blob again later, or
    before the one it waits for, stays in the pack pass: the blobs it waits on are read again from
    their pack (the copy a restore reads) when it gets there. Each is proved (the same
    checked.files), a wrong one is still named, only the blobs of nodes of several extents are
    opened twice, and no node but the wrong one is read back through the restore's reader.
    Before, the pass gave those nodes up to the reader (held plaintext counted against the budget)."""
    sb = backed_up
    shapes = _Shapes(sb)
    for records in shapes.shapes.values():
        plant(sb, shapes.base, shapes.node(records))
    records = shapes.shapes["repeats a blob"]
    wrong = plant(sb, shapes.base, shapes.node(records, sha_of=[*records[:-2], records[-1], records[-2]]))
    monkeypatch.setattr(prover, "HOLD_BUDGET", 0)
    repo = _repo(sb)
    try:
        opened = _opened_per_blob(repo, monkeypatch)
        read_back = _read_back(monkeypatch)
        seen = _watch_prover(monkeypatch)
        res = verify_repository(repo, read_data=True)
        assert res.checked["files"] == len(_distinct_nodes(repo)), res.checked  # the wrong one too
        assert {(e.snapshot, e.path) for e in res.errors} == {(wrong, e.path) for e in _errors_at(res, wrong)}
        assert _errors_at(res, wrong) and "do not match the SHA-256" in _errors_at(res, wrong)[0].message
        assert [p.rsplit("/", 1)[-1] for p in read_back] == [PLANTED], read_back  # the wrong one only
        assert seen["held"] == 0
        twice = {b for b, n in opened.items() if n > len(repo.index.locations(b))}
        assert shapes.blob["a"] in twice and twice <= _blobs_of_many_extents(repo), twice
    finally:
        repo.close()


def test_past_the_cap_of_waiting_nodes_every_node_is_proved_and_a_damaged_blob_named(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The nodes of several extents waiting in the pack pass are capped (MAX_WAITING; 2 here, of
    the six planted shapes and the sample's databases): the rest are proved in further passes, 2
    at most each (test_nodes_past_the_cap_are_proved_in_further_passes_each_blob_opened_once_a_pass).
    Every node is still proved (checked.files counts each
    distinct node), and a byte flipped in blob C names C's pack with every path that needs it.
    Before, every node of several extents waited in the pass, however many."""
    sb = backed_up
    shapes = _Shapes(sb)
    planted = {name: plant(sb, shapes.base, shapes.node(records)) for name, records in shapes.shapes.items()}
    monkeypatch.setattr(prover, "MAX_WAITING", 2, raising=False)
    repo = _repo(sb)
    try:
        many = sum(1 for content, _size, _sha in _distinct_nodes(repo) if len(content) > 1)
        seen = _watch_prover(monkeypatch)
        res = verify_repository(repo, read_data=True)
        assert res.ok, res.errors
        assert res.checked["files"] == len(_distinct_nodes(repo)), res.checked
        assert many > 2 and seen["waiting"] == 2, (many, seen)
        loc = repo.index.get(shapes.blob["c"])
        assert loc is not None
    finally:
        repo.close()
    flip_byte(sb.repo / pack_name(loc.pack_id), loc.offset + loc.stored // 2)
    repo = _repo(sb)
    try:
        seen = _watch_prover(monkeypatch)
        res = verify_repository(repo, read_data=True)
        assert seen["waiting"] == 2, seen
    finally:
        repo.close()
    named = {e.snapshot for e in res.errors if (e.path or "").endswith(PLANTED)}
    assert named == {planted["long"], planted["spans two packs"]}, res.errors
    assert {e.object for e in res.errors} == {pack_name(loc.pack_id)}, res.errors
    assert any((e.path or "").endswith("c.bin") for e in res.errors), res.errors


def _errors_at(res: VerifyResult, sid: str) -> list[VerifyError]:
    return [e for e in res.errors if e.snapshot == sid and (e.path or "").endswith(PLANTED)]


def _blobs_of_many_extents(repo: Repository) -> set[bytes]:
    """The blobs of the nodes of several extents (the planted ones, the sample's databases): those
    the pack pass may give up with no budget, and no other."""
    return {b for content, _size, _sha in _distinct_nodes(repo) if len(content) > 1 for b in content.blobs()}


def test_a_subset_run_proves_the_nodes_whose_first_blob_lies_in_its_packs(backed_up: Sandbox) -> None:
    """`--subset`: each run proves exactly the distinct nodes whose first blob's pack it reads
    (and the empty ones), however the pack pass orders its reading; a cycle of runs covers every
    pack, so every node."""
    sb = backed_up
    shapes = _Shapes(sb)
    for records in shapes.shapes.values():
        plant(sb, shapes.base, shapes.node(records))
    repo = _repo(sb)
    try:
        nodes = _distinct_nodes(repo)
        first = {c: (repo.index.get(c[0].blob(0)) if len(c[0]) else None) for c in nodes}
        packs = sorted(pack_name(p) for p in repo.index.pack_ids() if (sb.repo / pack_name(p)).exists())
    finally:
        repo.close()
    covered: set[str] = set()
    for _ in range(4):
        doc = sb.verify("--subset", "34")
        start = packs.index(doc["subset"]["first"])
        run = {packs[(start + i) % len(packs)] for i in range(doc["subset"]["packs"])}
        expected = sum(1 for c, loc in first.items() if loc is None or pack_name(loc.pack_id) in run)
        assert doc["ok"] is True and doc["checked"]["files"] == expected, (doc["checked"], expected)
        covered |= run
    assert covered == set(packs)


def test_nodes_are_proved_from_the_copy_a_restore_reads_not_a_later_one_that_matches(backed_up: Sandbox) -> None:
    """Blob A stored a second time, as other bytes of its length sealed under its id (a holder of
    the key can), in a pack the index lists first: a restore opens that copy (it checks the tag,
    not the id), the file fails its SHA-256, and the restore proves A's copies by their ids and
    writes the file again from the one that matches, naming the planted pack
    (tests/e2e/test_restore_proven_copy.py). `verify --read-data` must still name every node that
    needs A: the planted copy is damage to repair, though A's first pack, read in the same pass,
    holds a copy that opens and matches. Before,
    the pack pass proved every node from whichever copy matched: none of them was named (the nodes
    of several blobs) or a.bin was not (nodes of one extent, before the node prover too)."""
    sb = backed_up
    shapes = _Shapes(sb)
    planted = {name: plant(sb, shapes.base, shapes.node(records)) for name, records in shapes.shapes.items()}
    a = shapes.blob["a"]
    # Index objects load in the order of their names, and the index lists first the copy loaded
    # first. The planted copy's index object is sealed again (a new nonce, so a new name) until
    # its name sorts before every index object of the backup: a few seals, each a few microseconds.
    repo = _repo(sb)
    try:
        ours = min(info.name for info in repo.backend.list("index/"))
        before = {info.name for info in repo.backend.list("index/")}
        repo._seal_and_pack(BlobType.DATA, a, bytes(len(shapes.data["a"])))
        repo.flush()
        (written,) = {info.name for info in repo.backend.list("index/")} - before
        packs, superseded = repo.read_index_object(written)
        for _ in range(1 << 20):
            raw = repo.seal_index(packs, superseded)
            if f"index/{sha256_hex(raw)}" < ours:
                break
        else:
            pytest.fail("no seal of the planted index object sorted first in 2**20 tries")
        repo.backend.write(f"index/{sha256_hex(raw)}", raw)
        repo.backend.delete(written)
    finally:
        repo.close()
    repo = _repo(sb)
    try:
        first = repo.index.get(a)
    finally:
        repo.close()
    assert first is not None and first.pack_id != shapes.pack["a"], "the index lists the planted copy first"
    restored = sb.phx_here(
        "restore", "--backup", planted["long"], "--to", sb.root / "long", "--path", f"**/{PLANTED}", code=0
    )
    assert pack_name(first.pack_id) in restored.err, restored.err
    (copy,) = (sb.root / "long").rglob(PLANTED)
    assert copy.read_bytes() == shapes.bytes_of(shapes.shapes["long"])
    res = sb.phx_here("verify", "--read-data", "--json", code=1)
    errors = res.json()["errors"]
    for name, sid in planted.items():
        found = _errors(res.json(), sid)
        assert found and all("do not match the SHA-256" in e["message"] for e in found), (name, errors)
        # Named as what it is: the planted pack's wrong copy of A, with the pack whose copy proves;
        # not a writer's wrong extents (before: "a writer stored wrong extents or a wrong hash").
        wrong = f"{pack_name(first.pack_id)} holds a wrong copy of blob {a.hex()[:16]}"
        assert all(wrong in e["message"] and pack_name(shapes.pack["a"]) in e["message"] for e in found), found
        assert not any("wrong extents" in e["message"] for e in found), found
    assert any(e["snapshot"] == shapes.base and (e["path"] or "").endswith("a.bin") for e in errors), errors


@pytest.mark.parametrize(
    "damage",
    [
        "cut short",
        *(["a byte flipped", "deleted"] if os.environ.get("PHX_TEST_HEAVY") == "1" else []),
    ],
)
def test_a_pack_damaged_after_the_pass_read_it_names_the_node_that_reads_it_again(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """With nothing held (a budget of 0 bytes), the node spanning two packs (C, A, C, B) reads
    blob C again from its pack when A arrives. That pack is damaged (another process, a disk)
    after the pass read it whole and found C sound, before the read again: the node is not proved
    from bytes the pass did not check; it is read back as a restore reads it and named with C's
    pack and its path, and the run fails; it does not crash."""
    sb = backed_up
    shapes = _Shapes(sb)
    sid = plant(sb, shapes.base, shapes.node(shapes.shapes["spans two packs"]))
    monkeypatch.setattr(prover, "HOLD_BUDGET", 0)
    c_pack = sb.repo / pack_name(shapes.pack["c"])
    loc = _location(sb, shapes.blob["c"])
    read: list[str] = []
    real_read = checker._read_pack

    def then_damage(repo: Repository, name: str, *args: Any) -> None:
        real_read(repo, name, *args)
        read.append(name.split("/")[-1])
        if name.split("/")[-1] == shapes.pack["c"]:
            if damage == "a byte flipped":
                flip_byte(c_pack, loc.offset + loc.stored // 2)
            elif damage == "cut short":
                with open(c_pack, "r+b") as f:
                    f.truncate(loc.offset + loc.stored // 2)
            else:
                c_pack.unlink()

    monkeypatch.setattr(checker, "_read_pack", then_damage)
    counts: dict[str, int] = {}

    class Watched(prover.NodeProver):
        def close(self) -> None:
            counts["reread"] = self.reread
            super().close()

    monkeypatch.setattr(checker, "NodeProver", Watched)
    repo = _repo(sb)
    try:
        res = verify_repository(repo, read_data=True)
    finally:
        repo.close()
    assert read.index(shapes.pack["c"]) < read.index(shapes.pack["a"]) and counts["reread"] >= 1, (read, counts)
    assert not res.ok
    found = _errors_at(res, sid)
    assert [e.object for e in found] == [pack_name(shapes.pack["c"])], res.errors
    assert "damaged or missing" in found[0].message, found


def test_subset_runs_with_the_cap_of_waiting_nodes_hit_prove_every_node_and_name_a_damaged_blob(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--subset` runs with MAX_WAITING hit (1 node of several extents waits in the pass): each run
    proves exactly the distinct nodes whose first blob lies in its packs, those refused by the cap
    too (in further passes); with a byte flipped in blob C, the runs of a cycle
    name C's pack with the paths of the nodes that need C, whichever run proves them."""
    sb = backed_up
    shapes = _Shapes(sb)
    planted = {name: plant(sb, shapes.base, shapes.node(records)) for name, records in shapes.shapes.items()}
    monkeypatch.setattr(prover, "MAX_WAITING", 1)
    cursor = tmp_path / "cursor.json"
    repo = _repo(sb)
    try:
        nodes = _distinct_nodes(repo)
        first = {c: (repo.index.get(c[0].blob(0)) if len(c[0]) else None) for c in nodes}
        packs = sorted(pack_name(p) for p in repo.index.pack_ids() if (sb.repo / pack_name(p)).exists())
        loc = repo.index.get(shapes.blob["c"])
        assert loc is not None
    finally:
        repo.close()

    taken: list[tuple[int, int]] = []  # per run: nodes of several extents taken, refused

    class Capped(prover.NodeProver):
        def close(self) -> None:
            taken.append((self.taken, self.refused))
            super().close()

    monkeypatch.setattr(checker, "NodeProver", Capped)

    def cycle(clean: bool) -> tuple[set[str], list[VerifyError]]:
        covered: set[str] = set()
        errors: list[VerifyError] = []
        for _ in range(3):
            repo = _repo(sb)
            try:
                res = verify_repository(repo, read_data=True, subset=34, cursor=cursor)
            finally:
                repo.close()
            start = packs.index(str(res.subset["first"]))
            run = {packs[(start + i) % len(packs)] for i in range(int(str(res.subset["packs"])))}
            expected = sum(1 for c, at in first.items() if at is None or pack_name(at.pack_id) in run)
            assert taken[-1][0] <= 1, taken
            # (Once C is damaged, the nodes that need it are named instead of proved.)
            files = res.checked["files"]
            assert (files == expected) if clean else (files <= expected), (files, expected)
            covered |= run
            errors += res.errors
        return covered, errors

    covered, errors = cycle(clean=True)
    assert covered == set(packs) and not errors, errors
    assert any(refused for _taken, refused in taken), taken  # the cap was hit
    flip_byte(sb.repo / pack_name(loc.pack_id), loc.offset + loc.stored // 2)
    covered, errors = cycle(clean=False)
    assert covered == set(packs)
    named = {e.snapshot for e in errors if (e.path or "").endswith(PLANTED)}
    assert named == {planted["long"], planted["spans two packs"]}, errors
    assert {e.object for e in errors} == {pack_name(loc.pack_id)}, errors
    assert any((e.path or "").endswith("c.bin") for e in errors), errors


def test_nodes_past_the_cap_are_proved_in_further_passes_each_blob_opened_once_a_pass(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """12 nodes, each of blob C (one pack) then blob A (another), with 4 nodes of several extents
    waiting at most (MAX_WAITING): the nodes refused past the cap are proved in further passes of
    at most 4 nodes each, which open A and C once a pass and read each of their packs once a pass;
    none is read back one at a time through the restore's reader (before: each refused node was,
    A and C opened again for each). A byte flipped in C names C's pack with every node's snapshot
    and path, exit 1; and so does C damaged after the pack pass read it, before a further pass
    (that pass cannot open it: its nodes go to the restore's reader, which names it)."""
    sb = backed_up
    shapes = _Shapes(sb)
    planted = {i: plant(sb, shapes.base, shapes.node([("c", i * 40, 100), ("a", i * 50, 200)])) for i in range(12)}
    monkeypatch.setattr(prover, "MAX_WAITING", 4)
    watched = {"a": shapes.blob["a"], "c": shapes.blob["c"]}
    c_loc = _location(sb, shapes.blob["c"])
    packs = {pack_name(shapes.pack[name]): name for name in watched}

    def run(damage_after_pass: bool = False) -> tuple[VerifyResult, dict[str, Any]]:
        seen: dict[str, Any] = {"provers": 0, "taken": [], "opened": Counter(), "reads": Counter(), "after": False}
        seen["added"] = 0  # nodes handed to the further passes' provers

        class Watched(prover.NodeProver):
            def add(self, content: prover.Content) -> bool:
                seen["added"] += seen["after"]
                return super().add(content)

            def close(self) -> None:
                seen["provers"] += 1
                seen["taken"].append(self.taken)
                super().close()
                if not seen["after"] and damage_after_pass:
                    flip_byte(sb.repo / pack_name(c_loc.pack_id), c_loc.offset + c_loc.stored // 2)
                seen["after"] = True  # the pack pass is over: count what the refused nodes cost

        monkeypatch.setattr(checker, "NodeProver", Watched)
        repo = _repo(sb)
        try:
            real_open, real_read, real_range = repo.open_blob, repo.backend.read, repo.backend.read_range

            def opening(kind: BlobType, blob: bytes, *args: Any, **kwargs: Any) -> bytes:
                if seen["after"]:
                    seen["opened"][blob] += 1
                return real_open(kind, blob, *args, **kwargs)

            def reading(name: str, *args: Any, **kwargs: Any) -> Any:
                if seen["after"] and name in packs:
                    seen["reads"][packs[name]] += 1
                return real_read(name, *args, **kwargs)

            def ranging(name: str, *args: Any, **kwargs: Any) -> bytes:
                if seen["after"] and name in packs:
                    seen["reads"][packs[name]] += 1
                return real_range(name, *args, **kwargs)

            monkeypatch.setattr(repo, "open_blob", opening)
            monkeypatch.setattr(repo.backend, "read", reading)
            monkeypatch.setattr(repo.backend, "read_range", ranging)
            real_into = repo.backend.read_range_into

            def into(name: str, *args: Any, **kwargs: Any) -> int:
                if seen["after"] and name in packs:
                    seen["reads"][packs[name]] += 1
                return real_into(name, *args, **kwargs)

            monkeypatch.setattr(repo.backend, "read_range_into", into)
            seen["read_back"] = _read_back(monkeypatch)
            return verify_repository(repo, read_data=True), seen
        finally:
            repo.close()

    res, seen = run()
    assert res.ok, res.errors
    repo = _repo(sb)
    try:
        nodes = _distinct_nodes(repo)
    finally:
        repo.close()
    many = sum(1 for content, _size, _sha in nodes if len(content) > 1)
    assert res.checked["files"] == len(nodes), res.checked
    assert seen["read_back"] == [], seen["read_back"]  # every node proved in a pass
    assert max(seen["taken"]) == 4 and sum(seen["taken"]) == many, seen["taken"]  # under the cap
    further = seen["provers"] - 1
    assert seen["added"] == many - 4, seen  # each refused node handed to one further pass, once
    assert further == -(-many // 4) - 1, seen
    for name, blob in watched.items():  # once a further pass, not once a node
        assert 1 <= seen["opened"][blob] <= further, (name, seen)
        assert 1 <= seen["reads"][name] <= further, (name, seen)

    # C damaged after the pack pass read it whole and found it sound: the nodes the pass took are
    # proved; a further pass cannot open C, so each of the others is read back and named.
    res, seen = run(damage_after_pass=True)
    assert not res.ok and res.exit_status != 0
    named = {e.snapshot for e in res.errors if (e.path or "").endswith(PLANTED)}
    assert named <= set(planted.values()) and len(named) >= len(planted) - 4, res.errors
    assert {e.object for e in res.errors} == {pack_name(shapes.pack["c"])}, res.errors
    assert len(seen["read_back"]) == len(named), seen["read_back"]
    # C damaged before: the pack pass names C's pack with every path that needs C.
    res, seen = run()
    assert not res.ok and res.exit_status != 0
    named = {e.snapshot for e in res.errors if (e.path or "").endswith(PLANTED)}
    assert named == set(planted.values()), res.errors
    assert {e.object for e in res.errors} == {pack_name(shapes.pack["c"])}, res.errors
    assert any((e.path or "").endswith("c.bin") for e in res.errors), res.errors


def test_an_index_entry_at_the_headers_offset_with_other_lengths_is_what_verify_proves_from(
    backed_up: Sandbox, tmp_path: Path
) -> None:
    """The index lists a blob at the very offset its pack's header does, with another sealed length,
    compression or plaintext length (the only index entry: a write-only repository's index objects
    come from the machine that backs up). A restore reads what the index lists and fails the file;
    so `verify --read-data` names each path, exit 1. Before, the pack pass took the header's entry
    for the copy a restore reads (same pack, same offset), proved the nodes from it and said ok."""
    sb = backed_up
    files = {field: os.urandom(2000 + i) for i, field in enumerate(("stored", "compression", "raw"))}
    for field, data in files.items():
        (sb.workspace / f"{field}.bin").write_bytes(data)
    base = sb.backup()["id"]
    repo = _repo(sb)
    try:
        nodes = _nodes_by_name(repo, base)
        blobs = {next(nodes[f"{field}.bin"].blobs()): field for field in files}
        by_pack = repo.index.by_pack()
        for entries in by_pack.values():
            for i, e in enumerate(entries):
                field = blobs.get(e.id)
                if field == "stored":
                    entries[i] = dataclasses.replace(e, stored=e.stored - 1)
                elif field == "compression":
                    entries[i] = dataclasses.replace(e, compression=Compression((e.compression + 1) % 2))
                elif field == "raw":  # one byte more: the node's extent still fits (plain verify passes)
                    entries[i] = dataclasses.replace(e, raw=e.raw + 1)
        old = [name.split("/")[-1] for name in repo.index_objects]
        repo.write_index_parts(by_pack, old)
        for name in old:
            repo.backend.delete(f"index/{name}")
    finally:
        repo.close()
    assert sb.verify()["ok"] is True  # the index alone shows nothing
    repo = _repo(sb)
    try:
        res = verify_repository(repo, read_data=True)
    finally:
        repo.close()
    assert not res.ok and res.exit_status != 0
    named = {(e.path or "").rsplit("/", 1)[-1] for e in res.errors if e.snapshot == base}
    assert named == {f"{field}.bin" for field in files}, res.errors
    out = sb.phx("restore", "--backup", base, "--to", tmp_path / "o", "--path", "**/stored.bin", check=None)
    assert out.code != 0 and "stored.bin" in out.err, out  # what verify names does fail to restore


def test_further_passes_read_the_blobs_their_nodes_need_not_the_pack_between_them(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 nodes past the cap (1 here), node i of the i-th blob of a pack and the i-th from its end:
    each further pass reads its node's two blobs as a restore's reader reads them (ranges of
    neighbours at most READ_GAP apart, READ_RANGE at most), every node is proved, none read back.
    Before, each pass read its pack from the first blob it needed to the last: nearly the whole
    pack for each of the 99 passes, 100 times the bytes the nodes need."""
    sb = backed_up
    count = 200
    datas = {f"f{i:03d}": os.urandom(4096) for i in range(count)}
    (sb.workspace / "many").mkdir()
    for name, data in datas.items():
        (sb.workspace / "many" / name).write_bytes(data)
    base = sb.backup()["id"]
    repo = _repo(sb)
    try:
        snap = repo.find_snapshot(base)
        nodes = {name: node for name, node in _nodes_by_name(repo, base).items() if name in datas}
        blobs = {name: next(node.blobs()) for name, node in nodes.items()}
        locs = {name: repo.index.get(blob) for name, blob in blobs.items()}
        assert len({loc.pack_id for loc in locs.values() if loc is not None}) == 1, locs
        order = sorted(datas, key=lambda name: locs[name].offset)  # type: ignore[union-attr]
        planted = []
        for i in range(count // 2):
            a, z = order[i], order[-1 - i]
            content = Extents.of([Extent(blobs[a], 0, 4096), Extent(blobs[z], 0, 4096)])
            node = dataclasses.replace(nodes[a], name=f"n{i:03d}", content=content, size=content.size)
            planted.append(dataclasses.replace(node, sha256=sha256_hex(datas[a] + datas[z])))
        tree, _ = repo.save_tree(planted)
        repo.flush()
        repo.save_snapshot(dataclasses.replace(snap, tree=tree, time="2031-01-01T00:00:00+00:00"))
        needed = sum(locs[a].stored + locs[z].stored for a, z in zip(order, reversed(order), strict=True)) // 2  # type: ignore[union-attr]
    finally:
        repo.close()
    monkeypatch.setattr(prover, "MAX_WAITING", 1)
    repo = _repo(sb)
    try:
        seen = {"after": False, "bytes": 0, "most": 0}

        class Watched(prover.NodeProver):
            def close(self) -> None:
                super().close()
                seen["after"] = True  # the pack pass is over: count what the further passes read

        def counted(real: Callable[..., Any], length: Callable[..., int]) -> Callable[..., Any]:
            def read(name: str, *args: Any) -> Any:
                if seen["after"] and name.startswith("data/"):
                    seen["bytes"] += length(*args)
                    seen["most"] = max(seen["most"], length(*args))
                return real(name, *args)

            return read

        monkeypatch.setattr(checker, "NodeProver", Watched)
        monkeypatch.setattr(repo.backend, "read_range", counted(repo.backend.read_range, lambda _o, n: n))
        into = counted(repo.backend.read_range_into, lambda _o, buf: len(buf))
        monkeypatch.setattr(repo.backend, "read_range_into", into)
        read_back = _read_back(monkeypatch)
        res = verify_repository(repo, read_data=True)
        assert res.ok and res.checked["files"] == len(_distinct_nodes(repo)), (res.errors, res.checked)
    finally:
        repo.close()
    assert read_back == [], read_back
    assert 0 < seen["bytes"] <= needed + (count // 2) * READ_GAP, (seen, needed)  # before: ~20 MB
    assert seen["most"] <= READ_RANGE, seen
