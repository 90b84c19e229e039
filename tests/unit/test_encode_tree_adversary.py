"""Adversary of the streamed `encode_tree` (branch dpeak): over odd trees (surrogate-escaped and
non-ASCII names, every node type, empty and long extents lists, 64-bit offsets, database details
with floats, NaN, nested and non-ASCII keys), its bytes and so the tree's id are those of the
whole document dumped at once, as every stored tree was encoded before: trees deduplicate
against the old snapshots' ones."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenix_backup.repo import tree
from phoenix_backup.repo.tree import TREE_VERSION, Extent, Extents, Node, TreePaths, encode_tree

_any_text = st.text(max_size=10)  # lone surrogates, controls, quotes, backslashes, non-ASCII
_u64 = st.integers(0, 2**64 - 1)
_extent = st.builds(Extent, st.binary(min_size=32, max_size=32), _u64, _u64)
_extents = st.one_of(
    st.lists(_extent, max_size=6),
    st.lists(_extent, min_size=0, max_size=3).map(lambda e: e * 700),  # a long list, fast to draw
)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), _any_text)
_details = st.recursive(
    _scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_any_text, inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def _node(draw: st.DrawFn) -> Node:
    kind = draw(st.sampled_from(["dir", "file", "symlink", "sqlite"]))
    node = Node(
        name=draw(_any_text.filter(bool)),
        type=kind,
        mode=draw(st.integers(0, 2**32)),
        mtime_ns=draw(st.integers(-(2**63), 2**63)),
        size=draw(_u64),
        inode=draw(_u64),
        ctime_ns=draw(st.integers(-(2**63), 2**63)),
        uid=draw(st.integers(0, 2**32)),
        gid=draw(st.integers(0, 2**32)),
    )
    if kind in ("file", "sqlite"):
        extents = draw(_extents)
        node.content = draw(st.sampled_from([extents, Extents.of(extents)]))
        node.sha256 = draw(st.one_of(st.none(), st.text(max_size=64)))
        node.hardlink = draw(st.one_of(st.none(), _any_text))
    if kind == "dir":
        node.subtree = draw(st.binary(min_size=32, max_size=32))
    if kind == "symlink":
        node.link_target = draw(_any_text)
    if kind == "sqlite" or draw(st.booleans()):
        node.sqlite = draw(st.one_of(st.none(), st.dictionaries(_any_text, _details, max_size=4)))
    return node


def _old_encode_tree(nodes: list[Node]) -> bytes:
    """The encoder every stored tree was written by before the streamed one."""
    ordered = sorted(nodes, key=lambda n: n.name)
    doc: dict[str, Any] = {"version": TREE_VERSION, "nodes": [n.to_json() for n in ordered]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@settings(max_examples=80, deadline=None)
@given(st.lists(_node(), max_size=5))
def test_encode_tree_is_the_old_encoders_bytes(nodes: list[Node]) -> None:
    assert encode_tree(nodes) == _old_encode_tree(nodes)


def test_the_paths_a_source_adds_are_refused_where_a_restore_would_refuse_the_tree() -> None:
    """Names a database source makes from what its server holds (a table "a/.."), each refused
    before it is saved: a snapshot holding one was refused whole by every restore."""
    paths = TreePaths()
    assert paths.problem("rows/p.q.csv") is None
    for bad, why in (
        ("rows/../x.csv", "holds the name '..'"),
        ("rows/./x.csv", "holds the name '.'"),
        ("rows//x.csv", "holds the name ''"),
        ("rows/a\0b.csv", "holds the name 'a\\x00b.csv'"),
        ("rows/" + "x" * 256, "longer than 255 bytes"),
        ("rows/\ud800.csv", "not text a file system takes"),
        ("rows/p.q.csv/r.csv", "rows/p.q.csv would be both a file and a folder"),
        ("rows", "rows would be both a file and a folder"),
        ("rows/p.q.csv", "rows/p.q.csv would be saved twice"),
    ):
        assert why in (paths.problem(bad) or ""), bad
    assert paths.problem("rows/p.q.csv.d/r.csv") is None


def test_a_node_name_no_snapshot_may_hold_stops_the_backup_before_any_tree_is_written(tmp_path: Any) -> None:
    """The last guard of "no snapshot a restore refuses whole": a configured `memory/../x.db` once
    reached the tree writer as a name `..`, the snapshot was written, and every later command
    failed on it. Whatever source lets such a name through, the backup now stops with one error
    naming the path, and no tree is written."""
    import pytest

    from phoenix_backup.errors import SourceError
    from phoenix_backup.ops.backup import _write_trees
    from phoenix_backup.sources.files import Selection
    from phoenix_backup.sources.layout import Layout

    class Trees:
        def __init__(self) -> None:
            self.saved: list[list[Node]] = []

        def has_blob(self, blob_id: bytes) -> bool:
            return False

        def save_tree(self, nodes: list[Node]) -> tuple[bytes, int]:
            self.saved.append(nodes)
            return bytes(32), 0

    for name in ("..", ".", "", "a/b", "a\0b", "x" * 256):
        repo = Trees()
        sel = Selection(entries={}, missing=[], errors=[])
        nodes = {"memory.db": Node(name="memory.db", type="file"), "bad": Node(name=name, type="sqlite")}
        with pytest.raises(SourceError, match=r"no snapshot|file system takes") as err:
            _write_trees(repo, Layout(tmp_path, tmp_path), sel, nodes)  # type: ignore[arg-type]
        assert "nothing was saved" in str(err.value)
        assert repo.saved == []


def test_a_list_just_past_the_limit_says_it_takes_more(monkeypatch: pytest.MonkeyPatch) -> None:
    # A folder's list of 256 MiB and a few bytes was said to take "256 MiB, more than the 256 MiB
    # a folder's list may take": the size was rounded down. It is rounded up.
    monkeypatch.setattr(tree, "MAX_BLOB_SIZE", 1 << 20)
    nodes = [Node(name=f"{i:06}" + "x" * 200, type="file") for i in range(5000)]
    with pytest.raises(tree.TreeTooLarge, match=r"whose list takes 2 MiB, more than the 1 MiB"):
        encode_tree(nodes)
