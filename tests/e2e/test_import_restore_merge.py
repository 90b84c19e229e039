"""`phx restore --merge --conflict-mode skip|update`: the same row merge as `phx import`, straight
from a snapshot's copies of the stores, with a safety snapshot that undoes it."""

from __future__ import annotations

import os
from pathlib import Path

from e2e_support import Sandbox, assert_error
from test_import_merge import MEMORY, damage, fts_ok, rows


def test_restore_merge_from_a_snapshot(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    snap = sb.snapshots()[0]
    db = sb.db_path(MEMORY)
    original = rows(db, "memory_items")
    deleted, edited = damage(db)
    damaged = rows(db, "memory_items")

    dry = sb.phx("restore", "--backup", snap["id"], "--merge", "--dry-run", "--json").json()
    assert dry["sourceKind"] == "snapshot" and dry["source"] == snap["id"] and dry["conflictMode"] == "skip"
    mem = next(d for d in dry["databases"] if d["path"] == MEMORY)
    assert (mem["tables"]["memory_items"]["restored"], mem["tables"]["memory_items"]["skipped"]) == (5, 3)
    assert rows(db, "memory_items") == damaged

    assert_error(sb.phx("restore", "--backup", snap["id"], "--merge", check=2), 2, "--yes")
    assert rows(db, "memory_items") == damaged

    doc = sb.phx("restore", "--backup", snap["id"], "--merge", "--yes", "--json").json()
    after = rows(db, "memory_items")
    assert {i: after[i] for i in deleted} == {i: original[i] for i in deleted}
    assert {i: after[i] for i in edited} == {i: damaged[i] for i in edited}
    fts_ok(db)
    safety = doc["safetySnapshot"]
    assert isinstance(safety, str) and safety

    text = sb.phx("restore", "--backup", snap["id"], "--merge", "--conflict-mode", "update", "--yes").out
    assert "UPDATED" in text and "memory_items" in text
    assert rows(db, "memory_items") == original
    fts_ok(db)

    # The safety snapshot of the first merge holds the stores as they were before it.
    dest = tmp_path / "undo"
    sb.restore_to(safety, dest, "--databases-only")
    assert rows(dest / MEMORY, "memory_items") == damaged


def test_a_store_that_fails_names_the_stores_merged_before_it(backed_up: Sandbox) -> None:
    """Each store is merged in a transaction of its own: when a later one fails, the error says
    which stores this merge did change, and the safety snapshot that undoes them."""
    sb = backed_up
    snap = sb.snapshots()[0]["id"]
    paths = [
        d["path"]
        for d in sb.phx_here("restore", "--backup", snap, "--merge", "--dry-run", "--json").json()["databases"]
    ]
    assert len(paths) >= 2
    os.mkfifo(f"{sb.db_path(paths[-1])}-journal")  # the last store cannot be merged
    res = sb.phx_here("restore", "--backup", snap, "--merge", "--yes", code=1)
    safety = next(s for s in sb.snapshots() if s["id"] != snap)["id"]
    assert_error(res, 1, f"{paths[-1]} was not merged", f"{paths[0]}", "had been merged before it", safety[:8])
