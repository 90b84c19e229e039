"""Acceptance 9: restores are safe. `--to DIR` never writes outside DIR, not even through a symlink
found inside DIR; an in-place restore without --yes and without a terminal refuses and changes
nothing; --dry-run writes nothing and shows create / overwrite / unchanged; --identity-only,
--memory-only and --path restore only their parts."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    DATABASES,
    Sandbox,
    assert_error,
    assert_restored,
    assert_same_db,
    assert_same_tree,
    db_dump,
    file_manifest,
    only_files,
)

from phoenix_backup.sample import simulate_day


def all_files(dest: Path) -> set[str]:
    return {p.relative_to(dest).as_posix() for p in dest.rglob("*") if not p.is_dir()}


# -- never outside the destination ----------------------------------------------------------


def test_symlinked_folder_in_destination_is_not_written_through(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    state = sb.state()
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    (dest / "workspace").mkdir(parents=True)
    os.symlink(outside, dest / "workspace" / "memory")

    res = sb.phx("restore", "--latest", "--to", dest, "--json", check=None)
    assert list(outside.iterdir()) == [], f"the restore wrote outside its destination:\n{res}"
    assert (dest / "workspace" / "memory").is_symlink(), "the symlink was replaced"
    assert res.code in (1, 2, 3), f"a restore that could not write some paths must not exit 0:\n{res}"
    if res.code == 3:
        doc = res.json()
        failed = {e["path"] for e in doc["errors"]}
        expected = {f"workspace/{k}" for k in only_files(state["workspace"]) if k.startswith("memory/")}
        assert expected <= failed <= expected | {"workspace/memory"}, (
            f"errors should name the symlinked folder and the paths below it: {sorted(failed)}"
        )
        assert all("symlink" in e["error"] or "not a folder" in e["error"] for e in doc["errors"]), doc["errors"]
        # Everything else was restored.
        skip = {k for k in state["workspace"] if k == "memory" or k.startswith("memory/")}
        assert_restored(state, dest, "restore beside a symlinked folder", ignore=skip)
    else:
        assert_error(res, res.code, "symlink")


def test_symlinked_file_in_destination_is_replaced_not_followed(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    state = sb.state()
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.md"
    victim.write_text("not Phoenix's to overwrite\n")
    dest = tmp_path / "dest"
    (dest / "workspace").mkdir(parents=True)
    os.symlink(victim, dest / "workspace" / "MEMORY.md")

    res = sb.phx("restore", "--latest", "--to", dest, "--json", check=None)
    assert victim.read_text() == "not Phoenix's to overwrite\n", f"the restore wrote through a symlink:\n{res}"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.md"]
    if res.code == 0:
        assert not (dest / "workspace" / "MEMORY.md").is_symlink()
        assert_restored(state, dest, "restore over a symlinked file")
    else:
        assert res.code in (1, 2, 3), res


@pytest.mark.parametrize("root", ["workspace", "home"])
def test_symlinked_root_in_destination_is_not_written_through(backed_up: Sandbox, tmp_path: Path, root: str) -> None:
    """DIR/workspace or DIR/home itself a symlink pointing outside DIR."""
    sb = backed_up
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / root)

    res = sb.phx("restore", "--latest", "--to", dest, "--json", check=None)
    written = sorted(p.relative_to(outside).as_posix() for p in outside.rglob("*"))
    assert written == [], f"the restore wrote {len(written)} paths outside {dest} through {dest / root}: {written[:5]}"
    assert res.code != 0, res


# -- in place -------------------------------------------------------------------------------


def test_in_place_restore_needs_yes_without_a_terminal(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    # The reference: the snapshot restored elsewhere.
    reference = tmp_path / "reference"
    sb.phx("restore", "--latest", "--to", reference)
    ref_files = only_files(file_manifest(reference / "workspace"))
    ref_dbs = {db: db_dump(reference / db) for db in DATABASES}

    simulate_day(sb.layout, 0, seed=7)
    (sb.workspace / "SOUL.md").write_text("a changed soul\n")
    (sb.workspace / "TOOLS.md").unlink()
    before = sb.state()

    res = sb.phx("restore", "--latest", check=None)
    assert_error(res, 2, "--yes")
    after = sb.state()
    assert_same_tree(before["workspace"], after["workspace"], "workspace after a refused restore")
    for db in DATABASES:
        assert_same_db(before["databases"][db], after["databases"][db], f"{db} after a refused restore")

    # With --yes it restores in place: the files and databases are the snapshot's again.
    doc = sb.phx("restore", "--latest", "--yes", "--json").json()
    assert doc["errors"] == [] and doc["destination"] == "in place"
    now = only_files(file_manifest(sb.workspace))
    for rel, entry in ref_files.items():
        assert now.get(rel) == entry, f"{rel} after an in-place restore: {now.get(rel)} != {entry}"
    for db in DATABASES:
        assert_same_db(ref_dbs[db], db_dump(sb.db_path(db)), f"{db} after an in-place restore")


def test_a_restore_below_to_overwrites_what_is_there_only_once_confirmed(backed_up: Sandbox, tmp_path: Path) -> None:
    """`--to` into a folder that already holds files differing from the snapshot (an earlier restore
    the user has edited since, a home folder) overwrote them without a word, and no safety snapshot
    is taken there: a restore that would overwrite refuses without a terminal and without --yes
    (DESIGN §7), naming what it would overwrite; what is only new or unchanged needs nothing."""
    sb = backed_up
    dest = tmp_path / "out"
    sb.phx_here("restore", "--latest", "--to", dest)  # into a new folder: nothing to confirm
    sb.phx_here("restore", "--latest", "--to", dest)  # again: every path unchanged, nothing to confirm
    edited = dest / "workspace" / "SOUL.md"
    edited.write_text("my notes on the restored soul\n")
    (dest / "workspace" / "TOOLS.md").unlink()  # missing: created again without asking

    res = sb.phx_here("restore", "--latest", "--to", dest, code=2)
    assert_error(res, 2, "would overwrite 1 path(s) already below")
    assert str(edited) in res.err and "--yes" in res.err, res.err
    assert edited.read_text() == "my notes on the restored soul\n"
    assert not (dest / "workspace" / "TOOLS.md").exists(), "a refused restore wrote nothing"

    sb.phx_here("restore", "--latest", "--to", dest, "--yes")
    assert edited.read_bytes() == (sb.workspace / "SOUL.md").read_bytes()
    assert (dest / "workspace" / "TOOLS.md").read_bytes() == (sb.workspace / "TOOLS.md").read_bytes()


def test_an_in_place_restore_with_nothing_to_change_says_so_and_takes_no_safety_snapshot(backed_up: Sandbox) -> None:
    """In place, a restore right after a backup (which moves the times of ~/.argentos and its data
    folder itself) took a safety snapshot of 0 files and said nothing, where the same restore below
    --to said "nothing to restore". A folder's time alone is no work in place; once the restore
    writes anything, it still sets the folders' times."""
    sb = backed_up
    snapshot_time = sb.workspace.stat().st_mtime_ns
    os.utime(sb.workspace, ns=(snapshot_time, snapshot_time - 10**9))  # as an agent's write would move it
    doc = sb.phx_here("restore", "--latest", "--yes", "--json").json()
    assert doc["warnings"] == ["nothing to restore: every selected path already matches the snapshot"], doc
    assert doc["safetySnapshot"] is None and doc["restored"] == 0, doc
    assert [s["name"] for s in sb.snapshots() if "pre-restore" in (s.get("tags") or [])] == [], sb.snapshots()

    (sb.workspace / "SOUL.md").write_text("a changed soul\n")
    doc = sb.phx_here("restore", "--latest", "--yes", "--json").json()
    assert doc["safetySnapshot"] is not None and doc["restored"] == 1 and doc["warnings"] == [], doc
    assert sb.workspace.stat().st_mtime_ns == snapshot_time


