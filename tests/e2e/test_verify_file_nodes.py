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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import PHX, Sandbox, flip_byte

from phoenix_backup.config import load_config
from phoenix_backup.errors import ThawPending
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.repo import captures
from phoenix_backup.repo.checker import SUBSET_CURSOR, verify_repository
from phoenix_backup.repo.crypto import sha256_hex
from phoenix_backup.repo.pack import pack_name
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Extent, Extents, Node
from phoenix_backup.repo.walker import Trees

PLANTED = "planted.txt"
TEXT = b"hello, world"  # one blob: extents (b, 0, 7) and (b, 7, 5) are "hello, " and "world"


def _repo(sb: Sandbox) -> Repository:
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    repo.load_index()
    return repo


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

    ok = sb.phx("restore", "--backup", base, "--to", tmp_path / "base", "--path", f"**/{PLANTED}", "--json")
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
    res = sb.phx("verify", "--read-data", "--json", check=1)
    objects = {e["object"] for e in res.json()["errors"]}
    assert f"captures/{chain[1].id}" in objects and f"chain {chain[1].chain[:8]}" in objects, res
    assert "phx restore --at" in res.out, res

    middle.unlink()
    res = sb.phx("verify", "--json", check=1)
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
        trees = Trees(repo)
        trees.load(repo.find_snapshot(base).tree)
        nodes = {n.name: n for ns in trees.nodes.values() for n in ns}
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
    res = sb.phx("verify", "--subset", "1", "--json", check=1)
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
    res = sb.phx("verify", "--read-data", "--json", check=1)
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
    res = sb.phx("verify", "--read-data", "--json", check=1)
    assert {e["snapshot"] for e in res.json()["errors"]} == {wrong}, res.json()["errors"]
    assert "do not match the SHA-256" in _errors(res.json(), wrong)[0]["message"]
    bad = sb.phx("restore", "--backup", wrong, "--to", tmp_path / "w", "--path", f"**/{PLANTED}", check=None)
    assert bad.code != 0 and PLANTED in bad.err, bad
    sb.restore_to(tail, tmp_path / "t", "--path", f"**/{PLANTED}")
    assert [p.read_bytes() for p in (tmp_path / "t").rglob(PLANTED)] == [b"world"]
