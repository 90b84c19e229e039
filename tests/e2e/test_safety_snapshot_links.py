"""Issue 14, point 9: an in-place restore's safety snapshot saves a symlink as a link and never
follows it. With `workspace/memory` a link to a folder outside the workspace, the safety snapshot
held `memory` twice (as the link and as a folder of the outside files): it could not be restored,
`verify` failed, retention refused, and it had saved the outside file's content."""

from __future__ import annotations

import os
from pathlib import Path

from e2e_support import Sandbox


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
