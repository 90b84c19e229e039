"""Issue #5: a restore in place that a user can run on the live agent and undo.

Driven through `phx`, with the gateway simulated by shell commands that record their calls, and a
reader process that holds a SQLite database open throughout the restore. After an in-place restore
the workspace and every database equal the snapshot; restoring the safety snapshot brings back
exactly the state before. Crash and full-disk trials live in test_safe_restore_crash.py and
test_safe_restore_full_disk.py.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    DATABASES,
    Sandbox,
    assert_error,
    assert_same_db,
    damage_blob,
    file_manifest,
    on_a_terminal,
)
from safe_restore_support import (
    Reader,
    assert_state,
    build_template,
    change_tasks,
    change_workspace,
    copy_template,
    db_rows,
    gateway_calls,
    install_gateway,
    observations_summary,
    sha256,
)

from phoenix_backup.sample import write_alignment_manifest

MANIFEST = ".argent-alignment-integrity.json"

# The restores whose exit code is known, and the sandboxes' helpers, run phx in this process: the
# gateway's commands and the reader holding a database open are processes of their own still.
pytestmark = pytest.mark.phx_in_process


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("safe-restore-template")
    build_template(root)
    return root


@pytest.fixture
def sb(template: Path, tmp_path: Path) -> Sandbox:
    return copy_template(template, tmp_path / "sb")


def safety_snapshots(sb: Sandbox) -> list[dict[str, Any]]:
    return [s for s in sb.snapshots() if "pre-restore" in s["tags"]]


# -- the whole story -------------------------------------------------------------------------


def test_in_place_restore_is_exact_and_undoable(sb: Sandbox, tmp_path: Path) -> None:
    snapshot_state = sb.state()
    snapshot_soul = sha256(sb.workspace / "SOUL.md")
    snapshot_rows = observations_summary(sb.layout.observations_db)
    log = tmp_path / "gateway.log"
    install_gateway(sb, log)
    change_workspace(sb)
    prior = sb.state()
    prior_soul = sha256(sb.workspace / "SOUL.md")
    prior_rows = observations_summary(sb.layout.observations_db)
    assert prior_rows != snapshot_rows

    reader = Reader(sb.layout.observations_db)
    try:
        assert reader.first == prior_rows
        doc = sb.phx_here("restore", "--latest", "--yes", "--delete", "--json").json()
        # The same connection, never reopened, sees the restored rows.
        assert reader.summary() == snapshot_rows, "a connection held open does not see the restored database"

        # Order: the gateway stopped before anything was written and started after everything was.
        assert gateway_calls(log) == [f"stop {prior_soul}", f"start {snapshot_soul}"]
        assert doc["gateway"]["stop"]["ok"] is True and doc["gateway"]["start"]["ok"] is True
        assert doc["errors"] == [] and doc["warnings"] == [], doc
        # Every database went through the backup API into the live file and passed its checks.
        dbs = {d["path"]: d for d in doc["databases"]}
        assert set(dbs) == set(DATABASES)
        for d in dbs.values():
            assert d["method"] == "backup-api" and d["integrity"] == "ok", d
            assert d["fts"] and set(d["fts"].values()) == {"ok"}, d
        actions = {i["path"]: i["action"] for i in doc["items"]}
        assert actions["workspace/SOUL.md"] == "overwrite"
        assert actions["workspace/TOOLS.md"] == "create"
        assert actions["workspace/projects/phoenix.md"] == "delete"
        assert actions["workspace/projects"] == "delete"
        assert actions["workspace/memory-link.md"] == "overwrite"
        assert actions["workspace/memory/2026-10-01.md"] == "delete"

        # The workspace and every database equal the snapshot.
        assert_state(snapshot_state, sb.state(), "after the in-place restore")
        assert os.readlink(sb.workspace / "memory-link.md") == "MEMORY.md"
        assert [p.name for p in sb.root.joinpath("sample").rglob(".phx-tmp-*")] == [], "temporary files left"

        # The safety snapshot is listed with its tag.
        safety = doc["safetySnapshot"]
        listed = safety_snapshots(sb)
        assert [s["id"] for s in listed] == [safety["id"]]
        assert listed[0]["scope"] == "pre-restore" and listed[0]["tags"] == ["pre-restore"]
        text = sb.phx_here("list").out
        assert "pre-restore" in text and safety["id"][:8] in text

        # Restoring it brings back exactly the state before, for the reader too.
        undo = sb.phx_here("restore", "--backup", safety["id"], "--yes", "--json").json()
        assert undo["errors"] == [], undo
        assert_state(prior, sb.state(), "after restoring the safety snapshot")
        assert reader.summary() == prior_rows
        assert {i["path"]: i["action"] for i in undo["items"]}["workspace/TOOLS.md"] == "delete"
    finally:
        reader.close()


# -- the gateway -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["fails", "hangs"])
def test_failed_gateway_stop_changes_nothing(sb: Sandbox, tmp_path: Path, how: str) -> None:
    log = tmp_path / "gateway.log"
    pidfile = tmp_path / "stop.pid"
    stop = "echo cannot reach the agent >&2; exit 3" if how == "fails" else f"echo $$ > {pidfile}; exec sleep 60"
    install_gateway(sb, log, stop=stop, timeout=1)
    change_workspace(sb)
    before = sb.state()

    started = time.monotonic()
    res = sb.phx("restore", "--latest", "--yes", "--delete", check=None)
    took = time.monotonic() - started
    line = assert_error(res, 1, "gateway.stop", "nothing was restored")
    if how == "fails":
        assert "exited with 3" in line and "cannot reach the agent" in line
    else:
        assert "did not finish in time" in line and took < 30
        pid = int(pidfile.read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # killed after gateway.timeoutSeconds, not left running
    assert [c.split()[0] for c in gateway_calls(log)] == ["start"], "gateway.start must run after a failed stop"
    assert_state(before, sb.state(), "after a failed gateway.stop")
    assert safety_snapshots(sb) == []


def test_failed_gateway_start_is_reported(sb: Sandbox, tmp_path: Path) -> None:
    snapshot_state = sb.state()
    log = tmp_path / "gateway.log"
    install_gateway(sb, log, start="echo port 18789 in use >&2; exit 7")
    change_workspace(sb)
    res = sb.phx_here("restore", "--latest", "--yes", "--delete", "--json", code=3)
    doc = res.json()
    assert doc["gateway"]["start"]["ok"] is False and doc["gateway"]["start"]["exitCode"] == 7
    assert any("gateway.start exited with 7" in w and "port 18789 in use" in w for w in doc["warnings"]), doc
    assert "gateway.start exited with 7" in res.err
    assert_state(snapshot_state, sb.state(), "restore with a failing gateway.start")


def test_damaged_data_is_found_before_anything_is_written_and_left_alone(sb: Sandbox, tmp_path: Path) -> None:
    """Every blob is checked before the gateway stops; what is damaged is left as it is (never
    half-written), everything else is restored after the safety snapshot, and the run exits 1
    naming what was not restored (issue 16.8)."""
    log = tmp_path / "gateway.log"
    install_gateway(sb, log)
    snapshot_state = sb.state()
    change_workspace(sb)
    before = sb.state()
    # Blobs the restore must write: SOUL.md was rewritten, and page 1 of dashboard.db (its change
    # counter) changed with its rows.
    damage_blob(sb, "workspace/SOUL.md")
    damage_blob(sb, "home/.argentos/data/dashboard.db")
    res = sb.phx("restore", "--latest", "--yes", "--json", check=None)
    line = assert_error(res, 1, "damaged", "everything else was restored")
    damaged = [d["path"] for d in res.json()["damaged"]]
    assert sorted(damaged) == ["home/.argentos/data/dashboard.db", "workspace/SOUL.md"], damaged
    assert all(path in line for path in damaged), (damaged, line)
    assert [c.split()[0] for c in gateway_calls(log)] == ["stop", "start"]
    after = sb.state()
    for path in damaged:  # left exactly as they were before the restore
        if path in before["databases"]:
            assert_same_db(before["databases"][path], after["databases"][path], f"the damaged {path}, untouched")
        else:
            rel = path.removeprefix("workspace/")
            assert after["workspace"].get(rel) == before["workspace"].get(rel), path
    for db in DATABASES:
        if db not in damaged:
            assert_same_db(snapshot_state["databases"][db], after["databases"][db], f"{db}, restored")


# -- dry run and confirmation ------------------------------------------------------------------


def test_dry_run_shows_files_and_row_deltas_and_writes_nothing(sb: Sandbox, tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    install_gateway(sb, log)
    (sb.workspace / "USER.md").write_text("# USER\n\nedited\n")
    (sb.workspace / "TOOLS.md").unlink()
    (sb.workspace / "NOTES.md").write_text("new\n")
    change_tasks(sb.layout.dashboard_db)
    everything = file_manifest(sb.root / "sample", skip_databases=False)
    snapshots = sb.snapshots()

    doc = sb.phx_here("restore", "--latest", "--dry-run", "--delete", "--json").json()
    assert file_manifest(sb.root / "sample", skip_databases=False) == everything, "--dry-run changed something"
    assert sb.snapshots() == snapshots and gateway_calls(log) == []
    assert doc["dryRun"] is True and doc["destination"] == "in place"
    actions = {i["path"]: i["action"] for i in doc["items"]}
    assert actions["workspace/USER.md"] == "overwrite"
    assert actions["workspace/TOOLS.md"] == "create"
    assert actions["workspace/NOTES.md"] == "delete"
    assert actions["workspace/SOUL.md"] == "unchanged"
    assert doc["counts"] == {a: sum(1 for v in actions.values() if v == a) for a in doc["counts"]}
    assert doc["counts"]["delete"] == 1 and doc["counts"]["create"] == 1

    dbs = {d["path"]: d for d in doc["databases"]}
    assert dbs["home/.argentos/data/dashboard.db"]["tables"]["tasks"] == {"added": 3, "removed": 1, "changed": 2}
    assert dbs["home/.argentos/data/dashboard.db"]["tables"]["projects"] == {"added": 0, "removed": 0, "changed": 0}
    for other in ("home/.argentos/memory.db", "home/.argentos/observations.db"):
        assert all(d == {"added": 0, "removed": 0, "changed": 0} for d in dbs[other].get("tables", {}).values())

    text = sb.phx_here("restore", "--latest", "--dry-run", "--delete").out
    assert "tasks +3 -1 ~2" in text and "dry run" in text
    assert "delete    file" in text and "1 to delete" in text


def test_no_terminal_and_no_yes_refuses(sb: Sandbox) -> None:
    change_workspace(sb)
    before = sb.state()
    res = sb.phx("restore", "--latest", check=None)
    assert_error(res, 2, "--yes")
    assert_state(before, sb.state(), "after a refused restore")


def test_confirmation_on_a_terminal_shows_the_plan(sb: Sandbox) -> None:
    snapshot_state = sb.state()
    change_workspace(sb)
    before = sb.state()

    run = on_a_terminal(["restore", "--latest", "--delete"], sb.env, ["n"])
    out = run.raw
    # "n" is an answer, not an error: nothing is done, as asked, and the exit code says success.
    assert run.code == 0 and "Continue?" in out and "restore cancelled; nothing was changed" in out, run
    assert "to overwrite" in out and "to delete" in out and "safety snapshot" in out, out
    assert "home/.argentos/data/dashboard.db" in out, "the question names the databases it overwrites"
    assert_state(before, sb.state(), "after answering no")

    run = on_a_terminal(["restore", "--latest", "--delete"], sb.env, ["y"])
    assert run.code == 0, run
    assert_state(snapshot_state, sb.state(), "after answering yes")


# -- files -------------------------------------------------------------------------------------


def test_never_writes_through_a_symlink_in_the_workspace(sb: Sandbox, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    for p in (sb.workspace / "private").iterdir():
        p.unlink()
    (sb.workspace / "private").rmdir()
    os.symlink(outside, sb.workspace / "private")
    (sb.workspace / "SOUL.md").write_text("changed\n")

    res = sb.phx_here("restore", "--latest", "--yes", "--json", code=3)
    doc = res.json()
    assert list(outside.iterdir()) == [], "the restore wrote through a symlink"
    assert (sb.workspace / "private").is_symlink()
    failed = {e["path"] for e in doc["errors"]}
    assert "workspace/private/diary.md" in failed and failed <= {"workspace/private", "workspace/private/diary.md"}
    assert (sb.workspace / "SOUL.md").read_text() != "changed\n", "the rest is restored"


def test_unreadable_live_database_is_replaced_and_comes_back_on_undo(sb: Sandbox) -> None:
    snapshot_rows = db_rows(sb)
    db = sb.layout.memory_db
    garbage = os.urandom(50_000)
    db.write_bytes(garbage)
    Path(f"{db}-wal").write_bytes(os.urandom(8192))  # a stale WAL SQLite must not replay
    con = sqlite3.connect(sb.layout.observations_db)  # changed since: restored through the backup API
    con.execute("DELETE FROM observations WHERE rowid IN (SELECT rowid FROM observations LIMIT 1)")
    con.commit()
    con.close()

    doc = sb.phx_here("restore", "--latest", "--databases-only", "--yes", "--json").json()
    methods = {d["path"]: d["method"] for d in doc["databases"]}
    assert methods["home/.argentos/memory.db"] == "rename", doc["databases"]
    assert methods["home/.argentos/observations.db"] == "backup-api"
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    assert db_rows(sb) == snapshot_rows

    sb.phx_here("restore", "--backup", doc["safetySnapshot"]["id"], "--yes")
    assert db.read_bytes() == garbage, "the undo gives back the unreadable file byte for byte"


def test_page_size_mismatch_in_wal_mode_says_what_to_do(sb: Sandbox, tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    install_gateway(sb, log)
    snapshot_rows = db_rows(sb)
    db = sb.layout.dashboard_db
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute("PRAGMA page_size=8192")
    con.execute("VACUUM")
    assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    con.execute("DELETE FROM tasks WHERE id IN (SELECT id FROM tasks LIMIT 2)")
    con.close()
    before = sb.state()

    res = sb.phx("restore", "--latest", "--yes", check=None)
    assert_error(res, 1, "8192", "WAL", "journal_mode=DELETE", "nothing was restored")
    assert gateway_calls(log) == [], "the check comes before the gateway stops"
    assert_state(before, sb.state(), "after the page-size refusal")
    dry = sb.phx_here("restore", "--latest", "--dry-run", "--json").json()
    assert any("journal_mode=DELETE" in w for w in dry["warnings"]), dry["warnings"]

    # Following the advice works.
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=DELETE")
    con.close()
    sb.phx_here("restore", "--latest", "--yes")
    assert db_rows(sb) == snapshot_rows


# -- the alignment manifest ---------------------------------------------------------------------


def test_alignment_manifest_partial_restore_and_realign(sb: Sandbox) -> None:
    ws = sb.workspace
    snapshot_manifest = (ws / MANIFEST).read_bytes()
    # The agent rewrote its soul and, as ArgentOS does, its manifest: consistent, not the snapshot's.
    (ws / "SOUL.md").write_text("# SOUL\n\nA new soul.\n")
    write_alignment_manifest(ws)
    agent_manifest = (ws / MANIFEST).read_bytes()

    doc = sb.phx_here("restore", "--latest", "--path", "SOUL.md", "--yes", "--json").json()
    assert [i["path"] for i in doc["items"]] == ["workspace/SOUL.md"]
    assert doc["alignment"]["consistent"] is False and doc["alignment"]["mismatched"] == ["SOUL.md"]
    assert any(MANIFEST in w and "--realign" in w for w in doc["warnings"]), doc["warnings"]
    assert (ws / MANIFEST).read_bytes() == agent_manifest, "the manifest was changed without --realign"
    text = sb.phx_here("restore", "--latest", "--path", "SOUL.md", "--dry-run").out
    assert MANIFEST in text and "--realign" in text

    doc = sb.phx_here("restore", "--latest", "--path", "SOUL.md", "--realign", "--yes", "--json").json()
    assert doc["alignment"]["realigned"] is True and doc["alignment"]["rewritten"] == ["SOUL.md"]
    import json

    files = json.loads((ws / MANIFEST).read_text())["files"]
    assert files["SOUL.md"] == sha256(ws / "SOUL.md")
    assert files == {**json.loads(agent_manifest)["files"], "SOUL.md": files["SOUL.md"]}
    text = sb.phx_here("list").out
    assert "pre-restore" in text
    # The realignment is undoable like any restore.
    sb.phx_here("restore", "--backup", doc["safetySnapshot"]["id"], "--yes")
    assert (ws / MANIFEST).read_bytes() == agent_manifest

    # --identity-only restores the manifest with the identity files: consistent again.
    doc = sb.phx_here("restore", "--latest", "--identity-only", "--yes", "--json").json()
    assert doc["alignment"]["consistent"] is True and doc["warnings"] == []
    assert (ws / MANIFEST).read_bytes() == snapshot_manifest


# -- partial restores and migration ---------------------------------------------------------------


def test_partial_flags_and_path_compose_in_place(sb: Sandbox) -> None:
    snapshot_notes = {k: v for k, v in sb.state()["workspace"].items() if k.startswith("memory/") and k.endswith(".md")}
    change_workspace(sb)
    old_note = sorted((sb.workspace / "memory").glob("2026-09-*.md"))[0]
    old_note.write_text("overwritten\n")
    (sb.workspace / "memory" / "extra.md").write_text("extra\n")
    before = sb.state()

    doc = sb.phx_here("restore", "--latest", "--memory-only", "--path", "memory/*.md", "--delete", "--yes", "--json")
    items = doc.json()["items"]
    assert items and all(i["path"].startswith("workspace/memory/") and i["path"].endswith(".md") for i in items)
    after = sb.state()
    notes = {k: v for k, v in after["workspace"].items() if k.startswith("memory/") and k.endswith(".md")}
    assert notes == snapshot_notes, "memory notes are the snapshot's (the new ones deleted)"
    for rel in ("MEMORY.md", "SOUL.md", "projects/phoenix.md"):
        assert after["workspace"][rel] == before["workspace"][rel], f"{rel} is outside the restored scope"
    assert after["databases"] == before["databases"], "databases are outside --path memory/*.md"


def test_migration_to_another_home_and_workspace(sb: Sandbox, tmp_path: Path) -> None:
    snapshot_state = sb.state()
    elsewhere = tmp_path / "new-machine"
    workspace, home = elsewhere / "agent", elsewhere / "home"
    config = elsewhere / "backup.json"
    elsewhere.mkdir()
    import json

    config.write_text(json.dumps({**sb.config, "workspace": str(workspace)}))
    env = sb.env_with(HOME=str(home), PHX_CONFIG=str(config))

    doc = sb.phx("restore", "--latest", "--json", env=env).json()  # only creates: no --yes needed
    assert doc["counts"]["overwrite"] == 0 and doc["errors"] == []
    moved = Sandbox.__new__(Sandbox)
    moved.workspace, moved.home = workspace, home
    assert_state(snapshot_state, Sandbox.state(moved), "after a migration")

    # Its safety snapshot records everything as absent: undoing the migration empties the places.
    sb.phx("restore", "--backup", doc["safetySnapshot"]["id"], "--yes", env=env)
    assert list(workspace.iterdir()) == [] and list(home.iterdir()) == []


def test_delete_needs_in_place(sb: Sandbox, tmp_path: Path) -> None:
    res = sb.phx("restore", "--latest", "--to", tmp_path / "out", "--delete", check=None)
    assert_error(res, 2, "--delete", "in-place")
