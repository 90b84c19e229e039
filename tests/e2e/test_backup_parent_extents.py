"""Issue 20: the daily backup's peak grew with the history, partly by holding the parent's
extents of every changed database (memory.db: 24,798 after 30 days of the medium sample) beside
the new ones while it wrote trees. Once every node is read, a changed node of the parent is
held without its extents; the summary and the folders' trees it reuses stay exactly as before."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from e2e_support import Sandbox

from phoenix_backup.ops import backup as backup_op


def test_the_parent_node_of_a_changed_database_is_not_held_with_its_extents(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb = backed_up
    sb.phx_here("backup", "--json")  # the parent: this copy's files (their inodes) as they are
    db = sb.home / ".argentos" / "memory.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pad (x BLOB)")
        conn.executemany("INSERT INTO pad VALUES (randomblob(3000))", [()] * 40)
    conn.close()
    seen: dict[str, Any] = {}
    write_trees = backup_op._write_trees

    def watching(*args: Any, **kwargs: Any) -> bytes:
        nodes, previous_nodes = args[3], args[5]
        seen["new"], seen["parent"] = dict(nodes), dict(previous_nodes)
        return write_trees(*args, **kwargs)

    monkeypatch.setattr(backup_op, "_write_trees", watching)
    doc = sb.phx_here("backup", "--json").json()
    logical = "home/.argentos/memory.db"
    new, parent = seen["new"], seen["parent"]
    # The changed database's parent node: no extents, and equal to no node.
    assert len(new[logical].content) > 0
    assert len(parent[logical].content) == 0 and parent[logical] != new[logical]
    # Every unchanged file and database keeps its parent's node whole (it is the new one; a
    # database in extent lists, format 6, is split at the lists' cuts, so its extents are
    # compared by the bytes they cover).
    same = [p for p, n in new.items() if n.type in ("file", "sqlite") and p != logical]
    assert same and all(parent[p] == new[p] and parent[p].content.size == new[p].content.size for p in same)  # type: ignore[attr-defined]
    # The summary counts as before: one database captured, the rest unchanged, no file changed;
    # folders without a change keep the parent's trees.
    assert doc["databasesCaptured"] == 1, doc
    assert doc["databasesUnchanged"] == sum(1 for n in new.values() if n.type == "sqlite") - 1, doc
    assert (doc["filesNew"], doc["filesChanged"]) == (0, 0), doc
    assert doc["dirsUnmodified"] > 0 and doc["dirsChanged"] >= 1, doc
    # And the snapshot is whole: every byte read back and checked.
    assert sb.verify("--read-data")["ok"]
