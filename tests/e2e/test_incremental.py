"""Acceptance 2: a second backup of an unchanged workspace adds under 1 % of its size and reads no
unchanged file again; a changed file is read again, and only it."""

from __future__ import annotations

from pathlib import Path

from e2e_support import Sandbox, assert_restored, wait_past_racy_window


def test_unchanged_workspace_adds_almost_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    # Files modified within a second of the parent backup's start are read again (racy-git rule):
    # let the freshly generated sample age past that window first.
    wait_past_racy_window()
    first = sb.backup()
    assert first["filesRead"] > 30, first  # the first backup reads everything
    assert first["added"] > 0.3 * first["size"], first

    second = sb.backup()
    assert second["size"] == first["size"] and second["files"] == first["files"]
    assert second["added"] < 0.01 * second["size"], f"added {second['added']} of {second['size']} bytes"
    assert second["filesRead"] == 0, f"unchanged files were read again: {second['filesRead']}"
    assert all(d["integrity"] == "ok" for d in second["databases"])
    # The databases' manifests are carried over unchanged.
    assert {d["path"]: d["tables"] for d in second["databases"]} == {d["path"]: d["tables"] for d in first["databases"]}

    listed = {s["id"]: s for s in sb.snapshots()}
    assert set(listed) == {first["id"], second["id"]}
    assert listed[second["id"]]["added"] < 0.01 * second["size"], listed[second["id"]]

    # One edited file: exactly that file is read again.
    memory = sb.workspace / "MEMORY.md"
    memory.write_bytes(memory.read_bytes() + b"\n- one new line\n")
    state = sb.state()
    third = sb.backup()
    assert third["filesRead"] == 1, third
    assert third["added"] < 0.01 * third["size"], third

    # And the incremental snapshot is complete on its own.
    dest = tmp_path / "restored"
    sb.restore_to(third["id"], dest)
    assert_restored(state, dest, "restore of the third (incremental) snapshot")