def test_as_root_an_in_place_restore_puts_back_a_folder_s_and_a_file_s_owner(backed_up: Sandbox) -> None:
    """docs/restore.md: ownership is restored when running as root. A folder or file whose owner
    alone differed was no work (only mode and time were compared), so the restore said "nothing to
    restore" and left them given to another user or group."""
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    sb = backed_up
    folder = next(p for p in sorted(sb.workspace.iterdir()) if p.is_dir() and not p.is_symlink())
    soul = sb.workspace / "SOUL.md"
    owners = {p: (p.stat().st_uid, p.stat().st_gid) for p in (folder, soul)}
    os.chown(folder, 4242, 4242)
    os.chown(soul, -1, 4242)  # its group alone: another owner is written anew already (grants_privilege)
    doc = sb.phx_here("restore", "--latest", "--yes", "--json").json()
    assert doc["warnings"] == [], doc
    assert {p: (p.stat().st_uid, p.stat().st_gid) for p in owners} == owners


# -- dry run --------------------------------------------------------------------------------


def test_dry_run_writes_nothing_and_shows_the_plan(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    dest = tmp_path / "dest"
    sb.phx("restore", "--latest", "--to", dest)
    (dest / "workspace" / "USER.md").write_text("edited after the restore\n")
    (dest / "workspace" / "SOUL.md").unlink()
    con = sqlite3.connect(dest / "home/.argentos/data/dashboard.db")
    con.execute("DELETE FROM tasks WHERE id IN (SELECT id FROM tasks LIMIT 3)")
    con.commit()
    con.close()
    before = file_manifest(dest, skip_databases=False)

    doc = sb.phx("restore", "--latest", "--to", dest, "--dry-run", "--json").json()
    assert file_manifest(dest, skip_databases=False) == before, "--dry-run changed the destination"
    assert doc["dryRun"] is True and doc["restored"] == 0
    actions: dict[str, Any] = {i["path"]: i["action"] for i in doc["items"]}
    assert actions["workspace/USER.md"] == "overwrite"
    assert actions["workspace/SOUL.md"] == "create"
    assert actions["workspace/MEMORY.md"] == "unchanged"
    assert actions["home/.argentos/data/dashboard.db"] == "overwrite"
    assert actions["home/.argentos/memory.db"] == "unchanged"
    assert doc["counts"] == {
        a: sum(1 for v in actions.values() if v == a) for a in ("create", "overwrite", "unchanged")
    }
    assert doc["counts"]["unchanged"] > 30

    # The plain-text plan names each action too; a dry run into a new folder creates nothing.
    fresh = tmp_path / "fresh"
    text = sb.phx("restore", "--latest", "--to", fresh, "--dry-run").out
    assert "create" in text and "dry run" in text
    assert not fresh.exists(), "--dry-run created the destination folder"


# -- partial restores -----------------------------------------------------------------------

IDENTITY = {
    "SOUL.md",
    "IDENTITY.md",
    "USER.md",
    "AGENTS.md",
    "HEARTBEAT.md",
    "CONTEMPLATION.md",
    "TOOLS.md",
    ".argent-alignment-integrity.json",
}


def _scoped(sb: Sandbox, tmp_path: Path, *args: str) -> tuple[Path, set[str], dict[str, Any]]:
    dest = tmp_path / "scoped"
    doc = sb.phx("restore", "--latest", "--to", dest, "--json", *args).json()
    assert doc["errors"] == []
    return dest, all_files(dest), doc


def test_identity_only(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    source = only_files(sb.state()["workspace"])
    dest, files, _ = _scoped(sb, tmp_path, "--identity-only")
    assert files == {f"workspace/{n}" for n in IDENTITY}
    restored = only_files(file_manifest(dest / "workspace"))
    assert restored == {k: v for k, v in source.items() if k in IDENTITY}


def test_memory_only(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    state = sb.state()
    source = only_files(state["workspace"])
    dest, files, doc = _scoped(sb, tmp_path, "--memory-only")
    memory_files = {k for k in source if k == "MEMORY.md" or k.startswith("memory/")}
    assert len(memory_files) > 10
    expected = {f"workspace/{k}" for k in memory_files} | {"home/.argentos/memory.db", "home/.argentos/observations.db"}
    assert files == expected
    assert only_files(file_manifest(dest / "workspace")) == {k: v for k, v in source.items() if k in memory_files}
    for db in ("home/.argentos/memory.db", "home/.argentos/observations.db"):
        assert_same_db(state["databases"][db], db_dump(dest / db), db)
    assert {d["path"] for d in doc["databases"]} == {"home/.argentos/memory.db", "home/.argentos/observations.db"}


def test_path_glob(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    source = only_files(sb.state()["workspace"])
    dest, files, _ = _scoped(sb, tmp_path, "--path", "memory/*.md")
    notes = {k for k in source if k.startswith("memory/") and k.endswith(".md")}
    assert len(notes) > 10
    assert files == {f"workspace/{k}" for k in notes}
    assert only_files(file_manifest(dest / "workspace")) == {k: v for k, v in source.items() if k in notes}


def test_a_folder_moved_for_a_link_during_the_restore_fails_it(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the restore has written into `workspace/memory`, another user moves that folder away
    and puts a link to a folder of theirs in its place: the restore writes on into the folder it
    opened (wherever it now is), so `DEST/workspace/memory/...` resolves through the link to the
    other user's content. The restore then fails, naming the folder and what happened, and deletes
    nothing (before, it exited 0 saying every file was restored)."""
    from click.testing import CliRunner

    from phoenix_backup.cli.main import cli
    from phoenix_backup.sinks.files import FileWriter

    dest, outside, moved = tmp_path / "dest", tmp_path / "outside", tmp_path / "moved"
    outside.mkdir()
    memory = sorted(k for k in only_files(backed_up.state()["workspace"]) if k.startswith("memory/"))
    assert memory, "the sample has files in workspace/memory"
    for name in memory:  # the other user's content, under the names the restore writes
        (outside / name.removeprefix("memory/")).parent.mkdir(parents=True, exist_ok=True)
        (outside / name.removeprefix("memory/")).write_bytes(b"planted\n")
    real = FileWriter.renamed_into
    swapped = []
    once = threading.Lock()  # two sync threads may both be the first into the folder

    def swap_after_the_first_file(self: FileWriter, folder: str) -> None:
        real(self, folder)
        with once:
            if folder == "workspace/memory" and not swapped:
                os.rename(dest / "workspace" / "memory", moved)
                os.symlink(outside, dest / "workspace" / "memory")
                swapped.append(folder)

    monkeypatch.setattr(FileWriter, "renamed_into", swap_after_the_first_file)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(backed_up.env)
    try:
        run = CliRunner().invoke(cli, ["restore", "--latest", "--to", str(dest)], prog_name="phx")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert swapped, "the restore wrote no file into workspace/memory"
    assert run.exit_code not in (0, None), f"exit {run.exit_code}: {run.stdout}{run.stderr}"
    assert "Traceback" not in run.stdout + run.stderr, run.stderr
    error = run.stderr
    assert "workspace/memory" in error and "symlink" in error, error
    assert all(p.read_bytes() == b"planted\n" for p in outside.rglob("*") if p.is_file()), "written through the link"
    assert any(moved.rglob("*")), "the files written into the moved folder were deleted"
