"""A configured SQLite path holding glob characters (`agent[1]/memory.db`): a path that exists is
taken as written, and an entry that matches nothing is said on every backup and by `phx doctor`,
with the way to escape the characters. Before, `[1]` was read as a character class, matched
nothing, and the database was left out of every backup unsaid (docs/configuration.md)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from e2e_support import Sandbox, assert_same_db, db_dump

from phoenix_backup.sample import layout_for


def _database(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE t (v TEXT)")
        con.execute("INSERT INTO t VALUES ('kept')")
    con.close()


def test_an_existing_path_with_brackets_is_backed_up_as_written(sandbox: Sandbox) -> None:
    sb = sandbox
    db = sb.home / "data" / "agent[1]" / "memory.db"
    _database(db)
    sb.write_config(databases={"sqlite": [str(db)], "integrityCheckEvery": "0h"})
    doc = sb.backup()
    assert "home/data/agent[1]/memory.db" in [d["path"] for d in doc["databases"]], doc["databases"]
    assert not [w for w in doc.get("warnings", []) if "agent[1]" in w], doc.get("warnings")
    doctor = sb.phx("doctor", "--json", check=None).json()
    line = next(c for c in doctor["checks"] if "agent[1]" in c["name"])
    assert line["status"] == "ok", line


def test_an_entry_that_matches_nothing_is_said_with_its_escape(sandbox: Sandbox) -> None:
    sb = sandbox
    db = sb.home / "data" / "agent[1]" / "memory.db"
    entry = str(sb.home / "data" / "agent[[]2]" / "memory.db")  # escaped, names a file not there
    pattern = str(sb.home / "data" / "agent?9" / "*.db")
    _database(db)
    sb.write_config(databases={"sqlite": [entry, pattern], "integrityCheckEvery": "0h"})
    res = sb.phx("backup")
    for raw in (entry, pattern):
        assert f"warning: {raw} does not exist (read as a glob pattern, which matches nothing" in res.out, res.out
    assert "escape each as `[*]`, `[?]`, `[[]`" in res.out
    doctor = sb.phx("doctor", "--json", check=None).json()
    for raw in (entry, pattern):
        line = next(c for c in doctor["checks"] if c["name"] == f"database {raw}")
        assert line["status"] == "fail" and "read as a glob pattern" in line["message"], line


def test_an_escaped_entry_names_the_file(sandbox: Sandbox) -> None:
    sb = sandbox
    db = sb.home / "data" / "agent[1]" / "memory.db"
    _database(db)
    sb.write_config(databases={"sqlite": [str(sb.home / "data" / "agent[[]1]" / "*.db")], "integrityCheckEvery": "0h"})
    doc = sb.backup()
    assert "home/data/agent[1]/memory.db" in [d["path"] for d in doc["databases"]], doc["databases"]


def test_an_include_holding_a_bracket_is_a_pattern_said_when_it_matches_nothing(sandbox: Sandbox) -> None:
    """`include` entries are patterns (docs/configuration.md): `notes[1]/` matches `notes1`, not a
    folder named `notes[1]`. One that matches nothing is said with the escape that names it."""
    sb = sandbox
    folder = sb.workspace / "sub" / "notes[1]"
    folder.mkdir(parents=True)
    (folder / "a.md").write_text("kept\n")
    sb.write_config(include=["SOUL.md", "sub/notes[1]/"])
    res = sb.phx("backup")
    assert "warning: sub/notes[1]/ does not exist (read as a glob pattern, which matches nothing" in res.out, res.out
    assert "sub/notes[[]1]/" in res.out, res.out
    sb.write_config(include=["SOUL.md", "sub/notes[[]1]/"])
    res = sb.phx("backup")
    assert "notes[" not in res.out, res.out
    listed = sb.phx("ls", "latest", "--json")
    assert "workspace/sub/notes[1]/a.md" in listed.out, listed.out


def test_a_named_store_under_argentos_that_is_missing_is_said(sandbox: Sandbox) -> None:
    """Only the three ArgentOS default stores are skipped unsaid when missing. Before, the backup
    skipped unsaid any missing `.../.argentos/.../memory.db` (a name test), so the pattern
    `~/.argentos/agents/agent[1]/memory.db` matching nothing was never warned, while doctor failed it."""
    sb = sandbox
    entry = str(sb.home / ".argentos" / "agents" / "agent[1]" / "memory.db")
    default = sb.home / ".argentos" / "data" / "dashboard.db"  # a default store, missing: unsaid
    default.unlink(missing_ok=True)
    sb.write_config(databases={"sqlite": [entry, str(default)], "integrityCheckEvery": "0h"})
    res = sb.phx("backup", "--json")
    warnings = res.json()["warnings"]
    assert [w for w in warnings if w.startswith(f"{entry} does not exist (read as a glob pattern")], warnings
    assert not [w for w in warnings if "dashboard.db" in w], warnings


def test_a_home_and_workspace_holding_glob_characters_are_folders(_backed_up_template: Path, tmp_path: Path) -> None:
    """HOME and the workspace below `[a]*?` (task esc4): `~` in the default stores, the components
    and `databases.sqlite`, and the workspace's path written out in an exclude, are those folders,
    never patterns. Before: `[a]*?` matched the folder `abc` beside it, and its `memory.db`,
    `argent.json` and `backup.json` (another user's, say) were backed up as `root/…/abc/…`, while the
    exclude written with the workspace's path excluded nothing."""
    root = tmp_path / "[a]*?"
    shutil.copytree(_backed_up_template, root, symlinks=True)
    sb = Sandbox(root, layout_for(root / "sample"))
    decoy = tmp_path / "abc" / "sample" / "home" / ".argentos"
    _database(decoy / "memory.db")
    for name in ("argent.json", "backup.json"):
        (decoy / name).write_text('{"not": "yours"}\n')
    (sb.workspace / "secret.txt").write_text("excluded\n")
    sb.write_config(exclude=[str(sb.workspace / "secret.txt")])
    defaults = {"home/.argentos/memory.db", "home/.argentos/observations.db", "home/.argentos/data/dashboard.db"}
    doc = sb.backup()
    assert {d["path"] for d in doc["databases"]} == defaults, doc["databases"]
    paths = [e["path"] for e in sb.phx("ls", doc["id"], "--json").json()["entries"]]
    assert not [p for p in paths if p.startswith("root") or "secret" in p], paths
    assert "home/.argentos/backup.json" in paths, paths
    checks = sb.phx("doctor", "--json", check=None).json()["checks"]
    # The decoy's path, not "abc" alone: a key slot id, the repository id and the key's fingerprint
    # are hex, and held "abc" in about one run of 150 (this test failed so, now and then).
    assert not [c for c in checks if str(tmp_path / "abc") in c["name"] + c["message"]], checks

    entries = ["~/.argentos/*.db", "$HOME/.argentos/data/*.db", str(sb.home / ".argentos" / "memory.db")]
    sb.write_config(databases={"sqlite": entries, "integrityCheckEvery": "0h"})
    doc = sb.backup()
    assert {d["path"] for d in doc["databases"]} == defaults, doc["databases"]
    assert not doc.get("warnings"), doc["warnings"]
    sb.restore_to(doc["id"], root / "dest", "--path", "home/.argentos/memory.db")
    restored = root / "dest" / "home" / ".argentos" / "memory.db"
    assert_same_db(db_dump(sb.home / ".argentos" / "memory.db"), db_dump(restored), "memory.db")


@pytest.mark.phx_in_process
def test_configured_paths_through_dot_dot_are_saved_where_they_are(sandbox: Sandbox, tmp_path: Path) -> None:
    """An absolute include (`~/sub/../notes`) or the config itself named through `..` went into the
    snapshot with a name `..` (a snapshot no command could read again; since the tree writer's
    guard, a backup that saved nothing). Each is saved at the path the system resolves it to, and
    restores there."""
    sb = sandbox
    (sb.home / "sub").mkdir()
    (sb.home / "notes").mkdir()
    (sb.home / "notes" / "n.md").write_text("a note outside the workspace\n")
    sb.write_config(include=[str(sb.home / "sub" / ".." / "notes" / "n.md"), "~/sub/../notes"])
    config = sb.home / "sub" / ".." / sb.config_path.relative_to(sb.home)
    sb.phx_here("--config", config, "backup")
    sb.restore_to("latest", tmp_path / "out")
    assert (tmp_path / "out" / "home" / "notes" / "n.md").read_text() == "a note outside the workspace\n"
    restored_config = tmp_path / "out" / "home" / sb.config_path.relative_to(sb.home)
    assert restored_config.read_bytes() == sb.config_path.read_bytes()


@pytest.mark.phx_in_process
def test_paths_through_dot_dot_in_a_workspace_reached_through_a_link_stay_the_workspaces(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """With a workspace reached through a link (`~/argent -> /data/argent`), `memory/../notes` (an
    include) and `memory/../extra.db` (a database) were resolved to the link's target and saved as
    `root/data/argent/...`: a restore on a new machine put them back at the old machine's path,
    outside its workspace. They are the workspace's (`workspace/notes`), as `notes` is."""
    sb = sandbox
    real = tmp_path / "real-workspace"
    shutil.move(str(sb.workspace), real)
    sb.workspace.symlink_to(real)
    (real / "notes").mkdir()
    (real / "notes" / "n.md").write_text("a note\n")
    _database(real / "extra.db")
    sb.write_config(
        include=["memory/../notes"], databases={"sqlite": ["memory/../extra.db"], "integrityCheckEvery": "0h"}
    )
    doc = sb.backup()
    assert "workspace/extra.db" in [d["path"] for d in doc["databases"]], doc["databases"]
    sb.restore_to("latest", tmp_path / "out")
    assert (tmp_path / "out" / "workspace" / "notes" / "n.md").read_text() == "a note\n"
    assert db_dump(tmp_path / "out" / "workspace" / "extra.db") == db_dump(real / "extra.db")
    assert not (tmp_path / "out" / "root").exists(), sorted(p.name for p in (tmp_path / "out").iterdir())
