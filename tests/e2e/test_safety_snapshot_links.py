"""Issue 14, point 9: an in-place restore's safety snapshot saves a symlink as a link and never
follows it. With `workspace/memory` a link to a folder outside the workspace, the safety snapshot
held `memory` twice (as the link and as a folder of the outside files): it could not be restored,
`verify` failed, retention refused, and it had saved the outside file's content."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from e2e_support import Sandbox

from phoenix_backup.config.defaults import DEFAULT_SQLITE


def test_a_symlinked_folder_is_saved_as_a_link_and_not_followed(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    memory = sb.workspace / "memory"
    names = sorted(p.name for p in memory.iterdir() if p.is_file())
    assert names, "the sample has memory notes"
    # The user (or an agent) moved the notes out and left a link; a file outside shares a name.
    outside = tmp_path / "elsewhere"
    memory.rename(outside)
    os.symlink(outside, memory)
    secret = "a private note outside the workspace, never Phoenix's to save\n"
    (outside / names[0]).write_text(secret)

    res = sb.phx("restore", "--latest", "--yes", "--json", check=None)
    doc = res.json()
    assert res.code == 3, res  # the paths below the link are refused, the rest restored
    assert {e["path"] for e in doc["errors"]} >= {f"workspace/memory/{names[0]}"}
    assert (outside / names[0]).read_text() == secret and memory.is_symlink()
    safety = doc["safetySnapshot"]["id"]

    listing = sb.phx("ls", safety, "--json").json()
    memory_entries = [e for e in listing["entries"] if e["path"] == "workspace/memory"]
    assert len(memory_entries) == 1 and memory_entries[0]["type"] == "symlink", memory_entries
    assert not [e for e in listing["entries"] if e["path"].startswith("workspace/memory/")], listing
    dumped = sb.phx("dump", safety, f"memory/{names[0]}", check=None)
    assert dumped.code != 0 and secret not in dumped.out

    assert sb.verify("--read-data")["ok"] is True
    sb.phx("forget", "--dry-run")
    # The undo works: it puts back what was overwritten and leaves the link as it is.
    undo = sb.phx("restore", "--backup", safety, "--yes", "--json", check=None)
    assert undo.code == 0, undo
    assert memory.is_symlink() and (outside / names[0]).read_text() == secret


def _chains_backed_up(sandbox: Sandbox, *, memory_link: Path | str) -> dict[str, bytes]:
    """A configured store `~/dbs/chain.db -> ~/mid/mid.db -> ~/disk/agent.db` and the component
    `workspace/memory -> ~/mid/memory -> (memory_link) ~/disk/memory`, backed up: the notes' bytes."""
    home, ws = Path(sandbox.env["HOME"]), sandbox.workspace
    for folder in ("dbs", "mid", "disk"):
        (home / folder).mkdir()
    with contextlib.closing(sqlite3.connect(home / "disk/agent.db")) as con:
        con.execute("CREATE TABLE t (k TEXT)")
        con.execute("INSERT INTO t VALUES ('at the end of the chain')")
        con.commit()
    (home / "mid/mid.db").symlink_to("../disk/agent.db")
    (home / "dbs/chain.db").symlink_to(home / "mid/mid.db")
    shutil.move(ws / "memory", home / "disk/memory")
    (home / "mid/memory").symlink_to(memory_link)
    (ws / "memory").symlink_to(home / "mid/memory")
    notes = {p.name: p.read_bytes() for p in (home / "disk/memory").iterdir() if p.is_file()}
    sandbox.write_config(databases={"sqlite": [*DEFAULT_SQLITE, "~/dbs/chain.db"]})
    sandbox.backup()
    return notes


@pytest.mark.phx_in_process
def test_a_chain_of_links_to_a_database_or_a_component_is_restored_so_that_it_resolves(sandbox: Sandbox) -> None:
    """A configured database `~/dbs/chain.db -> ~/mid/mid.db -> ~/disk/agent.db` and a component
    `workspace/memory -> ~/mid/memory -> ~/disk/memory`, the machine then lost. Before, only the
    first link and the end were saved: the restore put back `chain.db` and `memory` as links to
    paths in no snapshot (dangling: the database did not open, the notes were not there). Now the
    links in between are saved as links too, and the restored chain resolves."""
    home, ws = Path(sandbox.env["HOME"]), sandbox.workspace
    notes = _chains_backed_up(sandbox, memory_link=home / "disk/memory")
    for gone in ("dbs", "mid", "disk"):
        shutil.rmtree(home / gone)
    (ws / "memory").unlink()
    sandbox.phx_here("restore", "--latest", "--yes", "--no-safety-snapshot")
    assert os.readlink(home / "mid/mid.db") == "../disk/agent.db"
    with contextlib.closing(sqlite3.connect(f"file:{home / 'dbs/chain.db'}?mode=ro", uri=True)) as con:
        assert con.execute("SELECT k FROM t").fetchall() == [("at the end of the chain",)]
    assert {p.name: p.read_bytes() for p in (ws / "memory").iterdir() if p.is_file()} == notes


@pytest.mark.phx_in_process
def test_a_chain_of_links_is_followed_to_its_end_by_a_restore_of_one_path_and_a_snapshot_export(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """`workspace/memory -> ~/mid/memory -> ~/disk/memory` and a store `~/dbs/chain.db -> ~/mid/mid.db
    -> ~/disk/agent.db`, saved with every link of the chain. What a snapshot's link points to was
    followed one link only: `restore --path workspace/memory` put back the two links and not the
    notes at the end (dangling once the disk was lost, exit 0), and an export of the snapshot left
    out the notes and the store that the live export takes (adv27). Now the chain is followed."""
    home, ws = Path(sandbox.env["HOME"]), sandbox.workspace
    notes = _chains_backed_up(sandbox, memory_link="../disk/memory")
    live = sandbox.phx_here("export", "--no-vectors", "--output", tmp_path / "live", "--json").json()
    snap = sandbox.phx_here("export", "--no-vectors", "--backup", "latest", "--output", tmp_path / "snap", "--json")
    assert sorted(snap.json()["files"]) == sorted(live["files"])
    stores = [json.loads((tmp_path / d / "metadata.json").read_text())["databases"] for d in ("live", "snap")]
    assert sorted(db["path"] for db in stores[1]) == sorted(db["path"] for db in stores[0])
    for gone in ("mid", "disk"):
        shutil.rmtree(home / gone)
    (ws / "memory").unlink()
    sandbox.phx_here("restore", "--latest", "--yes", "--no-safety-snapshot", "--path", "workspace/memory")
    assert {p.name: p.read_bytes() for p in (ws / "memory").iterdir() if p.is_file()} == notes
