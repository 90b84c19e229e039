"""Issue 16.8: a damaged pack does not stop a restore. With one blob of memory.db damaged on the
local target (a flipped byte, so its authentication fails), `restore --to` restores everything
else, leaves no half-written file, names memory.db and the other target (a Git remote) that holds
its data, and exits 1; following that hint restores memory.db from the other target. In place,
the damaged database is left as it is and everything else is restored, after the safety snapshot.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from e2e_support import Sandbox, assert_restored, assert_same_db, damage_blob, db_dump, file_manifest
from moto_support import bare_repo

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

VICTIM = "home/.argentos/memory.db"


def test_a_damaged_pack_does_not_stop_a_restore(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    sb.env["PHX_DATA_DIR"] = str(sb.root / "data")
    remote = bare_repo(sb.root / "remote.git")
    sb.write_config(
        targets={
            "local": {"enabled": True},
            "git": {"enabled": True, "repo": str(remote), "branch": "main", "autoCommit": True},
        }
    )
    state = sb.state()
    snap = sb.backup()
    assert all(t["ok"] for t in snap["targets"].values())
    damage_blob(sb, VICTIM, target="local")

    dest = tmp_path / "restored"
    res = sb.phx("restore", "--backup", snap["id"], "--to", dest, "--json", check=1)
    doc = res.json()
    assert [d["path"] for d in doc["damaged"]] == [VICTIM], doc["damaged"]
    assert doc["damaged"][0]["otherTargets"] == ["git"]
    error_lines = res.error_lines()
    assert len(error_lines) == 1 and VICTIM in error_lines[0] and "everything else was restored" in error_lines[0]
    # Everything else came back exactly; memory.db is absent, not half-written; no temporary file.
    assert not (dest / VICTIM).exists()
    assert [p for p in dest.rglob(".phx-tmp-*")] == []
    expected = {k: v for k, v in state["databases"].items() if k != VICTIM}
    assert_restored({**state, "databases": expected}, dest, "restore around a damaged pack")
    text = sb.phx("restore", "--backup", snap["id"], "--to", tmp_path / "text", check=1).out
    assert f"not restored: {VICTIM}: its data is damaged" in text
    assert f"target git may hold it intact: `phx restore --target git --backup {snap['id'][:8]}" in text

    # The hint works: the Git target holds memory.db intact.
    sb.phx("restore", "--target", "git", "--backup", snap["id"][:8], "--path", VICTIM, "--to", dest)
    assert_restored(state, dest, "after restoring the damaged database from the other target")

    # In place: memory.db is left as it is (the live one, changed since), the rest restored. (An
    # unchanged one would need no data: its bytes equal the snapshot's.)
    con = sqlite3.connect(sb.db_path(VICTIM))
    con.execute("CREATE TABLE changed_since(x)")
    con.commit()
    con.close()
    live_before = db_dump(sb.db_path(VICTIM))
    (sb.workspace / "MEMORY.md").write_text("the agent forgot everything\n")
    res = sb.phx("restore", "--latest", "--yes", "--json", check=1)
    doc = res.json()
    assert [d["path"] for d in doc["damaged"]] == [VICTIM] and doc["safetySnapshot"], doc
    assert (sb.workspace / "MEMORY.md").read_bytes() != b"the agent forgot everything\n"
    assert file_manifest(sb.workspace) == state["workspace"]
    assert_same_db(live_before, db_dump(sb.db_path(VICTIM)), "the live memory.db, untouched")
