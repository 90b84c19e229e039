"""Acceptance 1: back up, change the workspace like a day of agent work (plus an edit, a deletion,
an addition and a symlink), back up again; restoring EITHER snapshot below --to reproduces it
exactly: files byte-equal with modes and mtimes, every table of every database row-equal, and
`PRAGMA integrity_check` ok. Snapshots are found by id, by seed-style name and by id prefix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from e2e_support import DATABASES, Sandbox, assert_restored

from phoenix_backup.sample import simulate_day

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process


def change_workspace(sb: Sandbox) -> None:
    ws = sb.workspace
    simulate_day(sb.layout, 0, seed=7)
    # Edit a file, keeping a distinctive mtime the restore must reproduce.
    user = ws / "USER.md"
    user.write_bytes(user.read_bytes() + b"\n## Added on day 0\n- prefers restores that are exact\n")
    os.utime(user, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    # Delete a file.
    oldest = sorted((ws / "memory").glob("2026-09-*.md"))[0]
    oldest.unlink()
    # Add a file (private mode) in a new folder (its own mode), and a symlink.
    (ws / "projects").mkdir(mode=0o750)
    os.chmod(ws / "projects", 0o750)
    new = ws / "projects" / "phoenix.md"
    new.write_bytes(b"# Phoenix\n\nBack up the agent, \xe2\x9c\x93 unicode too.\n" * 50)
    os.chmod(new, 0o600)
    os.symlink("../MEMORY.md", ws / "projects" / "memory-link.md")


def test_two_snapshots_restore_exactly(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    state1 = sb.state()
    # Explicit, distinct times: the names are predictable and the order never hangs on one clock
    # second (same-second snapshots: test_same_second_snapshots_keep_their_order).
    first = sb.backup("--time", "2026-03-15T14:30:00+01:00")
    assert first["id"] and first["name"] == "2026-03-15-14-30", first
    assert first["time"] == "2026-03-15T14:30:00+01:00", "the time is recorded exactly as given"
    assert first["incomplete"] == [] and first["targets"]["local"]["ok"] is True
    assert sorted(d["path"] for d in first["databases"]) == sorted(DATABASES)
    assert all(d["integrity"] == "ok" for d in first["databases"])

    change_workspace(sb)
    state2 = sb.state()
    assert state2 != state1
    second = sb.backup("--time", "2026-03-16T09:05:27-04:00")
    assert second["id"] != first["id"] and second["name"] == "2026-03-16-09-05", second

    listed = sb.snapshots()
    assert [s["id"] for s in listed] == [first["id"], second["id"]]
    assert [s["name"] for s in listed] == [first["name"], second["name"]]

    # By full id, each snapshot.
    for snap, state in ((first, state1), (second, state2)):
        dest = tmp_path / f"by-id-{snap['id'][:8]}"
        doc = sb.restore_to(snap["id"], dest)
        assert doc["snapshot"] == snap["id"] and doc["errors"] == []
        assert {d["path"]: d["integrity"] for d in doc["databases"]} == dict.fromkeys(DATABASES, "ok")
        assert_restored(state, dest, f"restore of {snap['name']} by id")

    # The first by its seed-style name (the latest is the second).
    dest = tmp_path / "by-name"
    doc = sb.restore_to(first["name"], dest)
    assert doc["snapshot"] == first["id"]
    assert_restored(state1, dest, "restore by name")

    # The second by the shortest unique id prefix of at least 4 characters.
    n = 4
    while first["id"].startswith(second["id"][:n]):
        n += 1
    dest = tmp_path / "by-prefix"
    doc = sb.restore_to(second["id"][:n], dest)
    assert doc["snapshot"] == second["id"]
    assert_restored(state2, dest, "restore by id prefix")


def test_unknown_or_ambiguous_snapshot_is_a_usage_error(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    sb.backup()
    res = sb.phx("restore", "--backup", "2001-01-01-00-00", "--to", tmp_path / "x", check=2)
    assert res.error_lines() and "phx list" in res.error_lines()[0]
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_empty_folder_is_restored(sandbox: Sandbox, tmp_path: Path) -> None:
    """An empty folder is part of the workspace (say `memory/archive/` the agent just created)."""
    sb = sandbox
    (sb.workspace / "memory" / "archive").mkdir(mode=0o750)
    os.chmod(sb.workspace / "memory" / "archive", 0o750)
    state = sb.state()
    doc = sb.backup()
    dest = tmp_path / "restored"
    sb.restore_to(doc["id"], dest)
    assert_restored(state, dest, "restore with an empty folder")


def test_same_second_snapshots_keep_their_order(sandbox: Sandbox, tmp_path: Path) -> None:
    """Backups recorded with the same time (a script running two in one second, or the same
    --time): names get -2, -3; `list` keeps the order they were taken in; --latest is the last."""
    sb = sandbox
    when = "2026-03-15T14:30:00+01:00"
    taken = []
    for i in range(4):
        (sb.workspace / "MEMORY.md").write_text(f"version {i}\n")
        taken.append(sb.backup("--time", when))
    assert [t["name"] for t in taken] == ["2026-03-15-14-30", "2026-03-15-14-30-2", "2026-03-15-14-30-3",
                                          "2026-03-15-14-30-4"]  # fmt: skip
    listed = sb.snapshots()
    assert [s["name"] for s in listed] == [t["name"] for t in taken], "list is not in the order taken"
    assert [s["id"] for s in listed] == [t["id"] for t in taken]
    dest = tmp_path / "latest"
    doc = sb.phx_here("restore", "--latest", "--to", dest, "--json").json()
    assert doc["snapshot"] == taken[-1]["id"], f"--latest restored {doc['name']}, not {taken[-1]['name']}"
    assert (dest / "workspace" / "MEMORY.md").read_text() == "version 3\n"


def test_a_restore_of_files_and_sqlite_loads_no_server_drivers(backed_up: Sandbox, tmp_path: Path) -> None:
    """psycopg and redis take tens of milliseconds to import; a snapshot without PostgreSQL or
    Redis restores without them (PYTHONPROFILEIMPORTTIME makes Python list every import)."""
    dest = tmp_path / "out"
    res = backed_up.phx(
        "restore", "--latest", "--to", dest, "--yes", env=backed_up.env_with(PYTHONPROFILEIMPORTTIME="1")
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in res.err.splitlines() if line.startswith("import time:")}
    assert "phoenix_backup.ops.restore" in imported  # the listing works
    assert not imported & {"psycopg", "redis"}
    assert (dest / "workspace" / "MEMORY.md").is_file()
